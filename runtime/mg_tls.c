/*
 * mg_tls.c — TLS termination: the `certificates` and `snis` entities (Kong 3.x fields), one
 * SSL_CTX per certificate, the server name lookup that picks one, the handshake of a client
 * connection on the worker's loop, and stateless session tickets.
 *
 * Certificates. `cert`/`key` (and the optional `cert_alt`/`key_alt` pair of the other key
 * type, e.g. ECDSA beside RSA) hold PEM text when the value contains "-----BEGIN", else the
 * path of a PEM file (relative paths against the config's prefix). `cert` may carry the
 * chain after the leaf. Load refuses unreadable files, bad PEM, encrypted keys, a key that
 * does not match its certificate, and two pairs of the same key type; an expired or not yet
 * valid certificate is only a warning (refusing to start would take every other domain
 * down with it).
 *
 * Selection. SNI names come from a certificate's nested `snis` list and from top-level
 * `snis` entities ({name, certificate: {id}}). A client's server name is looked up exactly,
 * then as a leftmost wildcard ("*.example.com" covers one label), then as a rightmost one
 * ("example.*"). Without a match (or without SNI) the default certificate answers: the
 * first certificate that no SNI names. With no default the handshake fails with an
 * unrecognized_name alert, rather than showing some unrelated domain's certificate.
 *
 * Certificate phase: at the ClientHello, global plugins with a `certificate` handler run
 * (mg_lua_certificate; no request) in a coroutine: they may sleep and use cosockets, and the
 * handshake pauses meanwhile (client_hello_cb says why there). One may hand over a PEM pair
 * through moongate.tls.set_cert: it replaces whatever the SNI lookup chose (also when nothing
 * matched), parsed once and cached by content. A handler that raises fails the handshake
 * (internal_error alert); one still waiting at tls_handshake_timeout fails it too.
 *
 * Policy: TLS 1.2 and 1.3 only, Mozilla's intermediate cipher list in server order, no
 * renegotiation, no compression, ALPN http/1.1 only (a client offering only other
 * protocols gets no_application_protocol, as nginx does).
 *
 * Client certificates (mTLS). With `ssl_verify_client: optional | on` every context asks for
 * a client certificate and names `ssl_client_ca_certificates` in its CertificateRequest; an
 * mtls-auth plugin anywhere makes it ask too (optionally) whatever the setting, as Kong
 * does. The handshake never fails over a certificate: OpenSSL's own verification is
 * replaced (cert_verify_cb) by ours, which checks the chain once against every "verifier"
 * (the listener's CAs, and each distinct CA list of the mtls-auth plugins) and keeps one bit
 * per verifier on the connection. `on` turns an unverified client away at its first request
 * (400, as nginx), `optional` lets it through; plugins read the bits. The bits travel in the
 * session ticket (ticket appdata), so a resumed session keeps its verdicts without the
 * chain, which tickets do not carry. The certificate's names and PEM are parsed once per
 * connection, on first use (mg_tls_peer).
 *
 * Session tickets: the master draws a random secret at load, before forking; every
 * ticket key is HMAC(secret, label || hour number), so all workers agree without sharing
 * memory, keys rotate every hour, and tickets of the previous hour are still accepted (and
 * renewed). A reload draws a new secret.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "mg_ca.h"
#include "mg_log.h"
#include "mg_lua.h"
#include "mg_ocsp.h"
#include "mg_request.h"
#include "mg_tls.h"

#define CIPHERS_INTERMEDIATE                                                                       \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"                                   \
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
#define TICKET_PERIOD 3600   /* seconds a ticket key encrypts new tickets */
#define MAX_VERIFIERS 32     /* one bit each in a connection's verdicts */
#define APPDATA_MAGIC 0x6d67 /* "mg": ticket appdata holding verdicts */

typedef struct {
    char *name; /* lower-case; "*.example.com" or "example.*" for wildcards */
    size_t cert;
    char *path; /* where it was declared, for duplicate messages */
} sni_t;

/* A trust store client certificates are checked against: [0] the listener's, the others
 * one per distinct (CA list, allow_partial_chain) of the mtls-auth plugins. */
typedef struct {
    X509_STORE *store; /* NULL: [0] with ssl_verify_client off */
    char *key;         /* the CA ids joined by '\n', then "|partial" when partial chains count */
} verifier_t;

struct mg_tls_s {
    SSL_CTX **ctxs; /* one per certificate entity */
    size_t nctxs;
    SSL_CTX *base; /* new connections start here: the default's, or one without any */
    SSL_CTX *default_ctx;
    sni_t *snis; /* sorted by name */
    size_t nsnis, capsnis;
    unsigned char secret[32];
    int verify_mode; /* MG_VERIFY_* */
    bool ask_cert;   /* contexts send a CertificateRequest */
    verifier_t verifiers[MAX_VERIFIERS];
    size_t nverifiers;
    STACK_OF(X509_NAME) * ca_names; /* named in the CertificateRequest */
    mg_ocsp_t *ocsp;                /* stapling (mg_ocsp.c); NULL when ssl_stapling is off */
};

typedef struct {
    const mg_config_t *cfg;
    mg_config_errors_t *errs;
    mg_tls_t *t;
} load_t;

/* ---- small helpers ------------------------------------------------------------------------ */

/* ---- loading PEM ------------------------------------------------------------------------- */

/* A BIO over the PEM text, or over the file the value names. NULL with a message in why. */
static BIO *pem_bio(load_t *L, const char *v, char *why, size_t wlen)
{
    return mg_pem_bio(L->cfg, v, why, wlen);
}

typedef struct {
    X509 *leaf;
    STACK_OF(X509) * chain;
    EVP_PKEY *key;
} pair_t;

static void pair_free(pair_t *p)
{
    X509_free(p->leaf);
    sk_X509_pop_free(p->chain, X509_free);
    EVP_PKEY_free(p->key);
    memset(p, 0, sizeof(*p));
}

static const char *key_type(const EVP_PKEY *k)
{
    switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_RSA:
        return "RSA";
    case EVP_PKEY_EC:
        return "ECDSA";
    case EVP_PKEY_ED25519:
        return "Ed25519";
    default:
        return "other";
    }
}

static void warn_validity(const char *path, const X509 *x)
{
    char when[64] = "?";
    const ASN1_TIME *na = X509_get0_notAfter(x), *nb = X509_get0_notBefore(x);
    BIO *m = BIO_new(BIO_s_mem());
    if (X509_cmp_current_time(na) < 0) {
        if (m && ASN1_TIME_print(m, na)) when[BIO_read(m, when, sizeof(when) - 1)] = '\0';
        mg_log_warn("%s: the certificate expired on %s", path, when);
    } else if (X509_cmp_current_time(nb) > 0) {
        if (m && ASN1_TIME_print(m, nb)) when[BIO_read(m, when, sizeof(when) - 1)] = '\0';
        mg_log_warn("%s: the certificate is not valid before %s", path, when);
    }
    BIO_free(m);
}

