/*
 * mg_balancer.c — the four balancing algorithms over an array of peers (mg_balancer.h).
 * Round-robin is nginx's smooth weighted round-robin: each pick adds every peer's weight to
 * its `current`, takes the largest and subtracts the total, which spreads a 5:1:1 split as
 * a,a,b,a,c,a,a rather than a,a,a,a,a,b,c. Least-connections picks the lowest in-flight count
 * per unit of weight and breaks ties with the same smooth round-robin. Consistent hashing
 * places each peer on a 32-bit circle at points derived from its identity ("host:port"#k, a
 * number of points proportional to its weight: ketama), then precomputes, for each of the
 * `slots` evenly spaced positions, the peer owning the next point: a lookup is one modulo,
 * and removing a peer only hands its own points' keys to their successors. Latency is peak
 * EWMA (Finagle): a slower sample is taken at once, faster ones blend in over time, and the
 * cost of a peer is its latency times (in-flight + 1) divided by its weight; a latency not
 * refreshed fades at pick time so a once-slow peer is tried again later.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_balancer.h"
#include "mg_core.h"

/* Ring points per 100 of weight, and a bound on all points (extreme weights are scaled). */
#define POINTS_PER_100 160u
#define MAX_POINTS (1u << 20)

static bool usable(const mg_balancer_t *b, size_t i, uint64_t tried);
static int pick_rr(mg_balancer_t *b, uint64_t tried);
static int pick_least(mg_balancer_t *b, uint64_t tried, double now);
static double latency_now(const mg_lb_peer_t *p, double now);
static int pick_hash(mg_balancer_t *b, bool has_key, uint64_t hash, uint64_t tried);
static int build_ring(mg_balancer_t *b, const char *const *ids);

