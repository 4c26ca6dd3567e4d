/*
 * mg_conn.c — client connections: accept, read and parse the request head under its limits
 * and total deadline, route it, hand it to the proxy, then log the request and either keep
 * the connection (pipelined bytes are served next, in order) or close it. An idle keep-alive
 * connection holds no buffer and no request: only this struct. Error answers that close the
 * connection use a lingering close, so the client reads the answer instead of a reset.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "mg_guard.h"
#include "mg_log.h"
#include "mg_lua.h"
#include "mg_out.h"
#include "mg_request.h"
#include "mg_tls.h"

#define REQ_POOL_SIZE 16384
#define REQ_POOL_FREE_MAX 256
#define LINGER_TIMEOUT 2.0

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void conn_close(mg_conn_t *c);
static void ready_unlink(mg_conn_t *c);
static void ready_queue(mg_conn_t *c, int revents, bool at_end);
static void conn_handshake(mg_conn_t *c);
static void conn_on_head_events(mg_conn_t *c);
static void conn_dispatch(mg_req_t *r);
static void conn_linger(mg_conn_t *c);
static void conn_write_plain(mg_conn_t *c);
static void conn_watch_while_waiting(mg_conn_t *c);
static void req_free(mg_req_t *r);
static void access_log(mg_req_t *r);

static mg_pool_t *free_pools[REQ_POOL_FREE_MAX];
static size_t nfree_pools;

static mg_pool_t *pool_get(void)
{
    return nfree_pools ? free_pools[--nfree_pools] : mg_pool_create(REQ_POOL_SIZE);
}

static void pool_put(mg_pool_t *p)
{
    if (nfree_pools < REQ_POOL_FREE_MAX) {
        mg_pool_reset(p);
        free_pools[nfree_pools++] = p;
    } else {
        mg_pool_destroy(p);
    }
}

void mg_conn_accept(mg_listener_t *ls, int fd, const struct sockaddr *sa, uint32_t guard_slot)
{
    mg_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        if (guard_slot != MG_GUARD_NONE) {
            const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
            const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
            mg_guard_release(guard_slot, sa->sa_family,
                             sa->sa_family == AF_INET ? (const uint8_t *)&in->sin_addr
                                                      : (const uint8_t *)&in6->sin6_addr);
        }
        close(fd);
        return;
    }
    c->s.fd = fd;
    c->ls = ls;
    c->guard_slot = guard_slot;
    c->peer_family = (uint8_t)sa->sa_family;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        memcpy(c->peer_addr, &in->sin_addr, 4);
        c->peer_port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        memcpy(c->peer_addr, &in6->sin6_addr, 16);
        c->peer_port = ntohs(in6->sin6_port);
    }
    c->s.wready = 1;
    c->state = MG_CONN_IDLE;
    c->s.last_io = ev_now(mg_worker.loop);
    ev_io_init(&c->s.io, conn_io_cb, fd, EV_READ);
    ev_init(&c->s.timer, conn_timer_cb);
    c->next = mg_worker.conns;
    if (c->next) c->next->prev = c;
    mg_worker.conns = c;
    mg_worker.nconns++;
    /* data usually arrives with or right after the handshake: try reading at once */
    c->s.rready = 1;
    if (ls->conf->ssl) {
        c->state = MG_CONN_TLS;
        if (mg_tls_accept(mg_worker.cfg->tls, &c->s) != MG_OK) {
            conn_close(c);
            return;
        }
    }
    /* served after the connections already waiting (it joins the end), so a burst of new
     * connections (each a TLS handshake, perhaps) does not hold up the requests in flight */
    ready_queue(c, EV_READ, true);
}

/* Advances a TLS handshake; once done the connection waits for its first request head. */
static void conn_handshake(mg_conn_t *c)
{
    if (c->s.paused) { /* the certificate phase waits: only notice a client that leaves */
        char b;
        ssize_t n = recv(c->s.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            mg_log_info("client closed the connection during the certificate phase");
            conn_close(c);
            return;
        }
        c->s.rready = n > 0; /* what it sent early stays in the socket: stop watching */
        mg_conn_update(c);
        return;
    }
    int rc = mg_tls_handshake(&c->s);
    if (rc == MG_AGAIN) {
        mg_conn_update(c);
        return;
    }
    if (rc != MG_OK) {
        conn_close(c);
        return;
    }
    c->state = MG_CONN_IDLE;
    c->s.last_io = ev_now(mg_worker.loop); /* client_header_timeout starts now */
    c->s.rready = 1; /* the request may have come with the last handshake flight */
    conn_on_head_events(c);
}

/* IPv4 dotted quad without inet_ntop's printf machinery: this runs for every request. */
static size_t format_ipv4(const uint8_t *a, char *buf)
{
    char *p = buf;
    for (int i = 0; i < 4; i++) {
        unsigned v = a[i];
        if (v >= 100) *p++ = (char)('0' + v / 100);
        if (v >= 10) *p++ = (char)('0' + v / 10 % 10);
        *p++ = (char)('0' + v % 10);
        if (i < 3) *p++ = '.';
    }
    *p = '\0';
    return (size_t)(p - buf);
}

size_t mg_conn_client_ip(const mg_conn_t *c, char *buf, size_t len)
{
    if (c->peer_family == AF_INET && len >= 16) return format_ipv4(c->peer_addr, buf);
    if (c->peer_family == AF_INET6) {
        const struct in6_addr *a = (const struct in6_addr *)c->peer_addr;
        if (IN6_IS_ADDR_V4MAPPED(a))
            inet_ntop(AF_INET, c->peer_addr + 12, buf, (socklen_t)len);
        else
            inet_ntop(AF_INET6, c->peer_addr, buf, (socklen_t)len);
    } else {
        inet_ntop(AF_INET, c->peer_addr, buf, (socklen_t)len);
    }
    return strlen(buf);
}

