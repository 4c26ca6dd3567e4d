-- cors's schema as `moongate check` applies it: Kong 3.x's defaults, which origins entries
-- pass (Kong's own schema spec cases), and every refusal with the path of the bad field.
local helpers = require "spec.helpers"
local schema = require "moongate.schema"

local plugin_schema = dofile(os.getenv("PWD") .. "/plugins/cors/schema.lua")

local METHODS = { "GET", "HEAD", "PUT", "PATCH", "POST", "DELETE", "OPTIONS", "TRACE",
                  "CONNECT" }

local function validate(config)
  return schema.validate_plugin_config(plugin_schema, config, "config")
end

describe("cors schema", function()
  it("is a well-formed schema", function()
    assert.is_true(schema.check_schema(plugin_schema, "cors"))
  end)

  it("fills Kong's defaults", function()
    local conf = assert(validate({}))
    assert.same({
      methods = METHODS,
      credentials = false,
      private_network = false,
      preflight_continue = false,
      allow_origin_absent = true,
    }, conf)
  end)

  it("keeps every field as given", function()
    local given = {
      origins = { "*", "https://a.test", [[https://(.*\.)?b\.test]] },
      headers = { "X-A", "Content-Type" },
      exposed_headers = { "X-Total" },
      methods = { "GET", "POST" },
      max_age = 3600,
      credentials = true,
      private_network = true,
      preflight_continue = true,
      allow_origin_absent = false,
    }
    assert.same(given, assert(validate(given)))
  end)

  describe("origins", function()
    it("accepts '*', a domain, an origin and a regex", function()
      for _, entry in ipairs({ "*", "example.com", "http://localhost:3000",
                               [[.*\.example(?:-foo)?\.com]], [[^https://a\.test$]],
                               [[\Qa.test]] }) do
        local conf, errs = validate({ origins = { entry } })
        assert.is_nil(errs, entry)
        assert.same({ entry }, conf.origins)
      end
    end)

    it("refuses a bad regex with Kong's message, PCRE2's reason and the entry's path",
       function()
      local _, errs = validate({ origins = { [[.*.example.com]], [[invalid_**regex]], "(" } })
      assert.equal(2, #errs)
      assert.matches("^config%.origins%[1%]: 'invalid_%*%*regex' is not a valid regex: "
                     .. "quantifier does not follow a repeatable item", errs[1])
      assert.matches("^config%.origins%[2%]: '%(' is not a valid regex: missing closing "
                     .. "parenthesis", errs[2])
    end)

    it("refuses an entry that compiles alone but not anchored as the handler runs it",
       function()
      local _, errs = validate({ origins = { "(?x)a#" } })
      assert.same({ "config.origins[0]: '(?x)a#' is not a valid regex: it cannot be anchored" },
                  errs)
    end)

    it("must be an array of strings", function()
      local _, errs = validate({ origins = "*" })
      assert.same({ "config.origins: expected an array" }, errs)
      _, errs = validate({ origins = { 1 } })
      assert.same({ "config.origins[0]: expected a string" }, errs)
    end)
  end)

  describe("methods", function()
    for _, method in ipairs(METHODS) do
      it("allows " .. method, function()
        local conf, errs = validate({ methods = { method } })
        assert.is_nil(errs)
        assert.same({ method }, conf.methods)
      end)
    end

    it("refuses any other, listing the nine", function()
      local _, errs = validate({ methods = { "GET", "FAKE" } })
      assert.same({ "config.methods[1]: expected one of: GET, HEAD, PUT, PATCH, POST, "
                    .. "DELETE, OPTIONS, TRACE, CONNECT" }, errs)
      _, errs = validate({ methods = { "get" } })
      assert.same(1, #errs)
    end)
  end)

  it("refuses wrong types with the path of each field, and unknown fields", function()
    local _, errs = validate({
      headers = "X-A", exposed_headers = { true }, max_age = "60", credentials = "yes",
      private_network = 1, preflight_continue = "no", allow_origin_absent = {},
      origin = "http://a.test" })
    assert.same({
      "config.headers: expected an array",
      "config.exposed_headers[0]: expected a string",
      "config.max_age: expected a number",
      "config.credentials: expected a boolean",
      "config.private_network: expected a boolean",
      "config.preflight_continue: expected a boolean",
      "config.allow_origin_absent: expected a boolean",
      "config.origin: unknown field",
    }, errs)
  end)

  it("is checked by `moongate check`: a bad origin regex names its path", function()
    local rc, out = helpers.check({
      services = { { name = "s", url = "http://127.0.0.1:9",
        routes = { { paths = { "/" } } },
        plugins = { { name = "cors", config = { origins = { "https://a.test", "(" } } } } } } })
    assert.equal(1, rc)
    assert.matches("services%[0%]%.plugins%[0%]%.config%.origins%[1%]: '%(' is not a valid "
                   .. "regex", table.concat(out, "\n"))
  end)

  it("`moongate check` accepts a Kong 3.x cors config unchanged", function()
    local rc, out = helpers.check({
      services = { { name = "s", url = "http://127.0.0.1:9",
        routes = { { paths = { "/" } } },
        plugins = { { name = "cors", config = {
          origins = { "http://mockbin.com", [[https://(.*\.)?example\.com]] },
          methods = { "GET", "POST" }, headers = { "Accept", "Content-Type" },
          exposed_headers = { "X-Auth-Token" }, credentials = true, max_age = 3600,
          preflight_continue = false, private_network = false,
          allow_origin_absent = true } } } } } })
    assert.equal(0, rc, table.concat(out, "\n"))
  end)
end)
