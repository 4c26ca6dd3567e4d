/*
 * mg_ffi.c — the functions behind mg_ffi.h, called from Lua through LuaJIT's FFI. They read
 * and change the running request (mg_lua_current): its parsed head, the changes to make to
 * the upstream request and to the response, a response a plugin answers with itself, logs
 * and the timer behind moongate.sleep. None raises, none allocates outside the request
 * pool, and strings handed out live as long as the request.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "mg_base64.h"
#include "mg_ffi.h"
#include "mg_health.h"
#include "mg_ip.h"
#include "mg_log.h"
#include "mg_lua.h"
#include "mg_ocsp.h"
#include "mg_out.h"
#include "mg_shdict.h"
#include "mg_tls.h"
#include "mg_watchdog.h"

#define CUR(r)                                                                                     \
    mg_req_t *r = mg_lua_current;                                                                  \
    if (r == NULL) return MG_ERROR

static int out_str(mg_str_t v, const char **s, size_t *len)
{
    *s = v.data ? v.data : "";
    *len = v.len;
    return MG_OK;
}

int mg_ffi_abi(void)
{
    return MG_FFI_ABI;
}

int mg_ffi_req_get_method(const char **s, size_t *len)
{
    CUR(r);
    return out_str(r->msg.method, s, len);
}

int mg_ffi_req_get_path(const char **s, size_t *len)
{
    CUR(r);
    return out_str(r->msg.path, s, len);
}

int mg_ffi_req_get_raw_query(const char **s, size_t *len)
{
    CUR(r);
    return out_str(r->msg.query, s, len);
}

int mg_ffi_req_get_host(const char **s, size_t *len)
{
    CUR(r);
    mg_str_t h = r->msg.host;
    /* without the port */
    const char *end = h.data + h.len;
    if (h.len && h.data[0] == '[') {
        const char *rb = memchr(h.data, ']', h.len);
        if (rb) end = rb + 1;
    } else {
        const char *colon = h.len ? memchr(h.data, ':', h.len) : NULL;
        if (colon) end = colon;
    }
    return out_str((mg_str_t){(size_t)(end - h.data), h.data}, s, len);
}

int mg_ffi_req_get_scheme(const char **s, size_t *len)
{
    CUR(r);
    return out_str(r->c->ls->conf->ssl ? MG_STR("https") : MG_STR("http"), s, len);
}

int mg_ffi_req_get_port(void)
{
    CUR(r);
    return r->c->ls->port;
}

double mg_ffi_req_get_http_version(void)
{
    mg_req_t *r = mg_lua_current;
    return r ? (r->msg.minor == 0 ? 1.0 : 1.1) : 0;
}

int mg_ffi_req_get_header(const char *name, size_t nlen, const char **s, size_t *len)
{
    CUR(r);
    const mg_header_t *h = mg_http_header(&r->msg, (mg_str_t){nlen, name});
    if (h == NULL) return MG_DECLINED;
    return out_str(h->value, s, len);
}

int mg_ffi_req_header_count_of(const char *name, size_t nlen)
{
    mg_req_t *r = mg_lua_current;
    if (!r) return 0;
    int n = 0;
    mg_str_t want = {nlen, name};
    for (unsigned h = 0; h < r->msg.nheaders; h++)
        n += mg_str_caseeq(r->msg.headers[h].name, want);
    return n;
}

int mg_ffi_req_header_count(void)
{
    mg_req_t *r = mg_lua_current;
    return r ? (int)r->msg.nheaders : 0;
}

int mg_ffi_req_header_at(int i, const char **name, size_t *nlen, const char **value, size_t *vlen)
{
    CUR(r);
    if (i < 0 || (unsigned)i >= r->msg.nheaders) return MG_DECLINED;
    out_str(r->msg.headers[i].name, name, nlen);
    return out_str(r->msg.headers[i].value, value, vlen);
}

