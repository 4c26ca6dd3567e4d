/*
 * mg_upstream.c — connections to backends: non-blocking connect, and a per-worker keepalive
 * pool per service, or per target for a service balanced over an upstream (so a connection
 * to one target never carries a request meant for another), LIFO, capped by
 * upstream_keepalive_pool_size, closed after upstream_keepalive_idle_timeout or
 * upstream_keepalive_max_requests. An idle pooled connection is watched for readability:
 * the backend closing it (or sending bytes nobody asked for) removes it at once, so a stale
 * connection is rarely handed out. A balanced service picks its target here, from the
 * worker's balancer of the upstream (mg_balancer.c), and every try is reported back when its
 * connection is released (to the balancer, and to the passive health checks, mg_health.c,
 * whose shared marks become the balancer's `down` peers, and whose `threshold` can take the
 * whole upstream out).
 *
 * Names (mg_dns.c): a target named by host is one balancer entry per address of its current
 * answer, each with the target's weight (Kong); when the answer changes the upstream's
 * balancer is rebuilt (a consistent-hashing ring keyed by "ip:port", so only the keys of
 * addresses that came or went move), each address keeping its keepalive pool and health slot.
 * A service whose host is a name connects to the addresses of its answer in turn; when they
 * change its idle connections are closed.
 *
 * Upstream TLS (protocol https, mg_utls.c): the handshake runs on the loop between connect
 * and the first write, under the connect timeout, and its failure is a connect failure
 * (retried, counted by passive health). A pool may hold connections of several services
 * balanced over the same target address: a connection is only handed to a request whose
 * service has the same client context (TLS or not, verification, client certificate), and
 * each pool remembers one TLS session to resume (forgotten when the pool's address changes).
 * An idle TLS connection may receive a session ticket; that keeps it, anything else closes
 * it. Closing a connection the gateway owns sends close_notify, best effort.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/socket.h>

#include "mg_balancer.h"
#include "mg_health.h"
#include "mg_log.h"
#include "mg_request.h"
#include "mg_tls.h"
#include "mg_utls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

typedef struct {
    mg_uconn_t *head;
    unsigned count;
    char addr_text[64];    /* "ip:port", for logs */
    uint64_t gen;          /* bumped when the address changes: older connections are not kept */
    uint64_t dns_gen;      /* a named service's answer the pool holds connections of */
    unsigned rr;           /* a named service: the next address of its answer */
    mg_utls_cache_t cache; /* the TLS session new connections resume (the address's) */
} pool_t;

/* One balancer entry: a target's address (a named target has one per address). */
typedef struct {
    const mg_target_t *t;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    unsigned slot; /* its address slot: keepalive pool nservice_pools + slot, health slot */
} peer_t;

typedef struct {
    peer_t *peers; /* the balancer's peer i is peers[i] */
    uint64_t gen;  /* bumped at each rebuild: a try of an older build reports nothing */
} lb_t;

/* pools[0..nservices) are the services', then one per target address slot */
static pool_t *pools;
static size_t npools, nservice_pools;
static mg_balancer_t *balancers; /* one per upstream (cfg->upstreams order) */
static lb_t *lbs;
static size_t nbalancers;
static uint64_t health_seen;  /* mg_health_generation when the down marks were copied */
static bool *below_threshold; /* per upstream: its healthy weight under `threshold` % */
static char tls_error[256];   /* the last handshake failure (one loop: one at a time) */
static char failed_addr[64];  /* "ip:port" of the try mg_upstream_get could not start */

static void uconn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static int tls_step(mg_uconn_t *u);
static bool idle_tls_ok(mg_uconn_t *u);
static void uconn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void uconn_close(mg_uconn_t *u);
static void report_try(mg_uconn_t *u);
static int rebuild(const mg_config_t *cfg, size_t i);
static void pool_drain(pool_t *p);

static void addr_text(char *buf, size_t len, const struct sockaddr_storage *ss, unsigned port)
{
    const struct sockaddr *sa = (const struct sockaddr *)ss;
    char host[INET6_ADDRSTRLEN] = "";
    if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, host, sizeof(host));
    else
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, host, sizeof(host));
    snprintf(buf, len, sa->sa_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
}

