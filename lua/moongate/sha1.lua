--- moongate.sha1: SHA-1 (FIPS 180-4) in pure Lua over LuaJIT's bit library: the digest
-- EVALSHA names a Redis script by, and the WebSocket handshake's. Used by moongate.redis and
-- the spec upstream (which runs standalone, so this needs nothing but `bit`).
local bit = require "bit"

local band, bor, bxor, bnot, lshift, rol, tobit, tohex =
  bit.band, bit.bor, bit.bxor, bit.bnot, bit.lshift, bit.rol, bit.tobit, bit.tohex
local byte, char, rep, gsub, floor, tonumber = string.byte, string.char, string.rep, string.gsub,
  math.floor, tonumber

local _M = {}

--- The digest as 40 lower-case hex digits.
function _M.hex(msg)
  local h0, h1, h2, h3, h4 = 0x67452301, tobit(0xEFCDAB89), tobit(0x98BADCFE), 0x10325476,
                             tobit(0xC3D2E1F0)
  local ml = #msg
  local bits = ml * 8
  local hi, lo = floor(bits / 2^32), bits % 2^32
  msg = msg .. "\128" .. rep("\0", (55 - ml) % 64)
        .. char(floor(hi / 2^24) % 256, floor(hi / 2^16) % 256, floor(hi / 2^8) % 256, hi % 256,
                floor(lo / 2^24) % 256, floor(lo / 2^16) % 256, floor(lo / 2^8) % 256, lo % 256)
  local w = {}
  for chunk = 1, #msg, 64 do
    for i = 0, 15 do
      local a, b, c, d = byte(msg, chunk + i * 4, chunk + i * 4 + 3)
      w[i] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
    end
    for i = 16, 79 do
      w[i] = rol(bxor(w[i - 3], w[i - 8], w[i - 14], w[i - 16]), 1)
    end
    local a, b, c, d, e = h0, h1, h2, h3, h4
    for i = 0, 79 do
      local f, k
      if i < 20 then
        f, k = bor(band(b, c), band(bnot(b), d)), 0x5A827999
      elseif i < 40 then
        f, k = bxor(b, c, d), 0x6ED9EBA1
      elseif i < 60 then
        f, k = bor(band(b, c), band(b, d), band(c, d)), 0x8F1BBCDC
      else
        f, k = bxor(b, c, d), 0xCA62C1D6
      end
      local t = tobit(rol(a, 5) + f + e + k + w[i])
      e, d, c, b, a = d, c, rol(b, 30), a, t
    end
    h0, h1, h2, h3, h4 = tobit(h0 + a), tobit(h1 + b), tobit(h2 + c), tobit(h3 + d),
                         tobit(h4 + e)
  end
  return tohex(h0) .. tohex(h1) .. tohex(h2) .. tohex(h3) .. tohex(h4)
end


--- The digest as 20 bytes.
function _M.binary(msg)
  return (gsub(_M.hex(msg), "%x%x", function(h) return char(tonumber(h, 16)) end))
end

return _M
