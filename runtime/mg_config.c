/*
 * mg_config.c — loads the configuration file into an immutable mg_config_t. libyaml's loader
 * turns the file (YAML, or JSON, which is YAML) into a node tree that is walked against field
 * tables: each row names a key, the function that parses its value and where the value goes,
 * so the settings, the limits and every Kong entity share one walker, one set of value parsers
 * and one way of reporting problems ("PATH: message", every problem, not just the first).
 * MOONGATE_<SETTING> environment variables become one-node YAML documents fed through the
 * same rows. Rules that span entities (unique names, `service:` references) run once all is
 * read; the result is flattened into the arrays the router and the proxy use.
 *
 * Plugin entities and consumers are checked here only as far as their shape goes (known keys,
 * references, unique usernames); each is also kept whole as an mg_value_t tree for the Lua
 * side, which validates plugin configs against each plugin's schema.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

#include <yaml.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "mg_config.h"
#include "mg_dns.h"
#include "mg_health.h"
#include "mg_ca.h"
#include "mg_tls.h"
#include "mg_utls.h"

#define NONE SIZE_MAX     /* field offset: validate the value, store it nowhere */
#define BAD_LIST SIZE_MAX /* list_of(): the node is not a list */
#define MAX_WORKERS 1024
#define MAX_VALUE_DEPTH 64         /* nesting of a value tree (an alias cycle hits this) */
#define MAX_ALIAS_VALUES 100000    /* values aliases may add beyond the documents' own nodes */
#define MIN_SHDICT_SIZE (32 << 10) /* mg_shdict_create's minimum */
#define MIN_GUARD_ZONE (64 << 10)  /* guards.zone_size */
#define MAX_GUARD_ZONE (1 << 30)
#define MSG_MAIN_ONLY "only allowed in the main configuration file"
#define MSG_NOT_WITH_DECL "not allowed together with declarative_config"

enum {
    F_SETTING = 1 << 0, /* a setting: main file only */
    F_ENTITY = 1 << 1,  /* top-level entities: in the file that holds them */
    F_ENV = 1 << 2,     /* MOONGATE_<NAME> overrides it */
    F_LIST = 1 << 3,    /* its environment value is comma-separated */
};

typedef struct ctx_s ctx_t;
typedef struct field_s field_t;

/* Parses the non-null node `n` for row `f` into `obj`, reporting problems with fail(). */
typedef void (*parse_pt)(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f);
/* Parses one scalar into `out` (f->size bytes); false once a problem is reported. */
typedef bool (*item_pt)(ctx_t *x, const char *s, void *out, const field_t *f);
/* Validates a pool copy of a string, normalising it in place; NULL or a message. */
typedef const char *(*check_pt)(ctx_t *x, char *s);
/* Parses one entity (a mapping) of a list; `parent` is the service of nested routes. */
typedef void (*entity_pt)(ctx_t *x, yaml_node_t *n, void *parent);

struct field_s {
    const char *name;
    parse_pt parse;
    item_pt item;       /* p_one, p_list: the scalar parser */
    size_t off, size;   /* where the value goes in the object (or NONE), and its size */
    size_t noff;        /* p_list: where the element count goes */
    long long min, max; /* numbers; p_list: min is the minimum count. max 0 = unbounded */
    const char *const *choices;
    check_pt check;     /* i_string */
    const field_t *sub; /* p_sub: the nested table */
    size_t nsub;
    entity_pt entity; /* p_entities */
    unsigned flags;
};

typedef struct svc_item_s {
    mg_service_t s;
    bool enabled;
    char *path; /* "services[2]", for messages that come after the walk */
    /* valid and enabled: finish() resolves its host unless it names an upstream */
    bool to_resolve;
    mg_service_t *final;
    struct svc_item_s *next;
} svc_item_t;

typedef struct route_item_s {
    mg_route_t r;
    svc_item_t *svc;    /* nested routes: the enclosing service; top-level: resolved later */
    char *service_name; /* top-level routes: `service:` as written */
    char *path;
    int final; /* index in cfg->routes, -1 when left out (disabled service) */
    struct route_item_s *next;
} route_item_t;

typedef struct upstream_item_s {
    mg_upstream_t u;
    char *path; /* "upstreams[1]" */
    size_t ntargets;
    struct target_item_s *targets, **targets_tail;
    struct upstream_item_s *next;
} upstream_item_t;

typedef struct target_item_s {
    mg_target_t t;
    char *path;
    char *upstream_name;                  /* top-level targets: `upstream:` as written */
    struct target_item_s *next, *sibling; /* x->targets; the upstream's list */
} target_item_t;

typedef struct consumer_item_s {
    mg_consumer_t c;
    int index; /* in cfg->consumers */
    struct consumer_item_s *next;
} consumer_item_t;

/* Where a plugin entity was declared; cfg->plugins lists them in this order. */
enum {
    PS_GLOBAL,    /* top-level `plugins:` entries (with or without service/route/consumer) */
    PS_SERVICE,   /* services[i].plugins */
    PS_ROUTE,     /* services[i].routes[j].plugins */
    PS_TOP_ROUTE, /* routes[j].plugins */
    PS_CONSUMER,  /* consumers[k].plugins */
    PS_COUNT
};

typedef struct plugin_item_s {
    mg_plugin_conf_t p; /* name, path, enabled, config, entity; indices are set by finish() */
    int scope;          /* PS_* */
    svc_item_t *svc;    /* the enclosing entity, or what a reference resolved to */
    route_item_t *route;
    consumer_item_t *consumer;
    char *service_name, *route_name, *consumer_name; /* references as written */
    struct plugin_item_s *next;
} plugin_item_t;

typedef struct { /* a named entity, sorted to find duplicates and to look services up */
    const char *name, *path;
    size_t order;
    void *item;
} named_t;

struct ctx_s {
    mg_config_t *cfg;
    mg_config_errors_t *errs;
    size_t nerrs;            /* problems found by this load */
    mg_pool_t *tmp;          /* scratch: entity lists, node arrays; freed after the load */
    yaml_document_t *doc;    /* the document of the nodes being walked */
    yaml_document_t docs[3]; /* main file, declarative file, environment value */
    bool live[3];            /* which of docs[] need yaml_document_delete */
    jmp_buf oom;
    bool in_decl;  /* walking the declarative_config file */
    bool decl_set; /* entities are to come from declarative_config */
    bool in_env, decl_from_env;
    char *declarative;
    svc_item_t *svcs, **svcs_tail;
    route_item_t *nested, **nested_tail, *top, **top_tail;
    consumer_item_t *consumers, **consumers_tail;
    upstream_item_t *upstreams, **upstreams_tail;
    target_item_t *targets, **targets_tail; /* nested and top-level, in file order */
    plugin_item_t *plugins[PS_COUNT], **plugins_tail[PS_COUNT];
    size_t entity_index; /* p_entities: the position of the entity being parsed */
    bool quiet;          /* parse_map: key problems were reported by the value conversion */
    size_t budget;       /* values value_of() may still create */
    bool values_failed;  /* a conversion gave up (budget, depth): the next ones do not try */
    yaml_node_t *value_stack[MAX_VALUE_DEPTH]; /* value_at(): the collections being converted */
    char *hosts;                               /* dns_hostsfile's text, once read */
    size_t hosts_len, dns_cap;
    bool hosts_read, hostsfile_set;
    size_t plen;
    char path[512];
    char msg[512]; /* a check's message when it quotes the value */
};

