/*
 * mg_ocsp.c — OCSP stapling: which certificates get a staple, the OCSP request for each,
 * the verification of the responses, and the status callback that staples them.
 *
 * Loading (master, before fork). For each certificate entity's leaf (and the alt one), the
 * responder is `ssl_stapling_responder` when set, else the leaf's first http:// OCSP URL
 * (Authority Information Access); the issuer must be the next certificate of `cert`, as
 * nginx requires without ssl_trusted_certificate. A leaf without a responder is skipped in
 * silence, one with an unusable responder or no issuer with a warning. The DER request (one
 * SHA-1 cert id, no nonce, so responses can be cached and shared) is built once.
 *
 * Fetching (workers). The HTTP exchange is Lua's (moongate.ocsp: an HTTP/1.0 POST on a
 * cosocket, DNS and I/O off the loop, one deadline for the whole exchange, a size cap, each
 * fetch in a timer of its own). Each worker's timer calls mg_ocsp_next, which first installs
 * what another worker fetched, then claims a due certificate with an `add` lock in a private
 * shared zone (one worker fetches per period); mg_ocsp_done verifies the answer and either
 * installs and shares it or schedules a retry.
 *
 * Shared zone keys, per certificate i: "r<i>" the last good DER response (TTL: its
 * nextUpdate), "d<i>" when the next fetch is due (epoch seconds), "f<i>" the failure streak,
 * "l<i>" the fetch lock (TTL: a bounded fetch); "g" a generation bumped on every change, so a
 * tick costs one lookup while nothing changes.
 *
 * Refresh: halfway to nextUpdate, at most hourly; a response without nextUpdate is used for
 * an hour. Failures retry after 5 s, doubling up to 5 minutes; the first failure of a streak
 * is logged (warn), the recovery too (notice). A good response stays stapled until its
 * nextUpdate whatever happens meanwhile; an unverified, mismatched, unknown or expired one
 * never is. A revoked status is stapled (and logged as an error): the client learns at once
 * what it would learn from the responder, where hiding it would let soft-failing clients
 * accept a revoked certificate (nginx drops such responses; Apache staples them).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/http.h>
#include <openssl/ocsp.h>
#include <openssl/x509v3.h>

#include "mg_ca.h"
#include "mg_log.h"
#include "mg_ocsp.h"
#include "mg_shdict.h"

#define MAX_RESP 16384     /* bytes of a DER response we accept (moongate.ocsp caps too) */
#define LOCK_TTL 30.0      /* seconds a fetch may hold the lock (moongate.ocsp: 20 s at most) */
#define RETRY_MIN 5.0      /* first retry after a failure */
#define RETRY_MAX 300.0    /* longest retry interval */
#define REFRESH_MAX 3600.0 /* refresh at least hourly */
#define REFRESH_MIN 5.0
#define NO_NEXT_UPDATE 3600 /* lifetime of a response without nextUpdate */

typedef struct ent_s {
    SSL_CTX *ctx;
    X509 *leaf, *issuer; /* own references */
    OCSP_CERTID *id;
    char *url, *where;
    unsigned char *req;
    int reqlen;
    struct ent_s *next; /* the other certificate (cert_alt) of the same context */
    /* this process's copy */
    unsigned char *resp;
    int resplen;
    time_t expires; /* nextUpdate of resp */
    double due;     /* when to look at fetching again */
} ent_t;

struct mg_ocsp_s {
    bool verify;
    const char *responder; /* ssl_stapling_responder, or NULL */
    ent_t **ents;
    size_t n, cap;
    mg_shdict_t *zone;
    double seen_gen;
    size_t cursor;
    unsigned char buf[MAX_RESP];
};

static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- pure helpers --------------------------------------------------------------------------- */