void mg_conn_update(mg_conn_t *c)
{
    const mg_limits_t *lim = &mg_worker.cfg->limits;
    ev_tstamp ms = 0.001;
    mg_req_t *r = c->r;
    int ev = 0;
    ev_tstamp deadline = 0;

    switch (c->state) {
    case MG_CONN_IDLE: {
        /* a fresh connection must start its head within client_header_timeout; between
         * requests the keep-alive timeout applies, shortened while draining */
        unsigned idle = c->requests == 0 ? lim->client_header_timeout : lim->keepalive_timeout;
        if (mg_worker.draining) idle = MG_MIN(idle, 1000);
        ev = EV_READ;
        deadline = c->s.last_io + idle * ms;
        break;
    }
    case MG_CONN_HEAD:
        ev = EV_READ;
        deadline = r->start + lim->client_header_timeout * ms;
        break;
    case MG_CONN_LINGER:
        ev = EV_READ;
        deadline = c->s.deadline;
        break;
    case MG_CONN_TLS:    /* last_io is still the accept time: the handshake moves no data */
        if (c->s.paused) /* a certificate handler waits: watched for the client leaving */
            ev = c->s.rready ? 0 : EV_READ;
        else
            ev = (c->s.rready ? 0 : EV_READ) | (c->s.wready ? 0 : EV_WRITE);
        deadline = c->s.last_io + lim->tls_handshake_timeout * ms;
        break;
    case MG_CONN_ACTIVE: {
        bool want_write = r->out && mg_buf_len(r->out) > 0;
        bool want_read = !c->s.eof && c->in && mg_buf_free(c->in) + c->in->start > 0 &&
                         ((!r->req_body_done && !r->local_response) || r->tunnel ||
                          (!r->head_sent && !r->local_response));
        if (want_write && !c->s.wready) ev |= EV_WRITE;
        if (want_read && !c->s.rready) ev |= EV_READ;
        if (want_write)
            deadline = c->s.last_io + lim->send_timeout * ms;
        else if (r->tunnel)
            deadline = c->s.last_io + r->service->read_timeout * ms;
        else if (want_read && !r->req_body_done && (!r->lua_waiting || r->body_reading))
            deadline = c->s.last_io + lim->client_body_timeout * ms;
        break;
    }
    }
    mg_sock_set_events(&c->s, ev);
    mg_sock_set_deadline(&c->s, deadline);
}

static mg_req_t *req_new(mg_conn_t *c)
{
    const mg_limits_t *lim = &mg_worker.cfg->limits;
    mg_pool_t *p = pool_get();
    if (p == NULL) return NULL;
    mg_req_t *r = mg_pool_calloc(p, sizeof(*r));
    mg_header_t *h = mg_pool_alloc(p, sizeof(mg_header_t) * (lim->max_headers + 1));
    if (r == NULL || h == NULL) {
        pool_put(p);
        return NULL;
    }
    r->pool = p;
    r->c = c;
    r->start = ev_now(mg_worker.loop);
    mg_http_msg_init(&r->msg, HTTP_REQUEST, h, lim->max_headers + 1);
    r->msg.body_limit = lim->client_max_body_size;
    return r;
}

static void req_free(mg_req_t *r)
{
    if (r->dns_waiting) mg_proxy_dns_cancel(r); /* the client left while a name resolved */
    mg_lua_request_end(r); /* the log phase, while the request is still whole */
    mg_buf_put(r->filter_in);
    mg_buf_put(r->filtered);
    mg_buf_put(r->body_buf);
    free(r->filter_chunk);
    if (r->u) {
        mg_upstream_release(r->u, false);
        r->u = NULL;
    }
    mg_buf_put(r->out);
    r->out = NULL;
    pool_put(r->pool);
}

static void conn_close(mg_conn_t *c)
{
    if (c->r) {
        req_free(c->r);
        c->r = NULL;
    }
    ev_io_stop(mg_worker.loop, &c->s.io);
    ev_timer_stop(mg_worker.loop, &c->s.timer);
    if (c->ready_revents) ready_unlink(c); /* queued events die with it */
    /* close_notify after a completed handshake, unless the peer is gone */
    if (c->s.ssl) mg_tls_close(&c->s, c->state != MG_CONN_TLS && !c->s.eof);
    close(c->s.fd);
    if (c->guard_slot != MG_GUARD_NONE)
        mg_guard_release(c->guard_slot, c->peer_family, c->peer_addr);
    mg_buf_put(c->in);
    if (c->prev)
        c->prev->next = c->next;
    else
        mg_worker.conns = c->next;
    if (c->next) c->next->prev = c->prev;
    mg_worker.nconns--;
    free(c);
    if (mg_worker.draining && mg_worker.nconns == 0) ev_break(mg_worker.loop, EVBREAK_ALL);
}

void mg_conn_abort(mg_conn_t *c)
{
    if (c->r) {
        c->r->client_aborted = 1;
        access_log(c->r);
    }
    conn_close(c);
}

