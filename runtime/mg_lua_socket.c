/*
 * mg_lua_socket.c — cosockets: the C side of moongate.socket.tcp(). A socket is a small
 * struct (an mg_sock_t, a lazily taken read buffer, an optional SSL*) owned by a Lua object
 * (ffi.gc frees it). Every operation is a non-blocking call that either completes or parks
 * the running coroutine (MG_AGAIN): the socket arms its watcher and deadline and binds
 * itself to its owner; the event resumes the owner, and the Lua side calls again (send,
 * receive) or fetches the outcome (connect and TLS handshake, which this file drives to the
 * end through their intermediate events). Host names are resolved by the worker's resolver
 * (mg_dns.c: the dns_* settings, its cache and the hosts file, as for services), the socket
 * waiting for the answer as one of the name's waiters: the loop never blocks. Idle
 * connections wait in per-worker pools keyed by name, LIFO, watched for the peer closing and
 * closed after their idle timeout. Errors are returned as text (OpenResty's wording:
 * "timeout", "closed", "connection refused"); nothing here raises or calls back into Lua.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "mg_dns.h"
#include "mg_ffi.h"
#include "mg_log.h"
#include "mg_lua.h"
#include "mg_lua_socket.h"
#include "mg_request.h"

#define MAX_ADDRS 4   /* addresses tried per name, in the resolver's order */
#define HOST_MAX 256  /* a DNS name is at most 253 characters */
#define POOLS_KEPT 64 /* empty pools kept for reuse; beyond that an emptied pool is freed */

/* receive modes: the same values as lua/moongate/pdk/socket.lua */
enum { RECV_SIZE, RECV_LINE, RECV_ALL, RECV_ANY, RECV_UNTIL, RECV_UNTIL_INCL };

enum { ST_NEW, ST_RESOLVING, ST_CONNECTING, ST_HANDSHAKE, ST_CONNECTED, ST_POOLED, ST_CLOSED };

/* why an operation failed, besides an errno (positive) */
enum {
    ERR_TIMEOUT = -1,
    ERR_CLOSED = -2,
    ERR_RESOLVE = -3,
    ERR_SSL = -4,
    ERR_VERIFY = -5,
    ERR_HOSTNAME = -6,
    ERR_NOMEM = -7,
};

typedef union {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
} addr_t;

typedef struct pool_s pool_t;

struct mg_cosock_s {
    mg_sock_t s;    /* fd, watcher, deadline, readiness */
    mg_buf_t *in;   /* received bytes not yet handed out; taken at the first receive */
    SSL *ssl;       /* after sslhandshake */
    uint8_t state;  /* ST_* */
    uint8_t want;   /* events the owner waits for */
    uint8_t naddrs; /* resolved addresses, tried in order */
    uint8_t addr_i; /* next one to try */
    uint16_t port;
    unsigned waiting : 1;  /* an owner is bound (its coroutine is parked here) */
    unsigned timedout : 1; /* the deadline passed while waiting (send/receive) */
    unsigned verify : 1;   /* sslhandshake: check the chain and the name */
    unsigned ssl_ok : 1;   /* TLS established and not failed: close sends close_notify */
    int err;               /* errno or ERR_* of the last failure */
    const char *dns_err;   /* why the name did not resolve (static text) */
    int dns_name;          /* its entry in the resolver while ST_RESOLVING */
    mg_dns_waiter_t dnsw;  /* linked to that entry while ST_RESOLVING */
    long verify_rc;        /* X509_V_* for ERR_VERIFY */
    unsigned long ssl_err; /* ERR_peek_last_error() for ERR_SSL */
    unsigned reused;       /* times taken from a pool */
    mg_cosock_owner_t owner;
    pool_t *pool;             /* while pooled */
    mg_cosock_t *prev, *next; /* pool list, most recently used first */
    addr_t addrs[MAX_ADDRS];
    char host[HOST_MAX]; /* host to resolve, then the TLS server name */
};

struct pool_s {
    pool_t *next;
    mg_cosock_t *head, *tail;
    unsigned count, size;
    size_t nlen;
    char name[];
};

static void io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static int bind_owner(mg_cosock_t *cs);
static void wake(mg_cosock_t *cs);
static int wait_for(mg_cosock_t *cs, int events, int timeout_ms);
static void conn_close(mg_cosock_t *cs);
static void destroy(mg_cosock_t *cs);
static int connect_next(mg_cosock_t *cs);
static void connect_check(mg_cosock_t *cs);
static int handshake_step(mg_cosock_t *cs);
static const char *errtext(mg_cosock_t *cs);
static int resolve(mg_cosock_t *cs);
static void dns_cb(mg_dns_waiter_t *w);
static void pool_unlink(mg_cosock_t *cs);
static void pool_check(mg_cosock_t *cs);

static pool_t *pools;
static unsigned npools;

/* ---- owners ------------------------------------------------------------------------------ */

