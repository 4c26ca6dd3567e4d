/*
 * mg_dns.c — the worker's resolver (mg_dns.h): one c-ares channel per worker whose sockets
 * are watched by the worker's libev loop (the socket-state callback starts and stops one
 * ev_io per socket; one ev_timer follows ares_timeout), so a look-up never blocks the loop and
 * costs no thread. Each name of the configuration has one cache entry: its addresses (the
 * answer of the first record type of dns_order that has some, CNAMEs followed by the
 * recursive resolver), when they expire (the smallest record TTL, or dns_valid_ttl), and what
 * waits for them. An expired answer is still served for dns_stale_ttl while a refresh runs; a
 * name that does not exist is remembered for dns_not_found_ttl, a failed look-up (timeout,
 * SERVFAIL, refused) for dns_error_ttl, during which a good answer is kept rather than
 * dropped. A one-second timer refreshes what expired: targets' names always (their addresses
 * are the balancer's entries), services' names when some request used them since the last
 * answer. Requests for a name being looked up share one query unless dns_no_sync.
 * Names that plugins' cosockets meet at run time get entries of their own after the
 * configuration's (DYN_MAX of them, the least recently used one with nothing in flight reused
 * when full), answered from the hosts file when it has them, else looked up like the others;
 * the channel is opened at the first name to look up.
 */
#include <arpa/inet.h>
#include <ares.h>
#include <ev.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mg_dns.h"
#include "mg_log.h"
#include "mg_request.h"

#define MAX_SOCKS 16 /* sockets c-ares may hold open at once (servers x UDP/TCP) */
#define QUERY_TIMEOUT_MS 2000
#define QUERY_TRIES 2
#define REFRESH_EVERY 1.0
#define DYN_MAX 128 /* cosockets' names cached at once */

typedef struct {
    const char *name;
    mg_dns_addrs_t a;
    int state;        /* MG_DNS_* */
    double expires;   /* OK: end of the TTL; NOT_FOUND / ERROR: when to ask again */
    double retry_at;  /* after a failed refresh of a good answer: no query before */
    bool failed;      /* the last look-up failed (the answer, if any, is older) */
    unsigned pending; /* queries in flight */
    int last_type;    /* dns_order LAST: the type that answered last */
    bool used;        /* a request asked since the last answer */
    bool target;      /* a target's name: refreshed whatever the traffic */
    bool waking;      /* its waiters are being called: not to be reused meanwhile */
    int status;       /* ARES_* of the last failed look-up */
    double last_used; /* cosockets' names: when last asked for (the reuse order) */
    char *owned;      /* cosockets' names: the name's copy */
    mg_dns_waiter_t *waiters;
} entry_t;

typedef struct {
    entry_t *e;
    unsigned step; /* index in the entry's type sequence */
    int types[2];
    unsigned ntypes;
} query_t;

typedef struct {
    ev_io io;
    int fd; /* -1: free */
} sock_t;

static const mg_config_t *dns_cfg;
static ares_channel channel;
static bool have_channel;
static entry_t *entries; /* the configuration's names, then room for DYN_MAX more */
static size_t nentries, nconf;
static sock_t socks[MAX_SOCKS];
static ev_timer timeout_timer, refresh_timer;
static void (*on_change)(unsigned name);

static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable);
static void io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void refresh_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void arm_timeout(void);
static int open_channel(void);
static void query(entry_t *e);
static void query_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen);
static void wake(entry_t *e);

/* ---- pure helpers ---- */

unsigned mg_dns_ttl(unsigned record_ttl, unsigned valid_ttl)
{
    if (valid_ttl > 0) return valid_ttl;
    if (record_ttl < 1) return 1;
    return record_ttl > MG_DNS_MAX_TTL ? MG_DNS_MAX_TTL : record_ttl;
}

