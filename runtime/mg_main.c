/*
 * mg_main.c — the command line and the master process. `run` stays in the foreground,
 * `start` daemonises; both load and validate the config, open the listening sockets (one
 * SO_REUSEPORT socket per address and worker slot, held by the master for its whole life so
 * that no queued connection is lost when workers come and go) and supervise the workers:
 * a dead worker is respawned, SIGHUP reloads (validate, start a new generation, drain the
 * old), SIGUSR1 reopens the logs (rotation), SIGTERM stops gracefully and SIGQUIT/SIGINT stop
 * at once. `check` validates; `stop`, `reload` and `reopen` signal the master named by the
 * pid file.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "mg_guard.h"
#include "mg_log.h"
#include "mg_lua.h"
#include "mg_request.h"
#include "mg_ca.h"
#include "mg_tls.h"
#include "mg_utls.h"
#include "mg_watchdog.h"

#define MAX_WORKERS 256
#define MAX_LISTEN 64

typedef struct {
    char key[160];        /* the listen address as written, flags stripped */
    int fds[MAX_WORKERS]; /* one SO_REUSEPORT socket per worker slot, -1 when absent */
} listen_set_t;

typedef struct {
    pid_t pid;
    unsigned slot, generation;
    time_t started;
} worker_proc_t;

static listen_set_t lsets[MAX_LISTEN];
static size_t nlsets;
static worker_proc_t procs[MAX_WORKERS * 4];
static size_t nprocs;
static unsigned generation;
static const char *conf_path = "conf/moongate.yaml";
static const char *pid_path;

static void usage(FILE *out)
{
    fprintf(out, "usage: moongate run    [-c FILE]            foreground\n"
                 "       moongate start  [-c FILE] [-p PIDFILE] daemon\n"
                 "       moongate stop   [-c FILE] [-p PIDFILE]\n"
                 "       moongate reload [-c FILE] [-p PIDFILE]\n"
                 "       moongate reopen [-c FILE] [-p PIDFILE]  reopen the logs (rotation)\n"
                 "       moongate check  [-c FILE]\n"
                 "       moongate version\n");
}

/* Loads, validates and (when `lua` is not NULL) prepares the plugins of the config file:
 * the config, the route table (regexes compile) and the Lua state (plugin configs validate).
 * Problems go to stderr or the error log. NULL when anything is wrong. */
static mg_config_t *load_config(bool print_errors, mg_lua_t **lua)
{
    mg_config_errors_t errs;
    mg_config_errors_init(&errs);
    mg_config_t *cfg = mg_config_load(conf_path, &errs);
    if (cfg) {
        char err[512];
        mg_router_t *rt = mg_router_build(cfg, err, sizeof(err));
        if (rt == NULL) {
            mg_config_errors_add(&errs, "%s", err);
            mg_config_free(cfg);
            cfg = NULL;
        } else {
            mg_router_free(rt);
        }
    }
    if (cfg) { /* certificates: built here, in the master, before the workers fork */
        size_t before = errs.n;
        cfg->ca = mg_ca_load(cfg, &errs); /* first: listeners and services refer to it */
        if (errs.n == before) cfg->tls = mg_tls_load(cfg, &errs);
        if (errs.n == before) cfg->utls = mg_utls_load(cfg, &errs); /* names both above */
        if (errs.n > before) {
            mg_config_free(cfg);
            cfg = NULL;
        }
    }
    if (cfg && lua) {
        *lua = mg_lua_load(cfg, &errs);
        if (*lua == NULL) {
            mg_config_free(cfg);
            cfg = NULL;
        }
    }
    if (cfg == NULL) {
        for (size_t i = 0; i < errs.n; i++) {
            if (print_errors)
                fprintf(stderr, "%s\n", errs.items[i]);
            else
                mg_log_err("config: %s", errs.items[i]);
        }
    }
    mg_config_errors_free(&errs);
    return cfg;
}

static const char *pid_file_for(const mg_config_t *cfg)
{
    return pid_path ? pid_path : cfg->pid_file;
}

static void listen_key(const mg_listen_t *l, char *key, size_t len)
{
    snprintf(key, len, "%s", l->text);
    char *sp = strchr(key, ' ');
    if (sp) *sp = '\0';
}