/* ---- serving connections in the order their events came ------------------------------------
 * libev invokes the watchers that became ready in one poll last-first, so the connection epoll
 * reported first (it has waited longest) was served last; under load that is what the slowest
 * requests were made of (p99), most visibly when each costs a lot (a full TLS handshake, a JWT
 * signature). Client events are therefore queued as libev reports them and served afterwards,
 * in epoll's order, by a watcher of the lowest priority that is fed when the queue fills (so
 * it runs in the same turn of the loop, after the batch, even for events fed meanwhile). */

static void ready_unlink(mg_conn_t *c)
{
    if (c->ready_prev)
        c->ready_prev->ready_next = c->ready_next;
    else
        mg_worker.ready_head = c->ready_next;
    if (c->ready_next)
        c->ready_next->ready_prev = c->ready_prev;
    else
        mg_worker.ready_tail = c->ready_prev;
    c->ready_prev = c->ready_next = NULL;
    c->ready_revents = 0;
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    mg_conn_t *c = MG_CONTAINER_OF(w, mg_conn_t, s.io);
    if (c->ready_revents) { /* already queued: served once, with both events */
        c->ready_revents |= revents;
        return;
    }
    /* libev calls back last-first: each one goes in front, so the list reads epoll's order */
    ready_queue(c, revents, false);
}

/* Queues c in front or at the end; the first in an empty queue schedules the drain. */
static void ready_queue(mg_conn_t *c, int revents, bool at_end)
{
    c->ready_revents = revents;
    c->ready_prev = at_end ? mg_worker.ready_tail : NULL;
    c->ready_next = at_end ? NULL : mg_worker.ready_head;
    if (c->ready_prev)
        c->ready_prev->ready_next = c;
    else
        mg_worker.ready_head = c;
    if (c->ready_next)
        c->ready_next->ready_prev = c;
    else
        mg_worker.ready_tail = c;
    if (!c->ready_prev && !c->ready_next)
        ev_feed_event(mg_worker.loop, &mg_worker.ready_drain, EV_CUSTOM);
}

static void conn_serve_events(mg_conn_t *c, int revents);

static void ready_drain_cb(struct ev_loop *loop, ev_check *w, int revents)
{
    mg_conn_t *c;
    while ((c = mg_worker.ready_head) != NULL) {
        int ev = c->ready_revents;
        ready_unlink(c);
        conn_serve_events(c, ev);
    }
}

void mg_conn_init_worker(void)
{
    ev_check_init(&mg_worker.ready_drain, ready_drain_cb);
    ev_set_priority(&mg_worker.ready_drain, EV_MINPRI);
}

static void conn_serve_events(mg_conn_t *c, int revents)
{
    mg_sock_ready(&c->s, revents);
    switch (c->state) {
    case MG_CONN_TLS:
        conn_handshake(c);
        break;
    case MG_CONN_IDLE:
    case MG_CONN_HEAD:
        conn_on_head_events(c);
        break;
    case MG_CONN_ACTIVE:
        if (c->r->local_response)
            conn_write_plain(c);
        else if (c->r->lua_waiting || c->r->dns_waiting)
            conn_watch_while_waiting(c);
        else
            mg_proxy_pump(c->r);
        break;
    case MG_CONN_LINGER:
        conn_linger(c);
        break;
    }
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    mg_conn_t *c = MG_CONTAINER_OF(w, mg_conn_t, s.timer);
    c->s.deadline = 0;
    switch (c->state) {
    case MG_CONN_TLS:
        mg_log_info("client timed out in the TLS handshake");
        conn_close(c);
        break;
    case MG_CONN_IDLE:
    case MG_CONN_LINGER:
        conn_close(c);
        break;
    case MG_CONN_HEAD:
        mg_log_info("client timed out sending the request head");
        mg_conn_respond_error(c->r, 408, NULL);
        break;
    case MG_CONN_ACTIVE: {
        mg_req_t *r = c->r;
        if (!r->head_sent && !r->req_body_done && !r->tunnel && !r->local_response) {
            mg_log_info("client timed out sending the request body");
            mg_conn_respond_error(r, 408, NULL);
        } else {
            mg_log_info("client timed out (send_timeout or idle tunnel)");
            if (r->status == 0) r->status = 408;
            mg_conn_abort(c);
        }
        break;
    }
    }
}

/* While a plugin waits (sleep, cosocket), the client is only read to notice it leaving;
 * what it sends meanwhile stays buffered (bounded by c->in). */
static void conn_watch_while_waiting(mg_conn_t *c)
{
    mg_req_t *r = c->r;
    if (c->s.rready && !c->s.eof && mg_sock_read(&c->s, c->in) <= 0 && c->s.eof) {
        mg_log_info("client closed the connection while a plugin was waiting");
        mg_conn_abort(c);
        return;
    }
    if (r->body_reading) { /* the plugin waits for the body: feed what arrived */
        int rc = mg_conn_read_body(r);
        if (rc == MG_OK || rc == MG_DECLINED) { /* the plugin learns which on resuming */
            r->body_reading = 0;
            mg_lua_resume(r);
            return;
        }
        if (rc >= 400) {
            mg_conn_respond_error(r, (unsigned)rc, rc == 413 ? r->body_limit_message : NULL);
            return;
        }
    }
    mg_conn_update(c);
}