/* The address bytes of a (4 or 16), or NULL for another family. */
static const void *addr_bytes(const struct sockaddr_storage *a, size_t *len)
{
    if (a->ss_family == AF_INET) {
        *len = 4;
        return &((const struct sockaddr_in *)a)->sin_addr;
    }
    if (a->ss_family == AF_INET6) {
        *len = 16;
        return &((const struct sockaddr_in6 *)a)->sin6_addr;
    }
    *len = 0;
    return NULL;
}

static int addr_cmp(const void *x, const void *y)
{
    const struct sockaddr_storage *a = x, *b = y;
    if (a->ss_family != b->ss_family) return a->ss_family < b->ss_family ? -1 : 1;
    size_t la, lb;
    const void *pa = addr_bytes(a, &la), *pb = addr_bytes(b, &lb);
    if (pa == NULL || pb == NULL) return 0;
    return memcmp(pa, pb, la);
}

bool mg_dns_same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    return a->ss_family != AF_UNSPEC && addr_cmp(a, b) == 0;
}

size_t mg_dns_normalise(struct sockaddr_storage *addrs, size_t n)
{
    if (n == 0) return 0;
    qsort(addrs, n, sizeof(*addrs), addr_cmp);
    size_t m = 1;
    for (size_t i = 1; i < n; i++)
        if (addr_cmp(&addrs[m - 1], &addrs[i]) != 0) addrs[m++] = addrs[i];
    return m;
}

uint64_t mg_dns_assign(struct sockaddr_storage *keys, size_t nslots,
                       const struct sockaddr_storage *addrs, size_t n, unsigned *out)
{
    uint64_t taken = 0, changed = 0;
    bool placed[MG_DNS_MAX_ADDRS > 64 ? MG_DNS_MAX_ADDRS : 64] = {false};
    if (nslots > 64) nslots = 64;
    if (n > nslots) n = nslots;
    /* first the addresses that keep their slot */
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < nslots; k++) {
            if (!((taken >> k) & 1) && mg_dns_same_addr(&keys[k], &addrs[i])) {
                out[i] = (unsigned)k;
                taken |= 1ull << k;
                placed[i] = true;
                break;
            }
        }
    }
    /* then the new ones: a free slot first, else one whose address left the answer */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            if (placed[i]) continue;
            for (size_t k = 0; k < nslots; k++) {
                if ((taken >> k) & 1) continue;
                if (pass == 0 && keys[k].ss_family != AF_UNSPEC) continue;
                out[i] = (unsigned)k;
                taken |= 1ull << k;
                placed[i] = true;
                keys[k] = addrs[i];
                changed |= 1ull << k;
                break;
            }
        }
    }
    return changed;
}

bool mg_dns_hosts_find(const char *text, size_t len, const char *name, int family,
                       struct sockaddr_storage *out, socklen_t *outlen)
{
    const char *p = text, *end = text + len;
    size_t nlen = strlen(name);
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL) eol = end;
        const char *hash = memchr(p, '#', (size_t)(eol - p));
        const char *stop = hash ? hash : eol;
        char addr[64];
        size_t alen = 0;
        bool first = true, match = false;
        const char *q = p;
        while (q < stop) {
            while (q < stop && (*q == ' ' || *q == '\t' || *q == '\r'))
                q++;
            const char *w = q;
            while (q < stop && *q != ' ' && *q != '\t' && *q != '\r')
                q++;
            size_t wl = (size_t)(q - w);
            if (wl == 0) break;
            if (first) {
                if (wl >= sizeof(addr)) break;
                memcpy(addr, w, wl);
                alen = wl;
                first = false;
            } else if (wl == nlen && strncasecmp(w, name, nlen) == 0) {
                match = true;
            }
        }
        p = eol + 1;
        if (!match) continue;
        addr[alen] = '\0';
        memset(out, 0, sizeof(*out));
        if (family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *)out;
            if (inet_pton(AF_INET, addr, &in->sin_addr) != 1) continue;
            in->sin_family = AF_INET;
            *outlen = sizeof(*in);
        } else {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
            if (inet_pton(AF_INET6, addr, &in6->sin6_addr) != 1) continue;
            in6->sin6_family = AF_INET6;
            *outlen = sizeof(*in6);
        }
        return true;
    }
    return false;
}