uint64_t mg_balancer_hash(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    /* splitmix64's finaliser: FNV's low bits are weak, and the ring uses them */
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

int mg_balancer_init(mg_balancer_t *b, int algorithm, const unsigned *weights,
                     const char *const *ids, size_t n, unsigned slots)
{
    memset(b, 0, sizeof(*b));
    b->algorithm = algorithm;
    b->npeers = n;
    b->slots = slots;
    b->peers = calloc(n ? n : 1, sizeof(mg_lb_peer_t));
    if (b->peers == NULL) return MG_ERROR;
    for (size_t i = 0; i < n; i++)
        b->peers[i].weight = weights[i];
    if (algorithm == MG_LB_CONSISTENT_HASHING && build_ring(b, ids) != MG_OK) {
        mg_balancer_free(b);
        return MG_ERROR;
    }
    return MG_OK;
}

void mg_balancer_free(mg_balancer_t *b)
{
    free(b->peers);
    free(b->ring);
    memset(b, 0, sizeof(*b));
}

typedef struct {
    uint32_t pos;
    uint32_t peer;
    const char *id;
} point_t;

static int point_cmp(const void *a, const void *b)
{
    const point_t *p = a, *q = b;
    if (p->pos != q->pos) return p->pos < q->pos ? -1 : 1;
    return strcmp(p->id, q->id); /* a collision resolves the same way whatever the order */
}

/* The ring: ketama points per peer, then the owner of each of the `slots` positions. */
static int build_ring(mg_balancer_t *b, const char *const *ids)
{
    uint64_t total = 0;
    for (size_t i = 0; i < b->npeers; i++)
        total += ((uint64_t)b->peers[i].weight * POINTS_PER_100 + 99) / 100;
    b->ring = malloc((b->slots ? b->slots : 1) * sizeof(uint32_t));
    if (b->ring == NULL) return MG_ERROR;
    if (total == 0) { /* every weight is 0: nothing to place, pick() finds no peer */
        memset(b->ring, 0, (b->slots ? b->slots : 1) * sizeof(uint32_t));
        return MG_OK;
    }
    double scale = total > MAX_POINTS ? (double)MAX_POINTS / (double)total : 1.0;
    size_t cap = (size_t)MG_MIN(total, (uint64_t)MAX_POINTS) + b->npeers, npoints = 0;
    point_t *pts = malloc(cap * sizeof(point_t));
    if (pts == NULL) return MG_ERROR;
    for (size_t i = 0; i < b->npeers; i++) {
        if (b->peers[i].weight == 0) continue;
        uint64_t want = ((uint64_t)b->peers[i].weight * POINTS_PER_100 + 99) / 100;
        uint64_t k = MG_MAX((uint64_t)1, (uint64_t)((double)want * scale));
        size_t len = MG_MIN(strlen(ids[i]), (size_t)256);
        char buf[300];
        memcpy(buf, ids[i], len);
        for (uint64_t j = 0; j < k && npoints < cap; j++) {
            int m = snprintf(buf + len, sizeof(buf) - len, "#%llu", (unsigned long long)j);
            uint64_t h = mg_balancer_hash(buf, len + (size_t)m);
            pts[npoints++] = (point_t){(uint32_t)(h >> 32), (uint32_t)i, ids[i]};
        }
    }
    qsort(pts, npoints, sizeof(point_t), point_cmp);
    /* slot s sits at s * 2^32 / slots; its owner is the first point at or after it */
    size_t p = 0;
    for (unsigned s = 0; s < b->slots; s++) {
        uint32_t pos = (uint32_t)(((uint64_t)s << 32) / b->slots);
        while (p < npoints && pts[p].pos < pos)
            p++;
        b->ring[s] = pts[p < npoints ? p : 0].peer; /* past the last point: wrap around */
    }
    free(pts);
    return MG_OK;
}

static bool usable(const mg_balancer_t *b, size_t i, uint64_t tried)
{
    const mg_lb_peer_t *p = &b->peers[i];
    return p->weight > 0 && !p->down && !(i < 64 && (tried >> i) & 1);
}

/* Smooth weighted round-robin over the usable peers. */
static int pick_rr(mg_balancer_t *b, uint64_t tried)
{
    int best = -1;
    int64_t total = 0;
    for (size_t i = 0; i < b->npeers; i++) {
        if (!usable(b, i, tried)) continue;
        mg_lb_peer_t *p = &b->peers[i];
        p->current += p->weight;
        total += p->weight;
        if (best < 0 || p->current > b->peers[best].current) best = (int)i;
    }
    if (best >= 0) b->peers[best].current -= total;
    return best;
}

/* The latency a peer is judged by now: its EWMA fading while it is not refreshed. */
static double latency_now(const mg_lb_peer_t *p, double now)
{
    double age = now - p->ewma_at;
    return age > 0 ? p->ewma * exp(-age / MG_LB_EWMA_DECAY) : p->ewma;
}

/*
 * Least-connections (or latency): the lowest cost per unit of weight, cost being the
 * in-flight count (least-connections) or latency * (in-flight + 1) (peak EWMA); ties go
 * round-robin, so equal peers share the load in weight proportion.
 */
static int pick_least(mg_balancer_t *b, uint64_t tried, double now)
{
    bool ewma = b->algorithm == MG_LB_LATENCY;
    double best_cost = 0;
    int nbest = 0;
    for (size_t i = 0; i < b->npeers; i++) {
        if (!usable(b, i, tried)) continue;
        const mg_lb_peer_t *p = &b->peers[i];
        double cost =
            ewma ? (p->measured ? latency_now(p, now) : 0) * (p->active + 1) : (double)p->active;
        cost /= p->weight;
        if (nbest == 0 || cost < best_cost * (1 - 1e-9)) {
            best_cost = cost;
            nbest = 1;
        } else if (cost <= best_cost * (1 + 1e-9)) {
            nbest++;
        }
    }
    if (nbest == 0) return -1;
    int best = -1;
    int64_t total = 0;
    for (size_t i = 0; i < b->npeers; i++) {
        if (!usable(b, i, tried)) continue;
        mg_lb_peer_t *p = &b->peers[i];
        double cost =
            ewma ? (p->measured ? latency_now(p, now) : 0) * (p->active + 1) : (double)p->active;
        cost /= p->weight;
        if (cost > best_cost * (1 + 1e-9)) continue;
        p->current += p->weight;
        total += p->weight;
        if (best < 0 || p->current > b->peers[best].current) best = (int)i;
    }
    b->peers[best].current -= total;
    return best;
}

/* The key's slot, or the next slots in turn when its owner is unusable (a retry, a peer
 * marked down): the same key always meets the same sequence of peers. */
static int pick_hash(mg_balancer_t *b, bool has_key, uint64_t hash, uint64_t tried)
{
    if (b->slots == 0) return -1;
    uint64_t start = has_key ? hash % b->slots : (b->rr++ * 7919u) % b->slots;
    for (unsigned k = 0; k < b->slots; k++) {
        uint32_t i = b->ring[(start + k) % b->slots];
        if (usable(b, i, tried)) return (int)i;
    }
    return -1;
}

int mg_balancer_pick(mg_balancer_t *b, bool has_key, uint64_t hash, uint64_t tried, int last,
                     double now)
{
    int i = -1;
    uint64_t avoid[3] = {tried, last >= 0 && last < 64 ? 1ull << last : 0, 0};
    for (int pass = 0; pass < 3 && i < 0; pass++) {
        tried = avoid[pass];
        if (pass > 0 && tried == avoid[pass - 1]) continue; /* the same peers again */
        switch (b->algorithm) {
        case MG_LB_CONSISTENT_HASHING:
            i = pick_hash(b, has_key, hash, tried);
            break;
        case MG_LB_LEAST_CONNECTIONS:
        case MG_LB_LATENCY:
            i = pick_least(b, tried, now);
            break;
        default:
            i = pick_rr(b, tried);
        }
    }
    if (i >= 0) b->peers[i].active++;
    return i;
}

void mg_balancer_done(mg_balancer_t *b, int i, double latency, double now)
{
    if (i < 0 || (size_t)i >= b->npeers) return;
    mg_lb_peer_t *p = &b->peers[i];
    if (p->active) p->active--;
    if (latency < 0) return;
    if (!p->measured || latency > p->ewma) {
        p->ewma = latency; /* peak: a slowdown counts at once */
    } else {
        double age = now - p->ewma_at;
        double w = age > 0 ? exp(-age / MG_LB_EWMA_DECAY) : 1.0;
        /* at least a small step per sample, so a burst of fast answers still counts */
        if (w > 0.9) w = 0.9;
        p->ewma = p->ewma * w + latency * (1 - w);
    }
    p->measured = true;
    p->ewma_at = now;
}
