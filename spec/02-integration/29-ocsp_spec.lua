-- OCSP stapling (README: "TLS", ssl_stapling): a real responder (`openssl ocsp` over an
-- index of the test CA) answers for certificates whose Authority Information Access names
-- it; `openssl s_client -status` shows what the gateway staples. Good and revoked statuses,
-- delegated responder signing, a responder that is down then comes up, one answering garbage
-- or signed by another CA, certificates without a responder, one fetch per period across
-- workers, the settings, and what `moongate check` refuses.

local helpers = require "spec.helpers"
local pki = require "spec.pki"

local fmt = string.format
local q = helpers.shell_quote

local CA, OTHER -- the test CA and an unrelated one (moongate.spec.pki)

local function sh(cmd)
  local out, rc = helpers.run(cmd .. " 2>&1")
  assert(rc == 0, out)
  return out
end

local function serial(crt)
  return sh(fmt("openssl x509 -in %s -noout -serial", q(crt))):match("serial=(%x+)")
end

local function subject(crt)
  return sh(fmt("openssl x509 -in %s -noout -subject -nameopt compat", q(crt)))
    :match("subject=([^\n]+)")
end

-- A leaf of CA for `name`, whose AIA names the responder on `port` (none without a port),
-- with `cert` holding the chain (leaf, then CA) as the gateway needs it.
local function leaf(name, port)
  local ext = port and { "authorityInfoAccess=OCSP;URI:http://127.0.0.1:" .. port } or nil
  local l = CA:leaf(name, { names = { name .. ".test" }, ext = ext })
  l.chain = CA:path(name .. ".chain.crt")
  sh(fmt("cat %s %s > %s", q(l.crt), q(CA.crt), q(l.chain)))
  l.serial = serial(l.crt)
  return l
end

-- openssl's CA database: each certificate good ("V") or revoked ("R").
local function index(file, certs)
  local lines = {}
  for _, c in ipairs(certs) do
    local revoked = c.revoked and "R" or "V"
    lines[#lines + 1] = fmt("%s\t301231000000Z\t%s\t%s\tunknown\t%s", revoked,
                            c.revoked and "250101000000Z" or "", c.l.serial, subject(c.l.crt))
  end
  helpers.write_file(file, table.concat(lines, "\n") .. "\n")
  return file
end

-- A responder on `port` for the certificates of `idx`, signing with signer/key (default:
-- the CA itself). -nmin 1: responses valid for a minute, refreshed every 30 s.
local function responder(port, idx, signer, key, ca)
  local cmd = fmt("exec openssl ocsp -index %s -port %d -rsigner %s -rkey %s -CA %s -nmin 1 "
                  .. "-text", q(idx), port, q(signer or CA.crt), q(key or CA.key),
                  q(ca or CA.crt))
  return helpers.process(cmd, { ready = function(p)
    return p.stderr():find("waiting for OCSP client connections", 1, true) ~= nil
  end })
end

-- Calls make(port) with a free port until the responder it starts can bind it (5 tries):
-- `openssl ocsp` binds every address, where get_free_port knows the port free on 127.0.0.1
-- only, and specs running in parallel use the rest of 127/8.
local function on_free_port(make)
  for try = 1, 5 do
    local port = helpers.get_free_port()
    local res = { pcall(make, port) }
    if res[1] then return port, unpack(res, 2) end
    if try == 5 or not tostring(res[2]):find("Error starting accept", 1, true) then
      error(res[2], 0)
    end
  end
end

-- How many requests the responder got for the certificate with serial `s` (-text prints
-- each request, then its response).
local function asked(r, s)
  local n = 0
  for req in r.stdout():gmatch("OCSP Request Data:(.-)OCSP Response Data:") do
    if req:find("Serial Number: " .. s:upper(), 1, true) then n = n + 1 end
  end
  return n
end

local function requests(r)
  local n = 0
  for _ in r.stderr():gmatch("Received request") do n = n + 1 end
  return n
end

