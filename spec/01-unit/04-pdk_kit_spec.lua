-- moongate.spec.pdk, the in-process kit that runs a plugin handler's phases without a
-- gateway: first that it is the PDK (every function of lua/moongate/pdk/*.lua exists in the
-- kit and behaves the same in every phase: same phase refusals, same argument errors, word
-- for word, checked against the real modules loaded over a stub of the FFI bridge), then
-- what each function does over the kit's tables, then the kit itself at work on the example
-- plugin (examples/moongate-plugin-request-stamp).
local pdk = require "moongate.spec.pdk"
local phases = require "moongate.phases"
local cjson = require "cjson.safe"

local ROOT = os.getenv("PWD")
package.path = ROOT .. "/examples/moongate-plugin-request-stamp/?.lua;" .. package.path

-- "file.lua:12: message" -> "message"
local function strip(err)
  return (tostring(err):gsub("^[^\n]-:%d+: ", ""))
end

local function errmsg(fn, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, "expected an error")
  return strip(err)
end

---------------------------------------------------------------------------------------------
-- The real PDK, over a stub of moongate.core.base (the FFI bridge needs the binary)
---------------------------------------------------------------------------------------------

local PDK_MODULES = { "moongate.core.base", "moongate.pdk", "moongate.pdk.request",
                      "moongate.pdk.response", "moongate.pdk.service", "moongate.pdk.client",
                      "moongate.pdk.log", "moongate.pdk.shared", "moongate.pdk.upstream" }

-- Calls with out-parameters answer "declined" (nothing to report), so the real functions
-- return nil without reading them; everything else answers OK (0).
local DECLINES = {
  mg_ffi_req_get_method = true, mg_ffi_req_get_path = true, mg_ffi_req_get_raw_query = true,
  mg_ffi_req_get_host = true, mg_ffi_req_get_scheme = true, mg_ffi_req_get_header = true,
  mg_ffi_req_header_at = true, mg_ffi_req_get_id = true, mg_ffi_req_get_route_name = true,
  mg_ffi_req_get_service_name = true, mg_ffi_client_get_ip = true,
  mg_ffi_client_get_forwarded_ip = true, mg_ffi_upstream_resp_get_header = true,
  mg_ffi_body_get_chunk = true, mg_ffi_req_read_body = true, mg_ffi_upstream_find = true,
  mg_ffi_upstream_target = true,
}

local function load_real_pdk()
  local ffi = require "ffi"
  local saved = {}
  for _, name in ipairs(PDK_MODULES) do
    saved[name] = package.loaded[name]
    package.loaded[name] = nil
  end
  local C = setmetatable({
    -- one shared dictionary, "d"
    mg_ffi_shdict_zone = function(name) return name == "d" and 0 or -5 end,
  }, { __index = function(_, name)
    if DECLINES[name] then return function() return -5 end end
    return function() return 0 end
  end })
  package.loaded["moongate.core.base"] = {
    C = C, OK = 0, ERROR = -1, AGAIN = -2, BUSY = -3, DONE = -4, DECLINED = -5,
    str_out = ffi.new("const char *[1]"), len_out = ffi.new("size_t[1]"),
    str_out2 = ffi.new("const char *[1]"), len_out2 = ffi.new("size_t[1]"),
  }
  local real = require "moongate.pdk"
  local state = { shared = {}, plugin = {} }
  real.current = function() return state end
  real.save = function() return {} end
  real.restore = function() end
  local restore = function()
    for _, name in ipairs(PDK_MODULES) do package.loaded[name] = saved[name] end
    phases.current = 0
  end
  return real.moongate, restore
end

-- What fn returned, as text (for the cases whose results must be the same too).
local function results(r, from)
  local out = {}
  for i = from, r.n do out[#out + 1] = tostring(r[i]) end
  return " -> " .. table.concat(out, ", ")
end

local function pack(...) return { n = select("#", ...), ... } end

-- "ok", "exit" or "error: <message>" for fn(pdk) run as code of `phase`
local function real_outcome(m, phase, fn, with_results)
  phases.current = phases.BY_NAME[phase]
  local co = coroutine.create(fn)
  local r = pack(coroutine.resume(co, m))
  phases.current = 0
  if not r[1] then return "error: " .. strip(r[2]) end
  if coroutine.status(co) == "suspended" then
    return r[2] == "moongate:exit" and "exit" or "yield"
  end
  return "ok" .. (with_results and results(r, 2) or "")
end

local function kit_outcome(phase, fn, with_results)
  local kit = pdk.new({ shared_dicts = { "d" } })
  local r = pack(pcall(kit.call, kit, phase, function() return fn(moongate) end))
  if not r[1] then return "error: " .. strip(r[2]) end
  if kit.exited then return "exit" end
  return "ok" .. (with_results and results(r, 2) or "")
end

local function function_names(t, prefix, out, seen)
  out, seen = out or {}, seen or {}
  seen[t] = true
  for k, v in pairs(t) do
    if type(v) == "function" then
      out[#out + 1] = prefix .. k
    elseif type(v) == "table" and not seen[v] then
      function_names(v, prefix .. k .. ".", out, seen)
    end
  end
  table.sort(out)
  return out
end

local function without(list, drop)
  local out = {}
  for _, v in ipairs(list) do
    if not drop[v] then out[#out + 1] = v end
  end
  return out
end

-- Every PDK function with good and bad arguments. The outcome of each, in each phase, must
-- be the same with the real PDK and with the kit.
local CASES = {
  { "request.get_method", function(m) return m.request.get_method() end },
  { "request.get_path", function(m) return m.request.get_path() end },
  { "request.get_raw_query", function(m) return m.request.get_raw_query() end },
  { "request.get_host", function(m) return m.request.get_host() end },
  { "request.get_scheme", function(m) return m.request.get_scheme() end },
  { "request.get_port", function(m) return m.request.get_port() end },
  { "request.get_http_version", function(m) return m.request.get_http_version() end },
  { "request.get_id", function(m) return m.request.get_id() end },
  { "request.get_header", function(m) return m.request.get_header("x-a") end },
  { "request.get_header(1)", function(m) return m.request.get_header(1) end },
  { "request.get_header_count", function(m) return m.request.get_header_count("x-a") end },
  { "request.get_header_count(1)", function(m) return m.request.get_header_count(1) end },
  { "request.get_headers", function(m) return m.request.get_headers() end },
  { "request.get_headers(2)", function(m) return m.request.get_headers(2) end },
  { "request.get_query", function(m) return m.request.get_query() end },
  { "request.get_query_arg", function(m) return m.request.get_query_arg("a") end },
  { "request.get_raw_body", function(m) return m.request.get_raw_body() end },
  { "request.limit_body", function(m) return m.request.limit_body(1000, "too big") end },
  { "request.limit_body(0)", function(m) return m.request.limit_body(0) end },
  { "request.limit_body(s)", function(m) return m.request.limit_body(10, 5) end },
  { "request.get_body", function(m) return m.request.get_body() end },

  { "service.request.set_header", function(m) m.service.request.set_header("X-A", "1") end },
  { "service.request.set_header(n)", function(m) m.service.request.set_header("X-A", 2) end },
  { "service.request.set_header('')", function(m) m.service.request.set_header("", "1") end },
  { "service.request.set_header(sp)", function(m) m.service.request.set_header("X A", "1") end },
  { "service.request.set_header(:)", function(m) m.service.request.set_header("X:A", "1") end },
  { "service.request.set_header(nil)", function(m) m.service.request.set_header(nil, "1") end },
  { "service.request.set_header(t)", function(m) m.service.request.set_header("X-A", {}) end },
  { "service.request.set_header(crlf)",
    function(m) m.service.request.set_header("X-A", "a\r\nb") end },
  { "service.request.set_header(nul)", function(m) m.service.request.set_header("X-A", "a\0") end },
  { "service.request.add_header", function(m) m.service.request.add_header("X-A", "1") end },
  { "service.request.add_header(t)", function(m) m.service.request.add_header("X-A", true) end },
  { "service.request.clear_header", function(m) m.service.request.clear_header("X-A") end },
  { "service.request.clear_header(1)", function(m) m.service.request.clear_header(1) end },
  { "service.request.set_path", function(m) m.service.request.set_path("/p") end },
  { "service.request.set_path(rel)", function(m) m.service.request.set_path("p") end },
  { "service.request.set_path(?)", function(m) m.service.request.set_path("/p?q") end },
  { "service.request.set_path(sp)", function(m) m.service.request.set_path("/a b") end },
  { "service.request.set_raw_query", function(m) m.service.request.set_raw_query("a=1") end },
  { "service.request.set_raw_query(#)", function(m) m.service.request.set_raw_query("a#") end },
  { "service.request.set_raw_query(1)", function(m) m.service.request.set_raw_query(1) end },
  { "service.request.set_query", function(m) m.service.request.set_query({ a = 1 }) end },
  { "service.request.set_query(s)", function(m) m.service.request.set_query("a=1") end },
  { "service.request.set_method", function(m) m.service.request.set_method("PUT") end },
  { "service.request.set_method(lc)", function(m) m.service.request.set_method("put") end },
  { "service.request.set_raw_body", function(m) m.service.request.set_raw_body("x") end },
  { "service.request.set_raw_body(1)", function(m) m.service.request.set_raw_body(1) end },
  { "service.request.set_body", function(m) m.service.request.set_body({ a = 1 }) end },
  { "service.request.set_body(form)", function(m)
    m.service.request.set_body({ a = 1 }, "application/x-www-form-urlencoded")
  end },
  { "service.request.set_body(s)", function(m) m.service.request.set_body("a=1") end },
  { "service.request.set_body(xml)",
    function(m) m.service.request.set_body({}, "application/xml") end },
  { "service.request.set_body(fn)", function(m) m.service.request.set_body({ f = print }) end },
  { "service.response.get_header", function(m) return m.service.response.get_header("x") end },
  { "service.response.get_header(1)", function(m) return m.service.response.get_header(1) end },
  { "service.response.get_status", function(m) return m.service.response.get_status() end },

  { "response.set_header", function(m) m.response.set_header("X-A", "1") end },
  { "response.set_header(n)", function(m) m.response.set_header("X-A", 1) end },
  { "response.set_header('')", function(m) m.response.set_header("", "1") end },
  { "response.set_header(1)", function(m) m.response.set_header(1, "1") end },
  { "response.set_header(b)", function(m) m.response.set_header("X-A", false) end },
  { "response.set_header(lf)", function(m) m.response.set_header("X-A", "a\nb") end },
  { "response.add_header", function(m) m.response.add_header("X-A", "1") end },
  { "response.add_header(t)", function(m) m.response.add_header("X-A", {}) end },
  { "response.clear_header", function(m) m.response.clear_header("X-A") end },
  { "response.clear_header('')", function(m) m.response.clear_header("") end },
  { "response.get_status", function(m) return m.response.get_status() end },
  { "response.get_header", function(m) return m.response.get_header("x") end },
  { "response.get_header(1)", function(m) return m.response.get_header(1) end },
  { "response.exit", function(m) m.response.exit(204) end },
  { "response.exit(json)",
    function(m) m.response.exit(403, { message = "no" }, { ["X-W"] = 1 }) end },
  { "response.exit(list)", function(m) m.response.exit(200, "x", { ["X-W"] = { "a", "b" } }) end },
  { "response.exit(99)", function(m) m.response.exit(99) end },
  { "response.exit(600)", function(m) m.response.exit(600) end },
  { "response.exit(2.5)", function(m) m.response.exit(200.5) end },
  { "response.exit('200')", function(m) m.response.exit("200") end },
  { "response.exit(body)", function(m) m.response.exit(200, 42) end },
  { "response.exit(fn body)", function(m) m.response.exit(200, { f = print }) end },
  { "response.exit(hdrs)", function(m) m.response.exit(200, "", "X: y") end },
  { "response.exit(name)", function(m) m.response.exit(200, "", { ["X Y"] = "1" }) end },
  { "response.exit(name:)", function(m) m.response.exit(200, "", { ["X:Y"] = "1" }) end },
  { "response.exit(crlf)", function(m) m.response.exit(200, "", { X = "a\r\nb" }) end },
  { "response.get_chunk", function(m) return m.response.get_chunk() end },
  { "response.set_chunk", function(m) return m.response.set_chunk("x") end },
  { "response.set_chunk(1)", function(m) return m.response.set_chunk(1) end },
  { "response.get_raw_body", function(m) return m.response.get_raw_body() end },
  { "response.set_raw_body", function(m) return m.response.set_raw_body("x") end },

  { "client.get_ip", function(m) return m.client.get_ip() end },
  { "client.get_forwarded_ip", function(m) return m.client.get_forwarded_ip() end },
  { "client.get_port", function(m) return m.client.get_port() end },
  { "client.authenticate", function(m) m.client.authenticate({ id = "c" }, { id = "k" }) end },
  { "client.authenticate(nil)", function(m) m.client.authenticate(nil) end },
  { "client.authenticate(s)", function(m) m.client.authenticate("alice") end },
  { "client.authenticate(c, s)", function(m) m.client.authenticate({}, "key") end },
  { "client.get_consumer", function(m) return m.client.get_consumer() end },
  { "client.get_credential", function(m) return m.client.get_credential() end },

  { "ctx.shared", function(m) return m.ctx.shared end },
  { "ctx.plugin", function(m) return m.ctx.plugin end },
  { "ctx.other", function(m) return m.ctx.other end },
  { "ctx.shared = {}", function(m) m.ctx.shared = {} end },

  { "log.err", function(m) m.log.err("a", 1, nil, true) end },
  { "log.error", function(m) m.log.error("x") end },
  { "log.debug", function(m) m.log.debug("x") end },
  { "log.serialize", function(m) return m.log.serialize() end },

  { "node.get_id", function(m) return m.node.get_id() end },
  { "upstream.get_health", function(m) return m.upstream.get_health("none") end, true },
  { "upstream.get_health(1)", function(m) return m.upstream.get_health(1) end },
  { "node.get_worker_id", function(m) return m.node.get_worker_id() end },
  { "node.get_worker_pid", function(m) return m.node.get_worker_pid() end },
  { "sleep", function(m) m.sleep(0) end },
  { "sleep(-1)", function(m) m.sleep(-1) end },
  { "sleep('1')", function(m) m.sleep("1") end },
  { "now", function(m) return m.now() end },

  { "shared.missing", function(m) assert(m.shared.missing == nil) end },
  { "shared.d:set", function(m) return m.shared.d:set("k", "v", 10) end },
  { "shared.d:set(bad key)", function(m) return m.shared.d:set({}, "v") end },
  { "shared.d:set(empty key)", function(m) return m.shared.d:set("", "v") end },
  { "shared.d:set(long key)", function(m) return m.shared.d:set(("k"):rep(70000), "v") end },
  { "shared.d:set(bad value)", function(m) return m.shared.d:set("k", {}) end },
  { "shared.d:set(bad ttl)", function(m) return m.shared.d:set("k", 1, -1) end },
  { "shared.d:add(bad ttl)", function(m) return m.shared.d:add("k", 1, "x") end },
  { "shared.d:get", function(m) return m.shared.d:get(1) end },
  { "shared.d:get(bad)", function(m) return m.shared.d:get(nil) end },
  { "shared.d:incr", function(m) return m.shared.d:incr("n", 1, 0) end },
  { "shared.d:incr(bad value)", function(m) return m.shared.d:incr("n", "1") end },
  { "shared.d:incr(bad init)", function(m) return m.shared.d:incr("n", 1, "0") end },
  { "shared.d:expire(bad)", function(m) return m.shared.d:expire("n", -1) end },
  { "shared.d:ttl(bad)", function(m) return m.shared.d:ttl(false) end },
  { "shared.d:delete", function(m) return m.shared.d:delete("n") end },
  { "shared.d:get_keys", function(m) return m.shared.d:get_keys() end },

  { "timer.at", function(m) return m.timer.at(1, print, "x") end },
  { "timer.at(-1)", function(m) return m.timer.at(-1, print) end },
  { "timer.at('1')", function(m) return m.timer.at("1", print) end },
  { "timer.at(no fn)", function(m) return m.timer.at(1, "print") end },
  { "timer.every", function(m) return m.timer.every(1, print) end },
  { "timer.every(0)", function(m) return m.timer.every(0, print) end },
  { "timer.every(no fn)", function(m) return m.timer.every(1) end },
  { "timer.pending_count", function(m) return type(m.timer.pending_count()) end, true },

  -- sockets: what can be decided without a connection
  { "socket.tcp", function(m) return tostring(m.socket.tcp()) end, true },
  { "socket.connect('')", function(m) return m.socket.connect("", 80) end },
  { "sock:connect('')", function(m) return m.socket.tcp():connect("", 80) end },
  { "sock:connect(port 0)", function(m) return m.socket.tcp():connect("h", 0) end },
  { "sock:connect(port 1.5)", function(m) return m.socket.tcp():connect("h", 1.5) end },
  { "sock:connect(opts)", function(m) return m.socket.tcp():connect("h", 80, "x") end },
  { "sock:connect(pool)", function(m) return m.socket.tcp():connect("h", 80, { pool = 1 }) end },
  { "sock:connect(pool_size)",
    function(m) return m.socket.tcp():connect("h", 80, { pool_size = 0 }) end },
  { "sock:connect(unix)", function(m) return m.socket.tcp():connect("unix:/s", 1) end, true },
  { "sock.connect(no self)", function(m) return m.socket.tcp().connect("h", 80) end },
  { "sock:settimeout", function(m) return m.socket.tcp():settimeout(100) end, true },
  { "sock:settimeout('x')", function(m) return m.socket.tcp():settimeout("x") end },
  { "sock:settimeouts(nan)", function(m) return m.socket.tcp():settimeouts(1, 0 / 0) end },
  { "sock:sslhandshake(1)", function(m) return m.socket.tcp():sslhandshake(1) end },
  { "sock:sslhandshake(name)", function(m) return m.socket.tcp():sslhandshake(nil, 1) end },
  { "sock:sslhandshake", function(m) return m.socket.tcp():sslhandshake(nil, "h") end, true },
  { "sock:send", function(m) return m.socket.tcp():send({ "a", 1, { "b" } }) end, true },
  { "sock:send(bool)", function(m) return m.socket.tcp():send(true) end },
  { "sock:send({bool})", function(m) return m.socket.tcp():send({ "a", { false } }) end },
  { "sock:receive", function(m) return m.socket.tcp():receive() end, true },
  { "sock:receive(0)", function(m) return m.socket.tcp():receive(0) end, true },
  { "sock:receive(*x)", function(m) return m.socket.tcp():receive("*x") end },
  { "sock:receive(-1)", function(m) return m.socket.tcp():receive(-1) end },
  { "sock:receiveany", function(m) return m.socket.tcp():receiveany(10) end, true },
  { "sock:receiveany(0)", function(m) return m.socket.tcp():receiveany(0) end },
  { "sock:receiveuntil('')", function(m) return m.socket.tcp():receiveuntil("") end },
  { "sock:receiveuntil(opts)", function(m) return m.socket.tcp():receiveuntil("x", 1) end },
  { "receiveuntil iterator", function(m) return m.socket.tcp():receiveuntil("--")() end, true },
  { "receiveuntil iterator(x)",
    function(m) return m.socket.tcp():receiveuntil("--")("x") end },
  { "sock:setkeepalive", function(m) return m.socket.tcp():setkeepalive() end, true },
  { "sock:setkeepalive(-1)", function(m) return m.socket.tcp():setkeepalive(-1) end },
  { "sock:setkeepalive(, 0)", function(m) return m.socket.tcp():setkeepalive(10, 0) end },
  { "sock:close", function(m) return m.socket.tcp():close() end, true },
  { "sock:getreusedtimes", function(m) return m.socket.tcp():getreusedtimes() end, true },
  { "sock:setoption", function(m) return m.socket.tcp():setoption("tcp-nodelay", true) end, true },
  { "sock:setoption(x)", function(m) return m.socket.tcp():setoption("keepalive", true) end, true },
}

describe("moongate.spec.pdk mirrors the real PDK", function()
  local real, restore

  setup(function()
    real, restore = load_real_pdk()
  end)

  teardown(function()
    if restore then restore() end
  end)

  it("has every function the real PDK has, and no other", function()
    -- the runtime's hooks, not PDK
    local INTERNAL = { ["client.current"] = true, ["timer.run"] = true,
                       ["socket.close_all"] = true, ["tls._begin"] = true,
                       ["tls._end"] = true, ["tls._get"] = true, ["tls._set"] = true,
                       ["upstream._node_id"] = true }
    local real_names = without(function_names(real, ""), INTERNAL)
    local kit_names = function_names(pdk.moongate, "")
    assert.same(real_names, kit_names)
    assert.equal(real.version, pdk.moongate.version)
    assert.equal(real.response.EXIT, pdk.moongate.response.EXIT)
  end)

  it("has every shared dictionary method the real one has", function()
    local d = real.shared.d
    assert.is_table(d)
    local methods = {}
    for k, v in pairs(getmetatable(d).__index) do
      if type(v) == "function" then methods[#methods + 1] = k end
    end
    table.sort(methods)
    local kit_methods = {}
    for k, v in pairs(pdk.Dict) do
      if type(v) == "function" then kit_methods[#kit_methods + 1] = k end
    end
    table.sort(kit_methods)
    assert.same(methods, kit_methods)
  end)

  it("has every cosocket method the real one has", function()
    phases.current = phases.ACCESS
    local sock = real.socket.tcp()
    phases.current = 0
    local methods = {}
    for k, v in pairs(getmetatable(sock).__index) do
      if type(v) == "function" then methods[#methods + 1] = k end
    end
    table.sort(methods)
    local kit_methods = {}
    for k in pairs(pdk.socket_methods) do kit_methods[#kit_methods + 1] = k end
    table.sort(kit_methods)
    assert.same(methods, kit_methods)
  end)

  it("succeeds, exits or fails the same way, with the same message, in every phase", function()
    local diffs = {}
    for _, case in ipairs(CASES) do
      for _, phase in ipairs(phases.ORDER) do
        local want = real_outcome(real, phase, case[2], case[3])
        local got = kit_outcome(phase, case[2], case[3])
        if want ~= got then
          diffs[#diffs + 1] = string.format("%s in %s: real PDK %q, kit %q", case[1], phase,
                                            want, got)
        end
      end
    end
    assert(#diffs == 0, "\n" .. table.concat(diffs, "\n"))
  end)

  it("refuses calls in the wrong phase with the runtime's words", function()
    -- a few spelled out, so the comparison above is not comparing two wrongs
    local kit = pdk.new()
    assert.equal("moongate.response.get_status is not allowed in the access phase",
                 errmsg(kit.call, kit, "access", function() moongate.response.get_status() end))
    assert.equal("moongate.response.exit is not allowed in the header_filter phase",
                 errmsg(kit.call, kit, "header_filter", function() moongate.response.exit(200) end))
    assert.equal("moongate.service.request.set_header is not allowed in the log phase",
                 errmsg(kit.call, kit, "log", function()
                   moongate.service.request.set_header("a", "b")
                 end))
    assert.equal("moongate.ctx.shared is not allowed in the init_worker phase",
                 errmsg(kit.call, kit, "init_worker", function() return moongate.ctx.shared end))
    assert.equal("moongate.sleep is not allowed in the header_filter phase",
                 errmsg(kit.call, kit, "header_filter", function() moongate.sleep(1) end))
  end)
end)

---------------------------------------------------------------------------------------------
-- What each function does
---------------------------------------------------------------------------------------------

local function in_phase(kit, phase, fn)
  return kit:call(phase, fn)
end

describe("moongate.spec.pdk", function()
  after_each(function()
    pdk.flush_shared_dicts()
  end)

  describe("the client certificate", function()
    it("is what client_certificate says, and nil without one", function()
      local kit = pdk.new({ client_certificate = {
        chain = "PEM", verify = "SUCCESS", verified = true, subject_dn = "O=acme,CN=alice",
        cn = "alice", san_list = { "DNS:a.test", "email:a@test" } } })
      in_phase(kit, "access", function()
        local tls = moongate.client.tls
        assert.equal("PEM", tls.get_full_client_certificate_chain())
        assert.equal("SUCCESS", tls.get_client_verify())
        local c = tls.get_client_certificate()
        assert.equal("alice", c.cn)
        assert.same({ "a.test" }, c.sans.dns)
        assert.same({ "a@test" }, c.sans.email)
        assert.is_true(tls.verify_client({ "ca" }))
      end)
      kit = pdk.new()
      in_phase(kit, "access", function()
        local tls = moongate.client.tls
        assert.is_nil(tls.get_full_client_certificate_chain())
        assert.equal("NONE", tls.get_client_verify())
        assert.is_nil(tls.get_client_certificate())
        assert.same({ nil, "no certificate" }, { tls.verify_client({ "ca" }) })
      end)
    end)
  end)

  it("reports the upstreams' health it was given, in Kong's shape", function()
    local kit = pdk.new({ node_id = "node-1", upstreams = { pool = {
      { target = "10.0.0.1:8080", health = "UNHEALTHY" }, { target = "[::1]:81", weight = 5 },
    } } })
    in_phase(kit, "access", function()
      assert.same({ total = 2, node_id = "node-1", data = {
        { target = "10.0.0.1:8080", weight = 100, health = "UNHEALTHY",
          upstream = { name = "pool" },
          data = { addresses = { { ip = "10.0.0.1", port = 8080, health = "UNHEALTHY",
                                   weight = 100 } } } },
        { target = "[::1]:81", weight = 5, health = "HEALTHCHECKS_OFF",
          upstream = { name = "pool" },
          data = { addresses = { { ip = "::1", port = 81, health = "HEALTHCHECKS_OFF",
                                   weight = 5 } } } },
      } }, moongate.upstream.get_health("pool"))
      local none, err = moongate.upstream.get_health("other")
      assert.is_nil(none)
      assert.equal("upstream not found", err)
    end)
  end)

  it("reports every address of a named target, and DNS_ERROR for one without", function()
    local kit = pdk.new({ upstreams = { pool = {
      { target = "api.test:80", health = "HEALTHY",
        addresses = { { ip = "10.0.0.7" }, { ip = "10.0.0.8", health = "UNHEALTHY" } } },
      { target = "gone.test:80", health = "HEALTHY", addresses = {} },
    } } })
    in_phase(kit, "access", function()
      local data = moongate.upstream.get_health("pool").data
      assert.same({ addresses = {
        { ip = "10.0.0.7", port = 80, health = "HEALTHY", weight = 100 },
        { ip = "10.0.0.8", port = 80, health = "UNHEALTHY", weight = 100 },
      } }, data[1].data)
      assert.equal("HEALTHY", data[1].health)
      assert.equal("DNS_ERROR", data[2].health)
      assert.same({}, data[2].data.addresses)
    end)
  end)

  describe("the request", function()
    local kit = pdk.new({
      method = "POST", path = "/orders/1?a=1&b=x%20y&a=2&flag", host = "shop.example:8443",
      scheme = "https", port = 8443, http_version = 1.0, request_id = "rid-1",
      headers = { { "X-One", "1" }, { "X-Two", "2" }, { "x-one", "again" } },
    })

    it("is what the client sent", function()
      in_phase(kit, "access", function()
        local r = moongate.request
        assert.equal("POST", r.get_method())
        assert.equal("/orders/1", r.get_path())
        assert.equal("a=1&b=x%20y&a=2&flag", r.get_raw_query())
        assert.equal("shop.example", r.get_host())
        assert.equal("https", r.get_scheme())
        assert.equal(8443, r.get_port())
        assert.equal(1.0, r.get_http_version())
        assert.equal("rid-1", r.get_id())
      end)
    end)

    it("gives the first value of a header by any case, and all headers as lists", function()
      in_phase(kit, "header_filter", function()
        assert.equal("1", moongate.request.get_header("X-ONE"))
        assert.is_nil(moongate.request.get_header("X-Three"))
        assert.same({ ["x-one"] = { "1", "again" }, ["x-two"] = "2" },
                    moongate.request.get_headers())
        assert.same({ ["x-one"] = "1" }, moongate.request.get_headers(1))
      end)
    end)

    it("decodes the query: repeated keys as lists, bare keys as true", function()
      in_phase(kit, "log", function()
        assert.same({ a = { "1", "2" }, b = "x y", flag = true }, moongate.request.get_query())
        assert.same({ a = "1" }, moongate.request.get_query(1))
        assert.equal("1", moongate.request.get_query_arg("a"))
        assert.is_true(moongate.request.get_query_arg("flag"))
        assert.is_nil(moongate.request.get_query_arg("c"))
      end)
    end)

    it("has defaults, takes headers as a map and a query as a table", function()
      local k = pdk.new({ headers = { B = "2", a = { "1", "3" } },
                          query = { z = "1 2", y = true } })
      in_phase(k, "access", function()
        assert.equal("GET", moongate.request.get_method())
        assert.equal("/", moongate.request.get_path())
        assert.equal("y&z=1%202", moongate.request.get_raw_query())
        assert.equal("localhost", moongate.request.get_host())
        assert.equal(8000, moongate.request.get_port())
        assert.matches("^%x+$", moongate.request.get_id())
        assert.same({ a = { "1", "3" }, b = "2" }, moongate.request.get_headers())
      end)
    end)

    it("stays as the client sent it whatever the plugins change upstream", function()
      local k = pdk.new({ path = "/p", headers = { ["X-A"] = "client" } })
      in_phase(k, "access", function()
        moongate.service.request.set_header("X-A", "plugin")
        moongate.service.request.set_path("/other")
        assert.equal("client", moongate.request.get_header("X-A"))
        assert.equal("/p", moongate.request.get_path())
      end)
    end)
  end)

  describe("the upstream request", function()
    it("starts as the client's request", function()
      local kit = pdk.new({ method = "PATCH", path = "/x?q=1", headers = { ["X-A"] = "1" } })
      assert.same({ method = "PATCH", path = "/x", query = "q=1", headers = { ["x-a"] = "1" },
                    body = "" }, kit.upstream_request)
    end)

    it("applies set, add and clear in order: set replaces, add appends, clear removes",
       function()
      local kit = pdk.new({ headers = { ["X-Set"] = "client", ["X-Add"] = "client",
                                        ["X-Clear"] = "client", ["X-Late"] = "client" } })
      in_phase(kit, "access", function()
        local s = moongate.service.request
        s.set_header("X-Set", "one")
        s.set_header("x-set", "two")             -- later set wins, any case
        s.add_header("X-Add", "plugin")          -- after the client's value
        s.add_header("X-Add", 3)
        s.clear_header("X-Clear")
        s.add_header("X-Late", "a")
        s.set_header("X-Late", "b")              -- set after add replaces both
        s.clear_header("X-New")
        s.add_header("X-New", "x")               -- add after clear starts afresh
        s.set_header("X-Gone", "v")
        s.clear_header("X-Gone")
      end)
      assert.same({ ["x-set"] = "two", ["x-add"] = { "client", "plugin", "3" },
                    ["x-late"] = "b", ["x-new"] = "x" }, kit.upstream_request.headers)
    end)

    it("reads the client's body, decoded by its content type", function()
      local json = pdk.new({ body = '{"a":[1,2]}',
                             headers = { ["Content-Type"] = "application/json; charset=utf-8" } })
      in_phase(json, "access", function()
        assert.equal('{"a":[1,2]}', moongate.request.get_raw_body())
        assert.same({ { a = { 1, 2 } }, nil, "application/json" },
                    { moongate.request.get_body() })
      end)
      local form = pdk.new({ body = "a=1&b=x+y&a=2&f",
                             headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } })
      in_phase(form, "rewrite", function()
        assert.same({ a = { "1", "2" }, b = "x y", f = true }, (moongate.request.get_body()))
      end)
      in_phase(pdk.new({ body = "<x/>", headers = { ["Content-Type"] = "text/xml" } }), "access",
               function()
        assert.same({ nil, 'unsupported content type "text/xml"', "text/xml" },
                    { moongate.request.get_body() })
      end)
      in_phase(pdk.new({ body = "12345", client_body_buffer_size = 4 }), "access", function()
        assert.same({ nil, "request body larger than client_body_buffer_size" },
                    { moongate.request.get_raw_body() })
      end)
      in_phase(pdk.new(), "access", function()
        assert.equal("", moongate.request.get_raw_body())
      end)
    end)

    it("takes a new body, raw or encoded with its content type", function()
      local kit = pdk.new({ body = "original" })
      in_phase(kit, "access", function()
        assert.is_true(moongate.service.request.set_raw_body("replaced"))
      end)
      assert.equal("replaced", kit.upstream_request.body)
      in_phase(kit, "access", function()
        moongate.service.request.set_body({ b = { "1", "2" }, a = "x y" },
                                          "application/x-www-form-urlencoded")
      end)
      assert.equal("a=x%20y&b=1&b=2", kit.upstream_request.body)
      assert.equal("application/x-www-form-urlencoded",
                   kit.upstream_request.headers["content-type"])
      in_phase(kit, "access", function() moongate.service.request.set_body({ n = 1 }) end)
      assert.equal('{"n":1}', kit.upstream_request.body)
      assert.equal("application/json", kit.upstream_request.headers["content-type"])
      assert.equal("original", kit.request.body)
    end)

    it("takes a new path, query and method", function()
      local kit = pdk.new({ path = "/a?x=1" })
      in_phase(kit, "rewrite", function()
        moongate.service.request.set_path("/b/c")
        moongate.service.request.set_query({ b = "2", a = { "1", "x y" }, f = true })
        moongate.service.request.set_method("PUT")
      end)
      assert.equal("/b/c", kit.upstream_request.path)
      assert.equal("a=1&a=x%20y&b=2&f", kit.upstream_request.query)
      assert.equal("PUT", kit.upstream_request.method)
      in_phase(kit, "access", function() moongate.service.request.set_raw_query("raw=1") end)
      assert.equal("raw=1", kit.upstream_request.query)
    end)
  end)

  describe("the response", function()
    it("is the upstream's with the plugins' header changes, in order", function()
      local kit = pdk.new()
      in_phase(kit, "access", function()
        moongate.response.set_header("X-Access", "1")
        moongate.response.set_header("X-Up", "from-access")   -- replaced the upstream's value
      end)
      kit:set_upstream_response({ status = 202, body = "hi",
                                  headers = { ["X-Up"] = "upstream", ["X-Drop"] = "d",
                                              ["X-Multi"] = { "1", "2" } } })
      in_phase(kit, "header_filter", function()
        assert.equal(202, moongate.response.get_status())
        assert.equal(202, moongate.service.response.get_status())
        -- get_header reads the upstream's response as it arrived, not the changes
        assert.equal("upstream", moongate.response.get_header("x-up"))
        assert.equal("1", moongate.service.response.get_header("X-Multi"))
        moongate.response.clear_header("X-Drop")
        moongate.response.add_header("X-Multi", "3")
        moongate.response.add_header("X-Access", 2)
      end)
      assert.same({ status = 202, body = "hi", headers = {
        ["x-up"] = "from-access", ["x-multi"] = { "1", "2", "3" }, ["x-access"] = { "1", "2" },
      } }, kit.response)
      assert.is_false(kit.exited)
    end)

    it("is 200 without headers or body when the test sets no upstream response", function()
      local kit = pdk.new()
      in_phase(kit, "header_filter", function()
        assert.equal(200, moongate.response.get_status())
        assert.is_nil(moongate.response.get_header("content-type"))
      end)
      assert.equal(200, kit.response.status)
      assert.equal("", kit.response.body)
    end)
  end)

  describe("exit", function()
    local handler = { PRIORITY = 1 }
    function handler:access(conf)
      moongate.ctx.shared.before = true
      if conf.catch then
        local ok = pcall(moongate.response.exit, 401, { message = conf.message },
                         { ["WWW-Authenticate"] = "Key" })
        moongate.ctx.shared.caught = ok           -- never reached: exit does not return
      elseif conf.text then
        moongate.response.exit(403, "go away", { ["Content-Type"] = "text/plain" })
      else
        moongate.response.exit(401, { message = conf.message })
      end
      moongate.ctx.shared.after = true
    end
    function handler:log()
      moongate.ctx.shared.logged_status = moongate.response.get_status()
    end

    it("ends the phase at once, even inside the plugin's own pcall", function()
      local kit = pdk.new()
      kit:run(handler, "access", { catch = true, message = "no key" })
      assert.is_true(kit.exited)
      assert.equal("access", kit.exit_phase)
      assert.is_true(kit.ctx.shared.before)
      assert.is_nil(kit.ctx.shared.caught)
      assert.is_nil(kit.ctx.shared.after)
      assert.equal(401, kit.response.status)
      assert.same({ message = "no key" }, cjson.decode(kit.response.body))
      assert.equal("application/json; charset=utf-8", kit.response.headers["content-type"])
      assert.equal("Key", kit.response.headers["www-authenticate"])
    end)

    it("sends a string body as it is, with the plugin's content type", function()
      local kit = pdk.new():run(handler, "access", { text = true })
      assert.equal("go away", kit.response.body)
      assert.equal("text/plain", kit.response.headers["content-type"])
    end)

    it("keeps the headers set before it; its own headers win", function()
      local kit = pdk.new()
      in_phase(kit, "rewrite", function()
        moongate.response.set_header("X-Before", "kept")
        moongate.response.set_header("X-Both", "before")
        moongate.response.add_header("X-Gone", "1")
        moongate.response.clear_header("X-Gone")
      end)
      in_phase(kit, "access", function()
        moongate.response.exit(200, "", { ["X-Both"] = "exit" })
      end)
      assert.same({ ["x-before"] = "kept", ["x-both"] = "exit" }, kit.response.headers)
    end)

    it("leaves only the log phase to run, which sees its status", function()
      local kit = pdk.new():run(handler, "access", {})
      local err = errmsg(kit.run, kit, handler, "access")
      assert.equal("the request was ended by moongate.response.exit in the access phase: "
                   .. "only the log phase runs after it", err)
      assert.has_error(function() kit:set_upstream_response({}) end)
      kit:run(handler, "log")
      assert.equal(401, kit.ctx.shared.logged_status)
    end)
  end)

  describe("the client", function()
    it("has an address, a forwarded address and a port", function()
      local kit = pdk.new({ client_ip = "10.0.0.1", forwarded_ip = "203.0.113.9",
                            client_port = 5555 })
      in_phase(kit, "access", function()
        assert.equal("10.0.0.1", moongate.client.get_ip())
        assert.equal("203.0.113.9", moongate.client.get_forwarded_ip())
        assert.equal(5555, moongate.client.get_port())
      end)
      in_phase(pdk.new(), "access", function()
        assert.equal("127.0.0.1", moongate.client.get_forwarded_ip())
      end)
    end)

    it("is authenticated as a consumer with a credential, seen by later phases", function()
      local kit = pdk.new()
      in_phase(kit, "access", function()
        assert.is_nil(moongate.client.get_consumer())
        moongate.client.authenticate({ id = "c1", username = "alice" }, { key = "k" })
      end)
      assert.equal("alice", kit.consumer.username)
      in_phase(kit, "log", function()
        assert.equal("c1", moongate.client.get_consumer().id)
        assert.equal("k", moongate.client.get_credential().key)
      end)
      local pre = pdk.new({ consumer = { username = "bob" } })
      in_phase(pre, "access", function()
        assert.equal("bob", moongate.client.get_consumer().username)
      end)
    end)
  end)

  describe("ctx", function()
    local a, b = { PRIORITY = 2 }, { PRIORITY = 1 }
    function a:access() moongate.ctx.shared.seen = "a"; moongate.ctx.plugin.mine = "a" end
    function b:access()
      moongate.ctx.plugin.mine = "b"
      moongate.ctx.plugin.saw = moongate.ctx.shared.seen
    end
    function a:header_filter() moongate.ctx.plugin.again = moongate.ctx.plugin.mine end

    it("shares ctx.shared among plugins and keeps ctx.plugin per plugin across phases",
       function()
      local kit = pdk.new()
      kit:run(a, "access"):run(b, "access"):run(a, "header_filter")
      assert.equal("a", kit.ctx.shared.seen)
      assert.same({ mine = "a", again = "a" }, kit:plugin_ctx(a))
      assert.same({ mine = "b", saw = "a" }, kit:plugin_ctx(b))
      assert.equal(kit:plugin_ctx(a), kit.ctx.plugin)   -- the last run plugin's
    end)

    it("cannot be replaced", function()
      assert.equal("moongate.ctx fields cannot be replaced; use moongate.ctx.shared",
                   errmsg(pdk.new().call, pdk.new(), "access", function()
                     moongate.ctx.plugin = {}
                   end))
    end)
  end)

  describe("log", function()
    local plugin = { PRIORITY = 1 }
    function plugin:access()
      moongate.log.debug("d")
      moongate.log.info("i")
      moongate.log.notice("n ", 1, " ", true, " ", nil)
      moongate.log.warn("w")
      moongate.log.err("e")
      moongate.log.error("e2")
      moongate.log.crit("c")
    end
    local sch = { name = "chatty", fields = { { config = { type = "record", fields = {} } } } }

    it("captures every line with its level and the plugin's name", function()
      local kit = pdk.new():run(plugin, "access", {}, sch)
      assert.same({
        { level = "debug", msg = "[chatty] d" }, { level = "info", msg = "[chatty] i" },
        { level = "notice", msg = "[chatty] n 1 true nil" }, { level = "warn", msg = "[chatty] w" },
        { level = "err", msg = "[chatty] e" }, { level = "err", msg = "[chatty] e2" },
        { level = "crit", msg = "[chatty] c" },
      }, kit.logs)
      assert.equal("[chatty] w", kit:find_log("w$").msg)
      assert.equal("[chatty] e2", kit:find_log("e", "err") and kit:find_log("e2").msg)
      assert.is_nil(kit:find_log("nothing"))
    end)

    it("drops lines below log_level, and has no prefix outside a plugin", function()
      local kit = pdk.new({ log_level = "warn" }):run(plugin, "access")
      assert.equal(4, #kit.logs)
      assert.equal("w", kit.logs[1].msg)
      in_phase(kit, "access", function() moongate.log.crit("x") end)
      assert.equal("x", kit.logs[5].msg)
    end)

    it("serializes the request for logging plugins, redacting credentials", function()
      local kit = pdk.new({ method = "DELETE", path = "/a?key=secret", request_id = "r9",
                            headers = { Authorization = "Bearer x", Cookie = "c=1",
                                        apikey = "k", ["X-Ok"] = "fine" },
                            route = { name = "rt" }, service = { name = "sv" },
                            consumer = { id = "c", username = "u", custom_id = "cu",
                                         secret = "s" },
                            forwarded_ip = "198.51.100.1", now = 1000 })
      kit:set_upstream_response({ status = 204 })
      local s = in_phase(kit, "log", function() return moongate.log.serialize() end)
      assert.same({
        request = { method = "DELETE", path = "/a", id = "r9",
                    headers = { authorization = "REDACTED", cookie = "REDACTED",
                                apikey = "REDACTED", ["x-ok"] = "fine" } },
        response = { status = 204 }, route = { name = "rt" }, service = { name = "sv" },
        consumer = { id = "c", username = "u", custom_id = "cu" },
        client_ip = "198.51.100.1", started_at = 1000,
      }, s)
    end)
  end)

  describe("node, sleep and now", function()
    it("gives the node id and worker", function()
      local kit = pdk.new({ node_id = "n-1", worker_id = 3, worker_pid = 99 })
      assert.same({ "n-1", 3, 99 }, { in_phase(kit, "init_worker", function()
        return moongate.node.get_id(), moongate.node.get_worker_id(),
               moongate.node.get_worker_pid()
      end) })
      assert.equal(pdk.NODE_ID, in_phase(pdk.new(), "log", function()
        return moongate.node.get_id()
      end))
    end)

    it("records sleeps and moves the clock instead of waiting", function()
      local kit = pdk.new({ now = 500 })
      local t0 = os.clock()
      local before, after = in_phase(kit, "access", function()
        local b = moongate.now()
        moongate.sleep(30)
        moongate.sleep(0.5)
        return b, moongate.now()
      end)
      assert.is_true(os.clock() - t0 < 1)
      assert.equal(500, before)
      assert.equal(530.5, after)
      assert.same({ 30, 0.5 }, kit.sleeps)
      assert.is_true(pdk.new().clock >= 530.5)   -- later kits do not go back in time
    end)
  end)

  describe("shared dictionaries", function()
    it("keep values across requests, with TTLs on the kits' clock", function()
      pdk.shared_dict("cache", "1m")
      local k1 = pdk.new()
      in_phase(k1, "access", function()
        local d = moongate.shared.cache
        assert.same({ true, nil, false }, { d:set("a", "x", 5) })
        assert.same({ true, nil, false }, { d:set("n", 1) })
        assert.same({ false, "exists", false }, { d:add("a", "y") })
        assert.same({ false, "not found", false }, { d:replace("zz", 1) })
        assert.same({ 3, nil, false }, { d:incr("n", 2) })
        assert.same({ nil, "not found", false }, { d:incr("none", 1) })
        assert.same({ 15, nil, false }, { d:incr("fresh", 5, 10) })
        assert.same({ nil, "not a number", false }, { d:incr("a", 1) })
        assert.equal(5, d:ttl("a"))
        assert.equal(0, d:ttl("n"))
        assert.same({ nil, "not found" }, { d:ttl("none") })
        assert.is_nil(moongate.shared.other)
      end)
      local k2 = pdk.new()
      in_phase(k2, "log", function()
        local d = moongate.shared.cache
        assert.equal("x", d:get("a"))
        moongate.log.info(d:get("n"))
      end)
      in_phase(k2, "access", function()
        local d = moongate.shared.cache
        moongate.sleep(6)
        assert.is_nil(d:get("a"))
        assert.same({ "x", nil, true }, { d:get_stale("a") })
        assert.equal(1, d:flush_expired())
        assert.same({ "n", "fresh" }, d:get_keys())        -- most recently used first
        assert.same({ "n" }, d:get_keys(1))
        assert.is_true(d:expire("n", 1))
        moongate.sleep(2)
        assert.is_nil(d:get("n"))
        d:delete("fresh")
        assert.same({}, d:get_keys(0))
        assert.equal(1024 * 1024, d:capacity())
        d:set("big", ("x"):rep(1000))
        assert.is_true(d:free_space() < d:capacity())
        d:flush_all()
        assert.is_nil(d:get("big"))
      end)
      assert.equal("3", k2.logs[1].msg)
    end)

    it("are declared with the shared_dicts option too, and forgotten on flush", function()
      in_phase(pdk.new({ shared_dicts = { limits = "16k", "other" } }), "access", function()
        assert.equal(16 * 1024, moongate.shared.limits:capacity())
        assert.is_table(moongate.shared.other)
      end)
      pdk.flush_shared_dicts()
      in_phase(pdk.new(), "access", function() assert.is_nil(moongate.shared.limits) end)
    end)
  end)

  describe("body_filter", function()
    it("runs once per piece of the body, eof on the last, and takes the replacements",
       function()
      local seen = {}
      local upper = { PRIORITY = 1 }
      function upper:body_filter()
        local chunk, eof = moongate.response.get_chunk()
        seen[#seen + 1] = { chunk, eof }
        moongate.response.set_chunk(chunk:upper())
      end
      local kit = pdk.new()
      kit:set_upstream_response({ chunks = { "ab", "cd", "" } })
      kit:run(upper, "body_filter")
      assert.same({ { "ab", false }, { "cd", false }, { "", true } }, seen)
      assert.equal("ABCD", kit.response.body)
      assert.equal("abcd", kit.upstream_response.body)
    end)

    it("buffers the whole body for get_raw_body, and the next filter sees the result",
       function()
      local wrap = { PRIORITY = 2 }
      function wrap:body_filter()
        local body = moongate.response.get_raw_body()
        if body then moongate.response.set_raw_body("[" .. body .. "]") end
      end
      local count = { PRIORITY = 1 }
      function count:body_filter()
        local chunk = moongate.response.get_chunk()
        moongate.ctx.shared.pieces = (moongate.ctx.shared.pieces or 0) + 1
        moongate.ctx.shared.last = chunk
      end
      local kit = pdk.new()
      kit:set_upstream_response({ chunks = { "a", "b", "c" } })
      kit:run(wrap, "body_filter"):run(count, "body_filter")
      assert.equal("[abc]", kit.response.body)
      assert.equal(3, kit.ctx.shared.pieces)
      assert.equal("[abc]", kit.ctx.shared.last)
    end)

    it("is called once with an empty last piece when there is no body", function()
      local kit = pdk.new()
      local got = { kit:call("body_filter", function() return moongate.response.get_chunk() end) }
      assert.same({ "", true }, got)
    end)
  end)

  describe("timers", function()
    it("run when the test moves the clock, in the timer phase, with premature = false",
       function()
      local calls = {}
      local h = { PRIORITY = 1 }
      function h:init_worker()
        assert(moongate.timer.every(10, function(premature, tag)
          calls[#calls + 1] = { "every", premature, tag, moongate.now() }
        end, "tick"))
        assert(moongate.timer.at(5, function(premature)
          calls[#calls + 1] = { "at", premature, moongate.now() }
          moongate.sleep(1)                           -- timers may sleep
          moongate.log.notice("once")
          moongate.request.get_path()                 -- but not read a request
        end))
      end
      local sch = { name = "clock", fields = { { config = { type = "record", fields = {} } } } }
      local kit = pdk.new({ now = 100 })
      kit:run(h, "init_worker", {}, sch)
      assert.equal(2, in_phase(kit, "log", function() return moongate.timer.pending_count() end))
      assert.same({ 0, {} }, { kit:run_timers() })
      local ran, errs = kit:run_timers(25)
      assert.equal(3, ran)
      assert.same({ { "at", false, 105 }, { "every", false, "tick", 110 },
                    { "every", false, "tick", 120 } }, calls)
      assert.equal(125, kit.clock)
      assert.equal(1, #errs)
      assert.equal("[clock] once", kit.logs[1].msg)
      assert.matches("^%[clock%] timer failed: .*moongate.request.get_path is not allowed in "
                     .. "the timer phase", kit.logs[2].msg)
      assert.equal("err", kit.logs[2].level)
      assert.equal(1, #kit.timers)                    -- the periodic one stays
    end)
  end)

  describe("cosockets", function()
    local socket = require "socket"
    local server, port

    before_each(function()
      server = assert(socket.bind("127.0.0.1", 0))
      port = select(2, server:getsockname())
      server:settimeout(2)
    end)

    after_each(function()
      server:close()
      pdk.close_socket_pools()
    end)

    it("connect, send and receive lines, sizes, until a pattern, and everything", function()
      local kit = pdk.new()
      local sock = in_phase(kit, "access", function()
        local s = moongate.socket.tcp()
        s:settimeouts(1000, 1000, 1000)
        assert.equal(1, s:connect("127.0.0.1", port))
        assert.equal(14, s:send({ "PING ", { 1, " " }, "please\n" }))
        return s
      end)
      local peer = assert(server:accept())
      assert.equal("PING 1 please", peer:receive("*l"))
      peer:send("line one\r\nABCDEFpart1--part2--tail")
      peer:close()
      in_phase(kit, "rewrite", function()
        assert.equal("line one", sock:receive())
        assert.equal("ABC", sock:receive(3))
        assert.equal("DEF", sock:receiveany(3))
        local it = sock:receiveuntil("--")
        assert.equal("part1", it())
        local it2 = sock:receiveuntil("--", { inclusive = true })
        assert.equal("part2--", it2())
        assert.equal("tail", sock:receive("*a"))
        assert.same({ nil, "closed", "" }, { sock:receive() })
        assert.equal(1, sock:close())
        assert.same({ nil, "closed" }, { sock:close() })
      end)
    end)

    it("reads until a pattern in pieces of a given size", function()
      local kit = pdk.new()
      local sock = in_phase(kit, "access", function()
        return assert(moongate.socket.connect("127.0.0.1", port))
      end)
      local peer = assert(server:accept())
      peer:send("abcdefg\r\n--rest")
      in_phase(kit, "access", function()
        local it = sock:receiveuntil("\r\n--")
        assert.equal("abc", it(3))
        assert.equal("def", it(3))
        assert.equal("g", it(3))
        assert.is_nil(it(3))                          -- the pattern was passed
        assert.equal("rest", sock:receive(4))
      end)
      peer:close()
    end)

    it("reports timeouts and refused connections as OpenResty does", function()
      local kit = pdk.new()
      in_phase(kit, "access", function()
        local s = moongate.socket.tcp()
        s:settimeout(100)
        assert.equal(1, s:connect("127.0.0.1", port))
        assert.same({ nil, "timeout", "" }, { s:receive() })
        s:close()
      end)
      local closed = server
      local closed_port = port
      closed:close()
      server = assert(socket.bind("127.0.0.1", 0))   -- for after_each
      in_phase(kit, "access", function()
        assert.same({ nil, "connection refused" },
                    { moongate.socket.tcp():connect("127.0.0.1", closed_port) })
      end)
    end)

    it("keeps idle connections in a pool for the next connect", function()
      local kit = pdk.new()
      in_phase(kit, "access", function()
        local s = moongate.socket.tcp()
        assert.equal(1, s:connect("127.0.0.1", port))
        assert.equal(0, s:getreusedtimes())
        assert.equal(1, s:setkeepalive(10000, 4))
        assert.same({ nil, "closed" }, { s:getreusedtimes() })
        local again = moongate.socket.tcp()
        assert.equal(1, again:connect("127.0.0.1", port))
        assert.equal(1, again:getreusedtimes())
        again:close()
      end)
    end)

    it("are refused where the gateway cannot wait", function()
      assert.equal("moongate.socket.tcp is not allowed in the header_filter phase",
                   errmsg(pdk.new().call, pdk.new(), "header_filter", function()
                     moongate.socket.tcp()
                   end))
    end)
  end)

  describe("the kit", function()
    it("puts the globals back after each run, also when the handler fails", function()
      local before_m, before_k = rawget(_G, "moongate"), rawget(_G, "kong")
      local h = { PRIORITY = 1 }
      function h:access() assert(kong == moongate); error("boom") end
      local kit = pdk.new()
      local ok, err = pcall(kit.run, kit, h, "access")
      assert.is_false(ok)
      assert.matches("boom$", err)
      assert.equal(err, kit.error)
      assert.equal(before_m, rawget(_G, "moongate"))
      assert.equal(before_k, rawget(_G, "kong"))
      assert.equal(0, phases.current)
    end)

    it("validates the config with the schema: defaults filled, every problem listed", function()
      local sch = { name = "s", fields = { { config = { type = "record", fields = {
        { n = { type = "integer", default = 3, between = { 1, 5 } } },
        { mode = { type = "string", default = "a", one_of = { "a", "b" } } },
      } } } } }
      local h, got = { PRIORITY = 1 }, nil
      function h:access(conf) got = conf end
      pdk.new():run(h, "access", { mode = "b" }, sch)
      assert.same({ n = 3, mode = "b" }, got)
      assert.equal("config.n: value should be between 1 and 5\n"
                   .. "config.mode: expected one of: a, b\nconfig.x: unknown field",
                   errmsg(function()
                     pdk.new():run(h, "access", { n = 9, mode = "c", x = 1 }, sch)
                   end))
      assert.matches('plugin "s" has an invalid schema',
                     errmsg(function()
                       pdk.new():run(h, "access", {}, { name = "s", fields = { { config = {
                         type = "record", fields = { { n = { type = "nope" } } } } } } })
                     end))
      assert.same({ n = 3, mode = "a" }, pdk.validate(sch, nil))
      local none, errs = pdk.validate(sch, { n = 0 })
      assert.is_nil(none)
      assert.same({ "config.n: value should be between 1 and 5" }, errs)
    end)

    it("reuses a handler's config in its later phases", function()
      local h, confs = { PRIORITY = 1 }, {}
      function h:access(conf) confs[1] = conf end
      function h:log(conf) confs[2] = conf end
      local c = { x = 1 }
      pdk.new():run(h, "access", c):run(h, "log")
      assert.equal(c, confs[1])
      assert.equal(c, confs[2])
    end)

    it("skips a phase the handler does not have, and refuses unknown phases", function()
      local kit = pdk.new()
      assert.equal(kit, kit:run({ PRIORITY = 1 }, "access"))
      assert.matches("^unknown phase 'acces' %(one of: init_worker, rewrite, access",
                     errmsg(kit.run, kit, { PRIORITY = 1 }, "acces"))
    end)

    it("refuses a handler that yields by itself", function()
      local kit = pdk.new()
      assert.matches("the access handler yielded outside the PDK",
                     errmsg(kit.call, kit, "access", function() coroutine.yield("x") end))
    end)

    it("refuses bad options", function()
      assert.equal("opts.method must be a string", errmsg(pdk.new, { method = 1 }))
      assert.equal("opts.headers must be a table", errmsg(pdk.new, { headers = "x" }))
      assert.equal("opts.log_level must be one of debug, info, notice, warn, err, crit",
                   errmsg(pdk.new, { log_level = "loud" }))
    end)
  end)
end)

---------------------------------------------------------------------------------------------
-- The example plugin's handler, unit-tested with the kit
---------------------------------------------------------------------------------------------

describe("example plugin request-stamp, in the kit", function()
  local handler = require "moongate.plugins.request-stamp.handler"
  local schema = require "moongate.plugins.request-stamp.schema"

  local function stamp(opts, conf)
    local kit = pdk.new(opts)
    kit:run(handler, "access", conf or {}, schema)
    return kit.upstream_request.headers[(conf and conf.header_name or "X-Request-Stamp"):lower()],
           kit
  end

  it("has a priority, a version and a valid schema with defaults", function()
    assert.is_number(handler.PRIORITY)
    assert.matches("^%d+%.%d+%.%d+$", handler.VERSION)
    assert.same({ header_name = "X-Request-Stamp",
                  parts = { "method", "path", "request_id", "client_ip" },
                  separator = " ", on_conflict = "override", echo = true },
                pdk.validate(schema, nil))
  end)

  it("stamps METHOD PATH REQUEST-ID CLIENT-IP by default", function()
    local v, kit = stamp({ method = "PUT", path = "/o/1?x=1", request_id = "r1",
                           forwarded_ip = "203.0.113.5" })
    assert.equal("PUT /o/1 r1 203.0.113.5", v)
    assert.equal("PUT /o/1 r1 203.0.113.5", kit:plugin_ctx(handler).stamp)
    assert.is_truthy(kit:find_log("^%[request%-stamp%] stamped X%-Request%-Stamp: PUT", "debug"))
  end)

  it("builds the stamp from the configured parts and separator, '-' for empty ones",
     function()
    local v = stamp({ path = "/p?a=1", host = "api.example:8000",
                      consumer = { username = "alice" } },
                    { header_name = "X-Trace", separator = " | ",
                      parts = { "query", "host", "consumer", "path" } })
    assert.equal("a=1 | api.example | alice | /p", v)
    assert.equal("- | -", (stamp({ path = "/" }, { parts = { "query", "consumer" },
                                                   separator = " | " })))
  end)

  it("overrides, appends to or preserves the client's header", function()
    local client = { headers = { ["x-request-stamp"] = "client" }, request_id = "r",
                     path = "/p" }
    local conf = { parts = { "path" } }
    assert.equal("/p", (stamp(client, conf)))
    conf.on_conflict = "append"
    assert.same({ "client", "/p" }, (stamp(client, conf)))
    conf.on_conflict = "preserve"
    local v, kit = stamp(client, conf)
    assert.equal("client", v)
    assert.equal("client", kit:plugin_ctx(handler).stamp)
  end)

  it("echoes the stamp in header_filter unless echo is off", function()
    local _, kit = stamp({ path = "/e", request_id = "r", client_ip = "10.1.1.1" })
    kit:set_upstream_response({ status = 200, headers = { ["X-Request-Stamp"] = "upstream" } })
    kit:run(handler, "header_filter")
    assert.equal("GET /e r 10.1.1.1", kit.response.headers["x-request-stamp"])

    local _, quiet = stamp({ path = "/e" }, { echo = false })
    quiet:run(handler, "header_filter")
    assert.is_nil(quiet.response.headers["x-request-stamp"])

    -- another plugin answered in access: no stamp, and header_filter does not run
    local none = pdk.new()
    none:run(handler, "header_filter", {}, schema)
    assert.is_nil(none.response.headers["x-request-stamp"])
  end)

  it("refuses bad configs with their paths", function()
    local function errors(conf)
      local _, errs = pdk.validate(schema, conf)
      return errs
    end
    assert.same({ "config.header_name: must be a header name (letters, digits and "
                  .. "!#$%&'*+-.^_`|~)" }, errors({ header_name = "X Stamp" }))
    assert.same({ "config.header_name: must not be Host: the gateway sets that header itself" },
                errors({ header_name = "Host" }))
    assert.same({ "config.parts[1]: expected one of: method, path, query, host, request_id, "
                  .. "client_ip, consumer" }, errors({ parts = { "path", "cookie" } }))
    assert.same({ "config.parts: length must be at least 1" }, errors({ parts = {} }))
    assert.same({ "config.on_conflict: expected one of: override, append, preserve" },
                errors({ on_conflict = "merge" }))
    assert.same({ "config.separator: invalid value: a\nb" }, errors({ separator = "a\nb" }))
    assert.same({ "config.echo: expected a boolean" }, errors({ echo = "yes" }))
  end)
end)
