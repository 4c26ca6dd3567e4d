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

enum { MG_SHDICT_NIL = 0, MG_SHDICT_BOOLEAN = 1, MG_SHDICT_NUMBER = 3, MG_SHDICT_STRING = 4 };
/* value types, numbered as Lua's LUA_T* constants */

enum { MG_SHDICT_SET = 0, MG_SHDICT_ADD = 1, MG_SHDICT_REPLACE = 2, MG_SHDICT_SAFE_SET = 3 };

typedef struct {
    int type;          /* MG_SHDICT_* */
    double number;     /* NUMBER; BOOLEAN as 0/1 */
    size_t len;        /* STRING: its length (also when it did not fit in the buffer) */
    double ttl;        /* seconds left, or -1 for no expiry (filled by get when asked) */
} mg_shdict_value_t;

/* Creates a zone of `size` bytes (at least 32 KiB) named `name` in anonymous shared memory.
 * Call before fork(). NULL on failure (errno set). */
mg_shdict_t *mg_shdict_create(const char *name, size_t size);
/* Unmaps the zone (in the calling process only). NULL is accepted. */
void mg_shdict_destroy(mg_shdict_t *d);
const char *mg_shdict_name(const mg_shdict_t *d);

/*
 * Looks key up. On a hit fills *v (a string is copied into buf when it fits in buflen:
 * otherwise v->len tells the size needed and MG_AGAIN is returned, nothing copied) and
 * returns MG_OK; a miss or an expired item returns MG_DECLINED with v->type NIL. A hit
 * moves the item to the head of the LRU.
 */
int mg_shdict_get(mg_shdict_t *d, const char *key, size_t klen, mg_shdict_value_t *v, char *buf,
                  size_t buflen);

/*
 * Stores a value: type NIL deletes. mode SET stores (evicting if needed), ADD only when absent
 * (or expired), REPLACE only when present, SAFE_SET like SET but never evicts valid items.
 * ttl <= 0 means no expiry. Returns MG_OK; MG_DECLINED when ADD found the key ("exists") or
 * REPLACE did not ("not found"); MG_ERROR when it cannot fit ("no memory"). *forcible is set
 * when valid items were evicted to make room.
 */
int mg_shdict_store(mg_shdict_t *d, int mode, const char *key, size_t klen, int type,
                    const char *str, size_t slen, double num, double ttl, bool *forcible);

/*
 * Adds delta to a number. When the key is absent and has_init, stores init + delta with
 * init_ttl (seconds, <= 0: none). Returns MG_OK with the new value in *out; MG_DECLINED when
 * absent without has_init ("not found"); MG_BUSY when the value is not a number ("not a
 * number"); MG_ERROR when there is no room.
 */
int mg_shdict_incr(mg_shdict_t *d, const char *key, size_t klen, double delta, bool has_init,
                   double init, double init_ttl, double *out, bool *forcible);

/* Seconds to live: >= 0, -1 for no expiry (returned in *ttl); MG_DECLINED when absent. */
int mg_shdict_ttl(mg_shdict_t *d, const char *key, size_t klen, double *ttl);
/* Sets the TTL of an existing item (<= 0: never expires). MG_DECLINED when absent. */
int mg_shdict_expire(mg_shdict_t *d, const char *key, size_t klen, double ttl);

/* Marks every item expired (memory reclaimed lazily). */
void mg_shdict_flush_all(mg_shdict_t *d);
/* Frees up to max expired items (0 = all). Returns how many were freed. */
size_t mg_shdict_flush_expired(mg_shdict_t *d, size_t max);

/*
 * Copies up to max (0 = all) non-expired keys into buf as consecutive records
 * [uint32 length][bytes], most recently used first. Returns the number of keys written, or
 * -1 when buf is too small (*need tells the size required for that many keys).
 */
long mg_shdict_get_keys(mg_shdict_t *d, size_t max, char *buf, size_t buflen, size_t *need);

/* Zone size in bytes, and bytes currently free for new items. */
size_t mg_shdict_capacity(const mg_shdict_t *d);
size_t mg_shdict_free_space(mg_shdict_t *d);

#endif
