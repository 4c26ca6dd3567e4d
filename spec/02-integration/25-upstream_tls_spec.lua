-- Upstream TLS (issue 6 item 7; README "Upstream TLS"): services with `protocol: https` speak
-- TLS to a real nginx backend. The certificate is verified by default (tls_verify) against
-- `ca_certificates` or the system store, down to `tls_verify_depth`; the backend's name is
-- checked; a failure is a 502 with the verify error in the log. The SNI sent, the client
-- certificate presented (client_certificate: mTLS), keep-alive over TLS (and never a TLS
-- connection handed to a plain-http service of the same target), session resumption,
-- balancing over https targets, `type: https` active probes, close_notify when the gateway
-- closes a pooled connection (seen by `openssl s_server`), and what `moongate check` refuses.
--
-- The backend answers what it saw: its own `$connection` and `$connection_requests`, the
-- SNI (`$ssl_server_name`), the client certificate's subject (`$ssl_client_s_dn`, verified
-- against the test CA with `ssl_verify_client optional`) and `$ssl_session_reused`.

local helpers = require "spec.helpers"
local pki = require "spec.pki"

local fmt = string.format

local BAD_GATEWAY = '{"message":"An invalid response was received from the upstream server"}'
local NO_PEER = "failure to get a peer from the ring-balancer"

local CA, OTHER, INT -- the backend's CA, an unrelated CA, an intermediate under CA
local ng             -- the nginx backend
local echo           -- an echo upstream behind nginx's WebSocket server (PORT_WS)

local function array(t)
  return helpers.array(t)
end

-- one nginx server block: `listen` on %TAG%, this certificate, the common answer
local function server(tag, crt, key, name, extra)
  return fmt([[
  server {
    listen 127.0.0.1:%%%s%% ssl;
    server_name %s;
    ssl_certificate %s;
    ssl_certificate_key %s;
    ssl_client_certificate %s;
    ssl_verify_client optional;
    keepalive_requests 1000;
    %s
    location / {
      return 200 "srv=%s sni=$ssl_server_name client=$ssl_client_s_dn conn=$connection %s";
    }
  }
]], tag, name or "_", crt, key, CA.crt, extra or "", tag,
    "reqs=$connection_requests reused=$ssl_session_reused\n")
end

local function field(body, name)
  return (body or ""):match(name .. "=(%S*)")
end

-- a config with the given services (each gets a route /<name>), upstreams, and entities
local function conf(services, extra)
  local c = {
    log_level = "info",
    ca_certificates = array({
      { id = "test-ca", cert = CA:read(CA.crt) },
      { id = "other-ca", cert = OTHER:read(OTHER.crt) },
    }),
    certificates = array({
      { id = "alice", cert = CA:read(CA:path("alice.crt")), key = CA:read(CA:path("alice.key")) },
    }),
    services = array({}),
  }
  for i, s in ipairs(services) do
    s.routes = array({ { paths = array({ "/" .. s.name }) } })
    c.services[i] = s
  end
  for k, v in pairs(extra or {}) do
    c[k] = v
  end
  return c
end

local function https(name, port, more)
  local s = { name = name, url = fmt("https://127.0.0.1:%d", port), retries = 0 }
  for k, v in pairs(more or {}) do
    s[k] = v
  end
  return s
end