static int open_listener(const mg_listen_t *l, bool reuseport)
{
    int fd = socket(l->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (l->addr.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&l->addr, l->addrlen) != 0 ||
        listen(fd, l->backlog > 0 ? l->backlog : 511) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Makes sure every listen address of cfg has a socket for slots [0, nslots), keeping the
 * sockets that already exist. Sockets of addresses no longer configured are closed. */
static int sync_listeners(const mg_config_t *cfg, unsigned nslots, bool reuseport)
{
    bool keep[MAX_LISTEN] = {false};
    listen_set_t *order[MAX_LISTEN];
    for (size_t i = 0; i < cfg->nproxy_listen; i++) {
        char key[160];
        listen_key(&cfg->proxy_listen[i], key, sizeof(key));
        listen_set_t *ls = NULL;
        for (size_t j = 0; j < nlsets; j++)
            if (strcmp(lsets[j].key, key) == 0) ls = &lsets[j], keep[j] = true;
        if (ls == NULL) {
            if (nlsets == MAX_LISTEN) return MG_ERROR;
            ls = &lsets[nlsets];
            keep[nlsets++] = true;
            snprintf(ls->key, sizeof(ls->key), "%s", key);
            for (int s = 0; s < MAX_WORKERS; s++)
                ls->fds[s] = -1;
        }
        for (unsigned s = 0; s < nslots; s++) {
            if (ls->fds[s] >= 0) continue;
            ls->fds[s] = open_listener(&cfg->proxy_listen[i], reuseport);
            if (ls->fds[s] < 0) {
                fprintf(stderr, "moongate: cannot listen on %s: %s\n", cfg->proxy_listen[i].text,
                        strerror(errno));
                mg_log_crit("cannot listen on %s: %s", cfg->proxy_listen[i].text, strerror(errno));
                return MG_ERROR;
            }
        }
        for (unsigned s = nslots; s < MAX_WORKERS; s++) {
            if (ls->fds[s] >= 0) close(ls->fds[s]);
            ls->fds[s] = -1;
        }
        order[i] = ls;
    }
    /* drop addresses that went away, then reorder to match cfg->proxy_listen */
    listen_set_t kept[MAX_LISTEN];
    size_t nkept = 0;
    for (size_t i = 0; i < cfg->nproxy_listen; i++)
        kept[nkept++] = *order[i];
    for (size_t j = 0; j < nlsets; j++) {
        if (keep[j]) continue;
        for (int s = 0; s < MAX_WORKERS; s++)
            if (lsets[j].fds[s] >= 0) close(lsets[j].fds[s]);
    }
    memcpy(lsets, kept, sizeof(listen_set_t) * nkept);
    nlsets = nkept;
    return MG_OK;
}

static int run_worker(const mg_config_t *cfg, unsigned slot, bool standalone)
{
    int fds[MAX_LISTEN];
    for (size_t i = 0; i < nlsets; i++)
        fds[i] = lsets[i].fds[slot];
    /* other slots' sockets stay closed in this worker: each worker owns its own queue */
    for (size_t i = 0; i < nlsets; i++)
        for (int s = 0; s < MAX_WORKERS; s++)
            if (s != (int)slot && lsets[i].fds[s] >= 0) close(lsets[i].fds[s]);
    return mg_worker_run(cfg, fds, nlsets, slot, standalone);
}

static pid_t spawn_worker(const mg_config_t *cfg, unsigned slot)
{
    pid_t pid = fork();
    if (pid < 0) {
        mg_log_crit("fork() failed: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGHUP, SIG_IGN);
        signal(SIGCHLD, SIG_DFL);
        _exit(run_worker(cfg, slot, false) == MG_OK ? 0 : 2);
    }
    procs[nprocs].pid = pid;
    procs[nprocs].slot = slot;
    procs[nprocs].generation = generation;
    procs[nprocs].started = time(NULL);
    nprocs++;
    return pid;
}

static void signal_generation(unsigned gen, int sig, bool older)
{
    for (size_t i = 0; i < nprocs; i++)
        if (older ? procs[i].generation < gen : procs[i].generation == gen) kill(procs[i].pid, sig);
}

static int write_pid_file(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        fprintf(stderr, "moongate: cannot write pid file %s: %s\n", path, strerror(errno));
        return MG_ERROR;
    }
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
    return rename(tmp, path) == 0 ? MG_OK : MG_ERROR;
}

static pid_t read_pid_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) return -1;
    int pid = -1;
    if (fscanf(f, "%d", &pid) != 1) pid = -1;
    fclose(f);
    return pid;
}

static void mkdir_parent(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL) return;
    *slash = '\0';
    mkdir(dir, 0755);
}

/* Raises the soft open-file limit so that max_connections can be reached: each client
 * connection may hold an upstream connection too (nginx's worker_rlimit_nofile, automatic). */
