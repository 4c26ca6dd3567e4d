-- key-auth's schema as `moongate check` applies it: defaults, types, and the errors a user
-- sees, with the path of the bad field.
local helpers = require "spec.helpers"
local schema = require "moongate.schema"

package.path = os.getenv("PWD") .. "/plugins/?.lua;" .. package.path
local plugin_schema = dofile(os.getenv("PWD") .. "/plugins/key-auth/schema.lua")

describe("key-auth schema", function()
  it("fills Kong's defaults", function()
    local conf = assert(schema.validate_plugin_config(plugin_schema, {}, "config"))
    assert.same({ "apikey" }, conf.key_names)
    assert.is_false(conf.hide_credentials)
    assert.is_true(conf.key_in_header)
    assert.is_true(conf.key_in_query)
    assert.is_false(conf.key_in_body)
    assert.is_true(conf.run_on_preflight)
    assert.is_nil(conf.anonymous)
    assert.is_nil(conf.realm)
  end)

  it("refuses bad values with the path of the field", function()
    local _, errs = schema.validate_plugin_config(plugin_schema, {
      key_names = { "api key" }, hide_credentials = "yes", realm = 3, unknown = 1 }, "config")
    assert.same({
      "config.key_names[0]: invalid value: api key",
      "config.hide_credentials: expected a boolean",
      "config.realm: expected a string",
      "config.unknown: unknown field",
    }, errs)
    local _, errs2 = schema.validate_plugin_config(plugin_schema, { key_names = {} }, "config")
    assert.same({ "config.key_names: length must be at least 1" }, errs2)
    -- the realm goes into WWW-Authenticate: no control characters
    local _, errs3 = schema.validate_plugin_config(plugin_schema, { realm = "a\r\nX: y" },
                                                   "config")
    assert.equal(1, #errs3)
    assert.matches("^config%.realm: ", errs3[1])
  end)

  it("is checked by `moongate check` against the config file", function()
    local rc, out = helpers.check({
      services = { { name = "s", url = "http://127.0.0.1:9",
        routes = { { paths = { "/" } } },
        plugins = { { name = "key-auth", config = { key_in_query = "no" } } } } } })
    assert.equal(1, rc)
    assert.matches("services%[0%]%.plugins%[0%]%.config%.key_in_query: expected a boolean",
                   table.concat(out, "\n"))
  end)

  it("cannot be configured on a consumer (Kong's no_consumer), nested or by reference", function()
    local rc, out = helpers.check({
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } } } },
      consumers = { { username = "a", plugins = { { name = "key-auth" } } } },
      plugins = { { name = "key-auth", consumer = "a" } } })
    local text = table.concat(out, "\n")
    assert.equal(1, rc)
    assert.matches('consumers%[0%]%.plugins%[0%]: plugin "key%-auth" cannot be configured on a '
                   .. "consumer", text)
    assert.matches('plugins%[0%]: plugin "key%-auth" cannot be configured on a consumer', text)
  end)

  it("validates the credentials: required key, unique keys, no secret in the error", function()
    local rc, out = helpers.check({
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } } } },
      consumers = {
        { username = "a", keyauth_credentials = { { key = "s3cr3t-one" }, { tags = { "x" } } } },
        { username = "b", keyauth_credentials = { { key = "s3cr3t-one" } } },
      } })
    local text = table.concat(out, "\n")
    assert.equal(1, rc)
    assert.matches("consumers%[0%]%.keyauth_credentials%[1%]%.key: required field missing", text)
    assert.matches("consumers%[1%]%.keyauth_credentials%[0%]%.key: must be unique %(also used by "
                   .. "consumers%[0%]%.keyauth_credentials%[0%]%)", text)
    assert.not_matches("s3cr3t", text)
  end)
end)
