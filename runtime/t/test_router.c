/*
 * test_router.c — unit tests for the route table: Kong 3.x precedence (longest prefix, exact
 * over wildcard hosts, more fields over fewer, regex over plain, regex_priority, creation
 * order), every matching field, Host ports and case, and a 10,000-route table. Configs are
 * built directly in C so the tests do not depend on the YAML loader. Outside sanitizer builds
 * malloc is wrapped to prove that a lookup allocates nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_test.h"
#include "../mg_router.c"

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif

#ifndef SANITIZED
/* Count allocations while `counting` is set; glibc exports its allocator as __libc_*. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
/* and fail the allocation numbered `fail_at` (1-based) when it is set */
static int counting, nallocs, fail_at;
static int fail_now(void)
{
    nallocs += counting;
    return fail_at && nallocs == fail_at;
}
void *malloc(size_t n)
{
    return fail_now() ? NULL : __libc_malloc(n);
}
void *calloc(size_t a, size_t b)
{
    return fail_now() ? NULL : __libc_calloc(a, b);
}
void *realloc(void *p, size_t n)
{
    return fail_now() ? NULL : __libc_realloc(p, n);
}
#endif

/* A list literal: L("a", "b") is a NULL-terminated array. */
#define L(...) ((const char *const[]){__VA_ARGS__, NULL})
#define NONE_L ((const char *const *)NULL)

typedef struct {
    mg_config_t cfg;
    mg_pool_t *pool;
    mg_service_t svc;
    size_t cap;
} tconf_t;

typedef struct {
    const char *name, *value;
} hv_t;

typedef struct {
    const hv_t *h; /* terminated by a NULL name */
} hdrs_t;

static char **strv(tconf_t *t, const char *const *in, size_t *n)
{
    *n = 0;
    if (in == NULL) return NULL;
    while (in[*n])
        (*n)++;
    char **out = mg_pool_alloc(t->pool, (*n ? *n : 1) * sizeof(char *));
    for (size_t i = 0; i < *n; i++)
        out[i] = mg_pool_strdup(t->pool, in[i]);
    return out;
}

static void tc_init(tconf_t *t, size_t cap)
{
    memset(t, 0, sizeof(*t));
    t->pool = mg_pool_create(65536);
    t->cap = cap;
    t->cfg.pool = t->pool;
    t->cfg.routes = mg_pool_calloc(t->pool, cap * sizeof(mg_route_t));
    t->svc.name = "svc";
}

static mg_route_t *tc_add(tconf_t *t, const char *name, const char *const *hosts,
                          const char *const *paths, const char *const *methods)
{
    if (t->cfg.nroutes == t->cap) abort();
    mg_route_t *r = &t->cfg.routes[t->cfg.nroutes];
    r->name = mg_pool_strdup(t->pool, name);
    r->service = &t->svc;
    r->hosts = strv(t, hosts, &r->nhosts);
    r->paths = strv(t, paths, &r->npaths);
    r->methods = strv(t, methods, &r->nmethods);
    r->strip_path = true;
    r->index = (unsigned)t->cfg.nroutes++;
    return r;
}

static void tc_header(tconf_t *t, mg_route_t *r, const char *name, const char *const *values)
{
    mg_header_match_t *h = mg_pool_alloc(t->pool, (r->nheaders + 1) * sizeof(*h));
    if (r->nheaders) memcpy(h, r->headers, r->nheaders * sizeof(*h));
    h[r->nheaders].name = mg_pool_strdup(t->pool, name);
    h[r->nheaders].values = strv(t, values, &h[r->nheaders].nvalues);
    r->headers = h;
    r->nheaders++;
}

static mg_router_t *tc_build(tconf_t *t)
{
    char err[256] = "";
    mg_router_t *rt = mg_router_build(&t->cfg, err, sizeof(err));
    if (rt == NULL) fprintf(stderr, "#   build failed: %s\n", err);
    return rt;
}

