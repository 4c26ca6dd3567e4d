/*
 * mg_proxy.c — proxying one request: the upstream request head is re-serialised from the
 * parsed request (never raw client bytes), bodies are re-framed on the way through, and
 * mg_proxy_pump() moves bytes in all four directions with backpressure: a direction reads
 * only while the buffer it fills has room, so a slow reader stalls its sender instead of
 * growing memory. After a 101 the same pump tunnels raw bytes both ways.
 */
#include <errno.h>
#include <stdio.h>
#include <sys/random.h>
#include <stdlib.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include "mg_balancer.h"
#include "mg_health.h"
#include "mg_log.h"
#include "mg_out.h"
#include "mg_lua.h"
#include "mg_request.h"

/* Upstream response heads may carry this many header lines (else 502). */
#define MAX_RESP_HEADERS 128

static int write_request_head(mg_req_t *r, mg_buf_t *b);
static int write_response_head(mg_req_t *r);
static bool connect_upstream(mg_req_t *r);
static void balancer_key(mg_req_t *r);
static int pump_body_filter(mg_req_t *r);
static bool drain_filtered(mg_req_t *r);
static void finish_upstream_failure(mg_req_t *r, unsigned status);

/* the appender of mg_out.h, under short local names */
typedef mg_out_t out_t;
#define put mg_out_put
#define put_cstr mg_out_cstr
#define put_u64 mg_out_u64
#define PUT_LIT MG_OUT_LIT
#define PUT_STR MG_OUT_STR

static void put_header(out_t *o, mg_str_t name, mg_str_t value)
{
    PUT_STR(o, name);
    PUT_LIT(o, ": ");
    PUT_STR(o, value);
    PUT_LIT(o, "\r\n");
}

static bool is_idempotent(const mg_http_msg_t *m)
{
    switch (m->parser.method) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_PUT:
    case HTTP_DELETE:
    case HTTP_OPTIONS:
    case HTTP_TRACE:
        return true;
    default:
        return false;
    }
}

static bool client_trusted(const mg_conn_t *c)
{
    const mg_config_t *cfg = mg_worker.cfg;
    if (cfg->ntrusted_ips == 0) return false;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (c->peer_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, c->peer_addr, 4);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, c->peer_addr, 16);
    }
    return mg_cidr_match(cfg->trusted_ips, cfg->ntrusted_ips, (struct sockaddr *)&ss);
}

/* Header names the gateway sets itself; a client's copies are dropped (or, from a trusted
 * address, folded into ours). */
enum { XFF, XFPROTO, XFHOST, XFPORT, XFPATH, XREALIP, NFWD };
static const mg_str_t fwd_names[NFWD] = {
    {15, "x-forwarded-for"},  {17, "x-forwarded-proto"}, {16, "x-forwarded-host"},
    {16, "x-forwarded-port"}, {16, "x-forwarded-path"},  {9, "x-real-ip"},
};

static int fwd_index(mg_str_t n)
{
    if (n.len < 9 || (n.data[0] | 0x20) != 'x') return -1;
    for (int i = 0; i < NFWD; i++)
        if (mg_str_caseeq(n, fwd_names[i])) return i;
    return -1;
}

/* True when a plugin replaced or removed header `name` (set/clear): the original goes. */
static bool op_overrides(const mg_hdr_op_t *ops, mg_str_t name)
{
    for (const mg_hdr_op_t *o = ops; o; o = o->next)
        if (o->op != 1 && mg_str_caseeq(o->name, name)) return true;
    return false;
}

/* Writes the headers plugins set or added (ops in the order they were made; a later set
 * replaces earlier values, a later clear removes them). */
static void put_ops(out_t *o, const mg_hdr_op_t *ops, bool skip_host)
{
    for (const mg_hdr_op_t *op = ops; op; op = op->next) {
        if (op->op == 2) continue;
        if (skip_host && op->name.len == 4 && mg_str_caseeq_lit(op->name, "host")) continue;
        bool superseded = false; /* a later set or clear of the same name wins */
        for (const mg_hdr_op_t *later = op->next; later; later = later->next)
            if (later->op != 1 && mg_str_caseeq(later->name, op->name)) superseded = true;
        if (!superseded) put_header(o, op->name, op->value);
    }
}

/* The last Host a plugin set for the upstream request, or NULL. */
static const mg_hdr_op_t *host_op(const mg_hdr_op_t *ops)
{
    const mg_hdr_op_t *found = NULL;
    for (const mg_hdr_op_t *o = ops; o; o = o->next)
        if (o->name.len == 4 && mg_str_caseeq_lit(o->name, "host")) found = o->op == 2 ? NULL : o;
    return found;
}

int mg_proxy_forwarded_ip(const mg_req_t *r, mg_str_t *ip)
{
    const mg_config_t *cfg = mg_worker.cfg;
    if (cfg->real_ip_header == NULL || !client_trusted(r->c)) return MG_DECLINED;
    const mg_header_t *rh =
        mg_http_header(&r->msg, (mg_str_t){strlen(cfg->real_ip_header), cfg->real_ip_header});
    if (rh == NULL || rh->value.len == 0) return MG_DECLINED;
    mg_str_t real = rh->value;
    const char *comma = memrchr(real.data, ',', real.len); /* the rightmost hop */
    if (comma) {
        real = (mg_str_t){real.len - (size_t)(comma + 1 - real.data), comma + 1};
        while (real.len && real.data[0] == ' ')
            real.data++, real.len--;
    }
    *ip = real;
    return MG_OK;
}

/* Joins the service path and the part of the request path left after strip_path
 * (Kong's path_handling "v0"). */
static void put_upstream_path(out_t *o, mg_req_t *r)
{
    if (r->up_path.data) { /* a plugin chose the path */
        PUT_STR(o, r->up_path);
        if (r->up_query.data ? r->up_query.len : r->msg.query.data != NULL) {
            PUT_LIT(o, "?");
            PUT_STR(o, r->up_query.data ? r->up_query : r->msg.query);
        }
        return;
    }
    mg_str_t path = r->msg.path;
    mg_str_t rest = path;
    if (r->route->strip_path && r->prefix_len > 0) {
        rest = (mg_str_t){path.len - r->prefix_len, path.data + r->prefix_len};
    }
    const char *sp = r->service->path;
    size_t splen = sp ? strlen(sp) : 0;
    if (splen == 1) splen = 0; /* "/" adds nothing */
    if (splen) put(o, sp, splen);
    if (rest.len == 0) {
        if (!splen) PUT_LIT(o, "/");
    } else {
        bool slash_end = splen && sp[splen - 1] == '/';
        if (rest.data[0] == '/') {
            if (slash_end) rest.data++, rest.len--;
        } else if (!slash_end) {
            PUT_LIT(o, "/");
        }
        PUT_STR(o, rest);
    }
    mg_str_t query = r->up_query.data ? r->up_query : r->msg.query;
    if (query.data && (query.len || !r->up_query.data)) {
        PUT_LIT(o, "?");
        PUT_STR(o, query);
    }
}

