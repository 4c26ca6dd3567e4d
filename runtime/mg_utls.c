/*
 * mg_utls.c — upstream TLS: the client side of the gateway's connections to `https` services
 * and of `https` health probes. Every context is built at load in the master (so a bad
 * reference or an unreadable client key is refused by `moongate check`, and workers fork with
 * the trust stores already parsed); services with identical settings share a context.
 * Verification is OpenSSL's own (SSL_VERIFY_PEER with the name set on the session), so a
 * failure aborts the handshake before a byte of the request is sent, and the verify error
 * says why. Sessions are cached one per keepalive pool (the pools own mg_utls_cache_t), so a
 * new connection to the same backend resumes instead of paying a full handshake.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "mg_ca.h"
#include "mg_tls.h"
#include "mg_utls.h"

struct mg_utls_ctx_s {
    SSL_CTX *ctx;
    char key[512]; /* the settings it was built for: services alike share it */
    struct mg_utls_ctx_s *next;
};

struct mg_utls_s {
    mg_utls_ctx_t *ctxs;
    X509_STORE *system; /* /etc/ssl/certs (SSL_CERT_FILE / SSL_CERT_DIR), loaded once */
};

static bool is_set(const mg_value_t *v)
{
    return v && v->kind != MG_VAL_NULL;
}

/* A stored TLS 1.2 session or TLS 1.3 ticket: kept in the pool's cache when resumable. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    mg_utls_cache_t *c = SSL_get_app_data(ssl);
    if (c == NULL || !SSL_SESSION_is_resumable(sess)) return 0;
    if (c->sess) SSL_SESSION_free(c->sess);
    c->sess = sess;
    c->ctx = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    return 1; /* the cache holds the reference */
}

/* `client_certificate` as Kong writes it ({id: ...}) or the id alone; NULL when malformed. */
static const char *cert_ref(const mg_value_t *v)
{
    if (v->kind == MG_VAL_MAP) v = mg_value_get(v, "id");
    return v && v->kind == MG_VAL_STRING ? v->str : NULL;
}

/*
 * The context for these settings, made on first use. verify/depth/refs as the entity says;
 * cert_id NULL for none. NULL after reporting a problem at `path`.
 */
static mg_utls_ctx_t *context(mg_utls_t *U, const mg_config_t *cfg, bool verify, int depth,
                              const mg_ca_refs_t *refs, const char *cert_id, const char *path,
                              mg_config_errors_t *errs)
{
    char key[512];
    int n = snprintf(key, sizeof(key), "v%d d%d c%s ca", verify, verify ? depth : -1,
                     cert_id ? cert_id : "");
    for (size_t i = 0; verify && i < refs->n && n > 0 && (size_t)n < sizeof(key); i++)
        n += snprintf(key + n, sizeof(key) - (size_t)n, ",%d", refs->idx[i]);
    if (n < 0 || (size_t)n >= sizeof(key)) {
        mg_config_errors_add(errs, "%s: too many ca_certificates or too long an id", path);
        return NULL;
    }
    for (mg_utls_ctx_t *c = U->ctxs; c; c = c->next)
        if (strcmp(c->key, key) == 0) return c;

    mg_utls_ctx_t *c = calloc(1, sizeof(*c));
    SSL_CTX *ctx = c ? SSL_CTX_new(TLS_client_method()) : NULL;
    if (ctx == NULL) {
        free(c);
        ERR_clear_error();
        mg_config_errors_add(errs, "%s: out of memory", path);
        return NULL;
    }
    memcpy(c->key, key, (size_t)n + 1);
    c->ctx = ctx;
    c->next = U->ctxs;
    U->ctxs = c;
    SSL_CTX_set_app_data(ctx, c);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF); /* a bare FIN ends a body */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* resumption from the pools' caches only: OpenSSL's internal client cache is unused */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
    if (verify) {
        X509_STORE *st;
        if (refs->n) {
            st = mg_ca_store(cfg->ca, refs);
        } else {
            if (U->system == NULL) {
                U->system = X509_STORE_new();
                if (U->system) X509_STORE_set_default_paths(U->system);
                ERR_clear_error(); /* a missing default file or directory is no error */
            }
            st = U->system;
            if (st) X509_STORE_up_ref(st);
        }
        if (st == NULL) {
            mg_config_errors_add(errs, "%s: out of memory", path);
            return NULL;
        }
        SSL_CTX_set_cert_store(ctx, st);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        if (depth >= 0) SSL_CTX_set_verify_depth(ctx, depth);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    if (cert_id) {
        char why[300];
        if (mg_tls_use_cert_id(cfg, cert_id, ctx, why, sizeof(why)) != MG_OK) {
            mg_config_errors_add(errs, "%s.client_certificate: %s", path, why);
            return NULL;
        }
    }
    return c;
}

