/*
 * mg_ip.h — IP addresses and CIDR blocks: parsing (IPv4, IPv6, IPv4-mapped IPv6 folded to
 * IPv4), a short list matcher for settings like trusted_ips, and mg_ipset_t, a sorted set of
 * address ranges answering "is this address in any of these N blocks" in O(log N) — what
 * ip-restriction uses through the FFI instead of scanning strings per request.
 */
#ifndef MG_IP_H
#define MG_IP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct { /* one CIDR block */
    int family;  /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    int prefix; /* bits */
} mg_cidr_t;

/* "a.b.c.d[/n]" or "ipv6[/n]" (len bytes, no NUL needed); host bits are cleared. */
bool mg_cidr_parse(const char *s, size_t len, mg_cidr_t *c);

/* True when `sa` is inside one of the n blocks (a linear scan: for short lists). */
bool mg_cidr_match(const mg_cidr_t *list, size_t n, const struct sockaddr *sa);

typedef struct mg_ipset_s mg_ipset_t;

mg_ipset_t *mg_ipset_new(void);
void mg_ipset_free(mg_ipset_t *set);
/* Adds a block: MG_OK, MG_ERROR when `s` is not an address or CIDR (or memory ran out). */
int mg_ipset_add(mg_ipset_t *set, const char *s, size_t len);
/* The same for a block already parsed (settings keep mg_cidr_t lists). */
int mg_ipset_add_cidr(mg_ipset_t *set, const mg_cidr_t *c);
/* Sorts and merges what was added; call once after the adds, before lookups. */
void mg_ipset_build(mg_ipset_t *set);
/* 1 when the address (text) is in the set, 0 when not, -1 when it is not an address. */
int mg_ipset_contains(const mg_ipset_t *set, const char *ip, size_t len);
/* The same for a socket address (AF_INET / AF_INET6; others are never contained). */
bool mg_ipset_contains_sa(const mg_ipset_t *set, const struct sockaddr *sa);
size_t mg_ipset_size(const mg_ipset_t *set); /* ranges after merging */

#endif
