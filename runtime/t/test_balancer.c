/*
 * test_balancer.c — unit tests for the balancing algorithms: smooth weighted round-robin
 * (exact shares, interleaving, weight 0 and down peers skipped, retries avoid tried peers),
 * least-connections (fewest in flight per weight, ties round-robin), consistent hashing
 * (stable keys, weight shares, ~1/N keys move when one of N peers goes or comes, retries
 * walk to the next peer), peak EWMA (the faster peer wins, a slow one is tried again once
 * its latency fades) and the no-peer answer (-1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_test.h"
#include "../mg_balancer.c"

static int counts[8];

static void count_picks(mg_balancer_t *b, int n)
{
    memset(counts, 0, sizeof(counts));
    for (int k = 0; k < n; k++) {
        int i = mg_balancer_pick(b, false, 0, 0, -1, 0);
        if (i >= 0) {
            counts[i]++;
            mg_balancer_done(b, i, -1, 0);
        }
    }
}

TEST(round_robin_follows_weights_exactly)
{
    mg_balancer_t b;
    unsigned w[] = {1, 2, 3};
    const char *ids[] = {"a:1", "b:1", "c:1"};
    CHECK_INT(mg_balancer_init(&b, MG_LB_ROUND_ROBIN, w, ids, 3, 0), MG_OK);
    count_picks(&b, 600);
    CHECK_INT(counts[0], 100);
    CHECK_INT(counts[1], 200);
    CHECK_INT(counts[2], 300);
    mg_balancer_free(&b);
}

TEST(round_robin_is_smooth)
{
    mg_balancer_t b;
    unsigned w[] = {5, 1, 1};
    const char *ids[] = {"a:1", "b:1", "c:1"};
    mg_balancer_init(&b, MG_LB_ROUND_ROBIN, w, ids, 3, 0);
    int seq[7];
    for (int k = 0; k < 7; k++) {
        seq[k] = mg_balancer_pick(&b, false, 0, 0, -1, 0);
        mg_balancer_done(&b, seq[k], -1, 0);
    }
    /* nginx's sequence for 5:1:1 */
    int want[7] = {0, 0, 1, 0, 2, 0, 0};
    for (int k = 0; k < 7; k++)
        CHECK_INT(seq[k], want[k]);
    mg_balancer_free(&b);
}

TEST(weight_zero_and_down_peers_get_nothing)
{
    mg_balancer_t b;
    unsigned w[] = {0, 10, 10};
    const char *ids[] = {"a:1", "b:1", "c:1"};
    mg_balancer_init(&b, MG_LB_ROUND_ROBIN, w, ids, 3, 0);
    b.peers[2].down = true;
    count_picks(&b, 50);
    CHECK_INT(counts[0], 0);
    CHECK_INT(counts[1], 50);
    CHECK_INT(counts[2], 0);
    b.peers[1].down = true;
    CHECK_INT(mg_balancer_pick(&b, false, 0, 0, -1, 0), -1);
    mg_balancer_free(&b);
}

TEST(no_peer_at_all_is_minus_one_for_every_algorithm)
{
    for (int alg = 0; alg <= MG_LB_LATENCY; alg++) {
        mg_balancer_t b;
        unsigned w[] = {0, 0};
        const char *ids[] = {"a:1", "b:1"};
        CHECK_INT(mg_balancer_init(&b, alg, w, ids, 2, 100), MG_OK);
        CHECK_INT(mg_balancer_pick(&b, true, 42, 0, -1, 0), -1);
        mg_balancer_free(&b);
        CHECK_INT(mg_balancer_init(&b, alg, NULL, NULL, 0, 100), MG_OK);
        CHECK_INT(mg_balancer_pick(&b, false, 0, 0, -1, 0), -1);
        mg_balancer_free(&b);
    }
}

TEST(a_retry_avoids_the_tried_peers_while_another_is_left)
{
    for (int alg = 0; alg <= MG_LB_LATENCY; alg++) {
        mg_balancer_t b;
        unsigned w[] = {100, 100, 100};
        const char *ids[] = {"a:1", "b:1", "c:1"};
        mg_balancer_init(&b, alg, w, ids, 3, 1000);
        for (uint64_t key = 0; key < 50; key++) {
            int first = mg_balancer_pick(&b, true, key * 7777, 0, -1, 0);
            int second = mg_balancer_pick(&b, true, key * 7777, 1ull << first, -1, 0);
            int third =
                mg_balancer_pick(&b, true, key * 7777, (1ull << first) | (1ull << second), -1, 0);
            CHECK(first >= 0 && second >= 0 && third >= 0);
            CHECK(second != first);
            CHECK(third != first && third != second);
            /* all tried: one of them again rather than nothing, not the last one */
            int fourth = mg_balancer_pick(&b, true, key * 7777, 7, third, 0);
            CHECK(fourth >= 0 && fourth != third);
            mg_balancer_done(&b, first, -1, 0);
            mg_balancer_done(&b, second, -1, 0);
            mg_balancer_done(&b, third, -1, 0);
            mg_balancer_done(&b, fourth, -1, 0);
        }
        mg_balancer_free(&b);
    }
}

