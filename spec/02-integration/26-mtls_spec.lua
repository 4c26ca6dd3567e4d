-- Client certificates on `ssl` listeners (README: "TLS", "Client certificates (mTLS)"):
-- ssl_verify_client off | optional | on against ssl_client_ca_certificates, the
-- CertificateRequest's CA names, chains through an intermediate, ssl_verify_depth, expired
-- and foreign certificates, the clientAuth usage, session resumption keeping the verdict,
-- what moongate.client.tls tells plugins, and what `moongate check` refuses.
--
-- Certificates are made by the `openssl` CLI at test time (moongate.spec.pki); clients are
-- `curl --cert/--key` and `openssl s_client`.

local helpers = require "spec.helpers"
local cjson = require "cjson"
local pki = require "spec.pki"

local fmt = string.format
local q = helpers.shell_quote

local CA, OTHER, INT -- the trusted CA, a CA nobody trusts, an intermediate under CA
local PLUGIN_PATH = os.getenv("PWD") .. "/spec/fixtures/plugins/?.lua;;"

local function sh(cmd)
  return helpers.run(cmd .. " 2>&1")
end

local function make_certs()
  CA = pki.ca()
  OTHER = pki.ca({ subject = "/CN=untrusted CA" })
  CA:leaf("server", { names = { "mtls.test" } })
  CA:leaf("alice", { client = true, subject = "/CN=alice/O=acme",
                     names = { "alice.example", "10.1.2.3" },
                     ext = { "subjectAltName=DNS:alice.example,IP:10.1.2.3,"
                             .. "email:alice@example.com,URI:spiffe://acme/alice" } })
  CA:leaf("expired", { client = true, days = 0 })
  CA:leaf("serveronly", { subject = "/CN=serveronly" }) -- serverAuth usage only
  OTHER:leaf("mallory", { client = true })
  INT = CA:intermediate("int")
  INT:leaf("bob", { client = true, subject = "/CN=bob" })
  -- what the client sends: its leaf, then the intermediate
  helpers.write_file(CA:path("bob-chain.crt"),
                     CA:read(CA:path("bob.crt")) .. CA:read(INT.crt))
end

local function cert(name)
  return CA:path(name .. ".crt")
end

-- curl over TLS to mtls.test: status, body; `who` picks the client certificate (nil: none)
local function curl(port, p, who, extra)
  local client = ""
  if who then
    local crt = who == "bob" and CA:path("bob-chain.crt")
      or who == "mallory" and OTHER:path("mallory.crt") or cert(who)
    local key = who == "mallory" and OTHER:path("mallory.key") or CA:path(who .. ".key")
    client = fmt("--cert %s --key %s", q(crt), q(key))
  end
  local out = sh(fmt("curl -sS --max-time 20 --cacert %s --resolve mtls.test:%d:127.0.0.1 %s %s "
                     .. "-w '\\n%%{http_code}' %s", q(CA.crt), port, client, extra or "",
                     q(fmt("https://mtls.test:%d%s", port, p))))
  local body, status = out:match("^(.*)\n(%d+)$")
  return tonumber(status), body, out
end

local function echo_headers(body)
  return cjson.decode(body).headers
end

local function gateway(settings)
  local conf = {
    lua_package_path = PLUGIN_PATH,
    plugins = helpers.array({ "bundled", "client-tls" }),
    proxy_listen = helpers.array({ "127.0.0.1:" .. helpers.get_free_port() .. " ssl" }),
    certificates = helpers.array({ { cert = cert("server"), key = CA:path("server.key") } }),
    ca_certificates = helpers.array({
      { id = "11111111-1111-4111-8111-111111111111", cert = CA.crt },
      { id = "22222222-2222-4222-8222-222222222222", cert = CA:read(OTHER.crt),
        tags = helpers.array({ "other" }) },
    }),
  }
  for k, v in pairs(settings) do conf[k] = v end
  return helpers.start(conf)
