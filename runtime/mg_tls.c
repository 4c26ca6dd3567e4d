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
 * Certificate phase: after the SNI lookup, global plugins with a `certificate` handler run
 * (mg_lua_certificate; no request, no yielding). One may hand over a PEM pair through
 * moongate.tls.set_cert: it replaces whatever the lookup chose (also when nothing matched),
 * parsed once and cached by content. A handler that raises fails the handshake
 * (internal_error alert).
 *
 * Policy: TLS 1.2 and 1.3 only, Mozilla's intermediate cipher list in server order, no
 * renegotiation, no compression, ALPN http/1.1 only (a client offering only other
 * protocols gets no_application_protocol, as nginx does).
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

#include "mg_log.h"
#include "mg_lua.h"
#include "mg_ocsp.h"
#include "mg_tls.h"

#define CIPHERS_INTERMEDIATE                                                                       \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"                                   \
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
#define TICKET_PERIOD 3600 /* seconds a ticket key encrypts new tickets */

typedef struct {
    char *name; /* lower-case; "*.example.com" or "example.*" for wildcards */
    size_t cert;
    char *path; /* where it was declared, for duplicate messages */
} sni_t;

struct mg_tls_s {
    SSL_CTX **ctxs; /* one per certificate entity */
    size_t nctxs;
    SSL_CTX *base; /* new connections start here: the default's, or one without any */
    SSL_CTX *default_ctx;
    sni_t *snis; /* sorted by name */
    size_t nsnis, capsnis;
    unsigned char secret[32];
    mg_ocsp_t *ocsp; /* stapling (mg_ocsp.c); NULL when ssl_stapling is off */
};

typedef struct {
    const mg_config_t *cfg;
    mg_config_errors_t *errs;
    mg_tls_t *t;
} load_t;

/* ---- small helpers ------------------------------------------------------------------------ */

static const mg_value_t *get(const mg_value_t *map, const char *key)
{
    if (map == NULL || map->kind != MG_VAL_MAP) return NULL;
    for (size_t i = 0; i < map->len; i++)
        if (strcmp(map->keys[i], key) == 0) return &map->items[i];
    return NULL;
}

/* The first OpenSSL error's reason, and an empty queue afterwards. */
static const char *ssl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r ? r : "unknown error";
}

/* Never prompts on a terminal for an encrypted key: such keys are refused. */
static int no_password(char *buf, int size, int rwflag, void *u)
{
    return -1;
}

/* ---- loading PEM ------------------------------------------------------------------------- */

