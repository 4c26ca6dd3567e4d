-- request-stamp: adds a header to the request the service receives, built from the request
-- itself (by default "METHOD PATH REQUEST-ID CLIENT-IP"), so that the service can log or
-- trace it without parsing anything; and echoes the same value to the client in the
-- response. Only PDK calls (the global `moongate`), no FFI: it runs in access (before the
-- proxy) and header_filter (when the service's response head arrived).
local RequestStamp = {
  PRIORITY = 1500,   -- before most plugins: they may log the stamp
  VERSION = "0.1.0",
}

local concat, tostring = table.concat, tostring

-- One getter per `parts` value of the schema.
local PARTS = {
  method = function() return moongate.request.get_method() end,
  path = function() return moongate.request.get_path() end,
  query = function() return moongate.request.get_raw_query() end,
  host = function() return moongate.request.get_host() end,
  request_id = function() return moongate.request.get_id() end,
  client_ip = function() return moongate.client.get_forwarded_ip() end,
  consumer = function()
    local c = moongate.client.get_consumer()
    return c and (c.username or c.id)
  end,
}

function RequestStamp:access(conf)
  local values = {}
  for i, part in ipairs(conf.parts) do
    local v = PARTS[part]()
    values[i] = (v == nil or v == "") and "-" or tostring(v)
  end
  local stamp = concat(values, conf.separator)
  local name = conf.header_name

  local sent = moongate.request.get_header(name)
  if sent and conf.on_conflict == "preserve" then
    stamp = sent
  elseif sent and conf.on_conflict == "append" then
    moongate.service.request.add_header(name, stamp)   -- the client's value, then ours
  else
    moongate.service.request.set_header(name, stamp)   -- replaces the client's, if any
  end

  moongate.ctx.plugin.stamp = stamp                    -- for header_filter
  moongate.log.debug("stamped ", name, ": ", stamp)
end

function RequestStamp:header_filter(conf)
  local stamp = moongate.ctx.plugin.stamp
  if conf.echo and stamp then
    moongate.response.set_header(conf.header_name, stamp)
  end
end

return RequestStamp