static void resume_request(void *ctx)
{
    mg_lua_resume((mg_req_t *)ctx);
}

/* The request ended (its client left) while its coroutine waited here: the coroutine is
 * dropped, so the connection, mid-exchange, is closed. The struct stays with its Lua
 * object until that is collected. */
static void cancel_request(mg_req_t *r, void *data)
{
    mg_cosock_t *cs = data;
    cs->waiting = 0;
    cs->owner = (mg_cosock_owner_t){0};
    conn_close(cs);
    cs->err = ERR_CLOSED;
    mg_buf_put(cs->in);
    cs->in = NULL;
}

/* A timer's coroutine (moongate.timer, or a handshake's certificate phase) is resumed by
 * its own sleep watcher armed with no delay: the public way in mg_lua.h, at the cost of one
 * loop turn, and never from inside the socket's own callback. */
static void resume_timer(void *ctx)
{
    mg_lua_timer_on_cancel(ctx, NULL, NULL);
    mg_lua_timer_sleep((mg_lua_timer_t *)ctx, 0);
}

/* The context ended while its coroutine waited here (a handshake's connection closed during
 * its certificate phase): as cancel_request. */
static void cancel_timer_wait(void *data)
{
    cancel_request(NULL, data);
}

/* Whether some coroutine runs that a wait could park (bind_owner would succeed). */
static bool can_wait(void)
{
    return mg_lua_current != NULL || mg_lua_current_timer != NULL;
}

/* Binds cs to the context whose coroutine is about to yield: the running request (its end
 * cancels the wait through r->lua_cancel) or the running timer. */
static int bind_owner(mg_cosock_t *cs)
{
    mg_req_t *r = mg_lua_current;
    if (r) {
        cs->owner.ctx = r;
        cs->owner.resume = resume_request;
        r->lua_cancel = cancel_request;
        r->lua_cancel_data = cs;
    } else if (mg_lua_current_timer) {
        cs->owner.ctx = mg_lua_current_timer;
        cs->owner.resume = resume_timer;
        mg_lua_timer_on_cancel(mg_lua_current_timer, cancel_timer_wait, cs);
    } else {
        return MG_ERROR;
    }
    cs->waiting = 1;
    return MG_OK;
}

/* Drops the owner's cancellation hook without resuming it (the socket is going away). */
static void unbind_owner(mg_cosock_t *cs)
{
    if (cs->owner.resume == resume_request) {
        mg_req_t *r = cs->owner.ctx;
        if (r->lua_cancel_data == cs) r->lua_cancel = NULL;
    } else if (cs->owner.resume == resume_timer) {
        mg_lua_timer_on_cancel(cs->owner.ctx, NULL, NULL);
    }
    cs->waiting = 0;
    cs->owner = (mg_cosock_owner_t){0};
}

/* The wait is over: resumes the owner. Must be the caller's last use of cs — the resumed
 * coroutine may close it, and a garbage collection may free it. */
static void wake(mg_cosock_t *cs)
{
    mg_cosock_owner_t o = cs->owner;
    cs->waiting = 0;
    cs->owner = (mg_cosock_owner_t){0};
    if (o.resume) o.resume(o.ctx);
}

static int wait_for(mg_cosock_t *cs, int events, int timeout_ms)
{
    if (bind_owner(cs) != MG_OK) return MG_ERROR;
    cs->want = (uint8_t)events;
    mg_sock_set_events(&cs->s, events);
    mg_sock_set_deadline(&cs->s,
                         ev_now(mg_worker.loop) + (timeout_ms > 0 ? timeout_ms : 1) * 0.001);
    return MG_AGAIN;
}

/* An operation completed without waiting (more): its deadline no longer applies. */
static void op_done(mg_cosock_t *cs)
{
    cs->timedout = 0;
    mg_sock_set_deadline(&cs->s, 0);
}

/* ---- life cycle -------------------------------------------------------------------------- */

/* Closes the connection (fd, TLS, watchers); keeps the struct and the read buffer, whose
 * bytes a receive may be handing out right now. */
static void conn_close(mg_cosock_t *cs)
{
    mg_dns_cancel(&cs->dnsw); /* a later answer of the name must not reach a closed socket */
    ev_io_stop(mg_worker.loop, &cs->s.io);
    mg_sock_set_deadline(&cs->s, 0);
    if (cs->ssl) {
        if (cs->ssl_ok) SSL_shutdown(cs->ssl); /* one close_notify attempt, never waited for */
        SSL_free(cs->ssl);
        cs->ssl = NULL;
    }
    if (cs->s.fd >= 0) close(cs->s.fd);
    cs->s.fd = -1;
    cs->s.rready = cs->s.wready = cs->s.eof = 0;
    cs->ssl_ok = cs->timedout = 0;
    cs->state = ST_CLOSED;
}

static void destroy(mg_cosock_t *cs)
{
    if (cs->waiting) unbind_owner(cs);
    conn_close(cs);
    mg_buf_put(cs->in);
    cs->in = NULL;
    free(cs);
}

