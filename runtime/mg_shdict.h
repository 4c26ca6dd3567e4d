/*
 * mg_shdict.h — shared dictionaries: fixed-size key/value zones in shared memory, created by
 * the master before it forks so that every worker maps the same zone. Values are nil,
 * booleans, numbers (double) or byte strings, each with an optional TTL. A full zone evicts
 * expired items first, then the least recently used ones. Every operation takes the zone's
 * process-shared robust mutex, so a worker killed while holding it (watchdog) does not wedge
 * the others. The API is FFI-friendly (lua-resty-core's shdict shape): no callbacks, caller
 * buffers, numeric return codes.
 */
#ifndef MG_SHDICT_H
#define MG_SHDICT_H

#include "mg_core.h"

typedef struct mg_shdict_s mg_shdict_t;

#define MG_SHDICT_MIN_SIZE (32 * 1024) /* smallest zone */
#define MG_SHDICT_NAME_MAX 63          /* longest zone name */
#define MG_SHDICT_KEY_MAX 65535        /* longest key; keys are 1..65535 bytes, any bytes */

/*
 * Every keyed call returns MG_ERROR for an empty key or one longer than MG_SHDICT_KEY_MAX
 * (the Lua wrapper should check first and say "empty key" / "key too long"), and every
 * call returns MG_ERROR if the zone mutex is unrecoverable (never seen in practice: see
 * mg_shdict_recoveries).
 */

enum { MG_SHDICT_NIL = 0, MG_SHDICT_BOOLEAN = 1, MG_SHDICT_NUMBER = 3, MG_SHDICT_STRING = 4 };
/* value types, numbered as Lua's LUA_T* constants */

enum { MG_SHDICT_SET = 0, MG_SHDICT_ADD = 1, MG_SHDICT_REPLACE = 2, MG_SHDICT_SAFE_SET = 3 };

typedef struct {
    int type;      /* MG_SHDICT_* */
    double number; /* NUMBER; BOOLEAN as 0/1 */
    size_t len;    /* STRING: its length (also when it did not fit in the buffer) */
    double ttl;    /* seconds left, or -1 for no expiry (0 for a stale item) */
} mg_shdict_value_t;

/* Creates a zone of `size` bytes (at least MG_SHDICT_MIN_SIZE, at most 32 GiB) named `name`
 * (at most MG_SHDICT_NAME_MAX bytes, copied) in anonymous shared memory. Call before fork():
 * the handle is the mapping itself, valid in every child. NULL on failure with errno EINVAL
 * (size), ENAMETOOLONG, ENOMEM (mmap). The largest item (header + key + value) is
 * min(size / 8 rounded down to a power of two, 1 MiB), at least 4 KiB. */
mg_shdict_t *mg_shdict_create(const char *name, size_t size);
/* Unmaps the zone (in the calling process only; the others keep theirs). NULL is
 * accepted. */
void mg_shdict_destroy(mg_shdict_t *d);
const char *mg_shdict_name(const mg_shdict_t *d);

/* The longest string value that fits with a key of klen bytes (0 for a bad klen). A longer
 * one makes mg_shdict_store return MG_ERROR ("no memory"), whatever the free space. */
size_t mg_shdict_max_value_len(const mg_shdict_t *d, size_t klen);

/*
 * Looks key up. On a hit fills *v (a string is copied into buf when it fits in buflen:
 * otherwise v->type and v->len tell the size needed and MG_AGAIN is returned, nothing
 * copied; the caller grows its buffer and calls again, since the value may have changed in
 * between) and returns MG_OK; a miss or an expired item returns MG_DECLINED with v->type
 * NIL. A hit (MG_AGAIN included) moves the item to the head of the LRU. buf may be NULL
 * when buflen is 0. An expired item is not freed here (get_stale may still read it); it is
 * the first to go when room is needed.
 */
int mg_shdict_get(mg_shdict_t *d, const char *key, size_t klen, mg_shdict_value_t *v, char *buf,
                  size_t buflen);

/* Like mg_shdict_get, but an expired item that is still in the zone is returned too, with
 * *stale = true and v->ttl = 0 (OpenResty's get_stale). */
