/*
 * test_guard.c — unit tests for the per-address guards: GCRA token-bucket arithmetic at its
 * boundaries (capacity, refill, retry time, defaults from a rate), table keys (IPv4, mapped
 * IPv4, IPv6 cut to a prefix), the shared table (a count per address, refusals that cost
 * nothing, reuse of idle entries as expiry, a full window letting addresses in unguarded,
 * forgetting counts after a worker died), a randomized run against a reference model,
 * several processes on one table (exact totals), a lock holder killed mid-way, and the
 * worker-facing calls with an exempt set. The clock is a parameter: nothing sleeps.
 */
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "mg_test.h"
#include "../mg_guard.c"

#define MS 1000000LL
#define T0 (1000 * NS) /* any start time: the monotonic clock is never 0 in practice */

/* ---- helpers ------------------------------------------------------------------------- */

static void key4(const char *ip, uint8_t key[16])
{
    uint8_t a[4];
    CHECK_INT(inet_pton(AF_INET, ip, a), 1);
    CHECK(key_of(AF_INET, a, 64, key));
}

static void key6(const char *ip, unsigned prefix, uint8_t key[16])
{
    uint8_t a[16];
    CHECK_INT(inet_pton(AF_INET6, ip, a), 1);
    CHECK(key_of(AF_INET6, a, prefix, key));
}

/* a fresh zone and worker settings: max_conns, connection rate, request rate (per second,
 * capacity 0 = default) */
static mg_guard_zone_t *setup(size_t size, unsigned max_conns, unsigned conn_rate,
                              unsigned req_rate, unsigned req_burst)
{
    memset(&g, 0, sizeof(g));
    g.zone = zone_create(size);
    CHECK(g.zone != NULL);
    g.max_conns = max_conns;
    g.conn_rate = bucket_of((mg_rate_t){conn_rate, 1000}, 0);
    g.req_rate = bucket_of((mg_rate_t){req_rate, 1000}, req_burst);
    g.v6_prefix = 64;
    return g.zone;
}

static void teardown(mg_guard_zone_t *z)
{
    munmap(z, z->size);
    memset(&g, 0, sizeof(g));
}

static int admit(mg_guard_zone_t *z, const uint8_t key[16], int64_t now, uint32_t *slot)
{
    int why;
    uint32_t s;
    int rc = accept_at(z, key, now, slot ? slot : &s, &why);
    return rc;
}

static size_t used_entries(const mg_guard_zone_t *z)
{
    size_t n = 0;
    for (size_t i = 0; i < (size_t)STRIPES * z->seg; i++)
        n += z->entries[i].used != 0;
    return n;
}

/* ---- token buckets ------------------------------------------------------------------- */

TEST(gcra_passes_capacity_at_once_then_one_per_interval)
{
    bucket_t b = {100 * MS, 2 * 100 * MS}; /* capacity 3, 10 per second */
    int64_t tat = 0, next = -1;
    for (int i = 0; i < 3; i++) {
        CHECK_INT(gcra(tat, T0, &b, &next), 0);
        tat = next;
    }
    CHECK_INT(tat, T0 + 300 * MS);
    CHECK_INT(gcra(tat, T0, &b, &next), 100 * MS); /* the 4th waits exactly one interval */
    CHECK_INT(next, tat);                          /* a refusal stores nothing */
    CHECK_INT(gcra(tat, T0 + 100 * MS - 1, &b, &next), 1);
    CHECK_INT(gcra(tat, T0 + 100 * MS, &b, &next), 0); /* one token back */
    tat = next;
    CHECK_INT(gcra(tat, T0 + 100 * MS, &b, &next), 100 * MS);
    /* idle long enough, the bucket is full again, never fuller */
    int64_t later = T0 + 60 * NS;
    for (int i = 0; i < 3; i++) {
        CHECK_INT(gcra(tat, later, &b, &next), 0);
        tat = next;
    }
    CHECK(gcra(tat, later, &b, &next) > 0);
}

