/*
 * mg_shdict.c — shared dictionaries: one anonymous MAP_SHARED mapping per zone, created by the
 * master before fork, holding a hash table, a slab allocator and LRU lists, all linked by
 * offsets so that no pointer into the zone is ever stored inside it. Semantics follow
 * OpenResty's lua_shared_dict (set/add/replace/safe_set/incr/ttl/expire/flush/get_keys); the
 * allocator and the crash handling are ours. Every operation runs under one process-shared
 * robust mutex; a "dirty" word, set while an operation mutates the zone, tells the next
 * locker whether a process that died holding the mutex left the structure half-updated, in
 * which case the zone is flushed (every item lost, the zone consistent again).
 *
 * Layout of a zone (offsets from the mapping's first byte):
 *
 *   [mg_shdict_t header: mutex, layout, size classes, LRU heads, counters]
 *   [buckets: ref_t[nbuckets], nbuckets a power of two, about one per 128 bytes of zone]
 *   [page descriptors: page_t[npages]]
 *   [pages: npages * page_size, page_size = max item size = clamp(zone/8, 4 KiB, 1 MiB)]
 *
 * Items live in chunks carved from pages. A page belongs to one size class at a time (64, 96,
 * 128, 192, ... up to page_size, each stretched to the largest size that keeps its chunks per
 * page); a class keeps the pages that still have free chunks on a "partial" list, and a page
 * whose last chunk is freed goes back to the zone's free page list. An item is one chunk:
 * header, key bytes, value bytes. It is linked in a hash chain, in the zone-wide LRU (for
 * get_keys and page stealing), in its class's LRU, and, when it has a TTL, in its class's
 * expiry heap (a pairing heap, linked through the items, so no array has to be sized).
 *
 * When a class has no free chunk and no page is free, room is made in this order: expired
 * items of the class; expired items of other classes until a page becomes free; the least
 * recently used item of the class (SET/ADD/REPLACE/incr only, never SAFE_SET); and when the
 * class holds no item at all, every item of the page holding the zone's least recently used
 * item (page stealing, so a class that appears late is not starved by the others).
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/random.h>

#include "mg_shdict.h"

#define ZONE_MAGIC 0x6d677364u /* "mgsd" */
#define REF_SHIFT 3            /* refs count 8-byte units: zones up to 32 GiB */
#define MAX_ZONE ((uint64_t)UINT32_MAX << REF_SHIFT)
#define MIN_CHUNK 64
#define MIN_PAGE 4096
#define MAX_PAGE (1024 * 1024)
/* page = largest item = zone / PAGE_DIVISOR (a power of two, 4 KiB..1 MiB). Fewer, larger
 * pages allow larger values; more, smaller pages let more size classes coexist in a small
 * zone and make page stealing evict less (a zone of 1 to 10 MiB has only 7 to 9 pages). */
#define PAGE_DIVISOR 8
#define BYTES_PER_BUCKET 128
#define MAX_CLASSES 40
#define NO_CLASS UINT32_MAX
#define FREE_TYPE 0 /* item type of a freed chunk (NIL is never stored) */
#define MAX_TTL_MS 1e15
#define ALIGN_UP(n, a) (((n) + ((a)-1)) & ~((size_t)(a)-1))

typedef uint32_t ref_t; /* (byte offset from the zone start) >> REF_SHIFT; 0 = none */

typedef struct {
    ref_t prev, next;
} link_t;

typedef struct {
    ref_t head, tail; /* head = most recently used */
} list_t;

typedef struct {
    uint64_t expires;        /* CLOCK_MONOTONIC ms, 0 = never */
    ref_t hnext;             /* hash chain (also the free-list link of a free chunk) */
    link_t lru;              /* zone-wide LRU */
    link_t clru;             /* LRU of its class */
    ref_t hup, hchild, hsib; /* expiry heap: parent or left sibling, first child, next */
    uint32_t hash;           /* bucket = hash & (nbuckets - 1) */
    uint32_t vlen;           /* value bytes after the key */
    uint16_t klen;
    uint8_t type; /* MG_SHDICT_*, FREE_TYPE when the chunk is free */
    uint8_t cls;
    char data[]; /* key, then value */
} item_t;

#define ITEM_HDR offsetof(item_t, data)

typedef struct {
    ref_t free;      /* free chunks of this page, linked through their first word */
    uint32_t used;   /* chunks holding an item */
    uint32_t carved; /* chunks handed out at least once since the page joined its class */
    uint32_t prev;   /* page numbers (index + 1): class partial list, or free list (next) */
    uint32_t next;
    uint32_t cls; /* NO_CLASS when the page is free */
} page_t;

typedef struct {
    uint32_t size;    /* chunk size, a multiple of 8 */
    uint32_t nchunks; /* per page */
    uint32_t partial; /* first page (number) with a free chunk */
    uint32_t npages;
    uint32_t nitems;
    uint32_t nfree; /* free chunks in this class's pages */
    list_t lru;
    ref_t heap; /* expiry heap root: the item that expires first */
} class_t;