/* Reads certificates[i].<ck> and .<kk> into p; false after reporting a problem. */
static bool load_pair(load_t *L, const mg_value_t *ent, const char *path, const char *ck,
                      const char *kk, pair_t *p)
{
    char why[4400];
    const mg_value_t *cv = mg_value_get(ent, ck), *kv = mg_value_get(ent, kk);
    bool ok = true;
    if (cv == NULL || cv->kind != MG_VAL_STRING) {
        mg_config_errors_add(L->errs, "%s.%s: %s", path, ck,
                             cv ? "must be a string (PEM text or a file path)" : "required");
        ok = false;
    }
    if (kv == NULL || kv->kind != MG_VAL_STRING) {
        mg_config_errors_add(L->errs, "%s.%s: %s", path, kk,
                             kv ? "must be a string (PEM text or a file path)" : "required");
        ok = false;
    }
    if (!ok) return false;

    BIO *b = pem_bio(L, cv->str, why, sizeof(why));
    if (b == NULL) {
        mg_config_errors_add(L->errs, "%s.%s: %s", path, ck, why);
        ok = false;
    } else {
        p->leaf = PEM_read_bio_X509(b, NULL, mg_pem_no_password, NULL);
        if (p->leaf == NULL) {
            mg_config_errors_add(L->errs, "%s.%s: invalid PEM certificate (%s)", path, ck,
                                 mg_ssl_reason());
            ok = false;
        } else {
            p->chain = sk_X509_new_null();
            X509 *x;
            while (p->chain && (x = PEM_read_bio_X509(b, NULL, mg_pem_no_password, NULL)) != NULL)
                sk_X509_push(p->chain, x);
            ERR_clear_error(); /* the end of the text */
        }
        BIO_free(b);
    }
    b = pem_bio(L, kv->str, why, sizeof(why));
    if (b == NULL) {
        mg_config_errors_add(L->errs, "%s.%s: %s", path, kk, why);
        ok = false;
    } else {
        p->key = PEM_read_bio_PrivateKey(b, NULL, mg_pem_no_password, NULL);
        if (p->key == NULL) {
            mg_config_errors_add(L->errs, "%s.%s: invalid PEM private key (%s)", path, kk,
                                 mg_ssl_reason());
            ok = false;
        }
        BIO_free(b);
    }
    if (ok && X509_check_private_key(p->leaf, p->key) != 1) {
        ERR_clear_error();
        mg_config_errors_add(L->errs, "%s.%s: does not match the certificate in '%s'", path, kk,
                             ck);
        ok = false;
    }
    if (ok) {
        char where[300];
        snprintf(where, sizeof(where), "%s.%s", path, ck);
        warn_validity(where, p->leaf);
    }
    if (!ok) pair_free(p);
    return ok;
}

/* ---- SNI names ------------------------------------------------------------------------------ */

/* Lower-cases a server name in place (a trailing dot dropped) and checks its form: labels
 * of letters, digits and '-', with one '*' only as the whole leftmost or rightmost label. */
static const char *check_sni(char *s)
{
    size_t n = strlen(s);
    if (n > 0 && s[n - 1] == '.') s[--n] = '\0';
    if (n == 0 || n > 253) return "must be a host name of 1 to 253 characters";
    unsigned char tmp[16];
    if (inet_pton(AF_INET, s, tmp) == 1 || inet_pton(AF_INET6, s, tmp) == 1)
        return "must be a host name, not an IP address";
    size_t stars = 0;
    for (size_t i = 0; i < n; i++) {
        s[i] = (char)tolower((unsigned char)s[i]);
        char ch = s[i];
        if (ch == '*') {
            stars++;
            continue;
        }
        if (!(isalnum((unsigned char)ch) || ch == '-' || ch == '.' || ch == '_'))
            return "invalid character in a host name";
    }
    if (strstr(s, "..") || s[0] == '.') return "empty label in a host name";
    if (stars > 1) return "only one wildcard is allowed";
    if (stars == 1) {
        bool left = n > 2 && s[0] == '*' && s[1] == '.';
        bool right = n > 2 && s[n - 1] == '*' && s[n - 2] == '.';
        if (!left && !right)
            return "the wildcard must be the whole leftmost or rightmost label, e.g. "
                   "\"*.example.com\"";
    }
    return NULL;
}

static bool add_sni(load_t *L, const mg_value_t *v, size_t cert, const char *path)
{
    mg_tls_t *t = L->t;
    if (v == NULL || v->kind != MG_VAL_STRING) {
        mg_config_errors_add(L->errs, "%s: %s", path, v ? "must be a string" : "required");
        return false;
    }
    char *name = strdup(v->str), *where = strdup(path);
    const char *why = name ? check_sni(name) : "out of memory";
    if (why) {
        mg_config_errors_add(L->errs, "%s: %s", path, why);
        free(name);
        free(where);
        return false;
    }
    for (size_t i = 0; i < t->nsnis; i++) {
        if (strcmp(t->snis[i].name, name) == 0) {
            mg_config_errors_add(L->errs, "%s: '%s' is already declared at %s", path, name,
                                 t->snis[i].path);
            free(name);
            free(where);
            return false;
        }
    }
    if (t->nsnis == t->capsnis) {
        size_t cap = t->capsnis ? t->capsnis * 2 : 16;
        sni_t *n2 = realloc(t->snis, cap * sizeof(*n2));
        if (n2 == NULL) {
            free(name);
            free(where);
            return false;
        }
        t->snis = n2;
        t->capsnis = cap;
    }
    t->snis[t->nsnis++] = (sni_t){name, cert, where};
    return true;
}

static int sni_cmp(const void *a, const void *b)
{
    return strcmp(((const sni_t *)a)->name, ((const sni_t *)b)->name);
}

static SSL_CTX *lookup(const mg_tls_t *t, const char *key)
{
    sni_t k = {(char *)key, 0, NULL};
    if (t->nsnis == 0) return NULL;
    const sni_t *hit = bsearch(&k, t->snis, t->nsnis, sizeof(sni_t), sni_cmp);
    return hit ? t->ctxs[hit->cert] : NULL;
}

/* Exact name, then "*.<rest>", then "<head>.*"; NULL when nothing matches. */
static SSL_CTX *find_ctx(const mg_tls_t *t, const char *sni)
{
    char name[256];
    size_t n = strlen(sni);
    if (n == 0 || n >= sizeof(name) - 2) return NULL;
    for (size_t i = 0; i < n; i++)
        name[i] = (char)tolower((unsigned char)sni[i]);
    if (name[n - 1] == '.') n--;
    name[n] = '\0';
    SSL_CTX *ctx = lookup(t, name);
    if (ctx) return ctx;
    char alt[258];
    const char *dot = strchr(name, '.');
    if (dot) {
        snprintf(alt, sizeof(alt), "*%s", dot);
        if ((ctx = lookup(t, alt)) != NULL) return ctx;
        const char *last = strrchr(name, '.');
        snprintf(alt, sizeof(alt), "%.*s.*", (int)(last - name), name);
        if ((ctx = lookup(t, alt)) != NULL) return ctx;
    }
    return NULL;
}

/* ---- callbacks ---------------------------------------------------------------------------- */

/* PEM pairs the certificate phase handed over, parsed once: keyed by SHA-256 of both
 * texts, a small per-process table replaced round-robin. */
#define PLUGIN_CERTS 32
static struct {
    unsigned char id[32];
    X509 *leaf;
    STACK_OF(X509) * chain;
    EVP_PKEY *key;
} plugin_certs[PLUGIN_CERTS];
static unsigned plugin_certs_next;

/* Finds (or parses and caches) the pair a certificate handler handed over: *(int *)ud gets
 * its slot in plugin_certs, which servername_cb puts on the connection. */
