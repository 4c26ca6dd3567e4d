/*
 * mg_health.c — health of upstream targets: passive checks (Kong's `healthchecks.passive`,
 * the circuit breaker). Each try of a balanced request is reported here when its connection
 * is released: the response status, a connect failure or a timeout. The counting follows
 * lua-resty-healthcheck (Kong's library): a threshold of 0 turns that count off; a success
 * clears the failure counts and a failure the success count; a target crossing
 * `unhealthy.*` takes no traffic until `healthy.successes` successes bring it back, which
 * with passive checks alone never happens for a target that gets no traffic, exactly as in
 * Kong (it stays down until a reload). Active probes (mg_probe.c) report here too, counted
 * against the active thresholds on the same counters (as in Kong).
 *
 * The counters live in one shared-memory zone per loaded configuration (an anonymous shared
 * mapping made in the master while loading, inherited by the workers it forks), guarded by
 * one robust process-shared mutex held for a few instructions (never across a syscall). A
 * generation number, bumped on every transition, tells a worker when to copy the health
 * marks into its balancers, so a request costs one atomic load while nothing changes.
 *
 * Health belongs to an address, not to a target: each target has address slots (one for an
 * IP, MG_DNS_MAX_ADDRS for a name), each keyed by the address it counts for; when a name's
 * answer changes, mg_health_assign keeps the slots of the addresses that stay (their health
 * with them) and gives new addresses fresh slots, so every worker counts one address in the
 * same slot.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "mg_dns.h"
#include "mg_health.h"
#include "mg_log.h"

typedef struct {
    mg_hc_counters_t c;
    int64_t probe_due; /* active checks: when the next probe is due (CLOCK_MONOTONIC ns) */
    struct sockaddr_storage key; /* the address whose health this is (AF_UNSPEC: unused) */
} slot_t;

struct mg_health_zone_s {
    pthread_mutex_t lock;
    uint64_t generation;
    size_t n, size;
    slot_t targets[];
};

static bool has_status(const mg_hc_side_t *side, int status)
{
    for (size_t i = 0; i < side->nhttp_statuses; i++)
        if (side->http_statuses[i] == status) return true;
    return false;
}

static void reset(mg_hc_counters_t *c, uint32_t unhealthy)
{
    memset(c, 0, sizeof(*c));
    c->unhealthy = unhealthy;
}

int mg_health_count(mg_hc_counters_t *c, const mg_hc_side_t *healthy, const mg_hc_side_t *unhealthy,
                    int event, int status)
{
    uint32_t *ctr = NULL, limit = 0;
    bool good = false;
    switch (event) {
    case MG_HC_EV_STATUS:
        if (has_status(healthy, status)) {
            good = true;
            limit = healthy->successes;
            ctr = &c->successes;
        } else if (has_status(unhealthy, status)) {
            limit = unhealthy->http_failures;
            ctr = &c->http_failures;
        }
        break;
    case MG_HC_EV_SUCCESS:
        good = true;
        limit = healthy->successes;
        ctr = &c->successes;
        break;
    case MG_HC_EV_TCP_FAILURE:
        limit = unhealthy->tcp_failures;
        ctr = &c->tcp_failures;
        break;
    case MG_HC_EV_TIMEOUT:
        limit = unhealthy->timeouts;
        ctr = &c->timeouts;
        break;
    }
    if (ctr == NULL || limit == 0) return MG_HC_SAME; /* not counted, or that count is off */
    bool pending_failures = c->http_failures || c->tcp_failures || c->timeouts;
    /* fully healthy and a success, or fully unhealthy and a failure: nothing to count */
    if (good && !c->unhealthy && !pending_failures) return MG_HC_SAME;
    if (!good && c->unhealthy && c->successes == 0) return MG_HC_SAME;
    if (good)
        c->http_failures = c->tcp_failures = c->timeouts = 0;
    else
        c->successes = 0;
    if (++*ctr < limit) return MG_HC_SAME;
    bool was_unhealthy = c->unhealthy != 0;
    reset(c, good ? 0 : 1);
    if (good) return was_unhealthy ? MG_HC_NOW_HEALTHY : MG_HC_SAME;
    return was_unhealthy ? MG_HC_SAME : MG_HC_NOW_UNHEALTHY;
}

