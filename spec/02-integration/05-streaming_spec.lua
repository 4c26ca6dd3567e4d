-- Streaming (README "Backpressure": bodies stream through fixed 16 KiB buffers; a slow side
-- stalls the other instead of growing memory): 1 GiB bodies both ways, with Content-Length
-- and chunked, arrive exact, while the worker's resident memory stays flat; a slow reader
-- does not make the gateway buffer what the upstream produces.
--
-- Memory is the worker's VmRSS from /proc/<pid>/status, sampled while the transfer runs:
-- between body pieces when the spec process itself is the client, or on a timer while a
-- background curl (bounded by --max-time) is. Set MOONGATE_SPEC_RSS=1 to print the figures.

local helpers = require "spec.helpers"
local upstream = require "moongate.spec.upstream"

local fmt = string.format

local GIB = 1073741824
local PIECE = 65536
local BLOCK = string.rep(upstream.PATTERN, PIECE / #upstream.PATTERN)  -- 64 KiB of pattern
local MAX_RSS_KB = 64 * 1024          -- the worker stays under 64 MiB ...
local MAX_GROWTH_KB = 16 * 1024       -- ... and grows less than 16 MiB during a transfer

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  return data
end

local function rss_kb(pid)
  local status = read_file("/proc/" .. pid .. "/status")
  return tonumber(status and status:match("VmRSS:%s*(%d+)"))
end

-- Samples a process's VmRSS; :check() asserts the bounds and reports the figures.
local function rss_sampler(pid, what)
  local s = { pid = pid, what = what, n = 0 }
  s.start = assert(rss_kb(pid), "no VmRSS for worker " .. pid)
  s.max = s.start
  function s.sample()
    local kb = rss_kb(pid)
    if kb then
      s.n = s.n + 1
      if kb > s.max then s.max = kb end
    end
  end
  function s.check()
    s.sample()
    local summary = fmt("%s: worker VmRSS start %d KiB, max %d KiB, growth %d KiB, %d samples",
                        what, s.start, s.max, s.max - s.start, s.n)
    if os.getenv("MOONGATE_SPEC_RSS") then
      io.stderr:write(summary, "\n")
    end
    assert.is_true(s.n >= 5, "too few samples: " .. summary)
    assert.is_true(s.max < MAX_RSS_KB, summary)
    assert.is_true(s.max - s.start < MAX_GROWTH_KB, summary)
  end
  return s
end

-- Runs curl in the background: the body goes to /dev/null; returns a poller that gives
-- nil while curl runs, then { code, size, exit }.
local function curl_background(dir, url, args)
  local out = fmt("%s/curl.%d.%d", dir, os.time(), math.random(1e9))
  os.remove(out)
  local cmd = fmt("(curl -s -o /dev/null -w '%%{http_code} %%{size_download}' %s '%s' "
                  .. ">%s.tmp 2>/dev/null; echo \" $?\" >>%s.tmp; mv %s.tmp %s) &",
                  args, url, out, out, out, out)
  assert(os.execute(cmd))
  return function()
    local data = read_file(out)
    if not data then return nil end
    local code, size, exit = data:match("^(%d+) (%d+) (%d+)")
    return { code = tonumber(code), size = tonumber(size), exit = tonumber(exit), raw = data }
  end
end

-- Polls `poll` every `interval` seconds, sampling RSS meanwhile, for at most `timeout`.
local function wait_sampling(poll, sampler, interval, timeout)
  local deadline = helpers.now() + timeout
  while helpers.now() < deadline do
    sampler.sample()
    local res = poll()
    if res then return res end
    helpers.sleep(interval)
  end
  error(fmt("background transfer still running after %g s", timeout), 2)
end

-- A body function giving `n` bytes in 64 KiB pieces, sampling RSS every 16 MiB.
local function gib_body(sampler)
  local sent = 0
  return function()
    if sent >= GIB then return nil end
    sent = sent + PIECE
    if sent % (16 * 1024 * 1024) == 0 then sampler.sample() end
    return BLOCK
  end
end

describe("streaming", function()
  local up, gw, worker

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      limits = { client_max_body_size = 0 },            -- unlimited
      services = { { name = "echo", url = up.url, routes = { { paths = { "/echo" } } } } },
    })
    local pids = gw:worker_pids()
    assert.equal(1, #pids)
    worker = pids[1]
    -- warm up: the buffers come from the free list from now on
    assert.equal(200, assert(gw:post("/echo", string.rep("x", 100000))).status)
    assert.equal(200, assert(gw:get("/echo", {
      headers = { ["X-Upstream-Mode"] = "big:1000000" }, discard_body = true })).status)
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("streams a 1 GiB upload with Content-Length to the upstream in flat worker memory",
     function()
    local rss = rss_sampler(worker, "1 GiB Content-Length upload")
    local res, err = helpers.request(gw.port, {
      method = "POST", path = "/echo", timeout = 30,
      headers = { ["Content-Length"] = tostring(GIB) },
      body = gib_body(rss),
    })
    assert(res, err)
    assert.equal(200, res.status)
    local echo = res:json()
    assert.equal(GIB, echo.body_length)
    assert.equal("content-length", echo.received_framing)
    assert.equal(tostring(GIB), echo.headers["content-length"])
    rss.check()
  end)

  it("streams a 1 GiB chunked upload to the upstream in flat worker memory", function()
    local rss = rss_sampler(worker, "1 GiB chunked upload")
    local res, err = helpers.request(gw.port, {
      method = "POST", path = "/echo", timeout = 30, body = gib_body(rss),
    })
    assert(res, err)
    assert.equal(200, res.status)
    local echo = res:json()
    assert.equal(GIB, echo.body_length)
    assert.equal("chunked", echo.received_framing)
    assert.is_nil(echo.headers["content-length"])
    rss.check()
  end)

  it("streams a 1 GiB download with Content-Length byte for byte in flat worker memory",
     function()
    local rss = rss_sampler(worker, "1 GiB Content-Length download")
    local c = assert(helpers.connect(gw.port, { timeout = 30 }))
    assert(c:send("GET /echo HTTP/1.1\r\nHost: x\r\nX-Upstream-Mode: big:" .. GIB
                  .. "\r\nConnection: close\r\n\r\n"))
    local status = assert(c:receive_line())
    assert.equal("HTTP/1.1 200 OK", status)
    local length
    while true do
      local line = assert(c:receive_line())
      if line == "" then break end
      length = length or tonumber(line:lower():match("^content%-length:%s*(%d+)$"))
    end
    assert.equal(GIB, length)
    -- every byte: byte k of the body is PATTERN:byte(k % 64 + 1), so each 64 KiB piece at a
    -- 64 KiB offset equals BLOCK
    local got, bad_at = 0, nil
    while got < GIB do
      local piece, err = c:receive(PIECE, 30)
      assert(piece, fmt("download ended after %d bytes: %s", got, tostring(err)))
      if piece ~= BLOCK and not bad_at then bad_at = got end
      got = got + #piece
      if got % (16 * 1024 * 1024) == 0 then rss.sample() end
    end
    local extra, how = c:receive_all(5)
    c:close()
    assert.is_nil(bad_at, "wrong bytes in the 64 KiB piece at offset " .. tostring(bad_at))
    assert.equal(GIB, got)
    assert.equal("", extra)                               -- nothing past Content-Length
    assert.equal("closed", how)
    rss.check()
  end)

  it("streams a 1 GiB chunked download with the exact length in flat worker memory",
     function()
    local rss = rss_sampler(worker, "1 GiB chunked download")
    local poll = curl_background(gw.prefix, gw.url .. "/echo",
      "--max-time 30 -H 'X-Upstream-Mode: big-chunked:" .. GIB .. "'")
    local res = wait_sampling(poll, rss, 0.05, 35)
    assert.equal(0, res.exit, "curl: " .. res.raw)         -- chunk framing intact to the end
    assert.equal(200, res.code)
    assert.equal(GIB, res.size)
    rss.check()
  end)

  it("keeps the worker's memory flat while a slow client (20 MiB/s) downloads 200 MB",
     function()
    local n = 200000000
    local rss = rss_sampler(worker, "200 MB download at 20 MiB/s")
    local t0 = helpers.now()
    local poll = curl_background(gw.prefix, gw.url .. "/echo",
      "--max-time 30 --limit-rate 20M -H 'X-Upstream-Mode: big:" .. n .. "'")
    local res = wait_sampling(poll, rss, 0.25, 35)
    local elapsed = helpers.now() - t0
    assert.equal(0, res.exit, "curl: " .. res.raw)
    assert.equal(200, res.code)
    assert.equal(n, res.size)
    -- the client really was slow: the upstream, much faster, had to wait for it
    assert.is_true(elapsed > 5, "the download took only " .. elapsed .. " s")
    rss.check()
  end)
end)
