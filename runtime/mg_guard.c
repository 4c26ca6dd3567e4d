/*
 * mg_guard.c — the per-client-address guards: concurrent connections, new connections per
 * second and requests per second (with a burst) for each address, shed in C at accept or
 * answered 429 before routing and before any Lua, so a flood from one address costs an
 * accept and a close, or a few hundred bytes of answer. Exempt CIDRs skip them.
 *
 * The limits hold for the whole node, not per worker: SO_REUSEPORT spreads one address's
 * connections over the workers by a hash of the 4-tuple, so a per-worker share of the limit
 * (limit / workers) would refuse an address early whenever its connections land unevenly,
 * and could not be exact at its boundary. The state therefore lives in one shared-memory
 * table made by the master before fork: open addressing in STRIPES segments, one robust
 * process-shared mutex per segment (held for a few dozen instructions, never across a
 * syscall), an entry per address: its key, its connection count and two GCRA "theoretical
 * arrival times" (token buckets kept as one timestamp each). An entry whose count is 0 and
 * whose buckets are full again is indistinguishable from no entry, so it is reused in place:
 * that is the table's expiry, exact and without a sweeper. Probing is bounded (WINDOW), so
 * every operation is O(1) and nothing is allocated per connection or request. A full table
 * lets new addresses in unguarded (and says so in the error log) rather than refuse them.
 *
 * A connection remembers its entry (mg_conn_t.guard_slot) and gives its count back when it
 * closes; a worker that dies without closing makes the master forget every count
 * (mg_guard_worker_died): under-counting for a while is safe, a count stuck high is not.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/random.h>

#include "mg_guard.h"
#include "mg_log.h"

#define ZONE_MAGIC 0x6d676764u /* "mggd" */
#define STRIPES 64             /* segments, each with its own lock; a power of two */
#define WINDOW 32              /* entries probed for one address, at most */
#define NS 1000000000LL
#define REPORT_NS (10 * NS) /* a worker logs what it refused at most this often */

typedef struct {
    uint8_t key[16];  /* the address as IPv6 (IPv4 mapped), IPv6 cut to ipv6_prefix */
    uint32_t used;    /* 0: never used, ends every probe sequence through it */
    uint32_t conns;   /* open connections, all workers together */
    int64_t conn_tat; /* GCRA theoretical arrival times, CLOCK_MONOTONIC nanoseconds */
    int64_t req_tat;
} entry_t;

typedef union {
    pthread_mutex_t m;
    char line[64]; /* one cache line per lock: workers on other segments do not collide */
} __attribute__((aligned(64))) stripe_t;

struct mg_guard_zone_s {
    uint32_t magic;
    uint32_t seg; /* entries per segment */
    uint64_t seed[2];
    size_t size;
    stripe_t stripes[STRIPES];
    entry_t entries[]; /* STRIPES * seg */
};

/* A token bucket as GCRA: one event per `interval`, `tolerance` = (capacity - 1) * interval
 * of lead allowed. interval 0: off. */
typedef struct {
    int64_t interval, tolerance;
} bucket_t;

enum { R_CONNS, R_CONN_RATE, R_REQ_RATE, R_UNTRACKED, R_COUNT };

mg_guard_state_t mg_guard;

static mg_guard_zone_t *current; /* the master's zone, inherited by the workers it forks */

static struct { /* this worker's settings and report counters */
    mg_guard_zone_t *zone;
    unsigned max_conns; /* 0: off */
    bucket_t conn_rate, req_rate;
    mg_ipset_t *exempt; /* NULL when empty */
    unsigned v6_prefix;
    int64_t last_report;
    uint64_t counts[R_COUNT];
} g;

