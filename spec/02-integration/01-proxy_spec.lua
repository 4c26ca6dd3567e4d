-- The proxy as a client and a backend see it: what goes upstream (request line, path
-- joining, Host, X-Forwarded-*, X-Real-IP, the request id, hop-by-hop headers, repeated
-- headers), client connections (keep-alive with upstream pool reuse, pipelining, chunked
-- bodies both ways, HTTP/1.0, Expect: 100-continue, HEAD, 204/304), routing precedence,
-- WebSocket tunnelling, the gateway's own identity headers and the access log.
-- Every test runs the real binary against the real echo upstream (moongate.spec.upstream),
-- or, for close-delimited responses, a scripted upstream served from this process.

local helpers = require "spec.helpers"
local upstream_mod = require "moongate.spec.upstream"
local socket = require "socket"

local fmt, concat = string.format, table.concat

local NOT_FOUND_BODY = '{"message":"no Route matched with those values"}'

--------------------------------------------------------------------------------------------
-- Small local helpers
--------------------------------------------------------------------------------------------

-- The echo object of a proxied 200 response.
local function echo_of(res, err)
  assert(res, err)
  assert.equal(200, res.status, res.body)
  return res:json()
end

-- A request head as raw bytes: `headers` is a list of { name, value } sent in order.
local function head(method, target, headers, version)
  local lines = { fmt("%s %s HTTP/%s", method, target, version or "1.1") }
  for _, h in ipairs(headers or {}) do
    lines[#lines + 1] = h[1] .. ": " .. h[2]
  end
  return concat(lines, "\r\n") .. "\r\n\r\n"
end

-- Splits raw response bytes into the head and what follows it.
local function split_head(raw)
  local e = raw:find("\r\n\r\n", 1, true)
  assert(e, "no complete response head in: " .. raw)
  return raw:sub(1, e + 3), raw:sub(e + 4)
end

-- The media type of a Content-Type value, without parameters, lower-cased.
local function media_type(v)
  return v and (v:match("^%s*([^;%s]+)") or ""):lower()
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local data = f:read("*a")
  f:close()
  return data
end

-- A scripted upstream served from this process: a listening socket the gateway connects to.
-- A test sends its request to the gateway first, then serves the one upstream exchange with
-- serve_once(), then reads the gateway's answer; every step has a timeout.
local function scripted_upstream()
  local srv = assert(socket.tcp4())
  srv:setoption("reuseaddr", true)
  assert(srv:bind("127.0.0.1", 0))
  assert(srv:listen(16))
  srv:settimeout(5)
  local _, port = srv:getsockname()
  return srv, tonumber(port)
end

-- Accepts one upstream connection, reads the request head (requests here have no body),
-- writes `response` and closes. Returns the request head lines.
local function serve_once(srv, response)
  local conn = assert(srv:accept())
  conn:settimeout(5)
  local lines = {}
  while true do
    local line, err = conn:receive("*l")
    assert(line, "scripted upstream: " .. tostring(err))
    if line == "" then break end
    lines[#lines + 1] = line
  end
  conn:send(response)
  conn:close()
  return lines
end

--------------------------------------------------------------------------------------------
-- Forwarding the request
--------------------------------------------------------------------------------------------

describe("proxy forwarding (client not trusted)", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      services = {
        { name = "root", url = up.url, routes = {
          { name = "strip", paths = { "/strip" }, strip_path = true },
          { name = "keep", paths = { "/keep" }, strip_path = false },
          { name = "preserve", paths = { "/preserve" }, strip_path = false,
            preserve_host = true },
        } },
        { name = "v1", url = up.url .. "/v1", routes = {
          { name = "v1", paths = { "/v1r" }, strip_path = true },
          { name = "v1keep", paths = { "/v1k" }, strip_path = false },
        } },
        { name = "v1slash", url = up.url .. "/v1/", routes = {
          { name = "v1slash", paths = { "/v1s" }, strip_path = true },
        } },
        -- nothing listens there: the gateway answers 502 itself
        { name = "dead", url = "http://127.0.0.1:" .. helpers.get_free_port(), retries = 0,
          routes = { { name = "dead", paths = { "/dead" } } } },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  describe("request line and path", function()
    it("strips the matched prefix with strip_path true", function()
      assert.equal("/a/b", echo_of(gw:get("/strip/a/b")).path)
    end)

    it("sends \"/\" when strip_path removes the whole path", function()
      assert.equal("/", echo_of(gw:get("/strip")).path)
    end)

    it("keeps the whole path with strip_path false", function()
      assert.equal("/keep/a/b", echo_of(gw:get("/keep/a/b")).path)
    end)

    it("joins the service path \"/v1\" and the remainder \"/x\" into \"/v1/x\"", function()
      assert.equal("/v1/x", echo_of(gw:get("/v1r/x")).path)
    end)

    it("joins the service path \"/v1/\" and the remainder \"/x\" with one slash", function()
      assert.equal("/v1/x", echo_of(gw:get("/v1s/x")).path)
    end)

    it("sends the service path alone when the remainder is empty", function()
      assert.equal("/v1", echo_of(gw:get("/v1r")).path)
    end)

    it("prefixes the service path to the full path with strip_path false", function()
      assert.equal("/v1/v1k/y", echo_of(gw:get("/v1k/y")).path)
    end)

    it("keeps the query string unchanged", function()
      local echo = echo_of(gw:get("/strip/q?a=1&b=x%20y&a=2&flag"))
      assert.equal("/q?a=1&b=x%20y&a=2&flag", echo.path)
      assert.same({ a = { "1", "2" }, b = "x y", flag = true }, echo.uri_args)
    end)

    it("keeps the query string when the remainder is empty", function()
      assert.equal("/v1?k=v", echo_of(gw:get("/v1r?k=v")).path)
    end)

    it("forwards the method and a Content-Length body as HTTP/1.1", function()
      local echo = echo_of(gw:request({ method = "PUT", path = "/keep/put", body = "payload" }))
      assert.equal("PUT", echo.method)
      assert.equal("1.1", echo.http_version)
      assert.equal("payload", echo.body)
      assert.equal("content-length", echo.received_framing)
      assert.equal("7", echo.headers["content-length"])
    end)
  end)

  describe("Host", function()
    it("sends the service's host:port upstream by default", function()
      local echo = echo_of(gw:get("/keep/h", { host = "client.example:1234" }))
      assert.equal("127.0.0.1:" .. up.port, echo.headers.host)
    end)

    it("sends the client's Host upstream with preserve_host", function()
      local echo = echo_of(gw:get("/preserve/h", { host = "client.example:1234" }))
      assert.equal("client.example:1234", echo.headers.host)
    end)
  end)

  describe("X-Forwarded-* and X-Real-IP", function()
    it("replaces a client's X-Forwarded-For with the client address", function()
      local echo = echo_of(gw:get("/keep/xff", {
        headers = { ["X-Forwarded-For"] = "1.2.3.4" } }))
      assert.equal("127.0.0.1", echo.headers["x-forwarded-for"])
    end)

    it("sets X-Forwarded-For when the client sent none", function()
      assert.equal("127.0.0.1", echo_of(gw:get("/keep/xff")).headers["x-forwarded-for"])
    end)

    it("overrides the client's X-Forwarded-Proto/Host/Port/Path", function()
      local echo = echo_of(gw:get("/strip/fwd/p?x=1", {
        host = "client.example:1234",
        headers = {
          ["X-Forwarded-Proto"] = "https",
          ["X-Forwarded-Host"] = "evil.example",
          ["X-Forwarded-Port"] = "9999",
          ["X-Forwarded-Path"] = "/evil",
        },
      }))
      local h = echo.headers
      assert.equal("http", h["x-forwarded-proto"])
      assert.equal("client.example", h["x-forwarded-host"])
      assert.equal(tostring(gw.port), h["x-forwarded-port"])
      assert.equal("/strip/fwd/p", h["x-forwarded-path"])
    end)

    it("sets X-Real-IP to the client address, ignoring the client's X-Real-IP", function()
      local echo = echo_of(gw:get("/keep/rip", { headers = { ["X-Real-IP"] = "9.9.9.9" } }))
      assert.equal("127.0.0.1", echo.headers["x-real-ip"])
    end)
  end)

  describe("request id", function()
    it("generates a 32-hex id, sends it upstream and returns it as X-Request-ID", function()
      local res = assert(gw:get("/keep/rid"))
      local rid = res.headers["x-request-id"]
      assert.is_string(rid)
      assert.equal(32, #rid)
      assert.truthy(rid:match("^%x+$"), rid)
      assert.equal(rid, echo_of(res).headers["x-request-id"])
    end)

    it("generates a different id for every request", function()
      local a = assert(gw:get("/keep/rid")).headers["x-request-id"]
      local b = assert(gw:get("/keep/rid")).headers["x-request-id"]
      assert.is_string(a)
      assert.is_string(b)
      assert.not_equal(a, b)
    end)

    it("keeps a client-provided X-Request-ID upstream and in the response", function()
      local res = assert(gw:get("/keep/rid", {
        headers = { ["X-Request-ID"] = "client-corr-42" } }))
      assert.equal("client-corr-42", res.headers["x-request-id"])
      local echo = echo_of(res)
      assert.equal("client-corr-42", echo.headers["x-request-id"])
    end)

    it("returns X-Request-ID on the gateway's own 404", function()
      local res = assert(gw:get("/no-such-route"))
      assert.equal(404, res.status)
      assert.truthy((res.headers["x-request-id"] or ""):match("^" .. ("%x"):rep(32) .. "$"))
    end)
  end)

  describe("hop-by-hop headers", function()
    it("drops Connection, Keep-Alive, TE, Trailer, Proxy-Connection and headers named in"
       .. " Connection from the request", function()
      local echo = echo_of(gw:get("/keep/hop", { headers = {
        ["Connection"] = "close, X-Secret-Hop",
        ["Keep-Alive"] = "timeout=5",
        ["TE"] = "trailers",
        ["Trailer"] = "X-Trail",
        ["Proxy-Connection"] = "keep-alive",
        ["X-SECRET-HOP"] = "hidden",
        ["X-End-To-End"] = "visible",
      } }))
      local h = echo.headers
      assert.is_nil(h["keep-alive"])
      assert.is_nil(h["te"])
      assert.is_nil(h["trailer"])
      assert.is_nil(h["proxy-connection"])
      assert.is_nil(h["x-secret-hop"])
      assert.equal("visible", h["x-end-to-end"])
      -- the gateway's own upstream connection header, if any, never echoes the client's
      local conn = type(h.connection) == "table" and concat(h.connection, ",") or h.connection
      assert.falsy(conn and conn:lower():find("x-secret-hop", 1, true))
      assert.falsy(conn and conn:lower():find("close", 1, true))
    end)

    it("drops Connection, Keep-Alive, Proxy-Connection and headers named in Connection"
       .. " from the response", function()
      local res = assert(gw:get("/keep/hop", { headers = {
        ["X-Upstream-Headers"] =
          "Connection: x-foo; X-Foo: bar; Keep-Alive: timeout=5; "
          .. "Proxy-Connection: keep-alive; Trailer: X-T; X-Kept: yes",
      } }))
      assert.equal(200, res.status)
      assert.is_nil(res.headers["x-foo"])
      assert.is_nil(res.headers["keep-alive"])
      assert.is_nil(res.headers["proxy-connection"])
      assert.is_nil(res.headers["trailer"])
      assert.equal("yes", res.headers["x-kept"])
      local conn = res.headers.connection
      assert.is_true(conn == nil or conn == "close" or conn == "keep-alive",
                     "Connection: " .. tostring(conn))
    end)
  end)

  describe("repeated headers", function()
    it("forwards a repeated request header upstream with every value in order", function()
      local echo = echo_of(gw:get("/keep/rep", {
        headers = { ["X-Multi"] = { "one", "two", "three" } } }))
      assert.same({ "one", "two", "three" }, echo.headers["x-multi"])
    end)

    it("keeps the order of repeated request headers interleaved with others", function()
      local raw = helpers.raw(gw.port, head("GET", "/keep/rep", {
        { "Host", "x" }, { "X-Multi", "first" }, { "X-Other", "o" }, { "X-Multi", "second" },
        { "Connection", "close" } }))
      local list = helpers.parse_response(raw)
      local echo = echo_of(list[1])
      assert.same({ "first", "second" }, echo.headers["x-multi"])
      assert.equal("o", echo.headers["x-other"])
    end)

    it("passes repeated response headers (Set-Cookie) to the client in order", function()
      local res = assert(gw:get("/keep/rep", { headers = {
        ["X-Upstream-Headers"] = "Set-Cookie: a=1; Set-Cookie: b=2; X-Rep: 1; X-Rep: 2",
      } }))
      assert.equal(200, res.status)
      assert.same({ "a=1", "b=2" }, res.headers["set-cookie"])
      assert.same({ "1", "2" }, res.headers["x-rep"])
    end)
  end)

  describe("bodiless responses", function()
    it("answers HEAD without a body but with the upstream's Content-Length", function()
      local raw, closed = helpers.raw(gw.port, head("HEAD", "/keep/head", {
        { "Host", "x" }, { "Connection", "close" } }))
      assert.is_true(closed)
      local h, rest = split_head(raw)
      assert.truthy(h:match("^HTTP/1%.1 200 "), h)
      local cl = tonumber(h:lower():match("\r\ncontent%-length: *(%d+)"))
      assert.is_number(cl, h)
      assert.is_true(cl > 0)
      assert.equal("", rest)
    end)

    it("keeps the connection usable after a HEAD response", function()
      local c = assert(helpers.connect(gw.port))
      finally(function() c:close() end)
      assert(c:send(head("HEAD", "/keep/head", { { "Host", "x" } })))
      local r1 = assert(c:read_response({ method = "HEAD" }))
      assert.equal(200, r1.status)
      assert(c:send(head("GET", "/keep/after-head", { { "Host", "x" } })))
      local r2 = assert(c:read_response())
      assert.equal("/keep/after-head", echo_of(r2).path)
    end)

    for _, status in ipairs({ 204, 304 }) do
      it("passes a " .. status .. " from the upstream without a body", function()
        local raw, closed = helpers.raw(gw.port, head("GET", "/keep/s" .. status, {
          { "Host", "x" }, { "X-Upstream-Mode", "status:" .. status },
          { "Connection", "close" } }))
        assert.is_true(closed)
        local h, rest = split_head(raw)
        assert.truthy(h:match("^HTTP/1%.1 " .. status .. " "), h)
        assert.falsy(h:lower():find("transfer-encoding", 1, true), h)
        assert.equal("", rest)
      end)

      it("keeps the connection usable after a " .. status, function()
        local c = assert(helpers.connect(gw.port))
        finally(function() c:close() end)
        assert(c:send(head("GET", "/keep/s", { { "Host", "x" },
          { "X-Upstream-Mode", "status:" .. status } })))
        local r1 = assert(c:read_response())
        assert.equal(status, r1.status)
        assert.equal("", r1.body)
        assert(c:send(head("GET", "/keep/after", { { "Host", "x" } })))
        assert.equal("/keep/after", echo_of(c:read_response()).path)
      end)
    end
  end)

  describe("identity headers", function()
    it("adds Via: 1.1 moongate to a proxied response", function()
      local res = assert(gw:get("/keep/via"))
      assert.equal(200, res.status)
      assert.equal("1.1 moongate", res.headers.via)
    end)

    it("says Server: moongate, without a version, on its own 404", function()
      local res = assert(gw:get("/no-such-route"))
      assert.equal(404, res.status)
      assert.equal("moongate", res.headers.server)
    end)

    it("says Server: moongate on its own 400", function()
      -- HTTP/1.1 without a Host header
      local raw = helpers.raw(gw.port, "GET /keep HTTP/1.1\r\n\r\n")
      local res = helpers.parse_response(raw)[1]
      assert.is_table(res, raw)
      assert.equal(400, res.status)
      assert.equal("moongate", res.headers.server)
    end)

    it("says Server: moongate on its own 502", function()
      local res = assert(gw:get("/dead"))
      assert.equal(502, res.status)
      assert.equal("moongate", res.headers.server)
    end)

    it("never shows a version in Server or Via", function()
      for _, path in ipairs({ "/keep/v", "/no-such-route", "/dead" }) do
        local res = assert(gw:get(path))
        for _, h in ipairs(res.raw_headers) do
          local n = h[1]:lower()
          if n == "server" or n == "via" then
            assert.falsy(h[2]:find("moongate/", 1, true), h[1] .. ": " .. h[2])
            assert.falsy(h[2]:find("%d+%.%d+%.%d+"), h[1] .. ": " .. h[2])
          end
        end
      end
    end)
  end)
end)

describe("proxy forwarding (client trusted)", function()
  local up, gw, gw_custom

  lazy_setup(function()
    up = helpers.upstream()
    local services = { { name = "s", url = up.url, routes = {
      { name = "r", paths = { "/t" }, strip_path = false } } } }
    gw = helpers.start({ trusted_ips = { "127.0.0.1" }, services = services })
    gw_custom = helpers.start({ trusted_ips = { "127.0.0.1" }, real_ip_header = "X-Client-IP",
                                services = services })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if gw_custom then gw_custom:stop() end
    if up then up:stop() end
  end)

  it("appends the client address to X-Forwarded-For from a trusted proxy", function()
    local echo = echo_of(gw:get("/t/xff", { headers = { ["X-Forwarded-For"] = "1.2.3.4" } }))
    assert.equal("1.2.3.4, 127.0.0.1", echo.headers["x-forwarded-for"])
  end)

  it("merges several X-Forwarded-For lines from a trusted proxy into one list", function()
    local echo = echo_of(gw:get("/t/xff", {
      headers = { ["X-Forwarded-For"] = { "1.1.1.1", "2.2.2.2" } } }))
    assert.equal("1.1.1.1, 2.2.2.2, 127.0.0.1", echo.headers["x-forwarded-for"])
  end)

  it("sets X-Forwarded-For to the client address when a trusted proxy sent none", function()
    assert.equal("127.0.0.1", echo_of(gw:get("/t/xff")).headers["x-forwarded-for"])
  end)

  it("keeps a trusted proxy's X-Forwarded-Proto/Host/Port/Path", function()
    local echo = echo_of(gw:get("/t/fwd", {
      host = "inner.example:1234",
      headers = {
        ["X-Forwarded-Proto"] = "https",
        ["X-Forwarded-Host"] = "outer.example",
        ["X-Forwarded-Port"] = "8443",
        ["X-Forwarded-Path"] = "/outer/path",
      },
    }))
    local h = echo.headers
    assert.equal("https", h["x-forwarded-proto"])
    assert.equal("outer.example", h["x-forwarded-host"])
    assert.equal("8443", h["x-forwarded-port"])
    assert.equal("/outer/path", h["x-forwarded-path"])
  end)

  it("fills X-Forwarded-Proto/Host/Port/Path when a trusted proxy sent none", function()
    local h = echo_of(gw:get("/t/fwd/x?q=1", { host = "inner.example:1234" })).headers
    assert.equal("http", h["x-forwarded-proto"])
    assert.equal("inner.example", h["x-forwarded-host"])
    assert.equal(tostring(gw.port), h["x-forwarded-port"])
    assert.equal("/t/fwd/x", h["x-forwarded-path"])
  end)

  it("takes X-Real-IP from a trusted proxy's X-Real-IP (the default real_ip_header)",
     function()
    local echo = echo_of(gw:get("/t/rip", { headers = { ["X-Real-IP"] = "10.0.0.7" } }))
    assert.equal("10.0.0.7", echo.headers["x-real-ip"])
  end)

  it("takes X-Real-IP from the configured real_ip_header of a trusted proxy", function()
    local echo = echo_of(gw_custom:get("/t/rip", {
      headers = { ["X-Client-IP"] = "10.1.2.3" } }))
    assert.equal("10.1.2.3", echo.headers["x-real-ip"])
  end)

  it("sets X-Real-IP to the peer when the trusted proxy sent no real_ip_header", function()
    assert.equal("127.0.0.1", echo_of(gw_custom:get("/t/rip")).headers["x-real-ip"])
  end)
end)

--------------------------------------------------------------------------------------------
-- Client connections and message framing
--------------------------------------------------------------------------------------------

describe("proxy client connections", function()
  local up, gw, srv

  lazy_setup(function()
    up = helpers.upstream()
    local raw_port
    srv, raw_port = scripted_upstream()
    gw = helpers.start({
      limits = { client_max_body_size = "1m" },
      services = {
        { name = "echo", url = up.url, routes = {
          { name = "c", paths = { "/c" }, strip_path = false } } },
        { name = "scripted", url = "http://127.0.0.1:" .. raw_port, retries = 0, routes = {
          { name = "raw", paths = { "/raw" }, strip_path = false } } },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
    if srv then srv:close() end
  end)

  describe("keep-alive", function()
    it("answers two requests on one client connection over one upstream connection",
       function()
      local c = assert(helpers.connect(gw.port))
      finally(function() c:close() end)
      assert(c:send(head("GET", "/c/ka1", { { "Host", "x" } })))
      local r1 = assert(c:read_response())
      assert(c:send(head("GET", "/c/ka2", { { "Host", "x" } })))
      local r2 = assert(c:read_response())
      local e1, e2 = echo_of(r1), echo_of(r2)
      assert.equal("/c/ka1", e1.path)
      assert.equal("/c/ka2", e2.path)
      assert.not_equal("close", r1.headers.connection)
      assert.equal(e1.connection_id, e2.connection_id)
      assert.equal(e1.request_on_connection + 1, e2.request_on_connection)
    end)

    it("reuses the pooled upstream connection for a later client connection", function()
      local e1 = echo_of(gw:get("/c/pool1"))      -- each with Connection: close
      local e2 = echo_of(gw:get("/c/pool2"))
      assert.equal(e1.connection_id, e2.connection_id)
    end)

    it("closes the client connection after answering Connection: close", function()
      local raw, closed, how = helpers.raw(gw.port, head("GET", "/c/close", {
        { "Host", "x" }, { "Connection", "close" } }))
      assert.is_true(closed, how)
      local list = helpers.parse_response(raw)
      assert.equal(1, #list)
      assert.equal("close", list[1].headers.connection)
      assert.equal("/c/close", echo_of(list[1]).path)
    end)

    it("answers a Connection: close request whole and serves nothing sent after it", function()
      -- RFC 9112 §9.6: no further request on that connection is processed
      local raw, closed, how = helpers.raw(gw.port, head("GET", "/c/closebig", {
        { "Host", "x" }, { "Connection", "close" }, { "X-Upstream-Mode", "big:2000000" } })
        .. "GET /c/after HTTP/1.1\r\nHost: x\r\n\r\n", { timeout = 10 })
      assert.is_true(closed, how)
      local list = helpers.parse_response(raw)
      assert.equal(1, #list)
      assert.equal(200, list[1].status)
      assert.equal(2000000, #list[1].body)
    end)
  end)

  describe("pipelining", function()
    it("answers three pipelined requests sent in one write, in order", function()
      local bytes = head("GET", "/c/p1", { { "Host", "x" } })
        .. head("GET", "/c/p2", { { "Host", "x" } })
        .. head("GET", "/c/p3", { { "Host", "x" }, { "Connection", "close" } })
      local raw, closed = helpers.raw(gw.port, bytes)
      assert.is_true(closed)
      local list, garbage = helpers.parse_response(raw)
      assert.is_nil(garbage)
      assert.equal(3, #list)
      for i = 1, 3 do
        assert.equal("/c/p" .. i, echo_of(list[i]).path)
      end
    end)

    it("answers pipelined requests with bodies in order, bodies intact", function()
      local bytes = head("POST", "/c/b1", { { "Host", "x" }, { "Content-Length", "5" } })
        .. "first"
        .. head("GET", "/c/b2", { { "Host", "x" } })
        .. head("POST", "/c/b3", { { "Host", "x" }, { "Transfer-Encoding", "chunked" },
                                   { "Connection", "close" } })
        .. "3\r\nthi\r\n2\r\nrd\r\n0\r\n\r\n"
      local raw = helpers.raw(gw.port, bytes)
      local list = helpers.parse_response(raw)
      assert.equal(3, #list)
      local e1, e2, e3 = echo_of(list[1]), echo_of(list[2]), echo_of(list[3])
      assert.equal("/c/b1", e1.path)
      assert.equal("first", e1.body)
      assert.equal("/c/b2", e2.path)
      assert.equal("/c/b3", e3.path)
      assert.equal("third", e3.body)
    end)
  end)

  describe("chunked bodies", function()
    it("forwards a chunked request body re-chunked, body intact", function()
      local pieces, i = { "hello ", "chunked ", "world" }, 0
      local echo = echo_of(gw:post("/c/chunked", function()
        i = i + 1
        return pieces[i]
      end))
      assert.equal("chunked", echo.received_framing)
      assert.equal("hello chunked world", echo.body)
      assert.equal(19, echo.body_length)
      assert.is_nil(echo.headers["content-length"])
    end)

    it("forwards a 200 KiB chunked request body intact", function()
      local parts = {}
      for k = 1, 50 do
        parts[k] = ("%04d"):format(k):rep(1024)      -- 4 KiB each, distinct
      end
      local i = 0
      local echo = echo_of(gw:post("/c/chunked-big", function()
        i = i + 1
        return parts[i]
      end))
      assert.equal("chunked", echo.received_framing)
      assert.equal(50 * 4096, echo.body_length)
      assert.is_true(echo.body == concat(parts), "body differs")
    end)

    it("sends a chunked upstream response to the client re-chunked", function()
      local res = assert(gw:get("/c/chunked-response", {
        headers = { ["X-Upstream-Mode"] = "chunked-response" } }))
      assert.equal(200, res.status)
      assert.equal("chunked", res.framing)
      assert.equal("/c/chunked-response", res:json().path)
    end)

    it("streams a large chunked upstream response intact", function()
      local n = 300000
      local res = assert(gw:get("/c/big", {
        headers = { ["X-Upstream-Mode"] = "big-chunked:" .. n } }))
      assert.equal(200, res.status)
      assert.equal("chunked", res.framing)
      assert.equal(n, res.body_length)
      local p = upstream_mod.PATTERN
      local expected = p:rep(math.floor(n / #p)) .. p:sub(1, n % #p)
      assert.is_true(res.body == expected, "body differs")
    end)

    it("sends a close-delimited upstream response to an HTTP/1.1 client chunked",
       function()
      local c = assert(helpers.connect(gw.port))
      finally(function() c:close() end)
      assert(c:send(head("GET", "/raw/eof", { { "Host", "x" } })))
      serve_once(srv, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                      .. "Connection: close\r\n\r\nclose-delimited body")
      local res = assert(c:read_response())
      assert.equal(200, res.status)
      assert.equal("chunked", res.framing)
      assert.equal("close-delimited body", res.body)
      -- the client connection stays usable
      assert(c:send(head("GET", "/c/after-eof", { { "Host", "x" } })))
      assert.equal("/c/after-eof", echo_of(c:read_response()).path)
    end)
  end)

  describe("HTTP/1.0 clients", function()
    it("answers an HTTP/1.0 request readably and closes the connection", function()
      local raw, closed, how = helpers.raw(gw.port, head("GET", "/c/ten", { { "Host", "x" } },
                                                        "1.0"))
      assert.is_true(closed, how)
      local list, garbage = helpers.parse_response(raw)
      assert.is_nil(garbage)
      assert.equal(1, #list)
      local res = list[1]
      assert.not_equal("chunked", res.framing)
      local echo = echo_of(res)
      assert.equal("/c/ten", echo.path)
      assert.equal("1.1", echo.http_version)
    end)

    it("keeps an HTTP/1.0 connection open when keep-alive is requested", function()
      local c = assert(helpers.connect(gw.port))
      finally(function() c:close() end)
      local req = head("GET", "/c/ten-ka", { { "Host", "x" }, { "Connection", "keep-alive" } },
                       "1.0")
      assert(c:send(req))
      local r1 = assert(c:read_response())
      assert.equal("keep-alive", (r1.headers.connection or ""):lower())
      assert.equal("content-length", r1.framing)
      assert.equal("/c/ten-ka", echo_of(r1).path)
      assert(c:send(req))
      local r2 = assert(c:read_response())
      assert.equal("/c/ten-ka", echo_of(r2).path)
    end)

    it("ends a chunked upstream response to an HTTP/1.0 client with a close", function()
      local c = assert(helpers.connect(gw.port))
      finally(function() c:close() end)
      assert(c:send(head("GET", "/c/ten-chunked", { { "Host", "x" },
        { "Connection", "keep-alive" }, { "X-Upstream-Mode", "chunked-response" } }, "1.0")))
      local res = assert(c:read_response())
      assert.equal(200, res.status)
      assert.is_nil(res.headers["transfer-encoding"])
      assert.equal("close", res.framing)
      assert.equal("close", (res.headers.connection or ""):lower())
      assert.equal("/c/ten-chunked", res:json().path)
    end)

    it("ends a close-delimited upstream response to an HTTP/1.0 client with a close",
       function()
      local c = assert(helpers.connect(gw.port))
      finally(function() c:close() end)
      assert(c:send(head("GET", "/raw/ten", { { "Host", "x" },
        { "Connection", "keep-alive" } }, "1.0")))
      serve_once(srv, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                      .. "Connection: close\r\n\r\nuntil the end")
      local res = assert(c:read_response())
      assert.equal(200, res.status)
      assert.is_nil(res.headers["transfer-encoding"])
      assert.equal("close", res.framing)
      assert.equal("until the end", res.body)
    end)
  end)

  describe("Expect: 100-continue", function()
    it("answers 100 Continue, then the final response", function()
      local c = assert(helpers.connect(gw.port))
      finally(function() c:close() end)
      assert(c:send(head("POST", "/c/expect", { { "Host", "x" }, { "Content-Length", "5" },
        { "Expect", "100-continue" } })))
      local line, err = c:receive_line(5)
      assert.equal("HTTP/1.1 100 Continue", line, err)
      repeat
        line, err = c:receive_line(5)
        assert(line, err)
      until line == ""
      assert(c:send("hello"))
      local res = assert(c:read_response())
      local echo = echo_of(res)
      assert.equal("hello", echo.body)
      assert.is_nil(echo.headers.expect)
    end)

    it("answers 413 without 100 Continue when Content-Length exceeds client_max_body_size",
       function()
      local before = up:count()
      local c = assert(helpers.connect(gw.port))
      finally(function() c:close() end)
      assert(c:send(head("POST", "/c/expect-big", { { "Host", "x" },
        { "Content-Length", tostring(2 * 1024 * 1024) }, { "Expect", "100-continue" } })))
      local res = assert(c:read_response())
      assert.equal(413, res.status)
      assert.equal(0, #res.interim)
      assert.equal("moongate", res.headers.server)
      assert.equal(before, up:count())
    end)
  end)
end)

--------------------------------------------------------------------------------------------
-- Routing
--------------------------------------------------------------------------------------------

describe("proxy routing", function()
  local up, gw

  -- Every route has its own service whose url path is its tag, with strip_path false: the
  -- upstream path "/<tag>/<request path>" says which route matched.
  local function svc(tag, route)
    route.name = tag
    route.strip_path = false
    return { name = tag, url = up.url .. "/" .. tag, routes = { route } }
  end

  local function tag_of(res, err)
    local echo = echo_of(res, err)
    return echo.path:match("^/([^/]+)")
  end

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      services = {
        svc("exact-host", { hosts = { "api.example.com" }, paths = { "/h" } }),
        svc("wild-host", { hosts = { "*.example.com" }, paths = { "/h" } }),
        svc("method-post", { paths = { "/m" }, methods = { "POST" } }),
        svc("method-any", { paths = { "/m" } }),
        svc("only-put", { paths = { "/put-only" }, methods = { "PUT" } }),
        svc("hdr-v2", { paths = { "/hdr" }, headers = { ["x-version"] = { "v2" } } }),
        svc("hdr-default", { paths = { "/hdr" } }),
        svc("re-low", { paths = { "~/re/\\d+$" }, regex_priority = 0 }),
        svc("re-high", { paths = { "~/re/1" }, regex_priority = 10 }),
        svc("re-prefix", { paths = { "/re" } }),
        svc("lp-short", { paths = { "/lp" } }),
        svc("lp-long", { paths = { "/lp/deeper" } }),
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("answers 404 with exactly {\"message\":\"no Route matched with those values\"}"
     .. " as application/json", function()
    local res = assert(gw:get("/nothing-here"))
    assert.equal(404, res.status)
    assert.equal("application/json", media_type(res.headers["content-type"]))
    assert.equal(NOT_FOUND_BODY, (res.body:gsub("\r?\n$", "")))
    assert.same({ message = "no Route matched with those values" }, res:json())
  end)

  it("does not contact the upstream for an unmatched request", function()
    local before = up:count()
    assert.equal(404, assert(gw:get("/nothing-here")).status)
    assert.equal(before, up:count())
  end)

  it("prefers an exact host over a wildcard host", function()
    assert.equal("exact-host", tag_of(gw:get("/h/x", { host = "api.example.com" })))
  end)

  it("matches hosts case-insensitively and ignores the Host port", function()
    assert.equal("exact-host", tag_of(gw:get("/h/x", { host = "API.Example.com:8000" })))
  end)

  it("matches a wildcard host for other subdomains", function()
    assert.equal("wild-host", tag_of(gw:get("/h/x", { host = "other.example.com" })))
    assert.equal("wild-host", tag_of(gw:get("/h/x", { host = "a.b.example.com" })))
  end)

  it("answers 404 when no route's host matches", function()
    assert.equal(404, assert(gw:get("/h/x", { host = "example.org" })).status)
    assert.equal(404, assert(gw:get("/h/x", { host = "example.com" })).status)
  end)

  it("prefers the route whose methods match over a route without methods", function()
    assert.equal("method-post", tag_of(gw:post("/m/x", "b")))
    assert.equal("method-any", tag_of(gw:get("/m/x")))
  end)

  it("answers 404 when only a route with other methods matches the path", function()
    assert.equal("only-put", tag_of(gw:request({ method = "PUT", path = "/put-only" })))
    assert.equal(404, assert(gw:get("/put-only")).status)
  end)

  it("prefers the route whose headers match", function()
    assert.equal("hdr-v2", tag_of(gw:get("/hdr", { headers = { ["X-Version"] = "v2" } })))
    assert.equal("hdr-v2", tag_of(gw:get("/hdr", { headers = { ["X-Version"] = "V2" } })))
    assert.equal("hdr-default", tag_of(gw:get("/hdr")))
    assert.equal("hdr-default", tag_of(gw:get("/hdr", { headers = { ["X-Version"] = "v3" } })))
  end)

  it("picks the regex path with the higher regex_priority", function()
    assert.equal("re-high", tag_of(gw:get("/re/123")))
  end)

  it("prefers a regex path over a plain prefix", function()
    assert.equal("re-low", tag_of(gw:get("/re/234")))
  end)

  it("falls back to the prefix when no regex matches", function()
    assert.equal("re-prefix", tag_of(gw:get("/re/abc")))
  end)

  it("prefers the longest matching prefix", function()
    assert.equal("lp-long", tag_of(gw:get("/lp/deeper/x")))
    assert.equal("lp-short", tag_of(gw:get("/lp/other")))
    assert.equal("lp-short", tag_of(gw:get("/lp")))
  end)
end)

--------------------------------------------------------------------------------------------
-- WebSocket
--------------------------------------------------------------------------------------------

describe("proxy WebSocket", function()
  local up, gw
  local KEY = "dGhlIHNhbXBsZSBub25jZQ=="

  lazy_setup(function()
    up = helpers.upstream()
    -- a short drain deadline: a tunnel left open cannot hold the teardown for long
    gw = helpers.start({ limits = { worker_shutdown_timeout = "1s" },
      services = { { name = "ws", url = up.url, routes = {
        { name = "ws", paths = { "/ws" }, strip_path = false } } } } })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  local function upgrade(c, rid)
    local headers = { { "Host", "x" }, { "Upgrade", "websocket" },
      { "Connection", "Upgrade" }, { "Sec-WebSocket-Key", KEY },
      { "Sec-WebSocket-Version", "13" } }
    if rid then headers[#headers + 1] = { "X-Request-ID", rid } end
    assert(c:send(head("GET", "/ws/chat", headers)))
    return assert(c:read_response())
  end

  -- The closing handshake: send a close frame, get it echoed, see the connection end.
  local function close_handshake(c)
    assert(c:send(upstream_mod.encode_frame(8, "\3\232", true)))   -- close 1000
    local frame = assert(c:receive_frame(5))
    assert.equal(8, frame.opcode)
    assert.equal("\3\232", frame.payload)
    local rest, how = c:receive_all(5)
    assert.equal("", rest)
    assert.is_true(how == "closed" or how == "reset", how)
  end

  it("answers an Upgrade request with 101 and a correct Sec-WebSocket-Accept", function()
    local c = assert(helpers.connect(gw.port))
    finally(function() c:close() end)
    local res = upgrade(c)
    assert.equal(101, res.status)
    assert.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", res.headers["sec-websocket-accept"])
    assert.equal(upstream_mod.websocket_accept(KEY), res.headers["sec-websocket-accept"])
    assert.equal("websocket", (res.headers.upgrade or ""):lower())
    assert.truthy((res.headers.connection or ""):lower():find("upgrade", 1, true))
    close_handshake(c)
  end)

  it("tunnels frames both ways after the 101, then closes on a close frame", function()
    local c = assert(helpers.connect(gw.port))
    finally(function() c:close() end)
    assert.equal(101, upgrade(c).status)

    assert(c:send(upstream_mod.encode_frame(1, "hello through the gateway", true)))
    local frame = assert(c:receive_frame(5))
    assert.equal(1, frame.opcode)
    assert.is_true(frame.fin)
    assert.is_false(frame.masked)
    assert.equal("hello through the gateway", frame.payload)

    local big = ("0123456789"):rep(7000)              -- 70 000 bytes: 64-bit length form
    assert(c:send(upstream_mod.encode_frame(2, big, true)))
    frame = assert(c:receive_frame(5))
    assert.equal(2, frame.opcode)
    assert.is_true(frame.payload == big, "binary payload differs")

    close_handshake(c)
  end)

  it("sends the upgrade upstream with the client's Sec-WebSocket headers", function()
    local c = assert(helpers.connect(gw.port))
    finally(function() c:close() end)
    assert.equal(101, upgrade(c).status)
    local rec = up:last_request()
    assert.equal("/ws/chat", rec.path)
    assert.equal("websocket", rec.headers.upgrade:lower())
    assert.equal(KEY, rec.headers["sec-websocket-key"])
    assert.equal("13", rec.headers["sec-websocket-version"])
    close_handshake(c)
  end)

  it("passes the client's half-close through the tunnel, then closes the client side",
     function()
    local c = assert(helpers.connect(gw.port))
    finally(function() c:close() end)
    assert.equal(101, upgrade(c).status)
    c:shutdown_send()            -- the upstream reads EOF, hangs up; so must the gateway
    local rest, how = c:receive_all(3)
    assert.equal("", rest)
    assert.is_true(how == "closed" or how == "reset", how)
  end)

  it("ends the tunnel (and logs it) when the client disconnects without a close frame",
     function()
    local rid = "ws-abandoned-" .. tostring(math.random(1e9))
    local c = assert(helpers.connect(gw.port))
    assert.equal(101, upgrade(c, rid).status)
    c:close()
    local line = helpers.eventually(function()
      for _, l in ipairs(gw:access_log_lines()) do
        if l.request_id == rid then return l end
      end
      error("the tunnel " .. rid .. " has not ended (no access log line)")
    end, 3)
    assert.equal(101, line.status)
  end)
end)

--------------------------------------------------------------------------------------------
-- Access log
--------------------------------------------------------------------------------------------

describe("proxy access log", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({ services = { { name = "logsvc", url = up.url, routes = {
      { name = "logged", paths = { "/log" }, strip_path = false } } } } })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  -- The access log lines with this request id (waits for the periodic flush).
  local function lines_for(rid, n)
    return helpers.eventually(function()
      local found = {}
      for _, line in ipairs(gw:access_log_lines()) do
        if line.request_id == rid then found[#found + 1] = line end
      end
      assert(#found >= (n or 1), "no access log line for " .. rid .. " yet")
      return found
    end, 5)
  end

  it("writes one JSON line per request with method, path, status, ids, route, service,"
     .. " upstream_addr and latencies", function()
    local res = assert(gw:post("/log/fields", "body!"))
    assert.equal(200, res.status)
    local rid = res.headers["x-request-id"]
    assert.is_string(rid)
    local found = lines_for(rid)
    helpers.sleep(0.3)                           -- a second flush must not add a copy
    found = lines_for(rid)
    assert.equal(1, #found)
    local line = found[1]
    assert.equal("POST", line.method)
    assert.equal("/log/fields", line.path)
    assert.equal(200, line.status)
    assert.equal(rid, line.request_id)
    assert.equal("logged", line.route)
    assert.equal("logsvc", line.service)
    assert.equal("127.0.0.1:" .. up.port, line.upstream_addr)
    assert.is_number(line.latency_ms)
    assert.is_true(line.latency_ms >= 0)
    assert.is_number(line.upstream_latency_ms)
    assert.is_true(line.upstream_latency_ms >= 0)
  end)

  it("writes exactly one line for each of several requests", function()
    local ids = {}
    for i = 1, 5 do
      ids[i] = "count-" .. i .. "-" .. tostring(math.random(1e9))
      assert.equal(200, assert(gw:get("/log/n" .. i, {
        headers = { ["X-Request-ID"] = ids[i] } })).status)
    end
    lines_for(ids[5])
    helpers.sleep(0.3)
    for i = 1, 5 do
      local found = lines_for(ids[i])
      assert.equal(1, #found)
      assert.equal("/log/n" .. i, found[1].path)
    end
  end)

  it("logs a request that matched no route with status 404", function()
    local res = assert(gw:get("/unrouted"))
    assert.equal(404, res.status)
    local line = lines_for(res.headers["x-request-id"])[1]
    assert.equal(404, line.status)
    assert.equal("GET", line.method)
    assert.equal("/unrouted", line.path)
  end)

  it("never writes the query string, Authorization, Cookie or an apikey value", function()
    local rid = "secret-check-" .. tostring(math.random(1e9))
    local res = assert(gw:get("/log/secret?apikey=APIKEYVALUE77&token=QUERYVALUE88", {
      headers = {
        ["X-Request-ID"] = rid,
        ["Authorization"] = "Bearer AUTHVALUE99",
        ["Cookie"] = "session=COOKIEVALUE66",
      },
    }))
    assert.equal(200, res.status)
    local line = lines_for(rid)[1]
    assert.equal("/log/secret", line.path)
    local raw = read_file(gw.access_log_path)
    assert.truthy(raw:find(rid, 1, true))
    for _, secret in ipairs({ "APIKEYVALUE77", "QUERYVALUE88", "AUTHVALUE99", "COOKIEVALUE66",
                              "apikey", "token=", "Bearer", "session=" }) do
      assert.falsy(raw:find(secret, 1, true), "access log contains " .. secret)
    end
  end)
end)
