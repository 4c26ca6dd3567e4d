/*
 * test_pool.c — unit tests for the arenas: 16-byte alignment, allocations spread over many
 * blocks, large allocations, the string helpers, cleanups (reverse order, on destroy and on
 * reset, exactly once), a pool that keeps working after reset, and mg_pool_used(). Leaks of
 * blocks or large allocations show up under the ASan build (LeakSanitizer).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_test.h"
#include "../mg_pool.c"

#define ALIGNED16(p) ((((uintptr_t)(p)) & 15u) == 0)

TEST(create_and_alloc_are_16_byte_aligned)
{
    mg_pool_t *p = mg_pool_create(1024);
    CHECK(p != NULL);
    for (size_t n = 0; n < 200; n++) {
        char *m = mg_pool_alloc(p, n % 37 + 1);
        CHECK(m != NULL);
        CHECK(ALIGNED16(m));
    }
    CHECK(ALIGNED16(mg_pool_alloc(p, 5000))); /* large */
    mg_pool_destroy(p);
}

TEST(small_block_size_is_raised_to_256)
{
    mg_pool_t *p = mg_pool_create(1);
    CHECK(p != NULL);
    CHECK_INT(p->block_size, 256);
    char *m = mg_pool_alloc(p, 64); /* a quarter of 256: carved from a block */
    CHECK(m != NULL && ALIGNED16(m));
    CHECK(p->large == NULL);
    memset(m, 1, 64);
    mg_pool_destroy(p);
}

TEST(allocations_over_many_blocks_do_not_overlap)
{
    enum { N = 1000, SZ = 50 };
    mg_pool_t *p = mg_pool_create(256);
    char *m[N];
    for (int i = 0; i < N; i++) {
        m[i] = mg_pool_alloc(p, SZ);
        CHECK(m[i] != NULL);
        memset(m[i], (char)i, SZ);
    }
    CHECK(p->first->next != NULL); /* it did need more blocks */
    int bad = 0;
    for (int i = 0; i < N; i++)
        for (int k = 0; k < SZ; k++)
            bad += m[i][k] != (char)i;
    CHECK_INT(bad, 0);
    mg_pool_destroy(p);
}

TEST(large_allocations_get_their_own_memory)
{
    mg_pool_t *p = mg_pool_create(1024);
    char *in_block = mg_pool_alloc(p, 256); /* == block_size / 4 */
    CHECK(p->large == NULL);
    char *big = mg_pool_alloc(p, 257);
    CHECK(p->large != NULL);
    char *huge = mg_pool_alloc(p, 1 << 20);
    CHECK(in_block && big && huge);
    CHECK(ALIGNED16(big) && ALIGNED16(huge));
    memset(in_block, 'a', 256);
    memset(big, 'b', 257);
    memset(huge, 'c', 1 << 20);
    CHECK(in_block[255] == 'a' && big[0] == 'b' && big[256] == 'b' && huge[(1 << 20) - 1] == 'c');
    /* small allocations still come from the block after a large one */
    char *small = mg_pool_alloc(p, 16);
    CHECK(small >= (char *)p->first && small < p->first->end);
    mg_pool_destroy(p);
}

TEST(calloc_returns_zeroed_memory)
{
    mg_pool_t *p = mg_pool_create(512);
    char *a = mg_pool_alloc(p, 64);
    memset(a, 0xff, 64);
    mg_pool_reset(p);
    unsigned char *z = mg_pool_calloc(p, 64); /* reuses the dirty bytes */
    CHECK((char *)z == a);
    int nonzero = 0;
    for (int i = 0; i < 64; i++)
        nonzero += z[i] != 0;
    CHECK_INT(nonzero, 0);
    unsigned char *zl = mg_pool_calloc(p, 4096);
    nonzero = 0;
    for (int i = 0; i < 4096; i++)
        nonzero += zl[i] != 0;
    CHECK_INT(nonzero, 0);
    mg_pool_destroy(p);
}

TEST(zero_size_alloc_returns_distinct_pointers)
{
    mg_pool_t *p = mg_pool_create(512);
    void *a = mg_pool_alloc(p, 0), *b = mg_pool_alloc(p, 0);
    CHECK(a != NULL && b != NULL && a != b);
    mg_pool_destroy(p);
}

TEST(strdup_strndup_and_printf_copy_into_the_pool)
{
    mg_pool_t *p = mg_pool_create(512);
    char src[] = "hello";
    char *d = mg_pool_strdup(p, src);
    src[0] = 'j';
    CHECK_STR(d, "hello");
    CHECK(d != src);
    CHECK_STR(mg_pool_strndup(p, "abcdef", 3), "abc");
    CHECK_STR(mg_pool_strndup(p, NULL, 0), "");
    CHECK_STR(mg_pool_strdup(p, ""), "");
    CHECK_STR(mg_pool_printf(p, "%s-%d-%05.1f", "x", 42, 3.14159), "x-42-003.1");
    /* longer than a block: a large allocation */
    char *long_s = mg_pool_printf(p, "%0600d", 7);
    CHECK(long_s != NULL);
    CHECK_INT(strlen(long_s), 600);
    CHECK(long_s[599] == '7' && long_s[0] == '0');
    mg_pool_destroy(p);
}

