/*
 * mg_utls.h — TLS from the gateway to backends: the client contexts of `https` services
 * (Kong 3.x's tls_verify, tls_verify_depth, ca_certificates, client_certificate) and of
 * `https` active health probes, built once at load; the non-blocking client handshake with
 * SNI, name verification and session resumption, shared by proxied traffic (mg_upstream.c)
 * and probes (mg_probe.c).
 */
#ifndef MG_UTLS_H
#define MG_UTLS_H

#include "mg_core.h"
#include "mg_config.h"

typedef struct mg_utls_s mg_utls_t;
/* One client context: a trust store (or none when verification is off), a depth, and maybe a
 * client certificate. Services with the same settings share one, so the keepalive pool of a
 * target they share can hand a connection of one to the other. */
typedef struct mg_utls_ctx_s mg_utls_ctx_t;

/* The one session a keepalive pool (a service's, or a target's) remembers for resumption:
 * the last resumable session a connection of `ctx` received. */
typedef struct {
    void *sess; /* SSL_SESSION *, NULL when none */
    const mg_utls_ctx_t *ctx;
} mg_utls_cache_t;

/*
 * Checks the TLS fields of every service and upstream against the entities they name
 * (`client_certificate` -> certificates, `ca_certificates` -> cfg->ca) and builds the
 * contexts: s->tls of each https service, up->probe_tls of each upstream with https probes.
 * Problems go to errs as "PATH: message" (e.g. `services[0].client_certificate: no
 * certificate has id 'x'`). Runs in the master after mg_ca_load and mg_tls_load. Returns the
 * owner of the contexts (NULL when there are none, or on error: errs->n grew).
 */
mg_utls_t *mg_utls_load(mg_config_t *cfg, mg_config_errors_t *errs);
void mg_utls_free(mg_utls_t *u);

/*
 * A client session for connected socket fd (SSL *, or NULL when OpenSSL fails): `name` is
 * sent as SNI unless it is an IP literal (RFC 6066) and, when the context verifies, the
 * certificate must match it (a host name, or the IP address). A session in `cache` made by
 * the same context is offered for resumption, and a new one is stored there when it arrives
 * (the cache must outlive the session: the keepalive pools' do).
 */
void *mg_utls_new(const mg_utls_ctx_t *ctx, int fd, const char *name, mg_utls_cache_t *cache);
/*
 * Advances the handshake of ssl. MG_OK when done (verified when the context verifies);
 * MG_AGAIN with *want = EV_READ or EV_WRITE; MG_ERROR with the reason in why (e.g.
 * "certificate verify failed: unable to get local issuer certificate", the X.509 verify
 * error when there is one, else OpenSSL's).
 */
int mg_utls_handshake(void *ssl, int *want, char *why, size_t wlen);
/* Drops the cached session (a worker's pools go away). */
void mg_utls_cache_clear(mg_utls_cache_t *c);

#endif
