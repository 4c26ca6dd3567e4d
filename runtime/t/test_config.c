/*
 * test_config.c — unit tests for mg_config.c: a full file loads with the right values and
 * defaults, every kind of problem is reported with its exact "PATH: message" (and all of them,
 * not only the first), durations, sizes, CIDR matching, environment overrides, JSON input and
 * declarative_config. Configs are written to mkstemp files in /tmp.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <unistd.h>

#include "mg_test.h"
#include "../mg_config.c"

extern char **environ;

/* Tests must not see the MOONGATE_* variables of whoever runs them. */
__attribute__((constructor)) static void clear_env(void)
{
    for (int again = 1; again;) {
        again = 0;
        for (char **e = environ; *e; e++) {
            if (strncmp(*e, "MOONGATE_", 9) != 0) continue;
            char name[256];
            snprintf(name, sizeof(name), "%.*s", (int)strcspn(*e, "="), *e);
            unsetenv(name);
            again = 1;
            break;
        }
    }
}

/* Writes `text` to a new file in `dir` (NULL: /tmp) and returns its malloc'ed path. */
static char *write_file(const char *dir, const char *name, const char *text)
{
    char *path;
    if (name) {
        if (asprintf(&path, "%s/%s", dir, name) < 0) abort();
        FILE *f = fopen(path, "w");
        fputs(text, f);
        fclose(f);
        return path;
    }
    path = strdup("/tmp/mg_test_config_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) abort();
    close(fd);
    return path;
}

static mg_config_t *load_text(const char *text, mg_config_errors_t *errs)
{
    char *path = write_file(NULL, NULL, text);
    mg_config_errors_init(errs);
    mg_config_t *cfg = mg_config_load(path, errs);
    unlink(path);
    free(path);
    return cfg;
}

static void show_errors(const mg_config_errors_t *e)
{
    for (size_t i = 0; i < e->n; i++)
        fprintf(stderr, "#       %s\n", e->items[i]);
}

/* Loads `text`, which must fail with exactly the messages in `want` (NULL-terminated). */
static void expect_errors(int line, const char *text, const char *const *want)
{
    mg_config_errors_t e;
    mg_config_t *cfg = load_text(text, &e);
    size_t n = 0;
    bool same = true;
    for (; want[n]; n++)
        same = same && n < e.n && strcmp(e.items[n], want[n]) == 0;
    if (cfg || !same || n != e.n) {
        mg_case_failed = 1;
        fprintf(stderr, "#   %s:%d: %s; expected:\n", __FILE__, line,
                cfg ? "the config loaded" : "wrong errors");
        for (size_t i = 0; want[i]; i++)
            fprintf(stderr, "#       %s\n", want[i]);
        fprintf(stderr, "#     got:\n");
        show_errors(&e);
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);
}

#define EXPECT_ERRORS(text, ...)                                                                   \
    expect_errors(__LINE__, text, (const char *const[]){__VA_ARGS__, NULL})

/* Loads `text`, which must be valid. */
static mg_config_t *load_ok(int line, const char *text, mg_config_errors_t *e)
{
    mg_config_t *cfg = load_text(text, e);
    if (cfg == NULL || e->n) {
        mg_case_failed = 1;
        fprintf(stderr, "#   %s:%d: expected the config to load, got:\n", __FILE__, line);
        show_errors(e);
    }
    return cfg;
}

#define LOAD_OK(text, e) load_ok(__LINE__, text, e)

static unsigned sock_port(const struct sockaddr_storage *ss)
{
    return ntohs(ss->ss_family == AF_INET ? ((const struct sockaddr_in *)ss)->sin_port
                                          : ((const struct sockaddr_in6 *)ss)->sin6_port);
}

static const char *sock_ip(const struct sockaddr_storage *ss, char *buf)
{
    const void *a = ss->ss_family == AF_INET
                        ? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
                        : (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
    return inet_ntop(ss->ss_family, a, buf, INET6_ADDRSTRLEN);
}

#define SVC "{name: s, url: 'http://127.0.0.1:9001', routes: [{name: r, paths: [/]}]}"

/* ---- loading good configs ---------------------------------------------------------------- */

TEST(defaults_apply_when_settings_are_absent)
{
    mg_config_errors_t e;
    mg_config_t *cfg = LOAD_OK("services: [" SVC "]\n", &e);
    if (cfg == NULL) goto out;
    CHECK_STR(cfg->prefix, ".");
    CHECK_INT(cfg->nproxy_listen, 1);
    CHECK_STR(cfg->proxy_listen[0].text, "127.0.0.1:8000");
    CHECK_INT(sock_port(&cfg->proxy_listen[0].addr), 8000);
    CHECK_INT(cfg->proxy_listen[0].backlog, 511);
    CHECK(!cfg->proxy_listen[0].ssl);
    CHECK_INT(cfg->nadmin_listen, 0);
    CHECK_INT(cfg->worker_processes, sysconf(_SC_NPROCESSORS_ONLN));
    CHECK(cfg->master_process);
    CHECK_STR(cfg->pid_file, "logs/moongate.pid");
    CHECK_STR(cfg->access_log, "logs/access.log");
    CHECK_STR(cfg->error_log, "stderr");
    CHECK_INT(cfg->log_level, MG_LOG_NOTICE);
    CHECK_INT(cfg->ntrusted_ips, 0);
    CHECK_STR(cfg->real_ip_header, "X-Real-IP");
    CHECK_STR(cfg->request_id_header, "X-Request-ID");
    CHECK_INT(cfg->limits.client_max_body_size, 8 << 20);
    CHECK_INT(cfg->limits.max_request_line, 8192);
    CHECK_INT(cfg->limits.max_header_line, 8192);
    CHECK_INT(cfg->limits.max_headers_size, 32768);
    CHECK_INT(cfg->limits.max_headers, 100);
    CHECK_INT(cfg->limits.client_header_timeout, 10000);
    CHECK_INT(cfg->limits.client_body_timeout, 60000);
    CHECK_INT(cfg->limits.send_timeout, 60000);
    CHECK_INT(cfg->limits.keepalive_timeout, 60000);
    CHECK_INT(cfg->limits.keepalive_requests, 1000);
    CHECK_INT(cfg->limits.max_connections, 16384);
    CHECK_INT(cfg->limits.worker_shutdown_timeout, 10000);
    CHECK_INT(cfg->limits.upstream_keepalive_pool_size, 512);
    CHECK_INT(cfg->limits.upstream_keepalive_max_requests, 10000);
    CHECK_INT(cfg->limits.upstream_keepalive_idle_timeout, 60000);
    CHECK_INT(cfg->nplugin_names, 1);
    CHECK_STR(cfg->plugin_names[0], "bundled");
    CHECK(cfg->lua_package_path == NULL);
    CHECK_INT(cfg->nshared_dicts, 1); /* rate-limiting's, declared by default */
    if (cfg->nshared_dicts == 1) {
        CHECK_STR(cfg->shared_dicts[0].name, "rate_limit");
        CHECK_INT(cfg->shared_dicts[0].size, 12 << 20);
    }
    CHECK_INT(cfg->nplugins, 0);
    CHECK_INT(cfg->nconsumers, 0);

    CHECK_INT(cfg->nservices, 1);
    mg_service_t *s = &cfg->services[0];
    CHECK_STR(s->protocol, "http");
    CHECK_INT(s->retries, 5);
    CHECK_INT(s->connect_timeout, 60000);
    CHECK_INT(s->write_timeout, 60000);
    CHECK_INT(s->read_timeout, 60000);
    CHECK(s->path == NULL);
    CHECK_INT(cfg->nroutes, 1);
    mg_route_t *r = &cfg->routes[0];
    CHECK(r->strip_path);
    CHECK(!r->preserve_host);
    CHECK_INT(r->regex_priority, 0);
    CHECK_INT(r->nprotocols, 2);
    CHECK_STR(r->protocols[0], "http");
    CHECK_STR(r->protocols[1], "https");
out:
    mg_config_free(cfg);
    mg_config_errors_free(&e);
}

static const char full_yaml[] =
    "# every setting, written out\n"
    "proxy_listen:\n"
    "  - 127.0.0.1:8000\n"
    "  - \"[::1]:8443 ssl backlog=1024\"\n"
    "  - \"*:9000\"\n"
    "admin_listen: 127.0.0.1:8001\n"
    "worker_processes: 3\n"
    "master_process: off\n"
    "pid_file: /run/mg.pid\n"
    "access_log: 'off'\n"
    "error_log: logs/error.log\n"
    "log_level: debug\n"
    "trusted_ips: [10.0.0.0/8, '::1', 192.168.1.7]\n"
    "real_ip_header: X-Forwarded-For\n"
    "request_id_header: 'off'\n"
    "plugins: [bundled]\n"
    "lua_package_path: './lua_modules/share/lua/5.1/?.lua;;'\n"
    "shared_dicts: { rate_limit: 16m, cache: 64m }\n"
    "limits:\n"
    "  client_max_body_size: 0\n"
    "  max_request_line: 4k\n"
    "  max_header_line: 2048\n"
    "  max_headers_size: 1m\n"
    "  max_headers: 50\n"
    "  client_header_timeout: 500ms\n"
    "  client_body_timeout: 2m\n"
    "  send_timeout: 30\n"
    "  keepalive_timeout: 0\n"
    "  keepalive_requests: 10\n"
    "  max_connections: 2048\n"
    "  worker_shutdown_timeout: 1h\n"
    "  upstream_keepalive_pool_size: 0\n"
    "  upstream_keepalive_max_requests: 7\n"
    "  upstream_keepalive_idle_timeout: 5s\n"
    "_format_version: \"3.0\"\n"
    "services:\n"
    "  - name: orders\n"
    "    url: http://127.0.0.1:9001/v1\n"
    "    retries: 3\n"
    "    connect_timeout: 1000\n"
    "    write_timeout: 2000\n"
    "    read_timeout: 3000\n"
    "    tags: [team-a, prod]\n"
    "    enabled: true\n"
    "    routes:\n"
    "      - name: orders-api\n"
    "        paths: [/orders, '~/orders/\\d+$']\n"
    "        methods: [get, POST]\n"
    "        hosts: [API.Example.com, '*.example.org', 'example.*:8080', '[::1]:80']\n"
    "        headers: { X-Version: [v1, v2], X-Single: yes }\n"
    "        snis: [API.example.com]\n"
    "        protocols: [https]\n"
    "        regex_priority: -5\n"
    "        strip_path: false\n"
    "        preserve_host: true\n"
    "        path_handling: v1\n"
    "        https_redirect_status_code: 308\n"
    "        request_buffering: true\n"
    "        response_buffering: false\n"
    "        tags: [x]\n"
    "  - name: users\n"
    "    protocol: http\n"
    "    host: LOCALHOST\n"
    "    port: 9002\n"
    "    path: /u\n"
    "    routes: [{ name: users-api, paths: [/users] }]\n"
    "  - name: v6\n"
    "    url: http://[::1]:9003\n"
    "  - host: 127.0.0.2\n"
    "routes:\n"
    "  - name: top\n"
    "    service: users\n"
    "    paths: [/top]\n"
    "  - name: top2\n"
    "    service: { name: orders }\n"
    "    methods: [DELETE]\n"
    "consumers:\n"
    "  - username: alice\n"
    "    tags: [vip]\n"
    "  - custom_id: '42'\n";

TEST(full_config_loads_with_every_value)
{
    mg_config_errors_t e;
    char ip[INET6_ADDRSTRLEN];
    mg_config_t *cfg = LOAD_OK(full_yaml, &e);
    if (cfg == NULL) goto out;
    CHECK_INT(cfg->nproxy_listen, 3);
    CHECK_STR(cfg->proxy_listen[1].text, "[::1]:8443 ssl backlog=1024");
    CHECK_INT(cfg->proxy_listen[1].addr.ss_family, AF_INET6);
    CHECK_STR(sock_ip(&cfg->proxy_listen[1].addr, ip), "::1");
    CHECK_INT(sock_port(&cfg->proxy_listen[1].addr), 8443);
    CHECK_INT(cfg->proxy_listen[1].addrlen, sizeof(struct sockaddr_in6));
    CHECK(cfg->proxy_listen[1].ssl);
    CHECK_INT(cfg->proxy_listen[1].backlog, 1024);
    CHECK_STR(sock_ip(&cfg->proxy_listen[2].addr, ip), "0.0.0.0");
    CHECK_INT(sock_port(&cfg->proxy_listen[2].addr), 9000);
    CHECK_INT(cfg->nadmin_listen, 1);
    CHECK_INT(sock_port(&cfg->admin_listen[0].addr), 8001);
    CHECK_INT(cfg->worker_processes, 3);
    CHECK(!cfg->master_process);
    CHECK_STR(cfg->pid_file, "/run/mg.pid");
    CHECK_STR(cfg->access_log, "off");
    CHECK_STR(cfg->error_log, "logs/error.log");
    CHECK_INT(cfg->log_level, MG_LOG_DEBUG);
    CHECK_INT(cfg->ntrusted_ips, 3);
    CHECK_INT(cfg->trusted_ips[0].family, AF_INET);
    CHECK_INT(cfg->trusted_ips[0].prefix, 8);
    CHECK_INT(cfg->trusted_ips[1].family, AF_INET6);
    CHECK_INT(cfg->trusted_ips[1].prefix, 128);
    CHECK_INT(cfg->trusted_ips[2].prefix, 32);
    CHECK_STR(cfg->real_ip_header, "X-Forwarded-For");
    CHECK(cfg->request_id_header == NULL);
    CHECK_INT(cfg->limits.client_max_body_size, 0);
    CHECK_INT(cfg->limits.max_request_line, 4096);
    CHECK_INT(cfg->limits.max_header_line, 2048);
    CHECK_INT(cfg->limits.max_headers_size, 1 << 20);
    CHECK_INT(cfg->limits.max_headers, 50);
    CHECK_INT(cfg->limits.client_header_timeout, 500);
    CHECK_INT(cfg->limits.client_body_timeout, 120000);
    CHECK_INT(cfg->limits.send_timeout, 30000);
    CHECK_INT(cfg->limits.keepalive_timeout, 0);
    CHECK_INT(cfg->limits.keepalive_requests, 10);
    CHECK_INT(cfg->limits.max_connections, 2048);
    CHECK_INT(cfg->limits.worker_shutdown_timeout, 3600000);
    CHECK_INT(cfg->limits.upstream_keepalive_pool_size, 0);
    CHECK_INT(cfg->limits.upstream_keepalive_max_requests, 7);
    CHECK_INT(cfg->limits.upstream_keepalive_idle_timeout, 5000);
    CHECK_INT(cfg->nplugin_names, 1);
    CHECK_STR(cfg->plugin_names[0], "bundled");
    CHECK_STR(cfg->lua_package_path, "./lua_modules/share/lua/5.1/?.lua;;");
    CHECK_INT(cfg->nshared_dicts, 2);
    if (cfg->nshared_dicts == 2) {
        CHECK_STR(cfg->shared_dicts[0].name, "rate_limit");
        CHECK_INT(cfg->shared_dicts[0].size, 16 << 20);
        CHECK_STR(cfg->shared_dicts[1].name, "cache");
        CHECK_INT(cfg->shared_dicts[1].size, 64 << 20);
    }
    CHECK_INT(cfg->nconsumers, 2);
    if (cfg->nconsumers == 2) {
        CHECK_STR(cfg->consumers[0].username, "alice");
        CHECK(cfg->consumers[0].custom_id == NULL);
        CHECK(cfg->consumers[1].username == NULL);
        CHECK_STR(cfg->consumers[1].custom_id, "42");
    }
    CHECK_INT(cfg->nplugins, 0);

    CHECK_INT(cfg->nservices, 4);
    mg_service_t *orders = &cfg->services[0], *users = &cfg->services[1];
    CHECK_STR(orders->name, "orders");
    CHECK_STR(orders->protocol, "http");
    CHECK_STR(orders->host, "127.0.0.1");
    CHECK_INT(orders->port, 9001);
    CHECK_STR(orders->path, "/v1");
    CHECK_INT(orders->retries, 3);
    CHECK_INT(orders->connect_timeout, 1000);
    CHECK_INT(orders->write_timeout, 2000);
    CHECK_INT(orders->read_timeout, 3000);
    CHECK_INT(orders->index, 0);
    CHECK_STR(sock_ip(&orders->addr, ip), "127.0.0.1");
    CHECK_INT(sock_port(&orders->addr), 9001);
    CHECK_INT(orders->addrlen, sizeof(struct sockaddr_in));
    CHECK_STR(users->host, "localhost");
    CHECK_INT(users->port, 9002);
    CHECK_STR(users->path, "/u");
    CHECK_INT(sock_port(&users->addr), 9002);
    CHECK_STR(cfg->services[2].host, "[::1]");
    CHECK_INT(cfg->services[2].addr.ss_family, AF_INET6);
    CHECK_INT(sock_port(&cfg->services[2].addr), 9003);
    CHECK(cfg->services[3].name == NULL);
    CHECK_INT(cfg->services[3].port, 80);
    CHECK_INT(cfg->services[3].index, 3);

    /* nested routes first, in service order, then top-level ones */
    CHECK_INT(cfg->nroutes, 4);
    const char *names[] = {"orders-api", "users-api", "top", "top2"};
    mg_service_t *owners[] = {orders, users, users, orders};
    for (size_t i = 0; i < 4 && i < cfg->nroutes; i++) {
        CHECK_STR(cfg->routes[i].name, names[i]);
        CHECK(cfg->routes[i].service == owners[i]);
        CHECK_INT(cfg->routes[i].index, i);
    }
    mg_route_t *r = &cfg->routes[0];
    CHECK_INT(r->npaths, 2);
    CHECK_STR(r->paths[1], "~/orders/\\d+$");
    CHECK_INT(r->nmethods, 2);
    CHECK_STR(r->methods[0], "GET");
    CHECK_INT(r->nhosts, 4);
    CHECK_STR(r->hosts[0], "api.example.com");
    CHECK_STR(r->hosts[1], "*.example.org");
    CHECK_STR(r->hosts[2], "example.*:8080");
    CHECK_STR(r->hosts[3], "[::1]:80");
    CHECK_INT(r->nheaders, 2);
    CHECK_STR(r->headers[0].name, "x-version");
    CHECK_INT(r->headers[0].nvalues, 2);
    CHECK_STR(r->headers[0].values[1], "v2");
    CHECK_STR(r->headers[1].name, "x-single");
    CHECK_INT(r->headers[1].nvalues, 1);
    CHECK_STR(r->headers[1].values[0], "yes");
    CHECK_INT(r->nsnis, 1);
    CHECK_STR(r->snis[0], "api.example.com");
    CHECK_INT(r->nprotocols, 1);
    CHECK_STR(r->protocols[0], "https");
    CHECK_INT(r->regex_priority, -5);
    CHECK(!r->strip_path);
    CHECK(r->preserve_host);
out:
    mg_config_free(cfg);
    mg_config_errors_free(&e);
}

TEST(demo_config_loads)
{
    mg_config_errors_t e;
    mg_config_errors_init(&e);
    mg_config_t *cfg = mg_config_load("conf/moongate.yaml", &e);
    show_errors(&e);
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_STR(cfg->path, "conf/moongate.yaml");
        CHECK_STR(cfg->access_log, "stdout");
        CHECK_INT(cfg->nservices, 1);
        CHECK_INT(cfg->services[0].port, 9001);
        CHECK(cfg->nroutes >= 1);
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);
}

TEST(empty_file_and_null_values_mean_defaults)
{
    mg_config_errors_t e;
    mg_config_t *cfg = LOAD_OK("", &e);
    if (cfg) CHECK_INT(cfg->nservices, 0);
    mg_config_free(cfg);
    mg_config_errors_free(&e);

    /* Kong's exports write nulls for unset fields */
    cfg = LOAD_OK("log_level: ~\nservices:\n  - name: s\n    protocol: http\n    host: 127.0.0.1\n"
                  "    port: 80\n    path: null\n    routes: [{paths: [/], hosts: null}]\n",
                  &e);
    if (cfg) {
        CHECK_INT(cfg->log_level, MG_LOG_NOTICE);
        CHECK(cfg->services[0].path == NULL);
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);
}

TEST(json_input_loads)
{
    mg_config_errors_t e;
    mg_config_t *cfg = LOAD_OK(
        "{\n"
        "  \"proxy_listen\": [\"127.0.0.1:8100\"],\n"
        "  \"worker_processes\": 2,\n"
        "  \"master_process\": false,\n"
        "  \"limits\": {\"client_max_body_size\": \"1m\", \"max_headers\": 20},\n"
        "  \"_format_version\": \"3.0\",\n"
        "  \"services\": [{\"name\": \"s\", \"url\": \"http://127.0.0.1:9001/p\", \"retries\": 0,\n"
        "    \"routes\": [{\"name\": \"r\", \"paths\": [\"/a\"], \"strip_path\": false,\n"
        "                  \"headers\": {\"x-a\": [\"1\"]}, \"service\": null}]}]\n"
        "}\n",
        &e);
    if (cfg) {
        CHECK_INT(sock_port(&cfg->proxy_listen[0].addr), 8100);
        CHECK_INT(cfg->worker_processes, 2);
        CHECK(!cfg->master_process);
        CHECK_INT(cfg->limits.client_max_body_size, 1 << 20);
        CHECK_INT(cfg->limits.max_headers, 20);
        CHECK_INT(cfg->services[0].retries, 0);
        CHECK_STR(cfg->services[0].path, "/p");
        CHECK(!cfg->routes[0].strip_path);
        CHECK_STR(cfg->routes[0].headers[0].values[0], "1");
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);

    EXPECT_ERRORS("{\"services\": [{\"name\": \"s\", \"url\": \"http://127.0.0.1:1\", "
                  "\"retries\": \"three\", \"routes\": [{\"paths\": [\"x\"]}]}]}",
                  "services[0].retries: expected an integer",
                  "services[0].routes[0].paths[0]: must start with \"/\" or \"~\"");
}

TEST(disabled_service_and_its_routes_are_left_out)
{
    mg_config_errors_t e;
    mg_config_t *cfg = LOAD_OK("services:\n"
                               "  - {name: a, url: 'http://127.0.0.1:1', enabled: false,\n"
                               "     routes: [{name: ra, paths: [/a]}]}\n"
                               "  - {name: b, url: 'http://127.0.0.1:2', routes: [{paths: [/b]}]}\n"
                               "routes: [{name: ta, service: a, paths: [/ta]}]\n",
                               &e);
    if (cfg) {
        CHECK_INT(cfg->nservices, 1);
        CHECK_STR(cfg->services[0].name, "b");
        CHECK_INT(cfg->services[0].index, 0);
        CHECK_INT(cfg->nroutes, 1);
        CHECK_STR(cfg->routes[0].paths[0], "/b");
        CHECK(cfg->routes[0].service == &cfg->services[0]);
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);
}

/* ---- problems, each with its exact message ----------------------------------------------- */

TEST(file_level_errors_name_the_file)
{
    mg_config_errors_t e;
    mg_config_errors_init(&e);
    CHECK(mg_config_load("/nonexistent/moongate.yaml", &e) == NULL);
    CHECK_INT(e.n, 1);
    if (e.n) CHECK_STR(e.items[0], "/nonexistent/moongate.yaml: No such file or directory");
    mg_config_errors_free(&e);

    char *path = write_file(NULL, NULL, "proxy_listen: [a]\nservices: x: y\n");
    char want[256];
    mg_config_errors_init(&e);
    CHECK(mg_config_load(path, &e) == NULL);
    snprintf(want, sizeof(want), "%s:2:12: mapping values are not allowed in this context", path);
    CHECK_INT(e.n, 1);
    if (e.n) CHECK_STR(e.items[0], want);
    mg_config_errors_free(&e);
    unlink(path);
    free(path);

    path = write_file(NULL, NULL, "- a\n- b\n");
    mg_config_errors_init(&e);
    CHECK(mg_config_load(path, &e) == NULL);
    snprintf(want, sizeof(want), "%s: expected a mapping at the top level", path);
    if (e.n) CHECK_STR(e.items[0], want);
    mg_config_errors_free(&e);
    unlink(path);
    free(path);

    path = write_file(NULL, NULL, "a: 1\n---\nb: 2\n");
    mg_config_errors_init(&e);
    CHECK(mg_config_load(path, &e) == NULL);
    snprintf(want, sizeof(want), "%s: expected a single YAML document", path);
    if (e.n) CHECK_STR(e.items[0], want);
    mg_config_errors_free(&e);
    unlink(path);
    free(path);
}

TEST(unknown_fields_and_duplicate_keys)
{
    EXPECT_ERRORS("services: [{name: s, url: 'http://127.0.0.1:1', routes: [{paths: [/]}, "
                  "{paths: [/b], pathz: [/c]}]}]\nproxy_lisen: x\n",
                  "services[0].routes[1].pathz: unknown field", "proxy_lisen: unknown field");
    EXPECT_ERRORS("log_level: info\nlog_level: warn\nlimits: {bogus: 1}\n",
                  "log_level: duplicate key", "limits.bogus: unknown field");
    EXPECT_ERRORS("services: [{name: s, host: 127.0.0.1, tls_verifyy: true, "
                  "routes: [{paths: [/]}]}]\n",
                  "services[0].tls_verifyy: unknown field");
}

TEST(type_errors_say_what_was_expected)
{
    EXPECT_ERRORS("services: [{name: s, url: 'http://127.0.0.1:1', retries: many, "
                  "routes: [{paths: [/], strip_path: maybe}]}]\n",
                  "services[0].retries: expected an integer",
                  "services[0].routes[0].strip_path: expected a boolean");
    EXPECT_ERRORS("limits:\n  client_header_timeout: soon\n  client_max_body_size: big\n"
                  "  max_headers: [1]\n  send_timeout: 10x\n",
                  "limits.client_header_timeout: expected a duration such as \"10s\"",
                  "limits.client_max_body_size: expected a size such as \"8m\"",
                  "limits.max_headers: expected an integer",
                  "limits.send_timeout: expected a duration such as \"10s\"");
    EXPECT_ERRORS("worker_processes: many\nmaster_process: 2\nlog_level: loud\n"
                  "_format_version: '4.0'\npid_file: [a]\nservices: {name: s}\n",
                  "worker_processes: expected \"auto\" or an integer",
                  "master_process: expected a boolean",
                  "log_level: expected one of \"debug\", \"info\", \"notice\", \"warn\", "
                  "\"error\", \"crit\"",
                  "_format_version: expected one of \"3.0\", \"2.1\", \"1.1\"",
                  "pid_file: expected a string", "services: expected a list");
    EXPECT_ERRORS("services: [s]\nlimits: 5\n", "services[0]: expected a mapping",
                  "limits: expected a mapping");
}

TEST(ranges_are_checked)
{
    EXPECT_ERRORS(
        "worker_processes: 0\nlimits: {max_headers: 0, client_header_timeout: 0, "
        "max_request_line: 0}\nservices: [{name: s, host: 127.0.0.1, port: 70000, "
        "retries: -1, read_timeout: 0, routes: [{paths: [/]}]}]\n",
        "worker_processes: must be greater than 0", "limits.max_headers: must be greater than 0",
        "limits.client_header_timeout: must be greater than 0",
        "limits.max_request_line: must be greater than 0",
        "services[0].port: must be at most 65535", "services[0].retries: must be at least 0",
        "services[0].read_timeout: must be greater than 0");
    EXPECT_ERRORS("worker_processes: 99999999999999999999\n",
                  "worker_processes: expected \"auto\" or an integer");
}

TEST(listen_addresses_are_checked)
{
    EXPECT_ERRORS("proxy_listen: [localhost:8000, '127.0.0.1', '127.0.0.1:0', "
                  "'127.0.0.1:80 http2', '[::1]:80 backlog=x']\nadmin_listen: []\n",
                  "proxy_listen[0]: invalid listen address \"localhost:8000\": expected "
                  "\"ip:port [ssl] [backlog=N]\"",
                  "proxy_listen[1]: invalid listen address \"127.0.0.1\": expected "
                  "\"ip:port [ssl] [backlog=N]\"",
                  "proxy_listen[2]: invalid listen address \"127.0.0.1:0\": expected "
                  "\"ip:port [ssl] [backlog=N]\"",
                  "proxy_listen[3]: invalid listen address \"127.0.0.1:80 http2\": unknown flag "
                  "\"http2\"",
                  "proxy_listen[4]: invalid listen address \"[::1]:80 backlog=x\": backlog must "
                  "be a positive integer");
    EXPECT_ERRORS("proxy_listen: []\n", "proxy_listen: must not be empty");
}

TEST(settings_values_are_checked)
{
    EXPECT_ERRORS("trusted_ips: [10.0.0.0/33, nonsense, '::/129', 0.0.0.0/0, '::/0']\n"
                  "real_ip_header: 'X Real'\nplugins: [bundled, my.policy]\n"
                  "shared_dicts: {cache: 0, 'bad-name': 1m, ok: huge}\nlua_package_path: ''\n",
                  "trusted_ips[0]: invalid IP or CIDR \"10.0.0.0/33\"",
                  "trusted_ips[1]: invalid IP or CIDR \"nonsense\"",
                  "trusted_ips[2]: invalid IP or CIDR \"::/129\"",
                  "real_ip_header: invalid header name \"X Real\"",
                  "plugins[1]: invalid plugin name \"my.policy\": use letters, digits, '-' or '_'",
                  "shared_dicts.cache: must be at least 32k",
                  "shared_dicts.bad-name: invalid dictionary name: use letters, digits and '_'",
                  "shared_dicts.ok: expected a size such as \"8m\"",
                  "lua_package_path: must not be empty");
}

TEST(service_problems)
{
    EXPECT_ERRORS(
        "services:\n"
        "  - {name: a, url: 'wss://127.0.0.1', routes: [{paths: [/]}]}\n"
        "  - {name: b, url: 'ftp://127.0.0.1'}\n"
        "  - {name: c, url: 'http//x'}\n"
        "  - {name: d, url: 'http://127.0.0.1:99999'}\n"
        "  - {name: e, url: 'http://127.0.0.1', host: 127.0.0.1}\n"
        "  - {name: f}\n"
        "  - {name: 'g h', host: 'bad host', path: nope, protocol: grpc}\n"
        "  - {name: i, url: 'http://127.0.0.1/?q=1'}\n"
        "  - {name: j, host: '[::1', tags: ['a,b']}\n",
        "services[0].url: protocol \"wss\" is not supported yet",
        "services[1].url: unknown protocol \"ftp\"",
        "services[2].url: invalid url \"http//x\": expected \"http://host[:port][/path]\"",
        "services[3].url: invalid port in url \"http://127.0.0.1:99999\"",
        "services[4].url: cannot be combined with 'protocol', 'host', 'port' or 'path'",
        "services[5]: must set 'url' or 'host'",
        "services[6].name: invalid name \"g h\": use letters, digits, '.', '-', '_' or "
        "'~'",
        "services[6].host: invalid host \"bad host\"", "services[6].path: must start with \"/\"",
        "services[6].protocol: protocol \"grpc\" is not supported yet",
        "services[7].url: invalid url \"http://127.0.0.1/?q=1\": expected "
        "\"http://host[:port][/path]\"",
        "services[8].host: invalid host \"[::1\"",
        "services[8].tags[0]: invalid tag \"a,b\": no ',', '/' or control bytes");
}

TEST(https_services_default_to_port_443_and_verification)
{
    mg_config_errors_t e;
    mg_config_t *cfg =
        LOAD_OK("services:\n"
                "  - {name: a, url: 'https://127.0.0.1', routes: [{paths: [/a]}]}\n"
                "  - {name: b, protocol: https, host: 127.0.0.1, tls_verify: false,\n"
                "     tls_verify_depth: 3, ca_certificates: [x], client_certificate: {id: c},\n"
                "     routes: [{paths: [/b]}]}\n"
                "  - {name: c, url: 'http://127.0.0.1', routes: [{paths: [/c]}]}\n",
                &e);
    if (cfg) {
        CHECK_STR(cfg->services[0].protocol, "https");
        CHECK_INT(cfg->services[0].port, 443);
        CHECK(cfg->services[0].tls_verify);
        CHECK_INT(cfg->services[0].tls_verify_depth, -1);
        CHECK(cfg->services[0].ca_certificates == NULL);
        CHECK_INT(cfg->services[1].port, 443);
        CHECK(!cfg->services[1].tls_verify);
        CHECK_INT(cfg->services[1].tls_verify_depth, 3);
        CHECK(cfg->services[1].ca_certificates && cfg->services[1].ca_certificates->len == 1);
        CHECK(cfg->services[1].client_certificate != NULL);
        CHECK_INT(cfg->services[2].port, 80);
        CHECK_STR(cfg->services[1].conf_path, "services[1]");
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);
}

TEST(names_are_left_to_the_workers_resolver)
{
    mg_config_errors_t e;
    char *hosts = write_file(NULL, NULL, "# comment\n10.1.2.3  in-hosts.test alias.test\n");
    char text[512];
    snprintf(text, sizeof(text),
             "dns_hostsfile: %s\n"
             "services: [{name: s, host: no-such-host.invalid}, {name: t, host: 127.0.0.1},\n"
             "  {name: u, host: NO-SUCH-HOST.invalid, port: 81}, {name: v, host: alias.test},\n"
             "  {name: w, host: upstream.test}]\n"
             "upstreams: [{name: up, targets: [{target: 'other.test:80'},\n"
             "  {target: '127.0.0.1:80'}]}]\n",
             hosts);
    mg_config_t *cfg = load_ok(__LINE__, text, &e);
    if (cfg) {
        CHECK_INT(cfg->ndns_names, 3); /* one per distinct name, lower-cased */
        CHECK_STR(cfg->dns_names[0], "other.test");
        CHECK_STR(cfg->dns_names[1], "no-such-host.invalid");
        CHECK_STR(cfg->dns_names[2], "upstream.test");
        CHECK_INT(cfg->services[0].dns, 1);
        CHECK_INT(cfg->services[1].dns, -1); /* an address never touches the resolver */
        CHECK_INT(cfg->services[2].dns, 1);
        CHECK_INT(cfg->services[3].dns, -1); /* the hosts file, read at load */
        const struct sockaddr_in *in = (const struct sockaddr_in *)&cfg->services[3].addr;
        CHECK_INT(ntohl(in->sin_addr.s_addr), 0x0a010203);
        CHECK_INT(ntohs(in->sin_port), 80);
        CHECK_INT(cfg->upstreams[0].targets[0].dns, 0);
        CHECK_INT(cfg->upstreams[0].targets[1].dns, -1);
        /* a name has MG_DNS_MAX_ADDRS address slots, an address one */
        CHECK_INT(cfg->ntarget_slots, MG_DNS_MAX_ADDRS + 1);
        CHECK_INT(cfg->upstreams[0].targets[1].slot, MG_DNS_MAX_ADDRS);
        CHECK(cfg->dns_last);
        CHECK_INT(cfg->ndns_types, 1);
        CHECK_INT(cfg->dns_stale_ttl, 4);
        CHECK_INT(cfg->dns_not_found_ttl, 30);
        CHECK_INT(cfg->dns_error_ttl, 1);
        CHECK(cfg->dns_servers == NULL);
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);
    unlink(hosts);
    free(hosts);
}

TEST(dns_settings)
{
    mg_config_errors_t e;
    mg_config_t *cfg = load_ok(__LINE__,
                               "dns_resolver: ['127.0.0.1:5353', '::1', '[::1]:53', 10.0.0.1]\n"
                               "dns_order: [aaaa, A, CNAME]\n"
                               "dns_valid_ttl: 7\n"
                               "dns_no_sync: on\n",
                               &e);
    if (cfg) {
        CHECK_STR(cfg->dns_servers, "127.0.0.1:5353,[::1],[::1]:53,10.0.0.1");
        CHECK_INT(cfg->ndns_types, 2);
        CHECK_INT(cfg->dns_types[0], MG_DNS_AAAA);
        CHECK_INT(cfg->dns_types[1], MG_DNS_A);
        CHECK(!cfg->dns_last);
        CHECK_INT(cfg->dns_valid_ttl, 7);
        CHECK(cfg->dns_no_sync);
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);
    EXPECT_ERRORS("dns_resolver: ['1.2.3.4:0', 'dns.google', '[::1', '1.2.3']\n"
                  "dns_order: [LAST, SRV, MX]\n"
                  "dns_stale_ttl: -1\n"
                  "dns_hostsfile: /nonexistent/hosts\n",
                  "dns_resolver[0]: invalid resolver \"1.2.3.4:0\": expected ip[:port]",
                  "dns_resolver[1]: invalid resolver \"dns.google\": expected ip[:port]",
                  "dns_resolver[2]: invalid resolver \"[::1\": expected ip[:port]",
                  "dns_resolver[3]: invalid resolver \"1.2.3\": expected ip[:port]",
                  "dns_order[1]: SRV records are not supported (use LAST, A, AAAA and CNAME): "
                  "a target or service gives its port",
                  "dns_order[2]: invalid entry \"MX\": expected LAST, A, AAAA or CNAME",
                  "dns_stale_ttl: must be at least 0",
                  "dns_hostsfile: cannot read \"/nonexistent/hosts\": No such file or directory");
    EXPECT_ERRORS("dns_order: [LAST, CNAME]\n",
                  "dns_order: must contain A or AAAA (CNAME alone resolves no address)");
}

TEST(route_problems)
{
    EXPECT_ERRORS(
        "services:\n"
        "  - name: s\n"
        "    url: http://127.0.0.1:1\n"
        "    routes:\n"
        "      - {name: none, strip_path: true}\n"
        "      - {paths: [/a, b, '~/x(', '~^/ok$']}\n"
        "      - {hosts: ['a b', 'a.*.c', '*', '*.*.com', 'x.com:0', '-ok-.com', '[::1]x']}\n"
        "      - {methods: ['GE T', ''], protocols: [http, grpc]}\n"
        "      - {headers: {Host: a, 'bad name': b, x-a: [], x-b: '~*re', X-C: [1], x-c: 2}}\n"
        "      - {snis: [a.com], protocols: [http], service: s}\n"
        "      - {paths: [/], regex_priority: 1.5, path_handling: v2,\n"
        "         https_redirect_status_code: 200, headers: [x]}\n",
        "services[0].routes[0]: must set one of 'methods', 'hosts', 'headers', 'paths', 'snis'",
        "services[0].routes[1].paths[1]: must start with \"/\" or \"~\"",
        "services[0].routes[1].paths[2]: invalid regex: missing closing parenthesis",
        "services[0].routes[2].hosts[0]: invalid host \"a b\"",
        "services[0].routes[2].hosts[1]: invalid wildcard host \"a.*.c\": \"*\" must be the "
        "leftmost or rightmost label",
        "services[0].routes[2].hosts[2]: invalid wildcard host \"*\": \"*\" must be the leftmost "
        "or rightmost label",
        "services[0].routes[2].hosts[3]: invalid wildcard host \"*.*.com\": \"*\" must be the "
        "leftmost or rightmost label",
        "services[0].routes[2].hosts[4]: invalid host \"x.com:0\"",
        "services[0].routes[2].hosts[6]: invalid host \"[::1]x\"",
        "services[0].routes[3].methods[0]: invalid method \"GE T\"",
        "services[0].routes[3].methods[1]: must not be empty",
        "services[0].routes[3].protocols[1]: expected one of \"http\", \"https\"",
        "services[0].routes[4].headers.Host: use 'hosts' to match the Host header",
        "services[0].routes[4].headers.bad name: invalid header name \"bad name\"",
        "services[0].routes[4].headers.x-a: must not be empty",
        "services[0].routes[4].headers.x-b[0]: regex header values are not supported yet",
        "services[0].routes[4].headers.x-c: duplicate header",
        "services[0].routes[5].service: not allowed on a route nested under a service",
        "services[0].routes[5].snis: can only be set when 'protocols' includes \"https\"",
        "services[0].routes[6].regex_priority: expected an integer",
        "services[0].routes[6].path_handling: expected one of \"v0\", \"v1\"",
        "services[0].routes[6].https_redirect_status_code: expected one of \"426\", \"301\", "
        "\"302\", \"307\", \"308\"",
        "services[0].routes[6].headers: expected a mapping of header names to values");
}

TEST(names_are_unique_and_references_resolve)
{
    EXPECT_ERRORS(
        "services:\n"
        "  - {name: orders, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/a]}]}\n"
        "  - {name: users, url: 'http://127.0.0.1:1'}\n"
        "  - {name: orders, url: 'http://127.0.0.1:1', routes: [{name: r, paths: [/b]}]}\n"
        "routes:\n"
        "  - {name: r, service: X, paths: [/c]}\n"
        "  - {paths: [/d]}\n"
        "  - {service: {}, paths: [/e]}\n",
        "routes[1].service: required", "routes[2].service.name: required",
        "services[2].name: duplicate name \"orders\"",
        "services[2].routes[0].name: duplicate name \"r\"", "routes[0].name: duplicate name \"r\"",
        "routes[0].service: no service named \"X\"");
}

/* certificates and snis are kept as value trees: mg_tls_load validates them (22-tls_spec) */
TEST(tls_entities_are_kept)
{
    mg_config_errors_t e;
    mg_config_t *cfg = LOAD_OK("certificates: [{cert: a, key: b}]\nsnis: x\n", &e);
    if (cfg) {
        CHECK(cfg->certificates && cfg->certificates->kind == MG_VAL_ARRAY);
        CHECK(cfg->certificates && cfg->certificates->len == 1);
        CHECK(cfg->snis && cfg->snis->kind == MG_VAL_STRING);
        CHECK(cfg->tls == NULL); /* built by mg_tls_load, not by the config loader */
        CHECK_INT(cfg->limits.tls_handshake_timeout, 10000);
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);
}

/* ---- value trees (plugin configs, consumer entities) -------------------------------------- */

/* The value of `key` in the map `m`; a failed check and a dummy when it is missing. */
static const mg_value_t *val(int line, const mg_value_t *m, const char *key)
{
    static const mg_value_t missing = {.kind = (mg_value_kind_t)-1};
    const mg_value_t *v = value_get(m, key);
    if (v) return v;
    mg_case_failed = 1;
    fprintf(stderr, "#   %s:%d: no key \"%s\"\n", __FILE__, line, key);
    return &missing;
}

#define VAL(m, key) val(__LINE__, m, key)

/* The first plugin entity's config of a config that loads. */
static const mg_value_t *first_config(const mg_config_t *cfg)
{
    static const mg_value_t none = {.kind = MG_VAL_MAP};
    if (cfg == NULL || cfg->nplugins == 0 || cfg->plugins[0].config == NULL) {
        mg_case_failed = 1;
        fprintf(stderr, "#   no plugins[0].config\n");
        return &none;
    }
    return cfg->plugins[0].config;
}

TEST(values_resolve_plain_scalars_like_yaml_1_1)
{
    mg_config_errors_t e;
    mg_config_t *cfg = LOAD_OK("plugins:\n"
                               "  - name: p\n"
                               "    config:\n"
                               "      n1: ~\n"
                               "      n2: null\n"
                               "      n3:\n"
                               "      n4: NULL\n"
                               "      b1: true\n"
                               "      b2: False\n"
                               "      b3: yes\n"
                               "      b4: NO\n"
                               "      b5: On\n"
                               "      b6: off\n"
                               "      i1: 123\n"
                               "      i2: -42\n"
                               "      i3: +7\n"
                               "      i4: 0\n"
                               "      i5: 9223372036854775807\n"
                               "      f1: 1.5\n"
                               "      f2: 1e3\n"
                               "      f3: .5\n"
                               "      f4: -2.5E-2\n"
                               "      f5: 5.\n"
                               "      f6: 99999999999999999999\n"
                               "      s1: \"true\"\n"
                               "      s2: '123'\n"
                               "      s3: \"1.5\"\n"
                               "      s4: \"~\"\n"
                               "      s5: ''\n"
                               "      s6: 0x1F\n"
                               "      s7: 1.2.3\n"
                               "      s8: .inf\n"
                               "      s9: y\n"
                               "      s10: 1e\n"
                               "      s11: \"a\\0b\"\n"
                               "      s12: |\n"
                               "        two\n"
                               "        lines\n"
                               "      s13: 1e999\n"
                               "      s14: 'null'\n"
                               "      s15: \"yes\"\n",
                               &e);
    const mg_value_t *c = first_config(cfg);
    CHECK_INT(c->kind, MG_VAL_MAP);
    CHECK_INT(c->len, 36);
    const char *nulls[] = {"n1", "n2", "n3", "n4"};
    for (size_t i = 0; i < MG_ARRAY_SIZE(nulls); i++)
        CHECK_INT(VAL(c, nulls[i])->kind, MG_VAL_NULL);
    const char *bools[] = {"b1", "b2", "b3", "b4", "b5", "b6"};
    for (size_t i = 0; i < MG_ARRAY_SIZE(bools); i++) {
        CHECK_INT(VAL(c, bools[i])->kind, MG_VAL_BOOL);
        CHECK_INT(VAL(c, bools[i])->u.boolean, i % 2 == 0);
    }
    const char *ints[] = {"i1", "i2", "i3", "i4", "i5"};
    const long long want_ints[] = {123, -42, 7, 0, INT64_MAX};
    for (size_t i = 0; i < MG_ARRAY_SIZE(ints); i++) {
        CHECK_INT(VAL(c, ints[i])->kind, MG_VAL_INT);
        CHECK_INT(VAL(c, ints[i])->u.integer, want_ints[i]);
    }
    const char *floats[] = {"f1", "f2", "f3", "f4", "f5", "f6"};
    const double want_floats[] = {1.5, 1000, 0.5, -0.025, 5, 1e20};
    for (size_t i = 0; i < MG_ARRAY_SIZE(floats); i++) {
        CHECK_INT(VAL(c, floats[i])->kind, MG_VAL_FLOAT);
        CHECK(VAL(c, floats[i])->u.number == want_floats[i]);
    }
    const char *strs[] = {"s1", "s2", "s3",  "s4",  "s5",  "s6",  "s7",
                          "s8", "s9", "s10", "s12", "s13", "s14", "s15"};
    const char *want_strs[] = {"true",         "123",   "1.5",  "~",  "",
                               "0x1F",         "1.2.3", ".inf", "y",  "1e",
                               "two\nlines\n", "1e999", "null", "yes"};
    for (size_t i = 0; i < MG_ARRAY_SIZE(strs); i++) {
        const mg_value_t *v = VAL(c, strs[i]);
        CHECK_INT(v->kind, MG_VAL_STRING);
        CHECK_STR(v->str, want_strs[i]);
        CHECK_INT(v->len, strlen(want_strs[i]));
    }
    const mg_value_t *nul = VAL(c, "s11"); /* strings may hold NUL bytes: len says how long */
    CHECK_INT(nul->kind, MG_VAL_STRING);
    CHECK_INT(nul->len, 3);
    if (nul->str) CHECK(memcmp(nul->str, "a\0b", 4) == 0);
    mg_config_free(cfg);
    mg_config_errors_free(&e);
}

TEST(values_keep_structure_keys_and_lines)
{
    mg_config_errors_t e;
    mg_config_t *cfg = LOAD_OK("plugins:\n"                   /* 1 */
                               "  - name: p\n"                /* 2 */
                               "    tags: [a, b]\n"           /* 3 */
                               "    config:\n"                /* 4 */
                               "      list:\n"                /* 5 */
                               "        - 1\n"                /* 6 */
                               "        - {x: \"y\", 2: z}\n" /* 7 */
                               "        - [true, ~]\n"        /* 8 */
                               "      1: one\n"               /* 9 */
                               "      true: t\n"              /* 10 */
                               "      empty_list: []\n"       /* 11 */
                               "      empty_map: {}\n"        /* 12 */
                               "      anchor: &a {k: v}\n"    /* 13 */
                               "      alias: *a\n",           /* 14 */
                               &e);
    const mg_value_t *c = first_config(cfg);
    if (cfg && cfg->nplugins) {
        const mg_value_t *ent = cfg->plugins[0].entity;
        CHECK_INT(ent->kind, MG_VAL_MAP);
        CHECK_INT(ent->line, 2);
        CHECK_INT(ent->len, 3);
        if (ent->len == 3) {
            CHECK_STR(ent->keys[0], "name");
            CHECK_STR(ent->keys[1], "tags");
            CHECK_STR(ent->keys[2], "config");
            CHECK(&ent->items[2] == c);
        }
        CHECK_STR(VAL(ent, "name")->str, "p");
        CHECK_INT(VAL(ent, "tags")->kind, MG_VAL_ARRAY);
        CHECK_INT(VAL(ent, "tags")->len, 2);
        CHECK_INT(VAL(ent, "tags")->line, 3);
    }
    CHECK_INT(c->line, 5);
    CHECK_INT(c->len, 7);
    const mg_value_t *list = VAL(c, "list");
    CHECK_INT(list->kind, MG_VAL_ARRAY);
    CHECK_INT(list->line, 6);
    CHECK_INT(list->len, 3);
    if (list->kind == MG_VAL_ARRAY && list->len == 3) {
        CHECK_INT(list->items[0].kind, MG_VAL_INT);
        CHECK_INT(list->items[0].u.integer, 1);
        CHECK_INT(list->items[0].line, 6);
        const mg_value_t *m = &list->items[1];
        CHECK_INT(m->kind, MG_VAL_MAP);
        CHECK_INT(m->line, 7);
        CHECK_INT(m->len, 2);
        CHECK_STR(VAL(m, "x")->str, "y");
        CHECK_INT(VAL(m, "x")->line, 7);
        CHECK_STR(VAL(m, "2")->str, "z"); /* keys are strings, never resolved */
        const mg_value_t *a = &list->items[2];
        CHECK_INT(a->kind, MG_VAL_ARRAY);
        CHECK_INT(a->len, 2);
        if (a->len == 2) {
            CHECK_INT(a->items[0].kind, MG_VAL_BOOL);
            CHECK(a->items[0].u.boolean);
            CHECK_INT(a->items[1].kind, MG_VAL_NULL);
            CHECK_INT(a->items[1].line, 8);
        }
    }
    CHECK_STR(VAL(c, "1")->str, "one");
    CHECK_STR(VAL(c, "true")->str, "t");
    CHECK_INT(VAL(c, "true")->line, 10);
    CHECK_INT(VAL(c, "empty_list")->kind, MG_VAL_ARRAY);
    CHECK_INT(VAL(c, "empty_list")->len, 0);
    CHECK_INT(VAL(c, "empty_map")->kind, MG_VAL_MAP);
    CHECK_INT(VAL(c, "empty_map")->len, 0);
    /* an alias is a copy: the result is a tree */
    const mg_value_t *anchor = VAL(c, "anchor"), *alias = VAL(c, "alias");
    CHECK_INT(alias->kind, MG_VAL_MAP);
    CHECK(alias != anchor);
    CHECK_STR(VAL(alias, "k")->str, "v");
    CHECK_INT(alias->line, 13);
    mg_config_free(cfg);
    mg_config_errors_free(&e);
}

TEST(json_values_resolve_like_yaml)
{
    mg_config_errors_t e;
    mg_config_t *cfg = LOAD_OK("{\"plugins\": [{\"name\": \"p\", \"config\": {\n"
                               "  \"s\": \"true\", \"n\": \"123\", \"b\": true, \"i\": -12,\n"
                               "  \"f\": 1.5, \"e\": 1e-3, \"z\": null, \"a\": [1, \"x\", false],\n"
                               "  \"o\": {\"k\": \"v\"}}}]}\n",
                               &e);
    const mg_value_t *c = first_config(cfg);
    CHECK_INT(VAL(c, "s")->kind, MG_VAL_STRING);
    CHECK_STR(VAL(c, "s")->str, "true");
    CHECK_INT(VAL(c, "n")->kind, MG_VAL_STRING);
    CHECK_STR(VAL(c, "n")->str, "123");
    CHECK_INT(VAL(c, "b")->kind, MG_VAL_BOOL);
    CHECK_INT(VAL(c, "i")->kind, MG_VAL_INT);
    CHECK_INT(VAL(c, "i")->u.integer, -12);
    CHECK_INT(VAL(c, "f")->kind, MG_VAL_FLOAT);
    CHECK_INT(VAL(c, "e")->kind, MG_VAL_FLOAT);
    CHECK(VAL(c, "e")->u.number == 1e-3);
    CHECK_INT(VAL(c, "z")->kind, MG_VAL_NULL);
    CHECK_INT(VAL(c, "z")->line, 3);
    const mg_value_t *a = VAL(c, "a");
    CHECK_INT(a->kind, MG_VAL_ARRAY);
    CHECK_INT(a->len, 3);
    if (a->len == 3) {
        CHECK_INT(a->items[0].kind, MG_VAL_INT);
        CHECK_INT(a->items[1].kind, MG_VAL_STRING);
        CHECK_INT(a->items[2].kind, MG_VAL_BOOL);
    }
    CHECK_STR(VAL(VAL(c, "o"), "k")->str, "v");
    mg_config_free(cfg);
    mg_config_errors_free(&e);
}

TEST(value_problems_are_reported_once)
{
    /* keys are checked by the conversion, and not a second time by the entity's walk */
    EXPECT_ERRORS("plugins:\n"
                  "  - name: p\n"
                  "    name: q\n"
                  "    config: {a: 1, b: {c: 1, c: 2}, a: 3, [x]: 1}\n"
                  "  - {name: p, config: [1]}\n"
                  "consumers:\n"
                  "  - username: a\n"
                  "    username: b\n"
                  "    acls: [{group: x, group: y}]\n"
                  "    plugins: [{name: p, config: {k: 1, k: 2}}]\n",
                  "plugins[0].name: duplicate key", "plugins[0].config.b.c: duplicate key",
                  "plugins[0].config.a: duplicate key", "plugins[0].config: keys must be strings",
                  "plugins[1].config: expected a mapping", "consumers[0].username: duplicate key",
                  "consumers[0].acls[0].group: duplicate key",
                  "consumers[0].plugins[0].config.k: duplicate key");

    EXPECT_ERRORS("plugins: [{name: p, config: &c {a: [*c]}}]\n",
                  "plugins[0].config.a[0]: recursive alias: a value cannot contain itself");

    char deep[512] = "plugins: [{name: p, config: {d: ", want[512] = "plugins[0].config.d";
    for (int i = 0; i < 70; i++)
        strcat(deep, "[");
    for (int i = 0; i < 70; i++)
        strcat(deep, "]");
    strcat(deep, "}}]\n");
    for (int i = 0; i < MAX_VALUE_DEPTH - 2; i++) /* the entity is level 0, its config 1 */
        strcat(want, "[0]");
    strcat(want, ": nested too deeply (more than 64 levels)");
    EXPECT_ERRORS(deep, want);

    /* "billion laughs": 10^8 values from 80 nodes stop at the budget, with one message */
    char laughs[2048] = "plugins:\n  - name: p\n    config:\n      l0: &l0 [x,x,x,x,x,x,x,x,x,x]\n";
    for (int i = 1; i < 8; i++) {
        char line[256];
        snprintf(line, sizeof(line), "      l%d: &l%d [", i, i);
        for (int j = 0; j < 10; j++)
            snprintf(line + strlen(line), sizeof(line) - strlen(line), "%s*l%d", j ? "," : "",
                     i - 1);
        strcat(strcat(laughs, line), "]\n");
    }
    mg_config_errors_t e;
    mg_config_t *cfg = load_text(laughs, &e);
    const char *msg = ": too many values after expanding aliases";
    CHECK(cfg == NULL);
    CHECK_INT(e.n, 1);
    if (e.n) {
        CHECK(strncmp(e.items[0], "plugins[0].config.l", 19) == 0);
        CHECK(strlen(e.items[0]) > strlen(msg) &&
              strcmp(e.items[0] + strlen(e.items[0]) - strlen(msg), msg) == 0);
    }
    mg_config_errors_free(&e);
}

/* ---- plugin entities ---------------------------------------------------------------------- */

typedef struct {
    const char *name, *path;
    int service, route, consumer;
    bool enabled;
} want_plugin_t;

static void check_plugins(int line, const mg_config_t *cfg, const want_plugin_t *want, size_t n)
{
    if (cfg->nplugins != n) {
        mg_case_failed = 1;
        fprintf(stderr, "#   %s:%d: %zu plugins, expected %zu\n", __FILE__, line, cfg->nplugins, n);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const mg_plugin_conf_t *p = &cfg->plugins[i];
        const want_plugin_t *w = &want[i];
        if (strcmp(p->name, w->name) || strcmp(p->path, w->path) || p->service != w->service ||
            p->route != w->route || p->consumer != w->consumer || p->enabled != w->enabled) {
            mg_case_failed = 1;
            fprintf(stderr,
                    "#   %s:%d: plugins[%zu] is %s at %s (service %d, route %d, consumer %d, "
                    "%s), expected %s at %s (%d, %d, %d, %s)\n",
                    __FILE__, line, i, p->name, p->path, p->service, p->route, p->consumer,
                    p->enabled ? "enabled" : "disabled", w->name, w->path, w->service, w->route,
                    w->consumer, w->enabled ? "enabled" : "disabled");
        }
        CHECK(p->entity && p->entity->kind == MG_VAL_MAP);
        CHECK_STR(VAL(p->entity, "name")->str, p->name);
    }
}

#define CHECK_PLUGINS(cfg, ...)                                                                    \
    do {                                                                                           \
        const want_plugin_t want_[] = {__VA_ARGS__};                                               \
        check_plugins(__LINE__, cfg, want_, MG_ARRAY_SIZE(want_));                                 \
    } while (0)

TEST(plugins_are_kept_with_their_scope)
{
    mg_config_errors_t e;
    /* consumers and routes come first in the file: the order of cfg->plugins does not change */
    mg_config_t *cfg =
        LOAD_OK("consumers:\n"
                "  - username: alice\n"
                "    plugins: [{name: cp1, route: r1}]\n"
                "  - username: bob\n"
                "    custom_id: b\n"
                "    plugins: [{name: cp2}]\n"
                "routes:\n"
                "  - name: r-top\n"
                "    service: s1\n"
                "    paths: [/t]\n"
                "    plugins: [{name: tp1, service: s2}]\n"
                "plugins:\n"
                "  - name: g1\n"
                "  - name: g2\n"
                "    service: s2\n"
                "    route: {name: r-top}\n"
                "    consumer: {username: bob}\n"
                "    enabled: false\n"
                "    protocols: [http]\n"
                "    tags: [t]\n"
                "    instance_name: g2-x\n"
                "    ordering: {before: {access: [g1]}}\n"
                "    id: 0c8d1d70-1a59-4e85-9d4b-7e8cbd6c2b4a\n"
                "  - {name: g3, consumer: alice}\n"
                "services:\n"
                "  - name: s1\n"
                "    url: http://127.0.0.1:1\n"
                "    plugins: [{name: sp1, config: {minute: 100}}, {name: sp2, consumer: alice}]\n"
                "    routes:\n"
                "      - name: r1\n"
                "        paths: [/a]\n"
                "        plugins: [{name: rp1}]\n"
                "  - name: s2\n"
                "    url: http://127.0.0.1:2\n"
                "    routes: [{name: r2, paths: [/b], plugins: [{name: rp2, config: {x: 1}}]}]\n",
                &e);
    if (cfg == NULL) goto out;
    CHECK_INT(cfg->nservices, 2);
    CHECK_INT(cfg->nroutes, 3);
    CHECK_STR(cfg->routes[2].name, "r-top");
    CHECK_PLUGINS(cfg, {"g1", "plugins[0]", -1, -1, -1, true}, {"g2", "plugins[1]", 1, 2, 1, false},
                  {"g3", "plugins[2]", -1, -1, 0, true},
                  {"sp1", "services[0].plugins[0]", 0, -1, -1, true},
                  {"sp2", "services[0].plugins[1]", 0, -1, 0, true},
                  {"rp1", "services[0].routes[0].plugins[0]", -1, 0, -1, true},
                  {"rp2", "services[1].routes[0].plugins[0]", -1, 1, -1, true},
                  {"tp1", "routes[0].plugins[0]", 1, 2, -1, true},
                  {"cp1", "consumers[0].plugins[0]", -1, 0, 0, true},
                  {"cp2", "consumers[1].plugins[0]", -1, -1, 1, true});
    if (cfg->nplugins != 10) goto out;
    CHECK(cfg->plugins[0].config == NULL);
    const mg_plugin_conf_t *g2 = &cfg->plugins[1];
    CHECK(g2->config == NULL);
    CHECK_INT(g2->entity->len, 10); /* every field is kept */
    CHECK_STR(VAL(g2->entity, "service")->str, "s2");
    CHECK_STR(VAL(VAL(g2->entity, "consumer"), "username")->str, "bob");
    CHECK_INT(VAL(g2->entity, "enabled")->kind, MG_VAL_BOOL);
    CHECK_STR(VAL(g2->entity, "instance_name")->str, "g2-x");
    CHECK_INT(VAL(g2->entity, "ordering")->kind, MG_VAL_MAP);
    const mg_value_t *sp1 = cfg->plugins[3].config;
    CHECK(sp1 && sp1->kind == MG_VAL_MAP);
    if (sp1) CHECK_INT(VAL(sp1, "minute")->u.integer, 100);
    CHECK(cfg->plugins[3].config == VAL(cfg->plugins[3].entity, "config"));
    CHECK_INT(VAL(cfg->plugins[6].config, "x")->u.integer, 1);
    /* a consumer's plugin is the same value as the one in the consumer's entity */
    CHECK_INT(cfg->nconsumers, 2);
    const mg_value_t *nested = VAL(cfg->consumers[0].entity, "plugins");
    CHECK(nested->kind == MG_VAL_ARRAY && nested->len == 1 &&
          cfg->plugins[8].entity == &nested->items[0]);
out:
    mg_config_free(cfg);
    mg_config_errors_free(&e);
}

TEST(plugins_of_disabled_services_are_left_out)
{
    mg_config_errors_t e;
    mg_config_t *cfg = LOAD_OK("services:\n"
                               "  - {name: gone, url: 'http://127.0.0.1:1', enabled: false,\n"
                               "     plugins: [{name: a}],\n"
                               "     routes: [{name: r0, paths: [/a], plugins: [{name: b}]}]}\n"
                               "  - {name: live, url: 'http://127.0.0.1:2', plugins: [{name: c}],\n"
                               "     routes: [{name: r1, paths: [/b]}]}\n"
                               "routes: [{name: r2, service: gone, paths: [/c],\n"
                               "          plugins: [{name: d}]}]\n"
                               "plugins:\n"
                               "  - {name: e, service: gone}\n"
                               "  - {name: f, route: r0}\n"
                               "  - {name: g, route: r1}\n"
                               "  - {name: h, route: r2, service: live}\n"
                               "consumers: [{username: u, plugins: [{name: i, service: gone}]}]\n",
                               &e);
    if (cfg)
        CHECK_PLUGINS(cfg, {"g", "plugins[2]", -1, 0, -1, true},
                      {"c", "services[1].plugins[0]", 0, -1, -1, true});
    mg_config_free(cfg);
    mg_config_errors_free(&e);
}

TEST(plugin_problems)
{
    EXPECT_ERRORS(
        "plugins:\n"
        "  - {config: {}}\n"
        "  - {name: 'bad name'}\n"
        "  - {name: a, service: nope, route: {name: nope}, consumer: nope}\n"
        "  - {name: a, consumer: {name: x}}\n"
        "  - {name: a, service: [x], route: {}, enabled: maybe, config: [1], bogus: 1,\n"
        "     protocols: {}}\n"
        "  - {name: ''}\n"
        "  - {name: ~}\n"
        "  - [x]\n"
        "services:\n"
        "  - name: s\n"
        "    url: http://127.0.0.1:1\n"
        "    plugins: [{name: a, service: s}, x]\n"
        "    routes: [{name: r, paths: [/], plugins: [{name: b, route: r}]}]\n"
        "routes:\n"
        "  - {service: s, paths: [/t], plugins: [{name: b, route: r, consumer: c}]}\n"
        "consumers:\n"
        "  - username: c\n"
        "    plugins: [{name: c, consumer: c}, {name: d, service: nope2}]\n",
        "plugins[0].name: required",
        "plugins[1].name: invalid plugin name \"bad name\": use letters, digits, '-' or '_'",
        "plugins[3].consumer.name: unknown field", "plugins[3].consumer.username: required",
        "plugins[4].service: expected a service name", "plugins[4].route.name: required",
        "plugins[4].enabled: expected a boolean", "plugins[4].config: expected a mapping",
        "plugins[4].bogus: unknown field", "plugins[4].protocols: expected a list",
        "plugins[5].name: must not be empty", "plugins[6].name: required",
        "plugins[7]: expected a plugin name or a plugin entry",
        "services[0].plugins[0].service: not allowed on a plugin nested under a service",
        "services[0].plugins[1]: expected a mapping",
        "services[0].routes[0].plugins[0].route: not allowed on a plugin nested under a route",
        "routes[0].plugins[0].route: not allowed on a plugin nested under a route",
        "consumers[0].plugins[0].consumer: not allowed on a plugin nested under a consumer",
        "plugins[2].service: no service named \"nope\"",
        "plugins[2].route: no route named \"nope\"",
        "plugins[2].consumer: no consumer named \"nope\"",
        "consumers[0].plugins[1].service: no service named \"nope2\"");
}

/* ---- consumers ---------------------------------------------------------------------------- */

TEST(consumers_are_kept_whole)
{
    mg_config_errors_t e;
    mg_config_t *cfg = LOAD_OK("consumers:\n"
                               "  - username: alice\n"
                               "    custom_id: a1\n"
                               "    keyauth_credentials: [{key: k1}, {key: k2, tags: [x]}]\n"
                               "    basicauth_credentials: [{username: alice, password: p}]\n"
                               "    jwt_secrets: [{key: j, secret: s, algorithm: HS256}]\n"
                               "    hmacauth_credentials: [{username: alice, secret: h}]\n"
                               "    acls: [{group: admins}]\n"
                               "    plugins: [{name: rate-limiting, config: {minute: 5}}]\n"
                               "    tags: [vip]\n"
                               "  - custom_id: '42'\n"
                               "  - username: bob\n",
                               &e);
    if (cfg == NULL) goto out;
    CHECK_INT(cfg->nconsumers, 3);
    if (cfg->nconsumers != 3) goto out;
    const mg_consumer_t *a = &cfg->consumers[0];
    CHECK_STR(a->username, "alice");
    CHECK_STR(a->custom_id, "a1");
    CHECK_STR(a->path, "consumers[0]");
    CHECK_INT(a->entity->kind, MG_VAL_MAP);
    CHECK_INT(a->entity->len, 9);
    CHECK_INT(a->entity->line, 2);
    const mg_value_t *keys = VAL(a->entity, "keyauth_credentials");
    CHECK_INT(keys->kind, MG_VAL_ARRAY);
    CHECK_INT(keys->len, 2);
    if (keys->len == 2) CHECK_STR(VAL(&keys->items[1], "key")->str, "k2");
    CHECK_STR(VAL(&VAL(a->entity, "basicauth_credentials")->items[0], "password")->str, "p");
    CHECK_STR(VAL(&VAL(a->entity, "jwt_secrets")->items[0], "algorithm")->str, "HS256");
    CHECK_STR(VAL(&VAL(a->entity, "hmacauth_credentials")->items[0], "secret")->str, "h");
    CHECK_STR(VAL(&VAL(a->entity, "acls")->items[0], "group")->str, "admins");
    CHECK_STR(VAL(a->entity, "tags")->items[0].str, "vip");
    CHECK(cfg->consumers[1].username == NULL);
    CHECK_STR(cfg->consumers[1].custom_id, "42");
    CHECK_STR(cfg->consumers[2].path, "consumers[2]");
    CHECK_PLUGINS(cfg, {"rate-limiting", "consumers[0].plugins[0]", -1, -1, 0, true});
out:
    mg_config_free(cfg);
    mg_config_errors_free(&e);
}

TEST(consumer_problems)
{
    EXPECT_ERRORS("consumers:\n"
                  "  - {username: alice}\n"
                  "  - {username: bob, custom_id: x}\n"
                  "  - {custom_id: x}\n"
                  "  - {username: alice, custom_id: y}\n"
                  "  - {tags: [t]}\n"
                  "  - {username: z, keyauth_credentials: {key: k}}\n"
                  "  - {username: w, acls: [admins], jwt_secrets: ~}\n"
                  "  - {username: '', bogus: 1}\n"
                  "  - {username: alice}\n",
                  "consumers[4]: must set one of 'username', 'custom_id'",
                  "consumers[5].keyauth_credentials: expected a list",
                  "consumers[6].acls[0]: expected a mapping",
                  "consumers[7].username: must not be empty", "consumers[7].bogus: unknown field",
                  "consumers[3].username: duplicate username \"alice\"",
                  "consumers[8].username: duplicate username \"alice\"",
                  "consumers[2].custom_id: duplicate custom_id \"x\"");
}

/* ---- plugin-related settings -------------------------------------------------------------- */

TEST(plugin_names_setting)
{
    mg_config_errors_t e;
    mg_config_t *cfg = LOAD_OK("plugins: [bundled, my-policy, My_Other2]\n", &e);
    if (cfg) {
        CHECK_INT(cfg->nplugin_names, 3);
        if (cfg->nplugin_names == 3) {
            CHECK_STR(cfg->plugin_names[0], "bundled");
            CHECK_STR(cfg->plugin_names[1], "my-policy");
            CHECK_STR(cfg->plugin_names[2], "My_Other2");
        }
        CHECK_INT(cfg->nplugins, 0);
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);

    /* a lone name, "off", and a list of entities only (the default names stay) */
    cfg = LOAD_OK("plugins: my-policy\n", &e);
    if (cfg) {
        CHECK_INT(cfg->nplugin_names, 1);
        CHECK_STR(cfg->plugin_names[0], "my-policy");
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);
    cfg = LOAD_OK("plugins: ['off']\n", &e);
    if (cfg) CHECK_STR(cfg->plugin_names[0], "off");
    mg_config_free(cfg);
    mg_config_errors_free(&e);
    cfg = LOAD_OK("plugins: [{name: cors}]\n", &e);
    if (cfg) {
        CHECK_INT(cfg->nplugin_names, 1);
        CHECK_STR(cfg->plugin_names[0], "bundled");
        CHECK_INT(cfg->nplugins, 1);
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);

    /* names and entities in one list; MOONGATE_PLUGINS replaces the names only */
    setenv("MOONGATE_PLUGINS", "bundled, custom", 1);
    cfg = LOAD_OK("plugins: [my-policy, {name: cors}, other]\n", &e);
    if (cfg) {
        CHECK_INT(cfg->nplugin_names, 2);
        if (cfg->nplugin_names == 2) {
            CHECK_STR(cfg->plugin_names[0], "bundled");
            CHECK_STR(cfg->plugin_names[1], "custom");
        }
        CHECK_INT(cfg->nplugins, 1);
        if (cfg->nplugins) CHECK_STR(cfg->plugins[0].name, "cors");
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);
    cfg = LOAD_OK("worker_processes: 1\n", &e);
    if (cfg) CHECK_INT(cfg->nplugin_names, 2);
    mg_config_free(cfg);
    mg_config_errors_free(&e);

    setenv("MOONGATE_PLUGINS", "bundled,x/y,,off", 1);
    EXPECT_ERRORS("plugins: [bundled, 'a.b', '', 'off', [x]]\n",
                  "plugins[1]: invalid plugin name \"a.b\": use letters, digits, '-' or '_'",
                  "plugins[2]: must not be empty",
                  "plugins[4]: expected a plugin name or a plugin entry",
                  "plugins[3]: \"off\" cannot be combined with other plugin names",
                  "env MOONGATE_PLUGINS[1]: invalid plugin name \"x/y\": use letters, digits, '-' "
                  "or '_'",
                  "env MOONGATE_PLUGINS[2]: must not be empty",
                  "env MOONGATE_PLUGINS[3]: \"off\" cannot be combined with other plugin names");
    clear_env();
}

TEST(lua_package_path_setting)
{
    mg_config_errors_t e;
    mg_config_t *cfg = LOAD_OK("lua_package_path: './lib/?.lua;;'\n", &e);
    if (cfg) CHECK_STR(cfg->lua_package_path, "./lib/?.lua;;");
    mg_config_free(cfg);
    mg_config_errors_free(&e);

    setenv("MOONGATE_LUA_PACKAGE_PATH", "/opt/?.lua", 1);
    cfg = LOAD_OK("lua_package_path: './lib/?.lua;;'\n", &e);
    if (cfg) CHECK_STR(cfg->lua_package_path, "/opt/?.lua");
    mg_config_free(cfg);
    mg_config_errors_free(&e);
    clear_env();

    EXPECT_ERRORS("lua_package_path: [a]\n", "lua_package_path: expected a string");
}

TEST(shared_dicts_setting)
{
    mg_config_errors_t e;
    mg_config_t *cfg = LOAD_OK("shared_dicts: {_a1: 32k, Big: 1g, c: 40000}\n", &e);
    if (cfg) {
        CHECK_INT(cfg->nshared_dicts, 4); /* and rate-limiting's default one, last */
        if (cfg->nshared_dicts == 4) {
            CHECK_STR(cfg->shared_dicts[0].name, "_a1");
            CHECK_INT(cfg->shared_dicts[0].size, 32768);
            CHECK_STR(cfg->shared_dicts[1].name, "Big");
            CHECK_INT(cfg->shared_dicts[1].size, 1 << 30);
            CHECK_INT(cfg->shared_dicts[2].size, 40000);
            CHECK_STR(cfg->shared_dicts[3].name, "rate_limit");
        }
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);

    EXPECT_ERRORS("shared_dicts: {cache: 16k, 9x: 1m, 'a b': 1m, '': 1m, ok: huge, n: ~,\n"
                  "               x: 32767, a: 1m, a: 2m, [k]: 1m, l: [1m]}\n",
                  "shared_dicts.cache: must be at least 32k",
                  "shared_dicts.9x: invalid dictionary name: use letters, digits and '_'",
                  "shared_dicts.a b: invalid dictionary name: use letters, digits and '_'",
                  "shared_dicts.: invalid dictionary name: use letters, digits and '_'",
                  "shared_dicts.ok: expected a size such as \"8m\"",
                  "shared_dicts.n: expected a size such as \"8m\"",
                  "shared_dicts.x: must be at least 32k", "shared_dicts.a: duplicate key",
                  "shared_dicts: keys must be strings",
                  "shared_dicts.l: expected a size such as \"8m\"");
    EXPECT_ERRORS("shared_dicts: [a]\n", "shared_dicts: expected a mapping");
}

TEST(all_problems_are_collected)
{
    mg_config_errors_t e;
    mg_config_t *cfg = load_text("worker_processes: x\nmaster_process: x\nlog_level: x\n"
                                 "services: [{name: a}, {name: b}, {name: c}]\n",
                                 &e);
    CHECK(cfg == NULL);
    CHECK_INT(e.n, 6);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    mg_config_errors_print(&e, f);
    fclose(f);
    CHECK_STR(out, "worker_processes: expected \"auto\" or an integer\n"
                   "master_process: expected a boolean\n"
                   "log_level: expected one of \"debug\", \"info\", \"notice\", \"warn\", "
                   "\"error\", \"crit\"\n"
                   "services[0]: must set 'url' or 'host'\n"
                   "services[1]: must set 'url' or 'host'\n"
                   "services[2]: must set 'url' or 'host'\n");
    free(out);
    mg_config_errors_free(&e);
}

/* ---- the environment --------------------------------------------------------------------- */

TEST(env_overrides_settings)
{
    setenv("MOONGATE_PROXY_LISTEN", "127.0.0.1:9000, [::1]:9001 ssl", 1);
    setenv("MOONGATE_WORKER_PROCESSES", "1", 1);
    setenv("MOONGATE_MASTER_PROCESS", "off", 1);
    setenv("MOONGATE_ACCESS_LOG", "off", 1);
    setenv("MOONGATE_LOG_LEVEL", "debug", 1);
    setenv("MOONGATE_TRUSTED_IPS", "10.0.0.0/8,::1", 1);
    setenv("MOONGATE_REQUEST_ID_HEADER", "off", 1);
    setenv("MOONGATE_LIMITS_CLIENT_MAX_BODY_SIZE", "1k", 1);
    setenv("MOONGATE_LIMITS_KEEPALIVE_TIMEOUT", "5s", 1);
    setenv("MOONGATE_PID_FILE", "", 1); /* empty: ignored */
    mg_config_errors_t e;
    mg_config_t *cfg = LOAD_OK("proxy_listen: 127.0.0.1:8000\nworker_processes: 4\n"
                               "access_log: stdout\nlimits: {keepalive_timeout: 1s}\n",
                               &e);
    if (cfg) {
        CHECK_INT(cfg->nproxy_listen, 2);
        CHECK_INT(sock_port(&cfg->proxy_listen[0].addr), 9000);
        CHECK_STR(cfg->proxy_listen[1].text, "[::1]:9001 ssl");
        CHECK(cfg->proxy_listen[1].ssl);
        CHECK_INT(cfg->worker_processes, 1);
        CHECK(!cfg->master_process);
        CHECK_STR(cfg->access_log, "off");
        CHECK_INT(cfg->log_level, MG_LOG_DEBUG);
        CHECK_INT(cfg->ntrusted_ips, 2);
        CHECK(cfg->request_id_header == NULL);
        CHECK_INT(cfg->limits.client_max_body_size, 1024);
        CHECK_INT(cfg->limits.keepalive_timeout, 5000);
        CHECK_STR(cfg->pid_file, "logs/moongate.pid");
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);

    setenv("MOONGATE_WORKER_PROCESSES", "lots", 1);
    setenv("MOONGATE_PROXY_LISTEN", "127.0.0.1:9000,nope", 1);
    setenv("MOONGATE_LIMITS_SEND_TIMEOUT", "forever", 1);
    EXPECT_ERRORS("worker_processes: 2\n",
                  "env MOONGATE_PROXY_LISTEN[1]: invalid listen address \"nope\": expected "
                  "\"ip:port [ssl] [backlog=N]\"",
                  "env MOONGATE_WORKER_PROCESSES: expected \"auto\" or an integer",
                  "env MOONGATE_LIMITS_SEND_TIMEOUT: expected a duration such as \"10s\"");
    clear_env();
}

/* ---- declarative_config ------------------------------------------------------------------ */

TEST(declarative_config_is_read_relative_to_the_main_file)
{
    char dir[] = "/tmp/mg_test_decl_XXXXXX";
    if (mkdtemp(dir) == NULL) abort();
    char *main_path =
        write_file(dir, "moongate.yaml", "worker_processes: 1\ndeclarative_config: kong.yml\n");
    char *decl = write_file(dir, "kong.yml",
                            "_format_version: '3.0'\nservices: [" SVC "]\n"
                            "routes: [{name: t, service: s, paths: [/t]}]\n"
                            "plugins: [{name: cors, route: t, config: {origins: ['*']}}]\n"
                            "consumers: [{username: u, keyauth_credentials: [{key: k}],\n"
                            "             plugins: [{name: acl, service: s}]}]\n");
    mg_config_errors_t e;
    mg_config_errors_init(&e);
    mg_config_t *cfg = mg_config_load(main_path, &e);
    show_errors(&e);
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_INT(cfg->worker_processes, 1);
        CHECK_INT(cfg->nservices, 1);
        CHECK_INT(cfg->nroutes, 2);
        CHECK_INT(cfg->nconsumers, 1);
        CHECK_PLUGINS(cfg, {"cors", "plugins[0]", -1, 1, -1, true},
                      {"acl", "consumers[0].plugins[0]", 0, -1, 0, true});
        if (cfg->nplugins) CHECK_STR(VAL(cfg->plugins[0].config, "origins")->items[0].str, "*");
    }
    mg_config_free(cfg);
    mg_config_errors_free(&e);

    /* entities in both files, settings in the declarative one, and a missing file */
    free(write_file(dir, "moongate.yaml",
                    "declarative_config: kong.yml\nservices: []\n"
                    "plugins: [bundled, {name: cors}]\n"));
    free(write_file(dir, "kong.yml", "log_level: info\nplugins: [bundled]\nservices: [x]\n"));
    mg_config_errors_init(&e);
    CHECK(mg_config_load(main_path, &e) == NULL);
    const char *want[] = {"services: not allowed together with declarative_config",
                          "plugins[1]: not allowed together with declarative_config",
                          "log_level: only allowed in the main configuration file",
                          "plugins[0]: only allowed in the main configuration file",
                          "services[0]: expected a mapping"};
    CHECK_INT(e.n, MG_ARRAY_SIZE(want));
    for (size_t i = 0; i < e.n && i < MG_ARRAY_SIZE(want); i++)
        CHECK_STR(e.items[i], want[i]);
    mg_config_errors_free(&e);

    unlink(decl);
    char missing[512];
    snprintf(missing, sizeof(missing),
             "declarative_config: cannot read \"%s\": No such file or directory", decl);
    free(write_file(dir, "moongate.yaml", "declarative_config: kong.yml\n"));
    mg_config_errors_init(&e);
    CHECK(mg_config_load(main_path, &e) == NULL);
    CHECK_INT(e.n, 1);
    if (e.n) CHECK_STR(e.items[0], missing);
    mg_config_errors_free(&e);

    unlink(main_path);
    rmdir(dir);
    free(main_path);
    free(decl);
}

