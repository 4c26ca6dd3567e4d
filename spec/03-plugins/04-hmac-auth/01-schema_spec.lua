-- hmac-auth's schema as `moongate check` applies it (defaults, types, the errors a user sees
-- with the path of the bad field), the hmacauth_credentials checks, and the handler's two
-- pure helpers: the HTTP date parser and the Authorization parser.
local helpers = require "spec.helpers"
local schema = require "moongate.schema"

package.path = os.getenv("PWD") .. "/plugins/?.lua;" .. package.path
local plugin_schema = dofile(os.getenv("PWD") .. "/plugins/hmac-auth/schema.lua")

local ALL = { "hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512" }

describe("hmac-auth schema", function()
  it("fills Kong's defaults", function()
    local conf = assert(schema.validate_plugin_config(plugin_schema, {}, "config"))
    assert.is_false(conf.hide_credentials)
    assert.equal(300, conf.clock_skew)
    assert.is_nil(conf.anonymous)
    assert.is_false(conf.validate_request_body)
    assert.same({}, conf.enforce_headers)
    assert.same(ALL, conf.algorithms)
    assert.is_nil(conf.realm)
  end)

  it("gives every config its own default arrays", function()
    local a = assert(schema.validate_plugin_config(plugin_schema, {}, "config"))
    a.algorithms[1] = "changed"
    local b = assert(schema.validate_plugin_config(plugin_schema, {}, "config"))
    assert.same(ALL, b.algorithms)
  end)

  it("accepts every Kong field set explicitly", function()
    local conf = assert(schema.validate_plugin_config(plugin_schema, {
      hide_credentials = true, clock_skew = 1.5, anonymous = "guest",
      validate_request_body = true, enforce_headers = { "date", "request-line" },
      algorithms = { "hmac-sha512" }, realm = "api" }, "config"))
    assert.equal(1.5, conf.clock_skew)
    assert.same({ "date", "request-line" }, conf.enforce_headers)
    assert.same({ "hmac-sha512" }, conf.algorithms)
    assert.equal("api", conf.realm)
  end)

  it("refuses bad values with the path of the field", function()
    local _, errs = schema.validate_plugin_config(plugin_schema, {
      hide_credentials = "yes", clock_skew = 0, validate_request_body = 1,
      enforce_headers = "date", algorithms = { "hmac-sha256", "hmac-md5" }, realm = 3,
      anonymous = "", unknown = 1 }, "config")
    assert.same({
      "config.hide_credentials: expected a boolean",
      "config.clock_skew: value must be greater than 0",
      "config.anonymous: length must be at least 1",
      "config.validate_request_body: expected a boolean",
      "config.enforce_headers: expected an array",
      "config.algorithms[1]: expected one of: hmac-sha1, hmac-sha256, hmac-sha384, hmac-sha512",
      "config.realm: expected a string",
      "config.unknown: unknown field",
    }, errs)
    local _, errs2 = schema.validate_plugin_config(plugin_schema, { clock_skew = "300" },
                                                   "config")
    assert.same({ "config.clock_skew: expected a number" }, errs2)
    local _, errs3 = schema.validate_plugin_config(plugin_schema, { clock_skew = -1 }, "config")
    assert.same({ "config.clock_skew: value must be greater than 0" }, errs3)
  end)

  it("is checked by `moongate check` against the config file", function()
    local rc, out = helpers.check({
      services = { { name = "s", url = "http://127.0.0.1:9",
        routes = { { paths = { "/" } } },
        plugins = { { name = "hmac-auth", config = { algorithms = { "hmac-md5" } } } } } } })
    assert.equal(1, rc)
    assert.matches("services%[0%]%.plugins%[0%]%.config%.algorithms%[0%]: expected one of",
                   table.concat(out, "\n"))
    rc = helpers.check({
      services = { { name = "s", url = "http://127.0.0.1:9",
        routes = { { paths = { "/" } } },
        plugins = { { name = "hmac-auth", config = { enforce_headers = { "date" } } } } } } })
    assert.equal(0, rc)
  end)

  it("validates the credentials: required fields, unique usernames, no secret echoed", function()
    local rc, out = helpers.check({
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } } } },
      consumers = {
        { username = "a", hmacauth_credentials = { { username = "alice", secret = "s3cr3t-a" },
                                                   { username = "nosecret" },
                                                   { secret = "s3cr3t-orphan" } } },
        { username = "b", hmacauth_credentials = { { username = "alice", secret = "s3cr3t-b" } } },
      } })
    local text = table.concat(out, "\n")
    assert.equal(1, rc)
    assert.matches("consumers%[0%]%.hmacauth_credentials%[1%]%.secret: required field missing",
                   text)
    assert.matches("consumers%[0%]%.hmacauth_credentials%[2%]%.username: required field missing",
                   text)
    assert.matches("consumers%[1%]%.hmacauth_credentials%[0%]%.username: must be unique %(also "
                   .. "used by consumers%[0%]%.hmacauth_credentials%[0%]%)", text)
    assert.not_matches("s3cr3t", text)
  end)
