/*
 * mg_config.h — the validated configuration, as the rest of the runtime sees it.
 * mg_config.c reads one YAML (or JSON) file with libyaml, applies MOONGATE_<SETTING>
 * environment overrides, validates every field and reports each problem as
 * "PATH: message" (e.g. `services[1].routes[0].paths[2]: must start with "/" or "~"`).
 * A loaded config is immutable and owned by its pool: a reload builds a new one.
 */
#ifndef MG_CONFIG_H
#define MG_CONFIG_H

#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>

#include "mg_core.h"
#include "mg_ip.h"
#include "mg_pool.h"

/* Consumer credential kinds (Kong's entity names), nested in consumers or at the top level. */
#define MG_NCREDENTIAL_KINDS 5
extern const char *const mg_credential_kinds[MG_NCREDENTIAL_KINDS];

typedef struct {
    char *text;                   /* as written, e.g. "127.0.0.1:8000 ssl" (for messages) */
    struct sockaddr_storage addr; /* resolved numeric address (IPv4 or IPv6, or "*"=0.0.0.0) */
    socklen_t addrlen;
    bool ssl;    /* "ssl" flag: TLS is terminated on this listener (mg_tls.c) */
    int backlog; /* "backlog=N" flag, default 511 */
} mg_listen_t;

/* Limits on everything a client controls. Sizes in bytes, times in milliseconds. */
typedef struct {
    size_t client_max_body_size;      /* 0 = unlimited; default 8m -> 413 */
    size_t max_request_line;          /* default 8k -> 414 */
    size_t max_header_line;           /* one header field line, default 8k -> 431 */
    size_t max_headers_size;          /* whole request head, default 32k -> 431 */
    unsigned max_headers;             /* header count, default 100 -> 431 */
    unsigned client_header_timeout;   /* total deadline for the head, default 10s -> 408 */
    unsigned client_body_timeout;     /* between body reads, default 60s -> 408 */
    unsigned send_timeout;            /* between successful writes to the client, default 60s */
    unsigned keepalive_timeout;       /* idle client connection, default 60s; 0 disables */
    unsigned keepalive_requests;      /* per client connection, default 1000 */
    unsigned max_connections;         /* per worker, default 16384 */
    size_t client_body_buffer_size;   /* largest body plugins may read whole, default 1m */
    unsigned worker_shutdown_timeout; /* graceful stop / reload drain, default 10s */
    unsigned upstream_keepalive_pool_size;    /* idle per service and worker, default 512 */
    unsigned upstream_keepalive_max_requests; /* default 10000 (Kong) */
    unsigned upstream_keepalive_idle_timeout; /* default 60s */
    unsigned tls_handshake_timeout;           /* accept to end of TLS handshake, default 10s */
} mg_limits_t;

/* A rate: `n` events per `per_ms` milliseconds; n == 0 means off. Written 20, "20/s",
 * "20r/s" (per second) or "600/m", "600r/m" (per minute), nginx's limit_req notation. */
typedef struct {
    unsigned n;
    unsigned per_ms;
} mg_rate_t;

/* Per-client-address guards (mg_guard.c), checked before routing and before any Lua. The
 * address is the TCP peer's: they run before the head is read, so X-Forwarded-For and
 * real_ip_header play no part. Every guard is off (0) by default. */
typedef struct {
    unsigned per_ip_connections;      /* concurrent connections, node-wide; beyond: closed */
    mg_rate_t per_ip_connection_rate; /* new connections; beyond: closed at accept */
    mg_rate_t per_ip_request_rate;    /* requests (token bucket); beyond: 429 */
    unsigned per_ip_request_burst;    /* bucket size; 0 = one second's worth, at least 1 */
    mg_cidr_t *exempt_ips;            /* CIDRs no guard applies to (health checkers) */
    size_t nexempt_ips;
    unsigned ipv6_prefix; /* IPv6 clients are counted per prefix of this length, default 64 */
    size_t zone_size;     /* the shared table of tracked addresses, default 4m */
} mg_guards_t;

