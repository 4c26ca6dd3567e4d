-- Upstream failures (README "What the proxy guarantees" / Upstream failures): refused, reset,
-- closed or garbage before the response head → 502; a timeout → 504; a failure after the
-- head was sent → the client connection is aborted, never a fake complete response; connect
-- failures retried `retries` times; a connection with bad framing never reused; the
-- keepalive pool reuses connections and survives an upstream restart.
--
-- A backend that never answers a SYN is made locally: a listener with backlog 0 whose accept
-- queue is already full drops further SYNs (Linux, tcp_abort_on_overflow = 0). Remote
-- "blackhole" addresses are no good here: this sandbox answers every off-link address
-- (10.255.255.1, the TEST-NETs) through a transparent proxy, and 192.0.2.1 is the default
-- gateway, which refuses.

local helpers = require "spec.helpers"
local socket = require "socket"

local fmt = string.format

local GIB = 1073741824
local BAD_GATEWAY = "An invalid response was received from the upstream server"
local TIMING_OUT = "The upstream server is timing out"

-- A TCP port on 127.0.0.1 whose SYNs are dropped: connects to it neither succeed nor fail.
local function blackhole()
  local l = assert(socket.tcp4())
  assert(l:bind("127.0.0.1", 0))
  assert(l:listen(0))
  local _, port = l:getsockname()
  local fill = assert(socket.tcp4())
  fill:settimeout(2)
  assert(fill:connect("127.0.0.1", port))            -- fills the one-entry accept queue
  local probe = assert(socket.tcp4())
  probe:settimeout(0.3)
  local ok, err = probe:connect("127.0.0.1", port)
  probe:close()
  return { port = tonumber(port), socks = { fill, l }, works = not ok and err == "timeout",
           probe = tostring(err) }
end

