/*
 * mg_pool.h — arenas. A connection owns a pool; each request gets a child pool that is freed
 * at once when the request ends. Cleanups registered on a pool run (in reverse order) when it
 * is destroyed, which is how fds and upstream connections are returned without bookkeeping
 * scattered through the request path.
 */
#ifndef MG_POOL_H
#define MG_POOL_H

#include "mg_core.h"

typedef struct mg_pool_s mg_pool_t;
typedef void (*mg_pool_cleanup_pt)(void *data);

/* Creates a pool whose blocks are `block_size` bytes (requests larger than a quarter of
 * a block get their own allocation). Returns NULL on out-of-memory. */
mg_pool_t *mg_pool_create(size_t block_size);
/* Runs cleanups, frees every block and the pool itself. NULL is accepted. */
void mg_pool_destroy(mg_pool_t *p);
/* Runs cleanups and forgets every allocation, keeping the first block for reuse. */
void mg_pool_reset(mg_pool_t *p);
/* 16-byte aligned allocation; NULL on out-of-memory. Memory lives until destroy/reset. */
void *mg_pool_alloc(mg_pool_t *p, size_t size);
void *mg_pool_calloc(mg_pool_t *p, size_t size);
/* NUL-terminated copies. */
char *mg_pool_strndup(mg_pool_t *p, const char *s, size_t len);
char *mg_pool_strdup(mg_pool_t *p, const char *s);
/* printf into the pool. */
char *mg_pool_printf(mg_pool_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Registers fn(data) to run when the pool is destroyed or reset. Returns MG_OK/MG_ERROR. */
int mg_pool_cleanup_add(mg_pool_t *p, mg_pool_cleanup_pt fn, void *data);
/* Bytes handed out so far (for tests and stats). */
size_t mg_pool_used(const mg_pool_t *p);

#endif
