/*
 * mg_guard.h — per-client-address guards that run in C before anything else: a limit on
 * concurrent connections, a rate of new connections and a rate of requests (token buckets)
 * per address, node-wide across the workers, with an exempt list. The state lives in one
 * shared-memory table that the master creates before forking (and keeps across reloads), so
 * a flood from one address is shed at accept or answered 429 before routing and before Lua.
 * Every guard is off by default; when all are off the request path pays one branch.
 */
#ifndef MG_GUARD_H
#define MG_GUARD_H

#include <sys/socket.h>

#include "mg_config.h"

#define MG_GUARD_NONE UINT32_MAX /* a connection the guards do not track */

typedef struct mg_guard_zone_s mg_guard_zone_t;

/* What the worker's hot paths test before calling in: both false when the guards are off. */
typedef struct {
    bool on;       /* any guard is configured: accept() consults the table */
    bool requests; /* per_ip_request_rate is configured: every request consults it */
} mg_guard_state_t;

extern mg_guard_state_t mg_guard;

/* ---- master ---------------------------------------------------------------------------- */

/*
 * Makes the shared table match cfg before workers are forked: created on first use, kept
 * (with its contents) while guards.zone_size stays the same, replaced when it changes (old
 * workers keep their own mapping until they exit). Nothing is mapped while every guard is
 * off. MG_OK, or MG_ERROR with a message in err (mmap failed).
 */
int mg_guard_sync(const mg_config_t *cfg, char *err, size_t errlen);

/*
 * A worker died without closing its connections (crash, SIGKILL): their per-address counts
 * can no longer be decremented, so every concurrent-connection count is forgotten. The
 * counts then under-estimate (new connections are let in more easily until the old ones
 * close), never over-estimate: a dead worker never locks an address out.
 */
void mg_guard_worker_died(void);

/* ---- worker ---------------------------------------------------------------------------- */

/* Takes cfg's guards for this worker (the exempt set is built here). MG_OK or MG_ERROR
 * (out of memory: the guards stay off). */
int mg_guard_init_worker(const mg_config_t *cfg);
void mg_guard_exit_worker(void);

/*
 * Decides on a connection just accepted from `sa`. MG_OK lets it in with *slot set to its
 * table entry (MG_GUARD_NONE when it is exempt, or when the table is full: it is then not
 * guarded); MG_DECLINED refuses it (per_ip_connection_rate or per_ip_connections), which
 * costs the address nothing. A tracked connection must be given back with mg_guard_release.
 */
int mg_guard_accept(const struct sockaddr *sa, uint32_t *slot);

/* The connection at `slot` (peer family and address bytes as in mg_conn_t) closed. */
void mg_guard_release(uint32_t slot, int family, const uint8_t *addr);

/* A request on the connection at `slot`: MG_OK, or MG_DECLINED with the seconds after which
 * a retry would pass in *retry_after (at least 1). */
int mg_guard_request(uint32_t slot, int family, const uint8_t *addr, unsigned *retry_after);

#endif
