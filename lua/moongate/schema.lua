-- moongate.schema: validates a plugin entity's `config` against the plugin's schema.lua and
-- fills in defaults, at config load (a cold path: clarity over speed). Schemas have Kong 3.x's
-- shape, so a Kong plugin's schema.lua works unchanged where moongate can honour it: field
-- types, attributes, validators, shorthand_fields and entity checks follow Kong's
-- kong/db/schema/init.lua and metaschema.lua (Apache-2.0), and so do the error messages. Bad
-- user config is reported as data, every problem as "PATH: message" in a stable order; only
-- a malformed schema or a wrong call raises, and check_schema() finds the former at plugin
-- load so that validation never has to.

local cjson = require "cjson.safe"

local type = type
local pairs = pairs
local ipairs = ipairs
local next = next
local tostring = tostring
local error = error
local pcall = pcall
local setmetatable = setmetatable
local getmetatable = getmetatable
local floor = math.floor
local huge = math.huge
local concat = table.concat
local sort = table.sort
local fmt = string.format
local find = string.find
local sub = string.sub
local rep = string.rep

-- ngx.null and cjson.null are the same light userdata (NULL).
local NULL = cjson.null
-- OpenResty's lua-cjson marks arrays so that an empty one encodes as []; upstream has none.
local ARRAY_MT = cjson.array_mt

local _M = { _VERSION = "0.1.0" }

-- Kong's wording, so that a Kong user recognises every message.
local MSG = {
  ARRAY = "expected an array",
  SET = "expected a set",
  MAP = "expected a map",
  RECORD = "expected a record",
  STRING = "expected a string",
  NUMBER = "expected a number",
  BOOLEAN = "expected a boolean",
  INTEGER = "expected an integer",
  FUNCTION = "expected a function",
  REQUIRED = "required field missing",
  UNKNOWN = "unknown field",
  EQ = "value must be %s",
  NE = "value must not be %s",
  GT = "value must be greater than %s",
  BETWEEN = "value should be between %s and %s",
  LEN_EQ = "length must be %d",
  LEN_MIN = "length must be at least %d",
  LEN_MAX = "length must be at most %d",
  MATCH = "invalid value: %s",
  STARTS_WITH = "should start with: %s",
  CONTAINS = "expected to contain: %s",
  ONE_OF = "expected one of: %s",
  NOT_ONE_OF = "must not be one of: %s",
  TIMESTAMP = "expected a valid timestamp",
  UUID = "expected a valid UUID",
  VALIDATION = "failed validating: %s",
  VALIDATOR_RAISED = "validator '%s' failed: %s",
  MUTUALLY_EXCLUSIVE_SETS = "these sets are mutually exclusive: %s",
  -- entity checks
  ENTITY_CHECK = "failed entity check: %s(%s)",
  CONDITIONAL = "failed conditional validation given value of field '%s'",
  AT_LEAST_ONE_OF = "at least one of these fields must be non-empty: %s",
  CONDITIONAL_AT_LEAST_ONE_OF = "at least one of these fields must be non-empty: %s",
  ONLY_ONE_OF = "exactly one of these fields must be non-empty: %s",
  DISTINCT = "values of these fields must be distinct: %s",
  MUTUALLY_REQUIRED = "all or none of these fields must be set: %s",
  MUTUALLY_EXCLUSIVE = "only one or none of these fields must be set: %s",
  SHORTHAND_RAISED = "shorthand field conversion failed: %s",
}

local VALID_TYPES = {
  boolean = true, integer = true, number = true, string = true,
  array = true, set = true, map = true, record = true,
  foreign = true, json = true, ["function"] = true,
}

local TYPE_MSG = {
  boolean = MSG.BOOLEAN, number = MSG.NUMBER, integer = MSG.INTEGER, string = MSG.STRING,
  array = MSG.ARRAY, set = MSG.SET, map = MSG.MAP, record = MSG.RECORD,
  ["function"] = MSG.FUNCTION,
}


---------------------------------------------------------------------------------------------
-- Small helpers
---------------------------------------------------------------------------------------------

local function is_absent(v)
  return v == nil or v == NULL
end


local function is_nonempty(v)
  if v == nil or v == NULL or v == "" then
    return false
  end
  return not (type(v) == "table" and next(v) == nil)
end


-- true when t's keys are exactly 1..n (an empty table is a sequence).
local function is_sequence(t)
  local n = 0
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k ~= floor(k) then
      return false
    end
    n = n + 1
  end
  for i = 1, n do
    if t[i] == nil then
      return false
    end
  end
  return true
end


local function deep_copy(v)
  if type(v) ~= "table" then
    return v
  end
  local t = {}
  for k, x in pairs(v) do
    t[deep_copy(k)] = deep_copy(x)
  end
  return setmetatable(t, getmetatable(v))
end


local function fmt_num(n)
  if n == floor(n) and n > -1e15 and n < 1e15 then
    return fmt("%d", n)
  end
  return fmt("%.14g", n)
end


-- A value as it appears inside a message.
local function fmt_value(v)
  local t = type(v)
  if t == "string" then
    return v
  elseif t == "number" then
    return fmt_num(v)
  elseif v == NULL then
    return "null"
  elseif t == "table" then
    return cjson.encode(v) or tostring(v)
  end
  return tostring(v)
end


local function join_values(list)
  local out = {}
  for i = 1, #list do
    out[i] = fmt_value(list[i])
  end
  return concat(out, ", ")
end