int mg_health_create(mg_config_t *cfg)
{
    size_t size = sizeof(struct mg_health_zone_s) + cfg->ntarget_slots * sizeof(slot_t);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return MG_ERROR;
    struct mg_health_zone_s *z = p; /* the mapping is zeroed: every target healthy */
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(&z->lock, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) {
        munmap(p, size);
        return MG_ERROR;
    }
    z->n = cfg->ntarget_slots;
    z->size = size;
    for (size_t i = 0; i < cfg->ntargets; i++) { /* an IP target's one slot is its address */
        const mg_target_t *t = cfg->targets[i];
        if (t->dns < 0 && t->slot < z->n) z->targets[t->slot].key = t->addr;
    }
    cfg->health = z;
    return MG_OK;
}

void mg_health_destroy(mg_config_t *cfg)
{
    if (cfg->health == NULL) return;
    /* another process may still use its own mapping of the zone: only unmap ours */
    munmap(cfg->health, cfg->health->size);
    cfg->health = NULL;
}

static void lock(struct mg_health_zone_s *z)
{
    /* a worker that died holding the lock left at most one counter half-updated */
    if (pthread_mutex_lock(&z->lock) == EOWNERDEAD) pthread_mutex_consistent(&z->lock);
}

/* "host:port" of t, and for a named target the address of the slot: "host:port (ip)". */
static void name_of(const struct mg_health_zone_s *z, const mg_target_t *t, unsigned slot,
                    char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN] = "";
    const struct sockaddr_storage *k = &z->targets[slot].key;
    if (t->dns >= 0 && k->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)k)->sin_addr, ip, sizeof(ip));
    else if (t->dns >= 0 && k->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)k)->sin6_addr, ip, sizeof(ip));
    snprintf(buf, len, ip[0] ? "%s (%s)" : "%s", t->target, ip);
}

/* Counts one event against the passive or active thresholds; logs a transition. */
static void record(const mg_config_t *cfg, const mg_upstream_t *up, const mg_target_t *t,
                   unsigned slot, bool active, int event, int status)
{
    struct mg_health_zone_s *z = cfg->health;
    if (z == NULL || slot >= z->n) return;
    const mg_hc_side_t *h =
        active ? &up->healthchecks.active.healthy : &up->healthchecks.passive.healthy;
    const mg_hc_side_t *u =
        active ? &up->healthchecks.active.unhealthy : &up->healthchecks.passive.unhealthy;
    lock(z);
    int tr = mg_health_count(&z->targets[slot].c, h, u, event, status);
    char name[300]; /* a named target's address in its log lines */
    name_of(z, t, slot, name, sizeof(name));
    if (tr != MG_HC_SAME) __atomic_add_fetch(&z->generation, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&z->lock);
    const char *by = active ? " by active checks" : "";
    if (tr == MG_HC_NOW_HEALTHY && event == MG_HC_EV_STATUS)
        mg_log_notice("upstream %s target %s is now healthy (%u successes, last status %d)%s",
                      up->name, name, h->successes, status, by);
    else if (tr == MG_HC_NOW_HEALTHY)
        mg_log_notice("upstream %s target %s is now healthy (%u successes)%s", up->name, name,
                      h->successes, by);
    else if (tr == MG_HC_NOW_UNHEALTHY && event == MG_HC_EV_STATUS)
        mg_log_warn("upstream %s target %s is now unhealthy (%u http failures, last status %d)%s",
                    up->name, name, u->http_failures, status, by);
    else if (tr == MG_HC_NOW_UNHEALTHY && event == MG_HC_EV_TCP_FAILURE)
        mg_log_warn("upstream %s target %s is now unhealthy (%u tcp failures)%s", up->name, name,
                    u->tcp_failures, by);
    else if (tr == MG_HC_NOW_UNHEALTHY)
        mg_log_warn("upstream %s target %s is now unhealthy (%u timeouts)%s", up->name, name,
                    u->timeouts, by);
}

