-- Plugins reading and replacing the request body: moongate.request.get_raw_body/get_body
-- (read without blocking the worker, bounded by limits.client_body_buffer_size) and
-- moongate.service.request.set_raw_body/set_body; the upstream gets the body with the right
-- Content-Length either way.

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local PLUGIN_PATH = os.getenv("PWD") .. "/spec/fixtures/plugins/?.lua;;"

describe("request body in plugins", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "bodyreader", "bodylimit" },
      limits = { client_body_buffer_size = "64k", client_body_timeout = "2s" },
      services = { { name = "s", url = up.url, routes = {
        { name = "b", paths = { "/b" }, plugins = { { name = "bodyreader" } } },
        { name = "plain", paths = { "/plain" } },
        { name = "limited", paths = { "/limited" },
          plugins = { { name = "bodylimit", config = { bytes = 1000, message = "over 1000" } } } },
      } } },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("reads the body and still sends it upstream with its Content-Length", function()
    local body = ("0123456789"):rep(2000)
    local res = assert(gw:post("/b/x", body))
    assert.equal(200, res.status)
    local seen = res:json()
    assert.equal(body, seen.body)
    assert.equal("content-length", seen.received_framing)
    assert.equal("20000", seen.headers["x-seen-length"])
  end)

  it("reads a chunked body and forwards it with a Content-Length", function()
    local raw = helpers.raw(gw.port, "POST /b/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
      .. "Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    local res = helpers.parse_response(raw)[1]
    assert.equal(200, res.status)
    local seen = cjson.decode(res.body)
    assert.equal("hello world", seen.body)
    assert.equal("content-length", seen.received_framing)
  end)

  it("waits for a slow body without blocking the worker", function()
    local c = assert(helpers.connect(gw.port, { timeout = 5 }))
    assert(c:send("POST /b/slow HTTP/1.1\r\nHost: x\r\nX-Body-Action: report\r\n"
                  .. "Content-Length: 10\r\nConnection: close\r\n\r\nabc"))
    helpers.sleep(0.2)
    assert.equal(200, assert(gw:get("/plain")).status)   -- served meanwhile
    assert(c:send("defghij"))
    local res = assert(c:read_response({ timeout = 3 }))
    c:close()
    assert.equal(200, res.status)
    assert.same({ length = 10, head = "abcdefghij" }, cjson.decode(res.body))
  end)

  it("parses JSON and form bodies with get_body", function()
    local res = assert(gw:post("/b/j", '{"a":[1,2],"b":"x"}', {
      headers = { ["Content-Type"] = "application/json", ["X-Body-Action"] = "parse" } }))
    assert.same({ a = { 1, 2 }, b = "x" }, res:json().body)
    assert.equal("application/json", res:json().mime)
    res = assert(gw:post("/b/f", "k=v+w&k=2&flag", {
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded",
                  ["X-Body-Action"] = "parse" } }))
    assert.same({ k = { "v w", "2" }, flag = true }, res:json().body)
  end)

  it("replaces the upstream body with set_raw_body and set_body", function()
    local seen = assert(gw:post("/b/r", "original", {
      headers = { ["X-Body-Action"] = "replace" } })):json()
    assert.equal("replaced:8", seen.body)
    assert.equal("10", seen.headers["content-length"])
    seen = assert(gw:post("/b/r", "original", { headers = { ["X-Body-Action"] = "json" } })):json()
    assert.same({ original_length = 8 }, cjson.decode(seen.body))
    assert.equal("application/json", seen.headers["content-type"])
  end)

  it("refuses to buffer a body larger than client_body_buffer_size", function()
    local res = assert(gw:post("/b/big", ("x"):rep(70000)))
    assert.equal(413, res.status)
    assert.matches("client_body_buffer_size", res:json().message)
  end)

  it("answers 100 Continue when a plugin reads a body the client holds back for it", function()
    local c = assert(helpers.connect(gw.port, { timeout = 5 }))
    assert(c:send("POST /b/e HTTP/1.1\r\nHost: x\r\nX-Body-Action: report\r\n"
                  .. "Content-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"))
    assert.equal("HTTP/1.1 100 Continue", c:receive_line(3))
    assert.equal("", c:receive_line(3))
    assert(c:send("hello"))
    local res = assert(c:read_response({ timeout = 3 }))
    c:close()
    assert.equal(200, res.status)
    assert.same({ length = 5, head = "hello" }, cjson.decode(res.body))
  end)

  it("refuses with 413 a body too large to buffer that a plugin read partly and ignored",
     function()
    local before = up:count()
    local chunk = ("C"):rep(20000)
    local raw = helpers.raw(gw.port, "POST /b/ignore HTTP/1.1\r\nHost: x\r\nX-Body-Action: ignore\r\n"
      .. "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
      .. string.format("%x", #chunk) .. "\r\n" .. chunk .. "\r\n"
      .. string.format("%x", #chunk) .. "\r\n" .. chunk .. "\r\n"
      .. string.format("%x", #chunk) .. "\r\n" .. chunk .. "\r\n"
      .. string.format("%x", #chunk) .. "\r\n" .. chunk .. "\r\n0\r\n\r\n")
    assert.matches("^HTTP/1.1 413 ", raw)
    assert.equal(before, up:count())                      -- nothing half-read was proxied
  end)

  it("answers 408 when the body stops arriving while a plugin waits for it", function()
    local c = assert(helpers.connect(gw.port, { timeout = 5 }))
    assert(c:send("POST /b/stall HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"))
    local res = assert(c:read_response({ timeout = 5 }))
    c:close()
    assert.equal(408, res.status)
  end)

  describe("moongate.request.limit_body", function()
    it("lets a body within the lowered limit through", function()
      local res = assert(gw:post("/limited", ("x"):rep(1000)))
      assert.equal(200, res.status)
      assert.equal(1000, #res:json().body)
    end)

    it("tells the plugin when Content-Length is already over it", function()
      local before = up:count()
      local res = assert(gw:post("/limited", ("x"):rep(1001)))
      assert.equal(413, res.status)
      assert.same({ message = "known too large: over 1000" }, res:json())
      assert.equal(before, up:count())
    end)

    it("answers 413 with the plugin's message mid-stream for a chunked body", function()
      local pieces = { ("y"):rep(600), ("y"):rep(600), ("y"):rep(600) }
      local i = 0
      local res = assert(gw:post("/limited", function()
        i = i + 1
        return pieces[i]
      end))
      assert.equal(413, res.status)
      assert.same({ message = "over 1000" }, res:json())
    end)

    it("never raises the configured limit: other routes keep theirs", function()
      assert.equal(200, assert(gw:post("/plain", ("z"):rep(5000))).status)
    end)
  end)
end)