int mg_ffi_req_limit_body(uint64_t limit, const char *msg, size_t mlen)
{
    CUR(r);
    mg_http_msg_t *m = &r->msg;
    if (m->body_kind == MG_BODY_LENGTH && m->content_length > limit) return MG_DECLINED;
    if (m->body_seen > limit) return MG_DECLINED;
    if (limit == 0) return MG_ERROR; /* 0 means unlimited to the parser: never a lower limit */
    if (m->body_limit == 0 || limit < m->body_limit) m->body_limit = limit;
    r->body_limit_message = mg_pool_strndup(r->pool, msg, mlen);
    return MG_OK;
}

int mg_ffi_req_read_body(const char **s, size_t *len)
{
    CUR(r);
    if (r->u) return MG_ERROR; /* the body is already on its way upstream */
    int rc = mg_conn_read_body(r);
    if (rc == MG_AGAIN) {
        r->lua_cancel = NULL; /* nothing to stop: the connection's own watcher feeds it */
        return MG_AGAIN;
    }
    if (rc != MG_OK) return rc;
    *s = mg_buf_pos(r->body_buf);
    *len = mg_buf_len(r->body_buf);
    return MG_OK;
}

int mg_ffi_req_get_id(const char **s, size_t *len)
{
    CUR(r);
    return out_str(r->rid, s, len);
}

int mg_ffi_req_get_route_name(const char **s, size_t *len)
{
    CUR(r);
    const char *n = r->route && r->route->name ? r->route->name : "";
    return out_str((mg_str_t){strlen(n), n}, s, len);
}

int mg_ffi_req_get_service_name(const char **s, size_t *len)
{
    CUR(r);
    const char *n = r->service && r->service->name ? r->service->name : "";
    return out_str((mg_str_t){strlen(n), n}, s, len);
}

int mg_ffi_client_get_ip(char *buf, size_t buflen, size_t *len)
{
    CUR(r);
    *len = mg_conn_client_ip(r->c, buf, buflen);
    return MG_OK;
}

int mg_ffi_client_get_forwarded_ip(char *buf, size_t buflen, size_t *len)
{
    CUR(r);
    mg_str_t real;
    if (mg_proxy_forwarded_ip(r, &real) == MG_OK && real.len < buflen) {
        memcpy(buf, real.data, real.len);
        *len = real.len;
        return MG_OK;
    }
    *len = mg_conn_client_ip(r->c, buf, buflen);
    return MG_OK;
}

int mg_ffi_client_get_port(void)
{
    CUR(r);
    return r->c->peer_port;
}

int mg_ffi_client_tls_get(int what, const char **s, size_t *len)
{
    CUR(r);
    if (what == 7) {
        const char *v = mg_tls_client_verify(mg_worker.cfg->tls, &r->c->s);
        return out_str((mg_str_t){strlen(v), v}, s, len);
    }
    const mg_tls_peer_t *p = mg_tls_peer(&r->c->s);
    if (p == NULL) return MG_DECLINED;
    const char *v;
    switch (what) {
    case 0:
        v = p->chain_pem;
        break;
    case 1:
        v = p->subject_dn;
        break;
    case 2:
        v = p->issuer_dn;
        break;
    case 3:
        v = p->cn;
        break;
    case 4:
        v = p->sans;
        break;
    case 5:
        v = p->serial;
        break;
    case 6:
        v = p->fingerprint;
        break;
    default:
        return MG_ERROR;
    }
    return out_str((mg_str_t){strlen(v), v}, s, len);
}

int mg_ffi_client_tls_verdict(const char *key, size_t klen, const char **why, size_t *wlen)
{
    CUR(r);
    int rc = mg_tls_peer_verdict(mg_worker.cfg->tls, &r->c->s, key, klen, why);
    *wlen = strlen(*why);
    return rc;
}

