/*
 * mg_buf.h — fixed-size I/O buffers recycled through a per-worker free list, so a busy
 * worker stops calling malloc once warmed up, and an idle connection holds no buffer at all.
 */
#ifndef MG_BUF_H
#define MG_BUF_H

#include "mg_core.h"

#define MG_BUF_SIZE (16 * 1024)

typedef struct mg_buf_s {
    struct mg_buf_s *next; /* free-list link */
    size_t start, end;     /* unread/unsent bytes are data[start..end) */
    size_t size;
    char data[];
} mg_buf_t;

/* Takes a buffer from the free list (or mallocs one). NULL on out-of-memory. */
mg_buf_t *mg_buf_get(void);
/* A buffer of `size` bytes (at least MG_BUF_SIZE) for the rare head that outgrows a
 * standard one; mg_buf_put frees it instead of listing it. NULL on out-of-memory. */
mg_buf_t *mg_buf_get_size(size_t size);
/* Returns b to the free list (freed instead when the list already holds enough). NULL ok. */
void mg_buf_put(mg_buf_t *b);
/* Frees every buffer on the free list (worker exit, tests). */
void mg_buf_drain(void);

static inline size_t mg_buf_len(const mg_buf_t *b)
{
    return b->end - b->start;
}
static inline size_t mg_buf_free(const mg_buf_t *b)
{
    return b->size - b->end;
}
static inline char *mg_buf_pos(mg_buf_t *b)
{
    return b->data + b->start;
}
static inline char *mg_buf_last(mg_buf_t *b)
{
    return b->data + b->end;
}

/* Moves unread bytes to the front so that the whole tail is free. */
static inline void mg_buf_compact(mg_buf_t *b)
{
    if (b->start == 0) return;
    size_t n = b->end - b->start;
    if (n) memmove(b->data, b->data + b->start, n);
    b->start = 0;
    b->end = n;
}

/* Appends len bytes; the caller has checked there is room. */
static inline void mg_buf_append(mg_buf_t *b, const void *p, size_t len)
{
    memcpy(b->data + b->end, p, len);
    b->end += len;
}

#endif
