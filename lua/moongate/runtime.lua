--- moongate.runtime: the Lua side of the gateway. In the master, at config load, `load()`
-- resolves every plugin entity (enabled? installed?), validates its config against the
-- plugin's schema (filling defaults), and computes each route's plugin chain per phase,
-- ordered by PRIORITY, with Kong 3.x's scope precedence. Workers inherit the result by fork.
-- Per request, the C runtime calls `run(phase, route, id)` (in a coroutine for rewrite and
-- access): the chain runs, each handler in xpcall so a failing plugin fails only its request.
local phases = require "moongate.phases"
local pdk = require "moongate.pdk"
local schema = require "moongate.schema"
local consumers_mod = require "moongate.consumers"
local cjson_null = require("cjson.safe").null
local response = require "moongate.pdk.response"
local log = require "moongate.pdk.log"
local socket = require "moongate.pdk.socket"
local tls_pdk = require "moongate.pdk.tls"
local base = require "moongate.core.base"
local clear = require "table.clear"

local C = base.C
local traceback, xpcall, pcall, require, loadstring, unpack = debug.traceback, xpcall, pcall,
  require, loadstring, unpack
local type, pairs, ipairs, tostring, sort, concat, format, setmetatable = type, pairs, ipairs,
  tostring, table.sort, table.concat, string.format, setmetatable
local bor, band = require("bit").bor, require("bit").band

local _M = {}

_M.EXIT = "moongate:exit"   -- what response.exit yields; C ends the phase on it

