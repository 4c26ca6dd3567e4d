-- acl's schema: exactly one of allow / deny, Kong's defaults, and the errors `moongate
-- check` reports with the path of the plugin.
local helpers = require "spec.helpers"
local schema = require "moongate.schema"

local plugin_schema = dofile(os.getenv("PWD") .. "/plugins/acl/schema.lua")

describe("acl schema", function()
  it("fills Kong's defaults", function()
    local conf = assert(schema.validate_plugin_config(plugin_schema, { allow = { "a" } }))
    assert.same({ "a" }, conf.allow)
    assert.is_false(conf.hide_groups_header)
    assert.is_false(conf.always_use_authenticated_groups)
  end)

  it("needs one of allow / deny, and not both", function()
    local _, errs = schema.validate_plugin_config(plugin_schema, {}, "config")
    assert.same({
      "config: exactly one of these fields must be non-empty: 'config.allow', 'config.deny'",
      "config: at least one of these fields must be non-empty: 'config.allow', 'config.deny'",
    }, errs)
    _, errs = schema.validate_plugin_config(plugin_schema, { allow = { "a" }, deny = { "b" } },
                                            "config")
    assert.same({
      "config: exactly one of these fields must be non-empty: 'config.allow', 'config.deny'",
    }, errs)
  end)

  it("refuses wrong types", function()
    local _, errs = schema.validate_plugin_config(plugin_schema,
      { allow = "admins", hide_groups_header = 1 }, "config")
    assert.same({ "config.allow: expected an array",
                  "config.hide_groups_header: expected a boolean" }, errs)
  end)

  it("is checked by `moongate check`", function()
    local rc, out = helpers.check({
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } },
        plugins = { { name = "acl", config = { allow = { "" } } } } } } })
    assert.equal(1, rc)
    assert.matches("services%[0%]%.plugins%[0%]%.config%.allow%[0%]: length must be at least 1",
                   table.concat(out, "\n"))
  end)

  it("validates acls credentials: a group is required", function()
    local rc, out = helpers.check({
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } } } },
      consumers = { { username = "a", acls = { { group = "ok" }, { tags = { "x" } } } } } })
    assert.equal(1, rc)
    assert.matches("consumers%[0%]%.acls%[1%]%.group: required field missing",
                   table.concat(out, "\n"))
  end)
end)