/* Kong's hash_on / hash_fallback inputs (consistent hashing). */
enum {
    MG_HASH_NONE,
    MG_HASH_CONSUMER,
    MG_HASH_IP,
    MG_HASH_HEADER,
    MG_HASH_COOKIE,
    MG_HASH_PATH,
    MG_HASH_QUERY_ARG,
    MG_HASH_URI_CAPTURE,
};

/* A target of an upstream: "host:port", an address (IP literal or dns_hostsfile entry, `addr`
 * set at load) or a name the workers resolve (`dns` >= 0, mg_dns.c): each address of its
 * answer is a balancer entry with the target's weight. */
typedef struct {
    char *target;    /* as normalised: "host:port" (for logs and the hash ring) */
    char *host;      /* "[v6]" bracketed like service hosts */
    uint16_t port;   /* default 8000 (Kong) */
    unsigned weight; /* 0..65535, default 100; 0 = no traffic */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    unsigned index; /* position in mg_config_t.targets (keepalive pool per target) */
    int dns;        /* index in mg_config_t.dns_names, or -1: `addr` is the address */
    unsigned slot;  /* first of its address slots (keepalive pools, health): MG_DNS_MAX_ADDRS
                       for a name, 1 for an address */
} mg_target_t;

/* Addresses kept of one DNS answer (a name's balancer entries at most). */
#define MG_DNS_MAX_ADDRS 16
/* Record types of dns_order (LAST is a flag, CNAME is followed by the recursive resolver). */
enum { MG_DNS_A = 1, MG_DNS_AAAA = 28 };

/* One side (healthy or unhealthy) of Kong's active or passive health checks. A threshold of
 * 0 turns that count off; `interval` (active only, seconds, 0 = no probes). */
typedef struct {
    double interval;
    unsigned successes;                             /* healthy */
    unsigned http_failures, tcp_failures, timeouts; /* unhealthy */
    int *http_statuses;
    size_t nhttp_statuses;
} mg_hc_side_t;

enum { MG_HC_TCP, MG_HC_HTTP, MG_HC_HTTPS, MG_HC_GRPC, MG_HC_GRPCS };

/* Kong's upstream `healthchecks` record (defaults as Kong). */
typedef struct {
    struct {
        int type; /* MG_HC_* */
        char *http_path;
        double timeout;
        unsigned concurrency;
        char *https_sni;               /* type https: the SNI sent; NULL = as for traffic */
        bool https_verify_certificate; /* type https: default true */
        mg_hc_side_t healthy, unhealthy;
    } active;
    struct {
        int type;
        mg_hc_side_t healthy, unhealthy;
    } passive;
    double threshold; /* 0..100 */
    bool passive_on;  /* some passive unhealthy threshold > 0: live traffic is counted */
    bool active_on;   /* some active interval > 0: targets are probed */
} mg_healthchecks_t;

/* Kong's upstream entity: a named pool of targets a service's `host` can name. */
typedef struct mg_upstream_s {
    char *name;
    /* MG_LB_* (mg_balancer.h): round-robin, least-connections, consistent-hashing, latency */
    int algorithm;
    int hash_on, hash_fallback;                  /* MG_HASH_* */
    char *hash_on_header, *hash_fallback_header; /* lower-cased */
    char *hash_on_cookie, *hash_on_cookie_path;  /* path default "/" */
    char *hash_on_query_arg, *hash_fallback_query_arg;
    char *hash_on_uri_capture, *hash_fallback_uri_capture; /* named groups of route regexes */
    /* the Host sent to the targets; NULL = the target's host:port (Kong) */
    char *host_header;
    unsigned slots; /* 10..65536, default 10000 */
    mg_target_t *targets;
    size_t ntargets;
    mg_healthchecks_t healthchecks;
    /* mTLS to the targets of https services: `{id: <certificates id>}` as written, checked
     * by mg_utls_load (NULL = none) */
    struct mg_value_s *client_certificate;
    /* the client TLS context of `https` probes (mg_utls.h), made by mg_utls_load */
    struct mg_utls_ctx_s *probe_tls;
    char *conf_path; /* "upstreams[1]", for messages after the load */
    unsigned index;  /* position in mg_config_t.upstreams */
} mg_upstream_t;