static int pick_plugin_cert(void *ud, mg_str_t cert, mg_str_t key)
{
    unsigned char id[32];
    unsigned int idlen = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool hashed = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) &&
                  EVP_DigestUpdate(md, cert.data, cert.len) && EVP_DigestUpdate(md, "\0", 1) &&
                  EVP_DigestUpdate(md, key.data, key.len) && EVP_DigestFinal_ex(md, id, &idlen);
    EVP_MD_CTX_free(md);
    if (!hashed) return MG_ERROR;
    int slot = -1;
    for (int i = 0; i < PLUGIN_CERTS && slot < 0; i++)
        if (plugin_certs[i].leaf && memcmp(plugin_certs[i].id, id, 32) == 0) slot = i;
    if (slot < 0) {
        pair_t p = {0};
        BIO *b = BIO_new_mem_buf(cert.data, (int)cert.len);
        p.leaf = b ? PEM_read_bio_X509(b, NULL, mg_pem_no_password, NULL) : NULL;
        X509 *x;
        p.chain = sk_X509_new_null();
        while (p.leaf && p.chain && (x = PEM_read_bio_X509(b, NULL, mg_pem_no_password, NULL)))
            sk_X509_push(p.chain, x);
        BIO_free(b);
        ERR_clear_error();
        b = BIO_new_mem_buf(key.data, (int)key.len);
        p.key = b ? PEM_read_bio_PrivateKey(b, NULL, mg_pem_no_password, NULL) : NULL;
        BIO_free(b);
        if (p.leaf == NULL || p.key == NULL || X509_check_private_key(p.leaf, p.key) != 1) {
            mg_log_err("moongate.tls.set_cert: %s", p.leaf == NULL  ? "invalid PEM certificate"
                                                    : p.key == NULL ? "invalid PEM private key"
                                                                    : "the key does not match");
            ERR_clear_error();
            pair_free(&p);
            return MG_ERROR;
        }
        slot = (int)(plugin_certs_next++ % PLUGIN_CERTS);
        X509_free(plugin_certs[slot].leaf);
        sk_X509_pop_free(plugin_certs[slot].chain, X509_free);
        EVP_PKEY_free(plugin_certs[slot].key);
        memcpy(plugin_certs[slot].id, id, 32);
        plugin_certs[slot].leaf = p.leaf;
        plugin_certs[slot].chain = p.chain;
        plugin_certs[slot].key = p.key;
    }
    *(int *)ud = slot;
    return MG_OK;
}

/* Serves plugin_certs[slot]: it replaces every certificate the SNI's context brought. */
static bool use_plugin_cert(SSL *ssl, int slot)
{
    SSL_certs_clear(ssl);
    bool ok = SSL_use_certificate(ssl, plugin_certs[slot].leaf) == 1;
    STACK_OF(X509) *chain = plugin_certs[slot].chain;
    for (int i = 0; ok && chain && i < sk_X509_num(chain); i++)
        ok = SSL_add1_chain_cert(ssl, sk_X509_value(chain, i)) == 1;
    ok = ok && SSL_use_PrivateKey(ssl, plugin_certs[slot].key) == 1;
    if (!ok) mg_log_err("moongate.tls.set_cert: cannot use the certificate (%s)", mg_ssl_reason());
    return ok;
}

/*
 * The certificate phase runs in the ClientHello callback, not in the servername callback
 * (which cannot pause a handshake) nor in a cert callback (SSL_CTX_set_cert_cb):
 * - it can pause: SSL_CLIENT_HELLO_RETRY makes SSL_do_handshake return
 *   SSL_ERROR_WANT_CLIENT_HELLO_CB with the ClientHello kept, and the next call runs the
 *   callback again, which then takes the finished run's outcome;
 * - it comes first, before the session ticket is decrypted, the server name is processed and
 *   the client-certificate and OCSP-status machinery runs, so none of those callbacks ever
 *   sees a paused connection; servername_cb then switches to the SNI's context and puts the
 *   plugin's pair on the connection after the switch (SSL_set_SSL_CTX replaces the
 *   connection's certificates, so the order matters);
 * - its failure takes an alert, so a handler that raises still answers internal_error and a
 *   name nobody serves still unrecognized_name (a cert callback can only say internal_error);
 * - it runs for every handshake, resumed ones included, as the phase always did (a cert
 *   callback is skipped on resumption).
 * The outcome travels to servername_cb, which the same SSL_do_handshake call runs right
 * after, in `picked` (no allocation on the path where no handler waits). A run that waits is
 * kept in the connection's ex_data slot `cert_run_index`, whose free function drops it when
 * the connection closes first (client gone, tls_handshake_timeout).
 */
static struct {
    const SSL *ssl;
    int slot; /* in plugin_certs; -1: the handlers chose none */
} picked;
static int cert_run_index = -1;

static void cert_run_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                             void *argp)
{
    if (ptr) mg_lua_cert_cancel(ptr);
}

/* A waiting run finished: the handshake goes on from the loop (the socket's watcher). */
static void cert_run_done(void *arg)
{
    mg_sock_t *s = arg;
    s->paused = 0;
    ev_feed_event(mg_worker.loop, &s->io, EV_READ);
}

/* The ClientHello's server name, read as OpenSSL's own parser will (a malformed extension
 * fails the handshake later anyway), into buf; NULL without one. */
static const char *hello_sni(SSL *ssl, char *buf, size_t size)
{
    const unsigned char *p;
    size_t len;
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len) != 1 || len < 5)
        return NULL;
    size_t list = (size_t)p[0] << 8 | p[1], n = (size_t)p[3] << 8 | p[4];
    if (list + 2 != len || p[2] != TLSEXT_NAMETYPE_host_name || n == 0 || n + 5 > len ||
        n >= size || memchr(p + 5, 0, n))
        return NULL;
    memcpy(buf, p + 5, n);
    buf[n] = '\0';
    return buf;
}