static void tc_free(tconf_t *t, mg_router_t *rt)
{
    mg_router_free(rt);
    mg_pool_destroy(t->pool);
}

static size_t fake_get_header(void *ud, mg_str_t name, mg_str_t *out, size_t max)
{
    const hdrs_t *hs = ud;
    size_t n = 0;
    for (const hv_t *h = hs->h; h->name; h++) {
        if (!mg_str_caseeq(name, (mg_str_t){strlen(h->name), h->name})) continue;
        if (n < max) out[n] = (mg_str_t){strlen(h->value), h->value};
        n++;
    }
    return n;
}

static mg_str_t S(const char *s)
{
    return s ? (mg_str_t){strlen(s), s} : MG_NULL_STR;
}

/* Returns the name of the matched route ("-" for none) and its path_prefix_len in *plen. */
static const char *match_full(const mg_router_t *rt, const char *method, const char *host,
                              const char *path, bool https, const char *sni, const hv_t *headers,
                              size_t *plen)
{
    hdrs_t hs = {headers};
    mg_router_req_t req = {
        S(method), S(host), S(path), S(sni), https, headers ? fake_get_header : NULL, &hs};
    mg_router_match_t m = {NULL, 12345, NULL};
    int rc = mg_router_match(rt, &req, &m);
    if (plen) *plen = rc == MG_OK ? m.path_prefix_len : (size_t)-1;
    if (rc == MG_DECLINED) return "-";
    if (rc != MG_OK || m.route == NULL) return "?";
    return m.route->name;
}

static const char *match(const mg_router_t *rt, const char *method, const char *host,
                         const char *path, size_t *plen)
{
    return match_full(rt, method, host, path, false, NULL, NULL, plen);
}

TEST(longest_plain_prefix_wins_and_prefix_is_byte_wise)
{
    tconf_t t;
    tc_init(&t, 8);
    tc_add(&t, "root", NONE_L, L("/"), NONE_L);
    tc_add(&t, "foo", NONE_L, L("/foo"), NONE_L);
    tc_add(&t, "foobar", NONE_L, L("/foo/bar"), NONE_L);
    mg_router_t *rt = tc_build(&t);
    size_t plen;
    CHECK_STR(match(rt, "GET", "a.com", "/foo/bar/baz", &plen), "foobar");
    CHECK_INT(plen, 8);
    CHECK_STR(match(rt, "GET", "a.com", "/foo/bar", &plen), "foobar");
    CHECK_INT(plen, 8);
    CHECK_STR(match(rt, "GET", "a.com", "/foo/x", &plen), "foo");
    CHECK_INT(plen, 4);
    CHECK_STR(match(rt, "GET", "a.com", "/foo", &plen), "foo");
    CHECK_STR(match(rt, "GET", "a.com", "/foobar", &plen), "foo"); /* Kong: plain string prefix */
    CHECK_INT(plen, 4);
    CHECK_STR(match(rt, "GET", NULL, "/other", &plen), "root");
    CHECK_INT(plen, 1);
    CHECK_STR(match(rt, "GET", NULL, "/fo", NULL), "root");
    CHECK_STR(match(rt, "GET", NULL, "/Foo", NULL), "root"); /* paths are case-sensitive */
    tc_free(&t, rt);
}

TEST(a_route_with_several_paths_ranks_each_path_on_its_own)
{
    tconf_t t;
    tc_init(&t, 4);
    tc_add(&t, "multi", NONE_L, L("/a", "/abc/def"), NONE_L);
    tc_add(&t, "abc", NONE_L, L("/abc"), NONE_L);
    mg_router_t *rt = tc_build(&t);
    size_t plen;
    CHECK_STR(match(rt, "GET", NULL, "/abc/def/x", &plen), "multi");
    CHECK_INT(plen, 8);
    CHECK_STR(match(rt, "GET", NULL, "/abc/x", &plen), "abc");
    CHECK_INT(plen, 4);
    CHECK_STR(match(rt, "GET", NULL, "/a/x", &plen), "multi");
    CHECK_INT(plen, 2);
    tc_free(&t, rt);
}