/* The client certificate id of `v` at path.key (NULL when unset), reporting a bad form. */
static bool cert_field(const mg_value_t *v, const char *path, mg_config_errors_t *errs,
                       const char **id)
{
    *id = NULL;
    if (!is_set(v)) return true;
    *id = cert_ref(v);
    if (*id == NULL) {
        mg_config_errors_add(errs, "%s.client_certificate: must be {id: <certificate id>}", path);
        return false;
    }
    return true;
}

/* Whether the certificates entity `id` exists and loads (reported at path otherwise). */
static bool cert_usable(const mg_config_t *cfg, const char *id, const char *path,
                        mg_config_errors_t *errs)
{
    char why[300];
    SSL_CTX *scratch = SSL_CTX_new(TLS_client_method());
    int rc = scratch ? mg_tls_use_cert_id(cfg, id, scratch, why, sizeof(why)) : MG_ERROR;
    SSL_CTX_free(scratch);
    ERR_clear_error();
    if (rc != MG_OK)
        mg_config_errors_add(errs, "%s.client_certificate: %s", path,
                             scratch ? why : "out of memory");
    return rc == MG_OK;
}

static bool load_service(mg_utls_t *U, mg_config_t *cfg, mg_service_t *s, mg_config_errors_t *errs)
{
    const char *path = s->conf_path ? s->conf_path : "services[?]";
    bool ok = true;
    if (strcmp(s->protocol, "https") != 0) return true; /* its TLS fields were refused */
    char cpath[300];
    snprintf(cpath, sizeof(cpath), "%s.ca_certificates", path);
    mg_ca_refs_t refs;
    if (!mg_ca_refs(cfg->ca, s->ca_certificates, cpath, false, errs, &refs)) ok = false;
    const char *cert_id;
    if (!cert_field(s->client_certificate, path, errs, &cert_id)) ok = false;
    if (cert_id && !cert_usable(cfg, cert_id, path, errs)) ok = false;
    if (cert_id == NULL && s->upstream && is_set(s->upstream->client_certificate))
        cert_id = cert_ref(s->upstream->client_certificate); /* checked with the upstream */
    if (ok) {
        s->tls = context(U, cfg, s->tls_verify, s->tls_verify_depth, &refs, cert_id, path, errs);
        ok = s->tls != NULL;
    }
    mg_ca_refs_free(&refs);
    return ok;
}

static bool load_upstream(mg_utls_t *U, mg_config_t *cfg, mg_upstream_t *up,
                          mg_config_errors_t *errs)
{
    const char *path = up->conf_path ? up->conf_path : "upstreams[?]";
    const char *cert_id;
    if (!cert_field(up->client_certificate, path, errs, &cert_id)) return false;
    /* an unknown id is refused even when no https service uses it yet */
    if (cert_id && !cert_usable(cfg, cert_id, path, errs)) return false;
    const mg_healthchecks_t *hc = &up->healthchecks;
    if (!hc->active_on || hc->active.type != MG_HC_HTTPS) return true;
    /* probes trust what the traffic trusts: the first https service balanced over the
     * upstream (its ca_certificates and depth), else the system store */
    const mg_service_t *via = NULL;
    for (size_t i = 0; i < cfg->nservices && via == NULL; i++)
        if (cfg->services[i].upstream == up && cfg->services[i].tls) via = &cfg->services[i];
    mg_ca_refs_t refs = {0};
    if (via && !mg_ca_refs(cfg->ca, via->ca_certificates, "?", false, errs, &refs)) return false;
    char hpath[300];
    snprintf(hpath, sizeof(hpath), "%s.healthchecks.active", path);
    up->probe_tls = context(U, cfg, hc->active.https_verify_certificate,
                            via ? via->tls_verify_depth : -1, &refs, cert_id, hpath, errs);
    mg_ca_refs_free(&refs);
    return up->probe_tls != NULL;
}