static int client_hello_cb(SSL *ssl, int *al, void *arg)
{
    picked.ssl = ssl;
    picked.slot = -1;
    if (mg_lua == NULL || !(mg_lua_global_mask(mg_lua) & MG_PHASE_CERTIFICATE))
        return SSL_CLIENT_HELLO_SUCCESS; /* no plugin has the phase */
    mg_lua_cert_t *run = SSL_get_ex_data(ssl, cert_run_index);
    if (run) {
        if (mg_lua_cert_waiting(run)) return SSL_CLIENT_HELLO_RETRY;
        SSL_set_ex_data(ssl, cert_run_index, NULL);
    } else {
        char buf[256];
        int rc = mg_lua_certificate(hello_sni(ssl, buf, sizeof(buf)), &run, cert_run_done,
                                    SSL_get_app_data(ssl));
        if (rc == MG_DECLINED) return SSL_CLIENT_HELLO_SUCCESS;
        if (rc == MG_AGAIN) {
            if (SSL_set_ex_data(ssl, cert_run_index, run) == 1) return SSL_CLIENT_HELLO_RETRY;
            mg_lua_cert_cancel(run);
            run = NULL;
        }
        if (run == NULL) {
            *al = SSL_AD_INTERNAL_ERROR;
            return SSL_CLIENT_HELLO_ERROR;
        }
    }
    if (mg_lua_cert_take(run, pick_plugin_cert, &picked.slot) == MG_ERROR) {
        *al = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    return SSL_CLIENT_HELLO_SUCCESS;
}

/* SNI lookup, then the pair the certificate phase chose, if any. */
static int servername_cb(SSL *ssl, int *al, void *arg)
{
    const mg_tls_t *t = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    SSL_CTX *ctx = name ? find_ctx(t, name) : NULL;
    if (ctx == NULL) ctx = t->default_ctx;
    if (ctx && ctx != SSL_get_SSL_CTX(ssl)) SSL_set_SSL_CTX(ssl, ctx);
    int slot = picked.ssl == ssl ? picked.slot : -1;
    picked.ssl = NULL;
    if (slot >= 0 && !use_plugin_cert(ssl, slot)) {
        *al = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    if (ctx == NULL && slot < 0) {
        *al = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char ours[] = "\x08http/1.1";
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, ours, sizeof(ours) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

typedef struct {
    long period; /* -1 = not computed */
    unsigned char name[16], aes[32], mac[32];
} tkey_t;

static void derive(const mg_tls_t *t, long period, tkey_t *k)
{
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int olen;
    char msg[64];
    int n = snprintf(msg, sizeof(msg), "moongate ticket name %ld", period);
    HMAC(EVP_sha256(), t->secret, sizeof(t->secret), (unsigned char *)msg, (size_t)n, out, &olen);
    memcpy(k->name, out, 16);
    n = snprintf(msg, sizeof(msg), "moongate ticket aes %ld", period);
    HMAC(EVP_sha256(), t->secret, sizeof(t->secret), (unsigned char *)msg, (size_t)n, k->aes,
         &olen);
    n = snprintf(msg, sizeof(msg), "moongate ticket mac %ld", period);
    HMAC(EVP_sha256(), t->secret, sizeof(t->secret), (unsigned char *)msg, (size_t)n, k->mac,
         &olen);
    k->period = period;
}

/* The key of `period`, from a two-entry per-process cache (current and previous hour). */
static const tkey_t *ticket_key(const mg_tls_t *t, long period)
{
    static const mg_tls_t *owner;
    static tkey_t cache[2] = {{.period = -1}, {.period = -1}};
    if (owner != t) {
        cache[0].period = cache[1].period = -1;
        owner = t;
    }
    tkey_t *k = &cache[period & 1];
    if (k->period != period) derive(t, period, k);
    return k;
}

static int set_mac(EVP_MAC_CTX *hctx, const tkey_t *k)
{
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->mac, 32);
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    return EVP_MAC_CTX_set_params(hctx, params);
}

static int ticket_cb(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *ectx,
                     EVP_MAC_CTX *hctx, int enc)
{
    const mg_tls_t *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    long now = (long)(time(NULL) / TICKET_PERIOD);
    if (enc) {
        const tkey_t *k = ticket_key(t, now);
        memcpy(name, k->name, 16);
        if (RAND_bytes(iv, 16) <= 0) return -1;
        if (!EVP_EncryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k->aes, iv)) return -1;
        return set_mac(hctx, k) ? 1 : -1;
    }
    for (long age = 0; age < 2; age++) {
        const tkey_t *k = ticket_key(t, now - age);
        if (memcmp(name, k->name, 16) != 0) continue;
        if (!EVP_DecryptInit_ex(ectx, EVP_aes_256_cbc(), NULL, k->aes, iv)) return -1;
        if (!set_mac(hctx, k)) return -1;
        /* 2: valid, and issue a fresh ticket: under the current key when this one is the
         * previous hour's, and always in TLS 1.3, where OpenSSL would otherwise send none
         * after a resumption and its clients, which use a ticket once (RFC 8446 C.4),
         * would fall back to a full handshake every other connection */
        return age == 0 && SSL_version(ssl) != TLS1_3_VERSION ? 1 : 2;
    }
    return 0; /* unknown or expired key: a full handshake */
}

/* ---- client certificates -------------------------------------------------------------- */

static int peer_index = -1; /* SSL ex_data slot of a connection's mg_tls_peer_t */

static void peer_free_strings(mg_tls_peer_t *p)
{
    free(p->chain_pem);
    free(p->subject_dn);
    free(p->issuer_dn);
    free(p->cn);
    free(p->sans);
    free(p->serial);
    free(p->fingerprint);
}

static void peer_ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                         void *argp)
{
    mg_tls_peer_t *p = ptr;
    if (p == NULL) return;
    peer_free_strings(p);
    free(p);
}

static mg_tls_peer_t *peer_new(SSL *ssl)
{
    mg_tls_peer_t *p = SSL_get_ex_data(ssl, peer_index);
    if (p) return p;
    p = calloc(1, sizeof(*p));
    if (p && SSL_set_ex_data(ssl, peer_index, p) != 1) {
        free(p);
        p = NULL;
    }
    return p;
}

/* Checks leaf (+ untrusted chain) against one verifier; its X509_V_ERR_* in *err. */
static bool verify_with(const verifier_t *v, X509 *leaf, STACK_OF(X509) * chain, int *err)
{
    *err = X509_V_ERR_UNSPECIFIED;
    if (v->store == NULL) return false;
    X509_STORE_CTX *vc = X509_STORE_CTX_new();
    bool ok =
        vc && X509_STORE_CTX_init(vc, v->store, leaf, chain) == 1 && X509_verify_cert(vc) == 1;
    if (vc) *err = ok ? X509_V_OK : X509_STORE_CTX_get_error(vc);
    X509_STORE_CTX_free(vc);
    ERR_clear_error();
    return ok;
}

/* Replaces OpenSSL's verification of a client's chain: one verdict per verifier, kept on the
 * connection; the handshake goes on whatever they are. */
static int cert_verify_cb(X509_STORE_CTX *xs, void *arg)
{
    const mg_tls_t *t = arg;
    SSL *ssl = X509_STORE_CTX_get_ex_data(xs, SSL_get_ex_data_X509_STORE_CTX_idx());
    X509 *leaf = X509_STORE_CTX_get0_cert(xs);
    STACK_OF(X509) *chain = X509_STORE_CTX_get0_untrusted(xs);
    mg_tls_peer_t *p = ssl ? peer_new(ssl) : NULL;
    if (p == NULL || leaf == NULL) return 0; /* out of memory: fail the handshake */
    p->ok = 0;
    p->err0 = X509_V_ERR_UNSPECIFIED;
    for (size_t i = 0; i < t->nverifiers; i++) {
        int err;
        if (verify_with(&t->verifiers[i], leaf, chain, &err)) p->ok |= 1u << i;
        if (i == 0) p->err0 = err;
    }
    X509_STORE_CTX_set_error(xs, X509_V_OK);
    return 1;
}

/* A new ticket carries the connection's verdicts (its chain is not in the ticket). */
static int ticket_gen_cb(SSL *ssl, void *arg)
{
    const mg_tls_peer_t *p = SSL_get_ex_data(ssl, peer_index);
    SSL_SESSION *sess = SSL_get0_session(ssl);
    if (p == NULL || sess == NULL) return 1;
    uint32_t data[3] = {APPDATA_MAGIC, p->ok, (uint32_t)p->err0};
    return SSL_SESSION_set1_ticket_appdata(sess, data, sizeof(data));
}

/* A resumed session gets its verdicts back from the ticket; OpenSSL's decision stands. */
static SSL_TICKET_RETURN ticket_dec_cb(SSL *ssl, SSL_SESSION *sess, const unsigned char *name,
                                       size_t nlen, SSL_TICKET_STATUS status, void *arg)
{
    switch (status) {
    case SSL_TICKET_SUCCESS:
    case SSL_TICKET_SUCCESS_RENEW: {
        void *data = NULL;
        size_t len = 0;
        uint32_t v[3];
        if (SSL_SESSION_get0_ticket_appdata(sess, &data, &len) == 1 && len == sizeof(v)) {
            memcpy(v, data, sizeof(v));
            mg_tls_peer_t *p = v[0] == APPDATA_MAGIC ? peer_new(ssl) : NULL;
            if (p) {
                p->ok = v[1];
                p->err0 = (int)v[2];
            }
        }
        return status == SSL_TICKET_SUCCESS ? SSL_TICKET_RETURN_USE : SSL_TICKET_RETURN_USE_RENEW;
    }
    case SSL_TICKET_EMPTY:
    case SSL_TICKET_NO_DECRYPT:
        return SSL_TICKET_RETURN_IGNORE_RENEW;
    default:
        return SSL_TICKET_RETURN_ABORT;
    }
}

/* Joins ids with '\n', then "|partial": the key mtls-auth's handler computes alike. */
static char *verifier_key(const char *const *ids, size_t n, bool partial)
{
    size_t len = 16;
    for (size_t i = 0; i < n; i++)
        len += strlen(ids[i]) + 1;
    char *k = malloc(len), *o = k;
    if (k == NULL) return NULL;
    for (size_t i = 0; i < n; i++)
        o += sprintf(o, "%s%s", i ? "\n" : "", ids[i]);
    strcpy(o, partial ? "|partial" : "");
    return k;
}

/* Builds verifier `slot` from refs; false when out of memory (reported). */
static bool set_verifier(load_t *L, size_t slot, const mg_ca_refs_t *refs, char *key, int depth,
                         bool partial, const char *path)
{
    verifier_t *v = &L->t->verifiers[slot];
    v->key = key;
    v->store = mg_ca_store(L->cfg->ca, refs);
    if (v->key == NULL || v->store == NULL) {
        mg_config_errors_add(L->errs, "%s: out of memory", path);
        return false;
    }
    /* chain, validity and the clientAuth usage (an extendedKeyUsage without it is refused) */
    X509_STORE_set_purpose(v->store, X509_PURPOSE_SSL_CLIENT);
    if (depth >= 0) X509_STORE_set_depth(v->store, depth);
    if (partial) X509_STORE_set_flags(v->store, X509_V_FLAG_PARTIAL_CHAIN);
    return true;
}

/* Adds the CA names of refs to the CertificateRequest list (once each). */
static void add_ca_names(load_t *L, const mg_ca_refs_t *refs)
{
    STACK_OF(X509_NAME) *names = mg_ca_names(L->cfg->ca, refs);
    if (L->t->ca_names == NULL) L->t->ca_names = sk_X509_NAME_new_null();
    for (int i = 0; names && i < sk_X509_NAME_num(names); i++) {
        X509_NAME *nm = sk_X509_NAME_value(names, i);
        bool seen = false;
        for (int j = 0; L->t->ca_names && j < sk_X509_NAME_num(L->t->ca_names) && !seen; j++)
            seen = X509_NAME_cmp(nm, sk_X509_NAME_value(L->t->ca_names, j)) == 0;
        if (!seen && L->t->ca_names && sk_X509_NAME_push(L->t->ca_names, nm))
            sk_X509_NAME_set(names, i, NULL);
    }
    sk_X509_NAME_pop_free(names, X509_NAME_free);
}

static bool bool_field(const mg_value_t *conf, const char *key)
{
    const mg_value_t *v = mg_value_get(conf, key);
    return v && v->kind == MG_VAL_BOOL && v->u.boolean;
}

/*
 * The listener's settings and every mtls-auth plugin's `ca_certificates`: references are
 * checked (also without an `ssl` listener, t == NULL); with t, the verifiers are built. The
 * plugin's other fields are its schema's (Lua) to check; here only what the handshake needs.
 */
static void load_client_verify(const mg_config_t *cfg, mg_config_errors_t *errs, mg_tls_t *t)
{
    load_t L = {cfg, errs, t};
    mg_ca_refs_t refs;
    int mode = cfg->ssl_verify_client;
    bool listener = mg_ca_refs(cfg->ca, cfg->ssl_client_ca_certificates,
                               "ssl_client_ca_certificates", false, errs, &refs);
    if (listener && mode != MG_VERIFY_OFF && refs.n == 0) {
        mg_config_errors_add(errs,
                             "ssl_client_ca_certificates: required when "
                             "ssl_verify_client is '%s'",
                             mode == MG_VERIFY_ON ? "on" : "optional");
        listener = false;
    }
    if (t) {
        t->verify_mode = mode;
        t->nverifiers = 1;
        if (listener && mode != MG_VERIFY_OFF) {
            if (set_verifier(&L, 0, &refs, strdup(""), cfg->ssl_verify_depth, false,
                             "ssl_client_ca_certificates"))
                add_ca_names(&L, &refs);
            t->ask_cert = true;
        }
    }
    mg_ca_refs_free(&refs);

    for (size_t i = 0; i < cfg->nplugins; i++) {
        const mg_plugin_conf_t *pc = &cfg->plugins[i];
        if (strcmp(pc->name, "mtls-auth") != 0) continue;
        const mg_value_t *ids = mg_value_get(pc->config, "ca_certificates");
        bool strings = ids && ids->kind == MG_VAL_ARRAY;
        for (size_t j = 0; strings && j < ids->len; j++)
            strings = ids->items[j].kind == MG_VAL_STRING;
        if (!strings || ids->len == 0) continue; /* the schema says what is wrong */
        char path[512];
        snprintf(path, sizeof(path), "%s.config.ca_certificates", pc->path);
        if (!mg_ca_refs(cfg->ca, ids, path, true, errs, &refs) || t == NULL || !pc->enabled) {
            mg_ca_refs_free(&refs);
            continue;
        }
        t->ask_cert = true;
        bool partial = bool_field(pc->config, "allow_partial_chain");
        if (bool_field(pc->config, "send_ca_dn")) add_ca_names(&L, &refs);
        const char **idv = malloc(ids->len * sizeof(char *));
        for (size_t j = 0; idv && j < ids->len; j++)
            idv[j] = ids->items[j].str;
        char *key = idv ? verifier_key(idv, ids->len, partial) : NULL;
        free(idv);
        bool known = false;
        for (size_t k = 1; key && k < t->nverifiers && !known; k++)
            known = strcmp(t->verifiers[k].key, key) == 0;
        if (known) {
            free(key);
        } else if (t->nverifiers == MAX_VERIFIERS) {
            mg_config_errors_add(errs, "%s: more than %d distinct CA lists in mtls-auth plugins",
                                 path, MAX_VERIFIERS - 1);
            free(key);
        } else {
            set_verifier(&L, t->nverifiers++, &refs, key, -1, partial, path);
        }
        mg_ca_refs_free(&refs);
    }
}

/* One line per subjectAltName of a kind nginx and Kong know; "" when none. */
static char *format_sans(X509 *x)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    BIO *b = BIO_new(BIO_s_mem());
    for (int i = 0; b && gens && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        const char *kind = NULL;
        const ASN1_STRING *str = NULL;
        if (g->type == GEN_DNS) {
            kind = "DNS";
            str = g->d.dNSName;
        } else if (g->type == GEN_URI) {
            kind = "URI";
            str = g->d.uniformResourceIdentifier;
        } else if (g->type == GEN_EMAIL) {
            kind = "email";
            str = g->d.rfc822Name;
        } else if (g->type == GEN_IPADD) {
            char ip[64] = "";
            const ASN1_OCTET_STRING *o = g->d.iPAddress;
            if (o->length == 4) inet_ntop(AF_INET, o->data, ip, sizeof(ip));
            if (o->length == 16) inet_ntop(AF_INET6, o->data, ip, sizeof(ip));
            if (*ip) BIO_printf(b, "%sIP:%s", BIO_pending(b) ? "\n" : "", ip);
            continue;
        }
        if (kind == NULL || str == NULL) continue;
        const unsigned char *d = ASN1_STRING_get0_data(str);
        int n = ASN1_STRING_length(str);
        if (memchr(d, '\n', (size_t)n) || memchr(d, '\0', (size_t)n)) continue; /* forged */
        BIO_printf(b, "%s%s:%.*s", BIO_pending(b) ? "\n" : "", kind, n, (const char *)d);
    }
    GENERAL_NAMES_free(gens);
    char *out = NULL;
    if (b) {
        char *data;
        long n = BIO_get_mem_data(b, &data);
        out = strndup(n > 0 ? data : "", n > 0 ? (size_t)n : 0);
    }
    BIO_free(b);
    return out;
}

