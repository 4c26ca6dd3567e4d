--- moongate.typedefs: schema fields that several plugins declare alike (Kong's
-- kong.db.schema.typedefs, the ones moongate's bundled plugins share). Definitions are plain
-- tables, read and never changed by moongate.schema, so one table serves every schema.
local null = require("cjson.safe").null

local _M = {}

--- Kong's typedefs.no_consumer, as a top-level field: `{ consumer = typedefs.no_consumer }`.
-- The plugin cannot be configured on a consumer (it runs before one is known, or it is what
-- identifies one); runtime.load refuses such an entity with its path.
_M.no_consumer = { type = "foreign", reference = "consumers", eq = null }

--- The `anonymous` field of authentication plugins: the consumer (id or username) a request
-- proceeds as when authentication fails; unset, a failure is answered 401.
_M.anonymous = { type = "string", len_min = 1,
  description = "The id or username of the consumer a request proceeds as when "
                .. "authentication fails; unset, a failure is answered 401." }

return _M