typedef struct mg_service_s {
    char *name;     /* may be NULL for unnamed services */
    char *protocol; /* "http" or "https" (TLS to the backend, mg_utls.c) */
    char *host;
    uint16_t port;
    char *path;                                            /* NULL or starts with "/" */
    unsigned retries;                                      /* default 5 */
    unsigned connect_timeout, write_timeout, read_timeout; /* ms, default 60000 */
    struct sockaddr_storage addr; /* host as an address (IP literal or dns_hostsfile) */
    socklen_t addrlen;
    int dns; /* index in mg_config_t.dns_names when host is a name resolved by the workers
                (mg_dns.c), else -1 (`addr` is set) */
    unsigned index;
    const mg_upstream_t *upstream; /* `host` names an upstream: balanced over its targets
                                      (addr is then unset) */
    /* upstream TLS (protocol https), Kong 3.x fields, checked and built by mg_utls_load */
    bool tls_verify;                       /* default true (Kong: false) */
    int tls_verify_depth;                  /* 0..64; -1 = unset (OpenSSL's default, 100) */
    struct mg_value_s *ca_certificates;    /* ids as written; NULL = the system store */
    struct mg_value_s *client_certificate; /* {id: <certificates id>} as written, or NULL */
    struct mg_utls_ctx_s *tls;             /* the client context, NULL for plain http */
    char *conf_path;                       /* "services[2]", for messages after the load */
    /* retry POST, PATCH, ... even after sending them (default false: idempotent only) */
    bool retry_non_idempotent;
} mg_service_t;

typedef struct {
    char *name;    /* lower-cased header name */
    char **values; /* match any of these (case-insensitive; "~*re" later) */
    size_t nvalues;
} mg_header_match_t;

typedef struct mg_route_s {
    char *name;            /* may be NULL */
    mg_service_t *service; /* never NULL after validation */
    char **hosts;
    size_t nhosts; /* lower-cased; may contain one leading or trailing "*" and ":port" */
    char **paths;
    size_t npaths; /* "/prefix" or "~regex" */
    char **methods;
    size_t nmethods; /* upper-case */
    char **snis;
    size_t nsnis;
    char **protocols;
    size_t nprotocols; /* default ["http","https"] */
    mg_header_match_t *headers;
    size_t nheaders;
    int regex_priority; /* default 0 */
    /* https_redirect_status_code as an index in 426, 301, 302, 307, 308: the answer to plain
     * http on an https-only route */
    unsigned https_redirect;
    bool strip_path;    /* default true (Kong) */
    bool preserve_host; /* default false */
    unsigned index;     /* position in mg_config_t.routes: stable tie-breaker */
} mg_route_t;

/* A configuration value kept as written, for what Lua validates (plugin configs, consumer
 * credentials): YAML 1.1 plain scalars are resolved (null/~, true/false/yes/no/on/off,
 * integers, floats); quoted scalars stay strings. */
typedef enum {
    MG_VAL_NULL,
    MG_VAL_BOOL,
    MG_VAL_INT,
    MG_VAL_FLOAT,
    MG_VAL_STRING,
    MG_VAL_ARRAY,
    MG_VAL_MAP,
} mg_value_kind_t;

typedef struct mg_value_s {
    mg_value_kind_t kind;
    int line; /* 1-based line in the file (for messages) */
    union {
        bool boolean;
        int64_t integer;
        double number;
    } u;
    char *str;                /* MG_VAL_STRING, NUL-terminated */
    size_t len;               /* string length, or item count for arrays and maps */
    char **keys;              /* MG_VAL_MAP: len keys */
    struct mg_value_s *items; /* MG_VAL_ARRAY / MG_VAL_MAP: len items */
} mg_value_t;

/* The value of `key` in a MG_VAL_MAP value, or NULL (also when map is not a map). */
const mg_value_t *mg_value_get(const mg_value_t *map, const char *key);

/* One plugin entity wherever it was declared; Lua validates `config` against the plugin's
 * schema and builds the per-route chains. */
