-- TLS termination (README: "TLS"): `ssl` listeners, `certificates` and `snis` entities, SNI
-- selection (exact, wildcard, default), RSA and ECDSA side by side, protocol, cipher and
-- ALPN policy, session tickets shared by workers, https scheme for routing and upstream
-- headers, keep-alive and large bodies over TLS, the handshake timeout, and what
-- `moongate check` refuses.
--
-- Certificates are made by the `openssl` CLI at test time (a CA, then leaf certificates);
-- clients are `openssl s_client` and `curl` (luasocket has no TLS), both checking the chain
-- against the test CA, so a wrong certificate fails verification as well as the name test.

local helpers = require "spec.helpers"
local cjson = require "cjson"
local pki = require "spec.pki"

local fmt = string.format
local q = helpers.shell_quote

local DIR -- where the certificates live
local CA  -- the test CA (moongate.spec.pki)
local PATTERN = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"

local function sh(cmd)
  return helpers.run(cmd .. " 2>&1")
end

local function path(name)
  return DIR .. "/" .. name
end

local function make_certs()
  local ca = pki.ca()
  CA, DIR = ca, ca.dir
  ca:leaf("a", { names = { "a.test" } })
  ca:leaf("a_ec", { kind = "ec", names = { "a.test" } })
  ca:leaf("wild", { names = { "*.wild.test" } })
  ca:leaf("default", { names = { "default.test" } })
  ca:leaf("other", { kind = "ec", names = { "other.test" } })
  ca:leaf("expired", { names = { "expired.test" }, days = 0 })
  return ca
end

-- `openssl s_client` against the gateway: its whole output (stdin closed at once).
local function probe(port, args)
  return sh(fmt("echo | timeout 10 openssl s_client -connect 127.0.0.1:%d -CAfile %s %s",
                port, q(path("ca.crt")), args or ""))
end

local subject, handshake_ok = pki.subject_cn, pki.handshake_ok

-- curl over TLS to `name` (resolved to 127.0.0.1): status, body, and the full output.
local function curl(port, name, p, extra)
  local out, rc = sh(fmt("curl -sS --max-time 20 --cacert %s --resolve %s:%d:127.0.0.1 %s "
                         .. "-w '\\n%%{http_code}' %s",
                         q(path("ca.crt")), name, port, extra or "",
                         q(fmt("https://%s:%d%s", name, port, p))))
  local body, status = out:match("^(.*)\n(%d+)$")
  return tonumber(status), body, out, rc
end

local function read(p)
  return helpers.read_file(p)
end

-- one route for "/", spelled so it encodes as JSON arrays
local ROOT_ROUTE = helpers.array({ { paths = helpers.array({ "/" }) } })

