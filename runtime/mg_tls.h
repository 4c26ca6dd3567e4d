/*
 * mg_tls.h — TLS termination on `ssl` listeners: the `certificates` and `snis` entities,
 * validated at load and turned into one OpenSSL context per certificate; the server-side
 * handshake of a client connection; SNI selection; session tickets whose keys every worker
 * derives alike.
 */
#ifndef MG_TLS_H
#define MG_TLS_H

#include "mg_core.h"
#include "mg_config.h"
#include "mg_sock.h"

typedef struct mg_tls_s mg_tls_t;

/*
 * Validates cfg->certificates and cfg->snis and builds the contexts. Problems are added to
 * errs as "PATH: message" (e.g. `certificates[1].key: does not match the certificate`);
 * warnings (an expired certificate) are logged. Returns NULL when there is nothing to
 * terminate (no `ssl` listener) or on error (errs->n > 0). Called in the master before the
 * workers fork, so they share the session-ticket secret.
 */
mg_tls_t *mg_tls_load(const mg_config_t *cfg, mg_config_errors_t *errs);
void mg_tls_free(mg_tls_t *t);

/* Attaches a server-side TLS session to s (s->ssl); MG_ERROR when OpenSSL fails. */
int mg_tls_accept(const mg_tls_t *t, mg_sock_t *s);
/* Advances the handshake: MG_OK when done, MG_AGAIN with rready or wready cleared (the
 * event to wait for), MG_ERROR when it failed (logged at info). */
int mg_tls_handshake(mg_sock_t *s);
/* The OCSP stapling state (mg_ocsp.h), or NULL. */
struct mg_ocsp_s *mg_tls_ocsp(const mg_tls_t *t);
/* The server name the client sent (lower-case as received), or an empty string. */
mg_str_t mg_tls_sni(const mg_sock_t *s);
/* Sends close_notify when `notify` (best effort, never waits) and frees s->ssl. */
void mg_tls_close(mg_sock_t *s, bool notify);

#endif