static void *zalloc(ctx_t *x, mg_pool_t *p, size_t n);
static char *dupn(ctx_t *x, const char *s, size_t n);
static char *sdup(ctx_t *x, const char *s);
static void errors_add(mg_config_errors_t *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void fail(ctx_t *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_at(ctx_t *x, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static size_t path_key(ctx_t *x, const char *key);
static size_t path_index(ctx_t *x, size_t i);
static void path_set(ctx_t *x, size_t mark);

static yaml_node_t *node_at(ctx_t *x, int id);
static bool is_null(const yaml_node_t *n);
static const char *text(const yaml_node_t *n);
static size_t list_of(ctx_t *x, yaml_node_t *n, bool scalar_ok, yaml_node_t ***out);
static void type_error(ctx_t *x, const field_t *f);
static const field_t *find(const field_t *t, size_t nt, const char *name);
static bool has(uint64_t seen, const field_t *t, size_t nt, const char *name);
static uint64_t parse_map(ctx_t *x, yaml_node_t *n, void *obj, const field_t *t, size_t nt);

static void p_one(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f);
static void p_list(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f);
static void p_sub(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f);
static void p_entities(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f);
static void p_mapping(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f);
static void p_records(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f);
static void p_value(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f);
static void p_plugins(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f);
static void p_plugin_ref(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f);
static void p_shared_dicts(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f);
static void p_headers(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f);
static void p_route_service(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f);

static bool i_string(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_bool(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_int(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_enum(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_duration(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_size(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_workers(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_request_id(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_declarative(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_listen(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_cidr(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_rate(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_protocol(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_host(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_url(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_number(ctx_t *x, const char *s, void *out, const field_t *f);
static bool i_status(ctx_t *x, const char *s, void *out, const field_t *f);

static bool is_label_char(char c);
static const char *check_name(ctx_t *x, char *s);
static const char *check_plugin_name(ctx_t *x, char *s);
static const char *check_tag(ctx_t *x, char *s);
static const char *check_header_name(ctx_t *x, char *s);
static const char *check_ocsp_url(ctx_t *x, char *s);
static const char *check_cookie(ctx_t *x, char *s);
static const char *check_header_value(ctx_t *x, char *s);
static const char *check_service_path(ctx_t *x, char *s);
static const char *check_route_host(ctx_t *x, char *s);
static const char *check_sni(ctx_t *x, char *s);
static const char *check_probe_sni(ctx_t *x, char *s);
static const char *check_path(ctx_t *x, char *s);
static const char *check_method(ctx_t *x, char *s);
static const char *check_resolver(ctx_t *x, char *s);
static const char *check_dns_order(ctx_t *x, char *s);

static void parse_service(ctx_t *x, yaml_node_t *n, void *parent);
static void parse_route(ctx_t *x, yaml_node_t *n, void *parent);
static plugin_item_t *parse_plugin(ctx_t *x, yaml_node_t *n, int scope, mg_value_t *entity);
static void parse_service_plugin(ctx_t *x, yaml_node_t *n, void *parent);
static void parse_route_plugin(ctx_t *x, yaml_node_t *n, void *parent);
static void parse_consumer_plugin(ctx_t *x, yaml_node_t *n, void *parent);
static void parse_consumer(ctx_t *x, yaml_node_t *n, void *parent);
static void parse_upstream(ctx_t *x, yaml_node_t *n, void *parent);
static void parse_target(ctx_t *x, yaml_node_t *n, void *parent);
static void p_target_upstream(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f);
static bool i_target(ctx_t *x, const char *s, void *out, const field_t *f);
static void finish_upstreams(ctx_t *x);
static int named_cmp(const void *a, const void *b);
static void unique(ctx_t *x, named_t *v, size_t n, const char *field, const char *what);
static void *lookup(const named_t *v, size_t n, const char *name);
static void add_name(named_t *v, size_t *n, const char *name, const char *path, void *item);
static mg_value_t *value_of(ctx_t *x, yaml_node_t *n);
static const mg_value_t *value_get(const mg_value_t *map, const char *key);
static void resolve(ctx_t *x, svc_item_t *it);

static bool load_doc(ctx_t *x, int slot, const char *file, const char *label, yaml_node_t **root);
static void apply_env(ctx_t *x, const field_t *t, size_t nt, const char *prefix, void *obj);
static void finish(ctx_t *x);
static void check_guards(ctx_t *x);

/* ---- field tables ------------------------------------------------------------------------ */

static const char *const log_levels[] = {"debug", "info", "notice", "warn", "error", "crit", NULL};
static const char *const format_versions[] = {"3.0", "2.1", "1.1", NULL};
static const char *const route_protocols[] = {"http", "https", NULL};
static const char *const path_handlings[] = {"v0", "v1", NULL};
static const char *const verify_modes[] = {"off", "optional", "on", NULL};
static const char *const redirect_codes[] = {"426", "301", "302", "307", "308", NULL};
/* Kong's service protocols: known, but not proxied yet. */
static const char *const later_protocols[] = {"grpc", "grpcs", "tcp", "tls", "tls_passthrough",
                                              "udp",  "ws",    "wss", NULL};

#define MEMBER_SIZE(T, m) sizeof(((T *)0)->m)
#define ONE(n, it, T, m, ...)                                                                      \
    {                                                                                              \
        .name = (n), .parse = p_one, .item = (it), .off = offsetof(T, m),                          \
        .size = MEMBER_SIZE(T, m), __VA_ARGS__                                                     \
    }
#define SKIP(n, it, ...)                                                                           \
    {                                                                                              \
        .name = (n), .parse = p_one, .item = (it), .off = NONE, __VA_ARGS__                        \
    }
#define LIST(n, it, T, m, nm, ...)                                                                 \
    {                                                                                              \
        .name = (n), .parse = p_list, .item = (it), .off = offsetof(T, m),                         \
        .size = sizeof(*((T *)0)->m), .noff = offsetof(T, nm), __VA_ARGS__                         \
    }
#define TAGS                                                                                       \
    {                                                                                              \
        .name = "tags", .parse = p_list, .item = i_string, .off = NONE, .check = check_tag         \
    }
#define LIMIT(it, m, lo) ONE(#m, it, mg_limits_t, m, .min = (lo), .max = INT_MAX, .flags = F_ENV)

static const field_t limits_fields[] = {
    LIMIT(i_size, client_max_body_size, 0),
    LIMIT(i_size, client_body_buffer_size, 1),
    LIMIT(i_size, max_request_line, 1),
    LIMIT(i_size, max_header_line, 1),
    LIMIT(i_size, max_headers_size, 1),
    LIMIT(i_int, max_headers, 1),
    LIMIT(i_duration, client_header_timeout, 1),
    LIMIT(i_duration, client_body_timeout, 1),
    LIMIT(i_duration, send_timeout, 1),
    LIMIT(i_duration, keepalive_timeout, 0),
    LIMIT(i_int, keepalive_requests, 1),
    LIMIT(i_int, max_connections, 1),
    LIMIT(i_duration, worker_shutdown_timeout, 0),
    LIMIT(i_int, upstream_keepalive_pool_size, 0),
    LIMIT(i_int, upstream_keepalive_max_requests, 1),
    LIMIT(i_duration, upstream_keepalive_idle_timeout, 1),
    LIMIT(i_duration, tls_handshake_timeout, 1),
};

#define GUARD(it, m, lo, hi) ONE(#m, it, mg_guards_t, m, .min = (lo), .max = (hi), .flags = F_ENV)
#define MAX_RATE 1000000 /* events per period: beyond, the interval is under a microsecond */

static const field_t guards_fields[] = {
    GUARD(i_int, per_ip_connections, 0, INT_MAX),
    GUARD(i_rate, per_ip_connection_rate, 0, MAX_RATE),
    GUARD(i_rate, per_ip_request_rate, 0, MAX_RATE),
    GUARD(i_int, per_ip_request_burst, 1, MAX_RATE),
    LIST("exempt_ips", i_cidr, mg_guards_t, exempt_ips, nexempt_ips, .flags = F_ENV | F_LIST),
    GUARD(i_int, ipv6_prefix, 1, 128),
    GUARD(i_size, zone_size, MIN_GUARD_ZONE, 0),
};

/* A plugin's `service:`, `route:` and `consumer:` references in their mapping form. */
static const field_t plugin_service_ref[] = {ONE("name", i_string, plugin_item_t, service_name)};
static const field_t plugin_route_ref[] = {ONE("name", i_string, plugin_item_t, route_name)};
static const field_t plugin_consumer_ref[] = {
    ONE("username", i_string, plugin_item_t, consumer_name)};
#define PLUGIN_REF(n, t)                                                                           \
    {                                                                                              \
        .name = (n), .parse = p_plugin_ref, .sub = (t), .nsub = 1                                  \
    }

static const field_t plugin_fields[] = {
    ONE("name", i_string, plugin_item_t, p.name, .check = check_plugin_name),
    {.name = "config", .parse = p_mapping},
    ONE("enabled", i_bool, plugin_item_t, p.enabled),
    {.name = "protocols", .parse = p_list, .item = i_string, .off = NONE},
    PLUGIN_REF("service", plugin_service_ref),
    PLUGIN_REF("route", plugin_route_ref),
    PLUGIN_REF("consumer", plugin_consumer_ref),
    SKIP("instance_name", i_string, .check = check_name),
    {.name = "ordering", .parse = p_mapping},
    SKIP("id", i_string),
    TAGS,
};

#define NESTED_PLUGINS(fn)                                                                         \
    {                                                                                              \
        .name = "plugins", .parse = p_entities, .entity = (fn)                                     \
    }

static const field_t service_ref_fields[] = {
    ONE("name", i_string, route_item_t, service_name),
};

static const field_t route_fields[] = {
    ONE("name", i_string, route_item_t, r.name, .check = check_name),
    {.name = "service", .parse = p_route_service},
    LIST("hosts", i_string, route_item_t, r.hosts, r.nhosts, .check = check_route_host),
    LIST("paths", i_string, route_item_t, r.paths, r.npaths, .check = check_path),
    LIST("methods", i_string, route_item_t, r.methods, r.nmethods, .check = check_method),
    {.name = "headers", .parse = p_headers},
    LIST("snis", i_string, route_item_t, r.snis, r.nsnis, .check = check_sni),
    LIST("protocols", i_string, route_item_t, r.protocols, r.nprotocols,
         .choices = route_protocols),
    ONE("regex_priority", i_int, route_item_t, r.regex_priority, .min = INT_MIN, .max = INT_MAX),
    ONE("strip_path", i_bool, route_item_t, r.strip_path),
    ONE("preserve_host", i_bool, route_item_t, r.preserve_host),
    SKIP("path_handling", i_enum, .choices = path_handlings),
    ONE("https_redirect_status_code", i_enum, route_item_t, r.https_redirect,
        .choices = redirect_codes),
    SKIP("request_buffering", i_bool),
    SKIP("response_buffering", i_bool),
    NESTED_PLUGINS(parse_route_plugin),
    TAGS,
};

#define TIMEOUT(m) ONE(#m, i_int, svc_item_t, s.m, .min = 1, .max = 2147483646)

static const field_t service_fields[] = {
    ONE("name", i_string, svc_item_t, s.name, .check = check_name),
    {.name = "url", .parse = p_one, .item = i_url, .off = 0}, /* fills the whole service */
    ONE("protocol", i_protocol, svc_item_t, s.protocol),
    ONE("host", i_host, svc_item_t, s.host),
    ONE("port", i_int, svc_item_t, s.port, .min = 1, .max = 65535),
    ONE("path", i_string, svc_item_t, s.path, .check = check_service_path),
    ONE("retries", i_int, svc_item_t, s.retries, .min = 0, .max = 32767),
    ONE("retry_non_idempotent", i_bool, svc_item_t, s.retry_non_idempotent),
    TIMEOUT(connect_timeout),
    TIMEOUT(write_timeout),
    TIMEOUT(read_timeout),
    ONE("tls_verify", i_bool, svc_item_t, s.tls_verify),
    ONE("tls_verify_depth", i_int, svc_item_t, s.tls_verify_depth, .max = 64),
    /* checked against the entities they name by mg_utls_load */
    {.name = "ca_certificates", .parse = p_value, .off = offsetof(svc_item_t, s.ca_certificates)},
    {.name = "client_certificate",
     .parse = p_value,
     .off = offsetof(svc_item_t, s.client_certificate)},
    {.name = "routes", .parse = p_entities, .entity = parse_route},
    NESTED_PLUGINS(parse_service_plugin),
    ONE("enabled", i_bool, svc_item_t, enabled),
    TAGS,
};

/* Credentials are lists of mappings kept in the consumer's entity; Lua validates them. */
#define CREDENTIALS(n)                                                                             \
    {                                                                                              \
        .name = (n), .parse = p_records                                                            \
    }

const char *const mg_credential_kinds[MG_NCREDENTIAL_KINDS] = {
    "keyauth_credentials", "basicauth_credentials", "jwt_secrets", "hmacauth_credentials", "acls"};

/* The same lists at the top level, each item naming its consumer (kept for Lua too). */
#define TOP_CREDENTIALS(n, i)                                                                      \
    {                                                                                              \
        .name = (n), .parse = p_value, .off = offsetof(mg_config_t, credentials[i]),               \
        .flags = F_ENTITY                                                                          \
    }

static const field_t consumer_fields[] = {
    ONE("id", i_string, consumer_item_t, c.id),
    ONE("username", i_string, consumer_item_t, c.username),
    ONE("custom_id", i_string, consumer_item_t, c.custom_id),
    NESTED_PLUGINS(parse_consumer_plugin),
    CREDENTIALS("keyauth_credentials"),
    CREDENTIALS("basicauth_credentials"),
    CREDENTIALS("jwt_secrets"),
    CREDENTIALS("hmacauth_credentials"),
    CREDENTIALS("acls"),
    TAGS,
};

static const char *const lb_algorithms[] = {"round-robin", "least-connections",
                                            "consistent-hashing", "latency", NULL};
/* in MG_HASH_* order */
static const char *const hash_inputs[] = {"none", "consumer",  "ip",          "header", "cookie",
                                          "path", "query_arg", "uri_capture", NULL};

static const field_t target_upstream_ref[] = {ONE("name", i_string, target_item_t, upstream_name)};

static const field_t target_fields[] = {
    {.name = "target", .parse = p_one, .item = i_target, .off = 0}, /* fills host and port */
    ONE("weight", i_int, target_item_t, t.weight, .max = 65535),
    {.name = "upstream", .parse = p_target_upstream, .sub = target_upstream_ref, .nsub = 1},
    SKIP("id", i_string),
    TAGS,
};

#define HASH_NAME(m) ONE(#m, i_string, upstream_item_t, u.m, .check = check_header_name)

/* Kong's upstream `healthchecks` record: its field names, types and bounds (defaults are set
 * in parse_upstream) */
static const char *const hc_types[] = {"tcp", "http", "https", "grpc", "grpcs", NULL};
#define HC_INTERVAL ONE("interval", i_number, mg_hc_side_t, interval, .max = 65535)
#define HC_COUNT(m) ONE(#m, i_int, mg_hc_side_t, m, .max = 255)
#define HC_STATUSES LIST("http_statuses", i_status, mg_hc_side_t, http_statuses, nhttp_statuses)
#define HC_SIDE(n, m, t)                                                                           \
    {                                                                                              \
        .name = (n), .parse = p_sub, .off = offsetof(mg_healthchecks_t, m), .sub = (t),            \
        .nsub = MG_ARRAY_SIZE(t)                                                                   \
    }

static const field_t hc_active_healthy[] = {HC_INTERVAL, HC_COUNT(successes), HC_STATUSES};
static const field_t hc_active_unhealthy[] = {
    HC_INTERVAL, HC_COUNT(http_failures), HC_COUNT(tcp_failures), HC_COUNT(timeouts), HC_STATUSES};
static const field_t hc_passive_healthy[] = {HC_COUNT(successes), HC_STATUSES};
static const field_t hc_passive_unhealthy[] = {HC_COUNT(http_failures), HC_COUNT(tcp_failures),
                                               HC_COUNT(timeouts), HC_STATUSES};

/* offsets from the healthchecks record (p_sub at offset 0) */
static const field_t hc_active_fields[] = {
    ONE("type", i_enum, mg_healthchecks_t, active.type, .choices = hc_types),
    ONE("http_path", i_string, mg_healthchecks_t, active.http_path, .check = check_service_path),
    ONE("timeout", i_number, mg_healthchecks_t, active.timeout, .max = 65535),
    ONE("concurrency", i_int, mg_healthchecks_t, active.concurrency, .min = 1, .max = 2147483647),
    ONE("https_sni", i_string, mg_healthchecks_t, active.https_sni, .check = check_probe_sni),
    ONE("https_verify_certificate", i_bool, mg_healthchecks_t, active.https_verify_certificate),
    {.name = "headers", .parse = p_mapping},
    HC_SIDE("healthy", active.healthy, hc_active_healthy),
    HC_SIDE("unhealthy", active.unhealthy, hc_active_unhealthy),
};

static const field_t hc_passive_fields[] = {
    ONE("type", i_enum, mg_healthchecks_t, passive.type, .choices = hc_types),
    HC_SIDE("healthy", passive.healthy, hc_passive_healthy),
    HC_SIDE("unhealthy", passive.unhealthy, hc_passive_unhealthy),
};

static const field_t hc_fields[] = {
    {.name = "active",
     .parse = p_sub,
     .off = 0,
     .sub = hc_active_fields,
     .nsub = MG_ARRAY_SIZE(hc_active_fields)},
    {.name = "passive",
     .parse = p_sub,
     .off = 0,
     .sub = hc_passive_fields,
     .nsub = MG_ARRAY_SIZE(hc_passive_fields)},
    ONE("threshold", i_number, mg_healthchecks_t, threshold, .max = 100),
};

static const field_t upstream_fields[] = {
    ONE("name", i_string, upstream_item_t, u.name, .check = check_name),
    ONE("algorithm", i_enum, upstream_item_t, u.algorithm, .choices = lb_algorithms),
    ONE("hash_on", i_enum, upstream_item_t, u.hash_on, .choices = hash_inputs),
    ONE("hash_fallback", i_enum, upstream_item_t, u.hash_fallback, .choices = hash_inputs),
    HASH_NAME(hash_on_header),
    HASH_NAME(hash_fallback_header),
    ONE("hash_on_cookie", i_string, upstream_item_t, u.hash_on_cookie, .check = check_cookie),
    ONE("hash_on_cookie_path", i_string, upstream_item_t, u.hash_on_cookie_path,
        .check = check_service_path),
    ONE("hash_on_query_arg", i_string, upstream_item_t, u.hash_on_query_arg),
    ONE("hash_fallback_query_arg", i_string, upstream_item_t, u.hash_fallback_query_arg),
    ONE("hash_on_uri_capture", i_string, upstream_item_t, u.hash_on_uri_capture),
    ONE("hash_fallback_uri_capture", i_string, upstream_item_t, u.hash_fallback_uri_capture),
    ONE("slots", i_int, upstream_item_t, u.slots, .min = 10, .max = 65536),
    ONE("host_header", i_host, upstream_item_t, u.host_header),
    {.name = "targets", .parse = p_entities, .entity = parse_target},
    {.name = "healthchecks",
     .parse = p_sub,
     .off = offsetof(upstream_item_t, u.healthchecks),
     .sub = hc_fields,
     .nsub = MG_ARRAY_SIZE(hc_fields)},
    {.name = "client_certificate",
     .parse = p_value,
     .off = offsetof(upstream_item_t, u.client_certificate)},
    SKIP("use_srv_name", i_bool),
    SKIP("id", i_string),
    TAGS,
};

#define SETTING_LIST(m, it, ...)                                                                   \
    LIST(#m, it, mg_config_t, m, n##m, .flags = F_SETTING | F_ENV | F_LIST, __VA_ARGS__)
#define SETTING(n, it, ...) ONE(#n, it, mg_config_t, n, .flags = F_SETTING | F_ENV, __VA_ARGS__)
static const field_t top_fields[] = {
    SETTING_LIST(proxy_listen, i_listen, .min = 1),
    SETTING_LIST(admin_listen, i_listen),
    SETTING(worker_processes, i_workers, .min = 1, .max = MAX_WORKERS),
    SETTING(master_process, i_bool),
    SETTING(pid_file, i_string),
    SETTING(access_log, i_string),
    SETTING(error_log, i_string),
    SETTING(log_level, i_enum, .choices = log_levels),
    SETTING_LIST(trusted_ips, i_cidr),
    SETTING(real_ip_header, i_string, .check = check_header_name),
    SETTING(request_id_header, i_request_id, .check = check_header_name),
    SETTING(ssl_stapling, i_bool),
    SETTING(ssl_stapling_verify, i_bool),
    SETTING(ssl_stapling_responder, i_string, .check = check_ocsp_url),
    {.name = "limits",
     .parse = p_sub,
     .off = offsetof(mg_config_t, limits),
     .sub = limits_fields,
     .nsub = MG_ARRAY_SIZE(limits_fields),
     .flags = F_SETTING},
    {.name = "guards",
     .parse = p_sub,
     .off = offsetof(mg_config_t, guards),
     .sub = guards_fields,
     .nsub = MG_ARRAY_SIZE(guards_fields),
     .flags = F_SETTING},
    /* plugin names (a setting) and global plugin entities share the key: p_plugins sorts */
    {.name = "plugins", .parse = p_plugins, .flags = F_ENV | F_LIST},
    SETTING(lua_package_path, i_string),
    SETTING(worker_stall_timeout, i_duration, .min = 100, .max = INT_MAX),
    SETTING_LIST(dns_resolver, i_string, .check = check_resolver),
    SETTING(dns_hostsfile, i_string),
    SETTING_LIST(dns_order, i_string, .check = check_dns_order),
    SETTING(dns_valid_ttl, i_int, .min = 0, .max = INT_MAX),
    SETTING(dns_stale_ttl, i_int, .min = 0, .max = INT_MAX),
    SETTING(dns_not_found_ttl, i_int, .min = 0, .max = INT_MAX),
    SETTING(dns_error_ttl, i_int, .min = 0, .max = INT_MAX),
    SETTING(dns_no_sync, i_bool),
    SETTING(lua_memory_limit, i_size, .min = 8 << 20),
    {.name = "shared_dicts", .parse = p_shared_dicts, .flags = F_SETTING},
    SKIP("declarative_config", i_declarative, .flags = F_SETTING | F_ENV),
    SKIP("_format_version", i_enum, .choices = format_versions),
    {.name = "services", .parse = p_entities, .entity = parse_service, .flags = F_ENTITY},
    {.name = "routes", .parse = p_entities, .entity = parse_route, .flags = F_ENTITY},
    {.name = "consumers", .parse = p_entities, .entity = parse_consumer, .flags = F_ENTITY},
    TOP_CREDENTIALS("keyauth_credentials", 0),
    TOP_CREDENTIALS("basicauth_credentials", 1),
    TOP_CREDENTIALS("jwt_secrets", 2),
    TOP_CREDENTIALS("hmacauth_credentials", 3),
    TOP_CREDENTIALS("acls", 4),
    {.name = "upstreams", .parse = p_entities, .entity = parse_upstream, .flags = F_ENTITY},
    {.name = "targets", .parse = p_entities, .entity = parse_target, .flags = F_ENTITY},
    {.name = "certificates",
     .parse = p_value,
     .off = offsetof(mg_config_t, certificates),
     .flags = F_ENTITY},
    SETTING(ssl_verify_client, i_enum, .choices = verify_modes),
    SETTING(ssl_verify_depth, i_int, .min = 0, .max = 100),
    {.name = "ssl_client_ca_certificates",
     .parse = p_value,
     .off = offsetof(mg_config_t, ssl_client_ca_certificates),
     .flags = F_SETTING},
    {.name = "ca_certificates",
     .parse = p_value,
     .off = offsetof(mg_config_t, ca_certificates),
     .flags = F_ENTITY},
    {.name = "snis", .parse = p_value, .off = offsetof(mg_config_t, snis), .flags = F_ENTITY},
};

#define HAS(seen, table, name) has(seen, table, MG_ARRAY_SIZE(table), name)

/* parse_map() reports the keys it saw as bits of a uint64_t */
_Static_assert(MG_ARRAY_SIZE(top_fields) <= 64 && MG_ARRAY_SIZE(route_fields) <= 64,
               "field tables are limited to 64 rows");

/* ---- memory, errors and paths ------------------------------------------------------------ */

/* Pool allocation; running out of memory unwinds to mg_config_load, which reports it. */
static void *zalloc(ctx_t *x, mg_pool_t *p, size_t n)
{
    void *m = mg_pool_calloc(p, n);
    if (m == NULL) longjmp(x->oom, 1);
    return m;
}

static char *dupn(ctx_t *x, const char *s, size_t n)
{
    char *d = zalloc(x, x->cfg->pool, n + 1);
    memcpy(d, s, n);
    return d;
}

static char *sdup(ctx_t *x, const char *s)
{
    return dupn(x, s, strlen(s));
}

/* printf into the scratch pool, for paths of messages reported after the walk. */
static char *tprintf(ctx_t *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *tprintf(ctx_t *x, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    char *s = mg_pool_strdup(x->tmp, buf);
    if (s == NULL) longjmp(x->oom, 1);
    return s;
}

static char *lower(char *s)
{
    for (char *p = s; *p; p++)
        *p = mg_lower(*p);
    return s;
}

static void verrors_add(mg_config_errors_t *e, const char *fmt, va_list ap)
{
    char buf[2048];
    vsnprintf(buf, sizeof(buf), fmt, ap);
    if (e->pool == NULL) return;
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 16;
        char **items = mg_pool_alloc(e->pool, cap * sizeof(char *));
        if (items == NULL) return;
        if (e->n) memcpy(items, e->items, e->n * sizeof(char *));
        e->items = items;
        e->cap = cap;
    }
    char *s = mg_pool_strdup(e->pool, buf);
    if (s) e->items[e->n++] = s;
}

static void errors_add(mg_config_errors_t *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verrors_add(e, fmt, ap);
    va_end(ap);
}

static void vfail_at(ctx_t *x, const char *path, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    errors_add(x->errs, "%s: %s", path, msg);
    x->nerrs++;
}

static void fail_at(ctx_t *x, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail_at(x, path, fmt, ap);
    va_end(ap);
}

static void fail(ctx_t *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail_at(x, x->path, fmt, ap);
    va_end(ap);
}

/* Paths grow and shrink like a stack: push returns the mark that path_set() restores. */
static size_t path_add(ctx_t *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static size_t path_add(ctx_t *x, const char *fmt, ...)
{
    size_t mark = x->plen;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(x->path + x->plen, sizeof(x->path) - x->plen, fmt, ap);
    va_end(ap);
    if (n > 0) x->plen = MG_MIN(x->plen + (size_t)n, sizeof(x->path) - 1);
    return mark;
}

static size_t path_key(ctx_t *x, const char *key)
{
    return path_add(x, "%s%s", x->plen ? "." : "", key);
}

static size_t path_index(ctx_t *x, size_t i)
{
    return path_add(x, "[%zu]", i);
}

static void path_set(ctx_t *x, size_t mark)
{
    x->plen = mark;
    x->path[mark] = '\0';
}

/* ---- the walker -------------------------------------------------------------------------- */

static yaml_node_t *node_at(ctx_t *x, int id)
{
    return yaml_document_get_node(x->doc, id);
}

/* YAML's null: an empty or "~"/"null" plain scalar. A null value means "not set". */
static bool is_null(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = (const char *)n->data.scalar.value;
    return *s == '\0' || strcmp(s, "~") == 0 || strcasecmp(s, "null") == 0;
}

/* The string of a non-null scalar without NUL bytes, else NULL. */
static const char *text(const yaml_node_t *n)
{
    if (n->type != YAML_SCALAR_NODE || is_null(n)) return NULL;
    const char *s = (const char *)n->data.scalar.value;
    return strlen(s) == n->data.scalar.length ? s : NULL;
}

/* The items of a sequence (or of a lone scalar when scalar_ok), or BAD_LIST after a report. */
static size_t list_of(ctx_t *x, yaml_node_t *n, bool scalar_ok, yaml_node_t ***out)
{
    if (n->type == YAML_SCALAR_NODE && scalar_ok) {
        *out = zalloc(x, x->tmp, sizeof(yaml_node_t *));
        (*out)[0] = n;
        return 1;
    }
    if (n->type != YAML_SEQUENCE_NODE) {
        fail(x, "expected a list");
        return BAD_LIST;
    }
    size_t cnt = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    *out = zalloc(x, x->tmp, (cnt ? cnt : 1) * sizeof(yaml_node_t *));
    for (size_t i = 0; i < cnt; i++)
        (*out)[i] = node_at(x, n->data.sequence.items.start[i]);
    return cnt;
}

/* Reports what the row expected, in the words a user would write it. */
static void type_error(ctx_t *x, const field_t *f)
{
    if (f->choices) {
        char buf[256];
        size_t len = 0;
        for (const char *const *c = f->choices; *c && len < sizeof(buf); c++)
            len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%s\"%s\"",
                                    c == f->choices ? "" : ", ", *c);
        fail(x, "expected one of %s", buf);
    } else if (f->item == i_int) {
        fail(x, "expected an integer");
    } else if (f->item == i_bool) {
        fail(x, "expected a boolean");
    } else if (f->item == i_duration) {
        fail(x, "expected a duration such as \"10s\"");
    } else if (f->item == i_size) {
        fail(x, "expected a size such as \"8m\"");
    } else if (f->item == i_workers) {
        fail(x, "expected \"auto\" or an integer");
    } else if (f->item == i_rate) {
        fail(x, "expected a rate such as \"10/s\" or \"600/m\"");
    } else {
        fail(x, "expected a string");
    }
}

static void range_error(ctx_t *x, const field_t *f, long long v)
{
    if (f->max && v > f->max)
        fail(x, "must be at most %lld", f->max);
    else if (f->min == 1)
        fail(x, "must be greater than 0");
    else
        fail(x, "must be at least %lld", f->min);
}

static const field_t *find(const field_t *t, size_t nt, const char *name)
{
    for (size_t i = 0; i < nt; i++)
        if (strcmp(t[i].name, name) == 0) return &t[i];
    return NULL;
}

static bool has(uint64_t seen, const field_t *t, size_t nt, const char *name)
{
    const field_t *f = find(t, nt, name);
    return f && (seen & (1ull << (f - t)));
}

/* Settings stay in the main file; entities live in one file only. */
static bool allowed(ctx_t *x, const field_t *f)
{
    if ((f->flags & F_SETTING) && x->in_decl) {
        fail(x, MSG_MAIN_ONLY);
        return false;
    }
    if ((f->flags & F_ENTITY) && x->decl_set && !x->in_decl) {
        fail(x, MSG_NOT_WITH_DECL);
        return false;
    }
    return true;
}

/*
 * Walks a mapping against a table: unknown and repeated keys are errors, null values are
 * skipped (Kong's exports write `path: null`). Returns a bit per table row whose key was set.
 * With x->quiet (the mapping was converted by value_of(), which reported its keys), repeated
 * and non-string keys are skipped without a second report.
 */
static uint64_t parse_map(ctx_t *x, yaml_node_t *n, void *obj, const field_t *t, size_t nt)
{
    uint64_t seen = 0;
    if (n->type != YAML_MAPPING_NODE) {
        fail(x, "expected a mapping");
        return 0;
    }
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        const char *key = text(node_at(x, p->key));
        yaml_node_t *v = node_at(x, p->value);
        if (key == NULL) {
            if (!x->quiet) fail(x, "keys must be strings");
            continue;
        }
        size_t mark = path_key(x, key);
        const field_t *f = find(t, nt, key);
        uint64_t bit = f ? 1ull << (f - t) : 0;
        if (f == NULL) {
            fail(x, "unknown field");
        } else if (!is_null(v) && allowed(x, f)) {
            if (!(seen & bit))
                f->parse(x, v, obj, f);
            else if (!x->quiet)
                fail(x, "duplicate key");
            seen |= bit;
        }
        path_set(x, mark);
    }
    return seen;
}

/* ---- node parsers ------------------------------------------------------------------------ */

/* A scalar stored at f->off; NONE validates into scratch space. */
static void p_one(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f)
{
    uint64_t scratch[4] = {0};
    const char *s = text(n);
    if (s == NULL)
        type_error(x, f);
    else
        f->item(x, s, f->off == NONE ? (void *)scratch : (char *)obj + f->off, f);
}

/* A list of scalars (a lone scalar is a list of one) stored as an array and a count. */
static void p_list(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f)
{
    yaml_node_t **items;
    size_t cnt = list_of(x, n, true, &items);
    if (cnt == BAD_LIST) return;
    if (cnt < (size_t)f->min) {
        fail(x, "must not be empty");
        return;
    }
    size_t size = f->size ? f->size : sizeof(char *);
    char *arr = cnt ? zalloc(x, x->cfg->pool, cnt * size) : NULL;
    for (size_t i = 0; i < cnt; i++) {
        size_t mark = path_index(x, i);
        const char *s = text(items[i]);
        if (s == NULL)
            type_error(x, f);
        else
            f->item(x, s, arr + i * size, f);
        path_set(x, mark);
    }
    if (f->off == NONE) return;
    memcpy((char *)obj + f->off, &arr, sizeof(arr));
    memcpy((char *)obj + f->noff, &cnt, sizeof(cnt));
}

static void p_sub(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f)
{
    parse_map(x, n, (char *)obj + f->off, f->sub, f->nsub);
}

/*
 * A list of entities. Nested rows (no F_ENTITY) pass their object to the entity parser as
 * the parent, which is how a route learns its enclosing service. x->entity_index tells the
 * entity parser its position in the list.
 */
static void p_entities(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f)
{
    yaml_node_t **items;
    size_t cnt = list_of(x, n, false, &items);
    for (size_t i = 0; cnt != BAD_LIST && i < cnt; i++) {
        size_t mark = path_index(x, i);
        x->entity_index = i;
        if (items[i]->type != YAML_MAPPING_NODE)
            fail(x, "expected a mapping");
        else
            f->entity(x, items[i], (f->flags & F_ENTITY) ? NULL : obj);
        path_set(x, mark);
    }
}

static void p_mapping(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f)
{
    if (n->type != YAML_MAPPING_NODE) fail(x, "expected a mapping");
}

/* A list of mappings whose contents Lua validates (consumer credentials). */
static void p_records(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f)
{
    yaml_node_t **items;
    size_t cnt = list_of(x, n, false, &items);
    for (size_t i = 0; cnt != BAD_LIST && i < cnt; i++) {
        size_t mark = path_index(x, i);
        if (items[i]->type != YAML_MAPPING_NODE) fail(x, "expected a mapping");
        path_set(x, mark);
    }
}

/* Kept as a value tree, validated by its owner (certificates and snis: mg_tls.c). */
static void p_value(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f)
{
    *(mg_value_t **)((char *)obj + f->off) = value_of(x, n);
}

/*
 * `plugins:` is both Kong's setting (names to load: [bundled, my-policy]) and the declarative
 * list of global plugin entities; scalars are the former, mappings the latter. Names replace
 * the default ["bundled"] (MOONGATE_PLUGINS replaces the file's names, not its entities);
 * whether each is installed is Lua's to tell.
 */
static void p_plugins(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f)
{
    static const field_t name_row = {
        .name = "plugins", .item = i_string, .check = check_plugin_name};
    yaml_node_t **items;
    size_t cnt = list_of(x, n, true, &items);
    if (cnt == BAD_LIST) return;
    char **names = zalloc(x, x->cfg->pool, (cnt + 1) * sizeof(char *));
    size_t nnames = 0, nscalars = 0, off = BAD_LIST;
    for (size_t i = 0; i < cnt; i++) {
        size_t mark = path_index(x, i);
        const char *s = text(items[i]);
        if (s && x->in_decl) {
            fail(x, MSG_MAIN_ONLY);
        } else if (s) {
            nscalars++;
            if (i_string(x, s, &names[nnames], &name_row)) nnames++;
            if (strcmp(s, "off") == 0) off = i;
        } else if (items[i]->type != YAML_MAPPING_NODE) {
            fail(x, "expected a plugin name or a plugin entry");
        } else if (x->decl_set && !x->in_decl) {
            fail(x, MSG_NOT_WITH_DECL);
        } else {
            parse_plugin(x, items[i], PS_GLOBAL, NULL);
        }
        path_set(x, mark);
    }
    if (off != BAD_LIST && nscalars > 1) {
        size_t mark = path_index(x, off);
        fail(x, "\"off\" cannot be combined with other plugin names");
        path_set(x, mark);
    }
    if (nnames == 0) return;
    x->cfg->plugin_names = names;
    x->cfg->nplugin_names = nnames;
}

/* A Lua identifier ([A-Za-z_][A-Za-z0-9_]*), so that `moongate.shared.<name>` works. */
static bool is_identifier(const char *s)
{
    if (*s == '\0' || (*s >= '0' && *s <= '9')) return false;
    for (; *s; s++)
        if (!(is_label_char(mg_lower(*s)) && *s != '-')) return false;
    return true;
}

/* `shared_dicts: { name: size, ... }`, kept in the order written. */
static void p_shared_dicts(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f)
{
    static const field_t dict_size = {.name = "size", .item = i_size, .off = NONE};
    mg_config_t *cfg = x->cfg;
    if (n->type != YAML_MAPPING_NODE) {
        fail(x, "expected a mapping");
        return;
    }
    size_t cnt = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    cfg->shared_dicts = zalloc(x, cfg->pool, (cnt + 1) * sizeof(mg_shdict_conf_t));
    cfg->nshared_dicts = 0;
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        const char *name = text(node_at(x, p->key));
        if (name == NULL) {
            fail(x, "keys must be strings");
            continue;
        }
        size_t mark = path_key(x, name), size = 0;
        const char *s = text(node_at(x, p->value));
        bool seen = false;
        for (size_t i = 0; i < cfg->nshared_dicts; i++)
            seen = seen || strcmp(cfg->shared_dicts[i].name, name) == 0;
        if (!is_identifier(name)) {
            fail(x, "invalid dictionary name: use letters, digits and '_'");
        } else if (seen) {
            fail(x, "duplicate key");
        } else if (s == NULL || mg_config_parse_size(s, &size) != MG_OK) {
            type_error(x, &dict_size);
        } else if (size < MIN_SHDICT_SIZE) {
            fail(x, "must be at least %dk", MIN_SHDICT_SIZE >> 10);
        } else {
            mg_shdict_conf_t *d = &cfg->shared_dicts[cfg->nshared_dicts++];
            d->name = sdup(x, name);
            d->size = size;
        }
        path_set(x, mark);
    }
}

/* Route headers: a mapping of header name to one value or a list of values. */
static void p_headers(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f)
{
    static const field_t values = {.name = "values",
                                   .item = i_string,
                                   .off = offsetof(mg_header_match_t, values),
                                   .noff = offsetof(mg_header_match_t, nvalues),
                                   .min = 1,
                                   .check = check_header_value};
    mg_route_t *r = &((route_item_t *)obj)->r;
    if (n->type != YAML_MAPPING_NODE) {
        fail(x, "expected a mapping of header names to values");
        return;
    }
    size_t cnt = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
    r->headers = zalloc(x, x->cfg->pool, (cnt ? cnt : 1) * sizeof(mg_header_match_t));
    r->nheaders = 0;
    for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        const char *key = text(node_at(x, p->key));
        yaml_node_t *v = node_at(x, p->value);
        if (key == NULL) {
            fail(x, "keys must be strings");
            continue;
        }
        size_t mark = path_key(x, key);
        char *name = lower(sdup(x, key));
        mg_header_match_t *h = &r->headers[r->nheaders];
        bool seen = false;
        for (size_t i = 0; i < r->nheaders; i++)
            seen = seen || !strcmp(r->headers[i].name, name);
        if (check_header_name(x, name))
            fail(x, "invalid header name \"%s\"", key);
        else if (strcmp(name, "host") == 0)
            fail(x, "use 'hosts' to match the Host header");
        else if (seen)
            fail(x, "duplicate header");
        else if (is_null(v))
            fail(x, "expected a string or a list of strings");
        else {
            h->name = name;
            p_list(x, v, h, &values);
            r->nheaders++;
        }
        path_set(x, mark);
    }
}

/* `service:` of a top-level route: a name, or Kong's `{ name: NAME }`. */
static void p_route_service(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f)
{
    route_item_t *it = obj;
    const char *s = text(n);
    if (it->svc) {
        fail(x, "not allowed on a route nested under a service");
    } else if (s) {
        it->service_name = sdup(x, s);
    } else if (n->type == YAML_MAPPING_NODE) {
        parse_map(x, n, it, service_ref_fields, MG_ARRAY_SIZE(service_ref_fields));
        size_t mark = path_key(x, "name");
        if (it->service_name == NULL) fail(x, "required");
        path_set(x, mark);
    } else {
        fail(x, "expected a service name");
    }
}

/*
 * A plugin's `service:`, `route:` or `consumer:`: a name (a username for consumers), or Kong's
 * `{ name: NAME }` / `{ username: USERNAME }`; finish() resolves it. Not allowed for the kind
 * of entity the plugin is nested under.
 */
static void p_plugin_ref(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f)
{
    static const char *const nested_under[PS_COUNT] = {[PS_SERVICE] = "service",
                                                       [PS_ROUTE] = "route",
                                                       [PS_TOP_ROUTE] = "route",
                                                       [PS_CONSUMER] = "consumer"};
    plugin_item_t *it = obj;
    const field_t *key = f->sub;
    const char *s = text(n), *under = nested_under[it->scope];
    if (under && strcmp(under, f->name) == 0) {
        fail(x, "not allowed on a plugin nested under a %s", under);
    } else if (s) {
        key->item(x, s, (char *)obj + key->off, key);
    } else if (n->type == YAML_MAPPING_NODE) {
        uint64_t seen = parse_map(x, n, obj, key, 1);
        size_t mark = path_key(x, key->name);
        if (!seen) fail(x, "required");
        path_set(x, mark);
    } else {
        fail(x, "expected a %s %s", f->name, key->name);
    }
}

/* ---- scalar parsers ---------------------------------------------------------------------- */

static void store(void *out, const field_t *f, long long v)
{
    switch (f->size) {
    case 1: {
        uint8_t t = (uint8_t)v;
        memcpy(out, &t, 1);
        break;
    }
    case 2: {
        uint16_t t = (uint16_t)v;
        memcpy(out, &t, 2);
        break;
    }
    case 4: {
        uint32_t t = (uint32_t)v;
        memcpy(out, &t, 4);
        break;
    }
    default:
        memcpy(out, &v, 8);
    }
}

/* Strict decimal: optional '-', digits, nothing else, no overflow. */
static bool parse_ll(const char *s, long long *v)
{
    const char *d = (*s == '-') ? s + 1 : s;
    if (*d < '0' || *d > '9') return false;
    char *end;
    errno = 0;
    *v = strtoll(s, &end, 10);
    return *end == '\0' && errno == 0;
}

static int choice(const char *s, const char *const *choices)
{
    for (int i = 0; choices[i]; i++)
        if (strcmp(s, choices[i]) == 0) return i;
    return -1;
}

static bool i_string(ctx_t *x, const char *s, void *out, const field_t *f)
{
    if (*s == '\0') {
        fail(x, "must not be empty");
        return false;
    }
    char *v = sdup(x, s);
    const char *msg = f->check ? f->check(x, v) : NULL;
    if (msg) {
        fail(x, "%s", msg);
        return false;
    }
    if (f->choices && choice(v, f->choices) < 0) {
        type_error(x, f);
        return false;
    }
    memcpy(out, &v, sizeof(v));
    return true;
}

static bool i_bool(ctx_t *x, const char *s, void *out, const field_t *f)
{
    static const char *const truths[] = {"true", "on", "yes"}, *const lies[] = {"false", "off",
                                                                                "no"};
    for (size_t i = 0; i < MG_ARRAY_SIZE(truths); i++) {
        if (strcasecmp(s, truths[i]) == 0 || strcasecmp(s, lies[i]) == 0) {
            *(bool *)out = strcasecmp(s, truths[i]) == 0;
            return true;
        }
    }
    type_error(x, f);
    return false;
}

static bool i_int(ctx_t *x, const char *s, void *out, const field_t *f)
{
    long long v;
    if (!parse_ll(s, &v)) {
        type_error(x, f);
        return false;
    }
    if (v < f->min || (f->max && v > f->max)) {
        range_error(x, f, v);
        return false;
    }
    store(out, f, v);
    return true;
}

/* A number (Kong's `number`: seconds, a percentage) within [min, max], as a double. */
static bool i_number(ctx_t *x, const char *s, void *out, const field_t *f)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || errno != 0 || !isfinite(v)) {
        fail(x, "expected a number");
        return false;
    }
    if (v < (double)f->min || (f->max && v > (double)f->max)) {
        range_error(x, f, (long long)v);
        return false;
    }
    memcpy(out, &v, sizeof(v));
    return true;
}

/* An HTTP status of a health check list: an integer 100..999 (Kong). */
static bool i_status(ctx_t *x, const char *s, void *out, const field_t *f)
{
    long long v;
    if (!parse_ll(s, &v)) {
        fail(x, "expected an integer");
        return false;
    }
    if (v < 100 || v > 999) {
        fail(x, "must be between 100 and 999");
        return false;
    }
    store(out, f, v);
    return true;
}

static bool i_enum(ctx_t *x, const char *s, void *out, const field_t *f)
{
    int i = choice(s, f->choices);
    if (i < 0) {
        type_error(x, f);
        return false;
    }
    store(out, f, i);
    return true;
}

static bool i_duration(ctx_t *x, const char *s, void *out, const field_t *f)
{
    unsigned ms;
    if (mg_config_parse_duration(s, &ms) != MG_OK) {
        type_error(x, f);
        return false;
    }
    if (ms < f->min) {
        range_error(x, f, ms);
        return false;
    }
    memcpy(out, &ms, sizeof(ms));
    return true;
}

static bool i_size(ctx_t *x, const char *s, void *out, const field_t *f)
{
    size_t bytes;
    if (mg_config_parse_size(s, &bytes) != MG_OK) {
        type_error(x, f);
        return false;
    }
    if (bytes < (size_t)f->min) {
        range_error(x, f, 0);
        return false;
    }
    memcpy(out, &bytes, sizeof(bytes));
    return true;
}

static bool i_workers(ctx_t *x, const char *s, void *out, const field_t *f)
{
    if (strcmp(s, "auto") != 0) return i_int(x, s, out, f);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    store(out, f, MG_MAX(1, MG_MIN(n, MAX_WORKERS)));
    return true;
}

static bool i_request_id(ctx_t *x, const char *s, void *out, const field_t *f)
{
    if (strcmp(s, "off") != 0) return i_string(x, s, out, f);
    memset(out, 0, sizeof(char *));
    return true;
}

static bool i_declarative(ctx_t *x, const char *s, void *out, const field_t *f)
{
    if (!i_string(x, s, &x->declarative, f)) return false;
    x->decl_from_env = x->in_env;
    return true;
}

/* "ip:port", "[ipv6]:port" or "*:port", then flags "ssl" and "backlog=N". */
static bool listen_parse(const char *s, mg_listen_t *l, char *why, size_t len)
{
    char buf[256];
    const char *sp = s + strcspn(s, " \t");
    size_t alen = (size_t)(sp - s);
    memset(l, 0, sizeof(*l));
    l->backlog = 511;
    snprintf(why, len, "expected \"ip:port [ssl] [backlog=N]\"");
    if (alen == 0 || alen >= sizeof(buf)) return false;
    memcpy(buf, s, alen);
    buf[alen] = '\0';

    char *host = buf, *colon = strrchr(buf, ':');
    if (colon == NULL) return false;
    *colon = '\0';
    if (*host == '[') {
        host++;
        if (colon[-1] != ']') return false;
        colon[-1] = '\0';
    }
    long long port;
    if (!parse_ll(colon + 1, &port) || port < 1 || port > 65535) return false;

    struct sockaddr_in *sin = (struct sockaddr_in *)&l->addr;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&l->addr;
    if (host == buf && strcmp(host, "*") == 0) {
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (host == buf && inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
    } else if (host != buf && inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
    } else {
        return false;
    }
    if (l->addr.ss_family == AF_INET) {
        sin->sin_port = htons((uint16_t)port);
        l->addrlen = sizeof(*sin);
    } else {
        sin6->sin6_port = htons((uint16_t)port);
        l->addrlen = sizeof(*sin6);
    }

    for (const char *p = sp; *(p += strspn(p, " \t"));) {
        size_t flen = strcspn(p, " \t");
        long long backlog;
        if (flen == 3 && strncmp(p, "ssl", 3) == 0) {
            l->ssl = true;
        } else if (flen > 8 && strncmp(p, "backlog=", 8) == 0 && flen - 8 < 16) {
            char num[16];
            memcpy(num, p + 8, flen - 8);
            num[flen - 8] = '\0';
            if (!parse_ll(num, &backlog) || backlog < 1 || backlog > INT_MAX) {
                snprintf(why, len, "backlog must be a positive integer");
                return false;
            }
            l->backlog = (int)backlog;
        } else {
            snprintf(why, len, "unknown flag \"%.*s\"", (int)MG_MIN(flen, 64), p);
            return false;
        }
        p += flen;
    }
    return true;
}

static bool i_listen(ctx_t *x, const char *s, void *out, const field_t *f)
{
    mg_listen_t *l = out;
    char why[128];
    if (!listen_parse(s, l, why, sizeof(why))) {
        fail(x, "invalid listen address \"%s\": %s", s, why);
        return false;
    }
    l->text = sdup(x, s);
    return true;
}

static bool i_cidr(ctx_t *x, const char *s, void *out, const field_t *f)
{
    if (mg_cidr_parse(s, strlen(s), out)) return true;
    fail(x, "invalid IP or CIDR \"%s\"", s);
    return false;
}

/* "N", "N/s", "Nr/s" (per second) or "N/m", "Nr/m" (per minute) into an mg_rate_t; 0 is
 * off whatever the unit. */
static bool i_rate(ctx_t *x, const char *s, void *out, const field_t *f)
{
    char num[24];
    size_t len = strspn(s, "0123456789");
    const char *unit = s + len;
    mg_rate_t r = {0, 1000};
    long long n;
    if (len == 0 || len >= sizeof(num)) {
        type_error(x, f);
        return false;
    }
    memcpy(num, s, len);
    num[len] = '\0';
    if (strcmp(unit, "r/m") == 0 || strcmp(unit, "/m") == 0)
        r.per_ms = 60000;
    else if (*unit && strcmp(unit, "r/s") != 0 && strcmp(unit, "/s") != 0) {
        type_error(x, f);
        return false;
    }
    if (!parse_ll(num, &n)) {
        type_error(x, f);
        return false;
    }
    if (n > f->max) {
        range_error(x, f, n);
        return false;
    }
    r.n = (unsigned)n;
    memcpy(out, &r, sizeof(r));
    return true;
}

static bool i_protocol(ctx_t *x, const char *s, void *out, const field_t *f)
{
    if (strcmp(s, "http") == 0 || strcmp(s, "https") == 0) {
        char *v = sdup(x, s);
        memcpy(out, &v, sizeof(v));
        return true;
    }
    if (choice(s, later_protocols) >= 0)
        fail(x, "protocol \"%s\" is not supported yet", s);
    else
        fail(x, "unknown protocol \"%s\"", s);
    return false;
}

/* Label characters of a host name (IPv4 addresses pass too). */
static bool is_label_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/*
 * Checks a lower-case host name of `len` bytes: non-empty dot-separated labels; with
 * `wildcard`, one "*" label may be the leftmost or the rightmost. NULL, or a message.
 */
static const char *host_error(ctx_t *x, const char *s, size_t len, const char *shown, bool wildcard)
{
    size_t stars = 0, nlabels = 0;
    bool bad = len == 0 || len > 253, star_inside = false;
    for (size_t i = 0; !bad && i <= len; nlabels++) {
        size_t j = i;
        while (j < len && s[j] != '.')
            j++;
        if (j - i == 1 && s[i] == '*') {
            stars++;
            star_inside = star_inside || (i != 0 && j != len);
        } else {
            bad = j == i;
            for (size_t k = i; !bad && k < j; k++)
                bad = !is_label_char(s[k]);
        }
        i = j + 1;
    }
    if (!bad && stars && (!wildcard || stars > 1 || star_inside || nlabels < 2)) {
        snprintf(x->msg, sizeof(x->msg),
                 "invalid wildcard host \"%s\": \"*\" must be the leftmost or rightmost label",
                 shown);
        return x->msg;
    }
    if (!bad) return NULL;
    snprintf(x->msg, sizeof(x->msg), "invalid host \"%s\"", shown);
    return x->msg;
}

/* Validates "[ipv6]" (brackets excluded from `s`/`len`). */
static bool ipv6_ok(const char *s, size_t len)
{
    char buf[INET6_ADDRSTRLEN];
    struct in6_addr a;
    if (len == 0 || len >= sizeof(buf)) return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    return inet_pton(AF_INET6, buf, &a) == 1;
}

static bool port_ok(const char *s)
{
    long long port;
    return parse_ll(s, &port) && port >= 1 && port <= 65535;
}

/* An upstream host: a name, an IPv4 address, or an IPv6 one (stored as "[::1]"). */
static bool i_host(ctx_t *x, const char *s, void *out, const field_t *f)
{
    char *h = lower(sdup(x, s));
    size_t len = strlen(h);
    const char *msg = NULL;
    if (h[0] == '[' || strchr(h, ':')) {
        bool bracketed = h[0] == '[';
        if (bracketed ? (len < 2 || h[len - 1] != ']' || !ipv6_ok(h + 1, len - 2))
                      : !ipv6_ok(h, len)) {
            snprintf(x->msg, sizeof(x->msg), "invalid host \"%s\"", s);
            msg = x->msg;
        } else if (!bracketed) {
            h = mg_pool_printf(x->cfg->pool, "[%s]", h);
            if (h == NULL) longjmp(x->oom, 1);
        }
    } else {
        msg = host_error(x, h, len, s, false);
    }
    if (msg) {
        fail(x, "%s", msg);
        return false;
    }
    memcpy(out, &h, sizeof(h));
    return true;
}

/* Kong's `url` shorthand: "http://host[:port][/path]" fills protocol, host, port and path. */
static bool i_url(ctx_t *x, const char *s, void *out, const field_t *f)
{
    mg_service_t *svc = &((svc_item_t *)out)->s;
    const char *sep = strstr(s, "://");
    const char *auth = sep ? sep + 3 : s;
    size_t alen = strcspn(auth, "/?#");
    const char *colon = NULL, *end = auth + alen;
    if (*auth == '[') {
        const char *rb = memchr(auth, ']', alen);
        colon = (rb && rb + 1 < end && rb[1] == ':') ? rb + 1 : NULL;
        if (rb == NULL || (rb + 1 < end && colon == NULL)) alen = 0;
    } else {
        colon = memchr(auth, ':', alen);
    }
    if (sep == NULL || sep == s || alen == 0 || colon == auth || strpbrk(end, "?#")) {
        fail(x, "invalid url \"%s\": expected \"http://host[:port][/path]\"", s);
        return false;
    }
    char *proto = lower(dupn(x, s, (size_t)(sep - s)));
    char *host = dupn(x, auth, (size_t)((colon ? colon : end) - auth));
    if (!i_protocol(x, proto, &svc->protocol, f) || !i_host(x, host, &svc->host, f)) return false;
    if (colon) {
        char *port = dupn(x, colon + 1, (size_t)(end - colon - 1));
        if (!port_ok(port)) {
            fail(x, "invalid port in url \"%s\"", s);
            return false;
        }
        svc->port = (uint16_t)atoi(port);
    }
    svc->path = *end ? sdup(x, end) : NULL;
    return true;
}

/* ---- string checks ----------------------------------------------------------------------- */

/* Plugin names become module names (moongate.plugins.<name>.handler): letters, digits, '-',
 * '_'. */
static const char *check_plugin_name(ctx_t *x, char *s)
{
    for (const char *c = s; *c; c++) {
        if (!is_label_char(mg_lower(*c))) {
            snprintf(x->msg, sizeof(x->msg),
                     "invalid plugin name \"%s\": use letters, digits, '-' or '_'", s);
            return x->msg;
        }
    }
    return NULL;
}

/* Kong's entity names: letters, digits, '.', '-', '_', '~' (and UTF-8). */
static const char *check_name(ctx_t *x, char *s)
{
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (!(*c >= 0x80 || is_label_char(mg_lower((char)*c)) || *c == '.' || *c == '~')) {
            snprintf(x->msg, sizeof(x->msg),
                     "invalid name \"%s\": use letters, digits, '.', '-', '_' or '~'", s);
            return x->msg;
        }
    }
    return NULL;
}

static const char *check_tag(ctx_t *x, char *s)
{
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c < 0x20 || *c == 0x7f || *c == ',' || *c == '/') {
            snprintf(x->msg, sizeof(x->msg), "invalid tag \"%s\": no ',', '/' or control bytes", s);
            return x->msg;
        }
    }
    return NULL;
}

static bool is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static const char *check_token(ctx_t *x, const char *s, const char *what)
{
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (!is_tchar(*c)) {
            snprintf(x->msg, sizeof(x->msg), "invalid %s \"%s\"", what, s);
            return x->msg;
        }
    }
    return NULL;
}

static const char *check_header_name(ctx_t *x, char *s)
{
    return check_token(x, s, "header name");
}

/* ssl_stapling_responder: http://host[:port][/path], as nginx takes it (no TLS to the
 * responder: OCSP responses are signed, and fetching one over TLS could need a staple). */
static const char *check_ocsp_url(ctx_t *x, char *s)
{
    if (strncasecmp(s, "http://", 7) != 0) return "must be an http:// URL";
    const char *h = s + 7, *end = h + strcspn(h, "/?#");
    if (end == h || *h == ':') return "must be an http:// URL with a host";
    for (const char *c = s; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == 0x7f) return "must not contain spaces or controls";
    if (h[0] != '[') {
        const char *colon = memchr(h, ':', (size_t)(end - h));
        if (colon) {
            char *e2;
            long port = strtol(colon + 1, &e2, 10);
            if (e2 != end || port < 1 || port > 65535) return "invalid port in the URL";
        }
    }
    return NULL;
}

/* A cookie name is a token (RFC 6265). */
static const char *check_cookie(ctx_t *x, char *s)
{
    return check_token(x, s, "cookie name");
}

static const char *check_header_value(ctx_t *x, char *s)
{
    return strncmp(s, "~*", 2) == 0 ? "regex header values are not supported yet" : NULL;
}

static const char *check_method(ctx_t *x, char *s)
{
    for (char *c = s; *c; c++)
        if (*c >= 'a' && *c <= 'z') *c = (char)(*c - 'a' + 'A');
    return check_token(x, s, "method");
}

static const char *check_service_path(ctx_t *x, char *s)
{
    return s[0] == '/' ? NULL : "must start with \"/\"";
}

/* "example.com", "*.example.com", "example.*", each with an optional ":port"; "[::1]:80". */
static const char *check_route_host(ctx_t *x, char *s)
{
    size_t len = strlen(lower(s));
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (rb && ipv6_ok(s + 1, (size_t)(rb - s - 1)) &&
            (!rb[1] || (rb[1] == ':' && port_ok(rb + 2))))
            return NULL;
        snprintf(x->msg, sizeof(x->msg), "invalid host \"%s\"", s);
        return x->msg;
    }
    const char *colon = strchr(s, ':');
    if (colon && !port_ok(colon + 1)) {
        snprintf(x->msg, sizeof(x->msg), "invalid host \"%s\"", s);
        return x->msg;
    }
    return host_error(x, s, colon ? (size_t)(colon - s) : len, s, true);
}

static const char *check_sni(ctx_t *x, char *s)
{
    lower(s);
    return host_error(x, s, strlen(s), s, true);
}

/* A probe's https_sni: one host name, no wildcard (RFC 6066 sends no IP addresses either). */
static const char *check_probe_sni(ctx_t *x, char *s)
{
    unsigned char a[16];
    lower(s);
    if (inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1)
        return "must be a host name, not an IP address";
    if (strchr(s, '*')) return "must be one host name, not a wildcard";
    return host_error(x, s, strlen(s), s, false);
}

/* "/prefix", or "~regex" which must compile. */
static const char *check_path(ctx_t *x, char *s)
{
    if (s[0] == '/') return NULL;
    if (s[0] != '~') return "must start with \"/\" or \"~\"";
    int code;
    PCRE2_SIZE off;
    pcre2_code *re =
        pcre2_compile((PCRE2_SPTR)(s + 1), PCRE2_ZERO_TERMINATED, 0, &code, &off, NULL);
    if (re) {
        pcre2_code_free(re);
        return NULL;
    }
    PCRE2_UCHAR err[256];
    pcre2_get_error_message(code, err, sizeof(err));
    snprintf(x->msg, sizeof(x->msg), "invalid regex: %s", (const char *)err);
    return x->msg;
}

/* ---- entities ---------------------------------------------------------------------------- */

static void parse_service(ctx_t *x, yaml_node_t *n, void *parent)
{
    svc_item_t *it = zalloc(x, x->tmp, sizeof(*it));
    mg_service_t *s = &it->s;
    size_t nerrs = x->nerrs;
    s->retries = 5;
    s->dns = -1;
    s->connect_timeout = s->write_timeout = s->read_timeout = 60000;
    s->tls_verify = true; /* stricter than Kong: a backend's certificate is checked */
    s->tls_verify_depth = -1;
    it->enabled = true;
    it->path = tprintf(x, "%s", x->path);
    s->conf_path = sdup(x, x->path);

    uint64_t seen = parse_map(x, n, it, service_fields, MG_ARRAY_SIZE(service_fields));
    bool url = HAS(seen, service_fields, "url");
    if (url && (HAS(seen, service_fields, "protocol") || HAS(seen, service_fields, "host") ||
                HAS(seen, service_fields, "port") || HAS(seen, service_fields, "path"))) {
        size_t mark = path_key(x, "url");
        fail(x, "cannot be combined with 'protocol', 'host', 'port' or 'path'");
        path_set(x, mark);
    } else if (!url && !HAS(seen, service_fields, "host")) {
        fail(x, "must set 'url' or 'host'");
    }
    if (s->protocol == NULL) s->protocol = sdup(x, "http");
    bool https = strcmp(s->protocol, "https") == 0;
    if (s->port == 0) s->port = https ? 443 : 80;
    static const char *const tls_only[] = {"tls_verify", "tls_verify_depth", "ca_certificates",
                                           "client_certificate"};
    for (size_t i = 0; !https && i < MG_ARRAY_SIZE(tls_only); i++) { /* Kong refuses them too */
        if (!HAS(seen, service_fields, tls_only[i])) continue;
        size_t mark = path_key(x, tls_only[i]);
        fail(x, "only for protocol \"https\"");
        path_set(x, mark);
    }
    it->to_resolve = x->nerrs == nerrs && it->enabled; /* finish(): unless an upstream */

    *x->svcs_tail = it;
    x->svcs_tail = &it->next;
}

/* The hosts file (dns_hostsfile), read once (a bound of 1 MiB: a hosts file is small). */
static void read_hostsfile(ctx_t *x)
{
    if (x->hosts_read) return;
    x->hosts_read = true;
    const char *path = x->cfg->dns_hostsfile;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        if (!x->hostsfile_set) return; /* no /etc/hosts: nothing to honour */
        fail_at(x, "dns_hostsfile", "cannot read \"%s\": %s", path, strerror(errno));
        return;
    }
    size_t cap = 1 << 20, len = 0, n;
    x->hosts = zalloc(x, x->tmp, cap + 1);
    while (len < cap && (n = fread(x->hosts + len, 1, cap - len, f)) > 0)
        len += n;
    fclose(f);
    x->hosts_len = len;
}

/*
 * Makes `name` ("name", "1.2.3.4" or "[v6]") an address at load when it is one, or a name of
 * the hosts file (the first of dns_order's types it has there): true with *addr (port set).
 * Any other name is left to the workers' resolver (mg_dns.c): false, *dns its index in
 * cfg->dns_names (one entry per distinct name).
 */
static bool resolve_host(ctx_t *x, const char *name, uint16_t port, struct sockaddr_storage *addr,
                         socklen_t *addrlen, int *dns)
{
    mg_config_t *cfg = x->cfg;
    char host[256];
    size_t len = strlen(name);
    *dns = -1;
    if (name[0] == '[')
        snprintf(host, sizeof(host), "%.*s", (int)(len - 2), name + 1);
    else
        snprintf(host, sizeof(host), "%s", name);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST}, *res;
    bool found = false;
    if (getaddrinfo(host, NULL, &hints, &res) == 0) {
        memcpy(addr, res->ai_addr, res->ai_addrlen);
        *addrlen = res->ai_addrlen;
        freeaddrinfo(res);
        found = true;
    }
    for (unsigned i = 0; !found && x->hosts && i < cfg->ndns_types; i++)
        found =
            mg_dns_hosts_find(x->hosts, x->hosts_len, host,
                              cfg->dns_types[i] == MG_DNS_A ? AF_INET : AF_INET6, addr, addrlen);
    if (found) {
        if (addr->ss_family == AF_INET)
            ((struct sockaddr_in *)addr)->sin_port = htons(port);
        else
            ((struct sockaddr_in6 *)addr)->sin6_port = htons(port);
        return true;
    }
    for (size_t i = 0; i < cfg->ndns_names; i++) {
        if (strcmp(cfg->dns_names[i], host) == 0) {
            *dns = (int)i;
            return false;
        }
    }
    if (cfg->ndns_names == x->dns_cap) {
        size_t cap = x->dns_cap ? x->dns_cap * 2 : 8;
        char **names = zalloc(x, cfg->pool, cap * sizeof(char *));
        if (cfg->ndns_names) memcpy(names, cfg->dns_names, cfg->ndns_names * sizeof(char *));
        cfg->dns_names = names;
        x->dns_cap = cap;
    }
    *dns = (int)cfg->ndns_names;
    cfg->dns_names[cfg->ndns_names++] = sdup(x, host);
    return false;
}

static void resolve(ctx_t *x, svc_item_t *it)
{
    mg_service_t *s = &it->s;
    resolve_host(x, s->host, s->port, &s->addr, &s->addrlen, &s->dns);
}

/* A dns_resolver entry: "ip", "ip:port", "[v6]" or "[v6]:port". */
static const char *check_resolver(ctx_t *x, char *s)
{
    char ip[64];
    const char *port = NULL, *colon = strrchr(s, ':');
    struct in6_addr a6;
    struct in_addr a4;
    bool ok;
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        ok = rb && (size_t)(rb - s - 1) < sizeof(ip) && (rb[1] == '\0' || rb[1] == ':');
        if (ok) {
            snprintf(ip, sizeof(ip), "%.*s", (int)(rb - s - 1), s + 1);
            ok = inet_pton(AF_INET6, ip, &a6) == 1;
            if (rb[1] == ':') port = rb + 2;
        }
    } else if (colon && strchr(s, ':') == colon) { /* one colon: v4:port */
        ok = (size_t)(colon - s) < sizeof(ip);
        if (ok) {
            snprintf(ip, sizeof(ip), "%.*s", (int)(colon - s), s);
            ok = inet_pton(AF_INET, ip, &a4) == 1;
            port = colon + 1;
        }
    } else {
        ok = inet_pton(AF_INET, s, &a4) == 1 || inet_pton(AF_INET6, s, &a6) == 1;
    }
    if (ok && port) ok = port_ok(port);
    if (ok) return NULL;
    snprintf(x->msg, sizeof(x->msg), "invalid resolver \"%s\": expected ip[:port]", s);
    return x->msg;
}

/* A dns_order entry (upper-cased): LAST, A, AAAA or CNAME; SRV is refused by name. */
static const char *check_dns_order(ctx_t *x, char *s)
{
    for (char *p = s; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    if (strcmp(s, "LAST") == 0 || strcmp(s, "A") == 0 || strcmp(s, "AAAA") == 0 ||
        strcmp(s, "CNAME") == 0)
        return NULL;
    if (strcmp(s, "SRV") == 0)
        return "SRV records are not supported (use LAST, A, AAAA and CNAME): a target or "
               "service gives its port";
    snprintf(x->msg, sizeof(x->msg), "invalid entry \"%s\": expected LAST, A, AAAA or CNAME", s);
    return x->msg;
}

/* dns_order as record types, dns_resolver as c-ares' server list, the hosts file read. */
static void finish_dns(ctx_t *x)
{
    mg_config_t *cfg = x->cfg;
    bool a = false, aaaa = false;
    x->hostsfile_set = strcmp(cfg->dns_hostsfile, "/etc/hosts") != 0;
    read_hostsfile(x);
    if (x->hosts && x->hosts_len) { /* kept: cosockets' names are known only at run time */
        cfg->dns_hosts = zalloc(x, cfg->pool, x->hosts_len + 1);
        memcpy(cfg->dns_hosts, x->hosts, x->hosts_len);
        cfg->dns_hosts_len = x->hosts_len;
    }
    bool bad = false;
    for (size_t i = 0; i < cfg->ndns_order; i++) {
        const char *o = cfg->dns_order[i];
        if (o == NULL) { /* reported */
            bad = true;
            continue;
        }
        if (strcmp(o, "LAST") == 0) cfg->dns_last = true;
        int type = strcmp(o, "A") == 0 ? MG_DNS_A : strcmp(o, "AAAA") == 0 ? MG_DNS_AAAA : 0;
        bool *seen = type == MG_DNS_A ? &a : &aaaa;
        if (type == 0 || *seen) continue;
        *seen = true;
        cfg->dns_types[cfg->ndns_types++] = type;
    }
    if (cfg->ndns_types == 0 && !bad)
        fail_at(x, "dns_order", "must contain A or AAAA (CNAME alone resolves no address)");
    if (cfg->ndns_resolver) {
        size_t cap = 1;
        for (size_t i = 0; i < cfg->ndns_resolver; i++) {
            if (cfg->dns_resolver[i] == NULL) return; /* reported */
            cap += strlen(cfg->dns_resolver[i]) + 8;
        }
        char *csv = zalloc(x, cfg->pool, cap), *p = csv;
        for (size_t i = 0; i < cfg->ndns_resolver; i++) {
            const char *r = cfg->dns_resolver[i];
            bool bare6 = r[0] != '[' && strchr(r, ':') != strrchr(r, ':');
            p += snprintf(p, cap - (size_t)(p - csv), "%s%s%s%s", i ? "," : "", bare6 ? "[" : "", r,
                          bare6 ? "]" : "");
        }
        cfg->dns_servers = csv;
    }
}

static void parse_route(ctx_t *x, yaml_node_t *n, void *parent)
{
    route_item_t *it = zalloc(x, x->tmp, sizeof(*it));
    mg_route_t *r = &it->r;
    it->svc = parent;
    it->final = -1;
    r->strip_path = true;
    it->path = tprintf(x, "%s", x->path);

    uint64_t seen = parse_map(x, n, it, route_fields, MG_ARRAY_SIZE(route_fields));
    if (!(r->nhosts || r->npaths || r->nmethods || r->nheaders || r->nsnis))
        fail(x, "must set one of 'methods', 'hosts', 'headers', 'paths', 'snis'");
    if (r->nprotocols == 0) {
        r->protocols = zalloc(x, x->cfg->pool, 2 * sizeof(char *));
        r->protocols[0] = sdup(x, "http");
        r->protocols[1] = sdup(x, "https");
        r->nprotocols = 2;
    }
    bool https = false;
    for (size_t i = 0; i < r->nprotocols; i++)
        https = https || (r->protocols[i] && !strcmp(r->protocols[i], "https"));
    if (r->nsnis && !https) {
        size_t mark = path_key(x, "snis");
        fail(x, "can only be set when 'protocols' includes \"https\"");
        path_set(x, mark);
    }
    if (!parent && !HAS(seen, route_fields, "service")) {
        size_t mark = path_key(x, "service");
        fail(x, "required");
        path_set(x, mark);
    }
    route_item_t ***tail = parent ? &x->nested_tail : &x->top_tail;
    **tail = it;
    *tail = &it->next;
}

/*
 * One plugin entity, declared at `scope`. The whole mapping is kept as a value (`entity`,
 * converted here unless the caller already holds it) and `config` points into it; whether
 * the plugin exists and its config is valid is for Lua to say. Nesting parents and
 * references are attached by the callers and finish().
 */
static plugin_item_t *parse_plugin(ctx_t *x, yaml_node_t *n, int scope, mg_value_t *entity)
{
    plugin_item_t *it = zalloc(x, x->tmp, sizeof(*it));
    it->scope = scope;
    it->p.enabled = true;
    it->p.service = it->p.route = it->p.consumer = -1;
    it->p.path = sdup(x, x->path);
    it->p.entity = entity ? entity : value_of(x, n);

    bool quiet = x->quiet;
    x->quiet = true;
    uint64_t seen = parse_map(x, n, it, plugin_fields, MG_ARRAY_SIZE(plugin_fields));
    x->quiet = quiet;
    if (!HAS(seen, plugin_fields, "name")) {
        size_t mark = path_key(x, "name");
        fail(x, "required");
        path_set(x, mark);
    }
    const mg_value_t *conf = value_get(it->p.entity, "config");
    it->p.config = conf && conf->kind == MG_VAL_MAP ? (mg_value_t *)conf : NULL;

    *x->plugins_tail[scope] = it;
    x->plugins_tail[scope] = &it->next;
    return it;
}

static void parse_service_plugin(ctx_t *x, yaml_node_t *n, void *parent)
{
    parse_plugin(x, n, PS_SERVICE, NULL)->svc = parent;
}

/* A plugin on a route applies to that route only: its service is not recorded (Kong). */
static void parse_route_plugin(ctx_t *x, yaml_node_t *n, void *parent)
{
    route_item_t *r = parent;
    parse_plugin(x, n, r->svc ? PS_ROUTE : PS_TOP_ROUTE, NULL)->route = r;
}

/* The consumer's entity already holds this plugin's mapping: the plugin's entity points there. */
static void parse_consumer_plugin(ctx_t *x, yaml_node_t *n, void *parent)
{
    consumer_item_t *c = parent;
    const mg_value_t *list = value_get(c->c.entity, "plugins");
    mg_value_t *entity = NULL;
    if (list && list->kind == MG_VAL_ARRAY && x->entity_index < list->len &&
        list->items[x->entity_index].kind == MG_VAL_MAP)
        entity = &list->items[x->entity_index];
    parse_plugin(x, n, PS_CONSUMER, entity)->consumer = c;
}

/* A consumer: username and/or custom_id, and the whole entity (credentials, plugins, tags). */
static void parse_consumer(ctx_t *x, yaml_node_t *n, void *parent)
{
    consumer_item_t *it = zalloc(x, x->tmp, sizeof(*it));
    it->c.path = sdup(x, x->path);
    it->c.entity = value_of(x, n);

    bool quiet = x->quiet;
    x->quiet = true;
    uint64_t seen = parse_map(x, n, it, consumer_fields, MG_ARRAY_SIZE(consumer_fields));
    x->quiet = quiet;
    if (!HAS(seen, consumer_fields, "username") && !HAS(seen, consumer_fields, "custom_id"))
        fail(x, "must set one of 'username', 'custom_id'");
    *x->consumers_tail = it;
    x->consumers_tail = &it->next;
}

static void fail_field(ctx_t *x, const char *path, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void hc_statuses(ctx_t *x, mg_hc_side_t *side, const int *v, size_t n)
{
    side->http_statuses = zalloc(x, x->cfg->pool, n * sizeof(int));
    memcpy(side->http_statuses, v, n * sizeof(int));
    side->nhttp_statuses = n;
}

/* Kong's defaults for `healthchecks` (every count 0: no checks until configured). */
static void hc_defaults(ctx_t *x, mg_healthchecks_t *hc)
{
    static const int active_ok[] = {200, 302};
    static const int active_bad[] = {429, 404, 500, 501, 502, 503, 504, 505};
    static const int passive_ok[] = {200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
                                     300, 301, 302, 303, 304, 305, 306, 307, 308};
    static const int passive_bad[] = {429, 500, 503};
    hc->active.type = hc->passive.type = MG_HC_HTTP;
    hc->active.http_path = sdup(x, "/");
    hc->active.timeout = 1;
    hc->active.concurrency = 10;
    hc->active.https_verify_certificate = true;
    hc_statuses(x, &hc->active.healthy, active_ok, MG_ARRAY_SIZE(active_ok));
    hc_statuses(x, &hc->active.unhealthy, active_bad, MG_ARRAY_SIZE(active_bad));
    hc_statuses(x, &hc->passive.healthy, passive_ok, MG_ARRAY_SIZE(passive_ok));
    hc_statuses(x, &hc->passive.unhealthy, passive_bad, MG_ARRAY_SIZE(passive_bad));
}

/* Passive checks count live traffic once some unhealthy threshold is set; active checks
 * probe once some interval is set (grpc probes are refused, not silently skipped). */
static void hc_finish(ctx_t *x, upstream_item_t *it)
{
    mg_healthchecks_t *hc = &it->u.healthchecks;
    const mg_hc_side_t *u = &hc->passive.unhealthy;
    hc->passive_on = u->http_failures || u->tcp_failures || u->timeouts;
    hc->active_on = hc->active.healthy.interval > 0 || hc->active.unhealthy.interval > 0;
    if (hc->active_on && hc->active.type != MG_HC_HTTP && hc->active.type != MG_HC_HTTPS &&
        hc->active.type != MG_HC_TCP)
        fail_field(x, it->path, "healthchecks.active.type",
                   "only \"http\", \"https\" and \"tcp\" probes are supported yet");
}

/* An upstream: its fields, nested targets, and the rules between its hash fields (checked
 * in finish_upstreams, once top-level targets have joined). */
static void parse_upstream(ctx_t *x, yaml_node_t *n, void *parent)
{
    upstream_item_t *it = zalloc(x, x->tmp, sizeof(*it));
    it->path = tprintf(x, "%s", x->path);
    it->u.conf_path = sdup(x, x->path);
    it->u.slots = 10000;
    it->targets_tail = &it->targets;
    hc_defaults(x, &it->u.healthchecks);
    uint64_t seen = parse_map(x, n, it, upstream_fields, MG_ARRAY_SIZE(upstream_fields));
    hc_finish(x, it);
    if (!HAS(seen, upstream_fields, "name")) {
        size_t mark = path_key(x, "name");
        fail(x, "required");
        path_set(x, mark);
    }
    if (it->u.hash_on_cookie_path == NULL) it->u.hash_on_cookie_path = sdup(x, "/");
    *x->upstreams_tail = it;
    x->upstreams_tail = &it->next;
}

/* A target, nested under an upstream (parent) or top-level with `upstream:`. */
static void parse_target(ctx_t *x, yaml_node_t *n, void *parent)
{
    upstream_item_t *up = parent;
    target_item_t *it = zalloc(x, x->tmp, sizeof(*it));
    size_t nerrs = x->nerrs;
    it->path = tprintf(x, "%s", x->path);
    it->t.weight = 100;
    it->t.port = 8000; /* Kong's default target port */
    it->t.dns = -1;
    uint64_t seen = parse_map(x, n, it, target_fields, MG_ARRAY_SIZE(target_fields));
    if (!HAS(seen, target_fields, "target")) {
        size_t mark = path_key(x, "target");
        fail(x, "required");
        path_set(x, mark);
    }
    if (up && HAS(seen, target_fields, "upstream")) {
        size_t mark = path_key(x, "upstream");
        fail(x, "not allowed on a target nested under an upstream");
        path_set(x, mark);
        it->upstream_name = NULL; /* reported once */
    } else if (!up && !HAS(seen, target_fields, "upstream")) {
        size_t mark = path_key(x, "upstream");
        fail(x, "required");
        path_set(x, mark);
    }
    if (x->nerrs == nerrs) {
        it->t.target = mg_pool_printf(x->cfg->pool, "%s:%u", it->t.host, it->t.port);
        if (it->t.target == NULL) longjmp(x->oom, 1);
    }
    *x->targets_tail = it;
    x->targets_tail = &it->next;
    if (up) {
        *up->targets_tail = it;
        up->targets_tail = &it->sibling;
        up->ntargets++;
    }
}

/* `upstream:` of a top-level target: a name, or Kong's `{ name: NAME }`. */
static void p_target_upstream(ctx_t *x, yaml_node_t *n, void *obj, const field_t *f)
{
    target_item_t *it = obj;
    const char *s = text(n);
    if (s) {
        it->upstream_name = sdup(x, s);
    } else if (n->type == YAML_MAPPING_NODE) {
        parse_map(x, n, it, f->sub, f->nsub);
        size_t mark = path_key(x, "name");
        if (it->upstream_name == NULL) fail(x, "required");
        path_set(x, mark);
    } else {
        fail(x, "expected an upstream name");
    }
}

/* Kong's `target`: "host", "host:port", "1.2.3.4:80", "[::1]:80" (port default 8000). */
static bool i_target(ctx_t *x, const char *s, void *out, const field_t *f)
{
    target_item_t *it = out;
    const char *colon = NULL;
    size_t len = strlen(s);
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (rb && rb[1] == ':')
            colon = rb + 1;
        else if (rb == NULL || rb[1] != '\0')
            len = 0;
    } else if (strchr(s, ':') == strrchr(s, ':')) { /* one colon: host:port; more: bare v6 */
        colon = strchr(s, ':');
    }
    char *host = len ? dupn(x, s, colon ? (size_t)(colon - s) : len) : NULL;
    if (host == NULL || (colon && !port_ok(colon + 1))) {
        fail(x, "Invalid target ('%s'); not a valid hostname or ip address", s);
        return false;
    }
    size_t nerrs = x->nerrs;
    if (!i_host(x, host, &it->t.host, f)) {
        x->errs->n -= x->nerrs - nerrs; /* one message, Kong's */
        x->nerrs = nerrs;
        fail(x, "Invalid target ('%s'); not a valid hostname or ip address", s);
        return false;
    }
    if (colon) it->t.port = (uint16_t)atoi(colon + 1);
    return true;
}

static void fail_field(ctx_t *x, const char *path, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail_field(ctx_t *x, const char *path, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail_at(x, tprintf(x, "%s.%s", path, field), fmt, ap);
    va_end(ap);
}

/* The hash fields one upstream needs, for hash_on (fallback false) or hash_fallback. */
static void check_hash_input(ctx_t *x, upstream_item_t *it, bool fallback)
{
    mg_upstream_t *u = &it->u;
    int h = fallback ? u->hash_fallback : u->hash_on;
    const char *field = fallback ? "hash_fallback" : "hash_on";
    switch (h) {
    case MG_HASH_HEADER:
        if (!(fallback ? u->hash_fallback_header : u->hash_on_header))
            fail_field(x, it->path, fallback ? "hash_fallback_header" : "hash_on_header",
                       "required when %s is \"header\"", field);
        break;
    case MG_HASH_COOKIE:
        if (!u->hash_on_cookie)
            fail_field(x, it->path, "hash_on_cookie", "required when %s is \"cookie\"", field);
        break;
    case MG_HASH_QUERY_ARG:
        if (!(fallback ? u->hash_fallback_query_arg : u->hash_on_query_arg))
            fail_field(x, it->path, fallback ? "hash_fallback_query_arg" : "hash_on_query_arg",
                       "required when %s is \"query_arg\"", field);
        break;
    case MG_HASH_URI_CAPTURE:
        if (!(fallback ? u->hash_fallback_uri_capture : u->hash_on_uri_capture))
            fail_field(x, it->path, fallback ? "hash_fallback_uri_capture" : "hash_on_uri_capture",
                       "required when %s is \"uri_capture\"", field);
        break;
    }
}

/*
 * Upstream names, top-level targets joined to theirs, each upstream's hash rules (Kong's
 * entity checks) and targets (no duplicates), then services: a service whose host names an
 * upstream is balanced over it, any other host is resolved here.
 */
static void finish_upstreams(ctx_t *x)
{
    mg_config_t *cfg = x->cfg;
    size_t nups = 0, nnames = 0, ntargets = 0;
    finish_dns(x);
    for (upstream_item_t *u = x->upstreams; u; u = u->next)
        nups++;
    named_t *names = zalloc(x, x->tmp, (nups + 1) * sizeof(named_t));
    for (upstream_item_t *u = x->upstreams; u; u = u->next)
        add_name(names, &nnames, u->u.name, u->path, u);
    unique(x, names, nnames, "name", "name");

    for (target_item_t *t = x->targets; t; t = t->next) {
        if (t->upstream_name == NULL) continue;
        upstream_item_t *up = lookup(names, nnames, t->upstream_name);
        if (up == NULL) {
            fail_field(x, t->path, "upstream", "no upstream named \"%s\"", t->upstream_name);
            continue;
        }
        *up->targets_tail = t;
        up->targets_tail = &t->sibling;
        up->ntargets++;
    }

    cfg->upstreams = zalloc(x, cfg->pool, (nups + 1) * sizeof(mg_upstream_t));
    for (upstream_item_t *it = x->upstreams; it; it = it->next) {
        mg_upstream_t *u = &it->u;
        check_hash_input(x, it, false);
        check_hash_input(x, it, true);
        if (u->hash_on == MG_HASH_NONE && u->hash_fallback != MG_HASH_NONE)
            fail_field(x, it->path, "hash_fallback", "must be \"none\" when hash_on is \"none\"");
        else if (u->hash_on == MG_HASH_COOKIE && u->hash_fallback != MG_HASH_NONE)
            fail_field(x, it->path, "hash_fallback",
                       "must be \"none\" when hash_on is \"cookie\" (the gateway sets the "
                       "cookie when it is missing)");
        else if (u->hash_fallback != MG_HASH_NONE && u->hash_fallback == u->hash_on &&
                 u->hash_on != MG_HASH_HEADER && u->hash_on != MG_HASH_QUERY_ARG &&
                 u->hash_on != MG_HASH_URI_CAPTURE)
            fail_field(x, it->path, "hash_fallback", "must differ from hash_on");
        /* the same input twice under one name would never fall back (Kong: distinct) */
        if (u->hash_on == MG_HASH_QUERY_ARG && u->hash_fallback == MG_HASH_QUERY_ARG &&
            u->hash_on_query_arg && u->hash_fallback_query_arg &&
            strcmp(u->hash_on_query_arg, u->hash_fallback_query_arg) == 0)
            fail_field(x, it->path, "hash_fallback_query_arg",
                       "values of these fields must be distinct: 'hash_on_query_arg', "
                       "'hash_fallback_query_arg'");
        if (u->hash_on == MG_HASH_URI_CAPTURE && u->hash_fallback == MG_HASH_URI_CAPTURE &&
            u->hash_on_uri_capture && u->hash_fallback_uri_capture &&
            strcmp(u->hash_on_uri_capture, u->hash_fallback_uri_capture) == 0)
            fail_field(x, it->path, "hash_fallback_uri_capture",
                       "values of these fields must be distinct: 'hash_on_uri_capture', "
                       "'hash_fallback_uri_capture'");
        if (u->hash_on_header) lower(u->hash_on_header);
        if (u->hash_fallback_header) lower(u->hash_fallback_header);
        if (u->hash_on == MG_HASH_HEADER && u->hash_fallback == MG_HASH_HEADER &&
            u->hash_on_header && u->hash_fallback_header &&
            strcmp(u->hash_on_header, u->hash_fallback_header) == 0)
            fail_field(x, it->path, "hash_fallback_header",
                       "values of these fields must be distinct: 'hash_on_header', "
                       "'hash_fallback_header'");
        u->targets = zalloc(x, cfg->pool, (it->ntargets + 1) * sizeof(mg_target_t));
        for (target_item_t *t = it->targets; t; t = t->sibling) {
            if (t->t.target == NULL) continue; /* reported */
            resolve_host(x, t->t.host, t->t.port, &t->t.addr, &t->t.addrlen, &t->t.dns);
            bool dup = false;
            for (size_t i = 0; i < u->ntargets; i++)
                dup = dup || strcmp(u->targets[i].target, t->t.target) == 0;
            if (dup) {
                fail_field(x, t->path, "target", "duplicate target \"%s\" in upstream \"%s\"",
                           t->t.target, u->name ? u->name : "?");
                continue;
            }
            u->targets[u->ntargets++] = t->t;
        }
        ntargets += u->ntargets;
        u->index = (unsigned)cfg->nupstreams;
        cfg->upstreams[cfg->nupstreams++] = *u;
    }
    cfg->targets = zalloc(x, cfg->pool, (ntargets + 1) * sizeof(mg_target_t *));
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        for (size_t j = 0; j < cfg->upstreams[i].ntargets; j++) {
            mg_target_t *t = &cfg->upstreams[i].targets[j];
            t->index = (unsigned)cfg->ntargets;
            cfg->targets[cfg->ntargets++] = t;
            t->slot = (unsigned)cfg->ntarget_slots;
            cfg->ntarget_slots += t->dns >= 0 ? MG_DNS_MAX_ADDRS : 1;
        }
    }

    /* services: an upstream's name, else a host to resolve (Kong's rule) */
    named_t *sorted = zalloc(x, x->tmp, (cfg->nupstreams + 1) * sizeof(named_t));
    size_t nsorted = 0;
    for (size_t i = 0; i < cfg->nupstreams; i++)
        add_name(sorted, &nsorted, cfg->upstreams[i].name, "", &cfg->upstreams[i]);
    qsort(sorted, nsorted, sizeof(named_t), named_cmp);
    for (svc_item_t *s = x->svcs; s; s = s->next) {
        if (!s->to_resolve) continue;
        s->s.upstream = lookup(sorted, nsorted, s->s.host);
        if (s->s.upstream) continue;
        size_t mark = path_add(x, "%s", s->path);
        resolve(x, s);
        path_set(x, mark);
    }
}

/* ---- value trees --------------------------------------------------------------------------- */

/*
 * YAML 1.1 resolution of a plain scalar that is not null or a boolean: decimal integers with
 * an optional sign (beyond int64: a float), and decimal floats ("1.5", ".5", "5.", "1e3",
 * "-2.5E-2"). Hex, octal, sexagesimal, "1_000", ".inf" and ".nan" stay strings, as do numbers
 * that overflow a double. False when `s` is not a number.
 */
static bool number_value(const char *s, mg_value_t *v)
{
    static const char digits[] = "0123456789";
    const char *p = s + (*s == '-' || *s == '+');
    size_t ndigits = strspn(p, digits), nfrac = 0;
    const char *q = p + ndigits;
    char *end;
    if (ndigits && *q == '\0') {
        errno = 0;
        long long i = strtoll(s, &end, 10);
        if (errno == 0 && *end == '\0') {
            v->kind = MG_VAL_INT;
            v->u.integer = i;
            return true;
        }
    }
    if (*q == '.') {
        nfrac = strspn(q + 1, digits);
        q += 1 + nfrac;
    }
    if (ndigits + nfrac == 0) return false;
    if (*q == 'e' || *q == 'E') {
        q += 1 + (q[1] == '-' || q[1] == '+');
        size_t nexp = strspn(q, digits);
        if (nexp == 0) return false;
        q += nexp;
    }
    if (*q != '\0') return false;
    double d = strtod(s, &end);
    if (*end != '\0' || !isfinite(d)) return false;
    v->kind = MG_VAL_FLOAT;
    v->u.number = d;
    return true;
}

/* Quoted and block scalars are strings; plain ones are resolved (null, bool, int, float). */
static void scalar_value(ctx_t *x, yaml_node_t *n, mg_value_t *v)
{
    static const char *const truths[] = {"true", "yes", "on"}, *const lies[] = {"false", "no",
                                                                                "off"};
    const char *s = (const char *)n->data.scalar.value;
    if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
        if (is_null(n)) {
            v->kind = MG_VAL_NULL;
            return;
        }
        for (size_t i = 0; i < MG_ARRAY_SIZE(truths); i++) {
            if (strcasecmp(s, truths[i]) == 0 || strcasecmp(s, lies[i]) == 0) {
                v->kind = MG_VAL_BOOL;
                v->u.boolean = strcasecmp(s, truths[i]) == 0;
                return;
            }
        }
        if (number_value(s, v)) return;
    }
    v->kind = MG_VAL_STRING;
    v->len = n->data.scalar.length;
    v->str = dupn(x, s, v->len);
}

typedef struct { /* a key of a mapping being converted, sorted to find repeats */
    const char *key;
    size_t pos;
} key_pos_t;

static int key_pos_cmp(const void *a, const void *b)
{
    const key_pos_t *p = a, *q = b;
    int c = strcmp(p->key, q->key);
    return c ? c : (p->pos > q->pos) - (p->pos < q->pos);
}

static void value_at(ctx_t *x, yaml_node_t *n, mg_value_t *v, int depth);

/* A mapping: string keys, the first of repeated keys kept, the others reported. */
static void map_value(ctx_t *x, yaml_node_t *n, mg_value_t *v, int depth)
{
    yaml_node_pair_t *start = n->data.mapping.pairs.start;
    size_t cnt = (size_t)(n->data.mapping.pairs.top - start);
    key_pos_t *sorted = zalloc(x, x->tmp, (cnt + 1) * sizeof(key_pos_t));
    bool *repeat = zalloc(x, x->tmp, cnt + 1);
    size_t nkeys = 0;
    for (size_t i = 0; i < cnt; i++) {
        const char *key = text(node_at(x, start[i].key));
        if (key) sorted[nkeys++] = (key_pos_t){key, i};
    }
    qsort(sorted, nkeys, sizeof(key_pos_t), key_pos_cmp);
    for (size_t i = 1; i < nkeys; i++)
        repeat[sorted[i].pos] = strcmp(sorted[i].key, sorted[i - 1].key) == 0;

    v->kind = MG_VAL_MAP;
    v->keys = zalloc(x, x->cfg->pool, (cnt + 1) * sizeof(char *));
    v->items = zalloc(x, x->cfg->pool, (cnt + 1) * sizeof(mg_value_t));
    for (size_t i = 0; i < cnt; i++) {
        const char *key = text(node_at(x, start[i].key));
        if (key == NULL) {
            fail(x, "keys must be strings");
            continue;
        }
        size_t mark = path_key(x, key);
        if (repeat[i]) {
            fail(x, "duplicate key");
        } else {
            v->keys[v->len] = sdup(x, key);
            value_at(x, node_at(x, start[i].value), &v->items[v->len++], depth + 1);
        }
        path_set(x, mark);
    }
}

/*
 * Converts a node (at x->path, for messages) into `v`. Aliases are expanded, so a value is
 * a tree; the budget (the documents' own nodes plus MAX_ALIAS_VALUES) and the depth limit
 * keep "billion laughs" and alias cycles from exhausting memory or the stack.
 */
static void value_at(ctx_t *x, yaml_node_t *n, mg_value_t *v, int depth)
{
    v->line = (int)MG_MIN(n->start_mark.line + 1, (size_t)INT_MAX);
    v->kind = MG_VAL_NULL;
    if (x->values_failed) return;
    if (x->budget == 0) {
        fail(x, "too many values after expanding aliases");
        x->values_failed = true;
        return;
    }
    x->budget--;
    if (n->type != YAML_SCALAR_NODE) {
        if (depth >= MAX_VALUE_DEPTH) {
            fail(x, "nested too deeply (more than %d levels)", MAX_VALUE_DEPTH);
            x->values_failed = true;
            return;
        }
        for (int i = 0; i < depth; i++) {
            if (x->value_stack[i] == n) {
                fail(x, "recursive alias: a value cannot contain itself");
                x->values_failed = true;
                return;
            }
        }
        x->value_stack[depth] = n;
    }
    switch (n->type) {
    case YAML_SCALAR_NODE:
        scalar_value(x, n, v);
        break;
    case YAML_SEQUENCE_NODE: {
        size_t cnt = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
        v->kind = MG_VAL_ARRAY;
        v->items = zalloc(x, x->cfg->pool, (cnt + 1) * sizeof(mg_value_t));
        for (; v->len < cnt; v->len++) {
            size_t mark = path_index(x, v->len);
            value_at(x, node_at(x, n->data.sequence.items.start[v->len]), &v->items[v->len],
                     depth + 1);
            path_set(x, mark);
        }
        break;
    }
    case YAML_MAPPING_NODE:
        map_value(x, n, v, depth);
        break;
    default:
        break;
    }
}

const mg_value_t *mg_value_get(const mg_value_t *map, const char *key)
{
    if (map == NULL || map->kind != MG_VAL_MAP) return NULL;
    for (size_t i = 0; i < map->len; i++)
        if (strcmp(map->keys[i], key) == 0) return &map->items[i];
    return NULL;
}

static mg_value_t *value_of(ctx_t *x, yaml_node_t *n)
{
    mg_value_t *v = zalloc(x, x->cfg->pool, sizeof(*v));
    value_at(x, n, v, 0);
    return v;
}

/* The value of `key` in a map, or NULL. */
static const mg_value_t *value_get(const mg_value_t *map, const char *key)
{
    if (map == NULL || map->kind != MG_VAL_MAP) return NULL;
    for (size_t i = 0; i < map->len; i++)
        if (strcmp(map->keys[i], key) == 0) return &map->items[i];
    return NULL;
}

/* ---- cross-entity rules and flattening --------------------------------------------------- */

static int named_cmp(const void *a, const void *b)
{
    const named_t *p = a, *q = b;
    int c = strcmp(p->name, q->name);
    return c ? c : (p->order > q->order) - (p->order < q->order);
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(((const named_t *)a)->name, ((const named_t *)b)->name);
}

/* Sorts named entities by name, then file order, and reports each repeat of a name as
 * "PATH.field: duplicate what "name"". */
static void unique(ctx_t *x, named_t *v, size_t n, const char *field, const char *what)
{
    qsort(v, n, sizeof(*v), named_cmp);
    for (size_t i = 1; i < n; i++)
        if (strcmp(v[i].name, v[i - 1].name) == 0)
            fail_at(x, tprintf(x, "%s.%s", v[i].path, field), "duplicate %s \"%s\"", what,
                    v[i].name);
}

/* The entity named `name` in a table sorted by unique(), or NULL. */
static void *lookup(const named_t *v, size_t n, const char *name)
{
    named_t key = {.name = name};
    named_t *hit = bsearch(&key, v, n, sizeof(named_t), name_cmp);
    return hit ? hit->item : NULL;
}

static void add_name(named_t *v, size_t *n, const char *name, const char *path, void *item)
{
    if (name == NULL) return;
    v[*n] = (named_t){name, path, *n, item};
    (*n)++;
}

/*
 * Checks names and references, then flattens: enabled services in file order, routes (those
 * nested under services first, then top-level ones) that point into them, consumers in file
 * order, and plugins by where they were declared (PS_* order: top-level `plugins:`, then
 * nested under services, under nested routes, under top-level routes, under consumers; each
 * group in file order). Plugins of a disabled service or of its routes, or that reference
 * one, are left out with them.
 */
/* Dictionaries the bundled plugins count on, declared unless the config declares them itself
 * (Kong's nginx template always declares its counters the same way): rate-limiting's local
 * policy keeps its counters in `rate_limit`. Shared memory is touched only as it is used. */
static const mg_shdict_conf_t default_dicts[] = {{"rate_limit", 12u << 20}};

static void add_default_dicts(ctx_t *x)
{
    mg_config_t *cfg = x->cfg;
    size_t n = cfg->nshared_dicts, add = 0;
    bool missing[MG_ARRAY_SIZE(default_dicts)];
    for (size_t d = 0; d < MG_ARRAY_SIZE(default_dicts); d++) {
        missing[d] = true;
        for (size_t i = 0; i < n; i++)
            if (strcmp(cfg->shared_dicts[i].name, default_dicts[d].name) == 0) missing[d] = false;
        add += missing[d];
    }
    if (add == 0) return;
    mg_shdict_conf_t *all = zalloc(x, cfg->pool, (n + add + 1) * sizeof(mg_shdict_conf_t));
    if (n) memcpy(all, cfg->shared_dicts, n * sizeof(mg_shdict_conf_t));
    for (size_t d = 0; d < MG_ARRAY_SIZE(default_dicts); d++) {
        if (!missing[d]) continue;
        all[n].name = sdup(x, default_dicts[d].name);
        all[n].size = default_dicts[d].size;
        n++;
    }
    cfg->shared_dicts = all;
    cfg->nshared_dicts = n;
}

static void finish(ctx_t *x)
{
    mg_config_t *cfg = x->cfg;
    check_guards(x);
    add_default_dicts(x);
    route_item_t *lists[2] = {x->nested, x->top};
    size_t nsvcs = 0, nroutes = 0, nconsumers = 0, nplugins = 0, nenabled = 0;
    size_t nsvc_names = 0, nroute_names = 0, nusernames = 0, ncustom_ids = 0;
    for (svc_item_t *s = x->svcs; s; s = s->next)
        nsvcs++;
    for (int l = 0; l < 2; l++)
        for (route_item_t *r = lists[l]; r; r = r->next)
            nroutes++;
    for (consumer_item_t *c = x->consumers; c; c = c->next)
        nconsumers++;
    for (int l = 0; l < PS_COUNT; l++)
        for (plugin_item_t *p = x->plugins[l]; p; p = p->next)
            nplugins++;

    named_t *svc_names = zalloc(x, x->tmp, (nsvcs + 1) * sizeof(named_t));
    for (svc_item_t *s = x->svcs; s; s = s->next)
        add_name(svc_names, &nsvc_names, s->s.name, s->path, s);
    unique(x, svc_names, nsvc_names, "name", "name");

    named_t *route_names = zalloc(x, x->tmp, (nroutes + 1) * sizeof(named_t));
    for (int l = 0; l < 2; l++)
        for (route_item_t *r = lists[l]; r; r = r->next)
            add_name(route_names, &nroute_names, r->r.name, r->path, r);
    unique(x, route_names, nroute_names, "name", "name");

    for (route_item_t *r = x->top; r; r = r->next) {
        if (r->service_name == NULL) continue;
        r->svc = lookup(svc_names, nsvc_names, r->service_name);
        if (r->svc == NULL)
            fail_at(x, tprintf(x, "%s.service", r->path), "no service named \"%s\"",
                    r->service_name);
    }

    named_t *usernames = zalloc(x, x->tmp, (nconsumers + 1) * sizeof(named_t));
    named_t *custom_ids = zalloc(x, x->tmp, (nconsumers + 1) * sizeof(named_t));
    for (consumer_item_t *c = x->consumers; c; c = c->next) {
        add_name(usernames, &nusernames, c->c.username, c->c.path, c);
        add_name(custom_ids, &ncustom_ids, c->c.custom_id, c->c.path, c);
    }
    unique(x, usernames, nusernames, "username", "username");
    unique(x, custom_ids, ncustom_ids, "custom_id", "custom_id");
    finish_upstreams(x);

    for (int l = 0; l < PS_COUNT; l++) {
        for (plugin_item_t *p = x->plugins[l]; p; p = p->next) {
            if (p->service_name && !(p->svc = lookup(svc_names, nsvc_names, p->service_name)))
                fail_at(x, tprintf(x, "%s.service", p->p.path), "no service named \"%s\"",
                        p->service_name);
            if (p->route_name && !(p->route = lookup(route_names, nroute_names, p->route_name)))
                fail_at(x, tprintf(x, "%s.route", p->p.path), "no route named \"%s\"",
                        p->route_name);
            if (p->consumer_name &&
                !(p->consumer = lookup(usernames, nusernames, p->consumer_name)))
                fail_at(x, tprintf(x, "%s.consumer", p->p.path), "no consumer named \"%s\"",
                        p->consumer_name);
        }
    }
    if (x->nerrs) return;

    /* disabled services (Kong's `enabled: false`) and their routes are left out */
    for (svc_item_t *s = x->svcs; s; s = s->next)
        nenabled += s->enabled;
    cfg->services = zalloc(x, cfg->pool, (nenabled + 1) * sizeof(mg_service_t));
    for (svc_item_t *s = x->svcs; s; s = s->next) {
        if (!s->enabled) continue;
        s->final = &cfg->services[cfg->nservices];
        *s->final = s->s;
        s->final->index = (unsigned)cfg->nservices++;
    }
    cfg->routes = zalloc(x, cfg->pool, (nroutes + 1) * sizeof(mg_route_t));
    for (int l = 0; l < 2; l++) {
        for (route_item_t *r = lists[l]; r; r = r->next) {
            if (!r->svc->enabled) continue;
            mg_route_t *dst = &cfg->routes[cfg->nroutes];
            *dst = r->r;
            dst->service = r->svc->final;
            r->final = (int)cfg->nroutes;
            dst->index = (unsigned)cfg->nroutes++;
        }
    }

    cfg->consumers = zalloc(x, cfg->pool, (nconsumers + 1) * sizeof(mg_consumer_t));
    for (consumer_item_t *c = x->consumers; c; c = c->next) {
        c->index = (int)cfg->nconsumers;
        cfg->consumers[cfg->nconsumers++] = c->c;
    }

    cfg->plugins = zalloc(x, cfg->pool, (nplugins + 1) * sizeof(mg_plugin_conf_t));
    for (int l = 0; l < PS_COUNT; l++) {
        for (plugin_item_t *p = x->plugins[l]; p; p = p->next) {
            if ((p->svc && !p->svc->enabled) || (p->route && p->route->final < 0)) continue;
            mg_plugin_conf_t *dst = &cfg->plugins[cfg->nplugins++];
            *dst = p->p;
            dst->service = p->svc ? (int)p->svc->final->index : -1;
            dst->route = p->route ? p->route->final : -1;
            dst->consumer = p->consumer ? p->consumer->index : -1;
        }
    }
}

/* ---- files and the environment ----------------------------------------------------------- */

/* Rules between the guards' settings, once the file and the environment are read. */
static void check_guards(ctx_t *x)
{
    const mg_guards_t *g = &x->cfg->guards;
    if (g->per_ip_request_burst && g->per_ip_request_rate.n == 0)
        fail_at(x, "guards.per_ip_request_burst", "needs guards.per_ip_request_rate");
    if (g->zone_size > MAX_GUARD_ZONE) fail_at(x, "guards.zone_size", "must be at most 1g");
}

/*
 * Loads one YAML document into x->docs[slot]. An empty file is an empty mapping. Problems are
 * reported as "<file>: ..." (or "<label>: cannot read ..." when a setting named the file).
 */
static bool load_doc(ctx_t *x, int slot, const char *file, const char *label, yaml_node_t **root)
{
    FILE *fp = fopen(file, "rb");
    if (fp == NULL) {
        if (label)
            fail_at(x, label, "cannot read \"%s\": %s", file, strerror(errno));
        else
            fail_at(x, file, "%s", strerror(errno));
        return false;
    }
    yaml_parser_t parser;
    yaml_document_t extra;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, fp);
    bool ok = yaml_parser_load(&parser, &x->docs[slot]);
    if (ok) {
        x->live[slot] = true;
        ok = yaml_parser_load(&parser, &extra);
        if (ok && yaml_document_get_root_node(&extra)) {
            fail_at(x, file, "expected a single YAML document");
            ok = false;
            yaml_document_delete(&extra);
        } else if (ok) {
            yaml_document_delete(&extra);
        }
    }
    if (!ok && parser.error == YAML_READER_ERROR) {
        fail_at(x, file, "%s at byte %zu", parser.problem, parser.problem_offset);
    } else if (!ok && parser.error != YAML_NO_ERROR) {
        char context[128] = "";
        if (parser.context)
            snprintf(context, sizeof(context), " (%s at %zu:%zu)", parser.context,
                     parser.context_mark.line + 1, parser.context_mark.column + 1);
        errors_add(x->errs, "%s:%zu:%zu: %s%s", file, parser.problem_mark.line + 1,
                   parser.problem_mark.column + 1, parser.problem ? parser.problem : "error",
                   context);
        x->nerrs++;
    }
    yaml_parser_delete(&parser);
    fclose(fp);
    if (!ok) return false;

    yaml_document_t *doc = &x->docs[slot];
    x->budget += (size_t)(doc->nodes.top - doc->nodes.start) + MAX_ALIAS_VALUES;
    *root = yaml_document_get_root_node(doc);
    if (*root && !is_null(*root) && (*root)->type != YAML_MAPPING_NODE) {
        fail_at(x, file, "expected a mapping at the top level");
        return false;
    }
    if (*root && (*root)->type != YAML_MAPPING_NODE) *root = NULL;
    return true;
}

/*
 * MOONGATE_<NAME> (and MOONGATE_LIMITS_<NAME> for the limits) replaces the file's value. The
 * value becomes a one-node document, a list of comma-separated items for list settings, and
 * goes through the same row as the file's value would. Empty values are ignored.
 */
static void apply_env(ctx_t *x, const field_t *t, size_t nt, const char *prefix, void *obj)
{
    for (size_t i = 0; i < nt; i++) {
        const field_t *f = &t[i];
        char var[128];
        snprintf(var, sizeof(var), "%s%s%s", prefix, f->name, f->parse == p_sub ? "_" : "");
        for (char *c = var; *c; c++)
            if (*c >= 'a' && *c <= 'z') *c = (char)(*c - 'a' + 'A');
        if (f->parse == p_sub) {
            apply_env(x, f->sub, f->nsub, var, (char *)obj + f->off);
            continue;
        }
        const char *v = (f->flags & F_ENV) ? getenv(var) : NULL;
        if (v == NULL || *v == '\0') continue;

        yaml_document_t *doc = &x->docs[2];
        yaml_document_initialize(doc, NULL, NULL, NULL, 1, 1);
        x->live[2] = true;
        int id;
        if (f->flags & F_LIST) {
            id = yaml_document_add_sequence(doc, NULL, YAML_FLOW_SEQUENCE_STYLE);
            for (const char *p = v; id && *p;) {
                size_t len = strcspn(p, ",");
                const char *s = p + strspn(p, " \t"), *e = p + len;
                while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
                    e--;
                int item = yaml_document_add_scalar(doc, NULL, (yaml_char_t *)s, (int)(e - s),
                                                    YAML_DOUBLE_QUOTED_SCALAR_STYLE);
                if (!item || !yaml_document_append_sequence_item(doc, id, item)) id = 0;
                p += len + (p[len] == ',');
            }
        } else {
            id = yaml_document_add_scalar(doc, NULL, (yaml_char_t *)v, (int)strlen(v),
                                          YAML_DOUBLE_QUOTED_SCALAR_STYLE);
        }
        if (id == 0) longjmp(x->oom, 1);

        yaml_document_t *saved = x->doc;
        x->doc = doc;
        x->in_env = true;
        path_add(x, "env %s", var);
        f->parse(x, yaml_document_get_node(doc, id), obj, f);
        path_set(x, 0);
        x->in_env = false;
        x->doc = saved;
        yaml_document_delete(doc);
        x->live[2] = false;
    }
}

/* The declarative file's path: as given when it came from the environment or is absolute,
 * else relative to the directory of the main file. */
static char *declarative_path(ctx_t *x, const char *main_file)
{
    const char *slash = strrchr(main_file, '/');
    if (x->decl_from_env || x->declarative[0] == '/' || slash == NULL) return x->declarative;
    char *p = mg_pool_printf(x->cfg->pool, "%.*s/%s", (int)(slash - main_file), main_file,
                             x->declarative);
    if (p == NULL) longjmp(x->oom, 1);
    return p;
}

static bool has_key(ctx_t *x, yaml_node_t *map, const char *key)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        const char *k = text(node_at(x, p->key));
        if (k && strcmp(k, key) == 0 && !is_null(node_at(x, p->value))) return true;
    }
    return false;
}

static void set_defaults(ctx_t *x, mg_config_t *cfg)
{
    char why[128];
    cfg->prefix = sdup(x, ".");
    cfg->proxy_listen = zalloc(x, cfg->pool, sizeof(mg_listen_t));
    listen_parse("127.0.0.1:8000", cfg->proxy_listen, why, sizeof(why));
    cfg->proxy_listen->text = sdup(x, "127.0.0.1:8000");
    cfg->nproxy_listen = 1;
    i_workers(x, "auto", &cfg->worker_processes,
              find(top_fields, MG_ARRAY_SIZE(top_fields), "worker_processes"));
    cfg->master_process = true;
    cfg->pid_file = sdup(x, "logs/moongate.pid");
    cfg->access_log = sdup(x, "logs/access.log");
    cfg->error_log = sdup(x, "stderr");
    cfg->log_level = MG_LOG_NOTICE;
    cfg->real_ip_header = sdup(x, "X-Real-IP");
    cfg->request_id_header = sdup(x, "X-Request-ID");
    cfg->worker_stall_timeout = 5000;
    cfg->ssl_verify_depth = 1; /* nginx's default */
    cfg->ssl_stapling = true;
    cfg->ssl_stapling_verify = true;
    cfg->lua_memory_limit = (size_t)256 << 20;
    cfg->dns_hostsfile = sdup(x, "/etc/hosts");
    static const char *const order[] = {"LAST", "A", "CNAME"}; /* Kong's, less SRV */
    cfg->dns_order = zalloc(x, cfg->pool, sizeof(order));
    for (size_t i = 0; i < MG_ARRAY_SIZE(order); i++)
        cfg->dns_order[i] = sdup(x, order[i]);
    cfg->ndns_order = MG_ARRAY_SIZE(order);
    cfg->dns_stale_ttl = 4;
    cfg->dns_not_found_ttl = 30;
    cfg->dns_error_ttl = 1;
    cfg->plugin_names = zalloc(x, cfg->pool, sizeof(char *));
    cfg->plugin_names[0] = sdup(x, "bundled");
    cfg->nplugin_names = 1;
    cfg->limits = (mg_limits_t){
        .client_max_body_size = 8 << 20,
        .max_request_line = 8 << 10,
        .max_header_line = 8 << 10,
        .max_headers_size = 32 << 10,
        .max_headers = 100,
        .client_header_timeout = 10000,
        .client_body_timeout = 60000,
        .send_timeout = 60000,
        .keepalive_timeout = 60000,
        .tls_handshake_timeout = 10000,
        .keepalive_requests = 1000,
        .max_connections = 16384,
        .client_body_buffer_size = 1 << 20,
        .worker_shutdown_timeout = 10000,
        .upstream_keepalive_pool_size = 512,      /* Kong's default */
        .upstream_keepalive_max_requests = 10000, /* Kong's default */
        .upstream_keepalive_idle_timeout = 60000,
    };
    cfg->guards = (mg_guards_t){
        .ipv6_prefix = 64,
        .zone_size = 4 << 20,
    };
}

/* ---- public API -------------------------------------------------------------------------- */

mg_config_t *mg_config_load(const char *path, mg_config_errors_t *errs)
{
    mg_pool_t *pool = mg_pool_create(16384);
    mg_pool_t *tmp = mg_pool_create(16384);
    ctx_t *x = calloc(1, sizeof(*x));
    mg_config_t *cfg = pool ? mg_pool_calloc(pool, sizeof(*cfg)) : NULL;
    if (tmp == NULL || x == NULL || cfg == NULL) {
        errors_add(errs, "%s: out of memory", path);
        goto failed;
    }
    *x = (ctx_t){.cfg = cfg, .errs = errs, .tmp = tmp};
    x->svcs_tail = &x->svcs;
    x->nested_tail = &x->nested;
    x->top_tail = &x->top;
    x->consumers_tail = &x->consumers;
    x->upstreams_tail = &x->upstreams;
    x->targets_tail = &x->targets;
    for (int i = 0; i < PS_COUNT; i++)
        x->plugins_tail[i] = &x->plugins[i];
    cfg->pool = pool;
    if (setjmp(x->oom)) {
        errors_add(errs, "%s: out of memory", path);
        x->nerrs++;
        goto done;
    }
    set_defaults(x, cfg);
    cfg->path = sdup(x, path);

    yaml_node_t *root;
    if (!load_doc(x, 0, path, NULL, &root)) goto done;
    x->doc = &x->docs[0];
    const char *env_decl = getenv("MOONGATE_DECLARATIVE_CONFIG");
    x->decl_set = (root && has_key(x, root, "declarative_config")) || (env_decl && *env_decl);
    if (root) parse_map(x, root, cfg, top_fields, MG_ARRAY_SIZE(top_fields));
    apply_env(x, top_fields, MG_ARRAY_SIZE(top_fields), "MOONGATE_", cfg);

    if (x->declarative) {
        const char *file = declarative_path(x, path);
        const char *label =
            x->decl_from_env ? "env MOONGATE_DECLARATIVE_CONFIG" : "declarative_config";
        if (!load_doc(x, 1, file, label, &root)) goto done;
        x->doc = &x->docs[1];
        x->in_decl = true;
        if (root) parse_map(x, root, cfg, top_fields, MG_ARRAY_SIZE(top_fields));
    }
    finish(x);
    /* the targets' health, shared with the workers forked with this configuration */
    if (x->nerrs == 0 && mg_health_create(cfg) != MG_OK) fail(x, "cannot map the health zone");

done:
    for (int i = 0; i < 3; i++)
        if (x->live[i]) yaml_document_delete(&x->docs[i]);
    if (x->nerrs == 0) {
        mg_pool_destroy(tmp);
        free(x);
        return cfg;
    }
failed:
    mg_pool_destroy(tmp);
    mg_pool_destroy(pool);
    free(x);
    return NULL;
}

void mg_config_free(mg_config_t *cfg)
{
    if (cfg == NULL) return;
    mg_health_destroy(cfg);
    mg_tls_free(cfg->tls);
    mg_ca_free(cfg->ca);
    mg_utls_free(cfg->utls);
    mg_pool_destroy(cfg->pool);
}

void mg_config_errors_init(mg_config_errors_t *errs)
{
    memset(errs, 0, sizeof(*errs));
    errs->pool = mg_pool_create(4096);
}

void mg_config_errors_add(mg_config_errors_t *errs, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verrors_add(errs, fmt, ap);
    va_end(ap);
}

void mg_config_errors_free(mg_config_errors_t *errs)
{
    mg_pool_destroy(errs->pool);
    memset(errs, 0, sizeof(*errs));
}

void mg_config_errors_print(const mg_config_errors_t *errs, FILE *out)
{
    for (size_t i = 0; i < errs->n; i++)
        fprintf(out, "%s\n", errs->items[i]);
}

int mg_config_parse_duration(const char *s, unsigned *ms)
{
    static const struct {
        const char *unit;
        unsigned long long ms;
    } units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
    if (s == NULL || *s < '0' || *s > '9') return MG_ERROR;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno) return MG_ERROR;
    for (size_t i = 0; i < MG_ARRAY_SIZE(units); i++) {
        if (strcmp(end, units[i].unit) != 0) continue;
        if (v > UINT_MAX / units[i].ms) return MG_ERROR;
        *ms = (unsigned)(v * units[i].ms);
        return MG_OK;
    }
    return MG_ERROR;
}

int mg_config_parse_size(const char *s, size_t *bytes)
{
    if (s == NULL || *s < '0' || *s > '9') return MG_ERROR;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno) return MG_ERROR;
    unsigned shift = 0;
    switch (mg_lower(*end)) {
    case '\0':
        break;
    case 'k':
        shift = 10;
        break;
    case 'm':
        shift = 20;
        break;
    case 'g':
        shift = 30;
        break;
    default:
        return MG_ERROR;
    }
    if (*end && end[1] != '\0') return MG_ERROR;
    if (v > (SIZE_MAX >> shift)) return MG_ERROR;
    *bytes = (size_t)v << shift;
    return MG_OK;
}