/* Copies name/value into the request pool and appends an op to the list. */
static int add_op(mg_req_t *r, mg_hdr_op_t **head, mg_hdr_op_t ***tail, int op, const char *name,
                  size_t nlen, const char *value, size_t vlen)
{
    mg_hdr_op_t *o = mg_pool_alloc(r->pool, sizeof(*o));
    char *n = mg_pool_strndup(r->pool, name, nlen);
    char *v = mg_pool_strndup(r->pool, value ? value : "", value ? vlen : 0);
    if (o == NULL || n == NULL || v == NULL || op < 0 || op > 2) return MG_ERROR;
    o->next = NULL;
    o->op = op;
    o->name = (mg_str_t){nlen, n};
    o->value = (mg_str_t){value ? vlen : 0, v};
    if (*tail == NULL) *tail = head;
    **tail = o;
    *tail = &o->next;
    return MG_OK;
}

int mg_ffi_upstream_header(int op, const char *name, size_t nlen, const char *value, size_t vlen)
{
    CUR(r);
    if (r->u) return MG_DECLINED; /* the upstream request is already written */
    return add_op(r, &r->up_ops, &r->up_ops_tail, op, name, nlen, value, vlen);
}

static int set_override(mg_req_t *r, mg_str_t *dst, const char *s, size_t len)
{
    if (r->u) return MG_DECLINED;
    char *copy = mg_pool_strndup(r->pool, s, len);
    if (copy == NULL) return MG_ERROR;
    *dst = (mg_str_t){len, copy};
    return MG_OK;
}

int mg_ffi_client_set_consumer_id(const char *id, size_t len)
{
    CUR(r);
    if (len == 0) {
        r->lb_consumer = MG_NULL_STR;
        return MG_OK;
    }
    return set_override(r, &r->lb_consumer, id, len);
}

int mg_ffi_upstream_set_path(const char *path, size_t len)
{
    CUR(r);
    return set_override(r, &r->up_path, path, len);
}

int mg_ffi_upstream_set_query(const char *query, size_t len)
{
    CUR(r);
    return set_override(r, &r->up_query, query, len);
}

int mg_ffi_upstream_set_method(const char *method, size_t len)
{
    CUR(r);
    return set_override(r, &r->up_method, method, len);
}

int mg_ffi_upstream_set_body(const char *body, size_t len)
{
    CUR(r);
    if (r->u || !r->body_buffered) return MG_DECLINED;
    mg_buf_t *b = mg_buf_get_size(MG_MAX(len, (size_t)1));
    if (b == NULL) return MG_ERROR;
    mg_buf_append(b, body, len);
    mg_buf_put(r->body_buf);
    r->body_buf = b;
    return MG_OK;
}

int mg_ffi_resp_get_status(void)
{
    CUR(r);
    return (int)r->status;
}

int mg_ffi_upstream_resp_get_header(const char *name, size_t nlen, const char **s, size_t *len)
{
    CUR(r);
    if (!r->resp.head_done) return MG_DECLINED;
    const mg_header_t *h = mg_http_header(&r->resp, (mg_str_t){nlen, name});
    if (h == NULL) return MG_DECLINED;
    return out_str(h->value, s, len);
}

int mg_ffi_resp_header(int op, const char *name, size_t nlen, const char *value, size_t vlen)
{
    CUR(r);
    if (r->head_sent) return MG_DECLINED;
    return add_op(r, &r->resp_ops, &r->resp_ops_tail, op, name, nlen, value, vlen);
}

int mg_ffi_resp_header_int(int op, const char *name, size_t nlen, int64_t value)
{
    char buf[24];
    mg_out_t o = {buf, buf + sizeof(buf), false};
    if (value < 0) MG_OUT_LIT(&o, "-");
    mg_out_u64(&o, value < 0 ? 0 - (uint64_t)value : (uint64_t)value);
    return mg_ffi_resp_header(op, name, nlen, buf, (size_t)(o.p - buf));
}

