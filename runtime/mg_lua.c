/*
 * mg_lua.c — the LuaJIT state and the phase runner. The master creates the state when it
 * loads a config: it points package.path at the Lua tree (lua/ next to the binary's
 * directory, or MOONGATE_LUA_ROOT) and at plugins/<name>/ for bundled plugins, hands the
 * plugin entities to moongate.runtime.load() which validates them and builds the per-route
 * chains, and keeps the phase masks in C so that a route without plugins never enters Lua.
 * Workers inherit the state through fork. Per request, rewrite and access run in a
 * coroutine (a plugin may wait on a timer or a socket: the coroutine yields, the worker
 * serves others, mg_lua_resume() picks it up), as do timers and a TLS handshake's certificate
 * phase (the handshake pauses meanwhile); header_filter and log are plain calls. This
 * file is the classic-C-API side (cold, or once per phase); PDK calls go through mg_ffi.c.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/random.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "mg_log.h"
#include "mg_lua.h"
#include "mg_shdict.h"
#include "mg_watchdog.h"

struct mg_lua_s {
    lua_State *L;
    size_t used, limit;    /* bytes allocated by the state, and the cap (lua_memory_limit) */
    lua_Alloc inner_alloc; /* LuaJIT's allocator, which lua_alloc wraps */
    void *inner_ud;
    bool oom;             /* an allocation was refused: collect once the phase is over */
    int run_ref;          /* moongate.runtime.run */
    int forget_ref;       /* moongate.runtime.forget */
    int serve_ref;        /* moongate.runtime.serve: the coroutines' loop */
    int run_timer_ref;    /* moongate.runtime.run_timer */
    int cert_ref;         /* moongate.runtime.serve_certificate: the handshakes' loop */
    unsigned *route_mask; /* by route index */
    size_t nroutes;
    unsigned global_mask;
};

mg_lua_t *mg_lua;
mg_req_t *mg_lua_current;
static unsigned next_request_id;

static void push_value(lua_State *L, const mg_value_t *v);
static int lua_root(char *buf, size_t len);

/* ---- shared dictionaries ------------------------------------------------------------- */

#define MAX_ZONES 64

/* The master's zones, inherited by every worker. A reload keeps a zone (and its contents)
 * when name and size are unchanged; old workers keep their mappings until they exit. */
static struct {
    char name[MG_SHDICT_NAME_MAX + 1];
    size_t size;
    mg_shdict_t *d;
    bool live; /* named by the current config */
} zones[MAX_ZONES];

int mg_lua_shdicts_sync(const mg_config_t *cfg, mg_config_errors_t *errs)
{
    for (size_t z = 0; z < MAX_ZONES; z++)
        zones[z].live = false;
    for (size_t i = 0; i < cfg->nshared_dicts; i++) {
        const mg_shdict_conf_t *sc = &cfg->shared_dicts[i];
        size_t z, free_slot = MAX_ZONES;
        for (z = 0; z < MAX_ZONES; z++) {
            if (zones[z].d && strcmp(zones[z].name, sc->name) == 0 && zones[z].size == sc->size)
                break;
            if (zones[z].d == NULL && free_slot == MAX_ZONES) free_slot = z;
        }
        if (z == MAX_ZONES) {
            if (free_slot == MAX_ZONES) {
                mg_config_errors_add(errs, "shared_dicts.%s: too many dictionaries", sc->name);
                return MG_ERROR;
            }
            mg_shdict_t *d = mg_shdict_create(sc->name, sc->size);
            if (d == NULL) {
                mg_config_errors_add(errs, "shared_dicts.%s: cannot create a %zu-byte zone: %s",
                                     sc->name, sc->size, strerror(errno));
                return MG_ERROR;
            }
            z = free_slot;
            snprintf(zones[z].name, sizeof(zones[z].name), "%s", sc->name);
            zones[z].size = sc->size;
            zones[z].d = d;
        }
        zones[z].live = true;
    }
    return MG_OK;
}

mg_shdict_t *mg_lua_shdict(const char *name, size_t len)
{
    for (size_t z = 0; z < MAX_ZONES; z++)
        if (zones[z].live && strlen(zones[z].name) == len && memcmp(zones[z].name, name, len) == 0)
            return zones[z].d;
    return NULL;
}

/* ---- memory cap ---------------------------------------------------------------------- */

/* The state's allocator: LuaJIT's own (fast, arena-based), wrapped to refuse growing past
 * the limit, so a plugin building an endless table gets "not enough memory" (its request
 * fails with 500) instead of the kernel's OOM killer taking the worker. */
static void *lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    mg_lua_t *l = ud;
    size_t old = ptr ? osize : 0;
    if (nsize > old && l->used + (nsize - old) > l->limit) {
        l->oom = true;
        return NULL;
    }
    void *p = l->inner_alloc(l->inner_ud, ptr, osize, nsize);
    if (p || nsize == 0) l->used = l->used - old + nsize;
    return p;
}