TEST(exact_host_beats_wildcard_host_whatever_the_path_length)
{
    tconf_t t;
    tc_init(&t, 4);
    tc_add(&t, "wild", L("*.example.com"), L("/long/path"), NONE_L);
    tc_add(&t, "exact", L("api.example.com"), L("/"), NONE_L);
    mg_router_t *rt = tc_build(&t);
    CHECK_STR(match(rt, "GET", "api.example.com", "/long/path", NULL), "exact");
    CHECK_STR(match(rt, "GET", "www.example.com", "/long/path", NULL), "wild");
    CHECK_STR(match(rt, "GET", "www.example.com", "/", NULL), "-");
    CHECK_STR(match(rt, "GET", "example.com", "/long/path", NULL), "-");
    tc_free(&t, rt);
}

TEST(route_mixing_exact_and_wildcard_hosts_ranks_as_wildcard)
{
    tconf_t t;
    tc_init(&t, 4);
    tc_add(&t, "mixed", L("a.com", "*.b.com"), L("/"), NONE_L);
    tc_add(&t, "plain", L("a.com"), L("/"), NONE_L);
    mg_router_t *rt = tc_build(&t);
    CHECK_STR(match(rt, "GET", "a.com", "/", NULL), "plain");
    CHECK_STR(match(rt, "GET", "x.b.com", "/", NULL), "mixed");
    tc_free(&t, rt);
}

TEST(host_and_path_beat_a_longer_path_alone)
{
    tconf_t t;
    tc_init(&t, 4);
    tc_add(&t, "path", NONE_L, L("/foo/bar/baz"), NONE_L);
    tc_add(&t, "hostpath", L("a.com"), L("/"), NONE_L);
    tc_add(&t, "hostonly", L("b.com"), NONE_L, NONE_L);
    mg_router_t *rt = tc_build(&t);
    size_t plen;
    CHECK_STR(match(rt, "GET", "a.com", "/foo/bar/baz", NULL), "hostpath");
    CHECK_STR(match(rt, "GET", "c.com", "/foo/bar/baz", NULL), "path");
    /* host alone and path alone both weigh 1: the exact-host bit decides */
    CHECK_STR(match(rt, "GET", "b.com", "/foo/bar/baz", &plen), "hostonly");
    CHECK_INT(plen, 0);
    CHECK_STR(match(rt, "GET", "c.com", "/x", NULL), "-");
    tc_free(&t, rt);
}

TEST(methods_filter_and_add_weight)
{
    tconf_t t;
    tc_init(&t, 8);
    tc_add(&t, "get", NONE_L, L("/x"), L("GET"));
    tc_add(&t, "post", NONE_L, L("/x"), L("POST", "PURGE"));
    tc_add(&t, "any", NONE_L, L("/"), NONE_L);
    tc_add(&t, "getroot", L("m.com"), L("/"), L("GET"));
    tc_add(&t, "api", L("m.com"), L("/api"), NONE_L);
    mg_router_t *rt = tc_build(&t);
    CHECK_STR(match(rt, "GET", NULL, "/x/1", NULL), "get");
    CHECK_STR(match(rt, "POST", NULL, "/x", NULL), "post");
    CHECK_STR(match(rt, "PURGE", NULL, "/x", NULL), "post"); /* non-standard method */
    CHECK_STR(match(rt, "DELETE", NULL, "/x", NULL), "any");
    CHECK_STR(match(rt, "get", NULL, "/x", NULL), "any"); /* methods are case-sensitive */
    CHECK_STR(match(rt, "PURG", NULL, "/x", NULL), "any");
    /* Kong 3.x: methods+"/" outweighs a longer prefix without methods */
    CHECK_STR(match(rt, "GET", "m.com", "/api/v1", NULL), "getroot");
    CHECK_STR(match(rt, "POST", "m.com", "/api/v1", NULL), "api");
    tc_free(&t, rt);
}