describe("TLS", function()
lazy_setup(make_certs)

lazy_teardown(function()
  if DIR then sh("rm -rf " .. q(DIR)) end
end)

describe("termination", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    local ssl_port, plain_port = helpers.get_free_port(), helpers.get_free_port()
    gw = helpers.start({
      worker_processes = 2, -- session tickets must resume on either worker
      proxy_listen = helpers.array({ "127.0.0.1:" .. plain_port,
                                     "127.0.0.1:" .. ssl_port .. " ssl" }),
      certificates = helpers.array({
        -- the default: no SNI names it; PEM text in the config itself
        { cert = read(path("default.crt")), key = read(path("default.key")) },
        -- RSA and ECDSA for the same name, as file paths
        { id = "a", cert = path("a.crt"), key = path("a.key"),
          cert_alt = path("a_ec.crt"), key_alt = path("a_ec.key"),
          snis = helpers.array({ "a.test" }), tags = helpers.array({ "t" }) },
        { id = "w", cert = path("wild.crt"), key = path("wild.key"),
          snis = helpers.array({ "*.wild.test" }) },
        { id = "o", cert = path("other.crt"), key = path("other.key") },
      }),
      snis = helpers.array({ { name = "other.test", certificate = { id = "o" } } }),
      consumers = helpers.array({ { username = "alice",
        keyauth_credentials = helpers.array({ { key = "alice-key" } }) } }),
      services = helpers.array({ {
        name = "echo", url = up.url,
        routes = helpers.array({
          { name = "any", paths = helpers.array({ "/" }) },
          { name = "secure", paths = helpers.array({ "/secure" }),
            protocols = helpers.array({ "https" }) },
          { name = "redirect", paths = helpers.array({ "/redir" }),
            protocols = helpers.array({ "https" }), https_redirect_status_code = 308 },
          { name = "plain-only", paths = helpers.array({ "/plain" }),
            protocols = helpers.array({ "http" }) },
          -- a plugin that reads the request body: the gateway itself answers 100-continue
          { name = "keyed", paths = helpers.array({ "/keyed" }),
            plugins = helpers.array({ { name = "key-auth", config = {
              key_in_body = true, key_in_header = false, key_in_query = false } } }) },
        }),
      }, {
        name = "sni-only", url = up.url .. "/via-sni",
        routes = helpers.array({
          { name = "by-sni", paths = helpers.array({ "/sni" }), strip_path = true,
            protocols = helpers.array({ "https" }), snis = helpers.array({ "a.test" }) },
        }),
      } }),
    })
    assert(gw.ssl_port == ssl_port and gw.port == plain_port)
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  describe("certificate selection", function()
    it("serves the certificate whose SNI matches exactly", function()
      local out = probe(gw.ssl_port, "-servername a.test")
      assert.equal("a.test", subject(out), out)
      assert.is_true(handshake_ok(out), out)
    end)

    it("matches server names case-insensitively", function()
      local out = probe(gw.ssl_port, "-servername A.Test")
      assert.equal("a.test", subject(out), out)
    end)

    it("serves a wildcard certificate for one label under it", function()
      local out = probe(gw.ssl_port, "-servername x.wild.test -verify_hostname x.wild.test")
      assert.equal("*.wild.test", subject(out), out)
      assert.is_true(handshake_ok(out), out)
    end)

    it("does not stretch a wildcard over two labels", function()
      local out = probe(gw.ssl_port, "-servername a.b.wild.test")
      assert.equal("default.test", subject(out), out)
    end)

    it("uses top-level snis entities", function()
      local out = probe(gw.ssl_port, "-servername other.test -verify_hostname other.test")
      assert.equal("other.test", subject(out), out)
      assert.is_true(handshake_ok(out), out)
    end)

    it("falls back to the default certificate for unknown names and no SNI", function()
      assert.equal("default.test", subject(probe(gw.ssl_port, "-servername nope.test")))
      local out = probe(gw.ssl_port, "-noservername")
      assert.equal("default.test", subject(out), out)
    end)

    it("picks ECDSA or RSA for the same name from the client's cipher suites", function()
      local out = probe(gw.ssl_port, "-servername a.test -tls1_2 "
                        .. "-cipher ECDHE-ECDSA-AES128-GCM-SHA256")
      assert.match("Server public key is 256 bit", out, 1, true)
      assert.match("ECDHE%-ECDSA%-AES128%-GCM%-SHA256", out)
      assert.is_true(handshake_ok(out), out)
      out = probe(gw.ssl_port, "-servername a.test -tls1_2 -cipher ECDHE-RSA-AES128-GCM-SHA256")
      assert.match("Server public key is 2048 bit", out, 1, true)
      assert.is_true(handshake_ok(out), out)
      -- TLS 1.3: the signature algorithms decide
      out = probe(gw.ssl_port, "-servername a.test -tls1_3 -sigalgs ecdsa_secp256r1_sha256")
      assert.match("Server public key is 256 bit", out, 1, true)
      assert.is_true(handshake_ok(out), out)
    end)
  end)

  describe("protocol policy", function()
    it("refuses TLS 1.0 and 1.1", function()
      for _, v in ipairs({ "-tls1", "-tls1_1" }) do
        -- the client side may refuse too (security level): either way no session
        local out = probe(gw.ssl_port, "-servername a.test " .. v .. " -cipher DEFAULT@SECLEVEL=0")
        assert.is_false(handshake_ok(out), out)
        assert.match("Cipher is %(NONE%)", out)
      end
    end)

    it("accepts TLS 1.2 and 1.3", function()
      local out = probe(gw.ssl_port, "-servername a.test -tls1_2")
      assert.match("New, TLSv1%.2, Cipher is ECDHE", out)
      assert.is_true(handshake_ok(out), out)
      out = probe(gw.ssl_port, "-servername a.test -tls1_3")
      assert.match("New, TLSv1%.3, Cipher is TLS_", out)
      assert.is_true(handshake_ok(out), out)
    end)

    it("chooses the cipher in server order", function()
      -- the client prefers AES256; the server list puts AES128 first
      local out = probe(gw.ssl_port, "-servername a.test -tls1_2 -cipher "
                        .. "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256")
      assert.match("Cipher is ECDHE%-RSA%-AES128%-GCM%-SHA256", out)
    end)

    it("refuses ciphers outside the intermediate list", function()
      local out = probe(gw.ssl_port, "-servername a.test -tls1_2 -cipher AES128-SHA")
      assert.is_false(handshake_ok(out), out)
    end)

    it("negotiates ALPN http/1.1 and refuses a client that speaks only h2", function()
      local out = probe(gw.ssl_port, "-servername a.test -alpn h2,http/1.1")
      assert.match("ALPN protocol: http/1.1", out, 1, true)
      out = probe(gw.ssl_port, "-servername a.test -alpn h2")
      assert.is_false(handshake_ok(out), out)
      assert.match("no application protocol", out, 1, true)
    end)

    it("resumes sessions from tickets on every worker", function()
      local sess = path("sess.pem")
      -- the ticket arrives after the handshake (TLS 1.3): keep stdin open a moment
      local out = sh(fmt("(sleep 0.3; echo) | timeout 10 openssl s_client -connect "
                         .. "127.0.0.1:%d -servername a.test -CAfile %s -sess_out %s",
                         gw.ssl_port, q(path("ca.crt")), q(sess)))
      assert.match("New, TLSv1.3", out, 1, true)
      -- SO_REUSEPORT spreads new connections over both workers: every one resumes
      for _ = 1, 8 do
        out = sh(fmt("(sleep 0.1; echo) | timeout 10 openssl s_client -connect 127.0.0.1:%d "
                     .. "-servername a.test -CAfile %s -sess_in %s",
                     gw.ssl_port, q(path("ca.crt")), q(sess)))
        assert.match("Reused, TLSv1.3", out, 1, true)
        -- and a fresh ticket: clients use a TLS 1.3 ticket once (wrk, OpenSSL's SSL_clear
        -- reuse), so without one every other connection would be a full handshake
        assert.match("Post-Handshake New Session Ticket arrived", out, 1, true)
      end
      -- TLS 1.2 tickets too
      out = sh(fmt("echo | timeout 10 openssl s_client -connect 127.0.0.1:%d -tls1_2 "
                   .. "-servername a.test -CAfile %s -sess_out %s",
                   gw.ssl_port, q(path("ca.crt")), q(sess)))
      assert.match("New, TLSv1.2", out, 1, true)
      for _ = 1, 4 do
        out = sh(fmt("echo | timeout 10 openssl s_client -connect 127.0.0.1:%d -tls1_2 "
                     .. "-servername a.test -CAfile %s -sess_in %s",
                     gw.ssl_port, q(path("ca.crt")), q(sess)))
        assert.match("Reused, TLSv1.2", out, 1, true)
      end
    end)
  end)

  describe("requests over TLS", function()
    it("are proxied to the plain upstream with X-Forwarded-Proto https", function()
      local status, body = curl(gw.ssl_port, "a.test", "/hello?x=1")
      assert.equal(200, status, body)
      local echo = cjson.decode(body)
      assert.equal("/hello?x=1", echo.path)
      assert.equal("https", echo.headers["x-forwarded-proto"])
      assert.equal(tostring(gw.ssl_port), echo.headers["x-forwarded-port"])
      assert.equal("a.test", echo.headers["x-forwarded-host"]) -- Kong: the host, no port
      -- and the plain listener still says http
      local res = assert(gw:get("/hello"))
      assert.equal(200, res.status)
      assert.equal("http", res:json().headers["x-forwarded-proto"])
    end)

    it("reach https-only routes; plain http gets 426", function()
      local status, body = curl(gw.ssl_port, "a.test", "/secure")
      assert.equal(200, status, body)
      local res = assert(gw:get("/secure"))
      assert.equal(426, res.status)
      assert.equal("Please use HTTPS protocol", res:json().message)
      assert.equal("TLS/1.2, HTTP/1.1", res.headers["upgrade"])
      local conn = res.headers["connection"] -- "Upgrade", or also "close" (two fields)
      conn = type(conn) == "table" and table.concat(conn, ", ") or conn
      assert.match("Upgrade", conn, 1, true)
    end)

    it("redirect plain http to https when the route says so", function()
      local res = assert(gw:get("/redir/x?a=1", { headers = { Host = "shop.test:8080" } }))
      assert.equal(308, res.status)
      assert.equal("https://shop.test/redir/x?a=1", res.headers["location"])
      assert.equal("0", res.headers["content-length"])
      local status, body = curl(gw.ssl_port, "a.test", "/redir/x")
      assert.equal(200, status, body)
    end)

    it("serve an http-only route over TLS too, as Kong does", function()
      local status, body = curl(gw.ssl_port, "a.test", "/plain")
      assert.equal(200, status, body)
      assert.equal("https", cjson.decode(body).headers["x-forwarded-proto"])
    end)

    it("match routes by SNI", function()
      local status, body = curl(gw.ssl_port, "a.test", "/sni")
      assert.equal(200, status, body)
      assert.equal("/via-sni", cjson.decode(body).path)
      -- another name: the route does not match, the catch-all one does
      status, body = curl(gw.ssl_port, "x.wild.test", "/sni")
      assert.equal(200, status, body)
      assert.equal("/sni", cjson.decode(body).path)
      -- plain http has no SNI: the condition is skipped (Kong's router), and the route
      -- being https-only answers 426
      local res = assert(gw:get("/sni"))
      assert.equal(426, res.status)
    end)

    it("keep the connection alive between requests", function()
      local out, rc = sh(fmt("curl -sS --max-time 20 --cacert %s --resolve a.test:%d:127.0.0.1 "
                             .. "-o /dev/null -o /dev/null -w '%%{http_code} %%{num_connects}\\n' "
                             .. "https://a.test:%d/one https://a.test:%d/two",
                             q(path("ca.crt")), gw.ssl_port, gw.ssl_port, gw.ssl_port))
      assert.equal(0, rc, out)
      assert.equal("200 1\n200 0\n", out)
    end)

    it("serve pipelined requests that arrive in one TLS record", function()
      local reqs = "GET /p1 HTTP/1.1\\r\\nHost: a.test\\r\\n\\r\\n"
                   .. "GET /p2 HTTP/1.1\\r\\nHost: a.test\\r\\nConnection: close\\r\\n\\r\\n"
      local out = sh(fmt("printf %s | timeout 10 openssl s_client -quiet -ign_eof -connect "
                         .. "127.0.0.1:%d -servername a.test -CAfile %s",
                         q(reqs), gw.ssl_port, q(path("ca.crt"))))
      local n = 0
      for _ in out:gmatch("HTTP/1%.1 200 OK") do n = n + 1 end
      assert.equal(2, n, out)
      assert.match('"path":"/p1"', out, 1, true)
      assert.match('"path":"/p2"', out, 1, true)
    end)

    it("serve pipelined requests read ahead beyond the input buffer", function()
      -- 512 requests of exactly 64 bytes (32 KiB), sent by s_client 8 KiB per record, so
      -- every record ends between two requests: more than the gateway's 16 KiB input buffer
      -- holds, while OpenSSL reads records ahead (SSL_CTX_set_read_ahead) where epoll
      -- cannot see them. Every request must be answered.
      local reqs = {}
      for i = 1, 512 do
        local head = fmt("GET /r%04d HTTP/1.1\r\nHost: a.test\r\n", i)
        local last = i == 512 and "Connection: close\r\n" or ""
        local pad = 64 - #head - #last - #"X: \r\n\r\n"
        reqs[i] = head .. last .. "X: " .. string.rep("x", pad) .. "\r\n\r\n"
        assert(#reqs[i] == 64)
      end
      local file = path("pipelined.txt")
      helpers.write_file(file, table.concat(reqs))
      local out = sh(fmt("timeout 20 openssl s_client -quiet -ign_eof -connect 127.0.0.1:%d "
                         .. "-servername a.test -CAfile %s < %s",
                         gw.ssl_port, q(path("ca.crt")), q(file)))
      local n = 0
      for _ in out:gmatch("HTTP/1%.1 200 OK") do n = n + 1 end
      assert.equal(512, n)
      assert.match('"path":"/r0512"', out, 1, true)
    end)

    it("answer Expect: 100-continue through TLS when a plugin reads the body", function()
      -- curl -v prints the interim response it received: the gateway sent the 100 itself
      -- (without it curl would send the body anyway after --expect100-timeout)
      local status, body, out = curl(gw.ssl_port, "a.test", "/keyed",
                                     "-v -H 'Expect: 100-continue' --expect100-timeout 5 "
                                     .. "--data 'apikey=alice-key' 2>&1")
      assert.equal(200, status, body)
      assert.match("< HTTP/1.1 100 Continue", out, 1, true)
      local json = body:match('\n({".*})$') or body:match('^({".*})$')
      assert.equal("alice", cjson.decode(json).headers["x-consumer-username"])
      status, body = curl(gw.ssl_port, "a.test", "/keyed", "--data 'apikey=wrong'")
      assert.equal(401, status, body)
    end)

    it("carry a 5 MB download byte for byte", function()
      local n = 5 * 1024 * 1024
      local file = path("download.bin")
      local status, body = curl(gw.ssl_port, "a.test", "/big",
                                fmt("-H 'X-Upstream-Mode: big:%d' -o %s", n, q(file)))
      assert.equal(200, status, body)
      local got = read(file)
      assert.equal(n, #got)
      assert.is_true(got == PATTERN:rep(n / 64), "the body differs from the pattern")
    end)

    it("carry a 5 MB upload byte for byte", function()
      local sink_out = path("upload.out")
      local up_src = path("upload.bin")
      -- random bytes: no pattern a dropped or repeated record could hide in
      local out, rc = sh(fmt("openssl rand -out %s %d", q(up_src), 5 * 1024 * 1024))
      assert.equal(0, rc, out)
      local sink = helpers.process("luajit spec/fixtures/tls/sink.lua " .. q(sink_out),
                                   { dir = os.getenv("PWD"), ready = "listening on %d+" })
      finally(function() sink:stop() end)
      local port = assert(tonumber(sink:output():match("listening on (%d+)")))
      local sink_gw = helpers.start({
        proxy_listen = helpers.array({ "127.0.0.1:" .. helpers.get_free_port() .. " ssl" }),
        certificates = helpers.array({ { cert = path("a.crt"), key = path("a.key") } }),
        services = helpers.array({ { url = "http://127.0.0.1:" .. port,
                                     routes = ROOT_ROUTE } }),
      })
      finally(function() sink_gw:stop() end)
      local status, body = curl(sink_gw.ssl_port, "a.test", "/up",
                                fmt("--data-binary @%s -H 'Content-Type: application/octet-stream'",
                                    q(up_src)))
      assert.equal(200, status, body)
      assert.equal(tostring(5 * 1024 * 1024), body)
      assert.is_true(read(sink_out) == read(up_src), "the upstream received other bytes")
    end)
  end)
end)

describe("TLS handshake timeout", function()
  local gw

  lazy_setup(function()
    gw = helpers.start({
      log_level = "info",
      proxy_listen = helpers.array({ "127.0.0.1:" .. helpers.get_free_port() .. " ssl" }),
      limits = { tls_handshake_timeout = "1s" },
      certificates = helpers.array({ { cert = path("default.crt"), key = path("default.key") } }),
      services = helpers.array({ { url = "http://127.0.0.1:9",
                                   routes = ROOT_ROUTE } }),
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
  end)

  local function closed_after(send)
    local c = assert(helpers.connect(gw.ssl_port, { timeout = 5 }))
    local t0 = helpers.now()
    if send then assert(c:send(send)) end
    local data, err, partial = c:receive(1, 5)
    local elapsed = helpers.now() - t0
    c:close()
    return elapsed, data, err, partial
  end

  it("closes a client that sends nothing", function()
    local elapsed, data, err = closed_after(nil)
    assert.is_nil(data)
    assert.equal("closed", err)
    -- not before the handshake timeout (1 s here); the 5 s receive proves it closed at all
    assert.is_true(elapsed > 0.8, "closed after " .. elapsed .. " s")
  end)

  it("closes a client that stalls in the middle of its ClientHello", function()
    -- a record header announcing 512 bytes of handshake, then silence
    local elapsed, data, err = closed_after("\22\3\1\2\0\1\0\1\252\3\3")
    assert.is_nil(data)
    assert.equal("closed", err)
    assert.is_true(elapsed > 0.8, "closed after " .. elapsed .. " s")
    helpers.eventually(function()
      assert.match("client timed out in the TLS handshake", gw:error_log(), 1, true)
    end)
  end)

  it("drops plain HTTP sent to a TLS port at once", function()
    local _, data, err, partial = closed_after("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    -- OpenSSL may answer with an alert record before closing; never with HTTP
    assert.is_nil((data or partial or ""):match("HTTP/"))
    assert.equal("closed", err ~= "timeout" and "closed" or err)
  end)
end)

describe("TLS without a default certificate", function()
  local gw

  lazy_setup(function()
    gw = helpers.start({
      proxy_listen = helpers.array({ "127.0.0.1:" .. helpers.get_free_port() .. " ssl" }),
      certificates = helpers.array({ { cert = path("a.crt"), key = path("a.key"),
                                       snis = helpers.array({ "a.test" }) } }),
      services = helpers.array({ { url = "http://127.0.0.1:9",
                                   routes = ROOT_ROUTE } }),
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
  end)

  it("refuses unknown names with unrecognized_name rather than show another domain", function()
    local out = probe(gw.ssl_port, "-servername nope.test")
    assert.is_false(handshake_ok(out), out)
    assert.match("unrecognized name", out, 1, true)
    assert.is_nil(subject(out))
    out = probe(gw.ssl_port, "-servername a.test")
    assert.equal("a.test", subject(out), out)
  end)
end)

describe("certificate phase", function()
  local gw

  lazy_setup(function()
    CA:leaf("picked", { kind = "ec", names = { "picked.test" } })
    gw = helpers.start({
      log_level = "info",
      lua_package_path = os.getenv("PWD") .. "/spec/fixtures/tls/?.lua;;",
      plugins = helpers.array({ "bundled", "tls-picker",
        { name = "tls-picker", config = {
            name = "picked.test", cert_file = path("picked.crt"), key_file = path("picked.key"),
            fail_name = "boom.test", probe_name = "probe.test" } } }),
      proxy_listen = helpers.array({ "127.0.0.1:" .. helpers.get_free_port() .. " ssl" }),
      -- only a.test has a certificate of its own: no default
      certificates = helpers.array({ { cert = path("a.crt"), key = path("a.key"),
                                       snis = helpers.array({ "a.test" }) } }),
      services = helpers.array({ { url = "http://127.0.0.1:9",
                                   routes = ROOT_ROUTE } }),
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
  end)

  it("lets a global plugin serve a certificate for a name no entity covers", function()
    for _ = 1, 3 do -- parsed once, then from the cache
      local out = probe(gw.ssl_port, "-servername picked.test -verify_hostname picked.test")
      assert.equal("picked.test", subject(out), out)
      assert.is_true(handshake_ok(out), out)
    end
  end)

  it("leaves other names to SNI selection", function()
    local out = probe(gw.ssl_port, "-servername a.test")
    assert.equal("a.test", subject(out), out)
    out = probe(gw.ssl_port, "-servername nope.test")
    assert.match("unrecognized name", out, 1, true)
  end)

  it("fails the handshake when the handler raises, and logs why", function()
    local out = probe(gw.ssl_port, "-servername boom.test")
    assert.is_false(handshake_ok(out), out)
    assert.match("internal error", out, 1, true)
    helpers.eventually(function()
      assert.match("[tls-picker] certificate phase failed (server name boom.test): ",
                   gw:error_log(), 1, true)
      assert.match("tls-picker refuses boom.test", gw:error_log(), 1, true)
    end)
    -- the worker is fine
    assert.equal("a.test", subject(probe(gw.ssl_port, "-servername a.test")))
  end)

  it("refuses request PDK calls in the certificate phase", function()
    probe(gw.ssl_port, "-servername probe.test")
    helpers.eventually(function()
      assert.match("request PDK in certificate phase: false", gw:error_log(), 1, true)
      assert.match("is not allowed in the certificate phase", gw:error_log(), 1, true)
    end)
  end)
end)

describe("certificate phase in the PDK kit", function()
  it("runs a certificate handler with get_sni and set_cert", function()
    local pdk = require "moongate.spec.pdk"
    local saved = package.path
    package.path = os.getenv("PWD") .. "/spec/fixtures/tls/?.lua;" .. package.path
    local handler = require "moongate.plugins.tls-picker.handler"
    package.path = saved
    local conf = { name = "picked.test", cert_file = path("a.crt"), key_file = path("a.key") }
    local kit = pdk.new({ sni = "picked.test" })
    kit:run(handler, "certificate", conf)
    assert.equal(read(path("a.crt")), kit.tls_cert)
    assert.equal(read(path("a.key")), kit.tls_key)
    kit = pdk.new({ sni = "other.test" })
    kit:run(handler, "certificate", conf)
    assert.is_nil(kit.tls_cert)
    -- and the phase checks are the gateway's
    assert.has_error(function() kit:call("access", function() moongate.tls.get_sni() end) end,
                     "moongate.tls.get_sni is not allowed in the access phase")
  end)
end)

describe("moongate check with certificates", function()
  local function conf(certs, extra)
    local c = {
      proxy_listen = helpers.array({ "127.0.0.1:8443 ssl" }),
      certificates = certs and helpers.array(certs) or nil,
      services = helpers.array({ { url = "http://127.0.0.1:9",
                                   routes = ROOT_ROUTE } }),
    }
    for k, v in pairs(extra or {}) do c[k] = v end
    return c
  end

  local function refused(c, expected)
    local rc, lines = helpers.check(c)
    assert.equal(1, rc, table.concat(lines, "\n"))
    assert.same(expected, lines)
  end

  it("accepts a valid config, PEM text and file paths alike", function()
    local rc, lines = helpers.check(conf({
      { cert = read(path("default.crt")), key = read(path("default.key")) },
      { cert = path("a.crt"), key = path("a.key"), cert_alt = path("a_ec.crt"),
        key_alt = path("a_ec.key"), snis = helpers.array({ "a.test", "*.a.test", "a.*" }) },
    }))
    assert.equal(0, rc, table.concat(lines, "\n"))
  end)

  it("only warns about an expired certificate", function()
    local rc, lines = helpers.check(conf({ { cert = path("expired.crt"),
                                             key = path("expired.key") } }))
    local text = table.concat(lines, "\n")
    assert.equal(0, rc, text)
    assert.match("certificates[0].cert: the certificate expired on", text, 1, true)
  end)

  it("refuses an ssl listener without certificates", function()
    refused(conf(nil), { "proxy_listen: a listener has 'ssl' but 'certificates' is empty: TLS "
                         .. "needs at least one certificate" })
  end)

  it("refuses missing fields, unreadable files and bad PEM", function()
    refused(conf({ { cert = path("a.crt") } }), { "certificates[0].key: required" })
    refused(conf({ { cert = path("nope.crt"), key = path("a.key") } }),
            { fmt("certificates[0].cert: cannot read '%s': No such file or directory",
                  path("nope.crt")) })
    refused(conf({ { cert = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
                     key = path("a.key") } }),
            { "certificates[0].cert: invalid PEM certificate (bad base64 decode)" })
    local rc, lines = helpers.check(conf({ { cert = path("a.crt"), key = path("a.crt") } }))
    assert.equal(1, rc)
    assert.equal(1, #lines, table.concat(lines, "\n"))
    assert.match("^certificates%[0%]%.key: invalid PEM private key %(.+%)$", lines[1])
    refused(conf({ { cert = 12, key = path("a.key") } }),
            { "certificates[0].cert: must be a string (PEM text or a file path)" })
  end)

  it("refuses a key that does not match its certificate", function()
    refused(conf({ { cert = path("a.crt"), key = path("default.key") } }),
            { "certificates[0].key: does not match the certificate in 'cert'" })
    refused(conf({ { cert = path("a.crt"), key = path("a.key"),
                     cert_alt = path("a_ec.crt"), key_alt = path("other.key") } }),
            { "certificates[0].key_alt: does not match the certificate in 'cert_alt'" })
  end)

  it("refuses cert_alt without key_alt and two pairs of one key type", function()
    refused(conf({ { cert = path("a.crt"), key = path("a.key"), cert_alt = path("a_ec.crt") } }),
            { "certificates[0].key_alt: required" })
    refused(conf({ { cert = path("a.crt"), key = path("a.key"), cert_alt = path("wild.crt"),
                     key_alt = path("wild.key") } }),
            { "certificates[0].cert_alt: must use another key type than 'cert' (both are RSA): "
              .. "e.g. RSA and ECDSA" })
  end)

  it("refuses bad, duplicate and dangling SNI names", function()
    refused(conf({ { cert = path("a.crt"), key = path("a.key"),
                     snis = helpers.array({ "a.*.test", "10.0.0.1", "a b" }) } }),
            { "certificates[0].snis[0]: the wildcard must be the whole leftmost or rightmost "
              .. "label, e.g. \"*.example.com\"",
              "certificates[0].snis[1]: must be a host name, not an IP address",
              "certificates[0].snis[2]: invalid character in a host name" })
    refused(conf({ { id = "x", cert = path("a.crt"), key = path("a.key"),
                     snis = helpers.array({ "a.test" }) } },
                 { snis = helpers.array({ { name = "A.test", certificate = { id = "x" } },
                                          { name = "b.test", certificate = { id = "y" } } }) }),
            { "snis[1].certificate: no certificate has id 'y'",
              "certificates[0].snis[0]: 'a.test' is already declared at snis[0].name" })
  end)

  it("refuses unknown fields and duplicate ids", function()
    refused(conf({ { id = "x", cert = path("a.crt"), key = path("a.key"), passphrase = "p" },
                   { id = "x", cert = path("a.crt"), key = path("a.key") } }),
            { "certificates[1].id: 'x' is already used by certificates[0]",
              "certificates[0].passphrase: unknown field" })
  end)
end)
end)
