--- moongate.tls: the TLS handshake as the `certificate` phase sees it. Global plugins with a
-- `certificate(self, conf)` handler run while a client's ClientHello is processed, after the
-- gateway chose a certificate by SNI; they may read the server name and pick another
-- certificate (a PEM pair, e.g. read from a shared dict, or fetched over a cosocket on first
-- sight of a name). The phase runs in a coroutine: moongate.sleep, cosockets (and
-- moongate.http, moongate.redis), shared dicts and timers work; the handshake pauses while a
-- handler waits, up to limits.tls_handshake_timeout.
local phases = require "moongate.phases"

local check = phases.check
local type, error, find = type, error, string.find

local _M = {}

local state -- the handshake being served: { sni, cert, key }; nil outside the phase

--- The server name the client asked for (as sent), or nil without SNI.
-- @phases certificate
function _M.get_sni()
  check(phases.CERTIFICATE, "moongate.tls.get_sni")
  return state.sni
end

--- Serves this certificate (PEM, the chain may follow the leaf) and private key (PEM,
-- unencrypted) instead of the one chosen by SNI. Parsed PEM is cached by content in C, so
-- returning the same strings on every handshake costs a hash, not a parse. A pair that does
-- not parse or match fails the handshake (logged).
-- @phases certificate
function _M.set_cert(cert, key)
  check(phases.CERTIFICATE, "moongate.tls.set_cert")
  if type(cert) ~= "string" or not find(cert, "-----BEGIN", 1, true) then
    error("moongate.tls.set_cert: the certificate must be PEM text", 2)
  end
  if type(key) ~= "string" or not find(key, "-----BEGIN", 1, true) then
    error("moongate.tls.set_cert: the key must be PEM text", 2)
  end
  state.cert, state.key = cert, key
  return true
end

-- for moongate.runtime
function _M._begin(sni)
  state = { sni = sni }
  return state
end

function _M._end()
  state = nil
end

-- the handshake being served, saved and restored around a yield (moongate.pdk.save)
function _M._get()
  return state
end

function _M._set(s)
  state = s
end

return _M