mg_cosock_t *mg_ffi_tcp_new(void)
{
    mg_cosock_t *cs = calloc(1, sizeof(*cs));
    if (cs == NULL) return NULL;
    cs->s.fd = -1;
    ev_init(&cs->s.io, io_cb);
    ev_init(&cs->s.timer, timer_cb);
    cs->state = ST_NEW;
    cs->dnsw.cb = dns_cb;
    return cs;
}

void mg_ffi_tcp_free(mg_cosock_t *cs)
{
    if (cs) destroy(cs);
}

int mg_ffi_tcp_close(mg_cosock_t *cs, const char **err)
{
    if (cs->waiting) {
        *err = "socket busy";
        return MG_ERROR;
    }
    destroy(cs);
    return MG_OK;
}

int mg_ffi_tcp_reused(const mg_cosock_t *cs)
{
    return (int)cs->reused;
}

/* ---- events ------------------------------------------------------------------------------ */

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    mg_cosock_t *cs = MG_CONTAINER_OF(w, mg_cosock_t, s.io);
    if (revents & EV_READ) cs->s.rready = 1;
    if (revents & EV_WRITE) cs->s.wready = 1;
    switch (cs->state) {
    case ST_POOLED:
        pool_check(cs);
        return;
    case ST_CONNECTING:
        connect_check(cs);
        return;
    case ST_HANDSHAKE:
        if (handshake_step(cs) != MG_AGAIN) wake(cs);
        return;
    default:
        if (cs->waiting && (revents & cs->want)) {
            wake(cs);
            return;
        }
        /* a watcher left armed after the last wait (it saves an epoll_ctl per wait when
         * the next operation wants the same event): nobody waits now, so disarm it */
        mg_sock_set_events(&cs->s, cs->waiting ? cs->want : 0);
    }
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    mg_cosock_t *cs = MG_CONTAINER_OF(w, mg_cosock_t, s.timer);
    cs->s.deadline = 0;
    switch (cs->state) {
    case ST_POOLED: /* idle timeout */
        pool_unlink(cs);
        destroy(cs);
        return;
    case ST_RESOLVING:
    case ST_CONNECTING:
    case ST_HANDSHAKE:
        conn_close(cs); /* leaves the name's waiters: a later answer is not ours */
        cs->err = ERR_TIMEOUT;
        wake(cs);
        return;
    default:
        if (cs->waiting) {
            cs->timedout = 1; /* the operation, called again, reports it */
            wake(cs);
        }
    }
}

/* ---- connect ----------------------------------------------------------------------------- */

static void set_connected(mg_cosock_t *cs)
{
    cs->state = ST_CONNECTED;
    cs->s.rready = 0; /* nothing to read yet: the first receive asks epoll */
    cs->s.wready = 1;
    cs->s.eof = 0;
    cs->s.last_io = ev_now(mg_worker.loop);
    mg_sock_set_events(&cs->s, 0);
    mg_sock_set_deadline(&cs->s, 0);
}

/* Tries the remaining addresses: MG_OK (connected), MG_AGAIN (in progress, EV_WRITE armed)
 * or MG_ERROR (all failed: closed, cs->err is the last error). */