/* ---- value parsers ----------------------------------------------------------------------- */

TEST(durations_parse_to_milliseconds)
{
    unsigned ms = 7;
    CHECK_INT(mg_config_parse_duration("10s", &ms), MG_OK);
    CHECK_INT(ms, 10000);
    CHECK_INT(mg_config_parse_duration("500ms", &ms), MG_OK);
    CHECK_INT(ms, 500);
    CHECK_INT(mg_config_parse_duration("2m", &ms), MG_OK);
    CHECK_INT(ms, 120000);
    CHECK_INT(mg_config_parse_duration("1h", &ms), MG_OK);
    CHECK_INT(ms, 3600000);
    CHECK_INT(mg_config_parse_duration("30", &ms), MG_OK);
    CHECK_INT(ms, 30000);
    CHECK_INT(mg_config_parse_duration("0", &ms), MG_OK);
    CHECK_INT(ms, 0);
    CHECK_INT(mg_config_parse_duration("4294967295ms", &ms), MG_OK);
    CHECK_INT(ms, 4294967295u);
    const char *bad[] = {"",
                         "s",
                         "-1s",
                         "+1s",
                         " 1s",
                         "1 s",
                         "1.5s",
                         "10x",
                         "1sec",
                         "4294968s",
                         "99999999999999999999",
                         NULL};
    for (int i = 0; bad[i]; i++)
        CHECK_INT(mg_config_parse_duration(bad[i], &ms), MG_ERROR);
    CHECK_INT(mg_config_parse_duration(NULL, &ms), MG_ERROR);
}