-- The try numbers logged for connect failures to 127.0.0.1:port, in order.
local function connect_tries(log, port, why)
  local tries = {}
  local pat = "upstream connect failed %(127%.0%.0%.1:" .. port .. ", try (%d+)%): " .. why
  for n in log:gmatch(pat) do
    tries[#tries + 1] = tonumber(n)
  end
  return tries
end

-- Sends n concurrent slow requests, so that n upstream connections open and, once answered,
-- wait in the service's keepalive pool. Returns their connection ids.
local function warm_pool(gw, path, n)
  local conns, ids = {}, {}
  for i = 1, n do
    local c = assert(helpers.connect(gw.port))
    assert(c:send(fmt("GET %s HTTP/1.1\r\nHost: x\r\nX-Upstream-Mode: delay:150\r\n"
                      .. "Connection: close\r\n\r\n", path)))
    conns[i] = c
  end
  for i = 1, n do
    local res = assert(conns[i]:read_response())
    conns[i]:close()
    assert.equal(200, res.status)
    ids[res:json().connection_id] = true
  end
  local count = 0
  for _ in pairs(ids) do count = count + 1 end
  assert.equal(n, count, "warming needs " .. n .. " distinct upstream connections")
  return ids
end

local function raw_head(c)
  local lines = {}
  while true do
    local line = assert(c:receive_line())
    if line == "" then break end
    lines[#lines + 1] = line
  end
  return lines
end

describe("upstream failures", function()
  local up, dying, restartable, gw, bh
  local refused_2, refused_0

  lazy_setup(function()
    up = helpers.upstream()
    dying = helpers.upstream()
    restartable = helpers.upstream()
    bh = blackhole()
    refused_2, refused_0 = helpers.get_free_port(), helpers.get_free_port()
    local function svc(name, url, extra)
      local s = { name = name, url = url, routes = { { paths = { "/" .. name } } } }
      for k, v in pairs(extra or {}) do s[k] = v end
      return s
    end
    gw = helpers.start({
      services = {
        svc("refused-2", "http://127.0.0.1:" .. refused_2, { retries = 2 }),
        svc("refused-0", "http://127.0.0.1:" .. refused_0, { retries = 0 }),
        svc("echo", up.url),
        svc("garbage", up.url),
        svc("timeout-300", up.url, { read_timeout = 300, retries = 0 }),
        svc("pooled-timeout", up.url, { read_timeout = 300, retries = 0 }),
        svc("pooled-reset", up.url, { retries = 0 }),
        svc("read-1000", up.url, { read_timeout = 1000 }),
        svc("slow", up.url, { read_timeout = 1500, retries = 0 }),
        svc("abandoned", up.url, { read_timeout = 10000, retries = 0 }),
        svc("fast", up.url),
        svc("keepalive", up.url),
        svc("blackhole", "http://127.0.0.1:" .. bh.port, { connect_timeout = 200, retries = 1 }),
        svc("dying", dying.url),
        svc("restart", restartable.url),
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    for _, u in ipairs({ up, dying, restartable }) do u:stop() end
    for _, s in ipairs(bh and bh.socks or {}) do s:close() end
  end)

  before_each(function()
    up:set_mode(nil)
  end)

  describe("before the response head", function()
    it("answers 502 and logs three connect tries when a refused upstream has retries: 2",
       function()
      local mark = #gw:error_log()
      local res = assert(gw:get("/refused-2"))
      assert.equal(502, res.status)
      assert.same({ message = BAD_GATEWAY }, res:json())
      helpers.eventually(function()
        local log = gw:error_log():sub(mark + 1)
        assert.same({ 1, 2, 3 }, connect_tries(log, refused_2, "Connection refused"), log)
      end, 2)
    end)

    it("answers 502 after exactly one connect try when a refused upstream has retries: 0",
       function()
      local mark = #gw:error_log()
      local res = assert(gw:get("/refused-0"))
      assert.equal(502, res.status)
      assert.same({ message = BAD_GATEWAY }, res:json())
      helpers.eventually(function()
        local log = gw:error_log():sub(mark + 1)
        assert.same({ 1 }, connect_tries(log, refused_0, "Connection refused"), log)
      end, 2)
      helpers.sleep(0.1)                                   -- nothing more comes later
      assert.same({ 1 }, connect_tries(gw:error_log():sub(mark + 1), refused_0,
                                       "Connection refused"))
    end)

    it("answers 502 when the upstream resets the connection after reading the request",
       function()
      local res = assert(gw:get("/echo", { headers = { ["X-Upstream-Mode"] = "reset" } }))
      assert.equal(502, res.status)
      assert.same({ message = BAD_GATEWAY }, res:json())
    end)

    it("answers 502 when the upstream closes the connection before sending a header",
       function()
      local res = assert(gw:get("/echo",
                                { headers = { ["X-Upstream-Mode"] = "close-before-headers" } }))
      assert.equal(502, res.status)
      assert.same({ message = BAD_GATEWAY }, res:json())
    end)

    it("answers 502 to garbage and never reuses the connection that sent it", function()
      assert.equal(200, assert(gw:get("/garbage")).status)   -- one connection in the pool
      up:clear()
      local res = assert(gw:get("/garbage", { headers = { ["X-Upstream-Mode"] = "garbage" } }))
      assert.equal(502, res.status)
      assert.same({ message = BAD_GATEWAY }, res:json())
      local garbage_id
      for _, rec in ipairs(up:requests()) do
        if rec.headers["x-upstream-mode"] == "garbage" then
          garbage_id = rec.connection_id
        end
      end
      assert.is_number(garbage_id)
      local next_res = assert(gw:get("/garbage"))
      assert.equal(200, next_res.status)
      assert.not_equal(garbage_id, next_res:json().connection_id)
    end)

    it("answers 504 within about read_timeout (300 ms) when the upstream hangs", function()
      local t0 = helpers.now()
      local res = assert(gw:get("/timeout-300", { headers = { ["X-Upstream-Mode"] = "hang" } }))
      local elapsed = helpers.now() - t0
      assert.equal(504, res.status)
      assert.same({ message = TIMING_OUT }, res:json())
      assert.is_true(elapsed >= 0.29, "answered after " .. elapsed .. " s")
      -- the timed-out connection is not pooled: the next request is answered normally
      local ok_res = assert(gw:get("/timeout-300"))
      assert.equal(200, ok_res.status)
    end)

    it("does not resend a request that timed out on a pooled connection: one upstream try, "
       .. "504 after one read_timeout", function()
      warm_pool(gw, "/pooled-timeout", 3)
      up:clear()
      local res = assert(gw:get("/pooled-timeout",
                                { headers = { ["X-Upstream-Mode"] = "hang" } }))
      assert.equal(504, res.status)
      assert.same({ message = TIMING_OUT }, res:json())
      -- the backend got the request and did not answer in time: the connection was not
      -- stale, so only `retries` could send it again, and it is 0 here (28-retries_spec
      -- covers timeouts retried within `retries`)
      assert.equal(1, up:count(), "the upstream received the hanging request more than once")
    end)

    it("retries a request that fails on a pooled connection at most once more", function()
      warm_pool(gw, "/pooled-reset", 3)
      up:clear()
      local res = assert(gw:get("/pooled-reset", { headers = { ["X-Upstream-Mode"] = "reset" } }))
      assert.equal(502, res.status)
      assert.same({ message = BAD_GATEWAY }, res:json())
      local n = up:count()
      assert.is_true(n >= 1 and n <= 2,
                     "the upstream received the request " .. n .. " times (at most 2 allowed)")
    end)

    it("answers 200 when the upstream takes 100 ms and read_timeout is 1000 ms", function()
      local res = assert(gw:get("/read-1000", { headers = { ["X-Upstream-Mode"] = "delay:100" } }))
      assert.equal(200, res.status)
      assert.equal("GET", res:json().method)
    end)

    it("answers 504 after connect_timeout (200 ms) per try when the upstream drops SYNs",
       function()
      assert.is_true(bh.works, "no local SYN blackhole: a probe connect ended with "
                               .. bh.probe)
      local mark = #gw:error_log()
      local t0 = helpers.now()
      local res = assert(gw:get("/blackhole"))
      local elapsed = helpers.now() - t0
      assert.equal(504, res.status)
      assert.same({ message = TIMING_OUT }, res:json())
      -- retries: 1 → two tries of 200 ms each (the log below shows both timed out)
      assert.is_true(elapsed >= 0.38, "answered after " .. elapsed .. " s")
      helpers.eventually(function()
        local log = gw:error_log():sub(mark + 1)
        assert.same({ 1, 2 }, connect_tries(log, bh.port, "timed out"), log)
      end, 2)
    end)
  end)

  describe("after the response head", function()
    it("aborts the client connection when the upstream dies inside a Content-Length body",
       function()
      local res, err, partial = gw:get("/echo",
                                       { headers = { ["X-Upstream-Mode"] = "die-mid-body" } })
      assert.is_nil(res, "a truncated body must not look like a complete response")
      assert.is_truthy(err == "closed" or err == "reset", tostring(err))
      assert.equal(200, partial.status)
      assert.equal("100000", partial.headers["content-length"])
      assert.is_true(partial.body_length < 100000)
    end)

    it("closes a keep-alive client connection before Content-Length bytes arrive when the "
       .. "upstream dies mid-body", function()
      local data, closed, how = helpers.raw(gw.port,
        "GET /echo HTTP/1.1\r\nHost: x\r\nX-Upstream-Mode: die-mid-body\r\n\r\n",
        { timeout = 3 })
      assert.is_true(closed, "the connection stayed open (" .. tostring(how) .. ")")
      local head, body = data:match("^(.-\r\n\r\n)(.*)$")
      assert.is_truthy(head, data)
      assert.matches("^HTTP/1%.1 200 ", head)
      assert.matches("\r\n[Cc]ontent%-[Ll]ength: 100000\r\n", head)
      assert.is_true(#body < 100000, #body .. " body bytes")
    end)

    it("aborts a chunked response without its last chunk when the upstream dies mid-body",
       function()
      local c = assert(helpers.connect(gw.port, { timeout = 5 }))
      assert(c:send("GET /dying HTTP/1.1\r\nHost: x\r\nX-Upstream-Mode: big-chunked:"
                    .. GIB .. "\r\n\r\n"))
      local head = raw_head(c)
      assert.equal("HTTP/1.1 200 OK", head[1])
      local te = false
      for _, line in ipairs(head) do
        if line:lower() == "transfer-encoding: chunked" then te = true end
      end
      assert.is_true(te, table.concat(head, "\n"))
      local first = assert(c:receive(256 * 1024))          -- the transfer is under way
      dying:stop()                                         -- the upstream process dies
      local rest, how = c:receive_all(5)
      c:close()
      assert.is_truthy(how == "closed" or how == "reset", "ended with " .. tostring(how))
      local raw = table.concat(head, "\r\n") .. "\r\n\r\n" .. first .. rest
      assert.is_true(#first + #rest < GIB)
      assert.not_equal("0\r\n\r\n", raw:sub(-5), "the response was terminated as complete")
      local list = helpers.parse_response(raw)
      assert.equal(1, #list)
      assert.is_true(list[1].incomplete, "the chunked body parsed as complete")
    end)
  end)

  describe("while one request hangs", function()
    it("keeps serving other requests on the same worker", function()
      assert.equal(1, #gw:worker_pids())
      local c = assert(helpers.connect(gw.port, { timeout = 5 }))
      assert(c:send("GET /slow HTTP/1.1\r\nHost: x\r\nX-Upstream-Mode: hang\r\n\r\n"))
      helpers.eventually(function()                         -- the hang reached the upstream
        local last = up:last_request()
        assert.equal("hang", last and last.headers["x-upstream-mode"])
      end, 2)
      -- answered while the hanging request is still waiting (checked right after): the
      -- worker was not blocked by it
      local res = assert(gw:get("/fast"))
      assert.equal(200, res.status)
      local got, err = c:receive(1, 0.2)
      assert.is_nil(got)
      assert.equal("timeout", err)                          -- still waiting, not failed
      -- and the hanging one ends on its own read_timeout (1500 ms)
      local hung = assert(c:read_response({ timeout = 3 }))
      c:close()
      assert.equal(504, hung.status)
    end)
  end)

  describe("when the client leaves", function()
    it("drops the upstream request at once (499 in the access log) instead of waiting for "
       .. "read_timeout", function()
      local c = assert(helpers.connect(gw.port, { timeout = 5 }))
      assert(c:send("GET /abandoned/gone HTTP/1.1\r\nHost: x\r\nX-Upstream-Mode: hang\r\n\r\n"))
      helpers.eventually(function()                         -- the hang reached the upstream
        local last = up:last_request()
        assert.equal("/gone", last and last.path)
      end, 2)
      c:close()
      helpers.eventually(function()         -- read_timeout is 10 s: this guard is far below
        local found
        for _, line in ipairs(gw:access_log_lines()) do
          if line.path == "/abandoned/gone" then found = line end
        end
        assert.is_truthy(found, "no access log line for the abandoned request yet")
        assert.equal(499, found.status)
        assert.is_true(found.aborted)
      end, 3)
    end)
  end)

  describe("keepalive pool", function()
    it("serves 20 sequential requests from separate client connections over at most 2 "
       .. "upstream connections", function()
      local ids, distinct = {}, 0
      for _ = 1, 20 do
        local res = assert(gw:get("/keepalive"))
        assert.equal(200, res.status)
        local id = res:json().connection_id
        if not ids[id] then
          ids[id] = true
          distinct = distinct + 1
        end
      end
      assert.is_true(distinct <= 2, distinct .. " distinct upstream connections")
    end)

    it("serves the next requests after the upstream restarts on the same port", function()
      for _ = 1, 3 do
        assert.equal(200, assert(gw:get("/restart")).status)   -- pooled connections exist
      end
      local port = restartable.port
      restartable:stop()
      restartable = helpers.upstream({ port = port })
      local res = assert(gw:get("/restart"))
      assert.equal(200, res.status)
      assert.equal(1, res:json().connection_id)             -- a connection to the new process
      -- nothing stale is left in the pool for a request that may not be retried either
      local post = assert(gw:post("/restart", "payload"))
      assert.equal(200, post.status)
      assert.equal("payload", post:json().body)
      assert.equal(2, restartable:count())
    end)
  end)
end)