int mg_ffi_resp_exit(int status, const char *body, size_t blen, const char *headers, size_t hlen)
{
    CUR(r);
    if (r->head_sent || r->u) return MG_DECLINED;
    return mg_conn_stage_response(r, (unsigned)status, body, blen, headers, hlen);
}

int mg_ffi_log_enabled(int level)
{
    return level >= (int)mg_log_level;
}

void mg_ffi_log(int level, const char *msg, size_t len)
{
    if (level < MG_LOG_DEBUG || level > MG_LOG_CRIT) level = MG_LOG_ERR;
    mg_log((mg_log_level_t)level, "%.*s", (int)MG_MIN(len, 1900), msg);
}

int mg_ffi_worker_id(void)
{
    return (int)mg_worker.slot;
}

int mg_ffi_upstream_find(const char *name, size_t len)
{
    const mg_config_t *cfg = mg_worker.cfg;
    if (cfg == NULL) return MG_ERROR;
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const char *n = cfg->upstreams[i].name;
        if (n && strlen(n) == len && memcmp(n, name, len) == 0) return (int)i;
    }
    return MG_DECLINED;
}

/* Target i of upstream up, or NULL. */
static const mg_target_t *ffi_target(const mg_config_t *cfg, int up, int i)
{
    if (cfg == NULL || up < 0 || (size_t)up >= cfg->nupstreams) return NULL;
    const mg_upstream_t *u = &cfg->upstreams[up];
    if (i < 0 || (size_t)i >= u->ntargets) return NULL;
    return &u->targets[i];
}

/* The health slot of t's address j (its j-th slot in use, in slot order) with the address,
 * or -1. The slots' addresses are the shared zone's (mg_health_assign), so every worker
 * lists the same ones. */
static int ffi_addr_slot(const mg_config_t *cfg, const mg_target_t *t, int j,
                         struct sockaddr_storage *addr)
{
    unsigned nslots = t->dns >= 0 ? MG_DNS_MAX_ADDRS : 1;
    for (unsigned k = 0; k < nslots; k++) {
        if (!mg_health_slot_addr(cfg, t->slot + k, addr)) continue;
        if (j-- == 0) return (int)(t->slot + k);
    }
    return -1;
}

int mg_ffi_upstream_target(int up, int i, const char **target, size_t *tlen, unsigned *weight,
                           int *health)
{
    const mg_config_t *cfg = mg_worker.cfg;
    const mg_target_t *t = ffi_target(cfg, up, i);
    if (t == NULL) return MG_DECLINED;
    const mg_upstream_t *u = &cfg->upstreams[up];
    *target = t->target;
    *tlen = strlen(t->target);
    *weight = t->weight;
    /* Kong: a target without addresses (its name did not resolve, or not yet) is DNS_ERROR;
     * else HEALTHCHECKS_OFF unless active or passive checks are on; else HEALTHY while some
     * address takes traffic */
    struct sockaddr_storage a;
    int naddrs = 0, healthy = 0, slot;
    while ((slot = ffi_addr_slot(cfg, t, naddrs, &a)) >= 0) {
        naddrs++;
        healthy += mg_health_is_healthy(cfg, (unsigned)slot);
    }
    if (naddrs == 0)
        *health = 3;
    else if (!u->healthchecks.passive_on && !u->healthchecks.active_on)
        *health = 0;
    else
        *health = healthy ? 1 : 2;
    return MG_OK;
}

int mg_ffi_upstream_address(int up, int i, int j, char *ipbuf, size_t iplen, size_t *ipout,
                            int *port, int *health)
{
    const mg_config_t *cfg = mg_worker.cfg;
    const mg_target_t *t = ffi_target(cfg, up, i);
    struct sockaddr_storage a;
    int slot = t && j >= 0 ? ffi_addr_slot(cfg, t, j, &a) : -1;
    if (slot < 0) return MG_DECLINED;
    const mg_upstream_t *u = &cfg->upstreams[up];
    const struct sockaddr *sa = (const struct sockaddr *)&a;
    const void *in = sa->sa_family == AF_INET6
                         ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                         : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    if (inet_ntop(sa->sa_family == AF_INET6 ? AF_INET6 : AF_INET, in, ipbuf, (socklen_t)iplen) ==
        NULL)
        ipbuf[0] = '\0';
    *ipout = strlen(ipbuf);
    *port = t->port; /* a name's slots keep no port: every address has the target's */
    if (!u->healthchecks.passive_on && !u->healthchecks.active_on)
        *health = 0;
    else
        *health = mg_health_is_healthy(cfg, (unsigned)slot) ? 1 : 2;
    return MG_OK;
}