/* A BIO over the PEM text, or over the file the value names. NULL with a message in why. */
static BIO *pem_bio(load_t *L, const char *v, char *why, size_t wlen)
{
    if (strstr(v, "-----BEGIN")) return BIO_new_mem_buf(v, -1);
    if (*v == '\0') {
        snprintf(why, wlen, "must be PEM text or the path of a PEM file");
        return NULL;
    }
    char path[4096];
    if (v[0] == '/' || L->cfg->prefix == NULL)
        snprintf(path, sizeof(path), "%s", v);
    else
        snprintf(path, sizeof(path), "%s/%s", L->cfg->prefix, v);
    BIO *b = BIO_new_file(path, "r");
    if (b == NULL) {
        snprintf(why, wlen, "cannot read '%s': %s", path, strerror(errno ? errno : ENOENT));
        ERR_clear_error();
    }
    return b;
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
    const mg_value_t *cv = get(ent, ck), *kv = get(ent, kk);
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
        p->leaf = PEM_read_bio_X509(b, NULL, no_password, NULL);
        if (p->leaf == NULL) {
            mg_config_errors_add(L->errs, "%s.%s: invalid PEM certificate (%s)", path, ck,
                                 ssl_reason());
            ok = false;
        } else {
            p->chain = sk_X509_new_null();
            X509 *x;
            while (p->chain && (x = PEM_read_bio_X509(b, NULL, no_password, NULL)) != NULL)
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
        p->key = PEM_read_bio_PrivateKey(b, NULL, no_password, NULL);
        if (p->key == NULL) {
            mg_config_errors_add(L->errs, "%s.%s: invalid PEM private key (%s)", path, kk,
                                 ssl_reason());
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

static int use_plugin_cert(void *ud, mg_str_t cert, mg_str_t key)
{
    SSL *ssl = ud;
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
        p.leaf = b ? PEM_read_bio_X509(b, NULL, no_password, NULL) : NULL;
        X509 *x;
        p.chain = sk_X509_new_null();
        while (p.leaf && p.chain && (x = PEM_read_bio_X509(b, NULL, no_password, NULL)))
            sk_X509_push(p.chain, x);
        BIO_free(b);
        ERR_clear_error();
        b = BIO_new_mem_buf(key.data, (int)key.len);
        p.key = b ? PEM_read_bio_PrivateKey(b, NULL, no_password, NULL) : NULL;
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
    /* the plugin's pair replaces every certificate the SNI's context brought */
    SSL_certs_clear(ssl);
    bool ok = SSL_use_certificate(ssl, plugin_certs[slot].leaf) == 1;
    STACK_OF(X509) *chain = plugin_certs[slot].chain;
    for (int i = 0; ok && chain && i < sk_X509_num(chain); i++)
        ok = SSL_add1_chain_cert(ssl, sk_X509_value(chain, i)) == 1;
    ok = ok && SSL_use_PrivateKey(ssl, plugin_certs[slot].key) == 1;
    if (!ok) {
        mg_log_err("moongate.tls.set_cert: cannot use the certificate (%s)", ssl_reason());
        return MG_ERROR;
    }
    return MG_OK;
}

/* SNI lookup, then the certificate phase (global plugins may pick another pair). */
static int servername_cb(SSL *ssl, int *al, void *arg)
{
    const mg_tls_t *t = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    SSL_CTX *ctx = name ? find_ctx(t, name) : NULL;
    if (ctx == NULL) ctx = t->default_ctx;
    if (ctx && ctx != SSL_get_SSL_CTX(ssl)) SSL_set_SSL_CTX(ssl, ctx);
    int rc = mg_lua_certificate(name, use_plugin_cert, ssl);
    if (rc == MG_ERROR) {
        *al = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    if (ctx == NULL && rc != MG_OK) {
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
    if (SSL_CTX_set_cipher_list(ctx, CIPHERS_INTERMEDIATE) != 1 ||
        SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384") != 1) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_dh_auto(ctx, 1);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
    SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, t);
    SSL_CTX_set_app_data(ctx, t);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"moongate", 8);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* tickets only: no per-worker
                                                                 cache to miss */
    SSL_CTX_set_timeout(ctx, TICKET_PERIOD);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
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
    const mg_value_t *v = get(ent, key);
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
    bool has_alt = get(ent, "cert_alt") || get(ent, "key_alt");
    if (has_alt && load_pair(L, ent, path, "cert_alt", "key_alt", &alt) && ok &&
        EVP_PKEY_get_base_id(main.key) == EVP_PKEY_get_base_id(alt.key)) {
        mg_config_errors_add(L->errs,
                             "%s.cert_alt: must use another key type than 'cert' (both are "
                             "%s): e.g. RSA and ECDSA",
                             path, key_type(main.key));
        ok = false;
    }
    const mg_value_t *snis = get(ent, "snis");
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
                                 ssl_reason());
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
    const mg_value_t *cv = get(ent, "certificate");
    const char *id = NULL;
    if (cv && cv->kind == MG_VAL_MAP) cv = get(cv, "id");
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
        const mg_value_t *cid = get(&certs->items[j], "id");
        if (cid && cid->kind == MG_VAL_STRING && strcmp(cid->str, id) == 0) found = j;
    }
    if (found == SIZE_MAX) {
        mg_config_errors_add(L->errs, "%s: no certificate has id '%s'", cp, id);
        return;
    }
    char np[80];
    snprintf(np, sizeof(np), "%s.name", path);
    if (add_sni(L, get(ent, "name"), found, np)) named[found] = true;
}

mg_tls_t *mg_tls_load(const mg_config_t *cfg, mg_config_errors_t *errs)
{
    bool ssl = false;
    for (size_t i = 0; i < cfg->nproxy_listen; i++)
        ssl = ssl || cfg->proxy_listen[i].ssl;
    const mg_value_t *certs = cfg->certificates, *snis = cfg->snis;
    if (certs && certs->kind == MG_VAL_NULL) certs = NULL;
    if (snis && snis->kind == MG_VAL_NULL) snis = NULL;
    if (!ssl && certs == NULL && snis == NULL) return NULL;

    mg_tls_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        mg_config_errors_add(errs, "certificates: out of memory");
        return NULL;
    }
    load_t L = {cfg, errs, t};
    size_t n0 = errs->n;
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
        const mg_value_t *id = get(&certs->items[i], "id");
        for (size_t j = 0; id && id->kind == MG_VAL_STRING && j < i; j++) {
            const mg_value_t *o = get(&certs->items[j], "id");
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
    OPENSSL_cleanse(t->secret, sizeof(t->secret));
    mg_ocsp_free(t->ocsp);
    free(t);
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
    if (e == SSL_ERROR_WANT_WRITE) {
        s->wready = 0;
        return MG_AGAIN;
    }
    s->eof = 1;
    if (e == SSL_ERROR_SSL)
        mg_log_info("TLS handshake failed: %s", ssl_reason());
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
