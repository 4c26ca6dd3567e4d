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
    EXPECT_ERRORS("services: [{name: s, host: 127.0.0.1, tls_verify: true, "
                  "routes: [{paths: [/]}]}]\n",
                  "services[0].tls_verify: unknown field");
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
                  "real_ip_header: 'X Real'\nplugins: [bundled, my-policy]\n"
                  "shared_dicts: {cache: 0, 'bad-name': 1m, ok: huge}\nlua_package_path: ''\n",
                  "trusted_ips[0]: invalid IP or CIDR \"10.0.0.0/33\"",
                  "trusted_ips[1]: invalid IP or CIDR \"nonsense\"",
                  "trusted_ips[2]: invalid IP or CIDR \"::/129\"",
                  "real_ip_header: invalid header name \"X Real\"",
                  "plugins[1]: plugin \"my-policy\" is not installed",
                  "shared_dicts.cache: must be greater than 0",
                  "shared_dicts.bad-name: invalid dictionary name: use letters, digits and '_'",
                  "shared_dicts.ok: expected a size such as \"8m\"",
                  "lua_package_path: must not be empty");
}

TEST(service_problems)
{
    EXPECT_ERRORS(
        "services:\n"
        "  - {name: a, url: 'https://127.0.0.1', routes: [{paths: [/]}]}\n"
        "  - {name: b, url: 'ftp://127.0.0.1'}\n"
        "  - {name: c, url: 'http//x'}\n"
        "  - {name: d, url: 'http://127.0.0.1:99999'}\n"
        "  - {name: e, url: 'http://127.0.0.1', host: 127.0.0.1}\n"
        "  - {name: f}\n"
        "  - {name: 'g h', host: 'bad host', path: nope, protocol: grpc}\n"
        "  - {name: i, url: 'http://127.0.0.1/?q=1'}\n"
        "  - {name: j, host: '[::1', tags: ['a,b']}\n",
        "services[0].url: protocol \"https\" is not supported yet",
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

TEST(unresolvable_host_is_reported)
{
    mg_config_errors_t e;
    mg_config_t *cfg = load_text("services: [{name: s, host: no-such-host.invalid}]\n", &e);
    const char *want = "services[0].host: cannot resolve \"no-such-host.invalid\": ";
    CHECK(cfg == NULL);
    CHECK_INT(e.n, 1);
    if (e.n) CHECK(strncmp(e.items[0], want, strlen(want)) == 0);
    mg_config_free(cfg);
    mg_config_errors_free(&e);
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

TEST(plugins_consumers_and_unsupported_entities)
{
    EXPECT_ERRORS("plugins:\n"
                  "  - name: rate-limiting\n"
                  "    config: {minute: 100}\n"
                  "  - {config: {}}\n"
                  "services:\n"
                  "  - name: s\n"
                  "    url: http://127.0.0.1:1\n"
                  "    plugins: [{name: key-auth, enabled: true, bogus: 1}]\n"
                  "    routes: [{paths: [/], plugins: [{name: cors, protocols: [http]}]}]\n"
                  "consumers:\n"
                  "  - username: alice\n"
                  "    keyauth_credentials: [{key: k}]\n"
                  "    plugins: [{name: acl}]\n"
                  "  - tags: [t]\n"
                  "upstreams: [{name: u}]\n"
                  "certificates: []\n",
                  "plugins[0].name: plugin \"rate-limiting\" is not enabled",
                  "plugins[1].name: required", "services[0].plugins[0].bogus: unknown field",
                  "services[0].plugins[0].name: plugin \"key-auth\" is not enabled",
                  "services[0].routes[0].plugins[0].name: plugin \"cors\" is not enabled",
                  "consumers[0].keyauth_credentials: not supported yet",
                  "consumers[0].plugins[0].name: plugin \"acl\" is not enabled",
                  "consumers[1]: must set one of 'username', 'custom_id'",
                  "upstreams: not supported yet", "certificates: not supported yet");
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
                            "routes: [{name: t, service: s, paths: [/t]}]\n");
    mg_config_errors_t e;
    mg_config_errors_init(&e);
    mg_config_t *cfg = mg_config_load(main_path, &e);
    show_errors(&e);
    CHECK(cfg != NULL);
    if (cfg) {
        CHECK_INT(cfg->worker_processes, 1);
        CHECK_INT(cfg->nservices, 1);
        CHECK_INT(cfg->nroutes, 2);
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
        if (!cidr_parse(cidrs[n], &list[n])) return false;
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
    CHECK(cidr_parse("1.2.3.4/24", &c));
    CHECK_INT(c.addr[3], 0); /* host bits cleared */
    CHECK(!cidr_parse("1.2.3.4/", &c));
    CHECK(!cidr_parse("/8", &c));
    CHECK(!cidr_parse("1.2.3.4/-1", &c));
    struct sockaddr unix_sa = {.sa_family = AF_UNIX};
    CHECK(!mg_cidr_match(&c, 1, &unix_sa));
}

TEST_MAIN()
