/*
 * mg_dns.h — names of services and upstream targets, resolved by each worker without
 * blocking its event loop (c-ares driven by libev), cached for the records' TTL (Kong's
 * dns_* settings), refreshed when they expire, served stale for dns_stale_ttl while a refresh
 * runs. Names are numbered at load (mg_config_t.dns_names); the hosts file is read at load
 * (mg_config.c), so its names never reach this resolver. Cosockets' names get entries when
 * first met (mg_dns_name).
 */
#ifndef MG_DNS_H
#define MG_DNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "mg_config.h"

/* What is known of a name. */
enum { MG_DNS_NONE, MG_DNS_OK, MG_DNS_NOT_FOUND, MG_DNS_ERROR };

/* A name's current addresses (ports 0), sorted and distinct. */
typedef struct {
    unsigned naddrs;
    struct sockaddr_storage addrs[MG_DNS_MAX_ADDRS];
    uint64_t generation; /* bumped whenever the set changes */
} mg_dns_addrs_t;

/* Something waiting for a name's next answer (a request parked before the first one). */
typedef struct mg_dns_waiter_s {
    struct mg_dns_waiter_s *next, **prev;
    void (*cb)(struct mg_dns_waiter_s *w); /* called once, after it was unlinked */
} mg_dns_waiter_t;

/*
 * Worker start: makes the resolver channel for cfg (servers from dns_resolver, else
 * /etc/resolv.conf) and sends the first query of every name. `changed` is called whenever a
 * name's address set changes (upstreams rebuild their balancers). MG_OK or MG_ERROR.
 */
int mg_dns_init(const mg_config_t *cfg, void (*changed)(unsigned name));
/* Worker exit: cancels the queries, closes the channel. Waiters are not called. */
void mg_dns_stop(void);

/* The state (MG_DNS_*) and addresses of name `i` as known now (no query is sent). */
int mg_dns_state(unsigned i);
const mg_dns_addrs_t *mg_dns_addrs(unsigned i);

/*
 * A service's look-up of name `i`: MG_OK with *out set when addresses may be used (a fresh
 * answer, or one expired less than dns_stale_ttl ago, whose refresh this starts; with
 * `any_age` any answer at all, for a retry), MG_AGAIN when the caller must wait (mg_dns_wait)
 * for a query now in flight, MG_DECLINED when the name does not exist or its look-up failed
 * (cached for dns_not_found_ttl / dns_error_ttl).
 */
int mg_dns_resolve(unsigned i, bool any_age, const mg_dns_addrs_t **out);
/* Calls w->cb after name i's next answer (whatever it is); mg_dns_cancel undoes it. */
void mg_dns_wait(unsigned i, mg_dns_waiter_t *w);
void mg_dns_cancel(mg_dns_waiter_t *w);

/*
 * A name met at run time (a cosocket's host, not an IP literal): the index of its entry for
 * the calls above, made at the first look-up (with the hosts file's address, if it has one),
 * or -1 when none can be had (every such entry has a look-up in flight, or no memory).
 */
int mg_dns_name(const char *name);
/* Why name i has no address (its last failure, in c-ares' words), for error messages. */
const char *mg_dns_failure(unsigned i);

/* ---- pure helpers (unit-tested) ---- */

/* The seconds an answer is cached: `valid_ttl` when set (> 0), else the record's TTL kept
 * within [1, MG_DNS_MAX_TTL] (a TTL of 0 would send a query per request; a long one would
 * never notice a change). */
#define MG_DNS_MAX_TTL 3600u
unsigned mg_dns_ttl(unsigned record_ttl, unsigned valid_ttl);

/* Sorts addrs[0..n) (family, then address) and drops duplicates; returns the new count. */
size_t mg_dns_normalise(struct sockaddr_storage *addrs, size_t n);

/*
 * Gives each of addrs[0..n) one of the nslots (<= 64) slots keyed by keys[]: the slot that
 * already holds the address, else a free one (ss_family AF_UNSPEC), else one holding an address
 * absent from addrs. out[i] = the slot of addrs[i]; the keys are updated. Returns the slots whose
 * key changed (bit k = slot k): their state belongs to another address and must be reset.
 * n <= nslots. Addresses compare by family and address (ports ignored).
 */
uint64_t mg_dns_assign(struct sockaddr_storage *keys, size_t nslots,
                       const struct sockaddr_storage *addrs, size_t n, unsigned *out);

/* Whether two addresses are the same (family and address, ports ignored). */
bool mg_dns_same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

/*
 * Looks `name` up in hosts-file text (lines "address name [aliases...]", '#' comments,
 * names compared without case) for an address of `family` (AF_INET or AF_INET6): true with
 * *out (port 0) and *outlen set, false when absent.
 */
bool mg_dns_hosts_find(const char *text, size_t len, const char *name, int family,
                       struct sockaddr_storage *out, socklen_t *outlen);

#endif