static void after_phase(mg_lua_t *l)
{
    mg_watchdog_leave();
    lua_sethook(l->L, NULL, 0, 0); /* a late SIGUSR2's hook must not hit the next phase */
    if (l->oom) {
        l->oom = false;
        lua_gc(l->L, LUA_GCCOLLECT, 0);
        mg_log_warn("a plugin hit lua_memory_limit (%zu bytes); %zu in use after a full "
                    "collection",
                    l->limit, l->used);
    }
}

/* ---- stall interruption ------------------------------------------------------------------ */

/* Installed asynchronously by SIGUSR2 (the master saw this worker inside Lua for half of
 * worker_stall_timeout): ends the running Lua code with an error at the next instruction
 * count, which the runner turns into a 500 for just that request. JIT-compiled loops never
 * reach the hook: for those the master's kill is the answer. */
static void stall_hook(lua_State *L, lua_Debug *ar)
{
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "plugin interrupted: it ran for more than half of worker_stall_timeout");
}

static void on_stall_signal(int sig)
{
    if (mg_lua && mg_lua->L) lua_sethook(mg_lua->L, stall_hook, LUA_MASKCOUNT, 1000);
}

/* ---- loading ------------------------------------------------------------------------- */

static int lua_root(char *buf, size_t len)
{
    const char *env = getenv("MOONGATE_LUA_ROOT");
    if (env && *env) {
        snprintf(buf, len, "%s", env);
        return MG_OK;
    }
    /* the tree sits next to the binary's directory: build/moongate -> ./lua */
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) return MG_ERROR;
    exe[n] = '\0';
    for (int up = 0; up < 3; up++) {
        char *slash = strrchr(exe, '/');
        if (slash == NULL) break;
        *slash = '\0';
        char probe[PATH_MAX + 64];
        snprintf(probe, sizeof(probe), "%s/lua/moongate/runtime.lua", exe);
        if (access(probe, R_OK) == 0) {
            snprintf(buf, len, "%s", exe);
            return MG_OK;
        }
        snprintf(probe, sizeof(probe), "%s/share/moongate/lua/moongate/runtime.lua", exe);
        if (access(probe, R_OK) == 0) {
            int w = snprintf(buf, len, "%s/share/moongate", exe);
            return w > 0 && (size_t)w < len ? MG_OK : MG_ERROR;
        }
    }
    return MG_ERROR;
}

static void push_value(lua_State *L, const mg_value_t *v)
{
    if (v == NULL) {
        lua_pushnil(L);
        return;
    }
    switch (v->kind) {
    case MG_VAL_NULL:
        lua_pushnil(L);
        break;
    case MG_VAL_BOOL:
        lua_pushboolean(L, v->u.boolean);
        break;
    case MG_VAL_INT:
        lua_pushnumber(L, (lua_Number)v->u.integer);
        break;
    case MG_VAL_FLOAT:
        lua_pushnumber(L, v->u.number);
        break;
    case MG_VAL_STRING:
        lua_pushlstring(L, v->str, v->len);
        break;
    case MG_VAL_ARRAY:
        lua_createtable(L, (int)v->len, 0);
        for (size_t i = 0; i < v->len; i++) {
            push_value(L, &v->items[i]);
            lua_rawseti(L, -2, (int)i + 1);
        }
        break;
    case MG_VAL_MAP:
        lua_createtable(L, 0, (int)v->len);
        for (size_t i = 0; i < v->len; i++) {
            push_value(L, &v->items[i]);
            lua_setfield(L, -2, v->keys[i]);
        }
        break;
    }
}

static void set_int(lua_State *L, const char *k, long v)
{
    lua_pushnumber(L, (lua_Number)v);
    lua_setfield(L, -2, k);
}

