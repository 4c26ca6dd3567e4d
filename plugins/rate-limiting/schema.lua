--- rate-limiting's configuration: Kong 3.x's fields, defaults and messages (the `redis`
-- record of Kong 3.6+, with the older flat `redis_*` fields accepted as shorthands), plus
-- two fields of Kong's rate-limiting-advanced: `algorithm` (fixed or sliding windows; RLA
-- calls it window_type) and `namespace` (which plugin instances share counters).
-- Where moongate cannot do what Kong does the config is refused with a reason: the `cluster`
-- policy (it needs Kong's database) and the `local` policy without its shared dictionary.

local fmt, find, type, ipairs, rawget, rawset = string.format, string.find, type, ipairs,
  rawget, rawset

local SYNC_RATE_REALTIME = -1
local PERIODS = { "second", "minute", "hour", "day", "month", "year" }

--- The shared dictionary the local policy (and nothing else) keeps its counters in.
local DICT = "rate_limit"

-- Kong's validate_periods_order, with the sync_rate rules of the same function.
local function validate_config(config)
  for i, lower_period in ipairs(PERIODS) do
    local v1 = config[lower_period]
    if type(v1) == "number" then
      for j = i + 1, #PERIODS do
        local upper_period = PERIODS[j]
        local v2 = config[upper_period]
        if type(v2) == "number" and v2 < v1 then
          return nil, fmt("The limit for %s(%.1f) cannot be lower than the limit for %s(%.1f)",
                          upper_period, v2, lower_period, v1)
        end
      end
    end
  end
  if config.policy ~= "redis" and config.sync_rate ~= SYNC_RATE_REALTIME then
    return nil, "sync_rate can only be used with the redis policy"
  end
  if config.policy == "redis" and config.sync_rate ~= SYNC_RATE_REALTIME
     and config.sync_rate < 0.02 then
    return nil, "sync_rate must be greater than 0.02, or -1 to disable"
  end
  -- Only in a running gateway (or `moongate check`): the settings' shared_dicts are known.
  local mg = rawget(_G, "moongate")
  if config.policy == "local" and type(mg) == "table" and type(mg.shared) == "table" then
    local declared = mg.shared[DICT] ~= nil
    -- moongate.shared keeps what it looked up; this runs in the master, whose Lua state
    -- outlives a reload that may change shared_dicts: leave nothing behind for workers
    rawset(mg.shared, DICT, nil)
    if not declared then
      return nil, fmt("the local policy keeps its counters in the shared dictionary '%s', "
                      .. "which is not declared: add it to the settings, e.g. "
                      .. "shared_dicts: { %s: 12m }", DICT, DICT)
    end
  end
  return true
end

-- Kong's choices in DB-less mode, and a reason for the one it has only with a database.
local function validate_policy(value)
  if value == "local" or value == "redis" then return true end
  if value == "cluster" then
    return nil, "the cluster policy keeps counters in Kong's database, which moongate does "
                .. "not have: use local (one node) or redis (several nodes)"
  end
  return nil, "expected one of: local, redis"
end

-- Kong's typedefs.header_name
local function validate_header_name(name)
  if find(name, "^[%w_%-]+$") then return true end
  return nil, "bad header name '" .. name .. "', allowed characters are A-Z, a-z, 0-9, '_', "
              .. "and '-'"
end

-- Kong's typedefs.host: a host name or an IP address (v6 without brackets)
local function validate_host(host)
  if find(host, "^[%w%.%-_]+$") and not find(host, "%.%.") then return true end
  if find(host, "^[%x:]+$") and find(host, ":", 1, true) then return true end
  if find(host, "^%[[%x:]+%]$") then return true end
  return nil, "invalid value: " .. host
end

local function limit(period)
  return { type = "number", gt = 0,
           description = "The number of HTTP requests that can be made per " .. period .. "." }
end

-- A Kong 3.5- flat field (redis_host...) written into the redis record.
local function redis_shorthand(name, def)
  def.translate_backwards = { "redis", name }
  def.deprecation = {
    replaced_with = { { path = { "redis", name } } },
    message = "rate-limiting: config.redis_" .. name .. " is deprecated, please use config.redis."
              .. name .. " instead",
    removal_in_version = "4.0",
  }
  def.func = function(value) return { redis = { [name] = value } } end
  return { ["redis_" .. name] = def }
end

return {
  name = "rate-limiting",
  DICT = DICT,
  fields = {
    { config = {
        type = "record",
        fields = {
          { second = limit("second") },
          { minute = limit("minute") },
          { hour = limit("hour") },
          { day = limit("day") },
          { month = limit("month") },
          { year = limit("year") },
          { limit_by = {
              type = "string", default = "consumer",
              one_of = { "consumer", "credential", "ip", "service", "header", "path" },
              description = "The entity that is used when aggregating the limits; without a "
                            .. "consumer, credential or header the client IP is used." } },
          { header_name = { type = "string", custom_validator = validate_header_name,
              description = "A string representing an HTTP header name." } },
          { path = { type = "string", starts_with = "/",
              match_none = { { pattern = "//", err = "must not have empty segments" } },
              description = "A string representing a URL path, such as /path/to/resource." } },
          { policy = {
              type = "string", default = "local", len_min = 0,
              custom_validator = validate_policy,
              description = "Where counters live: local (this node's shared memory) or redis "
                            .. "(shared by every node that uses the same Redis)." } },
          { algorithm = {
              type = "string", default = "fixed", one_of = { "fixed", "sliding" },
              description = "fixed: counters per calendar window; sliding: the previous "
                            .. "window's count weighted by its overlap, plus the current." } },
          { namespace = {
              type = "string", match = "^[%w_%-%.]+$",
              description = "Plugin instances with the same namespace share counters "
                            .. "(default: a digest of the limits and how they apply)." } },
          { fault_tolerant = {
              type = "boolean", required = true, default = true,
              description = "Proxy requests even when the counters cannot be reached (the "
                            .. "limit is then not applied); if false, clients see 500." } },
          { redis = {
              type = "record", required = true,
              description = "Redis configuration",
              fields = {
                { host = { type = "string", custom_validator = validate_host,
                           description = "A string representing a host name, such as "
                                         .. "example.com." } },
                { port = { type = "integer", default = 6379, between = { 0, 65535 },
                           description = "An integer representing a port number between 0 "
                                         .. "and 65535, inclusive." } },
                { timeout = { type = "integer", default = 2000, between = { 0, 2 ^ 31 - 2 },
                              description = "Milliseconds to connect, send or read." } },
                { username = { type = "string", referenceable = true,
                               description = "Username to use for Redis connections (ACL, "
                                             .. "Redis 6+)." } },
                { password = { type = "string", len_min = 0, encrypted = true,
                               referenceable = true,
                               description = "Password to use for Redis connections. If "
                                             .. "undefined, no AUTH commands are sent." } },
                { database = { type = "integer", default = 0,
                               description = "Database to use for the Redis connection." } },
                { ssl = { type = "boolean", required = false, default = false,
                          description = "If set to true, uses SSL to connect to Redis." } },
                { ssl_verify = { type = "boolean", required = false, default = false,
                                 description = "If set to true, verifies the validity of the "
                                               .. "server SSL certificate." } },
                { server_name = { type = "string", required = false,
                                  description = "A string representing an SNI (server name "
                                                .. "indication) value for TLS." } },
              },
          } },
          { hide_client_headers = { type = "boolean", required = true, default = false,
              description = "Optionally hide informative response headers." } },
          { error_code = { type = "integer", default = 429, between = { 200, 599 },
              description = "Set a custom error code to return when the rate limit is "
                            .. "exceeded." } },
          { error_message = { type = "string", default = "API rate limit exceeded",
              description = "Set a custom error message to return when the rate limit is "
                            .. "exceeded." } },
          { sync_rate = { type = "number", required = true, default = SYNC_RATE_REALTIME,
              description = "How often to sync counter data to Redis, in seconds; -1 counts "
                            .. "every request in Redis as it comes." } },
        },
        custom_validator = validate_config,
        shorthand_fields = {
          redis_shorthand("host", { type = "string" }),
          redis_shorthand("port", { type = "integer" }),
          redis_shorthand("password", { type = "string", len_min = 0 }),
          redis_shorthand("username", { type = "string" }),
          redis_shorthand("ssl", { type = "boolean" }),
          redis_shorthand("ssl_verify", { type = "boolean" }),
          redis_shorthand("server_name", { type = "string" }),
          redis_shorthand("timeout", { type = "integer" }),
          redis_shorthand("database", { type = "integer" }),
        },
    } },
  },
  entity_checks = {
    { at_least_one_of = { "config.second", "config.minute", "config.hour", "config.day",
                          "config.month", "config.year" } },
    { conditional = {
      if_field = "config.policy", if_match = { eq = "redis" },
      then_field = "config.redis.host", then_match = { required = true },
    } },
    { conditional = {
      if_field = "config.policy", if_match = { eq = "redis" },
      then_field = "config.redis.port", then_match = { required = true },
    } },
    { conditional = {
      if_field = "config.policy", if_match = { eq = "redis" },
      then_field = "config.redis.timeout", then_match = { required = true },
    } },
    { conditional = {
      if_field = "config.limit_by", if_match = { eq = "header" },
      then_field = "config.header_name", then_match = { required = true },
    } },
    { conditional = {
      if_field = "config.limit_by", if_match = { eq = "path" },
      then_field = "config.path", then_match = { required = true },
    } },
  },
}