int mg_conn_read_body(mg_req_t *r)
{
    mg_conn_t *c = r->c;
    if (r->body_buffered) return MG_OK;
    if (r->body_failed) return MG_DECLINED;
    size_t cap = mg_worker.cfg->limits.client_body_buffer_size;
    if (r->msg.body_kind == MG_BODY_LENGTH && r->msg.content_length > cap) return MG_DECLINED;
    if (r->body_buf == NULL) {
        size_t want = r->msg.body_kind == MG_BODY_LENGTH ? (size_t)r->msg.content_length : 4096;
        if ((r->body_buf = mg_buf_get_size(MG_MAX(want, (size_t)1))) == NULL) return 500;
        r->body_buf->start = r->body_buf->end = 0;
    }
    for (;;) {
        if (r->msg.body_kind == MG_BODY_NONE || r->msg.body_done) break;
        if (mg_buf_free(r->body_buf) < 64) { /* chunked: grow, up to the cap */
            size_t size = r->body_buf->size * 2;
            if (r->body_buf->size >= cap) {
                r->body_failed = 1; /* part of it is consumed: it cannot be proxied either */
                return MG_DECLINED;
            }
            mg_buf_t *big = mg_buf_get_size(MG_MIN(size, cap + 64));
            if (big == NULL) return 500;
            mg_buf_append(big, mg_buf_pos(r->body_buf), mg_buf_len(r->body_buf));
            mg_buf_put(r->body_buf);
            r->body_buf = big;
        }
        size_t used = 0;
        int rc = mg_buf_len(c->in) ? mg_http_body_feed(&r->msg, mg_buf_pos(c->in),
                                                       mg_buf_len(c->in), r->body_buf, &used)
                                   : MG_OK;
        c->in->start += used;
        if (mg_buf_len(r->body_buf) > cap) {
            r->body_failed = 1;
            return MG_DECLINED;
        }
        if (rc == MG_DONE) break;
        if (rc >= 400) return rc;
        if (used == 0) { /* everything buffered is consumed: read, or wait for more */
            if (c->s.rready && !c->s.eof && mg_sock_read(&c->s, c->in) > 0) continue;
            if (c->s.eof) return 400;
            if (r->msg.expect_continue) { /* the client waits for our go-ahead */
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                if (c->s.ssl) {
                    /* a TLS record cannot be half-sent and forgotten: if even this does not
                     * fit, the connection is given up */
                    ERR_clear_error();
                    if (SSL_write(c->s.ssl, cont, sizeof(cont) - 1) != sizeof(cont) - 1) {
                        ERR_clear_error();
                        c->s.eof = 1;
                        return 400;
                    }
                } else {
                    ssize_t w = send(c->s.fd, cont, sizeof(cont) - 1, MSG_NOSIGNAL);
                    (void)w; /* a client that cannot take 25 bytes now will time out */
                }
                r->msg.expect_continue = 0;
            }
            r->body_reading = 1;
            return MG_AGAIN;
        }
    }
    r->body_reading = 0;
    r->body_buffered = 1;
    r->msg.body_done = 1;
    return MG_OK;
}

/* Reads and parses the head of the next request; dispatches it when complete. */
static void conn_on_head_events(mg_conn_t *c)
{
    for (;;) {
        if (c->in == NULL && (c->in = mg_buf_get()) == NULL) {
            conn_close(c);
            return;
        }
        /* parse what is buffered first (pipelined requests), read when that is not enough */
        bool need_read = mg_buf_len(c->in) == 0 ||
                         (c->state == MG_CONN_HEAD && c->r->msg.scan_pos >= mg_buf_len(c->in));
        if (need_read) {
            if (!c->s.rready) break;
            ssize_t n = mg_sock_read(&c->s, c->in);
            if (n == 0 || (n < 0 && c->s.eof)) {
                conn_close(c); /* the client went away between or inside a head */
                return;
            }
            if (n < 0) break;
        }
        if (c->state == MG_CONN_IDLE) {
            c->r = req_new(c);
            if (c->r == NULL) {
                conn_close(c);
                return;
            }
            c->state = MG_CONN_HEAD;
        }
        mg_req_t *r = c->r;
        int rc = mg_http_parse_request_head(&r->msg, mg_buf_pos(c->in), mg_buf_len(c->in),
                                            &mg_worker.cfg->limits);
        if (rc == MG_AGAIN) {
            mg_buf_compact(c->in);
            if (mg_buf_free(c->in) == 0) {
                /* the head outgrew a standard buffer but is within max_headers_size */
                mg_buf_t *big = mg_buf_get_size(mg_worker.cfg->limits.max_headers_size + 1024);
                if (big == NULL) {
                    conn_close(c);
                    return;
                }
                mg_buf_append(big, mg_buf_pos(c->in), mg_buf_len(c->in));
                mg_buf_put(c->in);
                c->in = big;
            }
            continue;
        }
        if (rc != MG_OK) {
            mg_log_info("bad request from client: %s (%d)", r->msg.error ? r->msg.error : "?", rc);
            mg_conn_respond_error(r, (unsigned)rc, NULL);
            return;
        }
        /* the head moves into the request pool: the read buffer is reused for the body */
        char *head = mg_pool_alloc(r->pool, r->msg.head_len);
        if (head == NULL) {
            conn_close(c);
            return;
        }
        memcpy(head, mg_buf_pos(c->in), r->msg.head_len);
        mg_http_msg_rebase(&r->msg, mg_buf_pos(c->in), head);
        c->in->start += r->msg.head_len;
        c->state = MG_CONN_ACTIVE;
        c->requests++;
        conn_dispatch(r);
        return;
    }
    if (c->state == MG_CONN_IDLE && c->in && mg_buf_len(c->in) == 0) {
        mg_buf_put(c->in); /* idle keep-alive connections hold no buffer */
        c->in = NULL;
    }
    mg_conn_update(c);
}

