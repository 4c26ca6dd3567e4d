/*
 * mg_ffi.h — THE Lua-facing ABI: every function the Lua side calls through LuaJIT's FFI, and
 * nothing else. lua/moongate/core/base.lua declares exactly these prototypes (ffi.cdef) and
 * checks mg_ffi_abi() at load, so a Lua tree never runs against a runtime built from other
 * sources. Rules (lua-resty-core's): no function raises; each returns an rc (MG_OK, MG_ERROR,
 * MG_DECLINED, ...) and hands strings out through pointer/length out-parameters that stay
 * valid until the request ends; every request function works on the request whose Lua code
 * is running (mg_lua_current) and returns MG_ERROR when there is none.
 */
#ifndef MG_FFI_H
#define MG_FFI_H

#include <stddef.h>
#include <stdint.h>

#define MG_FFI_ABI 6

int mg_ffi_abi(void);

/* ---- the client request -------------------------------------------------------------- */
int mg_ffi_req_get_method(const char **s, size_t *len);
int mg_ffi_req_get_path(const char **s, size_t *len);
int mg_ffi_req_get_raw_query(const char **s, size_t *len);
int mg_ffi_req_get_host(const char **s, size_t *len);
int mg_ffi_req_get_scheme(const char **s, size_t *len);
int mg_ffi_req_get_port(void);
double mg_ffi_req_get_http_version(void);
/* first value of header `name` (any case): MG_OK, or MG_DECLINED when absent */
int mg_ffi_req_get_header(const char *name, size_t nlen, const char **s, size_t *len);
/* how many header lines are named `name` (any case): 0, 1, or more for a repeated header */
int mg_ffi_req_header_count_of(const char *name, size_t nlen);
/* number of request header lines, and the i-th (0-based) */
int mg_ffi_req_header_count(void);
int mg_ffi_req_header_at(int i, const char **name, size_t *nlen, const char **value, size_t *vlen);
/* Lowers this request's body limit to `limit` bytes (never raises it): a body that turns
 * out larger is answered 413 with `msg` (mid-stream for chunked bodies). MG_DECLINED when the
 * body is already known to be larger (its Content-Length, or what was read): the caller
 * answers itself. */
int mg_ffi_req_limit_body(uint64_t limit, const char *msg, size_t mlen); /* limit >= 1 */
/* the request id (generated or the client's) */
int mg_ffi_req_get_id(const char **s, size_t *len);
/* route and service names ("" when unnamed) */
int mg_ffi_req_get_route_name(const char **s, size_t *len);
int mg_ffi_req_get_service_name(const char **s, size_t *len);

/* The whole request body (read now if need be): MG_OK with s/len; MG_AGAIN: the caller
 * yields and asks again when resumed; MG_DECLINED: larger than client_body_buffer_size;
 * another value: the body is malformed (the request is answered with that status). */
int mg_ffi_req_read_body(const char **s, size_t *len);

/* ---- the client ---------------------------------------------------------------------- */
/* The id of the consumer (else credential) the request was authenticated as, for hash_on:
 * consumer (copied; len 0 clears it). */
int mg_ffi_client_set_consumer_id(const char *id, size_t len);
int mg_ffi_client_get_ip(char *buf, size_t buflen, size_t *len);
int mg_ffi_client_get_forwarded_ip(char *buf, size_t buflen, size_t *len);
int mg_ffi_client_get_port(void);
/* The client certificate of the request's TLS connection, parsed once per connection:
 * what = 0 the chain (PEM, leaf first), 1 subject DN (RFC 2253), 2 issuer DN, 3 subject CN,
 * 4 subjectAltNames ("DNS:x\nURI:y\nemail:z\nIP:a", one per line), 5 serial (hex),
 * 6 SHA-256 fingerprint (hex), 7 the listener's verification as nginx's $ssl_client_verify
 * ("SUCCESS", "FAILED:reason", "NONE"; always MG_OK). MG_DECLINED: no certificate. */
int mg_ffi_client_tls_get(int what, const char **s, size_t *len);
/* The verdict of an mtls-auth plugin's CA list (key: its CA ids joined by '\n', then
 * "|partial" with allow_partial_chain) on the client's certificate: MG_OK verified,
 * MG_DECLINED no certificate, MG_ERROR refused (why: non-empty when the key is unknown). */
int mg_ffi_client_tls_verdict(const char *key, size_t klen, const char **why, size_t *wlen);

