/*
 * test_dns.c — unit tests for the resolver's pure logic: how long an answer is cached (TTL
 * kept within bounds, dns_valid_ttl overriding), answers compared as sorted distinct address
 * sets, addresses keeping their slot across answers (so health and keepalive pools follow the
 * address), and hosts-file look-ups.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "mg_test.h"
#include "../mg_dns.c"

static struct sockaddr_storage v4(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    in->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &in->sin_addr);
    return ss;
}

static struct sockaddr_storage v6(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    in6->sin6_family = AF_INET6;
    inet_pton(AF_INET6, ip, &in6->sin6_addr);
    return ss;
}

TEST(ttl_is_clamped_and_overridden)
{
    CHECK_INT(mg_dns_ttl(0, 0), 1); /* never a query per request */
    CHECK_INT(mg_dns_ttl(1, 0), 1);
    CHECK_INT(mg_dns_ttl(300, 0), 300);
    CHECK_INT(mg_dns_ttl(86400, 0), MG_DNS_MAX_TTL); /* re-resolved at least hourly */
    CHECK_INT(mg_dns_ttl(300, 5), 5);                /* dns_valid_ttl wins */
    CHECK_INT(mg_dns_ttl(0, 7200), 7200);
}

TEST(answers_are_sorted_distinct_sets)
{
    struct sockaddr_storage a[5] = {v4("10.0.0.3"), v6("::1"), v4("10.0.0.1"), v4("10.0.0.3"),
                                    v4("10.0.0.2")};
    CHECK_INT(mg_dns_normalise(a, 5), 4);
    CHECK(mg_dns_same_addr(&a[0], &(struct sockaddr_storage){0}) == false);
    struct sockaddr_storage w1 = v4("10.0.0.1"), w2 = v4("10.0.0.2"), w3 = v4("10.0.0.3"),
                            w6 = v6("::1");
    CHECK(mg_dns_same_addr(&a[0], &w1));
    CHECK(mg_dns_same_addr(&a[1], &w2));
    CHECK(mg_dns_same_addr(&a[2], &w3));
    CHECK(mg_dns_same_addr(&a[3], &w6));
    CHECK_INT(mg_dns_normalise(a, 0), 0);
    /* ports do not matter: an answer's addresses have none */
    struct sockaddr_storage p = v4("10.0.0.1");
    ((struct sockaddr_in *)&p)->sin_port = htons(80);
    CHECK(mg_dns_same_addr(&p, &w1));
}

TEST(addresses_keep_their_slots)
{
    struct sockaddr_storage keys[4];
    memset(keys, 0, sizeof(keys));
    unsigned out[4];
    struct sockaddr_storage first[2] = {v4("10.0.0.1"), v4("10.0.0.2")};
    CHECK_INT(mg_dns_assign(keys, 4, first, 2, out), 0x3); /* two fresh slots */
    CHECK_INT(out[0], 0);
    CHECK_INT(out[1], 1);
    /* .2 stays where it was, .3 takes a free slot, .1's slot is left alone */
    struct sockaddr_storage second[2] = {v4("10.0.0.2"), v4("10.0.0.3")};
    CHECK_INT(mg_dns_assign(keys, 4, second, 2, out), 0x4);
    CHECK_INT(out[0], 1);
    CHECK_INT(out[1], 2);
    /* no free slot left: a new address takes the slot of one gone from the answer */
    struct sockaddr_storage third[4] = {v4("10.0.0.2"), v4("10.0.0.3"), v4("10.0.0.4"),
                                        v4("10.0.0.5")};
    uint64_t changed = mg_dns_assign(keys, 4, third, 4, out);
    CHECK_INT(out[0], 1);
    CHECK_INT(out[1], 2);
    CHECK_INT(out[2], 3); /* the free one first */
    CHECK_INT(out[3], 0); /* then .1's */
    CHECK_INT(changed, 0x9);
    CHECK(mg_dns_same_addr(&keys[0], &third[3]));
    /* the same answer again changes nothing */
    CHECK_INT(mg_dns_assign(keys, 4, third, 4, out), 0);
}

