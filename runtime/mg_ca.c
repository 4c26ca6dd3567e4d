/*
 * mg_ca.c — the `ca_certificates` entity: CA certificates parsed and checked once at load, in
 * the master, so that every verifier (client certificates on `ssl` listeners, the mtls-auth
 * plugin, upstream TLS) builds its trust store from the same validated X509 objects and
 * refers to them by id. Refusals follow Kong 3.x's entity checks (one certificate per entry,
 * not expired, the CA basic constraint) so that a config Kong refuses is refused here too.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "mg_ca.h"

typedef struct {
    char *id; /* NULL when absent: such a CA cannot be referenced */
    X509 *cert;
} ca_t;

struct mg_ca_set_s {
    ca_t *cas;
    size_t n;
};

const char *mg_ssl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r ? r : "unknown error";
}

int mg_pem_no_password(char *buf, int size, int rwflag, void *u)
{
    return -1;
}

BIO *mg_pem_bio(const mg_config_t *cfg, const char *v, char *why, size_t wlen)
{
    if (strstr(v, "-----BEGIN")) return BIO_new_mem_buf(v, -1);
    if (*v == '\0') {
        snprintf(why, wlen, "must be PEM text or the path of a PEM file");
        return NULL;
    }
    char path[4096];
    if (v[0] == '/' || cfg->prefix == NULL)
        snprintf(path, sizeof(path), "%s", v);
    else
        snprintf(path, sizeof(path), "%s/%s", cfg->prefix, v);
    errno = 0;
    BIO *b = BIO_new_file(path, "r");
    if (b == NULL) {
        snprintf(why, wlen, "cannot read '%s': %s", path, strerror(errno ? errno : ENOENT));
        ERR_clear_error();
    }
    return b;
}