TEST(routes_with_only_methods)
{
    tconf_t t;
    tc_init(&t, 4);
    tc_add(&t, "get", NONE_L, NONE_L, L("GET", "HEAD"));
    tc_add(&t, "post", NONE_L, NONE_L, L("POST"));
    mg_router_t *rt = tc_build(&t);
    size_t plen;
    CHECK_STR(match(rt, "GET", "any.host", "/anything", &plen), "get");
    CHECK_INT(plen, 0);
    CHECK_STR(match(rt, "HEAD", NULL, "/", NULL), "get");
    CHECK_STR(match(rt, "POST", NULL, "/z", NULL), "post");
    CHECK_STR(match(rt, "PUT", NULL, "/z", NULL), "-");
    tc_free(&t, rt);
}

TEST(headers_must_all_match_and_more_headers_win)
{
    tconf_t t;
    tc_init(&t, 4);
    mg_route_t *r1 = tc_add(&t, "v", NONE_L, L("/"), NONE_L);
    tc_header(&t, r1, "x-version", L("v1", "V2"));
    mg_route_t *r2 = tc_add(&t, "v_env", NONE_L, L("/"), NONE_L);
    tc_header(&t, r2, "x-version", L("v1"));
    tc_header(&t, r2, "x-env", L("prod"));
    tc_add(&t, "plain", NONE_L, L("/"), NONE_L);
    mg_router_t *rt = tc_build(&t);

    const hv_t both[] = {{"X-Env", "PROD"}, {"X-Version", "v1"}, {NULL, NULL}};
    const hv_t v2[] = {{"x-version", "v2"}, {NULL, NULL}};
    const hv_t v3[] = {{"x-version", "v3"}, {NULL, NULL}};
    const hv_t many[] = {{"x-version", "v9"}, {"x-version", "V1"}, {NULL, NULL}};
    const hv_t env_only[] = {{"x-env", "prod"}, {NULL, NULL}};
    const hv_t none[] = {{NULL, NULL}};
    CHECK_STR(match_full(rt, "GET", NULL, "/", false, NULL, both, NULL), "v_env");
    CHECK_STR(match_full(rt, "GET", NULL, "/", false, NULL, v2, NULL), "v");
    CHECK_STR(match_full(rt, "GET", NULL, "/", false, NULL, v3, NULL), "plain");
    CHECK_STR(match_full(rt, "GET", NULL, "/", false, NULL, many, NULL), "v");
    CHECK_STR(match_full(rt, "GET", NULL, "/", false, NULL, env_only, NULL), "plain");
    CHECK_STR(match_full(rt, "GET", NULL, "/", false, NULL, none, NULL), "plain");
    CHECK_STR(match(rt, "GET", NULL, "/", NULL), "plain"); /* get_header == NULL */
    tc_free(&t, rt);
}

TEST(regex_paths_are_anchored_ordered_by_regex_priority_and_report_match_end)
{
    tconf_t t;
    tc_init(&t, 4);
    mg_route_t *digits = tc_add(&t, "digits", NONE_L, L("~/users/\\d+"), NONE_L);
    mg_route_t *word = tc_add(&t, "word", NONE_L, L("~/users/(?<id>\\w+)"), NONE_L);
    tc_add(&t, "alt", NONE_L, L("~/a|/b"), NONE_L);
    word->regex_priority = 5;
    mg_router_t *rt = tc_build(&t);
    size_t plen;
    CHECK_STR(match(rt, "GET", NULL, "/users/123/orders", &plen), "word");
    CHECK_INT(plen, 10);
    CHECK_STR(match(rt, "GET", NULL, "/x/users/123", NULL), "-"); /* anchored */
    CHECK_STR(match(rt, "GET", NULL, "/b/c", &plen), "alt");      /* anchored as a whole */
    CHECK_INT(plen, 2);
    CHECK_STR(match(rt, "GET", NULL, "/zz/b", NULL), "-");
    mg_router_free(rt);

    word->regex_priority = -1; /* negative: below digits' 0 */
    digits->regex_priority = 0;
    rt = tc_build(&t);
    CHECK_STR(match(rt, "GET", NULL, "/users/123", &plen), "digits");
    CHECK_INT(plen, 10);
    CHECK_STR(match(rt, "GET", NULL, "/users/abc", &plen), "word");
    CHECK_INT(plen, 10);
    tc_free(&t, rt);
}