/* addr_text with the port ss carries. */
static void addr_port_text(char *buf, size_t len, const struct sockaddr_storage *ss)
{
    const struct sockaddr *sa = (const struct sockaddr *)ss;
    unsigned port = ntohs(sa->sa_family == AF_INET6 ? ((const struct sockaddr_in6 *)sa)->sin6_port
                                                    : ((const struct sockaddr_in *)sa)->sin_port);
    addr_text(buf, len, ss, port);
}

int mg_upstream_init(const mg_config_t *cfg)
{
    nservice_pools = cfg->nservices;
    npools = cfg->nservices + cfg->ntarget_slots;
    pools = calloc(npools ? npools : 1, sizeof(pool_t));
    balancers = calloc(cfg->nupstreams ? cfg->nupstreams : 1, sizeof(mg_balancer_t));
    lbs = calloc(cfg->nupstreams ? cfg->nupstreams : 1, sizeof(lb_t));
    below_threshold = calloc(cfg->nupstreams ? cfg->nupstreams : 1, sizeof(bool));
    if (pools == NULL || balancers == NULL || lbs == NULL || below_threshold == NULL)
        return MG_ERROR;
    for (size_t i = 0; i < cfg->nservices; i++) {
        const mg_service_t *s = &cfg->services[i];
        if (s->upstream == NULL && s->dns < 0)
            addr_text(pools[i].addr_text, sizeof(pools[i].addr_text), &s->addr, s->port);
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        if (rebuild(cfg, i) != MG_OK) return MG_ERROR;
        nbalancers = i + 1;
    }
    return MG_OK;
}

/*
 * (Re)builds upstream i's entries and balancer from its targets: an IP target is one entry,
 * a named one an entry per address of its current answer (none before the first). On failure
 * (out of memory) the previous balancer stays. Tries in flight on the previous build report
 * nothing to the new one (its indices differ).
 */
static int rebuild(const mg_config_t *cfg, size_t i)
{
    const mg_upstream_t *up = &cfg->upstreams[i];
    size_t cap = 0, n = 0;
    for (size_t j = 0; j < up->ntargets; j++) {
        const mg_target_t *t = &up->targets[j];
        cap += t->dns >= 0 ? mg_dns_addrs((unsigned)t->dns)->naddrs : 1;
    }
    peer_t *peers = calloc(cap + 1, sizeof(peer_t));
    unsigned *weights = calloc(cap + 1, sizeof(unsigned));
    const char **ids = calloc(cap + 1, sizeof(char *));
    char(*idbuf)[64] = calloc(cap + 1, sizeof(*idbuf));
    mg_balancer_t nb;
    int rc = MG_ERROR;
    if (peers == NULL || weights == NULL || ids == NULL || idbuf == NULL) goto done;
    for (size_t j = 0; j < up->ntargets; j++) {
        const mg_target_t *t = &up->targets[j];
        if (t->dns < 0) {
            peers[n] = (peer_t){t, t->addr, t->addrlen, t->slot};
            addr_text(idbuf[n], sizeof(idbuf[n]), &t->addr, t->port);
            ids[n] = t->target; /* as before names existed: the ring does not move */
            weights[n++] = t->weight;
            continue;
        }
        const mg_dns_addrs_t *a = mg_dns_addrs((unsigned)t->dns);
        unsigned slots[MG_DNS_MAX_ADDRS];
        mg_health_assign(cfg, t, a->addrs, a->naddrs, slots);
        for (unsigned k = 0; k < a->naddrs && n < cap; k++) {
            peer_t *p = &peers[n];
            p->t = t;
            p->addr = a->addrs[k];
            p->slot = slots[k];
            if (p->addr.ss_family == AF_INET6) {
                ((struct sockaddr_in6 *)&p->addr)->sin6_port = htons(t->port);
                p->addrlen = sizeof(struct sockaddr_in6);
            } else {
                ((struct sockaddr_in *)&p->addr)->sin_port = htons(t->port);
                p->addrlen = sizeof(struct sockaddr_in);
            }
            addr_text(idbuf[n], sizeof(idbuf[n]), &p->addr, t->port);
            ids[n] = idbuf[n];
            weights[n++] = t->weight;
        }
    }
    if (mg_balancer_init(&nb, up->algorithm, weights, ids, n, up->slots) != MG_OK) goto done;
    for (size_t k = 0; k < n; k++) { /* each address slot's pool follows its address */
        pool_t *p = &pools[nservice_pools + peers[k].slot];
        if (strcmp(p->addr_text, idbuf[k]) == 0) continue;
        pool_drain(p);
        snprintf(p->addr_text, sizeof(p->addr_text), "%s", idbuf[k]);
    }
    if (i < nbalancers) {
        /* an address that stays keeps its measured latency (the slot names the address) */
        for (size_t k = 0; k < n; k++) {
            for (size_t o = 0; o < balancers[i].npeers; o++) {
                if (lbs[i].peers[o].slot != peers[k].slot) continue;
                const mg_lb_peer_t *was = &balancers[i].peers[o];
                nb.peers[k].ewma = was->ewma;
                nb.peers[k].ewma_at = was->ewma_at;
                nb.peers[k].measured = was->measured;
                break;
            }
        }
        mg_balancer_free(&balancers[i]);
    }
    balancers[i] = nb;
    free(lbs[i].peers);
    lbs[i].peers = peers;
    peers = NULL;
    lbs[i].gen++;
    health_seen = UINT64_MAX; /* the new entries take their health marks at the next pick */
    rc = MG_OK;
done:
    free(peers);
    free(weights);
    free(ids);
    free(idbuf);
    return rc;
}

