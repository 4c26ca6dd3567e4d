-- testssl.sh against the TLS listener (issue 6: "no SSLv3/TLS1.0/TLS1.1, no HIGH or CRITICAL
-- finding"). The gateway serves an RSA 2048 and an ECDSA P-256 certificate for the same name
-- side by side, as production would, signed by a test CA that testssl is told about
-- (--add-ca), so the chain of trust is not a finding. testssl runs the checks that concern the
-- TLS listener: protocols, cipher categories, server defaults and preferences, forward
-- secrecy, and the vulnerability checks (-U); its flat JSON is parsed here.
--
-- Bounded: no DNS (--nodns none, --ip), no outside connections (no --phone-out), `timeout`
-- around the whole run and testssl's own connect/openssl timeouts. About 30 s on a
-- 2-core machine. Fails where testssl is not installed: scripts/deps.sh test (and CI)
-- install it (Debian package testssl.sh).

local helpers = require "spec.helpers"
local cjson = require "cjson"
local pki = require "spec.pki"

local fmt = string.format
local q = helpers.shell_quote

local TESTSSL = os.getenv("MOONGATE_TESTSSL") or "/usr/bin/testssl"
local TIMEOUT = 300 -- seconds for the whole testssl run

describe("testssl", function()
  local ca, up, gw
  local findings = {} -- id -> finding (the JSON entries), and the whole list in order
  local list

  lazy_setup(function()
    local _, rc = helpers.run("test -x " .. q(TESTSSL))
    assert(rc == 0, TESTSSL .. " not found: install testssl.sh (scripts/deps.sh test)")
    ca = pki.ca()
    -- what testssl rates in a certificate rather than in the server, made as a public CA
    -- would: more than 30 days left (less is a HIGH finding), and a revocation source (a
    -- CRL URI that testssl does not fetch without --phone-out; none at all is HIGH)
    local cert = { names = { "tls.test" }, days = 90,
                   ext = { "crlDistributionPoints=URI:http://127.0.0.1:9/ca.crl" } }
    ca:leaf("rsa", cert)
    cert.kind = "ec"
    ca:leaf("ec", cert)
    up = helpers.upstream()
    local ssl_port = helpers.get_free_port()
    gw = helpers.start({
      proxy_listen = helpers.array({ "127.0.0.1:" .. ssl_port .. " ssl" }),
      -- no SNI names it: the default certificate, which also answers clients without SNI
      -- (testssl's renegotiation check sends none)
      certificates = helpers.array({
        { cert = ca:path("rsa.crt"), key = ca:path("rsa.key"),
          cert_alt = ca:path("ec.crt"), key_alt = ca:path("ec.key") },
      }),
      services = helpers.array({ {
        name = "echo", url = up.url,
        routes = helpers.array({ { paths = helpers.array({ "/" }) } }),
      } }),
    })

    local json = ca:path("testssl.json")
    -- -p protocols, -s cipher categories, -S server defaults (certificates, tickets),
    -- -P server preferences, -f forward secrecy, -U vulnerabilities. --fast is not used: it
    -- skips cipher checks this test is about.
    local cmd = fmt("cd %s && timeout -k 10 %d %s --quiet --color 0 --warnings off "
                    .. "--nodns none --ip 127.0.0.1 --add-ca %s "
                    .. "--connect-timeout 10 --openssl-timeout 10 "
                    .. "-p -s -S -P -f -U --jsonfile %s tls.test:%d 2>&1",
                    q(ca.dir), TIMEOUT, q(TESTSSL), q(ca.crt), q(json), ssl_port)
    local out, rc = helpers.run(cmd)
    local text = helpers.read_file(json)
    assert(text and text ~= "", fmt("testssl wrote no JSON (exit %s):\n%s", tostring(rc), out))
    list = cjson.decode(text)
    assert(type(list) == "table" and #list > 0, "testssl JSON has no findings:\n" .. text)
    for _, f in ipairs(list) do
      findings[f.id] = f
    end
    -- testssl exits with the count of problems it had running (not findings); a run that was
    -- cut short by `timeout` (124) or that could not reach the server leaves a scan_problem
    assert(rc ~= 124, "testssl timed out after " .. TIMEOUT .. " s:\n" .. out)
    assert(findings.scanProblem == nil,
           "testssl: " .. tostring(findings.scanProblem and findings.scanProblem.finding))
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
    if ca then helpers.run("rm -rf " .. q(ca.dir)) end
  end)

  local function finding(id)
    local f = findings[id]
    assert(f, "testssl reported nothing for " .. id)
    return f.finding
  end

  it("finds SSLv2, SSLv3, TLS 1.0 and TLS 1.1 not offered", function()
    for _, id in ipairs({ "SSLv2", "SSLv3", "TLS1", "TLS1_1" }) do
      assert.match("^not offered", finding(id), 1, false, id)
    end
  end)

  it("finds TLS 1.2 and TLS 1.3 offered", function()
    for _, id in ipairs({ "TLS1_2", "TLS1_3" }) do
      assert.match("^offered", finding(id), 1, false, id)
    end
  end)

  it("finds secure renegotiation and no client-initiated renegotiation", function()
    assert.equal("supported", finding("secure_renego"))
    assert.match("^not vulnerable", finding("secure_client_renego"))
  end)

  it("sees both certificates, trusted through the test CA", function()
    -- with two certificates testssl numbers its per-certificate findings "<cert#1>", "<cert#2>"
    local n = 0
    for _, f in ipairs(list) do
      if f.id:match("^cert_trust") then
        n = n + 1
        assert.equal("OK", f.severity, f.id .. ": " .. f.finding)
      end
    end
    assert.equal(2, n)
  end)

  it("reports no finding of severity HIGH or CRITICAL", function()
    local bad = {}
    for _, f in ipairs(list) do
      if f.severity == "HIGH" or f.severity == "CRITICAL" then
        bad[#bad + 1] = fmt("%s %s: %s", f.severity, f.id, f.finding)
      end
    end
    assert(#bad == 0, "testssl findings:\n" .. table.concat(bad, "\n"))
  end)
end)