TEST(sizes_parse_to_bytes)
{
    size_t b = 7;
    CHECK_INT(mg_config_parse_size("8m", &b), MG_OK);
    CHECK_INT(b, 8 << 20);
    CHECK_INT(mg_config_parse_size("16k", &b), MG_OK);
    CHECK_INT(b, 16384);
    CHECK_INT(mg_config_parse_size("16K", &b), MG_OK);
    CHECK_INT(b, 16384);
    CHECK_INT(mg_config_parse_size("1g", &b), MG_OK);
    CHECK_INT(b, 1 << 30);
    CHECK_INT(mg_config_parse_size("123", &b), MG_OK);
    CHECK_INT(b, 123);
    CHECK_INT(mg_config_parse_size("0", &b), MG_OK);
    CHECK_INT(b, 0);
    const char *bad[] = {
        "", "k", "-1", "1.5m", "8mb", "8 m", "8t", "99999999999999999999", "17179869184g", NULL};
    for (int i = 0; bad[i]; i++)
        CHECK_INT(mg_config_parse_size(bad[i], &b), MG_ERROR);
}

static bool match(const char *const *cidrs, const char *ip)
{
    mg_cidr_t list[8];
    size_t n = 0;
    for (; cidrs[n]; n++)
        if (!mg_cidr_parse(cidrs[n], strlen(cidrs[n]), &list[n])) return false;
    struct sockaddr_storage ss = {0};
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1)
        sin->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1)
        sin6->sin6_family = AF_INET6;
    else
        return false;
    return mg_cidr_match(list, n, (struct sockaddr *)&ss);
}