end

local TRUSTED = "11111111-1111-4111-8111-111111111111"

local function routes(up)
  return helpers.array({ {
    name = "echo", url = up.url,
    routes = helpers.array({
      { name = "tls", paths = helpers.array({ "/tls" }),
        plugins = helpers.array({ { name = "client-tls" } }) },
      { name = "plain", paths = helpers.array({ "/" }) },
    }),
  } })
end

describe("mTLS listeners", function()
lazy_setup(make_certs)
lazy_teardown(function()
  if OTHER then OTHER:cleanup() end
  if CA then CA:cleanup() end
end)

describe("ssl_verify_client: on", function()
  local up, gw
  lazy_setup(function()
    up = helpers.upstream()
    gw = gateway({
      worker_processes = 2, -- resumption must keep the verdict on either worker
      ssl_verify_client = "on",
      ssl_client_ca_certificates = helpers.array({ TRUSTED }),
      services = routes(up),
    })
  end)
  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("proxies a client whose certificate the CA signed", function()
    local status, body = curl(gw.ssl_port, "/tls", "alice")
    assert.equal(200, status, body)
    local h = echo_headers(body)
    assert.equal("SUCCESS", h["x-tls-verify"])
    assert.equal("O=acme,CN=alice", h["x-tls-dn"])
    assert.equal("alice", h["x-tls-cn"])
    assert.equal("CN=moongate test CA", h["x-tls-issuer"])
    assert.equal("DNS:alice.example,IP:10.1.2.3,email:alice@example.com,"
                 .. "URI:spiffe://acme/alice", h["x-tls-sans"])
    -- curl completes the chain from its CA file: the leaf, maybe the root after it
    assert.truthy(tonumber(h["x-tls-chain"]) >= 1, h["x-tls-chain"])
    assert.equal("64", h["x-tls-fp-len"])
  end)

  it("answers 400 to a client without a certificate, before any plugin", function()
    up:clear()
    local status, body = curl(gw.ssl_port, "/tls")
    assert.equal(400, status, body)
    assert.same({ message = "No required SSL certificate was sent" }, cjson.decode(body))
    assert.equal(0, #up:requests())
  end)

  it("answers 400 to a certificate of another CA, an expired one and one without "
     .. "clientAuth usage", function()
    for _, who in ipairs({ "mallory", "expired", "serveronly" }) do
      local status, body = curl(gw.ssl_port, "/", who)
      assert.equal(400, status, who .. ": " .. tostring(body))
      assert.same({ message = "The SSL certificate error" }, cjson.decode(body))
    end
  end)

  it("accepts a chain through an intermediate the client sends (ssl_verify_depth 1)",
     function()
    local status, body = curl(gw.ssl_port, "/tls", "bob")
    assert.equal(200, status, body)
    local h = echo_headers(body)
    assert.equal("SUCCESS", h["x-tls-verify"])
    assert.equal("bob", h["x-tls-cn"])
    assert.equal("2", h["x-tls-chain"])
  end)

  it("refuses the leaf alone when the client does not send the intermediate", function()
    local status, body = curl(gw.ssl_port, "/", nil,
                              fmt("--cert %s --key %s", q(cert("bob")), q(CA:path("bob.key"))))
    assert.equal(400, status, body)
  end)

  it("names the trusted CAs in its CertificateRequest", function()
    local out = sh(fmt("echo | timeout 10 openssl s_client -connect 127.0.0.1:%d "
                       .. "-servername mtls.test -CAfile %s", gw.ssl_port, q(CA.crt)))
    local names = out:match("Acceptable client certificate CA names\n(.-)\n[%u]")
    assert.truthy(names, out)
    assert.match("moongate test CA", names, 1, true)
    assert.is_nil(names:find("untrusted", 1, true))
  end)

  it("keeps the verdict when a session resumes from its ticket (TLS 1.3 and 1.2)",
     function()
    local sess = CA:path("sess.pem")
    local req = "GET /tls HTTP/1.1\\r\\nHost: mtls.test\\r\\nConnection: close\\r\\n\\r\\n"
    local client = fmt("-cert %s -key %s", q(cert("alice")), q(CA:path("alice.key")))
    for _, version in ipairs({ "-tls1_3", "-tls1_2" }) do
      local out = sh(fmt("(sleep 0.3; printf %s; sleep 0.5) | timeout 10 openssl s_client "
                         .. "-connect 127.0.0.1:%d %s -servername mtls.test -CAfile %s %s "
                         .. "-sess_out %s -ign_eof", q(req), gw.ssl_port, version, q(CA.crt),
                         client, q(sess)))
      assert.match("New, TLSv1.", out, 1, true)
      assert.match("HTTP/1.1 200", out, 1, true)
      -- resumed without sending the certificate again: the ticket carries the verdict
      for _ = 1, 4 do
        out = sh(fmt("(sleep 0.2; printf %s; sleep 0.5) | timeout 10 openssl s_client "
                     .. "-connect 127.0.0.1:%d %s -servername mtls.test -CAfile %s "
                     .. "-sess_in %s -ign_eof", q(req), gw.ssl_port, version, q(CA.crt),
                     q(sess)))
        assert.match("Reused, TLSv1.", out, 1, true)
        assert.match("HTTP/1.1 200", out, 1, true)
        assert.match('"x-tls-verify":"SUCCESS"', out, 1, true)
        assert.match('"x-tls-cn":"alice"', out, 1, true)
      end
    end
  end)

  it("does not resume a certificate-less session into a verified one", function()
    local sess = CA:path("sess-none.pem")
    local req = "GET / HTTP/1.1\\r\\nHost: mtls.test\\r\\nConnection: close\\r\\n\\r\\n"
    sh(fmt("(sleep 0.3; printf %s; sleep 0.5) | timeout 10 openssl s_client -connect "
           .. "127.0.0.1:%d -servername mtls.test -CAfile %s -sess_out %s -ign_eof",
           q(req), gw.ssl_port, q(CA.crt), q(sess)))
    local out = sh(fmt("(sleep 0.2; printf %s; sleep 0.5) | timeout 10 openssl s_client "
                       .. "-connect 127.0.0.1:%d -servername mtls.test -CAfile %s -sess_in %s "
                       .. "-ign_eof", q(req), gw.ssl_port, q(CA.crt), q(sess)))
    assert.match("HTTP/1.1 400", out, 1, true)
  end)
end)

describe("ssl_verify_client: optional", function()
  local up, gw
  lazy_setup(function()
    up = helpers.upstream()
    gw = gateway({
      ssl_verify_client = "optional",
      ssl_client_ca_certificates = helpers.array({ TRUSTED }),
      services = routes(up),
    })
  end)
  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("lets every client through and tells plugins the verdict", function()
    local status, body = curl(gw.ssl_port, "/tls")
    assert.equal(200, status, body)
    local h = echo_headers(body)
    assert.equal("NONE", h["x-tls-verify"])
    assert.equal("0", h["x-tls-chain"])
    assert.is_nil(h["x-tls-dn"])

    assert.equal("nil:no certificate", h["x-tls-unlisted"])

    status, body = curl(gw.ssl_port, "/tls", "alice")
    assert.equal(200, status, body)
    h = echo_headers(body)
    assert.equal("SUCCESS", h["x-tls-verify"])
    -- a CA list no mtls-auth plugin declared was never checked: refused, and said why
    assert.equal("false:no mtls-auth plugin has this CA list", h["x-tls-unlisted"])

    status, body = curl(gw.ssl_port, "/tls", "mallory")
    assert.equal(200, status, body)
    h = echo_headers(body)
    assert.match("^FAILED:", h["x-tls-verify"])
    assert.equal("CN=mallory", h["x-tls-dn"])

    status, body = curl(gw.ssl_port, "/tls", "expired")
    assert.equal(200, status, body)
    assert.equal("FAILED:certificate has expired", echo_headers(body)["x-tls-verify"])
  end)
end)

describe("ssl_verify_depth: 0", function()
  local up, gw
  lazy_setup(function()
    up = helpers.upstream()
    gw = gateway({
      ssl_verify_client = "on",
      ssl_verify_depth = 0,
      ssl_client_ca_certificates = helpers.array({ TRUSTED }),
      services = routes(up),
    })
  end)
  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("accepts a certificate the CA signed itself, not one through an intermediate",
     function()
    local status, body = curl(gw.ssl_port, "/", "alice")
    assert.equal(200, status, body)
    status, body = curl(gw.ssl_port, "/", "bob")
    assert.equal(400, status, body)
    assert.same({ message = "The SSL certificate error" }, cjson.decode(body))
  end)
end)

describe("ssl_verify_client: off (the default)", function()
  local up, gw
  lazy_setup(function()
    up = helpers.upstream()
    gw = gateway({ services = routes(up) })
  end)
  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  it("never asks for a client certificate", function()
    local status, body = curl(gw.ssl_port, "/tls", "alice")
    assert.equal(200, status, body)
    local h = echo_headers(body)
    assert.equal("NONE", h["x-tls-verify"])
    assert.equal("0", h["x-tls-chain"]) -- not asked, so not sent
    local out = sh(fmt("echo | timeout 10 openssl s_client -connect 127.0.0.1:%d "
                       .. "-servername mtls.test -CAfile %s", gw.ssl_port, q(CA.crt)))
    assert.is_nil(out:find("Acceptable client certificate CA names", 1, true), out)
  end)
end)

describe("moongate check", function()
  local function conf(extra)
    local c = {
      proxy_listen = helpers.array({ "127.0.0.1:8443 ssl" }),
      certificates = helpers.array({ { cert = cert("server"), key = CA:path("server.key") } }),
      ca_certificates = helpers.array({ { id = "a", cert = CA.crt } }),
      services = helpers.array({ {
        url = "http://127.0.0.1:9",
        routes = helpers.array({ { paths = helpers.array({ "/" }) } }),
      } }),
    }
    for k, v in pairs(extra or {}) do c[k] = v end
    return c
  end

  local function refused(c, expected)
    local rc, lines = helpers.check(c)
    assert.equal(1, rc, table.concat(lines, "\n"))
    assert.same(expected, lines)
  end

  it("accepts ca_certificates as PEM text or file paths, and the verify settings", function()
    local rc, lines = helpers.check(conf({
      ca_certificates = helpers.array({ { id = "a", cert = CA.crt },
                                        { id = "b", cert = CA:read(INT.crt) } }),
      ssl_verify_client = "optional", ssl_verify_depth = 3,
      ssl_client_ca_certificates = helpers.array({ "a", { id = "b" } }),
    }))
    assert.equal(0, rc, table.concat(lines, "\n"))
  end)

  it("refuses certificates that are not CAs, expired ones, bad PEM and two at once",
     function()
    refused(conf({ ca_certificates = helpers.array({ { id = "a", cert = cert("alice") } }) }),
            { "ca_certificates[0].cert: certificate does not appear to be a CA because it is "
              .. "missing the \"CA\" basic constraint" })
    refused(conf({ ca_certificates = helpers.array({ { id = "a", cert = cert("expired") } }) }),
            { "ca_certificates[0].cert: certificate expired, \"Not After\" time is in the past" })
    refused(conf({ ca_certificates = helpers.array({ { id = "a", cert = CA:path("nope.crt") } }) }),
            { fmt("ca_certificates[0].cert: cannot read '%s': No such file or directory",
                  CA:path("nope.crt")) })
    refused(conf({ ca_certificates = helpers.array({
              { id = "a", cert = CA:read(CA.crt) .. CA:read(INT.crt) } }) }),
            { "ca_certificates[0].cert: please submit only one certificate at a time" })
    refused(conf({ ca_certificates = helpers.array({ { id = "a" } }) }),
            { "ca_certificates[0].cert: required" })
  end)

  it("refuses the same certificate twice (Kong: cert is unique)", function()
    refused(conf({ ca_certificates = helpers.array({ { id = "a", cert = CA.crt },
                                                     { id = "b", cert = CA:read(CA.crt) } }) }),
            { "ca_certificates[1].cert: the same certificate as ca_certificates[0]" })
  end)

  it("refuses more distinct mtls-auth CA lists than a connection has verdict bits", function()
    local ids = { "a", "b", "c", "d" }
    local cas = helpers.array({ { id = "a", cert = CA.crt }, { id = "b", cert = INT.crt },
                                { id = "c", cert = OTHER.crt },
                                { id = "d", cert = CA:intermediate("int2").crt } })
    local lists = {}
    for _, partial in ipairs({ false, true }) do
      for i = 1, 4 do
        lists[#lists + 1] = { { ids[i] }, partial }
        for j = 1, 4 do
          if j ~= i then lists[#lists + 1] = { { ids[i], ids[j] }, partial } end
        end
      end
    end
    assert.equal(32, #lists) -- one more than the 31 bits left beside the listener's
    local services = {}
    for i, l in ipairs(lists) do
      services[i] = { url = "http://127.0.0.1:9",
                      routes = helpers.array({ { paths = helpers.array({ "/s" .. i }) } }),
                      plugins = helpers.array({ { name = "mtls-auth", config = {
                        ca_certificates = helpers.array(l[1]), allow_partial_chain = l[2] } } }) }
    end
    refused(conf({ ca_certificates = cas, services = helpers.array(services) }),
            { "services[31].plugins[0].config.ca_certificates: more than 31 distinct CA lists "
              .. "in mtls-auth plugins" })
    table.remove(services)
    local rc, lines = helpers.check(conf({ ca_certificates = cas,
                                           services = helpers.array(services) }))
    assert.equal(0, rc, table.concat(lines, "\n"))
  end)

  it("refuses duplicate ids and unknown fields", function()
    refused(conf({ ca_certificates = helpers.array({ { id = "a", cert = CA.crt },
                                                     { id = "a", cert = INT.crt, key = "x" } }) }),
            { "ca_certificates[1].key: unknown field",
              "ca_certificates[1].id: 'a' is already used by ca_certificates[0]" })
  end)

  it("refuses verify settings without CAs, unknown ids and bad values", function()
    refused(conf({ ssl_verify_client = "on" }),
            { "ssl_client_ca_certificates: required when ssl_verify_client is 'on'" })
    refused(conf({ ssl_verify_client = "optional",
                   ssl_client_ca_certificates = helpers.array({ "a", "nope" }) }),
            { "ssl_client_ca_certificates[1]: no ca_certificate has id 'nope'" })
    refused(conf({ ssl_client_ca_certificates = "a" }),
            { "ssl_client_ca_certificates: must be a list of ca_certificate ids" })
    local rc, lines = helpers.check(conf({ ssl_verify_client = "maybe" }))
    assert.equal(1, rc)
    assert.match("^ssl_verify_client: ", lines[1])
    rc, lines = helpers.check(conf({ ssl_verify_depth = 101 }))
    assert.equal(1, rc)
    assert.match("^ssl_verify_depth: ", lines[1])
  end)

  it("checks references without an ssl listener too", function()
    local c = conf({ ssl_client_ca_certificates = helpers.array({ "nope" }) })
    c.proxy_listen = helpers.array({ "127.0.0.1:8000" })
    c.certificates = nil
    refused(c, { "ssl_client_ca_certificates[0]: no ca_certificate has id 'nope'" })
  end)
end)
end)
