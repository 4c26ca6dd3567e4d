/*
 * mg_lua_socket.h — cosockets (moongate.socket.tcp): non-blocking TCP (and TLS) client
 * connections driven from Lua coroutines, with a per-worker keepalive pool; names are
 * resolved by the worker's resolver (mg_dns.h). The Lua-facing functions are the mg_ffi_tcp_* ones
 * in mg_ffi.h; this header holds what the rest of the runtime may need.
 *
 * Who waits: a socket operation that would block binds the socket to its *owner* — the
 * context whose coroutine yields — as an mg_cosock_owner_t (a resume callback and its
 * argument). Owners are the running request (mg_lua_current: the wait is cancelled through
 * r->lua_cancel when the request ends first) and the running timer (mg_lua_current_timer);
 * another context adds itself in can_wait() and bind_owner() (mg_lua_socket.c) with its own
 * resume (and a cancel hook if it can end mid-wait); nothing else in the socket code knows
 * what an owner is.
 */
#ifndef MG_LUA_SOCKET_H
#define MG_LUA_SOCKET_H

/* The context whose coroutine waits on a socket: resume(ctx) runs it again once the wait is
 * over (data, writability, connect or handshake outcome, timeout). */
typedef struct {
    void *ctx;
    void (*resume)(void *ctx);
} mg_cosock_owner_t;

/* Closes every idle pooled cosocket connection (worker exit). Sockets owned by Lua are
 * closed by their close() or by the garbage collector. */
void mg_lua_socket_pool_close_all(void);

#endif