struct mg_shdict_s {
    uint32_t magic;
    uint32_t dirty; /* non-zero while an operation mutates the zone */
    pthread_mutex_t mutex;
    uint64_t seed[2]; /* SipHash key, random per zone */
    uint64_t size;    /* bytes mapped */
    uint64_t recoveries;
    size_t buckets_off, pages_off, data_off;
    uint32_t nbuckets, npages, page_size, page_shift;
    uint32_t nclasses;
    uint32_t free_pages; /* first free page (number) */
    uint32_t nfree_pages;
    uint32_t nitems;
    list_t lru;
    class_t classes[MAX_CLASSES];
    char name[MG_SHDICT_NAME_MAX + 1];
};

/* locking, layout */
static int zone_lock(mg_shdict_t *d);
static void zone_unlock(mg_shdict_t *d);
static inline void begin_write(mg_shdict_t *d);
static void zone_reset(mg_shdict_t *d);
static void classes_init(mg_shdict_t *d);
static uint32_t class_for(const mg_shdict_t *d, size_t size);
/* addressing */
static inline char *ptr_of(const mg_shdict_t *d, ref_t r);
static inline item_t *item_at(const mg_shdict_t *d, ref_t r);
static inline ref_t ref_of(const mg_shdict_t *d, const void *p);
static inline page_t *page_at(const mg_shdict_t *d, uint32_t pn);
static inline uint32_t page_of(const mg_shdict_t *d, ref_t r);
static inline ref_t *buckets(const mg_shdict_t *d);
/* lists and the expiry heap */
static void list_remove(const mg_shdict_t *d, list_t *l, ref_t r, size_t off);
static void list_push_head(const mg_shdict_t *d, list_t *l, ref_t r, size_t off);
static ref_t heap_meld(const mg_shdict_t *d, ref_t a, ref_t b);
static ref_t heap_merge_pairs(const mg_shdict_t *d, ref_t first);
static void heap_insert(const mg_shdict_t *d, class_t *k, ref_t r);
static void heap_remove(const mg_shdict_t *d, class_t *k, ref_t r);
/* allocator */
static ref_t chunk_alloc(mg_shdict_t *d, uint32_t c);
static void chunk_free(mg_shdict_t *d, ref_t r);
static void partial_push(const mg_shdict_t *d, class_t *k, uint32_t pn);
static void partial_remove(const mg_shdict_t *d, class_t *k, uint32_t pn);
static item_t *item_alloc(mg_shdict_t *d, uint32_t c, bool evict, uint64_t now, bool *forced);
static bool purge_expired_for_page(mg_shdict_t *d, uint64_t now);
static void page_evict(mg_shdict_t *d, uint32_t pn, uint64_t now, bool *forced);
/* items */
static item_t *lookup(const mg_shdict_t *d, const char *key, size_t klen, uint32_t hash);
static void item_link(mg_shdict_t *d, item_t *it, uint32_t c, const char *key, size_t klen,
                      uint32_t hash);
static void item_free(mg_shdict_t *d, item_t *it);
static void item_put_value(item_t *it, int type, const char *str, size_t slen, double num);
static void item_set_expires(mg_shdict_t *d, item_t *it, uint64_t expires);
static void item_touch(mg_shdict_t *d, item_t *it);
static int get_common(mg_shdict_t *d, const char *key, size_t klen, mg_shdict_value_t *v, char *buf,
                      size_t buflen, bool allow_stale, bool *stale);
/* helpers */
static uint64_t siphash13(const uint64_t k[2], const unsigned char *in, size_t len);
static inline uint32_t key_hash(const mg_shdict_t *d, const char *key, size_t klen);
static inline uint64_t now_ms(void);
static inline uint64_t expires_from(double ttl, uint64_t now);
static inline bool is_expired(const item_t *it, uint64_t now);
static inline bool key_ok(size_t klen);

/* ---- zone lifecycle ------------------------------------------------------------------ */

mg_shdict_t *mg_shdict_create(const char *name, size_t size)
{
    if (name == NULL || size < MG_SHDICT_MIN_SIZE || (uint64_t)size > MAX_ZONE) {
        errno = EINVAL;
        return NULL;
    }
    if (strlen(name) > MG_SHDICT_NAME_MAX) {
        errno = ENAMETOOLONG;
        return NULL;
    }

    /* Sizes first: page = max item, a power of two between 4 KiB and 1 MiB. */
    size_t page = MIN_PAGE;
    while (page < MAX_PAGE && page * 2 <= size / PAGE_DIVISOR)
        page *= 2;
    size_t nbuckets = 16;
    while (nbuckets * 2 <= size / BYTES_PER_BUCKET)
        nbuckets *= 2;
    size_t buckets_off = ALIGN_UP(sizeof(mg_shdict_t), 64);
    size_t pages_off = ALIGN_UP(buckets_off + nbuckets * sizeof(ref_t), 64);
    size_t room = size - pages_off - 64; /* 64: alignment slack of the data area */
    size_t npages = room / (page + sizeof(page_t));
    size_t data_off = ALIGN_UP(pages_off + npages * sizeof(page_t), 64);
    if (npages == 0 || data_off + npages * page > size) {
        errno = EINVAL;
        return NULL;
    }

    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return NULL;
    mg_shdict_t *d = mem; /* zero-filled by the kernel */

    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc != 0) goto fail;
    rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (rc == 0) rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    if (rc == 0) rc = pthread_mutex_init(&d->mutex, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0) goto fail;

    if (getrandom(d->seed, sizeof(d->seed), GRND_NONBLOCK) != (ssize_t)sizeof(d->seed)) {
        /* no entropy yet (early boot): a weaker seed, still different for every zone */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        d->seed[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
        d->seed[1] = (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)mem;
    }
    d->magic = ZONE_MAGIC;
    d->size = size;
    d->buckets_off = buckets_off;
    d->pages_off = pages_off;
    d->data_off = data_off;
    d->nbuckets = (uint32_t)nbuckets;
    d->npages = (uint32_t)npages;
    d->page_size = (uint32_t)page;
    d->page_shift = (uint32_t)__builtin_ctzl(page);
    memcpy(d->name, name, strlen(name) + 1);
    zone_reset(d);
    return d;

fail:
    munmap(mem, size);
    errno = rc;
    return NULL;
}

