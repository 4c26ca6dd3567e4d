/*
 * mg_router.c — the route table. mg_router_build() compiles cfg->routes once per config load
 * into an index whose lookup cost does not depend on how many plain host/prefix routes exist:
 * hosts go through one hash table, plain path prefixes through a radix tree per host, and every
 * (route, host, path) triple carries its rank in one global precedence order, so comparing two
 * candidates is one integer compare. Regex paths are PCRE2, JIT-compiled at build. The table is
 * immutable once built and mg_router_match() only reads it and allocates nothing, so one table
 * serves any number of concurrent lookups.
 *
 * Precedence follows Kong 3.x's default "traditional_compatible" router (kong/router/
 * transform.lua get_priority(); compat.lua splits a route with several paths into one route per
 * path, so the path-dependent parts below are per path). Among the routes that match, the winner
 * is decided by these keys, most significant first:
 *   1. match weight: how many of hosts, methods, headers, snis, paths the route sets. A route
 *      with host+path beats a path-only route, and methods+"/" beats a path-only "/api".
 *   2. plain hosts only: the route has hosts and none of them is a wildcard, so an exact host
 *      beats a wildcard one. Like Kong this is a property of the route, not of the host that
 *      matched: a route listing both "a.com" and "*.b.com" ranks as a wildcard route.
 *   3. number of header names in the route's headers (more header conditions win).
 *   4. regex path: a regex path beats a plain prefix, whatever the prefix length.
 *   5. regex_priority, higher first (regex paths only; negative values allowed).
 *   6. plain prefix length, longest first (capped at 2^19 - 1 bytes like Kong's 19-bit field).
 *   7. creation order: lower route->index first (Kong: created_at), then the position of the
 *      path in route->paths.
 * Nothing ranks one wildcard host above another ("*.a.b.com" vs "*.b.com"): Kong does not,
 * so such ties fall through to the keys below them.
 *
 * Matching rules. hosts: ASCII case-insensitive; the Host header's ":port" is split off (an
 * IPv6 literal keeps its brackets) and one trailing dot dropped; a route host without a port
 * matches any port, one with ":port" only that port, where a Host header without a port means
 * the scheme's default (80, or 443 over https), as Kong's split_port() does. "*.example.com"
 * matches one or more labels before ".example.com"; "example.*" one or more after "example.".
 * A request without a Host header matches only routes without hosts. paths: a plain path is a
 * byte-wise prefix of the raw path ("/foo" matches "/foo", "/foo/bar" and "/foobar", as in Kong);
 * a "~" path is a PCRE2 regex anchored at the start of the path, with Kong's match limit of
 * 10000 against catastrophic backtracking. methods: case-sensitive exact compare. headers:
 * every configured header must be present with one of its values (case-insensitive). snis:
 * checked only for https requests, case-insensitive, a trailing dot in the config ignored.
 *
 * Layout. A bucket holds the entries of one host key: one per exact host ("example.com"), per
 * wildcard suffix (".example.com"), per wildcard prefix ("example."), plus bucket 0 for routes
 * without hosts. A lookup visits the exact bucket (one hash probe), the wildcard buckets (a
 * probe per label boundary of the Host, done only when such routes exist; the hashes of all
 * suffixes come from one right-to-left pass) and bucket 0. Inside a bucket, walking the path
 * down the radix tree visits each configured prefix of the path once; every node holds the
 * entries of its prefix sorted by rank, so the first one passing the method/header/sni/port
 * checks is that node's best, and a node or bucket whose best rank cannot beat the current
 * winner is skipped without looking at its entries.
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pcre2.h>

#include "mg_router.h"

#define NONE UINT32_MAX
#define REGEX_MATCH_LIMIT 10000 /* Kong's (*LIMIT_MATCH=10000) */
#define MAX_HEADER_VALUES 16    /* values of one request header looked at per condition */
#define SCRATCH_SIZE 1024       /* stack bytes that hold PCRE2's match data during a lookup */
#define MAX_PRIO_LENGTH 0x7FFFFu

#define FNV_BASIS 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

enum { KIND_NONE, KIND_EXACT, KIND_SUFFIX, KIND_PREFIX };
enum { PATH_PLAIN, PATH_NONE, PATH_REGEX }; /* also the order entries are laid out in a bucket */

enum {
    M_GET = 1 << 0,
    M_HEAD = 1 << 1,
    M_POST = 1 << 2,
    M_PUT = 1 << 3,
    M_DELETE = 1 << 4,
    M_CONNECT = 1 << 5,
    M_OPTIONS = 1 << 6,
    M_TRACE = 1 << 7,
    M_PATCH = 1 << 8,
};

typedef struct {
    mg_str_t name;
    mg_str_t *values;
    size_t nvalues;
} hdr_t;

/* The checks of one route, shared by all of its entries. */
typedef struct {
    const mg_route_t *route;
    bool any_method;
    uint32_t method_mask; /* the standard methods, one bit each */
    mg_str_t *xmethods;   /* the others */
    size_t nxmethods;
    mg_str_t *snis;
    size_t nsnis;
    hdr_t *headers;
    size_t nheaders;
} rinfo_t;

/* Groups mg_router_capture can see (a named group numbered higher is not found). */
#define CAPTURE_PAIRS 32

/* One (route, host, path) triple in a bucket. */
typedef struct {
    uint32_t rank; /* position in the global precedence order: lower wins */
    uint16_t port; /* port the route host names, 0 = any */
    const rinfo_t *ri;
    const pcre2_code *re; /* regex entries only */
} entry_t;