int mg_ffi_worker_pid(void)
{
    return (int)getpid();
}

double mg_ffi_now(void)
{
    return mg_worker.loop ? ev_now(mg_worker.loop) : ev_time();
}

static void sleep_done(struct ev_loop *loop, ev_timer *w, int revents)
{
    mg_req_t *r = MG_CONTAINER_OF(w, mg_req_t, lua_timer);
    mg_lua_resume(r);
}

static void sleep_cancel(mg_req_t *r, void *data)
{
    ev_timer_stop(mg_worker.loop, &r->lua_timer);
}

int mg_ffi_sleep(double seconds)
{
    if (mg_lua_current_timer) return mg_lua_timer_sleep(mg_lua_current_timer, seconds);
    CUR(r);
    if (ev_is_active(&r->lua_timer) || r->lua_cancel) return MG_BUSY; /* one wait at a time */
    ev_timer_init(&r->lua_timer, sleep_done, seconds, 0.);
    ev_timer_start(mg_worker.loop, &r->lua_timer);
    r->lua_cancel = sleep_cancel;
    r->lua_cancel_data = NULL;
    return MG_AGAIN;
}

int mg_ffi_timer_start(double delay, double every, unsigned id)
{
    return mg_lua_timer_start(delay, every, id);
}

void mg_ffi_plugin_enter(const char *name, size_t len)
{
    mg_watchdog_plugin(name, len);
}

/* ---- body_filter --------------------------------------------------------------------- */

int mg_ffi_body_get_chunk(const char **s, size_t *len, int *eof)
{
    CUR(r);
    if (mg_lua_chunk == NULL) return MG_DECLINED; /* not inside a body_filter call */
    if (r->filter_chunk) { /* an earlier plugin replaced it: the next one sees that */
        *s = r->filter_chunk;
        *len = r->filter_chunk_len;
        *eof = mg_lua_chunk_eof;
        return MG_OK;
    }
    *s = mg_lua_chunk ? mg_lua_chunk : "";
    *len = mg_lua_chunk ? mg_lua_chunk_len : 0;
    *eof = mg_lua_chunk_eof;
    return MG_OK;
}

int mg_ffi_body_set_chunk(const char *s, size_t len)
{
    CUR(r);
    if (mg_lua_chunk == NULL) return MG_DECLINED; /* not inside a body_filter call */
    char *copy = malloc(len ? len : 1);
    if (copy == NULL) return MG_ERROR;
    memcpy(copy, s, len);
    free(r->filter_chunk);
    r->filter_chunk = copy;
    r->filter_chunk_len = len;
    return MG_OK;
}

/* ---- shared dictionaries ------------------------------------------------------------- */

int mg_ffi_shdict_zone(const char *name, size_t len, void **zone)
{
    mg_shdict_t *d = mg_lua_shdict(name, len);
    if (d == NULL) return MG_DECLINED;
    *zone = d;
    return MG_OK;
}

int mg_ffi_shdict_get(void *zone, const char *key, size_t klen, int stale, int *type, double *num,
                      char *buf, size_t buflen, size_t *vlen)
{
    mg_shdict_value_t v;
    bool was_stale = false;
    int rc = stale ? mg_shdict_get_stale(zone, key, klen, &v, buf, buflen, &was_stale)
                   : mg_shdict_get(zone, key, klen, &v, buf, buflen);
    *type = rc == MG_OK || rc == MG_AGAIN ? v.type : MG_SHDICT_NIL;
    if (was_stale && rc == MG_OK) rc = MG_BUSY; /* tells get_stale's caller it was stale */
    *num = v.number;
    *vlen = v.len;
    return rc;
}

