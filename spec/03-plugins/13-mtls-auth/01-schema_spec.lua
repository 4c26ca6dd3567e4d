-- mtls-auth's schema as `moongate check` applies it: Kong Enterprise's defaults (but
-- revocation_check_mode SKIP), the errors a user sees with the path of the bad field, the
-- ca_certificates ids checked against the ca_certificates entities, and no consumer scope.
local helpers = require "spec.helpers"
local schema = require "moongate.schema"
local pki = require "spec.pki"

local plugin_schema = dofile(os.getenv("PWD") .. "/plugins/mtls-auth/schema.lua")

describe("mtls-auth schema", function()
  it("fills Kong's defaults", function()
    local conf = assert(schema.validate_plugin_config(plugin_schema,
                                                      { ca_certificates = { "a" } }, "config"))
    assert.same({ "username", "custom_id" }, conf.consumer_by)
    assert.same({ "a" }, conf.ca_certificates)
    assert.equal(60, conf.cache_ttl)
    assert.is_false(conf.skip_consumer_lookup)
    assert.is_false(conf.allow_partial_chain)
    assert.equal("CN", conf.authenticated_group_by)
    assert.equal("SKIP", conf.revocation_check_mode)
    assert.is_false(conf.send_ca_dn)
    assert.is_nil(conf.anonymous)
    assert.is_nil(conf.default_consumer)
  end)

  it("refuses bad values with the path of the field", function()
    local _, errs = schema.validate_plugin_config(plugin_schema, {}, "config")
    assert.same({ "config.ca_certificates: required field missing" }, errs)
    _, errs = schema.validate_plugin_config(plugin_schema, {
      ca_certificates = {}, consumer_by = { "email" }, authenticated_group_by = "OU",
      skip_consumer_lookup = "yes", unknown = 1 }, "config")
    table.sort(errs)
    assert.same({
      "config.authenticated_group_by: expected one of: CN, DN",
      "config.ca_certificates: length must be at least 1",
      "config.consumer_by[0]: expected one of: username, custom_id",
      "config.skip_consumer_lookup: expected a boolean",
      "config.unknown: unknown field",
    }, errs)
  end)

  it("refuses revocation checks it cannot do", function()
    for _, mode in ipairs({ "IGNORE_CA_ERROR", "STRICT" }) do
      local _, errs = schema.validate_plugin_config(plugin_schema,
        { ca_certificates = { "a" }, revocation_check_mode = mode }, "config")
      assert.same({ "config.revocation_check_mode: revocation checks (OCSP, CRL) are not "
                    .. "supported: only SKIP" }, errs)
    end
  end)

  describe("in `moongate check`", function()
    local ca
    lazy_setup(function() ca = pki.ca() end)
    lazy_teardown(function() if ca then ca:cleanup() end end)

    local function conf(plugin, extra)
      local c = {
        ca_certificates = { { id = "11111111-1111-4111-8111-111111111111", cert = ca.crt } },
        services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } },
                       plugins = plugin and { plugin } or nil } },
      }
      for k, v in pairs(extra or {}) do c[k] = v end
      return c
    end

    it("accepts ids of ca_certificates entities", function()
      local rc, out = helpers.check(conf({ name = "mtls-auth", config = {
        ca_certificates = { "11111111-1111-4111-8111-111111111111" } } }))
      assert.equal(0, rc, table.concat(out, "\n"))
    end)

    it("refuses an id no ca_certificate has, with its path", function()
      local rc, out = helpers.check(conf({ name = "mtls-auth", config = {
        ca_certificates = { "11111111-1111-4111-8111-111111111111", "nope" } } }))
      assert.equal(1, rc)
      assert.same({ "services[0].plugins[0].config.ca_certificates[1]: no ca_certificate has "
                    .. "id 'nope'" }, out)
    end)

    it("cannot be configured on a consumer", function()
      local rc, out = helpers.check(conf(nil, {
        consumers = { { username = "a", plugins = { { name = "mtls-auth", config = {
          ca_certificates = { "11111111-1111-4111-8111-111111111111" } } } } } } }))
      assert.equal(1, rc)
      assert.matches('consumers%[0%]%.plugins%[0%]: plugin "mtls%-auth" cannot be configured '
                     .. "on a consumer", table.concat(out, "\n"))
    end)
  end)
end)
