-- rate-limiting's schema as `moongate check` applies it: Kong 3.x's defaults, every field's
-- checks with Kong's messages, the flat redis_* shorthands, and the refusals moongate adds
-- (the cluster policy, the local policy without its shared dictionary).
local helpers = require "spec.helpers"
local schema = require "moongate.schema"

package.path = os.getenv("PWD") .. "/plugins/?.lua;" .. package.path
local plugin_schema = dofile(os.getenv("PWD") .. "/plugins/rate-limiting/schema.lua")

local function validate(config)
  return schema.validate_plugin_config(plugin_schema, config, "config")
end

local function errors_of(config)
  local conf, errs = validate(config)
  assert.is_nil(conf, "expected the config to be refused")
  return errs
end

describe("rate-limiting schema", function()
  it("is a well-formed schema", function()
    assert.is_true(schema.check_schema(plugin_schema, "rate-limiting"))
  end)

  it("fills Kong's defaults", function()
    local conf = assert(validate({ minute = 10 }))
    assert.equal(10, conf.minute)
    for _, p in ipairs({ "second", "hour", "day", "month", "year" }) do
      assert.is_nil(conf[p])
    end
    assert.equal("consumer", conf.limit_by)
    assert.equal("local", conf.policy)
    assert.equal("fixed", conf.algorithm)
    assert.is_true(conf.fault_tolerant)
    assert.is_false(conf.hide_client_headers)
    assert.equal(429, conf.error_code)
    assert.equal("API rate limit exceeded", conf.error_message)
    assert.equal(-1, conf.sync_rate)
    assert.is_nil(conf.header_name)
    assert.is_nil(conf.path)
    assert.is_nil(conf.namespace)
    assert.same({ port = 6379, timeout = 2000, database = 0, ssl = false, ssl_verify = false },
                conf.redis)
  end)

  it("needs at least one window", function()
    assert.same({ "config: at least one of these fields must be non-empty: 'config.second', "
                  .. "'config.minute', 'config.hour', 'config.day', 'config.month', "
                  .. "'config.year'" }, errors_of({}))
  end)

  it("takes every window as a positive number", function()
    local conf = assert(validate({ second = 1, minute = 2, hour = 3, day = 4, month = 5,
                                   year = 6.5 }))
    assert.same({ 1, 2, 3, 4, 5, 6.5 },
                { conf.second, conf.minute, conf.hour, conf.day, conf.month, conf.year })
    for _, p in ipairs({ "second", "minute", "hour", "day", "month", "year" }) do
      assert.same({ "config." .. p .. ": value must be greater than 0" },
                  errors_of({ [p] = 0 }))
      assert.same({ "config." .. p .. ": expected a number" }, errors_of({ [p] = "5" }))
    end
  end)

  it("refuses a longer window with a lower limit, in Kong's words", function()
    assert.same({ "config: The limit for minute(5.0) cannot be lower than the limit for "
                  .. "second(10.0)" }, errors_of({ second = 10, minute = 5 }))
    assert.same({ "config: The limit for year(99.0) cannot be lower than the limit for "
                  .. "hour(100.0)" }, errors_of({ hour = 100, year = 99 }))
    assert.truthy(validate({ second = 10, minute = 10, year = 10 }))
  end)

  describe("limit_by", function()
    it("is one of Kong's six", function()
      for _, v in ipairs({ "consumer", "credential", "ip", "service" }) do
        assert.equal(v, assert(validate({ minute = 1, limit_by = v })).limit_by)
      end
      assert.same({ "config.limit_by: expected one of: consumer, credential, ip, service, "
                    .. "header, path" }, errors_of({ minute = 1, limit_by = "route" }))
    end)

    it("header needs header_name, a valid header name", function()
      assert.same({ "config.header_name: required field missing",
                    "config: failed conditional validation given value of field "
                    .. "'config.limit_by'" }, errors_of({ minute = 1, limit_by = "header" }))
      assert.same({ "config.header_name: bad header name 'x key', allowed characters are "
                    .. "A-Z, a-z, 0-9, '_', and '-'" },
                  errors_of({ minute = 1, limit_by = "header", header_name = "x key" }))
      local conf = assert(validate({ minute = 1, limit_by = "header", header_name = "X-Key" }))
      assert.equal("X-Key", conf.header_name)
    end)

    it("path needs path, starting with / and without empty segments", function()
      assert.same({ "config.path: required field missing",
                    "config: failed conditional validation given value of field "
                    .. "'config.limit_by'" }, errors_of({ minute = 1, limit_by = "path" }))
      assert.same({ "config.path: should start with: /" },
                  errors_of({ minute = 1, limit_by = "path", path = "v1" }))
      assert.same({ "config.path: must not have empty segments" },
                  errors_of({ minute = 1, limit_by = "path", path = "/a//b" }))
      assert.equal("/v1", assert(validate({ minute = 1, limit_by = "path", path = "/v1" })).path)
    end)
  end)

  describe("policy", function()
    it("is local or redis", function()
      assert.same({ "config.policy: expected one of: local, redis" },
                  errors_of({ minute = 1, policy = "memcached" }))
    end)

    it("refuses cluster with the reason", function()
      assert.same({ "config.policy: the cluster policy keeps counters in Kong's database, "
                    .. "which moongate does not have: use local (one node) or redis "
                    .. "(several nodes)" }, errors_of({ minute = 1, policy = "cluster" }))
    end)

    it("redis needs a host, a port and a timeout", function()
      assert.same({ "config.redis.host: required field missing",
                    "config: failed conditional validation given value of field "
                    .. "'config.policy'" }, errors_of({ minute = 1, policy = "redis" }))
      -- port and timeout have defaults, so a host is all it takes
      local conf = assert(validate({ minute = 1, policy = "redis",
                                     redis = { host = "127.0.0.1" } }))
      assert.equal(6379, conf.redis.port)
      assert.equal(2000, conf.redis.timeout)
    end)

    it("takes the redis record with Kong's field checks", function()
      local conf = assert(validate({ minute = 1, policy = "redis", redis = {
        host = "redis.local", port = 6380, timeout = 500, username = "u", password = "p",
        database = 3, ssl = true, ssl_verify = true, server_name = "redis.example" } }))
      assert.same({ host = "redis.local", port = 6380, timeout = 500, username = "u",
                    password = "p", database = 3, ssl = true, ssl_verify = true,
                    server_name = "redis.example" }, conf.redis)
      assert.equal("::1", assert(validate({ minute = 1, policy = "redis",
                                            redis = { host = "::1" } })).redis.host)
      assert.same({ "config.redis.port: value should be between 0 and 65535" },
                  errors_of({ minute = 1, redis = { port = 70000 } }))
      assert.same({ "config.redis.host: invalid value: bad host!" },
                  errors_of({ minute = 1, redis = { host = "bad host!" } }))
      assert.same({ "config.redis.timeout: expected an integer" },
                  errors_of({ minute = 1, redis = { timeout = 1.5 } }))
      assert.same({ "config.redis.ssl: expected a boolean" },
                  errors_of({ minute = 1, redis = { ssl = "yes" } }))
      assert.same({ "config.redis.unknown: unknown field" },
                  errors_of({ minute = 1, redis = { unknown = 1 } }))
    end)

    it("accepts Kong's older flat redis_* fields", function()
      local conf = assert(validate({ minute = 1, policy = "redis", redis_host = "10.0.0.1",
        redis_port = 7000, redis_timeout = 100, redis_username = "u", redis_password = "p",
        redis_database = 2, redis_ssl = true, redis_ssl_verify = true,
        redis_server_name = "r.example" }))
      assert.same({ host = "10.0.0.1", port = 7000, timeout = 100, username = "u",
                    password = "p", database = 2, ssl = true, ssl_verify = true,
                    server_name = "r.example" }, conf.redis)
      assert.is_nil(conf.redis_host)
      -- both given: the record wins over the deprecated field
      conf = assert(validate({ minute = 1, policy = "redis", redis_host = "old",
                               redis = { host = "new" } }))
      assert.equal("new", conf.redis.host)
      assert.same({ "config.redis_port: expected an integer" },
                  errors_of({ minute = 1, redis_port = "x" }))
    end)
  end)

  it("takes algorithm fixed or sliding", function()
    assert.equal("sliding", assert(validate({ second = 1, algorithm = "sliding" })).algorithm)
    assert.same({ "config.algorithm: expected one of: fixed, sliding" },
                errors_of({ second = 1, algorithm = "leaky" }))
  end)

  it("takes a namespace of plain characters", function()
    assert.equal("team-a.v1", assert(validate({ second = 1, namespace = "team-a.v1" })).namespace)
    assert.same({ "config.namespace: invalid value: a:b" },
                errors_of({ second = 1, namespace = "a:b" }))
  end)

  it("takes error_code (an HTTP status) and error_message", function()
    local conf = assert(validate({ second = 1, error_code = 503, error_message = "slow down" }))
    assert.equal(503, conf.error_code)
    assert.equal("slow down", conf.error_message)
    assert.same({ "config.error_code: value should be between 200 and 599" },
                errors_of({ second = 1, error_code = 0 }))
    assert.same({ "config.error_code: value should be between 200 and 599" },
                errors_of({ second = 1, error_code = 101 }))   -- an interim status
    assert.same({ "config.error_code: expected an integer" },
                errors_of({ second = 1, error_code = 429.5 }))
    assert.same({ "config.error_message: expected a string" },
                errors_of({ second = 1, error_message = 5 }))
  end)

  it("takes the booleans as booleans", function()
    for _, f in ipairs({ "fault_tolerant", "hide_client_headers" }) do
      assert.same({ "config." .. f .. ": expected a boolean" },
                  errors_of({ second = 1, [f] = "true" }))
    end
    local conf = assert(validate({ second = 1, fault_tolerant = false,
                                   hide_client_headers = true }))
    assert.is_false(conf.fault_tolerant)
    assert.is_true(conf.hide_client_headers)
  end)

  it("allows sync_rate with the redis policy only, from 0.02 s", function()
    assert.same({ "config: sync_rate can only be used with the redis policy" },
                errors_of({ second = 1, sync_rate = 1 }))
    assert.same({ "config: sync_rate must be greater than 0.02, or -1 to disable" },
                errors_of({ second = 1, policy = "redis", redis = { host = "h" },
                            sync_rate = 0.01 }))
    assert.equal(0.5, assert(validate({ second = 1, policy = "redis", redis = { host = "h" },
                                        sync_rate = 0.5 })).sync_rate)
  end)

  it("reports unknown fields", function()
    assert.same({ "config.minutes: unknown field" }, errors_of({ minute = 1, minutes = 5 }))
  end)

  describe("through `moongate check`", function()
    local function check(settings, config)
      local conf = { services = { { name = "s", url = "http://127.0.0.1:9",
        routes = { { paths = { "/" } } },
        plugins = { { name = "rate-limiting", config = config } } } },
        plugins = { "bundled", "rate-limiting" } }
      for k, v in pairs(settings) do conf[k] = v end
      local rc, out = helpers.check(conf)
      return rc, table.concat(out, "\n")
    end

    it("accepts a valid config", function()
      local rc, out = check({ shared_dicts = { rate_limit = "1m" } }, { minute = 5 })
      assert.equal(0, rc, out)
    end)

    it("needs no declared dictionary for the local policy: rate_limit exists by default",
       function()
      local rc, out = check({ shared_dicts = { other = "1m" } }, { minute = 5 })
      assert.equal(0, rc, out)
      rc, out = check({}, { minute = 5 })
      assert.equal(0, rc, out)
    end)

    it("needs no dictionary for the redis policy", function()
      local rc, out = check({}, { minute = 5, policy = "redis",
                                  redis = { host = "127.0.0.1" } })
      assert.equal(0, rc, out)
    end)

    it("reports a bad field with its path", function()
      local rc, out = check({ shared_dicts = { rate_limit = "1m" } },
                            { minute = 5, limit_by = "nobody" })
      assert.equal(1, rc)
      assert.matches("services%[0%]%.plugins%[0%]%.config%.limit_by: expected one of", out)
    end)
  end)
end)