void mg_upstream_dns_changed(unsigned name)
{
    const mg_config_t *cfg = mg_worker.cfg;
    for (size_t i = 0; i < nbalancers; i++) {
        const mg_upstream_t *up = &cfg->upstreams[i];
        bool uses = false;
        for (size_t j = 0; j < up->ntargets && !uses; j++)
            uses = up->targets[j].dns == (int)name;
        if (!uses) continue;
        if (rebuild(cfg, i) == MG_OK)
            mg_log_notice("upstream \"%s\": balancer rebuilt for the new addresses of %s (%zu "
                          "entries)",
                          up->name, cfg->dns_names[name], balancers[i].npeers);
        else
            mg_log_err("upstream \"%s\": out of memory rebuilding its balancer", up->name);
    }
}

/* Copies the shared health marks into every balancer's `down` once some target changed. */
static void sync_health(const mg_config_t *cfg)
{
    uint64_t g = mg_health_generation(cfg);
    if (g == health_seen) return;
    health_seen = g;
    for (size_t i = 0; i < nbalancers && i < cfg->nupstreams; i++) {
        const mg_upstream_t *up = &cfg->upstreams[i];
        double total = 0, healthy = 0;
        for (size_t j = 0; j < balancers[i].npeers; j++) {
            const peer_t *p = &lbs[i].peers[j];
            bool down = !mg_health_is_healthy(cfg, p->slot);
            balancers[i].peers[j].down = down;
            total += p->t->weight;
            if (!down) healthy += p->t->weight;
        }
        /* Kong: under `threshold` % of its weight healthy, the whole upstream is unhealthy */
        below_threshold[i] = up->healthchecks.threshold > 0 && total > 0 &&
                             healthy * 100 < up->healthchecks.threshold * total;
    }
}

/* Picks r's target address among its service's upstream (avoiding those already tried): the
 * entry, or NULL when none can take traffic. Counts the try in the balancer. */