/* ---- the channel on the event loop ---- */

int mg_dns_init(const mg_config_t *cfg, void (*changed)(unsigned name))
{
    dns_cfg = cfg;
    on_change = changed;
    for (size_t i = 0; i < MAX_SOCKS; i++)
        socks[i].fd = -1;
    entries = calloc(cfg->ndns_names + DYN_MAX, sizeof(entry_t));
    if (entries == NULL) return MG_ERROR;
    nentries = nconf = cfg->ndns_names;
    for (size_t i = 0; i < nentries; i++)
        entries[i].name = cfg->dns_names[i];
    for (size_t i = 0; i < cfg->ntargets; i++)
        if (cfg->targets[i]->dns >= 0) entries[cfg->targets[i]->dns].target = true;
    if (nconf == 0) return MG_OK; /* opened at a cosocket's first name, if ever */
    if (open_channel() != MG_OK) return MG_ERROR;
    for (size_t i = 0; i < nentries; i++)
        query(&entries[i]);
    return MG_OK;
}

/* The c-ares channel on the worker's loop; MG_OK or MG_ERROR (logged). */
static int open_channel(void)
{
    const mg_config_t *cfg = dns_cfg;
    if (have_channel) return MG_OK;
    if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS) return MG_ERROR;
    struct ares_options o;
    memset(&o, 0, sizeof(o));
    o.sock_state_cb = sock_state_cb;
    o.timeout = QUERY_TIMEOUT_MS;
    o.tries = QUERY_TRIES;
    o.lookups = (char *)"b"; /* DNS only: the hosts file was read at load */
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_LOOKUPS;
    int rc = ares_init_options(&channel, &o, mask);
    if (rc != ARES_SUCCESS) {
        mg_log_crit("cannot start the DNS resolver: %s", ares_strerror(rc));
        ares_library_cleanup();
        return MG_ERROR;
    }
    if (cfg->dns_servers && (rc = ares_set_servers_ports_csv(channel, cfg->dns_servers)) != 0) {
        /* never the system's servers instead: a later attempt tries again */
        mg_log_crit("cannot use dns_resolver %s: %s", cfg->dns_servers, ares_strerror(rc));
        ares_destroy(channel);
        ares_library_cleanup();
        return MG_ERROR;
    }
    have_channel = true;
    ev_init(&timeout_timer, timeout_cb);
    ev_timer_init(&refresh_timer, refresh_cb, REFRESH_EVERY, REFRESH_EVERY);
    ev_timer_start(mg_worker.loop, &refresh_timer);
    return MG_OK;
}

void mg_dns_stop(void)
{
    if (have_channel) {
        ev_timer_stop(mg_worker.loop, &refresh_timer);
        ev_timer_stop(mg_worker.loop, &timeout_timer);
        ares_destroy(channel); /* callbacks run with ARES_EDESTRUCTION: queries are freed */
        have_channel = false;
        ares_library_cleanup();
        for (size_t i = 0; i < MAX_SOCKS; i++) {
            if (socks[i].fd < 0) continue;
            ev_io_stop(mg_worker.loop, &socks[i].io);
            socks[i].fd = -1;
        }
    }
    for (size_t i = 0; i < nentries; i++) {
        /* waiters still linked (a cosocket of a timer) must not point here once it is freed */
        while (entries[i].waiters)
            mg_dns_cancel(entries[i].waiters);
        free(entries[i].owned);
    }
    free(entries);
    entries = NULL;
    nentries = nconf = 0;
}

