--- moongate.crypto: the cryptography authentication plugins need, from the OpenSSL the
-- runtime already links, through LuaJIT's FFI: digests, HMAC, PBKDF2, random bytes, a
-- constant-time comparison, strict base64/base64url (C, runtime/mg_base64.c) and signature
-- verification with RSA and EC public keys. Outside the gateway (busted, tools) it loads
-- libcrypto itself, so the same module serves specs.
local ffi = require "ffi"

ffi.cdef [[
typedef struct evp_md_st EVP_MD;
typedef struct evp_md_ctx_st EVP_MD_CTX;
typedef struct evp_pkey_st EVP_PKEY;
typedef struct bio_st BIO;
typedef struct x509_st X509;
typedef struct ECDSA_SIG_st ECDSA_SIG;
typedef struct bignum_st BIGNUM;
const EVP_MD *EVP_get_digestbyname(const char *name);
int EVP_Digest(const void *data, size_t count, unsigned char *md, unsigned int *size,
               const EVP_MD *type, void *impl);
unsigned char *HMAC(const EVP_MD *evp_md, const void *key, int key_len, const unsigned char *d,
                    size_t n, unsigned char *md, unsigned int *md_len);
int PKCS5_PBKDF2_HMAC(const char *pass, int passlen, const unsigned char *salt, int saltlen,
                      int iter, const EVP_MD *digest, int keylen, unsigned char *out);
int RAND_bytes(unsigned char *buf, int num);
int CRYPTO_memcmp(const void *a, const void *b, size_t len);
BIO *BIO_new_mem_buf(const void *buf, int len);
int BIO_free(BIO *a);
EVP_PKEY *PEM_read_bio_PUBKEY(BIO *bp, EVP_PKEY **x, void *cb, void *u);
X509 *PEM_read_bio_X509(BIO *bp, X509 **x, void *cb, void *u);
EVP_PKEY *X509_get_pubkey(X509 *x);
void X509_free(X509 *a);
void EVP_PKEY_free(EVP_PKEY *pkey);
int EVP_PKEY_get_base_id(const EVP_PKEY *pkey);
int EVP_PKEY_get_bits(const EVP_PKEY *pkey);
EVP_MD_CTX *EVP_MD_CTX_new(void);
void EVP_MD_CTX_free(EVP_MD_CTX *ctx);
int EVP_MD_CTX_reset(EVP_MD_CTX *ctx);
int EVP_DigestVerifyInit(EVP_MD_CTX *ctx, void **pctx, const EVP_MD *type, void *e,
                         EVP_PKEY *pkey);
int EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen,
                     const unsigned char *tbs, size_t tbslen);
ECDSA_SIG *ECDSA_SIG_new(void);
void ECDSA_SIG_free(ECDSA_SIG *sig);
int ECDSA_SIG_set0(ECDSA_SIG *sig, BIGNUM *r, BIGNUM *s);
BIGNUM *BN_bin2bn(const unsigned char *s, int len, BIGNUM *ret);
void BN_free(BIGNUM *a);
int i2d_ECDSA_SIG(const ECDSA_SIG *sig, unsigned char **pp);
unsigned long ERR_get_error(void);
void ERR_clear_error(void);
]]

local ffi_new, ffi_string, ffi_gc, ffi_cast = ffi.new, ffi.string, ffi.gc, ffi.cast
local type, error, tostring = type, error, tostring

-- libcrypto: already in the process inside the gateway; loaded by name elsewhere
local ssl
do
  local ok = pcall(function() return ffi.C.EVP_get_digestbyname end)
  ssl = ok and ffi.C or ffi.load("libcrypto.so.3")
end

-- base64 lives in the runtime (strict decoder); outside it, a Lua fallback of the same rules
local C_b64
do
  local ok = pcall(function() return ffi.C.mg_ffi_base64_decode end)
  if ok then C_b64 = require("moongate.core.base").C end
end

local _M = {}

local EVP_PKEY_RSA, EVP_PKEY_EC = 6, 408

local md_cache = {}
--- The OpenSSL digest for a name ("sha1", "sha256", "sha384", "sha512", "md5"), or nil.
local function md_of(alg)
  local md = md_cache[alg]
  if md == nil then
    md = ssl.EVP_get_digestbyname(alg)
    if md == nil then error("unknown digest \"" .. tostring(alg) .. "\"", 3) end
    md_cache[alg] = md
  end
  return md
