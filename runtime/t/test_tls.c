/*
 * test_tls.c — unit tests for mg_tls.c's pure parts: the SNI name rules (lower-casing,
 * trailing dot, wildcard placement, IP addresses refused) and the lookup order (exact, then
 * leftmost wildcard over one label, then rightmost wildcard); and the session-ticket key
 * schedule (stable per period, different across periods and secrets).
 */
#include <string.h>

#include "mg_test.h"
#include "../mg_tls.c"

static const char *norm(const char *in, char *buf)
{
    strcpy(buf, in);
    const char *why = check_sni(buf);
    return why ? NULL : buf;
}

TEST(sni_names)
{
    char b[300];
    CHECK_STR(norm("Example.COM", b), "example.com");
    CHECK_STR(norm("example.com.", b), "example.com");
    CHECK_STR(norm("*.example.com", b), "*.example.com");
    CHECK_STR(norm("example.*", b), "example.*");
    CHECK(norm("a.*.example.com", b) == NULL);
    CHECK(norm("*example.com", b) == NULL);
    CHECK(norm("*.*.com", b) == NULL);
    CHECK(norm("10.0.0.1", b) == NULL);
    CHECK(norm("::1", b) == NULL);
    CHECK(norm("a b.com", b) == NULL);
    CHECK(norm("a..com", b) == NULL);
    CHECK(norm("", b) == NULL);
    CHECK(norm("*", b) == NULL);
}

TEST(sni_lookup_order)
{
    mg_tls_t t = {0};
    SSL_CTX *ctxs[4] = {(SSL_CTX *)0x10, (SSL_CTX *)0x20, (SSL_CTX *)0x30, (SSL_CTX *)0x40};
    t.ctxs = ctxs;
    t.nctxs = 4;
    sni_t s[] = {
        {"a.example.com", 0, NULL},
        {"*.example.com", 1, NULL},
        {"example.*", 2, NULL},
        {"*.b.example.com", 3, NULL},
    };
    qsort(s, 4, sizeof(sni_t), sni_cmp);
    t.snis = s;
    t.nsnis = 4;
    CHECK(find_ctx(&t, "a.example.com") == ctxs[0]);
    CHECK(find_ctx(&t, "A.Example.Com.") == ctxs[0]);
    CHECK(find_ctx(&t, "x.example.com") == ctxs[1]);
    CHECK(find_ctx(&t, "x.b.example.com") == ctxs[3]);
    CHECK(find_ctx(&t, "x.y.example.com") == NULL); /* one label only */
    CHECK(find_ctx(&t, "example.org") == ctxs[2]);
    CHECK(find_ctx(&t, "example") == NULL);
    CHECK(find_ctx(&t, "") == NULL);
    CHECK(find_ctx(&t, "other.org") == NULL);
}

TEST(ticket_keys)
{
    mg_tls_t a = {0}, b = {0};
    memset(a.secret, 1, sizeof(a.secret));
    memset(b.secret, 2, sizeof(b.secret));
    tkey_t k1, k2, k3, k4;
    derive(&a, 100, &k1);
    derive(&a, 100, &k2);
    derive(&a, 101, &k3);
    derive(&b, 100, &k4);
    CHECK(memcmp(&k1, &k2, sizeof(k1)) == 0);
    CHECK(memcmp(k1.name, k3.name, 16) != 0 && memcmp(k1.aes, k3.aes, 32) != 0);
    CHECK(memcmp(k1.name, k4.name, 16) != 0 && memcmp(k1.mac, k4.mac, 32) != 0);
    CHECK(memcmp(k1.aes, k1.mac, 32) != 0);
    /* the cache hands back the same keys */
    CHECK(memcmp(ticket_key(&a, 100)->aes, k1.aes, 32) == 0);
    CHECK(memcmp(ticket_key(&a, 101)->aes, k3.aes, 32) == 0);
    CHECK(memcmp(ticket_key(&a, 100)->aes, k1.aes, 32) == 0);
}

TEST_MAIN()