TEST(gcra_capacity_one_is_a_strict_interval)
{
    bucket_t b = {2 * NS, 0};
    int64_t tat = 0, next;
    CHECK_INT(gcra(tat, T0, &b, &next), 0);
    tat = next;
    CHECK_INT(gcra(tat, T0, &b, &next), 2 * NS);
    CHECK_INT(gcra(tat, T0 + NS, &b, &next), NS);
    CHECK_INT(gcra(tat, T0 + 2 * NS, &b, &next), 0);
}

TEST(bucket_of_derives_interval_and_default_capacity)
{
    bucket_t b = bucket_of((mg_rate_t){0, 1000}, 0);
    CHECK_INT(b.interval, 0); /* off */
    b = bucket_of((mg_rate_t){10, 1000}, 0);
    CHECK_INT(b.interval, 100 * MS);
    CHECK_INT(b.tolerance, 9 * 100 * MS); /* one second's worth: capacity 10 */
    b = bucket_of((mg_rate_t){10, 1000}, 3);
    CHECK_INT(b.tolerance, 2 * 100 * MS);
    b = bucket_of((mg_rate_t){30, 60000}, 0); /* 30/m: one every 2 s, capacity 1 */
    CHECK_INT(b.interval, 2 * NS);
    CHECK_INT(b.tolerance, 0);
    b = bucket_of((mg_rate_t){90, 60000}, 0); /* 1.5 per second rounds up to a capacity of 2 */
    CHECK_INT(b.interval, 666666666);
    CHECK_INT(b.tolerance, 666666666);
    b = bucket_of((mg_rate_t){1000000, 1000}, 0);
    CHECK_INT(b.interval, 1000);
    CHECK_INT(b.tolerance, 999999LL * 1000);
}

/* ---- keys ---------------------------------------------------------------------------- */

TEST(keys_map_ipv4_and_cut_ipv6_to_the_prefix)
{
    uint8_t a[16], b[16];
    key4("127.0.0.2", a);
    key6("::ffff:127.0.0.2", 64, b);
    CHECK(memcmp(a, b, 16) == 0); /* a v4 client on a dual-stack socket: the same address */
    key6("::ffff:127.0.0.2", 8, b);
    CHECK(memcmp(a, b, 16) == 0); /* mapped IPv4 is never cut */
    key4("127.0.0.3", b);
    CHECK(memcmp(a, b, 16) != 0);

    key6("2001:db8:1:2:aaaa::1", 64, a);
    key6("2001:db8:1:2:ffff:1:2:3", 64, b);
    CHECK(memcmp(a, b, 16) == 0); /* one /64 */
    key6("2001:db8:1:3::1", 64, b);
    CHECK(memcmp(a, b, 16) != 0);
    key6("2001:db8:1:2:aaaa::1", 128, a);
    key6("2001:db8:1:2:aaaa::2", 128, b);
    CHECK(memcmp(a, b, 16) != 0);
    key6("2001:db8:1:2:aaaa::1", 60, a);
    key6("2001:db8:1:f::", 60, b);
    CHECK(memcmp(a, b, 16) == 0); /* a prefix that is not a byte boundary */
    key6("2001:db8:1:10::", 60, b);
    CHECK(memcmp(a, b, 16) != 0);
    key6("ffff::1", 1, a);
    CHECK_INT(a[0], 0x80);
    CHECK_INT(a[1], 0);
    CHECK(!key_of(AF_UNIX, a, 64, b));
}

/* ---- the table ----------------------------------------------------------------------- */