static void set_str(lua_State *L, const char *k, const char *v)
{
    if (v == NULL) return;
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

/* The config as moongate.runtime.load() takes it. */
static void push_conf(lua_State *L, const mg_config_t *cfg)
{
    lua_newtable(L);
    lua_createtable(L, (int)cfg->nplugin_names, 0);
    for (size_t i = 0; i < cfg->nplugin_names; i++) {
        lua_pushstring(L, cfg->plugin_names[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "plugin_names");

    lua_createtable(L, (int)cfg->nplugins, 0);
    for (size_t i = 0; i < cfg->nplugins; i++) {
        const mg_plugin_conf_t *p = &cfg->plugins[i];
        lua_newtable(L);
        set_str(L, "name", p->name);
        set_str(L, "path", p->path);
        set_int(L, "service", p->service);
        set_int(L, "route", p->route);
        set_int(L, "consumer", p->consumer);
        lua_pushboolean(L, p->enabled);
        lua_setfield(L, -2, "enabled");
        push_value(L, p->config);
        lua_setfield(L, -2, "config");
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "plugins");

    lua_createtable(L, (int)cfg->nroutes, 0);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const mg_route_t *rt = &cfg->routes[i];
        lua_newtable(L);
        set_int(L, "index", (long)rt->index);
        set_int(L, "service", (long)rt->service->index);
        set_str(L, "name", rt->name);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "routes");

    lua_createtable(L, (int)cfg->nconsumers, 0);
    for (size_t i = 0; i < cfg->nconsumers; i++) {
        const mg_consumer_t *cs = &cfg->consumers[i];
        lua_newtable(L);
        set_int(L, "index", (long)i);
        set_str(L, "username", cs->username);
        set_str(L, "custom_id", cs->custom_id);
        set_str(L, "path", cs->path);
        push_value(L, cs->entity);
        lua_setfield(L, -2, "entity");
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "consumers");

    lua_newtable(L); /* top-level credential lists by kind */
    for (size_t k = 0; k < MG_NCREDENTIAL_KINDS; k++) {
        if (!cfg->credentials[k]) continue;
        push_value(L, cfg->credentials[k]);
        lua_setfield(L, -2, mg_credential_kinds[k]);
    }
    lua_setfield(L, -2, "credentials");

    uint8_t raw[16];
    char id[37];
    if (getrandom(raw, sizeof(raw), 0) != sizeof(raw)) memset(raw, 0x5a, sizeof(raw));
    raw[6] = (uint8_t)((raw[6] & 0x0f) | 0x40); /* a version-4 UUID */
    raw[8] = (uint8_t)((raw[8] & 0x3f) | 0x80);
    snprintf(id, sizeof(id), "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7], raw[8], raw[9],
             raw[10], raw[11], raw[12], raw[13], raw[14], raw[15]);
    set_str(L, "node_id", id);
}

mg_lua_t *mg_lua_load(const mg_config_t *cfg, mg_config_errors_t *errs)
{
    char root[PATH_MAX];
    if (lua_root(root, sizeof(root)) != MG_OK) {
        mg_config_errors_add(errs,
                             "%s: cannot find the Lua tree (lua/moongate/runtime.lua next "
                             "to the binary); set MOONGATE_LUA_ROOT",
                             cfg->path);
        return NULL;
    }
    if (mg_lua_shdicts_sync(cfg, errs) != MG_OK) return NULL;
    mg_lua_t *l = calloc(1, sizeof(*l));
    if (l == NULL) return NULL;
    l->limit = cfg->lua_memory_limit ? cfg->lua_memory_limit : (size_t)256 << 20;
    lua_State *L = l->L = luaL_newstate();
    if (L == NULL) {
        free(l);
        return NULL;
    }
    /* keep LuaJIT's allocator, counted: what the state holds so far is the GC's count */
    l->inner_alloc = lua_getallocf(L, &l->inner_ud);
    l->used = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
    lua_setallocf(L, lua_alloc, l);
    luaL_openlibs(L);

    /* package.path: the user's entries first, where ";;" stands for the default path (our
     * tree, then LuaJIT's and the system's, without the working directory's "./?.lua");
     * the tree is always reachable, even without ";;" */
    char ours[3 * PATH_MAX];
    snprintf(ours, sizeof(ours), "%s/lua/?.lua;%s/lua/?/init.lua", root, root);
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    luaL_gsub(L, lua_tostring(L, -1), "./?.lua;", "");
    lua_remove(L, -2);
    lua_pushfstring(L, "%s;%s", ours, lua_tostring(L, -1)); /* the default path */
    lua_remove(L, -2);
    const char *user = cfg->lua_package_path;
    if (user && *user) {
        const char *dflt = lua_tostring(L, -1);
        luaL_gsub(L, user, ";;", ";\1;");
        luaL_gsub(L, lua_tostring(L, -1), "\1", dflt);
        lua_remove(L, -2);
        lua_pushfstring(L, "%s;%s", lua_tostring(L, -1), ours);
        lua_remove(L, -2);
        lua_remove(L, -2);
    }
    lua_setfield(L, -2, "path");
    /* bundled plugins: moongate.plugins.<name>.<module> -> ROOT/plugins/<name>/<module>.lua */
    lua_pushfstring(L, "%s/plugins", root);
    lua_setfield(L, -2, "moongate_bundled_dir");
    lua_pop(L, 1);

    static const char boot[] =
        "local dir = package.moongate_bundled_dir\n"
        "table.insert(package.loaders, 2, function(name)\n"
        "  local plugin, mod = name:match('^moongate%.plugins%.([%w_%-]+)%.([%w_]+)$')\n"
        "  if not plugin then return nil end\n"
        "  local file = dir .. '/' .. plugin .. '/' .. mod .. '.lua'\n"
        "  local f = io.open(file, 'r')\n"
        "  if not f then return '\\n\\tno file \\'' .. file .. '\\'' end\n"
        "  f:close()\n"
        "  return assert(loadfile(file))\n"
        "end)\n"
        "return require 'moongate.runtime'\n";
    if (luaL_loadbuffer(L, boot, sizeof(boot) - 1, "=moongate.boot") != 0 ||
        lua_pcall(L, 0, 1, 0) != 0) {
        mg_config_errors_add(errs, "%s: cannot load the Lua runtime: %s", cfg->path,
                             lua_tostring(L, -1));
        mg_lua_close(l);
        return NULL;
    }
    /* runtime table on the stack */
    lua_getfield(L, -1, "run");
    l->run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "forget");
    l->forget_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "serve");
    l->serve_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "run_timer");
    l->run_timer_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "serve_certificate");
    l->cert_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "load");
    push_conf(L, cfg);
    if (lua_pcall(L, 1, 3, 0) != 0) {
        mg_config_errors_add(errs, "%s: plugin configuration failed: %s", cfg->path,
                             lua_tostring(L, -1));
        mg_lua_close(l);
        return NULL;
    }
    /* stack: runtime, errors, masks, global mask */
    size_t nerr = lua_objlen(L, -3);
    for (size_t i = 1; i <= nerr; i++) {
        lua_rawgeti(L, -3, (int)i);
        mg_config_errors_add(errs, "%s", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    if (nerr > 0) {
        mg_lua_close(l);
        return NULL;
    }
    l->nroutes = cfg->nroutes;
    l->route_mask = calloc(cfg->nroutes ? cfg->nroutes : 1, sizeof(unsigned));
    if (l->route_mask == NULL) {
        mg_lua_close(l);
        return NULL;
    }
    for (size_t i = 0; i < cfg->nroutes; i++) {
        lua_rawgeti(L, -2, (int)i);
        l->route_mask[i] = (unsigned)lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    l->global_mask = (unsigned)lua_tonumber(L, -1);
    lua_settop(L, 0);
    lua_gc(L, LUA_GCCOLLECT, 0);
    return l;
}

void mg_lua_close(mg_lua_t *l)
{
    if (l == NULL) return;
    if (l->L) lua_close(l->L);
    free(l->route_mask);
    free(l);
}

void mg_lua_init_worker(mg_lua_t *l)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stall_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &sa, NULL);
    lua_State *L = l->L;
    mg_watchdog_enter("init_worker", NULL, MG_NULL_STR);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "moongate.runtime");
    if (lua_pcall(L, 1, 1, 0) == 0) {
        lua_getfield(L, -1, "init_worker");
        if (lua_pcall(L, 0, 0, 0) != 0) mg_log_err("init_worker failed: %s", lua_tostring(L, -1));
    }
    lua_settop(L, 0);
    after_phase(l);
}

