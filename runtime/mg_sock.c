/*
 * mg_sock.c — reads, writes and event bookkeeping for mg_sock_t, shared by the client and
 * upstream sides. Everything runs on the worker's loop (mg_worker.loop).
 */
#include <errno.h>
#include <unistd.h>

#include "mg_request.h"
#include "mg_sock.h"

void mg_sock_set_events(mg_sock_t *s, int events)
{
    if (ev_is_active(&s->io) && (s->io.events & (EV_READ | EV_WRITE)) == events) return;
    ev_io_stop(mg_worker.loop, &s->io);
    if (events) {
        ev_io_set(&s->io, s->fd, events);
        ev_io_start(mg_worker.loop, &s->io);
    }
}

void mg_sock_set_deadline(mg_sock_t *s, ev_tstamp deadline)
{
    if (deadline == s->deadline) return;
    ev_timer_stop(mg_worker.loop, &s->timer);
    s->deadline = deadline;
    if (deadline > 0) {
        ev_tstamp after = deadline - ev_now(mg_worker.loop);
        ev_timer_set(&s->timer, after > 0 ? after : 0.0001, 0.);
        ev_timer_start(mg_worker.loop, &s->timer);
    }
}

ssize_t mg_sock_read(mg_sock_t *s, mg_buf_t *b)
{
    mg_buf_compact(b);
    size_t room = mg_buf_free(b);
    if (room == 0) return -1;
    for (;;) {
        ssize_t n = read(s->fd, mg_buf_last(b), room);
        if (n > 0) {
            b->end += (size_t)n;
            s->last_io = ev_now(mg_worker.loop);
            if ((size_t)n < room) s->rready = 0;
            return n;
        }
        if (n == 0) {
            s->eof = 1;
            return 0;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN)
            s->rready = 0;
        else
            s->eof = 1;
        return -1;
    }
}

int mg_sock_write(mg_sock_t *s, mg_buf_t *b, uint64_t *counter)
{
    while (mg_buf_len(b) > 0 && s->wready) {
        ssize_t n = write(s->fd, mg_buf_pos(b), mg_buf_len(b));
        if (n > 0) {
            b->start += (size_t)n;
            if (counter) *counter += (uint64_t)n;
            s->last_io = ev_now(mg_worker.loop);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            s->wready = 0;
        } else {
            return MG_ERROR;
        }
    }
    if (mg_buf_len(b) == 0) b->start = b->end = 0;
    return MG_OK;
}
