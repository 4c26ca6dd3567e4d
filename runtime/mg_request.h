/*
 * mg_request.h — the objects of the request path and how they hang together:
 *
 *   mg_worker_t   one per process: the libev loop, the live config and router, counters
 *   mg_conn_t     a client connection; small (no buffers) while idle between requests
 *   mg_req_t      one request on a connection, allocated from a per-request pool
 *   mg_uconn_t    an upstream connection, owned by a request or idle in the keepalive pool
 *
 * Phases: the head is parsed (mg_conn.c), the route found, then — this is where the Lua
 * phase runner slots in — the request is proxied (mg_proxy.c) over an upstream connection
 * (mg_upstream.c), and finally logged and the connection kept alive or closed (mg_conn.c).
 */
#ifndef MG_REQUEST_H
#define MG_REQUEST_H

#include <ev.h>
#include <netinet/in.h>
#include <sys/types.h>

#include "mg_core.h"
#include "mg_buf.h"
#include "mg_config.h"
#include "mg_dns.h"
#include "mg_http.h"
#include "mg_pool.h"
#include "mg_router.h"
#include "mg_sock.h"

typedef struct mg_req_s mg_req_t;
/* Tries whose address the access log names (more are counted, not named). */
#define MG_LOGGED_TRIES 8
typedef struct mg_conn_s mg_conn_t;
typedef struct mg_uconn_s mg_uconn_t;

typedef struct {
    ev_io io;
    int fd;
    const mg_listen_t *conf;
    uint16_t port; /* local port, for X-Forwarded-Port */
} mg_listener_t;

typedef struct {
    struct ev_loop *loop;
    const mg_config_t *cfg;
    mg_router_t *router;
    mg_listener_t *listeners;
    size_t nlisteners;
    unsigned nconns;
    bool draining;    /* graceful stop: no accepts, finish what is in flight */
    mg_conn_t *conns; /* every live client connection (for draining) */
    /* client connections with events, in the order epoll reported them (mg_conn.c) */
    mg_conn_t *ready_head, *ready_tail;
    ev_check ready_drain; /* never started: fed when ready_head fills, runs after the batch */
    ev_timer flush_timer; /* access-log batches */
    ev_timer drain_timer; /* graceful-stop deadline */
    ev_signal sig_term, sig_quit, sig_int, sig_hup, sig_usr1;
    uint64_t rid_seed, rid_counter;
    unsigned slot; /* the worker's number, 0-based */
    uint64_t requests_total;
} mg_worker_t;

extern mg_worker_t mg_worker;

struct mg_conn_s {
    mg_sock_t s;   /* the client socket, its watcher, timer and readiness */
    uint8_t state; /* MG_CONN_* */
    uint8_t peer_family;
    uint16_t peer_port;
    uint8_t peer_addr[16];
    unsigned requests;   /* served on this connection */
    uint32_t guard_slot; /* its entry in the guards' table, MG_GUARD_NONE when unguarded */
    const mg_listener_t *ls;
    mg_buf_t *in;                       /* client bytes not yet consumed; NULL while idle */
    mg_req_t *r;                        /* the current request, NULL while idle */
    mg_conn_t *prev, *next;             /* mg_worker.conns */
    mg_conn_t *ready_prev, *ready_next; /* mg_worker.ready_head list, while queued */
    int ready_revents;                  /* the events it is queued with, 0 when not queued */
};

/* MG_CONN_TLS: an `ssl` listener's connection until its handshake completes */
enum { MG_CONN_IDLE, MG_CONN_HEAD, MG_CONN_ACTIVE, MG_CONN_LINGER, MG_CONN_TLS };