static mg_guard_zone_t *zone_create(size_t size);
static bool stripe_lock(mg_guard_zone_t *z, uint32_t s);
static void stripe_unlock(mg_guard_zone_t *z, uint32_t s);
static uint64_t key_hash(const mg_guard_zone_t *z, const uint8_t key[16]);
static bool key_of(int family, const uint8_t *addr, unsigned v6_prefix, uint8_t key[16]);
static entry_t *lookup(mg_guard_zone_t *z, const uint8_t key[16], uint64_t h, int64_t now);
static int64_t gcra(int64_t tat, int64_t now, const bucket_t *b, int64_t *next);
static bucket_t bucket_of(mg_rate_t rate, unsigned capacity);
static int accept_at(mg_guard_zone_t *z, const uint8_t key[16], int64_t now, uint32_t *slot,
                     int *why);
static void release_at(mg_guard_zone_t *z, uint32_t slot, const uint8_t key[16]);
static int request_at(mg_guard_zone_t *z, uint32_t slot, const uint8_t key[16], int64_t now,
                      int64_t *wait);
static void report(int why, const uint8_t key[16], int64_t now);
static inline int64_t mono_ns(void);

/* ---- the table ---------------------------------------------------------------------- */

static mg_guard_zone_t *zone_create(size_t size)
{
    size_t per = (size - MG_MIN(size, sizeof(mg_guard_zone_t))) / sizeof(entry_t) / STRIPES;
    if (per == 0) {
        errno = EINVAL;
        return NULL;
    }
    uint32_t seg = (uint32_t)MG_MIN(per, (size_t)1 << 24);
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return NULL;
    mg_guard_zone_t *z = mem; /* zero-filled: every entry unused */

    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc == 0) rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (rc == 0) rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    for (int s = 0; rc == 0 && s < STRIPES; s++)
        rc = pthread_mutex_init(&z->stripes[s].m, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0) {
        munmap(mem, size);
        errno = rc;
        return NULL;
    }
    if (getrandom(z->seed, sizeof(z->seed), GRND_NONBLOCK) != (ssize_t)sizeof(z->seed)) {
        struct timespec ts; /* no entropy yet (early boot): weaker, still per zone */
        clock_gettime(CLOCK_REALTIME, &ts);
        z->seed[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
        z->seed[1] = (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)mem;
    }
    z->magic = ZONE_MAGIC;
    z->seg = seg;
    z->size = size;
    return z;
}

/* A holder that died with the lock (SIGKILL, crash) left at worst one entry with a torn key
 * or a stale count: every write below keeps the table walkable, so the lock is simply made
 * consistent again. false only when it cannot be taken at all (then nothing is guarded). */
static bool stripe_lock(mg_guard_zone_t *z, uint32_t s)
{
    int rc = pthread_mutex_lock(&z->stripes[s].m);
    if (MG_LIKELY(rc == 0)) return true;
    if (rc != EOWNERDEAD) return false;
    pthread_mutex_consistent(&z->stripes[s].m);
    return true;
}

static void stripe_unlock(mg_guard_zone_t *z, uint32_t s)
{
    pthread_mutex_unlock(&z->stripes[s].m);
}

static inline uint64_t fmix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* Keyed with the zone's random seed: a client cannot choose addresses that share a window.
 * The low bits pick the segment, the high 32 the home place in it (home()). */
static uint64_t key_hash(const mg_guard_zone_t *z, const uint8_t key[16])
{
    uint64_t a, b;
    memcpy(&a, key, 8);
    memcpy(&b, key + 8, 8);
    return fmix64(fmix64(a ^ z->seed[0]) + fmix64(b ^ z->seed[1]));
}

static inline uint32_t segment(uint64_t h)
{
    return (uint32_t)(h & (STRIPES - 1));
}

/* h's first place in its segment: the high half scaled to seg (no division, any seg) */
static inline uint32_t home(const mg_guard_zone_t *z, uint64_t h)
{
    return (uint32_t)(((h >> 32) * z->seg) >> 32);
}

/* The table key of a peer address: IPv4 as IPv4-mapped IPv6 (a v4 client on a dual-stack
 * socket is the same key), IPv6 cut to its first v6_prefix bits, since one host or site
 * usually holds a whole /64 and would otherwise have 2^64 separate budgets. */
