--- moongate.shared.<name>: shared dictionaries (the `shared_dicts` setting), one zone of
-- shared memory seen by every worker, with lua_shared_dict's API: get/get_stale, set/add/
-- replace/safe_set/safe_add, incr(key, value, init, init_ttl), delete, ttl, expire,
-- flush_all, flush_expired, get_keys, capacity, free_space. Values are nil, booleans,
-- numbers and strings; TTLs are seconds. Usable in every phase and in timers.
local ffi = require "ffi"
local base = require "moongate.core.base"

local C, OK, AGAIN, DECLINED, BUSY = base.C, base.OK, base.AGAIN, base.DECLINED, base.BUSY
local ffi_new, ffi_string, ffi_cast = ffi.new, ffi.string, ffi.cast
local type, error, tostring, setmetatable, rawget, rawset = type, error, tostring, setmetatable,
  rawget, rawset

local SET, ADD, REPLACE, SAFE_SET = 0, 1, 2, 3
local T_NIL, T_BOOLEAN, T_NUMBER, T_STRING = 0, 1, 3, 4

local zone_out = ffi_new("void *[1]")
local type_out = ffi_new("int[1]")
local num_out = ffi_new("double[1]")
local len_out = ffi_new("size_t[1]")
local int_out = ffi_new("int[1]")
local bufsize = 4096
local buf = ffi_new("char[?]", bufsize)

local Dict = {}
Dict.__index = Dict

local function check_key(key)
  if type(key) == "number" then key = tostring(key) end
  if type(key) ~= "string" then error("key must be a string", 3) end
  if #key == 0 then error("key must not be empty", 3) end
  if #key > 65535 then error("key too long", 3) end
  return key
end

local function get(self, key, stale)
  key = check_key(key)
  while true do
    local rc = C.mg_ffi_shdict_get(self.zone, key, #key, stale and 1 or 0, type_out, num_out, buf,
                                   bufsize, len_out)
    if rc == AGAIN then   -- a string larger than the buffer: grow and ask again
      bufsize = tonumber(len_out[0]) * 2
      buf = ffi_new("char[?]", bufsize)
    else
      local t = type_out[0]
      local value
      if t == T_STRING then value = ffi_string(buf, len_out[0])
      elseif t == T_NUMBER then value = tonumber(num_out[0])
      elseif t == T_BOOLEAN then value = num_out[0] ~= 0
      end
      return value, rc == BUSY
    end
  end
end

--- The value, or nil when absent or expired.
function Dict:get(key)
  return (get(self, key, false))
end

--- The value even if expired (and whether it was): value, nil, stale.
function Dict:get_stale(key)
  local v, stale = get(self, key, true)
  return v, nil, stale
end

local function store(self, mode, key, value, exptime)
  key = check_key(key)
  if exptime ~= nil and (type(exptime) ~= "number" or exptime < 0) then
    error("exptime must be a non-negative number", 3)
  end
  local t, str, num = T_NIL, nil, 0
  local vt = type(value)
  if vt == "string" then t, str = T_STRING, value
  elseif vt == "number" then t, num = T_NUMBER, value
  elseif vt == "boolean" then t, num = T_BOOLEAN, value and 1 or 0
  elseif vt ~= "nil" then error("value must be nil, a boolean, a number or a string", 3)
  end
  local rc = C.mg_ffi_shdict_store(self.zone, mode, key, #key, t, str, str and #str or 0, num,
                                   exptime or 0, int_out)
  local forcible = int_out[0] ~= 0
  if rc == OK then return true, nil, forcible end
  if rc == DECLINED then
    return false, mode == ADD and "exists" or "not found", forcible
  end
  return false, "no memory", forcible
end