static const peer_t *pick_target(const mg_service_t *s, mg_req_t *r, int *peer)
{
    const mg_upstream_t *up = s->upstream;
    mg_balancer_t *b = &balancers[up->index];
    int last = r->lb_last1 - 1;
    if (up->healthchecks.passive_on || up->healthchecks.active_on) sync_health(mg_worker.cfg);
    if (below_threshold[up->index]) {
        *peer = -1;
        return NULL;
    }
    double now = ev_now(mg_worker.loop);
    int i = mg_balancer_pick(b, r->lb_has_key, r->lb_hash, r->lb_tried, last, now);
    *peer = i;
    if (i < 0) return NULL;
    if (i < 64) r->lb_tried |= 1ull << i;
    r->lb_last1 = i + 1;
    return &lbs[up->index].peers[i];
}

/* A balanced upstream without entries whose named target awaits its first answer: the name
 * to wait for, or -1. */
static int first_answer_pending(const mg_upstream_t *up)
{
    for (size_t j = 0; j < up->ntargets; j++)
        if (up->targets[j].dns >= 0 && mg_dns_state((unsigned)up->targets[j].dns) == MG_DNS_NONE)
            return up->targets[j].dns;
    return -1;
}

/* The try on u's peer is over: the balancer learns its latency (time to the response head)
 * or that it gave none. */
static void report_try(mg_uconn_t *u)
{
    if (u->lb_peer < 0) return;
    const mg_upstream_t *up = u->service->upstream;
    mg_req_t *r = u->r;
    double latency = r && r->resp.head_done && r->upstream_head >= u->started
                         ? r->upstream_head - u->started
                         : -1;
    if (up && up->index < nbalancers && u->lb_gen == lbs[up->index].gen)
        mg_balancer_done(&balancers[up->index], u->lb_peer, latency, ev_now(mg_worker.loop));
    /* passive health: the status the target answered, or how it failed (a try that ended
     * otherwise, such as the client leaving first, says nothing about the target) */
    if (up && up->healthchecks.passive_on && u->lb_target) {
        const mg_target_t *t = u->lb_target;
        if (r && r->resp.head_done) {
            if (!u->hc_status_reported)
                mg_health_report_at(mg_worker.cfg, up, t, u->hc_slot, MG_HC_EV_STATUS,
                                    (int)r->resp.status);
        } else if (u->hc_failure)
            mg_health_report_at(mg_worker.cfg, up, t, u->hc_slot, (int)u->hc_failure, 0);
    }
    u->lb_peer = -1;
}

/* Counted at the head, not when the try ends: a client that sends its next request as soon
 * as it reads this answer may reach another worker, which must already see the count (the
 * thresholds are exact across workers). */
void mg_upstream_head_received(mg_uconn_t *u)
{
    const mg_upstream_t *up = u->service->upstream;
    if (u->lb_peer < 0 || up == NULL || !up->healthchecks.passive_on || !u->lb_target ||
        u->r == NULL)
        return;
    mg_health_report_at(mg_worker.cfg, up, u->lb_target, u->hc_slot, MG_HC_EV_STATUS,
                        (int)u->r->resp.status);
    u->hc_status_reported = true;
}

static void uconn_close(mg_uconn_t *u)
{
    report_try(u);
    /* close_notify on a sound session the gateway ends; never after a failure or the
     * backend's own close */
    if (u->s.ssl) mg_tls_close(&u->s, u->connected && !u->s.eof && !u->tls_failed);
    ev_io_stop(mg_worker.loop, &u->s.io);
    ev_timer_stop(mg_worker.loop, &u->s.timer);
    if (u->s.fd >= 0) close(u->s.fd);
    mg_buf_put(u->in);
    mg_buf_put(u->out);
    free(u);
}

/* Closes p's idle connections and forgets its TLS session: its address changed. */
static void pool_drain(pool_t *p)
{
    while (p->head) {
        mg_uconn_t *u = p->head;
        p->head = u->next;
        uconn_close(u);
    }
    p->count = 0;
    p->gen++;
    mg_utls_cache_clear(&p->cache);
}

static void pool_unlink(mg_uconn_t *u)
{
    pool_t *p = &pools[u->pool];
    for (mg_uconn_t **pp = &p->head; *pp; pp = &(*pp)->next) {
        if (*pp == u) {
            *pp = u->next;
            p->count--;
            return;
        }
    }
}

