/*
 * test_shdict.c — unit tests for the shared dictionaries: every operation and return code,
 * TTLs, incr with and without init, LRU and expired-first eviction in a small zone, SAFE_SET,
 * page stealing between size classes, large and binary values, get_keys, the flushes, then
 * several processes on one zone (exact incr totals, a holder killed by SIGKILL with and
 * without a half-done update) and two randomized runs: one against a reference model in a
 * zone that never evicts, one in a tiny zone that evicts all the time. zone_check() walks the
 * whole structure (hash chains, both LRUs, expiry heaps, pages, counters) after each.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "mg_test.h"
#include "../mg_shdict.c"

#define KiB 1024
#define MiB (1024 * 1024)

/* ---- helpers ------------------------------------------------------------------------- */

static int sset(mg_shdict_t *d, int mode, const char *k, const char *v, double ttl, bool *forc)
{
    return mg_shdict_store(d, mode, k, strlen(k), MG_SHDICT_STRING, v, strlen(v), 0, ttl, forc);
}

static int nset(mg_shdict_t *d, const char *k, double n, double ttl)
{
    return mg_shdict_store(d, MG_SHDICT_SET, k, strlen(k), MG_SHDICT_NUMBER, NULL, 0, n, ttl, NULL);
}

static int del(mg_shdict_t *d, const char *k)
{
    return mg_shdict_store(d, MG_SHDICT_SET, k, strlen(k), MG_SHDICT_NIL, NULL, 0, 0, 0, NULL);
}

/* MG_OK with the string in out (NUL-terminated), or get's rc */
static int sget(mg_shdict_t *d, const char *k, char *out, size_t outlen)
{
    mg_shdict_value_t v;
    int rc = mg_shdict_get(d, k, strlen(k), &v, out, outlen - 1);
    if (rc == MG_OK && v.type == MG_SHDICT_STRING) out[v.len] = '\0';
    return rc;
}

static bool has(mg_shdict_t *d, const char *k)
{
    mg_shdict_value_t v;
    char buf[8];
    int rc = mg_shdict_get(d, k, strlen(k), &v, buf, sizeof(buf));
    return rc == MG_OK || rc == MG_AGAIN;
}

static size_t zone_items(mg_shdict_t *d)
{
    return d->nitems;
}

/* How many items of item size `size` a fresh zone holds. */
static size_t items_that_fit(mg_shdict_t *d, size_t size)
{
    return (size_t)d->npages * d->classes[class_for(d, size)].nchunks;
}

static bool check_quiet; /* when a broken zone is what the test expects */

