/*
 * mg_probe.c — active health checks (Kong's `healthchecks.active`): every worker runs one
 * timer, and at each tick claims the targets whose probe is due in the shared health zone
 * (mg_health_claim_probe: exactly one worker wins a target per interval, so the workers
 * together probe each target once per `healthy.interval` while it is healthy and once per
 * `unhealthy.interval` while not). A probe is a non-blocking connect on the event loop, for
 * `type: tcp` the connect is the answer; for `type: http` an HTTP/1.0 GET of `http_path` with
 * the target's Host, whose status line is the answer; `type: https` sends it over TLS
 * (mg_utls.c) after a handshake with `https_sni` (else the upstream's host_header, else the
 * target's host name), verifying the certificate when `https_verify_certificate` (Kong's
 * default) against what the traffic trusts (mg_utls_load). A failed handshake counts as a
 * tcp failure, like a refused connect. `timeout` bounds the whole probe.
 * Results are counted against the active thresholds by mg_health.c, which logs transitions.
 * Nothing is allocated per tick; one small block per probe in flight. A target named by host
 * is probed at each address of its current answer (its address slots in the health zone).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>

#include "mg_health.h"
#include "mg_log.h"
#include "mg_request.h"
#include "mg_utls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

typedef struct probe_s {
    ev_io io;
    ev_timer timer;
    int fd;
    bool connected;
    SSL *ssl;      /* type https */
    bool tls_done; /* the handshake finished: requests go through ssl */
    const mg_upstream_t *up;
    const mg_target_t *t;
    unsigned slot; /* the address slot probed */
    char req[600];
    size_t reqlen, sent;
    char buf[128]; /* the status line is all we read */
    size_t len;
    struct probe_s *next, **prev;
} probe_t;

static const mg_config_t *probe_cfg;
static ev_timer tick;
static probe_t *probes;
static bool *in_flight; /* per address slot: this worker has a probe out */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void probe_free(probe_t *p)
{
    ev_io_stop(mg_worker.loop, &p->io);
    ev_timer_stop(mg_worker.loop, &p->timer);
    if (p->ssl) {
        ERR_clear_error();
        if (p->tls_done) SSL_shutdown(p->ssl); /* close_notify, never waited for */
        SSL_free(p->ssl);
        ERR_clear_error();
    }
    if (p->fd >= 0) close(p->fd);
    *p->prev = p->next;
    if (p->next) p->next->prev = p->prev;
    in_flight[p->slot] = false;
    free(p);
}

static void probe_done(probe_t *p, int event, int status)
{
    const mg_upstream_t *up = p->up;
    const mg_target_t *t = p->t;
    unsigned slot = p->slot;
    probe_free(p);
    mg_health_probe_result(probe_cfg, up, t, slot, event, status);
}

/* "HTTP/1.x NNN" at the start of the buffer: the status, or -1. */
static int status_of(const char *b, size_t len)
{
    if (len < 12 || memcmp(b, "HTTP/1.", 7) != 0 || b[8] != ' ') return -1;
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (b[i] < '0' || b[i] > '9') return -1;
        st = st * 10 + (b[i] - '0');
    }
    return st;
}

static void watch(probe_t *p, int events)
{
    if (ev_is_active(&p->io) && (p->io.events & (EV_READ | EV_WRITE)) == events) return;
    ev_io_stop(mg_worker.loop, &p->io);
    ev_io_set(&p->io, p->fd, events);
    ev_io_start(mg_worker.loop, &p->io);
}

/* The name an https probe sends as SNI and verifies (NULL: none). */
static const char *probe_name(const probe_t *p)
{
    const mg_upstream_t *up = p->up;
    if (up->healthchecks.active.https_sni) return up->healthchecks.active.https_sni;
    return up->host_header ? up->host_header : p->t->host;
}

/* The TLS handshake of an https probe: true once done; false when it waits (watched) or
 * failed (the probe is over). */