static void make_request_id(mg_req_t *r)
{
    const char *hn = mg_worker.cfg->request_id_header;
    if (hn == NULL) return;
    const mg_header_t *h = mg_http_header(&r->msg, (mg_str_t){strlen(hn), hn});
    if (h && h->value.len > 0 && h->value.len <= 200) {
        r->rid = h->value; /* the client's own correlation id is kept */
        return;
    }
    /* splitmix64 over a per-worker random seed and a counter: unique and cheap */
    static const char hex[] = "0123456789abcdef";
    uint64_t x = mg_worker.rid_seed + (++mg_worker.rid_counter) * 2 * 0x9E3779B97F4A7C15ULL;
    for (int half = 0; half < 2; half++) {
        uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z ^= z >> 31;
        for (int i = 0; i < 16; i++)
            r->request_id[half * 16 + i] = hex[(z >> (i * 4)) & 15];
    }
    r->request_id[32] = '\0';
    r->rid = (mg_str_t){32, r->request_id};
}

static size_t router_get_header(void *ud, mg_str_t name, mg_str_t *out, size_t max)
{
    const mg_http_msg_t *m = ud;
    size_t n = 0;
    for (unsigned i = 0; i < m->nheaders; i++) {
        if (!mg_str_caseeq(m->headers[i].name, name)) continue;
        if (n < max) out[n] = m->headers[i].value;
        n++;
    }
    return n;
}

/* The request path after the head, in stages that a suspended Lua phase resumes into:
 * rewrite (global plugins, before routing) -> route -> access (the route's plugins) ->
 * proxy. A stage without plugins costs a mask test, nothing more. */
static void stage_route(mg_req_t *r);
static void stage_access(mg_req_t *r);

/* 429 from the per-address request guard: the gateway's JSON error, with Retry-After. */
static void respond_too_many(mg_req_t *r, unsigned retry_after)
{
    char body[MG_HTTP_ERROR_BODY_MAX], headers[128];
    size_t blen = mg_http_error_body(body, 429, "Too Many Requests");
    int hlen = snprintf(headers, sizeof(headers),
                        "Content-Type: application/json; charset=utf-8\r\nRetry-After: %u\r\n",
                        retry_after);
    if (mg_conn_stage_response(r, 429, body, blen, headers, (size_t)hlen) != MG_OK) {
        conn_close(r->c);
        return;
    }
    conn_write_plain(r->c);
}

static void conn_dispatch(mg_req_t *r)
{
    mg_conn_t *c = r->c;
    make_request_id(r);
    if (MG_UNLIKELY(mg_guard.requests) && c->guard_slot != MG_GUARD_NONE) {
        /* before routing and before any Lua: a flood costs a table lookup and an answer */
        unsigned retry_after;
        if (mg_guard_request(c->guard_slot, c->peer_family, c->peer_addr, &retry_after) != MG_OK) {
            respond_too_many(r, retry_after);
            return;
        }
    }
    if (MG_UNLIKELY(c->s.ssl != NULL)) { /* ssl_verify_client on: nginx's 400, before Lua */
        const char *refused = mg_tls_client_refused(mg_worker.cfg->tls, &c->s);
        if (refused) {
            mg_conn_respond_error(r, 400, refused);
            return;
        }
    }
    if (mg_lua_global_mask(mg_lua) & MG_PHASE_REWRITE) {
        r->lua_stage = MG_LUA_STAGE_REWRITE;
        int rc = mg_lua_run_yieldable(r, MG_PHASE_REWRITE, -1);
        if (rc != MG_OK) {
            mg_conn_lua_continue(r, rc);
            return;
        }
    }
    stage_route(r);
}

/* Plain http on an https-only route: Kong's 426 (with Upgrade, RFC 9110 §15.5.22) or a
 * redirect to the same host (port dropped, as Kong's forwarded_host) and target. */
static void respond_https_required(mg_req_t *r)
{
    static const unsigned codes[] = {426, 301, 302, 307, 308};
    unsigned code = codes[r->route->https_redirect < 5 ? r->route->https_redirect : 0];
    if (code == 426) {
        static const char h[] = "Content-Type: application/json; charset=utf-8\r\n"
                                "Connection: Upgrade\r\nUpgrade: TLS/1.2, HTTP/1.1\r\n";
        char body[MG_HTTP_ERROR_BODY_MAX];
        size_t blen = mg_http_error_body(body, 426, "Please use HTTPS protocol");
        if (mg_conn_stage_response(r, 426, body, blen, h, sizeof(h) - 1) != MG_OK) {
            conn_close(r->c);
            return;
        }
        conn_write_plain(r->c);
        return;
    }
    mg_str_t host = r->msg.host;
    size_t hl = 0;
    if (host.len && host.data[0] == '[') { /* [v6]:port */
        while (hl < host.len && host.data[hl] != ']')
            hl++;
        hl += hl < host.len;
    } else {
        while (hl < host.len && host.data[hl] != ':')
            hl++;
    }
    char loc[8192];
    int n = snprintf(loc, sizeof(loc), "Location: https://%.*s%.*s\r\n", (int)hl, host.data,
                     (int)r->msg.target.len, r->msg.target.data);
    if (n < 0 || (size_t)n >= sizeof(loc) || hl == 0) {
        mg_conn_respond_error(r, 426, "Please use HTTPS protocol");
        return;
    }
    if (mg_conn_stage_response(r, code, "", 0, loc, (size_t)n) != MG_OK) {
        conn_close(r->c);
        return;
    }
    conn_write_plain(r->c);
}

