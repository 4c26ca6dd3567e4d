-- request-termination's schema as `moongate check` applies it: Kong's defaults, the status
-- range, the cross-field rules (message/body/content_type/echo) with Kong's messages, the
-- trigger's header-name rule, and the plugin being allowed on a consumer.
local helpers = require "spec.helpers"
local schema = require "moongate.schema"

local plugin_schema = dofile(os.getenv("PWD") .. "/plugins/request-termination/schema.lua")

local function validate(config)
  return schema.validate_plugin_config(plugin_schema, config, "config")
end

local function refused(config)
  local conf, errs = validate(config)
  assert.is_nil(conf)
  return errs
end

describe("request-termination schema", function()
  it("is a well-formed schema", function()
    assert(schema.check_schema(plugin_schema, "request-termination"))
  end)

  it("fills Kong's defaults: 503, no message, body or trigger, echo off", function()
    local conf = assert(validate({}))
    assert.equal(503, conf.status_code)
    assert.is_false(conf.echo)
    assert.is_nil(conf.message)
    assert.is_nil(conf.body)
    assert.is_nil(conf.content_type)
    assert.is_nil(conf.trigger)
  end)

  it("keeps every field given", function()
    local conf = assert(validate({ status_code = 451, body = "<h1>gone</h1>",
                                   content_type = "text/html", trigger = "X-Kill_Switch" }))
    assert.equal(451, conf.status_code)
    assert.equal("<h1>gone</h1>", conf.body)
    assert.equal("text/html", conf.content_type)
    assert.equal("X-Kill_Switch", conf.trigger)
    conf = assert(validate({ echo = true, message = "hi", status_code = 200 }))
    assert.is_true(conf.echo)
    assert.equal("hi", conf.message)
  end)

  it("takes status codes from 200 to 599 only (a 1xx would be an interim answer)", function()
    assert(validate({ status_code = 200 }))
    assert(validate({ status_code = 599 }))
    assert.same({ "config.status_code: value should be between 200 and 599" },
                refused({ status_code = 199 }))
    assert.same({ "config.status_code: value should be between 200 and 599" },
                refused({ status_code = 100 }))
    assert.same({ "config.status_code: value should be between 200 and 599" },
                refused({ status_code = 600 }))
    assert.same({ "config.status_code: expected an integer" }, refused({ status_code = 4.5 }))
    assert.same({ "config.status_code: expected an integer" }, refused({ status_code = "503" }))
  end)

  it("refuses message with body or content_type (Kong's message)", function()
    local msg = { "config: message cannot be used with content_type or body" }
    assert.same(msg, refused({ message = "m", body = "b" }))
    assert.same(msg, refused({ message = "m", body = "b", content_type = "text/plain" }))
    assert.same(msg, refused({ message = "m", content_type = "text/plain" }))
  end)

  it("refuses content_type without a body", function()
    assert.same({ "config: content_type requires a body" },
                refused({ content_type = "text/plain" }))
  end)

  it("refuses echo with body or content_type", function()
    local msg = { "config: echo cannot be used with content_type and body" }
    assert.same(msg, refused({ echo = true, body = "b" }))
    assert.same(msg, refused({ echo = true, body = "b", content_type = "text/plain" }))
  end)

  it("refuses empty strings, as Kong does", function()
    assert.same({ "config.message: length must be at least 1" }, refused({ message = "" }))
    assert.same({ "config.body: length must be at least 1" }, refused({ body = "" }))
  end)

  it("takes a header name as trigger, with Kong's message otherwise", function()
    assert(validate({ trigger = "gimme-an-echo" }))
    assert.same({ "config.trigger: bad header name 'x y', allowed characters are A-Z, a-z, "
                  .. "0-9, '_', and '-'" }, refused({ trigger = "x y" }))
    assert.same({ "config.trigger: bad header name 'a:b', allowed characters are A-Z, a-z, "
                  .. "0-9, '_', and '-'" }, refused({ trigger = "a:b" }))
    assert.same({ "config.trigger: length must be at least 1" }, refused({ trigger = "" }))
  end)

  it("refuses wrong types and unknown fields with their paths", function()
    assert.same({
      "config.message: expected a string",
      "config.echo: expected a boolean",
      "config.nope: unknown field",
    }, refused({ message = 1, echo = "yes", nope = true }))
  end)

  it("is checked by `moongate check` and may be set on a consumer", function()
    local rc, out = helpers.check({
      plugins = { "bundled", "request-termination" },
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } },
        plugins = { { name = "request-termination",
                      config = { message = "m", body = "b" } } } } } })
    assert.equal(1, rc)
    assert.matches("services%[0%]%.plugins%[0%]%.config: message cannot be used with "
                   .. "content_type or body", table.concat(out, "\n"))
    rc, out = helpers.check({
      plugins = { "bundled", "request-termination" },
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } } } },
      consumers = { { username = "a", plugins = { { name = "request-termination",
        config = { status_code = 403, message = "blocked" } } } } } })
    assert.equal(0, rc, table.concat(out, "\n"))
  end)
end)