static int connect_next(mg_cosock_t *cs)
{
    while (cs->addr_i < cs->naddrs) {
        addr_t *a = &cs->addrs[cs->addr_i++];
        socklen_t alen = a->sa.sa_family == AF_INET6 ? sizeof(a->in6) : sizeof(a->in);
        int fd = socket(a->sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            cs->err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        cs->s.fd = fd;
        if (connect(fd, &a->sa, alen) == 0) {
            set_connected(cs);
            return MG_OK;
        }
        if (errno == EINPROGRESS) {
            cs->state = ST_CONNECTING;
            mg_sock_set_events(&cs->s, EV_WRITE);
            return MG_AGAIN;
        }
        cs->err = errno;
        close(fd);
        cs->s.fd = -1;
    }
    conn_close(cs);
    return MG_ERROR;
}

/* The connecting socket became writable: connected, or on to the next address. */
static void connect_check(mg_cosock_t *cs)
{
    int e = 0;
    socklen_t len = sizeof(e);
    if (getsockopt(cs->s.fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0) e = errno;
    if (e == 0) {
        set_connected(cs);
        wake(cs);
        return;
    }
    if (e == EINPROGRESS || e == EINTR) return;
    cs->err = e;
    ev_io_stop(mg_worker.loop, &cs->s.io);
    close(cs->s.fd);
    cs->s.fd = -1;
    if (connect_next(cs) != MG_AGAIN) wake(cs);
}

static int parse_ip(mg_cosock_t *cs)
{
    addr_t *a = &cs->addrs[0];
    memset(a, 0, sizeof(*a));
    if (inet_pton(AF_INET, cs->host, &a->in.sin_addr) == 1) {
        a->in.sin_family = AF_INET;
        a->in.sin_port = htons(cs->port);
        return 1;
    }
    if (inet_pton(AF_INET6, cs->host, &a->in6.sin6_addr) == 1) {
        a->in6.sin6_family = AF_INET6;
        a->in6.sin6_port = htons(cs->port);
        return 1;
    }
    return 0;
}

int mg_ffi_tcp_connect(mg_cosock_t *cs, const char *host, size_t hlen, int port, int timeout_ms,
                       const char **err)
{
    if (cs->state != ST_NEW) {
        *err = "already used";
        return MG_ERROR;
    }
    if (!can_wait()) {
        *err = "no coroutine to wait in";
        return MG_ERROR;
    }
    if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') { /* [::1] */
        host++;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= HOST_MAX || memchr(host, '\0', hlen)) {
        *err = "bad host name";
        return MG_ERROR;
    }
    memcpy(cs->host, host, hlen);
    cs->host[hlen] = '\0';
    cs->port = (uint16_t)port;
    int rc;
    if (parse_ip(cs)) {
        cs->naddrs = 1;
        cs->addr_i = 0;
        rc = connect_next(cs);
    } else {
        rc = resolve(cs);
    }
    if (rc == MG_AGAIN) {
        /* one deadline for the lookup and the connect: connect_timeout */
        bind_owner(cs);
        mg_sock_set_deadline(&cs->s,
                             ev_now(mg_worker.loop) + (timeout_ms > 0 ? timeout_ms : 1) * 0.001);
    } else if (rc == MG_ERROR) {
        *err = errtext(cs);
    }
    return rc;
}

int mg_ffi_tcp_result(mg_cosock_t *cs, const char **err)
{
    if (cs->state == ST_CONNECTED) return MG_OK;
    if (cs->waiting) {
        *err = "socket busy";
        return MG_ERROR;
    }
    *err = cs->err ? errtext(cs) : "closed";
    return MG_ERROR;
}

/* ---- resolver ---------------------------------------------------------------------------- */

/* Takes the first MAX_ADDRS addresses of the name's answer, with the socket's port. */
static void take_addrs(mg_cosock_t *cs, const mg_dns_addrs_t *a)
{
    unsigned n = 0;
    for (unsigned i = 0; i < a->naddrs && n < MAX_ADDRS; i++) {
        addr_t *d = &cs->addrs[n];
        memset(d, 0, sizeof(*d));
        if (a->addrs[i].ss_family == AF_INET) {
            memcpy(&d->in, &a->addrs[i], sizeof(d->in));
            d->in.sin_port = htons(cs->port);
        } else if (a->addrs[i].ss_family == AF_INET6) {
            memcpy(&d->in6, &a->addrs[i], sizeof(d->in6));
            d->in6.sin6_port = htons(cs->port);
        } else {
            continue;
        }
        n++;
    }
    cs->naddrs = (uint8_t)n;
    cs->addr_i = 0;
}

/* The outcome of a look-up of cs->host: connects (MG_OK, MG_AGAIN) or fails with
 * ERR_RESOLVE (MG_ERROR, closed). */
static int resolved(mg_cosock_t *cs, int rc, const mg_dns_addrs_t *a)
{
    if (rc == MG_OK) take_addrs(cs, a);
    if (rc != MG_OK || cs->naddrs == 0) {
        cs->dns_err = mg_dns_failure((unsigned)cs->dns_name);
        conn_close(cs);
        cs->err = ERR_RESOLVE;
        return MG_ERROR;
    }
    return connect_next(cs);
}

/* The name's answer came (whatever it is) while the socket waited for it. */
static void dns_cb(mg_dns_waiter_t *w)
{
    mg_cosock_t *cs = MG_CONTAINER_OF(w, mg_cosock_t, dnsw);
    if (cs->state != ST_RESOLVING) return; /* never: closing leaves the waiters */
    const mg_dns_addrs_t *a;
    int rc = mg_dns_resolve((unsigned)cs->dns_name, true, &a);
    if (rc == MG_AGAIN) { /* dns_no_sync: another socket's query answered first */
        mg_dns_wait((unsigned)cs->dns_name, &cs->dnsw);
        return;
    }
    if (resolved(cs, rc, a) != MG_AGAIN) wake(cs);
}

/* Starts connecting to cs->host, a name: at once when the resolver knows it (cache, hosts
 * file), else once its answer comes. MG_OK, MG_AGAIN or MG_ERROR (cs->err set). */
static int resolve(mg_cosock_t *cs)
{
    cs->dns_name = mg_dns_name(cs->host);
    if (cs->dns_name < 0) {
        cs->err = ERR_RESOLVE;
        cs->dns_err = "too many names being resolved";
        conn_close(cs);
        return MG_ERROR;
    }
    const mg_dns_addrs_t *a;
    int rc = mg_dns_resolve((unsigned)cs->dns_name, false, &a);
    if (rc != MG_AGAIN) return resolved(cs, rc, a);
    cs->state = ST_RESOLVING;
    mg_dns_wait((unsigned)cs->dns_name, &cs->dnsw);
    return MG_AGAIN;
}

/* ---- TLS --------------------------------------------------------------------------------- */

static SSL_CTX *client_ctx(void)
{
    static SSL_CTX *ctx; /* per worker: created at the first handshake, after fork */
    if (ctx) return ctx;
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) return NULL;
    /* the system store (SSL_CERT_FILE / SSL_CERT_DIR override it); the verdict is checked
     * after the handshake, as OpenResty does, so the error names the reason */
    SSL_CTX_set_default_verify_paths(ctx);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
    return ctx;
}

