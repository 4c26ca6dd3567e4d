-- mtls-auth against the real binary over TLS, clients being `curl --cert/--key`: mapping a
-- verified certificate to a consumer by username or custom_id (SANs, then the CN),
-- default_consumer, skip_consumer_lookup with acl, anonymous, Kong's 401s (no certificate,
-- failed verification, no consumer), another plugin's CA list, allow_partial_chain, and a
-- route without the plugin that never needs a certificate although the listener asks.
local helpers = require "spec.helpers"
local cjson = require "cjson"
local pki = require "spec.pki"

local fmt = string.format
local q = helpers.shell_quote

local ROOT = "11111111-1111-4111-8111-111111111111"
local OTHER_ID = "22222222-2222-4222-8222-222222222222"
local INT_ID = "33333333-3333-4333-8333-333333333333"

describe("mtls-auth", function()
  local CA, OTHER, INT, up, gw

  local function curl(p, who, extra)
    local client = ""
    if who then
      local ca = who == "mallory" and OTHER or CA
      local crt = who == "bob" and ca:path("bob-chain.crt") or ca:path(who .. ".crt")
      client = fmt("--cert %s --key %s", q(crt), q(ca:path(who .. ".key")))
    end
    local out = helpers.run(fmt("curl -sS --max-time 20 --cacert %s --resolve m.test:%d:127.0.0.1 "
                                .. "%s %s -w '\\n%%{http_code}' %s 2>&1", q(CA.crt), gw.ssl_port,
                                client, extra or "", q(fmt("https://m.test:%d%s", gw.ssl_port, p))))
    local body, status = out:match("^(.*)\n(%d+)$")
    return tonumber(status), body and cjson.decode(body) or out
  end

  lazy_setup(function()
    CA = pki.ca()
    OTHER = pki.ca({ subject = "/CN=other CA" })
    CA:leaf("server", { names = { "m.test" } })
    CA:leaf("alice", { client = true, subject = "/CN=alice/O=acme" })
    CA:leaf("carol", { client = true, subject = "/CN=carol-cn/O=acme",
                       ext = { "subjectAltName=DNS:carol.example,email:carol@example.com" } })
    CA:leaf("dave", { client = true, subject = "/CN=dave" }) -- no consumer
    CA:leaf("expired", { client = true, subject = "/CN=alice", days = 0 })
    OTHER:leaf("mallory", { client = true, subject = "/CN=alice" })
    INT = CA:intermediate("int")
    INT:leaf("bob", { client = true, subject = "/CN=bob" })
    helpers.write_file(CA:path("bob-chain.crt"), CA:read(CA:path("bob.crt")) .. CA:read(INT.crt))

    up = helpers.upstream()
    local function svc(name, config, extra)
      local s = { name = name, url = up.url, routes = { { name = name, paths = { "/" .. name } } },
                  plugins = config and { { name = "mtls-auth", config = config } } or nil }
      for k, v in pairs(extra or {}) do s[k] = v end
      return s
    end
    local function conf(extra)
      local c = { ca_certificates = { ROOT } }
      for k, v in pairs(extra or {}) do c[k] = v end
      return c
    end
    gw = helpers.start({
      proxy_listen = { "127.0.0.1:" .. helpers.get_free_port() .. " ssl" },
      certificates = { { cert = CA:path("server.crt"), key = CA:path("server.key") } },
      ca_certificates = {
        { id = ROOT, cert = CA.crt },
        { id = OTHER_ID, cert = OTHER.crt },
        { id = INT_ID, cert = INT.crt },
      },
      services = {
        svc("open", nil),
        svc("default", conf()),
        svc("byusername", conf({ consumer_by = { "username" } })),
        svc("bycustom", conf({ consumer_by = { "custom_id" } })),
        svc("nomatch", conf({ consumer_by = helpers.array({}) })),
        svc("fallback", conf({ default_consumer = "fallback" })),
        svc("anon", conf({ anonymous = "guest" })),
        svc("skip", conf({ skip_consumer_lookup = true })),
        svc("skipdn", nil,
            { plugins = { { name = "mtls-auth", config = conf({ skip_consumer_lookup = true,
                            authenticated_group_by = "DN" }) },
                          { name = "acl", config = { allow = { "O=acme,CN=carol-cn" } } } } }),
        svc("othercas", conf({ ca_certificates = { OTHER_ID } })),
        svc("partial", conf({ ca_certificates = { INT_ID }, allow_partial_chain = true })),
        svc("nopartial", conf({ ca_certificates = { INT_ID } })),
      },
      consumers = {
        { username = "alice", custom_id = "c-alice" },
        { username = "bob" },
        { username = "carol-user", custom_id = "carol.example" },
        { username = "alice-by-custom", custom_id = "alice" },
        { username = "guest" },
        { username = "fallback" },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
    if OTHER then OTHER:cleanup() end
    if CA then CA:cleanup() end
  end)

  it("maps the certificate's CN to a consumer's username and tells the upstream", function()
    local status, body = curl("/default", "alice")
    assert.equal(200, status, cjson.encode(body))
    assert.equal("alice", body.headers["x-consumer-username"])
    assert.equal("c-alice", body.headers["x-consumer-custom-id"])
    assert.equal("alice", body.headers["x-credential-identifier"])
    assert.is_nil(body.headers["x-anonymous-consumer"])
  end)

  it("tries the SANs before the CN, and custom_id when consumer_by allows it", function()
    local status, body = curl("/default", "carol")
    assert.equal(200, status, cjson.encode(body))
    assert.equal("carol-user", body.headers["x-consumer-username"])
    assert.equal("carol.example", body.headers["x-credential-identifier"])
    -- custom_id only: alice's CN is the custom_id of another consumer
    status, body = curl("/bycustom", "alice")
    assert.equal(200, status, cjson.encode(body))
    assert.equal("alice-by-custom", body.headers["x-consumer-username"])
    -- username only: carol's names are nobody's username
    status, body = curl("/byusername", "carol")
    assert.equal(401, status)
    assert.same({ message = "TLS certificate failed verification" }, body)
  end)

  it("verifies a chain the client completes with an intermediate", function()
    local status, body = curl("/default", "bob")
    assert.equal(200, status, cjson.encode(body))
    assert.equal("bob", body.headers["x-consumer-username"])
  end)

  it("answers 401 without a certificate", function()
    local status, body = curl("/default")
    assert.equal(401, status)
    assert.same({ message = "No required TLS certificate was sent" }, body)
  end)

  it("answers 401 to another CA's certificate and to an expired one", function()
    for _, who in ipairs({ "mallory", "expired" }) do
      local status, body = curl("/default", who)
      assert.equal(401, status, who)
      assert.same({ message = "TLS certificate failed verification" }, body)
    end
  end)

  it("verifies against the plugin's own CAs, not another plugin's", function()
    local status, body = curl("/othercas", "mallory")
    assert.equal(200, status, cjson.encode(body)) -- CN=alice, under the other CA
    assert.equal("alice", body.headers["x-consumer-username"])
    status = curl("/othercas", "alice")
    assert.equal(401, status)
  end)

  it("answers 401 when no consumer matches, or with consumer_by []", function()
    local status, body = curl("/default", "dave")
    assert.equal(401, status)
    assert.same({ message = "TLS certificate failed verification" }, body)
    status = curl("/nomatch", "alice")
    assert.equal(401, status)
  end)

  it("falls back to default_consumer for a verified certificate without a match", function()
    local status, body = curl("/fallback", "dave")
    assert.equal(200, status, cjson.encode(body))
    assert.equal("fallback", body.headers["x-consumer-username"])
    status = curl("/fallback", "mallory")
    assert.equal(401, status) -- not for a certificate that does not verify
  end)

  it("lets anonymous through as the anonymous consumer", function()
    for _, who in ipairs({ false, "mallory", "dave" }) do
      local status, body = curl("/anon", who or nil)
      assert.equal(200, status, cjson.encode(body))
      assert.equal("guest", body.headers["x-consumer-username"])
      assert.equal("true", body.headers["x-anonymous-consumer"])
    end
    local status, body = curl("/anon", "alice")
    assert.equal(200, status)
    assert.equal("alice", body.headers["x-consumer-username"])
  end)

  it("skips the consumer lookup and hands the CN or DN to acl as the group", function()
    local status, body = curl("/skip", "dave")
    assert.equal(200, status, cjson.encode(body))
    assert.is_nil(body.headers["x-consumer-username"])
    assert.equal("dave", body.headers["x-credential-identifier"])
    status = curl("/skip", "mallory")
    assert.equal(401, status)
    -- acl allows carol's subject DN (RFC 2253): carol passes, dave and alice do not
    status, body = curl("/skipdn", "carol")
    assert.equal(200, status, cjson.encode(body))
    assert.equal("O=acme,CN=carol-cn", body.headers["x-authenticated-groups"])
    for _, who in ipairs({ "dave", "alice" }) do
      status, body = curl("/skipdn", who)
      assert.equal(403, status, cjson.encode(body))
    end
  end)

  it("accepts a chain ending at a listed intermediate only with allow_partial_chain",
     function()
    local status, body = curl("/partial", "bob")
    assert.equal(200, status, cjson.encode(body))
    status = curl("/nopartial", "bob")
    assert.equal(401, status)
  end)

  it("does not need a certificate on a route without the plugin", function()
    local status, body = curl("/open")
    assert.equal(200, status, cjson.encode(body))
    status = curl("/open", "mallory") -- asked for, optional: a bad one changes nothing
    assert.equal(200, status)
  end)
end)
