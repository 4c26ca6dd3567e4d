--- moongate.phases: the plugin phases, in the order a request goes through them, and the
-- bookkeeping every PDK call uses to refuse the wrong phase with a clear error (Kong's
-- kong/pdk/private/phases.lua idea: one bit per phase, a mask per function).
local bit = require "bit"

local _M = {
  INIT_WORKER = 0x01,
  REWRITE = 0x02,
  ACCESS = 0x04,
  HEADER_FILTER = 0x08,
  BODY_FILTER = 0x10,
  LOG = 0x20,
  TIMER = 0x40,
  CERTIFICATE = 0x80, -- TLS handshake, global plugins only, no request; may yield
}

-- handler method names in phase order; the runtime asks handlers for these
_M.ORDER = { "init_worker", "rewrite", "access", "header_filter", "body_filter", "log" }

_M.BY_NAME = {
  init_worker = _M.INIT_WORKER, rewrite = _M.REWRITE, access = _M.ACCESS,
  header_filter = _M.HEADER_FILTER, body_filter = _M.BODY_FILTER, log = _M.LOG,
  timer = _M.TIMER, certificate = _M.CERTIFICATE,
}

local NAMES = {}
for name, v in pairs(_M.BY_NAME) do NAMES[v] = name end

_M.REQUEST = bit.bor(_M.REWRITE, _M.ACCESS, _M.HEADER_FILTER, _M.BODY_FILTER, _M.LOG)
_M.BEFORE_PROXY = bit.bor(_M.REWRITE, _M.ACCESS)
_M.AFTER_HEAD = bit.bor(_M.HEADER_FILTER, _M.BODY_FILTER, _M.LOG)
_M.YIELDABLE = bit.bor(_M.REWRITE, _M.ACCESS, _M.TIMER, _M.CERTIFICATE)
_M.ANY = 0xff

_M.current = 0   -- the phase running now (0: none)

local band = bit.band

--- Raises "<fn> is not allowed in the <phase> phase" unless the current phase is in mask.
-- @param mask allowed phases (bits)
-- @param fn the PDK function's full name, for the message
function _M.check(mask, fn)
  local cur = _M.current
  if band(cur, mask) == 0 then
    error(fn .. " is not allowed in the " .. (NAMES[cur] or "init") .. " phase", 3)
  end
end

function _M.name(phase)
  return NAMES[phase]
end

return _M