/* Walks every structure of the zone and counts what is wrong (0: consistent). */
static int zone_check(mg_shdict_t *d)
{
    int bad = 0;
#define BAD(...)                                                                                   \
    do {                                                                                           \
        bad++;                                                                                     \
        if (!check_quiet) {                                                                        \
            fprintf(stderr, "#   zone_check: " __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)
    uint32_t limit = d->nitems + 2;

    uint32_t nhash = 0;
    for (uint32_t b = 0; b < d->nbuckets; b++) {
        for (ref_t r = buckets(d)[b]; r != 0; r = item_at(d, r)->hnext) {
            item_t *it = item_at(d, r);
            if ((it->hash & (d->nbuckets - 1)) != b) BAD("item in the wrong bucket");
            if (it->type == FREE_TYPE) BAD("free chunk in a hash chain");
            if (key_hash(d, it->data, it->klen) != it->hash) BAD("stale hash");
            if (++nhash > limit) {
                BAD("hash chain cycle");
                return bad;
            }
        }
    }
    if (nhash != d->nitems) BAD("%u items hashed, %u counted", nhash, d->nitems);

    uint32_t n = 0;
    ref_t prev = 0;
    for (ref_t r = d->lru.head; r != 0; r = item_at(d, r)->lru.next) {
        if (item_at(d, r)->lru.prev != prev) BAD("zone LRU prev link");
        prev = r;
        if (++n > limit) {
            BAD("zone LRU cycle");
            return bad;
        }
    }
    if (d->lru.tail != prev) BAD("zone LRU tail");
    if (n != d->nitems) BAD("%u items in the zone LRU, %u counted", n, d->nitems);

    uint32_t sum = 0, pages_used = 0;
    for (uint32_t c = 0; c < d->nclasses; c++) {
        class_t *k = &d->classes[c];
        uint32_t m = 0, with_ttl = 0;
        prev = 0;
        for (ref_t r = k->lru.head; r != 0; r = item_at(d, r)->clru.next) {
            item_t *it = item_at(d, r);
            if (it->clru.prev != prev) BAD("class LRU prev link");
            if (it->cls != c) BAD("item of class %u in the LRU of %u", it->cls, c);
            if (ITEM_HDR + it->klen + it->vlen > k->size) BAD("item overflows its chunk");
            if (c > 0 && ITEM_HDR + it->klen + it->vlen <= d->classes[c - 1].size)
                BAD("item in a class too large for it");
            with_ttl += it->expires != 0;
            prev = r;
            if (++m > limit) {
                BAD("class LRU cycle");
                return bad;
            }
        }
        if (k->lru.tail != prev) BAD("class LRU tail");
        if (m != k->nitems) BAD("class %u: %u items listed, %u counted", c, m, k->nitems);
        sum += m;

        /* heap: order, back links, and exactly the items with a TTL */
        uint32_t nheap = 0;
        if (k->heap != 0) {
            if (item_at(d, k->heap)->hup != 0 || item_at(d, k->heap)->hsib != 0)
                BAD("heap root has links");
            ref_t *stack = malloc(sizeof(ref_t) * (k->nitems + 1));
            size_t sp = 0;
            stack[sp++] = k->heap;
            while (sp > 0 && nheap <= k->nitems) {
                ref_t r = stack[--sp];
                item_t *it = item_at(d, r);
                nheap++;
                if (it->expires == 0) BAD("item without TTL in a heap");
                if (it->cls != c) BAD("heap of another class");
                ref_t up = r;
                for (ref_t ch = it->hchild; ch != 0; ch = item_at(d, ch)->hsib) {
                    item_t *ci = item_at(d, ch);
                    if (ci->hup != up) BAD("heap back link");
                    if (ci->expires < it->expires) BAD("heap order");
                    if (sp < k->nitems) stack[sp++] = ch;
                    up = ch;
                }
            }
            free(stack);
        }
        if (nheap != with_ttl) BAD("class %u: %u in heap, %u with a TTL", c, nheap, with_ttl);

        uint32_t npages = 0, nfree = 0, npartial = 0;
        for (uint32_t pn = 1; pn <= d->npages; pn++) {
            page_t *p = page_at(d, pn);
            if (p->cls != c) continue;
            npages++;
            pages_used += p->used;
            nfree += k->nchunks - p->used;
            if (p->used == 0 || p->used > k->nchunks || p->carved > k->nchunks)
                BAD("page %u: used %u carved %u", pn, p->used, p->carved);
            if (p->used < k->nchunks) npartial++;
            uint32_t live = 0, freelen = 0;
            for (uint32_t i = 0; i < p->carved; i++) {
                item_t *it = (item_t *)(page_base(d, pn) + (size_t)i * k->size);
                if (it->type == FREE_TYPE) continue;
                live++;
                if (it->cls != c) BAD("item of another class in page %u", pn);
            }
            for (ref_t r = p->free; r != 0 && freelen <= p->carved; freelen++) {
                if (page_of(d, r) != pn) BAD("free chunk of another page");
                memcpy(&r, ptr_of(d, r), sizeof(r));
            }
            if (live != p->used) BAD("page %u: %u live, used %u", pn, live, p->used);
            if (freelen != p->carved - p->used) BAD("page %u: free list %u", pn, freelen);
        }
        if (npages != k->npages) BAD("class %u: %u pages, %u counted", c, npages, k->npages);
        if (nfree != k->nfree) BAD("class %u: %u free chunks, %u counted", c, nfree, k->nfree);
        uint32_t listed = 0;
        for (uint32_t pn = k->partial; pn != 0 && listed <= d->npages; pn = page_at(d, pn)->next) {
            if (page_at(d, pn)->cls != c) BAD("partial page of another class");
            if (page_at(d, pn)->used >= k->nchunks) BAD("full page on a partial list");
            listed++;
        }
        if (listed != npartial) BAD("class %u: %u partial listed, %u partial", c, listed, npartial);
    }
    if (sum != d->nitems) BAD("%u items in classes, %u counted", sum, d->nitems);
    if (pages_used != d->nitems) BAD("%u chunks used, %u items", pages_used, d->nitems);

    uint32_t nfp = 0;
    for (uint32_t pn = d->free_pages; pn != 0 && nfp <= d->npages; pn = page_at(d, pn)->next) {
        if (page_at(d, pn)->cls != NO_CLASS) BAD("page %u on the free list has a class", pn);
        nfp++;
    }
    if (nfp != d->nfree_pages) BAD("%u free pages listed, %u counted", nfp, d->nfree_pages);
#undef BAD
    return bad;
}

/* ---- creation ------------------------------------------------------------------------ */

TEST(create_checks_size_and_name)
{
    errno = 0;
    CHECK(mg_shdict_create("x", MG_SHDICT_MIN_SIZE - 1) == NULL);
    CHECK_INT(errno, EINVAL);
    CHECK(mg_shdict_create(NULL, MiB) == NULL);
    char name[MG_SHDICT_NAME_MAX + 2];
    memset(name, 'n', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    errno = 0;
    CHECK(mg_shdict_create(name, MiB) == NULL);
    CHECK_INT(errno, ENAMETOOLONG);
    name[MG_SHDICT_NAME_MAX] = '\0';
    mg_shdict_t *d = mg_shdict_create(name, MG_SHDICT_MIN_SIZE);
    CHECK(d != NULL);
    if (d == NULL) return;
    CHECK_STR(mg_shdict_name(d), name);
    CHECK_INT(mg_shdict_capacity(d), MG_SHDICT_MIN_SIZE);
    CHECK_INT(mg_shdict_max_value_len(d, 1), 4096 - ITEM_HDR - 1);
    CHECK(mg_shdict_free_space(d) > 7 * 4096 * 8 / 10); /* metadata under ~20 % */
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
    mg_shdict_destroy(NULL);

    d = mg_shdict_create("big", 64 * MiB); /* pages are capped at 1 MiB */
    CHECK(d != NULL);
    CHECK_INT(d->page_size, MiB);
    CHECK_INT(mg_shdict_max_value_len(d, 10), MiB - ITEM_HDR - 10);
    CHECK(mg_shdict_free_space(d) > 60 * MiB);
    mg_shdict_destroy(d);
}

TEST(size_classes_grow_and_fill_their_pages)
{
    mg_shdict_t *d = mg_shdict_create("c", 64 * MiB);
    CHECK_INT(d->classes[0].size, 64);
    CHECK_INT(d->classes[d->nclasses - 1].size, d->page_size);
    for (uint32_t c = 1; c < d->nclasses; c++) {
        class_t *a = &d->classes[c - 1], *b = &d->classes[c];
        CHECK(b->size > a->size && b->nchunks < a->nchunks);
        CHECK(b->size <= a->size * 2);
        /* steps of 1.5x or less, plus the stretch to fill the page, except near the page
         * size where one chunk fewer per page is a large step */
        if (b->nchunks >= 8) CHECK(b->size <= a->size * 3 / 2 * 9 / 8 + 8);
        CHECK(b->size % 8 == 0);
        CHECK((uint64_t)b->size * b->nchunks <= d->page_size);
    }
    CHECK_INT(class_for(d, 1), 0);
    CHECK_INT(class_for(d, 64), 0);
    CHECK_INT(class_for(d, 65), 1);
    CHECK_INT(class_for(d, d->page_size), d->nclasses - 1);
    mg_shdict_destroy(d);
}

/* ---- basic operations ---------------------------------------------------------------- */

TEST(set_and_get_every_type)
{
    mg_shdict_t *d = mg_shdict_create("t", MiB);
    mg_shdict_value_t v;
    char buf[64];
    bool forc = true;

    CHECK_INT(sset(d, MG_SHDICT_SET, "s", "hello", 0, &forc), MG_OK);
    CHECK(!forc);
    CHECK_INT(mg_shdict_get(d, "s", 1, &v, buf, sizeof(buf)), MG_OK);
    CHECK_INT(v.type, MG_SHDICT_STRING);
    CHECK_INT(v.len, 5);
    CHECK(memcmp(buf, "hello", 5) == 0);
    CHECK(v.ttl == -1);

    CHECK_INT(nset(d, "n", 3.25, 0), MG_OK);
    CHECK_INT(mg_shdict_get(d, "n", 1, &v, NULL, 0), MG_OK);
    CHECK_INT(v.type, MG_SHDICT_NUMBER);
    CHECK(v.number == 3.25);

    CHECK_INT(mg_shdict_store(d, MG_SHDICT_SET, "t", 1, MG_SHDICT_BOOLEAN, NULL, 0, 1, 0, NULL),
              MG_OK);
    CHECK_INT(mg_shdict_store(d, MG_SHDICT_SET, "f", 1, MG_SHDICT_BOOLEAN, NULL, 0, 0, 0, NULL),
              MG_OK);
    CHECK_INT(mg_shdict_get(d, "t", 1, &v, NULL, 0), MG_OK);
    CHECK(v.type == MG_SHDICT_BOOLEAN && v.number == 1);
    CHECK_INT(mg_shdict_get(d, "f", 1, &v, NULL, 0), MG_OK);
    CHECK(v.type == MG_SHDICT_BOOLEAN && v.number == 0);

    CHECK_INT(sset(d, MG_SHDICT_SET, "e", "", 0, NULL), MG_OK); /* empty string */
    CHECK_INT(mg_shdict_get(d, "e", 1, &v, NULL, 0), MG_OK);
    CHECK(v.type == MG_SHDICT_STRING && v.len == 0);

    CHECK_INT(sset(d, MG_SHDICT_SET, "s", "bye", 0, NULL), MG_OK); /* overwrite */
    CHECK_INT(sget(d, "s", buf, sizeof(buf)), MG_OK);
    CHECK_STR(buf, "bye");
    CHECK_INT(nset(d, "s", 7, 0), MG_OK); /* another type */
    CHECK_INT(mg_shdict_get(d, "s", 1, &v, buf, sizeof(buf)), MG_OK);
    CHECK(v.type == MG_SHDICT_NUMBER && v.number == 7);

    CHECK_INT(mg_shdict_get(d, "missing", 7, &v, buf, sizeof(buf)), MG_DECLINED);
    CHECK_INT(v.type, MG_SHDICT_NIL);
    CHECK_INT(zone_items(d), 5);
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

TEST(get_with_a_small_buffer_returns_again_and_the_length)
{
    mg_shdict_t *d = mg_shdict_create("t", MiB);
    mg_shdict_value_t v;
    char buf[16];
    CHECK_INT(sset(d, MG_SHDICT_SET, "k", "hello world", 0, NULL), MG_OK);
    memset(buf, 'x', sizeof(buf));
    CHECK_INT(mg_shdict_get(d, "k", 1, &v, buf, 5), MG_AGAIN);
    CHECK_INT(v.type, MG_SHDICT_STRING);
    CHECK_INT(v.len, 11);
    CHECK(buf[0] == 'x'); /* nothing copied */
    CHECK_INT(mg_shdict_get(d, "k", 1, &v, NULL, 0), MG_AGAIN);
    CHECK_INT(v.len, 11);
    CHECK_INT(mg_shdict_get(d, "k", 1, &v, buf, 11), MG_OK); /* exactly enough */
    CHECK(memcmp(buf, "hello world", 11) == 0);
    mg_shdict_destroy(d);
}

TEST(add_replace_and_delete_follow_openresty)
{
    mg_shdict_t *d = mg_shdict_create("t", MiB);
    char buf[64];
    bool forc;
    CHECK_INT(sset(d, MG_SHDICT_ADD, "a", "1", 0, &forc), MG_OK);
    CHECK_INT(sset(d, MG_SHDICT_ADD, "a", "2", 0, &forc), MG_DECLINED); /* exists */
    CHECK(!forc);
    CHECK_INT(sget(d, "a", buf, sizeof(buf)), MG_OK);
    CHECK_STR(buf, "1");

    CHECK_INT(sset(d, MG_SHDICT_REPLACE, "b", "1", 0, NULL), MG_DECLINED); /* not found */
    CHECK(!has(d, "b"));
    CHECK_INT(sset(d, MG_SHDICT_REPLACE, "a", "3", 0, NULL), MG_OK);
    CHECK_INT(sget(d, "a", buf, sizeof(buf)), MG_OK);
    CHECK_STR(buf, "3");
    CHECK_INT(sset(d, MG_SHDICT_SAFE_SET, "c", "4", 0, &forc), MG_OK);
    CHECK(!forc);

    /* delete = store NIL, whatever the mode allows */
    CHECK_INT(del(d, "a"), MG_OK);
    CHECK(!has(d, "a"));
    CHECK_INT(del(d, "a"), MG_OK); /* absent: still fine */
    CHECK_INT(mg_shdict_store(d, MG_SHDICT_REPLACE, "zz", 2, MG_SHDICT_NIL, NULL, 0, 0, 0, NULL),
              MG_DECLINED);
    CHECK_INT(mg_shdict_store(d, MG_SHDICT_REPLACE, "c", 1, MG_SHDICT_NIL, NULL, 0, 0, 0, NULL),
              MG_OK);
    CHECK(!has(d, "c"));
    CHECK_INT(mg_shdict_store(d, MG_SHDICT_ADD, "c", 1, MG_SHDICT_NIL, NULL, 0, 0, 0, NULL),
              MG_OK); /* adding nil: nothing to add */
    CHECK(!has(d, "c"));
    CHECK_INT(zone_items(d), 0);
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

TEST(bad_keys_modes_and_types_are_errors)
{
    mg_shdict_t *d = mg_shdict_create("t", MiB);
    mg_shdict_value_t v;
    double x;
    CHECK_INT(mg_shdict_get(d, "", 0, &v, NULL, 0), MG_ERROR);
    CHECK_INT(mg_shdict_store(d, MG_SHDICT_SET, "", 0, MG_SHDICT_NUMBER, NULL, 0, 1, 0, NULL),
              MG_ERROR);
    CHECK_INT(mg_shdict_incr(d, "", 0, 1, true, 0, 0, &x, NULL), MG_ERROR);
    CHECK_INT(mg_shdict_ttl(d, "", 0, &x), MG_ERROR);
    CHECK_INT(mg_shdict_expire(d, "", 0, 1), MG_ERROR);
    char *longkey = calloc(1, MG_SHDICT_KEY_MAX + 1);
    memset(longkey, 'k', MG_SHDICT_KEY_MAX + 1);
    CHECK_INT(mg_shdict_store(d, MG_SHDICT_SET, longkey, MG_SHDICT_KEY_MAX + 1, MG_SHDICT_NUMBER,
                              NULL, 0, 1, 0, NULL),
              MG_ERROR);
    CHECK_INT(mg_shdict_get(d, longkey, MG_SHDICT_KEY_MAX + 1, &v, NULL, 0), MG_ERROR);
    CHECK_INT(mg_shdict_store(d, 9, "k", 1, MG_SHDICT_NUMBER, NULL, 0, 1, 0, NULL), MG_ERROR);
    CHECK_INT(mg_shdict_store(d, -1, "k", 1, MG_SHDICT_NUMBER, NULL, 0, 1, 0, NULL), MG_ERROR);
    CHECK_INT(mg_shdict_store(d, MG_SHDICT_SET, "k", 1, 2, NULL, 0, 1, 0, NULL), MG_ERROR);
    CHECK_INT(zone_items(d), 0);
    mg_shdict_destroy(d);

    /* the longest key works where a page holds it (1 MiB pages) */
    d = mg_shdict_create("t", 16 * MiB);
    CHECK_INT(mg_shdict_store(d, MG_SHDICT_SET, longkey, MG_SHDICT_KEY_MAX, MG_SHDICT_NUMBER, NULL,
                              0, 42, 0, NULL),
              MG_OK);
    CHECK_INT(mg_shdict_get(d, longkey, MG_SHDICT_KEY_MAX, &v, NULL, 0), MG_OK);
    CHECK(v.number == 42);
    CHECK_INT(mg_shdict_get(d, longkey, MG_SHDICT_KEY_MAX - 1, &v, NULL, 0), MG_DECLINED);
    free(longkey);
    mg_shdict_destroy(d);
}

TEST(binary_keys_and_values_keep_their_nul_bytes)
{
    mg_shdict_t *d = mg_shdict_create("t", MiB);
    mg_shdict_value_t v;
    char buf[16];
    const char k1[] = {'a', 0, 'b'}, k2[] = {'a', 0, 'c'}, val[] = {0, 1, 0, 2, 0};
    CHECK_INT(mg_shdict_store(d, MG_SHDICT_SET, k1, 3, MG_SHDICT_STRING, val, 5, 0, 0, NULL),
              MG_OK);
    CHECK_INT(mg_shdict_store(d, MG_SHDICT_SET, k2, 3, MG_SHDICT_NUMBER, NULL, 0, 2, 0, NULL),
              MG_OK);
    CHECK_INT(mg_shdict_get(d, k1, 3, &v, buf, sizeof(buf)), MG_OK);
    CHECK(v.len == 5 && memcmp(buf, val, 5) == 0);
    CHECK_INT(mg_shdict_get(d, k2, 3, &v, buf, sizeof(buf)), MG_OK);
    CHECK(v.type == MG_SHDICT_NUMBER && v.number == 2);
    CHECK_INT(mg_shdict_get(d, "a", 1, &v, buf, sizeof(buf)), MG_DECLINED); /* prefix */
    CHECK_INT(mg_shdict_get(d, k1, 2, &v, buf, sizeof(buf)), MG_DECLINED);

    char keys[64];
    size_t need;
    CHECK_INT(mg_shdict_get_keys(d, 0, keys, sizeof(keys), &need), 2);
    CHECK_INT(need, 2 * (4 + 3));
    uint32_t len;
    memcpy(&len, keys, 4);
    CHECK_INT(len, 3);
    CHECK(memcmp(keys + 4, k2, 3) == 0); /* most recently used first */
    CHECK(memcmp(keys + 11, k1, 3) == 0);
    mg_shdict_destroy(d);
}

TEST(values_change_size_class_in_place_or_by_moving)
{
    mg_shdict_t *d = mg_shdict_create("t", MiB);
    static char big[3000], out[3001];
    memset(big, 'B', sizeof(big) - 1);
    const char *vals[] = {"small", big, "x", "", big + 2000, "medium-sized value"};
    for (size_t i = 0; i < MG_ARRAY_SIZE(vals); i++) {
        CHECK_INT(sset(d, MG_SHDICT_SET, "k", vals[i], 0, NULL), MG_OK);
        CHECK_INT(sset(d, MG_SHDICT_SET, "other", vals[(i + 1) % 6], 0, NULL), MG_OK);
        CHECK_INT(sget(d, "k", out, sizeof(out)), MG_OK);
        CHECK_STR(out, vals[i]);
        CHECK_INT(zone_items(d), 2);
        CHECK_INT(zone_check(d), 0);
    }
    mg_shdict_destroy(d);
}

/* ---- TTL ----------------------------------------------------------------------------- */

TEST(ttl_expiry_and_expire)
{
    mg_shdict_t *d = mg_shdict_create("t", MiB);
    mg_shdict_value_t v;
    char buf[16];
    double ttl = 0;
    bool stale;

    CHECK_INT(sset(d, MG_SHDICT_SET, "a", "1", 0.05, NULL), MG_OK);
    CHECK_INT(sset(d, MG_SHDICT_SET, "b", "2", 0, NULL), MG_OK);
    CHECK_INT(mg_shdict_ttl(d, "a", 1, &ttl), MG_OK);
    CHECK(ttl > 0 && ttl <= 0.05);
    CHECK_INT(mg_shdict_get(d, "a", 1, &v, buf, sizeof(buf)), MG_OK);
    CHECK(v.ttl > 0 && v.ttl <= 0.05);
    CHECK_INT(mg_shdict_ttl(d, "b", 1, &ttl), MG_OK);
    CHECK(ttl == -1);
    CHECK_INT(mg_shdict_ttl(d, "zz", 2, &ttl), MG_DECLINED);

    usleep(70 * 1000);
    CHECK_INT(mg_shdict_get(d, "a", 1, &v, buf, sizeof(buf)), MG_DECLINED);
    CHECK_INT(v.type, MG_SHDICT_NIL);
    CHECK_INT(mg_shdict_ttl(d, "a", 1, &ttl), MG_DECLINED);
    CHECK_INT(mg_shdict_expire(d, "a", 1, 10), MG_DECLINED);
    CHECK_INT(sset(d, MG_SHDICT_REPLACE, "a", "x", 0, NULL), MG_DECLINED);
    CHECK_INT(mg_shdict_get_stale(d, "a", 1, &v, buf, sizeof(buf), &stale), MG_OK);
    CHECK(stale && v.type == MG_SHDICT_STRING && v.len == 1 && buf[0] == '1' && v.ttl == 0);
    CHECK_INT(mg_shdict_get_stale(d, "b", 1, &v, buf, sizeof(buf), &stale), MG_OK);
    CHECK(!stale);
    CHECK(has(d, "b"));
    CHECK_INT(sset(d, MG_SHDICT_ADD, "a", "3", 0, NULL), MG_OK); /* expired = absent */
    CHECK_INT(mg_shdict_ttl(d, "a", 1, &ttl), MG_OK);
    CHECK(ttl == -1);

    CHECK_INT(mg_shdict_expire(d, "b", 1, 0.05), MG_OK);
    CHECK_INT(mg_shdict_ttl(d, "b", 1, &ttl), MG_OK);
    CHECK(ttl > 0 && ttl <= 0.05);
    CHECK_INT(mg_shdict_expire(d, "b", 1, 0), MG_OK); /* never again */
    CHECK_INT(mg_shdict_ttl(d, "b", 1, &ttl), MG_OK);
    CHECK(ttl == -1);
    CHECK_INT(mg_shdict_expire(d, "b", 1, 1e300), MG_OK); /* clamped, not overflowed */
    CHECK_INT(mg_shdict_ttl(d, "b", 1, &ttl), MG_OK);
    CHECK(ttl > 1e9);
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

/* ---- incr ---------------------------------------------------------------------------- */

TEST(incr_with_and_without_init)
{
    mg_shdict_t *d = mg_shdict_create("t", MiB);
    mg_shdict_value_t v;
    double out = 0, ttl;
    bool forc = true;

    CHECK_INT(mg_shdict_incr(d, "n", 1, 1, false, 0, 0, &out, &forc), MG_DECLINED);
    CHECK(!forc);
    CHECK(!has(d, "n"));
    CHECK_INT(mg_shdict_incr(d, "n", 1, 5, true, 10, 0, &out, &forc), MG_OK);
    CHECK(out == 15);
    CHECK_INT(mg_shdict_incr(d, "n", 1, -2.5, true, 1000, 0, &out, NULL), MG_OK); /* init unused */
    CHECK(out == 12.5);
    CHECK_INT(mg_shdict_get(d, "n", 1, &v, NULL, 0), MG_OK);
    CHECK(v.type == MG_SHDICT_NUMBER && v.number == 12.5);
    CHECK_INT(mg_shdict_ttl(d, "n", 1, &ttl), MG_OK);
    CHECK(ttl == -1);

    CHECK_INT(sset(d, MG_SHDICT_SET, "s", "12", 0, NULL), MG_OK);
    CHECK_INT(mg_shdict_incr(d, "s", 1, 1, false, 0, 0, &out, NULL), MG_BUSY); /* not a number */
    CHECK_INT(mg_shdict_incr(d, "s", 1, 1, true, 0, 0, &out, NULL), MG_BUSY);
    CHECK_INT(mg_shdict_store(d, MG_SHDICT_SET, "b", 1, MG_SHDICT_BOOLEAN, NULL, 0, 1, 0, NULL),
              MG_OK);
    CHECK_INT(mg_shdict_incr(d, "b", 1, 1, false, 0, 0, &out, NULL), MG_BUSY);

    /* init_ttl applies when initialising; later increments keep the TTL */
    CHECK_INT(mg_shdict_incr(d, "t", 1, 1, true, 0, 0.05, &out, NULL), MG_OK);
    CHECK(out == 1);
    CHECK_INT(mg_shdict_incr(d, "t", 1, 1, true, 0, 0, &out, NULL), MG_OK);
    CHECK(out == 2);
    CHECK_INT(mg_shdict_ttl(d, "t", 1, &ttl), MG_OK);
    CHECK(ttl > 0 && ttl <= 0.05);
    /* an expired string becomes a number with init */
    CHECK_INT(sset(d, MG_SHDICT_SET, "x", "a string, longer than a double", 0.05, NULL), MG_OK);
    usleep(70 * 1000);
    CHECK_INT(mg_shdict_incr(d, "t", 1, 1, false, 0, 0, &out, NULL), MG_DECLINED);
    CHECK_INT(mg_shdict_incr(d, "t", 1, 1, true, 100, 0, &out, NULL), MG_OK);
    CHECK(out == 101);
    CHECK_INT(mg_shdict_ttl(d, "t", 1, &ttl), MG_OK);
    CHECK(ttl == -1);
    CHECK_INT(mg_shdict_incr(d, "x", 1, 2, true, 40, 0, &out, NULL), MG_OK);
    CHECK(out == 42);
    CHECK_INT(mg_shdict_get(d, "x", 1, &v, NULL, 0), MG_OK);
    CHECK(v.type == MG_SHDICT_NUMBER && v.number == 42);
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

/* ---- eviction ------------------------------------------------------------------------ */

#define VAL40 "0123456789012345678901234567890123456789"

TEST(full_zone_evicts_the_least_recently_used_first)
{
    mg_shdict_t *d = mg_shdict_create("lru", 64 * KiB);
    char k[32];
    bool forc;
    size_t cap = items_that_fit(d, ITEM_HDR + 6 + 40); /* keys "k%05d" */
    CHECK(cap > 200);
    for (size_t i = 0; i < cap; i++) {
        snprintf(k, sizeof(k), "k%05zu", i);
        CHECK_INT(sset(d, MG_SHDICT_SET, k, VAL40, 0, &forc), MG_OK);
        CHECK(!forc);
    }
    CHECK_INT(mg_shdict_free_space(d), 0);
    for (size_t i = 0; i < 10; i++) { /* read the ten oldest: they become recent */
        snprintf(k, sizeof(k), "k%05zu", i);
        CHECK(has(d, k));
    }
    for (size_t i = cap; i < cap + 20; i++) {
        snprintf(k, sizeof(k), "k%05zu", i);
        CHECK_INT(sset(d, MG_SHDICT_SET, k, VAL40, 0, &forc), MG_OK);
        CHECK(forc);
    }
    CHECK_INT(zone_items(d), cap);
    for (size_t i = 0; i < cap + 20; i++) {
        snprintf(k, sizeof(k), "k%05zu", i);
        bool expect = i < 10 || i >= 30;
        if (has(d, k) != expect) {
            CHECK(!"wrong item evicted");
            fprintf(stderr, "#   %s %s\n", k, expect ? "evicted" : "kept");
            break;
        }
    }
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

TEST(expired_items_are_evicted_before_valid_ones)
{
    mg_shdict_t *d = mg_shdict_create("exp", 64 * KiB);
    char k[32];
    bool forc;
    size_t cap = items_that_fit(d, ITEM_HDR + 8 + 40);
    for (size_t i = 0; i < cap - 10; i++) { /* old, untouched, no TTL */
        snprintf(k, sizeof(k), "old%05zu", i);
        CHECK_INT(sset(d, MG_SHDICT_SET, k, VAL40, 0, &forc), MG_OK);
    }
    for (size_t i = 0; i < 10; i++) { /* recent, short-lived */
        snprintf(k, sizeof(k), "ttl%05zu", i);
        CHECK_INT(sset(d, MG_SHDICT_SET, k, VAL40, 0.05, &forc), MG_OK);
        CHECK(!forc);
    }
    usleep(70 * 1000);
    for (size_t i = 0; i < 10; i++) {
        snprintf(k, sizeof(k), "new%05zu", i);
        CHECK_INT(sset(d, MG_SHDICT_SET, k, VAL40, 0, &forc), MG_OK);
        CHECK(!forc); /* only expired items made room */
    }
    for (size_t i = 0; i < cap - 10; i++) {
        snprintf(k, sizeof(k), "old%05zu", i);
        if (!has(d, k)) {
            CHECK(!"a valid item was evicted before an expired one");
            break;
        }
    }
    CHECK_INT(zone_items(d), cap);
    /* full of valid items now (the loop above made the old ones recent): the next one
     * evicts the least recently used */
    CHECK_INT(sset(d, MG_SHDICT_SET, "new99999", VAL40, 0, &forc), MG_OK);
    CHECK(forc);
    CHECK(!has(d, "new00000") && has(d, "new00001") && has(d, "old00000"));
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

TEST(safe_set_never_evicts_valid_items)
{
    mg_shdict_t *d = mg_shdict_create("safe", 64 * KiB);
    char k[32];
    bool forc;
    size_t cap = items_that_fit(d, ITEM_HDR + 6 + 40);
    for (size_t i = 0; i < cap; i++) {
        snprintf(k, sizeof(k), "k%05zu", i);
        CHECK_INT(sset(d, MG_SHDICT_SAFE_SET, k, VAL40, 0, &forc), MG_OK);
    }
    CHECK_INT(sset(d, MG_SHDICT_SAFE_SET, "k99999", VAL40, 0, &forc), MG_ERROR); /* no memory */
    CHECK(!forc);
    CHECK(!has(d, "k99999"));
    CHECK_INT(zone_items(d), cap);
    CHECK(has(d, "k00000"));
    /* a value of another size class needs a page: none free, none stolen */
    static char big[2000];
    memset(big, 'b', sizeof(big) - 1);
    CHECK_INT(sset(d, MG_SHDICT_SAFE_SET, "big", big, 0, &forc), MG_ERROR);
    CHECK_INT(zone_items(d), cap);
    /* overwriting in place needs no room */
    CHECK_INT(sset(d, MG_SHDICT_SAFE_SET, "k00001", VAL40, 0, &forc), MG_OK);
    /* an expired item may go */
    CHECK_INT(sset(d, MG_SHDICT_SET, "k00002", VAL40, 0.02, &forc), MG_OK);
    usleep(40 * 1000);
    CHECK_INT(sset(d, MG_SHDICT_SAFE_SET, "k99999", VAL40, 0, &forc), MG_OK);
    CHECK(!forc);
    CHECK(!has(d, "k00002") && has(d, "k99999") && has(d, "k00003"));
    /* and SET does evict */
    CHECK_INT(sset(d, MG_SHDICT_SET, "k88888", VAL40, 0, &forc), MG_OK);
    CHECK(forc);
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

TEST(a_new_size_class_steals_the_page_of_the_oldest_item)
{
    mg_shdict_t *d = mg_shdict_create("steal", 64 * KiB);
    char k[32];
    bool forc;
    uint32_t c = class_for(d, ITEM_HDR + 6 + 40);
    size_t per_page = d->classes[c].nchunks, cap = items_that_fit(d, ITEM_HDR + 6 + 40);
    for (size_t i = 0; i < cap; i++) {
        snprintf(k, sizeof(k), "k%05zu", i);
        CHECK_INT(sset(d, MG_SHDICT_SET, k, VAL40, 0, &forc), MG_OK);
    }
    snprintf(k, sizeof(k), "k%05zu", per_page + 3); /* second page, made recent */
    CHECK(has(d, k));
    static char big[2000];
    memset(big, 'b', sizeof(big) - 1);
    CHECK_INT(sset(d, MG_SHDICT_SET, "big", big, 0, &forc), MG_OK);
    CHECK(forc);
    CHECK(has(d, "big"));
    /* the first page held k00000 (the oldest) and its page-mates: all gone; the rest stays */
    for (size_t i = 0; i < cap; i++) {
        snprintf(k, sizeof(k), "k%05zu", i);
        if (has(d, k) != (i >= per_page)) {
            CHECK(!"page stealing took the wrong items");
            fprintf(stderr, "#   %s\n", k);
            break;
        }
    }
    CHECK_INT(zone_items(d), cap - per_page + 1);
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

TEST(large_values_up_to_the_largest_class)
{
    mg_shdict_t *d = mg_shdict_create("large", MiB);
    size_t max = mg_shdict_max_value_len(d, 3);
    CHECK_INT(max, 128 * KiB - ITEM_HDR - 3);
    char *v = malloc(max + 2), *out = malloc(max + 2);
    for (size_t i = 0; i < max + 1; i++)
        v[i] = (char)(i * 7);
    mg_shdict_value_t val;
    CHECK_INT(mg_shdict_store(d, MG_SHDICT_SET, "big", 3, MG_SHDICT_STRING, v, max, 0, 0, NULL),
              MG_OK);
    CHECK_INT(mg_shdict_get(d, "big", 3, &val, out, max + 2), MG_OK);
    CHECK(val.len == max && memcmp(out, v, max) == 0);
    v[0] ^= 1;
    CHECK_INT(mg_shdict_store(d, MG_SHDICT_SET, "big", 3, MG_SHDICT_STRING, v, max + 1, 0, 0, NULL),
              MG_ERROR); /* no memory, whatever is free */
    CHECK_INT(mg_shdict_get(d, "big", 3, &val, out, max + 2), MG_OK); /* old value kept */
    CHECK(val.len == max && out[0] != v[0]);
    CHECK_INT(
        mg_shdict_store(d, MG_SHDICT_SET, "new", 3, MG_SHDICT_STRING, v, SIZE_MAX / 2, 0, 0, NULL),
        MG_ERROR);
    /* many large values in a small zone: each evicts an older one */
    bool forc;
    for (int i = 0; i < 20; i++) {
        char k[8];
        snprintf(k, sizeof(k), "L%d", i);
        CHECK_INT(mg_shdict_store(d, MG_SHDICT_SET, k, strlen(k), MG_SHDICT_STRING, v, max - 100, 0,
                                  0, &forc),
                  MG_OK);
    }
    CHECK(has(d, "L19") && !has(d, "L0"));
    CHECK_INT(zone_check(d), 0);
    free(v);
    free(out);
    mg_shdict_destroy(d);
}

/* ---- keys, flushes, space ------------------------------------------------------------ */

static int key_at(const char *buf, size_t *pos, char *out)
{
    uint32_t len;
    memcpy(&len, buf + *pos, 4);
    memcpy(out, buf + *pos + 4, len);
    out[len] = '\0';
    *pos += 4 + len;
    return (int)len;
}

TEST(get_keys_most_recent_first_with_limits)
{
    mg_shdict_t *d = mg_shdict_create("keys", MiB);
    char buf[256], k[16];
    size_t need = 99, pos;
    CHECK_INT(mg_shdict_get_keys(d, 0, buf, sizeof(buf), &need), 0);
    CHECK_INT(need, 0);
    CHECK_INT(mg_shdict_get_keys(d, 0, NULL, 0, NULL), 0);

    CHECK_INT(sset(d, MG_SHDICT_SET, "aa", "1", 0, NULL), MG_OK);
    CHECK_INT(sset(d, MG_SHDICT_SET, "b", "1", 0, NULL), MG_OK);
    CHECK_INT(sset(d, MG_SHDICT_SET, "ccc", "1", 0, NULL), MG_OK);
    CHECK_INT(sset(d, MG_SHDICT_SET, "dd", "1", 0, NULL), MG_OK);
    CHECK_INT(sset(d, MG_SHDICT_SET, "gone", "1", 0.02, NULL), MG_OK);
    usleep(40 * 1000);
    CHECK(has(d, "b")); /* b becomes the most recent */

    CHECK_INT(mg_shdict_get_keys(d, 0, buf, sizeof(buf), &need), 4); /* "gone" expired */
    CHECK_INT(need, 4 * 4 + 2 + 1 + 3 + 2);
    const char *want[] = {"b", "dd", "ccc", "aa"};
    pos = 0;
    for (int i = 0; i < 4; i++) {
        key_at(buf, &pos, k);
        CHECK_STR(k, want[i]);
    }

    CHECK_INT(mg_shdict_get_keys(d, 2, buf, sizeof(buf), &need), 2);
    CHECK_INT(need, 4 + 1 + 4 + 2);
    CHECK_INT(mg_shdict_get_keys(d, 2, buf, 11, &need), 2); /* exactly enough */
    CHECK_INT(mg_shdict_get_keys(d, 2, buf, 10, &need), -1);
    CHECK_INT(need, 11);
    CHECK_INT(mg_shdict_get_keys(d, 0, NULL, 0, &need), -1); /* asking the size */
    CHECK_INT(need, 24);
    CHECK_INT(mg_shdict_get_keys(d, 100, buf, sizeof(buf), &need), 4);
    mg_shdict_destroy(d);
}

TEST(flush_all_then_flush_expired)
{
    mg_shdict_t *d = mg_shdict_create("flush", MiB);
    mg_shdict_value_t v;
    char k[16], buf[16];
    bool stale;
    size_t fs0 = mg_shdict_free_space(d);
    for (int i = 0; i < 50; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        CHECK_INT(sset(d, MG_SHDICT_SET, k, i % 2 ? "odd" : "an even value", i % 3 ? 0 : 100, NULL),
                  MG_OK);
    }
    CHECK_INT(mg_shdict_flush_expired(d, 0), 0); /* nothing expired yet */
    mg_shdict_flush_all(d);
    CHECK(!has(d, "k0") && !has(d, "k1"));
    CHECK_INT(mg_shdict_get_stale(d, "k1", 2, &v, buf, sizeof(buf), &stale), MG_OK);
    CHECK(stale && v.len == 3);
    CHECK_INT(mg_shdict_get_keys(d, 0, NULL, 0, NULL), 0);
    CHECK_INT(zone_items(d), 50); /* reclaimed lazily */
    CHECK_INT(zone_check(d), 0);
    CHECK_INT(sset(d, MG_SHDICT_ADD, "k7", "new", 0, NULL), MG_OK);
    CHECK_INT(mg_shdict_flush_expired(d, 10), 10);
    CHECK_INT(zone_items(d), 40);
    CHECK_INT(zone_check(d), 0);
    CHECK_INT(mg_shdict_flush_expired(d, 0), 39);
    CHECK_INT(zone_items(d), 1);
    CHECK(has(d, "k7"));
    CHECK_INT(del(d, "k7"), MG_OK);
    CHECK_INT(mg_shdict_free_space(d), fs0);
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

TEST(free_space_goes_up_after_delete)
{
    mg_shdict_t *d = mg_shdict_create("space", MiB);
    size_t fs0 = mg_shdict_free_space(d);
    CHECK(fs0 > MiB * 8 / 10 && fs0 <= MiB);
    CHECK_INT(mg_shdict_capacity(d), MiB);
    CHECK_INT(sset(d, MG_SHDICT_SET, "a", VAL40, 0, NULL), MG_OK);
    size_t fs1 = mg_shdict_free_space(d);
    CHECK(fs1 < fs0);
    CHECK_INT(sset(d, MG_SHDICT_SET, "b", VAL40, 0, NULL), MG_OK);
    size_t fs2 = mg_shdict_free_space(d);
    CHECK_INT(fs1 - fs2, d->classes[class_for(d, ITEM_HDR + 1 + 40)].size); /* one chunk */
    CHECK_INT(del(d, "b"), MG_OK);
    CHECK_INT(mg_shdict_free_space(d), fs1);
    CHECK_INT(del(d, "a"), MG_OK);
    CHECK_INT(mg_shdict_free_space(d), fs0); /* the page is free again */
    mg_shdict_destroy(d);
}

/* ---- several processes --------------------------------------------------------------- */

TEST(processes_incr_one_key_exactly)
{
    enum { NPROC = 4, N = 20000 };
    mg_shdict_t *d = mg_shdict_create("ctr", MiB);
    pid_t pids[NPROC];
    for (int p = 0; p < NPROC; p++) {
        pids[p] = fork();
        if (pids[p] == 0) {
            int bad = 0;
            double out;
            for (int i = 0; i < N; i++) {
                bad += mg_shdict_incr(d, "hits", 4, 1, true, 0, 0, &out, NULL) != MG_OK;
                if (i % 1000 == 0) { /* other keys moving around meanwhile */
                    char k[32];
                    snprintf(k, sizeof(k), "p%d-%d", p, i);
                    bad += sset(d, MG_SHDICT_SET, k, VAL40, 0, NULL) != MG_OK;
                }
            }
            _exit(bad ? 1 : 0);
        }
        CHECK(pids[p] > 0);
    }
    for (int p = 0; p < NPROC; p++) {
        int st = -1;
        CHECK_INT(waitpid(pids[p], &st, 0), pids[p]);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    mg_shdict_value_t v;
    CHECK_INT(mg_shdict_get(d, "hits", 4, &v, NULL, 0), MG_OK);
    CHECK(v.type == MG_SHDICT_NUMBER);
    CHECK_INT((long long)v.number, NPROC * N);
    CHECK_INT(zone_items(d), 1 + NPROC * (N / 1000));
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

/* Test hook: in a child, takes the lock, optionally half-frees an item (unlinked from the
 * zone LRU only, still hashed and counted), then dies with the lock held. */
static void die_holding_lock(mg_shdict_t *d, bool mid_update, int notify_fd, int delay_ms)
{
    if (zone_lock(d) != 0) _exit(3);
    if (mid_update) {
        begin_write(d);
        ref_t r = d->lru.tail;
        list_remove(d, &d->lru, r, offsetof(item_t, lru));
        d->nitems--;
    }
    if (notify_fd >= 0 && write(notify_fd, "x", 1) != 1) _exit(4);
    if (delay_ms) usleep((useconds_t)delay_ms * 1000);
    raise(SIGKILL);
    _exit(5);
}

static mg_shdict_t *zone_with_items(int n)
{
    mg_shdict_t *d = mg_shdict_create("robust", MiB);
    char k[32];
    for (int i = 0; i < n; i++) {
        snprintf(k, sizeof(k), "k%d", i);
        CHECK_INT(sset(d, MG_SHDICT_SET, k, VAL40, i % 2 ? 100 : 0, NULL), MG_OK);
    }
    return d;
}

static void wait_killed(pid_t pid)
{
    int st = 0;
    CHECK_INT(waitpid(pid, &st, 0), pid);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
}

TEST(holder_killed_mid_update_leaves_a_flushed_consistent_zone)
{
    mg_shdict_t *d = zone_with_items(100);
    size_t fs0 = (size_t)d->npages * d->page_size;
    pid_t pid = fork();
    if (pid == 0) die_holding_lock(d, true, -1, 0);
    wait_killed(pid);
    check_quiet = true;
    CHECK(zone_check(d) > 0); /* the child did leave it half-updated */
    check_quiet = false;

    CHECK(!has(d, "k1")); /* EOWNERDEAD + dirty: flushed */
    CHECK_INT(mg_shdict_recoveries(d), 1);
    CHECK_INT(zone_check(d), 0);
    CHECK_INT(zone_items(d), 0);
    CHECK_INT(mg_shdict_free_space(d), fs0);
    double out;
    CHECK_INT(mg_shdict_incr(d, "k1", 2, 1, true, 0, 0, &out, NULL), MG_OK);
    CHECK_INT(sset(d, MG_SHDICT_SET, "k2", "v", 0, NULL), MG_OK);
    CHECK(has(d, "k1") && has(d, "k2"));
    CHECK_INT(mg_shdict_recoveries(d), 1);
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

TEST(holder_killed_outside_an_update_loses_nothing)
{
    mg_shdict_t *d = zone_with_items(100);
    pid_t pid = fork();
    if (pid == 0) die_holding_lock(d, false, -1, 0);
    wait_killed(pid);
    CHECK(has(d, "k1") && has(d, "k99"));
    CHECK_INT(zone_items(d), 100);
    CHECK_INT(mg_shdict_recoveries(d), 0);
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

TEST(a_waiter_blocked_on_a_dying_holder_takes_over)
{
    mg_shdict_t *d = zone_with_items(10);
    int fds[2];
    CHECK_INT(pipe(fds), 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        die_holding_lock(d, true, fds[1], 100);
    }
    close(fds[1]);
    char c;
    CHECK_INT(read(fds[0], &c, 1), 1); /* the child holds the lock now */
    close(fds[0]);
    CHECK_INT(sset(d, MG_SHDICT_SET, "after", "1", 0, NULL), MG_OK); /* blocks until it dies */
    wait_killed(pid);
    CHECK(has(d, "after") && !has(d, "k1"));
    CHECK_INT(mg_shdict_recoveries(d), 1);
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

/* ---- randomized ---------------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

enum { MODEL_KEYS = 256, MODEL_VMAX = 400 };
typedef struct {
    bool present, has_ttl;
    int type;
    double num;
    size_t len;
    char val[MODEL_VMAX];
    uint64_t seq; /* last use, for the LRU order */
} model_t;

static model_t model[MODEL_KEYS];
static uint64_t model_clock;

static size_t model_key(int i, char *k)
{
    /* variable length, binary: the index then some NULs and a tail */
    size_t len = 1 + (size_t)(i % 11);
    memset(k, 0, len + 4);
    k[0] = (char)i;
    k[len - 1] ^= (char)(i >> 3);
    k[len] = 'k';
    return len + 1;
}

static void random_value(int *type, double *num, char *s, size_t *len)
{
    int r = (int)(rnd() % 10);
    *num = 0;
    *len = 0;
    if (r < 5) {
        *type = MG_SHDICT_STRING;
        *len = (size_t)(rnd() % MODEL_VMAX);
        for (size_t i = 0; i < *len; i++)
            s[i] = (char)rnd();
    } else if (r < 8) {
        *type = MG_SHDICT_NUMBER;
        *num = (double)(int64_t)(rnd() % 2001) - 1000;
    } else {
        *type = MG_SHDICT_BOOLEAN;
        *num = (double)(rnd() % 2);
    }
}

static void model_put(model_t *m, int type, double num, const char *s, size_t len)
{
    m->present = true;
    m->has_ttl = false;
    m->type = type;
    m->num = type == MG_SHDICT_BOOLEAN ? (num != 0) : num;
    m->len = type == MG_SHDICT_STRING ? len : 0;
    if (m->len) memcpy(m->val, s, len);
    m->seq = ++model_clock;
}

static int model_cmp_seq(const void *a, const void *b)
{
    uint64_t x = model[*(const int *)a].seq, y = model[*(const int *)b].seq;
    return x < y ? 1 : x > y ? -1 : 0;
}

TEST(random_operations_agree_with_a_reference_model)
{
    mg_shdict_t *d = mg_shdict_create("model", 16 * MiB);
    static char s[MODEL_VMAX], buf[MODEL_VMAX + 16], keys[MODEL_KEYS * 20];
    char k[32];
    int mismatches = 0;
    memset(model, 0, sizeof(model));
    model_clock = 0;
    for (int op = 0; op < 100000 && mismatches < 5; op++) {
        int i = (int)(rnd() % MODEL_KEYS), r = (int)(rnd() % 1000), type, rc, want;
        size_t klen = model_key(i, k), len;
        model_t *m = &model[i];
        double num, out;
        bool forc = false;
        mg_shdict_value_t v;
        if (r < 250) { /* get */
            rc = mg_shdict_get(d, k, klen, &v, buf, sizeof(buf));
            want = m->present ? MG_OK : MG_DECLINED;
            if (rc != want || (m->present && (v.type != m->type || v.len != m->len ||
                                              (m->type != MG_SHDICT_STRING && v.number != m->num) ||
                                              memcmp(buf, m->val, m->len) != 0))) {
                mismatches++;
                fprintf(stderr, "#   op %d: get key %d rc %d\n", op, i, rc);
            }
            if (m->present) m->seq = ++model_clock;
        } else if (r < 650) { /* set, add, replace, safe_set */
            int mode = r < 400   ? MG_SHDICT_SET
                       : r < 500 ? MG_SHDICT_ADD
                       : r < 580 ? MG_SHDICT_REPLACE
                                 : MG_SHDICT_SAFE_SET;
            random_value(&type, &num, s, &len);
            rc = mg_shdict_store(d, mode, k, klen, type, s, len, num, 0, &forc);
            want =
                (mode == MG_SHDICT_ADD && m->present) || (mode == MG_SHDICT_REPLACE && !m->present)
                    ? MG_DECLINED
                    : MG_OK;
            if (rc != want || forc) {
                mismatches++;
                fprintf(stderr, "#   op %d: store mode %d key %d rc %d\n", op, mode, i, rc);
            }
            if (want == MG_OK) model_put(m, type, num, s, len);
        } else if (r < 720) { /* delete */
            CHECK_INT(
                mg_shdict_store(d, MG_SHDICT_SET, k, klen, MG_SHDICT_NIL, NULL, 0, 0, 0, NULL),
                MG_OK);
            m->present = false;
        } else if (r < 900) { /* incr */
            bool init = rnd() % 2;
            double delta = (double)(int64_t)(rnd() % 21) - 10, initv = (double)(rnd() % 100);
            rc = mg_shdict_incr(d, k, klen, delta, init, initv, 0, &out, &forc);
            if (m->present && m->type != MG_SHDICT_NUMBER) {
                want = MG_BUSY;
            } else if (m->present) {
                want = MG_OK;
                m->num += delta;
                m->seq = ++model_clock;
            } else if (init) {
                want = MG_OK;
                model_put(m, MG_SHDICT_NUMBER, initv + delta, NULL, 0);
            } else {
                want = MG_DECLINED;
            }
            if (rc != want || forc || (rc == MG_OK && out != m->num)) {
                mismatches++;
                fprintf(stderr, "#   op %d: incr key %d rc %d want %d\n", op, i, rc, want);
            }
        } else if (r < 940) { /* expire with a long TTL, or none */
            bool with = rnd() % 2;
            rc = mg_shdict_expire(d, k, klen, with ? 1000 : 0);
            if (rc != (m->present ? MG_OK : MG_DECLINED)) mismatches++;
            if (m->present) m->has_ttl = with;
        } else if (r < 990) { /* ttl */
            rc = mg_shdict_ttl(d, k, klen, &out);
            if (rc != (m->present ? MG_OK : MG_DECLINED) ||
                (m->present && (m->has_ttl ? !(out > 990 && out <= 1000) : out != -1))) {
                mismatches++;
                fprintf(stderr, "#   op %d: ttl key %d rc %d %g\n", op, i, rc, out);
            }
        } else if (r < 998) { /* get_keys, in LRU order */
            size_t need;
            long n = mg_shdict_get_keys(d, 0, keys, sizeof(keys), &need);
            int order[MODEL_KEYS], np = 0;
            for (int j = 0; j < MODEL_KEYS; j++)
                if (model[j].present) order[np++] = j;
            qsort(order, (size_t)np, sizeof(int), model_cmp_seq);
            if (n != np) {
                mismatches++;
                fprintf(stderr, "#   op %d: get_keys %ld, model %d\n", op, n, np);
            }
            size_t pos = 0;
            for (int j = 0; j < np && n == np; j++) {
                char want_k[32];
                size_t wl = model_key(order[j], want_k);
                uint32_t kl;
                memcpy(&kl, keys + pos, 4);
                if (kl != wl || memcmp(keys + pos + 4, want_k, wl) != 0) {
                    mismatches++;
                    fprintf(stderr, "#   op %d: get_keys order at %d\n", op, j);
                    break;
                }
                pos += 4 + kl;
            }
        } else if (r < 999) {
            mg_shdict_flush_all(d);
            for (int j = 0; j < MODEL_KEYS; j++)
                model[j].present = false;
        } else {
            mg_shdict_flush_expired(d, rnd() % 50);
        }
        if (op % 10000 == 0 && zone_check(d) != 0) mismatches++;
    }
    CHECK_INT(mismatches, 0);
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

TEST(random_operations_in_a_tiny_zone_keep_it_consistent)
{
    mg_shdict_t *d = mg_shdict_create("tiny", 64 * KiB);
    enum { NKEYS = 2000, OPS = 50000 };
    static uint32_t last_len[NKEYS]; /* length of the last string stored, or UINT32_MAX */
    static char s[8192], buf[8192];
    char k[32];
    int problems = 0, forced = 0, refused = 0;
    for (int i = 0; i < NKEYS; i++)
        last_len[i] = UINT32_MAX;
    for (int op = 0; op < OPS && problems < 5; op++) {
        int i = (int)(rnd() % NKEYS), r = (int)(rnd() % 100), rc;
        snprintf(k, sizeof(k), "key%d", i);
        size_t klen = strlen(k);
        bool forc = false;
        if (r < 40) {
            /* mostly small values, sometimes up to the largest class (with 2 size spikes) */
            size_t len = rnd() % 8 == 0 ? (size_t)(rnd() % mg_shdict_max_value_len(d, klen))
                                        : (size_t)(rnd() % 200);
            memset(s, (char)(len + (size_t)i), len);
            double ttl = rnd() % 4 == 0 ? (double)(rnd() % 5 + 1) / 1000 : 0;
            int mode = rnd() % 5 == 0 ? MG_SHDICT_SAFE_SET : MG_SHDICT_SET;
            rc = mg_shdict_store(d, mode, k, klen, MG_SHDICT_STRING, s, len, 0, ttl, &forc);
            if (rc == MG_OK)
                last_len[i] = (uint32_t)len;
            else
                last_len[i] = UINT32_MAX;
            forced += forc;
            refused += rc == MG_ERROR;
            if (!(rc == MG_OK || (rc == MG_ERROR && mode == MG_SHDICT_SAFE_SET)) ||
                (mode == MG_SHDICT_SAFE_SET && forc))
                problems++;
        } else if (r < 75) {
            mg_shdict_value_t v;
            rc = mg_shdict_get(d, k, klen, &v, buf, sizeof(buf));
            if (rc == MG_OK && v.type == MG_SHDICT_STRING) {
                /* present: must be the last value stored */
                bool ok = last_len[i] == v.len;
                for (size_t j = 0; ok && j < v.len; j++)
                    ok = buf[j] == (char)(v.len + (size_t)i);
                if (!ok) {
                    problems++;
                    fprintf(stderr, "#   op %d: key %d holds a wrong value\n", op, i);
                }
            } else if (rc != MG_DECLINED && !(rc == MG_OK && v.type == MG_SHDICT_NUMBER)) {
                problems++;
            }
        } else if (r < 85) {
            double out;
            rc = mg_shdict_incr(d, k, klen, 1, true, 0, rnd() % 2 ? 0.003 : 0, &out, &forc);
            if (rc == MG_OK) last_len[i] = UINT32_MAX;
            if (rc != MG_OK && rc != MG_BUSY) problems++;
        } else if (r < 95) {
            mg_shdict_store(d, MG_SHDICT_SET, k, klen, MG_SHDICT_NIL, NULL, 0, 0, 0, NULL);
            last_len[i] = UINT32_MAX;
        } else if (r < 99) {
            mg_shdict_flush_expired(d, 5);
        } else {
            size_t need;
            mg_shdict_get_keys(d, 10, buf, sizeof(buf), &need);
        }
        if (op % 500 == 0 && zone_check(d) != 0) problems++;
    }
    CHECK_INT(problems, 0);
    CHECK(forced > 1000 && refused > 100); /* it did evict, and SAFE_SET did refuse */
    CHECK_INT(zone_check(d), 0);
    mg_shdict_flush_all(d);
    size_t n0 = d->nitems;
    CHECK_INT(mg_shdict_flush_expired(d, 0), n0);
    CHECK_INT(zone_items(d), 0);
    CHECK_INT(mg_shdict_free_space(d), (size_t)d->npages * d->page_size);
    CHECK_INT(zone_check(d), 0);
    mg_shdict_destroy(d);
}

TEST_MAIN()
