--- request-termination: answers every request (or, with `trigger`, those carrying that header
-- or query argument) itself, so the upstream is never called: Kong 3.x's behaviour. The
-- answer is {"message": message} (by default the status's message from Kong's table, no body
-- for a status it has none for), or the raw `body` with `content_type`, or with `echo` a JSON
-- copy of the request as Kong builds it. The fixed answers are encoded once per config.
--
-- Deliberate differences: a body configured without content_type is sent as
-- application/json; charset=utf-8 (Kong's documented default) rather than left untyped;
-- status_code is 200..599 (a 1xx would be an interim answer); a 204 or 304 gets no body
-- whatever is configured (HTTP forbids one, and a client would
-- read the bytes as the next response); echo's `kong` block has no hostname (no PDK call
-- gives it, and a debugging echo need not tell the world the machine's name); uri_captures
-- and the matched route and service are reported as far as the PDK knows them (names only).
local cjson = require "cjson.safe"

local request = moongate.request
local response = moongate.response

local pcall, require = pcall, require

local RequestTermination = { PRIORITY = 2, VERSION = "1.0.0" }

-- Kong's DEFAULT_RESPONSE: other statuses get no body unless a message is configured
local DEFAULT_MESSAGE = {
  [401] = "Unauthorized",
  [404] = "Not found",
  [405] = "Method not allowed",
  [500] = "An unexpected error occurred",
  [502] = "Bad Gateway",
  [503] = "Service unavailable",
}

local JSON = "application/json; charset=utf-8"

-- statuses that must not carry a body: 1xx (interim: a client reads on for the final answer,
-- so bytes after the head would pose as one), 204 and 304
local function bodiless(status)
  return status < 200 or status == 204 or status == 304
end

-- conf -> { status, body (string or nil), headers (or nil) }: the fixed answer, encoded once
local answer_of = setmetatable({}, { __mode = "k" })

local function answer(conf)
  local a = answer_of[conf]
  if a then return a end
  local status = conf.status_code
  a = { status = status }
  if bodiless(status) then
    -- nothing
  elseif conf.body then
    a.body, a.headers = conf.body, { ["Content-Type"] = conf.content_type or JSON }
  else
    local message = conf.message or DEFAULT_MESSAGE[status]
    if message then
      a.body, a.headers = cjson.encode({ message = message }), { ["Content-Type"] = JSON }
    end
  end
  answer_of[conf] = a
  return a
end

-- The matched route and service as far as moongate knows them: kong.router's when a PDK
-- offers it, else their names from the PDK's internals (nil when unnamed).
local function matched()
  local router = moongate.router
  if router then return router.get_route(), router.get_service() end
  local ok, pdk = pcall(require, "moongate.pdk")
  if not ok or not pdk.route_name then return nil, nil end
  local route, service = pdk.route_name(), pdk.service_name()
  return route and route ~= "" and { name = route } or nil,
         service and service ~= "" and { name = service } or nil
end

local function echo(conf, query)
  local status = conf.status_code
  if bodiless(status) then return response.exit(status) end
  local route, service = matched()
  local node = moongate.node
  local body = request.get_body()
  local content = {
    message = conf.message or DEFAULT_MESSAGE[status],
    kong = { node_id = node.get_id(), worker_pid = node.get_worker_pid() },
    request = {
      scheme = request.get_scheme(),
      host = request.get_host(),
      port = request.get_port(),
      headers = request.get_headers(),
      query = query or request.get_query(),
      body = body,
      raw_body = request.get_raw_body(),
      method = request.get_method(),
      path = request.get_path(),
      uri_captures = request.get_uri_captures and request.get_uri_captures() or nil,
    },
    matched_route = route,
    matched_service = service,
  }
  return response.exit(status, content)
end

function RequestTermination:access(conf)
  local trigger = conf.trigger
  local query
  if trigger and request.get_header(trigger) == nil then
    query = request.get_query()
    if query[trigger] == nil then return end   -- not triggered: the request goes on
  end
  if conf.echo then return echo(conf, query) end
  local a = answer(conf)
  return response.exit(a.status, a.body, a.headers)
end

return RequestTermination
