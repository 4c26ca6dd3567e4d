-- The asynchronous certificate phase (README: "TLS", certificate phase): a global plugin's
-- `certificate` handler runs in a coroutine and may wait (moongate.sleep, cosockets through
-- moongate.http) while the handshake pauses. The fixture plugin cert-fetcher fetches a PEM
-- pair from a small certificate store (spec/fixtures/tls/certstore.lua, a real server in its
-- own process) on first sight of a name, caches it in a shared dict and serves it. Clients
-- are `openssl s_client` checking the chain against the test CA, and plain HTTP on a second
-- listener of the same (single) worker.

local helpers = require "spec.helpers"
local pki = require "spec.pki"

local fmt = string.format
local q = helpers.shell_quote

local CA, DIR

local function sh(cmd)
  return helpers.run(cmd .. " 2>&1")
end

local function s_client(port, name, extra)
  return fmt("echo | timeout 15 openssl s_client -connect 127.0.0.1:%d -CAfile %s "
             .. "-servername %s -verify_hostname %s %s", port, q(DIR .. "/ca.crt"), name, name,
             extra or "")
end

local function probe(port, name)
  return sh(s_client(port, name))
end

local subject, handshake_ok = pki.subject_cn, pki.handshake_ok

local function count(s, plain)
  local n, at = 0, 1
  while true do
    local i = s:find(plain, at, true)
    if not i then return n end
    n, at = n + 1, i + #plain
  end
end