static bool key_of(int family, const uint8_t *addr, unsigned v6_prefix, uint8_t key[16])
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (family == AF_INET) {
        memcpy(key, mapped, 12);
        memcpy(key + 12, addr, 4);
        return true;
    }
    if (family != AF_INET6) return false;
    memcpy(key, addr, 16);
    if (memcmp(key, mapped, 12) == 0) return true;
    for (unsigned i = v6_prefix; i < 128; i++)
        key[i / 8] &= (uint8_t) ~(0x80 >> (i % 8));
    return true;
}

static inline bool reclaimable(const entry_t *e, int64_t now)
{
    return e->conns == 0 && e->conn_tat <= now && e->req_tat <= now;
}

/*
 * The entry of `key` in its segment (the caller holds that segment's lock), created when
 * absent in the first free or reclaimable place of the window; NULL when the window has
 * neither. Places are never emptied, only reused, so a probe may stop at the first unused
 * one: the key cannot be further on.
 */
static entry_t *lookup(mg_guard_zone_t *z, const uint8_t key[16], uint64_t h, int64_t now)
{
    entry_t *seg = &z->entries[(size_t)segment(h) * z->seg];
    uint32_t pos = home(z, h), win = MG_MIN(WINDOW, z->seg);
    entry_t *spare = NULL;
    for (uint32_t i = 0; i < win; i++, pos = pos + 1 == z->seg ? 0 : pos + 1) {
        entry_t *e = &seg[pos];
        if (!e->used) {
            if (spare == NULL) spare = e;
            break;
        }
        if (memcmp(e->key, key, 16) == 0) return e;
        if (spare == NULL && reclaimable(e, now)) spare = e;
    }
    if (spare == NULL) return NULL;
    memcpy(spare->key, key, 16);
    spare->conns = 0;
    spare->conn_tat = spare->req_tat = 0;
    __atomic_signal_fence(__ATOMIC_SEQ_CST); /* a death before this leaves it unused */
    spare->used = 1;
    return spare;
}

/* ---- token buckets ------------------------------------------------------------------ */

/*
 * GCRA: an event at `now` conforms when the bucket's theoretical arrival time is at most
 * `tolerance` ahead of it. Returns 0 with the time to store in *next, or how long until it
 * would conform (> 0; *next untouched). A full bucket (tat <= now) passes `capacity` events
 * at once, then one per interval.
 */
static int64_t gcra(int64_t tat, int64_t now, const bucket_t *b, int64_t *next)
{
    int64_t t = tat > now ? tat : now;
    if (t - now > b->tolerance) return t - now - b->tolerance;
    *next = t + b->interval;
    return 0;
}

/* capacity 0: one second's worth of the rate, at least 1. */
static bucket_t bucket_of(mg_rate_t rate, unsigned capacity)
{
    bucket_t b = {0, 0};
    if (rate.n == 0) return b;
    b.interval = (int64_t)rate.per_ms * 1000000 / rate.n;
    if (b.interval < 1) b.interval = 1;
    if (capacity == 0) {
        uint64_t per_second = ((uint64_t)rate.n * 1000 + rate.per_ms - 1) / rate.per_ms;
        capacity = (unsigned)MG_MAX(per_second, 1);
    }
    b.tolerance = (int64_t)(capacity - 1) * b.interval;
    return b;
}

/* ---- the three checks, at a given time (unit tests drive the clock) ----------------- */

static int accept_at(mg_guard_zone_t *z, const uint8_t key[16], int64_t now, uint32_t *slot,
                     int *why)
{
    uint64_t h = key_hash(z, key);
    uint32_t s = segment(h);
    *slot = MG_GUARD_NONE;
    *why = -1;
    if (!stripe_lock(z, s)) return MG_OK;
    int rc = MG_OK;
    entry_t *e = lookup(z, key, h, now);
    int64_t next = 0;
    if (e == NULL) {
        *why = R_UNTRACKED;
    } else if (g.conn_rate.interval && gcra(e->conn_tat, now, &g.conn_rate, &next) > 0) {
        *why = R_CONN_RATE;
        rc = MG_DECLINED;
    } else if (g.max_conns && e->conns >= g.max_conns) {
        *why = R_CONNS;
        rc = MG_DECLINED; /* refused: its rate token is not taken */
    } else {
        if (g.conn_rate.interval) e->conn_tat = next;
        e->conns++;
        *slot = (uint32_t)(e - z->entries);
    }
    stripe_unlock(z, s);
    return rc;
}