void mg_health_report(const mg_config_t *cfg, const mg_upstream_t *up, const mg_target_t *t,
                      int event, int status)
{
    mg_health_report_at(cfg, up, t, t->slot, event, status);
}

void mg_health_report_at(const mg_config_t *cfg, const mg_upstream_t *up, const mg_target_t *t,
                         unsigned slot, int event, int status)
{
    if (up->healthchecks.passive_on) record(cfg, up, t, slot, false, event, status);
}

void mg_health_probe_result(const mg_config_t *cfg, const mg_upstream_t *up, const mg_target_t *t,
                            unsigned slot, int event, int status)
{
    record(cfg, up, t, slot, true, event, status);
}

void mg_health_assign(const mg_config_t *cfg, const mg_target_t *t,
                      const struct sockaddr_storage *addrs, size_t n, unsigned *slots)
{
    struct mg_health_zone_s *z = cfg->health;
    size_t nslots = t->dns >= 0 ? MG_DNS_MAX_ADDRS : 1;
    if (z == NULL || t->slot + nslots > z->n) {
        for (size_t i = 0; i < n; i++)
            slots[i] = t->slot + (unsigned)(i < nslots ? i : 0);
        return;
    }
    struct sockaddr_storage keys[MG_DNS_MAX_ADDRS];
    unsigned rel[MG_DNS_MAX_ADDRS];
    if (n > nslots) n = nslots;
    lock(z);
    for (size_t k = 0; k < nslots; k++)
        keys[k] = z->targets[t->slot + k].key;
    uint64_t changed = mg_dns_assign(keys, nslots, addrs, n, rel), used = 0;
    for (size_t i = 0; i < n; i++)
        used |= 1ull << rel[i];
    for (size_t k = 0; k < nslots; k++) { /* gone from the answer: no longer probed */
        if (!((used >> k) & 1) && keys[k].ss_family != AF_UNSPEC) {
            memset(&keys[k], 0, sizeof(keys[k]));
            changed |= 1ull << k;
        }
    }
    for (size_t k = 0; k < nslots; k++) {
        if (!((changed >> k) & 1)) continue;
        slot_t *sl = &z->targets[t->slot + k];
        sl->key = keys[k];
        bool was_down = sl->c.unhealthy != 0;
        memset(&sl->c, 0, sizeof(sl->c)); /* a new address starts healthy */
        sl->probe_due = 0;
        if (was_down) __atomic_add_fetch(&z->generation, 1, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&z->lock);
    for (size_t i = 0; i < n; i++)
        slots[i] = t->slot + rel[i];
}

bool mg_health_slot_addr(const mg_config_t *cfg, unsigned slot, struct sockaddr_storage *out)
{
    struct mg_health_zone_s *z = cfg->health;
    if (z == NULL || slot >= z->n) return false;
    lock(z);
    *out = z->targets[slot].key;
    pthread_mutex_unlock(&z->lock);
    return out->ss_family != AF_UNSPEC;
}

bool mg_health_claim_probe(const mg_config_t *cfg, unsigned target_index, int64_t now,
                           int64_t healthy_every, int64_t unhealthy_every)
{
    struct mg_health_zone_s *z = cfg->health;
    if (z == NULL || target_index >= z->n) return false;
    slot_t *sl = &z->targets[target_index];
    int64_t every = mg_health_is_healthy(cfg, target_index) ? healthy_every : unhealthy_every;
    if (every <= 0) return false; /* no probes in this state */
    int64_t due = __atomic_load_n(&sl->probe_due, __ATOMIC_ACQUIRE);
    if (due > now) return false;
    /* one worker wins the target for this interval */
    return __atomic_compare_exchange_n(&sl->probe_due, &due, now + every, false, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}

uint64_t mg_health_generation(const mg_config_t *cfg)
{
    return cfg->health ? __atomic_load_n(&cfg->health->generation, __ATOMIC_ACQUIRE) : 0;
}

bool mg_health_is_healthy(const mg_config_t *cfg, unsigned target_index)
{
    const struct mg_health_zone_s *z = cfg->health;
    if (z == NULL || target_index >= z->n) return true;
    return __atomic_load_n(&z->targets[target_index].c.unhealthy, __ATOMIC_RELAXED) == 0;
}