describe("certificate phase, asynchronous", function()
  local gw, store

  lazy_setup(function()
    CA = pki.ca()
    DIR = CA.dir
    CA:leaf("a", { names = { "a.test" } })
    CA:leaf("fetched.test", { kind = "ec", names = { "fetched.test" } })
    CA:leaf("slow.test", { kind = "ec", names = { "slow.test" } })
    CA:leaf("slow-gone.test", { kind = "ec", names = { "slow-gone.test" } })
    store = helpers.process("luajit spec/fixtures/tls/certstore.lua " .. q(DIR) .. " hang.test",
                            { ready = "listening on %d+" })
    local store_port = tonumber(store.stdout():match("listening on (%d+)"))
    local up = helpers.upstream()
    gw = helpers.start({
      log_level = "info",
      lua_package_path = os.getenv("PWD") .. "/spec/fixtures/tls/?.lua;;",
      shared_dicts = { certs = "1m" },
      limits = { tls_handshake_timeout = "3s" },
      plugins = helpers.array({ "bundled", "cert-fetcher",
        { name = "cert-fetcher", config = {
            store_port = store_port, dict = "certs", slow_prefix = "slow",
            slow_seconds = 1.5, fail_name = "boom.test", probe_name = "probe.test" } } }),
      proxy_listen = helpers.array({ "127.0.0.1:" .. helpers.get_free_port(),
                                     "127.0.0.1:" .. helpers.get_free_port() .. " ssl" }),
      certificates = helpers.array({ { cert = DIR .. "/a.crt", key = DIR .. "/a.key",
                                       snis = helpers.array({ "a.test" }) } }),
      services = helpers.array({ { url = "http://127.0.0.1:" .. up.port,
                                   routes = helpers.array({ { paths = helpers.array({ "/" }) } })
                                 } }),
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if store then store.stop() end
  end)

  it("fetches a certificate over a cosocket on first sight, then serves it from the cache",
     function()
    local out = probe(gw.ssl_port, "fetched.test")
    assert.equal("fetched.test", subject(out), out)
    assert.is_true(handshake_ok(out), out)
    out = probe(gw.ssl_port, "fetched.test")
    assert.equal("fetched.test", subject(out), out)
    assert.is_true(handshake_ok(out), out)
    -- the second handshake came from the shared dict: the store saw one fetch
    assert.equal(1, count(store.stdout(), "fetch fetched.test\n"))
    -- a name the store does not know is left to SNI selection
    out = probe(gw.ssl_port, "nope.test")
    assert.match("unrecognized name", out, 1, true)
    assert.equal("a.test", subject(probe(gw.ssl_port, "a.test")))
  end)

  it("keeps serving other connections while a handler sleeps", function()
    local slow_out = os.tmpname()
    sh("(" .. s_client(gw.ssl_port, "slow.test") .. " > " .. q(slow_out) .. " 2>&1 &)")
    helpers.eventually(function() -- the handshake reached the handler
      assert.match("cert-fetcher: slow.test sleeping", gw:error_log(), 1, true)
    end)
    -- while it sleeps (1.5 s): plain HTTP on the other listener and other handshakes
    for _ = 1, 3 do
      local res = assert(helpers.request(gw.port, { path = "/" }))
      assert.equal(200, res.status)
      local out = probe(gw.ssl_port, "a.test")
      assert.equal("a.test", subject(out), out)
      assert.is_true(handshake_ok(out), out)
    end
    -- all of that was served before the sleeping handler woke up
    assert.is_nil(gw:error_log():find("cert-fetcher: slow.test slept", 1, true))
    helpers.eventually(function()
      local f = assert(io.open(slow_out, "rb"))
      local out = f:read("*a")
      f:close()
      assert.equal("slow.test", subject(out), out)
      assert.is_true(handshake_ok(out), out)
    end, 10)
    os.remove(slow_out)
    assert.truthy(gw:error_log():find("cert-fetcher: slow.test slept", 1, true))
  end)

  it("fails the handshake when a handler raises after waiting, and logs why", function()
    local out = probe(gw.ssl_port, "boom.test")
    assert.is_false(handshake_ok(out), out)
    assert.match("internal error", out, 1, true)
    helpers.eventually(function()
      assert.match("[cert-fetcher] certificate phase failed (server name boom.test): ",
                   gw:error_log(), 1, true)
      assert.match("cert-fetcher refuses boom.test", gw:error_log(), 1, true)
    end)
    assert.equal("a.test", subject(probe(gw.ssl_port, "a.test")))
  end)

  it("fails the handshake at tls_handshake_timeout when the fetch hangs; the worker goes on",
     function()
    local pids = gw:worker_pids()
    local out = probe(gw.ssl_port, "hang.test")
    assert.is_false(handshake_ok(out), out)
    assert.is_nil(subject(out))
    helpers.eventually(function()
      assert.match("certificate phase abandoned (server name hang.test)", gw:error_log(), 1,
                   true)
    end)
    assert.equal(1, count(store.stdout(), "fetch hang.test\n"))
    -- the same worker serves on
    assert.same(pids, gw:worker_pids())
    assert.equal(200, assert(helpers.request(gw.port, { path = "/" })).status)
    out = probe(gw.ssl_port, "fetched.test")
    assert.is_true(handshake_ok(out), out)
  end)

  it("drops the run cleanly when the client leaves while a handler waits", function()
    local pids = gw:worker_pids()
    -- killed after 0.3 s, while the handler sleeps (1.5 s) before it would fetch
    sh("echo | timeout 0.3 openssl s_client -connect 127.0.0.1:" .. gw.ssl_port
       .. " -servername slow-gone.test")
    helpers.eventually(function()
      local log = gw:error_log()
      assert.match("cert-fetcher: slow-gone.test sleeping", log, 1, true)
      assert.match("client closed the connection during the certificate phase", log, 1, true)
      assert.match("certificate phase abandoned (server name slow-gone.test)", log, 1, true)
    end)
    -- the abandoned handler never resumes: its sleep would have ended by now and fetched
    helpers.sleep(2)
    assert.is_nil(gw:error_log():find("slow-gone.test slept", 1, true))
    assert.equal(0, count(store.stdout(), "fetch slow-gone.test\n"))
    assert.same(pids, gw:worker_pids())
    local out = probe(gw.ssl_port, "a.test")
    assert.is_true(handshake_ok(out), out)
  end)

  it("allows cosockets and timers, refuses request and response calls", function()
    probe(gw.ssl_port, "probe.test")
    helpers.eventually(function()
      assert.match("cert-fetcher probe: request false, response false, timer true, socket true",
                   gw:error_log(), 1, true)
    end)
  end)
end)

describe("certificate phase in the PDK kit", function()
  it("may sleep and use sockets, as in the gateway, and not touch the request", function()
    local pdk = require "moongate.spec.pdk"
    local kit = pdk.new({ sni = "kit.test" })
    kit:call("certificate", function()
      moongate.sleep(0.25)
      assert.is_table(moongate.socket.tcp())
      moongate.tls.set_cert("-----BEGIN CERTIFICATE-----", "-----BEGIN PRIVATE KEY-----")
    end)
    assert.same({ 0.25 }, kit.sleeps)
    assert.equal("-----BEGIN CERTIFICATE-----", kit.tls_cert)
    assert.has_error(function() kit:call("certificate", function() moongate.request.get_path() end)
                     end, "moongate.request.get_path is not allowed in the certificate phase")
  end)
end)