static void raise_nofile_limit(const mg_config_t *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t want = (rlim_t)cfg->limits.max_connections * 2 + 1024;
    if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max) want = rl.rlim_max;
    if (want <= rl.rlim_cur) return;
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        mg_log_warn("cannot raise the open-file limit to %lu: %s", (unsigned long)want,
                    strerror(errno));
}

static int master(mg_config_t *cfg)
{
    unsigned nworkers = (unsigned)MG_MIN(cfg->worker_processes, MAX_WORKERS);
    if (sync_listeners(cfg, nworkers, true) != MG_OK) return 1;
    const char *pidf = pid_file_for(cfg);
    mkdir_parent(pidf);
    if (write_pid_file(pidf) != MG_OK) return 1;

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (mg_watchdog_init(MAX_WORKERS) != MG_OK) mg_log_warn("no watchdog: %s", strerror(errno));
    generation = 1;
    for (unsigned s = 0; s < nworkers; s++)
        spawn_worker(cfg, s);
    mg_log_notice("moongate started: master %d, %u workers", (int)getpid(), nworkers);

    bool stopping = false;
    time_t stop_deadline = 0;
    for (;;) {
        struct timespec ts = {0, 200 * 1000 * 1000}; /* also the watchdog's poll period */
        siginfo_t si;
        int sig = sigtimedwait(&set, &si, &ts);
        if (sig == SIGHUP && !stopping) {
            mg_log_notice("reloading configuration from %s", conf_path);
            mg_lua_t *next_lua = NULL;
            mg_config_t *next = load_config(false, &next_lua);
            if (next == NULL) {
                mg_log_err("reload refused: the running configuration stays");
                continue;
            }
            unsigned n = (unsigned)MG_MIN(next->worker_processes, MAX_WORKERS);
            char gerr[256];
            if (mg_guard_sync(next, gerr, sizeof(gerr)) != MG_OK) {
                mg_log_err("reload refused: %s", gerr);
                mg_lua_close(next_lua);
                mg_config_free(next);
                continue;
            }
            if (sync_listeners(next, n, true) != MG_OK) {
                mg_log_err("reload refused: cannot open listeners");
                mg_lua_close(next_lua);
                mg_config_free(next);
                continue;
            }
            mg_log_open(next);
            generation++;
            mg_lua_t *old_lua = mg_lua;
            mg_lua = next_lua; /* the new workers inherit the new state */
            for (unsigned s = 0; s < n; s++)
                spawn_worker(next, s);
            mg_lua_close(old_lua);
            signal_generation(generation, SIGTERM, true); /* old workers drain and exit */
            mg_config_free(cfg);
            cfg = next;
            nworkers = n;
            mg_log_notice("reload done: generation %u", generation);
        } else if (sig == SIGUSR1) {
            if (mg_log_open(cfg) != MG_OK)
                mg_log_err("cannot reopen the logs");
            else
                mg_log_notice("logs reopened"); /* the first line of the new file */
            for (size_t i = 0; i < nprocs; i++)
                kill(procs[i].pid, SIGUSR1);
        } else if (sig == SIGTERM || sig == SIGQUIT || sig == SIGINT) {
            if (!stopping) {
                stopping = true;
                /* no new connections from now on: they would queue with nobody to serve them */
                for (size_t j = 0; j < nlsets; j++)
                    for (int s = 0; s < MAX_WORKERS; s++)
                        if (lsets[j].fds[s] >= 0) close(lsets[j].fds[s]), lsets[j].fds[s] = -1;
                stop_deadline = time(NULL) + cfg->limits.worker_shutdown_timeout / 1000 + 5;
                mg_log_notice("%s stop requested", sig == SIGTERM ? "graceful" : "fast");
            }
            for (size_t i = 0; i < nprocs; i++)
                kill(procs[i].pid, sig == SIGINT ? SIGQUIT : sig);
        }
        if (!stopping) mg_watchdog_check(cfg->worker_stall_timeout);
        /* reap and respawn */
        pid_t pid;
        int status;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            for (size_t i = 0; i < nprocs; i++) {
                if (procs[i].pid != pid) continue;
                worker_proc_t dead = procs[i];
                procs[i] = procs[--nprocs];
                bool current = dead.generation == generation;
                bool crashed = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
                if (crashed) mg_guard_worker_died(); /* its connections' counts are lost */
                if (current && !stopping) {
                    mg_log_err("worker %d (slot %u) %s; respawning", (int)pid, dead.slot,
                               WIFSIGNALED(status) ? strsignal(WTERMSIG(status)) : "exited");
                    if (time(NULL) - dead.started < 1 && crashed) sleep(1); /* no crash loop */
                    spawn_worker(cfg, dead.slot);
                }
                break;
            }
        }
        if (stopping) {
            if (nprocs == 0) break;
            if (time(NULL) > stop_deadline) {
                for (size_t i = 0; i < nprocs; i++)
                    kill(procs[i].pid, SIGKILL);
            }
        }
    }
    unlink(pidf);
    mg_log_notice("moongate stopped");
    mg_access_log_flush();
    mg_lua_close(mg_lua);
    mg_lua = NULL;
    mg_config_free(cfg);
    return 0;
}

