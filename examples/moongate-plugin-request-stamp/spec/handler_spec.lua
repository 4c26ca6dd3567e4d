-- request-stamp's handler alone, in process, with moongate's PDK kit (moongate.spec.pdk):
-- no gateway, no network; each `kit` is one request.
local pdk = require "moongate.spec.pdk"
local handler = require "moongate.plugins.request-stamp.handler"
local schema = require "moongate.plugins.request-stamp.schema"

describe("request-stamp handler", function()
  it("stamps the upstream request in access and echoes the stamp in header_filter", function()
    local kit = pdk.new({ method = "POST", path = "/orders", request_id = "abc123",
                          client_ip = "203.0.113.7" })
    kit:run(handler, "access", {}, schema)           -- {}: the schema's defaults apply
    assert.equal("POST /orders abc123 203.0.113.7", kit.upstream_request.headers["x-request-stamp"])

    kit:set_upstream_response({ status = 201 })
    kit:run(handler, "header_filter")                -- same config as in access
    assert.equal(201, kit.response.status)
    assert.equal("POST /orders abc123 203.0.113.7", kit.response.headers["x-request-stamp"])
  end)

  it("marks missing parts with '-'", function()
    local kit = pdk.new({ path = "/x" })
    kit:run(handler, "access", { parts = { "query", "consumer" }, separator = "," }, schema)
    assert.equal("-,-", kit.upstream_request.headers["x-request-stamp"])
  end)

  it("refuses a config its schema refuses", function()
    assert.has_error(function()
      pdk.new():run(handler, "access", { on_conflict = "merge" }, schema)
    end, "config.on_conflict: expected one of: override, append, preserve")
  end)
end)