TEST(least_connections_prefers_the_least_busy_per_weight)
{
    mg_balancer_t b;
    unsigned w[] = {100, 100, 200};
    const char *ids[] = {"a:1", "b:1", "c:1"};
    mg_balancer_init(&b, MG_LB_LEAST_CONNECTIONS, w, ids, 3, 0);
    /* hold every pick: the in-flight counts grow in weight proportion */
    memset(counts, 0, sizeof(counts));
    for (int k = 0; k < 40; k++)
        counts[mg_balancer_pick(&b, false, 0, 0, -1, 0)]++;
    CHECK_INT(counts[0], 10);
    CHECK_INT(counts[1], 10);
    CHECK_INT(counts[2], 20);
    /* peer 0 finishes its requests: it takes the next ones */
    for (int k = 0; k < 10; k++)
        mg_balancer_done(&b, 0, -1, 0);
    for (int k = 0; k < 10; k++)
        CHECK_INT(mg_balancer_pick(&b, false, 0, 0, -1, 0), 0);
    mg_balancer_free(&b);
}

TEST(least_connections_ties_go_round_robin_by_weight)
{
    mg_balancer_t b;
    unsigned w[] = {1, 3};
    const char *ids[] = {"a:1", "b:1"};
    mg_balancer_init(&b, MG_LB_LEAST_CONNECTIONS, w, ids, 2, 0);
    count_picks(&b, 400); /* each done at once: always a tie */
    CHECK_INT(counts[0], 100);
    CHECK_INT(counts[1], 300);
    mg_balancer_free(&b);
}

static void key_of(char *buf, size_t len, unsigned k)
{
    snprintf(buf, len, "client-%u", k);
}

static int owner(mg_balancer_t *b, unsigned k)
{
    char key[32];
    key_of(key, sizeof(key), k);
    int i = mg_balancer_pick(b, true, mg_balancer_hash(key, strlen(key)), 0, -1, 0);
    mg_balancer_done(b, i, -1, 0);
    return i;
}

#define NKEYS 20000

