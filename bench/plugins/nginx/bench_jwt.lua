-- bench/run.sh, scenario "jwt", the nginx+lua side of moongate's bundled jwt plugin with
-- RS256 credentials: what a careful OpenResty handler does for the same job. The bearer token
-- is split, its header and claims base64url-decoded (ngx.decode_base64 after the alphabet
-- swap) and parsed with cjson, `alg` checked against the credential's, the credential found
-- by `iss` among CONSUMERS, the RS256 signature verified with OpenSSL through the FFI (the
-- public key parsed once), `exp` checked when present, and the upstream told who called.
--
--   init_by_lua_block   { bench_jwt = require "bench_jwt"; bench_jwt.init(PUBLIC_KEY_FILE) }
--   access_by_lua_block { bench_jwt.access() }
local ffi = require "ffi"
local cjson = require "cjson.safe"
local ngx = ngx
local req = ngx.req
local sub, find, gsub, rep = string.sub, string.find, string.gsub, string.rep

ffi.cdef [[
typedef struct evp_pkey_st EVP_PKEY;
typedef struct evp_md_ctx_st EVP_MD_CTX;
typedef struct evp_md_st EVP_MD;
typedef struct bio_st BIO;
BIO *BIO_new_mem_buf(const void *buf, int len);
int BIO_free(BIO *a);
EVP_PKEY *PEM_read_bio_PUBKEY(BIO *bp, EVP_PKEY **x, void *cb, void *u);
EVP_MD_CTX *EVP_MD_CTX_new(void);
int EVP_MD_CTX_reset(EVP_MD_CTX *ctx);
const EVP_MD *EVP_sha256(void);
int EVP_DigestVerifyInit(EVP_MD_CTX *ctx, void **pctx, const EVP_MD *type, void *e,
                         EVP_PKEY *pkey);
int EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen,
                     const unsigned char *tbs, size_t tbslen);
void ERR_clear_error(void);
]]
local ssl = ffi.C

local CONSUMERS = 100

local _M = {}
local credentials = {}   -- iss -> { consumer, key }
local md_ctx

function _M.init(pubfile)
  local f = assert(io.open(pubfile))
  local pem = f:read("*a")
  f:close()
  local bio = ssl.BIO_new_mem_buf(pem, #pem)
  local pkey = ssl.PEM_read_bio_PUBKEY(bio, nil, nil, nil)
  ssl.BIO_free(bio)
  assert(pkey ~= nil, "bench_jwt: cannot read " .. pubfile)
  for i = 1, CONSUMERS do
    credentials["iss-" .. i] = { algorithm = "RS256", key = pkey,
                                 consumer = { id = ("00000000-0000-4000-8000-%012d"):format(i),
                                              username = "consumer-" .. i } }
  end
  md_ctx = ssl.EVP_MD_CTX_new()
end

local function deny(message)
  ngx.status = 401
  ngx.header["Content-Type"] = "application/json; charset=utf-8"
  ngx.header["WWW-Authenticate"] = 'Bearer error="invalid_token"'
  ngx.print('{"message":"', message, '"}')
  return ngx.exit(401)
end

local URL = { ["-"] = "+", ["_"] = "/" }
local function b64url(s)
  s = gsub(s, "[-_]", URL)
  local pad = #s % 4
  if pad > 0 then s = s .. rep("=", 4 - pad) end
  return ngx.decode_base64(s)
end

function _M.access()
  local auth = ngx.var.http_authorization
  if not auth or sub(auth, 1, 7) ~= "Bearer " then return deny("Unauthorized") end
  local token = sub(auth, 8)
  local d1 = find(token, ".", 1, true)
  local d2 = d1 and find(token, ".", d1 + 1, true)
  if not d2 then return deny("Bad token; invalid JSON") end
  local header = cjson.decode(b64url(sub(token, 1, d1 - 1)) or "")
  local claims = cjson.decode(b64url(sub(token, d1 + 1, d2 - 1)) or "")
  local sig = b64url(sub(token, d2 + 1))
  if type(header) ~= "table" or type(claims) ~= "table" or not sig then
    return deny("Bad token; invalid JSON")
  end
  local cred = credentials[claims.iss]
  if not cred then return deny("No credentials found for given 'iss'") end
  if header.alg ~= cred.algorithm then return deny("Invalid algorithm") end
  local input = sub(token, 1, d2 - 1)
  ssl.EVP_MD_CTX_reset(md_ctx)
  local ok = ssl.EVP_DigestVerifyInit(md_ctx, nil, ssl.EVP_sha256(), nil, cred.key) == 1 and
             ssl.EVP_DigestVerify(md_ctx, sig, #sig, input, #input) == 1
  ssl.ERR_clear_error()
  if not ok then return deny("Invalid signature") end
  if claims.exp and claims.exp <= ngx.time() then return deny("token expired") end
  local consumer = cred.consumer
  req.set_header("X-Consumer-ID", consumer.id)
  req.clear_header("X-Consumer-Custom-ID")
  req.set_header("X-Consumer-Username", consumer.username)
  req.set_header("X-Credential-Identifier", claims.iss)
  req.clear_header("X-Anonymous-Consumer")
end

return _M
