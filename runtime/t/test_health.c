/*
 * test_health.c — unit tests for the passive health counters (Kong's lua-resty-healthcheck
 * rules): thresholds per failure kind, a threshold of 0 counting nothing, a success clearing
 * the failures and a failure the successes, statuses in neither list ignored, the way back to
 * healthy, a tcp probe's success, and the shared zone (made per configuration, transitions bump
 * the generation, one worker claims a target's probe per interval).
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_test.h"
#include "../mg_health.c"

static int ok_statuses[] = {200, 302};
static int bad_statuses[] = {500, 503};

static mg_hc_side_t healthy_side(unsigned successes)
{
    mg_hc_side_t s = {.successes = successes, .http_statuses = ok_statuses, .nhttp_statuses = 2};
    return s;
}

static mg_hc_side_t unhealthy_side(unsigned http, unsigned tcp, unsigned timeouts)
{
    mg_hc_side_t s = {.http_failures = http,
                      .tcp_failures = tcp,
                      .timeouts = timeouts,
                      .http_statuses = bad_statuses,
                      .nhttp_statuses = 2};
    return s;
}

TEST(http_failures_reach_the_threshold)
{
    mg_hc_counters_t c = {0};
    mg_hc_side_t h = healthy_side(0), u = unhealthy_side(3, 0, 0);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_STATUS, 500), MG_HC_SAME);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_STATUS, 503), MG_HC_SAME);
    CHECK_INT(c.http_failures, 2);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_STATUS, 500), MG_HC_NOW_UNHEALTHY);
    CHECK_INT(c.unhealthy, 1);
    CHECK_INT(c.http_failures, 0); /* reset on the transition */
    /* fully unhealthy: more failures change nothing */
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_STATUS, 500), MG_HC_SAME);
    CHECK_INT(c.http_failures, 0);
}

TEST(statuses_in_neither_list_and_disabled_counts_are_ignored)
{
    mg_hc_counters_t c = {0};
    mg_hc_side_t h = healthy_side(0), u = unhealthy_side(1, 0, 0);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_STATUS, 404), MG_HC_SAME);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_TCP_FAILURE, 0), MG_HC_SAME);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_TIMEOUT, 0), MG_HC_SAME);
    CHECK_INT(c.unhealthy, 0);
    CHECK_INT(c.tcp_failures + c.timeouts + c.http_failures, 0);
    mg_hc_side_t off = unhealthy_side(0, 0, 0);
    for (int i = 0; i < 100; i++)
        CHECK_INT(mg_health_count(&c, &h, &off, MG_HC_EV_STATUS, 500), MG_HC_SAME);
    CHECK_INT(c.unhealthy, 0);
}

TEST(tcp_failures_and_timeouts_have_their_own_thresholds)
{
    mg_hc_counters_t c = {0};
    mg_hc_side_t h = healthy_side(0), u = unhealthy_side(0, 2, 3);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_TIMEOUT, 0), MG_HC_SAME);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_TIMEOUT, 0), MG_HC_SAME);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_TCP_FAILURE, 0), MG_HC_SAME);
    CHECK_INT(c.timeouts, 2);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_TCP_FAILURE, 0), MG_HC_NOW_UNHEALTHY);
    memset(&c, 0, sizeof(c));
    for (int i = 0; i < 2; i++)
        CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_TIMEOUT, 0), MG_HC_SAME);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_TIMEOUT, 0), MG_HC_NOW_UNHEALTHY);
}

TEST(success_clears_failures_only_when_successes_are_counted)
{
    /* Kong: with healthy.successes 0 a success counts nothing, so failures accumulate */
    mg_hc_counters_t c = {0};
    mg_hc_side_t h0 = healthy_side(0), u = unhealthy_side(2, 0, 0);
    CHECK_INT(mg_health_count(&c, &h0, &u, MG_HC_EV_STATUS, 500), MG_HC_SAME);
    CHECK_INT(mg_health_count(&c, &h0, &u, MG_HC_EV_STATUS, 200), MG_HC_SAME);
    CHECK_INT(mg_health_count(&c, &h0, &u, MG_HC_EV_STATUS, 500), MG_HC_NOW_UNHEALTHY);
    /* with successes counted, a success in between clears the failures */
    memset(&c, 0, sizeof(c));
    mg_hc_side_t h2 = healthy_side(2);
    CHECK_INT(mg_health_count(&c, &h2, &u, MG_HC_EV_STATUS, 500), MG_HC_SAME);
    CHECK_INT(mg_health_count(&c, &h2, &u, MG_HC_EV_STATUS, 200), MG_HC_SAME);
    CHECK_INT(c.http_failures, 0);
    CHECK_INT(c.successes, 1);
    CHECK_INT(mg_health_count(&c, &h2, &u, MG_HC_EV_STATUS, 500), MG_HC_SAME);
    CHECK_INT(c.successes, 0); /* and a failure clears the successes */
    CHECK_INT(c.unhealthy, 0);
    /* fully healthy: a success counts nothing */
    memset(&c, 0, sizeof(c));
    CHECK_INT(mg_health_count(&c, &h2, &u, MG_HC_EV_STATUS, 200), MG_HC_SAME);
    CHECK_INT(c.successes, 0);
}