static void stage_route(mg_req_t *r)
{
    mg_conn_t *c = r->c;
    mg_router_req_t q = {
        .method = r->msg.method,
        .host = r->msg.host,
        .path = r->msg.path,
        .https = c->ls->conf->ssl,
        .sni = mg_tls_sni(&c->s),
        .get_header = router_get_header,
        .ud = &r->msg,
    };
    mg_router_match_t m;
    if (mg_router_match(mg_worker.router, &q, &m) != MG_OK) {
        mg_conn_respond_error(r, 404, "no Route matched with those values");
        return;
    }
    r->route = m.route;
    r->service = m.route->service;
    r->prefix_len = m.path_prefix_len;
    r->route_regex = m.regex;

    /* Kong's rule: only a route limited to https turns plain http away (426, or the
     * redirect its https_redirect_status_code asks for); an http-only route over TLS is
     * served */
    bool has_http = r->route->nprotocols == 0, has_https = has_http;
    for (size_t i = 0; i < r->route->nprotocols; i++) {
        if (strcmp(r->route->protocols[i], "http") == 0) has_http = true;
        if (strcmp(r->route->protocols[i], "https") == 0) has_https = true;
    }
    if (!q.https && has_https && !has_http) {
        respond_https_required(r);
        return;
    }
    const mg_limits_t *lim = &mg_worker.cfg->limits;
    if (r->msg.body_kind == MG_BODY_LENGTH && lim->client_max_body_size &&
        r->msg.content_length > lim->client_max_body_size) {
        /* decided from Content-Length before reading a byte of the body */
        mg_conn_respond_error(r, 413, NULL);
        return;
    }
    stage_access(r);
}

static void stage_access(mg_req_t *r)
{
    if (mg_lua_route_mask(mg_lua, r->route->index) & MG_PHASE_ACCESS) {
        r->lua_stage = MG_LUA_STAGE_ACCESS;
        int rc = mg_lua_run_yieldable(r, MG_PHASE_ACCESS, (int)r->route->index);
        if (rc != MG_OK) {
            mg_conn_lua_continue(r, rc);
            return;
        }
    }
    mg_proxy_start(r);
}

void mg_conn_lua_continue(mg_req_t *r, int rc)
{
    mg_conn_t *c = r->c;
    switch (rc) {
    case MG_AGAIN: /* suspended: the client side only watches for the client leaving */
        c->state = MG_CONN_ACTIVE;
        mg_conn_update(c);
        return;
    case MG_DONE: /* a plugin answered (moongate.response.exit): r->out holds it */
        conn_write_plain(c);
        return;
    case MG_ERROR:
        mg_conn_respond_error(r, 500, NULL);
        return;
    default:
        break;
    }
    if (r->lua_stage == MG_LUA_STAGE_REWRITE)
        stage_route(r);
    else
        mg_proxy_start(r);
}

/* Writes a local response into a new r->out: status, the standard headers, `headers` (whole
 * lines), then what plugins set with moongate.response.set_header/add_header, then the body.
 * r->keepalive decides Connection: close. */
static int write_local_response(mg_req_t *r, unsigned status, const char *body, size_t blen,
                                const char *headers, size_t hlen)
{
    size_t ops = 0;
    for (mg_hdr_op_t *o = r->resp_ops; o; o = o->next)
        ops += o->name.len + o->value.len + 4;
    mg_buf_put(r->out);
    r->out = mg_buf_get_size(blen + hlen + ops + 512);
    if (r->out == NULL) return MG_ERROR;
    r->status = status;
    r->local_response = 1;
    r->head_sent = 1;
    const char *rid_name = mg_worker.cfg->request_id_header;
    /* 204 and 304 have no body, and a 204 must not even say Content-Length (RFC 9110 8.6) */
    bool no_body = status == 204 || status == 304;
    char clen[48] = "";
    if (!no_body) snprintf(clen, sizeof(clen), "Content-Length: %zu\r\n", blen);
    char head[512];
    int n =
        snprintf(head, sizeof(head),
                 "HTTP/1.1 %u %s\r\n%sServer: " MG_SERVER_NAME "\r\nDate: %s\r\n%s%s%.*s%s%s",
                 status, mg_http_reason(status), clen, mg_http_date(),
                 rid_name && r->rid.len ? rid_name : "", rid_name && r->rid.len ? ": " : "",
                 rid_name ? (int)r->rid.len : 0, r->rid.data ? r->rid.data : "",
                 rid_name && r->rid.len ? "\r\n" : "", r->keepalive ? "" : "Connection: close\r\n");
    if (n < 0 || (size_t)n >= sizeof(head)) return MG_ERROR;
    mg_buf_append(r->out, head, (size_t)n);
    mg_buf_append(r->out, headers, hlen);
    for (mg_hdr_op_t *o = r->resp_ops; o; o = o->next) {
        if (o->op == 2) continue;
        bool superseded = false; /* a later set or clear of the same name wins */
        for (mg_hdr_op_t *later = o->next; later; later = later->next)
            if (later->op != 1 && mg_str_caseeq(later->name, o->name)) superseded = true;
        if (superseded) continue;
        mg_buf_append(r->out, o->name.data, o->name.len);
        mg_buf_append(r->out, ": ", 2);
        mg_buf_append(r->out, o->value.data, o->value.len);
        mg_buf_append(r->out, "\r\n", 2);
    }
    mg_buf_append(r->out, "\r\n", 2);
    if (r->msg.parser.method != HTTP_HEAD && !no_body) mg_buf_append(r->out, body, blen);
    return MG_OK;
}

