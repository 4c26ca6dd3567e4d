-- hmac-auth against the real binary and a real echo upstream: signatures with every
-- algorithm, over headers, the request line (query included) and @request-target; every
-- rejection with its status, body and WWW-Authenticate; the clock-skew edges for Date and
-- X-Date; enforce_headers, algorithms, validate_request_body, hide_credentials, anonymous,
-- the logical OR / AND with key-auth, the logs, and consumer-scoped plugins applied once the
-- consumer is identified. Signatures and digests are computed here at test time with
-- moongate.crypto, and cross-checked against the openssl CLI.
local helpers = require "spec.helpers"
local crypto = require "moongate.crypto"

local fmt, concat = string.format, table.concat

local PLUGIN_PATH = os.getenv("PWD") .. "/spec/fixtures/plugins/?.lua;;"

local NOT_VALID = "HMAC signature cannot be verified"
local NOT_SAME = "HMAC signature does not match"
local BAD_DATE = "HMAC signature cannot be verified, a valid date or x-date header is "
                 .. "required for HMAC Authentication"

local ALICE_SECRET = "alice-s3cret-value"
local BOB_SECRET = "bob-other-s3cret"
local DIGEST_OF = { ["hmac-sha1"] = "sha1", ["hmac-sha256"] = "sha256",
                    ["hmac-sha384"] = "sha384", ["hmac-sha512"] = "sha512" }
local RAW_LEN = { ["hmac-sha1"] = 20, ["hmac-sha256"] = 32, ["hmac-sha384"] = 48,
                  ["hmac-sha512"] = 64 }

local function http_date(t)
  return os.date("!%a, %d %b %Y %H:%M:%S GMT", t or os.time())
end

local function b64_hmac(alg, secret, data)
  return crypto.encode_base64(crypto.hmac(DIGEST_OF[alg], secret, data))
end

local function authorization(username, alg, names, signature)
  return fmt('hmac username="%s", algorithm="%s", headers="%s", signature="%s"',
             username, alg, names, signature)
end

