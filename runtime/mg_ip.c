/*
 * mg_ip.c — IP address and CIDR parsing, and the range set behind ip-restriction. In a set,
 * every address is a 17-byte key: the family (4 or 6) then the address in network order (IPv4
 * as IPv4-mapped IPv6), so one byte-wise comparison orders both families, a v4 client on a
 * dual-stack socket matches a v4 block, and an IPv6 block never covers IPv4 clients (`::/0`
 * means every IPv6 address, as in Kong). A set is a sorted array of disjoint [lo, hi] ranges;
 * a lookup is a binary search.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "mg_core.h"
#include "mg_ip.h"

static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

bool mg_cidr_parse(const char *s, size_t len, mg_cidr_t *c)
{
    char buf[INET6_ADDRSTRLEN];
    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t)(slash - s) : len;
    if (alen == 0 || alen >= sizeof(buf)) return false;
    memcpy(buf, s, alen);
    buf[alen] = '\0';
    memset(c, 0, sizeof(*c));
    if (inet_pton(AF_INET, buf, c->addr) == 1)
        c->family = AF_INET;
    else if (inet_pton(AF_INET6, buf, c->addr) == 1)
        c->family = AF_INET6;
    else
        return false;
    int bits = c->family == AF_INET ? 32 : 128;
    int prefix = bits;
    if (slash) {
        const char *d = slash + 1, *end = s + len;
        if (d == end || end - d > 3) return false;
        prefix = 0;
        for (; d < end; d++) {
            if (*d < '0' || *d > '9') return false;
            prefix = prefix * 10 + (*d - '0');
        }
        if (prefix > bits) return false;
    }
    c->prefix = prefix;
    if (c->family == AF_INET6 && c->prefix >= 96 && memcmp(c->addr, v4_mapped, 12) == 0) {
        memmove(c->addr, c->addr + 12, 4);
        memset(c->addr + 4, 0, 12);
        c->family = AF_INET;
        c->prefix -= 96;
    }
    for (int i = c->prefix; i < bits; i++)
        c->addr[i / 8] &= (uint8_t) ~(0x80 >> (i % 8));
    return true;
}

/* The socket address as (family, bytes), a v4-mapped v6 address folded to v4. */
static int sa_bytes(const struct sockaddr *sa, uint8_t a[16])
{
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in sin;
        memcpy(&sin, sa, sizeof(sin));
        memcpy(a, &sin.sin_addr, 4);
        return AF_INET;
    }
    if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, sa, sizeof(sin6));
        memcpy(a, &sin6.sin6_addr, 16);
        if (memcmp(a, v4_mapped, 12) == 0) { /* a dual-stack socket's IPv4 client */
            memmove(a, a + 12, 4);
            return AF_INET;
        }
        return AF_INET6;
    }
    return 0;
}

bool mg_cidr_match(const mg_cidr_t *list, size_t n, const struct sockaddr *sa)
{
    uint8_t a[16];
    int family = sa_bytes(sa, a);
    if (family == 0) return false;
    for (size_t i = 0; i < n; i++) {
        const mg_cidr_t *c = &list[i];
        int full = c->prefix / 8, rest = c->prefix % 8;
        if (c->family != family || memcmp(a, c->addr, (size_t)full) != 0) continue;
        if (rest == 0 || ((a[full] ^ c->addr[full]) & (uint8_t)(0xff << (8 - rest))) == 0)
            return true;
    }
    return false;
}

/* ---- range sets ---------------------------------------------------------------------- */

#define KEY_LEN 17 /* family byte + 16 address bytes */

typedef struct {
    uint8_t lo[KEY_LEN], hi[KEY_LEN];
} ip_range_t;

struct mg_ipset_s {
    ip_range_t *ranges;
    size_t n, cap;
};