struct mg_uconn_s {
    mg_sock_t s; /* the upstream socket, its watcher, timer and readiness */
    /* connected: ready for the request (TCP up and, for https, the handshake done) */
    unsigned connected : 1, reused : 1;
    unsigned tcp_done : 1;           /* https: TCP is up, the TLS handshake runs (hs_want) */
    unsigned tls_failed : 1;         /* the handshake failed: mg_upstream_tls_error() says why */
    int hs_want;                     /* EV_READ or EV_WRITE: what the handshake waits for */
    const struct mg_utls_ctx_s *tls; /* the client context (s->ssl), NULL for plain TCP: a
                                        pooled connection serves only its own context */
    unsigned requests;
    const mg_service_t *service;  /* timeouts */
    unsigned pool;                /* keepalive pool: the service's, or its target address's */
    uint64_t pool_gen;            /* the pool's generation when made: another address since? */
    int lb_peer;                  /* the balancer's peer this try counts against, or -1 */
    uint64_t lb_gen;              /* the balancer's build lb_peer belongs to */
    const mg_target_t *lb_target; /* the peer's target and address slot (passive health) */
    unsigned hc_slot;
    char addr_text[64];      /* "ip:port" connected to, for logs */
    unsigned hc_failure;     /* passive health: MG_HC_EV_TCP_FAILURE/TIMEOUT, or 0 */
    bool hc_status_reported; /* passive health already heard this try's status */
    ev_tstamp started;       /* the try began (latency for the balancer) */
    mg_req_t *r;             /* owner, NULL while idle in the pool */
    mg_buf_t *in, *out;
    mg_uconn_t *next; /* pool list */
};

/* A header change a plugin asked for, applied when the head is written. */
typedef struct mg_hdr_op_s {
    struct mg_hdr_op_s *next;
    int op; /* 0 set (replaces every value), 1 add, 2 clear */
    mg_str_t name, value;
} mg_hdr_op_t;

enum { MG_LUA_STAGE_REWRITE = 1, MG_LUA_STAGE_ACCESS = 2 };

struct mg_req_s {
    mg_conn_t *c;
    mg_pool_t *pool;
    mg_http_msg_t msg; /* what the client sent */
    const mg_route_t *route;
    const mg_service_t *service;
    size_t prefix_len;
    mg_buf_t *out; /* bytes for the client */
    mg_uconn_t *u;
    mg_http_msg_t resp; /* what the upstream answered */
    mg_header_t *resp_headers;
    unsigned status;     /* status sent (or to log) */
    uint64_t bytes_sent; /* to the client, head included */
    uint64_t resp_head_bytes;
    ev_tstamp start, upstream_start, upstream_head;
    unsigned tries;
    unsigned head_sent : 1;          /* client already has part of the response */
    unsigned req_body_done : 1;      /* request body fully read from the client */
    unsigned req_sent : 1;           /* request (head and body) fully written upstream */
    unsigned resp_done : 1;          /* response body fully read from upstream */
    unsigned keepalive : 1;          /* client connection stays open after this response */
    unsigned tunnel : 1;             /* after a 101: raw bytes both ways */
    unsigned tunnel_client_done : 1; /* the client's half-close was passed upstream */
    unsigned local_response : 1;     /* the gateway answered itself (error, 404) */
    unsigned upstream_failed : 1;
    unsigned stale_retried : 1;
    unsigned client_aborted : 1;
    char request_id[33];
    mg_str_t rid;
    /* "ip:port" of the last try, for logs ("" before); the texts are copies: the connection,
     * or the balancer entry of a named target's address, may be gone by the log */
    const char *upstream_addr;
    char upstream_addr_text[64];
    /* "ip:port" of each try, in order: the access log lists them, like nginx's
     * $upstream_addr; tries past MG_LOGGED_TRIES are only counted */
    char try_addrs[MG_LOGGED_TRIES][64];
    const char *body_limit_message; /* the 413's message when a plugin lowered the limit */

    /* balancing: a service whose host names an upstream */
    const mg_target_t *target; /* the target of the current try, NULL when not balanced */
    uint64_t lb_tried;         /* targets tried so far (bit = index in the upstream) */
    uint64_t lb_hash;          /* consistent hashing: the key's hash, when lb_has_key */
    unsigned lb_has_key : 1;
    unsigned lb_keyed : 1;   /* lb_hash was computed (once per request) */
    unsigned lb_no_peer : 1; /* no target can take traffic: 503 */
    int lb_last1;            /* the previous try's peer + 1 (0: none) */
    const void *route_regex; /* the route's regex path that matched (uri_capture), or NULL */
    mg_str_t lb_consumer;    /* the authenticated consumer's id (else credential's), or none */

