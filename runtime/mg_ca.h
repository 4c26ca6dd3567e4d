/*
 * mg_ca.h — the `ca_certificates` entity (Kong 3.x): trusted CA certificates, validated once
 * at load, that other entities name by id to verify peers: `ssl` listeners verifying client
 * certificates, the mtls-auth plugin, services verifying their upstream's certificate.
 */
#ifndef MG_CA_H
#define MG_CA_H

#include <openssl/bio.h>
#include <openssl/x509.h>

#include "mg_config.h"

typedef struct mg_ca_set_s mg_ca_set_t;

/* A validated list of references into a set: positions of the CAs, in the order written. */
typedef struct {
    int *idx; /* malloc'd; NULL when n == 0 */
    size_t n;
} mg_ca_refs_t;

/*
 * Validates cfg->ca_certificates ([{id, cert, cert_digest?, tags?}], `cert` PEM text or the
 * path of a PEM file) and parses each certificate once. Problems are added to errs as
 * "PATH: message": unknown fields, bad PEM, more than one certificate in `cert`, an expired
 * certificate, a certificate without the CA basic constraint, a `cert_digest` that is not the
 * certificate's SHA-256, duplicate ids, the same certificate twice. Returns an empty set (never
 * NULL unless out of memory, which is reported) when the list is absent; the caller owns it
 * (mg_ca_free).
 */
mg_ca_set_t *mg_ca_load(const mg_config_t *cfg, mg_config_errors_t *errs);
void mg_ca_free(mg_ca_set_t *set);

size_t mg_ca_count(const mg_ca_set_t *set);
/* The position of the CA with this id, or -1. */
int mg_ca_find(const mg_ca_set_t *set, const char *id);
/* The certificate at position i (owned by the set) or NULL. */
X509 *mg_ca_cert(const mg_ca_set_t *set, size_t i);

/*
 * Resolves `v`, a list of CA ids as written in an entity ("id" strings, or {id: ...} maps as
 * Kong exports them), at `path` (e.g. "services[0].ca_certificates"). Every problem is added
 * to errs ("PATH[i]: no ca_certificate has id 'x'", "PATH: must be a list of
 * ca_certificate ids", duplicates). `required` makes an absent or empty list an error.
 * On success returns true and fills out (free with mg_ca_refs_free); on failure out is empty.
 */
bool mg_ca_refs(const mg_ca_set_t *set, const mg_value_t *v, const char *path, bool required,
                mg_config_errors_t *errs, mg_ca_refs_t *out);
/* The same for ids given as C strings (plugin configs validated in Lua). */
bool mg_ca_refs_ids(const mg_ca_set_t *set, const char *const *ids, size_t n, const char *path,
                    mg_config_errors_t *errs, mg_ca_refs_t *out);
void mg_ca_refs_free(mg_ca_refs_t *refs);

/* A new X509_STORE trusting exactly the referenced CAs (the caller frees it), NULL when out
 * of memory. Verification flags (depth, partial chains, purpose) are the caller's. */
X509_STORE *mg_ca_store(const mg_ca_set_t *set, const mg_ca_refs_t *refs);
/* The subject names of the referenced CAs, for a CertificateRequest (caller frees with
 * sk_X509_NAME_pop_free(.., X509_NAME_free)); NULL when out of memory. */
STACK_OF(X509_NAME) * mg_ca_names(const mg_ca_set_t *set, const mg_ca_refs_t *refs);

/*
 * A BIO over PEM: `v` itself when it contains "-----BEGIN", else the file it names
 * (relative paths against cfg->prefix). NULL with a message in `why` ("cannot read
 * '/x/y.pem': No such file or directory"). Shared with mg_tls.c's certificates.
 */
BIO *mg_pem_bio(const mg_config_t *cfg, const char *v, char *why, size_t wlen);

/* The reason of OpenSSL's last queued error (for messages), and an empty queue afterwards. */
const char *mg_ssl_reason(void);
/* A PEM password callback that never prompts: encrypted keys are refused, not asked for. */
int mg_pem_no_password(char *buf, int size, int rwflag, void *u);

#endif