mg_uconn_t *mg_upstream_get(const mg_service_t *s, mg_req_t *r)
{
    unsigned pool = s->index;
    int peer = -1;
    const struct sockaddr_storage *addr = &s->addr;
    socklen_t addrlen = s->addrlen;
    const peer_t *pe = NULL;
    struct sockaddr_storage named;
    failed_addr[0] = '\0';
    if (s->upstream) {
        pe = pick_target(s, r, &peer);
        r->target = pe ? pe->t : NULL;
        if (pe == NULL) {
            int name =
                balancers[s->upstream->index].npeers ? -1 : first_answer_pending(s->upstream);
            if (name >= 0) {
                r->dns_wait = 1;
                r->dns_name = name;
                errno = EAGAIN;
                return NULL;
            }
            r->lb_no_peer = 1;
            errno = EHOSTUNREACH;
            return NULL;
        }
        pool = (unsigned)nservice_pools + pe->slot;
        addr = &pe->addr;
        addrlen = pe->addrlen;
    } else if (s->dns >= 0) {
        const mg_dns_addrs_t *a;
        int rc = mg_dns_resolve((unsigned)s->dns, r->tries > 1, &a);
        if (rc == MG_AGAIN) {
            r->dns_wait = 1;
            r->dns_name = s->dns;
            errno = EAGAIN;
            return NULL;
        }
        if (rc != MG_OK || a->naddrs == 0) {
            r->dns_failed = 1;
            errno = EHOSTUNREACH;
            return NULL;
        }
        pool_t *sp = &pools[pool];
        if (sp->dns_gen != a->generation) { /* new addresses: the old connections go */
            pool_drain(sp);
            sp->dns_gen = a->generation;
        }
        named = a->addrs[sp->rr++ % a->naddrs];
        if (named.ss_family == AF_INET6) {
            ((struct sockaddr_in6 *)&named)->sin6_port = htons(s->port);
            addrlen = sizeof(struct sockaddr_in6);
        } else {
            ((struct sockaddr_in *)&named)->sin_port = htons(s->port);
            addrlen = sizeof(struct sockaddr_in);
        }
        addr = &named;
    }
    pool_t *p = &pools[pool];
    mg_uconn_t **pp = &p->head;
    while (*pp && (*pp)->tls != s->tls) /* TLS and plain, or other TLS settings, never mix */
        pp = &(*pp)->next;
    mg_uconn_t *u = *pp;
    if (u && !r->stale_retried) {
        *pp = u->next;
        p->count--;
        u->next = NULL;
        u->reused = 1;
        u->r = r;
        u->s.rready = 0;
        u->s.wready = 1;
        u->s.last_io = ev_now(mg_worker.loop);
        u->started = u->s.last_io;
        u->lb_peer = peer;
        u->lb_gen = s->upstream ? lbs[s->upstream->index].gen : 0;
        u->lb_target = pe ? pe->t : NULL;
        u->hc_slot = pe ? pe->slot : 0;
        u->hc_failure = 0;
        u->hc_status_reported = false;
        u->service = s; /* a target's pool serves every service balanced over it */
        mg_sock_set_deadline(&u->s, 0);
        /* the idle watcher (EV_READ) stays armed: the request needs exactly that, and leaving
         * it saves an epoll_ctl per request */
        return u;
    }
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int err = errno;
        addr_port_text(failed_addr, sizeof(failed_addr), addr);
        if (peer >= 0) mg_balancer_done(&balancers[s->upstream->index], peer, -1, 0);
        errno = err;
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    u = calloc(1, sizeof(*u));
    if (u == NULL) {
        close(fd);
        addr_port_text(failed_addr, sizeof(failed_addr), addr);
        if (peer >= 0) mg_balancer_done(&balancers[s->upstream->index], peer, -1, 0);
        errno = ENOMEM;
        return NULL;
    }
    u->s.fd = fd;
    u->service = s;
    u->tls = s->tls;
    u->pool = pool;
    u->pool_gen = p->gen;
    u->lb_peer = peer;
    u->lb_gen = s->upstream ? lbs[s->upstream->index].gen : 0;
    u->lb_target = pe ? pe->t : NULL;
    u->hc_slot = pe ? pe->slot : 0;
    addr_port_text(u->addr_text, sizeof(u->addr_text), addr);
    u->r = r;
    ev_io_init(&u->s.io, uconn_io_cb, fd, EV_WRITE);
    ev_init(&u->s.timer, uconn_timer_cb);
    u->s.last_io = ev_now(mg_worker.loop);
    u->started = u->s.last_io;
    if (connect(fd, (const struct sockaddr *)addr, addrlen) == 0) {
        if (u->tls == NULL) u->connected = 1; /* else: writable at once, the handshake next */
        u->s.wready = 1;
    } else if (errno != EINPROGRESS) {
        int err = errno;
        u->hc_failure = MG_HC_EV_TCP_FAILURE;
        memcpy(failed_addr, u->addr_text, sizeof(failed_addr));
        uconn_close(u);
        errno = err;
        return NULL;
    }
    return u;
}