void mg_shdict_destroy(mg_shdict_t *d)
{
    if (d == NULL) return;
    munmap(d, d->size);
}

const char *mg_shdict_name(const mg_shdict_t *d)
{
    return d->name;
}

size_t mg_shdict_capacity(const mg_shdict_t *d)
{
    return d->size;
}

size_t mg_shdict_max_value_len(const mg_shdict_t *d, size_t klen)
{
    if (!key_ok(klen) || ITEM_HDR + klen >= d->page_size) return 0;
    return d->page_size - ITEM_HDR - klen;
}

size_t mg_shdict_recoveries(mg_shdict_t *d)
{
    if (zone_lock(d) != 0) return 0;
    size_t n = (size_t)d->recoveries;
    zone_unlock(d);
    return n;
}

size_t mg_shdict_free_space(mg_shdict_t *d)
{
    if (zone_lock(d) != 0) return 0;
    size_t n = (size_t)d->nfree_pages * d->page_size;
    for (uint32_t c = 0; c < d->nclasses; c++)
        n += (size_t)d->classes[c].nfree * d->classes[c].size;
    zone_unlock(d);
    return n;
}

/* ---- operations ---------------------------------------------------------------------- */

int mg_shdict_get(mg_shdict_t *d, const char *key, size_t klen, mg_shdict_value_t *v, char *buf,
                  size_t buflen)
{
    return get_common(d, key, klen, v, buf, buflen, false, NULL);
}

int mg_shdict_get_stale(mg_shdict_t *d, const char *key, size_t klen, mg_shdict_value_t *v,
                        char *buf, size_t buflen, bool *stale)
{
    return get_common(d, key, klen, v, buf, buflen, true, stale);
}

int mg_shdict_store(mg_shdict_t *d, int mode, const char *key, size_t klen, int type,
                    const char *str, size_t slen, double num, double ttl, bool *forcible)
{
    bool forced = false;
    if (forcible) *forcible = false;
    if (!key_ok(klen) || mode < MG_SHDICT_SET || mode > MG_SHDICT_SAFE_SET) return MG_ERROR;

    size_t vlen;
    switch (type) {
    case MG_SHDICT_NIL:
        vlen = 0;
        break;
    case MG_SHDICT_BOOLEAN:
        vlen = 1;
        break;
    case MG_SHDICT_NUMBER:
        vlen = sizeof(double);
        break;
    case MG_SHDICT_STRING:
        vlen = slen;
        break;
    default:
        return MG_ERROR;
    }
    /* too big for any class: refused before anything is touched, the old value stays */
    if (type != MG_SHDICT_NIL && (vlen > d->page_size || ITEM_HDR + klen + vlen > d->page_size))
        return MG_ERROR;

    uint32_t hash = key_hash(d, key, klen);
    if (zone_lock(d) != 0) return MG_ERROR;
    begin_write(d);

    int rc = MG_OK;
    uint64_t now = now_ms();
    item_t *it = lookup(d, key, klen, hash);
    bool live = it != NULL && !is_expired(it, now);

    if (mode == MG_SHDICT_ADD && live) {
        rc = MG_DECLINED; /* "exists" */
        goto done;
    }
    if (mode == MG_SHDICT_REPLACE && !live) {
        rc = MG_DECLINED; /* "not found" */
        goto done;
    }
    if (type == MG_SHDICT_NIL) {
        if (it) item_free(d, it);
        goto done;
    }

    uint32_t c = class_for(d, ITEM_HDR + klen + vlen);
    uint64_t expires = expires_from(ttl, now);
    if (it != NULL && it->cls == c) { /* same chunk size: overwrite in place */
        item_put_value(it, type, str, slen, num);
        item_set_expires(d, it, expires);
        item_touch(d, it);
        goto done;
    }
    /* As in OpenResty, the old item is freed first: should the new one not fit (SAFE_SET
     * in a full zone), the key is gone rather than left with a stale value. */
    if (it) item_free(d, it);
    it = item_alloc(d, c, mode != MG_SHDICT_SAFE_SET, now, &forced);
    if (it == NULL) {
        rc = MG_ERROR; /* "no memory" */
        goto done;
    }
    item_link(d, it, c, key, klen, hash);
    item_put_value(it, type, str, slen, num);
    item_set_expires(d, it, expires);

done:
    zone_unlock(d);
    if (forcible) *forcible = forced;
    return rc;
}