/* Lower-case hex SHA-256 of the DER encoding: Kong's cert_digest. */
static bool digest_hex(X509 *x, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (X509_digest(x, EVP_sha256(), md, &n) != 1 || n != 32) return false;
    for (unsigned i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return true;
}

/* Parses one entry; its certificate in *out, or NULL after reporting why. */
static X509 *load_one(const mg_config_t *cfg, const mg_value_t *ent, const char *path,
                      mg_config_errors_t *errs)
{
    static const char *const known[] = {"id",         "cert",       "cert_digest", "tags",
                                        "created_at", "updated_at", NULL};
    for (size_t i = 0; i < ent->len; i++) {
        bool ok = false;
        for (size_t j = 0; known[j] && !ok; j++)
            ok = strcmp(ent->keys[i], known[j]) == 0;
        if (!ok) mg_config_errors_add(errs, "%s.%s: unknown field", path, ent->keys[i]);
    }
    const mg_value_t *id = mg_value_get(ent, "id"), *cv = mg_value_get(ent, "cert"),
                     *dv = mg_value_get(ent, "cert_digest");
    if (id && id->kind != MG_VAL_STRING && id->kind != MG_VAL_NULL)
        mg_config_errors_add(errs, "%s.id: must be a string", path);
    if (dv && dv->kind != MG_VAL_STRING && dv->kind != MG_VAL_NULL)
        mg_config_errors_add(errs, "%s.cert_digest: must be a string", path);
    if (cv == NULL || cv->kind != MG_VAL_STRING) {
        mg_config_errors_add(errs, "%s.cert: %s", path,
                             cv ? "must be a string (PEM text or a file path)" : "required");
        return NULL;
    }
    char why[4400];
    BIO *b = mg_pem_bio(cfg, cv->str, why, sizeof(why));
    if (b == NULL) {
        mg_config_errors_add(errs, "%s.cert: %s", path, why);
        return NULL;
    }
    X509 *x = PEM_read_bio_X509(b, NULL, mg_pem_no_password, NULL);
    if (x == NULL) {
        mg_config_errors_add(errs, "%s.cert: invalid PEM certificate (%s)", path, mg_ssl_reason());
        BIO_free(b);
        return NULL;
    }
    X509 *more = PEM_read_bio_X509(b, NULL, mg_pem_no_password, NULL);
    ERR_clear_error(); /* the end of the text */
    BIO_free(b);
    const char *bad = NULL;
    if (more)
        bad = "please submit only one certificate at a time";
    else if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
        bad = "certificate expired, \"Not After\" time is in the past";
    else if (!(X509_get_extension_flags(x) & EXFLAG_CA)) /* basicConstraints CA:TRUE */
        bad = "certificate does not appear to be a CA because it is missing the \"CA\" "
              "basic constraint";
    X509_free(more);
    if (bad) {
        mg_config_errors_add(errs, "%s.cert: %s", path, bad);
        X509_free(x);
        return NULL;
    }
    char hex[65];
    if (dv && dv->kind == MG_VAL_STRING && digest_hex(x, hex) && strcasecmp(dv->str, hex) != 0) {
        mg_config_errors_add(errs,
                             "%s.cert_digest: does not match the certificate (its SHA-256 "
                             "is %s)",
                             path, hex);
        X509_free(x);
        return NULL;
    }
    return x;
}

mg_ca_set_t *mg_ca_load(const mg_config_t *cfg, mg_config_errors_t *errs)
{
    mg_ca_set_t *set = calloc(1, sizeof(*set));
    if (set == NULL) {
        mg_config_errors_add(errs, "ca_certificates: out of memory");
        return NULL;
    }
    const mg_value_t *list = cfg->ca_certificates;
    if (list == NULL || list->kind == MG_VAL_NULL) return set;
    if (list->kind != MG_VAL_ARRAY) {
        mg_config_errors_add(errs, "ca_certificates: must be a list");
        return set;
    }
    set->cas = calloc(list->len + 1, sizeof(ca_t));
    if (set->cas == NULL) {
        mg_config_errors_add(errs, "ca_certificates: out of memory");
        return set;
    }
    for (size_t i = 0; i < list->len; i++) {
        const mg_value_t *ent = &list->items[i];
        char path[64];
        snprintf(path, sizeof(path), "ca_certificates[%zu]", i);
        if (ent->kind != MG_VAL_MAP) {
            mg_config_errors_add(errs, "%s: must be a mapping", path);
            set->cas[set->n++] = (ca_t){0}; /* positions stay those of the list */
            continue;
        }
        X509 *x = load_one(cfg, ent, path, errs);
        for (size_t j = 0; x && j < set->n; j++) { /* Kong: `cert` is unique */
            if (set->cas[j].cert && X509_cmp(set->cas[j].cert, x) == 0) {
                mg_config_errors_add(errs, "%s.cert: the same certificate as ca_certificates[%zu]",
                                     path, j);
                X509_free(x);
                x = NULL;
            }
        }
        const mg_value_t *id = mg_value_get(ent, "id");
        const char *ids = id && id->kind == MG_VAL_STRING ? id->str : NULL;
        for (size_t j = 0; ids && j < set->n; j++) {
            if (set->cas[j].id && strcmp(set->cas[j].id, ids) == 0) {
                mg_config_errors_add(errs, "%s.id: '%s' is already used by ca_certificates[%zu]",
                                     path, ids, j);
                ids = NULL;
            }
        }
        /* kept even when the certificate failed, so that references to it do not add a
         * second, misleading "no ca_certificate has id" error */
        set->cas[set->n].id = ids ? strdup(ids) : NULL;
        set->cas[set->n++].cert = x;
    }
    return set;
}

void mg_ca_free(mg_ca_set_t *set)
{
    if (set == NULL) return;
    for (size_t i = 0; i < set->n; i++) {
        free(set->cas[i].id);
        X509_free(set->cas[i].cert);
    }
    free(set->cas);
    free(set);
}

size_t mg_ca_count(const mg_ca_set_t *set)
{
    return set ? set->n : 0;
}

int mg_ca_find(const mg_ca_set_t *set, const char *id)
{
    for (size_t i = 0; set && id && i < set->n; i++)
        if (set->cas[i].id && strcmp(set->cas[i].id, id) == 0) return (int)i;
    return -1;
}

X509 *mg_ca_cert(const mg_ca_set_t *set, size_t i)
{
    return set && i < set->n ? set->cas[i].cert : NULL;
}

void mg_ca_refs_free(mg_ca_refs_t *refs)
{
    free(refs->idx);
    refs->idx = NULL;
    refs->n = 0;
}

/* Adds the CA named `id` (written at `ipath`) to out; false after reporting a problem. */
static bool ref_one(const mg_ca_set_t *set, const char *id, const char *ipath,
                    mg_config_errors_t *errs, mg_ca_refs_t *out)
{
    int k = mg_ca_find(set, id);
    if (k < 0) {
        mg_config_errors_add(errs, "%s: no ca_certificate has id '%s'", ipath, id);
        return false;
    }
    for (size_t j = 0; j < out->n; j++) {
        if (out->idx[j] == k) {
            mg_config_errors_add(errs, "%s: '%s' is listed twice", ipath, id);
            return false;
        }
    }
    if (set->cas[k].cert == NULL) return false; /* its own error is already reported */
    out->idx[out->n++] = k;
    return true;
}

bool mg_ca_refs_ids(const mg_ca_set_t *set, const char *const *ids, size_t n, const char *path,
                    mg_config_errors_t *errs, mg_ca_refs_t *out)
{
    *out = (mg_ca_refs_t){0};
    if (n == 0) return true;
    out->idx = calloc(n, sizeof(int));
    if (out->idx == NULL) {
        mg_config_errors_add(errs, "%s: out of memory", path);
        return false;
    }
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
        char ipath[512];
        snprintf(ipath, sizeof(ipath), "%s[%zu]", path, i);
        ok = ref_one(set, ids[i], ipath, errs, out) && ok;
    }
    if (!ok) mg_ca_refs_free(out);
    return ok;
}