int mg_ffi_shdict_store(void *zone, int mode, const char *key, size_t klen, int type,
                        const char *str, size_t slen, double num, double ttl, int *forcible)
{
    bool f = false;
    int rc = mg_shdict_store(zone, mode, key, klen, type, str, slen, num, ttl, &f);
    *forcible = f;
    return rc;
}

int mg_ffi_shdict_incr(void *zone, const char *key, size_t klen, double delta, int has_init,
                       double init, double init_ttl, double *out, int *forcible)
{
    bool f = false;
    int rc = mg_shdict_incr(zone, key, klen, delta, has_init, init, init_ttl, out, &f);
    *forcible = f;
    return rc;
}

int mg_ffi_shdict_ttl(void *zone, const char *key, size_t klen, double *ttl)
{
    return mg_shdict_ttl(zone, key, klen, ttl);
}

int mg_ffi_shdict_expire(void *zone, const char *key, size_t klen, double ttl)
{
    return mg_shdict_expire(zone, key, klen, ttl);
}

void mg_ffi_shdict_flush_all(void *zone)
{
    mg_shdict_flush_all(zone);
}

size_t mg_ffi_shdict_flush_expired(void *zone, size_t max)
{
    return mg_shdict_flush_expired(zone, max);
}

long mg_ffi_shdict_get_keys(void *zone, size_t max, char *buf, size_t buflen, size_t *need)
{
    return mg_shdict_get_keys(zone, max, buf, buflen, need);
}

size_t mg_ffi_shdict_capacity(void *zone)
{
    return mg_shdict_capacity(zone);
}

size_t mg_ffi_shdict_free_space(void *zone)
{
    return mg_shdict_free_space(zone);
}

/* ---- pure helpers ------------------------------------------------------------------------ */

size_t mg_ffi_base64_encode(const unsigned char *s, size_t len, char *out, int url, int pad)
{
    return mg_base64_encode(s, len, out, url != 0, pad != 0);
}

long mg_ffi_base64_decode(const char *s, size_t len, unsigned char *out, int url)
{
    return mg_base64_decode(s, len, out, url != 0);
}

void *mg_ffi_ipset_new(void)
{
    return mg_ipset_new();
}
void mg_ffi_ipset_free(void *set)
{
    mg_ipset_free(set);
}
int mg_ffi_ipset_add(void *set, const char *cidr, size_t len)
{
    return mg_ipset_add(set, cidr, len);
}
void mg_ffi_ipset_build(void *set)
{
    mg_ipset_build(set);
}

int mg_ffi_ipset_contains(const void *set, const char *ip, size_t len)
{
    return mg_ipset_contains(set, ip, len);
}

/* ---- OCSP stapling (moongate.ocsp; mg_ocsp.c does the work) ------------------------------ */

static mg_ocsp_t *worker_ocsp(void)
{
    return mg_worker.cfg ? mg_tls_ocsp(mg_worker.cfg->tls) : NULL;
}

int mg_ffi_ocsp_next(int *idx, const char **url, size_t *ulen, const char **req, size_t *rlen)
{
    return mg_ocsp_next(worker_ocsp(), idx, url, ulen, (const unsigned char **)req, rlen);
}

void mg_ffi_ocsp_done(int idx, int status, const char *body, size_t blen, const char *err,
                      size_t elen)
{
    char e[256];
    snprintf(e, sizeof(e), "%.*s", (int)MG_MIN(elen, sizeof(e) - 1), err ? err : "");
    mg_ocsp_done(worker_ocsp(), idx, status, (const unsigned char *)body, blen, e);
}