int mg_shdict_incr(mg_shdict_t *d, const char *key, size_t klen, double delta, bool has_init,
                   double init, double init_ttl, double *out, bool *forcible)
{
    bool forced = false;
    if (forcible) *forcible = false;
    if (!key_ok(klen)) return MG_ERROR;

    uint32_t hash = key_hash(d, key, klen);
    if (zone_lock(d) != 0) return MG_ERROR;
    begin_write(d);

    int rc = MG_OK;
    double num;
    uint64_t now = now_ms();
    item_t *it = lookup(d, key, klen, hash);

    if (it != NULL && !is_expired(it, now)) {
        if (it->type != MG_SHDICT_NUMBER) {
            rc = MG_BUSY; /* "not a number" */
            goto done;
        }
        memcpy(&num, it->data + it->klen, sizeof(num));
        num += delta;
        memcpy(it->data + it->klen, &num, sizeof(num));
        item_touch(d, it);
        *out = num;
        goto done;
    }
    if (!has_init) {
        rc = MG_DECLINED; /* "not found" (an expired item counts as absent) */
        goto done;
    }

    num = init + delta;
    uint32_t c = class_for(d, ITEM_HDR + klen + sizeof(double));
    uint64_t expires = expires_from(init_ttl, now);
    if (it != NULL && it->cls == c) { /* an expired item of the right size: reuse it */
        item_put_value(it, MG_SHDICT_NUMBER, NULL, 0, num);
        item_set_expires(d, it, expires);
        item_touch(d, it);
        *out = num;
        goto done;
    }
    if (it) item_free(d, it);
    it = item_alloc(d, c, true, now, &forced);
    if (it == NULL) {
        rc = MG_ERROR;
        goto done;
    }
    item_link(d, it, c, key, klen, hash);
    item_put_value(it, MG_SHDICT_NUMBER, NULL, 0, num);
    item_set_expires(d, it, expires);
    *out = num;

done:
    zone_unlock(d);
    if (forcible) *forcible = forced;
    return rc;
}

int mg_shdict_ttl(mg_shdict_t *d, const char *key, size_t klen, double *ttl)
{
    if (!key_ok(klen)) return MG_ERROR;
    uint32_t hash = key_hash(d, key, klen);
    if (zone_lock(d) != 0) return MG_ERROR;

    int rc = MG_OK;
    uint64_t now = now_ms();
    item_t *it = lookup(d, key, klen, hash);
    if (it == NULL || is_expired(it, now))
        rc = MG_DECLINED;
    else
        *ttl = it->expires == 0 ? -1.0 : (double)(it->expires - now) / 1000.0;
    zone_unlock(d);
    return rc;
}

int mg_shdict_expire(mg_shdict_t *d, const char *key, size_t klen, double ttl)
{
    if (!key_ok(klen)) return MG_ERROR;
    uint32_t hash = key_hash(d, key, klen);
    if (zone_lock(d) != 0) return MG_ERROR;
    begin_write(d);

    int rc = MG_OK;
    uint64_t now = now_ms();
    item_t *it = lookup(d, key, klen, hash);
    if (it == NULL || is_expired(it, now))
        rc = MG_DECLINED;
    else
        item_set_expires(d, it, expires_from(ttl, now));
    zone_unlock(d);
    return rc;
}

void mg_shdict_flush_all(mg_shdict_t *d)
{
    if (zone_lock(d) != 0) return;
    begin_write(d);
    /* expires = 1 ms after boot: expired for every reader, still there for get_stale. Every
     * item joins its class heap, so each heap is rebuilt from its class's LRU list. */
    for (uint32_t c = 0; c < d->nclasses; c++) {
        class_t *k = &d->classes[c];
        k->heap = 0;
        for (ref_t r = k->lru.head; r != 0; r = item_at(d, r)->clru.next) {
            item_at(d, r)->expires = 1;
            heap_insert(d, k, r);
        }
    }
    zone_unlock(d);
}

size_t mg_shdict_flush_expired(mg_shdict_t *d, size_t max)
{
    size_t n = 0;
    if (zone_lock(d) != 0) return 0;
    begin_write(d);
    uint64_t now = now_ms();
    for (uint32_t c = 0; c < d->nclasses; c++) {
        class_t *k = &d->classes[c];
        while (k->heap != 0 && is_expired(item_at(d, k->heap), now) && (max == 0 || n < max)) {
            item_free(d, item_at(d, k->heap));
            n++;
        }
    }
    zone_unlock(d);
    return n;
}

long mg_shdict_get_keys(mg_shdict_t *d, size_t max, char *buf, size_t buflen, size_t *need)
{
    size_t used = 0;
    long n = 0;
    if (need) *need = 0;
    if (zone_lock(d) != 0) return -1;
    uint64_t now = now_ms();
    for (ref_t r = d->lru.head; r != 0 && (max == 0 || (size_t)n < max);) {
        item_t *it = item_at(d, r);
        r = it->lru.next;
        if (is_expired(it, now)) continue;
        size_t rec = sizeof(uint32_t) + it->klen;
        if (used + rec <= buflen) {
            uint32_t len = it->klen;
            memcpy(buf + used, &len, sizeof(len));
            memcpy(buf + used + sizeof(len), it->data, it->klen);
        }
        used += rec;
        n++;
    }
    zone_unlock(d);
    if (need) *need = used;
    return used > buflen ? -1 : n;
}

