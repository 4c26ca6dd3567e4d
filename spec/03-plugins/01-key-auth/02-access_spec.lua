-- key-auth against the real binary and a real echo upstream: where the key may come from,
-- every rejection with its status, body and WWW-Authenticate, hide_credentials, anonymous,
-- run_on_preflight, the consumer headers the upstream sees, and plugins configured on a
-- consumer applying once it is identified.
local helpers = require "spec.helpers"

local PLUGIN_PATH = os.getenv("PWD") .. "/spec/fixtures/plugins/?.lua;;"

describe("key-auth", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    local function svc(name, config, extra)
      local s = { name = name, url = up.url, routes = { { name = name, paths = { "/" .. name } } },
                  plugins = { { name = "key-auth", config = config } } }
      for k, v in pairs(extra or {}) do s[k] = v end
      return s
    end
    gw = helpers.start({
      lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "headers", "serializer" },
      services = {
        svc("default", nil),
        svc("hide", { hide_credentials = true, key_in_body = true }),
        svc("names", { key_names = { "x-api-key", "token" }, key_in_query = false,
                       realm = "orders" }),
        svc("headeronly", { key_in_query = false }),
        svc("queryonly", { key_in_header = false }),
        svc("body", { key_in_body = true, key_in_header = false, key_in_query = false }),
        svc("anon", { anonymous = "guest" }),
        svc("anonid", { anonymous = "9d5b1f7e-6d1c-4f7e-8a1e-3c2b1a0f9e8d" }),
        svc("anonmissing", { anonymous = "nobody" }),
        svc("nopreflight", { run_on_preflight = false }),
        { name = "logged", url = up.url, routes = { { name = "logged", paths = { "/logged" } } },
          plugins = { { name = "key-auth", config = { key_names = { "x-api-key" } } },
                      { name = "serializer" } } },
      },
      consumers = {
        { username = "alice", custom_id = "c-alice",
          keyauth_credentials = { { key = "alice-key" }, { key = "alice-key-2" } },
          plugins = { { name = "headers", config = { header = "X-Alice", value = "yes" } } } },
        { username = "bob", keyauth_credentials = { { key = "bob-key",
          id = "0b0b0b0b-0000-4000-8000-000000000001" } } },
        { username = "guest" },
        { id = "9d5b1f7e-6d1c-4f7e-8a1e-3c2b1a0f9e8d", custom_id = "anon-by-id" },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  local function seen(res) return res:json().headers end

  describe("finds the key", function()
    it("in the apikey header and tells the upstream who called", function()
      local res = assert(gw:get("/default", { headers = { apikey = "alice-key" } }))
      assert.equal(200, res.status)
      local h = seen(res)
      assert.equal("alice", h["x-consumer-username"])
      assert.equal("c-alice", h["x-consumer-custom-id"])
      assert.matches("^%x+%-%x+%-5%x+%-[89ab]%x+%-%x+$", h["x-consumer-id"])
      assert.matches("^%x+%-", h["x-credential-identifier"])
      assert.is_nil(h["x-anonymous-consumer"])
      assert.equal("alice-key", h["apikey"])   -- not hidden by default
    end)

    it("keeps the same consumer id across requests and credentials", function()
      local a = seen(assert(gw:get("/default", { headers = { apikey = "alice-key" } })))
      local b = seen(assert(gw:get("/default", { headers = { apikey = "alice-key-2" } })))
      assert.equal(a["x-consumer-id"], b["x-consumer-id"])
      assert.not_equal(a["x-credential-identifier"], b["x-credential-identifier"])
    end)

    it("uses a credential's configured id as X-Credential-Identifier", function()
      local h = seen(assert(gw:get("/default", { headers = { apikey = "bob-key" } })))
      assert.equal("0b0b0b0b-0000-4000-8000-000000000001", h["x-credential-identifier"])
      assert.is_nil(h["x-consumer-custom-id"])
    end)

    it("in the query string", function()
      local res = assert(gw:get("/default?apikey=bob-key&x=1"))
      assert.equal(200, res.status)
      assert.equal("bob", seen(res)["x-consumer-username"])
    end)

    it("in a form or JSON body when key_in_body is on", function()
      local res = assert(gw:post("/body", "a=1&apikey=bob-key", {
        headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } }))
      assert.equal(200, res.status)
      assert.equal("bob", seen(res)["x-consumer-username"])
      res = assert(gw:post("/body", '{"apikey":"alice-key","n":1}', {
        headers = { ["Content-Type"] = "application/json" } }))
      assert.equal(200, res.status)
      assert.equal("alice", seen(res)["x-consumer-username"])
    end)

    it("under each of several key_names, in order", function()
      local res = assert(gw:get("/names", { headers = { ["X-API-Key"] = "bob-key" } }))
      assert.equal(200, res.status)
      assert.equal(200, assert(gw:get("/names", { headers = { token = "bob-key" } })).status)
      -- the query is not looked at when key_in_query is off
      res = assert(gw:get("/names?token=bob-key"))
      assert.equal(401, res.status)
      assert.equal('Key realm="orders"', res.headers["www-authenticate"])
    end)

    it("only where it is allowed to look", function()
      assert.equal(401, assert(gw:get("/headeronly?apikey=bob-key")).status)
      assert.equal(200, assert(gw:get("/headeronly", { headers = { apikey = "bob-key" } })).status)
      assert.equal(401, assert(gw:get("/queryonly", { headers = { apikey = "bob-key" } })).status)
      assert.equal(200, assert(gw:get("/queryonly?apikey=bob-key")).status)
      assert.equal(401, assert(gw:get("/body?apikey=bob-key")).status)
    end)
  end)

  describe("rejects", function()
    it("a request without a key: 401, Kong's message and WWW-Authenticate", function()
      local res = assert(gw:get("/default"))
      assert.equal(401, res.status)
      assert.same({ message = "No API key found in request" }, res:json())
      assert.equal("Key", res.headers["www-authenticate"])
      assert.matches("^application/json", res.headers["content-type"])
    end)

    it("an empty key like a missing one", function()
      local res = assert(gw:get("/default?apikey="))
      assert.equal(401, res.status)
      assert.same({ message = "No API key found in request" }, res:json())
    end)

    it("a wrong key: 401 Unauthorized, and the upstream is never called", function()
      local before = up:count()
      local res = assert(gw:get("/default", { headers = { apikey = "nope" } }))
      assert.equal(401, res.status)
      assert.same({ message = "Unauthorized" }, res:json())
      assert.equal("Key", res.headers["www-authenticate"])
      assert.equal(before, up:count())
    end)

    it("the key sent twice: 401 Duplicate API key found", function()
      local res = assert(gw:get("/default?apikey=bob-key&apikey=alice-key"))
      assert.equal(401, res.status)
      assert.same({ message = "Duplicate API key found" }, res:json())
      res = assert(gw:get("/default", { headers = { apikey = { "bob-key", "alice-key" } } }))
      assert.equal(401, res.status)
      assert.same({ message = "Duplicate API key found" }, res:json())
    end)

    it("without writing the key to the logs", function()
      gw:get("/default", { headers = { apikey = "wrong-secret-123" } })
      gw:get("/default", { headers = { apikey = "alice-key" } })
      gw:get("/default?apikey=query-secret-456&x=1")
      gw:get("/hide?apikey=bob-key")
      helpers.eventually(function()
        assert.is_true(#gw:access_log_lines() > 0)
      end)
      local logs = gw:error_log() .. helpers.json_encode(gw:access_log_lines())
      assert.not_matches("wrong%-secret%-123", logs)
      assert.not_matches("alice%-key", logs)
      assert.not_matches("query%-secret%-456", logs)
      assert.not_matches("bob%-key", logs)
    end)
  end)

  it("has serialize() redact the header the key came in, whatever its name", function()
    assert.equal(200, assert(gw:get("/logged", { headers = { ["X-API-Key"] = "bob-key" } })).status)
    helpers.eventually(function()
      assert.matches("x-api-key=REDACTED", gw:error_log(), 1, true)
    end)
    assert.not_matches("bob%-key", gw:error_log())
  end)

  describe("hide_credentials", function()
    it("removes the key from the header, the query and the body", function()
      local h = seen(assert(gw:get("/hide", { headers = { apikey = "bob-key", other = "1" } })))
      assert.is_nil(h["apikey"])
      assert.equal("1", h["other"])
      local res = assert(gw:get("/hide?apikey=bob-key&keep=yes"))
      assert.equal(200, res.status)
      assert.equal("/?keep=yes", res:json().path)
      res = assert(gw:post("/hide", '{"apikey":"bob-key","keep":true}', {
        headers = { ["Content-Type"] = "application/json" } }))
      assert.equal(200, res.status)
      local body = require("cjson").decode(res:json().body)
      assert.same({ keep = true }, body)
    end)
  end)

  describe("anonymous", function()
    it("lets a request without a key through as the anonymous consumer (by username)", function()
      local res = assert(gw:get("/anon"))
      assert.equal(200, res.status)
      local h = seen(res)
      assert.equal("guest", h["x-consumer-username"])
      assert.equal("true", h["x-anonymous-consumer"])
      assert.is_nil(h["x-credential-identifier"])
    end)

    it("finds the anonymous consumer by id too", function()
      local h = seen(assert(gw:get("/anonid")))
      assert.equal("9d5b1f7e-6d1c-4f7e-8a1e-3c2b1a0f9e8d", h["x-consumer-id"])
      assert.equal("anon-by-id", h["x-consumer-custom-id"])
    end)

    it("also covers a wrong key, while a right key still identifies its consumer", function()
      assert.equal("guest", seen(assert(gw:get("/anon?apikey=zzz")))["x-consumer-username"])
      local h = seen(assert(gw:get("/anon?apikey=bob-key")))
      assert.equal("bob", h["x-consumer-username"])
      assert.is_nil(h["x-anonymous-consumer"])
    end)

    it("fails the request with 500 when the anonymous consumer does not exist", function()
      local res = assert(gw:get("/anonmissing"))
      assert.equal(500, res.status)
      helpers.eventually(function()
        assert.matches('anonymous consumer "nobody" is configured but doesn\'t exist',
                       gw:error_log(), 1, true)
      end)
      assert.equal(200, assert(gw:get("/anonmissing?apikey=bob-key")).status)
    end)

    it("overwrites consumer headers a client tried to forge", function()
      local h = seen(assert(gw:get("/anon", { headers = { ["X-Consumer-Username"] = "admin",
        ["X-Credential-Identifier"] = "forged" } })))
      assert.equal("guest", h["x-consumer-username"])
      assert.is_nil(h["x-credential-identifier"])
    end)
  end)

  describe("run_on_preflight", function()
    it("checks OPTIONS requests by default", function()
      assert.equal(401, assert(gw:request({ method = "OPTIONS", path = "/default" })).status)
    end)
    it("lets OPTIONS through unchecked when off", function()
      assert.equal(200, assert(gw:request({ method = "OPTIONS", path = "/nopreflight" })).status)
      assert.equal(401, assert(gw:get("/nopreflight")).status)
    end)
  end)

  describe("consumer-scoped plugins", function()
    it("apply once the consumer is identified, and only for that consumer", function()
      local function as(key)
        return seen(assert(gw:get("/default", { headers = { apikey = key } })))
      end
      assert.equal("yes", as("alice-key")["x-alice"])
      assert.is_nil(as("bob-key")["x-alice"])
    end)
  end)
end)
