-- The spec helpers themselves: the upstream server (moongate.spec.upstream) driven through
-- the helper clients, the response parser, eventually(), and start()/stop()/reload() against
-- a stand-in gateway (a shell script), so they are known to work before the real binary is.

local helpers = require "spec.helpers"
local upstream = require "moongate.spec.upstream"
local cjson = require "cjson.safe"

local fmt, rep = string.format, string.rep

local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  return data
end

-- The first n bytes of a big:N body.
local function pattern_bytes(n)
  local p = upstream.PATTERN
  return rep(p, math.floor(n / #p)) .. p:sub(1, n % #p)
end

describe("spec upstream", function()
  local up

  lazy_setup(function()
    up = helpers.upstream()
  end)

  lazy_teardown(function()
    up:stop()
  end)

  before_each(function()
    up:clear()
    up:set_mode(nil)
  end)

  describe("echo", function()
    it("echoes method, full target, query args, version and headers", function()
      local res = assert(up:get("/some/path?a=1&b=x%20y&a=2&flag", {
        headers = { ["X-Single"] = "one", ["X-Twice"] = { "first", "second" } },
      }))
      assert.equal(200, res.status)
      assert.equal("application/json", res.headers["content-type"])
      local echo = res:json()
      assert.equal("GET", echo.method)
      assert.equal("/some/path?a=1&b=x%20y&a=2&flag", echo.path)
      assert.same({ a = { "1", "2" }, b = "x y", flag = true }, echo.uri_args)
      assert.equal("1.1", echo.http_version)
      assert.equal("one", echo.headers["x-single"])
      assert.same({ "first", "second" }, echo.headers["x-twice"])
      assert.equal("127.0.0.1:" .. up.port, echo.headers.host)
      assert.equal("none", echo.received_framing)
      assert.equal(0, echo.body_length)
    end)

    it("leaves uri_args out when there is no query", function()
      local echo = assert(up:get("/plain")):json()
      assert.is_nil(echo.uri_args)
    end)

    it("echoes a Content-Length body", function()
      local echo = assert(up:post("/p", "hello world",
                                  { headers = { ["Content-Type"] = "text/plain" } })):json()
      assert.equal("POST", echo.method)
      assert.equal("hello world", echo.body)
      assert.equal(11, echo.body_length)
      assert.equal("content-length", echo.received_framing)
      assert.equal("text/plain", echo.headers["content-type"])
    end)

    it("reassembles a chunked request body and reports its trailers", function()
      local raw = assert(helpers.raw(up.port, table.concat({
        "POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n",
        "Connection: close\r\n\r\n",
        "5\r\nhello\r\n", "1;ext=1\r\n \r\n", "5\r\nworld\r\n", "0\r\nX-Trailer: t\r\n\r\n",
      })))
      local list = helpers.parse_response(raw)
      assert.equal(1, #list)
      local echo = list[1]:json()
      assert.equal("hello world", echo.body)
      assert.equal(11, echo.body_length)
      assert.equal("chunked", echo.received_framing)
      assert.same({ ["x-trailer"] = "t" }, echo.trailers)
    end)

    it("reads a chunked body sent in small pieces", function()
      local raw = assert(helpers.raw(up.port, {
        "POST /slow HTTP/1.1\r\nHost: x\r\nTransfer-Enc", "oding: chunked\r\n\r\n3\r",
        "\nabc\r\n0\r", "\n\r\n",
      }, { pause = 0.05 }))
      assert.equal("abc", helpers.parse_response(raw)[1]:json().body)
    end)

    it("keeps bodies up to 1 MiB and only counts bigger ones", function()
      local mib = 1024 * 1024
      local echo = assert(up:post("/1mib", rep("a", mib))):json()
      assert.equal(mib, #echo.body)
      echo = assert(up:post("/more", rep("a", mib + 1))):json()
      assert.equal(cjson.null, echo.body)
      assert.equal(mib + 1, echo.body_length)
    end)

    it("streams a 1 GiB chunked request body without holding it", function()
      local block, sent = rep("z", 65536), 0
      local res = assert(up:post("/gib", function()
        if sent == 1024 * 1024 * 1024 then return nil end
        sent = sent + #block
        return block
      end, { timeout = 60 }))
      local echo = res:json()
      assert.equal(1024 * 1024 * 1024, echo.body_length)
      assert.equal("chunked", echo.received_framing)
      assert.equal(cjson.null, echo.body)
      local hwm = tonumber(read_file("/proc/" .. up.pid .. "/status"):match("VmHWM:%s*(%d+)"))
      assert.is_true(hwm < 64 * 1024, "upstream peak RSS " .. hwm .. " kB")
    end)

    it("answers pipelined requests in order on one connection", function()
      local raw, closed = helpers.raw(up.port,
        "GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
        .. "POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        .. "GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.is_true(closed)
      local list, rest = helpers.parse_response(raw)
      assert.is_nil(rest)
      assert.equal(3, #list)
      local a, b, c = list[1]:json(), list[2]:json(), list[3]:json()
      assert.same({ "/one", "/two", "/three" }, { a.path, b.path, c.path })
      assert.equal("abc", b.body)
      assert.same({ 1, 2, 3 },
                  { a.request_on_connection, b.request_on_connection, c.request_on_connection })
      assert.equal(a.connection_id, c.connection_id)
      assert.equal("close", list[3].headers.connection)
    end)

    it("keeps a connection alive between requests", function()
      local c = assert(helpers.connect(up.port))
      assert(c:send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"))
      local first = assert(c:read_response()):json()
      assert(c:send("GET /b HTTP/1.1\r\nHost: x\r\n\r\n"))
      local second = assert(c:read_response()):json()
      c:close()
      assert.equal(first.connection_id, second.connection_id)
      assert.equal(2, second.request_on_connection)
    end)

    it("closes an HTTP/1.0 connection without keep-alive after the answer", function()
      local raw, closed = helpers.raw(up.port, "GET /old HTTP/1.0\r\n\r\n")
      assert.is_true(closed)
      local res = helpers.parse_response(raw)[1]
      assert.equal("1.0", res:json().http_version)
      assert.equal("close", res.headers.connection)
    end)

    it("answers 100 Continue before reading an Expect: 100-continue body", function()
      local c = assert(helpers.connect(up.port))
      assert(c:send("PUT /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                    .. "Content-Length: 4\r\nConnection: close\r\n\r\n"))
      assert.equal("HTTP/1.1 100 Continue", c:receive_line())
      assert.equal("", c:receive_line())
      assert(c:send("data"))
      local res = assert(c:read_response())
      c:close()
      assert.equal(200, res.status)
      assert.equal("data", res:json().body)
    end)

    it("lets the helper client wait for 100 Continue", function()
      local res = assert(up:put("/e", "body", { headers = { Expect = "100-continue" } }))
      assert.equal(100, res.interim[1].status)
      assert.equal("body", res:json().body)
    end)

    it("answers a malformed request line with 400 and closes", function()
      local raw, closed = helpers.raw(up.port, "NONSENSE\r\n\r\n")
      assert.is_true(closed)
      assert.equal(400, helpers.parse_response(raw)[1].status)
    end)
  end)

  describe("modes", function()
    local function mode(m, extra)
      local headers = { ["X-Upstream-Mode"] = m }
      for k, v in pairs(extra or {}) do headers[k] = v end
      return headers
    end

    it("status:N answers with that status and the echo", function()
      local res = assert(up:get("/s", { headers = mode("status:503") }))
      assert.equal(503, res.status)
      assert.equal("/s", res:json().path)
    end)

    it("status:204 answers without a body", function()
      local raw = helpers.raw(up.port, "GET / HTTP/1.1\r\nHost: x\r\nX-Upstream-Mode: status:204"
                                       .. "\r\nConnection: close\r\n\r\n")
      assert.equal("HTTP/1.1 204 No Content\r\nContent-Type: application/json\r\n"
                   .. "Connection: close\r\n\r\n", raw)
    end)

    it("delay:MS delays its own answer but not other clients", function()
      local t0 = helpers.now()
      local slow = assert(helpers.connect(up.port))
      assert(slow:send("GET /slow HTTP/1.1\r\nHost: x\r\nX-Upstream-Mode: delay:600\r\n\r\n"))
      local fast = assert(up:get("/fast"))
      assert.equal(200, fast.status)
      local got, err = slow:receive(1, 0)    -- answered while the delayed one still waits
      assert.is_nil(got, "a delayed request held up another client")
      assert.equal("timeout", err)
      local res = assert(slow:read_response())
      slow:close()
      assert.equal(200, res.status)
      assert.is_true(helpers.now() - t0 >= 0.6)
    end)

    it("combines modes: delay then status", function()
      local t0 = helpers.now()
      local res = assert(up:get("/c", { headers = mode("delay:100, status:201") }))
      assert.equal(201, res.status)
      assert.is_true(helpers.now() - t0 >= 0.1)
    end)

    it("hang reads the request and never answers", function()
      local raw, closed, how = helpers.raw(up.port,
        "GET /h HTTP/1.1\r\nHost: x\r\nX-Upstream-Mode: hang\r\n\r\n", { timeout = 0.3 })
      assert.equal("", raw)
      assert.is_false(closed)
      assert.equal("timeout", how)
      helpers.eventually(function()
        assert.equal("/h", up:last_request().path)
      end)
    end)

    it("reset closes the connection with an RST", function()
      local raw, closed, how = helpers.raw(up.port,
        "GET /r HTTP/1.1\r\nHost: x\r\nX-Upstream-Mode: reset\r\n\r\n")
      assert.equal("", raw)
      assert.is_true(closed)
      assert.equal("reset", how)
    end)

    it("close-before-headers closes cleanly without answering", function()
      local raw, closed, how = helpers.raw(up.port,
        "GET /c HTTP/1.1\r\nHost: x\r\nX-Upstream-Mode: close-before-headers\r\n\r\n")
      assert.equal("", raw)
      assert.is_true(closed)
      assert.equal("closed", how)
    end)

    it("garbage answers bytes that are not HTTP and closes", function()
      local raw, closed = helpers.raw(up.port,
        "GET /g HTTP/1.1\r\nHost: x\r\nX-Upstream-Mode: garbage\r\n\r\n")
      assert.equal("this is not http\r\n\r\n", raw)
      assert.is_true(closed)
      local list, rest = helpers.parse_response(raw)
      assert.equal(0, #list)
      assert.equal(raw, rest)
    end)

    it("die-mid-body promises 100000 bytes, sends 10 and closes", function()
      local raw, closed = helpers.raw(up.port,
        "GET /d HTTP/1.1\r\nHost: x\r\nX-Upstream-Mode: die-mid-body\r\n\r\n")
      assert.is_true(closed)
      local res = helpers.parse_response(raw)[1]
      assert.equal(200, res.status)
      assert.equal("100000", res.headers["content-length"])
      assert.equal(10, #res.body)
      assert.is_true(res.incomplete)

      local ok, err, partial = up:get("/d", { headers = mode("die-mid-body") })
      assert.is_nil(ok)
      assert.equal("closed", err)
      assert.equal(10, partial.body_length)
    end)

    it("chunked-response sends the echo in several chunks", function()
      local raw = helpers.raw(up.port, "GET /cr HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                       .. "X-Upstream-Mode: chunked-response\r\n\r\n")
      local head, body = raw:match("^(.-\r\n\r\n)(.*)$")
      assert.matches("Transfer%-Encoding: chunked\r\n", head)
      assert.is_nil(head:match("Content%-Length"))
      local chunks = 0
      for _ in body:gmatch("\r\n%x+\r\n") do chunks = chunks + 1 end
      assert.is_true(chunks >= 3, "only " .. chunks .. " chunks")
      local res = helpers.parse_response(raw)[1]
      assert.equal("chunked", res.framing)
      assert.equal("/cr", res:json().path)
    end)

    it("big:N sends exactly N generated bytes with Content-Length", function()
      local res = assert(up:get("/b", { headers = mode("big:100") }))
      assert.equal("100", res.headers["content-length"])
      assert.equal(pattern_bytes(100), res.body)

      local n = 10 * 1024 * 1024 + 7
      res = assert(up:get("/b", { headers = mode("big:" .. n) }))
      assert.equal(n, #res.body)
      assert.equal(pattern_bytes(n), res.body)

      res = assert(up:get("/b", { headers = mode("big:0") }))
      assert.equal("0", res.headers["content-length"])
      assert.equal("", res.body)
    end)

    it("big:N streams bodies past 2 GiB", function()
      local n = 2^31 + 5
      local res = assert(up:get("/b", { headers = mode("big:" .. fmt("%.0f", n)),
                                        discard_body = true, timeout = 60 }))
      assert.equal(fmt("%.0f", n), res.headers["content-length"])
      assert.equal(n, res.body_length)
    end)

    it("big-chunked:N sends exactly N bytes chunked", function()
      local n = 3 * 65536 + 11
      local res = assert(up:get("/bc", { headers = mode("big-chunked:" .. n) }))
      assert.equal("chunked", res.headers["transfer-encoding"])
      assert.is_nil(res.headers["content-length"])
      assert.equal(pattern_bytes(n), res.body)
    end)

    it("headers adds the response headers listed in X-Upstream-Headers", function()
      local res = assert(up:get("/h", { headers = mode("headers", {
        ["X-Upstream-Headers"] = "X-A: 1; Cache-Control: no-store" }) }))
      assert.equal("1", res.headers["x-a"])
      assert.equal("no-store", res.headers["cache-control"])
    end)

    it("refuses an unknown mode with 400", function()
      local res = assert(up:get("/u", { headers = mode("no-such-mode") }))
      assert.equal(400, res.status)
      assert.matches("unknown upstream mode: no%-such%-mode", res:json().message)
    end)

    it("applies the default mode to requests without X-Upstream-Mode", function()
      up:set_mode("status:502")
      assert.equal(502, assert(up:get("/d")).status)
      assert.equal(200, assert(up:get("/d", { headers = mode("status:200") })).status)
      up:set_mode(nil)
      assert.equal(200, assert(up:get("/d")).status)

      local other = helpers.upstream({ mode = "status:418" })
      local status = assert(other:get("/")).status
      other:stop()
      assert.equal(418, status)
    end)

    describe("websocket", function()
      it("computes the RFC 6455 accept value", function()
        assert.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                     upstream.websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="))
      end)

      it("completes the handshake and echoes frames", function()
        local c = assert(helpers.connect(up.port))
        assert(c:send("GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                      .. "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      .. "Sec-WebSocket-Version: 13\r\n\r\n"))
        local res = assert(c:read_response())
        assert.equal(101, res.status)
        assert.equal("websocket", res.headers.upgrade:lower())
        assert.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", res.headers["sec-websocket-accept"])

        assert(c:send(upstream.encode_frame(1, "hello", true)))
        local frame = assert(c:receive_frame())
        assert.same({ fin = true, opcode = 1, masked = false, payload = "hello" }, frame)

        local long = rep("x", 70000)
        assert(c:send(upstream.encode_frame(2, long, "abcd")))
        frame = assert(c:receive_frame())
        assert.equal(2, frame.opcode)
        assert.equal(long, frame.payload)

        assert(c:send(upstream.encode_frame(9, "ping", true)))
        frame = assert(c:receive_frame())
        assert.same({ 10, "ping" }, { frame.opcode, frame.payload })

        assert(c:send(upstream.encode_frame(8, "\3\232", true)))
        frame = assert(c:receive_frame())
        assert.same({ 8, "\3\232" }, { frame.opcode, frame.payload })
        local _, how = c:receive_all(2)
        c:close()
        assert.equal("closed", how)
      end)
    end)
  end)

  describe("control endpoints", function()
    it("record the requests served, oldest first, without themselves", function()
      assert(up:get("/first"))
      assert(up:post("/second", "x"))
      local list = up:requests()
      assert.equal(2, #list)
      assert.equal("/first", list[1].path)
      assert.equal("/second", list[2].path)
      assert.equal("x", list[2].body)
      assert.is_number(list[2].time)
      assert.equal("/second", up:last_request().path)
      assert.equal(2, up:count())
    end)

    it("keep only the last 100 requests but count them all", function()
      for i = 1, 105 do
        assert(up:get("/n/" .. i))
      end
      local list = up:requests()
      assert.equal(100, #list)
      assert.equal("/n/6", list[1].path)
      assert.equal("/n/105", list[100].path)
      assert.equal(105, up:count())
    end)

    it("answer an empty list as a JSON array", function()
      local res = assert(up:get("/_upstream/requests"))
      assert.equal("[]", res.body)
      assert.equal(0, up:count())
    end)
  end)
end)

describe("spec helpers", function()
  describe("connect", function()
    it("binds another source address on request (127.0.0.2 is another client)", function()
      local srv = assert(require("socket").bind("127.0.0.1", 0))
      local _, port = srv:getsockname()
      local c = assert(helpers.connect(port, { source = "127.0.0.2" }))
      srv:settimeout(2)
      local peer = assert(srv:accept())
      assert.equal("127.0.0.2", (peer:getpeername()))
      peer:close()
      c:close()
      local none, err = helpers.connect(port, { source = "192.0.2.1" })
      assert.is_nil(none)
      assert.matches("^could not bind to 192%.0%.2%.1", err)
      srv:close()
    end)
  end)

  describe("sha1", function()
    it("matches the FIPS 180 test vectors", function()
      local function hex(s)
        return (s:gsub(".", function(c) return fmt("%02x", c:byte()) end))
      end
      assert.equal("da39a3ee5e6b4b0d3255bfef95601890afd80709", hex(upstream.sha1("")))
      assert.equal("a9993e364706816aba3e25717850c26c9cd0d89d", hex(upstream.sha1("abc")))
      assert.equal("84983e441c3bd26ebaae4aa1f95129e5e54670f1", hex(upstream.sha1(
        "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")))
      assert.equal("34aa973cd4c4daa4f61eeb2bdbad27316534016f",
                   hex(upstream.sha1(rep("a", 1000000))))
    end)
  end)

  describe("parse_response", function()
    it("splits Content-Length, chunked and close-delimited responses", function()
      local raw = "HTTP/1.1 100 Continue\r\n\r\n"
        .. "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello"
        .. "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        .. "3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: v\r\n\r\n"
        .. "HTTP/1.1 500 Oops\r\n\r\nuntil the end"
      local list, rest = helpers.parse_response(raw)
      assert.is_nil(rest)
      assert.equal(4, #list)
      assert.equal(100, list[1].status)
      assert.same({ 200, "hello", { "1", "2" } }, { list[2].status, list[2].body,
                                                   list[2].headers["x-a"] })
      assert.same({ 201, "abcde", "v" }, { list[3].status, list[3].body, list[3].trailers.t })
      assert.same({ 500, "Oops", "until the end" }, { list[4].status, list[4].reason,
                                                     list[4].body })
    end)

    it("reads no body after a HEAD request", function()
      local list = helpers.parse_response(
        "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
        { method = "HEAD" })
      assert.equal(2, #list)
      assert.equal("", list[2].body)
    end)
  end)

  describe("eventually", function()
    it("retries until the function stops raising and returns its values", function()
      local calls = 0
      local a, b = helpers.eventually(function()
        calls = calls + 1
        assert(calls >= 3, "not yet")
        return "done", calls
      end, 2, 0.01)
      assert.same({ "done", 3 }, { a, b })
    end)

    it("raises the last error once the time is up", function()
      local t0 = helpers.now()
      local ok, err = pcall(helpers.eventually, function() error("still broken") end, 0.2, 0.05)
      assert.is_false(ok)
      assert.matches("still broken", err)
      assert.is_true(helpers.now() - t0 >= 0.2)
    end)
  end)

  describe("json_encode", function()
    it("writes sorted keys, plain slashes and explicit empty arrays", function()
      assert.equal('{"a":[],"b":{},"c":[1,"x/y"],"d":1.5,"e":3000000000,"f":"\\u0001\\"q"}',
                   helpers.json_encode({ a = helpers.empty_array, b = {}, c = { 1, "x/y" },
                                         d = 1.5, e = 3e9, f = "\1\"q" }))
    end)
  end)

  it("get_free_port returns a port that can be bound", function()
    local socket = require "socket"
    local port = helpers.get_free_port()
    local s = assert(socket.bind("127.0.0.1", port))
    s:close()
  end)

  describe("start and stop, against a stand-in gateway", function()
    local dir, fake, up

    lazy_setup(function()
      up = helpers.upstream()
      dir = assert(io.popen("mktemp -d /tmp/moongate-spec.fake.XXXXXX")):read("*l")
      fake = dir .. "/moongate"
      local script = package.searchpath("moongate.spec.upstream", package.path)
      -- `run`: reads the JSON config, serves the echo upstream on proxy_listen as its one
      -- "worker", logs "reloading" on SIGHUP; `check`: complains and exits 1.
      local f = assert(io.open(fake, "w"))
      f:write(([[#!/bin/sh
case "$1" in
  check) echo "services[0].url: must be a URL"; echo "proxy_listen: bad"; exit 1 ;;
  run) conf=$3 ;;
  *) exit 2 ;;
esac
eval "$(CONF="$conf" luajit -e '
  local c = require("cjson").decode(io.open(os.getenv("CONF")):read("*a"))
  print("port=" .. c.proxy_listen[1]:match(":(%d+)$"))
  print("log=" .. c.error_log)
  print("access=" .. c.access_log)
  print("fail=\"" .. (c.fail or "") .. "\"")
  print("stubborn=" .. tostring(c.stubborn or ""))
')"
if [ -n "$fail" ]; then echo "fatal: $fail" >> "$log"; exit 1; fi
luajit SCRIPT --port "$port" >/dev/null 2>&1 &
w=$!
trap 'echo reloading >> "$log"' HUP
if [ -n "$stubborn" ]; then trap '' TERM; else trap 'kill $w; wait $w; exit 0' TERM; fi
echo started >> "$log"
echo '{"status":200,"path":"/"}' >> "$access"
while kill -0 $w 2>/dev/null; do wait $w; done
]]):gsub("SCRIPT", script))
      f:close()
      assert(os.execute("chmod +x " .. fake))
    end)

    lazy_teardown(function()
      up:stop()
      os.execute("rm -rf " .. dir)
    end)

    it("starts with the default settings, proxies, reloads and stops", function()
      local gw = helpers.start({ services = { { name = "s", url = up.url } } }, { bin = fake })
      assert.is_true(gw:running())
      assert.equal("http://127.0.0.1:" .. gw.port, gw.url)

      local conf = cjson.decode(read_file(gw.conf_file))
      assert.same({ "127.0.0.1:" .. gw.port }, conf.proxy_listen)
      assert.equal(1, conf.worker_processes)
      assert.is_true(conf.master_process)
      assert.equal(gw.prefix .. "/logs/error.log", conf.error_log)
      assert.equal(gw.prefix .. "/logs/access.jsonl", conf.access_log)
      assert.equal(gw.prefix .. "/logs/moongate.pid", conf.pid_file)
      assert.equal(up.url, conf.services[1].url)

      local res = assert(gw:get("/through", { headers = { ["X-Upstream-Mode"] = "status:202" } }))
      assert.equal(202, res.status)
      assert.equal("/through", res:json().path)
      assert.matches("started", gw:error_log())
      assert.same({ { status = 200, path = "/" } }, gw:access_log_lines())

      local workers = gw:worker_pids()
      assert.equal(1, #workers)

      assert.is_true(gw:reload({ services = helpers.empty_array, worker_processes = 2 }))
      helpers.eventually(function()
        assert.matches("reloading", gw:error_log())
      end)
      conf = cjson.decode(read_file(gw.conf_file))
      assert.equal(2, conf.worker_processes)
      assert.equal("127.0.0.1:" .. gw.port, conf.proxy_listen[1])
      assert.equal("[]", read_file(gw.conf_file):match('"services":(%[%])'))

      assert.equal(0, gw:stop())
      assert.is_false(gw:running())
      for _, pid in ipairs(workers) do
        assert.is_nil(io.open("/proc/" .. pid .. "/stat"))
      end
      assert.is_nil(gw:get("/", { timeout = 1 }))
    end)

    it("raises with the error log when the gateway exits at startup", function()
      local ok, err = pcall(helpers.start, { fail = "no such plugin: nope" }, { bin = fake })
      assert.is_false(ok)
      assert.matches("exited with status 1", err)
      assert.matches("fatal: no such plugin: nope", err)
    end)

    it("kills a gateway that ignores SIGTERM once the stop timeout is over", function()
      local gw = helpers.start({ stubborn = true }, { bin = fake })
      local workers = gw:worker_pids()
      assert.equal(128 + 9, gw:stop(0.5))
      helpers.eventually(function()
        assert.is_nil(io.open("/proc/" .. workers[1] .. "/stat"))
      end, 5)
    end)

    it("runs check and returns its exit code and lines", function()
      local code, lines = helpers.check({ services = { { name = "s" } } }, { bin = fake })
      assert.equal(1, code)
      assert.same({ "services[0].url: must be a URL", "proxy_listen: bad" }, lines)
    end)

    it("refuses to start when the binary is missing", function()
      assert.has_error(function()
        helpers.start({}, { bin = "/nonexistent/moongate" })
      end, "moongate binary not found at /nonexistent/moongate (build it, or set MOONGATE_BIN)")
    end)
  end)
end)