TEST(successes_bring_a_target_back)
{
    mg_hc_counters_t c = {.unhealthy = 1};
    mg_hc_side_t h = healthy_side(3), u = unhealthy_side(1, 1, 1);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_STATUS, 200), MG_HC_SAME);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_STATUS, 302), MG_HC_SAME);
    /* a failure in between starts the run again, the target stays unhealthy */
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_TIMEOUT, 0), MG_HC_SAME);
    CHECK_INT(c.unhealthy, 1);
    CHECK_INT(c.successes, 0);
    for (int i = 0; i < 2; i++)
        CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_STATUS, 200), MG_HC_SAME);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_STATUS, 200), MG_HC_NOW_HEALTHY);
    CHECK_INT(c.unhealthy, 0);
    CHECK_INT(c.successes, 0);
}

TEST(zone_tracks_targets_and_generation)
{
    mg_target_t targets[2] = {{.target = "a:1", .index = 0, .slot = 0, .dns = -1},
                              {.target = "b:1", .index = 1, .slot = 1, .dns = -1}};
    mg_target_t *tp[2] = {&targets[0], &targets[1]};
    mg_upstream_t up = {.name = "pool", .targets = targets, .ntargets = 2};
    up.healthchecks.passive.healthy = healthy_side(0);
    up.healthchecks.passive.unhealthy = unhealthy_side(2, 0, 0);
    up.healthchecks.passive_on = true;
    mg_config_t cfg = {
        .targets = tp, .ntargets = 2, .ntarget_slots = 2, .upstreams = &up, .nupstreams = 1};
    CHECK_INT(mg_health_create(&cfg), MG_OK);
    CHECK(cfg.health != NULL);
    CHECK(mg_health_generation(&cfg) == 0);
    mg_health_report(&cfg, &up, &targets[1], MG_HC_EV_STATUS, 500);
    CHECK(mg_health_is_healthy(&cfg, 1));
    mg_health_report(&cfg, &up, &targets[1], MG_HC_EV_STATUS, 500);
    CHECK(!mg_health_is_healthy(&cfg, 1));
    CHECK(mg_health_is_healthy(&cfg, 0));
    CHECK(mg_health_generation(&cfg) == 1);
    CHECK(mg_health_is_healthy(&cfg, 7)); /* out of range: no opinion */
    mg_health_destroy(&cfg);
    CHECK(cfg.health == NULL);
    CHECK(mg_health_generation(&cfg) == 0);
}

TEST(tcp_probe_success_counts_as_a_success)
{
    mg_hc_counters_t c = {.unhealthy = 1};
    mg_hc_side_t h = healthy_side(2), u = unhealthy_side(0, 1, 0);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_SUCCESS, 0), MG_HC_SAME);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_SUCCESS, 0), MG_HC_NOW_HEALTHY);
    CHECK_INT(mg_health_count(&c, &h, &u, MG_HC_EV_TCP_FAILURE, 0), MG_HC_NOW_UNHEALTHY);
}

