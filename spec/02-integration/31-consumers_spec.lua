-- Consumers and credentials in Kong's top-level declarative form (README "Consumers"):
-- `keyauth_credentials`, `basicauth_credentials`, `jwt_secrets`, `hmacauth_credentials` and
-- `acls` listed beside `consumers`, each naming its consumer by id or username, so a kong.yml
-- exported by decK loads unchanged; and what `moongate check` says when one is wrong.
local helpers = require "spec.helpers"

local BOB_ID = "0b0b0b0b-0000-4000-8000-00000000000b"

local function b64(s)
  return (helpers.run("printf %s " .. helpers.shell_quote(s) .. " | base64 -w0"))
end

describe("top-level credentials", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      services = {
        { name = "key", url = up.url, routes = { { name = "key", paths = { "/key" } } },
          plugins = { { name = "key-auth" } } },
        { name = "basic", url = up.url, routes = { { name = "basic", paths = { "/basic" } } },
          plugins = { { name = "basic-auth" } } },
        { name = "admins", url = up.url, routes = { { name = "admins", paths = { "/admins" } } },
          plugins = { { name = "key-auth" }, { name = "acl", config = { allow = { "admin" } } } } },
      },
      consumers = {
        { username = "alice", keyauth_credentials = { { key = "alice-nested" } } },
        { username = "bob", id = BOB_ID },
        { username = "carol" },
        { custom_id = "dave-cid", id = "0d0d0d0d-0000-4000-8000-00000000000d" },
      },
      keyauth_credentials = {
        { consumer = "alice", key = "alice-top" },                     -- by username
        { consumer = BOB_ID, key = "bob-top" },                        -- by id
        { consumer = { username = "carol" }, key = "carol-top" },      -- record forms
        { consumer = { id = "0d0d0d0d-0000-4000-8000-00000000000d" }, key = "dave-top" },
      },
      basicauth_credentials = {
        { consumer = "bob", username = "bob-login", password = "s3cret" },
      },
      acls = {
        { consumer = "alice", group = "admin" },
        { consumer = { id = BOB_ID }, group = "users" },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  local function who(path, headers)
    local res = assert(gw:get(path, { headers = headers }))
    return res.status, res.status == 200 and res:json().headers or res.body
  end

  it("authenticate the consumer they name, by username, id or record", function()
    for key, name in pairs({ ["alice-top"] = "alice", ["alice-nested"] = "alice",
                             ["bob-top"] = "bob", ["carol-top"] = "carol" }) do
      local status, h = who("/key", { apikey = key })
      assert.equal(200, status, key)
      assert.equal(name, h["x-consumer-username"], key)
    end
    local status, h = who("/key", { apikey = "dave-top" })
    assert.equal(200, status)
    assert.equal("dave-cid", h["x-consumer-custom-id"])
    assert.equal("0d0d0d0d-0000-4000-8000-00000000000d", h["x-consumer-id"])
    assert.equal(401, (who("/key", { apikey = "nobody" })))
  end)

  it("hash basic-auth passwords given at the top level too", function()
    local status, h = who("/basic", { authorization = "Basic " .. b64("bob-login:s3cret") })
    assert.equal(200, status)
    assert.equal("bob", h["x-consumer-username"])
    assert.equal(401, (who("/basic", { authorization = "Basic " .. b64("bob-login:wrong") })))
  end)

  it("give groups to acl", function()
    assert.equal(200, (who("/admins", { apikey = "alice-top" })))
    local status, body = who("/admins", { apikey = "bob-top" })
    assert.equal(403, status)
    assert.matches("You cannot consume this service", body, 1, true)
  end)
end)

describe("moongate check with top-level credentials", function()
  local function check(extra)
    local conf = {
      services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } } } },
      consumers = { { username = "alice", keyauth_credentials = { { key = "k1" } } } },
    }
    for k, v in pairs(extra) do conf[k] = v end
    local rc, out = helpers.check(conf)
    return rc, table.concat(out, "\n")
  end

  it("refuses a credential whose consumer does not exist or is missing", function()
    local rc, out = check({ keyauth_credentials = {
      { consumer = "bob", key = "k2" },
      { key = "k3" },
      { consumer = { id = "0b0b0b0b-0000-4000-8000-00000000000b" }, key = "k4" },
      { consumer = { name = "alice" }, key = "k5" },
    } })
    assert.equal(1, rc)
    assert.matches('keyauth_credentials%[0%]%.consumer: no consumer with id or username "bob"',
                   out)
    assert.matches("keyauth_credentials%[1%]%.consumer: required", out)
    assert.matches('keyauth_credentials%[2%]%.consumer: no consumer with id '
                   .. '"0b0b0b0b%-0000%-4000%-8000%-00000000000b"', out)
    assert.matches("keyauth_credentials%[3%]%.consumer: required", out)
  end)

  it("checks uniqueness across both forms without echoing the secret", function()
    local rc, out = check({ keyauth_credentials = { { consumer = "alice", key = "k1" } } })
    assert.equal(1, rc)
    assert.matches("keyauth_credentials%[0%]%.key: must be unique %(also used by "
                   .. "consumers%[0%]%.keyauth_credentials%[0%]%)", out)
    assert.not_matches("k1", out, 1, true)
  end)

  it("validates the credential's own fields with its path", function()
    local rc, out = check({
      jwt_secrets = { { consumer = "alice", key = "iss", algorithm = "RS256" } },
      acls = { { consumer = "alice" } },
      basicauth_credentials = "alice:pw",
    })
    assert.equal(1, rc)
    assert.matches("jwt_secrets%[0%]%.rsa_public_key: required for algorithm RS256", out)
    assert.matches("acls%[0%]%.group: required", out)
    assert.matches("basicauth_credentials: expected an array", out)
  end)

  it("accepts a valid file", function()
    local rc, out = check({ acls = { { consumer = "alice", group = "g" } },
                            hmacauth_credentials = { { consumer = "alice", username = "a",
                                                       secret = "s" } } })
    assert.equal(0, rc, out)
  end)
end)