unsigned mg_lua_route_mask(const mg_lua_t *l, unsigned route_index)
{
    return l && route_index < l->nroutes ? l->route_mask[route_index] : 0;
}

unsigned mg_lua_global_mask(const mg_lua_t *l)
{
    return l ? l->global_mask : 0;
}

/* ---- running ------------------------------------------------------------------------- */

static const char *phase_name(int phase)
{
    switch (phase) {
    case MG_PHASE_REWRITE:
        return "rewrite";
    case MG_PHASE_ACCESS:
        return "access";
    case MG_PHASE_HEADER_FILTER:
        return "header_filter";
    case MG_PHASE_BODY_FILTER:
        return "body_filter";
    case MG_PHASE_LOG:
        return "log";
    default:
        return "?";
    }
}

static int route_of(const mg_req_t *r)
{
    return r->route ? (int)r->route->index : -1;
}

/* Whether `phase` is the request's last Lua phase, so that the Lua side frees the request's
 * state at its end instead of in an extra call. */
static bool is_last_phase(const mg_req_t *r, int phase, bool eof)
{
    unsigned mask = r->route ? mg_lua_route_mask(mg_lua, r->route->index) : 0;
    switch (phase) {
    case MG_PHASE_REWRITE:
        return false; /* the route is not known yet */
    case MG_PHASE_ACCESS:
        return !(mask & (MG_PHASE_HEADER_FILTER | MG_PHASE_BODY_FILTER | MG_PHASE_LOG));
    case MG_PHASE_HEADER_FILTER:
        return !(mask & (MG_PHASE_BODY_FILTER | MG_PHASE_LOG));
    case MG_PHASE_BODY_FILTER:
        return eof && !(mask & MG_PHASE_LOG);
    default:
        return true;
    }
}

/* Interprets what a coroutine did: finished (true/false), yielded the exit marker, or
 * yielded to wait. Drops or keeps the coroutine accordingly. */
/* Coroutines that finished a phase normally go back to this pool and serve the next
 * request's phase (moongate.runtime.serve loops), which spares a coroutine's creation and
 * collection per request. One that exited (its stack holds the plugin's frames) or failed
 * is dropped. */
#define CO_POOL_MAX 256
static int co_pool[CO_POOL_MAX];
static size_t co_pool_n;

static void co_release(int ref, lua_State *co, bool reusable)
{
    if (reusable && co_pool_n < CO_POOL_MAX) {
        lua_settop(co, 0);
        co_pool[co_pool_n++] = ref;
        return;
    }
    luaL_unref(mg_lua->L, LUA_REGISTRYINDEX, ref);
}

