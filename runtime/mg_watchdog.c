/*
 * mg_watchdog.c — shared slots between the master and its workers, one per worker slot.
 * A slot is written by its worker only and read by the master only; `since` is written last
 * on entry and first on exit (with compiler/CPU barriers), so the master never acts on a
 * half-written description for longer than one poll.
 */
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "mg_log.h"
#include "mg_watchdog.h"

typedef struct {
    volatile pid_t pid;
    volatile uint64_t since_ms; /* 0: not inside Lua */
    volatile int warned;        /* SIGUSR2 sent for this stall */
    char phase[16];
    char route[96];
    char request_id[40];
    char plugin[64];
} slot_t;

static slot_t *slots;
static unsigned nslots_total;
static slot_t *mine;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int mg_watchdog_init(unsigned nslots)
{
    if (slots) return MG_OK; /* survives reloads: the slot layout does not change */
    slots = mmap(NULL, sizeof(slot_t) * nslots, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                 -1, 0);
    if (slots == MAP_FAILED) {
        slots = NULL;
        return MG_ERROR;
    }
    nslots_total = nslots;
    return MG_OK;
}

void mg_watchdog_attach(unsigned slot)
{
    if (slots == NULL || slot >= nslots_total) return;
    mine = &slots[slot];
    mine->since_ms = 0;
    mine->warned = 0;
    mine->pid = getpid();
}

static void copy(char *dst, size_t cap, const char *src, size_t len)
{
    if (len >= cap) len = cap - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

void mg_watchdog_enter(const char *phase, const char *route, mg_str_t request_id)
{
    if (mine == NULL) return;
    copy(mine->phase, sizeof(mine->phase), phase, strlen(phase));
    copy(mine->route, sizeof(mine->route), route ? route : "-", route ? strlen(route) : 1);
    copy(mine->request_id, sizeof(mine->request_id), request_id.len ? request_id.data : "-",
         request_id.len ? request_id.len : 1);
    mine->plugin[0] = '\0';
    mine->warned = 0;
    __atomic_store_n(&mine->since_ms, now_ms(), __ATOMIC_RELEASE);
}

void mg_watchdog_plugin(const char *name, size_t len)
{
    if (mine) copy(mine->plugin, sizeof(mine->plugin), name, len);
}

void mg_watchdog_leave(void)
{
    if (mine) __atomic_store_n(&mine->since_ms, 0, __ATOMIC_RELEASE);
}

int mg_watchdog_check(unsigned timeout_ms)
{
    int killed = 0;
    uint64_t now = now_ms();
    for (unsigned i = 0; slots && i < nslots_total; i++) {
        slot_t *s = &slots[i];
        uint64_t since = __atomic_load_n(&s->since_ms, __ATOMIC_ACQUIRE);
        pid_t pid = s->pid;
        if (since == 0 || pid <= 0 || now < since) continue;
        uint64_t stalled = now - since;
        if (stalled > timeout_ms) {
            mg_log_err("worker %u (pid %d) stayed inside Lua for %.1f s (worker_stall_timeout "
                       "%.1f s): plugin \"%s\", %s phase, route \"%s\", request %s; killing it",
                       i, (int)pid, stalled / 1000.0, timeout_ms / 1000.0,
                       s->plugin[0] ? s->plugin : "?", s->phase, s->route, s->request_id);
            s->since_ms = 0;
            s->pid = 0;
            kill(pid, SIGKILL);
            killed++;
        } else if (stalled > timeout_ms / 2 && !s->warned) {
            s->warned = 1;
            kill(pid, SIGUSR2); /* try to end just the request, if the code is interpreted */
        }
    }
    return killed;
}