static char *name_str(const X509_NAME *nm)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *out = NULL, *data;
    if (b && X509_NAME_print_ex(b, nm, 0, XN_FLAG_RFC2253) >= 0) {
        long n = BIO_get_mem_data(b, &data);
        out = strndup(n > 0 ? data : "", n > 0 ? (size_t)n : 0);
    }
    BIO_free(b);
    return out;
}

static char *first_cn(const X509_NAME *nm)
{
    int i = X509_NAME_get_index_by_NID(nm, NID_commonName, -1);
    const ASN1_STRING *d = i >= 0 ? X509_NAME_ENTRY_get_data(X509_NAME_get_entry(nm, i)) : NULL;
    unsigned char *utf8 = NULL;
    int n = d ? ASN1_STRING_to_UTF8(&utf8, d) : -1;
    char *out = n >= 0 ? strndup((const char *)utf8, (size_t)n) : strdup("");
    OPENSSL_free(utf8);
    return out;
}

static char *hex_of(const unsigned char *d, size_t n)
{
    char *out = malloc(2 * n + 1);
    for (size_t i = 0; out && i < n; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
    if (out) out[2 * n] = '\0';
    return out;
}

static bool peer_parse(SSL *ssl, mg_tls_peer_t *p, X509 *leaf)
{
    BIO *b = BIO_new(BIO_s_mem());
    bool ok = b && PEM_write_bio_X509(b, leaf) == 1;
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl); /* without the leaf (server side) */
    for (int i = 0; ok && chain && i < sk_X509_num(chain); i++)
        ok = X509_cmp(sk_X509_value(chain, i), leaf) == 0 ||
             PEM_write_bio_X509(b, sk_X509_value(chain, i)) == 1;
    if (ok) {
        char *data;
        long n = BIO_get_mem_data(b, &data);
        p->chain_pem = strndup(data, (size_t)n);
    }
    BIO_free(b);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf), NULL);
    char *ser = bn ? BN_bn2hex(bn) : NULL;
    BN_free(bn);
    p->serial = ser ? strdup(ser) : NULL;
    OPENSSL_free(ser);
    p->subject_dn = name_str(X509_get_subject_name(leaf));
    p->issuer_dn = name_str(X509_get_issuer_name(leaf));
    p->cn = first_cn(X509_get_subject_name(leaf));
    p->sans = format_sans(leaf);
    p->fingerprint = X509_digest(leaf, EVP_sha256(), md, &mdlen) == 1 ? hex_of(md, mdlen) : NULL;
    ERR_clear_error();
    if (!p->chain_pem || !p->serial || !p->subject_dn || !p->issuer_dn || !p->cn || !p->sans ||
        !p->fingerprint) {
        peer_free_strings(p);
        p->chain_pem = p->subject_dn = p->issuer_dn = p->cn = p->sans = NULL;
        p->serial = p->fingerprint = NULL;
        return false;
    }
    p->parsed = true;
    return true;
}