/* Interprets what a coroutine did: finished the phase (the "moongate:done" yield of the
 * serve loop), yielded the exit marker, or yielded to wait; anything else is a failure. */
static int after_resume(mg_req_t *r, lua_State *co, int status)
{
    int rc;
    bool reusable = false;
    if (status == LUA_YIELD) {
        const char *mark =
            lua_gettop(co) >= 1 && lua_type(co, 1) == LUA_TSTRING ? lua_tostring(co, 1) : NULL;
        if (mark && strcmp(mark, "moongate:done") == 0) {
            rc = lua_toboolean(co, 2) ? MG_OK : MG_ERROR;
            reusable = true;
        } else if (mark && strcmp(mark, "moongate:exit") == 0) {
            rc = MG_DONE;
        } else {
            r->lua_waiting = 1; /* the coroutine stays referenced until resumed */
            r->lua_live = 1;    /* if the request ends meanwhile, its end frees the state */
            lua_settop(co, 0);
            return MG_AGAIN;
        }
    } else if (status == 0) {
        rc = lua_toboolean(co, -1) ? MG_OK : MG_ERROR;
    } else {
        mg_log_err("Lua error outside any plugin: %s", lua_tostring(co, -1));
        rc = MG_ERROR;
    }
    r->lua_waiting = 0;
    if (r->lua_cancel) { /* a wait armed in a plugin's own coroutine: nobody will take it */
        r->lua_cancel(r, r->lua_cancel_data);
        r->lua_cancel = NULL;
    }
    /* an exit ends the phase before the runtime frees the request's Lua state */
    if (rc == MG_DONE) r->lua_live = 1;
    co_release(r->lua_co_ref, co, reusable);
    r->lua_co_ref = 0;
    return rc;
}

int mg_lua_run_yieldable(mg_req_t *r, int phase, int route)
{
    lua_State *L = mg_lua->L;
    if (r->lua_id == 0) r->lua_id = ++next_request_id ? next_request_id : ++next_request_id;
    lua_State *co;
    if (co_pool_n == 0) {
        co = lua_newthread(L);
        r->lua_co_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* keeps the coroutine alive */
        lua_rawgeti(co, LUA_REGISTRYINDEX, mg_lua->serve_ref);
    } else {
        r->lua_co_ref = co_pool[--co_pool_n];
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->lua_co_ref);
        co = lua_tothread(L, -1);
        lua_pop(L, 1);
    }
    bool last = is_last_phase(r, phase, false);
    lua_pushstring(co, phase_name(phase));
    lua_pushnumber(co, route);
    lua_pushnumber(co, r->lua_id);
    lua_pushboolean(co, last);
    r->lua_live = !last;
    mg_lua_current = r;
    mg_watchdog_enter(phase_name(phase), r->route ? r->route->name : NULL, r->rid);
    int status = lua_resume(co, 4);
    after_phase(mg_lua);
    mg_lua_current = NULL;
    return after_resume(r, co, status);
}

void mg_lua_resume(mg_req_t *r)
{
    /* a wait armed by a coroutine the plugin made itself may fire after the phase ended */
    if (!r->lua_waiting || r->lua_co_ref == 0) return;
    lua_State *L = mg_lua->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->lua_co_ref);
    lua_State *co = lua_tothread(L, -1);
    lua_pop(L, 1);
    r->lua_waiting = 0;
    r->lua_cancel = NULL; /* the wait is over */
    mg_lua_current = r;
    mg_watchdog_enter(r->lua_stage == MG_LUA_STAGE_REWRITE ? "rewrite" : "access",
                      r->route ? r->route->name : NULL, r->rid);
    int status = lua_resume(co, lua_gettop(co));
    after_phase(mg_lua);
    mg_lua_current = NULL;
    mg_conn_lua_continue(r, after_resume(r, co, status));
}

static int call_phase(mg_req_t *r, int phase, bool last)
{
    lua_State *L = mg_lua->L;
    if (r->lua_id == 0) r->lua_id = ++next_request_id ? next_request_id : ++next_request_id;
    lua_rawgeti(L, LUA_REGISTRYINDEX, mg_lua->run_ref);
    lua_pushstring(L, phase_name(phase));
    lua_pushnumber(L, route_of(r));
    lua_pushnumber(L, r->lua_id);
    lua_pushboolean(L, last);
    r->lua_live = !last;
    mg_req_t *saved = mg_lua_current;
    mg_lua_current = r;
    mg_watchdog_enter(phase_name(phase), r->route ? r->route->name : NULL, r->rid);
    int status = lua_pcall(L, 4, 1, 0);
    after_phase(mg_lua);
    mg_lua_current = saved;
    int rc = MG_OK;
    if (status != 0) {
        /* a yield attempt outside a coroutine, or an error in the runtime itself */
        mg_log_err("Lua %s phase failed: %s", phase_name(phase), lua_tostring(L, -1));
        rc = MG_ERROR;
    } else if (!lua_toboolean(L, -1)) {
        rc = MG_ERROR;
    }
    lua_settop(L, 0);
    return rc;
}