/* Radix tree node; the children of a node are contiguous and sorted by their first byte. */
typedef struct {
    const char *label; /* edge bytes leading here (points into the config's path string) */
    uint32_t label_len;
    uint32_t child, nchild;
    uint32_t ent, nent; /* entries whose prefix ends exactly here */
} node_t;

typedef struct {
    mg_str_t key; /* lower-cased: "example.com", ".example.com" or "example." */
    uint64_t hash;
    int kind;
    uint32_t top;         /* lowest rank in the bucket: a lookup skips it if it can't win */
    uint32_t root;        /* radix tree of plain prefixes, NONE without any */
    uint32_t bare, nbare; /* path-less entries, by rank */
    uint32_t rx, nrx;     /* regex entries, by rank */
} bucket_t;

typedef struct {
    uint64_t hash;
    uint32_t bucket; /* NONE = empty slot */
} slot_t;

struct mg_router_s {
    mg_pool_t *pool; /* rinfos, bucket keys and the string arrays rinfos point to */
    rinfo_t *rinfos;
    entry_t *ents;
    size_t nents, cents;
    node_t *nodes;
    uint8_t *keys; /* keys[i] = first byte of nodes[i].label, scanned to find a child */
    size_t nnodes, cnodes, ckeys;
    bucket_t *buckets;
    size_t nbuckets, cbuckets;
    slot_t *slots; /* open addressing over buckets 1.., load factor <= 1/2 */
    size_t mask;
    pcre2_code **codes;
    size_t ncodes, ccodes;
    pcre2_match_context *mctx;
    bool exact;                  /* some route has an exact host */
    bool suffix_dot, suffix_any; /* "*.x" keys (probe at dots) / other "*x" keys (everywhere) */
    bool prefix_dot, prefix_any; /* "x.*" keys / other "x*" keys */
};

/* Build-time: one (route, path) pair, before it is copied into the buckets of its hosts. */
typedef struct {
    uint64_t prio;
    unsigned index; /* route->index */
    uint32_t route; /* position in cfg->routes */
    uint32_t path;  /* position in route->paths */
    int type;
    mg_str_t prefix; /* PATH_PLAIN */
    pcre2_code *re;  /* PATH_REGEX */
} proto_t;

/* Build-time: an entry on its way to a bucket. */
typedef struct {
    uint32_t bucket;
    uint32_t rank;
    int type;
    uint16_t port;
    mg_str_t prefix;
    const rinfo_t *ri;
    const pcre2_code *re;
} item_t;

typedef struct {
    uint32_t bucket;
    uint16_t port;
} hspec_t;

typedef struct {
    mg_str_t s;
    uint32_t ent, nent;
} pfx_t;

typedef struct {
    uint32_t node, lo, hi, depth;
} work_t;

/* Bump allocator over a stack buffer, handed to PCRE2 so a regex match allocates nothing. */
typedef struct {
    char *buf;
    size_t used, cap;
} scratch_t;

typedef struct {
    const mg_router_t *rt;
    const mg_router_req_t *req;
    uint32_t mbit;
    unsigned port; /* Host header port, or the scheme's default */
    uint32_t best; /* rank of the winner so far, NONE before any */
    const entry_t *win;
    size_t plen;
    scratch_t scratch;
    pcre2_general_context *gctx;
    pcre2_match_data *md;
} match_t;

/* helpers */
static uint32_t method_bit(mg_str_t m);
static mg_str_t split_host(mg_str_t in, unsigned *port);
static bool lower_eq(const char *key, const char *s, size_t len);
static uint64_t hash_step(uint64_t h, char c);
static uint64_t hash_final(uint64_t h, int kind);
static int grow(void **arr, size_t *cap, size_t need, size_t elem);
static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* build */
static uint32_t lookup(const mg_router_t *rt, int kind, uint64_t h, const char *s, size_t len);
static int rehash(mg_router_t *rt, size_t cap);
static uint32_t bucket_get(mg_router_t *rt, int kind, const char *key, size_t len);
static int rinfo_init(mg_router_t *rt, rinfo_t *ri, const mg_route_t *r);
static int host_specs(mg_router_t *rt, const mg_route_t *r, size_t ri, hspec_t *out, char *err,
                      size_t errlen);
static uint64_t route_prio(const mg_route_t *r);
static int proto_cmp(const void *a, const void *b);
static int item_cmp(const void *a, const void *b);
static int str_cmp(mg_str_t a, mg_str_t b);
static int ent_push(mg_router_t *rt, const item_t *it);
static int radix_build(mg_router_t *rt, const pfx_t *p, uint32_t m, uint32_t *root);
static int emit(mg_router_t *rt, item_t *items, size_t nitems);

/* match */
static bool entry_ok(const entry_t *e, const match_t *x);
static bool headers_ok(const rinfo_t *ri, const mg_router_req_t *req);
static void consider(match_t *x, const entry_t *e, uint32_t n, size_t plen);
static uint32_t child_find(const mg_router_t *rt, const node_t *n, uint8_t c);
static void scan_bucket(match_t *x, const bucket_t *b);
static bool regex_run(match_t *x, const pcre2_code *re, size_t *end);
static void *scratch_malloc(PCRE2_SIZE size, void *data);
static void scratch_free(void *p, void *data);

/* ---------------------------------------------------------------------------------------- */