static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    sock_t *free_slot = NULL, *s = NULL;
    for (size_t i = 0; i < MAX_SOCKS && s == NULL; i++) {
        if (socks[i].fd == fd) s = &socks[i];
        if (socks[i].fd < 0 && free_slot == NULL) free_slot = &socks[i];
    }
    if (!readable && !writable) { /* closed */
        if (s) {
            ev_io_stop(mg_worker.loop, &s->io);
            s->fd = -1;
        }
        return;
    }
    if (s == NULL) {
        if (free_slot == NULL) {
            /* c-ares never holds that many with our few servers; its own timeout ends the
             * query if it ever did */
            mg_log_err("DNS: more than %d resolver sockets", MAX_SOCKS);
            return;
        }
        s = free_slot;
        s->fd = fd;
        ev_init(&s->io, io_cb);
    }
    ev_io_stop(mg_worker.loop, &s->io);
    ev_io_set(&s->io, fd, (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
    ev_io_start(mg_worker.loop, &s->io);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    sock_t *s = MG_CONTAINER_OF(w, sock_t, io);
    ares_socket_t fd = s->fd;
    ares_process_fd(channel, (revents & EV_READ) ? fd : ARES_SOCKET_BAD,
                    (revents & EV_WRITE) ? fd : ARES_SOCKET_BAD);
    arm_timeout();
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    ares_process_fd(channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    arm_timeout();
}

/* The timer follows c-ares' next deadline (a retransmission, a query's end). */
static void arm_timeout(void)
{
    if (!have_channel) return;
    struct timeval tv, *tvp = ares_timeout(channel, NULL, &tv);
    ev_timer_stop(mg_worker.loop, &timeout_timer);
    if (tvp == NULL) return;
    double after = (double)tvp->tv_sec + (double)tvp->tv_usec * 1e-6;
    ev_timer_set(&timeout_timer, after > 0 ? after : 0.001, 0.);
    ev_timer_start(mg_worker.loop, &timeout_timer);
}

static double now(void)
{
    return ev_now(mg_worker.loop);
}

static void refresh_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    double t = now();
    for (size_t i = 0; i < nentries; i++) {
        entry_t *e = &entries[i];
        if (e->pending || !(e->target || e->used)) continue;
        if (t >= e->expires && t >= e->retry_at) query(e);
    }
}

/* ---- look-ups ---- */

static void start(query_t *q)
{
    q->e->pending++;
    ares_search(channel, q->e->name, 1 /* C_IN */, q->types[q->step], query_cb, q);
    arm_timeout();
}

/* Sends a look-up of e: the types of dns_order, the last one that answered first (LAST). */
static void query(entry_t *e)
{
    if (!have_channel && open_channel() != MG_OK) {
        e->status = ARES_ENOTINITIALIZED;
        return;
    }
    query_t *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        mg_log_err("DNS: out of memory querying %s", e->name);
        return;
    }
    q->e = e;
    if (dns_cfg->dns_last && e->last_type) q->types[q->ntypes++] = e->last_type;
    for (unsigned i = 0; i < dns_cfg->ndns_types; i++)
        if (dns_cfg->dns_types[i] != (q->ntypes ? q->types[0] : 0))
            q->types[q->ntypes++] = dns_cfg->dns_types[i];
    start(q);
}

/* The addresses of a reply of type `type`: their count, *ttl the smallest record TTL. */
static size_t parse(int type, const unsigned char *abuf, int alen, struct sockaddr_storage *out,
                    unsigned *ttl)
{
    int n = MG_DNS_MAX_ADDRS;
    size_t m = 0;
    unsigned min = MG_DNS_MAX_TTL;
    if (type == MG_DNS_A) {
        struct ares_addrttl a[MG_DNS_MAX_ADDRS];
        if (ares_parse_a_reply(abuf, alen, NULL, a, &n) != ARES_SUCCESS) return 0;
        for (int i = 0; i < n; i++, m++) {
            struct sockaddr_in *in = (struct sockaddr_in *)&out[m];
            memset(&out[m], 0, sizeof(out[m]));
            in->sin_family = AF_INET;
            in->sin_addr = a[i].ipaddr;
            unsigned ttl_i = a[i].ttl < 0 ? 0 : (unsigned)a[i].ttl;
            if (ttl_i < min) min = ttl_i;
        }
    } else {
        struct ares_addr6ttl a[MG_DNS_MAX_ADDRS];
        if (ares_parse_aaaa_reply(abuf, alen, NULL, a, &n) != ARES_SUCCESS) return 0;
        for (int i = 0; i < n; i++, m++) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&out[m];
            memset(&out[m], 0, sizeof(out[m]));
            in6->sin6_family = AF_INET6;
            memcpy(&in6->sin6_addr, &a[i].ip6addr, 16);
            unsigned ttl_i = a[i].ttl < 0 ? 0 : (unsigned)a[i].ttl;
            if (ttl_i < min) min = ttl_i;
        }
    }
    *ttl = min;
    return m;
}

