-- Client-side limits and timeouts (README: `limits.*`), and the upstream read timeout.
-- Gateways are started with small limits so that every case is fast; every wait is bounded.

local helpers = require "spec.helpers"
local socket = require "socket"

local fmt, rep, concat = string.format, string.rep, table.concat
local now = helpers.now

-- Upper bound (seconds) on any single wait for an answer in this file.
local TIMEOUT = 5

local seq = 0
local function unique_path(tag)
  seq = seq + 1
  return fmt("/limits/%s/%d", tag, seq)
end

local function header_has_token(v, token)
  for _, s in ipairs(type(v) == "table" and v or { v }) do
    for t in tostring(s):lower():gmatch("[^,%s]+") do
      if t == token then return true end
    end
  end
  return false
end

local function records_for(up, path)
  local list = {}
  for _, rec in ipairs(up:requests()) do
    if rec.path == path then
      list[#list + 1] = rec
    end
  end
  return list
end

local function complete_records(up, path)
  local list = {}
  for _, rec in ipairs(records_for(up, path)) do
    if rec.error == nil then
      list[#list + 1] = rec
    end
  end
  return list
end

local function open(port)
  return assert(helpers.connect(port, { timeout = TIMEOUT }))
end

-- Asserts an error answer: status, the JSON message and Connection: close.
local function assert_error(res, status, message)
  assert.is_table(res, "no response")
  assert.equal(status, res.status)
  assert.matches("^application/json", res.headers["content-type"] or "")
  assert.same({ message = message }, res:json())
  assert.is_true(header_has_token(res.headers.connection, "close"),
                 "expected Connection: close, got " .. tostring(res.headers.connection))
end

-- Asserts that the gateway closes the connection (FIN) within `timeout` seconds.
local function assert_closes(c, timeout)
  local data, how = c:receive_all(timeout or TIMEOUT)
  assert.equal("closed", how, "the gateway did not close the connection; received: " .. data)
  return data
end

-- Sends raw bytes on a fresh connection; asserts a single error answer and a close.
local function assert_refused(port, bytes, status, message)
  local raw, closed, how = helpers.raw(port, bytes, { timeout = TIMEOUT })
  assert.is_string(raw, "could not connect: " .. tostring(how))
  assert.is_true(closed, "the gateway did not close the connection (" .. tostring(how) .. ")")
  assert.equal("closed", how)
  local list, rest = helpers.parse_response(raw)
  assert.is_nil(rest)
  assert.equal(1, #list, raw)
  assert_error(list[1], status, message)
  return list[1]
end

local function headers_block(list)
  local lines = {}
  for i, h in ipairs(list) do
    lines[i] = h[1] .. ": " .. h[2] .. "\r\n"
  end
  return concat(lines)
end

local function service(name, url, paths, extra)
  local s = { name = name, url = url,
              routes = { { name = name, paths = paths, strip_path = false } } }
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

describe("limits with small values", function()
  local gw, up

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      limits = {
        max_request_line = "1k",
        max_header_line = "512",
        max_headers_size = "2k",
        max_headers = 10,
        client_max_body_size = "1k",
        client_header_timeout = "1s",
        client_body_timeout = "1s",
        keepalive_timeout = "1s",
        keepalive_requests = 3,
        send_timeout = "1s",
      },
      _format_version = "3.0",
      services = { service("small", up.url, { "/" }) },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  describe("head size", function()
    it("answers 414 when the request line exceeds max_request_line (1k)", function()
      local path = "/" .. rep("a", 1100)
      local before = up:count()
      assert_refused(gw.port, "GET " .. path .. " HTTP/1.1\r\nHost: example.com\r\n\r\n",
                     414, "URI too long")
      assert.equal(before, up:count())
    end)

    it("answers 431 when a header line exceeds max_header_line (512)", function()
      local before = up:count()
      assert_refused(gw.port, "GET " .. unique_path("line") .. " HTTP/1.1\r\n"
                     .. "Host: example.com\r\nX-Long: " .. rep("v", 600) .. "\r\n\r\n",
                     431, "Request header fields too large")
      assert.equal(before, up:count())
    end)

    it("answers 431 when the whole head exceeds max_headers_size (2k)", function()
      -- 6 lines of ~400 bytes: each under max_header_line, fewer than max_headers
      local list = { { "Host", "example.com" } }
      for i = 1, 6 do
        list[#list + 1] = { "X-Fill-" .. i, rep("f", 390) }
      end
      local before = up:count()
      assert_refused(gw.port, "GET " .. unique_path("total") .. " HTTP/1.1\r\n"
                     .. headers_block(list) .. "\r\n",
                     431, "Request header fields too large")
      assert.equal(before, up:count())
    end)

    it("answers 431 to more than max_headers (10) headers", function()
      local list = { { "Host", "example.com" } }
      for i = 1, 11 do
        list[#list + 1] = { "X-H" .. i, "v" }
      end
      local before = up:count()
      assert_refused(gw.port, "GET " .. unique_path("count") .. " HTTP/1.1\r\n"
                     .. headers_block(list) .. "\r\n",
                     431, "Request header fields too large")
      assert.equal(before, up:count())
    end)

    it("accepts exactly max_headers (10) headers", function()
      local list = { { "Host", "example.com" } }
      for i = 1, 8 do
        list[#list + 1] = { "X-H" .. i, "v" }
      end
      list[#list + 1] = { "Connection", "close" }
      local path = unique_path("count-ok")
      local raw = helpers.raw(gw.port, "GET " .. path .. " HTTP/1.1\r\n"
                              .. headers_block(list) .. "\r\n", { timeout = TIMEOUT })
      local res = helpers.parse_response(raw)[1]
      assert.is_table(res, raw)
      assert.equal(200, res.status, raw)
      assert.equal(path, res:json().path)
    end)
  end)

  describe("body size", function()
    it("answers 413 from Content-Length alone, before the body is sent", function()
      local path = unique_path("cl")
      local before = up:count()
      local c = open(gw.port)
      assert(c:send("POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                    .. "Content-Length: 5000\r\n\r\n"))
      -- no body is ever sent: a gateway that waited for it would answer 408 once
      -- client_body_timeout (1 s) passed, so a 413 can only come from the head alone
      local res, err = c:read_response({ timeout = TIMEOUT })
      assert.is_table(res, "no response: " .. tostring(err))
      assert_error(res, 413, "Request size limit exceeded")
      assert_closes(c)
      c:close()
      helpers.sleep(0.1)
      assert.equal(before, up:count())
      assert.same({}, records_for(up, path))
    end)

    it("answers 413 when a chunked body exceeds client_max_body_size mid-stream", function()
      local path = unique_path("chunked")
      local chunk = fmt("%x\r\n%s\r\n", 400, rep("c", 400))
      local raw, closed, how = helpers.raw(gw.port, {
        "POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
          .. "Transfer-Encoding: chunked\r\n\r\n",
        chunk, chunk, chunk,                   -- 1200 bytes > 1k
        "0\r\n\r\n",
      }, { timeout = TIMEOUT, pause = 0.05 })
      assert.is_true(closed, "the gateway did not close the connection (" .. tostring(how)
                             .. ")")
      local list = helpers.parse_response(raw)
      assert.equal(1, #list, raw)
      assert_error(list[1], 413, "Request size limit exceeded")
      helpers.sleep(0.2)
      assert.same({}, complete_records(up, path))
    end)
  end)

  describe("timeouts", function()
    it("aborts a response the client stops reading once send_timeout (1s) passes without "
       .. "progress", function()
      local path = unique_path("slow-reader")
      local c = open(gw.port)
      local t0 = now()
      assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                    .. "X-Upstream-Mode: big:104857600\r\n\r\n"))
      -- read nothing: socket buffers fill, the gateway's writes stall, send_timeout fires
      local line
      helpers.eventually(function()
        for _, l in ipairs(gw:access_log_lines()) do
          if l.path == path then line = l end
        end
        assert.is_truthy(line, "no access log line yet")
      end, TIMEOUT)
      local elapsed = now() - t0
      c:close()
      assert.equal(200, line.status)
      assert.is_true(line.aborted)
      assert.is_true(line.bytes_sent < 104857600, "sent everything: " .. line.bytes_sent)
      -- never before send_timeout (only a lower bound: a slow machine cannot make it fail)
      assert.is_true(elapsed >= 0.9, "aborted after " .. elapsed .. " s")
    end)

    it("treats client_header_timeout (1s) as a total deadline, not reset per byte",
       function()
      local path = unique_path("slow-head")
      local c = open(gw.port)
      local t0 = now()
      assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: example.com\r\nX-Slow: "))
      -- one more header byte every 200 ms, for up to 4 s, until the gateway answers
      local answered = false
      for _ = 1, 20 do
        local ready = socket.select({ c.sock }, nil, 0.2)
        if ready and #ready > 0 then
          answered = true
          break
        end
        if not c:send("x") then
          break
        end
      end
      local first = now() - t0
      assert.is_true(answered, fmt("no answer after %.3f s of a trickling head", first))
      local res, err = c:read_response({ timeout = TIMEOUT })
      assert.is_table(res, "no response: " .. tostring(err))
      assert_error(res, 408, "Request timeout")
      -- answered while the head was still trickling in (so the deadline is not reset per
      -- byte), and not before client_header_timeout
      assert.is_true(first >= 0.8, fmt("408 after %.3f s, expected ~1 s", first))
      assert_closes(c)
      c:close()
      assert.same({}, records_for(up, path))
    end)

    it("answers 408 to a client that sends half a head and then nothing", function()
      local path = unique_path("half-head")
      local c = open(gw.port)
      local t0 = now()
      assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: exa"))
      local res, err = c:read_response({ timeout = TIMEOUT })
      local elapsed = now() - t0
      assert.is_table(res, "no response: " .. tostring(err))
      assert_error(res, 408, "Request timeout")
      assert.is_true(elapsed >= 0.8, fmt("408 after %.3f s, expected ~1 s", elapsed))
      assert_closes(c)
      c:close()
      assert.same({}, records_for(up, path))
    end)

    it("answers 408 when the body stalls longer than client_body_timeout (1s)", function()
      local path = unique_path("slow-body")
      local c = open(gw.port)
      assert(c:send("POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                    .. "Content-Length: 10\r\n\r\n"))
      assert(c:send("abc"))
      local t0 = now()
      local res, err = c:read_response({ timeout = TIMEOUT })
      local elapsed = now() - t0
      assert.is_table(res, "no response: " .. tostring(err))
      assert_error(res, 408, "Request timeout")
      assert.is_true(elapsed >= 0.8, fmt("408 after %.3f s, expected ~1 s", elapsed))
      assert_closes(c)
      c:close()
      helpers.sleep(0.2)
      assert.same({}, complete_records(up, path))
    end)

    it("closes an idle keep-alive connection after keepalive_timeout (1s)", function()
      local c = open(gw.port)
      assert(c:send("GET " .. unique_path("ka") .. " HTTP/1.1\r\nHost: example.com\r\n\r\n"))
      local res, err = c:read_response({ timeout = TIMEOUT })
      assert.is_table(res, "no response: " .. tostring(err))
      assert.equal(200, res.status)
      assert.is_false(header_has_token(res.headers.connection, "close"))
      -- still open half-way through the timeout, then closed by the gateway
      local data, how = c:receive_all(0.4)
      assert.equal("timeout", how, "closed too early; received: " .. data)
      data, how = c:receive_all(TIMEOUT)
      assert.equal("closed", how)
      assert.equal("", data)
      c:close()
    end)
  end)

  describe("keepalive_requests", function()
    it("closes the connection after the third request with Connection: close", function()
      local c = open(gw.port)
      local ids = {}
      for i = 1, 3 do
        assert(c:send("GET " .. unique_path("kr") .. " HTTP/1.1\r\nHost: example.com\r\n\r\n"))
        local res, err = c:read_response({ timeout = TIMEOUT })
        assert.is_table(res, fmt("request %d: no response: %s", i, tostring(err)))
        assert.equal(200, res.status)
        ids[i] = res:json().connection_id
        if i < 3 then
          assert.is_false(header_has_token(res.headers.connection, "close"),
                          fmt("response %d closes the connection", i))
        else
          assert.is_true(header_has_token(res.headers.connection, "close"),
                         "the third response lacks Connection: close")
        end
      end
      assert_closes(c, 2)
      c:close()
    end)
  end)
end)

describe("limits.max_connections", function()
  local gw, up

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      worker_processes = 1,
      limits = { max_connections = 5 },
      _format_version = "3.0",
      services = { service("mc", up.url, { "/" }) },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("closes a connection beyond max_connections (5) at once and keeps the others", function()
    -- whatever the start-up probes left behind must be gone first
    helpers.eventually(function()
      local res = assert(gw:get("/warmup"))
      assert.equal(200, res.status)
    end, TIMEOUT)
    helpers.sleep(0.1)

    local conns = {}
    for i = 1, 5 do
      conns[i] = open(gw.port)        -- idle: nothing sent, yet each counts
    end
    helpers.sleep(0.2)                -- let the worker accept all five

    -- closed without a request: an accepted connection would wait for one until
    -- client_header_timeout, far beyond this read's guard
    local extra = open(gw.port)
    local data, how = extra:receive_all(2)
    extra:close()
    assert.is_true(how == "closed" or how == "reset",
                   "the 6th connection was not closed by the gateway (" .. how .. ")")
    assert.equal("", data)

    -- the first five still work
    local path = unique_path("mc")
    assert(conns[3]:send("GET " .. path .. " HTTP/1.1\r\nHost: example.com\r\n\r\n"))
    local res, err = conns[3]:read_response({ timeout = TIMEOUT })
    assert.is_table(res, "no response on an accepted connection: " .. tostring(err))
    assert.equal(200, res.status)
    assert.equal(path, res:json().path)
    assert(conns[5]:send("GET " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                         .. "Connection: close\r\n\r\n"))
    res, err = conns[5]:read_response({ timeout = TIMEOUT })
    assert.is_table(res, "no response on an accepted connection: " .. tostring(err))
    assert.equal(200, res.status)

    for _, c in ipairs(conns) do
      c:close()
    end

    -- once they are gone (the gateway reads their EOF), five new connections are served
    helpers.eventually(function()
      local more = {}
      local ok, err = pcall(function()
        for i = 1, 5 do
          more[i] = open(gw.port)
        end
        for i = 1, 5 do
          assert(more[i]:send("GET /again HTTP/1.1\r\nHost: example.com\r\n"
                              .. "Connection: close\r\n\r\n"))
        end
        for i = 1, 5 do
          local r, e = more[i]:read_response({ timeout = TIMEOUT })
          assert.is_table(r, fmt("connection %d after the others closed: %s", i, tostring(e)))
          assert.equal(200, r.status)
        end
      end)
      for _, c in ipairs(more) do
        c:close()
      end
      assert(ok, err)
    end, TIMEOUT, 0.2)
  end)
end)

describe("default head limits and upstream timeouts", function()
  local gw, up

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      _format_version = "3.0",
      services = {
        service("plain", up.url, { "/" }),
        service("slow", up.url, { "/slow" }, { read_timeout = 300, retries = 0 }),
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("serves a 31 KiB head under the default max_headers_size (32k)", function()
    local list = { { "Host", "example.com" } }
    for i = 1, 62 do                       -- 62 lines of ~500 bytes, under 8k each
      list[#list + 1] = { fmt("X-Big-%02d", i), rep(string.char(97 + i % 26), 488) }
    end
    list[#list + 1] = { "Connection", "close" }
    local path = unique_path("big-head")
    local head = "GET " .. path .. " HTTP/1.1\r\n" .. headers_block(list) .. "\r\n"
    assert.is_true(#head > 30 * 1024 and #head < 32 * 1024, "head is " .. #head .. " bytes")
    local raw, closed, how = helpers.raw(gw.port, head, { timeout = TIMEOUT })
    assert.is_true(closed, tostring(how))
    local res = helpers.parse_response(raw)[1]
    assert.is_table(res, raw)
    assert.equal(200, res.status, raw)
    local echo = res:json()
    assert.equal(path, echo.path)
    for i = 1, 62 do
      assert.equal(rep(string.char(97 + i % 26), 488), echo.headers[fmt("x-big-%02d", i)])
    end
  end)

  it("answers 504 when the upstream does not answer within read_timeout (300 ms)",
     function()
    local path = "/slow" .. unique_path("hang")
    local t0 = now()
    local res, err = gw:get(path, { headers = { ["X-Upstream-Mode"] = "hang" },
                                    timeout = TIMEOUT })
    local elapsed = now() - t0
    assert.is_table(res, "no response: " .. tostring(err))
    assert.equal(504, res.status)
    assert.same({ message = "The upstream server is timing out" }, res:json())
    assert.is_true(elapsed >= 0.25, fmt("504 after %.3f s, expected ~0.3 s", elapsed))
  end)
end)