static int write_request_head(mg_req_t *r, mg_buf_t *b)
{
    mg_conn_t *c = r->c;
    const mg_config_t *cfg = mg_worker.cfg;
    const mg_service_t *s = r->service;
    bool trusted = client_trusted(c);
    mg_http_msg_t *m = &r->msg;
    mg_buf_compact(b);
    out_t o = {mg_buf_last(b), b->data + b->size, false};

    PUT_STR(&o, r->up_method.data ? r->up_method : m->method);
    PUT_LIT(&o, " ");
    put_upstream_path(&o, r);
    PUT_LIT(&o, " HTTP/1.1\r\nHost: ");
    const mg_hdr_op_t *hop = host_op(r->up_ops);
    if (hop) {
        PUT_STR(&o, hop->value);
    } else if (r->route->preserve_host && m->host.len) {
        PUT_STR(&o, m->host);
    } else if (s->upstream && s->upstream->host_header) {
        put_cstr(&o, s->upstream->host_header);
    } else if (r->target) { /* Kong: the target's host and port (unless the scheme's) */
        put_cstr(&o, r->target->host);
        if (r->target->port != (s->tls ? 443 : 80)) {
            PUT_LIT(&o, ":");
            put_u64(&o, r->target->port);
        }
    } else {
        put_cstr(&o, s->host);
        if (s->port != (s->tls ? 443 : 80)) {
            PUT_LIT(&o, ":");
            put_u64(&o, s->port);
        }
    }
    PUT_LIT(&o, "\r\n");

    mg_str_t fwd[NFWD] = {{0}};
    mg_str_t xff[16];
    size_t nxff = 0;
    const char *rid_name = cfg->request_id_header;
    mg_str_t rid_str = rid_name ? (mg_str_t){strlen(rid_name), rid_name} : MG_NULL_STR;
    for (unsigned i = 0; i < m->nheaders; i++) {
        mg_header_t *h = &m->headers[i];
        if (h->name.len == 4 && mg_str_caseeq_lit(h->name, "host")) continue;
        if (h->name.len == 6 && mg_str_caseeq_lit(h->name, "expect")) continue;
        if (mg_http_is_hop_by_hop(m, h->name)) continue;
        if (rid_name && mg_str_caseeq(h->name, rid_str)) continue;
        if (r->up_ops && op_overrides(r->up_ops, h->name)) continue;
        int f = fwd_index(h->name);
        if (f >= 0) {
            if (trusted && f != XFF) fwd[f] = h->value;
            if (trusted && f == XFF && nxff < MG_ARRAY_SIZE(xff)) xff[nxff++] = h->value;
            continue;
        }
        put_header(&o, h->name, h->value);
    }
    char ip[64];
    size_t iplen = mg_conn_client_ip(c, ip, sizeof(ip));
    mg_str_t ipstr = {iplen, ip};
    PUT_LIT(&o, "X-Forwarded-For: ");
    for (size_t i = 0; i < nxff; i++) { /* several lines from a trusted proxy are one list */
        if (xff[i].len == 0) continue;
        PUT_STR(&o, xff[i]);
        PUT_LIT(&o, ", ");
    }
    PUT_STR(&o, ipstr);
    PUT_LIT(&o, "\r\nX-Forwarded-Proto: ");
    if (fwd[XFPROTO].len)
        PUT_STR(&o, fwd[XFPROTO]);
    else
        put_cstr(&o, c->ls->conf->ssl ? "https" : "http");
    PUT_LIT(&o, "\r\nX-Forwarded-Host: ");
    if (fwd[XFHOST].len) {
        PUT_STR(&o, fwd[XFHOST]);
    } else {
        mg_str_t h = m->host;
        const char *colon = h.len && h.data[0] != '[' ? memchr(h.data, ':', h.len) : NULL;
        if (h.len && h.data[0] == '[')
            colon = memchr(h.data, ']', h.len),
            colon = colon && colon + 1 < h.data + h.len ? colon + 1 : NULL;
        PUT_STR(&o, ((mg_str_t){colon ? (size_t)(colon - h.data) : h.len, h.data}));
    }
    PUT_LIT(&o, "\r\nX-Forwarded-Port: ");
    if (fwd[XFPORT].len)
        PUT_STR(&o, fwd[XFPORT]);
    else
        put_u64(&o, c->ls->port);
    PUT_LIT(&o, "\r\nX-Forwarded-Path: ");
    if (fwd[XFPATH].len)
        PUT_STR(&o, fwd[XFPATH]);
    else
        PUT_STR(&o, m->path);
    PUT_LIT(&o, "\r\nX-Real-IP: ");
    mg_str_t real;
    if (!trusted || mg_proxy_forwarded_ip(r, &real) != MG_OK) real = ipstr;
    PUT_STR(&o, real);
    PUT_LIT(&o, "\r\n");
    if (rid_name && r->rid.len) put_header(&o, rid_str, r->rid);
    if (r->up_ops) put_ops(&o, r->up_ops, true);

    if (m->upgrade) {
        const mg_header_t *up = mg_http_header(m, MG_STR("upgrade"));
        PUT_LIT(&o, "Connection: upgrade\r\nUpgrade: ");
        if (up) PUT_STR(&o, up->value);
        PUT_LIT(&o, "\r\n");
    } else if (r->body_buffered) { /* read (or replaced) by a plugin: its length is known */
        PUT_LIT(&o, "Content-Length: ");
        put_u64(&o, mg_buf_len(r->body_buf));
        PUT_LIT(&o, "\r\n");
    } else if (m->body_kind == MG_BODY_LENGTH) {
        PUT_LIT(&o, "Content-Length: ");
        put_u64(&o, m->content_length);
        PUT_LIT(&o, "\r\n");
    } else if (m->body_kind == MG_BODY_CHUNKED) {
        PUT_LIT(&o, "Transfer-Encoding: chunked\r\n");
        m->out_chunked = 1;
    }
    PUT_LIT(&o, "\r\n");
    if (o.overflow) return MG_ERROR;
    r->up_head_len = (size_t)(o.p - mg_buf_last(b));
    b->end = (size_t)(o.p - b->data);
    return MG_OK;
}

