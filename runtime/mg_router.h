/*
 * mg_router.h — the route table, compiled once per config load. Matching follows Kong 3.x's
 * precedence (the most specific route wins; longest plain prefix first; regex paths by
 * regex_priority) and costs O(path length + host hash) for plain host/prefix routes,
 * independent of how many routes exist.
 */
#ifndef MG_ROUTER_H
#define MG_ROUTER_H

#include "mg_core.h"
#include "mg_config.h"

typedef struct mg_router_s mg_router_t;

/* What the router needs from a request. Strings need not be NUL-terminated. */
typedef struct {
    mg_str_t method; /* "GET" */
    mg_str_t host;   /* Host header value as received (may include ":port"), any case */
    mg_str_t path;   /* request-target path, without the query string, not decoded */
    mg_str_t sni;    /* empty without TLS */
    bool https;      /* protocol the request arrived on */
    /* Header lookup: returns the number of values of `name` (lower-case) and stores up to
     * `max` of them in `out`. NULL when the router has no header-matching routes. */
    size_t (*get_header)(void *ud, mg_str_t name, mg_str_t *out, size_t max);
    void *ud;
} mg_router_req_t;

typedef struct {
    const mg_route_t *route;
    size_t path_prefix_len; /* bytes of the path the route matched (prefix or regex match
                               end), for strip_path; 0 when the route has no paths */
    const void *regex;      /* the regex path that matched (its captures), or NULL */
} mg_router_match_t;

/*
 * Builds the table for cfg->routes. Returns NULL and writes a message to err on failure
 * (e.g. a regex that does not compile: "routes[3].paths[0]: invalid regex: ..."). The table
 * keeps pointers into cfg, so cfg must outlive it.
 */
mg_router_t *mg_router_build(const mg_config_t *cfg, char *err, size_t errlen);
void mg_router_free(mg_router_t *rt);

/* Fills m and returns MG_OK, or returns MG_DECLINED when no route matches. */
int mg_router_match(const mg_router_t *rt, const mg_router_req_t *req, mg_router_match_t *m);

/* The value of named group `name` when `regex` (a match's m->regex) matches `path`: MG_OK with
 * *out pointing into path, MG_DECLINED when the regex has no such group, does not match or the
 * group took no part. Matches again (only hash_on: uri_capture asks), in a match block reused
 * by the worker: nothing is allocated per call. */
int mg_router_capture(const void *regex, mg_str_t path, const char *name, mg_str_t *out);

#endif