TEST(zone_layout_is_sized_from_the_zone)
{
    mg_guard_zone_t *z = zone_create(64 << 10);
    CHECK(z != NULL);
    CHECK_INT(z->seg, ((64 << 10) - sizeof(mg_guard_zone_t)) / sizeof(entry_t) / STRIPES);
    CHECK_INT(z->seg, 23);
    CHECK_INT(sizeof(entry_t), 40);
    CHECK((char *)&z->entries[STRIPES * z->seg] <= (char *)z + z->size);
    CHECK_INT(((uintptr_t)&z->stripes[1]) % 64, 0);
    munmap(z, z->size);
    z = zone_create(4 << 20);
    CHECK(z != NULL);
    CHECK_INT(z->seg, 1636); /* 104,704 addresses in 4 MiB */
    CHECK((char *)&z->entries[STRIPES * z->seg] <= (char *)z + z->size);
    munmap(z, z->size);
}

TEST(connections_per_address_exact_at_the_limit)
{
    mg_guard_zone_t *z = setup(64 << 10, 2, 0, 0, 0);
    uint8_t a[16], b[16];
    uint32_t s1, s2, s3, sb;
    key4("10.0.0.1", a);
    key4("10.0.0.2", b);
    CHECK_INT(admit(z, a, T0, &s1), MG_OK);
    CHECK_INT(admit(z, a, T0, &s2), MG_OK);
    CHECK_INT(s1, s2); /* one entry per address */
    CHECK_INT(admit(z, a, T0, &s3), MG_DECLINED);
    CHECK_INT(s3, MG_GUARD_NONE);
    CHECK_INT(admit(z, b, T0, &sb), MG_OK); /* another address has its own count */
    CHECK(sb != s1);
    release_at(z, s1, a);
    CHECK_INT(z->entries[s1].conns, 1);
    CHECK_INT(admit(z, a, T0, &s3), MG_OK);
    CHECK_INT(admit(z, a, T0, &s3), MG_DECLINED);
    release_at(z, s1, b); /* the wrong key never decrements */
    CHECK_INT(z->entries[s1].conns, 2);
    teardown(z);
}

TEST(connection_rate_exact_and_refusals_cost_nothing)
{
    mg_guard_zone_t *z = setup(64 << 10, 0, 5, 0, 0); /* 5/s: 5 at once, then one per 200 ms */
    uint8_t a[16];
    uint32_t s;
    key4("10.0.0.1", a);
    for (int i = 0; i < 5; i++)
        CHECK_INT(admit(z, a, T0, &s), MG_OK);
    CHECK_INT(admit(z, a, T0, &s), MG_DECLINED);
    CHECK_INT(admit(z, a, T0 + 199 * MS, &s), MG_DECLINED);
    CHECK_INT(admit(z, a, T0 + 200 * MS, &s), MG_OK); /* the refusals took no token */
    CHECK_INT(z->entries[s].conns, 6);
    CHECK_INT(admit(z, a, T0 + 200 * MS, NULL), MG_DECLINED);
    teardown(z);

    /* refused by the connection limit: the rate token stays */
    z = setup(64 << 10, 1, 2, 0, 0);
    CHECK_INT(admit(z, a, T0, &s), MG_OK);
    for (int i = 0; i < 10; i++)
        CHECK_INT(admit(z, a, T0, NULL), MG_DECLINED);
    release_at(z, s, a);
    CHECK_INT(admit(z, a, T0, &s), MG_OK); /* the second of the two tokens */
    release_at(z, s, a);
    CHECK_INT(admit(z, a, T0, &s), MG_DECLINED);
    teardown(z);
}

TEST(request_rate_per_slot_with_burst)
{
    mg_guard_zone_t *z = setup(64 << 10, 0, 0, 10, 3); /* 10/s, burst 3 */
    uint8_t a[16], b[16];
    uint32_t s, sb;
    int64_t wait;
    key4("10.0.0.1", a);
    key4("10.0.0.2", b);
    CHECK_INT(admit(z, a, T0, &s), MG_OK); /* tracked even with no connection limit */
    CHECK_INT(admit(z, b, T0, &sb), MG_OK);
    for (int i = 0; i < 3; i++)
        CHECK_INT(request_at(z, s, a, T0, &wait), MG_OK);
    CHECK_INT(request_at(z, s, a, T0, &wait), MG_DECLINED);
    CHECK_INT(wait, 100 * MS);
    CHECK_INT(request_at(z, sb, b, T0, &wait), MG_OK); /* another address is not affected */
    CHECK_INT(request_at(z, s, a, T0 + 100 * MS, &wait), MG_OK);
    CHECK_INT(request_at(z, s, a, T0 + 100 * MS, &wait), MG_DECLINED);
    teardown(z);
}