static int write_response_head(mg_req_t *r)
{
    mg_http_msg_t *u = &r->resp, *m = &r->msg;
    const mg_config_t *cfg = mg_worker.cfg;
    bool client10 = m->minor == 0;
    bool tunnel = u->status == 101 && m->upgrade;

    if (r->out == NULL && (r->out = mg_buf_get()) == NULL) return MG_ERROR;
    mg_buf_compact(r->out);
    out_t o = {mg_buf_last(r->out), r->out->data + r->out->size, false};

    PUT_LIT(&o, "HTTP/1.1 ");
    put_u64(&o, u->status);
    PUT_LIT(&o, " ");
    put_cstr(&o, mg_http_reason(u->status));
    PUT_LIT(&o, "\r\n");
    const char *rid_name = cfg->request_id_header;
    mg_str_t rid_str = rid_name ? (mg_str_t){strlen(rid_name), rid_name} : MG_NULL_STR;
    bool has_rid = false;
    for (unsigned i = 0; i < u->nheaders; i++) {
        mg_header_t *h = &u->headers[i];
        if (mg_http_is_hop_by_hop(u, h->name)) continue;
        if (r->resp_ops && op_overrides(r->resp_ops, h->name)) continue;
        if (rid_name && mg_str_caseeq(h->name, rid_str)) has_rid = true;
        put_header(&o, h->name, h->value);
    }
    if (r->resp_ops) put_ops(&o, r->resp_ops, false);
    if (rid_name && r->rid.len && !has_rid) put_header(&o, rid_str, r->rid);
    PUT_LIT(&o, "Via: 1.1 " MG_SERVER_NAME "\r\n");

    bool keep = r->keepalive && !mg_worker.draining;
    if (tunnel) {
        const mg_header_t *up = mg_http_header(u, MG_STR("upgrade"));
        PUT_LIT(&o, "Connection: upgrade\r\nUpgrade: ");
        if (up) PUT_STR(&o, up->value);
        PUT_LIT(&o, "\r\n");
        keep = false;
    } else {
        bool has_body = u->body_kind != MG_BODY_NONE;
        bool body_allowed = u->status >= 200 && u->status != 204 && u->status != 304 &&
                            m->parser.method != HTTP_HEAD;
        /* a body_filter may change the body's length (or give an empty one content): such
         * responses are re-framed */
        if ((has_body || body_allowed) &&
            (mg_lua_route_mask(mg_lua, r->route->index) & MG_PHASE_BODY_FILTER))
            r->body_filter = 1;
        if ((u->body_kind == MG_BODY_LENGTH && !r->body_filter) ||
            (!has_body && !r->body_filter && u->has_content_length && u->status != 204 &&
             u->status >= 200)) {
            PUT_LIT(&o, "Content-Length: ");
            put_u64(&o, u->content_length);
            PUT_LIT(&o, "\r\n");
        } else if (has_body || r->body_filter) {
            if (client10) {
                keep = false; /* an HTTP/1.0 client learns the end from the close */
            } else {
                PUT_LIT(&o, "Transfer-Encoding: chunked\r\n");
                u->out_chunked = 1;
            }
        } else if (u->status >= 200 && u->status != 204 && u->status != 304 &&
                   m->parser.method != HTTP_HEAD) {
            PUT_LIT(&o, "Content-Length: 0\r\n");
        }
        if (!keep)
            PUT_LIT(&o, "Connection: close\r\n");
        else if (client10)
            PUT_LIT(&o, "Connection: keep-alive\r\n");
    }
    PUT_LIT(&o, "\r\n");
    if (o.overflow) return MG_ERROR;
    r->out->end = (size_t)(o.p - r->out->data);
    r->keepalive = keep;
    r->status = u->status;
    r->head_sent = 1;
    if (tunnel) r->tunnel = 1;
    return MG_OK;
}

/* Whether r may take one more try after a failed one: `retries` counts the tries after the
 * first, and a stale pooled connection's free retry (nginx's too) is not one of them. */
static bool retry_budget_left(const mg_req_t *r)
{
    return r->tries - r->stale_retried <= r->service->retries;
}

/* Notes the address try number r->tries went to, for the logs: copied, since a named
 * target's address may leave (its balancer entry and connection freed) before the log. */
static void record_try(mg_req_t *r, const char *addr)
{
    snprintf(r->upstream_addr_text, sizeof(r->upstream_addr_text), "%s", addr);
    r->upstream_addr = r->upstream_addr_text;
    if (r->tries >= 1 && r->tries <= MG_LOGGED_TRIES)
        memcpy(r->try_addrs[r->tries - 1], r->upstream_addr_text, sizeof(r->try_addrs[0]));
}

static bool connect_upstream(mg_req_t *r)
{
    const mg_service_t *s = r->service;
    mg_buf_t *pending = r->u ? r->u->out : NULL; /* unsent bytes move to the next try */
    if (r->u) {
        r->u->out = NULL;
        mg_upstream_release(r->u, false);
        r->u = NULL;
    }
    if (s->upstream && !r->lb_keyed) balancer_key(r);
    mg_uconn_t *u;
    for (;;) { /* a connect refused at once is a try too: the next one follows now */
        r->tries++;
        u = mg_upstream_get(s, r);
        if (u != NULL || r->lb_no_peer || r->dns_wait || r->dns_failed) break;
        int err = errno;
        record_try(r, mg_upstream_try_addr());
        if (r->target)
            mg_log_err("cannot connect to upstream \"%s\" target %s (%s, try %u): %s",
                       s->upstream->name, r->target->target, r->upstream_addr, r->tries,
                       strerror(err));
        else
            mg_log_err("cannot connect to upstream %s:%u (%s, try %u): %s", s->host, s->port,
                       r->upstream_addr, r->tries, strerror(err));
        if (!retry_budget_left(r)) break;
    }
    if (u == NULL) {
        mg_buf_put(pending);
        if (r->dns_wait) {
            r->tries--; /* no try yet: the request waits for the name's answer */
        } else if (r->dns_failed) {
            r->tries--; /* no address, no try */
            mg_log_err("name resolution failed for %s (service %s)", s->host,
                       s->name ? s->name : "(unnamed)");
        } else if (r->lb_no_peer) {
            r->tries--; /* no target, no try */
            mg_log_err("upstream \"%s\": no target can take traffic (weights 0 or none)",
                       s->upstream->name);
        }
        return false;
    }
    r->u = u;
    size_t need = r->msg.head_len + 2048 + (s->path ? strlen(s->path) : 0);
    if (pending && pending->start == 0 && mg_buf_len(pending) >= r->up_head_len) {
        /* nothing of it was written (the connect failed): body bytes streamed from the
         * client follow the head, which is written again for this try (its Host names the
         * new target) */
        size_t body = mg_buf_len(pending) - r->up_head_len;
        unsigned chunked = r->msg.out_chunked; /* 0 once the last chunk is queued */
        u->out = mg_buf_get_size(need + MG_MAX(body, (size_t)MG_BUF_SIZE));
        if (u->out == NULL || write_request_head(r, u->out) != MG_OK) {
            mg_buf_put(pending);
            mg_log_err("request head does not fit the upstream buffer");
            return false;
        }
        r->msg.out_chunked = chunked;
        mg_buf_append(u->out, mg_buf_pos(pending) + r->up_head_len, body);
        mg_buf_put(pending);
    } else if (pending) {
        u->out = pending;
    } else {
        u->out = mg_buf_get_size(need);
        if (u->out == NULL || write_request_head(r, u->out) != MG_OK) {
            mg_log_err("request head does not fit the upstream buffer");
            return false;
        }
    }
    record_try(r, mg_upstream_uconn_addr(u));
    if (r->target)
        mg_log_debug("upstream \"%s\" try %u: target %s (%s)", s->upstream->name, r->tries,
                     r->target->target, r->upstream_addr);
    return true;
}