TEST(invalid_regex_and_wildcard_fail_the_build_with_a_path)
{
    tconf_t t;
    tc_init(&t, 4);
    tc_add(&t, "ok", NONE_L, L("/"), NONE_L);
    tc_add(&t, "bad", NONE_L, L("/a", "~/(unclosed"), NONE_L);
    char err[256] = "";
    CHECK(mg_router_build(&t.cfg, err, sizeof(err)) == NULL);
    CHECK(strncmp(err, "routes[1].paths[1]: invalid regex: ", 35) == 0);
    mg_pool_destroy(t.pool);

    tc_init(&t, 4);
    tc_add(&t, "bad", L("a.com", "a.*.com"), L("/"), NONE_L);
    CHECK(mg_router_build(&t.cfg, err, sizeof(err)) == NULL);
    CHECK_STR(err, "routes[0].hosts[1]: invalid wildcard host \"a.*.com\"");
    mg_pool_destroy(t.pool);
}

TEST(regex_beats_plain_prefix_at_equal_weight_but_not_more_fields)
{
    tconf_t t;
    tc_init(&t, 4);
    tc_add(&t, "plain", NONE_L, L("/api/v1/users"), NONE_L);
    mg_route_t *rx = tc_add(&t, "regex", NONE_L, L("~/api/v\\d+"), NONE_L);
    tc_add(&t, "hosted", L("a.com"), L("/api"), NONE_L);
    mg_router_t *rt = tc_build(&t);
    size_t plen;
    CHECK_STR(match(rt, "GET", "b.com", "/api/v1/users/1", &plen), "regex");
    CHECK_INT(plen, 7);
    CHECK_STR(match(rt, "GET", "b.com", "/api/vx/users", NULL), "-");
    CHECK_STR(match(rt, "GET", "a.com", "/api/v1/users/1", &plen), "hosted");
    CHECK_INT(plen, 4);
    mg_router_free(rt);
    rx->regex_priority = INT32_MIN; /* even the lowest regex_priority ranks above plain */
    rt = tc_build(&t);
    CHECK_STR(match(rt, "GET", "b.com", "/api/v1/users/1", NULL), "regex");
    tc_free(&t, rt);
}

TEST(host_ports_and_default_ports)
{
    tconf_t t;
    tc_init(&t, 8);
    tc_add(&t, "anyport", L("a.com"), L("/"), NONE_L);
    tc_add(&t, "p9000", L("a.com:9000"), L("/p"), NONE_L);
    tc_add(&t, "tls", L("b.com:443"), L("/"), NONE_L);
    tc_add(&t, "wild8443", L("*.c.com:8443"), L("/"), NONE_L);
    tc_add(&t, "v6", L("[::1]"), L("/"), NONE_L);
    mg_router_t *rt = tc_build(&t);
    CHECK_STR(match(rt, "GET", "a.com:9000", "/p/x", NULL), "p9000");
    CHECK_STR(match(rt, "GET", "a.com:8000", "/p/x", NULL), "anyport");
    CHECK_STR(match(rt, "GET", "a.com", "/p/x", NULL), "anyport");
    CHECK_STR(match(rt, "GET", "a.com:", "/p/x", NULL), "anyport");
    CHECK_STR(match(rt, "GET", "a.com:99999", "/", NULL), "-"); /* not a port: no such host */
    CHECK_STR(match_full(rt, "GET", "b.com", "/", true, "b.com", NULL, NULL), "tls");
    CHECK_STR(match(rt, "GET", "b.com", "/", NULL), "-"); /* http: default port 80 */
    CHECK_STR(match(rt, "GET", "b.com:443", "/", NULL), "tls");
    CHECK_STR(match(rt, "GET", "x.c.com:8443", "/", NULL), "wild8443");
    CHECK_STR(match(rt, "GET", "x.c.com:8444", "/", NULL), "-");
    CHECK_STR(match(rt, "GET", "[::1]:8000", "/", NULL), "v6");
    CHECK_STR(match(rt, "GET", "[::1]", "/", NULL), "v6");
    tc_free(&t, rt);
}

