-- bench/run.sh, scenario "keyauth", the nginx+lua side of moongate's bundled key-auth + acl:
-- the same work done the plain OpenResty way. The apikey header is looked up in a consumer
-- table built once (key-1 .. key-1000, each in group "users"), 401 without a key or for an
-- unknown one, the groups checked against the allow list (403 otherwise), and the upstream
-- told who called: X-Consumer-ID, X-Consumer-Username, X-Credential-Identifier,
-- X-Consumer-Groups set, X-Consumer-Custom-ID and X-Anonymous-Consumer cleared.
--
--   access_by_lua_block { require("bench_keyauth").access() }
local ngx = ngx
local var, req = ngx.var, ngx.req

local CONSUMERS = 1000

local _M = {}

local consumers = {} -- key -> consumer, built once when the module loads
for i = 1, CONSUMERS do
  consumers["key-" .. i] = { id = string.format("00000000-0000-4000-8000-%012d", i),
                             username = "consumer-" .. i,
                             credential_id = string.format("10000000-0000-4000-8000-%012d", i),
                             groups = { "users" } }
end
local allow = { users = true }

local function deny(status, message)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json; charset=utf-8"
  if status == 401 then ngx.header["WWW-Authenticate"] = "Key" end
  ngx.print('{"message":"', message, '"}')
  return ngx.exit(status)
end

function _M.access()
  local key = var.http_apikey
  if not key or key == "" then return deny(401, "No API key found in request") end
  local consumer = consumers[key]
  if not consumer then return deny(401, "Unauthorized") end
  local groups, allowed = consumer.groups, false
  for i = 1, #groups do
    if allow[groups[i]] then
      allowed = true
      break
    end
  end
  if not allowed then return deny(403, "You cannot consume this service") end
  req.set_header("X-Consumer-ID", consumer.id)
  req.clear_header("X-Consumer-Custom-ID")
  req.set_header("X-Consumer-Username", consumer.username)
  req.set_header("X-Credential-Identifier", consumer.credential_id)
  req.clear_header("X-Anonymous-Consumer")
  req.set_header("X-Consumer-Groups", table.concat(groups, ", "))
end

return _M
