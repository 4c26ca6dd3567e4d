--- jwt's token parser: splits a compact JWS (RFC 7515) into its three parts, decodes them
-- strictly and checks the header's algorithm, with the reasons Kong 3.x's jwt_parser gives
-- ("invalid JSON", "invalid alg", "invalid claims", "invalid signature"), which the handler
-- answers as 401 "Bad token; <reason>". It verifies nothing: the handler picks the key.
-- Stricter than Kong: base64url must be canonical, header and claims must be JSON objects,
-- non-standard numbers (NaN, Infinity, hex) are refused, nesting is bounded, and a header
-- with "crit" is refused (RFC 7515 §4.1.11: no extension is understood here).
local crypto = require "moongate.crypto"
local cjson = require("cjson.safe").new()

cjson.decode_invalid_numbers(false)
cjson.decode_max_depth(16)

local type, next, find, sub = type, next, string.find, string.sub
local decode_base64, json_decode = crypto.decode_base64, cjson.decode

local _M = {}

--- The largest token looked at (bytes): bigger ones are refused before any decoding.
_M.MAX_TOKEN = 8192

-- The algorithms a token may name: those a jwt_secrets credential can be configured with.
_M.ALGORITHMS = {
  HS256 = true, HS384 = true, HS512 = true,
  RS256 = true, RS384 = true, RS512 = true,
  ES256 = true, ES384 = true,
}
local ALGORITHMS = _M.ALGORITHMS

-- a decoded JSON object: a table that is not a non-empty array
local function is_object(v)
  return type(v) == "table" and (next(v) == nil or v[1] == nil)
end

-- the decoded JSON of a base64url part; nil when it is not base64url or not JSON
local function decode_json_part(s)
  local raw = decode_base64(s, true)
  if not raw then return nil end
  return json_decode(raw)
end

--- Parses a token.
-- @param token string
-- @return { header = table, claims = table, signature = raw bytes,
--   signing_input = "<header b64>.<claims b64>" }, or nil and the reason it is bad
function _M.parse(token)
  if #token > _M.MAX_TOKEN then return nil, "token too large" end
  local d1 = find(token, ".", 1, true)
  local d2 = d1 and find(token, ".", d1 + 1, true)
  -- fewer than three parts: Kong's parser fails on decoding, with "invalid JSON"
  if not d2 then return nil, "invalid JSON" end
  local header = decode_json_part(sub(token, 1, d1 - 1))
  local claims = header ~= nil and decode_json_part(sub(token, d1 + 1, d2 - 1))
  -- Kong's order: undecodable parts, then the algorithm, then what the claims hold
  if header == nil or claims == nil then return nil, "invalid JSON" end
  if not is_object(header) then return nil, "invalid alg" end
  local alg = header.alg
  if type(alg) ~= "string" or not ALGORITHMS[alg] then return nil, "invalid alg" end
  if header.crit ~= nil then return nil, "unsupported crit" end
  if not is_object(claims) then return nil, "invalid claims" end
  -- any further "." stays in the signature part and fails its decoding, as in Kong
  local signature = decode_base64(sub(token, d2 + 1), true)
  if not signature then return nil, "invalid signature" end
  return { header = header, claims = claims, signature = signature,
           signing_input = sub(token, 1, d2 - 1) }
end

return _M