TEST(hosts_are_case_insensitive_and_ignore_a_trailing_dot)
{
    tconf_t t;
    tc_init(&t, 4);
    tc_add(&t, "api", L("api.example.com"), L("/"), NONE_L);
    tc_add(&t, "mixed", L("Mixed.COM"), L("/"), NONE_L);
    tc_add(&t, "wild", L("*.Wild.org"), L("/"), NONE_L);
    mg_router_t *rt = tc_build(&t);
    CHECK_STR(match(rt, "GET", "API.Example.COM:80", "/", NULL), "api");
    CHECK_STR(match(rt, "GET", "api.example.com.", "/", NULL), "api");
    CHECK_STR(match(rt, "GET", "mixed.com", "/", NULL), "mixed");
    CHECK_STR(match(rt, "GET", "A.WILD.ORG", "/", NULL), "wild");
    tc_free(&t, rt);
}

TEST(wildcard_hosts_need_at_least_one_label)
{
    tconf_t t;
    tc_init(&t, 4);
    tc_add(&t, "suffix", L("*.example.com"), L("/"), NONE_L);
    tc_add(&t, "prefix", L("example.*"), L("/"), NONE_L);
    mg_router_t *rt = tc_build(&t);
    CHECK_STR(match(rt, "GET", "a.example.com", "/", NULL), "suffix");
    CHECK_STR(match(rt, "GET", "a.b.example.com:8080", "/", NULL), "suffix");
    CHECK_STR(match(rt, "GET", ".example.com", "/", NULL), "-");
    CHECK_STR(match(rt, "GET", "xexample.com", "/", NULL), "-");
    CHECK_STR(match(rt, "GET", "example.org", "/", NULL), "prefix");
    CHECK_STR(match(rt, "GET", "example.co.uk", "/", NULL), "prefix");
    CHECK_STR(match(rt, "GET", "example.", "/", NULL), "-");
    CHECK_STR(match(rt, "GET", "example", "/", NULL), "-");
    CHECK_STR(match(rt, "GET", "www.example.org", "/", NULL), "-");
    /* both wildcards match: same rank keys, so creation order decides */
    CHECK_STR(match(rt, "GET", "example.example.com", "/", NULL), "suffix");
    tc_free(&t, rt);
}

TEST(snis_only_checked_over_https)
{
    tconf_t t;
    tc_init(&t, 4);
    mg_route_t *r = tc_add(&t, "sni", NONE_L, L("/"), NONE_L);
    r->snis = strv(&t, L("secure.example.com."), &r->nsnis);
    tc_add(&t, "plain", NONE_L, L("/"), NONE_L);
    mg_router_t *rt = tc_build(&t);
    CHECK_STR(match_full(rt, "GET", NULL, "/", true, "Secure.Example.com", NULL, NULL), "sni");
    CHECK_STR(match_full(rt, "GET", NULL, "/", true, "other.com", NULL, NULL), "plain");
    CHECK_STR(match_full(rt, "GET", NULL, "/", true, NULL, NULL, NULL), "plain");
    CHECK_STR(match(rt, "GET", NULL, "/", NULL), "sni"); /* http: snis not considered */
    tc_free(&t, rt);
}

