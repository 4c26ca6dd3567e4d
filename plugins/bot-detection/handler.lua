--- bot-detection: refuses requests whose User-Agent looks like a bot, Kong 3.x's way. The
-- User-Agent (trimmed) is tried against `allow`, then `deny`, then the built-in list
-- (rules.lua), each an unanchored, case-sensitive regex; the first hit decides: `allow`
-- lets the request through (it overrides both others), `deny` or a built-in rule answers
-- 403 {"message":"Forbidden"}. No User-Agent at all is let through; two or more User-Agent
-- headers answer 400 {"message":"Only one User-Agent header allowed"} (Kong).
--
-- The verdict for a User-Agent is cached per config and worker (Kong keeps an LRU of 10^4
-- per config): a two-generation cache, bounded in entries and in bytes, so that unique
-- 8 KiB User-Agents cannot grow it past about a mebibyte. Regexes run through moongate.re
-- (PCRE2, JIT) under its match limit. A rule that hits the limit is undecided: for an
-- `allow` rule that means no match (the safe side), for a `deny` rule a match (the operator
-- asked to refuse, and the User-Agent is the client's to craft); the built-in list keeps
-- Kong's reading, no match, because its last rule gives up on long runs of letters that
-- real clients send.
local re = require "moongate.re"
local rules = require "moongate.plugins.bot-detection.rules"

local re_find = re.find
local byte, sub, find, lower = string.byte, string.sub, string.find, string.lower
local error, ipairs = error, ipairs

local BotDetection = { PRIORITY = 2500, VERSION = "1.0.0" }

local FORBIDDEN = { message = "Forbidden" }
local DUPLICATE = { message = "Only one User-Agent header allowed" }

local MATCH_NONE, MATCH_ALLOW, MATCH_DENY, MATCH_BOT = 0, 1, 2, 3

local CACHE_ENTRIES = 10000        -- Kong's UA_CACHE_SIZE, over both generations
local CACHE_BYTES = 1024 * 1024    -- of User-Agent text, over both generations
local OPTIONS = "jo"               -- Kong's: no "i", so matching is case-sensitive

-- A built-in rule that does not compile is a broken install: say so at load, not per request.
for i, rule in ipairs(rules.bots) do
  local ok, err = re.compile(rule, OPTIONS)
  if not ok then error("bot-detection: built-in rule #" .. i .. " does not compile: " .. err) end
end

local caches = setmetatable({}, { __mode = "k" })   -- conf -> { young, old, n, bytes }

local function cache_for(conf)
  local c = caches[conf]
  if not c then
    -- warm moongate.re's compiled-pattern cache; the schema already refused bad ones
    for _, list in ipairs({ conf.allow or {}, conf.deny or {} }) do
      for _, rule in ipairs(list) do re.compile(rule, OPTIONS) end
    end
    c = { young = {}, old = {}, n = 0, bytes = 0 }
    caches[conf] = c
  end
  return c
end

local function remember(c, ua, verdict)
  if c.n >= CACHE_ENTRIES / 2 or c.bytes >= CACHE_BYTES / 2 then
    c.old, c.young, c.n, c.bytes = c.young, {}, 0, 0   -- the oldest generation is dropped
  end
  c.young[ua] = verdict
  c.n, c.bytes = c.n + 1, c.bytes + #ua
end

local function recall(c, ua)
  local v = c.young[ua]
  if v == nil then
    v = c.old[ua]
    if v ~= nil then remember(c, ua, v) end   -- used again: keep it past the next rotation
  end
  return v
end

local last_warning = -1
-- One line a second at most: a client can make every request hit the match limit.
local function undecided(list, i, err)
  local now = moongate.now()
  if now - last_warning >= 1 then
    last_warning = now
    moongate.log.warn(list, "[", i - 1, "] could not be decided on a User-Agent (", err,
                      "); taken as ", list == "allow" and "no match" or "a match")
  end
end

-- true when a rule of the list matches; a rule that fails counts as `on_error`.
local function any(ua, list, name, on_error)
  for i = 1, #list do
    local from, err = re_find(ua, list[i], OPTIONS)
    if from then return true end
    if err then
      undecided(name, i, err)
      if on_error then return true end
    end
  end
  return false
end

local function examine(conf, ua)
  local allow, deny = conf.allow, conf.deny
  if allow and any(ua, allow, "allow", false) then return MATCH_ALLOW end
  if deny and any(ua, deny, "deny", true) then return MATCH_DENY end
  local bots = rules.bots
  for i = 1, #bots do
    if re_find(ua, bots[i], OPTIONS) then return MATCH_BOT end
  end
  return MATCH_NONE
end

-- Kong strips surrounding whitespace (the parser already trims, so this rarely copies).
local function strip(s)
  local first, last = byte(s, 1), byte(s, -1)
  if first == 32 or first == 9 or last == 32 or last == 9 then
    local t = sub(s, find(s, "[^ \t]") or #s + 1)
    return (t:gsub("[ \t]+$", ""))
  end
  return s
end

function BotDetection:access(conf)
  local ua = moongate.request.get_header("User-Agent")
  if ua == nil then return end
  if moongate.request.get_header_count("User-Agent") > 1 then
    return moongate.response.exit(400, DUPLICATE)
  end
  ua = strip(ua)
  local c = cache_for(conf)
  local verdict = recall(c, ua)
  if verdict == nil then
    verdict = examine(conf, ua)
    remember(c, ua, verdict)
  end
  if verdict > MATCH_ALLOW then return moongate.response.exit(403, FORBIDDEN) end
end

return BotDetection