static bool probe_tls(probe_t *p)
{
    if (p->ssl == NULL) {
        p->ssl = mg_utls_new(p->up->probe_tls, p->fd, probe_name(p), NULL);
        if (p->ssl == NULL) {
            probe_free(p); /* a local shortage says nothing about the target */
            return false;
        }
    }
    int want;
    char why[224];
    int rc = mg_utls_handshake(p->ssl, &want, why, sizeof(why));
    if (rc == MG_AGAIN) {
        watch(p, want);
        return false;
    }
    if (rc == MG_ERROR) {
        mg_log_info("active health check of upstream \"%s\" target %s: TLS %s", p->up->name,
                    p->t->target, why);
        probe_done(p, MG_HC_EV_TCP_FAILURE, 0);
        return false;
    }
    p->tls_done = true;
    watch(p, EV_WRITE);
    return true;
}

/* send()/recv() or their TLS equivalents: bytes moved, 0 at the end of the stream, -1 with
 * *again when the probe must wait for `*again` (EV_READ or EV_WRITE), else a failure. */
static ssize_t probe_xfer(probe_t *p, bool out, char *buf, size_t len, int *again)
{
    *again = 0;
    if (p->ssl == NULL) {
        ssize_t n = out ? send(p->fd, buf, len, MSG_NOSIGNAL) : recv(p->fd, buf, len, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) *again = out ? EV_WRITE : EV_READ;
        return n;
    }
    ERR_clear_error();
    int n = out ? SSL_write(p->ssl, buf, (int)len) : SSL_read(p->ssl, buf, (int)len);
    if (n > 0) return n;
    int e = SSL_get_error(p->ssl, n);
    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ) *again = EV_READ;
    if (e == SSL_ERROR_WANT_WRITE) *again = EV_WRITE;
    if (e == SSL_ERROR_ZERO_RETURN) return 0;
    return -1;
}

static void probe_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    probe_t *p = MG_CONTAINER_OF(w, probe_t, io);
    if (!p->connected) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            probe_done(p, MG_HC_EV_TCP_FAILURE, 0);
            return;
        }
        p->connected = true;
        if (p->up->healthchecks.active.type == MG_HC_TCP) {
            probe_done(p, MG_HC_EV_SUCCESS, 0);
            return;
        }
    }
    if (p->up->healthchecks.active.type == MG_HC_HTTPS && !p->tls_done && !probe_tls(p)) return;
    int again;
    if (p->sent < p->reqlen) {
        ssize_t n = probe_xfer(p, true, p->req + p->sent, p->reqlen - p->sent, &again);
        if (n <= 0 && !again) {
            probe_done(p, MG_HC_EV_TCP_FAILURE, 0);
            return;
        }
        if (n > 0) p->sent += (size_t)n;
        watch(p, p->sent == p->reqlen ? EV_READ : again ? again : EV_WRITE);
        return;
    }
    ssize_t n = probe_xfer(p, false, p->buf + p->len, sizeof(p->buf) - p->len, &again);
    if (n < 0 && again) {
        watch(p, again);
        return;
    }
    if (n > 0) p->len += (size_t)n;
    if (n > 0 && p->len < 12) return;
    int st = status_of(p->buf, p->len);
    if (st < 0)
        probe_done(p, MG_HC_EV_TCP_FAILURE, 0); /* closed, reset or not HTTP */
    else
        probe_done(p, MG_HC_EV_STATUS, st);
}

static void probe_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    probe_done(MG_CONTAINER_OF(w, probe_t, timer), MG_HC_EV_TIMEOUT, 0);
}