-- `openssl s_client -status` against the gateway: its whole output.
local function probe(gw, name, extra)
  return sh(fmt("echo | timeout 10 openssl s_client -connect 127.0.0.1:%d -servername %s "
                .. "-status -CAfile %s %s", gw.ssl_port, name, q(CA.crt), extra or ""))
end

local handshake_ok = pki.handshake_ok

local function stapled(gw, name, status, extra)
  local out = probe(gw, name, extra)
  assert(handshake_ok(out), out)
  assert.match("OCSP Response Status: successful", out, 1, true)
  assert.match("Cert Status: " .. status, out, 1, true)
  return out
end

local function not_stapled(gw, name)
  local out = probe(gw, name)
  assert(handshake_ok(out), out)
  assert.match("OCSP response: no response sent", out, 1, true)
end

local function count(text, plain)
  local n, init = 0, 1
  while true do
    local s, e = text:find(plain, init, true)
    if not s then return n end
    n, init = n + 1, e + 1
  end
end

local function gateway(certs, settings)
  local conf = {
    worker_processes = 1,
    log_level = "info",
    proxy_listen = helpers.array({ "127.0.0.1:" .. helpers.get_free_port(),
                                   "127.0.0.1:" .. helpers.get_free_port() .. " ssl" }),
    certificates = helpers.array(certs),
  }
  for k, v in pairs(settings or {}) do conf[k] = v end
  return helpers.start(conf)
end

local function cert(l)
  return { cert = l.chain, key = l.key, snis = helpers.array({ l.name .. ".test" }) }
end

