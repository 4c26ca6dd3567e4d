/*
 * router_bench.c — shows that a route lookup costs the same with 10 or 10,000 routes. For each
 * size it builds N host+prefix routes ("hK.example.com" + "/svcK/api") and, separately, N
 * prefix-only routes ("/pK/api", all in one radix tree), then times mg_router_match() over
 * requests spread across all routes in random order. A third column sends the requests to only
 * 10 of the N host+prefix routes: same table, but a working set that stays in L1, so it shows
 * the algorithmic cost alone; the gap to the first column is cache misses on a table that no
 * longer fits in L1/L2, not work that grows with N. Prints nanoseconds per lookup.
 *
 * Build and run (from the repository root):
 *   gcc -std=gnu11 -D_GNU_SOURCE -O2 -Iruntime bench/router_bench.c runtime/mg_router.c \
 *       runtime/mg_pool.c -lpcre2-8 -o /tmp/router_bench && /tmp/router_bench
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mg_router.h"

#define NREQ 4096 /* distinct requests per run */
#define ROUNDS 500

typedef struct {
    mg_router_req_t req;
    const char *want;
} breq_t;

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static char **one(mg_pool_t *p, const char *s)
{
    char **v = mg_pool_alloc(p, sizeof(char *));
    v[0] = mg_pool_strdup(p, s);
    return v;
}

/* Builds n routes (with hosts when `hosted`) and times lookups of requests aimed at `spread`
 * of them, evenly spaced through the table; returns ns per lookup. */
static double run(size_t n, int hosted, size_t spread)
{
    mg_pool_t *pool = mg_pool_create(1 << 20);
    mg_service_t svc = {.name = "svc"};
    mg_config_t cfg = {.pool = pool};
    cfg.routes = mg_pool_calloc(pool, n * sizeof(mg_route_t));
    cfg.nroutes = n;
    char buf[128];
    for (size_t i = 0; i < n; i++) {
        mg_route_t *r = &cfg.routes[i];
        r->name = mg_pool_printf(pool, "r%zu", i);
        r->service = &svc;
        r->index = (unsigned)i;
        if (hosted) {
            snprintf(buf, sizeof(buf), "h%zu.example.com", i);
            r->hosts = one(pool, buf);
            r->nhosts = 1;
            snprintf(buf, sizeof(buf), "/svc%zu/api", i);
        } else {
            snprintf(buf, sizeof(buf), "/p%zu/api", i);
        }
        r->paths = one(pool, buf);
        r->npaths = 1;
    }
    char err[256];
    mg_router_t *rt = mg_router_build(&cfg, err, sizeof(err));
    if (rt == NULL) {
        fprintf(stderr, "build: %s\n", err);
        exit(1);
    }

    breq_t *reqs = mg_pool_calloc(pool, NREQ * sizeof(breq_t));
    uint64_t seed = 0x9e3779b97f4a7c15ULL ^ n;
    for (size_t k = 0; k < NREQ; k++) {
        size_t i = (xorshift(&seed) % spread) * (n / spread);
        char *host = mg_pool_printf(pool, "h%zu.example.com:8000", i);
        char *path = hosted ? mg_pool_printf(pool, "/svc%zu/api/orders/%zu", i, k)
                            : mg_pool_printf(pool, "/p%zu/api/orders/%zu", i, k);
        reqs[k].req = (mg_router_req_t){
            .method = {3, "GET"}, .host = {strlen(host), host}, .path = {strlen(path), path}};
        reqs[k].want = cfg.routes[i].name;
    }

    mg_router_match_t m;
    for (size_t k = 0; k < NREQ; k++) { /* check, and warm up */
        if (mg_router_match(rt, &reqs[k].req, &m) != MG_OK || strcmp(m.route->name, reqs[k].want)) {
            fprintf(stderr, "wrong match for %s\n", reqs[k].req.path.data);
            exit(1);
        }
    }
    volatile size_t sink = 0;
    double t0 = now_ns();
    for (int round = 0; round < ROUNDS; round++)
        for (size_t k = 0; k < NREQ; k++) {
            mg_router_match(rt, &reqs[k].req, &m);
            sink += m.path_prefix_len;
        }
    double ns = (now_ns() - t0) / ((double)ROUNDS * NREQ);
    (void)sink;
    mg_router_free(rt);
    mg_pool_destroy(pool);
    return ns;
}

int main(void)
{
    static const size_t sizes[] = {10, 1000, 10000};
    printf("%8s  %14s  %14s  %18s   (ns per match)\n", "routes", "host+prefix", "prefix-only",
           "host+prefix, 10 hot");
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        size_t n = sizes[s];
        double a = run(n, 1, n), b = run(n, 0, n), c = run(n, 1, 10);
        printf("%8zu  %14.1f  %14.1f  %18.1f\n", n, a, b, c);
    }
    return 0;
}