const char *mg_ocsp_responder(X509 *leaf, char *buf, size_t blen, bool *other)
{
    *other = false;
    STACK_OF(OPENSSL_STRING) *urls = X509_get1_ocsp(leaf);
    const char *found = NULL;
    for (int i = 0; urls && i < sk_OPENSSL_STRING_num(urls) && !found; i++) {
        const char *u = sk_OPENSSL_STRING_value(urls, i);
        if (strncasecmp(u, "http://", 7) == 0 && strlen(u) < blen) {
            snprintf(buf, blen, "%s", u);
            found = buf;
        } else {
            *other = true;
        }
    }
    X509_email_free(urls);
    return found;
}

static time_t asn1_time(const ASN1_GENERALIZEDTIME *t)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
    return timegm(&tm);
}

int mg_ocsp_check(const unsigned char *der, size_t len, X509 *issuer, OCSP_CERTID *id, bool verify,
                  time_t *expires, char *why, size_t wlen)
{
    const unsigned char *p = der;
    OCSP_RESPONSE *resp = len <= LONG_MAX ? d2i_OCSP_RESPONSE(NULL, &p, (long)len) : NULL;
    OCSP_BASICRESP *bs = NULL;
    STACK_OF(X509) *certs = NULL;
    X509_STORE *store = NULL;
    int rc = -1;
    *expires = 0;
    if (resp == NULL || p != der + len) {
        snprintf(why, wlen, "not a DER OCSP response");
        goto out;
    }
    int st = OCSP_response_status(resp);
    if (st != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
        snprintf(why, wlen, "the responder answered \"%s\"", OCSP_response_status_str(st));
        goto out;
    }
    if ((bs = OCSP_response_get1_basic(resp)) == NULL) {
        snprintf(why, wlen, "not a basic OCSP response");
        goto out;
    }
    /* Signed by the issuer itself (found in certs: trusted as is), or by a responder whose
     * certificate in the response chains to the issuer and carries OCSPSigning (checked
     * against a store holding only the issuer, as a trust anchor even when intermediate).
     * Without verify, the signature is still checked, not the signer's authority (nginx). */
    certs = sk_X509_new_null();
    store = X509_STORE_new();
    if (certs == NULL || store == NULL || !sk_X509_push(certs, issuer) ||
        X509_STORE_add_cert(store, issuer) != 1 ||
        X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN) != 1) {
        snprintf(why, wlen, "out of memory");
        goto out;
    }
    if (OCSP_basic_verify(bs, certs, store, verify ? OCSP_TRUSTOTHER : OCSP_NOVERIFY) != 1) {
        snprintf(why, wlen, "the response's signature does not verify against the issuer (%s)",
                 mg_ssl_reason());
        goto out;
    }
    int status, reason;
    ASN1_GENERALIZEDTIME *rev, *thisupd, *nextupd;
    if (OCSP_resp_find_status(bs, id, &status, &reason, &rev, &thisupd, &nextupd) != 1) {
        snprintf(why, wlen, "the response has no status for this certificate");
        goto out;
    }
    if (OCSP_check_validity(thisupd, nextupd, MG_OCSP_SKEW, -1) != 1) {
        ERR_clear_error();
        snprintf(why, wlen,
                 "the response is outside its validity period (thisUpdate, "
                 "nextUpdate)");
        goto out;
    }
    if (nextupd && asn1_time(nextupd) <= time(NULL)) {
        snprintf(why, wlen, "the response has expired (nextUpdate is past)");
        goto out;
    }
    if (status != V_OCSP_CERTSTATUS_GOOD && status != V_OCSP_CERTSTATUS_REVOKED) {
        snprintf(why, wlen, "the certificate's status is \"%s\"", OCSP_cert_status_str(status));
        goto out;
    }
    *expires = nextupd ? asn1_time(nextupd) : 0;
    rc = status;
out:
    ERR_clear_error();
    sk_X509_free(certs); /* issuer is not ours */
    X509_STORE_free(store);
    OCSP_BASICRESP_free(bs);
    OCSP_RESPONSE_free(resp);
    return rc;
}

/* ---- handshakes ----------------------------------------------------------------------------- */

/* The client asked for a status (status_request): staple the response of the certificate
 * this handshake uses, when this process holds one that has not expired. */