void mg_upstream_release(mg_uconn_t *u, bool reusable)
{
    const mg_limits_t *lim = &mg_worker.cfg->limits;
    u->requests++;
    report_try(u);
    pool_t *p = &pools[u->pool];
    if (!reusable || mg_worker.draining || u->s.eof || u->pool_gen != p->gen ||
        (u->in && mg_buf_len(u->in) > 0) || (u->s.ssl && SSL_pending(u->s.ssl) > 0) ||
        (u->out && mg_buf_len(u->out) > 0) || u->requests >= lim->upstream_keepalive_max_requests ||
        p->count >= lim->upstream_keepalive_pool_size) {
        uconn_close(u);
        return;
    }
    u->r = NULL;
    mg_buf_put(u->in);
    mg_buf_put(u->out);
    u->in = u->out = NULL;
    u->next = p->head;
    p->head = u;
    p->count++;
    /* idle, only readability matters: a TLS cross-want left from the last request would
     * arm EV_WRITE, and an idle writable socket would wake the loop without end */
    u->s.rwantw = u->s.wwantr = 0;
    mg_sock_set_events(&u->s, EV_READ);
    mg_sock_set_deadline(&u->s,
                         ev_now(mg_worker.loop) + lim->upstream_keepalive_idle_timeout * 0.001);
}

void mg_upstream_update(mg_uconn_t *u)
{
    mg_req_t *r = u->r;
    const mg_service_t *s = u->service;
    ev_tstamp ms = 0.001;
    int ev = 0;
    ev_tstamp deadline = 0;
    if (!u->connected) { /* the connect timeout covers the TLS handshake too */
        ev = u->tcp_done ? u->hs_want : EV_WRITE;
        deadline = u->started + s->connect_timeout * ms;
    } else {
        bool want_write = u->out && mg_buf_len(u->out) > 0;
        bool in_room = u->in == NULL || mg_buf_free(u->in) + u->in->start > 0;
        bool out_room = r->out == NULL || mg_buf_len(r->out) < r->out->size / 2;
        bool want_read = !u->s.eof && !r->resp_done && in_room && (r->tunnel ? out_room : true);
        if (want_write && !u->s.wready) ev |= EV_WRITE;
        if (want_read && !u->s.rready) ev |= EV_READ;
        if (want_write)
            deadline = u->s.last_io + s->write_timeout * ms;
        else if (want_read && out_room && !r->tunnel)
            deadline = u->s.last_io + s->read_timeout * ms;
    }
    mg_sock_set_events(&u->s, ev);
    mg_sock_set_deadline(&u->s, deadline);
}