    /* DNS (mg_dns.c): a service host or an upstream's targets waiting for their first answer
     * park the request (bounded by connect_timeout); a failed name answers 503 */
    mg_dns_waiter_t dns_waiter;
    ev_timer dns_timer;
    int dns_name;             /* the name waited for (mg_upstream_get sets it) */
    unsigned dns_wait : 1;    /* mg_upstream_get: wait for dns_name, then try again */
    unsigned dns_waiting : 1; /* parked */
    unsigned dns_failed : 1;  /* the service's name did not resolve: 503 */

    /* Lua: only requests whose route (or a global rewrite) has plugins ever set these */
    unsigned lua_id;          /* the request's id on the Lua side; 0 = never entered Lua */
    int lua_co_ref;           /* registry ref of the suspended coroutine, or 0 */
    uint8_t lua_stage;        /* MG_LUA_STAGE_*: what a resumed coroutine was running */
    unsigned lua_waiting : 1; /* a coroutine is suspended (sleep, cosocket) */
    unsigned lua_live : 1;    /* the Lua side holds state for this request (a later phase,
                                 or mg_lua_request_end, frees it) */
    ev_timer lua_timer;       /* moongate.sleep */
    /* what the suspended coroutine waits on, cancelled when the request ends first (the
     * client left): stops a timer, detaches a cosocket. NULL while not waiting. */
    void (*lua_cancel)(mg_req_t *r, void *data);
    void *lua_cancel_data;
    mg_hdr_op_t *up_ops, **up_ops_tail;     /* changes to the upstream request's headers */
    mg_hdr_op_t *resp_ops, **resp_ops_tail; /* changes to the response's headers */
    mg_str_t up_path, up_query, up_method;  /* replacements (data NULL: none) */
    unsigned body_filter : 1;   /* the response body goes through the body_filter chain */
    unsigned body_buffered : 1; /* body_buf holds the whole (decoded) request body */
    unsigned body_reading : 1;  /* a plugin waits for the request body to arrive */
    unsigned body_failed : 1;   /* reading it for a plugin failed midway (too large) */
    mg_buf_t *body_buf;         /* the request body read for plugins (get_raw_body), or the
                                   one they set (set_raw_body); sent upstream from here */
    size_t body_sent;           /* bytes of body_buf already queued for the upstream */
    size_t up_head_len;         /* bytes of the upstream request head last written */
    mg_buf_t *filter_in;        /* a decoded piece of the upstream body, for the filter */
    mg_buf_t *filtered;         /* the filter's framed output, waiting for room in r->out */
    char *filter_chunk;         /* what set_chunk() gave (malloc), NULL = unchanged */
    size_t filter_chunk_len;
};

/* mg_conn.c */
/* Takes a connection just accepted on ls from sa; guard_slot is what mg_guard_accept gave
 * (the connection gives it back when it closes, whatever happens). */
void mg_conn_accept(mg_listener_t *ls, int fd, const struct sockaddr *sa, uint32_t guard_slot);
/* True when the client connection may serve another request after r: the client asked for
 * keep-alive, and neither draining nor keepalive_timeout/keepalive_requests forbid it. */
bool mg_conn_may_keepalive(const mg_req_t *r);
/* Ends r: access log, release the upstream, keep the connection alive or close it. */
void mg_conn_request_done(mg_req_t *r);
/* Aborts the client connection at once (no lingering): a response was cut short. */
void mg_conn_abort(mg_conn_t *c);
/* Answers r with a gateway-generated error and ends it once written. */
void mg_conn_respond_error(mg_req_t *r, unsigned status, const char *reason);
/* Re-evaluates which events the client watcher needs and its deadline. */
void mg_conn_update(mg_conn_t *c);
/* Graceful stop: idle connections close now, busy ones after their current response. */
void mg_conn_drain_all(void);
/* Sets up the queue that serves client events in epoll's order (once per worker). */
void mg_conn_init_worker(void);
size_t mg_conn_client_ip(const mg_conn_t *c, char *buf, size_t len);

/* Continues a request after its Lua phase finished: rc is MG_OK (go on), MG_DONE (a plugin
 * answered), MG_AGAIN (still suspended) or MG_ERROR (a plugin failed: 500). */
