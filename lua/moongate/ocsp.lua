--- moongate.ocsp: the fetching half of OCSP stapling (runtime/mg_ocsp.c owns the rest). Each
-- worker runs one timer; at each tick C installs what other workers fetched and hands over
-- the certificates whose response is due and that this worker claimed (one worker per
-- period). Each fetch runs in a timer of its own, so a slow responder holds up nothing else:
-- an HTTP/1.0 POST of the DER request on a cosocket (DNS and I/O off the loop) under one
-- deadline for the whole exchange, at most MAX_HEAD + MAX_BODY bytes read; the answer goes
-- back to C, which verifies, installs and shares it, or schedules the retry. (moongate.http
-- bounds each read, not the exchange, and reads the head line by line: a responder
-- trickling bytes could hold a fetch, and its lock, for as long as it liked.)
local base = require "moongate.core.base"
local ffi = require "ffi"

local C, AGAIN, DECLINED = base.C, base.AGAIN, base.DECLINED
local ffi_string = ffi.string
local concat, tostring, tonumber = table.concat, tostring, tonumber
local find, match, sub, lower, fmt = string.find, string.match, string.sub, string.lower,
  string.format
local min = math.min

local _M = {}

local TICK = 1            -- seconds between looks at what is due (a lookup when nothing is)
local MAX_HEAD = 8192     -- bytes of the response head
local MAX_BODY = 16384    -- bytes of the response (mg_ocsp.c refuses larger ones too)
local MAX_JOBS = 64       -- fetches started per tick; the rest wait for the next one
local DEADLINE = 20       -- seconds for a whole fetch, under the lock's 30 s in mg_ocsp.c
local CONNECT_MS = 5000

local idx = ffi.new("int[1]")
local url_p, url_len = ffi.new("const char *[1]"), ffi.new("size_t[1]")
local req_p, req_len = ffi.new("const char *[1]"), ffi.new("size_t[1]")

-- Reads the response until its Content-Length (or the close) within the deadline.
-- Returns status, body or nil, err.
local function exchange(sock, deadline)
  local parts, size, head_len, clen, status = {}, 0, nil, nil, nil
  while true do
    local left = (deadline - C.mg_ffi_now()) * 1000
    if left < 1 then return nil, "timeout" end
    sock:settimeouts(left, left, left)
    local data, err = sock:receiveany(8192)
    if not data then
      if err ~= "closed" then return nil, err end
      break
    end
    parts[#parts + 1] = data
    size = size + #data
    if not head_len then
      local raw = concat(parts)
      parts = { raw }
      local e = find(raw, "\r\n\r\n", 1, true)
      if not e and size > MAX_HEAD then return nil, "the response head is too large" end
      if e then
        head_len = e + 3
        local head = lower(sub(raw, 1, e - 1))
        status = tonumber(match(head, "^http/1%.[01] (%d%d%d)"))
        if not status then return nil, "invalid status line" end
        if find(head, "\ntransfer%-encoding:") then
          return nil, "a chunked answer to an HTTP/1.0 request"
        end
        local cl = match(head, "\ncontent%-length:[ \t]*(%d+)[ \t]*\r")
        clen = cl and tonumber(cl)
      end
    end
    if head_len and size - head_len > MAX_BODY then
      return nil, "the response is larger than " .. MAX_BODY .. " bytes"
    end
    if clen and size - head_len >= clen then break end
  end
  local raw = concat(parts)
  if not head_len then return nil, "closed before the end of the response head" end
  local body = sub(raw, head_len + 1, clen and head_len + clen or nil)
  if clen and #body < clen then return nil, "closed before the end of the response" end
  return status, body
end

-- POSTs the DER request to the responder; returns status, body or nil, err.
local function fetch(url, req)
  local http = require "moongate.http"
  local scheme, host, port, path, query = http.parse_uri(url)
  if not scheme then return nil, host end
  if scheme ~= "http" then return nil, "only http:// responders are supported" end
  local deadline = C.mg_ffi_now() + DEADLINE
  local sock = require("moongate.pdk.socket").tcp()
  sock:settimeouts(CONNECT_MS, CONNECT_MS, CONNECT_MS)
  -- a pool of our own, which nothing ever fills: never someone else's idle connection
  local ok, err = sock:connect(host, port, { pool = fmt("moongate-ocsp:%s:%d", host, port) })
  if not ok then return nil, err end
  local authority = (find(host, ":", 1, true) and "[" .. host .. "]" or host)
    .. (port ~= 80 and ":" .. port or "")
  local head = fmt("POST %s%s HTTP/1.0\r\nHost: %s\r\nUser-Agent: moongate\r\n"
                   .. "Content-Type: application/ocsp-request\r\n"
                   .. "Accept: application/ocsp-response\r\nContent-Length: %d\r\n"
                   .. "Connection: close\r\n\r\n", path, query and "?" .. query or "",
                   authority, #req)
  local left = (deadline - C.mg_ffi_now()) * 1000
  sock:settimeouts(left, min(left, CONNECT_MS), left)
  local sent
  sent, err = sock:send(head .. req)
  local status, body
  if sent then
    status, body = exchange(sock, deadline)
  end
  sock:close()
  if not sent then return nil, err end
  return status, body
end

-- Fetches one claimed certificate's response and reports it (a timer of its own).
local function job(premature, i, url, req)
  local ok, status, body = pcall(fetch, url, req)
  local err
  if not ok then                 -- a bug: still release the claim
    status, body, err = 0, nil, "the fetch failed: " .. tostring(status)
  elseif not status then         -- a network failure or a malformed answer
    status, body, err = 0, nil, tostring(body)
  end
  C.mg_ffi_ocsp_done(i, status, body, body and #body or 0, err, err and #err or 0)
end

-- Starts the fetches that are due; false when this configuration staples nothing at all.
local function tick()
  local timer = require "moongate.pdk.timer"
  for _ = 1, MAX_JOBS do
    local rc = C.mg_ffi_ocsp_next(idx, url_p, url_len, req_p, req_len)
    if rc == DECLINED then return false end
    if rc ~= AGAIN then return true end
    local i = idx[0]
    local url = ffi_string(url_p[0], url_len[0])
    local req = ffi_string(req_p[0], req_len[0])
    local ok, err = timer.at(0, job, i, url, req)
    if not ok then   -- no timer: give the claim back as a failure, retried with backoff
      err = "cannot start the fetch: " .. tostring(err)
      C.mg_ffi_ocsp_done(i, 0, nil, 0, err, #err)
    end
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