int mg_lua_header_filter(mg_req_t *r)
{
    return call_phase(r, MG_PHASE_HEADER_FILTER, is_last_phase(r, MG_PHASE_HEADER_FILTER, false));
}

/* ---- timers ------------------------------------------------------------------------- */

#define MAX_PENDING_TIMERS 4096

/* moongate.timer.at / every: a libev timer that, when it fires, runs the Lua function the
 * plugin registered (runtime.run_timer(id)) in a coroutine of its own, with no request. */
struct mg_lua_timer_s {
    ev_timer ev;    /* the delay, or the interval for `every` */
    ev_timer sleep; /* moongate.sleep inside the timer's function */
    unsigned id;    /* the Lua side's handle */
    double every;   /* 0: runs once */
    int co_ref;     /* the suspended coroutine, 0 when none */
    /* a socket wait to call off if the context ends while its coroutine waits (only a
     * handshake's certificate phase can: its connection may close) */
    void (*cancel)(void *data);
    void *cancel_data;
    mg_lua_cert_t *cert; /* non-NULL: the context of a handshake's certificate phase */
};

mg_lua_timer_t *mg_lua_current_timer;
static unsigned npending_timers;

static void timer_free(mg_lua_timer_t *t)
{
    ev_timer_stop(mg_worker.loop, &t->ev);
    ev_timer_stop(mg_worker.loop, &t->sleep);
    if (t->co_ref) luaL_unref(mg_lua->L, LUA_REGISTRYINDEX, t->co_ref);
    npending_timers--;
    free(t);
}

/* Runs or resumes the timer's coroutine; tidies up when it finished. */
static void timer_step(mg_lua_timer_t *t, lua_State *co, int nargs)
{
    mg_lua_timer_t *saved = mg_lua_current_timer;
    mg_lua_current_timer = t;
    mg_watchdog_enter("timer", NULL, MG_NULL_STR);
    int status = lua_resume(co, nargs);
    after_phase(mg_lua);
    mg_lua_current_timer = saved;
    if (status == LUA_YIELD) {
        lua_settop(co, 0);
        return; /* sleeping (or waiting on a socket): resumed by what it waits on */
    }
    if (status != 0) mg_log_err("timer failed outside its function: %s", lua_tostring(co, -1));
    luaL_unref(mg_lua->L, LUA_REGISTRYINDEX, t->co_ref);
    t->co_ref = 0;
    if (t->every == 0) {
        /* the Lua side forgets the function once a one-shot timer ran */
        timer_free(t);
    }
}

static void timer_fired(struct ev_loop *loop, ev_timer *w, int revents)
{
    mg_lua_timer_t *t = MG_CONTAINER_OF(w, mg_lua_timer_t, ev);
    if (t->co_ref) { /* the previous run still waits: `every` never overlaps its runs */
        mg_log_info("timer %u: previous run still in progress, skipping this tick", t->id);
        return;
    }
    lua_State *L = mg_lua->L;
    lua_State *co = lua_newthread(L);
    t->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_rawgeti(co, LUA_REGISTRYINDEX, mg_lua->run_timer_ref);
    lua_pushnumber(co, t->id);
    lua_pushboolean(co, t->every == 0);
    timer_step(t, co, 2);
}

static void cert_step(mg_lua_cert_t *c, int nargs);

static void timer_sleep_done(struct ev_loop *loop, ev_timer *w, int revents)
{
    mg_lua_timer_t *t = MG_CONTAINER_OF(w, mg_lua_timer_t, sleep);
    if (t->cert) {
        cert_step(t->cert, 0);
        return;
    }
    lua_State *L = mg_lua->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->co_ref);
    lua_State *co = lua_tothread(L, -1);
    lua_pop(L, 1);
    timer_step(t, co, 0);
}

int mg_lua_timer_start(double delay, double every, unsigned id)
{
    if (mg_worker.loop == NULL || npending_timers >= MAX_PENDING_TIMERS) return MG_BUSY;
    mg_lua_timer_t *t = calloc(1, sizeof(*t));
    if (t == NULL) return MG_ERROR;
    t->id = id;
    t->every = every;
    ev_timer_init(&t->ev, timer_fired, delay > 0 ? delay : 0.0001, every);
    ev_init(&t->sleep, timer_sleep_done);
    ev_timer_start(mg_worker.loop, &t->ev);
    npending_timers++;
    return MG_OK;
}

int mg_lua_timer_sleep(mg_lua_timer_t *t, double seconds)
{
    ev_timer_set(&t->sleep, seconds, 0.);
    ev_timer_start(mg_worker.loop, &t->sleep);
    return MG_AGAIN;
}

void mg_lua_timer_on_cancel(mg_lua_timer_t *t, void (*cancel)(void *data), void *data)
{
    t->cancel = cancel;
    t->cancel_data = data;
}

