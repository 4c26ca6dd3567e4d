/*
 * mg_health.h — the health of upstream targets (Kong's health checks, the circuit breaker):
 * live traffic (passive) and probes (active, mg_probe.c) are counted per target (statuses,
 * connect failures, timeouts) against the upstream's thresholds; a target that crosses unhealthy
 * takes no traffic (the balancer's `down`) until it is healthy again. The state lives in one
 * shared-memory zone per loaded configuration, made by the master before fork, so every worker
 * agrees.
 */
#ifndef MG_HEALTH_H
#define MG_HEALTH_H

#include <stdbool.h>
#include <stdint.h>

#include "mg_config.h"

/* What one try on a target showed. */
enum { MG_HC_EV_STATUS, MG_HC_EV_TCP_FAILURE, MG_HC_EV_TIMEOUT, MG_HC_EV_SUCCESS };
/* (MG_HC_EV_SUCCESS: a tcp probe connected) */
/* mg_health_count's answer: a transition, or none. */
enum { MG_HC_SAME, MG_HC_NOW_UNHEALTHY, MG_HC_NOW_HEALTHY };

/* One target's counters (Kong's: a success clears the failures, a failure the successes). */
typedef struct {
    uint32_t unhealthy; /* 0 healthy */
    uint32_t successes, http_failures, tcp_failures, timeouts;
} mg_hc_counters_t;

/*
 * Counts one event (`status` for MG_HC_EV_STATUS) against the sides' thresholds and returns
 * the transition it caused. A status in neither list counts nothing. Crossing a threshold
 * resets the counters (Kong), so the next transition needs a full run again. Pure: no locks.
 */
int mg_health_count(mg_hc_counters_t *c, const mg_hc_side_t *healthy, const mg_hc_side_t *unhealthy,
                    int event, int status);

/* Makes cfg->health (every target healthy): MG_OK or MG_ERROR (out of memory). */
int mg_health_create(mg_config_t *cfg);
void mg_health_destroy(mg_config_t *cfg);

/* Reports one try of a target of `up` (passive checks) at its address slot `slot` (an IP
 * target: t->slot, what mg_health_report uses); logs a transition. */
void mg_health_report(const mg_config_t *cfg, const mg_upstream_t *up, const mg_target_t *t,
                      int event, int status);
void mg_health_report_at(const mg_config_t *cfg, const mg_upstream_t *up, const mg_target_t *t,
                         unsigned slot, int event, int status);

/* Counts the result of an active probe of t's address `slot` against the active thresholds. */
void mg_health_probe_result(const mg_config_t *cfg, const mg_upstream_t *up, const mg_target_t *t,
                            unsigned slot, int event, int status);

/*
 * The address slots of target t for addrs[0..n) (a name's current answer, normalised): an
 * address keeps the slot (and health) it had, a new one takes a free slot (starting healthy),
 * and the slots of addresses gone from the answer are freed (no longer probed). slots[i] = the slot
 * of addrs[i] (at most MG_DNS_MAX_ADDRS addresses). Every worker agrees, the keys being shared.
 */
void mg_health_assign(const mg_config_t *cfg, const mg_target_t *t,
                      const struct sockaddr_storage *addrs, size_t n, unsigned *slots);

/* The address slot `slot` counts for (port 0 for a name's): false when unused. */
bool mg_health_slot_addr(const mg_config_t *cfg, unsigned slot, struct sockaddr_storage *out);

/* Whether this worker should probe address slot `target_index` now (`now` CLOCK_MONOTONIC ns):
 * true for one worker per interval (`healthy_every` or `unhealthy_every` ns by the target's
 * health, <= 0 = none in that state). */
bool mg_health_claim_probe(const mg_config_t *cfg, unsigned target_index, int64_t now,
                           int64_t healthy_every, int64_t unhealthy_every);

/* Active checks (mg_probe.c): starts this worker's probe timer when some upstream has an
 * active interval; stop closes the probes in flight. */
int mg_probe_start(const mg_config_t *cfg);
void mg_probe_stop(void);

/* A number that changes whenever some target's health changes (0 without a zone). */
uint64_t mg_health_generation(const mg_config_t *cfg);

/* Whether the address of slot `target_index` (mg_target_t.slot and after) is healthy now. */
bool mg_health_is_healthy(const mg_config_t *cfg, unsigned target_index);

#endif