static uint32_t method_bit(mg_str_t m)
{
    const char *s = m.data;
    switch (m.len) {
    case 3:
        if (memcmp(s, "GET", 3) == 0) return M_GET;
        if (memcmp(s, "PUT", 3) == 0) return M_PUT;
        break;
    case 4:
        if (memcmp(s, "POST", 4) == 0) return M_POST;
        if (memcmp(s, "HEAD", 4) == 0) return M_HEAD;
        break;
    case 5:
        if (memcmp(s, "PATCH", 5) == 0) return M_PATCH;
        if (memcmp(s, "TRACE", 5) == 0) return M_TRACE;
        break;
    case 6:
        if (memcmp(s, "DELETE", 6) == 0) return M_DELETE;
        break;
    case 7:
        if (memcmp(s, "OPTIONS", 7) == 0) return M_OPTIONS;
        if (memcmp(s, "CONNECT", 7) == 0) return M_CONNECT;
        break;
    }
    return 0;
}

/*
 * Splits "host[:port]" or "[v6]:port". A port that is not 1-5 digits up to 65535 leaves the
 * whole string as the host (Kong's split_port() does the same), so such a Host matches no
 * sane route. *port is 0 when there is none. One trailing dot of an FQDN is dropped.
 */
static mg_str_t split_host(mg_str_t in, unsigned *port)
{
    mg_str_t h = in;
    size_t colon = in.len;

    *port = 0;
    if (in.len && in.data[0] == '[') {
        const char *rb = memchr(in.data, ']', in.len);
        if (rb && (size_t)(rb - in.data) + 1 < in.len && rb[1] == ':')
            colon = (size_t)(rb - in.data) + 1;
    } else {
        const char *c = memchr(in.data, ':', in.len);
        if (c) colon = (size_t)(c - in.data);
    }
    if (colon < in.len) {
        size_t nd = in.len - colon - 1;
        unsigned p = 0;
        bool ok = nd <= 5;
        for (size_t i = colon + 1; ok && i < in.len; i++) {
            if (in.data[i] < '0' || in.data[i] > '9')
                ok = false;
            else
                p = p * 10 + (unsigned)(in.data[i] - '0');
        }
        if (ok && p <= 65535) {
            h.len = colon;
            *port = p;
        }
    }
    if (h.len > 1 && h.data[h.len - 1] == '.') h.len--;
    return h;
}

/* `key` is lower-case already; `s` may be any case. */
static bool lower_eq(const char *key, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (key[i] != mg_lower(s[i])) return false;
    return true;
}

static inline uint64_t hash_step(uint64_t h, char c)
{
    return (h ^ (uint8_t)mg_lower(c)) * FNV_PRIME;
}

/* FNV-1a is weak in its low bits for short keys, and the table indexes by low bits. */
static inline uint64_t hash_final(uint64_t h, int kind)
{
    h ^= (uint64_t)kind << 59;
    h *= 0x9e3779b97f4a7c15ULL;
    return h ^ (h >> 29);
}

static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return MG_OK;
    size_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *p = realloc(*arr, n * elem);
    if (p == NULL) return MG_ERROR;
    *arr = p;
    *cap = n;
    return MG_OK;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------------------------------- */
/* build                                                                                    */

static uint32_t lookup(const mg_router_t *rt, int kind, uint64_t h, const char *s, size_t len)
{
    for (size_t i = h & rt->mask;; i = (i + 1) & rt->mask) {
        uint32_t bi = rt->slots[i].bucket;
        if (bi == NONE) return NONE;
        if (rt->slots[i].hash != h) continue;
        const bucket_t *b = &rt->buckets[bi];
        if (b->kind == kind && b->key.len == len && lower_eq(b->key.data, s, len)) return bi;
    }
}

static int rehash(mg_router_t *rt, size_t cap)
{
    slot_t *s = malloc(cap * sizeof(*s));
    if (s == NULL) return MG_ERROR;
    for (size_t i = 0; i < cap; i++)
        s[i].bucket = NONE;
    for (size_t bi = 1; bi < rt->nbuckets; bi++) {
        size_t i = rt->buckets[bi].hash & (cap - 1);
        while (s[i].bucket != NONE)
            i = (i + 1) & (cap - 1);
        s[i].hash = rt->buckets[bi].hash;
        s[i].bucket = (uint32_t)bi;
    }
    free(rt->slots);
    rt->slots = s;
    rt->mask = cap - 1;
    return MG_OK;
}