TEST(consistent_hashing_is_stable_and_follows_weights)
{
    mg_balancer_t b;
    unsigned w[] = {100, 100, 200};
    const char *ids[] = {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"};
    mg_balancer_init(&b, MG_LB_CONSISTENT_HASHING, w, ids, 3, 10000);
    int shares[3] = {0};
    for (unsigned k = 0; k < NKEYS; k++) {
        int i = owner(&b, k);
        CHECK(i >= 0);
        if (i >= 0) shares[i]++;
        CHECK_INT(owner(&b, k), i); /* the same key, the same peer */
    }
    /* 25 %, 25 %, 50 % within a few points (ketama's spread at 160 points per 100) */
    CHECK(abs(shares[0] - NKEYS / 4) < NKEYS / 12);
    CHECK(abs(shares[1] - NKEYS / 4) < NKEYS / 12);
    CHECK(abs(shares[2] - NKEYS / 2) < NKEYS / 12);
    mg_balancer_free(&b);
}

TEST(consistent_hashing_moves_about_one_nth_of_keys)
{
    /* 5 peers, then the same without the 3rd (another order, other indexes): only its keys
     * move; then a 6th added: about 1/6 of the keys move, all to it */
    const char *ids5[] = {"h1:8000", "h2:8000", "h3:8000", "h4:8000", "h5:8000"};
    const char *ids4[] = {"h5:8000", "h1:8000", "h4:8000", "h2:8000"};
    const char *ids6[] = {"h1:8000", "h2:8000", "h3:8000", "h4:8000", "h5:8000", "h6:8000"};
    unsigned w[] = {100, 100, 100, 100, 100, 100};
    mg_balancer_t b5, b4, b6;
    mg_balancer_init(&b5, MG_LB_CONSISTENT_HASHING, w, ids5, 5, 10000);
    mg_balancer_init(&b4, MG_LB_CONSISTENT_HASHING, w, ids4, 4, 10000);
    mg_balancer_init(&b6, MG_LB_CONSISTENT_HASHING, w, ids6, 6, 10000);
    int moved_remove = 0, moved_add = 0, wrong = 0;
    for (unsigned k = 0; k < NKEYS; k++) {
        const char *before = ids5[owner(&b5, k)];
        const char *after = ids4[owner(&b4, k)];
        if (strcmp(before, after) != 0) {
            moved_remove++;
            if (strcmp(before, "h3:8000") != 0) wrong++; /* only h3's keys may move */
        }
        const char *added = ids6[owner(&b6, k)];
        if (strcmp(before, added) != 0) {
            moved_add++;
            if (strcmp(added, "h6:8000") != 0) wrong++; /* keys move only to the new one */
        }
    }
    CHECK_INT(wrong, 0);
    /* 1/5 and 1/6 of the keys, give or take ketama's spread */
    CHECK(moved_remove > NKEYS / 5 - NKEYS / 15 && moved_remove < NKEYS / 5 + NKEYS / 15);
    CHECK(moved_add > NKEYS / 6 - NKEYS / 15 && moved_add < NKEYS / 6 + NKEYS / 15);
    mg_balancer_free(&b5);
    mg_balancer_free(&b4);
    mg_balancer_free(&b6);
}

TEST(consistent_hashing_skips_down_and_tried_peers_in_ring_order)
{
    mg_balancer_t b;
    unsigned w[] = {100, 100, 100};
    const char *ids[] = {"a:1", "b:1", "c:1"};
    mg_balancer_init(&b, MG_LB_CONSISTENT_HASHING, w, ids, 3, 997);
    for (unsigned k = 0; k < 200; k++) {
        int first = owner(&b, k);
        b.peers[first].down = true;
        int next = owner(&b, k);
        CHECK(next >= 0 && next != first);
        CHECK_INT(owner(&b, k), next); /* still sticky while the owner is down */
        b.peers[first].down = false;
        CHECK_INT(owner(&b, k), first); /* and back */
    }
    mg_balancer_free(&b);
}

TEST(consistent_hashing_without_a_key_spreads_by_weight)
{
    mg_balancer_t b;
    unsigned w[] = {100, 300};
    const char *ids[] = {"a:1", "b:1"};
    mg_balancer_init(&b, MG_LB_CONSISTENT_HASHING, w, ids, 2, 10000);
    count_picks(&b, 10000);
    CHECK(counts[0] > 1800 && counts[0] < 3200);
    mg_balancer_free(&b);
}

TEST(latency_prefers_the_faster_peer)
{
    mg_balancer_t b;
    unsigned w[] = {100, 100};
    const char *ids[] = {"fast:1", "slow:1"};
    mg_balancer_init(&b, MG_LB_LATENCY, w, ids, 2, 0);
    double now = 1000;
    memset(counts, 0, sizeof(counts));
    for (int k = 0; k < 200; k++, now += 0.01) {
        int i = mg_balancer_pick(&b, false, 0, 0, -1, now);
        counts[i]++;
        mg_balancer_done(&b, i, i == 0 ? 0.002 : 0.200, now);
    }
    CHECK(counts[1] >= 1 && counts[1] <= 3); /* probed, then left alone */
    CHECK(counts[0] >= 197);
    /* the fast one slows down (a peak is taken at once): the other gets the traffic */
    int i = mg_balancer_pick(&b, false, 0, 0, -1, now);
    CHECK_INT(i, 0);
    mg_balancer_done(&b, 0, 0.5, now);
    CHECK_INT(mg_balancer_pick(&b, false, 0, 0, -1, now), 1);
    mg_balancer_free(&b);
}

TEST(latency_of_an_unused_peer_fades_so_it_is_tried_again)
{
    mg_balancer_t b;
    unsigned w[] = {100, 100};
    const char *ids[] = {"fast:1", "slow:1"};
    mg_balancer_init(&b, MG_LB_LATENCY, w, ids, 2, 0);
    double now = 50;
    mg_balancer_done(&b, mg_balancer_pick(&b, false, 0, 0, -1, now), 0.002, now);
    mg_balancer_done(&b, mg_balancer_pick(&b, false, 0, 0, -1, now), 0.400, now);
    /* both measured; keep the fast one fresh for a minute: the slow one fades below it */
    int slow_seen = 0;
    for (int k = 0; k < 6000; k++, now += 0.01) {
        int i = mg_balancer_pick(&b, false, 0, 0, -1, now);
        if (i == 1) slow_seen++;
        mg_balancer_done(&b, i, i == 0 ? 0.002 : 0.400, now);
    }
    CHECK(slow_seen >= 1 && slow_seen <= 20);
    mg_balancer_free(&b);
}

TEST(least_connections_counts_in_flight_and_done_is_safe)
{
    mg_balancer_t b;
    unsigned w[] = {100};
    const char *ids[] = {"a:1"};
    mg_balancer_init(&b, MG_LB_LEAST_CONNECTIONS, w, ids, 1, 0);
    CHECK_INT(mg_balancer_pick(&b, false, 0, 0, -1, 0), 0);
    CHECK_INT(b.peers[0].active, 1);
    mg_balancer_done(&b, 0, -1, 0);
    mg_balancer_done(&b, 0, -1, 0); /* never below zero */
    mg_balancer_done(&b, -1, -1, 0);
    mg_balancer_done(&b, 5, -1, 0);
    CHECK_INT(b.peers[0].active, 0);
    mg_balancer_free(&b);
}

TEST_MAIN()