static char order[16];
static int norder;

static void record(void *data)
{
    if (norder < (int)sizeof(order) - 1) order[norder++] = *(const char *)data;
    order[norder] = '\0';
}

TEST(cleanups_run_in_reverse_order_on_destroy)
{
    norder = 0;
    order[0] = '\0';
    mg_pool_t *p = mg_pool_create(256);
    static const char a = 'a', b = 'b', c = 'c';
    CHECK_INT(mg_pool_cleanup_add(p, record, (void *)&a), MG_OK);
    CHECK_INT(mg_pool_cleanup_add(p, record, (void *)&b), MG_OK);
    mg_pool_alloc(p, 5000); /* cleanups and large allocations interleave */
    CHECK_INT(mg_pool_cleanup_add(p, record, (void *)&c), MG_OK);
    CHECK_STR(order, "");
    mg_pool_destroy(p);
    CHECK_STR(order, "cba");
}

TEST(cleanups_run_in_reverse_order_on_reset_and_only_once)
{
    norder = 0;
    order[0] = '\0';
    mg_pool_t *p = mg_pool_create(256);
    static const char a = 'a', b = 'b', c = 'c', d = 'd';
    mg_pool_cleanup_add(p, record, (void *)&a);
    mg_pool_cleanup_add(p, record, (void *)&b);
    mg_pool_cleanup_add(p, record, (void *)&c);
    mg_pool_reset(p);
    CHECK_STR(order, "cba");
    mg_pool_reset(p); /* nothing left to run */
    CHECK_STR(order, "cba");
    mg_pool_cleanup_add(p, record, (void *)&d);
    mg_pool_destroy(p);
    CHECK_STR(order, "cbad");
}

static void free_it(void *data)
{
    free(data);
}

TEST(cleanup_can_release_outside_resources)
{
    mg_pool_t *p = mg_pool_create(256);
    CHECK_INT(mg_pool_cleanup_add(p, free_it, malloc(100)), MG_OK); /* LeakSanitizer checks */
    mg_pool_destroy(p);
}

TEST(reset_keeps_the_pool_working)
{
    mg_pool_t *p = mg_pool_create(256);
    char *first = mg_pool_alloc(p, 32);
    for (int i = 0; i < 100; i++)
        mg_pool_alloc(p, 48); /* several blocks */
    mg_pool_alloc(p, 4096);   /* and a large one */
    CHECK(p->first->next != NULL);
    mg_pool_reset(p);
    CHECK(p->first->next == NULL);
    CHECK(p->large == NULL);
    CHECK(p->current == p->first);
    CHECK_INT(mg_pool_used(p), 0);
    char *again = mg_pool_alloc(p, 32);
    CHECK(again == first); /* the first block is reused from its start */
    for (int round = 0; round < 3; round++) {
        char *m[60];
        for (int i = 0; i < 60; i++) {
            m[i] = mg_pool_alloc(p, 40);
            CHECK(m[i] != NULL && ALIGNED16(m[i]));
            memset(m[i], 'a' + i % 26, 40);
        }
        char *s = mg_pool_printf(p, "round %d", round);
        char *big = mg_pool_alloc(p, 3000);
        memset(big, 'z', 3000);
        int bad = 0;
        for (int i = 0; i < 60; i++)
            bad += m[i][39] != 'a' + i % 26;
        CHECK_INT(bad, 0);
        char want[16];
        snprintf(want, sizeof(want), "round %d", round);
        CHECK_STR(s, want);
        mg_pool_reset(p);
    }
    mg_pool_destroy(p);
}

TEST(used_counts_aligned_bytes_handed_out)
{
    mg_pool_t *p = mg_pool_create(1024);
    CHECK_INT(mg_pool_used(p), 0);
    mg_pool_alloc(p, 1);
    CHECK_INT(mg_pool_used(p), 16);
    mg_pool_alloc(p, 16);
    CHECK_INT(mg_pool_used(p), 32);
    mg_pool_alloc(p, 17);
    CHECK_INT(mg_pool_used(p), 64);
    mg_pool_alloc(p, 1000); /* large ones count too */
    CHECK_INT(mg_pool_used(p), 64 + 1008);
    mg_pool_strdup(p, "abc");
    CHECK_INT(mg_pool_used(p), 64 + 1008 + 16);
    mg_pool_reset(p);
    CHECK_INT(mg_pool_used(p), 0);
    mg_pool_destroy(p);
}

TEST(destroy_accepts_null)
{
    mg_pool_destroy(NULL);
    CHECK(1);
}

TEST_MAIN()