--- Stores a value (evicting the least recently used items if needed): ok, err, forcible.
function Dict:set(key, value, exptime) return store(self, SET, key, value, exptime) end
--- Stores only when absent: false, "exists" otherwise.
function Dict:add(key, value, exptime) return store(self, ADD, key, value, exptime) end
--- Stores only when present: false, "not found" otherwise.
function Dict:replace(key, value, exptime) return store(self, REPLACE, key, value, exptime) end
--- Like set, but never evicts valid items: false, "no memory" when full.
function Dict:safe_set(key, value, exptime) return store(self, SAFE_SET, key, value, exptime) end
--- Like add, but never evicts valid items.
function Dict:safe_add(key, value, exptime)
  if self:get(key) ~= nil then return false, "exists", false end
  return store(self, SAFE_SET, key, value, exptime)
end
--- Removes a key.
function Dict:delete(key) store(self, SET, key, nil) end

--- Adds value to a number: new value, err, forcible. With init, an absent key starts at init
-- (expiring after init_ttl seconds when given).
function Dict:incr(key, value, init, init_ttl)
  key = check_key(key)
  if type(value) ~= "number" then error("value must be a number", 2) end
  if init ~= nil and type(init) ~= "number" then error("init must be a number", 2) end
  local rc = C.mg_ffi_shdict_incr(self.zone, key, #key, value, init ~= nil and 1 or 0, init or 0,
                                  init_ttl or 0, num_out, int_out)
  local forcible = int_out[0] ~= 0
  if rc == OK then return tonumber(num_out[0]), nil, forcible end
  if rc == DECLINED then return nil, "not found", forcible end
  if rc == BUSY then return nil, "not a number", forcible end
  return nil, "no memory", forcible
end

--- Seconds to live (0 = never expires), or nil, "not found".
function Dict:ttl(key)
  key = check_key(key)
  if C.mg_ffi_shdict_ttl(self.zone, key, #key, num_out) ~= OK then return nil, "not found" end
  local t = tonumber(num_out[0])
  return t < 0 and 0 or t
end

--- Changes the TTL of an existing key (0: never expires): true, or nil, "not found".
function Dict:expire(key, exptime)
  key = check_key(key)
  if type(exptime) ~= "number" or exptime < 0 then
    error("exptime must be a non-negative number", 2)
  end
  if C.mg_ffi_shdict_expire(self.zone, key, #key, exptime) ~= OK then return nil, "not found" end
  return true
end

function Dict:flush_all() C.mg_ffi_shdict_flush_all(self.zone) end

--- Frees up to max expired items (0 or nil: all); returns how many.
function Dict:flush_expired(max)
  return tonumber(C.mg_ffi_shdict_flush_expired(self.zone, max or 0))
end

--- Up to max keys (default 1024, 0: all), most recently used first.
function Dict:get_keys(max)
  max = max or 1024
  local need = ffi_new("size_t[1]")
  local n = C.mg_ffi_shdict_get_keys(self.zone, max, nil, 0, need)
  local size = tonumber(need[0])
  local kb = ffi_new("char[?]", size > 0 and size or 1)
  n = C.mg_ffi_shdict_get_keys(self.zone, max, kb, size, need)
  local keys, off = {}, 0
  local lenp = ffi_new("uint32_t[1]")
  for i = 1, tonumber(n) do
    ffi.copy(lenp, kb + off, 4)
    local len = lenp[0]
    keys[i] = ffi_string(kb + off + 4, len)
    off = off + 4 + len
  end
  return keys
end

function Dict:capacity() return tonumber(C.mg_ffi_shdict_capacity(self.zone)) end
function Dict:free_space() return tonumber(C.mg_ffi_shdict_free_space(self.zone)) end

-- moongate.shared.<name>: looked up once per name, then cached
return setmetatable({}, {
  __index = function(t, name)
    if type(name) ~= "string" then return nil end
    if C.mg_ffi_shdict_zone(name, #name, zone_out) ~= OK then return nil end
    local d = setmetatable({ name = name, zone = zone_out[0] }, Dict)
    rawset(t, name, d)
    return d
  end,
})
