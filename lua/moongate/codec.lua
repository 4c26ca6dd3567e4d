--- moongate.codec: URL-encoded arguments (query strings and form bodies) and the data shape
-- cosockets send, shared by the PDK and the in-process test kit so both behave alike. Pure
-- Lua, no FFI.
local gsub, gmatch, find, sub, char, byte, format = string.gsub, string.gmatch, string.find,
  string.sub, string.char, string.byte, string.format
local type, tostring, tonumber, pairs, ipairs, sort, concat = type, tostring, tonumber, pairs,
  ipairs, table.sort, table.concat

local _M = {}

--- Adds v under k: a second value turns the entry into a list (order kept).
function _M.add_value(map, k, v)
  local prev = map[k]
  if prev == nil then
    map[k] = v
  elseif type(prev) == "table" then
    prev[#prev + 1] = v
  else
    map[k] = { prev, v }
  end
end

--- "+" to space and %XX to its byte.
function _M.unescape(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

--- Percent-encodes every byte but unreserved ones (RFC 3986).
function _M.escape(s)
  return (gsub(tostring(s), "[^%w%-%._~]", function(c) return format("%%%02X", byte(c)) end))
end

--- Decodes "a=1&b=x+y&a=2&flag" into { a = { "1", "2" }, b = "x y", flag = true }, reading
-- at most `max` pairs when given.
function _M.decode_args(s, max)
  local t, n = {}, 0
  for pair in gmatch(s, "[^&]+") do
    n = n + 1
    if max and n > max then break end
    local eq = find(pair, "=", 1, true)
    if eq then
      _M.add_value(t, _M.unescape(sub(pair, 1, eq - 1)), _M.unescape(sub(pair, eq + 1)))
    else
      _M.add_value(t, _M.unescape(pair), true)
    end
  end
  return t
end

--- Encodes a table the other way round: keys sorted, a list repeats its key, `true` gives a
-- bare key.
function _M.encode_args(args)
  local keys = {}
  for k in pairs(args) do keys[#keys + 1] = tostring(k) end
  sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = args[k]
    local vs = type(v) == "table" and v or { v }
    for _, one in ipairs(vs) do
      parts[#parts + 1] = one == true and _M.escape(k) or _M.escape(k) .. "=" .. _M.escape(one)
    end
  end
  return concat(parts, "&")
end


local tostring_ = tostring

local function flatten(t, out, depth)
  if depth > 32 then
    error("bad argument #1 to 'send' (table too deep)", 5)
  end
  for i = 1, #t do
    local v = t[i]
    local tv = type(v)
    if tv == "string" then
      out[#out + 1] = v
    elseif tv == "number" then
      out[#out + 1] = tostring_(v)
    elseif tv == "table" then
      flatten(v, out, depth + 1)
    else
      error("bad argument #1 to 'send' (bad data type " .. tv .. " in the array)", 5)
    end
  end
  return out
end

--- What a cosocket's send() takes (a string, a number, or a nested array of them — OpenResty's
-- shape) as one string. Misuse raises, blamed on the caller of send().
function _M.send_data(data)
  local t = type(data)
  if t == "table" then
    return concat(flatten(data, {}, 1))
  elseif t == "number" then
    return tostring_(data)
  elseif t ~= "string" then
    error("bad argument #1 to 'send' (string, number or array expected, got " .. t .. ")", 3)
  end
  return data
end

return _M
