-- moongate.http (DESIGN.md §4): an HTTP/1.1 client on cosockets. A test plugin
-- (spec/fixtures/plugins/moongate/plugins/httpc-client) uses it in the access phase against
-- the helpers' echo upstream, which reports what it received, and answers with what it got.
-- Covered: queries and headers, request bodies (string, array, iterator sent chunked),
-- Content-Length / chunked / read-until-close responses, a 200 kB body, streaming with
-- body_reader, bodiless responses, keepalive reuse and `Connection: close`, timeouts,
-- refused connections, broken responses, misuse, and HTTPS (openssl s_server).

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local fmt = string.format

local PWD = os.getenv("PWD")
local PLUGIN_PATH = PWD .. "/spec/fixtures/plugins/?.lua;;"
local OWN_PID = tonumber((helpers.read_file("/proc/self/stat") or ""):match("^(%d+)"))

local function settings(up)
  return {
    lua_package_path = PLUGIN_PATH,
    plugins = { "bundled", "httpc-client" },
    services = {
      { name = "plain", url = up.url, routes = { { name = "plain", paths = { "/plain" } } } },
      { name = "httpc", url = up.url, plugins = { { name = "httpc-client" } },
        routes = { { name = "httpc", paths = { "/httpc" } } } },
    },
  }
end

local function call(gw, action, port, headers)
  local h = { ["X-Action"] = action, ["X-Port"] = tostring(port) }
  for k, v in pairs(headers or {}) do h[k] = v end
  local res = assert(gw:get("/httpc", { headers = h, timeout = 10 }))
  assert.equal(200, res.status, res.body)
  return assert(cjson.decode(res.body), res.body)
end