end

local out = ffi_new("unsigned char[64]")
local outlen = ffi_new("unsigned int[1]")

--- The raw digest of data.
function _M.digest(alg, data)
  if ssl.EVP_Digest(data, #data, out, outlen, md_of(alg), nil) ~= 1 then
    error("digest failed", 2)
  end
  return ffi_string(out, outlen[0])
end

--- The raw HMAC of data under key.
function _M.hmac(alg, key, data)
  if ssl.HMAC(md_of(alg), key, #key, data, #data, out, outlen) == nil then
    error("hmac failed", 2)
  end
  return ffi_string(out, outlen[0])
end

--- PBKDF2-HMAC (RFC 8018) of password with salt: `len` raw bytes.
function _M.pbkdf2(alg, password, salt, iterations, len)
  local buf = ffi_new("unsigned char[?]", len)
  if ssl.PKCS5_PBKDF2_HMAC(password, #password, salt, #salt, iterations, md_of(alg), len,
                           buf) ~= 1 then
    error("pbkdf2 failed", 2)
  end
  return ffi_string(buf, len)
end

--- n cryptographically strong random bytes.
function _M.random_bytes(n)
  local buf = ffi_new("unsigned char[?]", n)
  if ssl.RAND_bytes(buf, n) ~= 1 then error("RAND_bytes failed", 2) end
  return ffi_string(buf, n)
end

--- True when a and b are equal strings. The time taken depends on their lengths only, never
-- on where they differ (what an attacker guessing a secret byte by byte measures).
function _M.equals(a, b)
  if type(a) ~= "string" or type(b) ~= "string" or #a ~= #b then return false end
  return ssl.CRYPTO_memcmp(a, b, #a) == 0
end

local hexfmt = "%02x"
--- Lower-case hex of a byte string.
function _M.to_hex(s)
  return (s:gsub(".", function(c) return hexfmt:format(c:byte()) end))
end

-- ---- base64 ------------------------------------------------------------------------------

local buf, bufsize = nil, 0
local function scratch(n)
  if n > bufsize then
    bufsize = n < 1024 and 1024 or n
    buf = ffi_new("unsigned char[?]", bufsize)
  end
  return buf
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function lua_encode(s, url, pad)
  local r = ((s:gsub(".", function(x)
    local b, bits = x:byte(), ""
    for i = 8, 1, -1 do bits = bits .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return bits
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return B64:sub(c + 1, c + 1)
  end))
  if pad then r = r .. ({ "", "==", "=" })[#s % 3 + 1] end
  if url then r = r:gsub("[+/]", { ["+"] = "-", ["/"] = "_" }) end
  return r
end

--- Base64 (url: the URL-safe alphabet; pad: with '=', the default for standard base64).
function _M.encode_base64(s, url, pad)
  if pad == nil then pad = not url end
  if not C_b64 then return lua_encode(s, url, pad) end
  local n = #s
  local dst = scratch(n * 4 / 3 + 4)
  local len = C_b64.mg_ffi_base64_encode(s, n, ffi_cast("char *", dst), url and 1 or 0,
                                         pad and 1 or 0)
  return ffi_string(dst, len)
end

local function lua_decode(s, url)
  if url then
    if s:find("[+/]") then return nil end   -- the other alphabet: refused, as in C
    s = s:gsub("[-_]", { ["-"] = "+", ["_"] = "/" })
  elseif s:find("[-_]") then
    return nil
  end
  local body, padding = s:match("^([A-Za-z0-9+/]*)(=*)$")
  if not body or #padding > 2 or (#padding > 0 and #s % 4 ~= 0) or #body % 4 == 1 then
    return nil
  end
  local bits = body:gsub(".", function(x)
    local c = B64:find(x, 1, true) - 1
    local r = ""
    for i = 6, 1, -1 do r = r .. (c % 2 ^ i - c % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end)
  local tail = bits:sub(#bits - #bits % 8 + 1)
  if tail:find("1", 1, true) then return nil end
  return (bits:sub(1, #bits - #bits % 8):gsub("%d%d%d%d%d%d%d%d", function(x)
    local c = 0
    for i = 1, 8 do c = c + (x:sub(i, i) == "1" and 2 ^ (8 - i) or 0) end
    return string.char(c)
  end))
end

--- Decodes strictly: nil for anything that is not canonical base64 (padding optional).
function _M.decode_base64(s, url)
  if type(s) ~= "string" then return nil end
  if not C_b64 then return lua_decode(s, url) end
  local n = #s
  local dst = scratch(n)
  local len = C_b64.mg_ffi_base64_decode(s, n, dst, url and 1 or 0)
  if len < 0 then return nil end
  return ffi_string(dst, len)
end

-- ---- public keys and signatures ----------------------------------------------------------

local function read_pem(pem)
  local bio = ssl.BIO_new_mem_buf(pem, #pem)
  if bio == nil then return nil end
  local key = ssl.PEM_read_bio_PUBKEY(bio, nil, nil, nil)
  if key == nil then
    -- not a SubjectPublicKeyInfo: maybe a certificate carrying the key
    ssl.BIO_free(bio)
    bio = ssl.BIO_new_mem_buf(pem, #pem)
    local x509 = ssl.PEM_read_bio_X509(bio, nil, nil, nil)
    if x509 ~= nil then
      key = ssl.X509_get_pubkey(x509)
      ssl.X509_free(x509)
    end
  end
  ssl.BIO_free(bio)
  ssl.ERR_clear_error()
  return key ~= nil and key or nil
end

--- A public key from PEM (a "PUBLIC KEY" block or a certificate).
-- @return { type = "RSA" | "EC", bits = n, key = EVP_PKEY } or nil, "reason"
function _M.public_key(pem)
  if type(pem) ~= "string" then return nil, "expected a PEM string" end
  local key = read_pem(pem)
  if not key then return nil, "not a PEM public key or certificate" end
  key = ffi_gc(key, ssl.EVP_PKEY_free)
  local id = ssl.EVP_PKEY_get_base_id(key)
  local kind = id == EVP_PKEY_RSA and "RSA" or id == EVP_PKEY_EC and "EC" or nil
  if not kind then return nil, "only RSA and EC keys are supported" end
  return { type = kind, bits = ssl.EVP_PKEY_get_bits(key), key = key }
end

local md_ctx = ffi_gc(ssl.EVP_MD_CTX_new(), ssl.EVP_MD_CTX_free)

-- JOSE carries an ECDSA signature as r || s (fixed width); OpenSSL verifies DER.
local der_out = ffi_new("unsigned char *[1]")
local function ecdsa_raw_to_der(sig)
  local half = #sig / 2
  local esig = ssl.ECDSA_SIG_new()
  if esig == nil then return nil end
  local r = ssl.BN_bin2bn(sig, half, nil)
  local s = ssl.BN_bin2bn(ffi_cast("const unsigned char *", sig) + half, half, nil)
  if r == nil or s == nil or ssl.ECDSA_SIG_set0(esig, r, s) ~= 1 then
    if r ~= nil then ssl.BN_free(r) end
    if s ~= nil then ssl.BN_free(s) end
    ssl.ECDSA_SIG_free(esig)
    return nil
  end
  local dst = scratch(#sig + 16)
  der_out[0] = dst
  local n = ssl.i2d_ECDSA_SIG(esig, der_out)
  ssl.ECDSA_SIG_free(esig)
  if n <= 0 then return nil end
  return ffi_string(dst, n)
end

--- Verifies a signature over data with a public key from public_key().
-- @param alg digest name ("sha256", "sha384", "sha512")
-- @param opts.ecdsa_raw the signature is JOSE's r || s of `opts.width` bytes each
-- @return true when it verifies, false otherwise (never raises on bad input)
function _M.verify(pub, alg, data, sig, opts)
  if opts and opts.ecdsa_raw then
    if #sig ~= 2 * opts.width then return false end
    sig = ecdsa_raw_to_der(sig)
    if not sig then return false end
  end
  ssl.EVP_MD_CTX_reset(md_ctx)
  local ok = ssl.EVP_DigestVerifyInit(md_ctx, nil, md_of(alg), nil, pub.key) == 1 and
             ssl.EVP_DigestVerify(md_ctx, sig, #sig, data, #data) == 1
  ssl.ERR_clear_error()
  return ok
end

return _M
