/*
 * mg_watchdog.h — catches a worker stuck in Lua (a plugin in an endless loop). LuaJIT's
 * count hook does not fire inside JIT-compiled loops, so the worker cannot police itself:
 * before entering Lua it records in shared memory what it runs (plugin, phase, route,
 * request) and since when, and clears that on return. The master polls the slots: past half
 * of worker_stall_timeout it sends SIGUSR2, whose handler installs a count hook that ends just
 * that request with a 500 if the code is interpreted; past the full timeout it kills the
 * worker (SIGKILL), logs what was running, and respawns it.
 */
#ifndef MG_WATCHDOG_H
#define MG_WATCHDOG_H

#include <sys/types.h>

#include "mg_core.h"

/* Maps the shared slots (master, before forking any worker). MG_OK or MG_ERROR. */
int mg_watchdog_init(unsigned nslots);

/* Worker side: this process is worker `slot` (sets the slot's pid). */
void mg_watchdog_attach(unsigned slot);
/* Entering / leaving Lua; `phase` and `route` are static or long-lived strings. */
void mg_watchdog_enter(const char *phase, const char *route, mg_str_t request_id);
void mg_watchdog_plugin(const char *name, size_t len);
void mg_watchdog_leave(void);

/*
 * Master side: called periodically. For each slot inside Lua for more than half of
 * timeout_ms, sends SIGUSR2 once; for more than timeout_ms, kills the process and logs what
 * it was running. Returns the number of workers killed.
 */
int mg_watchdog_check(unsigned timeout_ms);

#endif