local function split_dots(name)
  local parts, i = {}, 1
  while true do
    local dot = find(name, ".", i, true)
    if not dot then
      parts[#parts + 1] = sub(name, i)
      return parts
    end
    parts[#parts + 1] = sub(name, i, dot - 1)
    i = dot + 1
  end
end


-- t.a.b.c for name "a.b.c"; nil when any step is absent or not a table.
local function get_dotted(t, name)
  for _, part in ipairs(split_dots(name)) do
    if type(t) ~= "table" then
      return nil
    end
    t = t[part]
    if t == NULL then
      return nil
    end
  end
  return t
end


local function set_dotted(t, name, value)
  local parts = split_dots(name)
  for i = 1, #parts - 1 do
    local nxt = t[parts[i]]
    if type(nxt) ~= "table" then
      nxt = {}
      t[parts[i]] = nxt
    end
    t = nxt
  end
  t[parts[#parts]] = value
end


local function sort_keys(keys)
  sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then
      return ta < tb
    end
    if ta == "number" or ta == "string" then
      return a < b
    end
    return tostring(a) < tostring(b)
  end)
  return keys
end


-- Record definitions indexed by field name, computed once per definition table.
local record_cache = setmetatable({}, { __mode = "k" })

local function record_fields(def)
  local c = record_cache[def]
  if c then
    return c
  end
  local fields = def.fields
  if type(fields) ~= "table" then
    error("schema: record field without a 'fields' table (run check_schema first)", 0)
  end
  local names, by_name = {}, {}
  for i = 1, #fields do
    local item = fields[i]
    if type(item) == "table" then
      local k, v = next(item)
      if k ~= nil and by_name[k] == nil then
        names[#names + 1] = k
        by_name[k] = v
      end
    end
  end
  c = { names = names, by_name = by_name }
  record_cache[def] = c
  return c
end


-- The definition reached by a dotted name from a record definition (nil if none).
local function field_def_in(record_def, name)
  local def = record_def
  for _, part in ipairs(split_dots(name)) do
    if type(def) ~= "table" or def.type ~= "record" or type(def.fields) ~= "table" then
      return nil
    end
    def = record_fields(def).by_name[part]
  end
  return def
end


-- A partial definition (an entity check's if_match / then_match) completed by the field's
-- own definition, as Kong does with a metatable.
local function overlay(partial, def)
  if not def then
    return partial
  end
  return setmetatable({}, {
    __index = function(_, k)
      local v = partial[k]
      if v == nil then
        v = def[k]
      end
      return v
    end,
  })
end


---------------------------------------------------------------------------------------------
-- Validation context: the error list, in the order problems are found
---------------------------------------------------------------------------------------------

local function new_ctx()
  return { errors = {}, paths = {} }
end


local function add_error(ctx, path, msg)
  local n = #ctx.errors + 1
  ctx.errors[n] = path .. ": " .. msg
  ctx.paths[n] = path
end


-- true when an error was reported at path or anywhere below it.
local function has_error_at(ctx, path)
  local plen = #path
  for _, p in ipairs(ctx.paths) do
    if p == path then
      return true
    end
    if sub(p, 1, plen) == path then
      local c = sub(p, plen + 1, plen + 1)
      if c == "." or c == "[" then
        return true
      end
    end
  end
  return false
end


---------------------------------------------------------------------------------------------
-- Validators (one attribute each), run in Kong's order after the type check
---------------------------------------------------------------------------------------------

local function length_of(value, ftype)
  if ftype == "map" then
    local n = 0
    for _ in pairs(value) do
      n = n + 1
    end
    return n
  end
  return #value
end


local UUID_PATTERN = "^" .. rep("%x", 8) .. "%-" .. rep("%x", 4) .. "%-" .. rep("%x", 4)
                     .. "%-" .. rep("%x", 4) .. "%-" .. rep("%x", 12) .. "$"

local VALIDATORS = {
  eq = function(value, wanted)
    if value == wanted then
      return true
    end
    return nil, fmt(MSG.EQ, fmt_value(wanted))
  end,

  ne = function(value, unwanted)
    if value ~= unwanted then
      return true
    end
    return nil, fmt(MSG.NE, fmt_value(value))
  end,

  not_one_of = function(value, options)
    for i = 1, #options do
      if value == options[i] then
        return nil, fmt(MSG.NOT_ONE_OF, join_values(options))
      end
    end
    return true
  end,

  one_of = function(value, options)
    for i = 1, #options do
      if value == options[i] then
        return true
      end
    end
    return nil, fmt(MSG.ONE_OF, join_values(options))
  end,

  gt = function(value, limit)
    if value > limit then
      return true
    end
    return nil, fmt(MSG.GT, fmt_num(limit))
  end,

  timestamp = function(value)
    if value > 0 then
      return true
    end
    return nil, MSG.TIMESTAMP
  end,

  uuid = function(value)
    if find(value, UUID_PATTERN) then
      return true
    end
    return nil, MSG.UUID
  end,

  -- compiled with PCRE2 as moongate.re will run it
  is_regex = function(value)
    local ok, err = require("moongate.re").valid(value)
    if ok then
      return true
    end
    return nil, "not a valid regex: " .. tostring(err)
  end,

  between = function(value, limits)
    if value < limits[1] or value > limits[2] then
      return nil, fmt(MSG.BETWEEN, fmt_num(limits[1]), fmt_num(limits[2]))
    end
    return true
  end,

  len_eq = function(value, n, ftype)
    if length_of(value, ftype) == n then
      return true
    end
    return nil, fmt(MSG.LEN_EQ, n)
  end,

  len_min = function(value, n, ftype)
    if length_of(value, ftype) >= n then
      return true
    end
    return nil, fmt(MSG.LEN_MIN, n)
  end,

  len_max = function(value, n, ftype)
    if length_of(value, ftype) <= n then
      return true
    end
    return nil, fmt(MSG.LEN_MAX, n)
  end,

  starts_with = function(value, prefix)
    if sub(value, 1, #prefix) == prefix then
      return true
    end
    return nil, fmt(MSG.STARTS_WITH, prefix)
  end,

  not_match = function(value, pattern)
    if find(value, pattern) then
      return nil, fmt(MSG.MATCH, value)
    end
    return true
  end,

  match_none = function(value, list)
    for i = 1, #list do
      if find(value, list[i].pattern) then
        return nil, list[i].err or fmt(MSG.MATCH, value)
      end
    end
    return true
  end,

  match = function(value, pattern)
    if find(value, pattern) then
      return true
    end
    return nil, fmt(MSG.MATCH, value)
  end,

  match_all = function(value, list)
    for i = 1, #list do
      if not find(value, list[i].pattern) then
        return nil, list[i].err or fmt(MSG.MATCH, value)
      end
    end
    return true
  end,

  match_any = function(value, arg)
    for _, pattern in ipairs(arg.patterns) do
      if find(value, pattern) then
        return true
      end
    end
    return nil, arg.err or fmt(MSG.MATCH, value)
  end,

  contains = function(value, wanted)
    for i = 1, #value do
      if value[i] == wanted then
        return true
      end
    end
    return nil, fmt(MSG.CONTAINS, fmt_value(wanted))
  end,

  custom_validator = function(value, fn)
    local ok, err = fn(value)
    if ok then
      return true
    end
    return nil, err ~= nil and tostring(err) or fmt(MSG.VALIDATION, fmt_value(value))
  end,

  mutually_exclusive_subsets = function(value, subsets)
    local owner = {}
    for _, subset in ipairs(subsets) do
      for _, el in ipairs(subset) do
        owner[el] = subset
      end
    end
    local used, seen = {}, {}
    for i = 1, #value do
      local s = owner[value[i]]
      if s and not seen[s] then
        seen[s] = true
        used[#used + 1] = s
      end
    end
    if #used <= 1 then
      return true
    end
    local parts = {}
    for i, s in ipairs(used) do
      local q = {}
      for j, el in ipairs(s) do
        q[j] = "'" .. fmt_value(el) .. "'"
      end
      parts[i] = "(" .. concat(q, ", ") .. ")"
    end
    return nil, fmt(MSG.MUTUALLY_EXCLUSIVE_SETS, concat(parts, ", "))
  end,
}

local VALIDATOR_ORDER = {
  "eq", "ne", "not_one_of", "one_of",
  "gt", "timestamp", "uuid", "is_regex", "between",
  "len_eq", "len_min", "len_max",
  "starts_with", "not_match", "match_none", "match", "match_all", "match_any",
  "contains",
  "custom_validator", "mutually_exclusive_subsets",
}


-- Runs the attribute validators of def on a value of the right type; the first failure is
-- the field's error (Kong reports one message per field). `err` replaces the message.
local function run_validators(def, value, path, ctx)
  local ftype = def.type
  for _, name in ipairs(VALIDATOR_ORDER) do
    local arg = def[name]
    if arg == nil and name == "len_min" and ftype == "string" then
      arg = 1 -- Kong: empty strings are refused unless the field sets len_min
    end
    if arg ~= nil then
      local pok, ok, msg = pcall(VALIDATORS[name], value, arg, ftype)
      if not pok then
        add_error(ctx, path, fmt(MSG.VALIDATOR_RAISED, name, tostring(ok)))
        return
      end
      if not ok then
        add_error(ctx, path, def.err or msg)
        return
      end
    end
  end
end


-- The message for a field that is absent (nil or null) once defaults are applied, or nil.
local function absent_error(def)
  if def.required then
    return MSG.REQUIRED
  end
  if def.eq ~= nil and def.eq ~= NULL then
    return def.err or fmt(MSG.EQ, fmt_value(def.eq))
  end
  if def.ne == NULL then
    return def.err or fmt(MSG.NE, "null")
  end
  return nil
end


---------------------------------------------------------------------------------------------
-- Values: type check, recursion, defaults
---------------------------------------------------------------------------------------------

local validate_value, validate_record, run_entity_checks

-- An absent field (nil or null): its default, a required record's expansion, or an error.
local function fill_absent(def, path, rel, ctx)
  local default = def.default
  if default ~= nil and default ~= NULL then
    return validate_value(def, deep_copy(default), path, rel, ctx)
  end
  if def.required and def.type == "record" then
    -- Kong expands a missing required record so that its own defaults apply.
    return validate_value(def, {}, path, rel, ctx)
  end
  local msg = absent_error(def)
  if msg then
    add_error(ctx, path, msg)
  end
  return nil
end


local function validate_elements(def, value, path, rel, ctx)
  local elements = def.elements
  local is_set = def.type == "set"
  local out, seen, n = {}, {}, 0
  for i = 1, #value do
    local v = value[i]
    local idx = "[" .. (i - 1) .. "]"
    if is_absent(v) then
      add_error(ctx, path .. idx, MSG.REQUIRED) -- Kong: elements are required
    elseif not (is_set and seen[v]) then      -- Kong: sets drop duplicates silently
      seen[v] = true
      n = n + 1
      out[n] = validate_value(elements, v, path .. idx, rel .. idx, ctx)
    end
  end
  if ARRAY_MT then
    setmetatable(out, ARRAY_MT)
  end
  return out
end


local function validate_map(def, value, path, rel, ctx)
  local keys = {}
  for k in pairs(value) do
    keys[#keys + 1] = k
  end
  sort_keys(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local kpath, krel = path .. "." .. tostring(k), rel .. "." .. tostring(k)
    local nerr = #ctx.errors
    local key = validate_value(def.keys, k, kpath, krel, ctx)
    local v = value[k]
    if is_absent(v) then
      add_error(ctx, kpath, MSG.REQUIRED) -- Kong: map values are required
    elseif #ctx.errors == nerr then
      out[key] = validate_value(def.values, v, kpath, krel, ctx)
    end
  end
  return out
end


-- Validates a present (non-nil, non-null) value against def. Errors go to ctx; the return
-- value is the normalised value (defaults filled, sets deduplicated, fresh tables), or the
-- value as given when its type is wrong, so that entity checks still see it as Kong does.
validate_value = function(def, value, path, rel, ctx)
  local ftype = def.type
  local vtype = type(value)
  local nerr = #ctx.errors

  if def.eq == NULL then
    add_error(ctx, path, def.err or fmt(MSG.EQ, "null"))
    return value
  end

  local out = value
  if ftype == "string" or ftype == "boolean" or ftype == "function" then
    if vtype ~= ftype then
      add_error(ctx, path, TYPE_MSG[ftype])
      return value
    end

  elseif ftype == "integer" then
    if vtype ~= "number" or value ~= floor(value) or value == huge or value == -huge then
      add_error(ctx, path, MSG.INTEGER)
      return value
    end

  elseif ftype == "number" then
    if vtype ~= "number" or value ~= value then
      add_error(ctx, path, MSG.NUMBER)
      return value
    end

  elseif ftype == "array" or ftype == "set" then
    if vtype ~= "table" or not is_sequence(value) then
      add_error(ctx, path, TYPE_MSG[ftype])
      return value
    end
    out = validate_elements(def, value, path, rel, ctx)

  elseif ftype == "map" then
    -- A non-empty list is not a map (an empty table is both: YAML's {} and [] look alike).
    local ktype = def.keys and def.keys.type
    if vtype ~= "table"
       or (next(value) ~= nil and ktype ~= "integer" and ktype ~= "number"
           and is_sequence(value))
    then
      add_error(ctx, path, MSG.MAP)
      return value
    end
    out = validate_map(def, value, path, rel, ctx)

  elseif ftype == "record" then
    if vtype ~= "table" or (next(value) ~= nil and is_sequence(value)) then
      add_error(ctx, path, MSG.RECORD)
      return value
    end
    out = validate_record(def, value, path, rel, ctx)

  elseif ftype == "foreign" or ftype == "json" then
    -- Not validated here: kept as written.
    return deep_copy(value)

  else
    error(fmt("schema: field '%s' has unknown type '%s' (run check_schema first)",
              rel, tostring(ftype)), 0)
  end

  -- Like Kong, a value whose parts failed is not checked as a whole.
  if #ctx.errors == nerr then
    run_validators(def, out, path, ctx)
  end
  return out
end


-- Deep merge for shorthand fields: `over` wins except where it is null.
local function merge(base, over)
  local out = {}
  if type(base) == "table" then
    for k, v in pairs(base) do
      out[k] = v
    end
  end
  for k, v in pairs(over) do
    if v ~= NULL then
      if type(v) == "table" and type(out[k]) == "table" and not is_sequence(v) then
        out[k] = merge(out[k], v)
      else
        out[k] = v
      end
    end
  end
  return out
end


-- Kong 3.x shorthand_fields: an old field name whose value `func` turns into new fields.
-- Returns a copy of the input with the shorthands replaced, and the set of their names.
local function apply_shorthands(def, input, path, rel, ctx)
  local data = {}
  for k, v in pairs(input) do
    data[k] = v
  end
  local consumed = {}
  for _, item in ipairs(def.shorthand_fields) do
    local sname, sdef = next(item)
    local v = data[sname]
    if v ~= nil then
      data[sname] = nil
      consumed[sname] = true
      if v ~= NULL then
        local spath = path .. "." .. sname
        local nerr = #ctx.errors
        local sv = validate_value(sdef, v, spath, rel .. "." .. sname, ctx)
        if #ctx.errors == nerr then
          local ok, new_values = pcall(sdef.func, sv)
          if not ok then
            add_error(ctx, spath, fmt(MSG.SHORTHAND_RAISED, tostring(new_values)))
          elseif type(new_values) == "table" then
            -- A deprecated shorthand yields to the new field when both are given.
            local yield_to_new = sdef.deprecation ~= nil
            for k, nv in pairs(new_values) do
              local cur = data[k]
              if type(nv) == "table" and type(cur) == "table" then
                data[k] = yield_to_new and merge(nv, cur) or merge(cur, nv)
              elseif not yield_to_new or is_absent(cur) then
                data[k] = nv
              end
            end
          end
        end
      end
    end
  end
  return data, consumed
end


validate_record = function(def, value, path, rel, ctx)
  local c = record_fields(def)
  local input, consumed = value, nil
  if def.shorthand_fields then
    input, consumed = apply_shorthands(def, value, path, rel, ctx)
  end

  local out = {}
  for _, name in ipairs(c.names) do
    local fdef = c.by_name[name]
    local v = input[name]
    local fpath, frel = path .. "." .. name, rel .. "." .. name
    if is_absent(v) then
      out[name] = fill_absent(fdef, fpath, frel, ctx)
    else
      out[name] = validate_value(fdef, v, fpath, frel, ctx)
    end
  end

  local unknown = {}
  for k, v in pairs(input) do
    -- A null under an unknown name is as good as absent (Kong's data planes agree).
    if c.by_name[k] == nil and v ~= NULL and not (consumed and consumed[k]) then
      unknown[#unknown + 1] = k
    end
  end
  for _, k in ipairs(sort_keys(unknown)) do
    add_error(ctx, path .. "." .. tostring(k), MSG.UNKNOWN)
  end

  if def.entity_checks then
    run_entity_checks(def.entity_checks, out, ctx, {
      path = path, rel = rel, def = def,
    })
  end
  return out
end


---------------------------------------------------------------------------------------------
-- Entity checks: cross-field rules on a record (names relative to it) or on the plugin
-- entity (names like "config.minute", Kong's usual place for them)
---------------------------------------------------------------------------------------------

-- A scope says where the checked names live:
--   record scope: { path = full path of the record, rel = its name from the plugin entity,
--                   def = the record definition }
--   entity scope: { path = full path of config, entity = true, config_def = ... }

local function scope_display(scope, name)
  if scope.entity then
    return name
  end
  return scope.rel .. "." .. name
end


-- Full path of a checked name; nil for entity-level names outside `config`.
local function scope_path(scope, name)
  if not scope.entity then
    return scope.path .. "." .. name
  end
  if name == "config" then
    return scope.path
  end
  if sub(name, 1, 7) == "config." then
    return scope.path .. sub(name, 7)
  end
  return nil
end


local function scope_def(scope, name)
  if not scope.entity then
    return field_def_in(scope.def, name)
  end
  if name == "config" then
    return scope.config_def
  end
  if sub(name, 1, 7) == "config." and scope.config_def then
    return field_def_in(scope.config_def, sub(name, 8))
  end
  return nil
end


local function quoted_names(scope, names)
  local q = {}
  for i, name in ipairs(names) do
    q[i] = "'" .. scope_display(scope, name) .. "'"
  end
  return concat(q, ", ")
end


-- Does value (nil when absent) satisfy the partial definition `match` completed by the
-- field's definition? As in Kong, an absent value matches unless the definition requires a
-- value (required, eq, ne = null).
local function value_matches(match, scope, name, value)
  local def = overlay(match, scope_def(scope, name))
  if is_absent(value) then
    return absent_error(def) == nil
  end
  if def.type == nil then
    def = overlay(match, { type = type(value) == "table" and "json" or type(value) })
  end
  local scratch = new_ctx()
  local ok = pcall(validate_value, def, value, "", "", scratch)
  return ok and #scratch.errors == 0
end


local function names_of(arg)
  return arg
end


local CHECKERS = {
  at_least_one_of = {
    invalid_ok = true,
    fields = names_of,
    fn = function(entity, names, scope)
      for _, name in ipairs(names) do
        if is_nonempty(get_dotted(entity, name)) then
          return true
        end
      end
      return nil, fmt(MSG.AT_LEAST_ONE_OF, quoted_names(scope, names))
    end,
  },

  only_one_of = {
    invalid_ok = true,
    fields = names_of,
    fn = function(entity, names, scope)
      local n = 0
      for _, name in ipairs(names) do
        if is_nonempty(get_dotted(entity, name)) then
          n = n + 1
        end
      end
      if n == 1 then
        return true
      end
      return nil, fmt(MSG.ONLY_ONE_OF, quoted_names(scope, names))
    end,
  },

  distinct = {
    invalid_ok = true,
    fields = names_of,
    fn = function(entity, names, scope)
      local seen = {}
      for _, name in ipairs(names) do
        local v = get_dotted(entity, name)
        if is_nonempty(v) then
          if seen[v] then
            return nil, fmt(MSG.DISTINCT, quoted_names(scope, names))
          end
          seen[v] = true
        end
      end
      return true
    end,
  },

  mutually_required = {
    fields = names_of,
    fn = function(entity, names, scope)
      local n = 0
      for _, name in ipairs(names) do
        if is_nonempty(get_dotted(entity, name)) then
          n = n + 1
        end
      end
      if n == 0 or n == #names then
        return true
      end
      return nil, fmt(MSG.MUTUALLY_REQUIRED, quoted_names(scope, names))
    end,
  },

  mutually_exclusive = {
    fields = names_of,
    fn = function(entity, names, scope)
      local n = 0
      for _, name in ipairs(names) do
        if is_nonempty(get_dotted(entity, name)) then
          n = n + 1
        end
      end
      if n <= 1 then
        return true
      end
      return nil, fmt(MSG.MUTUALLY_EXCLUSIVE, quoted_names(scope, names))
    end,
  },

  mutually_exclusive_sets = {
    fields = function(arg)
      local all = {}
      for _, name in ipairs(arg.set1) do
        all[#all + 1] = name
      end
      for _, name in ipairs(arg.set2) do
        all[#all + 1] = name
      end
      return all
    end,
    fn = function(entity, arg, scope)
      local set1, set2 = {}, {}
      for _, name in ipairs(arg.set1) do
        if is_nonempty(get_dotted(entity, name)) then
          set1[#set1 + 1] = name
        end
      end
      for _, name in ipairs(arg.set2) do
        if is_nonempty(get_dotted(entity, name)) then
          set2[#set2 + 1] = name
        end
      end
      if #set1 > 0 and #set2 > 0 then
        return nil, fmt(MSG.MUTUALLY_EXCLUSIVE_SETS, fmt("(%s), (%s)",
                        quoted_names(scope, set1), quoted_names(scope, set2)))
      end
      return true
    end,
  },

  conditional = {
    invalid_ok = true,
    fields = function(arg)
      return { arg.if_field, arg.then_field }
    end,
    fn = function(entity, arg, scope, ctx)
      if not value_matches(arg.if_match, scope, arg.if_field, get_dotted(entity, arg.if_field)) then
        return true
      end
      local then_path = scope_path(scope, arg.then_field)
      if has_error_at(ctx, then_path) then
        return true -- the field's own error says it already
      end
      local if_name = scope_display(scope, arg.if_field)
      local then_err = arg.then_err and fmt(arg.then_err, if_name)
      local then_value = get_dotted(entity, arg.then_field)
      local then_def = overlay(arg.then_match, scope_def(scope, arg.then_field))

      local msg
      if is_absent(then_value) then
        msg = absent_error(then_def)
        if msg then
          add_error(ctx, then_path, msg)
        end
      else
        local nerr = #ctx.errors
        validate_value(then_def, then_value, then_path, scope_display(scope, arg.then_field),
                       ctx)
        msg = #ctx.errors > nerr
      end
      if msg then
        return nil, fmt(MSG.CONDITIONAL, if_name), then_err
      end
      return true
    end,
  },

  conditional_at_least_one_of = {
    invalid_ok = true,
    fields = function(arg)
      local all = { arg.if_field }
      for _, name in ipairs(arg.then_at_least_one_of or {}) do
        all[#all + 1] = name
      end
      for _, name in ipairs(arg.else_then_at_least_one_of or {}) do
        all[#all + 1] = name
      end
      return all
    end,
    fn = function(entity, arg, scope)
      local if_value = get_dotted(entity, arg.if_field)
      local names, custom
      if value_matches(arg.if_match, scope, arg.if_field, if_value) then
        names, custom = arg.then_at_least_one_of, arg.then_err
      elseif arg.else_match ~= nil
             and value_matches(arg.else_match, scope, arg.if_field, if_value) then
        names, custom = arg.else_then_at_least_one_of, arg.else_then_err
      else
        return true
      end
      for _, name in ipairs(names) do
        if is_nonempty(get_dotted(entity, name)) then
          return true
        end
      end
      local list = quoted_names(scope, names)
      return nil, fmt(MSG.CONDITIONAL_AT_LEAST_ONE_OF, list), custom and fmt(custom, list)
    end,
  },

  custom_entity_check = {
    fields = function(arg)
      return arg.field_sources
    end,
    fn = function(entity, arg, scope)
      -- Like Kong, the function sees only the fields it asked for.
      local projection = {}
      for _, name in ipairs(arg.field_sources) do
        set_dotted(projection, name, get_dotted(entity, name))
      end
      local pok, ok, err = pcall(arg.fn, projection)
      if not pok then
        return nil, fmt(MSG.ENTITY_CHECK, "custom_entity_check", tostring(ok))
      end
      if ok then
        return true
      end
      if err == nil then
        return nil, fmt(MSG.ENTITY_CHECK, "custom_entity_check",
                        quoted_names(scope, arg.field_sources))
      end
      return nil, tostring(err)
    end,
  },
}


run_entity_checks = function(checks, entity, ctx, scope)
  for _, check in ipairs(checks) do
    local name, arg = next(check)
    local checker = CHECKERS[name]
    if not checker then
      error(fmt("schema: unknown entity check '%s' (run check_schema first)", tostring(name)), 0)
    end
    if arg ~= NULL then
      local names = checker.fields(arg)
      local applies = true
      for _, fname in ipairs(names) do
        local p = scope_path(scope, fname)
        if not p then
          -- A check on entity fields other than config (protocols, consumer...) is not
          -- moongate's to run here.
          applies = false
          break
        end
        if not (checker.invalid_ok or arg.run_with_invalid_fields) and has_error_at(ctx, p) then
          applies = false
          break
        end
      end
      if applies then
        local ok, msg, custom = checker.fn(entity, arg, scope, ctx)
        if not ok then
          add_error(ctx, scope.path, custom or msg)
        end
      end
    end
  end
end


---------------------------------------------------------------------------------------------
-- Public API: validation
---------------------------------------------------------------------------------------------

local function find_top_field(schema, name)
  for _, item in ipairs(schema.fields) do
    if type(item) == "table" then
      local k, v = next(item)
      if k == name then
        return v
      end
    end
  end
  return nil
end


--- Validates a plugin entity's config and fills its defaults.
-- @param schema the table returned by the plugin's schema.lua (checked by check_schema)
-- @param config the config as decoded from YAML/JSON (nil or null: an empty config)
-- @param path prefix of the error paths, e.g. "services[0].plugins[1].config"
-- @return a new table with defaults filled (the input is left untouched), or nil and an
-- array of "PATH: message" strings, in schema order: each field (nested fields and elements
-- included), then unknown fields by name, then the record's entity checks.
function _M.validate_plugin_config(schema, config, path)
  if type(schema) ~= "table" or type(schema.fields) ~= "table" then
    error("schema must be a plugin schema table", 2)
  end
  if path ~= nil and type(path) ~= "string" then
    error("path must be a string", 2)
  end
  path = path or "config"

  local ctx = new_ctx()
  local config_def = find_top_field(schema, "config")
  local out

  if config_def then
    if type(config_def) ~= "table" or config_def.type ~= "record" then
      error("schema: the config field must be a record (run check_schema first)", 2)
    end
    -- Kong's plugin entity requires config: an absent one is expanded with its defaults.
    out = validate_value(config_def, is_absent(config) and {} or config, path, "config", ctx)

  else
    out = {}
    if not is_absent(config) then
      if type(config) ~= "table" or (next(config) ~= nil and is_sequence(config)) then
        add_error(ctx, path, MSG.RECORD)
      else
        local unknown = {}
        for k, v in pairs(config) do
          if v ~= NULL then
            unknown[#unknown + 1] = k
          end
        end
        for _, k in ipairs(sort_keys(unknown)) do
          add_error(ctx, path .. "." .. tostring(k), MSG.UNKNOWN)
        end
      end
    end
  end

  if schema.entity_checks and type(out) == "table" then
    run_entity_checks(schema.entity_checks, { config = out }, ctx, {
      path = path, entity = true, config_def = config_def,
    })
  end

  if #ctx.errors > 0 then
    return nil, ctx.errors
  end
  return out
end


---------------------------------------------------------------------------------------------
-- Public API: schema checks (Kong's metaschema, reduced to what a plugin schema uses)
---------------------------------------------------------------------------------------------

-- Attributes a field definition may carry: Kong's metaschema list, plus the ones Kong
-- plugins use for documentation and deprecation.
local KNOWN_ATTRS = {
  type = true, required = true, default = true, description = true, examples = true,
  err = true, reference = true, auto = true, unique = true, unique_across_ws = true,
  on_delete = true, abstract = true, generate_admin_api = true, immutable = true,
  encrypted = true, referenceable = true, json_schema = true, legacy = true,
  nilable = true, deprecation = true,
  elements = true, keys = true, values = true, fields = true,
  entity_checks = true, shorthand_fields = true,
}
for name in pairs(VALIDATORS) do
  KNOWN_ATTRS[name] = true
end

-- Which types an attribute applies to (Kong's metaschema, extended to every validator that
-- would otherwise fail on a value of the wrong Lua type).
local STRING_ONLY = { string = true }
local NUMERIC = { integer = true, number = true }
local SIZED = { string = true, array = true, set = true, map = true }
local ATTR_TYPES = {
  between = NUMERIC, gt = NUMERIC, timestamp = NUMERIC,
  len_eq = SIZED, len_min = SIZED, len_max = SIZED,
  match = STRING_ONLY, not_match = STRING_ONLY, match_all = STRING_ONLY,
  match_none = STRING_ONLY, match_any = STRING_ONLY, starts_with = STRING_ONLY,
  is_regex = STRING_ONLY, uuid = STRING_ONLY,
  one_of = { string = true, integer = true, number = true },
  not_one_of = { string = true, integer = true, number = true },
  contains = { array = true, set = true },
  mutually_exclusive_subsets = { array = true, set = true },
  elements = { array = true, set = true },
  keys = { map = true }, values = { map = true },
  fields = { record = true }, entity_checks = { record = true },
  shorthand_fields = { record = true },
  json_schema = { json = true },
}

local REQUIRED_ATTRS = {
  array = { "elements" }, set = { "elements" }, map = { "keys", "values" },
  record = { "fields" },
}

local LIST_CHECKS = {
  at_least_one_of = true, only_one_of = true, distinct = true,
  mutually_required = true, mutually_exclusive = true,
}


local function is_string_list(v)
  if type(v) ~= "table" or not is_sequence(v) or #v == 0 then
    return false
  end
  for i = 1, #v do
    if type(v[i]) ~= "string" then
      return false
    end
  end
  return true
end


local function pattern_error(pattern)
  local ok, err = pcall(find, "", pattern)
  if ok then
    return nil
  end
  return (tostring(err):gsub("^.-:%d+: ", ""))
end


local check_field

-- fields: an array of { name = definition } tables. Returns the well-formed entries.
local function check_fields_list(fields, where, bad, list_name)
  list_name = list_name or "fields"
  local label = where and (where .. ": " .. list_name) or list_name
  if type(fields) ~= "table" then
    bad(where, fmt("'%s' must be a table", list_name))
    return {}
  end
  local entries, seen = {}, {}
  local n = 0
  for _ in pairs(fields) do
    n = n + 1
  end
  if n ~= #fields then
    bad(where, fmt("'%s' must be an array of { name = definition } tables", list_name))
  end
  for i = 1, #fields do
    local item = fields[i]
    local ok = type(item) == "table"
    local k, v
    if ok then
      k, v = next(item)
      ok = k ~= nil and next(item, k) == nil
    end
    if not ok then
      bad(nil, fmt("%s entry #%d must be a table with exactly one key (name = definition)",
                   label, i))
    elseif type(k) ~= "string" then
      bad(nil, fmt("%s entry #%d: field names must be strings", label, i))
    elseif type(v) ~= "table" then
      bad(where and (where .. "." .. k) or k, "definition must be a table")
    elseif seen[k] then
      bad(where and (where .. "." .. k) or k, "duplicate field")
    else
      seen[k] = true
      entries[#entries + 1] = { name = k, def = v }
    end
  end
  return entries
end


-- A partial definition in an entity check (if_match, then_match...).
local function check_partial(partial, where, what, bad)
  if type(partial) ~= "table" then
    bad(where, what .. " must be a table")
    return
  end
  for k in pairs(partial) do
    if not KNOWN_ATTRS[k] then
      bad(where, fmt("%s: unknown attribute '%s'", what, tostring(k)))
    end
  end
  for _, attr in ipairs({ "match", "not_match" }) do
    if type(partial[attr]) == "string" then
      local perr = pattern_error(partial[attr])
      if perr then
        bad(where, fmt("%s: '%s' is not a valid Lua pattern: %s", what, attr, perr))
      end
    end
  end
end


-- resolve(name) -> true when the name designates a field in scope.
local function check_entity_checks(checks, resolve, where, bad)
  if type(checks) ~= "table" or not is_sequence(checks) then
    bad(where, "'entity_checks' must be an array")
    return
  end
  for i, check in ipairs(checks) do
    local label = fmt("entity_checks entry #%d", i)
    local name, arg
    if type(check) == "table" then
      name, arg = next(check)
    end
    if name == nil or next(check, name) ~= nil then
      bad(where, label .. " must be a table with exactly one key (check = argument)")
    elseif not CHECKERS[name] then
      bad(where, fmt("%s: unknown entity check '%s'", label, tostring(name)))
    else
      label = fmt("%s (%s)", label, name)
      local function need_field(fname, what)
        if type(fname) ~= "string" then
          bad(where, fmt("%s: '%s' must be a field name", label, what))
        elseif not resolve(fname) then
          bad(where, fmt("%s: unknown field '%s'", label, fname))
        end
      end
      local function need_fields(list, what)
        if not is_string_list(list) then
          bad(where, fmt("%s: '%s' must be a non-empty array of field names", label, what))
          return
        end
        for _, fname in ipairs(list) do
          need_field(fname, what)
        end
      end

      if LIST_CHECKS[name] then
        need_fields(arg, "argument")
      elseif type(arg) ~= "table" then
        bad(where, fmt("%s: argument must be a table", label))
      elseif name == "conditional" then
        need_field(arg.if_field, "if_field")
        need_field(arg.then_field, "then_field")
        check_partial(arg.if_match, where, label .. ": if_match", bad)
        check_partial(arg.then_match, where, label .. ": then_match", bad)
      elseif name == "conditional_at_least_one_of" then
        need_field(arg.if_field, "if_field")
        check_partial(arg.if_match, where, label .. ": if_match", bad)
        need_fields(arg.then_at_least_one_of, "then_at_least_one_of")
        if arg.else_match ~= nil then
          check_partial(arg.else_match, where, label .. ": else_match", bad)
          need_fields(arg.else_then_at_least_one_of, "else_then_at_least_one_of")
        end
      elseif name == "custom_entity_check" then
        need_fields(arg.field_sources, "field_sources")
        if type(arg.fn) ~= "function" then
          bad(where, fmt("%s: 'fn' must be a function", label))
        end
      elseif name == "mutually_exclusive_sets" then
        need_fields(arg.set1, "set1")
        need_fields(arg.set2, "set2")
      end
    end
  end
end


local function check_validator_args(def, where, bad)
  local b = def.between
  if b ~= nil and not (type(b) == "table" and #b == 2 and type(b[1]) == "number"
                       and type(b[2]) == "number" and b[1] <= b[2]) then
    bad(where, "'between' must be { min, max } with min <= max")
  end
  if def.gt ~= nil and type(def.gt) ~= "number" then
    bad(where, "'gt' must be a number")
  end
  for _, attr in ipairs({ "len_eq", "len_min", "len_max" }) do
    local n = def[attr]
    if n ~= nil and not (type(n) == "number" and n >= 0 and n == floor(n)) then
      bad(where, fmt("'%s' must be a non-negative integer", attr))
    end
  end
  for _, attr in ipairs({ "one_of", "not_one_of" }) do
    local v = def[attr]
    if v ~= nil and not (type(v) == "table" and #v > 0 and is_sequence(v)) then
      bad(where, fmt("'%s' must be a non-empty array", attr))
    end
  end
  for _, attr in ipairs({ "match", "not_match", "starts_with" }) do
    local v = def[attr]
    if v ~= nil then
      if type(v) ~= "string" then
        bad(where, fmt("'%s' must be a string", attr))
      elseif attr ~= "starts_with" then
        local perr = pattern_error(v)
        if perr then
          bad(where, fmt("'%s' is not a valid Lua pattern: %s", attr, perr))
        end
      end
    end
  end
  for _, attr in ipairs({ "match_all", "match_none" }) do
    local v = def[attr]
    if v ~= nil then
      local ok = type(v) == "table" and is_sequence(v)
      if ok then
        for _, item in ipairs(v) do
          if type(item) ~= "table" or type(item.pattern) ~= "string"
             or pattern_error(item.pattern) or (item.err ~= nil and type(item.err) ~= "string")
          then
            ok = false
          end
        end
      end
      if not ok then
        bad(where, fmt("'%s' must be an array of { pattern = <Lua pattern>, err = <string> }",
                       attr))
      end
    end
  end
  local ma = def.match_any
  if ma ~= nil then
    local ok = type(ma) == "table" and is_string_list(ma.patterns)
    if ok then
      for _, p in ipairs(ma.patterns) do
        if pattern_error(p) then
          ok = false
        end
      end
    end
    if not ok then
      bad(where, "'match_any' must be { patterns = { <Lua pattern>, ... }, err = <string> }")
    end
  end
  if def.custom_validator ~= nil and type(def.custom_validator) ~= "function" then
    bad(where, "'custom_validator' must be a function")
  end
  for _, attr in ipairs({ "required", "uuid", "timestamp", "is_regex" }) do
    if def[attr] ~= nil and type(def[attr]) ~= "boolean" then
      bad(where, fmt("'%s' must be a boolean", attr))
    end
  end
  if def.err ~= nil and type(def.err) ~= "string" then
    bad(where, "'err' must be a string")
  end
  local mes = def.mutually_exclusive_subsets
  if mes ~= nil then
    local ok = type(mes) == "table" and is_sequence(mes)
    if ok then
      for _, s in ipairs(mes) do
        if type(s) ~= "table" or not is_sequence(s) then
          ok = false
        end
      end
    end
    if not ok then
      bad(where, "'mutually_exclusive_subsets' must be an array of arrays")
    end
  end
end


-- Checks one field definition; `where` is its path from the plugin entity.
check_field = function(def, where, bad, counter, shorthand)
  if type(def) ~= "table" then
    bad(where, "definition must be a table")
    return
  end
  local t = def.type
  if t == nil then
    bad(where, "missing type declaration")
    return
  end
  if type(t) ~= "string" or not VALID_TYPES[t] then
    bad(where, fmt("unknown type '%s'", tostring(t)))
    return
  end

  local before = counter()

  for attr in pairs(def) do
    local known = KNOWN_ATTRS[attr]
                  or (shorthand and (attr == "func" or attr == "translate_backwards"))
    if not known then
      bad(where, fmt("unknown attribute '%s'", tostring(attr)))
    elseif ATTR_TYPES[attr] and not ATTR_TYPES[attr][t] then
      bad(where, fmt("field of type '%s' cannot have attribute '%s'", t, attr))
    end
  end
  for _, attr in ipairs(REQUIRED_ATTRS[t] or {}) do
    if def[attr] == nil then
      bad(where, fmt("field of type '%s' must declare '%s'", t, attr))
    elseif type(def[attr]) ~= "table" then
      bad(where, fmt("'%s' must be a table", attr))
    end
  end
  check_validator_args(def, where, bad)

  if t == "array" or t == "set" then
    if type(def.elements) == "table" then
      check_field(def.elements, where .. ".elements", bad, counter)
    end
  elseif t == "map" then
    if type(def.keys) == "table" then
      check_field(def.keys, where .. ".keys", bad, counter)
    end
    if type(def.values) == "table" then
      check_field(def.values, where .. ".values", bad, counter)
    end
  elseif t == "record" and type(def.fields) == "table" then
    local entries = check_fields_list(def.fields, where, bad)
    local names = {}
    for _, e in ipairs(entries) do
      names[e.name] = true
      check_field(e.def, where .. "." .. e.name, bad, counter)
    end
    if def.shorthand_fields ~= nil then
      local sentries = check_fields_list(def.shorthand_fields, where, bad,
                                         "shorthand_fields")
      for _, e in ipairs(sentries) do
        local swhere = where .. "." .. e.name
        if names[e.name] then
          bad(swhere, "a shorthand field cannot have the name of a field")
        elseif e.def.type == "record" or e.def.type == "foreign"
               or e.def.type == "function" then
          bad(swhere, fmt("a shorthand field cannot be of type '%s'", tostring(e.def.type)))
        else
          check_field(e.def, swhere, bad, counter, true)
          if type(e.def.func) ~= "function" then
            bad(swhere, "a shorthand field must declare 'func' (a function)")
          end
        end
      end
    end
    if def.entity_checks ~= nil and counter() == before then
      check_entity_checks(def.entity_checks, function(name)
        return field_def_in(def, name) ~= nil
      end, where, bad)
    end
  end

  -- Kong's metaschema validates a default against its own field.
  local default = def.default
  if default ~= nil and default ~= NULL and counter() == before then
    local scratch = new_ctx()
    local ok, err = pcall(validate_value, def, deep_copy(default), "default", where, scratch)
    if not ok then
      bad(where, "invalid default: " .. tostring(err))
    else
      for _, e in ipairs(scratch.errors) do
        bad(where, "invalid default: " .. (e:gsub("^default: ", "")))
      end
    end
  end
end


--- Checks that a plugin's schema is well formed, so that a broken schema.lua is a clear
-- startup error naming the plugin rather than a failure while validating configs.
-- @param schema the table returned by the plugin's schema.lua
-- @param name the plugin's name
-- @return true, or nil and one message listing every problem
function _M.check_schema(schema, name)
  if name ~= nil and type(name) ~= "string" then
    error("plugin name must be a string", 2)
  end
  local label = name or (type(schema) == "table" and type(schema.name) == "string"
                         and schema.name) or "?"
  if type(schema) ~= "table" then
    return nil, fmt('plugin "%s" has an invalid schema: expected a table, got %s',
                    label, type(schema))
  end

  local problems = {}
  local function bad(where, msg)
    problems[#problems + 1] = where and (where .. ": " .. msg) or msg
  end
  local function counter()
    return #problems
  end

  if type(schema.name) ~= "string" then
    bad(nil, "'name' must be a string")
  elseif name and schema.name ~= name then
    bad(nil, fmt("name '%s' does not match the plugin name '%s'", schema.name, name))
  end

  local top = {}
  if schema.fields == nil then
    bad(nil, "'fields' must be a table")
  else
    for _, e in ipairs(check_fields_list(schema.fields, nil, bad)) do
      top[e.name] = e.def
      if e.name == "config" then
        if e.def.type ~= "record" then
          bad("config", "must be a record (type = \"record\")")
        else
          check_field(e.def, "config", bad, counter)
        end
      elseif type(e.def.type) ~= "string" or not VALID_TYPES[e.def.type] then
        -- protocols, consumer, route, service...: moongate does not validate them here, but
        -- they must still be field definitions.
        bad(e.name, fmt("unknown type '%s'", tostring(e.def.type)))
      end
    end
  end

  if schema.entity_checks ~= nil then
    check_entity_checks(schema.entity_checks, function(fname)
      local head = split_dots(fname)[1]
      local def = top[head]
      if def == nil then
        return false
      end
      if head == fname then
        return true
      end
      if head ~= "config" then
        return true -- foreign keys and the like: trusted, as Kong's metaschema does
      end
      return def.type == "record" and type(def.fields) == "table"
             and field_def_in(def, sub(fname, 8)) ~= nil
    end, nil, bad)
  end

  if #problems > 0 then
    return nil, fmt('plugin "%s" has an invalid schema: %s', label, concat(problems, "; "))
  end
  return true
end


return _M
