-- moongate.schema alone: plugin config validation against Kong-3.x-shaped schemas (types,
-- attributes, defaults, paths, message wording, entity checks, shorthand fields) and the
-- checks on the schemas themselves.

local schema_mod = require "moongate.schema"
local cjson = require "cjson.safe"

local validate = schema_mod.validate_plugin_config
local check_schema = schema_mod.check_schema
local null = cjson.null

-- A plugin schema whose config record has the given fields (and record-level options).
local function plugin(fields, opts)
  opts = opts or {}
  local config = { type = "record", fields = fields }
  for k, v in pairs(opts.config or {}) do
    config[k] = v
  end
  return {
    name = opts.name or "test-plugin",
    fields = {
      { protocols = { type = "set", elements = { type = "string" },
                      default = { "http", "https" } } },
      { config = config },
    },
    entity_checks = opts.entity_checks,
  }
end

-- The errors for config under schema s (fails the test when it validates).
local function errors_of(s, config, path)
  local out, errs = validate(s, config, path)
  assert.is_nil(out)
  assert.is_table(errs)
  return errs
end

-- The single error for a one-field schema { f = def } given value v.
local function field_error(def, v)
  local errs = errors_of(plugin({ { f = def } }), { f = v })
  assert.equal(1, #errs, table.concat(errs, "\n"))
  return errs[1]
end

local function ok_value(def, v)
  local out, errs = validate(plugin({ { f = def } }), { f = v })
  assert.is_nil(errs, errs and table.concat(errs, "\n"))
  return out.f
end


describe("moongate.schema", function()

  describe("validate_plugin_config types", function()

    it("accepts booleans and refuses anything else with 'expected a boolean'", function()
      assert.is_true(ok_value({ type = "boolean" }, true))
      assert.is_false(ok_value({ type = "boolean" }, false))
      assert.equal("config.f: expected a boolean", field_error({ type = "boolean" }, "true"))
      assert.equal("config.f: expected a boolean", field_error({ type = "boolean" }, 1))
    end)

    it("accepts whole numbers as integers", function()
      assert.equal(5, ok_value({ type = "integer" }, 5))
      assert.equal(-3, ok_value({ type = "integer" }, -3))
      assert.equal(0, ok_value({ type = "integer" }, 0))
      assert.equal(2, ok_value({ type = "integer" }, 2.0))
    end)

    it("refuses fractions, strings and infinities as integers", function()
      assert.equal("config.f: expected an integer", field_error({ type = "integer" }, 1.5))
      assert.equal("config.f: expected an integer", field_error({ type = "integer" }, "5"))
      assert.equal("config.f: expected an integer", field_error({ type = "integer" }, math.huge))
      assert.equal("config.f: expected an integer", field_error({ type = "integer" }, true))
    end)

    it("accepts integers and floats as numbers", function()
      assert.equal(1.5, ok_value({ type = "number" }, 1.5))
      assert.equal(7, ok_value({ type = "number" }, 7))
    end)

    it("refuses a numeric string and NaN as a number", function()
      assert.equal("config.f: expected a number", field_error({ type = "number" }, "5"))
      assert.equal("config.f: expected a number", field_error({ type = "number" }, 0 / 0))
      assert.equal("config.f: expected a number", field_error({ type = "number" }, {}))
    end)

    it("accepts strings and refuses other values with 'expected a string'", function()
      assert.equal("abc", ok_value({ type = "string" }, "abc"))
      assert.equal("config.f: expected a string", field_error({ type = "string" }, 5))
      assert.equal("config.f: expected a string", field_error({ type = "string" }, { "a" }))
    end)

    it("refuses an empty string unless len_min allows it (Kong)", function()
      assert.equal("config.f: length must be at least 1", field_error({ type = "string" }, ""))
      assert.equal("", ok_value({ type = "string", len_min = 0 }, ""))
    end)

    it("validates arrays element by element with 0-based paths", function()
      local def = { type = "array", elements = { type = "string" } }
      assert.same({ "a", "b" }, ok_value(def, { "a", "b" }))
      assert.same({}, ok_value(def, {}))
      local errs = errors_of(plugin({ { f = def } }), { f = { "a", 2, "c", false } })
      assert.same({
        "config.f[1]: expected a string",
        "config.f[3]: expected a string",
      }, errs)
    end)

    it("refuses a map or a scalar where an array is expected", function()
      local def = { type = "array", elements = { type = "string" } }
      assert.equal("config.f: expected an array", field_error(def, { a = "x" }))
      assert.equal("config.f: expected an array", field_error(def, "a"))
      assert.equal("config.f: expected an array", field_error(def, { "a", x = "b" }))
    end)

    it("refuses a null element of an array as a missing value", function()
      local def = { type = "array", elements = { type = "string" } }
      assert.equal("config.f[1]: required field missing", field_error(def, { "a", null }))
    end)

    it("validates arrays of arrays with nested paths", function()
      local def = { type = "array", elements = { type = "array", elements = { type = "integer" } } }
      assert.equal("config.f[1][0]: expected an integer", field_error(def, { { 1 }, { "x" } }))
    end)

    it("removes duplicates from a set, keeping the first occurrence (Kong)", function()
      local def = { type = "set", elements = { type = "string" } }
      assert.same({ "b", "a", "c" }, ok_value(def, { "b", "a", "b", "c", "a" }))
    end)

    it("refuses a non-list set with 'expected a set' and checks its elements", function()
      local def = { type = "set", elements = { type = "integer" } }
      assert.equal("config.f: expected a set", field_error(def, { a = 1 }))
      assert.equal("config.f[2]: expected an integer", field_error(def, { 1, 2, "x" }))
    end)

    it("validates map keys and values, naming the key in the path", function()
      local def = { type = "map", keys = { type = "string" }, values = { type = "integer" } }
      assert.same({ ["x-a"] = 1, ["x-b"] = 2 }, ok_value(def, { ["x-a"] = 1, ["x-b"] = 2 }))
      assert.same({}, ok_value(def, {}))
      local errs = errors_of(plugin({ { headers = def } }),
                             { headers = { ["x-foo"] = "1", ["x-bar"] = 2, ["x-baz"] = 1.5 } })
      assert.same({
        "config.headers.x-baz: expected an integer",
        "config.headers.x-foo: expected an integer",
      }, errs)
    end)

    it("validates map keys against their definition", function()
      local def = { type = "map", keys = { type = "string", match = "^x%-" },
                    values = { type = "string" } }
      assert.equal("config.f.y-a: invalid value: y-a", field_error(def, { ["y-a"] = "v" }))
    end)

    it("refuses a list or a scalar where a map is expected", function()
      local def = { type = "map", keys = { type = "string" }, values = { type = "string" } }
      assert.equal("config.f: expected a map", field_error(def, { "a", "b" }))
      assert.equal("config.f: expected a map", field_error(def, "a=b"))
    end)

    it("refuses a null map value as a missing value", function()
      local def = { type = "map", keys = { type = "string" }, values = { type = "string" } }
      assert.equal("config.f.k: required field missing", field_error(def, { k = null }))
    end)

    it("validates nested records with dotted paths", function()
      local def = { type = "record", fields = {
        { host = { type = "string" } },
        { port = { type = "integer" } },
      } }
      assert.same({ host = "h", port = 1 }, ok_value(def, { host = "h", port = 1 }))
      local errs = errors_of(plugin({ { redis = def } }),
                             { redis = { host = 1, port = "p", db = 0 } })
      assert.same({
        "config.redis.host: expected a string",
        "config.redis.port: expected an integer",
        "config.redis.db: unknown field",
      }, errs)
    end)

    it("refuses a list or a scalar where a record is expected", function()
      local def = { type = "record", fields = { { a = { type = "string" } } } }
      assert.equal("config.f: expected a record", field_error(def, { "a" }))
      assert.equal("config.f: expected a record", field_error(def, "a"))
      assert.same({}, ok_value(def, {}))
    end)

    it("validates records inside arrays and fills their defaults", function()
      local def = { type = "array", elements = { type = "record", fields = {
        { name = { type = "string", required = true } },
        { weight = { type = "integer", default = 100 } },
      } } }
      assert.same({ { name = "a", weight = 100 }, { name = "b", weight = 5 } },
                  ok_value(def, { { name = "a" }, { name = "b", weight = 5 } }))
      assert.equal("config.f[1].name: required field missing", field_error(def, { { name = "a" }, {} }))
    end)

    it("fills defaults inside map values that are records", function()
      local def = { type = "map", keys = { type = "string" }, values = { type = "record", fields = {
        { limit = { type = "integer", default = 10 } },
      } } }
      assert.same({ a = { limit = 10 } }, ok_value(def, { a = {} }))
    end)

    it("keeps json and foreign values as written, in a copy", function()
      local v = { a = { 1, 2 } }
      local out = ok_value({ type = "json" }, v)
      assert.same(v, out)
      assert.not_equal(v, out)
      assert.same({ id = "x" }, ok_value({ type = "foreign", reference = "consumers" }, { id = "x" }))
    end)
  end)


  describe("validate_plugin_config attributes", function()

    it("reports 'required field missing' for an absent required field", function()
      assert.same({ "config.f: required field missing" },
                  errors_of(plugin({ { f = { type = "string", required = true } } }), {}))
    end)

    it("does not report a required field that has a default", function()
      local out = validate(plugin({ { f = { type = "string", required = true, default = "d" } } }), {})
      assert.same({ f = "d" }, out)
    end)

    it("leaves an absent optional field without default out of the result", function()
      local out = validate(plugin({ { f = { type = "string" } } }), {})
      assert.same({}, out)
    end)

    it("fills defaults of every type", function()
      local out = validate(plugin({
        { b = { type = "boolean", default = false } },
        { i = { type = "integer", default = 60 } },
        { n = { type = "number", default = 0.5 } },
        { s = { type = "string", default = "local" } },
        { a = { type = "array", elements = { type = "string" }, default = { "apikey" } } },
        { m = { type = "map", keys = { type = "string" }, values = { type = "string" },
                default = { k = "v" } } },
      }), {})
      assert.same({ b = false, i = 60, n = 0.5, s = "local", a = { "apikey" }, m = { k = "v" } }, out)
    end)

    it("does not replace a given value by the default", function()
      local out = validate(plugin({ { b = { type = "boolean", default = true } } }), { b = false })
      assert.same({ b = false }, out)
    end)

    it("fills defaults as copies: changing one result changes neither the schema nor the next", function()
      local s = plugin({
        { a = { type = "array", elements = { type = "string" }, default = { "apikey" } } },
        { r = { type = "record", default = { t = { 1 } }, fields = {
          { t = { type = "array", elements = { type = "integer" } } },
        } } },
      })
      local first = validate(s, {})
      table.insert(first.a, "mutated")
      first.r.t[1] = 99
      local second = validate(s, {})
      assert.same({ "apikey" }, second.a)
      assert.same({ t = { 1 } }, second.r)
      assert.not_equal(first.a, second.a)
    end)

    it("returns a new table and leaves the input untouched", function()
      local s = plugin({
        { a = { type = "set", elements = { type = "string" } } },
        { r = { type = "record", fields = { { x = { type = "integer", default = 1 } } } } },
        { d = { type = "string", default = "x" } },
      })
      local input = { a = { "x", "x" }, r = {} }
      local out = validate(s, input)
      assert.same({ a = { "x", "x" }, r = {} }, input)
      assert.same({ a = { "x" }, r = { x = 1 }, d = "x" }, out)
      assert.not_equal(input, out)
      assert.not_equal(input.r, out.r)
    end)

    it("expands an absent required record with its nested defaults (Kong)", function()
      local out = validate(plugin({
        { redis = { type = "record", required = true, fields = {
          { host = { type = "string" } },
          { port = { type = "integer", default = 6379 } },
          { ssl = { type = "record", required = true, fields = {
            { verify = { type = "boolean", default = false } },
          } } },
        } } },
      }), {})
      assert.same({ redis = { port = 6379, ssl = { verify = false } } }, out)
    end)

    it("reports nested required fields of an expanded required record", function()
      assert.same({ "config.redis.host: required field missing" }, errors_of(plugin({
        { redis = { type = "record", required = true, fields = {
          { host = { type = "string", required = true } },
        } } },
      }), {}))
    end)

    it("leaves an absent optional record without default absent (Kong)", function()
      local out = validate(plugin({
        { redis = { type = "record", fields = { { port = { type = "integer", default = 1 } } } } },
      }), {})
      assert.same({}, out)
    end)

    it("fills nested defaults inside a record's default", function()
      local out = validate(plugin({
        { r = { type = "record", default = { a = 1 }, fields = {
          { a = { type = "integer" } },
          { b = { type = "string", default = "bee" } },
        } } },
      }), {})
      assert.same({ r = { a = 1, b = "bee" } }, out)
    end)

    it("fills nested defaults inside a given record", function()
      local out = validate(plugin({
        { r = { type = "record", fields = {
          { a = { type = "integer" } },
          { b = { type = "string", default = "bee" } },
        } } },
      }), { r = { a = 2 } })
      assert.same({ r = { a = 2, b = "bee" } }, out)
    end)

    describe("null", function()
      it("is absent: the default applies", function()
        local out = validate(plugin({ { f = { type = "integer", default = 3 } } }), { f = null })
        assert.same({ f = 3 }, out)
      end)

      it("is absent: a required field is missing", function()
        assert.same({ "config.f: required field missing" },
                    errors_of(plugin({ { f = { type = "integer", required = true } } }), { f = null }))
      end)

      it("is absent: an optional field is left out", function()
        local out = validate(plugin({ { f = { type = "integer" } } }), { f = null })
        assert.same({}, out)
      end)

      it("is absent under an unknown name too", function()
        local out = validate(plugin({ { f = { type = "integer" } } }), { typo = null })
        assert.same({}, out)
      end)

      it("as the whole config stands for an empty config", function()
        local s = plugin({ { f = { type = "integer", default = 3 } } })
        assert.same({ f = 3 }, validate(s, null))
        assert.same({ f = 3 }, validate(s, nil))
      end)
    end)

    it("checks one_of with Kong's message", function()
      local def = { type = "string", one_of = { "local", "cluster", "redis" } }
      assert.equal("redis", ok_value(def, "redis"))
      assert.equal("config.f: expected one of: local, cluster, redis", field_error(def, "memcached"))
      assert.equal("config.f: expected one of: 1, 2", field_error({ type = "integer", one_of = { 1, 2 } }, 3))
    end)

    it("checks not_one_of", function()
      local def = { type = "string", not_one_of = { "host", "connection" } }
      assert.equal("x-a", ok_value(def, "x-a"))
      assert.equal("config.f: must not be one of: host, connection", field_error(def, "host"))
    end)

    it("checks between, inclusive, with Kong's message", function()
      local def = { type = "integer", between = { 1, 10 } }
      assert.equal(1, ok_value(def, 1))
      assert.equal(10, ok_value(def, 10))
      assert.equal("config.f: value should be between 1 and 10", field_error(def, 0))
      assert.equal("config.f: value should be between 1 and 10", field_error(def, 11))
      assert.equal("config.f: value should be between 0.5 and 1.5",
                   field_error({ type = "number", between = { 0.5, 1.5 } }, 2))
    end)

    it("checks gt with Kong's message", function()
      local def = { type = "number", gt = 0 }
      assert.equal(0.1, ok_value(def, 0.1))
      assert.equal("config.f: value must be greater than 0", field_error(def, 0))
      assert.equal("config.f: value must be greater than 0", field_error(def, -1))
    end)

    it("checks len_min, len_max and len_eq on strings", function()
      assert.equal("config.f: length must be at least 3", field_error({ type = "string", len_min = 3 }, "ab"))
      assert.equal("config.f: length must be at most 3", field_error({ type = "string", len_max = 3 }, "abcd"))
      assert.equal("config.f: length must be 2", field_error({ type = "string", len_eq = 2 }, "abc"))
      assert.equal("abc", ok_value({ type = "string", len_min = 3, len_max = 3 }, "abc"))
    end)

    it("checks lengths of arrays and maps", function()
      local arr = { type = "array", elements = { type = "string" }, len_min = 1 }
      assert.equal("config.f: length must be at least 1", field_error(arr, {}))
      local map = { type = "map", keys = { type = "string" }, values = { type = "string" }, len_max = 1 }
      assert.equal("config.f: length must be at most 1", field_error(map, { a = "1", b = "2" }))
      assert.same({ a = "1" }, ok_value(map, { a = "1" }))
    end)

    it("checks the length of a set after removing duplicates", function()
      local def = { type = "set", elements = { type = "string" }, len_max = 1 }
      assert.same({ "a" }, ok_value(def, { "a", "a" }))
    end)

    it("checks match and not_match (Lua patterns) with Kong's message", function()
      local def = { type = "string", match = "^/" }
      assert.equal("/x", ok_value(def, "/x"))
      assert.equal("config.f: invalid value: x", field_error(def, "x"))
      assert.equal("config.f: invalid value: a b", field_error({ type = "string", not_match = "%s" }, "a b"))
    end)

    it("checks starts_with", function()
      local def = { type = "string", starts_with = "http" }
      assert.equal("https://x", ok_value(def, "https://x"))
      assert.equal("config.f: should start with: http", field_error(def, "ftp://x"))
    end)

    it("checks match_all, match_none and match_any with their own messages", function()
      local all = { type = "string", match_all = {
        { pattern = "^%l", err = "must start with a lowercase letter" },
        { pattern = "%d$", err = "must end with a digit" },
      } }
      assert.equal("a1", ok_value(all, "a1"))
      assert.equal("config.f: must end with a digit", field_error(all, "ab"))
      local none = { type = "string", match_none = { { pattern = "%.%.", err = "no '..'" } } }
      assert.equal("config.f: no '..'", field_error(none, "a..b"))
      local any = { type = "string", match_any = { patterns = { "^/", "^~" }, err = "bad path" } }
      assert.equal("~x", ok_value(any, "~x"))
      assert.equal("config.f: bad path", field_error(any, "x"))
    end)

    it("checks uuid", function()
      local def = { type = "string", uuid = true }
      assert.equal("4fd0b2a2-2fda-4c1e-9f3a-3b0b8a7a9c11",
                   ok_value(def, "4fd0b2a2-2fda-4c1e-9f3a-3b0b8a7a9c11"))
      assert.equal("config.f: expected a valid UUID", field_error(def, "not-a-uuid"))
    end)

    it("checks eq and ne", function()
      assert.equal("config.f: value must be true", field_error({ type = "boolean", eq = true }, false))
      assert.equal("config.f: value must not be 0", field_error({ type = "integer", ne = 0 }, 0))
    end)

    it("checks that an array contains a value", function()
      local def = { type = "array", elements = { type = "string" }, contains = "GET" }
      assert.same({ "GET" }, ok_value(def, { "GET" }))
      assert.equal("config.f: expected to contain: GET", field_error(def, { "POST" }))
    end)

    it("checks mutually_exclusive_subsets", function()
      local def = { type = "set", elements = { type = "string" },
                    mutually_exclusive_subsets = { { "a", "b" }, { "c" } } }
      assert.same({ "a", "b" }, ok_value(def, { "a", "b" }))
      assert.equal("config.f: these sets are mutually exclusive: ('a', 'b'), ('c')",
                   field_error(def, { "a", "c" }))
    end)

    it("checks timestamp", function()
      assert.equal("config.f: expected a valid timestamp",
                   field_error({ type = "number", timestamp = true }, -1))
    end)

    it("reports a custom_validator's message", function()
      local def = { type = "string", custom_validator = function(v)
        if v:find("^%u") then
          return true
        end
        return nil, "must start with an uppercase letter"
      end }
      assert.equal("Abc", ok_value(def, "Abc"))
      assert.equal("config.f: must start with an uppercase letter", field_error(def, "abc"))
    end)

    it("reports a custom_validator failing without a message", function()
      local def = { type = "integer", custom_validator = function() return false end }
      assert.equal("config.f: failed validating: 5", field_error(def, 5))
    end)

    it("reports a custom_validator that raises as data, naming the validator", function()
      local def = { type = "string", custom_validator = function() error("boom", 0) end }
      assert.equal("config.f: validator 'custom_validator' failed: boom", field_error(def, "x"))
    end)

    it("runs custom_validator only on a value of the right type", function()
      local called = false
      local def = { type = "string", custom_validator = function() called = true return true end }
      assert.equal("config.f: expected a string", field_error(def, 5))
      assert.is_false(called)
    end)

    it("replaces a validator's message by the field's err", function()
      local def = { type = "string", match = "^%w+$", err = "must be alphanumeric" }
      assert.equal("config.f: must be alphanumeric", field_error(def, "a-b"))
      assert.equal("config.f: expected a string", field_error(def, 1))
    end)

    it("reports one message per field: the first failing validator in Kong's order", function()
      local def = { type = "string", one_of = { "toolong" }, len_max = 3, match = "^x" }
      assert.equal("config.f: expected one of: toolong", field_error(def, "abcdef"))
      local def2 = { type = "string", len_max = 3, match = "^x" }
      assert.equal("config.f: length must be at most 3", field_error(def2, "abcdef"))
    end)

    it("does not check a container as a whole when its elements fail", function()
      local def = { type = "array", elements = { type = "integer" }, len_min = 5 }
      assert.same({ "config.f[0]: expected an integer" },
                  errors_of(plugin({ { f = def } }), { f = { "x" } }))
    end)

    it("runs validators on a record once its fields are valid", function()
      local def = { type = "record", fields = { { a = { type = "integer" } }, { b = { type = "integer" } } },
                    custom_validator = function(r)
                      if (r.a or 0) < (r.b or 0) then return true end
                      return nil, "a must be lower than b"
                    end }
      assert.equal("config.f: a must be lower than b", field_error(def, { a = 2, b = 1 }))
      assert.equal("config.f.a: expected an integer", field_error(def, { a = "x", b = 1 }))
    end)
  end)


  describe("validate_plugin_config paths and order", function()

    it("uses 'config' as the path prefix when none is given", function()
      assert.same({ "config.f: expected a string" },
                  errors_of(plugin({ { f = { type = "string" } } }), { f = 1 }))
    end)

    it("prefixes every path with the given one", function()
      local s = plugin({ { r = { type = "record", fields = {
        { list = { type = "array", elements = { type = "string" } } },
      } } } })
      assert.same({ "services[0].plugins[1].config.r.list[2]: expected a string" },
                  errors_of(s, { r = { list = { "a", "b", 3 } } }, "services[0].plugins[1].config"))
    end)

    it("reports a config that is not a map at the config path", function()
      assert.same({ "services[0].plugins[0].config: expected a record" },
                  errors_of(plugin({ { f = { type = "string" } } }), "x", "services[0].plugins[0].config"))
      assert.same({ "config: expected a record" },
                  errors_of(plugin({ { f = { type = "string" } } }), { "a" }))
    end)

    it("reports every problem: schema order, nested fields in place, unknown fields by name, then entity checks", function()
      local s = plugin({
        { second = { type = "number" } },
        { minute = { type = "number" } },
        { policy = { type = "string", one_of = { "local", "redis" } } },
        { redis = { type = "record", fields = {
          { host = { type = "string" } },
          { port = { type = "integer" } },
        } } },
        { names = { type = "array", elements = { type = "string" } } },
      }, { config = { entity_checks = { { at_least_one_of = { "second", "minute" } } } } })
      local errs = errors_of(s, {
        zeta = 1, alpha = 2,
        names = { 1, "ok", 2 },
        redis = { port = "x", host = 5, extra = true },
        policy = "cluster",
      })
      assert.same({
        "config.policy: expected one of: local, redis",
        "config.redis.host: expected a string",
        "config.redis.port: expected an integer",
        "config.redis.extra: unknown field",
        "config.names[0]: expected a string",
        "config.names[2]: expected a string",
        "config.alpha: unknown field",
        "config.zeta: unknown field",
        "config: at least one of these fields must be non-empty: 'config.second', 'config.minute'",
      }, errs)
    end)

    it("orders map errors by key", function()
      local s = plugin({ { m = { type = "map", keys = { type = "string" }, values = { type = "integer" } } } })
      assert.same({ "config.m.a: expected an integer", "config.m.b: expected an integer",
                    "config.m.c: expected an integer" },
                  errors_of(s, { m = { c = "x", a = "x", b = "x" } }))
    end)

    it("gives the same errors in the same order on every run", function()
      local s = plugin({ { a = { type = "integer" } } })
      local cfg = { a = "x", u1 = 1, u2 = 2, u3 = 3, u4 = 4, u5 = 5 }
      local first = errors_of(s, cfg)
      for _ = 1, 5 do
        assert.same(first, errors_of(s, cfg))
      end
    end)
  end)


  describe("validate_plugin_config entity checks", function()

    local function with_checks(fields, checks, at_entity)
      if at_entity then
        return plugin(fields, { entity_checks = checks })
      end
      return plugin(fields, { config = { entity_checks = checks } })
    end

    local limits = {
      { second = { type = "number" } },
      { minute = { type = "number" } },
      { hour = { type = "number" } },
    }

    describe("at_least_one_of", function()
      it("passes when one field is set", function()
        assert.same({ minute = 5 }, validate(with_checks(limits,
          { { at_least_one_of = { "second", "minute" } } }), { minute = 5 }))
      end)

      it("fails when none is set, naming the fields from the plugin entity", function()
        assert.same({ "services[0].plugins[1].config: at least one of these fields must be non-empty: 'config.second', 'config.minute'" },
          errors_of(with_checks(limits, { { at_least_one_of = { "second", "minute" } } }), {},
                    "services[0].plugins[1].config"))
      end)

      it("counts empty strings, empty tables and nulls as not set", function()
        local s = with_checks({
          { a = { type = "string", len_min = 0 } },
          { b = { type = "array", elements = { type = "string" } } },
          { c = { type = "string" } },
        }, { { at_least_one_of = { "a", "b", "c" } } })
        assert.equal(1, #errors_of(s, { a = "", b = {}, c = null }))
      end)

      it("works at the entity level with 'config.' names (Kong's usual place)", function()
        local s = with_checks(limits, { { at_least_one_of = { "config.second", "config.minute" } } }, true)
        assert.same({ "p.config: at least one of these fields must be non-empty: 'config.second', 'config.minute'" },
                    errors_of(s, {}, "p.config"))
        assert.same({ second = 1 }, validate(s, { second = 1 }, "p.config"))
      end)

      it("sees an invalid value as set, so it adds no second error", function()
        assert.same({ "config.minute: expected a number" },
          errors_of(with_checks(limits, { { at_least_one_of = { "second", "minute" } } }), { minute = "5" }))
      end)

      it("sees defaults", function()
        local s = with_checks({
          { a = { type = "number", default = 1 } }, { b = { type = "number" } },
        }, { { at_least_one_of = { "a", "b" } } })
        assert.same({ a = 1 }, validate(s, {}))
      end)
    end)

    describe("only_one_of", function()
      local checks = { { only_one_of = { "second", "minute" } } }

      it("passes when exactly one is set", function()
        assert.same({ second = 1 }, validate(with_checks(limits, checks), { second = 1 }))
      end)

      it("fails when both are set", function()
        assert.same({ "config: exactly one of these fields must be non-empty: 'config.second', 'config.minute'" },
                    errors_of(with_checks(limits, checks), { second = 1, minute = 2 }))
      end)

      it("fails when none is set (Kong)", function()
        assert.same({ "config: exactly one of these fields must be non-empty: 'config.second', 'config.minute'" },
                    errors_of(with_checks(limits, checks), {}))
      end)
    end)

    describe("mutually_required", function()
      local checks = { { mutually_required = { "second", "minute" } } }

      it("passes when all or none are set", function()
        assert.same({}, validate(with_checks(limits, checks), {}))
        assert.same({ second = 1, minute = 2 }, validate(with_checks(limits, checks), { second = 1, minute = 2 }))
      end)

      it("fails when only some are set", function()
        assert.same({ "config: all or none of these fields must be set: 'config.second', 'config.minute'" },
                    errors_of(with_checks(limits, checks), { minute = 2 }))
      end)
    end)

    describe("mutually_exclusive", function()
      local checks = { { mutually_exclusive = { "second", "minute", "hour" } } }

      it("passes when one or none is set", function()
        assert.same({}, validate(with_checks(limits, checks), {}))
        assert.same({ hour = 1 }, validate(with_checks(limits, checks), { hour = 1 }))
      end)

      it("fails when two are set", function()
        assert.same({ "config: only one or none of these fields must be set: 'config.second', 'config.minute', 'config.hour'" },
                    errors_of(with_checks(limits, checks), { second = 1, hour = 2 }))
      end)
    end)

    describe("mutually_exclusive_sets", function()
      local checks = { { mutually_exclusive_sets = { set1 = { "second" }, set2 = { "minute", "hour" } } } }

      it("passes when fields of one set only are given", function()
        assert.same({ minute = 1, hour = 2 }, validate(with_checks(limits, checks), { minute = 1, hour = 2 }))
      end)

      it("fails naming the fields set on each side", function()
        assert.same({ "config: these sets are mutually exclusive: ('config.second'), ('config.hour')" },
                    errors_of(with_checks(limits, checks), { second = 1, hour = 2 }))
      end)
    end)

    describe("distinct", function()
      it("fails when two fields have the same value", function()
        local s = with_checks({ { a = { type = "string" } }, { b = { type = "string" } } },
                              { { distinct = { "a", "b" } } })
        assert.same({ a = "x", b = "y" }, validate(s, { a = "x", b = "y" }))
        assert.same({ "config: values of these fields must be distinct: 'config.a', 'config.b'" },
                    errors_of(s, { a = "x", b = "x" }))
      end)
    end)

    describe("conditional", function()
      local fields = {
        { policy = { type = "string", default = "local", one_of = { "local", "redis" } } },
        { redis_host = { type = "string" } },
        { redis_port = { type = "integer" } },
      }

      it("requires then_field when if_field matches, with a field error and an entity error", function()
        local s = with_checks(fields, { { conditional = {
          if_field = "policy", if_match = { eq = "redis" },
          then_field = "redis_host", then_match = { required = true },
        } } })
        assert.same({ policy = "local" }, validate(s, {}))
        assert.same({ policy = "redis", redis_host = "h" }, validate(s, { policy = "redis", redis_host = "h" }))
        assert.same({
          "p.config.redis_host: required field missing",
          "p.config: failed conditional validation given value of field 'config.policy'",
        }, errors_of(s, { policy = "redis" }, "p.config"))
      end)

      it("applies then_match validators together with the field's own", function()
        local s = with_checks(fields, { { conditional = {
          if_field = "policy", if_match = { eq = "redis" },
          then_field = "redis_port", then_match = { between = { 1, 65535 } },
        } } })
        assert.same({ policy = "redis", redis_port = 6379 }, validate(s, { policy = "redis", redis_port = 6379 }))
        assert.same({
          "config.redis_port: value should be between 1 and 65535",
          "config: failed conditional validation given value of field 'config.policy'",
        }, errors_of(s, { policy = "redis", redis_port = 0 }))
        assert.same({ policy = "local", redis_port = 0 }, validate(s, { redis_port = 0 }))
      end)

      it("uses then_err for the entity message", function()
        local s = with_checks(fields, { { conditional = {
          if_field = "policy", if_match = { eq = "redis" },
          then_field = "redis_host", then_match = { required = true },
          then_err = "redis_host is needed when %s is redis",
        } } })
        assert.same({
          "config.redis_host: required field missing",
          "config: redis_host is needed when config.policy is redis",
        }, errors_of(s, { policy = "redis" }))
      end)

      it("works at the entity level and into nested records", function()
        local s = plugin({
          { policy = { type = "string", default = "local" } },
          { redis = { type = "record", required = true, fields = {
            { host = { type = "string" } },
            { port = { type = "integer", default = 6379 } },
          } } },
        }, { entity_checks = { { conditional = {
          if_field = "config.policy", if_match = { eq = "redis" },
          then_field = "config.redis.host", then_match = { required = true },
        } } } })
        assert.same({
          "services[2].plugins[0].config.redis.host: required field missing",
          "services[2].plugins[0].config: failed conditional validation given value of field 'config.policy'",
        }, errors_of(s, { policy = "redis" }, "services[2].plugins[0].config"))
        assert.same({ policy = "redis", redis = { host = "h", port = 6379 } },
                    validate(s, { policy = "redis", redis = { host = "h" } }))
      end)

      it("treats an absent if_field as matching unless if_match needs a value (Kong)", function()
        local f = { { mode = { type = "string" } }, { x = { type = "string" } } }
        local s = with_checks(f, { { conditional = {
          if_field = "mode", if_match = { one_of = { "a" } },
          then_field = "x", then_match = { required = true },
        } } })
        assert.equal(2, #errors_of(s, {}))
        local s2 = with_checks(f, { { conditional = {
          if_field = "mode", if_match = { eq = "a" },
          then_field = "x", then_match = { required = true },
        } } })
        assert.same({}, validate(s2, {}))
      end)

      it("adds nothing when then_field already has its own error", function()
        local s = with_checks(fields, { { conditional = {
          if_field = "policy", if_match = { eq = "redis" },
          then_field = "redis_port", then_match = { between = { 1, 10 } },
        } } })
        assert.same({ "config.redis_port: expected an integer" },
                    errors_of(s, { policy = "redis", redis_port = "x" }))
      end)
    end)

    describe("conditional_at_least_one_of", function()
      local fields = {
        { mode = { type = "string", default = "a" } },
        { x = { type = "string" } }, { y = { type = "string" } }, { z = { type = "string" } },
      }
      local checks = { { conditional_at_least_one_of = {
        if_field = "mode", if_match = { eq = "a" }, then_at_least_one_of = { "x", "y" },
        else_match = { eq = "b" }, else_then_at_least_one_of = { "z" },
        else_then_err = "mode b needs one of %s",
      } } }

      it("checks the then list when if_match matches", function()
        local s = with_checks(fields, checks)
        assert.same({ mode = "a", y = "1" }, validate(s, { y = "1" }))
        assert.same({ "config: at least one of these fields must be non-empty: 'config.x', 'config.y'" },
                    errors_of(s, {}))
      end)

      it("checks the else list when else_match matches, with else_then_err", function()
        local s = with_checks(fields, checks)
        assert.same({ mode = "b", z = "1" }, validate(s, { mode = "b", z = "1" }))
        assert.same({ "config: mode b needs one of 'config.z'" }, errors_of(s, { mode = "b" }))
      end)

      it("passes when neither matches", function()
        assert.same({ mode = "c" }, validate(with_checks(fields, checks), { mode = "c" }))
      end)
    end)

    describe("custom_entity_check", function()
      it("passes the fields it asked for, and only those", function()
        local seen
        local s = with_checks({ { a = { type = "integer", default = 1 } }, { b = { type = "integer" } } },
          { { custom_entity_check = { field_sources = { "a" }, fn = function(e)
            seen = e
            return true
          end } } })
        assert.same({ a = 1 }, validate(s, { b = 2 }) and seen)
      end)

      it("reports the function's message at the record path", function()
        local s = with_checks({ { a = { type = "integer" } }, { b = { type = "integer" } } },
          { { custom_entity_check = { field_sources = { "a", "b" }, fn = function(e)
            if (e.a or 0) > (e.b or 0) then
              return nil, "a must not exceed b"
            end
            return true
          end } } })
        assert.same({ a = 1, b = 2 }, validate(s, { a = 1, b = 2 }))
        assert.same({ "config: a must not exceed b" }, errors_of(s, { a = 3, b = 2 }))
      end)

      it("gets a projection of the entity at the entity level", function()
        local seen
        local s = plugin({ { storage = { type = "string", default = "shm" } }, { other = { type = "string" } } },
          { entity_checks = { { custom_entity_check = { field_sources = { "config.storage" },
            fn = function(e) seen = e return true end } } } })
        validate(s, { other = "x" })
        assert.same({ config = { storage = "shm" } }, seen)
      end)

      it("reports a failure without a message generically", function()
        local s = with_checks({ { a = { type = "integer" } } },
          { { custom_entity_check = { field_sources = { "a" }, fn = function() return false end } } })
        assert.same({ "config: failed entity check: custom_entity_check('config.a')" }, errors_of(s, { a = 1 }))
      end)

      it("reports a function that raises as data", function()
        local s = with_checks({ { a = { type = "integer" } } },
          { { custom_entity_check = { field_sources = { "a" }, fn = function() error("oops", 0) end } } })
        assert.same({ "config: failed entity check: custom_entity_check(oops)" }, errors_of(s, { a = 1 }))
      end)

      it("does not run when one of its fields is invalid (Kong)", function()
        local called = false
        local s = with_checks({ { a = { type = "integer" } } },
          { { custom_entity_check = { field_sources = { "a" }, fn = function() called = true return true end } } })
        assert.same({ "config.a: expected an integer" }, errors_of(s, { a = "x" }))
        assert.is_false(called)
      end)
    end)

    it("qualifies names of checks in nested records with the record's path", function()
      local s = plugin({ { redis = { type = "record", required = true, fields = {
        { host = { type = "string" } }, { sentinel = { type = "string" } },
      }, entity_checks = { { only_one_of = { "host", "sentinel" } } } } } })
      assert.same({ "p.config.redis: exactly one of these fields must be non-empty: 'config.redis.host', 'config.redis.sentinel'" },
                  errors_of(s, {}, "p.config"))
    end)

    it("runs record checks before entity-level checks", function()
      local s = plugin(limits, {
        config = { entity_checks = { { at_least_one_of = { "second" } } } },
        entity_checks = { { at_least_one_of = { "config.minute" } } },
      })
      assert.same({
        "config: at least one of these fields must be non-empty: 'config.second'",
        "config: at least one of these fields must be non-empty: 'config.minute'",
      }, errors_of(s, {}))
    end)

    it("skips entity-level checks on fields other than config", function()
      local s = plugin(limits, { entity_checks = {
        { at_least_one_of = { "consumer", "route" } },
        { only_one_of = { "protocols", "config.second" } },
      } })
      assert.same({}, validate(s, {}))
    end)
  end)


  describe("validate_plugin_config shorthand_fields", function()
    local function with_shorthand(deprecated)
      return plugin({
        { redis = { type = "record", required = true, fields = {
          { host = { type = "string" } },
          { port = { type = "integer", default = 6379 } },
        } } },
      }, { config = { shorthand_fields = {
        { redis_host = { type = "string", deprecation = deprecated and { message = "use redis.host" } or nil,
                         func = function(v) return { redis = { host = v } } end } },
      } } })
    end

    it("translates an old field name into the new fields", function()
      assert.same({ redis = { host = "h", port = 6379 } }, validate(with_shorthand(), { redis_host = "h" }))
    end)

    it("validates the shorthand's value against its own type", function()
      assert.same({ "config.redis_host: expected a string" }, errors_of(with_shorthand(), { redis_host = 1 }))
    end)

    it("lets the shorthand win over the new field, unless it is deprecated", function()
      assert.same({ redis = { host = "old", port = 1 } },
                  validate(with_shorthand(), { redis_host = "old", redis = { host = "new", port = 1 } }))
      assert.same({ redis = { host = "new", port = 1 } },
                  validate(with_shorthand(true), { redis_host = "old", redis = { host = "new", port = 1 } }))
    end)
  end)


  describe("validate_plugin_config without a config field", function()
    local s = { name = "bare", fields = { { protocols = { type = "set", elements = { type = "string" } } } } }

    it("accepts an absent or empty config and returns an empty table", function()
      assert.same({}, validate(s, nil))
      assert.same({}, validate(s, null))
      assert.same({}, validate(s, {}))
    end)

    it("refuses any config field as unknown", function()
      assert.same({ "p.config.a: unknown field", "p.config.b: unknown field" },
                  errors_of(s, { b = 1, a = 2 }, "p.config"))
      assert.same({ "config: expected a record" }, errors_of(s, "x"))
    end)
  end)


  describe("validate_plugin_config with a Kong plugin schema", function()
    -- Shaped like Kong 3.x's acl schema, typedef-style fields included.
    local acl = {
      name = "acl",
      fields = {
        { consumer = { type = "foreign", reference = "consumers", eq = null } },
        { protocols = { type = "set", elements = { type = "string", one_of = { "http", "https" } },
                        default = { "http", "https" } } },
        { config = { type = "record", fields = {
          { allow = { type = "array", elements = { type = "string" } } },
          { deny = { type = "array", elements = { type = "string" } } },
          { hide_groups_header = { type = "boolean", required = true, default = false } },
        } } },
      },
      entity_checks = {
        { only_one_of = { "config.allow", "config.deny" } },
        { at_least_one_of = { "config.allow", "config.deny" } },
      },
    }

    it("passes check_schema", function()
      assert.is_true(check_schema(acl, "acl"))
    end)

    it("validates and fills defaults like Kong", function()
      assert.same({ allow = { "admins" }, hide_groups_header = false },
                  validate(acl, { allow = { "admins" } }))
    end)

    it("reports Kong's messages", function()
      assert.same({
        "services[0].plugins[0].config: exactly one of these fields must be non-empty: 'config.allow', 'config.deny'",
        "services[0].plugins[0].config: at least one of these fields must be non-empty: 'config.allow', 'config.deny'",
      }, errors_of(acl, {}, "services[0].plugins[0].config"))
    end)
  end)


  describe("validate_plugin_config misuse", function()
    it("raises when the schema is not a schema table", function()
      assert.has_error(function() validate(nil, {}) end, "schema must be a plugin schema table")
      assert.has_error(function() validate({ name = "x" }, {}) end, "schema must be a plugin schema table")
    end)

    it("raises when the path is not a string", function()
      assert.has_error(function() validate(plugin({}), {}, 5) end, "path must be a string")
    end)
  end)


  describe("check_schema", function()

    local function problem(s, name)
      local ok, err = check_schema(s, name or "test-plugin")
      assert.is_nil(ok)
      assert.is_string(err)
      return err
    end

    local function config_problem(fields, opts)
      return problem(plugin(fields, opts))
    end

    local PREFIX = 'plugin "test-plugin" has an invalid schema: '

    it("accepts a schema with every type and attribute", function()
      local s = plugin({
        { b = { type = "boolean", default = true, description = "a boolean" } },
        { i = { type = "integer", between = { 1, 10 }, default = 5 } },
        { n = { type = "number", gt = 0 } },
        { s = { type = "string", one_of = { "a", "b" }, default = "a", len_max = 5 } },
        { p = { type = "string", match = "^/", not_match = "%s", starts_with = "/" } },
        { u = { type = "string", uuid = true } },
        { a = { type = "array", elements = { type = "string" }, default = { "x" }, len_min = 1 } },
        { set = { type = "set", elements = { type = "string" }, contains = "x" } },
        { m = { type = "map", keys = { type = "string" }, values = { type = "integer" } } },
        { r = { type = "record", required = true, fields = {
          { host = { type = "string", required = true, default = "localhost" } },
        }, entity_checks = { { at_least_one_of = { "host" } } } } },
        { c = { type = "string", custom_validator = function() return true end } },
        { j = { type = "json", json_schema = { inline = { type = "object" } } } },
      }, { config = { entity_checks = { { at_least_one_of = { "i", "r.host" } } } },
           entity_checks = { { conditional = { if_field = "config.s", if_match = { eq = "b" },
                                              then_field = "config.n", then_match = { required = true } } } } })
      assert.is_true(check_schema(s, "test-plugin"))
    end)

    it("accepts a schema without config", function()
      assert.is_true(check_schema({ name = "x", fields = {} }, "x"))
    end)

    it("names the plugin and refuses a schema that is not a table", function()
      assert.equal('plugin "my-plugin" has an invalid schema: expected a table, got boolean',
                   problem(true, "my-plugin"))
    end)

    it("refuses a missing name or one that differs from the plugin's", function()
      assert.equal([[plugin "p" has an invalid schema: 'name' must be a string]],
                   problem({ fields = {} }, "p"))
      assert.equal([[plugin "p" has an invalid schema: name 'q' does not match the plugin name 'p']],
                   problem({ name = "q", fields = {} }, "p"))
    end)

    it("refuses a schema without fields", function()
      assert.equal([[plugin "p" has an invalid schema: 'fields' must be a table]],
                   problem({ name = "p" }, "p"))
    end)

    it("refuses fields given as a map instead of an array of single-key tables", function()
      local err = problem({ name = "p", fields = { config = { type = "record", fields = {} } } }, "p")
      assert.equal([[plugin "p" has an invalid schema: 'fields' must be an array of { name = definition } tables]], err)
    end)

    it("refuses a fields entry with two keys or none", function()
      assert.equal(PREFIX .. "config: fields entry #1 must be a table with exactly one key (name = definition)",
                   config_problem({ { a = { type = "string" }, b = { type = "string" } } }))
      assert.equal(PREFIX .. "config: fields entry #2 must be a table with exactly one key (name = definition)",
                   config_problem({ { a = { type = "string" } }, {} }))
      assert.equal(PREFIX .. "config: fields entry #1 must be a table with exactly one key (name = definition)",
                   config_problem({ "a" }))
    end)

    it("refuses a duplicate field", function()
      assert.equal(PREFIX .. "config.a: duplicate field",
                   config_problem({ { a = { type = "string" } }, { a = { type = "integer" } } }))
    end)

    it("refuses a config that is not a record", function()
      assert.equal([[plugin "p" has an invalid schema: config: must be a record (type = "record")]],
                   problem({ name = "p", fields = { { config = { type = "map", keys = { type = "string" },
                                                                   values = { type = "string" } } } } }, "p"))
    end)

    it("refuses an unknown or missing type", function()
      assert.equal(PREFIX .. "config.a: unknown type 'int'", config_problem({ { a = { type = "int" } } }))
      assert.equal(PREFIX .. "config.a: missing type declaration", config_problem({ { a = { default = 1 } } }))
      assert.equal(PREFIX .. "protocols: unknown type 'sett'",
                   problem({ name = "test-plugin", fields = { { protocols = { type = "sett" } } } }))
    end)

    it("refuses a definition that is not a table", function()
      assert.equal(PREFIX .. "config.a: definition must be a table", config_problem({ { a = "string" } }))
    end)

    it("refuses containers without their element definitions", function()
      assert.equal(PREFIX .. "config.a: field of type 'array' must declare 'elements'",
                   config_problem({ { a = { type = "array" } } }))
      assert.equal(PREFIX .. "config.m: field of type 'map' must declare 'values'",
                   config_problem({ { m = { type = "map", keys = { type = "string" } } } }))
      assert.equal(PREFIX .. "config.r: field of type 'record' must declare 'fields'",
                   config_problem({ { r = { type = "record" } } }))
    end)

    it("names nested problems by their path", function()
      assert.equal(PREFIX .. "config.r.list.elements: unknown type 'strin'",
                   config_problem({ { r = { type = "record", fields = {
                     { list = { type = "array", elements = { type = "strin" } } } } } } }))
      assert.equal(PREFIX .. "config.m.values: missing type declaration",
                   config_problem({ { m = { type = "map", keys = { type = "string" }, values = {} } } }))
    end)

    it("refuses an unknown attribute (a typo)", function()
      assert.equal(PREFIX .. "config.a: unknown attribute 'requried'",
                   config_problem({ { a = { type = "string", requried = true } } }))
    end)

    it("refuses an attribute that does not apply to the type", function()
      assert.equal(PREFIX .. "config.a: field of type 'integer' cannot have attribute 'match'",
                   config_problem({ { a = { type = "integer", match = "^%d$" } } }))
      assert.equal(PREFIX .. "config.a: field of type 'string' cannot have attribute 'between'",
                   config_problem({ { a = { type = "string", between = { 1, 2 } } } }))
      assert.equal(PREFIX .. "config.a: field of type 'boolean' cannot have attribute 'one_of'",
                   config_problem({ { a = { type = "boolean", one_of = { true } } } }))
    end)

    it("refuses a default of the wrong type", function()
      assert.equal(PREFIX .. "config.a: invalid default: expected an integer",
                   config_problem({ { a = { type = "integer", default = "60" } } }))
      assert.equal(PREFIX .. "config.a: invalid default: default[1]: expected a string",
                   config_problem({ { a = { type = "array", elements = { type = "string" }, default = { "a", 1 } } } }))
    end)

    it("refuses a default that fails the field's own validators", function()
      assert.equal(PREFIX .. "config.a: invalid default: expected one of: local, redis",
                   config_problem({ { a = { type = "string", one_of = { "local", "redis" }, default = "cluster" } } }))
      assert.equal(PREFIX .. "config.r: invalid default: default.host: required field missing",
                   config_problem({ { r = { type = "record", default = {}, fields = {
                     { host = { type = "string", required = true } } } } } }))
    end)

    it("refuses malformed validator arguments", function()
      assert.equal(PREFIX .. "config.a: 'between' must be { min, max } with min <= max",
                   config_problem({ { a = { type = "integer", between = { 10, 1 } } } }))
      assert.equal(PREFIX .. "config.a: 'len_min' must be a non-negative integer",
                   config_problem({ { a = { type = "string", len_min = -1 } } }))
      assert.equal(PREFIX .. "config.a: 'one_of' must be a non-empty array",
                   config_problem({ { a = { type = "string", one_of = {} } } }))
      assert.equal(PREFIX .. "config.a: 'custom_validator' must be a function",
                   config_problem({ { a = { type = "string", custom_validator = "f" } } }))
      assert.equal(PREFIX .. "config.a: 'required' must be a boolean",
                   config_problem({ { a = { type = "string", required = "yes" } } }))
      assert.equal(PREFIX .. "config.a: 'gt' must be a number",
                   config_problem({ { a = { type = "integer", gt = "0" } } }))
    end)

    it("refuses a malformed Lua pattern", function()
      local err = config_problem({ { a = { type = "string", match = "^[a-z" } } })
      assert.matches("config.a: 'match' is not a valid Lua pattern: malformed pattern", err, 1, true)
    end)

    it("refuses an unknown entity check", function()
      assert.equal(PREFIX .. "config: entity_checks entry #1: unknown entity check 'at_least_one'",
                   config_problem({ { a = { type = "string" } } },
                                  { config = { entity_checks = { { at_least_one = { "a" } } } } }))
    end)

    it("refuses an entity check on an unknown field", function()
      assert.equal(PREFIX .. "config: entity_checks entry #1 (at_least_one_of): unknown field 'b'",
                   config_problem({ { a = { type = "string" } } },
                                  { config = { entity_checks = { { at_least_one_of = { "a", "b" } } } } }))
      assert.equal(PREFIX .. "entity_checks entry #1 (only_one_of): unknown field 'config.alow'",
                   config_problem({ { allow = { type = "string" } } },
                                  { entity_checks = { { only_one_of = { "config.alow" } } } }))
      assert.equal(PREFIX .. "entity_checks entry #1 (only_one_of): unknown field 'rout'",
                   config_problem({ { allow = { type = "string" } } },
                                  { entity_checks = { { only_one_of = { "rout" } } } }))
    end)

    it("refuses malformed entity check arguments", function()
      assert.equal(PREFIX .. "config: entity_checks entry #1 (conditional): 'then_field' must be a field name",
                   config_problem({ { a = { type = "string" } } }, { config = { entity_checks = {
                     { conditional = { if_field = "a", if_match = { eq = "x" }, then_match = { required = true } } },
                   } } }))
      assert.equal(PREFIX .. "config: entity_checks entry #1 (custom_entity_check): 'fn' must be a function",
                   config_problem({ { a = { type = "string" } } }, { config = { entity_checks = {
                     { custom_entity_check = { field_sources = { "a" } } },
                   } } }))
      assert.equal(PREFIX .. "config: entity_checks entry #1 (at_least_one_of): 'argument' must be a non-empty array of field names",
                   config_problem({ { a = { type = "string" } } }, { config = { entity_checks = {
                     { at_least_one_of = "a" },
                   } } }))
      assert.equal(PREFIX .. "config: entity_checks entry #1 (conditional): if_match: unknown attribute 'eqq'",
                   config_problem({ { a = { type = "string" } } }, { config = { entity_checks = {
                     { conditional = { if_field = "a", if_match = { eqq = "x" }, then_field = "a", then_match = {} } },
                   } } }))
    end)

    it("refuses a shorthand field without func or with a taken name", function()
      assert.equal(PREFIX .. "config.old: a shorthand field must declare 'func' (a function)",
                   config_problem({ { a = { type = "string" } } }, { config = { shorthand_fields = {
                     { old = { type = "string" } } } } }))
      assert.equal(PREFIX .. "config.a: a shorthand field cannot have the name of a field",
                   config_problem({ { a = { type = "string" } } }, { config = { shorthand_fields = {
                     { a = { type = "string", func = function() end } } } } }))
    end)

    it("lists every problem, separated by semicolons", function()
      assert.equal(PREFIX .. "config.a: unknown type 'int'; config.b: field of type 'array' must declare 'elements'",
                   config_problem({ { a = { type = "int" } }, { b = { type = "array" } } }))
    end)

    it("raises when the plugin name is not a string", function()
      assert.has_error(function() check_schema({}, 5) end, "plugin name must be a string")
    end)
  end)
end)