TEST(idle_entries_are_reused_in_place_as_expiry)
{
    mg_guard_zone_t *z = setup(64 << 10, 0, 0, 1, 1); /* one request per second */
    size_t cap = (size_t)STRIPES * z->seg;
    uint8_t key[16] = {0x20, 0x01};
    int64_t wait;
    /* many more addresses than places, each connecting, asking once and leaving */
    for (uint32_t i = 0; i < 20 * cap; i++) {
        memcpy(key + 8, &i, 4);
        int64_t now = T0 + (int64_t)(i / cap) * 2 * NS; /* a new round once the old expired */
        uint32_t s;
        CHECK_INT(admit(z, key, now, &s), MG_OK);
        if (s == MG_GUARD_NONE) continue;
        CHECK_INT(request_at(z, s, key, now, &wait), MG_OK);
        release_at(z, s, key);
    }
    CHECK(used_entries(z) <= cap);
    CHECK(used_entries(z) > cap / 2);
    /* an address that still holds a connection or a bucket not yet full keeps its entry */
    memset(key, 0, sizeof(key));
    key[0] = 0xfe;
    uint32_t s, s2;
    CHECK_INT(admit(z, key, T0 + 100 * NS, &s), MG_OK);
    CHECK(s != MG_GUARD_NONE);
    CHECK_INT(request_at(z, s, key, T0 + 100 * NS, &wait), MG_OK);
    release_at(z, s, key);
    CHECK(!reclaimable(&z->entries[s], T0 + 100 * NS)); /* its bucket is not full yet */
    CHECK_INT(admit(z, key, T0 + 100 * NS, &s2), MG_OK);
    CHECK_INT(s2, s);
    CHECK_INT(request_at(z, s2, key, T0 + 100 * NS, &wait), MG_DECLINED);
    teardown(z);
}

TEST(a_full_window_lets_new_addresses_in_unguarded)
{
    mg_guard_zone_t *z = setup(64 << 10, 1, 0, 0, 0);
    size_t cap = (size_t)STRIPES * z->seg;
    uint8_t key[16] = {0x20, 0x01};
    size_t tracked = 0, untracked = 0;
    for (uint32_t i = 0; i < 2 * cap; i++) { /* every one keeps its connection */
        memcpy(key + 8, &i, 4);
        uint32_t s;
        int why;
        CHECK_INT(accept_at(z, key, T0, &s, &why), MG_OK);
        if (s == MG_GUARD_NONE) {
            CHECK_INT(why, R_UNTRACKED);
            untracked++;
        } else {
            tracked++;
        }
    }
    CHECK_INT(tracked, cap); /* every place is used before anyone goes unguarded */
    CHECK_INT(untracked, cap);
    CHECK_INT(used_entries(z), cap);
    teardown(z);
}

TEST(a_dead_worker_makes_every_count_forgotten)
{
    mg_guard_zone_t *z = setup(64 << 10, 2, 0, 0, 0);
    current = z;
    uint8_t a[16];
    uint32_t s1, s2;
    key4("10.0.0.1", a);
    CHECK_INT(admit(z, a, T0, &s1), MG_OK);
    CHECK_INT(admit(z, a, T0, &s2), MG_OK);
    CHECK_INT(admit(z, a, T0, NULL), MG_DECLINED);
    mg_guard_worker_died();
    CHECK_INT(z->entries[s1].conns, 0);
    release_at(z, s1, a); /* a survivor closing: no underflow */
    CHECK_INT(z->entries[s1].conns, 0);
    CHECK_INT(admit(z, a, T0, NULL), MG_OK);
    CHECK_INT(admit(z, a, T0, NULL), MG_OK);
    CHECK_INT(admit(z, a, T0, NULL), MG_DECLINED);
    current = NULL;
    teardown(z);
}