describe("moongate.http", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start(settings(up))
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("sends a GET with the URI's query and a query table, custom headers, Host and "
     .. "User-Agent; answers headers in any case", function()
    local r = call(gw, "get", up.port)
    assert.is_nil(r.err)
    assert.equal(200, r.status)
    assert.equal("OK", r.reason)
    assert.equal(1.1, r.version)
    assert.equal("application/json", r.ctype)
    assert.equal(r.ctype, r.ctype_lower)
    assert.equal(r.ctype, r.ctype_upper)
    assert.is_false(r.has_reader)
    local e = r.echo
    assert.equal("GET", e.method)
    assert.equal("/get?x=1&a=x&a=y&b=2%203", e.path)
    assert.equal("yes", e.headers["x-custom"])
    assert.same({ "1", "2" }, e.headers["x-many"])
    assert.equal("moongate", e.headers["user-agent"])
    assert.equal("127.0.0.1:" .. up.port, e.headers.host)
    assert.equal("none", e.received_framing)
  end)

  it("sends bodies: a string and an array with Content-Length, an iterator chunked",
     function()
    local r = call(gw, "post", up.port)
    assert.is_nil(r.err)
    assert.equal("POST", r.string.method)
    assert.equal("hello world", r.string.body)
    assert.equal("11", r.string.headers["content-length"])
    assert.equal("text/plain", r.string.headers["content-type"])
    assert.equal("a", r.string.headers["x-custom-a"])
    assert.equal("PUT", r.table.method)
    assert.equal("abcdef", r.table.body)
    assert.equal("content-length", r.table.received_framing)
    assert.equal("one,two,three", r.iter.body)
    assert.equal("chunked", r.iter.received_framing)
    assert.equal("/qs?k=v&w=1", r.qs.path)
    assert.same({ false, "request body: no more data" }, r.iter_fails)
  end)

  it("decodes a chunked response", function()
    local r = call(gw, "chunked", up.port)
    assert.is_nil(r.err)
    assert.equal(200, r.status)
    assert.equal("chunked", r.te)
    assert.is_nil(r.cl)
    assert.equal("/chunked", r.echo.path)
  end)

  it("reads a 200000-byte body to the exact length, sized and chunked", function()
    local r = call(gw, "big", up.port)
    assert.is_nil(r.err)
    assert.equal(200000, r.len)
    assert.equal("200000", r.cl)
    assert.is_true(r.periodic)
    r = call(gw, "big", up.port, { ["X-Big"] = "big-chunked:200000" })
    assert.equal(200000, r.len)
    assert.is_true(r.periodic)
  end)

  it("streams a body with body_reader(size), then pools the connection for the next "
     .. "client (a pool of its own, named at connect)", function()
    for _, mode in ipairs({ "big:200000", "big-chunked:200000" }) do
      local r = call(gw, "stream", up.port, { ["X-Big"] = mode })
      assert.is_nil(r.err)
      assert.equal(200, r.status)
      assert.is_true(r.has_body)
      assert.equal(200000, r.len, mode)
      assert.is_true(r.periodic, mode)
      assert.is_true(r.biggest <= 8192, mode)
      assert.is_true(r.pieces >= 200000 / 8192, mode)
      assert.same({}, r.after)                         -- nil, no error: the end
      assert.same({ 1 }, r.keepalive)
      assert.equal(1, r.reused)
      assert.equal("/again", r.again.path)
      assert.equal(2, r.again.request_on_connection)
    end
  end)

  it("reuses a kept-alive connection, and closes it with keepalive = false (a pool of its "
     .. "own)", function()
    local r = call(gw, "keepalive", up.port, { ["X-Pool"] = "ka-test" })
    assert.is_nil(r.err)
    assert.equal(1, r[1].nth)
    assert.equal(r[1].connection_id, r[2].connection_id)
    assert.equal(2, r[2].nth)
    assert.equal(r[1].connection_id, r[3].connection_id)
    assert.equal("close", r[3].connection)
    assert.not_equal(r[1].connection_id, r[4].connection_id)
    assert.equal(1, r[4].nth)
  end)

  it("reads no body for HEAD, 204 and 304, and stays in step on the connection", function()
    local r = call(gw, "bodiless", up.port)
    assert.is_nil(r.err)
    local s = r.steps
    assert.equal(200, s[1].status)
    assert.is_false(s[1].has_body)
    assert.equal("", s[1].body)
    assert.is_truthy(tonumber(s[1].cl))                -- the length a GET would have had
    assert.equal(204, s[2].status)
    assert.equal("", s[2].body)
    assert.equal(304, s[3].status)
    assert.equal("", s[3].body)
    assert.equal(200, s[4].status)
    assert.equal("/last", r.last.path)
    assert.equal(4, r.last.request_on_connection)
    assert.same({ 1 }, r.keepalive)
    assert.equal(0, r.reused)
  end)

  it("closes instead of pooling when the server says Connection: close, or the body was "
     .. "not read", function()
    local r = call(gw, "server_close", up.port)
    assert.equal("close", r.connection)
    assert.equal("/close", r.echo.path)
    assert.same({ 2 }, r.keepalive)
    assert.same({ cjson.null, "not connected" }, r.after)
    r = call(gw, "unread", up.port)
    assert.equal(1000, r.first)
    assert.same({ cjson.null, "the previous response body was not read to its end" },
                r.next_request)
    assert.same({ 2 }, r.keepalive)
  end)

  it("times out a read after the read timeout: nil, \"timeout\"", function()
    local r = call(gw, "hang", up.port)
    assert.is_false(r.res)
    assert.equal("timeout", r.err)
    assert.is_true(r.elapsed >= 0.15, "elapsed " .. r.elapsed)   -- never before the timeout
  end)

  it("returns nil and the connect error when nothing listens", function()
    local r = call(gw, "refused", helpers.get_free_port())
    assert.is_false(r.res)
    assert.equal("connection refused", r.err)
  end)

  it("returns nil and an error for a body cut short and for a response that is not HTTP",
     function()
    local r = call(gw, "broken", up.port)
    assert.same({ res = false, err = "closed" }, r["die-mid-body"])
    assert.is_false(r.garbage.res)
    assert.matches("^invalid status line", r.garbage.err)
    assert.same({ res = false, err = "closed" }, r["close-before-headers"])
  end)

  it("serves other requests while a client waits on a slow upstream", function()
    local c = assert(helpers.connect(gw.port))
    assert(c:send(fmt("GET /httpc HTTP/1.1\r\nHost: x\r\nX-Action: big\r\nX-Port: %d\r\n"
                      .. "X-Big: delay:600, big:1000\r\nConnection: close\r\n\r\n", up.port)))
    local plain = assert(gw:get("/plain"))
    assert.equal(200, plain.status)
    -- answered while the other still waits on its upstream: it has no byte of its answer
    local got, err = c:receive(1, 0)
    assert.is_nil(got, "the plain route waited for the slow upstream")
    assert.equal("timeout", err)
    local res = assert(c:read_response({ timeout = 5 }))
    c:close()
    assert.equal(200, res.status)
    assert.equal(1000, res:json().len)
  end)

  it("refuses to run in header_filter (a 500)", function()
    local res = assert(gw:get("/httpc", { headers = { ["X-HF"] = "1",
                                                      ["X-Port"] = tostring(up.port) } }))
    assert.equal(500, res.status)
    helpers.eventually(function()
      assert.matches("httpc:request_uri is not allowed in the header_filter phase",
                     gw:error_log(), 1, true)
    end, 3)
  end)

  it("raises on a CR or LF in a header value (a 500), and sends nothing", function()
    up:clear()
    local res = assert(gw:get("/httpc", { headers = { ["X-Action"] = "misuse",
                                                      ["X-Port"] = tostring(up.port) } }))
    assert.equal(500, res.status)
    helpers.eventually(function()
      assert.matches("header X-Bad must not contain CR, LF or NUL", gw:error_log(), 1, true)
    end, 3)
    assert.equal(0, up:count())
  end)
end)