void mg_conn_lua_continue(mg_req_t *r, int rc);
/* Stages a complete response (a plugin's own answer) in r->out: status, the header block
 * ("Name: value\r\n..."), the response header changes plugins made, and body. MG_OK or
 * MG_ERROR (out of memory). The caller ends the phase; mg_conn_lua_continue sends it. */
int mg_conn_stage_response(mg_req_t *r, unsigned status, const char *body, size_t blen,
                           const char *headers, size_t hlen);

/* Reads the request body into r->body_buf for plugins. MG_OK when it is all there,
 * MG_AGAIN when more must arrive (the coroutine is resumed when it has), MG_DECLINED when it
 * is larger than limits.client_body_buffer_size, or an HTTP status for a bad body. */
int mg_conn_read_body(mg_req_t *r);

/* mg_proxy.c */
/* Starts proxying r (head parsed and routed). */
void mg_proxy_start(mg_req_t *r);
/* Moves bytes as far as possible in every direction; called from every I/O event. */
void mg_proxy_pump(mg_req_t *r);
/* The client address per trusted_ips + real_ip_header (MG_OK), or MG_DECLINED when the peer
 * is not trusted or sent none. */
int mg_proxy_forwarded_ip(const mg_req_t *r, mg_str_t *ip);
/* An upstream connection attempt or exchange failed before the response began. */
void mg_proxy_upstream_error(mg_req_t *r, int err, bool timeout);
/* Stops r's wait for a DNS answer (the request ends first). */
void mg_proxy_dns_cancel(mg_req_t *r);

/* mg_upstream.c */
/* Returns a connected (or connecting) upstream connection for s: from the keepalive pool
 * when one is idle, else a new non-blocking connect. NULL with errno set on failure. When
 * s is balanced (s->upstream), a target is picked first (r->target; r->lb_tried avoided,
 * r->lb_hash for consistent hashing): none available sets r->lb_no_peer (errno EHOSTUNREACH);
 * the pool is the target address's, so a connection to one never serves another. A host
 * (or every target) still waiting for its first DNS answer sets r->dns_wait and r->dns_name
 * (errno EAGAIN); a service host that did not resolve sets r->dns_failed. For an https
 * service (s->tls) a pooled connection must share s's client context, and a new one runs its
 * TLS handshake after the connect (u->connected once it is done; a failure reaches
 * mg_proxy_upstream_error as a connect failure). */
mg_uconn_t *mg_upstream_get(const mg_service_t *s, mg_req_t *r);
/* Returns u to the keepalive pool when `reusable`, otherwise closes it. */
void mg_upstream_release(mg_uconn_t *u, bool reusable);
/* Re-evaluates which events the upstream watcher needs and its deadline. */
void mg_upstream_update(mg_uconn_t *u);
/* Closes every idle pooled connection (shutdown, reload). */
void mg_upstream_pool_close_all(void);
/* Sizes the per-service pools for cfg (worker start). MG_OK or MG_ERROR. */
int mg_upstream_init(const mg_config_t *cfg);
/* A name's addresses changed (mg_dns.c): rebuilds the balancers of the upstreams with a
 * target of that name. */
void mg_upstream_dns_changed(unsigned name);
/* u's response head is parsed (r->resp.status): passive health counts the status now,
 * before the client reads any of it. */
void mg_upstream_head_received(mg_uconn_t *u);
/* "ip:port" of what u connects to (the service's address or its target's); valid while u
 * lives. */
const char *mg_upstream_uconn_addr(const mg_uconn_t *u);
/* Why u's TLS handshake failed (u->tls_failed), for the error log. */
const char *mg_upstream_tls_error(const mg_uconn_t *u);
/* "ip:port" of the address the last mg_upstream_get went to when it returned NULL without
 * a connection (a try that failed at once still names where it went; "" when no address
 * was picked); valid until the next mg_upstream_get. */
const char *mg_upstream_try_addr(void);

/* mg_worker.c */
/* Runs a worker's event loop on listen_fds (one per cfg->proxy_listen entry) until it is
 * stopped; `standalone` when there is no master (master_process: off). MG_OK or MG_ERROR. */
int mg_worker_run(const mg_config_t *cfg, int *listen_fds, size_t nfds, unsigned slot,
                  bool standalone);

#endif