TEST(cidrs_match_ipv4_ipv6_and_mapped_addresses)
{
    const char *const v4[] = {"1.2.3.0/24", "10.0.0.1", NULL};
    CHECK(match(v4, "1.2.3.4"));
    CHECK(match(v4, "1.2.3.255"));
    CHECK(!match(v4, "1.2.4.1"));
    CHECK(match(v4, "10.0.0.1"));
    CHECK(!match(v4, "10.0.0.2"));
    CHECK(match(v4, "::ffff:1.2.3.4")); /* an IPv4 client on a dual-stack socket */
    CHECK(!match(v4, "::ffff:1.2.4.4"));
    CHECK(!match(v4, "::1"));

    const char *const odd[] = {"172.16.0.0/12", "1.2.3.4/31", NULL};
    CHECK(match(odd, "172.31.255.255"));
    CHECK(!match(odd, "172.32.0.0"));
    CHECK(match(odd, "1.2.3.5"));
    CHECK(!match(odd, "1.2.3.6"));

    const char *const v6[] = {"2001:db8::/32", "::1", "fe80::/10", NULL};
    CHECK(match(v6, "2001:db8:1::5"));
    CHECK(!match(v6, "2001:db9::1"));
    CHECK(match(v6, "::1"));
    CHECK(match(v6, "febf::1"));
    CHECK(!match(v6, "fec0::1"));
    CHECK(!match(v6, "1.2.3.4"));

    const char *const all[] = {"0.0.0.0/0", "::/0", NULL};
    CHECK(match(all, "8.8.8.8"));
    CHECK(match(all, "2001:db8::1"));
    CHECK(match(all, "::ffff:8.8.8.8"));

    const char *const v4only[] = {"0.0.0.0/0", NULL}, *const v6only[] = {"::/0", NULL};
    CHECK(!match(v4only, "::1"));
    CHECK(!match(v6only, "8.8.8.8"));

    const char *const mapped_cidr[] = {"::ffff:1.2.3.0/120", NULL};
    CHECK(match(mapped_cidr, "1.2.3.9"));
    CHECK(!match(mapped_cidr, "1.2.4.9"));

    mg_cidr_t c;
    CHECK(mg_cidr_parse("1.2.3.4/24", strlen("1.2.3.4/24"), &c));
    CHECK_INT(c.addr[3], 0); /* host bits cleared */
    CHECK(!mg_cidr_parse("1.2.3.4/", strlen("1.2.3.4/"), &c));
    CHECK(!mg_cidr_parse("/8", strlen("/8"), &c));
    CHECK(!mg_cidr_parse("1.2.3.4/-1", strlen("1.2.3.4/-1"), &c));
    struct sockaddr unix_sa = {.sa_family = AF_UNIX};
    CHECK(!mg_cidr_match(&c, 1, &unix_sa));
}

TEST_MAIN()