/* ---- certificate phase ------------------------------------------------------------------ */

/* A handshake's run of the certificate handlers (moongate.runtime.serve_certificate). It runs
 * in a coroutine whose context is a timer's (no request: moongate.sleep and cosockets park
 * it the way they park a timer, and their events resume it through ctx.sleep), so a handler
 * may wait; the handshake pauses meanwhile (mg_tls.c). Runs are recycled through a free list
 * and finished coroutines through a small pool: a handshake whose handlers do not wait
 * allocates nothing. */
struct mg_lua_cert_s {
    mg_lua_timer_t ctx;
    int status;              /* MG_AGAIN while waiting, then MG_OK (finished) or MG_ERROR */
    bool reusable;           /* the coroutine came back to its loop: it may serve again */
    void (*wake)(void *arg); /* called (from the loop) when a waiting run finished */
    void *wake_arg;
    mg_lua_cert_t *next_free;
    char sni[256]; /* for the logs */
};

/* under AddressSanitizer runs are freed at once, so a stale pointer to one is caught */
#if defined(__SANITIZE_ADDRESS__)
#define CERT_FREE_MAX 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CERT_FREE_MAX 0
#endif
#endif
#ifndef CERT_FREE_MAX
#define CERT_FREE_MAX 64
#endif
#define CERT_CO_POOL_MAX 16
static mg_lua_cert_t *cert_free;
static unsigned cert_free_n;
static int cert_co_pool[CERT_CO_POOL_MAX];
static unsigned cert_co_pool_n;

static void cert_release(mg_lua_cert_t *c)
{
    lua_State *L = mg_lua->L;
    if (c->ctx.co_ref) {
        if (c->reusable && cert_co_pool_n < CERT_CO_POOL_MAX) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, c->ctx.co_ref);
            lua_settop(lua_tothread(L, -1), 0);
            lua_pop(L, 1);
            cert_co_pool[cert_co_pool_n++] = c->ctx.co_ref;
        } else {
            luaL_unref(L, LUA_REGISTRYINDEX, c->ctx.co_ref);
        }
        c->ctx.co_ref = 0;
    }
    if (cert_free_n < CERT_FREE_MAX) {
        c->next_free = cert_free;
        cert_free = c;
        cert_free_n++;
    } else {
        free(c);
    }
}

/* Runs or resumes the handlers' coroutine; records how it stands. */
static void cert_step(mg_lua_cert_t *c, int nargs)
{
    lua_State *L = mg_lua->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->ctx.co_ref);
    lua_State *co = lua_tothread(L, -1);
    lua_pop(L, 1);
    mg_req_t *saved_req = mg_lua_current;
    mg_lua_timer_t *saved_timer = mg_lua_current_timer;
    mg_lua_current = NULL; /* no request: request PDK calls refuse (phase check) */
    mg_lua_current_timer = &c->ctx;
    mg_watchdog_enter("certificate", NULL, MG_NULL_STR);
    int status = lua_resume(co, nargs);
    after_phase(mg_lua);
    mg_lua_current = saved_req;
    mg_lua_current_timer = saved_timer;
    bool was_waiting = c->status == MG_AGAIN;
    if (status == LUA_YIELD) {
        const char *mark =
            lua_gettop(co) >= 1 && lua_type(co, 1) == LUA_TSTRING ? lua_tostring(co, 1) : NULL;
        if (mark == NULL || strcmp(mark, "moongate:done") != 0) {
            lua_settop(co, 0);
            c->status = MG_AGAIN; /* a sleep or a socket resumes it through ctx.sleep */
            return;
        }
        /* stack: "moongate:done", ok, cert, key; kept until mg_lua_cert_take */
        c->status = lua_toboolean(co, 2) ? MG_OK : MG_ERROR;
        c->reusable = true;
    } else {
        mg_log_err("Lua certificate phase failed: %s", lua_tostring(co, -1));
        c->status = MG_ERROR;
    }
    if (c->ctx.cancel) { /* a wait armed in a coroutine of the plugin's own: nobody takes it */
        c->ctx.cancel(c->ctx.cancel_data);
        c->ctx.cancel = NULL;
    }
    ev_timer_stop(mg_worker.loop, &c->ctx.sleep);
    if (was_waiting && c->wake) c->wake(c->wake_arg);
}