int mg_conn_stage_response(mg_req_t *r, unsigned status, const char *body, size_t blen,
                           const char *headers, size_t hlen)
{
    bool body_read = r->msg.body_kind == MG_BODY_NONE || r->msg.body_done || r->req_body_done;
    r->keepalive = body_read && mg_conn_may_keepalive(r);
    return write_local_response(r, status, body, blen, headers, hlen);
}

void mg_conn_respond_error(mg_req_t *r, unsigned status, const char *message)
{
    mg_conn_t *c = r->c;
    if (r->head_sent) { /* too late for an error page: cut the response short */
        mg_conn_abort(c);
        return;
    }
    if (r->u) {
        mg_upstream_release(r->u, false);
        r->u = NULL;
    }
    r->status = status;
    r->local_response = 1;
    c->state = MG_CONN_ACTIVE;
    /* the connection survives only when the request was read completely */
    bool body_read = r->msg.head_done &&
                     (r->msg.body_kind == MG_BODY_NONE || r->msg.body_done || r->req_body_done);
    r->keepalive =
        body_read && status < 500 && status != 408 && status != 400 && mg_conn_may_keepalive(r);
    if (r->resp_ops) {
        /* plugins already set response headers (CORS, say): the error page carries them, as
         * an exit would, so a browser can read a 502 as well as a 200 */
        static const char ctype[] = "Content-Type: application/json; charset=utf-8\r\n";
        char body[MG_HTTP_ERROR_BODY_MAX];
        size_t blen = mg_http_error_body(body, status, message);
        if (write_local_response(r, status, body, blen, ctype, sizeof(ctype) - 1) != MG_OK) {
            conn_close(c);
            return;
        }
        conn_write_plain(c);
        return;
    }
    if (r->out == NULL && (r->out = mg_buf_get()) == NULL) {
        conn_close(c);
        return;
    }
    r->out->start = r->out->end = 0;
    if (mg_http_write_error(r->out, status, message, mg_worker.cfg->request_id_header, r->rid,
                            !r->keepalive) != MG_OK) {
        conn_close(c);
        return;
    }
    r->head_sent = 1;
    conn_write_plain(c);
}

/* Writes r->out for a local response; ends the request when it is all sent. */
static void conn_write_plain(mg_conn_t *c)
{
    mg_req_t *r = c->r;
    if (mg_sock_write(&c->s, r->out, &r->bytes_sent) != MG_OK) {
        mg_conn_abort(c);
        return;
    }
    if (mg_buf_len(r->out) > 0) {
        mg_conn_update(c);
        return;
    }
    mg_conn_request_done(r);
}

