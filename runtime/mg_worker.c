/*
 * mg_worker.c — one worker process: a libev loop, its share of the listening sockets
 * (SO_REUSEPORT, opened by the master and inherited), the accept path with the per-worker
 * connection cap, and graceful or fast shutdown. With `master_process: off` the same code
 * serves everything in the single process.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/socket.h>

#include "mg_guard.h"
#include "mg_health.h"
#include "mg_log.h"
#include "mg_lua.h"
#include "mg_lua_socket.h"
#include "mg_request.h"
#include "mg_watchdog.h"

mg_worker_t mg_worker;

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents);
static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents);
static void flush_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void drain_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents);

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    mg_listener_t *ls = MG_CONTAINER_OF(w, mg_listener_t, io);
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(ls->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN) mg_log_err("accept() failed: %s", strerror(errno));
            return;
        }
        if (mg_worker.nconns >= mg_worker.cfg->limits.max_connections || mg_worker.draining) {
            /* shed at once: a full worker never stalls the connections it already has */
            close(fd);
            continue;
        }
        uint32_t slot = MG_GUARD_NONE;
        if (MG_UNLIKELY(mg_guard.on) && mg_guard_accept((struct sockaddr *)&ss, &slot) != MG_OK) {
            /* a reset, not a FIN: the refused socket leaves no TIME_WAIT behind on our side,
             * which a flood would otherwise pile up */
            struct linger lg = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        mg_conn_accept(ls, fd, (struct sockaddr *)&ss, slot);
    }
}

static void start_drain(void)
{
    if (mg_worker.draining) return;
    mg_worker.draining = true;
    for (size_t i = 0; i < mg_worker.nlisteners; i++) {
        ev_io_stop(mg_worker.loop, &mg_worker.listeners[i].io);
        close(mg_worker.listeners[i].fd); /* the master keeps its copy: nothing queued is lost */
        mg_worker.listeners[i].fd = -1;
    }
    mg_upstream_pool_close_all();
    mg_probe_stop();
    ev_timer_set(&mg_worker.drain_timer, mg_worker.cfg->limits.worker_shutdown_timeout * 0.001, 0.);
    ev_timer_start(mg_worker.loop, &mg_worker.drain_timer);
    mg_conn_drain_all();
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    if (w->signum == SIGUSR1) { /* log rotation: the files were moved away, open new ones */
        mg_access_log_flush();
        if (mg_log_open(mg_worker.cfg) != MG_OK) mg_log_err("cannot reopen the logs");
        return;
    }
    if (w->signum == SIGHUP) {
        mg_log_warn("reload needs master_process: on; the configuration stays as it is");
        return;
    }
    if (w->signum == SIGTERM) {
        mg_log_info("worker draining (graceful stop)");
        start_drain();
    } else if (w->signum == SIGQUIT || w->signum == SIGINT) {
        ev_break(loop, EVBREAK_ALL);
    }
}

static void flush_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    mg_access_log_flush();
}

static void drain_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    mg_log_warn("worker_shutdown_timeout reached with %u connections open", mg_worker.nconns);
    ev_break(loop, EVBREAK_ALL);
}

int mg_worker_run(const mg_config_t *cfg, int *listen_fds, size_t nfds, unsigned slot,
                  bool standalone)
{
    char err[512];
    memset(&mg_worker, 0, sizeof(mg_worker));
    mg_worker.loop = ev_default_loop(EVFLAG_AUTO);
    mg_worker.cfg = cfg;
    mg_worker.router = mg_router_build(cfg, err, sizeof(err));
    if (mg_worker.router == NULL) {
        mg_log_crit("cannot build the route table: %s", err);
        return MG_ERROR;
    }
    if (mg_upstream_init(cfg) != MG_OK) return MG_ERROR;
    if (mg_dns_init(cfg, mg_upstream_dns_changed) != MG_OK) return MG_ERROR;
    if (mg_guard_init_worker(cfg) != MG_OK) return MG_ERROR;
    if (mg_probe_start(cfg) != MG_OK) return MG_ERROR;
    mg_conn_init_worker();
    if (getrandom(&mg_worker.rid_seed, sizeof(mg_worker.rid_seed), 0) < 0)
        mg_worker.rid_seed = (uint64_t)getpid() * 0x9E3779B97F4A7C15ULL ^ (uint64_t)ev_time();
    mg_worker.listeners = calloc(nfds ? nfds : 1, sizeof(mg_listener_t));
    if (mg_worker.listeners == NULL) return MG_ERROR;
    mg_worker.nlisteners = nfds;
    for (size_t i = 0; i < nfds; i++) {
        mg_listener_t *ls = &mg_worker.listeners[i];
        ls->fd = listen_fds[i];
        ls->conf = &cfg->proxy_listen[i];
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        getsockname(ls->fd, (struct sockaddr *)&ss, &len);
        ls->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                  : ((struct sockaddr_in *)&ss)->sin_port);
        ev_io_init(&ls->io, accept_cb, ls->fd, EV_READ);
        ev_io_start(mg_worker.loop, &ls->io);
    }
    signal(SIGPIPE, SIG_IGN);
    ev_signal_init(&mg_worker.sig_term, signal_cb, SIGTERM);
    ev_signal_init(&mg_worker.sig_quit, signal_cb, SIGQUIT);
    ev_signal_init(&mg_worker.sig_int, signal_cb, SIGINT);
    ev_signal_start(mg_worker.loop, &mg_worker.sig_term);
    ev_signal_start(mg_worker.loop, &mg_worker.sig_quit);
    ev_signal_start(mg_worker.loop, &mg_worker.sig_int);
    ev_signal_init(&mg_worker.sig_usr1, signal_cb, SIGUSR1);
    ev_signal_start(mg_worker.loop, &mg_worker.sig_usr1);
    if (standalone) { /* without a master, SIGHUP must not kill the server */
        ev_signal_init(&mg_worker.sig_hup, signal_cb, SIGHUP);
        ev_signal_start(mg_worker.loop, &mg_worker.sig_hup);
    }
    ev_timer_init(&mg_worker.flush_timer, flush_cb, 0.1, 0.1);
    ev_timer_start(mg_worker.loop, &mg_worker.flush_timer);
    ev_init(&mg_worker.drain_timer, drain_timeout_cb);
    mg_worker.slot = slot;
    if (!standalone) mg_watchdog_attach(slot);
    if (mg_lua) mg_lua_init_worker(mg_lua);
    mg_log_info("worker %u started", slot);

    ev_run(mg_worker.loop, 0);

    mg_access_log_flush();
    while (mg_worker.conns)
        mg_conn_abort(mg_worker.conns);
    mg_upstream_pool_close_all();
    mg_probe_stop();
    mg_dns_stop();
    mg_lua_socket_pool_close_all();
    mg_router_free(mg_worker.router);
    mg_guard_exit_worker();
    free(mg_worker.listeners);
    mg_buf_drain();
    ev_loop_destroy(mg_worker.loop);
    return MG_OK;
}