static void ssl_failed(mg_cosock_t *cs, int e)
{
    cs->ssl_err = ERR_peek_last_error();
    cs->err = e == SSL_ERROR_SYSCALL ? (errno ? errno : ERR_CLOSED) : ERR_SSL;
    cs->ssl_ok = 0;
}

/* MG_OK (established and, when asked, verified), MG_AGAIN (the watcher is armed for what
 * OpenSSL wants) or MG_ERROR (closed, cs->err says why). */
static int handshake_step(mg_cosock_t *cs)
{
    ERR_clear_error();
    int n = SSL_do_handshake(cs->ssl);
    if (n == 1) {
        if (cs->verify) {
            X509 *cert = SSL_get_peer_certificate(cs->ssl);
            long v = SSL_get_verify_result(cs->ssl);
            if (cert == NULL && v == X509_V_OK) v = X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT;
            if (v != X509_V_OK) {
                cs->err = ERR_VERIFY;
                cs->verify_rc = v;
            } else if (cs->host[0] && X509_check_host(cert, cs->host, 0, 0, NULL) != 1 &&
                       X509_check_ip_asc(cert, cs->host, 0) != 1) {
                cs->err = ERR_HOSTNAME;
            }
            X509_free(cert);
            if (cs->err) {
                cs->ssl_ok = 1; /* a sound session: say goodbye properly */
                conn_close(cs);
                return MG_ERROR;
            }
        }
        cs->ssl_ok = 1;
        set_connected(cs);
        return MG_OK;
    }
    int e = SSL_get_error(cs->ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        mg_sock_set_events(&cs->s, e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE);
        return MG_AGAIN;
    }
    ssl_failed(cs, e);
    if (cs->err == ERR_SSL) {
        char why[256];
        ERR_error_string_n(cs->ssl_err, why, sizeof(why));
        mg_log_info("cosocket: TLS handshake with %s failed: %s", cs->host, why);
    }
    conn_close(cs);
    return MG_ERROR;
}

static int is_ip_literal(const char *s)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

int mg_ffi_tcp_sslhandshake(mg_cosock_t *cs, void *session, const char *name, size_t nlen,
                            int verify, int timeout_ms, const char **err)
{
    if (cs->waiting) {
        *err = "socket busy";
        return MG_ERROR;
    }
    if (cs->state != ST_CONNECTED) {
        *err = "closed";
        return MG_ERROR;
    }
    if (cs->ssl) return MG_OK; /* a pooled TLS connection: already established */
    if (!can_wait()) {
        *err = "no coroutine to wait in";
        return MG_ERROR;
    }
    if (nlen >= HOST_MAX || (name && memchr(name, '\0', nlen))) {
        *err = "bad server name";
        return MG_ERROR;
    }
    SSL_CTX *ctx = client_ctx();
    SSL *ssl = ctx ? SSL_new(ctx) : NULL;
    if (ssl == NULL || SSL_set_fd(ssl, cs->s.fd) != 1) {
        SSL_free(ssl);
        *err = "could not create a TLS session";
        return MG_ERROR;
    }
    SSL_set_connect_state(ssl);
    if (nlen) memcpy(cs->host, name, nlen);
    cs->host[nlen] = '\0';
    if (nlen && !is_ip_literal(cs->host)) SSL_set_tlsext_host_name(ssl, cs->host);
    if (session) SSL_set_session(ssl, (SSL_SESSION *)session);
    cs->ssl = ssl;
    cs->verify = verify != 0;
    cs->err = 0;
    cs->state = ST_HANDSHAKE;
    int rc = handshake_step(cs);
    if (rc == MG_AGAIN) {
        bind_owner(cs);
        mg_sock_set_deadline(&cs->s,
                             ev_now(mg_worker.loop) + (timeout_ms > 0 ? timeout_ms : 1) * 0.001);
    } else if (rc == MG_ERROR) {
        *err = errtext(cs);
    }
    return rc;
}

void *mg_ffi_tcp_ssl_session(mg_cosock_t *cs)
{
    return cs->ssl ? SSL_get1_session(cs->ssl) : NULL;
}

void mg_ffi_tcp_ssl_session_free(void *session)
{
    SSL_SESSION_free(session);
}

/* ---- send -------------------------------------------------------------------------------- */