/* A block as the range of keys it covers. */
static void cidr_range(const mg_cidr_t *c, ip_range_t *r)
{
    int prefix = c->prefix;
    if (c->family == AF_INET) {
        r->lo[0] = 4;
        memcpy(r->lo + 1, v4_mapped, 12);
        memcpy(r->lo + 13, c->addr, 4);
        prefix += 96;
    } else {
        r->lo[0] = 6;
        memcpy(r->lo + 1, c->addr, 16);
    }
    memcpy(r->hi, r->lo, KEY_LEN);
    for (int i = prefix; i < 128; i++)
        r->hi[1 + i / 8] |= (uint8_t)(0x80 >> (i % 8));
}

mg_ipset_t *mg_ipset_new(void)
{
    return calloc(1, sizeof(mg_ipset_t));
}

void mg_ipset_free(mg_ipset_t *set)
{
    if (!set) return;
    free(set->ranges);
    free(set);
}

int mg_ipset_add(mg_ipset_t *set, const char *s, size_t len)
{
    mg_cidr_t c;
    if (!mg_cidr_parse(s, len, &c)) return MG_ERROR;
    return mg_ipset_add_cidr(set, &c);
}

int mg_ipset_add_cidr(mg_ipset_t *set, const mg_cidr_t *c)
{
    if (set->n == set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 8;
        ip_range_t *r = realloc(set->ranges, cap * sizeof(*r));
        if (!r) return MG_ERROR;
        set->ranges = r;
        set->cap = cap;
    }
    cidr_range(c, &set->ranges[set->n++]);
    return MG_OK;
}

static int range_cmp(const void *a, const void *b)
{
    return memcmp(((const ip_range_t *)a)->lo, ((const ip_range_t *)b)->lo, KEY_LEN);
}

/* a + 1 == b, as big-endian numbers (adjacent ranges merge too; the family byte keeps the
 * families apart: the last v4 key plus one is a family-5 key, which no range has) */
static bool next_to(const uint8_t a[KEY_LEN], const uint8_t b[KEY_LEN])
{
    uint8_t t[KEY_LEN];
    memcpy(t, a, KEY_LEN);
    for (int i = KEY_LEN - 1; i >= 0; i--)
        if (++t[i] != 0) break;
    return memcmp(t, b, KEY_LEN) == 0;
}

void mg_ipset_build(mg_ipset_t *set)
{
    if (set->n < 2) return;
    qsort(set->ranges, set->n, sizeof(ip_range_t), range_cmp);
    size_t out = 0;
    for (size_t i = 1; i < set->n; i++) {
        ip_range_t *last = &set->ranges[out], *r = &set->ranges[i];
        if (memcmp(r->lo, last->hi, KEY_LEN) <= 0 || next_to(last->hi, r->lo)) {
            if (memcmp(r->hi, last->hi, KEY_LEN) > 0) memcpy(last->hi, r->hi, KEY_LEN);
        } else {
            set->ranges[++out] = *r;
        }
    }
    set->n = out + 1;
}

static bool contains_key(const mg_ipset_t *set, const uint8_t a[KEY_LEN])
{
    size_t lo = 0, hi = set->n; /* the first range whose lo > a is at `lo` when done */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (memcmp(set->ranges[mid].lo, a, KEY_LEN) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo > 0 && memcmp(a, set->ranges[lo - 1].hi, KEY_LEN) <= 0;
}

int mg_ipset_contains(const mg_ipset_t *set, const char *ip, size_t len)
{
    mg_cidr_t c;
    if (memchr(ip, '/', len) || !mg_cidr_parse(ip, len, &c)) return -1;
    ip_range_t r;
    cidr_range(&c, &r);
    return contains_key(set, r.lo);
}

bool mg_ipset_contains_sa(const mg_ipset_t *set, const struct sockaddr *sa)
{
    mg_cidr_t c = {0};
    c.family = sa_bytes(sa, c.addr);
    if (c.family == 0) return false;
    c.prefix = c.family == AF_INET ? 32 : 128;
    ip_range_t r;
    cidr_range(&c, &r);
    return contains_key(set, r.lo);
}

size_t mg_ipset_size(const mg_ipset_t *set)
{
    return set->n;
}
