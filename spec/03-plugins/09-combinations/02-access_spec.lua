-- Authentication plugins together, as users combine them: jwt + acl, basic-auth + acl,
-- two authentication plugins with `anonymous` (a logical OR: either credential will do),
-- the same two without it (a logical AND), and acl turning the anonymous consumer away.
local helpers = require "spec.helpers"
local tokens = require "fixtures.jwt.tokens"
local crypto = require "moongate.crypto"

describe("authentication plugins combined", function()
  local up, gw, rsa

  lazy_setup(function()
    tokens.tempdir()
    rsa = tokens.keypair("combo", "rsa", 2048)
    up = helpers.upstream()
    local function svc(name, plugins)
      return { name = name, url = up.url, routes = { { name = name, paths = { "/" .. name } } },
               plugins = plugins }
    end
    gw = helpers.start({
      services = {
        svc("jwtacl", { { name = "jwt" }, { name = "acl", config = { allow = { "readers" } } } }),
        svc("basicacl", { { name = "basic-auth" },
                          { name = "acl", config = { deny = { "blocked" } } } }),
        -- either a key or a JWT; without both, the anonymous consumer, which acl refuses
        svc("either", { { name = "key-auth", config = { anonymous = "anon" } },
                        { name = "jwt", config = { anonymous = "anon" } },
                        { name = "acl", config = { deny = { "nobody" } } } }),
        -- both credentials required: no anonymous
        svc("both", { { name = "key-auth" }, { name = "jwt" } }),
      },
      consumers = {
        { username = "reader", keyauth_credentials = { { key = "reader-key" } },
          jwt_secrets = { { key = "reader-iss", algorithm = "RS256",
                            rsa_public_key = rsa.public_pem } },
          basicauth_credentials = { { username = "reader", password = "reader-pw" } },
          acls = { { group = "readers" } } },
        { username = "writer", keyauth_credentials = { { key = "writer-key" } },
          jwt_secrets = { { key = "writer-iss", secret = "writer-secret-writer-secret" } },
          basicauth_credentials = { { username = "writer", password = "writer-pw" } },
          acls = { { group = "writers" }, { group = "blocked" } } },
        { username = "anon", acls = { { group = "nobody" } } },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
    tokens.cleanup()
  end)

  local function bearer(t) return { Authorization = "Bearer " .. t } end
  local reader_jwt = function() return tokens.encode({ iss = "reader-iss" }, "RS256", rsa) end
  local writer_jwt = function()
    return tokens.encode({ iss = "writer-iss" }, "HS256", "writer-secret-writer-secret")
  end
  local function basic(u, p)
    return { Authorization = "Basic " .. crypto.encode_base64(u .. ":" .. p) }
  end

  describe("jwt + acl", function()
    it("lets a reader's RS256 token through with its groups", function()
      local res = assert(gw:get("/jwtacl", { headers = bearer(reader_jwt()) }))
      assert.equal(200, res.status)
      local h = res:json().headers
      assert.equal("reader", h["x-consumer-username"])
      assert.equal("readers", h["x-consumer-groups"])
      assert.equal("reader-iss", h["x-credential-identifier"])
    end)

    it("refuses a valid token of a consumer outside the allowed groups: 403", function()
      local res = assert(gw:get("/jwtacl", { headers = bearer(writer_jwt()) }))
      assert.equal(403, res.status)
      assert.same({ message = "You cannot consume this service" }, res:json())
    end)

    it("never reaches acl without a token: jwt's 401", function()
      local res = assert(gw:get("/jwtacl"))
      assert.equal(401, res.status)
      assert.same({ message = "Unauthorized" }, res:json())
    end)
  end)

  describe("basic-auth + acl", function()
    it("judges by the groups of the consumer the password identified", function()
      local ok = assert(gw:get("/basicacl", { headers = basic("reader", "reader-pw") }))
      assert.equal(200, ok.status)
      local res = assert(gw:get("/basicacl", { headers = basic("writer", "writer-pw") }))
      assert.equal(403, res.status)
      assert.equal(401, assert(gw:get("/basicacl", { headers = basic("reader", "nope") })).status)
    end)
  end)

  describe("two authentication plugins with anonymous: a logical OR", function()
    it("accepts a key alone, or a token alone", function()
      local h = assert(gw:get("/either", { headers = { apikey = "reader-key" } })):json().headers
      assert.equal("reader", h["x-consumer-username"])
      assert.is_nil(h["x-anonymous-consumer"])
      h = assert(gw:get("/either", { headers = bearer(writer_jwt()) })):json().headers
      assert.equal("writer", h["x-consumer-username"])
      assert.equal("writer-iss", h["x-credential-identifier"])
    end)

    it("keeps the first credential found when both are sent", function()
      -- jwt (priority 1450) runs before key-auth (1250): the token identifies the consumer
      -- and key-auth, configured with anonymous, has nothing left to do
      local headers = bearer(writer_jwt())
      headers.apikey = "reader-key"
      local h = assert(gw:get("/either", { headers = headers })):json().headers
      assert.equal("writer", h["x-consumer-username"])
    end)

    it("falls back to the anonymous consumer, whom acl then refuses", function()
      local res = assert(gw:get("/either"))
      assert.equal(403, res.status)
      assert.same({ message = "You cannot consume this service" }, res:json())
      res = assert(gw:get("/either", { headers = { apikey = "wrong" } }))
      assert.equal(403, res.status)
    end)
  end)

  describe("two authentication plugins without anonymous: a logical AND", function()
    it("needs both credentials", function()
      assert.equal(401, assert(gw:get("/both", { headers = { apikey = "reader-key" } })).status)
      assert.equal(401, assert(gw:get("/both", { headers = bearer(reader_jwt()) })).status)
      local headers = bearer(reader_jwt())
      headers.apikey = "reader-key"
      assert.equal(200, assert(gw:get("/both", { headers = headers })).status)
    end)
  end)
end)