mg_utls_t *mg_utls_load(mg_config_t *cfg, mg_config_errors_t *errs)
{
    mg_utls_t *U = calloc(1, sizeof(*U));
    if (U == NULL) {
        mg_config_errors_add(errs, "services: out of memory");
        return NULL;
    }
    bool ok = true;
    for (size_t i = 0; i < cfg->nservices; i++)
        ok = load_service(U, cfg, &cfg->services[i], errs) && ok;
    for (size_t i = 0; i < cfg->nupstreams; i++)
        ok = load_upstream(U, cfg, &cfg->upstreams[i], errs) && ok;
    if (!ok || U->ctxs == NULL) {
        for (size_t i = 0; i < cfg->nservices; i++)
            cfg->services[i].tls = NULL;
        for (size_t i = 0; i < cfg->nupstreams; i++)
            cfg->upstreams[i].probe_tls = NULL;
        mg_utls_free(U);
        return NULL;
    }
    return U;
}

void mg_utls_free(mg_utls_t *U)
{
    if (U == NULL) return;
    while (U->ctxs) {
        mg_utls_ctx_t *c = U->ctxs;
        U->ctxs = c->next;
        SSL_CTX_free(c->ctx);
        free(c);
    }
    X509_STORE_free(U->system);
    free(U);
}

/* ---- connections ---------------------------------------------------------------------------- */

void *mg_utls_new(const mg_utls_ctx_t *c, int fd, const char *name, mg_utls_cache_t *cache)
{
    SSL *ssl = c ? SSL_new(c->ctx) : NULL;
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1) goto fail;
    SSL_set_connect_state(ssl);
    bool verify = SSL_CTX_get_verify_mode(c->ctx) & SSL_VERIFY_PEER;
    if (name && *name) {
        char host[256];
        size_t len = strlen(name);
        if (name[0] == '[' && len > 2) /* "[v6]" as services and targets write it */
            snprintf(host, sizeof(host), "%.*s", (int)(len - 2), name + 1);
        else
            snprintf(host, sizeof(host), "%s", name);
        unsigned char a[16];
        bool ip = inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
        if (ip) { /* no SNI for an address (RFC 6066); the certificate must name it */
            if (verify && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) != 1) goto fail;
        } else {
            if (SSL_set_tlsext_host_name(ssl, host) != 1) goto fail;
            if (verify && SSL_set1_host(ssl, host) != 1) goto fail;
        }
    }
    if (cache) {
        SSL_set_app_data(ssl, cache);
        if (cache->sess && cache->ctx == c) SSL_set_session(ssl, cache->sess);
    }
    return ssl;
fail:
    SSL_free(ssl);
    ERR_clear_error();
    return NULL;
}

int mg_utls_handshake(void *p, int *want, char *why, size_t wlen)
{
    SSL *ssl = p;
    ERR_clear_error();
    errno = 0;
    int n = SSL_do_handshake(ssl);
    if (n == 1) return MG_OK;
    int e = SSL_get_error(ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        *want = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
        return MG_AGAIN;
    }
    long v = SSL_get_verify_result(ssl);
    if ((SSL_get_verify_mode(ssl) & SSL_VERIFY_PEER) && v != X509_V_OK) {
        snprintf(why, wlen, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    } else if (e == SSL_ERROR_SSL) {
        unsigned long err = ERR_peek_last_error();
        const char *r = err ? ERR_reason_error_string(err) : NULL;
        snprintf(why, wlen, "TLS handshake failed: %s", r ? r : "unknown error");
    } else {
        snprintf(why, wlen, "TLS handshake failed: %s",
                 errno ? strerror(errno) : "the backend closed the connection");
    }
    ERR_clear_error();
    return MG_ERROR;
}

void mg_utls_cache_clear(mg_utls_cache_t *c)
{
    if (c->sess) SSL_SESSION_free(c->sess);
    c->sess = NULL;
    c->ctx = NULL;
}
