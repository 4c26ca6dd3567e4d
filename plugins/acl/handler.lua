--- acl: lets a request through by the groups of whoever an authentication plugin identified
-- (it runs after them: PRIORITY 950). The groups are the consumer's `acls`, or, for a
-- request authenticated without a consumer credential (or with
-- always_use_authenticated_groups), moongate.ctx.shared.authenticated_groups as set by an
-- external authentication plugin (Kong's convention). Kong 3.x's answers: not authenticated
-- → 401 {"message":"Unauthorized"}; not allowed → 403 {"message":"You cannot consume this
-- service"}. Allowed requests tell the upstream the groups in X-Consumer-Groups (or
-- X-Authenticated-Groups) unless hide_groups_header. The verdict for a (config, consumer)
-- pair is computed once per worker and kept.
local consumers = require "moongate.consumers"

local concat, type, setmetatable = table.concat, type, setmetatable

local ACL = { PRIORITY = 950, VERSION = "1.0.0" }

local FORBIDDEN = "You cannot consume this service"
local CONSUMER_GROUPS = "X-Consumer-Groups"
local AUTHENTICATED_GROUPS = "X-Authenticated-Groups"

-- conf -> { deny = bool, groups = set, verdicts = consumer -> true (blocked) | header value }
local compiled = setmetatable({}, { __mode = "k" })
local function compile(conf)
  local c = compiled[conf]
  if c then return c end
  local list = conf.deny or conf.allow
  local set = {}
  for _, g in ipairs(list) do set[g] = true end
  c = { deny = conf.deny ~= nil, groups = set,
        verdicts = setmetatable({}, { __mode = "k" }) }
  compiled[conf] = c
  return c
end

-- true when blocked; otherwise the groups header value ("" when hidden)
local function verdict(c, conf, groups)
  local in_group = false
  for i = 1, #groups do
    if c.groups[groups[i]] then
      in_group = true
      break
    end
  end
  local blocked
  if c.deny then blocked = in_group else blocked = not in_group end
  if blocked then return true end
  return conf.hide_groups_header and "" or concat(groups, ", ")
end

local function authenticated_groups()
  local g = moongate.ctx.shared.authenticated_groups
  if type(g) == "string" then return { g } end
  if type(g) == "table" and #g > 0 then return g end
  return nil
end

local function unauthenticated()
  if moongate.client.get_credential() then
    return moongate.response.exit(403, { message = FORBIDDEN })
  end
  return moongate.response.exit(401, { message = "Unauthorized" })
end

function ACL:access(conf)
  local c = compile(conf)
  local consumer = moongate.client.get_consumer()
  local result, header

  local external
  if not consumer or conf.always_use_authenticated_groups
     or not moongate.client.get_credential() then
    external = authenticated_groups()
  end

  if external then
    result, header = verdict(c, conf, external), AUTHENTICATED_GROUPS
  elseif consumer then
    result = c.verdicts[consumer]
    if result == nil then
      local list = consumers.groups(consumer)
      if #list == 0 and not c.deny then
        return unauthenticated()   -- a consumer without groups is never on an allow list
      end
      result = verdict(c, conf, list)
      c.verdicts[consumer] = result
    end
    header = CONSUMER_GROUPS
  else
    return unauthenticated()
  end

  if result == true then
    return moongate.response.exit(403, { message = FORBIDDEN })
  end
  if not conf.hide_groups_header and result ~= "" then
    moongate.service.request.set_header(header, result)
  else
    moongate.service.request.clear_header(header)
  end
end

return ACL