TEST(hosts_file_lookups)
{
    const char *h = "# a comment 10.9.9.9 commented.test\n"
                    "127.0.0.1\tlocalhost\n"
                    "10.0.0.7   svc.test  Alias.Test # trailing comment\n"
                    "::1        svc6.test svc.test\n"
                    "bogus      broken.test\n"
                    "10.0.0.8 svc.test\n";
    struct sockaddr_storage ss;
    socklen_t len = 0;
    CHECK(mg_dns_hosts_find(h, strlen(h), "svc.test", AF_INET, &ss, &len));
    struct sockaddr_storage want = v4("10.0.0.7");
    CHECK(mg_dns_same_addr(&ss, &want)); /* the first line wins */
    CHECK_INT(len, sizeof(struct sockaddr_in));
    CHECK(mg_dns_hosts_find(h, strlen(h), "alias.test", AF_INET, &ss, &len));
    CHECK(mg_dns_hosts_find(h, strlen(h), "svc.test", AF_INET6, &ss, &len));
    want = v6("::1");
    CHECK(mg_dns_same_addr(&ss, &want));
    CHECK(!mg_dns_hosts_find(h, strlen(h), "svc6.test", AF_INET, &ss, &len));
    CHECK(!mg_dns_hosts_find(h, strlen(h), "commented.test", AF_INET, &ss, &len));
    CHECK(!mg_dns_hosts_find(h, strlen(h), "broken.test", AF_INET, &ss, &len));
    CHECK(!mg_dns_hosts_find(h, strlen(h), "svc.tes", AF_INET, &ss, &len));
    CHECK(!mg_dns_hosts_find(h, strlen(h), "trailing", AF_INET, &ss, &len));
    /* no newline at the end */
    const char *t = "10.1.1.1 last.test";
    CHECK(mg_dns_hosts_find(t, strlen(t), "last.test", AF_INET, &ss, &len));
}

static void noop_cb(mg_dns_waiter_t *w)
{
    (void)w;
}

/* Cosockets' names: made at the first look-up, shared whatever the case, answered by the hosts
 * file without a query; when the table is full the least recently used entry with nothing in
 * flight is reused; none at all gives -1. No channel is opened (nothing is queried here). */
TEST(run_time_names)
{
    static char hosts[] = "127.0.0.9 h.test\n";
    mg_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.dns_types[0] = MG_DNS_A;
    cfg.ndns_types = 1;
    cfg.dns_hosts = hosts;
    cfg.dns_hosts_len = strlen(hosts);
    mg_worker.loop = ev_default_loop(0);
    CHECK_INT(mg_dns_init(&cfg, NULL), MG_OK);
    CHECK(!have_channel);

    int h = mg_dns_name("h.test");
    CHECK(h >= 0);
    CHECK_INT(mg_dns_name("H.Test"), h);
    CHECK_INT(mg_dns_state((unsigned)h), MG_DNS_OK);
    const mg_dns_addrs_t *a = NULL;
    CHECK_INT(mg_dns_resolve((unsigned)h, false, &a), MG_OK);
    struct sockaddr_storage want = v4("127.0.0.9");
    CHECK(a && a->naddrs == 1 && mg_dns_same_addr(&a->addrs[0], &want));
    CHECK(!have_channel); /* the hosts file answered: no resolver was needed */
    CHECK(strcmp(mg_dns_failure((unsigned)h), "no address") == 0);

    char name[32];
    for (int i = 1; i < DYN_MAX; i++) {
        snprintf(name, sizeof(name), "n%d.test", i);
        CHECK(mg_dns_name(name) == h + i);
    }
    CHECK_INT(nentries, DYN_MAX);
    for (size_t i = 0; i < nentries; i++)
        entries[i].last_used = 100.0 + (double)i;
    entries[5].last_used = 1.0; /* the oldest, but waited for */
    entries[7].last_used = 2.0; /* then this one, with a query in flight */
    entries[9].last_used = 3.0; /* the one to reuse */
    mg_dns_waiter_t w = {.cb = noop_cb};
    mg_dns_wait(5, &w);
    entries[7].pending = 1;
    int x = mg_dns_name("extra.test");
    CHECK_INT(x, 9);
    CHECK(strcmp(entries[9].name, "extra.test") == 0);
    CHECK_INT(mg_dns_state(9), MG_DNS_NONE);
    /* n9.test, pushed out, comes back in the next least recently used entry: h.test's */
    CHECK_INT(mg_dns_name("n9.test"), h);
    CHECK_INT(mg_dns_state((unsigned)h), MG_DNS_NONE);

    /* every entry busy: no name can be had */
    for (size_t i = 0; i < nentries; i++)
        entries[i].pending = 1;
    CHECK_INT(mg_dns_name("more.test"), -1);
    for (size_t i = 0; i < nentries; i++)
        entries[i].pending = 0;

    /* stopping unlinks what still waits: its later cancel touches no freed entry */
    mg_dns_stop();
    CHECK(w.prev == NULL && w.next == NULL);
    mg_dns_cancel(&w);
    CHECK_INT(mg_dns_name("after.stop"), -1);
}

TEST_MAIN()