static void access_log(mg_req_t *r)
{
    if (!mg_access_log_enabled() || r->msg.method.len == 0) return;
    char *p = mg_access_log_reserve(4096);
    if (p == NULL) return;
    static time_t cached_sec;
    static char cached_time[32];
    ev_tstamp now = ev_time();
    time_t sec = (time_t)now;
    if (sec != cached_sec) {
        struct tm tm;
        gmtime_r(&sec, &tm);
        strftime(cached_time, sizeof(cached_time), "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = sec;
    }
    /* written without printf: the line costs a few hundred instructions, not thousands */
    mg_out_t o = {p, p + 4096, false};
    char ip[64];
    size_t iplen = mg_conn_client_ip(r->c, ip, sizeof(ip));
    char esc[1024];
    MG_OUT_LIT(&o, "{\"time\":\"");
    mg_out_cstr(&o, cached_time);
    int ms = (int)((now - (double)sec) * 1000) % 1000;
    char msbuf[5] = {'.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10),
                     'Z'};
    mg_out_put(&o, msbuf, sizeof(msbuf));
    MG_OUT_LIT(&o, "\",\"client_ip\":\"");
    mg_out_put(&o, ip, iplen);
    MG_OUT_LIT(&o, "\",\"method\":\"");
    MG_OUT_STR(&o, r->msg.method);
    MG_OUT_LIT(&o, "\",\"path\":\"");
    mg_out_put(&o, esc, mg_json_escape(esc, sizeof(esc), r->msg.path.data, r->msg.path.len));
    MG_OUT_LIT(&o, "\",\"status\":");
    mg_out_u64(&o, r->client_aborted && !r->head_sent ? 499 : r->status);
    MG_OUT_LIT(&o, ",\"bytes_sent\":");
    mg_out_u64(&o, r->bytes_sent);
    MG_OUT_LIT(&o, ",\"request_body_bytes\":");
    mg_out_u64(&o, r->msg.body_seen);
    MG_OUT_LIT(&o, ",\"upstream_addr\":\"");
    /* every try's address, as nginx's $upstream_addr ("a, b") */
    for (unsigned i = 0; i < r->tries && i < MG_LOGGED_TRIES; i++) {
        if (i) MG_OUT_LIT(&o, ", ");
        mg_out_cstr(&o, r->try_addrs[i]);
    }
    if (r->tries > MG_LOGGED_TRIES) MG_OUT_LIT(&o, ", ...");
    if (r->tries == 0 && r->upstream_addr) mg_out_cstr(&o, r->upstream_addr);
    /* upstream latency: until the response head arrived (time to first byte), or until now
     * when none came */
    ev_tstamp upstream_end = r->upstream_head > 0 ? r->upstream_head : now;
    double upstream = r->upstream_start > 0 ? (upstream_end - r->upstream_start) * 1000.0 : 0;
    double total = (now - r->start) * 1000.0;
    MG_OUT_LIT(&o, "\",\"latency_ms\":");
    mg_out_fixed(&o, total > 0 ? total : 0, 3);
    MG_OUT_LIT(&o, ",\"upstream_latency_ms\":");
    mg_out_fixed(&o, upstream > 0 ? upstream : 0, 3);
    MG_OUT_LIT(&o, ",\"request_id\":\"");
    mg_out_put(&o, esc, mg_json_escape(esc, sizeof(esc), r->rid.data, r->rid.len));
    MG_OUT_LIT(&o, "\",\"route\":\"");
    if (r->route && r->route->name)
        mg_out_put(&o, esc,
                   mg_json_escape(esc, sizeof(esc), r->route->name, strlen(r->route->name)));
    MG_OUT_LIT(&o, "\",\"service\":\"");
    if (r->service && r->service->name)
        mg_out_put(&o, esc,
                   mg_json_escape(esc, sizeof(esc), r->service->name, strlen(r->service->name)));
    MG_OUT_LIT(&o, "\"");
    if (r->tries) {
        MG_OUT_LIT(&o, ",\"tries\":");
        mg_out_u64(&o, r->tries);
    }
    if (r->client_aborted) MG_OUT_LIT(&o, ",\"aborted\":true");
    MG_OUT_LIT(&o, "}\n");
    if (!o.overflow) mg_access_log_commit((size_t)(o.p - p));
}

bool mg_conn_may_keepalive(const mg_req_t *r)
{
    const mg_limits_t *lim = &mg_worker.cfg->limits;
    return r->msg.keepalive && !r->c->s.eof && !mg_worker.draining && lim->keepalive_timeout > 0 &&
           r->c->requests < lim->keepalive_requests;
}

void mg_conn_request_done(mg_req_t *r)
{
    mg_conn_t *c = r->c;
    access_log(r);
    mg_worker.requests_total++;
    bool keep = r->keepalive && mg_conn_may_keepalive(r);
    if (r->u) {
        mg_upstream_release(r->u, !r->upstream_failed && r->resp_done && r->req_sent &&
                                      r->resp.keepalive && !r->tunnel);
        r->u = NULL;
    }
    /* Lingering keeps an answer from being destroyed by a reset while the client may still be
     * sending: an unread body, pipelined requests, a close it did not ask for. A client that
     * asked to close and whose request was read whole is closed at once, as nginx does: no
     * half-close, no drain timer, no extra wake-up per connection; unless the kernel already
     * holds bytes it sent after the request, which closing over would answer with a reset. */
    bool client_done = !keep && !r->msg.keepalive && !r->tunnel && r->msg.head_done &&
                       (r->msg.body_kind == MG_BODY_NONE || r->msg.body_done || r->req_body_done);
    c->r = NULL;
    req_free(r);
    if (!keep) {
        int unread = 0;
        if (client_done && ioctl(c->s.fd, FIONREAD, &unread) == 0 && unread == 0)
            conn_close(c);
        else
            conn_linger(c);
        return;
    }
    c->state = MG_CONN_IDLE;
    c->s.last_io = ev_now(mg_worker.loop);
    if (c->in && mg_buf_len(c->in) > 0) {
        /* a pipelined request is already buffered: serve it from the loop, not recursively */
        mg_conn_update(c); /* first: stopping a watcher clears its pending events */
        ev_feed_event(mg_worker.loop, &c->s.io, EV_CUSTOM);
        return;
    }
    mg_buf_put(c->in);
    c->in = NULL;
    mg_conn_update(c);
    /* TLS: the rest of a record read only in part (our buffer was full), or records read
     * ahead, wait inside OpenSSL, where epoll cannot see them: go and read them */
    if (c->s.ssl && c->s.rready && SSL_has_pending(c->s.ssl))
        ev_feed_event(mg_worker.loop, &c->s.io, EV_CUSTOM);
}

/* Half-closes and drains what the client still sends for a moment, so that the answer we
 * wrote is read rather than destroyed by a reset (RFC 9112 §9.6). */
static void conn_linger(mg_conn_t *c)
{
    if (c->state != MG_CONN_LINGER) {
        c->state = MG_CONN_LINGER;
        if (c->r) {
            req_free(c->r);
            c->r = NULL;
        }
        if (c->s.ssl && !c->s.eof) { /* close_notify, then plain reads that discard */
            mg_tls_close(&c->s, true);
            c->s.rwantw = c->s.wwantr = 0;
        }
        if (c->s.eof || shutdown(c->s.fd, SHUT_WR) != 0) {
            conn_close(c);
            return;
        }
        c->s.rready = 1;
        mg_sock_set_deadline(&c->s, ev_now(mg_worker.loop) + LINGER_TIMEOUT);
    }
    char scratch[4096];
    for (int i = 0; i < 16; i++) { /* bounded: a flooding client waits for the next event */
        ssize_t n = recv(c->s.fd, scratch, sizeof(scratch), 0);
        if (n > 0) continue;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            c->s.rready = 0;
            mg_conn_update(c);
            return;
        }
        conn_close(c);
        return;
    }
    mg_conn_update(c);
}

void mg_conn_drain_all(void)
{
    /* idle keep-alive connections get a short grace period (see mg_conn_update) instead of
     * an immediate close, which would race with a request the client is sending right now */
    for (mg_conn_t *c = mg_worker.conns; c; c = c->next)
        if (c->state == MG_CONN_IDLE) mg_conn_update(c);
    if (mg_worker.nconns == 0) ev_break(mg_worker.loop, EVBREAK_ALL);
}
