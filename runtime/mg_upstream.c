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
    ev_io_stop(mg_worker.loop, &u->io);
    ev_timer_stop(mg_worker.loop, &u->timer);
    if (u->fd >= 0) close(u->fd);
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

static void set_deadline(mg_uconn_t *u, ev_tstamp deadline)
{
    if (deadline == u->deadline) return;
    ev_timer_stop(mg_worker.loop, &u->timer);
    u->deadline = deadline;
    if (deadline > 0) {
        ev_tstamp after = deadline - ev_now(mg_worker.loop);
        ev_timer_set(&u->timer, after > 0 ? after : 0.0001, 0.);
        ev_timer_start(mg_worker.loop, &u->timer);
    }
}

static void set_events(mg_uconn_t *u, int events)
{
    if (ev_is_active(&u->io) && (u->io.events & (EV_READ | EV_WRITE)) == events) return;
    ev_io_stop(mg_worker.loop, &u->io);
    if (events) {
        ev_io_set(&u->io, u->fd, events);
        ev_io_start(mg_worker.loop, &u->io);
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
        u->rready = 0;
        u->wready = 1;
        u->last_io = ev_now(mg_worker.loop);
        set_deadline(u, 0);
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
    u->fd = fd;
    u->service = s;
    u->r = r;
    ev_io_init(&u->io, uconn_io_cb, fd, EV_WRITE);
    ev_init(&u->timer, uconn_timer_cb);
    u->last_io = ev_now(mg_worker.loop);
    if (connect(fd, (const struct sockaddr *)&s->addr, s->addrlen) == 0) {
        u->connected = 1;
        u->wready = 1;
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
    if (!reusable || mg_worker.draining || u->eof || (u->in && mg_buf_len(u->in) > 0) ||
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
    set_events(u, EV_READ);
    set_deadline(u, ev_now(mg_worker.loop) + lim->upstream_keepalive_idle_timeout * 0.001);
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
        deadline = u->last_io + s->connect_timeout * ms;
    } else {
        bool want_write = u->out && mg_buf_len(u->out) > 0;
        bool in_room = u->in == NULL || mg_buf_free(u->in) + u->in->start > 0;
        bool out_room = r->out == NULL || mg_buf_len(r->out) < r->out->size / 2;
        bool want_read = !u->eof && !r->resp_done && in_room && (r->tunnel ? out_room : true);
        if (want_write && !u->wready) ev |= EV_WRITE;
        if (want_read && !u->rready) ev |= EV_READ;
        if (want_write)
            deadline = u->last_io + s->write_timeout * ms;
        else if (want_read && out_room && !r->tunnel)
            deadline = u->last_io + s->read_timeout * ms;
    }
    set_events(u, ev);
    set_deadline(u, deadline);
}

ssize_t mg_upstream_read(mg_uconn_t *u)
{
    if (u->in == NULL && (u->in = mg_buf_get()) == NULL) return -1;
    mg_buf_compact(u->in);
    size_t room = mg_buf_free(u->in);
    if (room == 0) return -1;
    for (;;) {
        ssize_t n = read(u->fd, mg_buf_last(u->in), room);
        if (n > 0) {
            u->in->end += (size_t)n;
            u->last_io = ev_now(mg_worker.loop);
            if ((size_t)n < room) u->rready = 0; /* drained: wait for epoll, skip the EAGAIN */
            return n;
        }
        if (n == 0) {
            u->eof = 1;
            return 0;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN)
            u->rready = 0;
        else
            u->eof = 1;
        return -1;
    }
}

int mg_upstream_write(mg_uconn_t *u)
{
    mg_buf_t *b = u->out;
    while (b && mg_buf_len(b) > 0 && u->wready) {
        ssize_t n = write(u->fd, mg_buf_pos(b), mg_buf_len(b));
        if (n > 0) {
            b->start += (size_t)n;
            u->last_io = ev_now(mg_worker.loop);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            u->wready = 0;
        } else {
            return MG_ERROR;
        }
    }
    if (b && mg_buf_len(b) == 0) b->start = b->end = 0;
    return MG_OK;
}

static void uconn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    mg_uconn_t *u = MG_CONTAINER_OF(w, mg_uconn_t, io);
    if (u->r == NULL) {
        /* idle in the pool: the backend closed it or sent unsolicited bytes */
        pool_unlink(u);
        uconn_close(u);
        return;
    }
    if (revents & EV_READ) u->rready = 1;
    if (revents & EV_WRITE) u->wready = 1;
    if (!u->connected && (revents & EV_WRITE)) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            mg_proxy_upstream_error(u->r, err, false);
            return;
        }
        u->connected = 1;
        u->last_io = ev_now(loop);
    }
    mg_proxy_pump(u->r);
}

static void uconn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    mg_uconn_t *u = MG_CONTAINER_OF(w, mg_uconn_t, timer);
    u->deadline = 0;
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
