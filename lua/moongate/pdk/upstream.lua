--- moongate.upstream: what the gateway knows about its upstreams. `get_health(name)` reports
-- the health of an upstream's targets as this node sees it — the state the workers share
-- (passive counts and active probes, runtime/mg_health.c) — in the shape of Kong's admin
-- endpoint `GET /upstreams/{name}/health`, so a plugin can serve it on a route until moongate
-- has an admin API. Transitions are also in the error log.
local ffi = require "ffi"
local base = require "moongate.core.base"
local phases = require "moongate.phases"

local C, OK = base.C, base.OK
local ffi_string = ffi.string
local check = phases.check
local type, error, tonumber = type, error, tonumber
local bor = require("bit").bor

local _M = {}

-- set by moongate.pdk (moongate.node.get_id): this node's id, for `node_id`
_M._node_id = function() return nil end

local PHASES = bor(phases.INIT_WORKER, phases.REQUEST, phases.TIMER)
local HEALTH = { [0] = "HEALTHCHECKS_OFF", "HEALTHY", "UNHEALTHY", "DNS_ERROR" }

local target_out, tlen_out = ffi.new("const char *[1]"), ffi.new("size_t[1]")
local weight_out = ffi.new("unsigned[1]")
local ipbuf, iplen_out = ffi.new("char[64]"), ffi.new("size_t[1]")
local port_out, health_out = ffi.new("int[1]"), ffi.new("int[1]")

--- The health of upstream `name`'s targets: `{ total, node_id, data = { { target, weight,
-- health, upstream = { name }, data = { addresses = { { ip, port, health, weight } } } } } }`
-- with health "HEALTHY", "UNHEALTHY" or "HEALTHCHECKS_OFF" (no active or passive checks
-- configured: every target takes traffic). A target named by host lists every address of its
-- current answer, each with its own health; the target is HEALTHY while one of them is, and
-- "DNS_ERROR" (no addresses) before its first answer or when its name did not resolve.
-- nil, "upstream not found" for an unknown name.
-- @phases init_worker, rewrite … log, timer
function _M.get_health(name)
  check(PHASES, "moongate.upstream.get_health")
  if type(name) ~= "string" then
    error("upstream name must be a string", 2)
  end
  local up = C.mg_ffi_upstream_find(name, #name)
  if up < 0 then return nil, "upstream not found" end
  local data = {}
  local i = 0
  while C.mg_ffi_upstream_target(up, i, target_out, tlen_out, weight_out, health_out) == OK do
    local weight = tonumber(weight_out[0])
    local entry = {
      target = ffi_string(target_out[0], tlen_out[0]),
      weight = weight,
      health = HEALTH[health_out[0]],
      upstream = { name = name },
    }
    local addresses = {}
    local j = 0
    while C.mg_ffi_upstream_address(up, i, j, ipbuf, 64, iplen_out, port_out, health_out)
          == OK do
      j = j + 1
      addresses[j] = { ip = ffi_string(ipbuf, iplen_out[0]), port = port_out[0],
                       health = HEALTH[health_out[0]], weight = weight }
    end
    entry.data = { addresses = addresses }
    i = i + 1
    data[i] = entry
  end
  return { total = i, node_id = _M._node_id(), data = data }
end

return _M