static int single_process(mg_config_t *cfg)
{
    if (sync_listeners(cfg, 1, false) != MG_OK) return 1;
    const char *pidf = pid_file_for(cfg);
    mkdir_parent(pidf);
    write_pid_file(pidf);
    int rc = run_worker(cfg, 0, true);
    unlink(pidf);
    mg_lua_close(mg_lua);
    mg_lua = NULL;
    mg_config_free(cfg);
    return rc == MG_OK ? 0 : 1;
}

static int cmd_run(bool daemonize)
{
    mg_config_t *cfg = load_config(true, &mg_lua);
    if (cfg == NULL) return 1;
    if (cfg->access_log && strncmp(cfg->access_log, "logs/", 5) == 0) mkdir("logs", 0755);
    if (cfg->error_log && strncmp(cfg->error_log, "logs/", 5) == 0) mkdir("logs", 0755);
    if (mg_log_open(cfg) != MG_OK) return 1;
    if (daemonize) {
        pid_t pid = fork();
        if (pid < 0 || pid > 0) {
            mg_lua_close(mg_lua);
            mg_lua = NULL;
            mg_config_free(cfg);
            return pid < 0 ? 1 : 0;
        }
        setsid();
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, 0);
            if (strcmp(cfg->access_log, "stdout") != 0) dup2(devnull, 1);
            if (strcmp(cfg->error_log, "stderr") != 0) dup2(devnull, 2);
            if (devnull > 2) close(devnull);
        }
    }
    raise_nofile_limit(cfg);
    char gerr[256];
    if (mg_guard_sync(cfg, gerr, sizeof(gerr)) != MG_OK) {
        fprintf(stderr, "moongate: %s\n", gerr);
        mg_log_crit("%s", gerr);
        return 1;
    }
    return cfg->master_process ? master(cfg) : single_process(cfg);
}

static int cmd_signal(int sig)
{
    const char *path = pid_path;
    mg_config_t *cfg = NULL;
    if (path == NULL) {
        cfg = load_config(true, NULL);
        if (cfg == NULL) return 1;
        path = cfg->pid_file;
    }
    pid_t pid = read_pid_file(path);
    if (pid <= 0 || kill(pid, sig) != 0) {
        fprintf(stderr, "moongate: no running master found via pid file %s\n", path);
        mg_config_free(cfg);
        return 1;
    }
    if (sig == SIGTERM) { /* stop waits until the master is gone */
        for (int i = 0; i < 600 && kill(pid, 0) == 0; i++)
            usleep(100000);
    }
    mg_config_free(cfg);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
            conf_path = argv[++i];
        else if (strcmp(argv[i], "-p") == 0 && i + 1 < argc)
            pid_path = argv[++i];
        else {
            usage(stderr);
            return 2;
        }
    }
    if (strcmp(cmd, "version") == 0) {
        printf("moongate %s\n", MG_VERSION);
        return 0;
    }
    if (strcmp(cmd, "check") == 0) {
        mg_lua_t *lua = NULL;
        mg_config_t *cfg = load_config(true, &lua);
        if (cfg == NULL) return 1;
        printf("configuration %s is valid\n", conf_path);
        mg_lua_close(lua);
        mg_config_free(cfg);
        return 0;
    }
    if (strcmp(cmd, "run") == 0) return cmd_run(false);
    if (strcmp(cmd, "start") == 0) return cmd_run(true);
    if (strcmp(cmd, "stop") == 0) return cmd_signal(SIGTERM);
    if (strcmp(cmd, "reload") == 0) return cmd_signal(SIGHUP);
    if (strcmp(cmd, "reopen") == 0) return cmd_signal(SIGUSR1);
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0) {
        usage(stdout);
        return 0;
    }
    usage(stderr);
    return 2;
}