const mg_tls_peer_t *mg_tls_peer(const mg_sock_t *s)
{
    SSL *ssl = s->ssl;
    X509 *leaf = ssl ? SSL_get0_peer_certificate(ssl) : NULL;
    if (leaf == NULL) return NULL;
    mg_tls_peer_t *p = SSL_get_ex_data(ssl, peer_index);
    if (p == NULL) return NULL; /* a certificate no verifier saw: never asked for */
    if (!p->parsed && !peer_parse(ssl, p, leaf)) return NULL;
    return p;
}

int mg_tls_peer_verdict(const mg_tls_t *t, const mg_sock_t *s, const char *key, size_t klen,
                        const char **why)
{
    *why = "";
    if (t == NULL || s->ssl == NULL || SSL_get0_peer_certificate(s->ssl) == NULL)
        return MG_DECLINED;
    const mg_tls_peer_t *p = SSL_get_ex_data(s->ssl, peer_index);
    if (p == NULL) return MG_DECLINED;
    for (size_t i = 1; i < t->nverifiers; i++) {
        if (strlen(t->verifiers[i].key) == klen && memcmp(t->verifiers[i].key, key, klen) == 0)
            return (p->ok >> i) & 1 ? MG_OK : MG_ERROR;
    }
    *why = "no mtls-auth plugin has this CA list";
    return MG_ERROR;
}

const char *mg_tls_client_verify(const mg_tls_t *t, const mg_sock_t *s)
{
    static char failed[160];
    if (t == NULL || s->ssl == NULL || t->verify_mode == MG_VERIFY_OFF) return "NONE";
    if (SSL_get0_peer_certificate(s->ssl) == NULL) return "NONE";
    const mg_tls_peer_t *p = SSL_get_ex_data(s->ssl, peer_index);
    if (p && (p->ok & 1)) return "SUCCESS";
    snprintf(failed, sizeof(failed), "FAILED:%s",
             X509_verify_cert_error_string(p ? p->err0 : X509_V_ERR_UNSPECIFIED));
    return failed;
}

const char *mg_tls_client_refused(const mg_tls_t *t, const mg_sock_t *s)
{
    if (t == NULL || t->verify_mode != MG_VERIFY_ON || s->ssl == NULL) return NULL;
    const char *v = mg_tls_client_verify(t, s);
    if (v[0] == 'S') return NULL;
    if (v[0] == 'N') return "No required SSL certificate was sent";
    mg_log_info("client certificate refused: %s", v + 7);
    return "The SSL certificate error";
}

/* ---- contexts ------------------------------------------------------------------------------- */

static SSL_CTX *new_ctx(mg_tls_t *t)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* one read(2) per record instead of two (header, then body), as nginx does; what is read
     * beyond a record waits in OpenSSL: mg_sock reads until WANT_READ, and an idle connection
     * checks SSL_has_pending */
    SSL_CTX_set_read_ahead(ctx, 1);
    if (SSL_CTX_set_cipher_list(ctx, CIPHERS_INTERMEDIATE) != 1 ||
        SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384") != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_dh_auto(ctx, 1);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
    SSL_CTX_set_client_hello_cb(ctx, client_hello_cb, NULL);
    SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, t);
    SSL_CTX_set_app_data(ctx, t);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"moongate", 8);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* tickets only: no per-worker
                                                                 cache to miss */
    SSL_CTX_set_timeout(ctx, TICKET_PERIOD);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    SSL_CTX_set_session_ticket_cb(ctx, ticket_gen_cb, ticket_dec_cb, t);
    if (t->ask_cert) {
        /* asked, never required in the handshake: `on` answers 400 at the first request */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE, NULL);
        SSL_CTX_set_cert_verify_callback(ctx, cert_verify_cb, t);
        STACK_OF(X509_NAME) *names = t->ca_names ? SSL_dup_CA_list(t->ca_names) : NULL;
        if (names) SSL_CTX_set_client_CA_list(ctx, names);
    }
    return ctx;
}

