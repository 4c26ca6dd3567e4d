--- moongate.log: the error log, prefixed with the running plugin's name (as Kong does), and
-- serialize(), the request summary that logging plugins send somewhere.
local base = require "moongate.core.base"

local C = base.C
local select, tostring, concat = select, tostring, table.concat

local _M = {}

-- set by the runtime: the running plugin's name (nil outside plugins)
_M.plugin_name = nil

local LEVELS = { debug = 0, info = 1, notice = 2, warn = 3, err = 4, crit = 5 }

local function logger(level)
  return function(...)
    if C.mg_ffi_log_enabled(level) == 0 then return end
    local n = select("#", ...)
    local parts = { ... }
    for i = 1, n do parts[i] = tostring(parts[i]) end
    local msg = concat(parts, "", 1, n)
    local name = _M.plugin_name
    if name then msg = "[" .. name .. "] " .. msg end
    C.mg_ffi_log(level, msg, #msg)
  end
end

for name, level in pairs(LEVELS) do
  _M[name] = logger(level)
end
_M.error = _M.err   -- Kong's name too

_M.LEVELS = LEVELS
return _M
