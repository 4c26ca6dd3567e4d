/*
 * mg_pool.c — bump-pointer arenas (after nginx's ngx_pool_t). Small allocations are carved
 * from a chain of blocks; large ones are malloc'ed and linked so that destroy frees them too.
 * Nothing is freed individually: a pool lives as long as the connection or request it serves.
 */
#include <stdlib.h>
#include <stdio.h>
#include <stdarg.h>

#include "mg_pool.h"

#define ALIGN 16
#define ALIGN_UP(n) (((n) + (ALIGN - 1)) & ~(size_t)(ALIGN - 1))

typedef struct block_s {
    struct block_s *next;
    char *pos, *end;
} block_t;

typedef struct large_s {
    struct large_s *next;
} large_t;

typedef struct cleanup_s {
    struct cleanup_s *next;
    mg_pool_cleanup_pt fn;
    void *data;
} cleanup_t;

struct mg_pool_s {
    block_t *first, *current;
    large_t *large;
    cleanup_t *cleanups;
    size_t block_size, used;
};

static block_t *block_new(size_t size);
static void run_cleanups(mg_pool_t *p);

static block_t *block_new(size_t size)
{
    block_t *b = malloc(size);
    if (b == NULL) return NULL;
    b->next = NULL;
    b->pos = (char *)b + ALIGN_UP(sizeof(block_t));
    b->end = (char *)b + size;
    return b;
}

mg_pool_t *mg_pool_create(size_t block_size)
{
    if (block_size < 256) block_size = 256;
    block_t *b = block_new(block_size);
    if (b == NULL) return NULL;
    mg_pool_t *p = (mg_pool_t *)b->pos;
    b->pos += ALIGN_UP(sizeof(mg_pool_t));
    p->first = p->current = b;
    p->large = NULL;
    p->cleanups = NULL;
    p->block_size = block_size;
    p->used = 0;
    return p;
}

static void run_cleanups(mg_pool_t *p)
{
    /* cleanups were pushed at the head, so this runs them in reverse order of registration */
    cleanup_t *c = p->cleanups;
    p->cleanups = NULL;
    for (; c; c = c->next)
        c->fn(c->data);
}

static void free_large(mg_pool_t *p)
{
    large_t *l = p->large, *n;
    for (; l; l = n) {
        n = l->next;
        free(l);
    }
    p->large = NULL;
}

void mg_pool_destroy(mg_pool_t *p)
{
    if (p == NULL) return;
    run_cleanups(p);
    free_large(p);
    block_t *b = p->first, *n;
    for (; b; b = n) { /* the pool header lives in the first block: free it last */
        n = b->next;
        free(b);
    }
}

void mg_pool_reset(mg_pool_t *p)
{
    run_cleanups(p);
    free_large(p);
    block_t *b = p->first->next, *n;
    for (; b; b = n) {
        n = b->next;
        free(b);
    }
    p->first->next = NULL;
    p->first->pos = (char *)p + ALIGN_UP(sizeof(mg_pool_t));
    p->current = p->first;
    p->used = 0;
}

void *mg_pool_alloc(mg_pool_t *p, size_t size)
{
    size = ALIGN_UP(size ? size : 1);
    p->used += size;
    if (size > p->block_size / 4) {
        large_t *l = malloc(ALIGN_UP(sizeof(large_t)) + size);
        if (l == NULL) return NULL;
        l->next = p->large;
        p->large = l;
        return (char *)l + ALIGN_UP(sizeof(large_t));
    }
    block_t *b = p->current;
    if ((size_t)(b->end - b->pos) < size) {
        block_t *nb = block_new(p->block_size);
        if (nb == NULL) return NULL;
        b->next = nb;
        p->current = b = nb;
    }
    void *m = b->pos;
    b->pos += size;
    return m;
}

void *mg_pool_calloc(mg_pool_t *p, size_t size)
{
    void *m = mg_pool_alloc(p, size);
    if (m) memset(m, 0, size);
    return m;
}

char *mg_pool_strndup(mg_pool_t *p, const char *s, size_t len)
{
    char *d = mg_pool_alloc(p, len + 1);
    if (d == NULL) return NULL;
    if (len) memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

char *mg_pool_strdup(mg_pool_t *p, const char *s)
{
    return mg_pool_strndup(p, s, strlen(s));
}

char *mg_pool_printf(mg_pool_t *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *d = mg_pool_alloc(p, (size_t)n + 1);
    if (d == NULL) return NULL;
    va_start(ap, fmt);
    vsnprintf(d, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return d;
}

int mg_pool_cleanup_add(mg_pool_t *p, mg_pool_cleanup_pt fn, void *data)
{
    cleanup_t *c = mg_pool_alloc(p, sizeof(*c));
    if (c == NULL) return MG_ERROR;
    c->fn = fn;
    c->data = data;
    c->next = p->cleanups;
    p->cleanups = c;
    return MG_OK;
}

size_t mg_pool_used(const mg_pool_t *p)
{
    return p->used;
}
