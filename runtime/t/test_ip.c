/*
 * test_ip.c — unit tests for CIDR parsing and the range sets: v4, v6, v4-mapped v6 folded to
 * v4, host bits cleared, bad input refused, overlapping and adjacent blocks merged, lookups at
 * every range edge, and a large random set cross-checked against the linear matcher.
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "mg_test.h"
#include "../mg_ip.c"

static mg_ipset_t *set_of(const char *const *cidrs)
{
    mg_ipset_t *s = mg_ipset_new();
    for (; *cidrs; cidrs++)
        CHECK_INT(mg_ipset_add(s, *cidrs, strlen(*cidrs)), MG_OK);
    mg_ipset_build(s);
    return s;
}

static int has(const mg_ipset_t *s, const char *ip)
{
    return mg_ipset_contains(s, ip, strlen(ip));
}

TEST(cidr_parse_clears_host_bits_and_folds_mapped_v4)
{
    mg_cidr_t c;
    CHECK(mg_cidr_parse("10.1.2.3/8", 10, &c));
    CHECK_INT(c.family, AF_INET);
    CHECK_INT(c.prefix, 8);
    CHECK_INT(c.addr[0], 10);
    CHECK_INT(c.addr[1], 0);
    CHECK(mg_cidr_parse("::ffff:192.168.1.1/120", 22, &c));
    CHECK_INT(c.family, AF_INET);
    CHECK_INT(c.prefix, 24);
    CHECK_INT(c.addr[3], 0);
    CHECK(mg_cidr_parse("2001:db8::1", 11, &c));
    CHECK_INT(c.family, AF_INET6);
    CHECK_INT(c.prefix, 128);
    /* parses only the given length: no NUL needed */
    CHECK(mg_cidr_parse("1.2.3.4/16junk", 10, &c));
    CHECK_INT(c.prefix, 16);
}

TEST(cidr_parse_refuses_bad_input)
{
    const char *bad[] = {"",           "1.2.3",      "1.2.3.4/33", "1.2.3.4/",     "/8",
                         "1.2.3.4/-1", "1.2.3.4/ 8", "::1/129",    "1.2.3.4/0008", "example.com",
                         "1.2.3.256",  NULL};
    mg_cidr_t c;
    for (int i = 0; bad[i]; i++)
        CHECK(!mg_cidr_parse(bad[i], strlen(bad[i]), &c));
}