/* ---- the request to the service (applied when the upstream request is written) -------- */
/* op: 0 = set (replace every value), 1 = add, 2 = clear */
int mg_ffi_upstream_header(int op, const char *name, size_t nlen, const char *value, size_t vlen);
int mg_ffi_upstream_set_path(const char *path, size_t len);
int mg_ffi_upstream_set_query(const char *query, size_t len);
int mg_ffi_upstream_set_method(const char *method, size_t len);
/* Replaces the body sent upstream (the client's was read first: mg_ffi_req_read_body). */
int mg_ffi_upstream_set_body(const char *body, size_t len);

/* ---- the response to the client ------------------------------------------------------ */
/* status sent or about to be sent (0 before the upstream answered) */
int mg_ffi_resp_get_status(void);
/* a header of the upstream's response (header_filter on): MG_OK / MG_DECLINED */
int mg_ffi_upstream_resp_get_header(const char *name, size_t nlen, const char **s, size_t *len);
/* op as for mg_ffi_upstream_header; applies to the response head the client gets */
int mg_ffi_resp_header(int op, const char *name, size_t nlen, const char *value, size_t vlen);
/* The same with an integer value, formatted here: a count that changes on every request
 * (X-RateLimit-Remaining) would otherwise be a new Lua string, garbage, per request. */
int mg_ffi_resp_header_int(int op, const char *name, size_t nlen, int64_t value);
/* Ends the request with this answer instead of proxying (access/rewrite) or replaces the
 * upstream's (header_filter): status, body, and a header block "Name: value\r\n..." */
int mg_ffi_resp_exit(int status, const char *body, size_t blen, const char *headers, size_t hlen);

/* ---- logging and the node ------------------------------------------------------------ */
/* level as mg_log_level_t; returns 1 when that level is logged (callers skip formatting) */
int mg_ffi_log_enabled(int level);
void mg_ffi_log(int level, const char *msg, size_t len);
int mg_ffi_worker_id(void);
int mg_ffi_worker_pid(void);
double mg_ffi_now(void);
/* Arms a timer that resumes the running coroutine after `seconds`; returns MG_AGAIN (the
 * caller yields) or MG_ERROR when no request runs. */
int mg_ffi_sleep(double seconds);
/* Arms a timer that runs the Lua function registered under id (moongate.timer): after
 * delay seconds, then every `every` seconds when > 0. MG_OK / MG_BUSY / MG_ERROR. */
int mg_ffi_timer_start(double delay, double every, unsigned id);
/* Tells the watchdog which plugin's handler runs now (its name goes in the stall report). */
void mg_ffi_plugin_enter(const char *name, size_t len);

/* ---- upstream health (moongate.upstream.get_health; read from the shared health zone) -- */
/* The index of the upstream named `name` in the running config, or MG_DECLINED. */
int mg_ffi_upstream_find(const char *name, size_t len);
/* Target i of upstream `up`: its "host:port", weight and health: 0 health checks off, 1
 * healthy (some address is), 2 unhealthy (every address is), 3 no address (a name without
 * an answer: Kong's DNS_ERROR). MG_DECLINED past the last target or for an unknown
 * upstream. */
int mg_ffi_upstream_target(int up, int i, const char **target, size_t *tlen, unsigned *weight,
                           int *health);
/* Address j of target i of upstream `up` (an IP target has one, a name one per address of
 * its current answer): ip into ipbuf, port, and health (0, 1 or 2 as above). MG_DECLINED
 * past the last address. */
int mg_ffi_upstream_address(int up, int i, int j, char *ipbuf, size_t iplen, size_t *ipout,
                            int *port, int *health);

/* ---- body_filter ---------------------------------------------------------------------- */
/* the piece of the response body being filtered; *eof = 1 on the last call */
int mg_ffi_body_get_chunk(const char **s, size_t *len, int *eof);
/* replaces that piece (copied) */
int mg_ffi_body_set_chunk(const char *s, size_t len);

/* ---- shared dictionaries (mg_shdict.h semantics; zone = a handle from mg_ffi_shdict_zone) */
/* MG_OK with *zone set, or MG_DECLINED when no dictionary has that name */
int mg_ffi_shdict_zone(const char *name, size_t len, void **zone);
/* type out: 0 nil (miss), 1 boolean, 3 number, 4 string; MG_AGAIN: buf too small (*vlen) */
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

