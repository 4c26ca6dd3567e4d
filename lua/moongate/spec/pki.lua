--- moongate.spec.pki: test certificates made by the `openssl` CLI at test time.
--
-- A spec never ships a certificate nobody can re-derive: it makes a CA in a fresh temporary
-- directory, then leaves signed by it (server certificates with DNS/IP names, client
-- certificates for mTLS, intermediates), so every signature in a test was checked by OpenSSL
-- itself when the gateway or a client verifies it.
--
--   local pki = require "spec.pki"          -- or require "moongate.spec.pki"
--   local ca = pki.ca()                     -- ca.crt, ca.key: paths; ca.dir: the directory
--   local a = ca:leaf("a", { names = { "a.test" } })            -- a.crt, a.key (RSA 2048)
--   local e = ca:leaf("e", { kind = "ec", names = { "a.test" } }) -- P-256
--   local c = ca:leaf("alice", { client = true, subject = "/CN=alice/O=acme" })
--   local sub = ca:intermediate("int")      -- a CA signed by ca, with its own :leaf()
--   ca:read(a.crt)                          -- PEM text, for configs that inline it
--   pki.handshake_ok(out), pki.subject_cn(out) -- read `openssl s_client` output
--
-- Leaves are valid for `days` (default 30; 0 makes one that is already expired). Names that
-- parse as IPv4/IPv6 addresses become IP SANs, others DNS SANs.

local helpers = require "moongate.spec.helpers"

local fmt = string.format
local q = helpers.shell_quote

local _M = {}

local CA = {}
CA.__index = CA

local function sh(cmd)
  local out, rc = helpers.run(cmd .. " 2>&1")
  assert(rc == 0, out)
  return out
end

local function keygen(kind, key)
  if kind == "ec" then
    return fmt("openssl ecparam -name prime256v1 -genkey -noout -out %s", q(key))
  end
  return fmt("openssl genrsa -out %s 2048", q(key))
end

local function san(names)
  local sans = {}
  for i, n in ipairs(names) do
    local ip = n:match("^%d+%.%d+%.%d+%.%d+$") or n:find(":", 1, true)
    sans[i] = (ip and "IP:" or "DNS:") .. n
  end
  return "subjectAltName=" .. table.concat(sans, ",")
end

--- The path of `file` inside the CA's directory.
function CA:path(file)
  return self.dir .. "/" .. file
end

--- A file's text (PEM), to inline in a config.
function CA:read(file)
  return assert(helpers.read_file(file))
end

-- Signs a CSR with this CA, extensions from `ext` (lines of an openssl extfile).
function CA:sign(csr, crt, ext, days)
  local extfile = crt .. ".ext"
  helpers.write_file(extfile, table.concat(ext, "\n") .. "\n")
  sh(fmt("openssl x509 -req -in %s -CA %s -CAkey %s -CAcreateserial -out %s -days %d "
         .. "-extfile %s", q(csr), q(self.crt), q(self.key), q(crt), days, q(extfile)))
end

--- A certificate signed by this CA.
-- opts: names (SANs; the first is the CN unless `subject` is given), subject ("/CN=..."),
-- kind ("rsa" | "ec"), days (default 30; 0 = already expired), client (clientAuth usage).
-- @return { crt = path, key = path, name = file }
function CA:leaf(file, opts)
  opts = opts or {}
  local names = opts.names or {}
  local key, csr, crt = self:path(file .. ".key"), self:path(file .. ".csr"),
    self:path(file .. ".crt")
  local subject = opts.subject or ("/CN=" .. (names[1] or file))
  sh(keygen(opts.kind, key))
  sh(fmt("openssl req -new -key %s -out %s -subj %s", q(key), q(csr), q(subject)))
  local ext = { "basicConstraints=critical,CA:FALSE",
                "extendedKeyUsage=" .. (opts.client and "clientAuth" or "serverAuth") }
  if #names > 0 then ext[#ext + 1] = san(names) end
  for _, line in ipairs(opts.ext or {}) do ext[#ext + 1] = line end
  self:sign(csr, crt, ext, opts.days or 30)
  return { crt = crt, key = key, name = file }
end

--- An intermediate CA signed by this one (same directory), usable like a CA.
function CA:intermediate(file, opts)
  opts = opts or {}
  local sub = setmetatable({ dir = self.dir, parent = self }, CA)
  sub.key, sub.crt = self:path(file .. ".key"), self:path(file .. ".crt")
  local csr = self:path(file .. ".csr")
  sh(keygen(opts.kind, sub.key))
  sh(fmt("openssl req -new -key %s -out %s -subj %s", q(sub.key), q(csr),
         q(opts.subject or ("/CN=moongate test " .. file))))
  self:sign(csr, sub.crt, { "basicConstraints=critical,CA:TRUE",
                            "keyUsage=critical,keyCertSign,cRLSign" }, opts.days or 30)
  return sub
end

--- A fresh self-signed CA in a new temporary directory (removed by cleanup()).
-- opts: subject (default "/CN=moongate test CA"), kind ("rsa" | "ec").
function _M.ca(opts)
  opts = opts or {}
  local dir = sh("mktemp -d /tmp/moongate-pki.XXXXXX"):gsub("%s+$", "")
  local ca = setmetatable({ dir = dir }, CA)
  ca.key, ca.crt = ca:path("ca.key"), ca:path("ca.crt")
  sh(keygen(opts.kind, ca.key))
  sh(fmt("openssl req -x509 -new -key %s -out %s -days 30 -subj %s "
         .. "-addext basicConstraints=critical,CA:TRUE "
         .. "-addext keyUsage=critical,keyCertSign,cRLSign",
         q(ca.key), q(ca.crt), q(opts.subject or "/CN=moongate test CA")))
  return ca
end

--- What `openssl s_client` printed says the handshake succeeded and the certificate chain
-- verified (against its -CAfile).
function _M.handshake_ok(out)
  return out:match("Verify return code: 0 %(ok%)") ~= nil and out:match("Cipher is %(NONE%)") == nil
end

--- The CN of the certificate the server presented, from `openssl s_client` output; nil if none.
function _M.subject_cn(out)
  return out:match("subject=[^\n]-CN%s*=%s*([^\n,/]+)")
end

--- Removes the CA's directory (and everything made in it).
function CA:cleanup()
  if self.dir and self.dir:match("^/tmp/moongate%-pki%.") then
    helpers.run("rm -rf " .. q(self.dir))
  end
end

return _M
