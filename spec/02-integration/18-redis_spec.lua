-- moongate.redis (DESIGN.md §4): a RESP2 client on cosockets. A test plugin
-- (spec/fixtures/plugins/moongate/plugins/redisc-client) uses it in the access phase against
-- real redis-server processes started here on free ports (one open, one with requirepass),
-- and answers with what it got. Covered: replies of every type and the nil / null / error
-- conventions, binary-safe arguments and number formatting, pipelines, EVAL / EVALSHA and the
-- NOSCRIPT fallback, AUTH (and a wrong password) and SELECT at connect, the keepalive pool,
-- a server that is down, read timeouts, misuse, and many requests waiting on redis at once
-- without blocking the worker.

local helpers = require "spec.helpers"
local cjson = require "cjson.safe"
local socket = require "socket"

local fmt = string.format

local PWD = os.getenv("PWD")
local PLUGIN_PATH = PWD .. "/spec/fixtures/plugins/?.lua;;"
local NIL = "<nil>"
local PASSWORD = "s3cret pass"

-- A command straight to redis over luasocket (RESP2), for setup and checks.
local function rcmd(port, ...)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(2)
  local args = { ... }
  local out = { "*" .. #args .. "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  assert(c:send(table.concat(out)))
  local line = assert(c:receive("*l"))
  local reply
  if line:sub(1, 1) == "$" then
    local n = tonumber(line:sub(2))
    reply = n >= 0 and assert(c:receive(n + 2)):sub(1, n) or nil
  else
    reply = line
  end
  c:close()
  return reply
end

local function settings(up)
  return {
    lua_package_path = PLUGIN_PATH,
    plugins = { "bundled", "redisc-client" },
    services = {
      { name = "plain", url = up.url, routes = { { name = "plain", paths = { "/plain" } } } },
      { name = "redisc", url = up.url, plugins = { { name = "redisc-client" } },
        routes = { { name = "redisc", paths = { "/redisc" } } } },
    },
  }
end

describe("moongate.redis", function()
  local up, gw, red, red_auth

  local function call(action, headers, port)
    local h = { ["X-Action"] = action, ["X-Port"] = tostring(port or red.port) }
    for k, v in pairs(headers or {}) do h[k] = v end
    local res = assert(gw:get("/redisc", { headers = h, timeout = 10 }))
    assert.equal(200, res.status, res.body)
    return assert(cjson.decode(res.body), res.body)
  end

  lazy_setup(function()
    red = helpers.redis_server()
    red_auth = helpers.redis_server({ args = "--requirepass " .. helpers.shell_quote(PASSWORD) })
    up = helpers.upstream()
    gw = helpers.start(settings(up))
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
    if red then red.stop() end
    if red_auth then red_auth.stop() end
  end)

  it("answers commands: status, bulk, integer and array replies; nil for a missing key; "
     .. "nil and the message for an error reply", function()
    local r = call("basic", { ["X-Key"] = "basic" })
    assert.is_nil(r.err)
    assert.same({ "OK" }, r.set)
    assert.same({ "v" }, r.get)
    assert.same({ NIL }, r.missing)                    -- nil, and no error
    assert.same({ 1 }, r.incr1)
    assert.same({ 2 }, r.incr2)
    assert.same({ 42 }, r.incrby)
    assert.same({ 1 }, r.expire)
    assert.is_true(r.ttl[1] > 0 and r.ttl[1] <= 10)
    assert.same({ "OK" }, r.bin_set)
    assert.is_true(r.bin_same)
    assert.equal("2.5", r.float_get)
    assert.same({ "1099511627776" }, r.big_get)       -- integral numbers as integers
    assert.same({ NIL, "ERR value is not an integer or out of range" }, r.wrongtype)
    assert.equal(NIL, r.unknown[1])
    assert.matches("^ERR unknown command", r.unknown[2])
    assert.same({ a = "1", b = "2" }, r.hgetall)
    assert.same({ { "v", cjson.null, "42" } }, r.mget) -- a null inside an array: redis.null
    assert.is_true(r.mget_null)
    assert.same({ "PONG" }, r.ping)
    assert.same({ 1 }, r.keepalive)
    assert.equal("42", rcmd(red.port, "GET", "basic:n"))
  end)

  it("runs a pipeline: one reply per command, errors as { false, msg }, nulls as null",
     function()
    local r = call("pipeline", { ["X-Key"] = "pipe" })
    assert.is_nil(r.err)
    assert.same({ true, true, true, true, true, true, true }, r.queued)
    assert.equal(7, r.n)
    assert.same({ 0, "OK", 2, "2", cjson.null }, { r.res[1], r.res[2], r.res[3], r.res[4],
                                                  r.res[5] })
    assert.is_true(r.null4)
    assert.is_false(r.res[6][1])
    assert.matches("^WRONGTYPE", r.res[6][2])
    assert.same({}, r.res[7])
    assert.same({ NIL, "no pipeline" }, r.empty)
    assert.same({ "2" }, r.after_cancel)
  end)

  it("runs scripts: EVAL, SCRIPT LOAD with the same SHA-1, EVALSHA, NOSCRIPT, and "
     .. "eval_cached falling back to EVAL", function()
    local r = call("scripts", { ["X-Key"] = "lua" })
    assert.same({ { "lua:s", "arg", 42 } }, r.eval)
    assert.same({ r.sha }, r.load)
    assert.same({ { "lua:s", "x", 2 } }, r.evalsha)
    assert.same({ "OK" }, r.flush)
    assert.equal(NIL, r.noscript[1])
    assert.matches("^NOSCRIPT", r.noscript[2])
    assert.same({ { "lua:s", "y", 4 } }, r.cached)
    assert.same({ { 1 } }, r.exists)                   -- EVAL cached it again
    assert.same({ { "lua:s", "z", 6 } }, r.cached2)
    assert.same({ NIL, "ERR custom failure" }, r.script_err)
    assert.same({ NIL }, r.nil_result)
  end)

  it("authenticates at connect (password, or user and password); a wrong password or none "
     .. "fails", function()
    local port = red_auth.port
    local r = call("auth", { ["X-Password"] = PASSWORD, ["X-Key"] = "auth" }, port)
    assert.is_true(r.ok, r.err)
    assert.same({ "OK" }, r.set)
    assert.same({ "x" }, r.get)
    r = call("auth", { ["X-Password"] = PASSWORD, ["X-Username"] = "default",
                       ["X-Key"] = "auth" }, port)
    assert.is_true(r.ok, r.err)
    assert.same({ "x" }, r.get)
    r = call("auth", { ["X-Password"] = "wrong" }, port)
    assert.is_false(r.ok)
    assert.matches("^WRONGPASS", r.err)
    r = call("auth", { ["X-Key"] = "auth" }, port)    -- no password: connected, then refused
    assert.is_true(r.ok)
    assert.equal(NIL, r.get[1])
    assert.matches("^NOAUTH", r.get[2])
    -- a pooled connection is reused without a second AUTH
    r = call("auth", { ["X-Password"] = PASSWORD, ["X-Key"] = "auth" }, port)
    assert.is_true(r.reused > 0)
    assert.same({ "x" }, r.get)
  end)

  it("selects the database at connect, and keeps databases apart in the pool", function()
    local r = call("select", { ["X-Db"] = "1", ["X-Value"] = "one", ["X-Key"] = "sel" })
    assert.is_true(r.ok, r.err)
    assert.equal("1", r.db)
    r = call("select", { ["X-Db"] = "2", ["X-Key"] = "sel" })
    assert.equal("2", r.db)
    assert.same({ NIL }, r.before)
    r = call("select", { ["X-Db"] = "1", ["X-Key"] = "sel" })
    assert.is_true(r.reused > 0)
    assert.equal("1", r.db)
    assert.same({ "one" }, r.before)
    r = call("select", { ["X-Key"] = "sel" })
    assert.equal("0", r.db)
    assert.same({ NIL }, r.before)
    r = call("select", { ["X-Db"] = "99" })
    assert.is_false(r.ok)
    assert.matches("^ERR DB index is out of range", r.err)
  end)

  it("reuses a kept-alive connection: the same CLIENT ID", function()
    local h = { ["X-Pool"] = "ka-redis", ["X-Key"] = "ka" }
    local r1 = call("keepalive", h)
    assert.equal(0, r1.reused)
    assert.same({ 1 }, r1.keepalive)
    assert.equal(NIL, r1.after[1])
    assert.equal("not connected", r1.after[2])
    local r2 = call("keepalive", h)
    assert.equal(1, r2.reused)
    assert.equal(r1.id, r2.id)
  end)

  it("returns nil, \"connection refused\" when redis is down", function()
    local r = call("down", nil, helpers.get_free_port())
    assert.is_false(r.ok)
    assert.equal("connection refused", r.err)
    assert.same({ NIL, "not connected" }, r.after)
  end)

  it("times out a read: nil, \"timeout\", and the connection is closed", function()
    local r = call("timeout", { ["X-Key"] = "to" })
    assert.same({ NIL, "timeout" }, r.blpop)
    assert.is_true(r.elapsed >= 0.15, "elapsed " .. r.elapsed)   -- never before the timeout
    assert.same({ NIL, "not connected" }, r.after)
    assert.same({ NIL, "not connected" }, r.keepalive)
  end)

  it("raises on an argument that is neither a string nor a number (a 500)", function()
    local res = assert(gw:get("/redisc", { headers = { ["X-Action"] = "misuse",
                                                       ["X-Port"] = tostring(red.port) } }))
    assert.equal(500, res.status)
    helpers.eventually(function()
      assert.matches("bad argument #2 to 'set' (string or number expected, got table)",
                     gw:error_log(), 1, true)
    end, 3)
  end)

  it("serves other requests while many wait on redis round trips", function()
    rcmd(red.port, "DEL", "conc:counter")
    local n, rounds, clients = 8, 20, {}
    for i = 1, n do
      local c = assert(helpers.connect(gw.port))
      assert(c:send(fmt("GET /redisc/%d HTTP/1.1\r\nHost: x\r\nX-Action: work\r\n"
                        .. "X-Port: %d\r\nX-Key: conc\r\nX-N: %d\r\nX-Rounds: %d\r\n"
                        .. "X-Block: 1\r\nConnection: close\r\n\r\n", i, red.port, i,
                        rounds)))
      clients[i] = c
    end
    local plain = assert(gw:get("/plain"))
    assert.equal(200, plain.status)
    -- answered while the others wait on redis: none has a byte of its answer yet
    for i = 1, n do
      local got, err = clients[i]:receive(1, 0)
      assert.is_nil(got, "the plain route waited for the redis clients")
      assert.equal("timeout", err)
    end
    -- all n wait at the same time: redis sees n clients blocked in BLPOP at once
    helpers.eventually(function()
      local info = rcmd(red.port, "INFO", "clients")
      assert.equal(tostring(n), info:match("blocked_clients:(%d+)"), info)
    end, 5, 0.05)
    local lasts = {}
    for i = 1, n do
      local res = assert(clients[i]:read_response({ timeout = 5 }))
      clients[i]:close()
      assert.equal(200, res.status, res.body)
      local r = res:json()
      assert.same({ NIL }, r.popped)                   -- BLPOP timed out: a null array
      lasts[#lasts + 1] = r.last
    end
    assert.equal(tostring(n * rounds), rcmd(red.port, "GET", "conc:counter"))
    table.sort(lasts)
    assert.equal(n * rounds, lasts[n])
  end)
end)
