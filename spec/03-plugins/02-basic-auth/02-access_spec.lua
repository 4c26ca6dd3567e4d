-- basic-auth against the real binary and a real echo upstream: Authorization and
-- Proxy-Authorization (and which wins), passwords with colons and pre-hashed passwords, every
-- rejection with its status, body and WWW-Authenticate (malformed headers included, none of
-- them a 500), unknown users answered like wrong passwords, hide_credentials, anonymous,
-- logical AND / OR with key-auth, the consumer headers the upstream sees, consumer-scoped
-- plugins, and no password in any log. A last part runs the handler in-process (the PDK
-- kit) to pin that an unknown username costs the same PBKDF2 work as a wrong password.
local helpers = require "spec.helpers"
local crypto = require "moongate.crypto"
local consumers = require "moongate.consumers"
local cjson = require "cjson"

local PWD = os.getenv("PWD")
local PLUGIN_PATH = PWD .. "/spec/fixtures/plugins/?.lua;;"
local ANON_ID = "9d5b1f7e-6d1c-4f7e-8a1e-3c2b1a0f9e8d"
local BOB_CRED_ID = "0b0b0b0b-0000-4000-8000-000000000002"

local function b64(s) return crypto.encode_base64(s) end
local function basic(user, pass) return "Basic " .. b64(user .. ":" .. pass) end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
local function run(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("*a")
  p:close()
  return out
end

-- PBKDF2-HMAC-SHA256 by the openssl CLI: an implementation independent of moongate's
local function openssl_pbkdf2(password, salt, rounds)
  local hex = run(("openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt pass:%s "
                   .. "-kdfopt hexsalt:%s -kdfopt iter:%d PBKDF2 2>/dev/null")
                  :format(shell_quote(password), crypto.to_hex(salt), rounds))
  hex = hex:gsub("[%s:]", "")
  assert(#hex == 64, "openssl kdf failed: " .. hex)
  return (hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

-- bob's password is configured pre-hashed: by consumers.hash_password, with 2000 rounds
-- (not the default) and a salt of our own, and checked against the openssl CLI's PBKDF2
local BOB_PASSWORD = "bob's S3cret"
local BOB_SALT = crypto.random_bytes(16)
local BOB_HASH = consumers.hash_password(BOB_PASSWORD, 2000, BOB_SALT)

describe("basic-auth", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    local function svc(name, plugins)
      return { name = name, url = up.url,
               routes = { { name = name, paths = { "/" .. name } } }, plugins = plugins }
    end
    local function ba(config) return { name = "basic-auth", config = config } end
    gw = helpers.start({
      log_level = "debug",
      lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "headers", "serializer" },
      services = {
        svc("default", { ba(nil) }),
        svc("hide", { ba({ hide_credentials = true }) }),
        svc("realm", { ba({ realm = 'orders "v2" \\ api' }) }),
        svc("anon", { ba({ anonymous = "guest" }) }),
        svc("anonhide", { ba({ anonymous = "guest", hide_credentials = true }) }),
        svc("anonid", { ba({ anonymous = ANON_ID }) }),
        svc("anonmissing", { ba({ anonymous = "nobody" }) }),
        svc("and", { ba(nil), { name = "key-auth" } }),
        svc("or", { ba({ anonymous = "guest" }),
                    { name = "key-auth", config = { anonymous = "guest" } } }),
        svc("logged", { ba(nil), { name = "serializer" } }),
      },
      consumers = {
        { username = "alice", custom_id = "c-alice",
          basicauth_credentials = {
            { username = "alice", password = "alice-pw" },
            { username = "alice-colon", password = "pass:with:colons:" },
            { username = "émile", password = "mot de passe ünïcode" } },
          plugins = { { name = "headers", config = { header = "X-Alice", value = "yes" } } } },
        { username = "bob",
          basicauth_credentials = { { id = BOB_CRED_ID, username = "bob", password = BOB_HASH } },
          keyauth_credentials = { { key = "bob-key" } } },
        { username = "carol", keyauth_credentials = { { key = "carol-key" } } },
        { username = "guest" },
        { id = ANON_ID, custom_id = "anon-by-id" },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  local function get(path, headers) return assert(gw:get(path, { headers = headers })) end
  local function seen(res)
    assert.equal(200, res.status, res.body)
    return res:json().headers
  end

  -- a 401 exactly as basic-auth answers it
  local function assert_unauthorized(res, realm)
    assert.equal(401, res.status)
    assert.same({ message = "Unauthorized" }, res:json())
    assert.equal('Basic realm="' .. (realm or "service") .. '"', res.headers["www-authenticate"])
    assert.matches("^application/json", res.headers["content-type"])
  end

  describe("authenticates", function()
    it("a right username and password in Authorization, and tells the upstream", function()
      local h = seen(get("/default", { Authorization = basic("alice", "alice-pw") }))
      assert.equal("alice", h["x-consumer-username"])
      assert.equal("c-alice", h["x-consumer-custom-id"])
      assert.matches("^%x+%-%x+%-5%x+%-[89ab]%x+%-%x+$", h["x-consumer-id"])
      assert.equal("alice", h["x-credential-identifier"])   -- the credential's username
      assert.is_nil(h["x-anonymous-consumer"])
      -- not hidden by default
      assert.equal(basic("alice", "alice-pw"), h["authorization"])
    end)

    it("builds the header the way base64(1) does (cross-check of the encoding)", function()
      local out = run("printf '%s' 'alice:alice-pw' | base64"):gsub("%s", "")
      assert.equal(out, b64("alice:alice-pw"))
      assert.equal(200, get("/default", { Authorization = "Basic " .. out }).status)
    end)

    it("a password holding colons: the split is on the first colon only", function()
      local h = seen(get("/default", { Authorization = basic("alice-colon",
                                                             "pass:with:colons:") }))
      assert.equal("alice", h["x-consumer-username"])
      assert.equal("alice-colon", h["x-credential-identifier"])
      assert_unauthorized(get("/default", { Authorization = basic("alice-colon",
                                                                  "pass:with:colons") }))
    end)

    it("UTF-8 usernames and passwords with spaces", function()
      local h = seen(get("/default", { Authorization = basic("émile",
                                                             "mot de passe ünïcode") }))
      assert.equal("émile", h["x-credential-identifier"])
    end)

    it("a password configured pre-hashed ($pbkdf2-sha256$, 2000 rounds)", function()
      -- the configured hash is plain PBKDF2-HMAC-SHA256, as the openssl CLI computes it
      local rounds, salt, dk = BOB_HASH:match("^%$pbkdf2%-sha256%$(%d+)%$([^$]+)%$([^$]+)$")
      assert.equal("2000", rounds)
      assert.equal(BOB_SALT, crypto.decode_base64(salt))
      assert.equal(openssl_pbkdf2(BOB_PASSWORD, BOB_SALT, 2000), crypto.decode_base64(dk))
      local h = seen(get("/default", { Authorization = basic("bob", BOB_PASSWORD) }))
      assert.equal("bob", h["x-consumer-username"])
      assert.equal("bob", h["x-credential-identifier"])
      -- the hash itself is not a password
      assert_unauthorized(get("/default", { Authorization = basic("bob", BOB_HASH) }))
    end)

    it("the same consumer id across its credentials and requests", function()
      local a = seen(get("/default", { Authorization = basic("alice", "alice-pw") }))
      local b = seen(get("/default", { Authorization = basic("alice-colon",
                                                             "pass:with:colons:") }))
      local c = seen(get("/default", { Authorization = basic("alice", "alice-pw") }))
      assert.equal(a["x-consumer-id"], b["x-consumer-id"])
      assert.equal(a["x-consumer-id"], c["x-consumer-id"])
    end)

    it("the scheme in any case, after any number of spaces; unpadded base64 too", function()
      assert.equal(200, get("/default", { Authorization = "basic " .. b64("alice:alice-pw") })
                          .status)
      assert.equal(200, get("/default", { Authorization = "BASIC   " .. b64("alice:alice-pw") })
                          .status)
      -- surrounding whitespace is not part of a field value (RFC 9110 5.5)
      assert.equal(200, get("/default", { Authorization = basic("alice", "alice-pw") .. "  " })
                          .status)
      local padded = b64("alice:alice-pw")
      assert.matches("=$", padded)
      assert.equal(200, get("/default", { Authorization = "Basic " .. padded:gsub("=+$", "") })
                          .status)
    end)

    it("with Proxy-Authorization, as Kong does", function()
      local h = seen(get("/default", { ["Proxy-Authorization"] = basic("alice", "alice-pw") }))
      assert.equal("alice", h["x-consumer-username"])
    end)

    it("with Proxy-Authorization first when both name known users", function()
      local h = seen(get("/default", {
        ["Proxy-Authorization"] = basic("bob", BOB_PASSWORD),
        Authorization = "Bearer for-the-upstream" }))
      assert.equal("bob", h["x-consumer-username"])
      assert.equal("Bearer for-the-upstream", h["authorization"])
      -- a known user in Proxy-Authorization with a wrong password is not rescued by
      -- Authorization (Kong's rule: the first header naming a known user decides)
      assert_unauthorized(get("/default", {
        ["Proxy-Authorization"] = basic("bob", "wrong"),
        Authorization = basic("alice", "alice-pw") }))
    end)

    it("with Authorization when Proxy-Authorization names no known user", function()
      local h = seen(get("/default", {
        ["Proxy-Authorization"] = basic("nobody", "x"),
        Authorization = basic("alice", "alice-pw") }))
      assert.equal("alice", h["x-consumer-username"])
      h = seen(get("/default", { ["Proxy-Authorization"] = "garbage",
                                 Authorization = basic("alice", "alice-pw") }))
      assert.equal("alice", h["x-consumer-username"])
    end)

    it("CORS preflights like any request (basic-auth has no run_on_preflight)", function()
      assert_unauthorized(assert(gw:request({ method = "OPTIONS", path = "/default" })))
      assert.equal(200, assert(gw:request({ method = "OPTIONS", path = "/default",
        headers = { Authorization = basic("alice", "alice-pw") } })).status)
    end)
  end)

  describe("rejects with 401 Unauthorized and the challenge", function()
    it("a request without credentials, and never calls the upstream", function()
      local before = up:count()
      assert_unauthorized(get("/default"))
      assert.equal(before, up:count())
    end)

    it("a wrong password, and never calls the upstream", function()
      local before = up:count()
      assert_unauthorized(get("/default", { Authorization = basic("alice", "alice-pw2") }))
      assert_unauthorized(get("/default", { Authorization = basic("alice", "") }))
      assert_unauthorized(get("/default", { Authorization = basic("alice", "ALICE-PW") }))
      assert.equal(before, up:count())
    end)

    it("an unknown user exactly like a wrong password (no user enumeration)", function()
      local wrong = get("/default", { Authorization = basic("alice", "nope") })
      local unknown = get("/default", { Authorization = basic("mallory", "nope") })
      local case = get("/default", { Authorization = basic("Alice", "alice-pw") })
      for _, res in ipairs({ wrong, unknown, case }) do assert_unauthorized(res) end
      assert.equal(wrong.body, unknown.body)
      assert.equal(wrong.body, case.body)
      local function shape(res)
        local names = {}
        for _, kv in ipairs(res.raw_headers) do
          local n = kv[1]:lower()
          if n ~= "date" and n ~= "x-kong-request-id" and n ~= "x-request-id" then
            names[#names + 1] = n .. "=" .. (n == "content-length" and kv[2] or
                                             n == "www-authenticate" and kv[2] or "")
          end
        end
        table.sort(names)
        return names
      end
      assert.same(shape(wrong), shape(unknown))
    end)

    it("malformed headers of every kind, never with a 500", function()
      local cases = {
        "foobar",
        "Basic",
        "Basic ",
        "Basic !!!!",
        "Basic " .. b64("alice-pw"),                          -- no colon
        "Basic " .. b64(":alice-pw"),                         -- empty username
        "Basic " .. b64(":"),
        "Basic " .. b64(""),
        "Basic " .. b64("alice:alice-pw") .. " extra",        -- two tokens
        "Basic " .. b64("alice:alice-pw") .. "===",           -- bad padding
        "Basic " .. b64("alice:alice-pw"):sub(2),             -- not base64 any more
        "Basic" .. b64("alice:alice-pw"),                     -- no space after the scheme
        "Basic\t" .. b64("alice:alice-pw"),                   -- a tab is not a space
        "Basicx " .. b64("alice:alice-pw"),
        "Bearer " .. b64("alice:alice-pw"),
        "Digest username=\"alice\"",
        "Basic " .. b64("\0\1\2\255:\0"),                     -- binary garbage
        "Basic " .. b64("alice\0:alice-pw"),
        "Basic " .. b64("alice:alice-pw\0"),                  -- not "alice-pw" to PBKDF2
        "Basic " .. b64("alice:alice-pw\n"),                  -- RFC 7617: no controls
        "Basic " .. b64("alice:alice\tpw"),
        "Basic " .. b64("a:" .. string.rep("x", 5000)),       -- long password
        "Basic " .. string.rep("QUFB", 1900),                 -- ~7.6 KB of "AAA..."
        "Basic " .. b64(string.rep("u", 3000) .. ":p"),       -- long username
        "Basic YWxpY2U6Pz8-",                                 -- base64url of "alice:??>"
      }
      for i, value in ipairs(cases) do
        local res = get("/default", { Authorization = value })
        assert.equal(401, res.status, "case " .. i .. ": " .. value:sub(1, 60))
        assert_unauthorized(res)
        res = get("/default", { ["Proxy-Authorization"] = value })
        assert.equal(401, res.status, "proxy case " .. i)
      end
      -- a header line beyond the gateway's 8 KiB limit is refused before any plugin runs
      local res = get("/default", { Authorization = "Basic " .. string.rep("QUFB", 3000) })
      assert.equal(431, res.status)
      assert.not_matches("%[basic%-auth%]", gw:error_log())   -- nothing failed or was logged
      assert.not_matches("traceback", gw:error_log())
    end)

    it("with a configured realm, quoted safely", function()
      local res = get("/realm")
      assert.equal(401, res.status)
      assert.equal('Basic realm="orders \\"v2\\" \\\\ api"', res.headers["www-authenticate"])
      res = get("/realm", { Authorization = basic("alice", "bad") })
      assert.equal('Basic realm="orders \\"v2\\" \\\\ api"', res.headers["www-authenticate"])
      assert.equal(200, get("/realm", { Authorization = basic("alice", "alice-pw") }).status)
    end)
  end)

  describe("hide_credentials", function()
    it("removes Authorization before proxying", function()
      local h = seen(get("/hide", { Authorization = basic("alice", "alice-pw"), other = "1" }))
      assert.is_nil(h["authorization"])
      assert.equal("1", h["other"])
      assert.equal("alice", h["x-consumer-username"])
    end)

    it("removes Proxy-Authorization, and leaves an Authorization it did not use", function()
      local h = seen(get("/hide", { ["Proxy-Authorization"] = basic("bob", BOB_PASSWORD),
                                    Authorization = "Bearer for-the-upstream" }))
      assert.is_nil(h["proxy-authorization"])
      assert.equal("Bearer for-the-upstream", h["authorization"])
    end)

    it("removes both when Authorization was the one used", function()
      local h = seen(get("/hide", { ["Proxy-Authorization"] = basic("nobody", "x"),
                                    Authorization = basic("alice", "alice-pw") }))
      assert.is_nil(h["proxy-authorization"])
      assert.is_nil(h["authorization"])
    end)

    it("also hides rejected credentials when the anonymous consumer takes over", function()
      local h = seen(get("/anonhide", { Authorization = basic("alice", "wrong-pw") }))
      assert.equal("guest", h["x-consumer-username"])
      assert.is_nil(h["authorization"])
    end)
  end)

  describe("anonymous", function()
    it("lets a request without credentials through as the anonymous consumer", function()
      local h = seen(get("/anon"))
      assert.equal("guest", h["x-consumer-username"])
      assert.equal("true", h["x-anonymous-consumer"])
      assert.is_nil(h["x-credential-identifier"])
    end)

    it("also covers wrong and malformed credentials; right ones still win", function()
      assert.equal("guest", seen(get("/anon", { Authorization = basic("alice", "x") }))
                              ["x-consumer-username"])
      assert.equal("guest", seen(get("/anon", { Authorization = "Basic !!" }))
                              ["x-consumer-username"])
      local h = seen(get("/anon", { Authorization = basic("alice", "alice-pw") }))
      assert.equal("alice", h["x-consumer-username"])
      assert.is_nil(h["x-anonymous-consumer"])
      -- not hidden here: hide_credentials is off
      assert.equal(basic("alice", "alice-pw"), h["authorization"])
    end)

    it("finds the anonymous consumer by id too", function()
      local h = seen(get("/anonid"))
      assert.equal(ANON_ID, h["x-consumer-id"])
      assert.equal("anon-by-id", h["x-consumer-custom-id"])
      assert.equal("true", h["x-anonymous-consumer"])
    end)

    it("fails the request with 500 when the anonymous consumer does not exist", function()
      local res = get("/anonmissing")
      assert.equal(500, res.status)
      helpers.eventually(function()
        assert.matches('anonymous consumer "nobody" is configured but doesn\'t exist',
                       gw:error_log(), 1, true)
      end)
      assert.equal(200, get("/anonmissing", { Authorization = basic("alice", "alice-pw") })
                          .status)
    end)

    it("overwrites consumer headers a client tried to forge", function()
      local h = seen(get("/anon", { ["X-Consumer-Username"] = "admin",
                                    ["X-Credential-Identifier"] = "forged",
                                    ["X-Anonymous-Consumer"] = "false" }))
      assert.equal("guest", h["x-consumer-username"])
      assert.is_nil(h["x-credential-identifier"])
      assert.equal("true", h["x-anonymous-consumer"])
      h = seen(get("/default", { Authorization = basic("alice", "alice-pw"),
                                 ["X-Consumer-Custom-ID"] = "forged",
                                 ["X-Anonymous-Consumer"] = "true" }))
      assert.equal("c-alice", h["x-consumer-custom-id"])
      assert.is_nil(h["x-anonymous-consumer"])
    end)
  end)

  describe("with key-auth", function()
    it("without anonymous both are required (logical AND)", function()
      local both = seen(get("/and", { apikey = "carol-key",
                                      Authorization = basic("alice", "alice-pw") }))
      assert.is_nil(both["x-anonymous-consumer"])
      assert.equal(401, get("/and", { apikey = "carol-key" }).status)
      assert_unauthorized(get("/and", { apikey = "carol-key",
                                        Authorization = basic("alice", "nope") }))
      local res = get("/and", { Authorization = basic("alice", "alice-pw") })
      assert.equal(401, res.status)
      assert.same({ message = "No API key found in request" }, res:json())
    end)

    it("with anonymous on both either one is enough (logical OR)", function()
      assert.equal("carol", seen(get("/or", { apikey = "carol-key" }))["x-consumer-username"])
      local h = seen(get("/or", { Authorization = basic("alice", "alice-pw") }))
      assert.equal("alice", h["x-consumer-username"])
      assert.equal("alice", h["x-credential-identifier"])
      -- key-auth (priority 1250) runs first; basic-auth (1100) then has nothing to do,
      -- even with credentials that would fail
      h = seen(get("/or", { apikey = "carol-key", Authorization = basic("alice", "bad") }))
      assert.equal("carol", h["x-consumer-username"])
      h = seen(get("/or"))
      assert.equal("guest", h["x-consumer-username"])
      assert.equal("true", h["x-anonymous-consumer"])
      h = seen(get("/or", { apikey = "wrong", Authorization = basic("alice", "bad") }))
      assert.equal("guest", h["x-consumer-username"])
    end)
  end)

  describe("consumer-scoped plugins", function()
    it("apply once basic-auth identified the consumer, and only for that consumer", function()
      local h = seen(get("/default", { Authorization = basic("alice", "alice-pw") }))
      assert.equal("yes", h["x-alice"])
      h = seen(get("/default", { Authorization = basic("émile", "mot de passe ünïcode") }))
      assert.equal("yes", h["x-alice"])     -- another credential of the same consumer
      h = seen(get("/default", { Authorization = basic("bob", BOB_PASSWORD) }))
      assert.is_nil(h["x-alice"])
      assert.is_nil(seen(get("/anon"))["x-alice"])
    end)
  end)

  describe("secrets", function()
    it("has serialize() redact the header the credentials came in", function()
      assert.equal(200, get("/logged", { Authorization = basic("alice", "alice-pw") }).status)
      assert.equal(200, get("/logged", { ["Proxy-Authorization"] = basic("bob", BOB_PASSWORD) })
                          .status)
      helpers.eventually(function()
        local log = gw:error_log()
        assert.matches("authorization=REDACTED", log, 1, true)
        assert.matches("proxy-authorization=REDACTED", log, 1, true)
      end)
    end)

    it("never writes a password, or the header carrying it, to a log", function()
      get("/default", { Authorization = basic("alice", "Wrong-Secret-123") })
      get("/default", { Authorization = basic("mallory", "Unknown-Secret-456") })
      get("/default", { ["Proxy-Authorization"] = basic("alice", "Proxy-Secret-789") })
      get("/anon", { Authorization = basic("alice", "Anon-Secret-000") })
      get("/logged", { Authorization = basic("alice", "Logged-Secret-111") })
      get("/default", { Authorization = basic("alice", "alice-pw") })
      -- all six requests logged (the serializer's line for /logged included)
      helpers.eventually(function()
        local n = 0
        for _, l in ipairs(gw:access_log_lines()) do
          if l.status == 401 or l.status == 200 then n = n + 1 end
        end
        assert.is_true(n >= 6)
        assert.matches("served GET /logged", gw:error_log(), 1, true)
      end)
      local logs = gw:error_log() .. cjson.encode(gw:access_log_lines()) .. gw:stderr()
      for _, secret in ipairs({ "Wrong-Secret-123", "Unknown-Secret-456", "Proxy-Secret-789",
                                "Anon-Secret-000", "Logged-Secret-111", "alice-pw",
                                BOB_PASSWORD, "pass:with:colons" }) do
        assert.is_nil(logs:find(secret, 1, true), secret)
      end
      for _, header in ipairs({ b64("alice:Wrong-Secret-123"), b64("alice:alice-pw"),
                                b64("bob:" .. BOB_PASSWORD) }) do
        assert.is_nil(logs:find(header, 1, true), header)
      end
    end)
  end)
end)

-- The handler in-process: what it does per request, independent of the gateway.
describe("basic-auth handler (PDK kit)", function()
  local pdk = require "moongate.spec.pdk"
  local handler = dofile(PWD .. "/plugins/basic-auth/handler.lua")
  local plugin_schema = dofile(PWD .. "/plugins/basic-auth/schema.lua")
  local verify = consumers.verify_password
  local verify_unknown = consumers.verify_unknown
  local calls

  lazy_setup(function()
    local errors = {}
    local loaded = consumers.load({
      { index = 0, username = "alice", entity = { basicauth_credentials = {
        { username = "alice", password = "alice-pw" } } } },
    }, errors)
    assert.same({}, errors)
    consumers.activate(loaded)
    -- count the password checks, and against which credential
    consumers.verify_password = function(cred, password)
      calls[#calls + 1] = { username = cred.username, rounds = cred._hash.rounds,
                            password = password }
      return verify(cred, password)
    end
    -- an unknown username: what PBKDF2 work it costs
    consumers.verify_unknown = function(password)
      local real = crypto.pbkdf2
      crypto.pbkdf2 = function(alg, pw, salt, rounds, len)
        calls[#calls + 1] = { username = "", rounds = rounds, password = pw }
        return real(alg, pw, salt, rounds, len)
      end
      local ok, r = pcall(verify_unknown, password)
      crypto.pbkdf2 = real
      assert(ok, r)
      return r
    end
  end)

  lazy_teardown(function()
    consumers.verify_password = verify
    consumers.verify_unknown = verify_unknown
    consumers.activate(consumers.load({}, {}))
  end)

  before_each(function() calls = {} end)

  local function run(headers, conf)
    local kit = pdk.new({ headers = headers })
    kit:run(handler, "access", conf or {}, plugin_schema)
    return kit
  end

  it("checks one password per request: the credential's, or a stand-in's", function()
    local kit = run({ Authorization = basic("alice", "alice-pw") })
    assert.is_false(kit.exited)
    assert.equal(1, #calls)
    assert.equal("alice", calls[1].username)

    kit = run({ Authorization = basic("alice", "wrong") })
    assert.equal(401, kit.exit_status)
    assert.equal(2, #calls)

    -- an unknown user: the same PBKDF2 work (default rounds) against the stand-in
    kit = run({ Authorization = basic("mallory", "wrong") })
    assert.equal(401, kit.exit_status)
    assert.equal(3, #calls)
    assert.equal("", calls[3].username)
    assert.equal(1000, calls[3].rounds)
    assert.equal("wrong", calls[3].password)

    -- a malformed header too
    run({ Authorization = "Basic !!!" })
    assert.equal(4, #calls)
    assert.equal("", calls[4].username)
  end)

  it("checks nothing when no credentials were sent, or a credential was already found",
     function()
    local kit = run({})
    assert.equal(401, kit.exit_status)
    assert.equal(0, #calls)
    kit = pdk.new({ headers = { Authorization = basic("alice", "wrong") },
                    consumer = { id = "x" }, credential = { id = "y" } })
    kit:run(handler, "access", { anonymous = "someone" }, plugin_schema)
    assert.is_false(kit.exited)
    assert.equal(0, #calls)
  end)

  it("marks the header the credentials came in as secret, and hides it on demand", function()
    local kit = run({ ["Proxy-Authorization"] = basic("alice", "alice-pw"),
                      Authorization = "Bearer x" }, { hide_credentials = true })
    assert.is_false(kit.exited)
    assert.is_true(kit.secret_headers["proxy-authorization"])
    assert.is_nil(kit.secret_headers["authorization"])
    assert.is_nil(kit.upstream_request.headers["proxy-authorization"])
    assert.equal("Bearer x", kit.upstream_request.headers["authorization"])
  end)
end)