TEST(a_reused_slot_is_looked_up_again_by_requests)
{
    mg_guard_zone_t *z = setup(64 << 10, 0, 0, 1, 2);
    current = z;
    uint8_t a[16], b[16];
    uint32_t s, sb;
    int64_t wait;
    key4("10.0.0.1", a);
    CHECK_INT(admit(z, a, T0, &s), MG_OK);
    mg_guard_worker_died(); /* the count is gone: the idle entry may go to someone else */
    memcpy(b, a, 16);
    for (int i = 1; i < 100000; i++) { /* find another address of the same window */
        b[0] = (uint8_t)i;
        b[1] = (uint8_t)(i >> 8);
        b[2] = (uint8_t)(i >> 16);
        uint64_t h = key_hash(z, b), ha = key_hash(z, a);
        if (segment(h) == segment(ha) && home(z, h) == home(z, ha)) break;
    }
    CHECK(memcmp(a, b, 16) != 0);
    CHECK_INT(admit(z, b, T0 + 10 * NS, &sb), MG_OK);
    CHECK_INT(sb, s);                                           /* reused in place */
    CHECK_INT(request_at(z, s, a, T0 + 10 * NS, &wait), MG_OK); /* finds or makes a's own */
    CHECK_INT(request_at(z, s, a, T0 + 10 * NS, &wait), MG_OK);
    CHECK_INT(request_at(z, s, a, T0 + 10 * NS, &wait), MG_DECLINED);
    CHECK_INT(request_at(z, sb, b, T0 + 10 * NS, &wait), MG_OK); /* b's bucket untouched */
    CHECK_INT(memcmp(z->entries[sb].key, b, 16), 0);
    current = NULL;
    teardown(z);
}

/* ---- a randomized run against a reference model ------------------------------------- */

TEST(random_operations_match_a_model)
{
    enum { NKEYS = 200, NCONNS = 4000 };
    mg_guard_zone_t *z = setup(1 << 20, 3, 4, 5, 2);
    struct {
        int conns;
        int64_t conn_tat, req_tat;
    } model[NKEYS];
    struct {
        int key;
        uint32_t slot;
    } open[NCONNS];
    int nopen = 0;
    memset(model, 0, sizeof(model));
    srand(12345);
    int64_t now = T0;
    uint8_t key[16];
    for (int step = 0; step < 200000; step++) {
        now += (rand() % 3) * 7 * MS;
        int k = rand() % NKEYS, op = rand() % 3;
        key4("10.0.0.0", key);
        key[13] = (uint8_t)(k >> 8);
        key[15] = (uint8_t)k;
        if (op == 0 && nopen < NCONNS) {
            int64_t next = 0;
            bool rate_ok = gcra(model[k].conn_tat, now, &g.conn_rate, &next) == 0;
            bool want = rate_ok && model[k].conns < 3;
            uint32_t s;
            int rc = admit(z, key, now, &s);
            CHECK_INT(rc, want ? MG_OK : MG_DECLINED);
            if (rc == MG_OK) {
                CHECK(s != MG_GUARD_NONE);
                model[k].conns++;
                model[k].conn_tat = next;
                open[nopen].key = k;
                open[nopen++].slot = s;
            }
        } else if (op == 1 && nopen > 0) {
            int i = rand() % nopen;
            int kk = open[i].key;
            key[13] = (uint8_t)(kk >> 8);
            key[15] = (uint8_t)kk;
            release_at(z, open[i].slot, key);
            model[kk].conns--;
            open[i] = open[--nopen];
        } else if (op == 2 && nopen > 0) {
            int i = rand() % nopen;
            int kk = open[i].key;
            key[13] = (uint8_t)(kk >> 8);
            key[15] = (uint8_t)kk;
            int64_t next = 0, wait;
            bool ok = gcra(model[kk].req_tat, now, &g.req_rate, &next) == 0;
            CHECK_INT(request_at(z, open[i].slot, key, now, &wait), ok ? MG_OK : MG_DECLINED);
            if (ok) model[kk].req_tat = next;
        }
        if (mg_case_failed) break;
    }
    /* every open connection's entry holds the model's count */
    for (int i = 0; i < nopen; i++)
        CHECK_INT(z->entries[open[i].slot].conns, model[open[i].key].conns);
    teardown(z);
}