describe("upstream TLS", function()
  lazy_setup(function()
    CA = pki.ca()
    OTHER = pki.ca({ subject = "/CN=some other CA" })
    INT = CA:intermediate("int")
    CA:leaf("srv", { names = { "a.test", "127.0.0.1" } })
    CA:leaf("named", { names = { "b.test" } }) -- no IP SAN: 127.0.0.1 does not match
    CA:leaf("alice", { client = true, subject = "/CN=alice/O=acme" })
    local deep = INT:leaf("deep", { names = { "127.0.0.1" } })
    helpers.write_file(CA:path("deep-chain.crt"),
                       CA:read(deep.crt) .. CA:read(INT.crt))
    echo = helpers.upstream()
    local ws = fmt([[
  server {
    listen 127.0.0.1:%%PORT_WS%% ssl;
    ssl_certificate %s;
    ssl_certificate_key %s;
    location / {
      proxy_pass http://127.0.0.1:%d;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
    }
  }
]], CA:path("srv.crt"), CA:path("srv.key"), echo.port)
    ng = helpers.nginx(ws ..
      server("PORT", CA:path("srv.crt"), CA:path("srv.key"), "a.test") ..
      server("PORT_B", CA:path("srv.crt"), CA:path("srv.key")) ..
      server("PORT_NAMED", CA:path("named.crt"), CA:path("named.key")) ..
      server("PORT_DEEP", CA:path("deep-chain.crt"), CA:path("deep.key")) ..
      server("PORT_PROBED", CA:path("srv.crt"), CA:path("srv.key"), nil,
             fmt("access_log %s/access.log;", "%PREFIX%")))
  end)

  lazy_teardown(function()
    if ng then ng.stop() end
    if echo then echo:stop() end
    for _, ca in ipairs({ CA, OTHER }) do
      if ca then ca:cleanup() end
    end
  end)

  describe("verification", function()
    local gw

    lazy_setup(function()
      local P = ng.ports
      gw = helpers.start(conf({
        https("good", P.PORT, { ca_certificates = array({ "test-ca" }) }),
        https("wrongca", P.PORT, { ca_certificates = array({ "other-ca" }) }),
        https("system", P.PORT), -- the system store does not know the test CA
        https("mismatch", P.PORT_NAMED, { ca_certificates = array({ "test-ca" }) }),
        https("noverify", P.PORT_NAMED,
              { tls_verify = false, ca_certificates = array({ "other-ca" }) }),
        https("shallow", P.PORT_DEEP,
              { ca_certificates = array({ "test-ca" }), tls_verify_depth = 0 }),
        https("deep", P.PORT_DEEP,
              { ca_certificates = array({ "test-ca" }), tls_verify_depth = 1 }),
      }))
    end)

    lazy_teardown(function()
      if gw then gw:stop() end
    end)

    it("proxies over TLS when the certificate verifies against ca_certificates", function()
      local res = gw:get("/good")
      assert.equal(200, res.status)
      assert.equal("PORT", field(res.body, "srv"))
    end)

    it("answers 502 and logs the verify error when the CA is not trusted", function()
      local res = gw:get("/wrongca")
      assert.equal(502, res.status)
      assert.equal(BAD_GATEWAY, (res.body:gsub("%s+$", "")))
      helpers.eventually(function()
        local log = gw:error_log()
        assert.matches(fmt("upstream connect failed %%(127.0.0.1:%d, try 1%%): TLS certificate "
                           .. "verify failed: unable to get local issuer certificate",
                           ng.ports.PORT), log)
      end)
    end)

    it("verifies by default against the system store, which lacks a private CA", function()
      assert.equal(502, gw:get("/system").status)
    end)

    it("answers 502 when the certificate does not name the backend", function()
      assert.equal(502, gw:get("/mismatch").status)
      helpers.eventually(function()
        assert.matches("TLS certificate verify failed: IP address mismatch", gw:error_log(), 1,
                       true)
      end)
    end)

    it("passes an untrusted, mismatched certificate with tls_verify: false", function()
      local res = gw:get("/noverify")
      assert.equal(200, res.status)
      assert.equal("PORT_NAMED", field(res.body, "srv"))
    end)

    it("refuses a chain longer than tls_verify_depth allows, and takes it within", function()
      assert.equal(502, gw:get("/shallow").status)
      helpers.eventually(function()
        assert.matches("TLS certificate verify failed: certificate chain too long",
                       gw:error_log(), 1, true)
      end)
      assert.equal(200, gw:get("/deep").status)
    end)
  end)

  describe("connections", function()
    local gw

    lazy_setup(function()
      local P = ng.ports
      local trust = array({ "test-ca" })
      gw = helpers.start(conf({
        https("ip", P.PORT, { ca_certificates = trust }),
        https("mtls", P.PORT, { ca_certificates = trust, client_certificate = { id = "alice" } }),
        { name = "byname", host = "named-pool", protocol = "https", retries = 0,
          ca_certificates = trust },
        { name = "tls", host = "pool", protocol = "https", retries = 0, ca_certificates = trust },
        { name = "plain", host = "pool", protocol = "http", retries = 0 },
        { name = "both", host = "both", protocol = "https", retries = 0,
          ca_certificates = trust },
        { name = "upmtls", host = "mtls-pool", protocol = "https", retries = 0,
          ca_certificates = trust },
        { name = "othername", host = "other-name", protocol = "https", retries = 0,
          ca_certificates = trust },
      }, {
        upstreams = array({
          { name = "named-pool", host_header = "a.test",
            targets = array({ { target = "127.0.0.1:" .. P.PORT } }) },
          { name = "pool", targets = array({ { target = "127.0.0.1:" .. P.PORT } }) },
          { name = "other-name", host_header = "c.test",
            targets = array({ { target = "127.0.0.1:" .. P.PORT } }) },
          { name = "mtls-pool", client_certificate = { id = "alice" },
            targets = array({ { target = "127.0.0.1:" .. P.PORT } }) },
          { name = "both", targets = array({ { target = "127.0.0.1:" .. P.PORT },
                                             { target = "127.0.0.1:" .. P.PORT_B } }) },
        }),
      }))
    end)

    lazy_teardown(function()
      if gw then gw:stop() end
    end)

    it("sends no SNI for an IP address, and the upstream's host_header as SNI", function()
      local res = gw:get("/ip")
      assert.equal(200, res.status)
      assert.equal("", field(res.body, "sni"))
      res = gw:get("/byname")
      assert.equal(200, res.status)
      assert.equal("a.test", field(res.body, "sni"))
    end)

    it("answers 502 when the certificate does not carry the name sent as SNI", function()
      assert.equal(502, gw:get("/othername").status)
      helpers.eventually(function()
        assert.matches('TLS certificate verify failed: hostname mismatch (name "c.test")',
                       gw:error_log(), 1, true)
      end)
    end)

    it("presents client_certificate to the backend, and none without it", function()
      local res = gw:get("/mtls")
      assert.equal(200, res.status)
      assert.equal("O=acme,CN=alice", field(res.body, "client")) -- RFC 2253 order
      res = gw:get("/ip")
      assert.equal(200, res.status)
      assert.equal("", field(res.body, "client"))
    end)

    it("presents the upstream's client_certificate for a balanced service without one", function()
      local res = gw:get("/upmtls")
      assert.equal(200, res.status)
      assert.equal("O=acme,CN=alice", field(res.body, "client"))
    end)

    it("keeps TLS connections alive, and never hands one to a plain-http service", function()
      local first = gw:get("/tls")
      assert.equal(200, first.status)
      -- the same target, over plain http: nginx's 400 for plain HTTP on a TLS port proves it
      -- got a fresh plain connection, not the pooled TLS one
      local plain = gw:get("/plain")
      assert.equal(400, plain.status)
      assert.matches("plain HTTP request was sent to HTTPS port", plain.body, 1, true)
      local again = gw:get("/tls")
      assert.equal(200, again.status)
      assert.equal(field(first.body, "conn"), field(again.body, "conn"))
      assert.equal(tonumber(field(first.body, "reqs")) + 1, tonumber(field(again.body, "reqs")))
    end)

    it("balances an https service over both targets", function()
      local seen = {}
      for _ = 1, 6 do
        local res = gw:get("/both")
        assert.equal(200, res.status)
        seen[field(res.body, "srv")] = true
      end
      assert.is_true(seen.PORT)
      assert.is_true(seen.PORT_B)
    end)
  end)

  it("resumes the TLS session on a new connection", function()
    local gw = helpers.start(conf({
      https("ip", ng.ports.PORT, { ca_certificates = array({ "test-ca" }) }),
    }, { limits = { upstream_keepalive_pool_size = 0 } }))
    finally(function() gw:stop() end)
    local a = gw:get("/ip")
    local b = gw:get("/ip")
    assert.equal(200, a.status)
    assert.equal(200, b.status)
    assert.are_not.equal(field(a.body, "conn"), field(b.body, "conn"))
    assert.equal("r", field(b.body, "reused"))
  end)

  it("retries a failed handshake on the next target and counts it against the target", function()
    local gw = helpers.start(conf({
      { name = "mixed", host = "mixed", protocol = "https", retries = 2,
        ca_certificates = array({ "test-ca" }) },
    }, {
      upstreams = array({
        { name = "mixed", healthchecks = { passive = { unhealthy = { tcp_failures = 1 } } },
          targets = array({ { target = "127.0.0.1:" .. ng.ports.PORT_NAMED },
                            { target = "127.0.0.1:" .. ng.ports.PORT } }) },
      }),
    }))
    finally(function() gw:stop() end)
    for _ = 1, 4 do
      local res = gw:get("/mixed")
      assert.equal(200, res.status)
      assert.equal("PORT", field(res.body, "srv"))
    end
    helpers.eventually(function()
      local log = gw:error_log()
      assert.matches(fmt('target 127.0.0.1:%d, 127.0.0.1:%d, try 1): TLS certificate verify '
                         .. 'failed: IP address mismatch (name "127.0.0.1")',
                         ng.ports.PORT_NAMED, ng.ports.PORT_NAMED), log, 1, true)
      assert.matches(fmt("target 127.0.0.1:%d is now unhealthy", ng.ports.PORT_NAMED), log, 1,
                     true)
    end)
  end)

  it("bounds the handshake by connect_timeout", function()
    -- a listener that never accepts: the kernel completes TCP, nobody answers the ClientHello
    local socket = require "socket"
    local l = assert(socket.tcp4())
    assert(l:bind("127.0.0.1", 0))
    assert(l:listen(8))
    local _, port = l:getsockname()
    finally(function() l:close() end)
    local gw = helpers.start(conf({ https("mute", port, { connect_timeout = 300 }) }))
    finally(function() gw:stop() end)
    local res = gw:get("/mute")
    assert.equal(504, res.status)
    helpers.eventually(function()
      assert.matches(fmt("upstream connect failed (127.0.0.1:%d, try 1): timed out", port),
                     gw:error_log(), 1, true)
    end)
  end)

  it("tunnels a WebSocket over TLS, and passes the client's half-close through", function()
    local upstream_mod = require "moongate.spec.upstream"
    local gw = helpers.start(conf({
      https("ws", ng.ports.PORT_WS, { ca_certificates = array({ "test-ca" }) }),
    }, { limits = { worker_shutdown_timeout = "1s" } }))
    finally(function() gw:stop() end)
    local function upgrade()
      local c = assert(helpers.connect(gw.port))
      assert(c:send("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    .. "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    .. "Sec-WebSocket-Version: 13\r\n\r\n"))
      assert.equal(101, assert(c:read_response()).status)
      return c
    end
    local c = upgrade()
    finally(function() c:close() end)
    local big = ("0123456789"):rep(7000)
    assert(c:send(upstream_mod.encode_frame(2, big, true)))
    local frame = assert(c:receive_frame(5))
    assert.is_true(frame.payload == big, "payload differs")
    c:shutdown_send() -- through the gateway (close_notify, FIN) and nginx to the echo server
    local rest, how = c:receive_all(5)
    assert.equal("", rest)
    assert.is_true(how == "closed" or how == "reset", how)
  end)

  it("sends close_notify when it closes an idle pooled connection", function()
    -- `openssl s_server` tells a close_notify ("DONE") from a bare FIN ("ERROR"); its stdin is
    -- what it sends, so the response is written there before the gateway connects
    local port = helpers.get_free_port()
    local out = CA:path("s_server.log")
    local srv = assert(io.popen(fmt("exec timeout 20 openssl s_server -ign_eof "
                                    .. "-naccept 1 -accept 127.0.0.1:%d -cert %s -key %s "
                                    .. ">%s 2>&1", port, CA:path("srv.crt"), CA:path("srv.key"),
                                    out), "w"))
    local closed = false
    local function close_srv()
      if not closed then closed = true; srv:close() end
    end
    finally(close_srv)
    srv:write("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    srv:flush()
    helpers.eventually(function()
      assert.matches("ACCEPT", helpers.read_file(out) or "", 1, true)
    end, 5)
    local gw = helpers.start(conf({
      https("idle", port, { ca_certificates = array({ "test-ca" }) }),
    }, { limits = { upstream_keepalive_idle_timeout = "200ms" } }))
    finally(function() gw:stop() end)
    local res = gw:get("/idle")
    assert.equal(200, res.status)
    assert.equal("ok", res.body)
    helpers.eventually(function() -- the pool's idle timeout closes it
      assert.matches("CONNECTION CLOSED", helpers.read_file(out) or "", 1, true)
    end, 5)
    close_srv()
    local log = helpers.read_file(out)
    assert.matches("DONE", log, 1, true)
    assert.not_matches("ERROR", log, 1, true)
  end)

  describe("active https probes", function()
    local function probed(verify, ca)
      return conf({
        { name = "lb", host = "probed", protocol = "https", retries = 0, tls_verify = false,
          ca_certificates = array({ ca }) },
      }, {
        upstreams = array({
          { name = "probed", targets = array({ { target = "127.0.0.1:" .. ng.ports.PORT_PROBED } }),
            healthchecks = { active = {
              type = "https", http_path = "/health", https_verify_certificate = verify,
              https_sni = "a.test", timeout = 2,
              healthy = { interval = 0.2, successes = 1 },
              unhealthy = { interval = 0.2, tcp_failures = 1 } } } },
        }),
      })
    end

    local function probes_seen()
      local n = 0
      for line in ng.access_log():gmatch("[^\n]+") do
        if line:find("GET /health", 1, true) and line:find("moongate-healthcheck", 1, true) then
          n = n + 1
        end
      end
      return n
    end

    it("keeps a target healthy when the probe verifies", function()
      local before = probes_seen()
      local gw = helpers.start(probed(true, "test-ca"))
      finally(function() gw:stop() end)
      helpers.eventually(function()
        assert.is_true(probes_seen() >= before + 3)
      end, 10)
      assert.equal(200, gw:get("/lb").status)
      assert.not_matches("is now unhealthy", gw:error_log(), 1, true)
    end)

    it("marks the target unhealthy when the certificate fails verification", function()
      local gw = helpers.start(probed(true, "other-ca"))
      finally(function() gw:stop() end)
      helpers.eventually(function()
        assert.matches("is now unhealthy", gw:error_log(), 1, true)
      end, 10)
      assert.matches("TLS certificate verify failed", gw:error_log(), 1, true)
      local res = gw:get("/lb")
      assert.equal(503, res.status)
      assert.matches(NO_PEER, res.body, 1, true)
    end)

    it("does not verify with https_verify_certificate: false", function()
      local before = probes_seen()
      local gw = helpers.start(probed(false, "other-ca"))
      finally(function() gw:stop() end)
      helpers.eventually(function()
        assert.is_true(probes_seen() >= before + 3)
      end, 10)
      assert.equal(200, gw:get("/lb").status)
      assert.not_matches("is now unhealthy", gw:error_log(), 1, true)
    end)
  end)

  describe("moongate check", function()
    local function check(services, extra)
      local c = conf(services, extra)
      c.proxy_listen = array({ "127.0.0.1:1" })
      local rc, lines = helpers.check(c)
      return rc, table.concat(lines, "\n")
    end

    it("refuses an unknown client_certificate id, with its path", function()
      local rc, out = check({ https("s", 443, { client_certificate = { id = "nope" } }) })
      assert.are_not.equal(0, rc)
      assert.matches("services[0].client_certificate: no certificate has id 'nope'", out, 1, true)
    end)

    it("refuses an unknown ca_certificates id, with its path", function()
      local rc, out = check({ https("s", 443, { ca_certificates = array({ "nope" }) }) })
      assert.are_not.equal(0, rc)
      assert.matches("services[0].ca_certificates[0]: no ca_certificate has id 'nope'", out, 1,
                     true)
    end)

    it("refuses a tls_verify_depth out of 0..64", function()
      local rc, out = check({ https("s", 443, { tls_verify_depth = 65 }) })
      assert.are_not.equal(0, rc)
      assert.matches("services[0].tls_verify_depth: must be at most 64", out, 1, true)
      rc, out = check({ https("s", 443, { tls_verify_depth = -1 }) })
      assert.are_not.equal(0, rc)
      assert.matches("services[0].tls_verify_depth: must be at least 0", out, 1, true)
    end)

    it("reports every bad reference at once", function()
      local rc, out = check({ https("s", 443, { ca_certificates = array({ "nope" }),
                                                client_certificate = { id = "gone" } }) })
      assert.are_not.equal(0, rc)
      assert.matches("services[0].ca_certificates[0]: no ca_certificate has id 'nope'", out, 1,
                     true)
      assert.matches("services[0].client_certificate: no certificate has id 'gone'", out, 1,
                     true)
    end)

    it("refuses TLS fields on a plain-http service", function()
      local rc, out = check({ { name = "s", url = "http://127.0.0.1:80", tls_verify = false,
                                tls_verify_depth = 2, ca_certificates = array({ "test-ca" }),
                                client_certificate = { id = "alice" } } })
      assert.are_not.equal(0, rc)
      for _, f in ipairs({ "tls_verify", "tls_verify_depth", "ca_certificates",
                           "client_certificate" }) do
        assert.matches(fmt('services[0].%s: only for protocol "https"', f), out, 1, true)
      end
    end)

    it("refuses an unknown client_certificate on an upstream", function()
      local rc, out = check({}, { upstreams = array({
        { name = "u", client_certificate = { id = "nope" } } }) })
      assert.are_not.equal(0, rc)
      assert.matches("upstreams[0].client_certificate: no certificate has id 'nope'", out, 1,
                     true)
    end)

    it("accepts an https url with the default port 443", function()
      local rc, out = check({ { name = "s", url = "https://127.0.0.1",
                                ca_certificates = array({ "test-ca" }),
                                client_certificate = { id = "alice" } } })
      assert.equal(0, rc, out)
    end)
  end)
end)
