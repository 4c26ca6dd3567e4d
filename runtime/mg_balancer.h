/*
 * mg_balancer.h — choosing a target of an upstream for one try of a request. One balancer
 * per upstream and worker (no locks, no shared state): weighted round-robin (smooth, as
 * nginx), least-connections (weighted, ties by round-robin), consistent hashing on a ring of
 * `slots` (ketama points, so adding or removing one of N targets moves ~1/N of the keys) and
 * latency (peak EWMA). Everything is allocated once, when the balancer is built: picking and
 * reporting allocate nothing.
 */
#ifndef MG_BALANCER_H
#define MG_BALANCER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    MG_LB_ROUND_ROBIN,
    MG_LB_LEAST_CONNECTIONS,
    MG_LB_CONSISTENT_HASHING,
    MG_LB_LATENCY,
};

/* One target as the balancer sees it. `down` is the health mark (health checks set it):
 * a peer that is down or has weight 0 gets no traffic. */
typedef struct {
    unsigned weight;
    bool down;
    int64_t current; /* smooth weighted round-robin */
    unsigned active; /* tries in flight */
    double ewma;     /* latency in seconds (peak EWMA); 0 until measured */
    double ewma_at;  /* when ewma was last updated (seconds, any monotonic clock) */
    bool measured;
} mg_lb_peer_t;

typedef struct {
    int algorithm; /* MG_LB_* */
    size_t npeers;
    mg_lb_peer_t *peers;
    uint32_t *ring; /* consistent hashing: `slots` entries, a peer index each */
    unsigned slots;
    uint64_t rr; /* consistent hashing without a key: a rotating position */
} mg_balancer_t;

/* Seconds over which a latency sample loses weight (peak EWMA), and over which an unused
 * peer's latency is forgotten at pick time (so a slow peer is tried again eventually). */
#define MG_LB_EWMA_DECAY 10.0

/*
 * Builds a balancer over n peers (weights[i], 0 = disabled). `ids` (stable identities such
 * as "host:port") place the peers on the consistent-hashing ring; they are read only here.
 * `slots` sizes the ring (consistent hashing only, >= 1). MG_OK, or MG_ERROR (out of
 * memory; nothing to free). Free with mg_balancer_free.
 */
int mg_balancer_init(mg_balancer_t *b, int algorithm, const unsigned *weights,
                     const char *const *ids, size_t n, unsigned slots);
void mg_balancer_free(mg_balancer_t *b);

/*
 * Picks a peer for one try: one with weight > 0 that is not down, avoiding the peers in
 * `tried` (bit i = peer i, for i < 64) when another is available, and once all were tried,
 * avoiding at least `last` (the previous try's peer, -1 none) so retries take turns. `hash` is the
 * key of consistent hashing (has_key false: none, the ring is walked in turn). `now` in seconds.
 * The peer's in-flight count is raised: report the end with mg_balancer_done. Returns the
 * peer index, or -1 when no peer can take traffic.
 */
int mg_balancer_pick(mg_balancer_t *b, bool has_key, uint64_t hash, uint64_t tried, int last,
                     double now);

/* A try on peer i ended; `latency` (seconds, time to the response head) or < 0 when the try
 * gave none (a failure). */
void mg_balancer_done(mg_balancer_t *b, int i, double latency, double now);

/* The 64-bit hash of a key (FNV-1a, then a 64-bit finaliser for the low bits). */
uint64_t mg_balancer_hash(const void *data, size_t len);

#endif