TEST(ties_are_broken_by_route_index)
{
    tconf_t t;
    tc_init(&t, 4);
    mg_route_t *a = tc_add(&t, "a", L("x.com"), L("/same"), NONE_L);
    mg_route_t *b = tc_add(&t, "b", L("x.com"), L("/same"), NONE_L);
    mg_router_t *rt = tc_build(&t);
    CHECK_STR(match(rt, "GET", "x.com", "/same/1", NULL), "a");
    mg_router_free(rt);
    a->index = 7;
    b->index = 3;
    rt = tc_build(&t);
    CHECK_STR(match(rt, "GET", "x.com", "/same/1", NULL), "b");
    tc_free(&t, rt);
}

/* hash_on: uri_capture: the winning regex is reported and its named groups read again */
TEST(a_regex_match_reports_its_regex_and_named_captures_are_read_from_it)
{
    tconf_t t;
    tc_init(&t, 4);
    tc_add(&t, "items", NONE_L, L("~/items/(?<item>[a-z]+)(/(?<part>\\d+))?"), NONE_L);
    tc_add(&t, "plain", NONE_L, L("/plain"), NONE_L);
    mg_router_t *rt = tc_build(&t);
    mg_router_match_t m = {NULL, 0, NULL};
    mg_router_req_t req = {S("GET"), S(NULL), S("/items/abc/42/x"), S(NULL), false, NULL, NULL};
    CHECK_INT(mg_router_match(rt, &req, &m), MG_OK);
    CHECK(m.regex != NULL);
    mg_str_t v;
    CHECK_INT(mg_router_capture(m.regex, req.path, "item", &v), MG_OK);
    CHECK(v.len == 3 && memcmp(v.data, "abc", 3) == 0);
    CHECK_INT(mg_router_capture(m.regex, req.path, "part", &v), MG_OK);
    CHECK(v.len == 2 && memcmp(v.data, "42", 2) == 0);
    CHECK_INT(mg_router_capture(m.regex, req.path, "nope", &v), MG_DECLINED);
    CHECK_INT(mg_router_capture(m.regex, S("/items/abc"), "part", &v), MG_DECLINED); /* unset */
    CHECK_INT(mg_router_capture(m.regex, S("/other"), "item", &v), MG_DECLINED);
    req.path = S("/plain/x");
    CHECK_INT(mg_router_match(rt, &req, &m), MG_OK);
    CHECK(m.regex == NULL);
    CHECK_INT(mg_router_capture(m.regex, req.path, "item", &v), MG_DECLINED);
    tc_free(&t, rt);
}

TEST(no_match_declines)
{
    tconf_t t;
    tc_init(&t, 4);
    mg_router_t *rt = tc_build(&t);
    CHECK_STR(match(rt, "GET", "a.com", "/", NULL), "-"); /* empty table */
    mg_router_free(rt);
    tc_add(&t, "hosted", L("a.com"), L("/"), NONE_L);
    tc_add(&t, "api", NONE_L, L("/api"), NONE_L);
    rt = tc_build(&t);
    CHECK_STR(match(rt, "GET", NULL, "/", NULL), "-"); /* no Host: hosted routes are out */
    CHECK_STR(match(rt, "GET", NULL, "/api/x", NULL), "api");
    CHECK_STR(match(rt, "GET", "b.com", "/ap", NULL), "-");
    CHECK_STR(match(rt, "GET", "a.com", "", NULL), "-");
    tc_free(&t, rt);
}

