-- body_filter: plugins see the response body piece by piece and may rewrite it (the response
-- is then re-framed: chunked for HTTP/1.1, close-delimited for HTTP/1.0), or buffer it whole
-- with Kong's get_raw_body / set_raw_body. Large bodies keep streaming with flat memory.

local helpers = require "spec.helpers"

local PLUGIN_PATH = os.getenv("PWD") .. "/spec/fixtures/plugins/?.lua;;"

describe("body_filter", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "upcase", "wrap" },
      services = { { name = "s", url = up.url, routes = {
        { name = "up", paths = { "/up" }, plugins = { { name = "upcase" } } },
        { name = "up-trailer", paths = { "/trailer" },
          plugins = { { name = "upcase", config = { trailer = "!END" } } } },
        { name = "up-fail", paths = { "/fail" },
          plugins = { { name = "upcase", config = { fail = true } } } },
        { name = "wrap", paths = { "/wrap" }, plugins = { { name = "wrap" } } },
      } } },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("rewrites every piece of a large body, re-framed as chunked", function()
    local n = 300000
    local res = assert(gw:get("/up/big", { headers = { ["X-Upstream-Mode"] = "big:" .. n } }))
    assert.equal(200, res.status)
    assert.is_nil(res.headers["content-length"])
    assert.equal("chunked", res.headers["transfer-encoding"])
    assert.equal(n, #res.body)
    assert.equal(res.body, res.body:upper())
    helpers.eventually(function()
      local pieces = tonumber(gw:error_log():match("upcase saw (%d+) pieces"))
      assert.is_true(pieces and pieces > 2, "pieces: " .. tostring(pieces))
    end, 3)
  end)

  it("can append to the body on the last piece", function()
    local res = assert(gw:get("/trailer/x"))
    assert.equal(200, res.status)
    assert.matches("!END$", res.body)
    assert.equal(res.body, res.body:upper())
  end)

  it("filters a chunked upstream body and answers an HTTP/1.0 client close-delimited", function()
    local raw = helpers.raw(gw.port, "GET /up/c HTTP/1.0\r\nX-Upstream-Mode: chunked-response\r\n\r\n")
    local head, body = raw:match("^(.-\r\n\r\n)(.*)$")
    assert.matches("^HTTP/1.1 200", head)
    assert.is_nil(head:lower():match("content%-length"))
    assert.is_nil(head:lower():match("transfer%-encoding"))
    assert.equal(body, body:upper())
    assert.matches('"METHOD":"GET"', body)
  end)

  it("buffers the whole body for get_raw_body and replaces it with set_raw_body", function()
    local res = assert(gw:get("/wrap/x", { headers = { ["X-Upstream-Mode"] = "big:50000" } }))
    assert.equal(200, res.status)
    assert.matches("^%[50000:", res.body)
    assert.equal("]", res.body:sub(-1))
  end)

  it("delivers a whole rewritten body to an HTTP/1.0 client", function()
    local raw = helpers.raw(gw.port, "GET /wrap/ten HTTP/1.0\r\nX-Upstream-Mode: big:200000\r\n\r\n")
    local body = raw:match("\r\n\r\n(.*)$")
    assert.equal("[200000:", body:sub(1, 8))
    assert.equal("]", body:sub(-1))
  end)

  it("leaves a bodiless response alone (HEAD)", function()
    local res = assert(gw:request({ method = "HEAD", path = "/up/h" }))
    assert.equal(200, res.status)
    assert.equal("", res.body or "")
  end)

  it("calls body_filter once (empty chunk, eof) for responses without a body", function()
    -- HEAD and 204: the filter runs (plugins finish what they started), its output is dropped
    local res = assert(gw:request({ method = "HEAD", path = "/trailer/head-once" }))
    assert.equal(200, res.status)
    assert.equal("", res.body or "")
    res = assert(gw:get("/trailer/nocontent-once",
                        { headers = { ["X-Upstream-Mode"] = "status:204" } }))
    assert.equal(204, res.status)
    assert.equal("", res.body or "")
    helpers.eventually(function()
      assert.matches("upcase saw 1 pieces for /trailer/head%-once", gw:error_log())
      assert.matches("upcase saw 1 pieces for /trailer/nocontent%-once", gw:error_log())
    end, 3)
  end)

  it("lets body_filter give an empty 200 a body", function()
    local res = assert(gw:get("/trailer/e", { headers = { ["X-Upstream-Mode"] = "big:0" } }))
    assert.equal(200, res.status)
    assert.equal("!END", res.body)
  end)

  it("cuts the response when a body_filter fails after the head was sent", function()
    local res, err = gw:get("/fail/x")
    assert.is_nil(res and res.status == 200 and res.body:match("}$") and res)
    helpers.eventually(function()
      assert.matches("%[upcase%] body_filter phase failed", gw:error_log())
    end, 3)
    assert.equal(200, assert(gw:get("/up/ok")).status)
  end)
end)
