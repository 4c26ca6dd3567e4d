/*
 * mg_lua.h — the bridge's C half: the LuaJIT state (built by the master at config load, where
 * it validates plugin configs; inherited by every worker through fork), the per-route phase
 * masks that let a route without plugins skip Lua entirely, and the phase runner that
 * starts, resumes and finishes a request's Lua code. PDK calls come back through mg_ffi.h.
 */
#ifndef MG_LUA_H
#define MG_LUA_H

#include "mg_config.h"
#include "mg_request.h"

/* phase bits, the same values as lua/moongate/phases.lua */
enum {
    MG_PHASE_INIT_WORKER = 0x01,
    MG_PHASE_REWRITE = 0x02,
    MG_PHASE_ACCESS = 0x04,
    MG_PHASE_HEADER_FILTER = 0x08,
    MG_PHASE_BODY_FILTER = 0x10,
    MG_PHASE_LOG = 0x20,
    MG_PHASE_CERTIFICATE = 0x80, /* TLS handshake: global plugins, no request */
};

typedef struct mg_lua_s mg_lua_t;

/* The state the worker runs (set by the master before forking); NULL before any load. */
extern mg_lua_t *mg_lua;
/* The request whose Lua code runs right now (the FFI functions work on it), or NULL. */
extern mg_req_t *mg_lua_current;

/*
 * Creates a Lua state for cfg, loads the plugins it enables and validates every plugin
 * entity, appending "PATH: message" errors to errs. Returns the state, or NULL (errs tells
 * why). The state keeps no pointer into cfg.
 */
mg_lua_t *mg_lua_load(const mg_config_t *cfg, mg_config_errors_t *errs);
void mg_lua_close(mg_lua_t *l);

/*
 * Maps the shared dictionaries of cfg (master, before forking): a dictionary keeps its zone
 * and contents across reloads while its name and size stay the same. MG_OK, or MG_ERROR with
 * a message in errs.
 */
int mg_lua_shdicts_sync(const mg_config_t *cfg, mg_config_errors_t *errs);
/* The zone named `name`, or NULL. */
struct mg_shdict_s *mg_lua_shdict(const char *name, size_t len);

/* Runs the plugins' init_worker handlers; call once in each worker after fork. */
void mg_lua_init_worker(mg_lua_t *l);

/* Phases the route's plugin chain has (MG_PHASE_* bits); 0 means "never enter Lua". */
unsigned mg_lua_route_mask(const mg_lua_t *l, unsigned route_index);
/* Phases of the global chain that run before routing (MG_PHASE_REWRITE). */
unsigned mg_lua_global_mask(const mg_lua_t *l);

/*
 * Runs the rewrite (route -1) or access phase in a new coroutine. Returns MG_OK (continue),
 * MG_DONE (a plugin answered: r->out holds the response), MG_AGAIN (suspended: the request
 * continues through mg_conn_lua_continue when resumed) or MG_ERROR (a plugin failed).
 */
int mg_lua_run_yieldable(mg_req_t *r, int phase, int route);
/* Resumes a suspended coroutine (its wait is over) and continues the request. */
void mg_lua_resume(mg_req_t *r);

/*
 * The certificate phase of one TLS handshake whose client sent `sni` (NULL: none): the
 * global plugins' certificate handlers, in a coroutine, so they may sleep and use cosockets.
 * MG_DECLINED: no plugin has the phase. Otherwise *run is set and the result is MG_OK (the
 * handlers finished: take the outcome with mg_lua_cert_take) or MG_AGAIN (a handler waits:
 * wake(arg) is called from the event loop once they finished; mg_lua_cert_cancel drops the
 * run if the handshake ends first). MG_ERROR: out of memory.
 */
typedef struct mg_lua_cert_s mg_lua_cert_t;
int mg_lua_certificate(const char *sni, mg_lua_cert_t **run, void (*wake)(void *arg), void *arg);
bool mg_lua_cert_waiting(const mg_lua_cert_t *run);
/* Ends a finished run: when a plugin chose a certificate (moongate.tls.set_cert), calls
 * use(ud, cert_pem, key_pem) (strings valid during that call) and returns what it returns;
 * MG_DECLINED: no plugin chose; MG_ERROR: a handler raised (logged). run is gone after. */
int mg_lua_cert_take(mg_lua_cert_t *run, int (*use)(void *ud, mg_str_t cert, mg_str_t key),
                     void *ud);
/* Drops a run, finished or waiting (its wait is called off, its coroutine dropped). */
void mg_lua_cert_cancel(mg_lua_cert_t *run);

/* Runs header_filter (MG_OK / MG_ERROR). No yielding. */
int mg_lua_header_filter(mg_req_t *r);

/* Runs body_filter on one decoded piece of the response body (eof: the last call, data may
 * be empty). out, outlen: what goes to the client (the piece itself unless a plugin replaced
 * it; valid until the next call). MG_OK or MG_ERROR (a plugin failed). */
int mg_lua_body_filter(mg_req_t *r, const char *data, size_t len, bool eof, const char **out,
                       size_t *outlen);
/* The piece body_filter is looking at (for mg_ffi.c). */
extern const char *mg_lua_chunk;
extern size_t mg_lua_chunk_len;
extern bool mg_lua_chunk_eof;

/* A timer's context (moongate.timer.at/every); non-NULL while its function runs. */
typedef struct mg_lua_timer_s mg_lua_timer_t;
extern mg_lua_timer_t *mg_lua_current_timer;
/* Arms a timer that runs the Lua function registered under `id` after `delay` seconds, then
 * every `every` seconds when every > 0. MG_OK, MG_BUSY (too many pending timers, or no
 * event loop: the master) or MG_ERROR. */
int mg_lua_timer_start(double delay, double every, unsigned id);
/* moongate.sleep inside a timer: arms its sleep timer; returns MG_AGAIN (yield). */
int mg_lua_timer_sleep(mg_lua_timer_t *t, double seconds);
/* Registers the wait a context's coroutine is parked in (NULL: none), called off if the
 * context ends first (a certificate phase whose handshake ended). */
void mg_lua_timer_on_cancel(mg_lua_timer_t *t, void (*cancel)(void *data), void *data);

/* The request ends: the log phase runs if the route has one, a suspended coroutine is
 * dropped, the Lua-side state is freed. Safe to call for any request. */
void mg_lua_request_end(mg_req_t *r);

#endif