TEST(ten_thousand_routes_match_correctly)
{
    enum { N = 10000 };
    tconf_t t;
    tc_init(&t, 2 * N + 2);
    char h[64], p[64], name[32];
    for (int i = 0; i < N; i++) { /* host + prefix, one per host */
        snprintf(h, sizeof(h), "h%d.example.com", i);
        snprintf(p, sizeof(p), "/svc%d", i);
        snprintf(name, sizeof(name), "hp%d", i);
        tc_add(&t, name, L(h), L(p), NONE_L);
    }
    for (int i = 0; i < N; i++) { /* prefix only, all in the one host-less tree */
        snprintf(p, sizeof(p), "/p/%d/", i);
        snprintf(name, sizeof(name), "p%d", i);
        tc_add(&t, name, NONE_L, L(p), NONE_L);
    }
    tc_add(&t, "wild", L("*.example.com"), L("/"), NONE_L);
    mg_router_t *rt = tc_build(&t);
    CHECK(rt != NULL);
    if (rt == NULL) return;
    int bad = 0;
    for (int i = 0; i < N; i += 97) {
        size_t plen;
        snprintf(h, sizeof(h), "H%d.Example.com:8000", i);
        snprintf(p, sizeof(p), "/svc%d/items/42", i);
        snprintf(name, sizeof(name), "hp%d", i);
        bad += strcmp(match(rt, "GET", h, p, &plen), name) != 0;
        bad += plen != strlen(p) - strlen("/items/42");
        /* "/svc1" is a byte prefix of "/svc10": a host keeps its own prefixes apart */
        snprintf(p, sizeof(p), "/svc%d0", i);
        bad += strcmp(match(rt, "GET", h, p, NULL), name) != 0;
        snprintf(p, sizeof(p), "/p/%d/x", i);
        snprintf(name, sizeof(name), "p%d", i);
        bad += strcmp(match(rt, "GET", "nohost.test", p, &plen), name) != 0;
        bad += plen != strlen(p) - 1;
        snprintf(h, sizeof(h), "h%d.example.com", (i + 1) % N);
        snprintf(p, sizeof(p), "/svc%d/", i);
        bad += strcmp(match(rt, "GET", h, p, NULL), "wild") != 0;
    }
    CHECK_INT(bad, 0);
    CHECK_STR(match(rt, "GET", "nohost.test", "/p/10001/", NULL), "-");
    tc_free(&t, rt);
}

#ifndef SANITIZED
TEST(match_allocates_nothing)
{
    tconf_t t;
    tc_init(&t, 4);
    tc_add(&t, "plain", L("a.com", "*.b.com"), L("/x"), NONE_L);
    mg_route_t *r = tc_add(&t, "rx", NONE_L, L("~/r/(\\d+)"), L("GET"));
    tc_header(&t, r, "x-a", L("1"));
    mg_router_t *rt = tc_build(&t);
    const hv_t hv[] = {{"x-a", "1"}, {NULL, NULL}};
    counting = 1;
    nallocs = 0;
    const char *a = match(rt, "GET", "a.com", "/x/y", NULL);
    const char *b = match(rt, "GET", "q.b.com", "/x", NULL);
    const char *c = match_full(rt, "GET", NULL, "/r/12", false, NULL, hv, NULL);
    const char *d = match(rt, "GET", "c.com", "/nope", NULL);
    counting = 0;
    CHECK_STR(a, "plain");
    CHECK_STR(b, "plain");
    CHECK_STR(c, "rx");
    CHECK_STR(d, "-");
    CHECK_INT(nallocs, 0);
    tc_free(&t, rt);
}

TEST(build_unwinds_cleanly_when_any_allocation_fails)
{
    tconf_t t;
    tc_init(&t, 8);
    tc_add(&t, "a", L("a.com", "*.b.com", "c.*"), L("/x", "/y/z", "~/r/\\d+"), L("GET", "PURGE"));
    mg_route_t *r = tc_add(&t, "b", NONE_L, L("/"), NONE_L);
    tc_header(&t, r, "x-a", L("1"));
    r->snis = strv(&t, L("s.com"), &r->nsnis);
    int failures = 0, bad = 0;
    for (int n = 1;; n++) {
        char err[128] = "";
        counting = 1;
        nallocs = 0;
        fail_at = n;
        mg_router_t *rt = mg_router_build(&t.cfg, err, sizeof(err));
        counting = 0;
        fail_at = 0;
        if (rt) {
            bad += strcmp(match(rt, "GET", "q.b.com", "/y/z/1", NULL), "a") != 0;
            mg_router_free(rt);
            break;
        }
        failures++;
        bad += strcmp(err, "out of memory") != 0;
    }
    CHECK(failures >= 5);
    CHECK_INT(bad, 0);
    mg_pool_destroy(t.pool);
}
#endif

TEST_MAIN()