int mg_shdict_get_stale(mg_shdict_t *d, const char *key, size_t klen, mg_shdict_value_t *v,
                        char *buf, size_t buflen, bool *stale);

/*
 * Stores a value: type NIL deletes. mode SET stores (evicting if needed), ADD only when absent
 * (or expired), REPLACE only when present, SAFE_SET like SET but never evicts valid items.
 * ttl <= 0 means no expiry. Returns MG_OK; MG_DECLINED when ADD found the key ("exists") or
 * REPLACE did not ("not found"); MG_ERROR when it cannot fit ("no memory"), or for a bad
 * mode/type. *forcible (may be NULL) is set when valid items were evicted to make room.
 * Deleting an absent key is MG_OK. A value larger than mg_shdict_max_value_len is refused
 * with the old value kept; a SAFE_SET that finds no room after freeing the old value (of a
 * different size class) leaves the key absent, as OpenResty does. BOOLEAN takes num != 0;
 * str is read only for STRING (NULL allowed when slen is 0). The stored item becomes the
 * most recently used.
 */
int mg_shdict_store(mg_shdict_t *d, int mode, const char *key, size_t klen, int type,
                    const char *str, size_t slen, double num, double ttl, bool *forcible);

/*
 * Adds delta to a number. When the key is absent (or expired) and has_init, stores
 * init + delta with init_ttl (seconds, <= 0: none). Returns MG_OK with the new value in
 * *out; MG_DECLINED when absent without has_init ("not found"); MG_BUSY when the value is
 * not a number ("not a number"); MG_ERROR when there is no room. Incrementing an existing
 * item keeps its TTL and makes it the most recently used. *forcible may be NULL.
 */
int mg_shdict_incr(mg_shdict_t *d, const char *key, size_t klen, double delta, bool has_init,
                   double init, double init_ttl, double *out, bool *forcible);

/* Seconds to live: > 0, -1 for no expiry (returned in *ttl); MG_DECLINED when absent or
 * expired (OpenResty returns 0 for "no expiry" and may return a negative TTL for an expired
 * item not yet freed: a Lua wrapper that wants that shape maps -1 to 0). The LRU is not
 * touched. */
int mg_shdict_ttl(mg_shdict_t *d, const char *key, size_t klen, double *ttl);
/* Sets the TTL of an existing item (<= 0: never expires). MG_DECLINED when absent or
 * expired. The LRU is not touched. */
int mg_shdict_expire(mg_shdict_t *d, const char *key, size_t klen, double ttl);

/* Marks every item expired (memory reclaimed lazily: expired items go first when room is
 * needed, or with mg_shdict_flush_expired). O(items). */
void mg_shdict_flush_all(mg_shdict_t *d);
/* Frees up to max expired items (0 = all). Returns how many were freed. Items with a TTL
 * are kept in per-size-class heaps, so this costs O(freed * log items), not a full scan. */
size_t mg_shdict_flush_expired(mg_shdict_t *d, size_t max);

/*
 * Copies up to max (0 = all) non-expired keys into buf as consecutive records
 * [uint32 length][bytes], most recently used first. Returns the number of keys written, or
 * -1 when buf is too small (*need tells the size required for that many keys). The length
 * is in host byte order and not aligned (read it with memcpy, or a uint32_t cast on x86 and
 * arm64). *need (may be NULL) is set in both cases; buf may be NULL when buflen is 0, to
 * learn the size. O(items), under the zone lock: not for the request path.
 */
long mg_shdict_get_keys(mg_shdict_t *d, size_t max, char *buf, size_t buflen, size_t *need);

/* Zone size in bytes, and bytes currently free for new items: free pages plus free chunks of
 * the size classes (a free chunk only serves items of its class, so a value of another size
 * may still need an eviction while free_space is not 0). */
size_t mg_shdict_capacity(const mg_shdict_t *d);
size_t mg_shdict_free_space(mg_shdict_t *d);

/* How many times the zone was flushed because a process died holding its lock in the middle
 * of an update (the zone is then emptied: everything stored is lost, nothing is corrupt). A
 * death outside an update costs nothing. The master may log it after reaping a worker. */
size_t mg_shdict_recoveries(mg_shdict_t *d);

#endif
