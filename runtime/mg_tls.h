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
struct ssl_ctx_st; /* SSL_CTX */

/*
 * Validates cfg->certificates and cfg->snis and builds the contexts. Problems are added to
 * errs as "PATH: message" (e.g. `certificates[1].key: does not match the certificate`);
 * warnings (an expired certificate) are logged. Returns NULL when there is nothing to
 * terminate (no `ssl` listener) or on error (errs->n > 0). Called in the master before the
 * workers fork, so they share the session-ticket secret.
 */
mg_tls_t *mg_tls_load(const mg_config_t *cfg, mg_config_errors_t *errs);
void mg_tls_free(mg_tls_t *t);

/* Puts the `certificates` entity with this id (cert, chain and key) into ctx, a client
 * context presenting it (mTLS to backends). MG_OK; MG_DECLINED when no certificate has that
 * id, MG_ERROR when it cannot be loaded; both with a message in why. */
int mg_tls_use_cert_id(const mg_config_t *cfg, const char *id, struct ssl_ctx_st *ctx, char *why,
                       size_t wlen);

/* Attaches a server-side TLS session to s (s->ssl); MG_ERROR when OpenSSL fails. */
int mg_tls_accept(const mg_tls_t *t, mg_sock_t *s);
/* Advances the handshake: MG_OK when done, MG_AGAIN with rready or wready cleared (the
 * event to wait for) or with `paused` set (a certificate handler waits: the socket must be
 * neither read nor written until paused is cleared and a read event fed to s->io), MG_ERROR
 * when it failed (logged at info). */
int mg_tls_handshake(mg_sock_t *s);
/* The OCSP stapling state (mg_ocsp.h), or NULL. */
struct mg_ocsp_s *mg_tls_ocsp(const mg_tls_t *t);
/* The server name the client sent (lower-case as received), or an empty string. */
mg_str_t mg_tls_sni(const mg_sock_t *s);
/* A connection's client certificate (SSL ex_data): the verdicts, kept for resumption, and
 * what the PDK reads, parsed on first use. */
typedef struct mg_tls_peer_s {
    uint32_t ok;      /* bit i: verifiers[i] accepted the chain */
    int err0;         /* verifiers[0]'s X509_V_ERR_* when it did not */
    bool parsed;      /* the strings below are filled */
    char *chain_pem;  /* leaf first; only the leaf after a resumption */
    char *subject_dn; /* RFC 2253, as nginx's $ssl_client_s_dn */
    char *issuer_dn;
    char *cn;     /* the first commonName of the subject, "" without one */
    char *sans;   /* "DNS:a.example\nURI:spiffe://x\nemail:a@b\nIP:10.0.0.1" in the order written */
    char *serial; /* hex */
    char *fingerprint; /* SHA-256, hex */
} mg_tls_peer_t;

/* The connection's client certificate, parsed on the first call and kept until the
 * connection closes; NULL when the client sent none (or out of memory). */
const mg_tls_peer_t *mg_tls_peer(const mg_sock_t *s);
/* nginx's $ssl_client_verify for the listener's CAs: "SUCCESS", "FAILED:<reason>" or "NONE"
 * (no certificate, or ssl_verify_client off). Static storage. */
const char *mg_tls_client_verify(const mg_tls_t *t, const mg_sock_t *s);
/* With ssl_verify_client on: NULL when the client's certificate verified, else the message
 * of the 400 to answer ("No required SSL certificate was sent", "The SSL certificate
 * error"). NULL for every other mode. */
const char *mg_tls_client_refused(const mg_tls_t *t, const mg_sock_t *s);
/* The verdict of the mtls-auth verifier whose key (CA ids joined by '\n', then "|partial"
 * when allow_partial_chain) is given: MG_OK verified, MG_DECLINED no certificate, MG_ERROR
 * refused (or no such verifier: *why says so). */
int mg_tls_peer_verdict(const mg_tls_t *t, const mg_sock_t *s, const char *key, size_t klen,
                        const char **why);

/* Sends close_notify when `notify` (best effort, never waits) and frees s->ssl. */
void mg_tls_close(mg_sock_t *s, bool notify);

#endif
