-- Retries (issue 6 item 1, README "Upstreams, load balancing and TLS"): a try that fails
-- before the client got a byte of the response moves to the next target (or the same host
-- again), within the service's `retries`: a refused connect for any method; a timeout or a
-- connection closed or reset before any response byte only for idempotent methods (RFC 9110
-- 9.2.2) unless the service sets `retry_non_idempotent`, and only when the body can be sent
-- again (none, or held whole because a plugin read it). Once the response has started nothing
-- is retried. Each failed try has an error-log line naming its target; the access log lists
-- every try's address ("a, b", as nginx's $upstream_addr) and their count (`tries`).
--
-- Targets are real echo upstreams: one whose default mode is `hang` (reads the request, never
-- answers), one that dies mid-body, one that answers; round-robin's first pick in a fresh
-- worker is the first target, so the failing one is listed first.

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"

local fmt = string.format

local PLUGIN_PATH = os.getenv("PWD") .. "/spec/fixtures/plugins/?.lua;;"
local TIMING_OUT = "The upstream server is timing out"
local BAD_GATEWAY = "An invalid response was received from the upstream server"

local function addr(up)
  return "127.0.0.1:" .. up.port
end

-- The port of the target that answered (from the Host it received: the target's own).
local function answered_by(res)
  assert.equal(200, res.status, res.body)
  local body = assert(cjson.decode(res.body))
  return tonumber(body.headers.host:match(":(%d+)$")), body
end

-- A gateway with upstream "pool" over `first` then `second`, and services on it:
-- /lb (retries 5), /once (retries 0), /opt-in (retry_non_idempotent), /held (the bodyreader
-- plugin holds the body, retry_non_idempotent); every read_timeout 300 ms.
local function start(first, second)
  local function svc(name, path, extra)
    local s = { name = name, host = "pool", port = 80, retries = 5, read_timeout = 300,
                routes = { { paths = { path } } } }
    for k, v in pairs(extra or {}) do s[k] = v end
    return s
  end
  local held = svc("held", "/held", { retry_non_idempotent = true })
  held.routes[1].plugins = { { name = "bodyreader" } }
  return helpers.start({
    lua_package_path = PLUGIN_PATH,
    plugins = { "bundled", "bodyreader" },
    upstreams = { { name = "pool", targets = { { target = first }, { target = second } } } },
    services = {
      svc("lb", "/lb"),
      svc("once", "/once", { retries = 0 }),
      svc("opt-in", "/opt-in", { retry_non_idempotent = true }),
      held,
    },
  })
end

describe("retries", function()
  local good, slow, dying, closer
  local gw

  lazy_setup(function()
    good = helpers.upstream()
    slow = helpers.upstream({ mode = "hang" })
    dying = helpers.upstream({ mode = "die-mid-body" })
    closer = helpers.upstream({ mode = "close-before-headers" })
  end)

  lazy_teardown(function()
    for _, up in ipairs({ good, slow, dying, closer }) do up:stop() end
  end)

  before_each(function()
    for _, up in ipairs({ good, slow, dying, closer }) do up:clear() end
  end)

  after_each(function()
    if gw then
      gw:stop()
      gw = nil
    end
  end)

  it("serves a request whose first target refuses the connection from the next one",
     function()
    local dead = helpers.get_free_port()
    gw = start("127.0.0.1:" .. dead, addr(good))
    local res = assert(gw:post("/lb/refused", "a body"))    -- any method: nothing was sent
    local port, echo = answered_by(res)
    assert.equal(good.port, port)
    assert.equal("a body", echo.body)
    local line = gw:access_log_entry("/lb/refused")
    assert.equal(2, line.tries)
    assert.equal(fmt("127.0.0.1:%d, %s", dead, addr(good)), line.upstream_addr)
    assert.matches(fmt('target 127.0.0.1:%d, 127.0.0.1:%d, try 1): Connection refused; '
                       .. 'trying again', dead, dead), gw:error_log(), 1, true)
    -- a chunked body streamed into the failed try's buffer goes along, under a new head
    gw:stop()
    gw = start("127.0.0.1:" .. dead, addr(good))            -- round-robin: dead first again
    good:clear()
    local pieces = { "abc", "defgh" }
    res = assert(gw:request({ method = "POST", path = "/lb/chunked",
                              body = function() return table.remove(pieces, 1) end }))
    port, echo = answered_by(res)
    assert.equal(good.port, port)
    assert.equal("abcdefgh", echo.body)
    assert.equal("chunked", echo.received_framing)
    assert.equal(1, good:count())                          -- one request, terminated once
    assert.equal(2, gw:access_log_entry("/lb/chunked").tries)
  end)

  it("retries a GET that timed out on the next target; the slow one saw it once", function()
    gw = start(addr(slow), addr(good))
    local res = assert(gw:get("/lb/timeout"))
    assert.equal(good.port, (answered_by(res)))
    assert.equal(1, slow:count())
    assert.equal(1, good:count())
    local line = gw:access_log_entry("/lb/timeout")
    assert.equal(200, line.status)
    assert.equal(2, line.tries)
    assert.equal(addr(slow) .. ", " .. addr(good), line.upstream_addr)
    assert.matches(fmt('upstream failed (upstream "pool" target %s, %s, try 1): timed out; '
                       .. 'trying again', addr(slow), addr(slow)), gw:error_log(), 1, true)
  end)

  it("retries a GET whose target closes the connection before a response byte; not a POST",
     function()
    gw = start(addr(closer), addr(good))
    assert.equal(good.port, (answered_by(assert(gw:get("/lb/closed")))))
    assert.equal(1, closer:count())
    assert.equal(1, good:count())
    gw:stop()
    gw = start(addr(closer), addr(good))                    -- round-robin: closer first again
    closer:clear()
    good:clear()
    local res = assert(gw:post("/lb/closed-post"))
    assert.equal(502, res.status)
    assert.same({ message = BAD_GATEWAY }, res:json())
    assert.equal(1, closer:count())
    assert.equal(0, good:count())
  end)

  it("answers 504 to a POST that timed out, sent exactly once", function()
    gw = start(addr(slow), addr(good))
    local res = assert(gw:post("/lb/post"))
    assert.equal(504, res.status)
    assert.same({ message = TIMING_OUT }, res:json())
    assert.equal(1, slow:count())
    assert.equal(0, good:count())
    local line = gw:access_log_entry("/lb/post")
    assert.equal(1, line.tries)
    assert.equal(addr(slow), line.upstream_addr)
    local log = gw:error_log()
    assert.matches("try 1): timed out", log, 1, true)
    assert.is_nil(log:find("trying again", 1, true), log)
  end)

  it("retries a POST that timed out when the service sets retry_non_idempotent", function()
    gw = start(addr(slow), addr(good))
    local res = assert(gw:post("/opt-in/post"))
    assert.equal(good.port, (answered_by(res)))
    assert.equal(1, slow:count())
    assert.equal(1, good:count())
  end)

  it("never replays a streamed request body, even with retry_non_idempotent: 504", function()
    gw = start(addr(slow), addr(good))
    local res = assert(gw:post("/opt-in/body", ("x"):rep(1000)))
    assert.equal(504, res.status)
    assert.equal(1, slow:count())
    assert.equal(0, good:count())
  end)

  it("sends a body a plugin holds again on the next target", function()
    gw = start(addr(slow), addr(good))
    local body = ("0123456789"):rep(500)
    local res = assert(gw:post("/held/body", body))
    local port, echo = answered_by(res)
    assert.equal(good.port, port)
    assert.equal(body, echo.body)
    assert.equal(#body, echo.body_length)
    assert.equal(1, slow:count())
  end)

  it("does not retry with retries: 0: 504 after one try", function()
    gw = start(addr(slow), addr(good))
    local res = assert(gw:get("/once/x"))
    assert.equal(504, res.status)
    assert.equal(1, slow:count())
    assert.equal(0, good:count())
    assert.equal(1, gw:access_log_entry("/once/x").tries)
  end)

  it("never retries once the response has started: the client connection is aborted",
     function()
    gw = start(addr(dying), addr(good))
    local res, err = gw:get("/lb/dies")
    -- the head (Content-Length: 100000) went out, then 10 bytes: the client sees a cut
    if res then
      assert.equal(200, res.status)
      assert.is_true(#(res.body or "") < 100000)
    else
      assert.is_truthy(err == "closed" or err == "reset" or err:find("closed"), tostring(err))
    end
    assert.equal(1, dying:count())
    assert.equal(0, good:count())
    local line = gw:access_log_entry("/lb/dies")
    assert.equal(1, line.tries)
    assert.is_true(line.aborted)
  end)
end)

describe("retries on a plain host", function()
  local slow, gw

  lazy_setup(function()
    slow = helpers.upstream({ mode = "hang" })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    slow:stop()
  end)

  it("tries a dead port 1 + retries times, each logged, and answers 502", function()
    local dead = helpers.get_free_port()
    gw = helpers.start({ services = {
      { name = "dead", url = "http://127.0.0.1:" .. dead, retries = 2,
        routes = { { paths = { "/dead" } } } },
      { name = "slow", url = slow.url, retries = 1, read_timeout = 200,
        routes = { { paths = { "/slow" } } } },
    } })
    local res = assert(gw:get("/dead"))
    assert.equal(502, res.status)
    assert.same({ message = BAD_GATEWAY }, res:json())
    local line = gw:access_log_entry("/dead")
    assert.equal(3, line.tries)
    local a = "127.0.0.1:" .. dead
    assert.equal(a .. ", " .. a .. ", " .. a, line.upstream_addr)
    local log = gw:error_log()
    for try = 1, 3 do
      assert.matches(fmt("127.0.0.1:%d, try %d): Connection refused", dead, try), log, 1, true)
    end

    -- a GET that times out goes to the same host once more (retries: 1), then 504
    res = assert(gw:get("/slow"))
    assert.equal(504, res.status)
    assert.equal(2, slow:count())
    line = gw:access_log_entry("/slow")
    assert.equal(2, line.tries)
    assert.equal(addr(slow) .. ", " .. addr(slow), line.upstream_addr)
  end)
end)

describe("retries without a target", function()
  it("counts no try when the balancer has no target to offer: 503, no address logged",
     function()
    local gw = helpers.start({
      upstreams = { { name = "pool", targets = { { target = "127.0.0.1:9", weight = 0 } } } },
      services = { { name = "svc", host = "pool", routes = { { paths = { "/none" } } } } },
    })
    local res = assert(gw:get("/none"))
    assert.equal(503, res.status)
    local line = gw:access_log_entry("/none")
    gw:stop()
    assert.equal("", line.upstream_addr)
    assert.is_nil(line.tries)
  end)
end)

describe("retry_non_idempotent in moongate check", function()
  it("refuses a value that is not a boolean, with its path", function()
    local code, lines = helpers.check({ services = { {
      name = "s", url = "http://127.0.0.1:9", retry_non_idempotent = "sometimes" } } })
    assert.equal(1, code, table.concat(lines, "\n"))
    local text = table.concat(lines, "\n")
    assert.matches("services[0].retry_non_idempotent: expected a boolean", text, 1, true)
  end)
end)