int mg_ffi_tcp_send(mg_cosock_t *cs, const char *data, size_t len, size_t off, int timeout_ms,
                    size_t *sent, const char **err)
{
    *sent = off;
    if (cs->waiting) {
        *err = "socket busy";
        return MG_ERROR;
    }
    if (cs->state != ST_CONNECTED) {
        *err = "closed";
        return MG_ERROR;
    }
    int want = EV_WRITE;
    while (off < len) {
        if (cs->ssl) {
            ERR_clear_error();
            int n = SSL_write(cs->ssl, data + off, (int)MG_MIN(len - off, (size_t)INT_MAX));
            if (n > 0) {
                off += (size_t)n;
                continue;
            }
            int e = SSL_get_error(cs->ssl, n);
            if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
                want = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
                break;
            }
            ssl_failed(cs, e);
            goto failed;
        }
        ssize_t n = send(cs->s.fd, data + off, len - off, MSG_NOSIGNAL);
        if (n >= 0) {
            off += (size_t)n;
        } else if (errno == EAGAIN) {
            cs->s.wready = 0;
            break;
        } else if (errno != EINTR) {
            cs->err = errno;
            goto failed;
        }
    }
    *sent = off;
    if (off == len) {
        cs->s.last_io = ev_now(mg_worker.loop);
        op_done(cs);
        return MG_OK;
    }
    if (cs->timedout) {
        cs->err = ERR_TIMEOUT;
        goto failed;
    }
    if (wait_for(cs, want, timeout_ms) == MG_AGAIN) return MG_AGAIN;
    *err = "no coroutine to wait in";
    return MG_ERROR;

failed:
    *sent = off;
    *err = errtext(cs);
    conn_close(cs); /* OpenResty's rule: a failed send closes the connection */
    return MG_ERROR;
}

/* ---- receive ----------------------------------------------------------------------------- */

/* Removes the CRs of p[0..n) in place (the "*l" pattern ignores them); returns the new n. */
static size_t strip_cr(char *p, size_t n)
{
    char *cr = memchr(p, '\r', n);
    if (cr == NULL) return n;
    char *w = cr;
    for (char *q = cr; q < p + n; q++)
        if (*q != '\r') *w++ = *q;
    return (size_t)(w - p);
}

/* The longest proper prefix of pat that ends p[0..n): bytes that may start a match. */
static size_t prefix_tail(const char *p, size_t n, const char *pat, size_t plen)
{
    for (size_t k = MG_MIN(plen - 1, n); k > 0; k--)
        if (memcmp(p + n - k, pat, k) == 0) return k;
    return 0;
}

static int take(mg_buf_t *b, size_t n, const char **data, size_t *len, int rc)
{
    *data = mg_buf_pos(b);
    *len = n;
    b->start += n;
    return rc;
}

/* What the buffer can give for this mode: MG_OK (the result), MG_DECLINED (a piece of it:
 * the buffer is full or a size-limited piece is ready; call again for the rest) or MG_AGAIN
 * (more bytes needed). Handed-out bytes are consumed but stay in place until the next call. */
static int extract(mg_buf_t *b, int mode, size_t arg, const char *pat, size_t plen,
                   const char **data, size_t *len)
{
    char *p = mg_buf_pos(b);
    size_t avail = mg_buf_len(b);
    bool full = avail == b->size;
    switch (mode) {
    case RECV_SIZE:
        if (avail >= arg) return take(b, arg, data, len, MG_OK);
        return full ? take(b, avail, data, len, MG_DECLINED) : MG_AGAIN;
    case RECV_ANY:
        return avail ? take(b, MG_MIN(avail, arg), data, len, MG_OK) : MG_AGAIN;
    case RECV_LINE: {
        char *nl = memchr(p, '\n', avail);
        if (nl == NULL && !full) return MG_AGAIN;
        size_t n = nl ? (size_t)(nl - p) : avail;
        *data = p;
        *len = strip_cr(p, n);
        b->start += nl ? n + 1 : n;
        return nl ? MG_OK : MG_DECLINED;
    }
    case RECV_ALL:
        return full ? take(b, avail, data, len, MG_DECLINED) : MG_AGAIN;
    case RECV_UNTIL:
    case RECV_UNTIL_INCL: {
        char *m = memmem(p, avail, pat, plen);
        if (m) {
            size_t before = (size_t)(m - p);
            if (arg && before > arg) return take(b, arg, data, len, MG_DECLINED);
            *data = p;
            *len = before + (mode == RECV_UNTIL_INCL ? plen : 0);
            b->start += before + plen;
            return MG_OK;
        }
        size_t safe = avail - prefix_tail(p, avail, pat, plen);
        if (arg && safe >= arg) return take(b, arg, data, len, MG_DECLINED);
        if (full && safe) return take(b, safe, data, len, MG_DECLINED);
        return MG_AGAIN;
    }
    default:
        return MG_ERROR;
    }
}