end)

describe("hmac-auth helpers", function()
  -- the handler needs the global PDK only when it runs, not to load
  local handler = dofile(os.getenv("PWD") .. "/plugins/hmac-auth/handler.lua")
  local parse_date, parse_auth = handler._parse_http_date, handler._parse_authorization

  it("declares Kong's priority", function()
    assert.equal(1030, handler.PRIORITY)
  end)

  it("parses the three HTTP date forms to the epoch, independent of the time zone", function()
    -- the expected values are what `date -u -d '<date>' +%s` prints (GNU coreutils)
    assert.equal(784111777, parse_date("Sun, 06 Nov 1994 08:49:37 GMT"))
    assert.equal(784111777, parse_date("Sunday, 06-Nov-94 08:49:37 GMT"))
    assert.equal(784111777, parse_date("Sun Nov  6 08:49:37 1994"))
    local now = os.time()
    assert.equal(now, parse_date(os.date("!%a, %d %b %Y %H:%M:%S GMT", now)))
    assert.equal(951782400, parse_date("Tue, 29 Feb 2000 00:00:00 GMT"))   -- leap year
    assert.equal(0, parse_date("Thu, 01 Jan 1970 00:00:00 GMT"))
    assert.equal(946684799, parse_date("Friday, 31-Dec-99 23:59:59 GMT"))
  end)

  it("refuses anything else as a date", function()
    for _, bad in ipairs({ "", "wrong date", "Sun, 06 Nov 1994 08:49:37",
        "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 31 Apr 1994 08:49:37 GMT",
        "Mon, 29 Feb 1900 00:00:00 GMT", "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT", "Sun, 06 Nov 1994 08:49:37 GMT trailing",
        "1994-11-06T08:49:37Z", "784111777" }) do
      assert.is_nil(parse_date(bad), bad)
    end
  end)

  it("parses the hmac Authorization value in Kong's layout and in any order", function()
    local u, a, h, s = parse_auth('hmac username="bob", algorithm="hmac-sha1", '
                                  .. 'headers="date request-line", signature="c2ln+/="')
    assert.same({ "bob", "hmac-sha1", "date request-line", "c2ln+/=" }, { u, a, h, s })
    u, a, h, s = parse_auth('HMAC signature="x",headers="date",  algorithm="hmac-sha256" ,'
                            .. 'username="al ice", keyId="ignored"')
    assert.same({ "al ice", "hmac-sha256", "date", "x" }, { u, a, h, s })
  end)

  it("refuses malformed Authorization values", function()
    for _, bad in ipairs({
      "asd", "hmac username", "hmac :dXNlcm5hbWU6cGFzc3dvcmQ=",
      "hmac username=,algorithm,headers,dXNlcm5hbWU6cGFzc3dvcmQ=",
      'Basic dXNlcjpwYXNz', 'hmacusername="bob"',
      'hmac username="bob", algorithm="hmac-sha1" headers="date", signature="x"',
      'hmac username="bob", algorithm="hmac-sha1", wrong_header="date", signature="x"',
      'hmac username="bob", algorithm="hmac-sha1", headers="date", wrong_signature="x"',
      'hmac username="", algorithm="hmac-sha1", headers="date", signature="x"',
      'hmac username="bob", algorithm="hmac-sha1", headers="", signature="x"',
      'hmac username="bob", username="eve", algorithm="hmac-sha1", headers="date", '
        .. 'signature="x"',
      'hmac username="bob", algorithm="hmac-sha1", headers="date", signature="x",',
      'hmac username=bob, algorithm="hmac-sha1", headers="date", signature="x"',
      'x hmac username="bob", algorithm="hmac-sha1", headers="date", signature="x"',
    }) do
      assert.is_nil(parse_auth(bad), bad)
    end
    assert.is_nil(parse_auth(nil))
  end)
end)