/* e's address set becomes addrs (normalised); true when it changed. */
static bool set_addrs(entry_t *e, struct sockaddr_storage *addrs, size_t n)
{
    n = mg_dns_normalise(addrs, n);
    bool same = n == e->a.naddrs;
    for (size_t i = 0; same && i < n; i++)
        same = addr_cmp(&addrs[i], &e->a.addrs[i]) == 0;
    if (same) return false;
    memcpy(e->a.addrs, addrs, n * sizeof(*addrs));
    e->a.naddrs = (unsigned)n;
    e->a.generation++;
    return true;
}

static void query_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    query_t *q = arg;
    entry_t *e = q->e;
    e->pending--;
    if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
        free(q);
        return;
    }
    int type = q->types[q->step];
    struct sockaddr_storage addrs[MG_DNS_MAX_ADDRS];
    unsigned ttl = 0;
    size_t n = status == ARES_SUCCESS ? parse(type, abuf, alen, addrs, &ttl) : 0;
    bool absent = status == ARES_SUCCESS || status == ARES_ENODATA || status == ARES_ENOTFOUND;
    if (n == 0 && absent && q->step + 1 < q->ntypes) { /* the next type of dns_order */
        q->step++;
        start(q);
        return;
    }
    free(q);
    double t = now();
    bool changed = false;
    int was = e->state;
    if (n > 0) {
        changed = set_addrs(e, addrs, n);
        e->state = MG_DNS_OK;
        e->expires = t + mg_dns_ttl(ttl, dns_cfg->dns_valid_ttl);
        e->failed = false;
        e->retry_at = 0;
        e->last_type = type;
        e->used = false;
        if (was != MG_DNS_OK) mg_log_info("DNS: %s resolved (%u addresses)", e->name, e->a.naddrs);
    } else if (absent) {
        changed = set_addrs(e, addrs, 0);
        e->state = MG_DNS_NOT_FOUND;
        e->status = status == ARES_SUCCESS ? ARES_ENODATA : status;
        e->expires = t + dns_cfg->dns_not_found_ttl;
        e->failed = true;
        e->used = false;
        if (was != MG_DNS_NOT_FOUND) mg_log_warn("DNS: %s: name not found", e->name);
    } else {
        /* a failure keeps a good answer (served while fresh or stale, and by the balancer) */
        e->failed = true;
        e->status = status;
        e->retry_at = t + dns_cfg->dns_error_ttl;
        if (e->state != MG_DNS_OK) {
            e->state = MG_DNS_ERROR;
            e->expires = e->retry_at;
        }
        e->used = false;
        mg_log_warn("DNS: looking up %s failed: %s", e->name, ares_strerror(status));
    }
    if (changed && on_change && (size_t)(e - entries) < nconf) /* cosockets' names: no balancer */
        on_change((unsigned)(e - entries));
    wake(e);
}

/* Calls every waiter of e once: the list is taken first, so a callback that waits again is
 * kept for the next answer, and one that cancels another waiter unlinks it from `list`. */
static void wake(entry_t *e)
{
    mg_dns_waiter_t *list = e->waiters;
    e->waiters = NULL;
    e->waking = true;
    if (list) list->prev = &list;
    while (list) {
        mg_dns_waiter_t *w = list;
        list = w->next;
        if (list) list->prev = &list;
        w->next = NULL;
        w->prev = NULL;
        w->cb(w);
    }
    e->waking = false;
}

