/*
 * mg_upstream.c — connections to backends: non-blocking connect, and a per-worker keepalive
 * pool per service (LIFO, capped by upstream_keepalive_pool_size, closed after
 * upstream_keepalive_idle_timeout or upstream_keepalive_max_requests). An idle pooled
 * connection is watched for readability: the backend closing it (or sending bytes nobody
 * asked for) removes it at once, so a stale connection is rarely handed out.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/socket.h>

#include "mg_log.h"
#include "mg_request.h"

typedef struct {
    mg_uconn_t *head;
    unsigned count;
    char addr_text[64]; /* "ip:port", for logs */
} pool_t;

static pool_t *pools;
static size_t npools;

static void uconn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void uconn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void uconn_close(mg_uconn_t *u);

int mg_upstream_init(const mg_config_t *cfg)
{
    npools = cfg->nservices;
    pools = calloc(npools ? npools : 1, sizeof(pool_t));
    if (pools == NULL) return MG_ERROR;
    for (size_t i = 0; i < npools; i++) {
        const mg_service_t *s = &cfg->services[i];
        const struct sockaddr *sa = (const struct sockaddr *)&s->addr;
        char host[INET6_ADDRSTRLEN] = "";
        if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, host, sizeof(host));
        else
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, host, sizeof(host));
        snprintf(pools[i].addr_text, sizeof(pools[i].addr_text),
                 sa->sa_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, s->port);
    }
    return MG_OK;
}

static void uconn_close(mg_uconn_t *u)
{
    ev_io_stop(mg_worker.loop, &u->s.io);
    ev_timer_stop(mg_worker.loop, &u->s.timer);
    if (u->s.fd >= 0) close(u->s.fd);
    mg_buf_put(u->in);
    mg_buf_put(u->out);
    free(u);
}

static void pool_unlink(mg_uconn_t *u)
{
    pool_t *p = &pools[u->service->index];
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
    pool_t *p = &pools[s->index];
    mg_uconn_t *u = p->head;
    if (u && !r->stale_retried) {
        p->head = u->next;
        p->count--;
        u->next = NULL;
        u->reused = 1;
        u->r = r;
        u->s.rready = 0;
        u->s.wready = 1;
        u->s.last_io = ev_now(mg_worker.loop);
        mg_sock_set_deadline(&u->s, 0);
        /* the idle watcher (EV_READ) stays armed: the request needs exactly that, and leaving
         * it saves an epoll_ctl per request */
        return u;
    }
    int fd = socket(s->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    u = calloc(1, sizeof(*u));
    if (u == NULL) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    u->s.fd = fd;
    u->service = s;
    u->r = r;
    ev_io_init(&u->s.io, uconn_io_cb, fd, EV_WRITE);
    ev_init(&u->s.timer, uconn_timer_cb);
    u->s.last_io = ev_now(mg_worker.loop);
    if (connect(fd, (const struct sockaddr *)&s->addr, s->addrlen) == 0) {
        u->connected = 1;
        u->s.wready = 1;
    } else if (errno != EINPROGRESS) {
        int err = errno;
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
    pool_t *p = &pools[u->service->index];
    if (!reusable || mg_worker.draining || u->s.eof || (u->in && mg_buf_len(u->in) > 0) ||
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
    if (!u->connected) {
        ev = EV_WRITE;
        deadline = u->s.last_io + s->connect_timeout * ms;
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
        /* idle in the pool: the backend closed it or sent unsolicited bytes */
        pool_unlink(u);
        uconn_close(u);
        return;
    }
    if (revents & EV_READ) u->s.rready = 1;
    if (revents & EV_WRITE) u->s.wready = 1;
    if (!u->connected && (revents & EV_WRITE)) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(u->s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            mg_proxy_upstream_error(u->r, err, false);
            return;
        }
        u->connected = 1;
        u->s.last_io = ev_now(loop);
    }
    mg_proxy_pump(u->r);
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
    }
}

const char *mg_upstream_addr_text(const mg_service_t *s)
{
    return pools[s->index].addr_text;
}