local installed = {}        -- name -> { handler, schema, priority }
local chains = {}           -- route index (C's, 0-based) -> { [phase] = { entries } }
local global_chain = {}     -- phase -> entries of global plugins (rewrite runs before routing)
local cert_chain = {}       -- global plugins with a `certificate` handler, by priority
local consumer_chains = {}  -- route index -> consumer index -> chain (consumers with plugins)
local consumer_index = {}   -- consumer table -> its C index
local reqs = {}             -- request id -> per-request state
local cur                   -- state of the request whose code is running

-- ---- the PDK's view of "now" ------------------------------------------------------------

pdk.current = function()
  if not cur then error("no request is running", 3) end
  return cur
end
pdk.request_state = function() return cur end   -- nil in timers and outside requests
-- (the handshake a certificate handler serves is saved too: several may wait at once).
-- State tables are reused once their request ends (state_for): the generation saved with
-- one tells a wait that outlived its request (a plugin's own coroutine resumed later) that
-- the table now belongs to another request, which it must not touch.
pdk.save = function()
  return { cur, log.plugin_name, phases.current, tls_pdk._get(), cur and cur.gen }
end
pdk.restore = function(s)
  local state = s[1]
  if state and state.gen ~= s[5] then state = nil end
  cur, log.plugin_name, phases.current = state, s[2], s[3]
  tls_pdk._set(s[4])
end

_G.moongate = pdk.moongate
_G.kong = pdk.moongate

-- ---- loading ----------------------------------------------------------------------------

local function load_plugin(name)
  local p = installed[name]
  if p then return p end
  local ok, handler = pcall(require, "moongate.plugins." .. name .. ".handler")
  if not ok then
    return nil, handler
  end
  local ok2, sch = pcall(require, "moongate.plugins." .. name .. ".schema")
  if not ok2 then
    return nil, sch
  end
  if type(handler) ~= "table" then
    return nil, "moongate.plugins." .. name .. ".handler must return a table"
  end
  local okc, err = schema.check_schema(sch, name)
  if not okc then
    return nil, err   -- names the plugin and every problem
  end
  local priority = handler.PRIORITY
  if type(priority) ~= "number" then
    return nil, "moongate.plugins." .. name .. ".handler has no numeric PRIORITY"
  end
  p = { name = name, handler = handler, schema = sch, priority = priority }
  installed[name] = p
  return p
end

local function first_line(err)
  err = tostring(err)
  return (err:match("^[^\n]*"))
end

-- Kong 3.x precedence among the scopes this build knows before authentication:
-- route+service, route, service, global (consumer scopes join once consumers land)
-- Kong 3.x precedence: consumer+route+service > consumer+route > consumer+service >
-- route+service > consumer > route > service > global. `consumer` is the authenticated
-- consumer's index, or -1 before (or without) authentication.
local RANKS = { [7] = 8, [6] = 7, [5] = 6, [3] = 5, [4] = 4, [2] = 3, [1] = 2, [0] = 1 }

local function rank(e, route, consumer)
  local r, s, c = e.route, e.service, e.consumer
  if r >= 0 and r ~= route.index then return nil end
  if s >= 0 and s ~= route.service then return nil end
  if c >= 0 and c ~= consumer then return nil end
  return RANKS[(c >= 0 and 4 or 0) + (r >= 0 and 2 or 0) + (s >= 0 and 1 or 0)]
end

local function by_priority(a, b)
  if a.priority ~= b.priority then return a.priority > b.priority end
  return a.name < b.name
end

-- ---- runners ----------------------------------------------------------------------------
-- A phase's chain runs through a runner: straight-line code generated once per chain length,
-- closed over the chain's entries. No loop means LuaJIT can compile the whole of run() as one
-- trace from its entry to its return to C; a loop over the entries would end every trace at
-- the loop exit (a trace cannot return into the C frame that called run) and leave the FFI
-- calls around each handler to the interpreter, where each costs a thousand instructions or
-- more. A runner returns true, false (a handler raised), or the index of the entry after
-- which the request's consumer changed: run() then goes on in the consumer's chain.
local invoke   -- set below: runs one entry (plugin_enter, xpcall, report)
-- consumer table -> true for consumers with plugins of their own (filled in place by load(),
-- so runners can close over it)
local has_own_chain = setmetatable({}, { __mode = "k" })

local runner_makers = {}
local function runner_maker(n)
  local make = runner_makers[n]
  if make then return make end
  local src = { "local invoke, own", "" }
  for i = 1, n do src[2] = src[2] .. ", E" .. i end
  src[1] = src[1] .. src[2] .. " = ...\nreturn function(state, phase, bit)\n"
  src[2] = "  local before = state.consumer\n"
  for i = 1, n do
    src[#src + 1] = ("  if not invoke(E%d, state, phase, bit) then return false end\n"
                     .. "  if state.consumer ~= before and own[state.consumer] then\n"
                     .. "    return %d\n  end\n"):format(i, i)
  end
  src[#src + 1] = "  return true\nend\n"
  make = assert(loadstring(concat(src), "=moongate.runtime(runner " .. n .. ")"))
  runner_makers[n] = make
  return make
end

local function make_runner(list)
  return runner_maker(#list)(function(...) return invoke(...) end, has_own_chain, unpack(list))
end

local function make_chains(entries, filter)
  local out = {}
  for _, phase in ipairs(phases.ORDER) do
    local list = {}
    for _, e in ipairs(entries) do
      local fn = e.plugin.handler[phase]
      if type(fn) == "function" and (not filter or filter(phase)) then
        list[#list + 1] = { name = e.plugin.name, handler = e.plugin.handler, fn = fn,
                            conf = e.config, priority = e.plugin.priority }
      end
    end
    sort(list, by_priority)
    if #list > 0 then
      list.run = make_runner(list)
      out[phase] = list
    end
  end
  return out
end

local function mask_of(chain)
  local m = 0
  for phase in pairs(chain) do m = bor(m, phases.BY_NAME[phase]) end
  return m
end

-- Kong's typedefs.no_consumer: a top-level `consumer` field that must be null.
local function consumer_allowed(sch)
  for _, f in ipairs(sch.fields) do
    local def = f.consumer
    if def ~= nil then return not (type(def) == "table" and def.eq == cjson_null) end
  end
  return true
end

--- Validates the plugin entities of a config and builds the chains.
-- @param conf { plugin_names, plugins = { {name, path, service, route, consumer, enabled,
--   config} }, routes = { {index, service, name} }, node_id }
-- @return errors (array of "PATH: message", empty when valid), route masks (C index → bits),
--   the global mask (rewrite before routing)
function _M.load(conf)
  local errors = {}
  local function fail(fmt_, ...) errors[#errors + 1] = format(fmt_, ...) end
  pdk.node_id = conf.node_id

  local enabled = {}
  for i, name in ipairs(conf.plugin_names or { "bundled" }) do
    if name == "bundled" then
      for _, b in ipairs(require "moongate.bundled") do enabled[b] = true end
    elseif name ~= "off" then
      enabled[name] = true
      local _, err = load_plugin(name)
      if err then
        fail("plugins[%d]: plugin \"%s\" is enabled but cannot be loaded: %s", i - 1, name,
             first_line(err))
      end
    end
  end

  local valid = {}
  for _, e in ipairs(conf.plugins or {}) do
    local path = e.path
    if not enabled[e.name] then
      fail("%s.name: plugin \"%s\" is not enabled", path, e.name)
    else
      local p, err = load_plugin(e.name)
      if not p then
        fail("%s.name: plugin \"%s\" cannot be loaded: %s", path, e.name, first_line(err))
      else
        local config, errs = schema.validate_plugin_config(p.schema, e.config, path .. ".config")
        if e.consumer >= 0 and not consumer_allowed(p.schema) then
          fail("%s: plugin \"%s\" cannot be configured on a consumer (it runs before a "
               .. "consumer is known, or identifies one)", path, e.name)
        elseif not config then
          for _, m in ipairs(errs) do errors[#errors + 1] = m end
        elseif e.enabled ~= false then
          valid[#valid + 1] = { plugin = p, config = config, route = e.route,
                                service = e.service, consumer = e.consumer }
        end
      end
    end
  end
  -- consumers and their credentials: what authentication plugins look up
  local loaded_consumers = consumers_mod.load(conf.consumers, errors, conf.credentials)
  if #errors > 0 then return errors end
  consumers_mod.activate(loaded_consumers)

  -- global plugins: rewrite runs before routing, for every request
  local globals = {}
  for _, e in ipairs(valid) do
    if e.route < 0 and e.service < 0 and e.consumer < 0 then globals[#globals + 1] = e end
  end
  global_chain = make_chains(globals, function(phase) return phase == "rewrite" end)
  -- the certificate phase runs in the TLS handshake (runtime.run_certificate), before any
  -- request exists: global plugins only, as in Kong
  cert_chain = {}
  for _, e in ipairs(globals) do
    local fn = e.plugin.handler.certificate
    if type(fn) == "function" then
      cert_chain[#cert_chain + 1] = { name = e.plugin.name, handler = e.plugin.handler, fn = fn,
                                      conf = e.config, priority = e.plugin.priority }
    end
  end
  sort(cert_chain, by_priority)

  consumer_index = loaded_consumers.index_of
  local with_plugins = {}
  for _, e in ipairs(valid) do
    if e.consumer >= 0 then with_plugins[e.consumer] = true end
  end
  for k in pairs(has_own_chain) do has_own_chain[k] = nil end
  for consumer, index in pairs(consumer_index) do
    if with_plugins[index] then has_own_chain[consumer] = true end
  end

  local function chain_for(route, consumer)
    local best = {}
    for _, e in ipairs(valid) do
      local r = rank(e, route, consumer)
      local name = e.plugin.name
      if r and (not best[name] or r > best[name].rank) then
        best[name] = { rank = r, plugin = e.plugin, config = e.config }
      end
    end
    local entries = {}
    for _, b in pairs(best) do entries[#entries + 1] = b end
    -- rewrite is for global plugins only (Kong): it ran before the route was known
    return make_chains(entries, function(phase) return phase ~= "rewrite" end)
  end

  chains, consumer_chains = {}, {}
  local masks = {}
  for _, route in ipairs(conf.routes or {}) do
    local chain = chain_for(route, -1)
    chains[route.index] = chain
    local mask = mask_of(chain)
    -- consumer-specific chains, for consumers that have plugins of their own; their phases
    -- count for the route's mask, since a request may turn out to be theirs
    local per = {}
    for ci in pairs(with_plugins) do
      per[ci] = chain_for(route, ci)
      mask = bor(mask, mask_of(per[ci]))
    end
    consumer_chains[route.index] = per
    masks[route.index] = mask
  end
  return errors, masks,
    bor(mask_of(global_chain), #cert_chain > 0 and phases.CERTIFICATE or 0)
end

--- Runs every plugin's init_worker handler (in each worker, after fork).
function _M.init_worker()
  phases.current = phases.INIT_WORKER
  for name, p in pairs(installed) do
    if type(p.handler.init_worker) == "function" then
      log.plugin_name = name
      local ok, err = xpcall(p.handler.init_worker, traceback, p.handler)
      if not ok then
        log.plugin_name = nil
        local msg = format("[%s] init_worker failed: %s", name, tostring(err))
        C.mg_ffi_log(4, msg, #msg)
      end
    end
  end
  log.plugin_name = nil
  require("moongate.ocsp").init_worker()   -- OCSP stapling's fetches (mg_ocsp.c)
  phases.current = 0
end

-- ---- running ----------------------------------------------------------------------------

-- A request's state is a table from a free list: cleared and kept when its request ends,
-- it serves a later one. Creating one per request (and growing its hash part as plugins
-- set consumer, credential, ...) was ~110 of the ~160 bytes of garbage a key-auth + acl
-- request made; with it gone such routes make next to none, so the collector's cycles
-- (and their pauses in the middle of requests: +0.3 ms at p99 in bench/ keyauth) stop.
local STATE_POOL_MAX = 1024
local free_states, nfree = {}, 0

local function state_for(id)
  local s = reqs[id]
  if not s then
    if nfree > 0 then
      s = free_states[nfree]
      free_states[nfree] = nil
      nfree = nfree - 1
      s.started_at = C.mg_ffi_now()
    else
      s = { started_at = C.mg_ffi_now(), gen = 0 }   -- ctx.shared, .plugin when used
    end
    reqs[id] = s
  end
  return s
end

-- The request is over: its sockets are closed and its state goes back to the free list
-- (a new generation, so a saved reference to it is recognised as stale).
local function release_state(id, s)
  if s.sockets then socket.close_all(s) end
  reqs[id] = nil
  if nfree < STATE_POOL_MAX then
    local gen = s.gen
    clear(s)
    s.gen = gen + 1
    nfree = nfree + 1
    free_states[nfree] = s
  end
end

local function report(phase, name, err)
  local rid = pdk.moongate.request.get_id() or "-"
  local msg = format("[%s] %s phase failed (route %s, request %s): %s", name, phase,
                     tostring(pdk.route_name() or "-"), rid, tostring(err))
  C.mg_ffi_log(4, msg, #msg)
end

--- Runs one phase of the chain for a request.
-- @param phase "rewrite", "access", "header_filter", "body_filter" or "log"
-- @param route the route's C index (-1 for the global rewrite chain)
-- @param id the request's id (a number the C side allocates)
-- @return true when every handler returned; false after a handler raised (the request is
--   answered 500); yields _M.EXIT through response.exit
-- The chain a request follows: the route's, or once a consumer with plugins of its own is
-- authenticated, the one computed for that consumer.
local function chain_of(state, route)
  local c = state.consumer and consumer_index[state.consumer]
  local per = c and consumer_chains[route]
  return per and per[c] or chains[route]
end

-- Where to go on in `list` after entry `done`: plugins that already ran are not run again.
local function position_after(list, done)
  for i = 1, #list do
    local e = list[i]
    if e.priority < done.priority or (e.priority == done.priority and e.name > done.name) then
      return i
    end
  end
  return #list + 1
end

invoke = function(e, state, phase, bit)
  log.plugin_name = e.name   -- also tells moongate.ctx.plugin whose table to give
  C.mg_ffi_plugin_enter(e.name, #e.name)
  local ok, err = xpcall(e.fn, traceback, e.handler, e.conf)
  cur, phases.current = state, bit   -- a yield may have changed them
  if not ok then
    report(phase, e.name, err)
    return false
  end
  return true
end

-- After entry `done` authenticated a consumer with plugins of its own, the rest of the phase
-- follows that consumer's chain; plugins that already ran are not run again. (A loop, so not
-- compiled along with run(): only requests of such consumers come here.)
local function run_after_switch(state, route, phase, bit, done)
  while true do
    local chain = chain_of(state, route)
    local list = chain and chain[phase]
    if not list then return true end
    local before = state.consumer
    local i = position_after(list, done)
    while i <= #list do
      if not invoke(list[i], state, phase, bit) then return false end
      if state.consumer ~= before then break end
      i = i + 1
    end
    if i > #list then return true end
    done = list[i]
  end
end

function _M.run(phase, route, id, last)
  local state = state_for(id)
  local chain = route < 0 and global_chain or chain_of(state, route)
  local list = chain and chain[phase]
  local bit = phases.BY_NAME[phase]
  cur = state
  phases.current = bit
  local ok = true
  if list then
    ok = list.run(state, phase, bit)
    if ok ~= true and ok ~= false then   -- the consumer changed after entry `ok`
      ok = route < 0 or run_after_switch(state, route, phase, bit, list[ok])
    end
  end
  log.plugin_name, cur, phases.current = nil, nil, 0
  if last or not ok then   -- no Lua phase follows for this request
    release_state(id, state)
  end
  return ok
end

--- A configured consumer by id or custom_id, or (by_username true) by username; nil when
-- there is none. The table is shared: treat it as read-only.
function _M.load_consumer(key, by_username)
  return consumers_mod.get(key, by_username)
end

--- Runs a timer's function (C calls this in the timer's own coroutine).
function _M.run_timer(id, once)
  cur = nil
  pdk.moongate.timer.run(id, once)
  cur = nil
end

--- The body of the coroutines rewrite and access run in: runs a phase, yields
-- "moongate:done" with its outcome, and serves the next phase it is resumed with. A phase
-- that waits (sleep, a socket) yields in between; one that exits never comes back here.
function _M.serve(phase, route, id, last)
  local yield, run = coroutine.yield, _M.run
  while true do
    local ok = run(phase, route, id, last)
    phase, route, id, last = yield("moongate:done", ok)
  end
end
-- a loop around coroutine.yield cannot be compiled: left to the JIT it would stitch a new
-- trace per pass forever (and eventually flush every trace); the plugins it calls still are
jit.off(_M.serve)

--- Forgets a request's state (it ended without a log phase: aborted).
function _M.forget(id)
  local state = reqs[id]
  if state then release_state(id, state) end
end

--- Runs the global plugins' `certificate` handlers while a TLS handshake is at the
-- ClientHello (in the handshake's coroutine: see serve_certificate). No request exists; a
-- handler may wait (moongate.sleep, cosockets) while the handshake pauses; moongate.tls
-- get_sni/set_cert work here.
-- @param sni the server name the client sent, or nil
-- @return ok (false: a handler raised, the handshake fails), then the PEM certificate and
--   key a handler chose with moongate.tls.set_cert (nil, nil: keep the SNI's)
function _M.run_certificate(sni)
  cur = nil
  local st = tls_pdk._begin(sni)
  phases.current = phases.CERTIFICATE
  local ok_all = true
  for i = 1, #cert_chain do
    local e = cert_chain[i]
    log.plugin_name = e.name
    local ok, err = xpcall(e.fn, traceback, e.handler, e.conf)
    if not ok then
      local msg = format("[%s] certificate phase failed (server name %s): %s", e.name,
                         tostring(sni), tostring(err))
      C.mg_ffi_log(4, msg, #msg)
      ok_all = false
      break
    end
  end
  log.plugin_name = nil
  phases.current = 0
  tls_pdk._end()
  return ok_all, st.cert, st.key
end

--- The body of the coroutines handshakes run their certificate phase in (C starts one with
-- the server name): runs the phase, yields "moongate:done" with its outcome, and serves the
-- next handshake's it is resumed with. A handler that waits yields in between.
function _M.serve_certificate(sni)
  local yield, run = coroutine.yield, _M.run_certificate
  while true do
    sni = yield("moongate:done", run(sni))
  end
end
jit.off(_M.serve_certificate)

-- exposed for specs (the in-process kit) and C
_M.chains = function() return chains end
return _M