/* Returns the bucket for (kind, key), creating it; NONE on out-of-memory. */
static uint32_t bucket_get(mg_router_t *rt, int kind, const char *key, size_t len)
{
    uint64_t h = FNV_BASIS;
    if (kind == KIND_SUFFIX) /* hashed right to left, so a lookup gets every suffix in one pass */
        for (size_t i = len; i-- > 0;)
            h = hash_step(h, key[i]);
    else
        for (size_t i = 0; i < len; i++)
            h = hash_step(h, key[i]);
    h = hash_final(h, kind);

    uint32_t bi = lookup(rt, kind, h, key, len);
    if (bi != NONE) return bi;

    if ((rt->nbuckets + 1) * 2 > rt->mask + 1 && rehash(rt, (rt->mask + 1) * 2) != MG_OK)
        return NONE;
    if (grow((void **)&rt->buckets, &rt->cbuckets, rt->nbuckets + 1, sizeof(bucket_t)) != MG_OK)
        return NONE;
    char *k = mg_pool_alloc(rt->pool, len + 1);
    if (k == NULL) return NONE;
    for (size_t i = 0; i < len; i++)
        k[i] = mg_lower(key[i]);
    k[len] = '\0';

    bi = (uint32_t)rt->nbuckets++;
    bucket_t *b = &rt->buckets[bi];
    memset(b, 0, sizeof(*b));
    b->key = (mg_str_t){len, k};
    b->hash = h;
    b->kind = kind;
    b->top = NONE;
    b->root = NONE;

    size_t i = h & rt->mask;
    while (rt->slots[i].bucket != NONE)
        i = (i + 1) & rt->mask;
    rt->slots[i].hash = h;
    rt->slots[i].bucket = bi;

    if (kind == KIND_EXACT)
        rt->exact = true;
    else if (kind == KIND_SUFFIX && len && k[0] == '.')
        rt->suffix_dot = true;
    else if (kind == KIND_SUFFIX)
        rt->suffix_any = true;
    else if (len && k[len - 1] == '.')
        rt->prefix_dot = true;
    else
        rt->prefix_any = true;
    return bi;
}

static int rinfo_init(mg_router_t *rt, rinfo_t *ri, const mg_route_t *r)
{
    ri->route = r;
    ri->any_method = r->nmethods == 0;
    if (r->nmethods) {
        ri->xmethods = mg_pool_alloc(rt->pool, r->nmethods * sizeof(mg_str_t));
        if (ri->xmethods == NULL) return MG_ERROR;
    }
    for (size_t i = 0; i < r->nmethods; i++) {
        mg_str_t m = {strlen(r->methods[i]), r->methods[i]};
        uint32_t bit = method_bit(m);
        if (bit)
            ri->method_mask |= bit;
        else
            ri->xmethods[ri->nxmethods++] = m;
    }

    if (r->nsnis) {
        ri->snis = mg_pool_alloc(rt->pool, r->nsnis * sizeof(mg_str_t));
        if (ri->snis == NULL) return MG_ERROR;
    }
    for (size_t i = 0; i < r->nsnis; i++) {
        mg_str_t s = {strlen(r->snis[i]), r->snis[i]};
        if (s.len > 1 && s.data[s.len - 1] == '.') s.len--; /* Kong: not used for routing */
        ri->snis[ri->nsnis++] = s;
    }

    if (r->nheaders) {
        ri->headers = mg_pool_calloc(rt->pool, r->nheaders * sizeof(hdr_t));
        if (ri->headers == NULL) return MG_ERROR;
    }
    for (size_t i = 0; i < r->nheaders; i++) {
        const mg_header_match_t *hm = &r->headers[i];
        hdr_t *h = &ri->headers[ri->nheaders++];
        size_t n = strlen(hm->name);
        char *name = mg_pool_alloc(rt->pool, n + 1);
        if (name == NULL) return MG_ERROR;
        for (size_t j = 0; j <= n; j++)
            name[j] = mg_lower(hm->name[j]);
        h->name = (mg_str_t){n, name};
        if (hm->nvalues) {
            h->values = mg_pool_alloc(rt->pool, hm->nvalues * sizeof(mg_str_t));
            if (h->values == NULL) return MG_ERROR;
        }
        for (size_t j = 0; j < hm->nvalues; j++)
            h->values[h->nvalues++] = (mg_str_t){strlen(hm->values[j]), hm->values[j]};
    }
    return MG_OK;
}

/* Fills out[0..nhosts) (or out[0] for a route without hosts); MG_ERROR with err set. */
static int host_specs(mg_router_t *rt, const mg_route_t *r, size_t ri, hspec_t *out, char *err,
                      size_t errlen)
{
    if (r->nhosts == 0) {
        out[0] = (hspec_t){0, 0};
        return MG_OK;
    }
    for (size_t i = 0; i < r->nhosts; i++) {
        unsigned port;
        mg_str_t h = split_host((mg_str_t){strlen(r->hosts[i]), r->hosts[i]}, &port);
        const char *star = memchr(h.data, '*', h.len);
        int kind = KIND_EXACT;
        if (star) {
            size_t pos = (size_t)(star - h.data);
            bool lead = pos == 0, trail = pos == h.len - 1;
            if ((!lead && !trail) || memchr(star + 1, '*', h.len - pos - 1)) {
                set_err(err, errlen, "routes[%zu].hosts[%zu]: invalid wildcard host \"%s\"", ri, i,
                        r->hosts[i]);
                return MG_ERROR;
            }
            kind = lead ? KIND_SUFFIX : KIND_PREFIX;
            if (lead) h.data++;
            h.len--;
        }
        uint32_t b = bucket_get(rt, kind, h.data, h.len);
        if (b == NONE) {
            set_err(err, errlen, "out of memory");
            return MG_ERROR;
        }
        out[i] = (hspec_t){b, (uint16_t)port};
    }
    return MG_OK;
}

/* The path-independent part of Kong's priority (transform.lua get_priority()). */
static uint64_t route_prio(const mg_route_t *r)
{
    uint64_t weight =
        (r->nmethods > 0) + (r->nhosts > 0) + (r->nheaders > 0) + (r->nsnis > 0) + (r->npaths > 0);
    bool plain_hosts = r->nhosts > 0;
    for (size_t i = 0; plain_hosts && i < r->nhosts; i++)
        if (strchr(r->hosts[i], '*')) plain_hosts = false;
    uint64_t nh = MG_MIN(r->nheaders, 255);
    return weight << 61 | (uint64_t)plain_hosts << 60 | nh << 52;
}