/* Reads into the buffer: bytes read (> 0), 0 at end of stream, or -1 with *want set to the
 * event to wait for (EAGAIN) or to 0 (an error: cs->err). */
static ssize_t fill(mg_cosock_t *cs, int *want)
{
    mg_buf_t *b = cs->in;
    mg_buf_compact(b);
    size_t room = mg_buf_free(b);
    if (cs->ssl) {
        ERR_clear_error();
        int n = SSL_read(cs->ssl, mg_buf_last(b), (int)room);
        if (n > 0) {
            b->end += (size_t)n;
            return n;
        }
        int e = SSL_get_error(cs->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            *want = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
            return -1;
        }
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0)) {
            cs->s.eof = 1;
            return 0;
        }
        ssl_failed(cs, e);
        *want = 0;
        return -1;
    }
    if (!cs->s.rready) { /* drained at the last read: epoll says when more comes */
        *want = EV_READ;
        return -1;
    }
    for (;;) {
        ssize_t n = recv(cs->s.fd, mg_buf_last(b), room, 0);
        if (n > 0) {
            b->end += (size_t)n;
            if ((size_t)n < room) cs->s.rready = 0;
            return n;
        }
        if (n == 0) {
            cs->s.eof = 1;
            return 0;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN) {
            cs->s.rready = 0;
            *want = EV_READ;
            return -1;
        }
        cs->err = errno;
        *want = 0;
        return -1;
    }
}

int mg_ffi_tcp_receive(mg_cosock_t *cs, int mode, size_t arg, const char *pat, size_t plen,
                       int timeout_ms, const char **data, size_t *len, const char **err)
{
    *data = "";
    *len = 0;
    if (cs->waiting) {
        *err = "socket busy";
        return MG_ERROR;
    }
    if (cs->state != ST_CONNECTED) {
        mg_buf_put(cs->in); /* a partial result handed out earlier has been copied by now */
        cs->in = NULL;
        *err = "closed";
        return MG_ERROR;
    }
    if ((mode == RECV_UNTIL || mode == RECV_UNTIL_INCL) && (plen == 0 || plen >= MG_BUF_SIZE)) {
        *err = "bad pattern";
        return MG_ERROR;
    }
    if (cs->in == NULL && (cs->in = mg_buf_get()) == NULL) {
        *err = "no memory";
        return MG_ERROR;
    }
    mg_buf_t *b = cs->in;
    for (;;) {
        int rc = extract(b, mode, arg, pat, plen, data, len);
        if (rc != MG_AGAIN) {
            op_done(cs);
            return rc;
        }
        int want = EV_READ;
        ssize_t n = cs->s.eof ? 0 : fill(cs, &want);
        if (n > 0) continue;
        if (n < 0 && want && !cs->timedout) {
            if (wait_for(cs, want, timeout_ms) == MG_AGAIN) return MG_AGAIN;
            *err = "no coroutine to wait in";
            return MG_ERROR;
        }
        /* end of stream, error or timeout: what is buffered is the partial result */
        size_t avail = mg_buf_len(b);
        *data = mg_buf_pos(b);
        *len = mode == RECV_LINE ? strip_cr(mg_buf_pos(b), avail) : avail;
        b->start = b->end = 0;
        if (n == 0 && mode == RECV_ALL) { /* "*a" ends at the close: a success */
            conn_close(cs);
            return MG_OK;
        }
        if (n < 0 && want) { /* the read deadline passed: the connection stays usable */
            op_done(cs);
            *err = "timeout";
            return MG_ERROR;
        }
        cs->err = n == 0 ? ERR_CLOSED : cs->err;
        *err = errtext(cs);
        conn_close(cs);
        return MG_ERROR;
    }
}

/* ---- keepalive pool ---------------------------------------------------------------------- */

static pool_t *pool_find(const char *name, size_t nlen)
{
    for (pool_t *p = pools; p; p = p->next)
        if (p->nlen == nlen && memcmp(p->name, name, nlen) == 0) return p;
    return NULL;
}

/* Takes cs out of its pool. An emptied pool stays (a pool that empties and refills with
 * every request must not cost a malloc each time) unless there are many of them. */
static void pool_unlink(mg_cosock_t *cs)
{
    pool_t *p = cs->pool;
    if (cs->prev)
        cs->prev->next = cs->next;
    else
        p->head = cs->next;
    if (cs->next)
        cs->next->prev = cs->prev;
    else
        p->tail = cs->prev;
    cs->prev = cs->next = NULL;
    cs->pool = NULL;
    if (--p->count == 0 && npools > POOLS_KEPT) {
        for (pool_t **pp = &pools; *pp; pp = &(*pp)->next) {
            if (*pp == p) {
                *pp = p->next;
                break;
            }
        }
        npools--;
        free(p);
    }
}

/* An idle connection became readable: the peer closed it or sent bytes nobody asked for
 * (either way it is unusable), or, with TLS, a post-handshake message arrived (harmless). */
