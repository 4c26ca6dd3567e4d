-- basic-auth's schema as `moongate check` applies it: Kong 3.x's fields and defaults, the
-- errors a user sees (with the path of the bad field), and the basicauth_credentials checks,
-- none of which may ever print a password.
local helpers = require "spec.helpers"
local schema = require "moongate.schema"
local consumers = require "moongate.consumers"

local plugin_schema = dofile(os.getenv("PWD") .. "/plugins/basic-auth/schema.lua")

local function validate(conf)
  return schema.validate_plugin_config(plugin_schema, conf, "config")
end

local function service(plugin_config)
  return { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } },
           plugins = { { name = "basic-auth", config = plugin_config } } }
end

describe("basic-auth schema", function()
  it("is a valid plugin schema named basic-auth", function()
    assert.is_true(schema.check_schema(plugin_schema, "basic-auth"))
  end)

  it("fills Kong 3.x's defaults: hide_credentials false, realm \"service\"", function()
    local conf = assert(validate({}))
    assert.is_false(conf.hide_credentials)
    assert.equal("service", conf.realm)
    assert.is_nil(conf.anonymous)
    -- nothing else: no run_on_preflight, no key_names
    assert.same({ "hide_credentials", "realm" }, (function()
      local keys = {}
      for k in pairs(conf) do keys[#keys + 1] = k end
      table.sort(keys)
      return keys
    end)())
  end)

  it("keeps the values it is given", function()
    local conf = assert(validate({ hide_credentials = true, realm = "orders",
                                   anonymous = "guest" }))
    assert.is_true(conf.hide_credentials)
    assert.equal("orders", conf.realm)
    assert.equal("guest", conf.anonymous)
    -- an id works as well as a username
    conf = assert(validate({ anonymous = "9d5b1f7e-6d1c-4f7e-8a1e-3c2b1a0f9e8d" }))
    assert.equal("9d5b1f7e-6d1c-4f7e-8a1e-3c2b1a0f9e8d", conf.anonymous)
  end)

  it("refuses bad values with the path of the field", function()
    local _, errs = validate({ hide_credentials = "yes", realm = 3, anonymous = false,
                               unknown = 1 })
    assert.same({
      "config.anonymous: expected a string",
      "config.hide_credentials: expected a boolean",
      "config.realm: expected a string",
      "config.unknown: unknown field",
    }, errs)
  end)

  it("refuses empty strings, as Kong does", function()
    local _, errs = validate({ realm = "", anonymous = "" })
    assert.same({
      "config.anonymous: length must be at least 1",
      "config.realm: length must be at least 1",
    }, errs)
  end)

  it("has no run_on_preflight (Kong's basic-auth has none either)", function()
    local _, errs = validate({ run_on_preflight = false })
    assert.same({ "config.run_on_preflight: unknown field" }, errs)
  end)

  it("refuses a realm that could not go into a header (control characters)", function()
    local _, errs = validate({ realm = "a\r\nX-Injected: 1" })
    assert.same({ "config.realm: invalid value: a\r\nX-Injected: 1" }, errs)
    _, errs = validate({ realm = "tab\there" })
    assert.equal(1, #errs)
    -- quotes and backslashes are fine: the handler escapes them
    assert.truthy(validate({ realm = 'say "hi" \\o/' }))
  end)

  it("is checked by `moongate check` against the config file", function()
    local rc, out = helpers.check({ services = { service({ hide_credentials = "no" }) } })
    assert.equal(1, rc)
    assert.matches("services%[0%]%.plugins%[0%]%.config%.hide_credentials: expected a boolean",
                   table.concat(out, "\n"))
    rc, out = helpers.check({ services = { service({ run_on_preflight = true }) } })
    assert.equal(1, rc)
    assert.matches("services%[0%]%.plugins%[0%]%.config%.run_on_preflight: unknown field",
                   table.concat(out, "\n"))
    rc, out = helpers.check({ services = { service({ realm = "api", hide_credentials = true,
                                                     anonymous = "guest" }) } })
    assert.equal(0, rc, table.concat(out, "\n"))
  end)

  describe("basicauth_credentials", function()
    it("need a username and a password; usernames are unique; no password in any error",
       function()
      local rc, out = helpers.check({
        services = { service() },
        consumers = {
          { username = "a", basicauth_credentials = {
              { username = "ann", password = "Plain-Secret-One" },
              { username = "ann2" },
              { password = "Plain-Secret-Two" },
              { username = "ann3", password = "Plain-Secret-Three", colour = "red" },
              { username = "ann4", password = 12345 },
              { username = "ann5", password = "" } } },
          { username = "b", basicauth_credentials = {
              { username = "ann", password = "Plain-Secret-Four" } } },
        } })
      local text = table.concat(out, "\n")
      assert.equal(1, rc)
      local P = "consumers%[0%]%.basicauth_credentials%["
      assert.matches(P .. "1%]%.password: required field missing", text)
      assert.matches(P .. "2%]%.username: required field missing", text)
      assert.matches(P .. "3%]%.colour: unknown field", text)
      assert.matches(P .. "4%]%.password: expected a string", text)
      assert.matches(P .. "5%]%.password: length must be at least 1", text)
      assert.matches("consumers%[1%]%.basicauth_credentials%[0%]%.username: must be unique "
                     .. "%(also used by consumers%[0%]%.basicauth_credentials%[0%]%)", text)
      assert.not_matches("Plain%-Secret", text)
      assert.not_matches("12345", text)
    end)

    it("accept a password hashed by consumers.hash_password", function()
      local hashed = consumers.hash_password("Plain-Secret-Five")
      assert.matches("^%$pbkdf2%-sha256%$1000%$[%w+/]+=*%$[%w+/]+=*$", hashed)
      local rc, out = helpers.check({
        services = { service() },
        consumers = { { username = "a", basicauth_credentials = {
          { username = "ann", password = hashed },
          { username = "ann2", password = consumers.hash_password("x", 5000) } } } } })
      assert.equal(0, rc, table.concat(out, "\n"))
    end)

    it("refuse a malformed $pbkdf2-sha256$ hash without printing it", function()
      local good = consumers.hash_password("Plain-Secret-Six")
      local salt_b64 = good:match("^%$pbkdf2%-sha256%$%d+%$([^$]+)%$")
      local rc, out = helpers.check({
        services = { service() },
        consumers = { { username = "a", basicauth_credentials = {
          { username = "ann", password = good:sub(1, -6) },              -- short digest
          { username = "ann2", password = "$pbkdf2-sha256$0$" .. salt_b64 .. "$AAAA" },
          { username = "ann3", password = "$pbkdf2-sha256$" } } } } })
      local text = table.concat(out, "\n")
      assert.equal(1, rc)
      for i = 0, 2 do
        assert.matches("consumers%[0%]%.basicauth_credentials%[" .. i .. "%]%.password: "
                       .. "malformed %$pbkdf2%-sha256%$ hash", text)
      end
      assert.not_matches(salt_b64:gsub("%p", "%%%0"), text)
    end)

    it("refuse control characters in usernames and passwords (RFC 7617)", function()
      local rc, out = helpers.check({
        services = { service() },
        consumers = { { username = "a", basicauth_credentials = {
          { username = "ann", password = "tab\there" },
          { username = "b\1b", password = "fine" } } } } })
      local text = table.concat(out, "\n")
      assert.equal(1, rc)
      assert.matches("consumers%[0%]%.basicauth_credentials%[0%]%.password: must not contain "
                     .. "control characters", text)
      assert.matches("consumers%[0%]%.basicauth_credentials%[1%]%.username: must not contain "
                     .. "control characters", text)
      assert.not_matches("tab", text)
    end)
  end)
end)