typedef struct {
    char *name;
    char *path;         /* e.g. "services[0].plugins[1]", for error messages */
    int service;        /* index in cfg->services, or -1 */
    int route;          /* index in cfg->routes, or -1 */
    int consumer;       /* index in cfg->consumers, or -1 */
    bool enabled;       /* default true */
    mg_value_t *config; /* the `config` map as written; NULL when absent */
    mg_value_t *entity; /* the whole entity (name, config, protocols, tags, ...) */
} mg_plugin_conf_t;

typedef struct {
    char *id;           /* NULL when absent (Lua derives a stable one) */
    char *username;     /* NULL when absent */
    char *custom_id;    /* NULL when absent */
    char *path;         /* "consumers[3]" */
    mg_value_t *entity; /* the whole entity, credentials included */
} mg_consumer_t;

typedef struct {
    char *name;
    size_t size; /* bytes */
} mg_shdict_conf_t;

/* ssl_verify_client */
enum { MG_VERIFY_OFF, MG_VERIFY_OPTIONAL, MG_VERIFY_ON };

typedef enum {
    MG_LOG_DEBUG,
    MG_LOG_INFO,
    MG_LOG_NOTICE,
    MG_LOG_WARN,
    MG_LOG_ERR,
    MG_LOG_CRIT
} mg_log_level_t;

typedef struct mg_config_s {
    mg_pool_t *pool; /* owns everything below */
    char *path;      /* file it was read from */
    char *prefix;    /* directory relative paths resolve against; default "." */

    mg_listen_t *proxy_listen;
    size_t nproxy_listen;
    mg_listen_t *admin_listen;
    size_t nadmin_listen;
    int worker_processes;     /* "auto" -> number of online CPUs */
    bool master_process;      /* default true */
    char *pid_file;           /* default "logs/moongate.pid" (relative to prefix) */
    char *access_log;         /* path, "stdout" or "off"; default "logs/access.log" */
    char *error_log;          /* path or "stderr"; default "stderr" */
    mg_log_level_t log_level; /* default notice */
    mg_cidr_t *trusted_ips;
    size_t ntrusted_ips;
    char *real_ip_header;    /* default "X-Real-IP" (Kong's default) */
    char *request_id_header; /* default "X-Request-ID"; "off" disables -> NULL */
    mg_limits_t limits;
    mg_guards_t guards;

    /* OCSP stapling on ssl listeners (mg_ocsp.c) */
    bool ssl_stapling;            /* default true */
    bool ssl_stapling_verify;     /* verify the responder's authority; default true */
    char *ssl_stapling_responder; /* http:// URL replacing the certificates' own; NULL */

    char **plugin_names; /* the `plugins:` setting as written ("bundled" included);
                            default ["bundled"] */
    size_t nplugin_names;
    char *lua_package_path;        /* NULL = default; ";;" stands for the default path */
    unsigned worker_stall_timeout; /* ms a worker may stay inside Lua before the master kills
                                      and respawns it; default 5s */
    size_t lua_memory_limit;       /* bytes per worker's Lua state; default 256m */
    mg_shdict_conf_t *shared_dicts;
    size_t nshared_dicts;
    mg_plugin_conf_t *plugins; /* every plugin entity: global, service, route, consumer */
    size_t nplugins;
    mg_consumer_t *consumers;
    size_t nconsumers;
    /* Kong's top-level credential lists (`keyauth_credentials: [{consumer: alice, key: ...}]`),
     * as written: moongate.consumers validates them and files each under its consumer. In the
     * order of mg_credential_kinds. */
    mg_value_t *credentials[MG_NCREDENTIAL_KINDS];

    mg_service_t *services;
    size_t nservices;
    mg_route_t *routes;
    size_t nroutes; /* nested and top-level, flattened */
    mg_upstream_t *upstreams;
    size_t nupstreams;
    mg_target_t **targets; /* every upstream's targets, in order (pool keys) */
    size_t ntargets;
    size_t ntarget_slots; /* address slots of all targets (mg_target_t.slot) */

    /* DNS (Kong's settings; mg_dns.c): names resolved by each worker, without blocking */
    char **dns_resolver; /* "ip[:port]"; none = the nameservers of /etc/resolv.conf */
    size_t ndns_resolver;
    char *dns_hostsfile; /* default /etc/hosts, read at load */
    char *dns_hosts;     /* its text (NULL: none), for the names plugins' cosockets meet */
    size_t dns_hosts_len;
    char **dns_order; /* as written, default LAST,A,CNAME */
    size_t ndns_order;
    int dns_types[2]; /* dns_order's record types in order (MG_DNS_A, MG_DNS_AAAA) */
    unsigned ndns_types;
    bool dns_last;              /* LAST: the type that answered last time is asked first */
    unsigned dns_valid_ttl;     /* s; 0 = the records' TTL */
    unsigned dns_stale_ttl;     /* s an expired answer is served while refreshing, default 4 */
    unsigned dns_not_found_ttl; /* s a name that does not exist is cached, default 30 */
    unsigned dns_error_ttl;     /* s a failed lookup is cached, default 1 */
    bool dns_no_sync;           /* every waiting request sends its own query */
    char *dns_servers;          /* dns_resolver as c-ares' "ip:port,..." (NULL: none set) */
    char **dns_names;           /* distinct names of services and targets */
    size_t ndns_names;
    /* health of every target, shared by the workers (mg_health.c), made at load */
    struct mg_health_zone_s *health;

    /* TLS termination: the entities as written (validated and turned into SSL contexts by
     * mg_tls_load), and the result, NULL when no listener has `ssl` */
    mg_value_t *certificates;
    mg_value_t *snis;
    struct mg_tls_s *tls;
    /* the `ca_certificates` entities as written, and the set mg_ca_load validated (mg_ca.h),
     * made in the master before mg_tls_load; empty when none */
    mg_value_t *ca_certificates;
    struct mg_ca_set_s *ca;
    /* client certificates on `ssl` listeners (nginx's names): MG_VERIFY_*, default off; the
     * CA ids they are verified against (required unless off, checked by mg_tls_load); the
     * most intermediate CAs a chain may hold, default 1 */
    int ssl_verify_client;
    mg_value_t *ssl_client_ca_certificates;
    int ssl_verify_depth;
    /* upstream TLS: the client contexts of https services and probes (mg_utls.c), made in
     * the master after mg_ca_load and mg_tls_load; NULL when nothing speaks TLS to a
     * backend */
    struct mg_utls_s *utls;
} mg_config_t;