int mg_lua_certificate(const char *sni, mg_lua_cert_t **run, void (*wake)(void *arg), void *arg)
{
    mg_lua_t *l = mg_lua;
    if (l == NULL || !(l->global_mask & MG_PHASE_CERTIFICATE)) return MG_DECLINED;
    mg_lua_cert_t *c = cert_free;
    if (c) {
        cert_free = c->next_free;
        cert_free_n--;
    } else if ((c = malloc(sizeof(*c))) == NULL) {
        mg_log_err("certificate phase: out of memory");
        return MG_ERROR;
    }
    memset(&c->ctx, 0, sizeof(c->ctx));
    ev_init(&c->ctx.sleep, timer_sleep_done);
    c->ctx.cert = c;
    c->status = MG_DECLINED;
    c->reusable = false;
    c->wake = wake;
    c->wake_arg = arg;
    snprintf(c->sni, sizeof(c->sni), "%s", sni ? sni : "-");
    lua_State *L = l->L, *co;
    if (cert_co_pool_n > 0) {
        c->ctx.co_ref = cert_co_pool[--cert_co_pool_n];
        lua_rawgeti(L, LUA_REGISTRYINDEX, c->ctx.co_ref);
        co = lua_tothread(L, -1);
        lua_pop(L, 1);
    } else {
        co = lua_newthread(L);
        c->ctx.co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_rawgeti(co, LUA_REGISTRYINDEX, l->cert_ref);
    }
    if (sni)
        lua_pushstring(co, sni);
    else
        lua_pushnil(co);
    cert_step(c, 1);
    *run = c;
    return c->status == MG_AGAIN ? MG_AGAIN : MG_OK;
}

bool mg_lua_cert_waiting(const mg_lua_cert_t *c)
{
    return c->status == MG_AGAIN;
}

int mg_lua_cert_take(mg_lua_cert_t *c, int (*use)(void *ud, mg_str_t cert, mg_str_t key), void *ud)
{
    int rc = c->status;
    if (rc == MG_OK) {
        lua_State *L = mg_lua->L;
        lua_rawgeti(L, LUA_REGISTRYINDEX, c->ctx.co_ref);
        lua_State *co = lua_tothread(L, -1);
        lua_pop(L, 1);
        rc = MG_DECLINED;
        if (lua_type(co, 3) == LUA_TSTRING && lua_type(co, 4) == LUA_TSTRING) {
            size_t cl, kl;
            const char *cert = lua_tolstring(co, 3, &cl), *key = lua_tolstring(co, 4, &kl);
            rc = use(ud, (mg_str_t){cl, cert}, (mg_str_t){kl, key});
        }
    }
    cert_release(c);
    return rc;
}

void mg_lua_cert_cancel(mg_lua_cert_t *c)
{
    if (c->status == MG_AGAIN) {
        mg_log_err("certificate phase abandoned (server name %s): the handshake ended (client "
                   "gone or tls_handshake_timeout) while a handler waited",
                   c->sni);
        if (c->ctx.cancel) c->ctx.cancel(c->ctx.cancel_data);
        ev_timer_stop(mg_worker.loop, &c->ctx.sleep);
        c->reusable = false; /* its stack holds the waiting handler's frames */
    }
    cert_release(c);
}

const char *mg_lua_chunk;
size_t mg_lua_chunk_len;
bool mg_lua_chunk_eof;

int mg_lua_body_filter(mg_req_t *r, const char *data, size_t len, bool eof, const char **out,
                       size_t *outlen)
{
    free(r->filter_chunk); /* the previous call's replacement was queued already */
    r->filter_chunk = NULL;
    r->filter_chunk_len = 0;
    mg_lua_chunk = data;
    mg_lua_chunk_len = len;
    mg_lua_chunk_eof = eof;
    int rc = call_phase(r, MG_PHASE_BODY_FILTER, is_last_phase(r, MG_PHASE_BODY_FILTER, eof));
    mg_lua_chunk = NULL;
    if (r->filter_chunk) {
        *out = r->filter_chunk;
        *outlen = r->filter_chunk_len;
    } else {
        *out = data;
        *outlen = len;
    }
    return rc;
}

void mg_lua_request_end(mg_req_t *r)
{
    if (mg_lua == NULL) return;
    unsigned mask = r->route ? mg_lua_route_mask(mg_lua, r->route->index) : 0;
    /* a route whose plugins only log has not entered Lua before this */
    if (r->lua_id == 0 && !(mask & MG_PHASE_LOG)) return;
    if (r->lua_cancel) { /* a pending wait (client left): stop it */
        r->lua_cancel(r, r->lua_cancel_data);
        r->lua_cancel = NULL;
    }
    if (r->lua_co_ref) { /* suspended (client left mid-wait): the coroutine is dropped */
        luaL_unref(mg_lua->L, LUA_REGISTRYINDEX, r->lua_co_ref);
        r->lua_co_ref = 0;
        r->lua_waiting = 0;
    }
    if (mask & MG_PHASE_LOG) {
        call_phase(r, MG_PHASE_LOG, true); /* also frees the request's Lua state */
    } else if (r->lua_live) {
        /* ended before its last phase (the client left, a plugin failed): free the state */
        lua_State *L = mg_lua->L;
        lua_rawgeti(L, LUA_REGISTRYINDEX, mg_lua->forget_ref);
        lua_pushnumber(L, r->lua_id);
        if (lua_pcall(L, 1, 0, 0) != 0) lua_pop(L, 1);
    }
    r->lua_live = 0;
    r->lua_id = 0;
}