static void probe_start(const mg_upstream_t *up, const mg_target_t *t, unsigned slot,
                        const struct sockaddr_storage *addr)
{
    const mg_healthchecks_t *hc = &up->healthchecks;
    probe_t *p = calloc(1, sizeof(*p));
    if (p == NULL) return;
    p->up = up;
    p->t = t;
    p->slot = slot;
    if (hc->active.type == MG_HC_HTTP || hc->active.type == MG_HC_HTTPS) {
        int n = snprintf(p->req, sizeof(p->req),
                         "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: moongate-healthcheck\r\n"
                         "Connection: close\r\n\r\n",
                         hc->active.http_path, t->target);
        if (n < 0 || (size_t)n >= sizeof(p->req)) {
            free(p);
            return;
        }
        p->reqlen = (size_t)n;
    }
    p->fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (p->fd < 0) {
        free(p); /* a local shortage says nothing about the target */
        return;
    }
    p->next = probes;
    p->prev = &probes;
    if (probes) probes->prev = &p->next;
    probes = p;
    in_flight[slot] = true;
    ev_io_init(&p->io, probe_io_cb, p->fd, EV_WRITE);
    ev_timer_init(&p->timer, probe_timer_cb, hc->active.timeout > 0 ? hc->active.timeout : 1, 0);
    ev_timer_start(mg_worker.loop, &p->timer);
    socklen_t len =
        addr->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (connect(p->fd, (const struct sockaddr *)addr, len) != 0 && errno != EINPROGRESS) {
        probe_done(p, MG_HC_EV_TCP_FAILURE, 0);
        return;
    }
    ev_io_start(mg_worker.loop, &p->io);
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    int64_t now = now_ns();
    for (size_t i = 0; i < probe_cfg->nupstreams; i++) {
        const mg_upstream_t *up = &probe_cfg->upstreams[i];
        const mg_healthchecks_t *hc = &up->healthchecks;
        if (!hc->active_on) continue;
        int64_t he = (int64_t)(hc->active.healthy.interval * 1e9);
        int64_t ue = (int64_t)(hc->active.unhealthy.interval * 1e9);
        for (size_t j = 0; j < up->ntargets; j++) {
            const mg_target_t *t = &up->targets[j];
            unsigned nslots = t->dns >= 0 ? MG_DNS_MAX_ADDRS : 1;
            for (unsigned k = t->slot; k < t->slot + nslots && t->weight > 0; k++) {
                struct sockaddr_storage addr;
                if (in_flight[k] || !mg_health_slot_addr(probe_cfg, k, &addr)) continue;
                if (t->dns >= 0) { /* a name's slot holds the address; the port is the target's */
                    if (addr.ss_family == AF_INET6)
                        ((struct sockaddr_in6 *)&addr)->sin6_port = htons(t->port);
                    else
                        ((struct sockaddr_in *)&addr)->sin_port = htons(t->port);
                }
                if (mg_health_claim_probe(probe_cfg, k, now, he, ue)) probe_start(up, t, k, &addr);
            }
        }
    }
}

int mg_probe_start(const mg_config_t *cfg)
{
    double every = 0;
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const mg_healthchecks_t *hc = &cfg->upstreams[i].healthchecks;
        if (!hc->active_on) continue;
        double iv[2] = {hc->active.healthy.interval, hc->active.unhealthy.interval};
        for (int k = 0; k < 2; k++)
            if (iv[k] > 0 && (every == 0 || iv[k] < every)) every = iv[k];
    }
    if (every == 0) return MG_OK;
    /* ticks often enough for the shortest interval, never busier than 20 per second */
    every = every / 2 < 0.05 ? 0.05 : every / 2 > 1 ? 1 : every / 2;
    in_flight = calloc(cfg->ntarget_slots + 1, sizeof(bool));
    if (in_flight == NULL) return MG_ERROR;
    probe_cfg = cfg;
    ev_timer_init(&tick, tick_cb, every, every);
    ev_timer_start(mg_worker.loop, &tick);
    return MG_OK;
}

void mg_probe_stop(void)
{
    if (probe_cfg == NULL) return;
    ev_timer_stop(mg_worker.loop, &tick);
    while (probes)
        probe_free(probes);
    free(in_flight);
    in_flight = NULL;
    probe_cfg = NULL;
}