/* A list of "PATH: message" strings collected while loading; owned by its pool. */
typedef struct {
    char **items;
    size_t n, cap;
    mg_pool_t *pool;
} mg_config_errors_t;

/*
 * Loads and validates `path`. On success returns a config (free with mg_config_free) and
 * errs->n == 0. On failure returns NULL and fills `errs` with every problem found, each
 * formatted "PATH: message" (file-level problems use the file name as PATH). `errs` must be
 * initialised with mg_config_errors_init and released with mg_config_errors_free.
 * Environment variables MOONGATE_<SETTING> (upper-case setting name) override top-level
 * scalar settings; list settings take a comma-separated value.
 */
mg_config_t *mg_config_load(const char *path, mg_config_errors_t *errs);
void mg_config_free(mg_config_t *cfg);
void mg_config_errors_init(mg_config_errors_t *errs);
/* Appends one formatted "PATH: message" line to errs. */
void mg_config_errors_add(mg_config_errors_t *errs, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void mg_config_errors_free(mg_config_errors_t *errs);
/* Writes each collected problem to `out`, one "PATH: message" per line. */
void mg_config_errors_print(const mg_config_errors_t *errs, FILE *out);

/* Parses "10s", "500ms", "2m", "1h" or a bare integer (seconds) into milliseconds. */
int mg_config_parse_duration(const char *s, unsigned *ms);
/* Parses "8m", "16k", "1g" or a bare integer (bytes). */
int mg_config_parse_size(const char *s, size_t *bytes);

#endif