static bool ctx_use(SSL_CTX *ctx, pair_t *p)
{
    if (SSL_CTX_use_certificate(ctx, p->leaf) != 1) return false;
    for (int i = 0; p->chain && i < sk_X509_num(p->chain); i++)
        if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(p->chain, i)) != 1) return false;
    return SSL_CTX_use_PrivateKey(ctx, p->key) == 1;
}

static const char *str_field(load_t *L, const mg_value_t *ent, const char *key, const char *path)
{
    const mg_value_t *v = mg_value_get(ent, key);
    if (v == NULL || v->kind == MG_VAL_NULL) return NULL;
    if (v->kind != MG_VAL_STRING) {
        mg_config_errors_add(L->errs, "%s.%s: must be a string", path, key);
        return NULL;
    }
    return v->str;
}

static void check_keys(load_t *L, const mg_value_t *ent, const char *path, const char *const *known)
{
    for (size_t i = 0; i < ent->len; i++) {
        bool ok = false;
        for (size_t j = 0; known[j] && !ok; j++)
            ok = strcmp(ent->keys[i], known[j]) == 0;
        if (!ok) mg_config_errors_add(L->errs, "%s.%s: unknown field", path, ent->keys[i]);
    }
}

static void load_certificate(load_t *L, const mg_value_t *ent, size_t i, bool *named)
{
    static const char *const known[] = {"id",   "cert", "key",        "cert_alt",   "key_alt",
                                        "snis", "tags", "created_at", "updated_at", NULL};
    char path[64];
    snprintf(path, sizeof(path), "certificates[%zu]", i);
    if (ent->kind != MG_VAL_MAP) {
        mg_config_errors_add(L->errs, "%s: must be a mapping", path);
        return;
    }
    check_keys(L, ent, path, known);
    str_field(L, ent, "id", path);
    pair_t main = {0}, alt = {0};
    bool ok = load_pair(L, ent, path, "cert", "key", &main);
    bool has_alt = mg_value_get(ent, "cert_alt") || mg_value_get(ent, "key_alt");
    if (has_alt && load_pair(L, ent, path, "cert_alt", "key_alt", &alt) && ok &&
        EVP_PKEY_get_base_id(main.key) == EVP_PKEY_get_base_id(alt.key)) {
        mg_config_errors_add(L->errs,
                             "%s.cert_alt: must use another key type than 'cert' (both are "
                             "%s): e.g. RSA and ECDSA",
                             path, key_type(main.key));
        ok = false;
    }
    const mg_value_t *snis = mg_value_get(ent, "snis");
    if (snis && snis->kind != MG_VAL_ARRAY && snis->kind != MG_VAL_NULL) {
        mg_config_errors_add(L->errs, "%s.snis: must be a list of host names", path);
    } else if (snis && snis->kind == MG_VAL_ARRAY) {
        for (size_t j = 0; j < snis->len; j++) {
            char sp[96];
            snprintf(sp, sizeof(sp), "%s.snis[%zu]", path, j);
            add_sni(L, &snis->items[j], i, sp);
            named[i] = true;
        }
    }
    if (ok && L->errs->n == 0) {
        SSL_CTX *ctx = new_ctx(L->t);
        if (ctx == NULL || !ctx_use(ctx, &main) || (alt.leaf && !ctx_use(ctx, &alt))) {
            mg_config_errors_add(L->errs, "%s: cannot use this certificate (%s)", path,
                                 mg_ssl_reason());
            SSL_CTX_free(ctx);
        } else {
            L->t->ctxs[i] = ctx;
            char where[80];
            snprintf(where, sizeof(where), "%s.cert", path);
            mg_ocsp_add(L->t->ocsp, ctx, main.leaf, main.chain, where);
            snprintf(where, sizeof(where), "%s.cert_alt", path);
            if (alt.leaf) mg_ocsp_add(L->t->ocsp, ctx, alt.leaf, alt.chain, where);
        }
    }
    pair_free(&main);
    pair_free(&alt);
}

static void load_sni_entity(load_t *L, const mg_value_t *ent, size_t i, bool *named)
{
    static const char *const known[] = {"id",         "name",       "certificate", "tags",
                                        "created_at", "updated_at", NULL};
    char path[64];
    snprintf(path, sizeof(path), "snis[%zu]", i);
    if (ent->kind != MG_VAL_MAP) {
        mg_config_errors_add(L->errs, "%s: must be a mapping", path);
        return;
    }
    check_keys(L, ent, path, known);
    /* certificate: {id: ...} as Kong exports it, or the id alone */
    const mg_value_t *cv = mg_value_get(ent, "certificate");
    const char *id = NULL;
    if (cv && cv->kind == MG_VAL_MAP) cv = mg_value_get(cv, "id");
    if (cv && cv->kind == MG_VAL_STRING) id = cv->str;
    char cp[80];
    snprintf(cp, sizeof(cp), "%s.certificate", path);
    if (id == NULL) {
        mg_config_errors_add(L->errs, "%s: %s", cp,
                             cv ? "must be {id: <certificate id>}" : "required");
        return;
    }
    const mg_value_t *certs = L->cfg->certificates;
    size_t found = SIZE_MAX;
    for (size_t j = 0; certs && certs->kind == MG_VAL_ARRAY && j < certs->len; j++) {
        const mg_value_t *cid = mg_value_get(&certs->items[j], "id");
        if (cid && cid->kind == MG_VAL_STRING && strcmp(cid->str, id) == 0) found = j;
    }
    if (found == SIZE_MAX) {
        mg_config_errors_add(L->errs, "%s: no certificate has id '%s'", cp, id);
        return;
    }
    char np[80];
    snprintf(np, sizeof(np), "%s.name", path);
    if (add_sni(L, mg_value_get(ent, "name"), found, np)) named[found] = true;
}

