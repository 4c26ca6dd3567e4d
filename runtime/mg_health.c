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
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

#include "mg_health.h"
#include "mg_log.h"

typedef struct {
    mg_hc_counters_t c;
    int64_t probe_due; /* active checks: when the next probe is due (CLOCK_MONOTONIC ns) */
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
    size_t size = sizeof(struct mg_health_zone_s) + cfg->ntargets * sizeof(slot_t);
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
    z->n = cfg->ntargets;
    z->size = size;
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

/* Counts one event against the passive or active thresholds; logs a transition. */
static void record(const mg_config_t *cfg, const mg_upstream_t *up, const mg_target_t *t,
                   bool active, int event, int status)
{
    struct mg_health_zone_s *z = cfg->health;
    if (z == NULL || t->index >= z->n) return;
    const mg_hc_side_t *h =
        active ? &up->healthchecks.active.healthy : &up->healthchecks.passive.healthy;
    const mg_hc_side_t *u =
        active ? &up->healthchecks.active.unhealthy : &up->healthchecks.passive.unhealthy;
    lock(z);
    int tr = mg_health_count(&z->targets[t->index].c, h, u, event, status);
    if (tr != MG_HC_SAME) __atomic_add_fetch(&z->generation, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&z->lock);
    const char *by = active ? " by active checks" : "";
    if (tr == MG_HC_NOW_HEALTHY && event == MG_HC_EV_STATUS)
        mg_log_notice("upstream %s target %s is now healthy (%u successes, last status %d)%s",
                      up->name, t->target, h->successes, status, by);
    else if (tr == MG_HC_NOW_HEALTHY)
        mg_log_notice("upstream %s target %s is now healthy (%u successes)%s", up->name, t->target,
                      h->successes, by);
    else if (tr == MG_HC_NOW_UNHEALTHY && event == MG_HC_EV_STATUS)
        mg_log_warn("upstream %s target %s is now unhealthy (%u http failures, last status %d)%s",
                    up->name, t->target, u->http_failures, status, by);
    else if (tr == MG_HC_NOW_UNHEALTHY && event == MG_HC_EV_TCP_FAILURE)
        mg_log_warn("upstream %s target %s is now unhealthy (%u tcp failures)%s", up->name,
                    t->target, u->tcp_failures, by);
    else if (tr == MG_HC_NOW_UNHEALTHY)
        mg_log_warn("upstream %s target %s is now unhealthy (%u timeouts)%s", up->name, t->target,
                    u->timeouts, by);
}

void mg_health_report(const mg_config_t *cfg, const mg_upstream_t *up, const mg_target_t *t,
                      int event, int status)
{
    if (up->healthchecks.passive_on) record(cfg, up, t, false, event, status);
}

void mg_health_probe_result(const mg_config_t *cfg, const mg_upstream_t *up, const mg_target_t *t,
                            int event, int status)
{
    record(cfg, up, t, true, event, status);
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