/* ---- several processes --------------------------------------------------------------- */

TEST(processes_share_exact_counts)
{
    enum { PROCS = 4, TRIES = 300 };
    mg_guard_zone_t *z = setup(256 << 10, 100, 0, 60, 150);
    /* requests: capacity 150 at one fixed instant; connections: limit 100 */
    int fds[2];
    CHECK_INT(pipe(fds), 0);
    pid_t pids[PROCS];
    for (int p = 0; p < PROCS; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            uint8_t key[16];
            key4("192.0.2.7", key);
            int conns = 0, reqs = 0;
            uint32_t slot = MG_GUARD_NONE, s;
            int64_t wait;
            for (int i = 0; i < TRIES; i++) {
                if (admit(z, key, T0, &s) == MG_OK) conns++, slot = s;
                if (slot != MG_GUARD_NONE && request_at(z, slot, key, T0, &wait) == MG_OK) reqs++;
            }
            int out[2] = {conns, reqs};
            _exit(write(fds[1], out, sizeof(out)) == sizeof(out) ? 0 : 1);
        }
    }
    int conns = 0, reqs = 0;
    for (int p = 0; p < PROCS; p++) {
        int st, in[2];
        waitpid(pids[p], &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        CHECK_INT(read(fds[0], in, sizeof(in)), sizeof(in));
        conns += in[0];
        reqs += in[1];
    }
    close(fds[0]);
    close(fds[1]);
    CHECK_INT(conns, 100);
    CHECK_INT(reqs, 150);
    teardown(z);
}

