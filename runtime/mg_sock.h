/*
 * mg_sock.h — one end of a proxied exchange: a non-blocking socket with its libev watcher,
 * its deadline timer and the readiness bits the proxy pump works from. Client connections
 * (mg_conn_t) and upstream connections (mg_uconn_t) both embed one, so reading, writing and
 * re-arming events are written once. Readiness is tracked the edge-triggered way on top of
 * libev's level-triggered epoll: a watcher is armed only after a read or write would block.
 */
#ifndef MG_SOCK_H
#define MG_SOCK_H

#include <ev.h>
#include <sys/types.h>

#include "mg_core.h"
#include "mg_buf.h"

typedef struct {
    ev_io io;
    ev_timer timer;
    int fd;
    unsigned rready : 1; /* a read may return data (no EAGAIN seen since the last event) */
    unsigned wready : 1; /* a write may make progress */
    unsigned eof : 1;    /* the peer closed its side, or the socket failed */
    /* TLS: OpenSSL may need the other direction to make progress (a read that must first
     * write, a write that must first read); the event it waits for is watched instead */
    unsigned rwantw : 1, wwantr : 1;
    unsigned paused : 1; /* TLS: the handshake waits for the certificate phase (mg_tls.c) */
    void *ssl;           /* SSL *, NULL for plain TCP: reads and writes go through it */
    ev_tstamp last_io;   /* last successful read or write */
    ev_tstamp deadline;  /* when the armed timer fires; 0 = none */
} mg_sock_t;

/* Records readiness from an ev_io callback's revents (TLS cross-wants included). */
void mg_sock_ready(mg_sock_t *s, int revents);
/* Watches exactly `events` (EV_READ|EV_WRITE, 0 = none); no syscall when unchanged. */
void mg_sock_set_events(mg_sock_t *s, int events);
/* Arms the timer for the absolute time `deadline` (0 disarms); no-op when unchanged. */
void mg_sock_set_deadline(mg_sock_t *s, ev_tstamp deadline);

/*
 * Reads into the free tail of b (compacting it first). Returns the bytes read (> 0), 0 at
 * end of stream (eof set), or -1: EAGAIN (rready cleared), no room in b, or an error (eof
 * set). A short read clears rready too: the socket is drained, so the next read waits for
 * epoll instead of costing a syscall that returns EAGAIN.
 */
ssize_t mg_sock_read(mg_sock_t *s, mg_buf_t *b);

/*
 * Writes as much of b as the socket takes, adding the bytes written to *counter when it is
 * not NULL. Returns MG_OK (all written, or EAGAIN with wready cleared) or MG_ERROR (the peer
 * is gone).
 */
int mg_sock_write(mg_sock_t *s, mg_buf_t *b, uint64_t *counter);

/* Half-closes the sending side: a TLS socket sends close_notify first (without waiting for
 * the peer's), so the peer sees the end of the stream, not a truncation; reads go on. */
void mg_sock_shutdown_write(mg_sock_t *s);

#endif
