--- request-size-limiting: refuses request bodies larger than allowed_payload_size, Kong 3.x's
-- way: 413 {"message":"Request size limit exceeded"} (417 when the client sent
-- `Expect: 100-continue`), and with require_content_length a request with neither
-- Content-Length nor chunked framing gets 411 {"message":"A valid Content-Length header is
-- required"}.
--
-- Unlike Kong, no body is ever buffered to be measured: a Content-Length over the limit is
-- refused before a byte of the body is read (and before any 100 Continue), and a chunked body
-- is handed to moongate.request.limit_body, so the runtime answers 413 the moment it passes
-- the limit, while it streams, whatever plugin or proxying is reading it.
local request = moongate.request
local response = moongate.response

local tonumber, lower, match = tonumber, string.lower, string.match

local RequestSizeLimiting = { PRIORITY = 951, VERSION = "1.0.0" }

local FACTOR = { megabytes = 1048576, kilobytes = 1024, bytes = 1 }

-- larger limits than an exact double can hold mean "no limit of ours" (the gateway's own
-- client_max_body_size still applies)
local MAX_LIMIT = 2 ^ 53

local TOO_LARGE = "Request size limit exceeded"
local TOO_LARGE_BODY = { message = TOO_LARGE }
local LENGTH_REQUIRED = { message = "A valid Content-Length header is required" }

local function refuse()
  local expect = request.get_header("Expect")
  -- Kong: a client waiting for 100 Continue is told 417 instead, and sends nothing
  if expect and lower(match(expect, "^%s*(.-)%s*$")) == "100-continue" then
    return response.exit(417, TOO_LARGE_BODY)
  end
  return response.exit(413, TOO_LARGE_BODY)
end

function RequestSizeLimiting:access(conf)
  local limit = conf.allowed_payload_size * FACTOR[conf.size_unit]
  local cl = request.get_header("Content-Length")
  local length = cl and tonumber(cl)
  local chunked = not length and request.get_header("Transfer-Encoding") ~= nil
  if length then
    if length > limit then return refuse() end
  elseif conf.require_content_length and not chunked then
    return response.exit(411, LENGTH_REQUIRED)
  end

  if limit >= 1 then
    if limit > MAX_LIMIT then return end
    -- also for a known length: the runtime's framing decides, not the header we read, and a
    -- plugin that ran earlier may already have read (part of) the body
    if not request.limit_body(limit, TOO_LARGE) then return refuse() end
  elseif limit < 0 or chunked then
    -- Kong measures even an absent body (0 bytes), so a negative size refuses everything;
    -- with 0, any chunk would be too many. (An empty chunked body is refused too: Kong would
    -- read it first.)
    return refuse()
  end
end

return RequestSizeLimiting