static void release_at(mg_guard_zone_t *z, uint32_t slot, const uint8_t key[16])
{
    uint32_t s = slot / z->seg;
    if (!stripe_lock(z, s)) return;
    entry_t *e = &z->entries[slot];
    /* after mg_guard_worker_died the count may be 0 already, or the place reused */
    if (e->used && e->conns > 0 && memcmp(e->key, key, 16) == 0) e->conns--;
    stripe_unlock(z, s);
}

static int request_at(mg_guard_zone_t *z, uint32_t slot, const uint8_t key[16], int64_t now,
                      int64_t *wait)
{
    uint32_t s = slot / z->seg; /* the key's own segment: that is where it was placed */
    *wait = 0;
    if (!stripe_lock(z, s)) return MG_OK;
    entry_t *e = &z->entries[slot];
    if (!e->used || memcmp(e->key, key, 16) != 0) /* reused after a worker died */
        e = lookup(z, key, key_hash(z, key), now);
    int rc = MG_OK;
    int64_t next;
    if (e && (*wait = gcra(e->req_tat, now, &g.req_rate, &next)) == 0)
        e->req_tat = next;
    else if (e)
        rc = MG_DECLINED;
    stripe_unlock(z, s);
    return rc;
}

/* ---- master ------------------------------------------------------------------------- */

static bool guards_configured(const mg_guards_t *gc)
{
    return gc->per_ip_connections || gc->per_ip_connection_rate.n || gc->per_ip_request_rate.n;
}

int mg_guard_sync(const mg_config_t *cfg, char *err, size_t errlen)
{
    const mg_guards_t *gc = &cfg->guards;
    /* off: a zone already made stays (old workers may use it; turning on again keeps it) */
    if (!guards_configured(gc)) return MG_OK;
    if (current && current->size == gc->zone_size) return MG_OK;
    mg_guard_zone_t *z = zone_create(gc->zone_size);
    if (z == NULL) {
        snprintf(err, errlen, "guards.zone_size: cannot map %zu bytes: %s", gc->zone_size,
                 strerror(errno));
        return MG_ERROR;
    }
    if (current) munmap(current, current->size); /* workers that use it have their own map */
    current = z;
    return MG_OK;
}

void mg_guard_worker_died(void)
{
    mg_guard_zone_t *z = current;
    if (z == NULL) return;
    for (uint32_t s = 0; s < STRIPES; s++) {
        if (!stripe_lock(z, s)) continue;
        entry_t *seg = &z->entries[(size_t)s * z->seg];
        for (uint32_t i = 0; i < z->seg; i++)
            seg[i].conns = 0;
        stripe_unlock(z, s);
    }
}

/* ---- worker ------------------------------------------------------------------------- */

int mg_guard_init_worker(const mg_config_t *cfg)
{
    const mg_guards_t *gc = &cfg->guards;
    mg_guard_exit_worker();
    if (!guards_configured(gc)) return MG_OK;
    if (current == NULL) { /* not made by a master (tests, embedding): make it here */
        char err[256];
        if (mg_guard_sync(cfg, err, sizeof(err)) != MG_OK) {
            mg_log_err("guards are off: %s", err);
            return MG_ERROR;
        }
    }
    if (gc->nexempt_ips) {
        if ((g.exempt = mg_ipset_new()) == NULL) return MG_ERROR;
        for (size_t i = 0; i < gc->nexempt_ips; i++) {
            if (mg_ipset_add_cidr(g.exempt, &gc->exempt_ips[i]) != MG_OK) {
                mg_guard_exit_worker();
                return MG_ERROR;
            }
        }
        mg_ipset_build(g.exempt);
    }
    g.zone = current;
    g.max_conns = gc->per_ip_connections;
    g.conn_rate = bucket_of(gc->per_ip_connection_rate, 0);
    g.req_rate = bucket_of(gc->per_ip_request_rate, gc->per_ip_request_burst);
    g.v6_prefix = gc->ipv6_prefix;
    mg_guard.on = true;
    mg_guard.requests = g.req_rate.interval != 0;
    return MG_OK;
}

