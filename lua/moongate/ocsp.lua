--- moongate.ocsp: the fetching half of OCSP stapling (runtime/mg_ocsp.c owns the rest). Each
-- worker runs one timer; at each tick C hands over the certificates whose response is due and
-- that this worker claimed (one worker per period), and this module POSTs each DER request to
-- its responder with moongate.http (cosockets: nothing blocks the loop), reading at most
-- MAX_BODY bytes within bounded timeouts, and hands the answer back to C, which verifies,
-- installs and shares it, or schedules the retry.
local base = require "moongate.core.base"
local ffi = require "ffi"

local C, AGAIN, DECLINED = base.C, base.AGAIN, base.DECLINED
local ffi_string = ffi.string
local concat, tostring = table.concat, tostring

local _M = {}

local TICK = 1            -- seconds between looks at what is due (a lookup when nothing is)
local MAX_BODY = 16384    -- bytes of a response (mg_ocsp.c refuses larger ones too)
local MAX_JOBS = 64       -- fetches per tick, sequential; the rest wait for the next tick
-- connect, send, read: 18 s at most, under the lock's 30 s in mg_ocsp.c
local CONNECT_MS, SEND_MS, READ_MS = 5000, 3000, 10000

local idx = ffi.new("int[1]")
local url_p, url_len = ffi.new("const char *[1]"), ffi.new("size_t[1]")
local req_p, req_len = ffi.new("const char *[1]"), ffi.new("size_t[1]")

-- POSTs the request; returns status, body or nil, err.
local function fetch(url, req)
  local http = require "moongate.http"
  local scheme, host, port, path, query = http.parse_uri(url)
  if not scheme then return nil, host end
  local httpc = http.new()
  httpc:set_timeouts(CONNECT_MS, SEND_MS, READ_MS)
  local ok, err = httpc:connect({ scheme = scheme, host = host, port = port })
  if not ok then return nil, err end
  local res
  res, err = httpc:request({
    method = "POST", path = path, query = query, body = req,
    headers = { ["Content-Type"] = "application/ocsp-request",
                ["Accept"] = "application/ocsp-response" } })
  if not res then
    httpc:close()
    return nil, err
  end
  local parts, size = {}, 0
  local reader = res.body_reader
  while reader do
    local data, rerr = reader(MAX_BODY + 1)
    if rerr then
      httpc:close()
      return nil, rerr
    end
    if not data then break end
    size = size + #data
    if size > MAX_BODY then
      httpc:close()
      return res.status, nil, "the response is larger than " .. MAX_BODY .. " bytes"
    end
    parts[#parts + 1] = data
  end
  httpc:close()
  return res.status, concat(parts)
end

-- Fetches what is due; false when this configuration staples nothing at all.
local function tick()
  for _ = 1, MAX_JOBS do
    local rc = C.mg_ffi_ocsp_next(idx, url_p, url_len, req_p, req_len)
    if rc == DECLINED then return false end
    if rc ~= AGAIN then return true end
    local i = idx[0]
    local url = ffi_string(url_p[0], url_len[0])
    local req = ffi_string(req_p[0], req_len[0])
    local ok, status, body, err = pcall(fetch, url, req)
    if not ok then   -- a bug, not the network: still release the claim
      status, body, err = nil, nil, tostring(status)
    end
    if status and not body then status = 0 end
    if not status then
      status, err = 0, body or err
      body = nil
    end
    C.mg_ffi_ocsp_done(i, status, body, body and #body or 0, err, err and #err or 0)
  end
  return true
end

--- Starts the worker's timer (runtime.init_worker): a first look right away, then one per
-- TICK when any certificate is stapled.
function _M.init_worker()
  local timer = require "moongate.pdk.timer"
  timer.at(0, function()
    if tick() then timer.every(TICK, tick) end
  end)
end

return _M