/* ---- cosockets (moongate.socket.tcp; runtime/mg_lua_socket.c) ----------------------------
 * A socket is owned by its Lua object (ffi.gc -> mg_ffi_tcp_free) from mg_ffi_tcp_new or
 * mg_ffi_tcp_pool_get until mg_ffi_tcp_close, a successful mg_ffi_tcp_setkeepalive (the pool
 * takes it) or its collection. An operation that would block arms the socket, binds it to the
 * running coroutine and returns MG_AGAIN: the caller yields; once resumed it calls send or
 * receive again with the same arguments, or mg_ffi_tcp_result after connect/sslhandshake.
 * Failures are MG_ERROR with *err set (copy it at once); a busy socket answers "socket busy". */
typedef struct mg_cosock_s mg_cosock_t;
mg_cosock_t *mg_ffi_tcp_new(void);
void mg_ffi_tcp_free(mg_cosock_t *cs);
/* closes and frees (MG_OK), or MG_ERROR when a coroutine waits on it */
int mg_ffi_tcp_close(mg_cosock_t *cs, const char **err);
/* an idle connection of pool `name` (its reuse count bumped), or NULL */
mg_cosock_t *mg_ffi_tcp_pool_get(const char *name, size_t nlen);
int mg_ffi_tcp_reused(const mg_cosock_t *cs);
/* host: an IP (v6 may be bracketed) or a name resolved off the loop; timeout covers both */
int mg_ffi_tcp_connect(mg_cosock_t *cs, const char *host, size_t hlen, int port, int timeout_ms,
                       const char **err);
/* the outcome of the connect or sslhandshake that returned MG_AGAIN */
int mg_ffi_tcp_result(mg_cosock_t *cs, const char **err);
/* session: an SSL_SESSION * to resume, or NULL; name: SNI and, with verify, the name checked */
int mg_ffi_tcp_sslhandshake(mg_cosock_t *cs, void *session, const char *name, size_t nlen,
                            int verify, int timeout_ms, const char **err);
/* the TLS session (a new reference for mg_ffi_tcp_ssl_session_free), or NULL */
void *mg_ffi_tcp_ssl_session(mg_cosock_t *cs);
void mg_ffi_tcp_ssl_session_free(void *session);
/* sends data[off..len); *sent = bytes sent so far (pass it back as off after MG_AGAIN) */
int mg_ffi_tcp_send(mg_cosock_t *cs, const char *data, size_t len, size_t off, int timeout_ms,
                    size_t *sent, const char **err);
/* mode 0 size (arg bytes), 1 line, 2 all, 3 any (up to arg), 4 until pat, 5 until pat
 * inclusive (arg: piece size, 0 = whole). MG_OK: *data is the result; MG_DECLINED: a piece of
 * it, call again; MG_ERROR: *data is the partial result. *data lives until the next call. */
int mg_ffi_tcp_receive(mg_cosock_t *cs, int mode, size_t arg, const char *pat, size_t plen,
                       int timeout_ms, const char **data, size_t *len, const char **err);
/* MG_OK: the pool owns the connection now; MG_ERROR: it stays the caller's (maybe closed) */
int mg_ffi_tcp_setkeepalive(mg_cosock_t *cs, const char *name, size_t nlen, int timeout_ms,
                            int pool_size, const char **err);

/* ---- OCSP stapling (lua/moongate/ocsp.lua, runtime/mg_ocsp.c) --------------------------- */
/* MG_AGAIN: certificate *idx is due and claimed by this worker: POST the DER request req to
 * url, then report with mg_ffi_ocsp_done (url and req stay valid until then); MG_OK: nothing
 * to fetch now (responses fetched by other workers were installed meanwhile); MG_DECLINED:
 * this configuration staples nothing. */
int mg_ffi_ocsp_next(int *idx, const char **url, size_t *ulen, const char **req, size_t *rlen);
/* The answer: HTTP status and body, or status 0 and a network error message. */
void mg_ffi_ocsp_done(int idx, int status, const char *body, size_t blen, const char *err,
                      size_t elen);

/* ---- pure helpers: no request needed, usable in any phase and in the master ------------ */
/* base64 (url: the URL-safe alphabet); decode is strict and returns -1 on invalid input */
size_t mg_ffi_base64_encode(const unsigned char *s, size_t len, char *out, int url, int pad);
long mg_ffi_base64_decode(const char *s, size_t len, unsigned char *out, int url);
/* IP range sets (mg_ip.h): build once, then O(log n) lookups of a textual address */
void *mg_ffi_ipset_new(void);
void mg_ffi_ipset_free(void *set);
int mg_ffi_ipset_add(void *set, const char *cidr, size_t len);
void mg_ffi_ipset_build(void *set);
int mg_ffi_ipset_contains(const void *set, const char *ip, size_t len);

#endif