bool mg_ca_refs(const mg_ca_set_t *set, const mg_value_t *v, const char *path, bool required,
                mg_config_errors_t *errs, mg_ca_refs_t *out)
{
    *out = (mg_ca_refs_t){0};
    if (v == NULL || v->kind == MG_VAL_NULL || (v->kind == MG_VAL_ARRAY && v->len == 0)) {
        if (required) mg_config_errors_add(errs, "%s: required", path);
        return !required;
    }
    if (v->kind != MG_VAL_ARRAY) {
        mg_config_errors_add(errs, "%s: must be a list of ca_certificate ids", path);
        return false;
    }
    const char **ids = calloc(v->len, sizeof(char *));
    if (ids == NULL) {
        mg_config_errors_add(errs, "%s: out of memory", path);
        return false;
    }
    bool ok = true;
    for (size_t i = 0; i < v->len; i++) {
        const mg_value_t *it = &v->items[i];
        if (it->kind == MG_VAL_MAP) it = mg_value_get(it, "id"); /* {id: ...} as Kong exports */
        if (it == NULL || it->kind != MG_VAL_STRING) {
            mg_config_errors_add(errs, "%s[%zu]: must be a ca_certificate id", path, i);
            ok = false;
            ids[i] = "";
        } else {
            ids[i] = it->str;
        }
    }
    if (ok) ok = mg_ca_refs_ids(set, ids, v->len, path, errs, out);
    free(ids);
    return ok;
}

X509_STORE *mg_ca_store(const mg_ca_set_t *set, const mg_ca_refs_t *refs)
{
    X509_STORE *st = X509_STORE_new();
    for (size_t i = 0; st && i < refs->n; i++) {
        if (X509_STORE_add_cert(st, set->cas[refs->idx[i]].cert) != 1) {
            X509_STORE_free(st);
            st = NULL;
        }
    }
    ERR_clear_error();
    return st;
}

STACK_OF(X509_NAME) * mg_ca_names(const mg_ca_set_t *set, const mg_ca_refs_t *refs)
{
    STACK_OF(X509_NAME) *sk = sk_X509_NAME_new_null();
    for (size_t i = 0; sk && i < refs->n; i++) {
        X509_NAME *nm = X509_NAME_dup(X509_get_subject_name(set->cas[refs->idx[i]].cert));
        if (nm == NULL || !sk_X509_NAME_push(sk, nm)) {
            X509_NAME_free(nm);
            sk_X509_NAME_pop_free(sk, X509_NAME_free);
            sk = NULL;
        }
    }
    return sk;
}