static void pool_check(mg_cosock_t *cs)
{
    if (cs->ssl) {
        char buf[256];
        ERR_clear_error();
        int n = SSL_read(cs->ssl, buf, sizeof(buf));
        if (n <= 0 && SSL_get_error(cs->ssl, n) == SSL_ERROR_WANT_READ) return;
        if (n <= 0) cs->ssl_ok = 0;
    } else {
        char c;
        ssize_t n = recv(cs->s.fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    }
    pool_unlink(cs);
    destroy(cs);
}

mg_cosock_t *mg_ffi_tcp_pool_get(const char *name, size_t nlen)
{
    pool_t *p = pool_find(name, nlen);
    if (p == NULL || p->head == NULL) return NULL;
    mg_cosock_t *cs = p->head;
    pool_unlink(cs);
    cs->state = ST_CONNECTED;
    cs->reused++;
    cs->s.rready = 0;
    cs->s.wready = 1;
    mg_sock_set_deadline(&cs->s, 0);
    /* the idle watcher (EV_READ) stays armed: a receive usually comes next */
    return cs;
}

int mg_ffi_tcp_setkeepalive(mg_cosock_t *cs, const char *name, size_t nlen, int timeout_ms,
                            int pool_size, const char **err)
{
    if (cs->waiting) {
        *err = "socket busy";
        return MG_ERROR;
    }
    if (cs->state != ST_CONNECTED) {
        *err = "closed";
        return MG_ERROR;
    }
    if ((cs->in && mg_buf_len(cs->in) > 0) || (cs->ssl && SSL_pending(cs->ssl) > 0)) {
        *err = "unread data in buffer";
        return MG_ERROR;
    }
    char c;
    ssize_t n = recv(cs->s.fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        conn_close(cs);
        *err = "closed";
        return MG_ERROR;
    }
    if (n > 0 && !cs->ssl) { /* with TLS, a session ticket may wait: pool_check reads it */
        *err = "unread data in buffer";
        return MG_ERROR;
    }
    pool_t *p = pool_find(name, nlen);
    if (p == NULL) {
        p = malloc(sizeof(*p) + nlen);
        if (p == NULL) {
            *err = "no memory";
            return MG_ERROR;
        }
        *p = (pool_t){.next = pools, .size = pool_size > 0 ? (unsigned)pool_size : 1, .nlen = nlen};
        memcpy(p->name, name, nlen);
        pools = p;
        npools++;
    }
    while (p->count >= p->size) { /* full: the least recently used connection goes */
        mg_cosock_t *old = p->tail;
        p->count++; /* keeps p alive through pool_unlink */
        pool_unlink(old);
        p->count--;
        destroy(old);
    }
    mg_buf_put(cs->in);
    cs->in = NULL;
    cs->timedout = 0;
    cs->state = ST_POOLED;
    cs->pool = p;
    cs->prev = NULL;
    cs->next = p->head;
    if (p->head) p->head->prev = cs;
    p->head = cs;
    if (p->tail == NULL) p->tail = cs;
    p->count++;
    mg_sock_set_events(&cs->s, EV_READ);
    mg_sock_set_deadline(&cs->s, timeout_ms > 0 ? ev_now(mg_worker.loop) + timeout_ms * 0.001 : 0);
    return MG_OK;
}

void mg_lua_socket_pool_close_all(void)
{
    while (pools) {
        pool_t *p = pools;
        while (p->head) {
            mg_cosock_t *cs = p->head;
            p->count++; /* keeps p through pool_unlink */
            pool_unlink(cs);
            p->count--;
            destroy(cs);
        }
        pools = p->next;
        npools--;
        free(p);
    }
}

/* ---- errors ------------------------------------------------------------------------------ */

/* The message for cs->err, OpenResty's wording; valid until the next call (Lua copies it at
 * once). */
static const char *errtext(mg_cosock_t *cs)
{
    static char buf[512];
    switch (cs->err) {
    case ERR_TIMEOUT:
        return "timeout";
    case ERR_CLOSED:
        return "closed";
    case ERR_NOMEM:
        return "no memory";
    case ERR_HOSTNAME:
        return "certificate host mismatch";
    case ERR_RESOLVE:
        snprintf(buf, sizeof(buf), "%s could not be resolved (%s)", cs->host,
                 cs->dns_err ? cs->dns_err : "no address");
        return buf;
    case ERR_VERIFY:
        snprintf(buf, sizeof(buf), "%ld: %s", cs->verify_rc,
                 X509_verify_cert_error_string(cs->verify_rc));
        return buf;
    case ERR_SSL:
        if (cs->state == ST_HANDSHAKE || cs->ssl == NULL) return "handshake failed";
        return "ssl error";
    case 0:
        return "error";
    default:
        snprintf(buf, sizeof(buf), "%s", strerror(cs->err));
        buf[0] = (char)tolower((unsigned char)buf[0]); /* "connection refused" */
        return buf;
    }
}