/* ---- locking ------------------------------------------------------------------------- */

/*
 * Takes the zone mutex. When its previous holder died with it (EOWNERDEAD), the mutex is
 * made consistent and, if that holder was mutating the zone (dirty set), the zone is reset:
 * a half-done unlink could leave a cycle or a dangling ref anywhere, and finding it would
 * cost a full verification, so every item is dropped instead. Returns 0, or -1 when the
 * mutex is unusable (ENOTRECOVERABLE: only if a previous recovery itself failed).
 */
static int zone_lock(mg_shdict_t *d)
{
    int rc = pthread_mutex_lock(&d->mutex);
    if (MG_LIKELY(rc == 0)) return 0;
    if (rc != EOWNERDEAD) return -1;
    pthread_mutex_consistent(&d->mutex);
    if (__atomic_load_n(&d->dirty, __ATOMIC_RELAXED)) {
        zone_reset(d); /* dirty stays set until unlock: dying here means another reset */
        d->recoveries++;
    }
    return 0;
}

/*
 * Marks the zone dirty before the first write of an operation. A process killed by a signal
 * stops between two instructions and every store it made before is visible to the next
 * locker (the kernel hands the robust futex over with full barriers), so only the compiler
 * must keep the order: dirty first, then the writes it covers.
 */