static int proto_cmp(const void *a, const void *b)
{
    const proto_t *x = a, *y = b;
    if (x->prio != y->prio) return x->prio > y->prio ? -1 : 1;
    if (x->index != y->index) return x->index < y->index ? -1 : 1;
    if (x->route != y->route) return x->route < y->route ? -1 : 1;
    return x->path < y->path ? -1 : x->path > y->path;
}

static int str_cmp(mg_str_t a, mg_str_t b)
{
    int c = memcmp(a.data, b.data, MG_MIN(a.len, b.len));
    if (c) return c;
    return a.len < b.len ? -1 : a.len > b.len;
}

static int item_cmp(const void *a, const void *b)
{
    const item_t *x = a, *y = b;
    if (x->bucket != y->bucket) return x->bucket < y->bucket ? -1 : 1;
    if (x->type != y->type) return x->type < y->type ? -1 : 1;
    if (x->type == PATH_PLAIN) {
        int c = str_cmp(x->prefix, y->prefix);
        if (c) return c;
    }
    return x->rank < y->rank ? -1 : x->rank > y->rank;
}

static int ent_push(mg_router_t *rt, const item_t *it)
{
    if (grow((void **)&rt->ents, &rt->cents, rt->nents + 1, sizeof(entry_t)) != MG_OK)
        return MG_ERROR;
    rt->ents[rt->nents++] = (entry_t){it->rank, it->port, it->ri, it->re};
    return MG_OK;
}

/*
 * Builds a radix tree over p[0..m) (distinct, sorted byte-wise) breadth-first, so that the
 * children of a node come out contiguous. A node without entries has at least two children,
 * hence at most 2m+1 nodes, reserved up front.
 */
static int radix_build(mg_router_t *rt, const pfx_t *p, uint32_t m, uint32_t *root)
{
    size_t max = 2 * (size_t)m + 1, qh = 0, qt = 0;
    if (grow((void **)&rt->nodes, &rt->cnodes, rt->nnodes + max, sizeof(node_t)) != MG_OK ||
        grow((void **)&rt->keys, &rt->ckeys, rt->nnodes + max, 1) != MG_OK)
        return MG_ERROR;
    work_t *q = malloc(max * sizeof(*q));
    if (q == NULL) return MG_ERROR;

    *root = (uint32_t)rt->nnodes++;
    rt->nodes[*root] = (node_t){"", 0, 0, 0, 0, 0};
    rt->keys[*root] = 0;
    q[qt++] = (work_t){*root, 0, m, 0};

    while (qh < qt) {
        work_t w = q[qh++];
        node_t *n = &rt->nodes[w.node];
        uint32_t lo = w.lo, d = w.depth;
        if (lo < w.hi && p[lo].s.len == d) {
            n->ent = p[lo].ent;
            n->nent = p[lo].nent;
            lo++;
        }
        uint32_t ng = 0;
        for (uint32_t i = lo, j; i < w.hi; i = j) {
            uint8_t c = (uint8_t)p[i].s.data[d];
            for (j = i + 1; j < w.hi && (uint8_t)p[j].s.data[d] == c; j++) {
            }
            ng++;
        }
        n->child = (uint32_t)rt->nnodes;
        n->nchild = ng;
        rt->nnodes += ng;
        uint32_t k = n->child;
        for (uint32_t i = lo, j; i < w.hi; i = j, k++) {
            uint8_t c = (uint8_t)p[i].s.data[d];
            for (j = i + 1; j < w.hi && (uint8_t)p[j].s.data[d] == c; j++) {
            }
            /* sorted input: the common prefix of the first and last is that of the group */
            mg_str_t a = p[i].s, z = p[j - 1].s;
            uint32_t l = d + 1;
            while (l < a.len && l < z.len && a.data[l] == z.data[l])
                l++;
            rt->nodes[k] = (node_t){a.data + d, l - d, 0, 0, 0, 0};
            rt->keys[k] = c;
            q[qt++] = (work_t){k, i, j, l};
        }
    }
    free(q);
    return MG_OK;
}

/* Lays out the entries of every bucket; items are sorted by bucket, type, prefix, rank. */
static int emit(mg_router_t *rt, item_t *items, size_t nitems)
{
    pfx_t *pf = malloc((nitems ? nitems : 1) * sizeof(*pf));
    if (pf == NULL) return MG_ERROR;

    for (size_t i = 0, j; i < nitems; i = j) {
        bucket_t *b = &rt->buckets[items[i].bucket];
        for (j = i; j < nitems && items[j].bucket == items[i].bucket; j++)
            b->top = MG_MIN(b->top, items[j].rank);

        size_t k = i;
        uint32_t m = 0;
        for (; k < j && items[k].type == PATH_PLAIN; k++) {
            if (m == 0 || !mg_str_eq(pf[m - 1].s, items[k].prefix))
                pf[m++] = (pfx_t){items[k].prefix, (uint32_t)rt->nents, 0};
            pf[m - 1].nent++;
            if (ent_push(rt, &items[k]) != MG_OK) goto fail;
        }
        if (m && radix_build(rt, pf, m, &b->root) != MG_OK) goto fail;

        b = &rt->buckets[items[i].bucket];
        b->bare = (uint32_t)rt->nents;
        for (; k < j && items[k].type == PATH_NONE; k++, b->nbare++)
            if (ent_push(rt, &items[k]) != MG_OK) goto fail;
        b->rx = (uint32_t)rt->nents;
        for (; k < j; k++, b->nrx++)
            if (ent_push(rt, &items[k]) != MG_OK) goto fail;
    }
    free(pf);
    return MG_OK;
fail:
    free(pf);
    return MG_ERROR;
}

