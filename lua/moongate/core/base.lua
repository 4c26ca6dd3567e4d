--- moongate.core.base: the FFI bridge. Declares exactly the prototypes of runtime/mg_ffi.h
-- and refuses to run against a runtime built from other sources (ABI check). Every other
-- Lua module reaches C through `base.C` and reuses the out-parameters kept here, so hot PDK
-- calls allocate nothing but the strings they return.
local ffi = require "ffi"

local _M = {}

ffi.cdef [[
int mg_ffi_abi(void);
int mg_ffi_req_get_method(const char **s, size_t *len);
int mg_ffi_req_get_path(const char **s, size_t *len);
int mg_ffi_req_get_raw_query(const char **s, size_t *len);
int mg_ffi_req_get_host(const char **s, size_t *len);
int mg_ffi_req_get_scheme(const char **s, size_t *len);
int mg_ffi_req_get_port(void);
double mg_ffi_req_get_http_version(void);
int mg_ffi_req_get_header(const char *name, size_t nlen, const char **s, size_t *len);
int mg_ffi_req_header_count_of(const char *name, size_t nlen);
int mg_ffi_req_header_count(void);
int mg_ffi_req_header_at(int i, const char **name, size_t *nlen, const char **value,
                         size_t *vlen);
int mg_ffi_req_read_body(const char **s, size_t *len);
int mg_ffi_req_limit_body(uint64_t limit, const char *msg, size_t mlen);
int mg_ffi_req_get_id(const char **s, size_t *len);
int mg_ffi_req_get_route_name(const char **s, size_t *len);
int mg_ffi_req_get_service_name(const char **s, size_t *len);
int mg_ffi_client_set_consumer_id(const char *id, size_t len);
int mg_ffi_client_get_ip(char *buf, size_t buflen, size_t *len);
int mg_ffi_client_get_forwarded_ip(char *buf, size_t buflen, size_t *len);
int mg_ffi_client_get_port(void);
int mg_ffi_client_tls_get(int what, const char **s, size_t *len);
int mg_ffi_client_tls_verdict(const char *key, size_t klen, const char **why, size_t *wlen);
int mg_ffi_upstream_header(int op, const char *name, size_t nlen, const char *value, size_t vlen);
int mg_ffi_upstream_set_path(const char *path, size_t len);
int mg_ffi_upstream_set_query(const char *query, size_t len);
int mg_ffi_upstream_set_method(const char *method, size_t len);
int mg_ffi_upstream_set_body(const char *body, size_t len);
int mg_ffi_resp_get_status(void);
int mg_ffi_upstream_resp_get_header(const char *name, size_t nlen, const char **s, size_t *len);
int mg_ffi_resp_header(int op, const char *name, size_t nlen, const char *value, size_t vlen);
int mg_ffi_resp_header_int(int op, const char *name, size_t nlen, int64_t value);
int mg_ffi_resp_exit(int status, const char *body, size_t blen, const char *headers,
                     size_t hlen);
int mg_ffi_log_enabled(int level);
void mg_ffi_log(int level, const char *msg, size_t len);
int mg_ffi_worker_id(void);
int mg_ffi_worker_pid(void);
int mg_ffi_upstream_find(const char *name, size_t len);
int mg_ffi_upstream_target(int up, int i, const char **target, size_t *tlen, unsigned *weight,
                           int *health);
int mg_ffi_upstream_address(int up, int i, int j, char *ipbuf, size_t iplen, size_t *ipout,
                            int *port, int *health);
double mg_ffi_now(void);
int mg_ffi_sleep(double seconds);
int mg_ffi_timer_start(double delay, double every, unsigned id);
int mg_ffi_ocsp_next(int *idx, const char **url, size_t *ulen, const char **req, size_t *rlen);
void mg_ffi_ocsp_done(int idx, int status, const char *body, size_t blen, const char *err,
                      size_t elen);
void mg_ffi_plugin_enter(const char *name, size_t len);
int mg_ffi_body_get_chunk(const char **s, size_t *len, int *eof);
int mg_ffi_body_set_chunk(const char *s, size_t len);
int mg_ffi_shdict_zone(const char *name, size_t len, void **zone);
int mg_ffi_shdict_get(void *zone, const char *key, size_t klen, int stale, int *type, double *num,
                      char *buf, size_t buflen, size_t *vlen);
int mg_ffi_shdict_store(void *zone, int mode, const char *key, size_t klen, int type,
                        const char *str, size_t slen, double num, double ttl, int *forcible);
int mg_ffi_shdict_incr(void *zone, const char *key, size_t klen, double delta, int has_init,
                       double init, double init_ttl, double *out, int *forcible);
int mg_ffi_shdict_ttl(void *zone, const char *key, size_t klen, double *ttl);
int mg_ffi_shdict_expire(void *zone, const char *key, size_t klen, double ttl);
void mg_ffi_shdict_flush_all(void *zone);
size_t mg_ffi_shdict_flush_expired(void *zone, size_t max);
long mg_ffi_shdict_get_keys(void *zone, size_t max, char *buf, size_t buflen, size_t *need);
size_t mg_ffi_shdict_capacity(void *zone);
size_t mg_ffi_shdict_free_space(void *zone);
typedef struct mg_cosock_s mg_cosock_t;
mg_cosock_t *mg_ffi_tcp_new(void);
void mg_ffi_tcp_free(mg_cosock_t *cs);
int mg_ffi_tcp_close(mg_cosock_t *cs, const char **err);
mg_cosock_t *mg_ffi_tcp_pool_get(const char *name, size_t nlen);
int mg_ffi_tcp_reused(const mg_cosock_t *cs);
int mg_ffi_tcp_connect(mg_cosock_t *cs, const char *host, size_t hlen, int port, int timeout_ms,
                       const char **err);
int mg_ffi_tcp_result(mg_cosock_t *cs, const char **err);
int mg_ffi_tcp_sslhandshake(mg_cosock_t *cs, void *session, const char *name, size_t nlen,
                            int verify, int timeout_ms, const char **err);
void *mg_ffi_tcp_ssl_session(mg_cosock_t *cs);
void mg_ffi_tcp_ssl_session_free(void *session);
int mg_ffi_tcp_send(mg_cosock_t *cs, const char *data, size_t len, size_t off, int timeout_ms,
                    size_t *sent, const char **err);
int mg_ffi_tcp_receive(mg_cosock_t *cs, int mode, size_t arg, const char *pat, size_t plen,
                       int timeout_ms, const char **data, size_t *len, const char **err);
int mg_ffi_tcp_setkeepalive(mg_cosock_t *cs, const char *name, size_t nlen, int timeout_ms,
                            int pool_size, const char **err);
size_t mg_ffi_base64_encode(const unsigned char *s, size_t len, char *out, int url, int pad);
long mg_ffi_base64_decode(const char *s, size_t len, unsigned char *out, int url);
void *mg_ffi_ipset_new(void);
void mg_ffi_ipset_free(void *set);
int mg_ffi_ipset_add(void *set, const char *cidr, size_t len);
void mg_ffi_ipset_build(void *set);
int mg_ffi_ipset_contains(const void *set, const char *ip, size_t len);
]]

local ABI = 6

_M.C = ffi.C
_M.OK, _M.ERROR, _M.AGAIN, _M.BUSY, _M.DONE, _M.DECLINED = 0, -1, -2, -3, -4, -5

-- out-parameters shared by every hot call (a worker runs one Lua call at a time)
_M.str_out = ffi.new("const char *[1]")
_M.len_out = ffi.new("size_t[1]")
_M.str_out2 = ffi.new("const char *[1]")
_M.len_out2 = ffi.new("size_t[1]")

local ok, abi = pcall(function() return ffi.C.mg_ffi_abi() end)
if not ok then
  error("moongate: the Lua runtime needs the moongate binary (mg_ffi_* not found)", 2)
elseif abi ~= ABI then
  error("moongate: Lua tree ABI " .. ABI .. " does not match the runtime's " .. abi, 2)
end

return _M