static inline void begin_write(mg_shdict_t *d)
{
    __atomic_store_n(&d->dirty, 1, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

static void zone_unlock(mg_shdict_t *d)
{
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&d->dirty, 0, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&d->mutex);
}

/* Empties the zone: every page free, no item. Only the mutex, name, seed and layout stay. */
static void zone_reset(mg_shdict_t *d)
{
    memset(buckets(d), 0, (size_t)d->nbuckets * sizeof(ref_t));
    for (uint32_t i = 0; i < d->npages; i++) {
        page_t *p = page_at(d, i + 1);
        *p = (page_t){.cls = NO_CLASS, .next = i + 1 < d->npages ? i + 2 : 0};
    }
    d->free_pages = d->npages ? 1 : 0;
    d->nfree_pages = d->npages;
    d->nitems = 0;
    d->lru = (list_t){0, 0};
    classes_init(d);
}

/*
 * Size classes: 64, 96, 128, 192, 256, ... (two per doubling, at most a third of a chunk
 * wasted) up to the page size. Each is stretched to page_size / chunks_per_page so a page
 * has no tail waste worth a chunk, and sizes that would hold as many chunks per page as a
 * larger class are dropped.
 */
static void classes_init(mg_shdict_t *d)
{
    uint32_t n = 0, prev_chunks = 0, page = d->page_size;
    for (uint32_t s = MIN_CHUNK;;) {
        uint32_t chunks = page / s;
        if (chunks != prev_chunks && n < MAX_CLASSES) {
            d->classes[n] = (class_t){.size = (page / chunks) & ~7u, .nchunks = chunks};
            prev_chunks = chunks;
            n++;
        }
        if (s >= page) break;
        s = (s & (s - 1)) == 0 ? s + s / 2 : s + s / 3;
        if (s > page) s = page;
    }
    d->nclasses = n;
}

/* The smallest class whose chunks hold size bytes; size <= page_size is the caller's job. */
static uint32_t class_for(const mg_shdict_t *d, size_t size)
{
    uint32_t lo = 0, hi = d->nclasses - 1;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (d->classes[mid].size >= size)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* ---- addressing ---------------------------------------------------------------------- */

static inline char *ptr_of(const mg_shdict_t *d, ref_t r)
{
    return (char *)d + ((size_t)r << REF_SHIFT);
}

static inline item_t *item_at(const mg_shdict_t *d, ref_t r)
{
    return (item_t *)ptr_of(d, r);
}

static inline ref_t ref_of(const mg_shdict_t *d, const void *p)
{
    return (ref_t)(((const char *)p - (const char *)d) >> REF_SHIFT);
}

static inline page_t *page_at(const mg_shdict_t *d, uint32_t pn)
{
    return (page_t *)((char *)d + d->pages_off) + (pn - 1);
}

static inline uint32_t page_of(const mg_shdict_t *d, ref_t r)
{
    return (uint32_t)((((size_t)r << REF_SHIFT) - d->data_off) >> d->page_shift) + 1;
}

static inline char *page_base(const mg_shdict_t *d, uint32_t pn)
{
    return (char *)d + d->data_off + (size_t)(pn - 1) * d->page_size;
}

static inline ref_t *buckets(const mg_shdict_t *d)
{
    return (ref_t *)((char *)d + d->buckets_off);
}

/* ---- lists --------------------------------------------------------------------------- */

/* off: offsetof(item_t, lru) or offsetof(item_t, clru) */
static inline link_t *link_at(const mg_shdict_t *d, ref_t r, size_t off)
{
    return (link_t *)(ptr_of(d, r) + off);
}

static void list_remove(const mg_shdict_t *d, list_t *l, ref_t r, size_t off)
{
    link_t *n = link_at(d, r, off);
    if (n->prev)
        link_at(d, n->prev, off)->next = n->next;
    else
        l->head = n->next;
    if (n->next)
        link_at(d, n->next, off)->prev = n->prev;
    else
        l->tail = n->prev;
    n->prev = n->next = 0;
}

static void list_push_head(const mg_shdict_t *d, list_t *l, ref_t r, size_t off)
{
    link_t *n = link_at(d, r, off);
    n->prev = 0;
    n->next = l->head;
    if (l->head)
        link_at(d, l->head, off)->prev = r;
    else
        l->tail = r;
    l->head = r;
}

/* ---- expiry heap (pairing heap, min on expires) --------------------------------------- */

/* Melds two roots (hup = hsib = 0); the later-expiring becomes the other's first child. */
static ref_t heap_meld(const mg_shdict_t *d, ref_t a, ref_t b)
{
    if (a == 0) return b;
    if (b == 0) return a;
    if (item_at(d, b)->expires < item_at(d, a)->expires) {
        ref_t t = a;
        a = b;
        b = t;
    }
    item_t *x = item_at(d, a), *y = item_at(d, b);
    y->hsib = x->hchild;
    if (x->hchild) item_at(d, x->hchild)->hup = b;
    y->hup = a;
    x->hchild = b;
    return a;
}

/* Two-pass pairing of a sibling list into one root, without recursion. */
static ref_t heap_merge_pairs(const mg_shdict_t *d, ref_t first)
{
    ref_t stack = 0; /* melded pairs, linked through hsib, last pair on top */
    while (first != 0) {
        item_t *a = item_at(d, first);
        ref_t b = a->hsib, next = 0, m = first;
        a->hup = a->hsib = 0;
        if (b != 0) {
            item_t *bi = item_at(d, b);
            next = bi->hsib;
            bi->hup = bi->hsib = 0;
            m = heap_meld(d, first, b);
        }
        item_at(d, m)->hsib = stack;
        stack = m;
        first = next;
    }
    ref_t root = 0;
    while (stack != 0) {
        item_t *s = item_at(d, stack);
        ref_t next = s->hsib;
        s->hsib = 0;
        root = heap_meld(d, root, stack);
        stack = next;
    }
    return root;
}

static void heap_insert(const mg_shdict_t *d, class_t *k, ref_t r)
{
    item_t *it = item_at(d, r);
    it->hup = it->hchild = it->hsib = 0;
    k->heap = heap_meld(d, k->heap, r);
}

static void heap_remove(const mg_shdict_t *d, class_t *k, ref_t r)
{
    item_t *it = item_at(d, r);
    if (k->heap == r) {
        k->heap = heap_merge_pairs(d, it->hchild);
    } else {
        item_t *up = item_at(d, it->hup);
        if (up->hchild == r)
            up->hchild = it->hsib;
        else
            up->hsib = it->hsib;
        if (it->hsib) item_at(d, it->hsib)->hup = it->hup;
        it->hup = it->hsib = 0;
        k->heap = heap_meld(d, k->heap, heap_merge_pairs(d, it->hchild));
    }
    it->hup = it->hchild = it->hsib = 0;
}

/* ---- slab allocator ------------------------------------------------------------------ */

static void partial_push(const mg_shdict_t *d, class_t *k, uint32_t pn)
{
    page_t *p = page_at(d, pn);
    p->prev = 0;
    p->next = k->partial;
    if (k->partial) page_at(d, k->partial)->prev = pn;
    k->partial = pn;
}

static void partial_remove(const mg_shdict_t *d, class_t *k, uint32_t pn)
{
    page_t *p = page_at(d, pn);
    if (p->prev)
        page_at(d, p->prev)->next = p->next;
    else
        k->partial = p->next;
    if (p->next) page_at(d, p->next)->prev = p->prev;
    p->prev = p->next = 0;
}

/* A free chunk of class c, from a partial page or a fresh page; 0 when neither exists. Chunks
 * of a fresh page are carved one by one, so a page costs nothing until it is used. */
static ref_t chunk_alloc(mg_shdict_t *d, uint32_t c)
{
    class_t *k = &d->classes[c];
    uint32_t pn = k->partial;
    if (pn == 0) {
        pn = d->free_pages;
        if (pn == 0) return 0;
        page_t *fresh = page_at(d, pn);
        d->free_pages = fresh->next;
        d->nfree_pages--;
        *fresh = (page_t){.cls = c};
        partial_push(d, k, pn);
        k->npages++;
        k->nfree += k->nchunks;
    }
    page_t *p = page_at(d, pn);
    ref_t r;
    if (p->free != 0) {
        r = p->free;
        memcpy(&p->free, ptr_of(d, r), sizeof(ref_t));
    } else {
        r = ref_of(d, page_base(d, pn) + (size_t)p->carved * k->size);
        p->carved++;
    }
    k->nfree--;
    if (++p->used == k->nchunks) partial_remove(d, k, pn);
    return r;
}

/* Returns a chunk to its page; a page left empty goes back to the zone's free pages. */
static void chunk_free(mg_shdict_t *d, ref_t r)
{
    uint32_t pn = page_of(d, r);
    page_t *p = page_at(d, pn);
    class_t *k = &d->classes[p->cls];
    if (p->used == k->nchunks) partial_push(d, k, pn);
    memcpy(ptr_of(d, r), &p->free, sizeof(ref_t));
    p->free = r;
    k->nfree++;
    if (--p->used == 0) {
        partial_remove(d, k, pn);
        k->npages--;
        k->nfree -= k->nchunks;
        *p = (page_t){.cls = NO_CLASS, .next = d->free_pages};
        d->free_pages = pn;
        d->nfree_pages++;
    }
}

/*
 * A chunk of class c for a new item, making room as described at the top of this file.
 * evict = false (SAFE_SET) stops before valid items would go. *forced is set when a valid
 * item was evicted. NULL: no room (or nothing left to evict).
 */
static item_t *item_alloc(mg_shdict_t *d, uint32_t c, bool evict, uint64_t now, bool *forced)
{
    class_t *k = &d->classes[c];
    for (;;) {
        ref_t r = chunk_alloc(d, c);
        if (r != 0) return item_at(d, r);
        if (k->heap != 0 && is_expired(item_at(d, k->heap), now)) {
            item_free(d, item_at(d, k->heap));
            continue;
        }
        if (purge_expired_for_page(d, now)) continue;
        if (!evict) return NULL;
        if (k->lru.tail != 0) { /* none of them is expired: the heap said so */
            item_free(d, item_at(d, k->lru.tail));
            *forced = true;
            continue;
        }
        if (d->lru.tail == 0) return NULL;
        page_evict(d, page_of(d, d->lru.tail), now, forced);
    }
}

/* Frees expired items of every class until a page is free. True when one is. Each expired
 * item is freed at most once, so the cost is amortised over the operations that made them. */
static bool purge_expired_for_page(mg_shdict_t *d, uint64_t now)
{
    for (uint32_t c = 0; c < d->nclasses; c++) {
        class_t *k = &d->classes[c];
        while (k->heap != 0 && is_expired(item_at(d, k->heap), now)) {
            item_free(d, item_at(d, k->heap));
            if (d->nfree_pages > 0) return true;
        }
    }
    return false;
}

/* Frees every item of page pn, which then returns to the free pages. */
static void page_evict(mg_shdict_t *d, uint32_t pn, uint64_t now, bool *forced)
{
    page_t *p = page_at(d, pn);
    uint32_t size = d->classes[p->cls].size, n = p->carved;
    char *base = page_base(d, pn);
    for (uint32_t i = 0; i < n && p->cls != NO_CLASS; i++) {
        item_t *it = (item_t *)(base + (size_t)i * size);
        if (it->type == FREE_TYPE) continue;
        if (!is_expired(it, now)) *forced = true;
        item_free(d, it);
    }
}

/* ---- items --------------------------------------------------------------------------- */

static item_t *lookup(const mg_shdict_t *d, const char *key, size_t klen, uint32_t hash)
{
    for (ref_t r = buckets(d)[hash & (d->nbuckets - 1)]; r != 0;) {
        item_t *it = item_at(d, r);
        if (it->hash == hash && it->klen == klen && memcmp(it->data, key, klen) == 0) return it;
        r = it->hnext;
    }
    return NULL;
}

/* Gives a freshly allocated chunk its key and links it everywhere but the expiry heap. */
static void item_link(mg_shdict_t *d, item_t *it, uint32_t c, const char *key, size_t klen,
                      uint32_t hash)
{
    ref_t r = ref_of(d, it);
    class_t *k = &d->classes[c];
    it->expires = 0;
    it->hup = it->hchild = it->hsib = 0;
    it->hash = hash;
    it->klen = (uint16_t)klen;
    it->cls = (uint8_t)c;
    it->type = MG_SHDICT_NIL; /* item_put_value follows */
    it->vlen = 0;
    memcpy(it->data, key, klen);
    ref_t *b = &buckets(d)[hash & (d->nbuckets - 1)];
    it->hnext = *b;
    *b = r;
    list_push_head(d, &d->lru, r, offsetof(item_t, lru));
    list_push_head(d, &k->lru, r, offsetof(item_t, clru));
    k->nitems++;
    d->nitems++;
}

static void item_free(mg_shdict_t *d, item_t *it)
{
    ref_t r = ref_of(d, it);
    class_t *k = &d->classes[it->cls];
    ref_t *pp = &buckets(d)[it->hash & (d->nbuckets - 1)];
    while (*pp != r)
        pp = &item_at(d, *pp)->hnext;
    *pp = it->hnext;
    list_remove(d, &d->lru, r, offsetof(item_t, lru));
    list_remove(d, &k->lru, r, offsetof(item_t, clru));
    if (it->expires != 0) heap_remove(d, k, r);
    it->type = FREE_TYPE;
    k->nitems--;
    d->nitems--;
    chunk_free(d, r);
}

/* The value; the chunk is known to be large enough. */
static void item_put_value(item_t *it, int type, const char *str, size_t slen, double num)
{
    char *v = it->data + it->klen;
    it->type = (uint8_t)type;
    switch (type) {
    case MG_SHDICT_BOOLEAN:
        it->vlen = 1;
        v[0] = num != 0;
        break;
    case MG_SHDICT_NUMBER:
        it->vlen = sizeof(double);
        memcpy(v, &num, sizeof(double));
        break;
    default:
        it->vlen = (uint32_t)slen;
        if (slen) memcpy(v, str, slen);
        break;
    }
}

static void item_set_expires(mg_shdict_t *d, item_t *it, uint64_t expires)
{
    if (it->expires == expires) return;
    class_t *k = &d->classes[it->cls];
    if (it->expires != 0) heap_remove(d, k, ref_of(d, it));
    it->expires = expires;
    if (expires != 0) heap_insert(d, k, ref_of(d, it));
}

/* Most recently used: head of the zone's LRU and of its class's. */
static void item_touch(mg_shdict_t *d, item_t *it)
{
    ref_t r = ref_of(d, it);
    class_t *k = &d->classes[it->cls];
    if (d->lru.head != r) {
        list_remove(d, &d->lru, r, offsetof(item_t, lru));
        list_push_head(d, &d->lru, r, offsetof(item_t, lru));
    }
    if (k->lru.head != r) {
        list_remove(d, &k->lru, r, offsetof(item_t, clru));
        list_push_head(d, &k->lru, r, offsetof(item_t, clru));
    }
}

static int get_common(mg_shdict_t *d, const char *key, size_t klen, mg_shdict_value_t *v, char *buf,
                      size_t buflen, bool allow_stale, bool *stale)
{
    v->type = MG_SHDICT_NIL;
    v->number = 0;
    v->len = 0;
    v->ttl = -1;
    if (stale) *stale = false;
    if (!key_ok(klen)) return MG_ERROR;

    uint32_t hash = key_hash(d, key, klen);
    if (zone_lock(d) != 0) return MG_ERROR;

    int rc = MG_OK;
    item_t *it = lookup(d, key, klen, hash);
    if (it == NULL) {
        rc = MG_DECLINED;
        goto done;
    }
    uint64_t now = it->expires != 0 ? now_ms() : 0;
    if (is_expired(it, now)) {
        if (!allow_stale) { /* kept, not freed: get_stale may still want it */
            rc = MG_DECLINED;
            goto done;
        }
        if (stale) *stale = true;
        v->ttl = 0;
    } else if (it->expires != 0) {
        v->ttl = (double)(it->expires - now) / 1000.0;
    }

    begin_write(d);
    item_touch(d, it);
    const char *val = it->data + it->klen;
    v->type = it->type;
    switch (it->type) {
    case MG_SHDICT_BOOLEAN:
        v->number = val[0] != 0;
        break;
    case MG_SHDICT_NUMBER:
        memcpy(&v->number, val, sizeof(double));
        break;
    default:
        v->len = it->vlen;
        if (it->vlen > buflen)
            rc = MG_AGAIN;
        else if (it->vlen)
            memcpy(buf, val, it->vlen);
        break;
    }

done:
    zone_unlock(d);
    return rc;
}

/* ---- helpers ------------------------------------------------------------------------- */

#define ROTL64(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL64(v1, 13);                                                                       \
        v1 ^= v0;                                                                                  \
        v0 = ROTL64(v0, 32);                                                                       \
        v2 += v3;                                                                                  \
        v3 = ROTL64(v3, 16);                                                                       \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL64(v3, 21);                                                                       \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL64(v1, 17);                                                                       \
        v1 ^= v2;                                                                                  \
        v2 = ROTL64(v2, 32);                                                                       \
    } while (0)

#ifndef SIP_CROUNDS /* overridable to check the reference SipHash-2-4 test vectors */
#define SIP_CROUNDS 1
#define SIP_DROUNDS 3
#endif

/* SipHash-1-3 (Aumasson and Bernstein): keys may come from clients (an IP, an API key), so
 * the hash is keyed per zone to keep chains short against chosen keys. */
static uint64_t siphash13(const uint64_t k[2], const unsigned char *in, size_t len)
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ k[0], v1 = 0x646f72616e646f6dULL ^ k[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ k[0], v3 = 0x7465646279746573ULL ^ k[1];
    uint64_t b = (uint64_t)len << 56, m;
    const unsigned char *end = in + (len & ~(size_t)7);
    for (; in != end; in += 8) {
        memcpy(&m, in, 8);
        v3 ^= m;
        for (int i = 0; i < SIP_CROUNDS; i++)
            SIPROUND;
        v0 ^= m;
    }
    for (size_t i = len & 7; i > 0; i--)
        b |= (uint64_t)in[i - 1] << (8 * (i - 1));
    v3 ^= b;
    for (int i = 0; i < SIP_CROUNDS; i++)
        SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    for (int i = 0; i < SIP_DROUNDS; i++)
        SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static inline uint32_t key_hash(const mg_shdict_t *d, const char *key, size_t klen)
{
    uint64_t h = siphash13(d->seed, (const unsigned char *)key, klen);
    return (uint32_t)(h ^ (h >> 32));
}

static inline uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ttl in seconds; not > 0 (NaN included): never. At least 1 ms, at most ~31,000 years. */
static inline uint64_t expires_from(double ttl, uint64_t now)
{
    if (!(ttl > 0)) return 0;
    double ms = ttl * 1000.0;
    if (ms < 1) ms = 1;
    if (ms > MAX_TTL_MS) ms = MAX_TTL_MS;
    return now + (uint64_t)ms;
}

static inline bool is_expired(const item_t *it, uint64_t now)
{
    return it->expires != 0 && it->expires <= now;
}

static inline bool key_ok(size_t klen)
{
    return klen > 0 && klen <= MG_SHDICT_KEY_MAX;
}
