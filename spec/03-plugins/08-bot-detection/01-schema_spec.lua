-- bot-detection's schema as `moongate check` applies it: Kong's fields and defaults, and a
-- regex that PCRE2 cannot compile refused at config load with the path of the entry.
local helpers = require "spec.helpers"
local schema = require "moongate.schema"

local plugin_schema = dofile(os.getenv("PWD") .. "/plugins/bot-detection/schema.lua")

local function validate(config)
  return schema.validate_plugin_config(plugin_schema, config, "config")
end

local BAD_REGEX = [[(https?:\/\/.*]]   -- Kong's spec uses this one

describe("bot-detection schema", function()
  it("is a well-formed schema", function()
    assert.is_true(schema.check_schema(plugin_schema, "bot-detection"))
  end)

  it("fills Kong's defaults: empty allow and deny lists", function()
    local conf = assert(validate(nil))
    assert.same({}, conf.allow)
    assert.same({}, conf.deny)
    conf = assert(validate({ allow = { "^MyApp/" }, deny = { "HelloWorld", "(?i)curl" } }))
    assert.same({ "^MyApp/" }, conf.allow)
    assert.same({ "HelloWorld", "(?i)curl" }, conf.deny)
  end)

  it("refuses a regex that does not compile, with the entry's path and PCRE2's reason",
     function()
    local _, errs = validate({ allow = { "ok", BAD_REGEX }, deny = { "[z-a]" } })
    assert.same({
      "config.allow[1]: not a valid regex: missing closing parenthesis at offset 14",
      "config.deny[0]: not a valid regex: range out of order in character class at offset 3",
    }, errs)
  end)

  it("refuses values of the wrong shape and unknown fields", function()
    local _, errs = validate({ allow = "Googlebot", deny = { 1 }, whitelist = { "x" } })
    assert.same({
      "config.allow: expected an array",
      "config.deny[0]: expected a string",
      "config.whitelist: unknown field",
    }, errs)
    _, errs = validate({ deny = { "" } })
    assert.same({ "config.deny[0]: length must be at least 1" }, errs)
  end)

  it("is checked by `moongate check` against the config file", function()
    local function check(config)
      return helpers.check({
        services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } },
                       plugins = { { name = "bot-detection", config = config } } } } })
    end
    local rc, out = check({ deny = { "fine", "also fine", BAD_REGEX } })
    assert.equal(1, rc)
    assert.matches("services%[0%]%.plugins%[0%]%.config%.deny%[2%]: not a valid regex: missing "
                   .. "closing parenthesis at offset 14", table.concat(out, "\n"))
    rc, out = check({ allow = { "^Friendly" }, deny = { "(?i)evil" } })
    assert.equal(0, rc, table.concat(out, "\n"))
    rc, out = check(nil)
    assert.equal(0, rc, table.concat(out, "\n"))
  end)
end)
