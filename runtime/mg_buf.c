/*
 * mg_buf.c — the per-worker free list behind mg_buf_get/mg_buf_put. Workers are
 * single-threaded, so the list needs no lock; its length is capped so that a traffic spike
 * does not pin memory forever.
 */
#include <stdlib.h>

#include "mg_buf.h"

#define FREE_LIST_MAX 1024

static mg_buf_t *free_list;
static size_t free_count;

mg_buf_t *mg_buf_get(void)
{
    mg_buf_t *b = free_list;
    if (b) {
        free_list = b->next;
        free_count--;
    } else {
        b = malloc(sizeof(mg_buf_t) + MG_BUF_SIZE);
        if (b == NULL) return NULL;
        b->size = MG_BUF_SIZE;
    }
    b->next = NULL;
    b->start = b->end = 0;
    return b;
}

mg_buf_t *mg_buf_get_size(size_t size)
{
    if (size <= MG_BUF_SIZE) return mg_buf_get();
    mg_buf_t *b = malloc(sizeof(mg_buf_t) + size);
    if (b == NULL) return NULL;
    b->size = size;
    b->next = NULL;
    b->start = b->end = 0;
    return b;
}

void mg_buf_put(mg_buf_t *b)
{
    if (b == NULL) return;
    if (free_count >= FREE_LIST_MAX || b->size != MG_BUF_SIZE) {
        free(b);
        return;
    }
    b->next = free_list;
    free_list = b;
    free_count++;
}

void mg_buf_drain(void)
{
    while (free_list) {
        mg_buf_t *b = free_list;
        free_list = b->next;
        free(b);
    }
    free_count = 0;
}