TEST(set_lookups_at_range_edges)
{
    const char *cidrs[] = {"10.0.0.0/8", "192.168.1.7", "2001:db8::/32", NULL};
    mg_ipset_t *s = set_of(cidrs);
    CHECK_INT(has(s, "10.0.0.0"), 1);
    CHECK_INT(has(s, "10.255.255.255"), 1);
    CHECK_INT(has(s, "9.255.255.255"), 0);
    CHECK_INT(has(s, "11.0.0.0"), 0);
    CHECK_INT(has(s, "192.168.1.7"), 1);
    CHECK_INT(has(s, "192.168.1.6"), 0);
    CHECK_INT(has(s, "192.168.1.8"), 0);
    CHECK_INT(has(s, "::ffff:10.1.1.1"), 1); /* a dual-stack socket's v4 client */
    CHECK_INT(has(s, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"), 1);
    CHECK_INT(has(s, "2001:db9::"), 0);
    CHECK_INT(has(s, "::"), 0);
    CHECK_INT(has(s, "not-an-ip"), -1);
    CHECK_INT(has(s, "10.0.0.0/8"), -1); /* an address, not a block */
    mg_ipset_free(s);
}

TEST(set_merges_overlapping_and_adjacent_blocks)
{
    const char *cidrs[] = {"10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25",
                           "10.0.3.0/24", "10.0.0.5",    NULL};
    mg_ipset_t *s = set_of(cidrs);
    CHECK_INT(mg_ipset_size(s), 2); /* 10.0.0.0-10.0.1.255 and 10.0.3.0/24 */
    CHECK_INT(has(s, "10.0.1.255"), 1);
    CHECK_INT(has(s, "10.0.2.0"), 0);
    CHECK_INT(has(s, "10.0.3.1"), 1);
    mg_ipset_free(s);
}

TEST(empty_set_and_whole_space)
{
    const char *none[] = {NULL};
    mg_ipset_t *s = set_of(none);
    CHECK_INT(has(s, "1.2.3.4"), 0);
    mg_ipset_free(s);
    const char *all[] = {"0.0.0.0/0", "::/0", NULL};
    s = set_of(all);
    CHECK_INT(has(s, "255.255.255.255"), 1);
    CHECK_INT(has(s, "ffff::1"), 1);
    CHECK_INT(mg_ipset_size(s), 2); /* one range per family: they never merge */
    mg_ipset_free(s);
}

/* an IPv6 block covers IPv6 clients only, even one spanning ::ffff:0:0/96 (as in Kong) */
TEST(ipv6_blocks_never_cover_ipv4_clients)
{
    const char *v6all[] = {"::/0", NULL};
    mg_ipset_t *s = set_of(v6all);
    CHECK_INT(has(s, "10.1.2.3"), 0);
    CHECK_INT(has(s, "::ffff:10.1.2.3"), 0); /* folded to IPv4 first */
    CHECK_INT(has(s, "2001:db8::1"), 1);
    CHECK_INT(has(s, "::"), 1);
    mg_ipset_free(s);
    const char *v4all[] = {"0.0.0.0/0", NULL};
    s = set_of(v4all);
    CHECK_INT(has(s, "::ffff:0.0.0.1"), 1);
    CHECK_INT(has(s, "::1"), 0);
    CHECK_INT(has(s, "::ffff:0:1"), 1); /* the same address as ::ffff:0.0.0.1 */
    mg_ipset_free(s);
    /* the last v4 address and the first v6 one are not adjacent */
    const char *edges[] = {"255.255.255.255", "::", NULL};
    s = set_of(edges);
    CHECK_INT(mg_ipset_size(s), 2);
    mg_ipset_free(s);
}

TEST(sockaddr_lookup)
{
    const char *cidrs[] = {"127.0.0.0/8", "::1", NULL};
    mg_ipset_t *s = set_of(cidrs);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    CHECK(mg_ipset_contains_sa(s, (struct sockaddr *)&sin));
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "::ffff:127.0.0.2", &sin6.sin6_addr);
    CHECK(mg_ipset_contains_sa(s, (struct sockaddr *)&sin6));
    inet_pton(AF_INET6, "::2", &sin6.sin6_addr);
    CHECK(!mg_ipset_contains_sa(s, (struct sockaddr *)&sin6));
    struct sockaddr unix_sa = {.sa_family = AF_UNIX};
    CHECK(!mg_ipset_contains_sa(s, &unix_sa));
    mg_ipset_free(s);
}

/* 2,000 random v4 blocks: the set agrees with the linear matcher on 20,000 random addresses */
TEST(random_set_agrees_with_linear_scan)
{
    enum { NB = 2000, NQ = 20000 };
    static mg_cidr_t list[NB];
    mg_ipset_t *s = mg_ipset_new();
    srand(7);
    char buf[64];
    for (int i = 0; i < NB; i++) {
        unsigned a = (unsigned)rand() & 0xffffffu; /* 10.x.y.z: dense enough to overlap */
        snprintf(buf, sizeof(buf), "10.%u.%u.%u/%d", a >> 16, (a >> 8) & 255, a & 255,
                 12 + rand() % 21);
        CHECK(mg_cidr_parse(buf, strlen(buf), &list[i]));
        CHECK_INT(mg_ipset_add(s, buf, strlen(buf)), MG_OK);
    }
    mg_ipset_build(s);
    int disagree = 0;
    for (int q = 0; q < NQ; q++) {
        unsigned a = (unsigned)rand() & 0xffffffu;
        struct sockaddr_in sin = {.sin_family = AF_INET};
        sin.sin_addr.s_addr = htonl(0x0a000000u | a);
        disagree += mg_ipset_contains_sa(s, (struct sockaddr *)&sin) !=
                    mg_cidr_match(list, NB, (struct sockaddr *)&sin);
    }
    CHECK_INT(disagree, 0);
    mg_ipset_free(s);
}

TEST(ipset_add_cidr_takes_parsed_blocks)
{
    static const char *const blocks[] = {"10.0.0.0/8", "2001:db8::/32", "::ffff:192.0.2.1"};
    mg_ipset_t *s = mg_ipset_new();
    for (size_t i = 0; i < 3; i++) {
        mg_cidr_t c;
        CHECK(mg_cidr_parse(blocks[i], strlen(blocks[i]), &c));
        CHECK_INT(mg_ipset_add_cidr(s, &c), MG_OK);
    }
    mg_ipset_build(s);
    CHECK_INT(has(s, "10.255.0.1"), 1);
    CHECK_INT(has(s, "11.0.0.1"), 0);
    CHECK_INT(has(s, "2001:db8:ffff::1"), 1);
    CHECK_INT(has(s, "192.0.2.1"), 1); /* the mapped block was folded to IPv4 */
    CHECK_INT(has(s, "192.0.2.2"), 0);
    mg_ipset_free(s);
}

TEST_MAIN()