static void uconn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    mg_uconn_t *u = MG_CONTAINER_OF(w, mg_uconn_t, s.io);
    if (u->r == NULL) {
        /* idle in the pool: the backend closed it or sent unsolicited bytes (a TLS session
         * ticket is neither) */
        if (u->s.ssl && idle_tls_ok(u)) return;
        pool_unlink(u);
        uconn_close(u);
        return;
    }
    if (revents & EV_READ) u->s.rready = 1;
    if (revents & EV_WRITE) u->s.wready = 1;
    if (!u->connected && !u->tcp_done && (revents & EV_WRITE)) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(u->s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            mg_proxy_upstream_error(u->r, err, false);
            return;
        }
        u->tcp_done = 1;
        u->s.last_io = ev_now(loop);
        if (u->tls == NULL) u->connected = 1;
    }
    if (!u->connected && u->tcp_done && tls_step(u) != MG_OK) return;
    mg_proxy_pump(u->r);
}

/* The name u's backend is known by: SNI and the name its certificate must carry. A
 * balanced service uses the upstream's host_header, else the target's host (Kong). */
static const char *tls_name(const mg_uconn_t *u)
{
    const mg_service_t *s = u->service;
    if (s->upstream == NULL) return s->host;
    if (s->upstream->host_header) return s->upstream->host_header;
    const mg_req_t *r = u->r;
    return r && r->target ? r->target->host : NULL;
}

/* Starts or advances u's handshake: MG_OK once connected; MG_AGAIN waiting (the watcher is
 * re-armed); MG_ERROR when it failed (the request was told: 502 or the next try). */
static int tls_step(mg_uconn_t *u)
{
    if (u->s.ssl == NULL) {
        u->s.ssl = mg_utls_new(u->tls, u->s.fd, tls_name(u), &pools[u->pool].cache);
        if (u->s.ssl == NULL) {
            snprintf(tls_error, sizeof(tls_error), "cannot create a TLS session");
            u->tls_failed = 1;
            mg_proxy_upstream_error(u->r, ENOMEM, false);
            return MG_ERROR;
        }
    }
    char why[224];
    int rc = mg_utls_handshake(u->s.ssl, &u->hs_want, why, sizeof(why));
    if (rc == MG_AGAIN) {
        mg_upstream_update(u);
        return MG_AGAIN;
    }
    if (rc == MG_ERROR) {
        const char *name = tls_name(u);
        snprintf(tls_error, sizeof(tls_error), "TLS %s (name \"%s\")", why, name ? name : "");
        u->tls_failed = 1;
        u->s.eof = 1; /* no close_notify after an alert */
        mg_proxy_upstream_error(u->r, EPROTO, false);
        return MG_ERROR;
    }
    u->connected = 1;
    u->s.rready = u->s.wready = 1;
    u->s.last_io = ev_now(mg_worker.loop);
    return MG_OK;
}

/* An idle pooled TLS connection became readable: true when that was only a post-handshake
 * message (a TLS 1.3 session ticket), so it stays in the pool. */
static bool idle_tls_ok(mg_uconn_t *u)
{
    char b[1];
    ERR_clear_error();
    int n = SSL_read(u->s.ssl, b, sizeof(b));
    int e = n > 0 ? SSL_ERROR_NONE : SSL_get_error(u->s.ssl, n);
    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ) return true;
    if (n <= 0) u->s.eof = 1; /* closed (close_notify or not): no reply */
    return false;
}

static void uconn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    mg_uconn_t *u = MG_CONTAINER_OF(w, mg_uconn_t, s.timer);
    u->s.deadline = 0;
    if (u->r == NULL) {
        pool_unlink(u);
        uconn_close(u);
        return;
    }
    mg_proxy_upstream_error(u->r, ETIMEDOUT, true);
}

void mg_upstream_pool_close_all(void)
{
    for (size_t i = 0; i < npools; i++) {
        while (pools[i].head) {
            mg_uconn_t *u = pools[i].head;
            pools[i].head = u->next;
            uconn_close(u);
        }
        pools[i].count = 0;
        mg_utls_cache_clear(&pools[i].cache);
    }
}

const char *mg_upstream_uconn_addr(const mg_uconn_t *u)
{
    return u->addr_text;
}

const char *mg_upstream_tls_error(const mg_uconn_t *u)
{
    return u->tls_failed ? tls_error : "";
}

const char *mg_upstream_try_addr(void)
{
    return failed_addr;
}