-- The signing string, built here independently of the handler: one line per listed name.
local function signing_string(names, headers, method, target, version)
  local lines = {}
  for name in names:gmatch("[^ ]+") do
    if name == "request-line" then
      lines[#lines + 1] = fmt("%s %s HTTP/%s", method, target, version or "1.1")
    elseif name == "@request-target" then
      lines[#lines + 1] = "@request-target: " .. method:lower() .. " " .. target
    elseif headers[name] then
      lines[#lines + 1] = name .. ": " .. headers[name]
    else
      lines[#lines + 1] = name .. ":"
    end
  end
  return concat(lines, "\n")
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return (out:gsub("%s+$", ""))
end

describe("hmac-auth", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    local function svc(name, config, extra)
      local s = { name = name, url = up.url,
                  routes = { { name = name, paths = { "/" .. name } } },
                  plugins = { { name = "hmac-auth", config = config } } }
      for _, p in ipairs(extra or {}) do s.plugins[#s.plugins + 1] = p end
      return s
    end
    gw = helpers.start({
      lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "headers", "serializer" },
      services = {
        svc("default", nil),
        svc("realm", { realm = "orders" }),
        svc("skew", { clock_skew = 10 }),
        svc("hide", { hide_credentials = true }),
        svc("body", { validate_request_body = true }),
        svc("enforce", { enforce_headers = { "date", "request-line" } }),
        svc("algs", { algorithms = { "hmac-sha256" } }),
        svc("anon", { anonymous = "guest" }),
        svc("anonid", { anonymous = "9d5b1f7e-6d1c-4f7e-8a1e-3c2b1a0f9e8d" }),
        svc("anonmissing", { anonymous = "nobody" }),
        svc("either", { anonymous = "guest" },
            { { name = "key-auth", config = { anonymous = "guest" } } }),
        svc("both", nil, { { name = "key-auth" } }),
        svc("logged", nil, { { name = "serializer" } }),
      },
      consumers = {
        { username = "alice", custom_id = "c-alice",
          hmacauth_credentials = { { username = "alice", secret = ALICE_SECRET } },
          plugins = { { name = "headers", config = { header = "X-Alice", value = "yes" } } } },
        { username = "bob", hmacauth_credentials = { { username = "bob-hmac",
          secret = BOB_SECRET } } },
        { username = "mickey", keyauth_credentials = { { key = "mickey-key" } } },
        { username = "guest" },
        { id = "9d5b1f7e-6d1c-4f7e-8a1e-3c2b1a0f9e8d", custom_id = "anon-by-id" },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  -- Sends a signed request. opts: method, path (the route prefix included), names (the
  -- headers list), headers (lower-case names; "date" defaults to now unless false), body,
  -- user, secret, alg, via ("authorization" or "proxy-authorization"), http_version,
  -- tamper(headers) to change the request after signing, signature to override it.
  local function signed(opts)
    local method = opts.method or "GET"
    local path = opts.path or "/default"
    local alg = opts.alg or "hmac-sha256"
    local names = opts.names or "date request-line"
    local headers = {}
    for k, v in pairs(opts.headers or {}) do headers[k] = v end
    if headers.date == nil and not headers["x-date"] then headers.date = http_date() end
    if headers.date == false then headers.date = nil end
    local str = signing_string(names, headers, method, path, opts.http_version)
    local sig = opts.signature or b64_hmac(alg, opts.secret or ALICE_SECRET, str)
    headers[opts.via or "authorization"] = authorization(opts.user or "alice", alg, names, sig)
    if opts.tamper then opts.tamper(headers) end
    return assert(gw:request({ method = method, path = path, headers = headers,
                               body = opts.body, http_version = opts.http_version }))
  end

  local function seen(res) return res:json().headers end

  local function rejected(res, message, challenge)
    assert.equal(401, res.status)
    assert.same({ message = message }, res:json())
    assert.equal(challenge or "hmac", res.headers["www-authenticate"])
    assert.matches("^application/json", res.headers["content-type"])
  end

  describe("accepts a valid signature", function()
    for _, alg in ipairs({ "hmac-sha1", "hmac-sha256", "hmac-sha384", "hmac-sha512" }) do
      it("made with " .. alg .. ", and tells the upstream who called", function()
        local res = signed({ alg = alg })
        assert.equal(200, res.status)
        local h = seen(res)
        assert.equal("alice", h["x-consumer-username"])
        assert.equal("c-alice", h["x-consumer-custom-id"])
        assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", h["x-consumer-id"])
        assert.equal("alice", h["x-credential-identifier"])
        assert.is_nil(h["x-anonymous-consumer"])
        assert.equal(1, h["authorization"]:find('hmac username="alice", algorithm="' .. alg .. '"',
                                                 1, true))
      end)
    end

    it("whose raw HMAC has the algorithm's length (the spec's own sanity check)", function()
      for alg, len in pairs(RAW_LEN) do
        assert.equal(len, #crypto.hmac(DIGEST_OF[alg], "k", "d"))
      end
    end)

    it("that the openssl CLI computes too, and the gateway accepts that one", function()
      local date = http_date()
      local str = signing_string("date request-line", { date = date }, "GET",
                                 "/default/cross?x=1", "1.1")
      local ours = b64_hmac("hmac-sha256", ALICE_SECRET, str)
      local theirs = sh(fmt("printf '%%s' %s | openssl dgst -sha256 -hmac %s -binary | base64",
                            shell_quote(str), shell_quote(ALICE_SECRET)))
      assert.equal(ours, theirs)
      local theirs512 = sh(fmt("printf '%%s' %s | openssl dgst -sha512 -hmac %s -binary "
                               .. "| base64 -w0", shell_quote(str), shell_quote(ALICE_SECRET)))
      assert.equal(b64_hmac("hmac-sha512", ALICE_SECRET, str), theirs512)
      local res = assert(gw:get("/default/cross?x=1", { headers = { date = date,
        authorization = authorization("alice", "hmac-sha256", "date request-line", theirs) } }))
      assert.equal(200, res.status)
    end)

    it("in Proxy-Authorization", function()
      local res = signed({ via = "proxy-authorization" })
      assert.equal(200, res.status)
      assert.equal("alice", seen(res)["x-consumer-username"])
    end)

    it("in Authorization when Proxy-Authorization holds no hmac signature", function()
      local res = signed({ tamper = function(h) h["proxy-authorization"] = "hmac username" end })
      assert.equal(200, res.status)
    end)

    it("in Proxy-Authorization whatever Authorization holds (the upstream's own)", function()
      local res = signed({ via = "proxy-authorization",
                           tamper = function(h) h.authorization = "Bearer upstream-token" end })
      assert.equal(200, res.status)
      assert.equal("Bearer upstream-token", seen(res)["authorization"])
    end)

    it("over the request line with its query string, as the client sent it", function()
      local res = signed({ path = "/default/items?b=2&a=1&a=3" })
      assert.equal(200, res.status)
      assert.equal("/items?b=2&a=1&a=3", res:json().path)   -- the route's prefix is stripped
      res = signed({ path = "/default/some%20value/?name=foo%20b%C3%A1r" })
      assert.equal(200, res.status)
    end)

    it("over an HTTP/1.0 request line", function()
      local res = signed({ http_version = "1.0" })
      assert.equal(200, res.status)
      -- signed as 1.1 but sent as 1.0: the request line differs
      res = signed({ http_version = "1.0", tamper = function(h)
        local str = signing_string("date request-line", h, "GET", "/default", "1.1")
        h.authorization = authorization("alice", "hmac-sha256", "date request-line",
                                        b64_hmac("hmac-sha256", ALICE_SECRET, str))
      end })
      rejected(res, NOT_SAME)
    end)

    it("over @request-target", function()
      local res = signed({ method = "POST", path = "/default/orders?id=7",
                           names = "@request-target date", body = "x" })
      assert.equal(200, res.status)
      assert.equal("POST", res:json().method)
    end)

    it("over any headers, in the order listed, an absent one signed as 'name:'", function()
      local res = signed({ names = "content-md5 x-custom date x-absent request-line",
                           headers = { ["content-md5"] = "md5", ["x-custom"] = "a, b" } })
      assert.equal(200, res.status)
    end)

    it("with the header names spelled as the client listed them", function()
      local date = http_date()
      local sig = b64_hmac("hmac-sha1", ALICE_SECRET, "Date: " .. date)
      local res = assert(gw:get("/default", { headers = { date = date,
        authorization = authorization("alice", "hmac-sha1", "Date", sig) } }))
      assert.equal(200, res.status)
    end)

    it("with the parameters in any order and spacing", function()
      local date = http_date()
      local sig = b64_hmac("hmac-sha1", ALICE_SECRET, "date: " .. date)
      local res = assert(gw:get("/default", { headers = { date = date, authorization =
        fmt('HMAC signature="%s",headers="date" ,  algorithm="hmac-sha1",username="alice"',
            sig) } }))
      assert.equal(200, res.status)
    end)

    it("for each credential's own secret", function()
      local res = signed({ user = "bob-hmac", secret = BOB_SECRET })
      assert.equal(200, res.status)
      assert.equal("bob", seen(res)["x-consumer-username"])
      assert.equal("bob-hmac", seen(res)["x-credential-identifier"])
    end)
  end)

  describe("rejects with 401, Kong's message and WWW-Authenticate", function()
    it("a request without Authorization or Proxy-Authorization: Unauthorized", function()
      rejected(assert(gw:get("/default", { headers = { date = http_date() } })), "Unauthorized")
      rejected(assert(gw:get("/default")), "Unauthorized")   -- before the date is looked at
    end)

    it("a missing date, before anything else is checked", function()
      rejected(signed({ headers = { date = false }, names = "request-line" }), BAD_DATE)
      rejected(assert(gw:get("/default", { headers = { authorization = "asd" } })), BAD_DATE)
    end)

    it("an Authorization value that is not an hmac signature", function()
      for _, v in ipairs({ "asd", "hmac username", "hmac :dXNlcm5hbWU6cGFzc3dvcmQ=",
                           "Basic YWxpY2U6c2VjcmV0",
                           'hmac username="alice", algorithm="hmac-sha1" headers="date", '
                             .. 'signature="x"' }) do
        rejected(assert(gw:get("/default", { headers = { date = http_date(),
                                                         authorization = v } })), NOT_VALID)
        rejected(assert(gw:get("/default", { headers = { date = http_date(),
                                                         ["proxy-authorization"] = v } })),
                 NOT_VALID)
      end
    end)

    it("an unknown username", function()
      rejected(signed({ user = "mallory" }), NOT_VALID)
    end)

    it("an unknown algorithm", function()
      rejected(signed({ tamper = function(h)
        h.authorization = h.authorization:gsub('"hmac%-sha256"', '"hmac-sha"')
      end }), NOT_VALID)
    end)

    it("a signature made with another secret", function()
      rejected(signed({ secret = BOB_SECRET }), NOT_SAME)
    end)

    it("a signature made with another algorithm than the one declared", function()
      rejected(signed({ tamper = function(h)
        h.authorization = h.authorization:gsub('"hmac%-sha256"', '"hmac-sha512"')
      end }), NOT_SAME)
    end)

    it("a signature that is not base64", function()
      rejected(signed({ signature = "not really a base64 encoded value!!!" }), NOT_SAME)
    end)

    it("a signed header changed after signing", function()
      rejected(signed({ names = "date x-amount", headers = { ["x-amount"] = "10" },
        tamper = function(h) h["x-amount"] = "1000" end }), NOT_SAME)
    end)

    it("a query string changed, or dropped from the request line, after signing", function()
      local date = http_date()
      local function try(signed_target, sent_target)
        local sig = b64_hmac("hmac-sha256", ALICE_SECRET, signing_string("date request-line",
          { date = date }, "GET", signed_target))
        return assert(gw:get(sent_target, { headers = { date = date,
          authorization = authorization("alice", "hmac-sha256", "date request-line", sig) } }))
      end
      assert.equal(200, try("/default/pay?amount=10", "/default/pay?amount=10").status)
      rejected(try("/default/pay?amount=10", "/default/pay?amount=1000"), NOT_SAME)
      rejected(try("/default/pay?amount=10", "/default/pay?amount=10&to=eve"), NOT_SAME)
      -- Kong still accepts a request line signed without its query; moongate does not
      rejected(try("/default/pay", "/default/pay?amount=1000"), NOT_SAME)
    end)

    it("a header named request-line standing in for the real request line", function()
      local date = http_date()
      local fake = "GET /default/harmless HTTP/1.1"
      -- what Kong would sign: the header's value, since the request has such a header
      local sig = b64_hmac("hmac-sha256", ALICE_SECRET,
                           "date: " .. date .. "\nrequest-line: " .. fake)
      rejected(assert(gw:get("/default/other", { headers = { date = date,
        ["request-line"] = fake,
        authorization = authorization("alice", "hmac-sha256", "date request-line", sig) } })),
        NOT_SAME)
    end)

    it("without calling the upstream", function()
      local before = up:count()
      rejected(signed({ secret = "wrong" }), NOT_SAME)
      rejected(signed({ user = "nobody" }), NOT_VALID)
      assert.equal(before, up:count())
    end)

    it("with the configured realm in the challenge", function()
      rejected(assert(gw:get("/realm")), "Unauthorized", 'hmac realm="orders"')
      rejected(signed({ path = "/realm", secret = "wrong" }), NOT_SAME, 'hmac realm="orders"')
      assert.equal(200, signed({ path = "/realm" }).status)
    end)
  end)

  describe("clock skew", function()
    -- Start right after a second boundary so that the whole exchange happens within the
    -- same second on both clocks (bounded wait: at most ~1.1 s).
    local function fresh_second()
      for _ = 1, 40 do
        if helpers.now() % 1 < 0.3 then break end
        helpers.sleep(0.03)
      end
      return math.floor(helpers.now())
    end

    it("accepts a Date exactly clock_skew away, in the past or the future", function()
      local t = fresh_second()
      assert.equal(200, signed({ path = "/skew", headers = { date = http_date(t - 10) } }).status)
      t = fresh_second()
      assert.equal(200, signed({ path = "/skew", headers = { date = http_date(t + 10) } }).status)
    end)

    it("refuses a Date one second further, in the past or the future", function()
      local t = fresh_second()
      rejected(signed({ path = "/skew", headers = { date = http_date(t - 11) } }), BAD_DATE)
      t = fresh_second()
      rejected(signed({ path = "/skew", headers = { date = http_date(t + 11) } }), BAD_DATE)
    end)

    it("allows 300 seconds by default", function()
      local t = fresh_second()
      assert.equal(200, signed({ headers = { date = http_date(t - 290) } }).status)
      rejected(signed({ headers = { date = http_date(t - 310) } }), BAD_DATE)
      rejected(signed({ path = "/skew", headers = { date = http_date(t - 290) } }), BAD_DATE)
    end)

    it("takes X-Date instead of Date", function()
      local res = signed({ names = "x-date request-line",
                           headers = { date = false, ["x-date"] = http_date() } })
      assert.equal(200, res.status)
      local t = fresh_second()
      rejected(signed({ path = "/skew", names = "x-date",
                        headers = { date = false, ["x-date"] = http_date(t - 11) } }), BAD_DATE)
    end)

    it("passes when either of X-Date and Date is valid", function()
      -- a malformed X-Date with a good Date, and the other way round
      assert.equal(200, signed({ headers = { ["x-date"] = "wrong date",
                                             date = http_date() } }).status)
      assert.equal(200, signed({ names = "x-date date", headers = { ["x-date"] = http_date(),
                                                                   date = "wrong date" } }).status)
      rejected(signed({ headers = { ["x-date"] = "wrong date", date = "also wrong" } }),
               BAD_DATE)
    end)

    it("understands the RFC 850 and asctime date forms", function()
      local t = os.time()
      assert.equal(200, signed({ headers = {
        date = os.date("!%A, %d-%b-%y %H:%M:%S GMT", t) } }).status)
      local asctime = os.date("!%a %b ", t) .. fmt("%2d", tonumber(os.date("!%d", t)))
                      .. os.date("! %H:%M:%S %Y", t)
      assert.equal(200, signed({ headers = { date = asctime } }).status)
    end)
  end)

  describe("enforce_headers", function()
    it("refuses a signature that leaves out an enforced header", function()
      rejected(signed({ path = "/enforce", names = "date" }), NOT_VALID)
      rejected(signed({ path = "/enforce", names = "request-line" }), NOT_VALID)
    end)

    it("compares names exactly, so Request-Line does not stand for request-line", function()
      rejected(signed({ path = "/enforce", names = "date Request-Line" }), NOT_VALID)
    end)

    it("accepts a signature covering all of them, in any order, among others", function()
      assert.equal(200, signed({ path = "/enforce", names = "request-line x-a date",
                                 headers = { ["x-a"] = "1" } }).status)
    end)
  end)

  describe("algorithms", function()
    it("refuses an algorithm the configuration does not allow", function()
      rejected(signed({ path = "/algs", alg = "hmac-sha1" }), NOT_VALID)
      rejected(signed({ path = "/algs", alg = "hmac-sha512" }), NOT_VALID)
    end)

    it("accepts the allowed one", function()
      assert.equal(200, signed({ path = "/algs", alg = "hmac-sha256" }).status)
    end)
  end)

  describe("validate_request_body", function()
    local BODY = '{"a":"apple","b":"ball"}'
    local function digest_of(body)
      return "SHA-256=" .. crypto.encode_base64(crypto.digest("sha256", body))
    end

    it("computes the Digest the way the openssl CLI does", function()
      assert.equal(digest_of(BODY), "SHA-256=" .. sh(fmt(
        "printf '%%s' %s | openssl dgst -sha256 -binary | base64", shell_quote(BODY))))
    end)

    it("accepts a body whose Digest matches, and proxies the body untouched", function()
      local res = signed({ method = "POST", path = "/body", names = "date digest request-line",
                           headers = { digest = digest_of(BODY) }, body = BODY })
      assert.equal(200, res.status)
      assert.equal(BODY, res:json().body)
    end)

    it("refuses a body changed after signing", function()
      rejected(signed({ method = "POST", path = "/body", names = "date digest",
                        headers = { digest = digest_of(BODY) }, body = "abc" }), NOT_SAME)
    end)

    it("refuses a wrong Digest, or one not in Kong's exact form", function()
      rejected(signed({ method = "POST", path = "/body", names = "date digest",
                        headers = { digest = digest_of(BODY) .. "spoofed" }, body = BODY }),
               NOT_SAME)
      rejected(signed({ method = "POST", path = "/body", names = "date digest",
        headers = { digest = digest_of(BODY):gsub("^SHA%-256", "sha-256") }, body = BODY }),
        NOT_SAME)
    end)

    it("refuses a body without a Digest", function()
      rejected(signed({ method = "POST", path = "/body", body = BODY }), NOT_SAME)
    end)

    it("accepts no body without a Digest, and no body with the empty body's Digest", function()
      assert.equal(200, signed({ path = "/body" }).status)
      assert.equal(200, signed({ path = "/body", names = "date digest",
                                 headers = { digest = digest_of("") } }).status)
    end)

    it("checks the signature first", function()
      rejected(signed({ method = "POST", path = "/body", secret = "wrong", body = BODY,
                        headers = { digest = digest_of(BODY) } }), NOT_SAME)
      rejected(signed({ method = "POST", path = "/body", user = "nobody", body = BODY }),
               NOT_VALID)
    end)

    it("is off by default: a wrong Digest does not matter then", function()
      assert.equal(200, signed({ method = "POST", body = BODY,
                                 headers = { digest = "SHA-256=wrong" } }).status)
    end)
  end)

  describe("hide_credentials", function()
    it("removes Authorization before proxying, and nothing else", function()
      local res = signed({ path = "/hide", names = "date x-keep",
                           headers = { ["x-keep"] = "1" } })
      assert.equal(200, res.status)
      local h = seen(res)
      assert.is_nil(h["authorization"])
      assert.equal("1", h["x-keep"])
      assert.is_not_nil(h["date"])
    end)

    it("removes Proxy-Authorization when the signature came in it", function()
      local res = signed({ path = "/hide", via = "proxy-authorization",
                           tamper = function(h) h.authorization = "Bearer upstream" end })
      assert.equal(200, res.status)
      local h = seen(res)
      assert.is_nil(h["proxy-authorization"])
      assert.equal("Bearer upstream", h["authorization"])
    end)

    it("is off by default", function()
      assert.is_not_nil(seen(signed({}))["authorization"])
    end)
  end)

  describe("the logs", function()
    it("never show the signature; serialize() redacts Authorization", function()
      local res = signed({ path = "/logged/x" })
      assert.equal(200, res.status)
      local sig = seen(res)["authorization"]:match('signature="([^"]+)"')
      signed({ path = "/logged/y", secret = "wrong" })
      helpers.eventually(function()
        assert.matches("authorization=REDACTED", gw:error_log(), 1, true)
        assert.is_true(#gw:access_log_lines() > 0)
      end)
      local logs = gw:error_log() .. helpers.json_encode(gw:access_log_lines())
      assert.is_nil(logs:find(sig, 1, true))
      assert.is_nil(logs:find(ALICE_SECRET, 1, true))
      assert.not_matches("algorithm=", logs)
    end)
  end)

  describe("anonymous", function()
    it("lets a request without a signature through as the anonymous consumer", function()
      local res = assert(gw:get("/anon"))
      assert.equal(200, res.status)
      local h = seen(res)
      assert.equal("guest", h["x-consumer-username"])
      assert.equal("true", h["x-anonymous-consumer"])
      assert.is_nil(h["x-credential-identifier"])
    end)

    it("also covers a bad date or signature, while a good one identifies its consumer", function()
      assert.equal("guest", seen(signed({ path = "/anon", secret = "wrong" }))
                              ["x-consumer-username"])
      assert.equal("guest", seen(signed({ path = "/anon", headers = { date = false },
                                          names = "request-line" }))["x-consumer-username"])
      local h = seen(signed({ path = "/anon" }))
      assert.equal("alice", h["x-consumer-username"])
      assert.is_nil(h["x-anonymous-consumer"])
    end)

    it("finds the anonymous consumer by id too", function()
      local h = seen(assert(gw:get("/anonid")))
      assert.equal("9d5b1f7e-6d1c-4f7e-8a1e-3c2b1a0f9e8d", h["x-consumer-id"])
      assert.equal("anon-by-id", h["x-consumer-custom-id"])
    end)

    it("fails the request with 500 when the anonymous consumer does not exist", function()
      assert.equal(500, assert(gw:get("/anonmissing")).status)
      helpers.eventually(function()
        assert.matches('anonymous consumer "nobody" is configured but doesn\'t exist',
                       gw:error_log(), 1, true)
      end)
      assert.equal(200, signed({ path = "/anonmissing" }).status)
    end)

    it("overwrites consumer headers a client tried to forge", function()
      local h = seen(assert(gw:get("/anon", { headers = { ["X-Consumer-Username"] = "admin",
        ["X-Credential-Identifier"] = "forged", ["X-Anonymous-Consumer"] = "false" } })))
      assert.equal("guest", h["x-consumer-username"])
      assert.is_nil(h["x-credential-identifier"])
      assert.equal("true", h["x-anonymous-consumer"])
    end)
  end)

  describe("with key-auth", function()
    it("forms a logical OR when both have anonymous", function()
      local h = seen(assert(gw:get("/either", { headers = { apikey = "mickey-key",
                                                            authorization = "garbage" } })))
      assert.equal("mickey", h["x-consumer-username"])   -- hmac-auth had nothing to do
      h = seen(signed({ path = "/either" }))
      assert.equal("alice", h["x-consumer-username"])
      assert.is_nil(h["x-anonymous-consumer"])
      h = seen(assert(gw:get("/either")))
      assert.equal("guest", h["x-consumer-username"])
      assert.equal("true", h["x-anonymous-consumer"])
    end)

    it("forms a logical AND without anonymous", function()
      rejected(assert(gw:get("/both", { headers = { apikey = "mickey-key" } })), "Unauthorized")
      local res = signed({ path = "/both", tamper = function(h) h.apikey = "mickey-key" end })
      assert.equal(200, res.status)
      assert.equal(401, signed({ path = "/both" }).status)
    end)
  end)

  describe("consumer-scoped plugins", function()
    it("apply once the consumer is identified, and only for that consumer", function()
      assert.equal("yes", seen(signed({}))["x-alice"])
      assert.is_nil(seen(signed({ user = "bob-hmac", secret = BOB_SECRET }))["x-alice"])
      assert.is_nil(seen(assert(gw:get("/anon")))["x-alice"])
    end)
  end)
end)
