-- jwt against the real binary and a real echo upstream. Keys are generated with the openssl
-- CLI at test time and every token is signed here (spec/fixtures/jwt/tokens.lua); one HS256
-- signature and one RS256 signature are cross-checked with openssl. Covers every algorithm,
-- every rejection with its status, body and WWW-Authenticate, algorithm confusion, where a
-- token may come from, claim checks, maximum_expiration, secret_is_base64, anonymous and the
-- logical OR/AND with key-auth, run_on_preflight, ctx.shared.authenticated_jwt_token and log
-- redaction; then the token parser alone.
local helpers = require "spec.helpers"
local crypto = require "moongate.crypto"
local cjson = require "cjson"
local tokens = require "fixtures.jwt.tokens"

local PWD = os.getenv("PWD")
local PLUGIN_PATH = PWD .. "/spec/fixtures/jwt/?.lua;" .. PWD .. "/spec/fixtures/plugins/?.lua;;"

local encode, b64 = tokens.encode, tokens.b64

local HS256_SECRET = "alice-secret-0123456789abcdef"
local HS384_SECRET = "hs384-secret-" .. string.rep("x", 40)
local HS512_SECRET = "hs512-secret-" .. string.rep("y", 70)
-- raw bytes (not text), stored base64-encoded for the secret_is_base64 route
local RAW_SECRET = "\0\1\2\255\254binary-secret\n\r\t" .. string.rep("\200", 20)

