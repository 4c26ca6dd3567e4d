--- key-auth: authenticates a request by an API key sent in a header, the query string or
-- the body (form or JSON), looked up among the consumers' keyauth_credentials. Kong 3.x's
-- behaviour and messages: no key → 401 "No API key found in request", an unknown key → 401
-- "Unauthorized", the same key name twice → 401 "Duplicate API key found"; all three carry
-- WWW-Authenticate. With hide_credentials the key never reaches the upstream.
local auth = require "moongate.auth"
local consumers = require "moongate.consumers"

local type = type

local KeyAuth = { PRIORITY = 1250, VERSION = "1.0.0" }

local NO_KEY = "No API key found in request"
local BAD_KEY = "Unauthorized"
local DUPLICATE = "Duplicate API key found"

local challenge_of = setmetatable({}, { __mode = "k" })   -- conf -> WWW-Authenticate value
local function challenge(conf)
  local c = challenge_of[conf]
  if not c then
    c = { ["WWW-Authenticate"] = auth.challenge("Key", conf.realm) }
    challenge_of[conf] = c
  end
  return c
end

local function body_args()
  local body = moongate.request.get_body()
  return type(body) == "table" and body or nil
end

-- Looks for the key under one name: the value (a table when repeated) and where it was.
local function look(conf, name, query, body)
  local request = moongate.request
  if conf.key_in_header then
    local v = request.get_header(name)
    if v ~= nil then
      if request.get_header_count(name) > 1 then return {}, "header", query, body end
      return v, "header", query, body
    end
  end
  if conf.key_in_query then
    query = query or request.get_query()
    local v = query[name]
    if v ~= nil then return v, "query", query, body end
  end
  if conf.key_in_body then
    body = body or body_args() or {}
    local v = body[name]
    if v ~= nil then return v, "body", query, body end
  end
  return nil, nil, query, body
end

-- Finds the key: nil, or the key, its name, where it came from (and the parsed query and
-- body, if they were read); false, message when the key was sent more than once.
-- The usual single key name takes no loop, so the access phase compiles as one trace.
local function find_key(conf)
  local names = conf.key_names
  local name = names[1]
  local v, where, query, body = look(conf, name)
  local i = 1
  while v == nil and i < #names do
    i = i + 1
    name = names[i]
    v, where, query, body = look(conf, name, query, body)
  end
  if type(v) == "string" then
    return v, name, where, query, body
  elseif type(v) == "table" then
    return false, DUPLICATE
  end
  return nil
end

-- hide_credentials: the key's name leaves the header, the query and the body alike
local function hide(conf, name, query, body)
  local service = moongate.service.request
  service.clear_header(name)
  if conf.key_in_query then
    query = query or moongate.request.get_query()
    if query[name] ~= nil then
      query[name] = nil
      service.set_query(query)
    end
  end
  if conf.key_in_body then
    body = body or body_args()
    if body and body[name] ~= nil then
      body[name] = nil
      local mime = (moongate.request.get_header("Content-Type") or ""):lower()
      service.set_body(body, mime:find("application/x-www-form-urlencoded", 1, true)
                             and "application/x-www-form-urlencoded" or "application/json")
    end
  end
end

function KeyAuth:access(conf)
  if auth.preflight_skipped(conf) or auth.skip(conf) then return end
  local key, name, where, query, body = find_key(conf)
  if key == false then return auth.reject(conf, 401, name, challenge(conf)) end
  if not key or key == "" then return auth.reject(conf, 401, NO_KEY, challenge(conf)) end
  if where == "header" then moongate.log.redact_header(name) end
  if conf.hide_credentials then hide(conf, name, query, body) end
  local credential, consumer = consumers.find_credential("keyauth_credentials", key)
  if not credential then return auth.reject(conf, 401, BAD_KEY, challenge(conf)) end
  auth.set_consumer(consumer, credential, credential.id)
end

return KeyAuth