/* Kong's answer when the balancer has no target to offer. */
#define NO_PEER_MESSAGE "failure to get a peer from the ring-balancer"
/* Kong's answer when a service's host does not resolve. */
#define NAME_FAILED_MESSAGE "name resolution failed"

static void dns_wait_cb(mg_dns_waiter_t *w);
static void dns_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* The first try could not start: answers the client, or parks r until its name resolves. */
static void first_try_failed(mg_req_t *r)
{
    if (r->dns_wait) {
        /* wait for the answer, no longer than the connect timeout from the proxy's start */
        double left =
            r->service->connect_timeout * 0.001 - (ev_now(mg_worker.loop) - r->upstream_start);
        r->dns_wait = 0;
        r->dns_waiting = 1;
        r->dns_waiter.cb = dns_wait_cb;
        mg_dns_wait((unsigned)r->dns_name, &r->dns_waiter);
        ev_timer_init(&r->dns_timer, dns_timeout_cb, left > 0.001 ? left : 0.001, 0.);
        ev_timer_start(mg_worker.loop, &r->dns_timer);
        mg_conn_update(r->c);
        return;
    }
    if (r->dns_failed)
        mg_conn_respond_error(r, 503, NAME_FAILED_MESSAGE);
    else if (r->lb_no_peer)
        mg_conn_respond_error(r, 503, NO_PEER_MESSAGE);
    else
        finish_upstream_failure(r, 502);
}

/* The first try: connect, then move bytes. */
static void first_try(mg_req_t *r)
{
    if (!connect_upstream(r)) {
        first_try_failed(r);
        return;
    }
    mg_http_msg_init(&r->resp, HTTP_RESPONSE, NULL, 0);
    mg_proxy_pump(r);
}

void mg_proxy_dns_cancel(mg_req_t *r)
{
    mg_dns_cancel(&r->dns_waiter);
    ev_timer_stop(mg_worker.loop, &r->dns_timer);
    r->dns_waiting = 0;
}

/* The name r waited for has an answer (whatever it is): try again. */
static void dns_wait_cb(mg_dns_waiter_t *w)
{
    mg_req_t *r = MG_CONTAINER_OF(w, mg_req_t, dns_waiter);
    mg_proxy_dns_cancel(r);
    if (r->local_response) return; /* answered meanwhile (the client timed out: 408) */
    first_try(r);
}

static void dns_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    mg_req_t *r = MG_CONTAINER_OF(w, mg_req_t, dns_timer);
    mg_proxy_dns_cancel(r);
    if (r->local_response) return;
    mg_log_err("name resolution failed for %s: no answer within the connect timeout (%u ms)",
               mg_worker.cfg->dns_names[r->dns_name], r->service->connect_timeout);
    mg_conn_respond_error(r, 503, NAME_FAILED_MESSAGE);
}

/* Appends "; "-separated cookie `name`'s value from the Cookie headers to *v; true if found. */
static bool find_cookie(const mg_http_msg_t *m, const char *name, mg_str_t *v)
{
    size_t nlen = strlen(name);
    for (unsigned i = 0; i < m->nheaders; i++) {
        const mg_header_t *h = &m->headers[i];
        if (h->name.len != 6 || !mg_str_caseeq_lit(h->name, "cookie")) continue;
        const char *p = h->value.data, *end = p + h->value.len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == ';'))
                p++;
            const char *semi = memchr(p, ';', (size_t)(end - p));
            const char *e = semi ? semi : end;
            if ((size_t)(e - p) > nlen && p[nlen] == '=' && memcmp(p, name, nlen) == 0) {
                *v = (mg_str_t){(size_t)(e - p) - nlen - 1, p + nlen + 1};
                while (v->len && v->data[v->len - 1] == ' ')
                    v->len--;
                return true;
            }
            p = e;
        }
    }
    return false;
}

/* The raw value of query argument `name` (its first occurrence); true if present. */
static bool find_query_arg(mg_str_t q, const char *name, mg_str_t *v)
{
    size_t nlen = strlen(name);
    const char *p = q.data, *end = q.data ? q.data + q.len : NULL;
    while (p && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        if ((size_t)(e - p) >= nlen && memcmp(p, name, nlen) == 0 &&
            ((size_t)(e - p) == nlen || p[nlen] == '=')) {
            size_t off = (size_t)(e - p) == nlen ? nlen : nlen + 1;
            *v = (mg_str_t){(size_t)(e - p) - off, p + off};
            return true;
        }
        p = e + 1;
    }
    return false;
}

/* The gateway's own cookie for hash_on: cookie when the client sent none: a random value
 * (Kong: a UUID), hashed now and set on the response so the client comes back with it. */