describe("jwt", function()
  local up, gw
  local rsa, rsa_other, ec256, ec256_other, ec384

  lazy_setup(function()
    tokens.tempdir()
    rsa = tokens.keypair("rsa", "rsa", 2048)
    rsa_other = tokens.keypair("rsa-other", "rsa", 2048)
    ec256 = tokens.keypair("ec256", "ec", "P-256")
    ec256_other = tokens.keypair("ec256-other", "ec", "P-256")
    ec384 = tokens.keypair("ec384", "ec", "P-384")

    up = helpers.upstream()
    local function svc(name, config, more_plugins)
      local plugins = { { name = "jwt", config = config } }
      for _, p in ipairs(more_plugins or {}) do plugins[#plugins + 1] = p end
      return { name = name, url = up.url, routes = { { name = name, paths = { "/" .. name } } },
               plugins = plugins }
    end
    gw = helpers.start({
      lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "serializer", "jwt-ctx-echo" },
      limits = { max_header_line = 32768 },   -- room for a token over the plugin's 8 KiB
      services = {
        svc("default", nil, { { name = "jwt-ctx-echo" } }),
        svc("claims", { claims_to_verify = { "exp", "nbf" } }),
        svc("nbfonly", { claims_to_verify = { "nbf" } }),
        svc("maxexp", { claims_to_verify = { "exp" }, maximum_expiration = 300 }),
        svc("b64", { secret_is_base64 = true }),
        svc("sources", { uri_param_names = { "token", "t2" }, cookie_names = { "crumble", "silly" },
                         header_names = { "X-Token", "authorization" }, realm = "api" }),
        svc("logged", { header_names = { "X-Token" } }, { { name = "serializer" } }),
        svc("noquery", { uri_param_names = {}, header_names = {} }),
        svc("kid", { key_claim_name = "kid" }),
        svc("anon", { anonymous = "guest", claims_to_verify = { "exp" } },
            { { name = "jwt-ctx-echo" } }),
        svc("anonmissing", { anonymous = "nobody" }),
        svc("or", { anonymous = "guest" },
            { { name = "key-auth", config = { anonymous = "guest" } } }),
        svc("and", nil, { { name = "key-auth" } }),
        svc("nopreflight", { run_on_preflight = false }),
      },
      consumers = {
        { username = "alice", custom_id = "c-alice", jwt_secrets = {
          { key = "alice-iss", secret = HS256_SECRET },   -- algorithm defaults to HS256
          { key = "alice-hs384", algorithm = "HS384", secret = HS384_SECRET },
          { key = "alice-hs512", algorithm = "HS512", secret = HS512_SECRET },
        } },
        { username = "rsa-user", jwt_secrets = {
          { key = "rs256", algorithm = "RS256", rsa_public_key = rsa.public_pem },
          { key = "rs384", algorithm = "RS384", rsa_public_key = rsa.public_pem },
          { key = "rs512", algorithm = "RS512", rsa_public_key = rsa.public_pem },
        } },
        { username = "ec-user", jwt_secrets = {
          { key = "es256", algorithm = "ES256", rsa_public_key = ec256.public_pem },
          { key = "es384", algorithm = "ES384", rsa_public_key = ec384.public_pem },
        } },
        { username = "b64-user", jwt_secrets = {
          { key = "b64-iss", secret = crypto.encode_base64(RAW_SECRET) },
        } },
        { username = "bob", keyauth_credentials = { { key = "bob-key" } } },
        { username = "guest" },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
    tokens.cleanup()
  end)

  local function claims(iss, extra)
    local c = { iss = iss, sub = "someone" }
    for k, v in pairs(extra or {}) do c[k] = v end
    return c
  end
  local function bearer(token) return { headers = { Authorization = "Bearer " .. token } } end
  local function seen(res) return res:json().headers end

  -- a 401 with Kong's body, and the challenge
  local function refused(res, body, challenge)
    assert.equal(401, res.status)
    if type(body) == "string" then body = { message = body } end
    assert.same(body, res:json())
    assert.equal(challenge or 'Bearer error="invalid_token"', res.headers["www-authenticate"])
  end

  describe("signatures made with openssl agree with the gateway's", function()
    it("HS256: moongate.crypto's HMAC is the one `openssl dgst -hmac` computes", function()
      local token = encode(claims("alice-iss"), "HS256", HS256_SECRET)
      local input, sig = token:match("^(.+)%.([^.]+)$")
      assert.equal(tokens.openssl_hmac("sha256", HS256_SECRET, input),
                   crypto.decode_base64(sig, true))
      assert.equal(200, assert(gw:get("/default", bearer(token))).status)
    end)

    it("RS256: openssl verifies the signature the gateway accepts", function()
      local token = encode(claims("rs256"), "RS256", rsa)
      local input, sig = token:match("^(.+)%.([^.]+)$")
      assert.is_true(tokens.openssl_verify("sha256", rsa.public, input,
                                           crypto.decode_base64(sig, true)))
      assert.equal(200, assert(gw:get("/default", bearer(token))).status)
    end)

    it("ES256: r || s converted back to DER verifies with openssl", function()
      local token = encode(claims("es256"), "ES256", ec256)
      local input, sig = token:match("^(.+)%.([^.]+)$")
      local raw = crypto.decode_base64(sig, true)
      assert.equal(64, #raw)
      -- rebuild DER by hand: INTEGERs with a sign byte when the top bit is set
      local function int(x)
        x = x:gsub("^%z+", "")
        if x:byte(1) >= 0x80 then x = "\0" .. x end
        return "\2" .. string.char(#x) .. x
      end
      local body = int(raw:sub(1, 32)) .. int(raw:sub(33))
      local der = "\48" .. string.char(#body) .. body
      assert.is_true(tokens.openssl_verify("sha256", ec256.public, input, der))
    end)
  end)

  describe("accepts every algorithm", function()
    local cases = {
      { "HS256", "alice-iss", function() return HS256_SECRET end, "alice" },
      { "HS384", "alice-hs384", function() return HS384_SECRET end, "alice" },
      { "HS512", "alice-hs512", function() return HS512_SECRET end, "alice" },
      { "RS256", "rs256", function() return rsa end, "rsa-user" },
      { "RS384", "rs384", function() return rsa end, "rsa-user" },
      { "RS512", "rs512", function() return rsa end, "rsa-user" },
      { "ES256", "es256", function() return ec256 end, "ec-user" },
      { "ES384", "es384", function() return ec384 end, "ec-user" },
    }
    for _, c in ipairs(cases) do
      local alg, key, secret, user = c[1], c[2], c[3], c[4]
      it(alg .. ", and tells the upstream who called", function()
        local token = encode(claims(key), alg, secret())
        local res = assert(gw:get("/default", bearer(token)))
        assert.equal(200, res.status)
        local h = seen(res)
        assert.equal(user, h["x-consumer-username"])
        assert.equal(key, h["x-credential-identifier"])
        assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", h["x-consumer-id"])
        assert.is_nil(h["x-anonymous-consumer"])
        assert.equal("Bearer " .. token, h["authorization"])   -- passed on as Kong does
        assert.equal(token, h["x-jwt-ctx"])                    -- ctx.shared.authenticated_jwt_token
      end)
    end

    it("with X-Consumer-Custom-ID when the consumer has one", function()
      local h = seen(assert(gw:get("/default", bearer(encode(claims("alice-iss"), "HS256",
                                                               HS256_SECRET)))))
      assert.equal("c-alice", h["x-consumer-custom-id"])
    end)

    it("ignores consumer headers a client tried to forge", function()
      local opts = bearer(encode(claims("rs256"), "RS256", rsa))
      opts.headers["X-Consumer-Username"] = "admin"
      opts.headers["X-Consumer-Custom-ID"] = "forged"
      opts.headers["X-Anonymous-Consumer"] = "true"
      local h = seen(assert(gw:get("/default", opts)))
      assert.equal("rsa-user", h["x-consumer-username"])
      assert.is_nil(h["x-consumer-custom-id"])
      assert.is_nil(h["x-anonymous-consumer"])
    end)
  end)

  describe("rejects", function()
    it("a request without a token: 401 Unauthorized, a bare Bearer challenge", function()
      local before = up:count()
      refused(assert(gw:get("/default")), "Unauthorized", "Bearer")
      assert.matches("^application/json", assert(gw:get("/default")).headers["content-type"])
      refused(assert(gw:get("/default?jwt=")), "Unauthorized", "Bearer")
      refused(assert(gw:get("/default", { headers = { Authorization = "Basic YTpi" } })),
              "Unauthorized", "Bearer")
      refused(assert(gw:get("/default", { headers = { Authorization = "Bearer" } })),
              "Unauthorized", "Bearer")
      assert.equal(before, up:count())
    end)

    it("a tampered payload: Invalid signature", function()
      local token = encode(claims("alice-iss"), "HS256", HS256_SECRET)
      local h, _, s = token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
      local forged = h .. "." .. b64(cjson.encode(claims("alice-iss", { admin = true })))
                     .. "." .. s
      refused(assert(gw:get("/default", bearer(forged))), "Invalid signature")
      for _, alg in ipairs({ "RS256", "ES256" }) do
        local key = alg == "RS256" and "rs256" or "es256"
        local t = encode(claims(key), alg, alg == "RS256" and rsa or ec256)
        h, _, s = t:match("^([^.]+)%.([^.]+)%.([^.]+)$")
        forged = h .. "." .. b64(cjson.encode(claims(key, { admin = true }))) .. "." .. s
        refused(assert(gw:get("/default", bearer(forged))), "Invalid signature")
      end
    end)

    it("a token signed with another key: Invalid signature", function()
      refused(assert(gw:get("/default", bearer(encode(claims("alice-iss"), "HS256", "guess")))),
              "Invalid signature")
      refused(assert(gw:get("/default", bearer(encode(claims("rs256"), "RS256", rsa_other)))),
              "Invalid signature")
      refused(assert(gw:get("/default", bearer(encode(claims("es256"), "ES256", ec256_other)))),
              "Invalid signature")
    end)

    it("an ECDSA signature in DER instead of JOSE's r || s: Invalid signature", function()
      local token = encode(claims("es256"), "ES256", ec256, { der = true })
      refused(assert(gw:get("/default", bearer(token))), "Invalid signature")
    end)

    it("an empty signature: Invalid signature", function()
      local token = encode(claims("alice-iss"), "HS256", HS256_SECRET):gsub("[^.]+$", "")
      refused(assert(gw:get("/default", bearer(token))), "Invalid signature")
    end)

    it("algorithm confusion: an HS256 token signed with an RSA credential's public key",
       function()
      -- the attack: the public key is public, so anyone can make this HMAC
      local pem = rsa.public_pem
      local t1 = encode(claims("rs256"), "HS256", pem)
      refused(assert(gw:get("/default", bearer(t1))), "Invalid algorithm")
      -- and the header claiming RS256 over that HMAC fails as a signature
      local t2 = encode(claims("rs256"), "HS256", pem, { header = { alg = "RS256" } })
      refused(assert(gw:get("/default", bearer(t2))), "Invalid signature")
      -- nor can an EC credential's key be used that way
      local t3 = encode(claims("es256"), "HS256", ec256.public_pem)
      refused(assert(gw:get("/default", bearer(t3))), "Invalid algorithm")
    end)

    it("an algorithm other than the credential's (ES256 token, ES384 credential)", function()
      refused(assert(gw:get("/default", bearer(encode(claims("es384"), "ES256", ec256)))),
              "Invalid algorithm")
      refused(assert(gw:get("/default", bearer(encode(claims("rs384"), "RS256", rsa)))),
              "Invalid algorithm")
      refused(assert(gw:get("/default", bearer(encode(claims("alice-hs384"), "HS256",
                                                      HS384_SECRET)))),
              "Invalid algorithm")
    end)

    it("alg none, a missing alg and unknown algorithms: Bad token; invalid alg", function()
      local c = b64(cjson.encode(claims("alice-iss")))
      for _, header in ipairs({ '{"alg":"none","typ":"JWT"}', '{"alg":"None"}', '{"typ":"JWT"}',
                                '{"alg":"PS256"}', '{"alg":"HS1"}', '{"alg":256}', '"HS256"' }) do
        local token = b64(header) .. "." .. c .. "."
        refused(assert(gw:get("/default", bearer(token))), "Bad token; invalid alg")
        refused(assert(gw:get("/default", bearer(token .. b64("x")))), "Bad token; invalid alg")
      end
    end)

    it("malformed tokens with Kong's reasons", function()
      local good = encode(claims("alice-iss"), "HS256", HS256_SECRET)
      local h, c, s = good:match("^([^.]+)%.([^.]+)%.([^.]+)$")
      refused(assert(gw:get("/default", bearer("not-a-token"))), "Bad token; invalid JSON")
      refused(assert(gw:get("/default", bearer(h .. "." .. c))), "Bad token; invalid JSON")
      refused(assert(gw:get("/default", bearer("x" .. good))), "Bad token; invalid JSON")
      refused(assert(gw:get("/default", bearer(b64("{nope") .. "." .. c .. "." .. s))),
              "Bad token; invalid JSON")
      refused(assert(gw:get("/default", bearer(h .. ".%%%." .. s))), "Bad token; invalid JSON")
      refused(assert(gw:get("/default", bearer(h .. "." .. b64("null") .. "." .. s))),
              "Bad token; invalid claims")
      refused(assert(gw:get("/default", bearer(h .. "." .. b64("[1,2]") .. "." .. s))),
              "Bad token; invalid claims")
      refused(assert(gw:get("/default", bearer(good .. ".extra"))), "Bad token; invalid signature")
      refused(assert(gw:get("/default", bearer(h .. "." .. c .. ".a+b/"))),
              "Bad token; invalid signature")
    end)

    it("base64url that is not canonical (stray bits in the last character)", function()
      local header = '{"alg": "HS256"}'              -- 16 bytes: 22 characters, 4 spare bits
      local enc = b64(header)
      assert.equal(2, #enc % 4)
      local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
      local last = alphabet:find(enc:sub(-1), 1, true)
      local stray = enc:sub(1, -2) .. alphabet:sub(last + 1, last + 1)
      assert.equal(header, crypto.decode_base64(enc, true))
      local c = b64(cjson.encode(claims("alice-iss")))
      local input = stray .. "." .. c
      local token = input .. "." .. b64(crypto.hmac("sha256", HS256_SECRET, input))
      refused(assert(gw:get("/default", bearer(token))), "Bad token; invalid JSON")
    end)

    it("a token over 8 KiB: Bad token; token too large", function()
      local token = encode(claims("alice-iss", { pad = string.rep("p", 8200) }), "HS256",
                           HS256_SECRET)
      refused(assert(gw:get("/default", bearer(token))), "Bad token; token too large")
      -- just under the bound is fine
      local ok = encode(claims("alice-iss", { pad = string.rep("p", 5800) }), "HS256",
                        HS256_SECRET)
      assert.is_true(#ok < 8192)
      assert.equal(200, assert(gw:get("/default", bearer(ok))).status)
    end)

    it("a header with crit (no extension is understood): Bad token; unsupported crit",
       function()
      local token = encode(claims("alice-iss"), "HS256", HS256_SECRET,
                           { header = { alg = "HS256", crit = { "b64" }, b64 = false } })
      refused(assert(gw:get("/default", bearer(token))), "Bad token; unsupported crit")
    end)

    it("no key claim: No mandatory 'iss' in claims", function()
      local token = encode({ sub = "x" }, "HS256", HS256_SECRET)
      refused(assert(gw:get("/default", bearer(token))), "No mandatory 'iss' in claims")
    end)

    it("an empty or non-string key claim: Invalid 'iss' in claims", function()
      refused(assert(gw:get("/default", bearer(encode({ iss = "" }, "HS256", HS256_SECRET)))),
              "Invalid 'iss' in claims")
      refused(assert(gw:get("/default", bearer(encode({ iss = 42 }, "HS256", HS256_SECRET)))),
              "Invalid 'iss' in claims")
      refused(assert(gw:get("/default", bearer(encode({ iss = { "alice-iss" } }, "HS256",
                                                      HS256_SECRET)))),
              "Invalid 'iss' in claims")
    end)

    it("an unknown key: No credentials found for given 'iss'", function()
      refused(assert(gw:get("/default", bearer(encode(claims("nobody"), "HS256", "x")))),
              "No credentials found for given 'iss'")
    end)

    it("two different tokens: Multiple tokens provided", function()
      local a = encode(claims("alice-iss"), "HS256", HS256_SECRET)
      local b = encode(claims("rs256"), "RS256", rsa)
      refused(assert(gw:get("/default?jwt=" .. a, bearer(b))), "Multiple tokens provided")
      refused(assert(gw:get("/default?jwt=" .. a .. "&jwt=" .. b)), "Multiple tokens provided")
      refused(assert(gw:get("/sources?token=" .. a .. "&t2=" .. b)), "Multiple tokens provided",
              'Bearer realm="api", error="invalid_token"')
      refused(assert(gw:get("/sources", { headers = { ["X-Token"] = "Bearer " .. a,
                                                      Authorization = "Bearer " .. b } })),
              "Multiple tokens provided", 'Bearer realm="api", error="invalid_token"')
      -- the same token twice is one token
      assert.equal(200, assert(gw:get("/default?jwt=" .. a, bearer(a))).status)
      assert.equal(200, assert(gw:get("/default?jwt=" .. a .. "&jwt=" .. a)).status)
    end)

    it("without a request ever reaching the upstream", function()
      local before = up:count()
      gw:get("/default", bearer(encode(claims("alice-iss"), "HS256", "guess")))
      gw:get("/default", bearer(encode(claims("rs256"), "HS256", rsa.public_pem)))
      gw:get("/claims?jwt=" .. encode(claims("alice-iss", { exp = os.time() - 5 }), "HS256",
                                      HS256_SECRET))
      assert.equal(before, up:count())
    end)
  end)

  describe("claims_to_verify", function()
    local function call(path, c)
      return assert(gw:get(path .. "?jwt=" .. encode(c, "HS256", HS256_SECRET)))
    end

    it("requires the claims, as numbers", function()
      refused(call("/claims", claims("alice-iss")),
              { exp = "must be a number", nbf = "must be a number" })
      refused(call("/claims", claims("alice-iss", { exp = "9999999999", nbf = 0 })),
              { exp = "must be a number" })
      refused(call("/nbfonly", claims("alice-iss")), { nbf = "must be a number" })
    end)

    it("refuses an expired token", function()
      refused(call("/claims", claims("alice-iss", { exp = os.time() - 10, nbf = os.time() - 20 })),
              { exp = "token expired" })
      -- exp is the first second the token is no longer valid (Kong: exp <= now)
      refused(call("/claims", claims("alice-iss", { exp = os.time() - 1, nbf = 0 })),
              { exp = "token expired" })
    end)

    it("refuses a token not valid yet", function()
      refused(call("/claims", claims("alice-iss", { exp = os.time() + 60, nbf = os.time() + 30 })),
              { nbf = "token not valid yet" })
      refused(call("/claims", claims("alice-iss", { exp = os.time() - 5, nbf = os.time() + 30 })),
              { exp = "token expired", nbf = "token not valid yet" })
    end)

    it("accepts a token in its validity window", function()
      assert.equal(200, call("/claims", claims("alice-iss", { exp = os.time() + 60,
                                                            nbf = os.time() - 5 })).status)
      assert.equal(200, call("/nbfonly", claims("alice-iss", { nbf = os.time() - 5 })).status)
    end)

    it("checks nothing when not configured", function()
      assert.equal(200, call("/default", claims("alice-iss", { exp = os.time() - 1000,
                                                             nbf = os.time() + 1000 })).status)
    end)

    it("checks the signature before the claims", function()
      refused(assert(gw:get("/claims?jwt=" .. encode(claims("alice-iss"), "HS256", "guess"))),
              "Invalid signature")
    end)
  end)

  describe("maximum_expiration", function()
    it("refuses a token that expires too far in the future", function()
      local t = encode(claims("alice-iss", { exp = os.time() + 3600 }), "HS256", HS256_SECRET)
      local res = assert(gw:get("/maxexp?jwt=" .. t))
      refused(res, { exp = "exceeds maximum allowed expiration" })
      assert.equal('{"exp":"exceeds maximum allowed expiration"}', res.body)
    end)

    it("accepts one within the limit", function()
      local t = encode(claims("alice-iss", { exp = os.time() + 240 }), "HS256", HS256_SECRET)
      assert.equal(200, assert(gw:get("/maxexp?jwt=" .. t)).status)
    end)

    it("still refuses an expired one as expired", function()
      local t = encode(claims("alice-iss", { exp = os.time() - 5 }), "HS256", HS256_SECRET)
      refused(assert(gw:get("/maxexp?jwt=" .. t)), { exp = "token expired" })
    end)
  end)

  describe("finds the token", function()
    it("in Authorization: the Bearer scheme in any case, whitespace around the token", function()
      local token = encode(claims("alice-iss"), "HS256", HS256_SECRET)
      for _, v in ipairs({ "bearer " .. token, "BEARER\t" .. token .. " \t ",
                           "  BeArEr   " .. token .. "   " }) do
        local res = assert(gw:get("/default", { headers = { Authorization = v } }))
        assert.equal(200, res.status, v)
        assert.equal(token, seen(res)["x-jwt-ctx"])   -- the token alone, trimmed
      end
      -- another scheme carrying the same token is not a JWT
      refused(assert(gw:get("/default", { headers = { Authorization = "Token " .. token } })),
              "Unauthorized", "Bearer")
    end)

    local t
    before_each(function() t = encode(claims("alice-iss"), "HS256", HS256_SECRET) end)

    it("in the jwt query argument", function()
      local res = assert(gw:get("/default?jwt=" .. t .. "&x=1"))
      assert.equal(200, res.status)
      assert.equal("/?jwt=" .. t .. "&x=1", res:json().path)   -- left in place, as Kong does
    end)

    it("in custom query arguments, and only those", function()
      assert.equal(200, assert(gw:get("/sources?token=" .. t)).status)
      assert.equal(200, assert(gw:get("/sources?t2=" .. t)).status)
      refused(assert(gw:get("/sources?jwt=" .. t)), "Unauthorized", 'Bearer realm="api"')
    end)

    it("in a configured cookie (any of them), and not in others", function()
      local res = assert(gw:get("/sources", { headers = {
        Cookie = "a=1; crumble=" .. t .. "; path=/" } }))
      assert.equal(200, res.status)
      assert.equal("alice", seen(res)["x-consumer-username"])
      assert.equal(200, assert(gw:get("/sources", { headers = { Cookie = "silly=" .. t } })).status)
      assert.equal(200, assert(gw:get("/sources", { headers = { Cookie = "SILLY=" .. t } })).status)
      refused(assert(gw:get("/sources", { headers = { Cookie = "jwt=" .. t } })), "Unauthorized",
              'Bearer realm="api"')
      refused(assert(gw:get("/default", { headers = { Cookie = "crumble=" .. t } })),
              "Unauthorized", "Bearer")
      refused(assert(gw:get("/sources", { headers = { Cookie = "crumble=x" .. t } })),
              "Bad token; invalid JSON", 'Bearer realm="api", error="invalid_token"')
    end)

    it("in a custom header, as 'Bearer <token>' like Kong (not bare)", function()
      local res = assert(gw:get("/sources", { headers = { ["X-Token"] = "Bearer " .. t } }))
      assert.equal(200, res.status)
      assert.equal(200, assert(gw:get("/sources", { headers = { ["x-token"] = "bearer " .. t } }))
                          .status)
      refused(assert(gw:get("/sources", { headers = { ["X-Token"] = t } })), "Unauthorized",
              'Bearer realm="api"')
      -- the first of a repeated header, as Kong
      assert.equal(200, assert(gw:get("/sources", { headers = {
        ["X-Token"] = { "Bearer " .. t, "Bearer other" } } })).status)
    end)

    it("nowhere when every source is turned off", function()
      refused(assert(gw:get("/noquery?jwt=" .. t, bearer(t))), "Unauthorized", "Bearer")
    end)

    it("by a header field when key_claim_name is not among the claims (kid)", function()
      local token = encode({ sub = "x" }, "HS256", HS256_SECRET,
                           { header = { alg = "HS256", kid = "alice-iss" } })
      assert.equal(200, assert(gw:get("/kid", bearer(token))).status)
      refused(assert(gw:get("/kid", bearer(t))), "No mandatory 'kid' in claims")
      -- a claim wins over the header field
      local both = encode({ kid = "alice-iss" }, "HS256", HS256_SECRET,
                          { header = { alg = "HS256", kid = "nobody" } })
      assert.equal(200, assert(gw:get("/kid", bearer(both))).status)
    end)
  end)

  describe("secret_is_base64", function()
    it("signs with the decoded secret", function()
      local token = encode(claims("b64-iss"), "HS256", RAW_SECRET)
      local res = assert(gw:get("/b64", bearer(token)))
      assert.equal(200, res.status)
      assert.equal("b64-user", seen(res)["x-consumer-username"])
    end)

    it("refuses a token signed with the encoded text", function()
      local token = encode(claims("b64-iss"), "HS256", crypto.encode_base64(RAW_SECRET))
      refused(assert(gw:get("/b64", bearer(token))), "Invalid signature")
      -- and without the option the encoded text is the secret
      assert.equal(200, assert(gw:get("/default", bearer(token))).status)
    end)

    it("answers Invalid key/secret for a secret that is not base64", function()
      local token = encode(claims("alice-iss"), "HS256", HS256_SECRET)
      refused(assert(gw:get("/b64", bearer(token))), "Invalid key/secret")
    end)

    it("leaves RSA and EC keys alone", function()
      assert.equal(200, assert(gw:get("/b64", bearer(encode(claims("rs256"), "RS256", rsa))))
                          .status)
      assert.equal(200, assert(gw:get("/b64", bearer(encode(claims("es384"), "ES384", ec384))))
                          .status)
    end)
  end)

  describe("anonymous", function()
    it("lets a request without a token through as the anonymous consumer", function()
      local res = assert(gw:get("/anon"))
      assert.equal(200, res.status)
      local h = seen(res)
      assert.equal("guest", h["x-consumer-username"])
      assert.equal("true", h["x-anonymous-consumer"])
      assert.is_nil(h["x-credential-identifier"])
      assert.equal("none", h["x-jwt-ctx"])
    end)

    it("also for a bad token and for failed claim checks", function()
      local bad = encode(claims("alice-iss", { exp = os.time() + 60 }), "HS256", "guess")
      assert.equal("guest", seen(assert(gw:get("/anon", bearer(bad))))["x-consumer-username"])
      local expired = encode(claims("alice-iss", { exp = os.time() - 60 }), "HS256", HS256_SECRET)
      local res = assert(gw:get("/anon", bearer(expired)))
      assert.equal(200, res.status)
      assert.equal("guest", seen(res)["x-consumer-username"])
      assert.equal("none", seen(res)["x-jwt-ctx"])
    end)

    it("while a valid token still identifies its consumer", function()
      local t = encode(claims("alice-iss", { exp = os.time() + 60 }), "HS256", HS256_SECRET)
      local h = seen(assert(gw:get("/anon", bearer(t))))
      assert.equal("alice", h["x-consumer-username"])
      assert.equal("alice-iss", h["x-credential-identifier"])
      assert.is_nil(h["x-anonymous-consumer"])
      assert.equal(t, h["x-jwt-ctx"])
    end)

    it("fails with 500 when the anonymous consumer does not exist", function()
      assert.equal(500, assert(gw:get("/anonmissing")).status)
      helpers.eventually(function()
        assert.matches('anonymous consumer "nobody" is configured but doesn\'t exist',
                       gw:error_log(), 1, true)
      end)
    end)
  end)

  describe("with key-auth", function()
    local t
    before_each(function() t = encode(claims("alice-iss"), "HS256", HS256_SECRET) end)

    it("both with anonymous: logical OR (either credential, else the anonymous consumer)",
       function()
      local h = seen(assert(gw:get("/or", bearer(t))))
      assert.equal("alice", h["x-consumer-username"])
      assert.equal("alice-iss", h["x-credential-identifier"])
      h = seen(assert(gw:get("/or", { headers = { apikey = "bob-key" } })))
      assert.equal("bob", h["x-consumer-username"])
      assert.is_nil(h["x-anonymous-consumer"])
      h = seen(assert(gw:get("/or")))
      assert.equal("guest", h["x-consumer-username"])
      assert.equal("true", h["x-anonymous-consumer"])
    end)

    it("without anonymous: logical AND (both credentials needed)", function()
      local res = assert(gw:get("/and", bearer(t)))
      assert.equal(401, res.status)
      assert.same({ message = "No API key found in request" }, res:json())
      refused(assert(gw:get("/and", { headers = { apikey = "bob-key" } })), "Unauthorized",
              "Bearer")
      local opts = bearer(t)
      opts.headers.apikey = "bob-key"
      assert.equal(200, assert(gw:get("/and", opts)).status)
    end)
  end)

  describe("run_on_preflight", function()
    it("checks OPTIONS requests by default", function()
      local res = assert(gw:request({ method = "OPTIONS", path = "/default" }))
      refused(res, "Unauthorized", "Bearer")
      assert.equal('{"message":"Unauthorized"}', res.body)
    end)

    it("lets OPTIONS through unchecked when off, and checks the rest", function()
      assert.equal(200, assert(gw:request({ method = "OPTIONS", path = "/nopreflight" })).status)
      refused(assert(gw:get("/nopreflight")), "Unauthorized", "Bearer")
    end)
  end)

  describe("logs", function()
    it("see the token's header as REDACTED, and never the token", function()
      local t = encode(claims("alice-iss", { marker = "tok-marker-123" }), "HS256", HS256_SECRET)
      local bad = encode(claims("alice-iss", { marker = "bad-marker-456" }), "HS256", "guess")
      assert.equal(200, assert(gw:get("/logged", { headers = { ["X-Token"] = "Bearer " .. t } }))
                          .status)
      assert.equal(401, assert(gw:get("/logged", { headers = { ["X-Token"] = "Bearer " .. bad } }))
                          .status)
      helpers.eventually(function()
        local _, n = gw:error_log():gsub("x%-token=REDACTED", "")
        assert.equal(2, n)
      end)
      local logs = gw:error_log() .. helpers.json_encode(gw:access_log_lines())
      assert.not_matches(t:sub(1, 40), logs, 1, true)
      assert.not_matches(bad:sub(1, 40), logs, 1, true)
      assert.not_matches(HS256_SECRET, logs, 1, true)
    end)
  end)
end)

describe("jwt token parser", function()
  package.preload["moongate.plugins.jwt.parser"] = function()
    return dofile(PWD .. "/plugins/jwt/parser.lua")
  end
  local parser = require "moongate.plugins.jwt.parser"
  local function tok(h, c, s) return b64(h) .. "." .. b64(c) .. "." .. b64(s or "sig") end

  it("returns the parts and the signing input", function()
    local t = tok('{"alg":"RS256","kid":"k"}', '{"iss":"a","exp":1}', "\1\2\3")
    local jwt = assert(parser.parse(t))
    assert.same({ alg = "RS256", kid = "k" }, jwt.header)
    assert.same({ iss = "a", exp = 1 }, jwt.claims)
    assert.equal("\1\2\3", jwt.signature)
    assert.equal(t:match("^(.+)%.[^.]+$"), jwt.signing_input)
  end)

  it("refuses non-standard JSON numbers and deep nesting", function()
    assert.same({ nil, "invalid JSON" }, { parser.parse(tok('{"alg":"HS256"}', '{"exp":NaN}')) })
    assert.same({ nil, "invalid JSON" },
                { parser.parse(tok('{"alg":"HS256"}', '{"exp":Infinity}')) })
    assert.same({ nil, "invalid JSON" }, { parser.parse(tok('{"alg":"HS256"}', '{"exp":0x10}')) })
    local deep = string.rep("[", 40) .. string.rep("]", 40)
    assert.same({ nil, "invalid JSON" },
                { parser.parse(tok('{"alg":"HS256"}', '{"a":' .. deep .. '}')) })
  end)

  it("accepts padded base64url as Kong does", function()
    -- (the standard alphabet's '+' and '/' are refused by the gateway's C decoder: see
    -- "malformed tokens" above; moongate.crypto's Lua fallback used here is laxer)
    local h = crypto.encode_base64('{"alg": "HS256"}', true, true)
    assert.matches("=$", h)
    assert.truthy(parser.parse(h .. "." .. b64('{"iss":"a"}') .. "." .. b64("s")))
    assert.same({ nil, "invalid signature" },
                { parser.parse(b64('{"alg":"HS256"}') .. "." .. b64("{}") .. ".abcde") })
  end)

  it("checks the size before anything else", function()
    assert.same({ nil, "token too large" }, { parser.parse(string.rep("a", 8193)) })
    assert.same({ nil, "invalid JSON" }, { parser.parse(string.rep("a", 8192)) })
  end)
end)