int mg_dns_state(unsigned i)
{
    return i < nentries ? entries[i].state : MG_DNS_NONE;
}

const mg_dns_addrs_t *mg_dns_addrs(unsigned i)
{
    static const mg_dns_addrs_t none;
    return i < nentries ? &entries[i].a : &none;
}

int mg_dns_resolve(unsigned i, bool any_age, const mg_dns_addrs_t **out)
{
    if (i >= nentries) return MG_DECLINED;
    entry_t *e = &entries[i];
    double t = now();
    e->used = true;
    *out = &e->a;
    if (e->state == MG_DNS_OK) {
        if (t < e->expires || any_age) return MG_OK;
        if (t < e->expires + dns_cfg->dns_stale_ttl) {
            if (!e->pending && t >= e->retry_at) query(e); /* served stale meanwhile */
            return MG_OK;
        }
        if (e->failed && t < e->retry_at) return MG_DECLINED;
    } else if (e->state != MG_DNS_NONE && t < e->expires) {
        return MG_DECLINED;
    }
    if (!e->pending || dns_cfg->dns_no_sync) query(e);
    if (e->pending == 0) /* the query ended at once */
        return e->state == MG_DNS_OK ? MG_OK : MG_DECLINED;
    return MG_AGAIN;
}

void mg_dns_wait(unsigned i, mg_dns_waiter_t *w)
{
    entry_t *e = &entries[i];
    w->next = e->waiters;
    if (w->next) w->next->prev = &w->next;
    w->prev = &e->waiters;
    e->waiters = w;
}

void mg_dns_cancel(mg_dns_waiter_t *w)
{
    if (w->prev == NULL) return;
    *w->prev = w->next;
    if (w->next) w->next->prev = w->prev;
    w->next = NULL;
    w->prev = NULL;
}

/* ---- names met at run time (cosockets) ---- */

int mg_dns_name(const char *name)
{
    if (entries == NULL) return -1;
    double t = now();
    entry_t *e = NULL, *lru = NULL;
    for (size_t i = nconf; i < nentries; i++) {
        entry_t *d = &entries[i];
        if (strcasecmp(d->name, name) == 0) {
            d->last_used = t;
            return (int)i;
        }
        if (d->pending || d->waiters || d->waking) continue;
        if (lru == NULL || d->last_used < lru->last_used) lru = d;
    }
    for (size_t i = 0; i < nconf; i++) /* a service's name is shared */
        if (strcasecmp(entries[i].name, name) == 0) return (int)i;
    if (nentries < nconf + DYN_MAX) {
        e = &entries[nentries++];
    } else {
        if (lru == NULL) return -1; /* every entry has a look-up in flight */
        e = lru;
        free(e->owned);
        memset(e, 0, sizeof(*e));
    }
    e->owned = strdup(name);
    if (e->owned == NULL) {
        memset(e, 0, sizeof(*e));
        e->name = "";
        return -1;
    }
    e->name = e->owned;
    e->last_used = t;
    /* the hosts file's answer never expires (the file is read at load, as for services) */
    for (unsigned k = 0; dns_cfg->dns_hosts && k < dns_cfg->ndns_types; k++) {
        struct sockaddr_storage a;
        socklen_t alen;
        int family = dns_cfg->dns_types[k] == MG_DNS_A ? AF_INET : AF_INET6;
        if (!mg_dns_hosts_find(dns_cfg->dns_hosts, dns_cfg->dns_hosts_len, name, family, &a, &alen))
            continue;
        set_addrs(e, &a, 1);
        e->state = MG_DNS_OK;
        e->expires = INFINITY;
        break;
    }
    return (int)(e - entries);
}

const char *mg_dns_failure(unsigned i)
{
    if (i >= nentries || entries[i].status == 0) return "no address";
    if (entries[i].status == ARES_ENOTINITIALIZED) return "resolver unavailable";
    return ares_strerror(entries[i].status);
}