static int status_cb(SSL *ssl, void *arg)
{
    X509 *cert = SSL_get_certificate(ssl);
    ent_t *e = arg;
    while (e && e->leaf != cert)
        e = e->next;
    if (e == NULL || e->resp == NULL || e->expires <= time(NULL)) return SSL_TLSEXT_ERR_NOACK;
    unsigned char *copy = OPENSSL_memdup(e->resp, (size_t)e->resplen); /* OpenSSL frees it */
    if (copy == NULL) return SSL_TLSEXT_ERR_NOACK;
    if (SSL_set_tlsext_status_ocsp_resp(ssl, copy, e->resplen) != 1) {
        OPENSSL_free(copy);
        return SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* ---- loading -------------------------------------------------------------------------------- */

mg_ocsp_t *mg_ocsp_new(const mg_config_t *cfg)
{
    if (!cfg->ssl_stapling) return NULL;
    mg_ocsp_t *o = calloc(1, sizeof(*o));
    if (o == NULL) return NULL;
    o->verify = cfg->ssl_stapling_verify;
    o->responder = cfg->ssl_stapling_responder;
    o->seen_gen = -1;
    return o;
}

static void ent_free(ent_t *e)
{
    X509_free(e->leaf);
    X509_free(e->issuer);
    OCSP_CERTID_free(e->id);
    free(e->url);
    free(e->where);
    OPENSSL_free(e->req);
    free(e->resp);
    free(e);
}

void mg_ocsp_free(mg_ocsp_t *o)
{
    if (o == NULL) return;
    for (size_t i = 0; i < o->n; i++)
        ent_free(o->ents[i]);
    free(o->ents);
    mg_shdict_destroy(o->zone);
    free(o);
}

void mg_ocsp_add(mg_ocsp_t *o, SSL_CTX *ctx, X509 *leaf, STACK_OF(X509) * chain, const char *where)
{
    if (o == NULL) return;
    char buf[1024];
    bool other = false;
    const char *url =
        o->responder ? o->responder : mg_ocsp_responder(leaf, buf, sizeof(buf), &other);
    if (url == NULL) {
        if (other)
            mg_log_warn("%s: the certificate's OCSP responder is not an http:// URL: no OCSP "
                        "stapling for it (set ssl_stapling_responder)",
                        where);
        return;
    }
    X509 *issuer = chain && sk_X509_num(chain) > 0 ? sk_X509_value(chain, 0) : NULL;
    if (issuer == NULL || X509_check_issued(issuer, leaf) != X509_V_OK) {
        mg_log_warn("%s: the certificate has an OCSP responder but its issuer is not the next "
                    "certificate of the chain: no OCSP stapling for it",
                    where);
        return;
    }
    ent_t *e = calloc(1, sizeof(*e));
    OCSP_REQUEST *req = OCSP_REQUEST_new();
    bool ok = e && req;
    if (ok && o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 8;
        ent_t **n2 = realloc(o->ents, cap * sizeof(*n2));
        ok = n2 != NULL;
        if (ok) {
            o->ents = n2;
            o->cap = cap;
        }
    }
    if (ok) {
        e->ctx = ctx;
        e->id = OCSP_cert_to_id(NULL, leaf, issuer);
        OCSP_CERTID *rid = e->id ? OCSP_CERTID_dup(e->id) : NULL;
        ok = rid && OCSP_request_add0_id(req, rid);
        if (!ok) OCSP_CERTID_free(rid);
        e->req = NULL;
        e->reqlen = ok ? i2d_OCSP_REQUEST(req, &e->req) : -1;
        e->url = strdup(url);
        e->where = strdup(where);
        ok = ok && e->reqlen > 0 && e->url && e->where && X509_up_ref(leaf) == 1;
        if (ok) e->leaf = leaf;
        ok = ok && X509_up_ref(issuer) == 1;
        if (ok) e->issuer = issuer;
    }
    OCSP_REQUEST_free(req);
    if (!ok) {
        mg_log_warn("%s: cannot build the OCSP request (%s): no OCSP stapling for it", where,
                    mg_ssl_reason());
        if (e) ent_free(e);
        return;
    }
    void *first = NULL;
    SSL_CTX_get_tlsext_status_arg(ctx, &first);
    e->next = first; /* the alt certificate of the same context, if registered before */
    SSL_CTX_set_tlsext_status_cb(ctx, status_cb);
    SSL_CTX_set_tlsext_status_arg(ctx, e);
    o->ents[o->n++] = e;
}

bool mg_ocsp_ready(mg_ocsp_t *o)
{
    if (o == NULL || o->n == 0) return true;
    /* a zone's largest item is an eighth of it: room for MAX_RESP plus each response */
    size_t size = 512 * 1024 + o->n * (MAX_RESP + 1024);
    o->zone = mg_shdict_create("ocsp", size);
    if (o->zone == NULL) {
        mg_log_err("ssl_stapling: cannot create the shared zone of OCSP responses: %s",
                   strerror(errno));
        return false;
    }
    return true;
}

/* ---- the shared zone ------------------------------------------------------------------------ */

static size_t key(char *k, char kind, size_t i)
{
    return (size_t)snprintf(k, 32, "%c%zu", kind, i);
}

static double get_num(mg_ocsp_t *o, char kind, size_t i, double dflt)
{
    char k[32];
    size_t kl = kind == 'g' ? (size_t)snprintf(k, sizeof(k), "g") : key(k, kind, i);
    mg_shdict_value_t v;
    if (mg_shdict_get(o->zone, k, kl, &v, NULL, 0) != MG_OK || v.type != MG_SHDICT_NUMBER)
        return dflt;
    return v.number;
}

static void set_num(mg_ocsp_t *o, char kind, size_t i, double num)
{
    char k[32];
    size_t kl = key(k, kind, i);
    mg_shdict_store(o->zone, MG_SHDICT_SET, k, kl, MG_SHDICT_NUMBER, NULL, 0, num, 0, NULL);
}

static void del(mg_ocsp_t *o, char kind, size_t i)
{
    char k[32];
    size_t kl = key(k, kind, i);
    mg_shdict_store(o->zone, MG_SHDICT_SET, k, kl, MG_SHDICT_NIL, NULL, 0, 0, 0, NULL);
}

static void bump(mg_ocsp_t *o)
{
    double out;
    mg_shdict_incr(o->zone, "g", 1, 1, true, 0, 0, &out, NULL);
}

static void install(ent_t *e, const unsigned char *der, size_t len, time_t expires)
{
    unsigned char *copy = malloc(len);
    if (copy == NULL) return;
    memcpy(copy, der, len);
    free(e->resp);
    e->resp = copy;
    e->resplen = (int)len;
    e->expires = expires;
}

/* Takes what the zone holds for entry i: its due time, and a response another worker
 * fetched (verified again here: the zone is shared memory, trusted no more than the wire). */
static void sync_ent(mg_ocsp_t *o, size_t i)
{
    ent_t *e = o->ents[i];
    e->due = get_num(o, 'd', i, e->due);
    char k[32];
    size_t kl = key(k, 'r', i);
    mg_shdict_value_t v;
    if (mg_shdict_get(o->zone, k, kl, &v, (char *)o->buf, sizeof(o->buf)) != MG_OK ||
        v.type != MG_SHDICT_STRING)
        return;
    if (e->resp && (size_t)e->resplen == v.len && memcmp(e->resp, o->buf, v.len) == 0) return;
    char why[256];
    time_t expires;
    if (mg_ocsp_check(o->buf, v.len, e->issuer, e->id, o->verify, &expires, why, sizeof(why)) < 0)
        return; /* the fetching worker checked it a moment ago: only time can have changed */
    install(e, o->buf, v.len, expires ? expires : (time_t)(wall() + NO_NEXT_UPDATE));
}

int mg_ocsp_next(mg_ocsp_t *o, int *idx, const char **url, size_t *ulen, const unsigned char **req,
                 size_t *rlen)
{
    if (o == NULL || o->zone == NULL || o->n == 0) return MG_DECLINED;
    double now = wall();
    double gen = get_num(o, 'g', 0, 0);
    if (gen != o->seen_gen) {
        o->seen_gen = gen;
        for (size_t i = 0; i < o->n; i++)
            sync_ent(o, i);
    }
    for (size_t k = 0; k < o->n; k++) {
        size_t i = (o->cursor + k) % o->n;
        ent_t *e = o->ents[i];
        if (e->resp && e->expires <= now) { /* never staple it again */
            free(e->resp);
            e->resp = NULL;
        }
        if (e->due > now + REFRESH_MAX + RETRY_MAX) e->due = now; /* the clock went back */
        if (now < e->due) continue;
        char lk[32];
        size_t kl = key(lk, 'l', i);
        if (mg_shdict_store(o->zone, MG_SHDICT_ADD, lk, kl, MG_SHDICT_NUMBER, NULL, 0, now,
                            LOCK_TTL, NULL) != MG_OK) {
            e->due = now + 1; /* another worker fetches it: look at its result then */
            continue;
        }
        o->cursor = i + 1;
        *idx = (int)i;
        *url = e->url;
        *ulen = strlen(e->url);
        *req = e->req;
        *rlen = (size_t)e->reqlen;
        return MG_AGAIN;
    }
    return MG_OK;
}

static void fmt_time(time_t t, char *buf, size_t len)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

void mg_ocsp_done(mg_ocsp_t *o, int idx, int status, const unsigned char *body, size_t blen,
                  const char *err)
{
    if (o == NULL || o->zone == NULL || idx < 0 || (size_t)idx >= o->n) return;
    size_t i = (size_t)idx;
    ent_t *e = o->ents[i];
    char why[300];
    time_t expires = 0;
    int st = -1;
    double now = wall();
    if (status == 0)
        snprintf(why, sizeof(why), "%s", err && *err ? err : "no answer");
    else if (status != 200)
        snprintf(why, sizeof(why), "HTTP status %d", status);
    else if (blen > MAX_RESP)
        snprintf(why, sizeof(why), "the response is larger than %d bytes", MAX_RESP);
    else
        st = mg_ocsp_check(body, blen, e->issuer, e->id, o->verify, &expires, why, sizeof(why));
    double streak = get_num(o, 'f', i, 0);
    if (st >= 0) {
        if (expires == 0) expires = (time_t)now + NO_NEXT_UPDATE;
        install(e, body, blen, expires);
        double refresh = fmin(fmax(((double)expires - now) / 2, REFRESH_MIN), REFRESH_MAX);
        char k[32];
        size_t kl = key(k, 'r', i);
        mg_shdict_store(o->zone, MG_SHDICT_SET, k, kl, MG_SHDICT_STRING, (const char *)body, blen,
                        0, (double)expires - now, NULL);
        e->due = now + refresh;
        set_num(o, 'd', i, e->due);
        del(o, 'f', i);
        if (streak > 0) mg_log_notice("%s: OCSP responder %s answers again", e->where, e->url);
        if (st == V_OCSP_CERTSTATUS_REVOKED)
            mg_log_err("%s: OCSP responder %s says the certificate is REVOKED (the response "
                       "is stapled: clients will refuse it)",
                       e->where, e->url);
        else
            mg_log_info("%s: OCSP response from %s stapled", e->where, e->url);
    } else {
        streak += 1;
        set_num(o, 'f', i, streak);
        double backoff = fmin(RETRY_MIN * pow(2, fmin(streak - 1, 16)), RETRY_MAX);
        e->due = now + backoff;
        set_num(o, 'd', i, e->due);
        if (streak == 1) {
            char until[64] = "";
            if (e->resp && e->expires > now) fmt_time(e->expires, until, sizeof(until));
            mg_log_warn("%s: no OCSP response from %s: %s; %s%s (retrying with backoff, "
                        "logged once until it answers)",
                        e->where, e->url, why,
                        *until ? "the previous response stays stapled until " : "no stapling",
                        until);
        }
    }
    bump(o);
    del(o, 'l', i);
}