mg_tls_t *mg_tls_load(const mg_config_t *cfg, mg_config_errors_t *errs)
{
    bool ssl = false;
    for (size_t i = 0; i < cfg->nproxy_listen; i++)
        ssl = ssl || cfg->proxy_listen[i].ssl;
    const mg_value_t *certs = cfg->certificates, *snis = cfg->snis;
    if (certs && certs->kind == MG_VAL_NULL) certs = NULL;
    if (snis && snis->kind == MG_VAL_NULL) snis = NULL;
    if (peer_index < 0) peer_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, peer_ex_free);
    if (cert_run_index < 0)
        cert_run_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, cert_run_ex_free);
    if (!ssl) load_client_verify(cfg, errs, NULL); /* the references are checked all the same */
    if (!ssl && certs == NULL && snis == NULL) return NULL;

    mg_tls_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        mg_config_errors_add(errs, "certificates: out of memory");
        return NULL;
    }
    load_t L = {cfg, errs, t};
    size_t n0 = errs->n;
    if (ssl) load_client_verify(cfg, errs, t); /* before the contexts, which use it */
    t->ocsp = ssl ? mg_ocsp_new(cfg) : NULL;
    if (certs && certs->kind != MG_VAL_ARRAY) {
        mg_config_errors_add(errs, "certificates: must be a list");
        certs = NULL;
    }
    if (snis && snis->kind != MG_VAL_ARRAY) {
        mg_config_errors_add(errs, "snis: must be a list");
        snis = NULL;
    }
    t->nctxs = certs ? certs->len : 0;
    t->ctxs = calloc(t->nctxs + 1, sizeof(SSL_CTX *));
    bool *named = calloc(t->nctxs + 1, sizeof(bool));
    if (t->ctxs == NULL || named == NULL || RAND_bytes(t->secret, sizeof(t->secret)) != 1) {
        mg_config_errors_add(errs, "certificates: out of memory or no randomness");
        free(named);
        mg_tls_free(t);
        return NULL;
    }
    for (size_t i = 0; i < t->nctxs; i++) { /* ids first: top-level snis refer to them */
        const mg_value_t *id = mg_value_get(&certs->items[i], "id");
        for (size_t j = 0; id && id->kind == MG_VAL_STRING && j < i; j++) {
            const mg_value_t *o = mg_value_get(&certs->items[j], "id");
            if (o && o->kind == MG_VAL_STRING && strcmp(o->str, id->str) == 0)
                mg_config_errors_add(errs,
                                     "certificates[%zu].id: '%s' is already used by "
                                     "certificates[%zu]",
                                     i, id->str, j);
        }
    }
    for (size_t i = 0; snis && i < snis->len; i++)
        load_sni_entity(&L, &snis->items[i], i, named);
    for (size_t i = 0; i < t->nctxs; i++)
        load_certificate(&L, &certs->items[i], i, named);
    if (ssl && t->nctxs == 0)
        mg_config_errors_add(errs, "proxy_listen: a listener has 'ssl' but 'certificates' is "
                                   "empty: TLS needs at least one certificate");
    if (errs->n > n0 || !ssl) {
        free(named);
        mg_tls_free(t);
        return NULL;
    }
    for (size_t i = 0; i < t->nctxs && t->default_ctx == NULL; i++)
        if (!named[i]) t->default_ctx = t->ctxs[i];
    free(named);
    mg_ocsp_ready(t->ocsp); /* without its zone, stapling stays off (logged) */
    if (t->nsnis) qsort(t->snis, t->nsnis, sizeof(sni_t), sni_cmp);
    t->base = t->default_ctx;
    if (t->base == NULL)
        t->base = t->ctxs[0]; /* the servername callback refuses unknown
                                 names before this one is shown */
    return t;
}

void mg_tls_free(mg_tls_t *t)
{
    if (t == NULL) return;
    for (size_t i = 0; i < t->nctxs; i++)
        SSL_CTX_free(t->ctxs[i]);
    free(t->ctxs);
    for (size_t i = 0; i < t->nsnis; i++) {
        free(t->snis[i].name);
        free(t->snis[i].path);
    }
    free(t->snis);
    for (size_t i = 0; i < t->nverifiers; i++) {
        X509_STORE_free(t->verifiers[i].store);
        free(t->verifiers[i].key);
    }
    sk_X509_NAME_pop_free(t->ca_names, X509_NAME_free);
    OPENSSL_cleanse(t->secret, sizeof(t->secret));
    mg_ocsp_free(t->ocsp);
    free(t);
}

/* ---- client certificates (upstream mTLS) ------------------------------------------------- */

int mg_tls_use_cert_id(const mg_config_t *cfg, const char *id, SSL_CTX *ctx, char *why, size_t wlen)
{
    const mg_value_t *certs = cfg->certificates;
    for (size_t i = 0; certs && certs->kind == MG_VAL_ARRAY && i < certs->len; i++) {
        const mg_value_t *cid = mg_value_get(&certs->items[i], "id");
        if (cid == NULL || cid->kind != MG_VAL_STRING || strcmp(cid->str, id) != 0) continue;
        /* mg_tls_load has reported whatever is wrong with the entity itself: the problems
         * found again here go to a scratch list, and only a summary to the caller */
        mg_config_errors_t scratch;
        mg_config_errors_init(&scratch);
        load_t L = {cfg, &scratch, NULL};
        char path[64];
        snprintf(path, sizeof(path), "certificates[%zu]", i);
        pair_t p = {0};
        bool ok = load_pair(&L, &certs->items[i], path, "cert", "key", &p);
        mg_config_errors_free(&scratch);
        if (!ok) {
            snprintf(why, wlen, "%s cannot be loaded", path);
            return MG_ERROR;
        }
        ok = ctx_use(ctx, &p);
        pair_free(&p);
        if (!ok) {
            snprintf(why, wlen, "%s cannot be used (%s)", path, mg_ssl_reason());
            return MG_ERROR;
        }
        return MG_OK;
    }
    snprintf(why, wlen, "no certificate has id '%s'", id);
    return MG_DECLINED;
}

/* ---- connections ---------------------------------------------------------------------------- */

int mg_tls_accept(const mg_tls_t *t, mg_sock_t *s)
{
    if (t == NULL) return MG_ERROR;
    SSL *ssl = SSL_new(t->base);
    if (ssl == NULL || SSL_set_fd(ssl, s->fd) != 1) {
        SSL_free(ssl);
        ERR_clear_error();
        return MG_ERROR;
    }
    SSL_set_accept_state(ssl);
    SSL_set_app_data(ssl, s); /* for the certificate phase's wake-up */
    s->ssl = ssl;
    return MG_OK;
}

int mg_tls_handshake(mg_sock_t *s)
{
    ERR_clear_error();
    int rc = SSL_do_handshake(s->ssl);
    if (rc == 1) {
        mg_log_debug("TLS handshake done: %s %s%s", SSL_get_version(s->ssl),
                     SSL_get_cipher_name(s->ssl), SSL_session_reused(s->ssl) ? ", resumed" : "");
        return MG_OK;
    }
    int e = SSL_get_error(s->ssl, rc);
    if (e == SSL_ERROR_WANT_READ) {
        s->rready = 0;
        return MG_AGAIN;
    }
    if (e == SSL_ERROR_WANT_CLIENT_HELLO_CB) { /* a certificate handler waits */
        s->paused = 1;
        s->rready = 0;
        return MG_AGAIN;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        s->wready = 0;
        return MG_AGAIN;
    }
    s->eof = 1;
    if (e == SSL_ERROR_SSL)
        mg_log_info("TLS handshake failed: %s", mg_ssl_reason());
    else
        ERR_clear_error();
    return MG_ERROR;
}

mg_ocsp_t *mg_tls_ocsp(const mg_tls_t *t)
{
    return t ? t->ocsp : NULL;
}

mg_str_t mg_tls_sni(const mg_sock_t *s)
{
    const char *n = s->ssl ? SSL_get_servername(s->ssl, TLSEXT_NAMETYPE_host_name) : NULL;
    return n ? (mg_str_t){strlen(n), n} : (mg_str_t){0, ""};
}

void mg_tls_close(mg_sock_t *s, bool notify)
{
    if (s->ssl == NULL) return;
    if (notify) {
        ERR_clear_error();
        SSL_shutdown(s->ssl); /* queues close_notify; the peer's answer is not awaited */
    }
    ERR_clear_error();
    SSL_free(s->ssl);
    s->ssl = NULL;
}