TEST(a_lock_holder_killed_does_not_wedge_the_others)
{
    mg_guard_zone_t *z = setup(64 << 10, 1, 0, 0, 0);
    uint8_t a[16];
    key4("10.9.9.9", a);
    uint32_t s = segment(key_hash(z, a));
    pid_t pid = fork();
    if (pid == 0) {
        stripe_lock(z, s);
        kill(getpid(), SIGKILL); /* dies holding it */
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    CHECK(WIFSIGNALED(st));
    uint32_t slot;
    CHECK_INT(admit(z, a, T0, &slot), MG_OK); /* EOWNERDEAD: made consistent, not stuck */
    CHECK(slot != MG_GUARD_NONE);
    CHECK_INT(admit(z, a, T0, NULL), MG_DECLINED);
    teardown(z);
}

/* ---- the worker-facing calls --------------------------------------------------------- */

static mg_config_t guard_config(unsigned conns, size_t zone)
{
    mg_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.guards.per_ip_connections = conns;
    cfg.guards.ipv6_prefix = 64;
    cfg.guards.zone_size = zone;
    return cfg;
}

TEST(sync_keeps_the_zone_while_its_size_stays)
{
    char err[256];
    mg_config_t off = guard_config(0, 64 << 10), on = guard_config(1, 64 << 10),
                bigger = guard_config(1, 128 << 10);
    CHECK_INT(mg_guard_sync(&off, err, sizeof(err)), MG_OK);
    CHECK(current == NULL); /* nothing mapped while the guards are off */
    CHECK_INT(mg_guard_sync(&on, err, sizeof(err)), MG_OK);
    mg_guard_zone_t *z = current;
    CHECK(z != NULL);
    CHECK_INT(mg_guard_sync(&on, err, sizeof(err)), MG_OK);
    CHECK(current == z);
    CHECK_INT(mg_guard_sync(&off, err, sizeof(err)), MG_OK);
    CHECK(current == z);
    CHECK_INT(mg_guard_sync(&bigger, err, sizeof(err)), MG_OK);
    CHECK(current != NULL && current->size == (128 << 10));
    munmap(current, current->size);
    current = NULL;
}

TEST(worker_calls_honour_the_exempt_set)
{
    mg_config_t cfg = guard_config(1, 64 << 10);
    mg_cidr_t exempt[2];
    CHECK(mg_cidr_parse("127.0.0.3", 9, &exempt[0]));
    CHECK(mg_cidr_parse("2001:db8::/32", 13, &exempt[1]));
    cfg.guards.exempt_ips = exempt;
    cfg.guards.nexempt_ips = 2;
    cfg.guards.per_ip_request_rate = (mg_rate_t){1, 60000};
    CHECK_INT(mg_guard_init_worker(&cfg), MG_OK);
    CHECK(mg_guard.on && mg_guard.requests);

    struct sockaddr_in in = {.sin_family = AF_INET};
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    uint32_t s1, s2;
    unsigned retry;
    inet_pton(AF_INET, "127.0.0.2", &in.sin_addr);
    CHECK_INT(mg_guard_accept((struct sockaddr *)&in, &s1), MG_OK);
    CHECK(s1 != MG_GUARD_NONE);
    CHECK_INT(mg_guard_accept((struct sockaddr *)&in, &s2), MG_DECLINED);
    CHECK_INT(mg_guard_request(s1, AF_INET, (uint8_t *)&in.sin_addr, &retry), MG_OK);
    CHECK_INT(mg_guard_request(s1, AF_INET, (uint8_t *)&in.sin_addr, &retry), MG_DECLINED);
    CHECK(retry >= 59 && retry <= 60); /* 1/m: a minute, rounded up to whole seconds */
    mg_guard_release(s1, AF_INET, (uint8_t *)&in.sin_addr);
    CHECK_INT(mg_guard_accept((struct sockaddr *)&in, &s2), MG_OK);
    mg_guard_release(s2, AF_INET, (uint8_t *)&in.sin_addr);

    inet_pton(AF_INET, "127.0.0.3", &in.sin_addr); /* exempt: never tracked */
    for (int i = 0; i < 5; i++) {
        CHECK_INT(mg_guard_accept((struct sockaddr *)&in, &s1), MG_OK);
        CHECK_INT(s1, MG_GUARD_NONE);
    }
    CHECK_INT(mg_guard_request(MG_GUARD_NONE, AF_INET, (uint8_t *)&in.sin_addr, &retry), MG_OK);
    inet_pton(AF_INET6, "2001:db8:5::1", &in6.sin6_addr);
    CHECK_INT(mg_guard_accept((struct sockaddr *)&in6, &s1), MG_OK);
    CHECK_INT(s1, MG_GUARD_NONE);
    inet_pton(AF_INET6, "2001:db9::1", &in6.sin6_addr); /* outside: one per /64 */
    CHECK_INT(mg_guard_accept((struct sockaddr *)&in6, &s1), MG_OK);
    CHECK(s1 != MG_GUARD_NONE);
    inet_pton(AF_INET6, "2001:db9::2", &in6.sin6_addr);
    CHECK_INT(mg_guard_accept((struct sockaddr *)&in6, &s2), MG_DECLINED);

    mg_guard_zone_t *z = current;
    mg_guard_exit_worker();
    CHECK(!mg_guard.on && !mg_guard.requests);
    CHECK_INT(mg_guard_accept((struct sockaddr *)&in6, &s2), MG_OK); /* off: everyone in */
    CHECK_INT(s2, MG_GUARD_NONE);
    munmap(z, z->size);
    current = NULL;
}

TEST_MAIN()
