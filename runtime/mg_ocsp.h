/*
 * mg_ocsp.h — OCSP stapling for the certificates of `ssl` listeners (settings ssl_stapling,
 * ssl_stapling_verify, ssl_stapling_responder). The master registers each certificate while
 * loading (mg_tls.c); the workers fetch responses through moongate.ocsp (Lua, on cosockets,
 * never blocking the loop), hand them to mg_ocsp_done, which verifies and installs them, and
 * share them through a private shared-memory zone so one worker fetches per period.
 */
#ifndef MG_OCSP_H
#define MG_OCSP_H

#include <stdbool.h>
#include <time.h>

#include <openssl/ocsp.h>
#include <openssl/ssl.h>

#include "mg_config.h"

typedef struct mg_ocsp_s mg_ocsp_t;

/* The stapling state of one loaded configuration; NULL when ssl_stapling is off. */
mg_ocsp_t *mg_ocsp_new(const mg_config_t *cfg);
void mg_ocsp_free(mg_ocsp_t *o);
/* Registers the leaf of a certificate entity used by ctx (where: "certificates[0].cert", for
 * warnings). Does nothing when the leaf names no responder (and none is configured); warns
 * and does nothing when its issuer is not the next certificate of the chain. */
void mg_ocsp_add(mg_ocsp_t *o, SSL_CTX *ctx, X509 *leaf, STACK_OF(X509) * chain, const char *where);
/* After every mg_ocsp_add, before fork: makes the shared zone. false when it cannot (logged;
 * stapling is then off). */
bool mg_ocsp_ready(mg_ocsp_t *o);

/* ---- worker side (mg_ffi_ocsp_*) ---------------------------------------------------------- */
/* Installs what other workers fetched, then claims the next certificate whose response is due:
 * MG_AGAIN with *idx, the responder URL and the DER request (valid until the next call); MG_OK
 * when nothing is due now; MG_DECLINED when nothing is stapled at all. */
int mg_ocsp_next(mg_ocsp_t *o, int *idx, const char **url, size_t *ulen, const unsigned char **req,
                 size_t *rlen);
/* The outcome of fetching idx: the HTTP status and body, or status 0 and err (a network
 * error). A valid response is installed and shared; anything else schedules a retry with
 * backoff and is logged once per failure streak. */
void mg_ocsp_done(mg_ocsp_t *o, int idx, int status, const unsigned char *body, size_t blen,
                  const char *err);

/* ---- pure helpers (unit-tested) ----------------------------------------------------------- */
/* The leaf's first http:// OCSP responder URL (Authority Information Access) copied into buf;
 * NULL when there is none (*other set when only non-http URLs were found). */
const char *mg_ocsp_responder(X509 *leaf, char *buf, size_t blen, bool *other);
/* Checks a DER OCSP response for `id`: status successful, signed by `issuer` or by a responder
 * it delegated to (signature and chain unless !verify), a status for id, thisUpdate/nextUpdate
 * around now (MG_OCSP_SKEW seconds of leeway). Returns V_OCSP_CERTSTATUS_GOOD or _REVOKED,
 * *expires set to nextUpdate (0 when absent); -1 with a reason in why. */
#define MG_OCSP_SKEW 300
int mg_ocsp_check(const unsigned char *der, size_t len, X509 *issuer, OCSP_CERTID *id, bool verify,
                  time_t *expires, char *why, size_t wlen);

#endif