/*
 * Contract in mg_router.h. Everything the table needs is allocated here and owned by the table
 * (freed by mg_router_free); the table points into cfg (route structs, path strings), so cfg
 * must outlive it. On failure nothing leaks and err holds "routes[i]...: message" or
 * "out of memory".
 */
mg_router_t *mg_router_build(const mg_config_t *cfg, char *err, size_t errlen)
{
    proto_t *protos = NULL;
    item_t *items = NULL;
    hspec_t *hs = NULL;
    uint32_t *first = NULL, *rank = NULL;
    size_t nprotos = 0, nitems = 0, cprotos = 0, citems = 0, maxhosts = 1;
    size_t nroutes = cfg->nroutes;

    mg_router_t *rt = calloc(1, sizeof(*rt));
    if (rt == NULL) goto oom;
    rt->pool = mg_pool_create(16384);
    rt->mctx = pcre2_match_context_create(NULL);
    if (rt->pool == NULL || rt->mctx == NULL || rehash(rt, 64) != MG_OK) goto oom;
    pcre2_set_match_limit(rt->mctx, REGEX_MATCH_LIMIT);
    if (grow((void **)&rt->buckets, &rt->cbuckets, 1, sizeof(bucket_t)) != MG_OK) goto oom;
    rt->buckets[0] = (bucket_t){MG_NULL_STR, 0, KIND_NONE, NONE, NONE, 0, 0, 0, 0};
    rt->nbuckets = 1;

    rt->rinfos = mg_pool_calloc(rt->pool, (nroutes ? nroutes : 1) * sizeof(rinfo_t));
    first = malloc((nroutes + 1) * sizeof(*first));
    if (rt->rinfos == NULL || first == NULL) goto oom;

    /* 1. one proto per (route, path), ranked in Kong's precedence order */
    for (size_t i = 0; i < nroutes; i++) {
        const mg_route_t *r = &cfg->routes[i];
        if (rinfo_init(rt, &rt->rinfos[i], r) != MG_OK) goto oom;
        maxhosts = MG_MAX(maxhosts, r->nhosts);
        uint64_t prio = route_prio(r);
        size_t np = r->npaths ? r->npaths : 1;
        if (grow((void **)&protos, &cprotos, nprotos + np, sizeof(proto_t)) != MG_OK) goto oom;
        first[i] = (uint32_t)nprotos;
        for (size_t j = 0; j < np; j++) {
            proto_t *p = &protos[nprotos++];
            *p = (proto_t){prio, r->index, (uint32_t)i, (uint32_t)j, PATH_NONE, MG_NULL_STR, NULL};
            if (r->npaths == 0) continue;
            const char *path = r->paths[j];
            if (path[0] != '~') {
                p->type = PATH_PLAIN;
                p->prefix = (mg_str_t){strlen(path), path};
                p->prio |= MG_MIN(p->prefix.len, MAX_PRIO_LENGTH);
                continue;
            }
            int ec;
            PCRE2_SIZE eo;
            p->type = PATH_REGEX;
            p->re = pcre2_compile((PCRE2_SPTR)path + 1, PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED, &ec,
                                  &eo, NULL);
            if (p->re == NULL && ec == PCRE2_ERROR_HEAP_FAILED) goto oom;
            if (p->re == NULL) {
                PCRE2_UCHAR msg[256];
                pcre2_get_error_message(ec, msg, sizeof(msg));
                set_err(err, errlen, "routes[%zu].paths[%zu]: invalid regex: %s at offset %zu", i,
                        j, (char *)msg, (size_t)eo);
                goto fail;
            }
            if (grow((void **)&rt->codes, &rt->ccodes, rt->ncodes + 1, sizeof(pcre2_code *)) !=
                MG_OK) {
                pcre2_code_free(p->re);
                goto oom;
            }
            rt->codes[rt->ncodes++] = p->re;
            /* without JIT support the interpreter still matches, only slower */
            (void)pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE);
            /* regex_priority biased to unsigned so that negative values order correctly */
            uint64_t rp = (uint32_t)r->regex_priority ^ 0x80000000u;
            p->prio |= 1ULL << 51 | rp << 19;
        }
    }
    first[nroutes] = (uint32_t)nprotos;
    if (nprotos) qsort(protos, nprotos, sizeof(proto_t), proto_cmp);

    /* 2. each proto into the bucket of each host of its route */
    hs = malloc(maxhosts * sizeof(*hs));
    rank = malloc((nprotos ? nprotos : 1) * sizeof(*rank));
    if (hs == NULL || rank == NULL) goto oom;
    for (size_t k = 0; k < nprotos; k++)
        rank[first[protos[k].route] + protos[k].path] = (uint32_t)k;
    for (size_t i = 0; i < nroutes; i++) {
        const mg_route_t *r = &cfg->routes[i];
        if (host_specs(rt, r, i, hs, err, errlen) != MG_OK) goto fail;
        size_t nh = r->nhosts ? r->nhosts : 1;
        if (grow((void **)&items, &citems, nitems + nh * (first[i + 1] - first[i]),
                 sizeof(item_t)) != MG_OK)
            goto oom;
        for (uint32_t pi = first[i]; pi < first[i + 1]; pi++) {
            const proto_t *p = &protos[rank[pi]];
            for (size_t h = 0; h < nh; h++)
                items[nitems++] = (item_t){.bucket = hs[h].bucket,
                                           .rank = rank[pi],
                                           .type = p->type,
                                           .port = hs[h].port,
                                           .prefix = p->prefix,
                                           .ri = &rt->rinfos[i],
                                           .re = p->re};
        }
    }
    if (nitems) qsort(items, nitems, sizeof(item_t), item_cmp);

    /* 3. lay the buckets out */
    if (emit(rt, items, nitems) != MG_OK) goto oom;

    free(protos);
    free(items);
    free(hs);
    free(first);
    free(rank);
    return rt;

