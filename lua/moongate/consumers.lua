--- moongate.consumers: the consumers of the loaded config and their credentials. At config
-- load (in the master, before fork) every credential is validated with Kong 3.x's field names
-- (errors as "consumers[0].keyauth_credentials[1].key: message"), uniqueness is checked,
-- basic-auth passwords are hashed (PBKDF2-HMAC-SHA256 with a random salt; the plain text is
-- dropped), RSA/EC keys of JWT secrets are parsed, and everything is indexed so that an
-- authentication plugin finds a credential with one table lookup per request.
-- Consumer tables handed to plugins carry id, username, custom_id and tags only: never a
-- credential, so logging a consumer cannot leak a secret.
local schema = require "moongate.schema"
local crypto = require "moongate.crypto"

local type, ipairs, pairs, next, tostring, tonumber, setmetatable, unpack, format, concat =
  type, ipairs, pairs, next, tostring, tonumber, setmetatable, unpack, string.format,
  table.concat

local _M = {}

-- ---- credential schemas (Kong 3.x's entity fields) ---------------------------------------

local TAGS = { tags = { type = "array", elements = { type = "string" } } }
local ID = { id = { type = "string", uuid = true } }

local JWT_ALGORITHMS = { "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384" }

-- kind -> { fields, unique = field whose value is unique across consumers }
local KINDS = {
  keyauth_credentials = {
    unique = "key",
    fields = { ID, { key = { type = "string", required = true, len_min = 1 } }, TAGS },
  },
  basicauth_credentials = {
    unique = "username",
    fields = {
      ID,
      { username = { type = "string", required = true, len_min = 1 } },
      { password = { type = "string", required = true, len_min = 1 } },
      TAGS,
    },
  },
  jwt_secrets = {
    unique = "key",
    fields = {
      ID,
      { key = { type = "string", required = true, len_min = 1 } },
      { algorithm = { type = "string", default = "HS256", one_of = JWT_ALGORITHMS } },
      { secret = { type = "string", len_min = 1 } },
      { rsa_public_key = { type = "string", len_min = 1 } },
      TAGS,
    },
  },
  hmacauth_credentials = {
    unique = "username",
    fields = {
      ID,
      { username = { type = "string", required = true, len_min = 1 } },
      { secret = { type = "string", required = true, len_min = 1 } },
      TAGS,
    },
  },
  acls = {
    fields = { ID, { group = { type = "string", required = true, len_min = 1 } }, TAGS },
  },
}
local KIND_ORDER = { "keyauth_credentials", "basicauth_credentials", "jwt_secrets",
                     "hmacauth_credentials", "acls" }
for _, kind in ipairs(KIND_ORDER) do
  local k = KINDS[kind]
  k.schema = { fields = { { config = { type = "record", fields = k.fields } } } }
end

-- ---- stable ids --------------------------------------------------------------------------

-- A name-based UUID (RFC 4122 version 5 layout over SHA-1), so a consumer or credential
-- without an `id` keeps the same one across reloads and nodes: upstreams that key on
-- X-Consumer-ID see no change when the config is reloaded.
local NAMESPACE = "moongate:"
function _M.stable_id(...)
  local h = crypto.digest("sha1", NAMESPACE .. concat({ ... }, "\0"))
  local b = { h:byte(1, 16) }
  b[7] = b[7] % 16 + 0x50      -- version 5
  b[9] = b[9] % 64 + 0x80      -- RFC 4122 variant
  local hex = crypto.to_hex(string.char(unpack(b)))
  return format("%s-%s-%s-%s-%s", hex:sub(1, 8), hex:sub(9, 12), hex:sub(13, 16),
                hex:sub(17, 20), hex:sub(21, 32))
end

-- ---- passwords ---------------------------------------------------------------------------

-- PBKDF2 rounds: enough that a leaked hash is not a leaked password, few enough that a
-- wrong-password request stays cheap (~0.3 ms); right passwords hit the verified cache.
local PBKDF2_ROUNDS = 1000
local HASH_PREFIX = "$pbkdf2-sha256$"

--- The stored form of a password: "$pbkdf2-sha256$<rounds>$<salt b64>$<hash b64>".
function _M.hash_password(password, rounds, salt)
  rounds = rounds or PBKDF2_ROUNDS
  salt = salt or crypto.random_bytes(16)
  local dk = crypto.pbkdf2("sha256", password, salt, rounds, 32)
  return format("%s%d$%s$%s", HASH_PREFIX, rounds, crypto.encode_base64(salt),
                crypto.encode_base64(dk))
end

local function parse_hash(stored)
  if stored:sub(1, #HASH_PREFIX) ~= HASH_PREFIX then return nil end
  local rounds, salt, dk = stored:sub(#HASH_PREFIX + 1):match("^(%d+)%$([^$]+)%$([^$]+)$")
  rounds = tonumber(rounds)
  salt, dk = salt and crypto.decode_base64(salt), dk and crypto.decode_base64(dk)
  if not rounds or rounds < 1 or rounds > 10000000 or not salt or not dk or #dk ~= 32 then
    return nil
  end
  return { rounds = rounds, salt = salt, dk = dk }
end

-- verified (username, password) pairs, keyed by an HMAC under a per-process random key so
-- the cache holds no password; bounded, cleared when full
local verified, nverified, VERIFIED_MAX = {}, 0, 4096
local cache_key = crypto.random_bytes(32)

--- True when password is the credential's (constant time in where they differ).
function _M.verify_password(cred, password)
  if type(password) ~= "string" then return false end
  local h = cred._hash
  local k = crypto.hmac("sha256", cache_key, cred.username .. "\0" .. password)
  local hit = verified[k]
  if hit == h then return true end
  local ok = crypto.equals(crypto.pbkdf2("sha256", password, h.salt, h.rounds, 32), h.dk)
  if ok then
    if nverified >= VERIFIED_MAX then verified, nverified = {}, 0 end
    verified[k] = h
    nverified = nverified + 1
  end
  return ok
end

-- what an unknown username is checked against: the same PBKDF2 work as a real credential
local UNKNOWN = { username = "", _hash = { rounds = PBKDF2_ROUNDS, salt = crypto.random_bytes(16),
                                           dk = crypto.random_bytes(32) } }

--- Spends on a password what verify_password spends on a wrong one, and returns false: a
-- plugin calls it for an unknown username so that timing does not tell which usernames exist.
function _M.verify_unknown(password)
  local h = UNKNOWN._hash
  crypto.pbkdf2("sha256", type(password) == "string" and password or "", h.salt, h.rounds, 32)
  return false
end

-- ---- loading -----------------------------------------------------------------------------

local consumers = {}     -- array of consumer tables, config order
local by_id, by_name, by_custom_id = {}, {}, {}
local creds = {}         -- kind -> unique value -> { credential, consumer }
local groups_of = {}     -- consumer table -> { list = {...}, set = {...} }

local JWT_KEY_RULES = {
  RS256 = { "RSA", "sha256" }, RS384 = { "RSA", "sha384" }, RS512 = { "RSA", "sha512" },
  ES256 = { "EC", "sha256", 256 }, ES384 = { "EC", "sha384", 384 },
}
_M.JWT_KEY_RULES = JWT_KEY_RULES
local MIN_RSA_BITS = 2048

-- Kind-specific checks and preparation; returns an error message (about `field`) or nil.
local PREPARE = {
  basicauth_credentials = function(cred)
    -- RFC 7617 forbids control characters; and PBKDF2 pads its HMAC key with zeros, so "pw"
    -- and "pw\0" would otherwise be the same password
    if cred.username:find("[%c]") then return "username", "must not contain control characters" end
    local stored = cred.password
    if stored:find("[%c]") then return "password", "must not contain control characters" end
    local h = parse_hash(stored)
    if not h then
      if stored:sub(1, #HASH_PREFIX) == HASH_PREFIX then
        return "password", "malformed " .. HASH_PREFIX .. " hash"
      end
      h = parse_hash(_M.hash_password(stored))
    end
    cred._hash = h
    cred.password = format("%s%d$%s$%s", HASH_PREFIX, h.rounds, crypto.encode_base64(h.salt),
                           crypto.encode_base64(h.dk))
  end,
  jwt_secrets = function(cred)
    local rule = JWT_KEY_RULES[cred.algorithm]
    if not rule then   -- HMAC
      if not cred.secret then return "secret", "required for algorithm " .. cred.algorithm end
      if cred.rsa_public_key then
        return "rsa_public_key", "not used with algorithm " .. cred.algorithm
      end
      return
    end
    if not cred.rsa_public_key then
      return "rsa_public_key", "required for algorithm " .. cred.algorithm
    end
    local key, err = crypto.public_key(cred.rsa_public_key)
    if not key then return "rsa_public_key", err end
    if key.type ~= rule[1] then
      return "rsa_public_key", format("algorithm %s needs an %s key, this is an %s key",
                                      cred.algorithm, rule[1], key.type)
    end
    if rule[1] == "RSA" and key.bits < MIN_RSA_BITS then
      return "rsa_public_key", format("RSA keys must have at least %d bits (this one has %d)",
                                      MIN_RSA_BITS, key.bits)
    end
    if rule[3] and key.bits ~= rule[3] then
      return "rsa_public_key", format("algorithm %s needs a P-%d key (this one has %d bits)",
                                      cred.algorithm, rule[3], key.bits)
    end
    cred._key = key
  end,
}

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

-- The consumer a top-level credential names: Kong's `consumer: <id or username>`, or the
-- record forms `{ id = ... }` / `{ username = ... }`. nil and a message when there is none.
local function named_consumer(new, ref)
  if type(ref) == "string" then
    local c = new.by_id[ref] or new.by_username[ref]
    if c then return c end
    return nil, format("no consumer with id or username \"%s\"", ref)
  end
  if type(ref) == "table" and (ref.id ~= nil or ref.username ~= nil) then
    local key = ref.id ~= nil and "id" or "username"
    local c = (key == "id" and new.by_id or new.by_username)[tostring(ref[key])]
    if c then return c end
    return nil, format("no consumer with %s \"%s\"", key, tostring(ref[key]))
  end
  return nil, "required: the consumer's id or username"
end

--- Validates and indexes the consumers of a config.
-- @param list { { index, path, username, custom_id, entity } } as the C loader hands it
-- @param errors array the "PATH: message" strings are appended to
-- @param[opt] top kind -> list of top-level credentials (Kong's form, each with `consumer`)
-- @return the consumer tables (config order), each paired with its C index in `.index_of`
function _M.load(list, errors, top)
  local function fail(fmt_, ...) errors[#errors + 1] = format(fmt_, ...) end
  local new = { consumers = {}, by_id = {}, by_username = {}, by_custom_id = {}, creds = {},
                groups_of = setmetatable({}, { __mode = "k" }), index_of = {} }
  for _, kind in ipairs(KIND_ORDER) do new.creds[kind] = {} end
  local first_use = {}   -- kind -> unique value -> path of its first use

  -- validates one credential of `consumer`, declared at `cpath`, and indexes it
  local function add_credential(kind, raw, cpath, consumer)
    local K = KINDS[kind]
    local cred, errs = schema.validate_plugin_config(K.schema, raw, cpath)
    if not cred then
      for _, m in ipairs(errs) do errors[#errors + 1] = m end
      return
    end
    local field, msg
    if PREPARE[kind] then field, msg = PREPARE[kind](cred) end
    if field then return fail("%s.%s: %s", cpath, field, msg) end
    local u = K.unique and cred[K.unique]
    cred.id = cred.id or _M.stable_id(kind, consumer.id, u or cred.group or "")
    cred.consumer = { id = consumer.id }
    if u then
      local prev = first_use[kind] and first_use[kind][u]
      if prev then
        -- never echo the value: it may be a secret
        return fail("%s.%s: must be unique (also used by %s)", cpath, K.unique, prev)
      end
      first_use[kind] = first_use[kind] or {}
      first_use[kind][u] = cpath
      new.creds[kind][u] = { cred, consumer }
    elseif kind == "acls" then
      local groups = new.groups_of[consumer]
      if not groups.set[cred.group] then
        groups.list[#groups.list + 1] = cred.group
        groups.set[cred.group] = true
      end
    end
  end

  local declared = {}   -- consumer -> its entity and path, for the nested credentials
  for _, c in ipairs(list or {}) do
    local e = c.entity or {}
    local path = c.path or format("consumers[%d]", c.index)
    local consumer = { username = c.username, custom_id = c.custom_id, tags = e.tags }
    if e.id ~= nil then
      if type(e.id) ~= "string" or not e.id:find(UUID) then
        fail("%s.id: expected a valid UUID", path)
      end
      consumer.id = tostring(e.id)
    else
      consumer.id = _M.stable_id("consumer", c.username or "", c.custom_id or "")
    end
    if new.by_id[consumer.id] then fail("%s.id: duplicate consumer id", path) end
    new.by_id[consumer.id] = consumer
    if c.username then new.by_username[c.username] = consumer end
    if c.custom_id then new.by_custom_id[c.custom_id] = consumer end
    new.consumers[#new.consumers + 1] = consumer
    new.index_of[consumer] = c.index
    new.groups_of[consumer] = { list = {}, set = {} }
    declared[#declared + 1] = { consumer, e, path }
  end

  for _, d in ipairs(declared) do
    local consumer, e, path = d[1], d[2], d[3]
    for _, kind in ipairs(KIND_ORDER) do
      local items = e[kind]
      if items ~= nil and type(items) ~= "table" then
        fail("%s.%s: expected an array", path, kind)
      elseif items then
        for i, raw in ipairs(items) do
          add_credential(kind, raw, format("%s.%s[%d]", path, kind, i - 1), consumer)
        end
      end
    end
  end

  -- Kong's top-level form: each credential names its consumer
  for _, kind in ipairs(KIND_ORDER) do
    local items = top and top[kind]
    if items ~= nil and (type(items) ~= "table" or (next(items) and not items[1])) then
      fail("%s: expected an array", kind)
    elseif items then
      for i, raw in ipairs(items) do
        local cpath = format("%s[%d]", kind, i - 1)
        if type(raw) ~= "table" then
          fail("%s: expected a record", cpath)
        else
          local consumer, err = named_consumer(new, raw.consumer)
          if not consumer then
            fail("%s.consumer: %s", cpath, err)
          else
            local copy = {}
            for k, v in pairs(raw) do
              if k ~= "consumer" then copy[k] = v end
            end
            add_credential(kind, copy, cpath, consumer)
          end
        end
      end
    end
  end
  return new
end

--- Makes a result of load() the one requests see (after the whole config validated).
function _M.activate(new)
  consumers, by_id, by_name, by_custom_id = new.consumers, new.by_id, new.by_username,
                                            new.by_custom_id
  creds, groups_of = new.creds, new.groups_of
end

-- ---- lookups (per request) ---------------------------------------------------------------

--- The credential of a kind by its unique value (key-auth key, basic-auth / hmac username,
-- JWT key), and its consumer; nil when there is none.
function _M.find_credential(kind, value)
  local t = creds[kind]
  local hit = t and value and t[value]
  if not hit then return nil end
  return hit[1], hit[2]
end

--- A consumer by id or custom_id, or by username when by_username is true; falls back from
-- id to username as Kong's load_consumer does when asked to.
function _M.get(key, by_username)
  local c = by_id[key] or by_custom_id[key]
  if c then return c end
  if by_username then return by_name[key] end
  return nil
end

--- A consumer whose username (field "username") or custom_id (field "custom_id") is value;
-- nil when none (mtls-auth's consumer_by).
function _M.get_by(field, value)
  if field == "username" then return by_name[value] end
  if field == "custom_id" then return by_custom_id[value] end
  return nil
end

--- The ACL groups of a consumer: an array (config order) and a set.
function _M.groups(consumer)
  local g = consumer and groups_of[consumer]
  if not g then return {}, {} end
  return g.list, g.set
end

--- Every consumer (read-only).
function _M.all() return consumers end

return _M