TEST(one_claim_per_interval_by_health)
{
    mg_target_t targets[1] = {{.target = "a:1", .index = 0, .dns = -1}};
    mg_target_t *tp[1] = {&targets[0]};
    mg_upstream_t up = {.name = "pool", .targets = targets, .ntargets = 1};
    up.healthchecks.passive.healthy = healthy_side(0);
    up.healthchecks.passive.unhealthy = unhealthy_side(1, 0, 0);
    up.healthchecks.passive_on = true;
    mg_config_t cfg = {
        .targets = tp, .ntargets = 1, .ntarget_slots = 1, .upstreams = &up, .nupstreams = 1};
    CHECK_INT(mg_health_create(&cfg), MG_OK);
    /* healthy: every 10, unhealthy: every 3 */
    CHECK(mg_health_claim_probe(&cfg, 0, 100, 10, 3));
    CHECK(!mg_health_claim_probe(&cfg, 0, 100, 10, 3)); /* the other worker loses */
    CHECK(!mg_health_claim_probe(&cfg, 0, 109, 10, 3));
    CHECK(mg_health_claim_probe(&cfg, 0, 110, 10, 3));
    mg_health_report(&cfg, &up, &targets[0], MG_HC_EV_STATUS, 500);
    CHECK(!mg_health_is_healthy(&cfg, 0));
    CHECK(mg_health_claim_probe(&cfg, 0, 120, 10, 3));
    CHECK(mg_health_claim_probe(&cfg, 0, 123, 10, 3));  /* unhealthy: the shorter interval */
    CHECK(!mg_health_claim_probe(&cfg, 0, 200, 10, 0)); /* 0: no probes while unhealthy */
    CHECK(!mg_health_claim_probe(&cfg, 1, 200, 10, 3)); /* no such target */
    mg_health_destroy(&cfg);
}

static struct sockaddr_storage v4(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    in->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &in->sin_addr);
    return ss;
}

TEST(health_follows_the_address_of_a_named_target)
{
    /* target 0 is an address (one slot), target 1 a name (MG_DNS_MAX_ADDRS slots after it) */
    mg_target_t targets[2] = {{.target = "127.0.0.1:80", .index = 0, .slot = 0, .dns = -1},
                              {.target = "svc.test:80", .index = 1, .slot = 1, .dns = 0}};
    targets[0].addr = v4("127.0.0.1");
    mg_target_t *tp[2] = {&targets[0], &targets[1]};
    mg_upstream_t up = {.name = "pool", .targets = targets, .ntargets = 2};
    up.healthchecks.passive.healthy = healthy_side(1);
    up.healthchecks.passive.unhealthy = unhealthy_side(1, 0, 0);
    up.healthchecks.passive_on = true;
    mg_config_t cfg = {.targets = tp,
                       .ntargets = 2,
                       .ntarget_slots = 1 + MG_DNS_MAX_ADDRS,
                       .upstreams = &up,
                       .nupstreams = 1};
    CHECK_INT(mg_health_create(&cfg), MG_OK);
    struct sockaddr_storage got;
    CHECK(mg_health_slot_addr(&cfg, 0, &got));  /* an address target's slot is keyed at once */
    CHECK(!mg_health_slot_addr(&cfg, 1, &got)); /* a name's, once it has an answer */

    struct sockaddr_storage first[2] = {v4("10.0.0.1"), v4("10.0.0.2")};
    unsigned slots[2];
    mg_health_assign(&cfg, &targets[1], first, 2, slots);
    CHECK_INT(slots[0], 1);
    CHECK_INT(slots[1], 2);
    mg_health_report_at(&cfg, &up, &targets[1], slots[1], MG_HC_EV_STATUS, 500);
    CHECK(!mg_health_is_healthy(&cfg, 2)); /* 10.0.0.2 is down, 10.0.0.1 is not */
    CHECK(mg_health_is_healthy(&cfg, 1));

    /* a new answer: 10.0.0.2 keeps its slot and its health, 10.0.0.1's slot is freed */
    struct sockaddr_storage second[2] = {v4("10.0.0.2"), v4("10.0.0.3")};
    mg_health_assign(&cfg, &targets[1], second, 2, slots);
    CHECK_INT(slots[0], 2);
    CHECK(!mg_health_is_healthy(&cfg, slots[0]));
    CHECK(mg_health_is_healthy(&cfg, slots[1])); /* a new address starts healthy */
    CHECK(slots[1] != 2);
    CHECK(mg_health_slot_addr(&cfg, slots[1], &got));
    CHECK(mg_dns_same_addr(&got, &second[1]));
    for (unsigned k = 1; k <= MG_DNS_MAX_ADDRS; k++) { /* only the answer's slots are keyed */
        bool keyed = mg_health_slot_addr(&cfg, k, &got);
        CHECK(keyed == (k == slots[0] || k == slots[1]));
    }
    /* an unhealthy address leaving the answer bumps the generation (the marks change) */
    uint64_t g = mg_health_generation(&cfg);
    struct sockaddr_storage third[1] = {v4("10.0.0.3")};
    mg_health_assign(&cfg, &targets[1], third, 1, slots);
    CHECK(mg_health_generation(&cfg) > g);
    CHECK(mg_health_is_healthy(&cfg, 2));
    mg_health_destroy(&cfg);
}

TEST_MAIN()