static bool new_hash_cookie(mg_req_t *r, const mg_upstream_t *up, mg_str_t *v)
{
    unsigned char raw[16];
    if (getrandom(raw, sizeof(raw), GRND_NONBLOCK) != (ssize_t)sizeof(raw)) return false;
    raw[6] = (unsigned char)((raw[6] & 0x0f) | 0x40); /* a version 4 UUID */
    raw[8] = (unsigned char)((raw[8] & 0x3f) | 0x80);
    char *val = mg_pool_alloc(r->pool, 37);
    mg_hdr_op_t *op = mg_pool_alloc(r->pool, sizeof(*op));
    char *hdr = val ? mg_pool_printf(r->pool, "%s=", up->hash_on_cookie) : NULL;
    if (val == NULL || op == NULL || hdr == NULL) return false;
    static const char hex[] = "0123456789abcdef";
    for (int i = 0, j = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) val[j++] = '-';
        val[j++] = hex[raw[i] >> 4];
        val[j++] = hex[raw[i] & 15];
    }
    val[36] = '\0';
    hdr = mg_pool_printf(r->pool, "%s=%s; Path=%s; HttpOnly%s", up->hash_on_cookie, val,
                         up->hash_on_cookie_path, r->c->ls->conf->ssl ? "; Secure" : "");
    if (hdr == NULL) return false;
    op->next = NULL;
    op->op = 1; /* add: other Set-Cookie lines stay */
    op->name = MG_STR("Set-Cookie");
    op->value = (mg_str_t){strlen(hdr), hdr};
    if (r->resp_ops_tail == NULL) r->resp_ops_tail = &r->resp_ops;
    *r->resp_ops_tail = op;
    r->resp_ops_tail = &op->next;
    *v = (mg_str_t){36, val};
    return true;
}

/* The value hash input `how` gives for r, or false when the request has none. */
static bool hash_input(mg_req_t *r, const mg_upstream_t *up, int how, bool fallback, mg_str_t *v,
                       char *ipbuf, size_t iplen)
{
    const mg_header_t *h;
    switch (how) {
    case MG_HASH_IP:
        if (mg_proxy_forwarded_ip(r, v) == MG_OK) return true;
        *v = (mg_str_t){mg_conn_client_ip(r->c, ipbuf, iplen), ipbuf};
        return true;
    case MG_HASH_HEADER: {
        const char *name = fallback ? up->hash_fallback_header : up->hash_on_header;
        h = mg_http_header(&r->msg, (mg_str_t){strlen(name), name});
        if (h == NULL || h->value.len == 0) return false;
        *v = h->value;
        return true;
    }
    case MG_HASH_COOKIE:
        return find_cookie(&r->msg, up->hash_on_cookie, v) || new_hash_cookie(r, up, v);
    case MG_HASH_PATH:
        *v = r->msg.path;
        return v->len > 0;
    case MG_HASH_QUERY_ARG:
        return find_query_arg(r->msg.query,
                              fallback ? up->hash_fallback_query_arg : up->hash_on_query_arg, v);
    case MG_HASH_CONSUMER: /* set by moongate.client.authenticate, in access at the latest */
        *v = r->lb_consumer;
        return v->len > 0;
    case MG_HASH_URI_CAPTURE:
        return mg_router_capture(r->route_regex, r->msg.path,
                                 fallback ? up->hash_fallback_uri_capture : up->hash_on_uri_capture,
                                 v) == MG_OK;
    default:
        return false;
    }
}

/* Consistent hashing's key for r (hash_on, else hash_fallback, else none), once. */
static void balancer_key(mg_req_t *r)
{
    const mg_upstream_t *up = r->service->upstream;
    char ip[64];
    mg_str_t v;
    r->lb_keyed = 1;
    if (up->algorithm != MG_LB_CONSISTENT_HASHING) return;
    if (hash_input(r, up, up->hash_on, false, &v, ip, sizeof(ip)) ||
        hash_input(r, up, up->hash_fallback, true, &v, ip, sizeof(ip))) {
        r->lb_hash = mg_balancer_hash(v.data, v.len);
        r->lb_has_key = 1;
    }
}

