-- request-size-limiting's schema as `moongate check` applies it: Kong's defaults and units,
-- the errors a user sees with the path of the bad field, and the plugin being allowed on a
-- consumer (Kong has no no_consumer for it).
local helpers = require "spec.helpers"
local schema = require "moongate.schema"

local plugin_schema = dofile(os.getenv("PWD") .. "/plugins/request-size-limiting/schema.lua")

local NAMES = { "bundled", "request-size-limiting" }

local function validate(config)
  return schema.validate_plugin_config(plugin_schema, config, "config")
end

describe("request-size-limiting schema", function()
  it("is a well-formed schema", function()
    assert(schema.check_schema(plugin_schema, "request-size-limiting"))
  end)

  it("fills Kong's defaults: 128 megabytes, Content-Length not required", function()
    local conf = assert(validate({}))
    assert.equal(128, conf.allowed_payload_size)
    assert.equal("megabytes", conf.size_unit)
    assert.is_false(conf.require_content_length)
  end)

  it("takes each unit and keeps the values given", function()
    for _, unit in ipairs({ "megabytes", "kilobytes", "bytes" }) do
      local conf = assert(validate({ allowed_payload_size = 7, size_unit = unit,
                                     require_content_length = true }))
      assert.equal(7, conf.allowed_payload_size)
      assert.equal(unit, conf.size_unit)
      assert.is_true(conf.require_content_length)
    end
  end)

  it("accepts zero and negative sizes as Kong does", function()
    assert.equal(0, assert(validate({ allowed_payload_size = 0 })).allowed_payload_size)
    assert.equal(-1, assert(validate({ allowed_payload_size = -1 })).allowed_payload_size)
  end)

  it("refuses bad values with the path of the field", function()
    local _, errs = validate({ allowed_payload_size = 1.5, size_unit = "gigabytes",
                               require_content_length = "yes", unknown = 1 })
    assert.same({
      "config.allowed_payload_size: expected an integer",
      "config.size_unit: expected one of: megabytes, kilobytes, bytes",
      "config.require_content_length: expected a boolean",
      "config.unknown: unknown field",
    }, errs)
    _, errs = validate({ allowed_payload_size = "10" })
    assert.same({ "config.allowed_payload_size: expected an integer" }, errs)
    _, errs = validate({ size_unit = "Bytes" })   -- units are case-sensitive, as in Kong
    assert.same({ "config.size_unit: expected one of: megabytes, kilobytes, bytes" }, errs)
  end)

  it("is checked by `moongate check` against the config file", function()
    local rc, out = helpers.check({
      plugins = NAMES,
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } },
        plugins = { { name = "request-size-limiting", config = { size_unit = "KB" } } } } } })
    assert.equal(1, rc)
    assert.matches("services%[0%]%.plugins%[0%]%.config%.size_unit: expected one of: "
                   .. "megabytes, kilobytes, bytes", table.concat(out, "\n"))
  end)

  it("may be configured globally, on a service, a route and a consumer", function()
    local rc, out = helpers.check({
      plugins = { "bundled", "request-size-limiting",
                  { name = "request-size-limiting", config = { allowed_payload_size = 1 } } },
      services = { { name = "s", url = "http://127.0.0.1:9",
        plugins = { { name = "request-size-limiting" } },
        routes = { { paths = { "/" }, plugins = { { name = "request-size-limiting",
          config = { allowed_payload_size = 10, size_unit = "kilobytes" } } } } } } },
      consumers = { { username = "a", plugins = { { name = "request-size-limiting",
        config = { allowed_payload_size = 5, size_unit = "bytes" } } } } } })
    assert.equal(0, rc, table.concat(out, "\n"))
  end)
end)