oom:
    set_err(err, errlen, "out of memory");
fail:
    free(protos);
    free(items);
    free(hs);
    free(first);
    free(rank);
    mg_router_free(rt);
    return NULL;
}

/* Accepts NULL. The config the table was built from is not touched. */
void mg_router_free(mg_router_t *rt)
{
    if (rt == NULL) return;
    for (size_t i = 0; i < rt->ncodes; i++)
        pcre2_code_free(rt->codes[i]);
    pcre2_match_context_free(rt->mctx);
    free(rt->codes);
    free(rt->ents);
    free(rt->nodes);
    free(rt->keys);
    free(rt->buckets);
    free(rt->slots);
    mg_pool_destroy(rt->pool);
    free(rt);
}

/* ---------------------------------------------------------------------------------------- */
/* match                                                                                    */

static bool headers_ok(const rinfo_t *ri, const mg_router_req_t *req)
{
    if (req->get_header == NULL) return false;
    for (size_t i = 0; i < ri->nheaders; i++) {
        const hdr_t *h = &ri->headers[i];
        mg_str_t v[MAX_HEADER_VALUES];
        size_t n =
            MG_MIN(req->get_header(req->ud, h->name, v, MAX_HEADER_VALUES), MAX_HEADER_VALUES);
        bool found = false;
        for (size_t j = 0; j < n && !found; j++)
            for (size_t k = 0; k < h->nvalues && !found; k++)
                found = mg_str_caseeq(v[j], h->values[k]);
        if (!found) return false;
    }
    return true;
}

/* Everything but the path, which the caller has matched. */
static bool entry_ok(const entry_t *e, const match_t *x)
{
    const rinfo_t *ri = e->ri;
    if (e->port && e->port != x->port) return false;
    if (!ri->any_method && !(x->mbit & ri->method_mask)) {
        bool ok = false;
        for (size_t i = 0; !ok && x->mbit == 0 && i < ri->nxmethods; i++)
            ok = mg_str_eq(x->req->method, ri->xmethods[i]);
        if (!ok) return false;
    }
    if (ri->nsnis && x->req->https) {
        bool ok = false;
        for (size_t i = 0; !ok && i < ri->nsnis; i++)
            ok = mg_str_caseeq(x->req->sni, ri->snis[i]);
        if (!ok) return false;
    }
    return ri->nheaders == 0 || headers_ok(ri, x->req);
}

/* e[0..n) share one prefix and are sorted by rank: the first that passes is their best. */
static void consider(match_t *x, const entry_t *e, uint32_t n, size_t plen)
{
    for (uint32_t i = 0; i < n && e[i].rank < x->best; i++) {
        if (entry_ok(&e[i], x)) {
            x->best = e[i].rank;
            x->win = &e[i];
            x->plen = plen;
            return;
        }
    }
}