void mg_proxy_start(mg_req_t *r)
{
    mg_conn_t *c = r->c;
    r->upstream_start = ev_now(mg_worker.loop);
    r->keepalive = mg_conn_may_keepalive(r);
    if ((r->msg.body_kind == MG_BODY_NONE || r->msg.body_done) && !r->body_buffered)
        r->req_body_done = 1;
    if (r->body_failed) { /* a plugin read part of a body too large to buffer: refuse */
        mg_conn_respond_error(r, 413, NULL);
        return;
    }
    if (r->msg.expect_continue && !r->req_body_done && !r->body_buffered) {
        if ((r->out = mg_buf_get()) == NULL) {
            mg_conn_abort(c);
            return;
        }
        mg_buf_append(r->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }
    first_try(r);
}

static void finish_upstream_failure(mg_req_t *r, unsigned status)
{
    r->upstream_failed = 1;
    if (r->head_sent) {
        mg_conn_abort(r->c); /* never a fake complete response */
        return;
    }
    mg_conn_respond_error(r, status, NULL);
}

/* Whether the method that goes upstream (a plugin may have changed it) is idempotent. */
static bool upstream_idempotent(const mg_req_t *r)
{
    if (r->up_method.data == NULL) return is_idempotent(&r->msg);
    static const mg_str_t safe[] = {{3, "GET"},    {4, "HEAD"},    {3, "PUT"},
                                    {6, "DELETE"}, {7, "OPTIONS"}, {5, "TRACE"}};
    for (size_t i = 0; i < MG_ARRAY_SIZE(safe); i++)
        if (r->up_method.len == safe[i].len &&
            memcmp(r->up_method.data, safe[i].data, safe[i].len) == 0)
            return true;
    return false;
}

/*
 * A try failed before the client got a byte of the response: the next try goes to another
 * target (or the same host again) when
 *  - the connect failed: nothing was sent, any method, within `retries`;
 *  - the connection failed or timed out after the request (or part of it) went out, nothing
 *    came back yet, the method is idempotent (RFC 9110 9.2.2) or the service has
 *    retry_non_idempotent, and the body can be sent again: none, or held whole in body_buf
 *    (a streamed body's bytes are gone); within `retries`, except that a pooled connection
 *    the backend had closed gets one more try for free (nginx does the same).
 * Anything else ends the request: 504 after a timeout, 502 otherwise, or an aborted client
 * connection once the response has started.
 */
void mg_proxy_upstream_error(mg_req_t *r, int err, bool timeout)
{
    mg_uconn_t *u = r->u;
    const mg_service_t *s = r->service;
    bool connecting = u && !u->connected;
    bool nothing_received =
        !r->resp.head_done && (u == NULL || u->in == NULL || mg_buf_len(u->in) == 0);
    /* passive health: counted when the try is reported (its connection released); a pooled
     * connection the backend had closed is not the target failing (the retry will tell) */
    if (u && !r->resp.head_done && !(u->reused && !timeout))
        u->hc_failure = timeout ? MG_HC_EV_TIMEOUT : MG_HC_EV_TCP_FAILURE;
    const char *why = timeout              ? "timed out"
                      : u && u->tls_failed ? mg_upstream_tls_error(u)
                                           : strerror(err);
    bool replayable = r->msg.body_kind == MG_BODY_NONE || r->body_buffered;
    bool may_resend = replayable && (upstream_idempotent(r) || s->retry_non_idempotent);
    bool stale = u && u->reused && !connecting && !timeout && !r->stale_retried;
    bool retry =
        !r->head_sent && nothing_received &&
        (connecting ? retry_budget_left(r) : may_resend && (stale || retry_budget_left(r)));
    const char *next = retry ? "; trying again" : "";
    if (r->target)
        mg_log_err("upstream %s (upstream \"%s\" target %s, %s, try %u): %s%s",
                   connecting ? "connect failed" : "failed", s->upstream->name, r->target->target,
                   r->upstream_addr, r->tries, why, next);
    else
        mg_log_err("upstream %s (%s:%u, try %u): %s%s", connecting ? "connect failed" : "failed",
                   s->host, s->port, r->tries, why, next);
    if (retry && stale) r->stale_retried = 1;
    /* what the next try sends: everything again from scratch when the body can be, else (a
     * failed connect, nothing written) the pending bytes, behind a head written anew for the
     * new target by connect_upstream() */
    bool rebuild = !connecting || (s->upstream && replayable);
    if (retry) {
        /* the next try's response is parsed from scratch (this one may have seen its EOF) */
        if (r->resp.headers)
            mg_http_msg_init(&r->resp, HTTP_RESPONSE, r->resp_headers, MAX_RESP_HEADERS);
        if (rebuild && u) {
            mg_buf_put(u->out); /* rebuild the head for the fresh connection */
            u->out = NULL;
            r->req_sent = 0;
            if (r->body_buffered) { /* and send the held body again */
                r->body_sent = 0;
                r->req_body_done = 0;
            }
        }
        if (connect_upstream(r)) {
            mg_proxy_pump(r);
            return;
        }
        if (r->lb_no_peer && !r->head_sent) {
            mg_conn_respond_error(r, 503, NO_PEER_MESSAGE);
            return;
        }
        if ((r->dns_failed || r->dns_wait) && !r->head_sent) {
            r->dns_wait = 0;
            mg_conn_respond_error(r, 503, NAME_FAILED_MESSAGE);
            return;
        }
        finish_upstream_failure(r, 502); /* the last try's connect failed */
        return;
    }
    finish_upstream_failure(r, timeout ? 504 : 502);
}

/* One step of request-body forwarding; returns true on progress. */
static bool pump_request_body(mg_req_t *r, unsigned *err)
{
    mg_conn_t *c = r->c;
    mg_uconn_t *u = r->u;
    bool progress = false;
    if (r->body_buffered && !r->req_body_done) { /* a plugin read or replaced the body */
        mg_buf_compact(u->out);
        size_t n = MG_MIN(mg_buf_len(r->body_buf) - r->body_sent, mg_buf_free(u->out));
        mg_buf_append(u->out, mg_buf_pos(r->body_buf) + r->body_sent, n);
        r->body_sent += n;
        if (r->body_sent == mg_buf_len(r->body_buf)) r->req_body_done = 1;
        return n > 0 || r->req_body_done;
    }
    if (!r->req_body_done && c->in && mg_buf_len(c->in) > 0) {
        size_t used;
        int rc = mg_http_body_feed(&r->msg, mg_buf_pos(c->in), mg_buf_len(c->in), u->out, &used);
        c->in->start += used;
        if (used) progress = true;
        if (rc == MG_DONE) {
            r->req_body_done = 1;
            progress = true;
        } else if (rc >= 400) {
            *err = (unsigned)rc;
            return false;
        }
    }
    if (r->req_body_done && !r->req_sent && r->msg.out_chunked) {
        if (mg_http_body_finish(&r->msg, u->out) == MG_OK) {
            r->msg.out_chunked = 0; /* terminator queued */
            progress = true;
        }
    }
    return progress;
}

/* Appends the body_filter's output for the client (chunk-framed when the response is
 * chunked) to r->filtered, which drain_filtered() moves into r->out as room allows. */
static int queue_filtered(mg_req_t *r, const char *data, size_t len)
{
    if (len == 0) return MG_OK;
    size_t need = len + (r->resp.out_chunked ? 32 : 0);
    mg_buf_t *f = r->filtered;
    if (f == NULL || mg_buf_free(f) + f->start < need) {
        size_t have = f ? mg_buf_len(f) : 0;
        mg_buf_t *nf = mg_buf_get_size(MG_MAX(have + need, (size_t)MG_BUF_SIZE));
        if (nf == NULL) return MG_ERROR;
        if (f) mg_buf_append(nf, mg_buf_pos(f), have);
        mg_buf_put(f);
        r->filtered = f = nf;
    }
    mg_buf_compact(f);
    if (r->resp.out_chunked) {
        char hdr[24];
        int n = snprintf(hdr, sizeof(hdr), "%zx\r\n", len);
        mg_buf_append(f, hdr, (size_t)n);
    }
    mg_buf_append(f, data, len);
    if (r->resp.out_chunked) mg_buf_append(f, "\r\n", 2);
    return MG_OK;
}

/* Moves filtered output into r->out; returns true on progress. Frees r->filtered when empty. */
static bool drain_filtered(mg_req_t *r)
{
    mg_buf_t *f = r->filtered;
    if (f == NULL) return false;
    mg_buf_compact(r->out);
    size_t n = MG_MIN(mg_buf_len(f), mg_buf_free(r->out));
    if (n) {
        mg_buf_append(r->out, mg_buf_pos(f), n);
        f->start += n;
    }
    if (mg_buf_len(f) == 0) {
        mg_buf_put(f);
        r->filtered = NULL;
    }
    return n > 0;
}

/* A response that ends with its head (no body, or an empty one) still gets one body_filter
 * call, an empty chunk with eof, as nginx's filters see the last buffer: plugins count on it
 * to finish what they started. Its output is sent when the response was re-framed as chunked
 * (an empty 200: a filter may give it a body); a response that cannot have one (HEAD, 204,
 * 304) drops it. */
static int filter_empty_body(mg_req_t *r)
{
    const char *out;
    size_t outlen;
    if (mg_lua_body_filter(r, "", 0, true, &out, &outlen) != MG_OK) {
        mg_conn_abort(r->c); /* the head is out: a failed filter cuts the response */
        return MG_ERROR;
    }
    if (!r->body_filter) {
        if (outlen) mg_log_debug("body_filter output for a response without a body dropped");
        return MG_OK;
    }
    if (queue_filtered(r, out, outlen) != MG_OK) {
        mg_conn_abort(r->c);
        return MG_ERROR;
    }
    return MG_OK;
}

/* Decodes a piece of the upstream body, runs the body_filter chain on it (and once more at
 * the end with eof set) and queues the result. Input is taken only while the previous output
 * is drained, so a slow client still stalls the upstream. Returns MG_OK on progress,
 * MG_DECLINED when nothing could be done, MG_ERROR when the request was ended. */
static int pump_body_filter(mg_req_t *r)
{
    mg_uconn_t *u = r->u;
    if (r->filtered) return MG_DECLINED;
    if (r->filter_in == NULL && (r->filter_in = mg_buf_get()) == NULL) {
        mg_conn_abort(r->c);
        return MG_ERROR;
    }
    r->filter_in->start = r->filter_in->end = 0;
    bool eof = false;
    if (mg_buf_len(u->in)) {
        size_t used;
        unsigned framed = r->resp.out_chunked;
        r->resp.out_chunked = 0; /* decode only: framing comes after the filter */
        int rc =
            mg_http_body_feed(&r->resp, mg_buf_pos(u->in), mg_buf_len(u->in), r->filter_in, &used);
        r->resp.out_chunked = framed;
        u->in->start += used;
        if (rc >= 400) {
            mg_log_err("bad response body framing from %s: %s", r->upstream_addr,
                       r->resp.error ? r->resp.error : "?");
            mg_conn_abort(r->c); /* the head is out: cut the response */
            return MG_ERROR;
        }
        if (rc == MG_DONE) eof = true;
    }
    if (!eof && u->s.eof && mg_buf_len(u->in) == 0 && r->resp.body_kind == MG_BODY_EOF) eof = true;
    if (mg_buf_len(r->filter_in) == 0 && !eof) return MG_DECLINED;
    const char *out;
    size_t outlen;
    if (mg_lua_body_filter(r, mg_buf_pos(r->filter_in), mg_buf_len(r->filter_in), eof, &out,
                           &outlen) != MG_OK) {
        mg_conn_abort(r->c); /* the head is out: a failed filter cuts the response */
        return MG_ERROR;
    }
    if (queue_filtered(r, out, outlen) != MG_OK) {
        mg_conn_abort(r->c);
        return MG_ERROR;
    }
    if (eof) r->resp_done = 1;
    return MG_OK;
}

void mg_proxy_pump(mg_req_t *r)
{
    mg_conn_t *c = r->c;
    for (int rounds = 0; rounds < 64; rounds++) {
        mg_uconn_t *u = r->u;
        bool progress = false;
        unsigned err = 0;

        /* client -> c->in */
        /* after the body, the client is still read (into the bounded buffer) until the
         * response starts, so a client that gives up is noticed and the upstream request
         * dropped instead of running to read_timeout */
        if (c->s.rready && !c->s.eof && (!r->req_body_done || r->tunnel || !r->head_sent) &&
            c->in) {
            ssize_t n = mg_sock_read(&c->s, c->in);
            if (n > 0) progress = true;
            if (c->s.eof && !r->tunnel && (!r->req_body_done || !r->head_sent)) {
                mg_log_info("client closed the connection before %s",
                            r->req_body_done ? "the response" : "sending the whole body");
                r->upstream_failed = 1;
                mg_conn_abort(c);
                return;
            }
        }
        /* c->in -> u->out */
        if (r->tunnel) {
            if (c->in && mg_buf_len(c->in) && u->out) {
                mg_buf_compact(u->out);
                size_t n = MG_MIN(mg_buf_len(c->in), mg_buf_free(u->out));
                if (n) {
                    mg_buf_append(u->out, mg_buf_pos(c->in), n);
                    c->in->start += n;
                    progress = true;
                }
            }
        } else if (pump_request_body(r, &err)) {
            progress = true;
        }
        if (err) {
            if (err == 413)
                mg_log_info("request body exceeds client_max_body_size");
            else
                mg_log_info("bad request body: %s", r->msg.error ? r->msg.error : "?");
            if (r->head_sent)
                mg_conn_abort(c);
            else
                mg_conn_respond_error(r, err, err == 413 ? r->body_limit_message : NULL);
            return;
        }
        /* u->out -> upstream */
        if (u->connected && u->s.wready && u->out && mg_buf_len(u->out)) {
            size_t before = mg_buf_len(u->out);
            if (mg_sock_write(&u->s, u->out, NULL) != MG_OK) {
                mg_proxy_upstream_error(r, errno, false);
                return;
            }
            if (mg_buf_len(u->out) != before) progress = true;
        }
        if (r->req_body_done && !r->msg.out_chunked && u->out && mg_buf_len(u->out) == 0)
            r->req_sent = 1;
        if (r->tunnel && c->s.eof && mg_buf_len(c->in) == 0 && u->out && mg_buf_len(u->out) == 0 &&
            !r->tunnel_client_done) {
            mg_sock_shutdown_write(&u->s); /* half-close travels through the tunnel */
            r->tunnel_client_done = 1;
            progress = true;
        }
        /* upstream -> u->in */
        if (u->connected && u->s.rready && !u->s.eof && !r->resp_done) {
            if (u->in == NULL && (u->in = mg_buf_get()) == NULL) {
                finish_upstream_failure(r, 502);
                return;
            }
            ssize_t n = mg_sock_read(&u->s, u->in);
            if (n > 0)
                progress = true;
            else if (n < 0 && u->s.eof && !r->resp.head_done) {
                mg_proxy_upstream_error(r, errno, false);
                return;
            }
        }
        /* u->in -> r->out */
        if (u->in && !r->resp.head_done && (mg_buf_len(u->in) || u->s.eof)) {
            if (r->resp.headers == NULL) {
                r->resp_headers = mg_pool_alloc(r->pool, sizeof(mg_header_t) * MAX_RESP_HEADERS);
                mg_http_msg_init(&r->resp, HTTP_RESPONSE, r->resp_headers, MAX_RESP_HEADERS);
            }
            int rc =
                mg_http_parse_response_head(&r->resp, mg_buf_pos(u->in), mg_buf_len(u->in),
                                            MG_BUF_SIZE / 2, r->msg.parser.method == HTTP_HEAD);
            if (rc == MG_AGAIN) {
                if (u->s.eof) {
                    if (!r->resp.head_done && mg_buf_len(u->in) == 0) {
                        mg_proxy_upstream_error(r, ECONNRESET, false);
                        return;
                    }
                    mg_log_err("upstream closed the connection inside the response head");
                    finish_upstream_failure(r, 502);
                    return;
                }
            } else if (rc != MG_OK) {
                mg_log_err("invalid response from upstream %s: %s", r->upstream_addr,
                           r->resp.error ? r->resp.error : "?");
                finish_upstream_failure(r, 502);
                return;
            } else if (r->resp.status < 200 && r->resp.status != 101) {
                /* 100 Continue / 103 Early Hints: the gateway already answered 100 itself */
                u->in->start += r->resp.head_len;
                mg_http_msg_init(&r->resp, HTTP_RESPONSE, r->resp_headers, MAX_RESP_HEADERS);
                progress = true;
                continue;
            } else if (r->resp.status == 101 && !r->msg.upgrade) {
                mg_log_err("upstream switched protocols without being asked");
                finish_upstream_failure(r, 502);
                return;
            } else {
                r->upstream_head = ev_now(mg_worker.loop);
                mg_upstream_head_received(u);
                unsigned mask = mg_lua_route_mask(mg_lua, r->route->index);
                if (mask) {
                    /* plugins may read the response head until the log phase, while the
                     * buffer it arrived in moves on: keep a copy in the request pool */
                    char *head = mg_pool_alloc(r->pool, r->resp.head_len);
                    if (head == NULL) {
                        finish_upstream_failure(r, 502);
                        return;
                    }
                    memcpy(head, mg_buf_pos(u->in), r->resp.head_len);
                    mg_http_msg_rebase(&r->resp, mg_buf_pos(u->in), head);
                    r->status = r->resp.status;
                }
                if ((mask & MG_PHASE_HEADER_FILTER) && mg_lua_header_filter(r) != MG_OK) {
                    finish_upstream_failure(r, 500);
                    return;
                }
                if (write_response_head(r) != MG_OK) {
                    mg_log_err("response head from %s does not fit", r->upstream_addr);
                    finish_upstream_failure(r, 502);
                    return;
                }
                u->in->start += r->resp.head_len;
                if (r->tunnel) {
                    r->resp_done = 0;
                } else if (r->resp.body_kind == MG_BODY_NONE || r->resp.body_done) {
                    r->resp_done = 1;
                    if ((mask & MG_PHASE_BODY_FILTER) && filter_empty_body(r) != MG_OK) return;
                }
                progress = true;
            }
        }
        if (r->resp.head_done && u->in && !r->resp_done) {
            if (r->tunnel) {
                mg_buf_compact(r->out);
                size_t n = MG_MIN(mg_buf_len(u->in), mg_buf_free(r->out));
                if (n) {
                    mg_buf_append(r->out, mg_buf_pos(u->in), n);
                    u->in->start += n;
                    progress = true;
                }
            } else if (r->body_filter) {
                int rc = pump_body_filter(r);
                if (rc == MG_ERROR) return;
                if (rc == MG_OK) progress = true;
            } else if (mg_buf_len(u->in)) {
                size_t used;
                int rc = mg_http_body_feed(&r->resp, mg_buf_pos(u->in), mg_buf_len(u->in), r->out,
                                           &used);
                u->in->start += used;
                if (used) progress = true;
                if (rc == MG_DONE) {
                    r->resp_done = 1;
                    progress = true;
                } else if (rc >= 400) {
                    mg_log_err("bad response body framing from %s: %s", r->upstream_addr,
                               r->resp.error ? r->resp.error : "?");
                    finish_upstream_failure(r, 502);
                    return;
                }
            }
            if (u->s.eof && !r->resp_done && mg_buf_len(u->in) == 0) {
                if (r->body_filter && r->resp.body_kind == MG_BODY_EOF) {
                    /* the filter's last call (eof) ends it, once its output has drained */
                } else if (r->resp.body_kind == MG_BODY_EOF) {
                    r->resp_done = 1;
                    progress = true;
                } else if (!r->tunnel) {
                    mg_log_err("upstream %s closed the connection mid-body", r->upstream_addr);
                    finish_upstream_failure(r, 502);
                    return;
                }
            }
        }
        if (r->body_filter && drain_filtered(r)) progress = true;
        if (r->resp_done && r->resp.out_chunked && !r->tunnel && !r->filtered) {
            if (mg_http_body_finish(&r->resp, r->out) == MG_OK) {
                r->resp.out_chunked = 0;
                progress = true;
            }
        }
        /* r->out -> client */
        if (r->out && mg_buf_len(r->out) && c->s.wready) {
            size_t before = mg_buf_len(r->out);
            if (mg_sock_write(&c->s, r->out, &r->bytes_sent) != MG_OK) {
                mg_log_info("client closed the connection while receiving the response");
                mg_conn_abort(c);
                return;
            }
            if (mg_buf_len(r->out) != before) progress = true;
        }
        /* tunnel: a side that finished sending half-closes the other */
        if (r->tunnel) {
            if (u->s.eof && mg_buf_len(u->in) == 0 && mg_buf_len(r->out) == 0 && !r->resp_done) {
                mg_sock_shutdown_write(&c->s);
                r->resp_done = 1;
            }
            if (r->resp_done && r->tunnel_client_done) {
                r->keepalive = 0;
                mg_conn_request_done(r);
                return;
            }
        } else if (r->resp_done && !r->resp.out_chunked && !r->filtered &&
                   mg_buf_len(r->out) == 0) {
            if (!r->req_body_done) r->keepalive = 0; /* unread body: the connection must go */
            mg_conn_request_done(r);
            return;
        }
        if (!progress) {
            mg_conn_update(c);
            if (r->u) mg_upstream_update(r->u);
            return;
        }
    }
    /* still busy after a fair share of work: yield to other connections, continue soon */
    mg_conn_update(c);
    if (r->u) mg_upstream_update(r->u);
    ev_feed_event(mg_worker.loop, &c->s.io, EV_CUSTOM); /* after: a stop clears pending events */
}
