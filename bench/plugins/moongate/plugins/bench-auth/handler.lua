-- bench/run.sh, scenario "auth": what key-auth plus a per-consumer rate-limiting counter
-- cost, in one access handler (the nginx+lua side is one access_by_lua_block too).
--   * key lookup: the `apikey` request header in a table of config.consumers consumers
--     (keys "key-1" .. "key-N", built once per config when the first request needs it);
--     401 when the header is missing or the key unknown;
--   * a fixed-window counter per consumer and minute in the shared dictionary config.dict
--     (incr with init 0 and a 60 s TTL); 429 above config.limit (never reached in the bench).
-- The JSON access line is the gateway's own access log (access_log: path), not Lua's.
local get_header = moongate.request.get_header
local exit = moongate.response.exit
local authenticate = moongate.client.authenticate
local now = moongate.now
local shared = moongate.shared
local floor = math.floor

local P = { PRIORITY = 1250, VERSION = "1.0.0" }

local tables = setmetatable({}, { __mode = "k" })   -- config -> { key -> consumer }

local function consumers_for(conf)
  local t = tables[conf]
  if not t then
    t = {}
    for i = 1, conf.consumers do
      t["key-" .. i] = { id = "consumer-" .. i, username = "consumer-" .. i }
    end
    tables[conf] = t
  end
  return t
end

local UNAUTHORIZED = { message = "Unauthorized" }
local LIMITED = { message = "API rate limit exceeded" }

function P:access(conf)
  local key = get_header("apikey")
  if not key then return exit(401, UNAUTHORIZED) end
  local consumer = consumers_for(conf)[key]
  if not consumer then return exit(401, UNAUTHORIZED) end
  authenticate(consumer, nil)
  local n = shared[conf.dict]:incr(consumer.id .. ":" .. floor(now() / 60), 1, 0, 60)
  if n and n > conf.limit then return exit(429, LIMITED) end
end

return P