static uint32_t child_find(const mg_router_t *rt, const node_t *n, uint8_t c)
{
    const uint8_t *k = rt->keys + n->child;
    uint32_t lo = 0, hi = n->nchild;
    if (hi <= 8) {
        for (; lo < hi; lo++)
            if (k[lo] == c) return n->child + lo;
        return NONE;
    }
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (k[mid] < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n->nchild && k[lo] == c ? n->child + lo : NONE;
}

static void *scratch_malloc(PCRE2_SIZE size, void *data)
{
    scratch_t *s = data;
    size_t need = (size + 15) & ~(size_t)15;
    if (s->cap - s->used >= need) {
        void *p = s->buf + s->used;
        s->used += need;
        return p;
    }
    return malloc(size); /* only the interpreter's backtracking frames get here (no JIT) */
}

static void scratch_free(void *p, void *data)
{
    scratch_t *s = data;
    uintptr_t a = (uintptr_t)p, lo = (uintptr_t)s->buf;
    if (a < lo || a >= lo + s->cap) free(p);
}

static bool regex_run(match_t *x, const pcre2_code *re, size_t *end)
{
    if (x->md == NULL) {
        x->gctx = pcre2_general_context_create(scratch_malloc, scratch_free, &x->scratch);
        if (x->gctx == NULL) return false;
        x->md = pcre2_match_data_create(1, x->gctx);
        if (x->md == NULL) return false;
    }
    mg_str_t path = x->req->path;
    int rc = pcre2_match(re, (PCRE2_SPTR)(path.data ? path.data : ""), path.len, 0, 0, x->md,
                         x->rt->mctx);
    if (rc < 0) return false; /* no match, or the match limit hit: Kong treats both as a miss */
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(x->md);
    *end = MG_MIN(ov[1], path.len);
    return true;
}

static void scan_bucket(match_t *x, const bucket_t *b)
{
    const mg_router_t *rt = x->rt;
    if (b->top >= x->best) return;

    if (b->root != NONE) {
        const node_t *n = &rt->nodes[b->root];
        const char *p = x->req->path.data;
        size_t len = x->req->path.len, pos = 0;
        for (;;) {
            if (n->nent && rt->ents[n->ent].rank < x->best)
                consider(x, &rt->ents[n->ent], n->nent, pos);
            if (pos == len || n->nchild == 0) break;
            uint32_t c = child_find(rt, n, (uint8_t)p[pos]);
            if (c == NONE) break;
            n = &rt->nodes[c];
            if (len - pos < n->label_len || memcmp(p + pos, n->label, n->label_len) != 0) break;
            pos += n->label_len;
        }
    }

    if (b->nbare) consider(x, &rt->ents[b->bare], b->nbare, 0);

    const entry_t *e = b->nrx ? &rt->ents[b->rx] : NULL;
    for (uint32_t i = 0; i < b->nrx && e[i].rank < x->best; i++) {
        size_t end;
        if (entry_ok(&e[i], x) && regex_run(x, e[i].re, &end)) {
            x->best = e[i].rank;
            x->win = &e[i];
            x->plen = end;
            break;
        }
    }
}

/*
 * Protocols are not part of matching, as in Kong: the caller checks route->protocols against
 * the request's protocol afterwards (Kong answers 426 "Please use HTTPS protocol" when a route
 * that allows only https is reached over http). Re-entrant: reads the table only; allocates
 * nothing (with PCRE2's JIT; without it, a regex may allocate backtracking frames).
 */
int mg_router_match(const mg_router_t *rt, const mg_router_req_t *req, mg_router_match_t *m)
{
    _Alignas(16) char scratch[SCRATCH_SIZE];
    match_t x = {.rt = rt,
                 .req = req,
                 .mbit = method_bit(req->method),
                 .best = NONE,
                 .scratch = {scratch, 0, SCRATCH_SIZE}};

    if (req->host.len && rt->nbuckets > 1) {
        mg_str_t h = split_host(req->host, &x.port);
        const char *s = h.data;
        size_t len = h.len;
        uint32_t bi;
        if (x.port == 0) x.port = req->https ? 443 : 80;

        if (rt->exact) {
            uint64_t hh = FNV_BASIS;
            for (size_t i = 0; i < len; i++)
                hh = hash_step(hh, s[i]);
            bi = lookup(rt, KIND_EXACT, hash_final(hh, KIND_EXACT), s, len);
            if (bi != NONE) scan_bucket(&x, &rt->buckets[bi]);
        }
        if (rt->suffix_dot || rt->suffix_any) {
            /* hh = hash of s[i..len), one or more bytes left of it for the "*" */
            uint64_t hh = FNV_BASIS;
            for (size_t i = len; i >= 1; i--) {
                if (rt->suffix_any || (i < len && s[i] == '.')) {
                    bi = lookup(rt, KIND_SUFFIX, hash_final(hh, KIND_SUFFIX), s + i, len - i);
                    if (bi != NONE) scan_bucket(&x, &rt->buckets[bi]);
                }
                hh = hash_step(hh, s[i - 1]);
            }
        }
        if (rt->prefix_dot || rt->prefix_any) {
            /* hh = hash of s[0..i), one or more bytes right of it for the "*" */
            uint64_t hh = FNV_BASIS;
            for (size_t i = 0; i < len; i++) {
                if (rt->prefix_any || (i > 0 && s[i - 1] == '.')) {
                    bi = lookup(rt, KIND_PREFIX, hash_final(hh, KIND_PREFIX), s, i);
                    if (bi != NONE) scan_bucket(&x, &rt->buckets[bi]);
                }
                hh = hash_step(hh, s[i]);
            }
        }
    }
    scan_bucket(&x, &rt->buckets[0]);

    if (x.md) pcre2_match_data_free(x.md);
    if (x.gctx) pcre2_general_context_free(x.gctx);
    if (x.win == NULL) return MG_DECLINED;
    m->route = x.win->ri->route;
    m->path_prefix_len = x.plen;
    m->regex = x.win->re;
    return MG_OK;
}

int mg_router_capture(const void *regex, mg_str_t path, const char *name, mg_str_t *out)
{
    static pcre2_match_data *md; /* one per worker, for the life of the process */
    const pcre2_code *re = regex;
    if (re == NULL) return MG_DECLINED;
    int group = pcre2_substring_number_from_name(re, (PCRE2_SPTR)name);
    if (group <= 0) return MG_DECLINED;
    if (md == NULL && (md = pcre2_match_data_create(CAPTURE_PAIRS, NULL)) == NULL)
        return MG_DECLINED;
    if (group >= CAPTURE_PAIRS) return MG_DECLINED;
    int rc = pcre2_match(re, (PCRE2_SPTR)(path.data ? path.data : ""), path.len, 0, 0, md, NULL);
    if (rc <= group && rc != 0) return MG_DECLINED; /* no match, or the group is unset */
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    if (ov[2 * group] == PCRE2_UNSET || ov[2 * group + 1] < ov[2 * group]) return MG_DECLINED;
    *out = (mg_str_t){ov[2 * group + 1] - ov[2 * group], path.data + ov[2 * group]};
    return MG_OK;
}