describe("OCSP stapling", function()
  local port, good, revoked, noaia, idx, r

  lazy_setup(function()
    CA = pki.ca()
    OTHER = pki.ca({ subject = "/CN=moongate other CA" })
    noaia = leaf("noaia")
    port = on_free_port(function(p)
      good, revoked = leaf("good", p), leaf("revoked", p)
      idx = index(CA:path("index.txt"), { { l = good }, { l = revoked, revoked = true },
                                           { l = noaia } })
      r = responder(p, idx)
    end)
  end)

  lazy_teardown(function()
    if r then r.stop() end
    if CA then CA:cleanup() end
    if OTHER then OTHER:cleanup() end
  end)

  describe("with a responder", function()
    local gw

    lazy_setup(function()
      gw = gateway({ cert(good), cert(revoked), cert(noaia) }, { worker_processes = 3 })
    end)

    lazy_teardown(function()
      if gw then gw:stop() end
    end)

    it("staples a good response, in TLS 1.3 and 1.2", function()
      helpers.eventually(function() stapled(gw, "good.test", "good") end, 10)
      -- (eventually: the other workers install it at their next tick)
      helpers.eventually(function()
        assert.match("TLSv1.3", stapled(gw, "good.test", "good", "-tls1_3"), 1, true)
        assert.match("TLSv1.2", stapled(gw, "good.test", "good", "-tls1_2"), 1, true)
      end, 5)
      -- a client that does not ask gets no staple
      local out = sh(fmt("echo | timeout 10 openssl s_client -connect 127.0.0.1:%d "
                         .. "-servername good.test -CAfile %s", gw.ssl_port, q(CA.crt)))
      assert(handshake_ok(out), out)
      assert.not_match("OCSP", out, 1, true)
      assert.match("certificates[0].cert: OCSP response from http://127.0.0.1:" .. port
                   .. " stapled", gw:error_log(), 1, true)
    end)

    it("staples a revoked response, and logs it as an error", function()
      helpers.eventually(function() stapled(gw, "revoked.test", "revoked") end, 10)
      assert.match("%[error%] %d+: certificates%[1%]%.cert: OCSP responder [^\n]+ says the "
                   .. "certificate is REVOKED", gw:error_log())
    end)

    it("fetches nothing for a certificate without a responder, and staples nothing", function()
      helpers.eventually(function() stapled(gw, "good.test", "good") end, 10)
      not_stapled(gw, "noaia.test")
      assert.equal(0, asked(r, noaia.serial))
    end)

    it("fetches once per period across workers", function()
      helpers.eventually(function() stapled(gw, "good.test", "good") end, 10)
      -- three workers tick every second: the others install the fetched response from the
      -- shared zone at their next tick; it lasts a minute, refreshed at 30 s
      helpers.sleep(2.5)
      for _ = 1, 6 do
        stapled(gw, "good.test", "good")  -- each handshake may land on any worker
      end
      helpers.sleep(2)
      assert.equal(1, asked(r, good.serial))
      assert.equal(1, asked(r, revoked.serial))
      for _ = 1, 6 do
        stapled(gw, "good.test", "good")
      end
    end)
  end)

  it("staples a response signed by a delegated responder (OCSPSigning)", function()
    local key, csr, crt = CA:path("resp.key"), CA:path("resp.csr"), CA:path("resp.crt")
    sh(fmt("openssl genrsa -out %s 2048", q(key)))
    sh(fmt("openssl req -new -key %s -out %s -subj /CN=responder", q(key), q(csr)))
    CA:sign(csr, crt, { "basicConstraints=critical,CA:FALSE", "extendedKeyUsage=OCSPSigning" },
            30)
    local _, l, r2 = on_free_port(function(p2)
      local l = leaf("delegated", p2)
      return l, responder(p2, index(CA:path("index2.txt"), { { l = l } }), crt, key)
    end)
    local gw = gateway({ cert(l) })
    finally(function() gw:stop(); r2.stop() end)
    helpers.eventually(function() stapled(gw, "delegated.test", "good") end, 10)
  end)

  it("staples for a leaf of an intermediate CA, the intermediate answering", function()
    local int = CA:intermediate("int")
    local _, l, r2 = on_free_port(function(p)
      local l = int:leaf("sub", { names = { "sub.test" },
                                  ext = { "authorityInfoAccess=OCSP;URI:http://127.0.0.1:" .. p } })
      l.chain = CA:path("sub.chain.crt")
      sh(fmt("cat %s %s > %s", q(l.crt), q(int.crt), q(l.chain)))
      l.serial = serial(l.crt)
      return l, responder(p, index(CA:path("index7.txt"), { { l = l } }), int.crt, int.key,
                          int.crt)
    end)
    local gw = gateway({ { cert = l.chain, key = l.key } })
    finally(function() gw:stop(); r2.stop() end)
    helpers.eventually(function() stapled(gw, "sub.test", "good") end, 10)
  end)

  it("staples nothing until a responder that was down comes up; one warning", function()
    local p2 = helpers.get_free_port()
    local l = leaf("late", p2)
    local gw = gateway({ cert(l) })
    local r2
    finally(function() gw:stop(); if r2 then r2.stop() end end)
    local warning = "certificates[0].cert: no OCSP response from http://127.0.0.1:" .. p2
    helpers.eventually(function()
      assert.match(warning, gw:error_log(), 1, true)
    end, 10)
    not_stapled(gw, "late.test")
    -- the first retry (5 s later) fails too: no second warning in the same streak
    helpers.sleep(6)
    not_stapled(gw, "late.test")
    assert.equal(1, count(gw:error_log(), warning))
    r2 = responder(p2, index(CA:path("index3.txt"), { { l = l } }))
    -- the next retry, 10 s after the second failure
    helpers.eventually(function() stapled(gw, "late.test", "good") end, 20, 0.5)
    local log = gw:error_log()
    assert.equal(1, count(log, warning))
    assert.match("certificates[0].cert: OCSP responder http://127.0.0.1:" .. p2
                 .. " answers again", log, 1, true)
  end)

  it("keeps stapling the last good response while the responder is down", function()
    local p2, l, r2 = on_free_port(function(p)
      local l = leaf("keep", p)
      return l, responder(p, index(CA:path("index6.txt"), { { l = l } }))
    end)
    local gw = gateway({ cert(l) })
    finally(function() gw:stop(); r2.stop() end)
    helpers.eventually(function() stapled(gw, "keep.test", "good") end, 10)
    r2.stop()
    -- the refresh, halfway to a nextUpdate a minute away, fails
    helpers.eventually(function()
      assert.match("certificates[0].cert: no OCSP response from http://127.0.0.1:" .. p2
                   .. ": connection refused; the previous response stays stapled until ",
                   gw:error_log(), 1, true)
    end, 45, 0.5)
    stapled(gw, "keep.test", "good")
  end)

  it("staples nothing when the responder answers garbage", function()
    local up = helpers.upstream()
    local l = leaf("garbage", up.port)
    local gw = gateway({ cert(l) })
    finally(function() gw:stop(); up:stop() end)
    helpers.eventually(function()
      assert.match("certificates[0].cert: no OCSP response from http://127.0.0.1:" .. up.port
                   .. ": not a DER OCSP response; no stapling", gw:error_log(), 1, true)
    end, 10)
    not_stapled(gw, "garbage.test")
  end)

  describe("responders that misbehave", function()
    local gw, trickle, e500, big, hang_port

    lazy_setup(function()
      -- sends a status line, then a header line a second: never a whole head
      local script = CA:path("trickle.lua")
      helpers.write_file(script, [[
        local socket = require "socket"
        local s = assert(socket.bind("127.0.0.1", 0))
        local _, port = s:getsockname()
        io.stdout:write("listening on ", port, "\n")
        io.stdout:flush()
        local c = s:accept()
        c:send("HTTP/1.0 200 OK\r\n")
        for i = 1, 120 do
          socket.sleep(1)
          if not c:send("X-Trickle: " .. i .. "\r\n") then break end
        end
      ]])
      trickle = helpers.process("exec luajit " .. q(script), { ready = function(p)
        return p.stdout():match("listening on %d+") ~= nil
      end })
      hang_port = tonumber(trickle.stdout():match("listening on (%d+)"))
      e500 = helpers.upstream({ mode = "status:500" })
      big = helpers.upstream({ mode = "big:40000" })
      -- the trickling one first: fetched one after the other, it would hold up the rest
      gw = gateway({ cert(leaf("trickle", hang_port)), cert(good),
                     cert(leaf("e500", e500.port)), cert(leaf("big", big.port)) })
    end)

    lazy_teardown(function()
      if gw then gw:stop() end
      if trickle then trickle.stop() end
      if e500 then e500:stop() end
      if big then big:stop() end
    end)

    local function warned(i, p, why)
      helpers.eventually(function()
        assert.match(fmt("certificates[%d].cert: no OCSP response from http://127.0.0.1:%d: "
                         .. "%s; no stapling", i, p, why), gw:error_log(), 1, true)
      end, 10)
    end

    it("an error status or an oversized answer: no staple, a warning", function()
      warned(2, e500.port, "HTTP status 500")
      warned(3, big.port, "the response is larger than 16384 bytes")
      not_stapled(gw, "e500.test")
      not_stapled(gw, "big.test")
    end)

    it("a responder trickling bytes holds up no other certificate, and is cut off", function()
      -- the same worker staples good.test while the trickle goes on
      helpers.eventually(function() stapled(gw, "good.test", "good") end, 10)
      not_stapled(gw, "trickle.test")
      -- each read gets a byte within a second: only the deadline of the exchange ends it
      helpers.eventually(function()
        assert.match(fmt("certificates[0].cert: no OCSP response from http://127.0.0.1:%d: "
                         .. "timeout; no stapling", hang_port), gw:error_log(), 1, true)
      end, 30, 0.5)
      not_stapled(gw, "trickle.test")
    end)
  end)

  describe("a response signed by another CA", function()
    local p2, l, r2

    lazy_setup(function()
      p2 = on_free_port(function(p)
        l = leaf("forged", p)
        r2 = responder(p, index(CA:path("index4.txt"), { { l = l } }), OTHER.crt, OTHER.key)
      end)
    end)

    lazy_teardown(function()
      if r2 then r2.stop() end
    end)

    it("is refused", function()
      local gw = gateway({ cert(l) })
      finally(function() gw:stop() end)
      helpers.eventually(function()
        assert.match("certificates[0].cert: no OCSP response from http://127.0.0.1:" .. p2
                     .. ": the response's signature does not verify against the issuer",
                     gw:error_log(), 1, true)
      end, 10)
      not_stapled(gw, "forged.test")
    end)

    it("is stapled with ssl_stapling_verify off (only its signature is checked)", function()
      local gw = gateway({ cert(l) }, { ssl_stapling_verify = false })
      finally(function() gw:stop() end)
      helpers.eventually(function() stapled(gw, "forged.test", "good") end, 10)
    end)
  end)

  it("ssl_stapling_responder replaces the certificates' own responder (a name)", function()
    local before = asked(r, noaia.serial)
    local gw = gateway({ cert(noaia) },
                       { ssl_stapling_responder = "http://localhost:" .. port .. "/ocsp" })
    finally(function() gw:stop() end)
    helpers.eventually(function() stapled(gw, "noaia.test", "good") end, 10)
    assert.equal(before + 1, asked(r, noaia.serial))
  end)

  it("ssl_stapling off: no fetch, no staple", function()
    local _, l, r2 = on_free_port(function(p2)
      local l = leaf("off", p2)
      return l, responder(p2, index(CA:path("index5.txt"), { { l = l } }))
    end)
    local gw = gateway({ cert(l) }, { ssl_stapling = false })
    finally(function() gw:stop(); r2.stop() end)
    not_stapled(gw, "off.test")
    helpers.sleep(1.5)
    not_stapled(gw, "off.test")
    assert.equal(0, requests(r2))
  end)

  it("warns at load about a responder whose issuer is not in the chain", function()
    local l = leaf("nochain", port)
    local gw = gateway({ { cert = l.crt, key = l.key } })
    finally(function() gw:stop() end)
    not_stapled(gw, "nochain.test")
    assert.match("certificates[0].cert: the certificate has an OCSP responder but its issuer "
                 .. "is not the next certificate of the chain: no OCSP stapling for it",
                 gw:stderr() .. gw:error_log(), 1, true)
  end)

  it("moongate check refuses malformed settings", function()
    local function refused(settings, expected)
      local conf = {
        proxy_listen = helpers.array({ "127.0.0.1:9443 ssl" }),
        certificates = helpers.array({ cert(good) }),
      }
      for k, v in pairs(settings) do conf[k] = v end
      local rc, lines = helpers.check(conf)
      assert.equal(1, rc, table.concat(lines, "\n"))
      assert.same({ expected }, lines)
    end
    refused({ ssl_stapling_responder = "https://ocsp.example.com" },
            "ssl_stapling_responder: must be an http:// URL")
    refused({ ssl_stapling_responder = "http://" },
            "ssl_stapling_responder: must be an http:// URL with a host")
    refused({ ssl_stapling_responder = "http://ocsp.example.com:99999/" },
            "ssl_stapling_responder: invalid port in the URL")
    refused({ ssl_stapling_responder = "http://ocsp example.com/" },
            "ssl_stapling_responder: must not contain spaces or controls")
    local rc, lines = helpers.check({
      proxy_listen = helpers.array({ "127.0.0.1:9443 ssl" }),
      certificates = helpers.array({ cert(good) }),
      ssl_stapling = "sometimes",
    })
    assert.equal(1, rc)
    assert.match("^ssl_stapling: ", lines[1])
    rc, lines = helpers.check({
      proxy_listen = helpers.array({ "127.0.0.1:9443 ssl" }),
      certificates = helpers.array({ cert(good) }),
      ssl_stapling = false, ssl_stapling_verify = false,
      ssl_stapling_responder = "http://127.0.0.1:8080/ocsp",
    })
    assert.equal(0, rc, table.concat(lines, "\n"))
  end)
end)