describe("moongate.http: HTTPS", function()
  local up, gw, dir, server

  -- openssl s_server -www: answers any GET with an HTTP/1.0 page and closes (no length).
  local function s_server(crt, key)
    local port = helpers.get_free_port()
    local log = dir .. "/s_server.log"
    local cmd = fmt("openssl s_server -accept 127.0.0.1:%d -cert %s -key %s -www", port,
                    helpers.shell_quote(crt), helpers.shell_quote(key))
    -- the watchdog stops it once this process is gone
    local out = helpers.run(fmt("%s >%s 2>&1 </dev/null & c=$!; echo \"pid=$c\"; "
      .. "( while kill -0 $c; do kill -0 %d || { kill $c; exit 0; }; sleep 1; done ) "
      .. ">/dev/null 2>&1 </dev/null &", cmd, helpers.shell_quote(log), OWN_PID))
    local pid = assert(tonumber(out:match("pid=(%d+)")), "could not start openssl s_server")
    helpers.eventually(function()
      assert.matches("ACCEPT", helpers.read_file(log) or "", 1, true)
    end, 5)
    return { pid = pid, port = port, stop = function()
      assert(pid > 1)
      os.execute("kill " .. pid .. " 2>/dev/null")
    end }
  end

  lazy_setup(function()
    dir = helpers.run("mktemp -d /tmp/moongate-spec.https.XXXXXX"):match("%S+")
    local key, crt = dir .. "/srv.key", dir .. "/srv.crt"
    local out, rc = helpers.run(fmt("openssl req -x509 -newkey ec -pkeyopt "
      .. "ec_paramgen_curve:prime256v1 -nodes -keyout %s -out %s -days 2 -subj /CN=localhost "
      .. "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>&1", key, crt))
    assert(rc == 0, out)
    server = s_server(crt, key)
    up = helpers.upstream()
    gw = helpers.start(settings(up), { env = { SSL_CERT_FILE = crt } })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
    if server then server.stop() end
    if dir and dir:match("^/tmp/moongate%-spec%.https%.") then os.execute("rm -rf " .. dir) end
  end)

  it("talks HTTPS with a verified certificate and reads a body delimited by the close",
     function()
    local r = call(gw, "https", server.port, { ["X-Verify"] = "1", ["X-SNI"] = "localhost" })
    assert.is_nil(r.err)
    assert.equal(200, r.status)
    assert.equal("ok", r.reason)
    assert.equal(1.0, r.version)
    assert.is_nil(r.cl)
    assert.equal("<HTML>", r.starts)
    assert.equal("</HTML>", r.ends)
    -- no server name: the host, an IP address, is checked against the IP in the certificate
    r = call(gw, "https", server.port, { ["X-Verify"] = "1" })
    assert.is_nil(r.err)
    assert.equal(200, r.status)
  end)

  it("streams a body delimited by the close with body_reader(size); the connection is "
     .. "then closed, not pooled", function()
    local r = call(gw, "https_stream", server.port)
    assert.is_nil(r.err)
    assert.equal(200, r.status)
    assert.is_true(r.pieces > 1)
    assert.is_true(r.biggest <= 256)
    assert.equal("</HTML>", r.ends)
    assert.same({ 2 }, r.keepalive)
  end)

  it("refuses a certificate for another name when verifying", function()
    local r = call(gw, "https", server.port, { ["X-Verify"] = "1",
                                               ["X-SNI"] = "other.example" })
    assert.equal("certificate host mismatch", r.err)
    r = call(gw, "https", server.port, { ["X-SNI"] = "other.example" })
    assert.is_nil(r.err)
    assert.equal(200, r.status)
  end)
end)