void mg_guard_exit_worker(void)
{
    mg_ipset_free(g.exempt);
    memset(&g, 0, sizeof(g));
    mg_guard.on = mg_guard.requests = false;
}

int mg_guard_accept(const struct sockaddr *sa, uint32_t *slot)
{
    uint8_t key[16];
    const uint8_t *addr = sa->sa_family == AF_INET
                              ? (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr
                              : (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    *slot = MG_GUARD_NONE;
    if (!mg_guard.on || !key_of(sa->sa_family, addr, g.v6_prefix, key)) return MG_OK;
    if (g.exempt && mg_ipset_contains_sa(g.exempt, sa)) return MG_OK;
    int why;
    int64_t now = mono_ns();
    int rc = accept_at(g.zone, key, now, slot, &why);
    if (MG_UNLIKELY(why >= 0)) report(why, key, now);
    return rc;
}

void mg_guard_release(uint32_t slot, int family, const uint8_t *addr)
{
    uint8_t key[16];
    if (slot == MG_GUARD_NONE || g.zone == NULL || !key_of(family, addr, g.v6_prefix, key)) return;
    release_at(g.zone, slot, key);
}

int mg_guard_request(uint32_t slot, int family, const uint8_t *addr, unsigned *retry_after)
{
    uint8_t key[16];
    *retry_after = 0;
    if (slot == MG_GUARD_NONE || !mg_guard.requests || !key_of(family, addr, g.v6_prefix, key))
        return MG_OK;
    int64_t wait, now = mono_ns();
    if (request_at(g.zone, slot, key, now, &wait) == MG_OK) return MG_OK;
    *retry_after = (unsigned)MG_MAX((wait + NS - 1) / NS, 1);
    report(R_REQ_RATE, key, now);
    return MG_DECLINED;
}

/* What was refused goes to the error log, at most once per REPORT_NS per worker: the first
 * refusal after a quiet spell at once (with its address), the rest as counts. */
static void report(int why, const uint8_t key[16], int64_t now)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const char *const what[R_COUNT] = {
        "a connection refused (per_ip_connections)",
        "a connection refused (per_ip_connection_rate)",
        "a request answered 429 (per_ip_request_rate)",
        "a connection not guarded: the guards' table is full (raise guards.zone_size)",
    };
    g.counts[why]++;
    if (g.last_report && now - g.last_report < REPORT_NS) return;
    char ip[INET6_ADDRSTRLEN + 8];
    bool v4 = memcmp(key, mapped, 12) == 0;
    inet_ntop(v4 ? AF_INET : AF_INET6, v4 ? key + 12 : key, ip, sizeof(ip));
    if (!v4 && g.v6_prefix < 128)
        snprintf(ip + strlen(ip), sizeof(ip) - strlen(ip), "/%u", g.v6_prefix);
    mg_log_warn("guards: %s from %s; since the last report: %llu connections refused by "
                "per_ip_connections, %llu by per_ip_connection_rate, %llu requests answered "
                "429, %llu connections not guarded",
                what[why], ip, (unsigned long long)g.counts[R_CONNS],
                (unsigned long long)g.counts[R_CONN_RATE], (unsigned long long)g.counts[R_REQ_RATE],
                (unsigned long long)g.counts[R_UNTRACKED]);
    memset(g.counts, 0, sizeof(g.counts));
    g.last_report = now;
}

static inline int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}
