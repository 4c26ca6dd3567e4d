/*
 * test_ocsp.c — unit tests for mg_ocsp.c's pure parts, on certificates and responses built
 * in memory: the responder URL from Authority Information Access (http only), the response
 * checks (good, revoked, unknown, another certificate, another signer with and without
 * verification, a delegated responder, validity window, garbage, trailing bytes, a
 * non-successful answer) and the status callback (an expired response is never stapled).
 */
#include <string.h>

#include <openssl/ec.h>

#include "mg_test.h"
#include "../mg_ocsp.c"

static EVP_PKEY *keygen(void)
{
    return EVP_EC_gen("P-256");
}

/* A certificate for `cn` with key `key`, signed by issuer/ikey (itself when NULL), with the
 * given v3 extensions ("name", "value" pairs, NULL-terminated). */
static X509 *make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *ikey, long serial,
                       const char *const *exts)
{
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_NAME *n = X509_NAME_new();
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(x, n);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
    X509_NAME_free(n);
    X509_set_pubkey(x, key);
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    for (size_t i = 0; exts && exts[i]; i += 2) {
        X509_EXTENSION *e = X509V3_EXT_conf(NULL, &v3, exts[i], exts[i + 1]);
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    X509_sign(x, ikey ? ikey : key, EVP_sha256());
    return x;
}

static EVP_PKEY *ca_key, *other_key, *leaf_key, *resp_key;
static X509 *ca, *other, *leaf, *leaf2, *delegate;

static void setup(void)
{
    if (ca) return;
    static const char *const ca_ext[] = {"basicConstraints", "critical,CA:TRUE", "keyUsage",
                                         "critical,keyCertSign,cRLSign", NULL};
    static const char *const leaf_ext[] = {"authorityInfoAccess",
                                           "OCSP;URI:http://127.0.0.1:8888/ocsp", NULL};
    static const char *const resp_ext[] = {"extendedKeyUsage", "OCSPSigning", NULL};
    ca_key = keygen();
    other_key = keygen();
    leaf_key = keygen();
    resp_key = keygen();
    ca = make_cert("ca", ca_key, NULL, NULL, 1, ca_ext);
    other = make_cert("other", other_key, NULL, NULL, 1, ca_ext);
    leaf = make_cert("leaf", leaf_key, ca, ca_key, 2, leaf_ext);
    leaf2 = make_cert("leaf2", leaf_key, ca, ca_key, 3, leaf_ext);
    delegate = make_cert("responder", resp_key, ca, ca_key, 4, resp_ext);
}

/* A DER response about `cert` (status, this/next update offsets in seconds, next < -1e6 for
 * none), signed by signer/skey; *len set. */
static unsigned char *response(X509 *cert, int status, long this_off, long next_off, X509 *signer,
                               EVP_PKEY *skey, int *len)
{
    OCSP_BASICRESP *bs = OCSP_BASICRESP_new();
    OCSP_CERTID *id = OCSP_cert_to_id(NULL, cert, ca);
    ASN1_TIME *thisupd = X509_gmtime_adj(NULL, this_off);
    ASN1_TIME *nextupd = next_off > -1000000 ? X509_gmtime_adj(NULL, next_off) : NULL;
    ASN1_TIME *rev = X509_gmtime_adj(NULL, -86400);
    OCSP_basic_add1_status(bs, id, status, status == V_OCSP_CERTSTATUS_REVOKED ? 0 : -1,
                           status == V_OCSP_CERTSTATUS_REVOKED ? rev : NULL, thisupd, nextupd);
    OCSP_basic_sign(bs, signer, skey, EVP_sha256(), NULL, 0);
    OCSP_RESPONSE *r = OCSP_response_create(OCSP_RESPONSE_STATUS_SUCCESSFUL, bs);
    unsigned char *der = NULL;
    *len = i2d_OCSP_RESPONSE(r, &der);
    OCSP_RESPONSE_free(r);
    OCSP_BASICRESP_free(bs);
    OCSP_CERTID_free(id);
    ASN1_TIME_free(thisupd);
    ASN1_TIME_free(nextupd);
    ASN1_TIME_free(rev);
    return der;
}

static int check(const unsigned char *der, int len, bool verify, time_t *exp, char *why)
{
    OCSP_CERTID *id = OCSP_cert_to_id(NULL, leaf, ca);
    int rc = mg_ocsp_check(der, (size_t)len, ca, id, verify, exp, why, 256);
    OCSP_CERTID_free(id);
    return rc;
}

TEST(responder_url)
{
    setup();
    char buf[256];
    bool other_url;
    CHECK_STR(mg_ocsp_responder(leaf, buf, sizeof(buf), &other_url), "http://127.0.0.1:8888/ocsp");
    CHECK(!other_url);
    CHECK(mg_ocsp_responder(ca, buf, sizeof(buf), &other_url) == NULL);
    CHECK(!other_url);
    static const char *const https_ext[] = {"authorityInfoAccess",
                                            "OCSP;URI:https://ocsp.example.com/", NULL};
    X509 *x = make_cert("x", leaf_key, ca, ca_key, 9, https_ext);
    CHECK(mg_ocsp_responder(x, buf, sizeof(buf), &other_url) == NULL);
    CHECK(other_url);
    X509_free(x);
    static const char *const two_ext[] = {
        "authorityInfoAccess",
        "OCSP;URI:https://ocsp.example.com/,OCSP;URI:http://ocsp.example.com/", NULL};
    x = make_cert("x", leaf_key, ca, ca_key, 9, two_ext);
    CHECK_STR(mg_ocsp_responder(x, buf, sizeof(buf), &other_url), "http://ocsp.example.com/");
    X509_free(x);
}

TEST(check_statuses)
{
    setup();
    char why[256] = "";
    time_t exp;
    int len;
    unsigned char *der = response(leaf, V_OCSP_CERTSTATUS_GOOD, -60, 600, ca, ca_key, &len);
    CHECK_INT(check(der, len, true, &exp, why), V_OCSP_CERTSTATUS_GOOD);
    CHECK(exp > time(NULL) + 590 && exp <= time(NULL) + 601);
    /* trailing bytes, a truncated response, garbage */
    unsigned char *longer = malloc((size_t)len + 1);
    memcpy(longer, der, (size_t)len);
    longer[len] = 0;
    CHECK_INT(check(longer, len + 1, true, &exp, why), -1);
    CHECK_STR(why, "not a DER OCSP response");
    CHECK_INT(check(der, len - 1, true, &exp, why), -1);
    CHECK_INT(check((const unsigned char *)"{\"hello\":1}", 11, true, &exp, why), -1);
    free(longer);
    OPENSSL_free(der);

    der = response(leaf, V_OCSP_CERTSTATUS_REVOKED, -60, 600, ca, ca_key, &len);
    CHECK_INT(check(der, len, true, &exp, why), V_OCSP_CERTSTATUS_REVOKED);
    OPENSSL_free(der);

    der = response(leaf, V_OCSP_CERTSTATUS_UNKNOWN, -60, 600, ca, ca_key, &len);
    CHECK_INT(check(der, len, true, &exp, why), -1);
    CHECK_STR(why, "the certificate's status is \"unknown\"");
    OPENSSL_free(der);

    /* a response about another certificate of the same CA */
    der = response(leaf2, V_OCSP_CERTSTATUS_GOOD, -60, 600, ca, ca_key, &len);
    CHECK_INT(check(der, len, true, &exp, why), -1);
    CHECK_STR(why, "the response has no status for this certificate");
    OPENSSL_free(der);

    /* no nextUpdate: valid, expires 0 (the caller picks a lifetime) */
    der = response(leaf, V_OCSP_CERTSTATUS_GOOD, -60, -2000000, ca, ca_key, &len);
    CHECK_INT(check(der, len, true, &exp, why), V_OCSP_CERTSTATUS_GOOD);
    CHECK(exp == 0);
    OPENSSL_free(der);

    /* a non-successful answer */
    OCSP_RESPONSE *r = OCSP_response_create(OCSP_RESPONSE_STATUS_TRYLATER, NULL);
    der = NULL;
    len = i2d_OCSP_RESPONSE(r, &der);
    OCSP_RESPONSE_free(r);
    CHECK_INT(check(der, len, true, &exp, why), -1);
    CHECK_STR(why, "the responder answered \"trylater\"");
    OPENSSL_free(der);
}

TEST(check_times)
{
    setup();
    char why[256];
    time_t exp;
    int len;
    /* expired a minute ago: within the skew for OCSP_check_validity, refused anyway */
    unsigned char *der = response(leaf, V_OCSP_CERTSTATUS_GOOD, -7200, -60, ca, ca_key, &len);
    CHECK_INT(check(der, len, true, &exp, why), -1);
    CHECK_STR(why, "the response has expired (nextUpdate is past)");
    OPENSSL_free(der);
    /* long expired */
    der = response(leaf, V_OCSP_CERTSTATUS_GOOD, -7200, -3600, ca, ca_key, &len);
    CHECK_INT(check(der, len, true, &exp, why), -1);
    OPENSSL_free(der);
    /* thisUpdate an hour ahead: a clock problem somewhere */
    der = response(leaf, V_OCSP_CERTSTATUS_GOOD, 3600, 7200, ca, ca_key, &len);
    CHECK_INT(check(der, len, true, &exp, why), -1);
    CHECK(strstr(why, "outside its validity period") != NULL);
    OPENSSL_free(der);
    /* thisUpdate a minute ahead: within the skew */
    der = response(leaf, V_OCSP_CERTSTATUS_GOOD, 60, 7200, ca, ca_key, &len);
    CHECK_INT(check(der, len, true, &exp, why), V_OCSP_CERTSTATUS_GOOD);
    OPENSSL_free(der);
}

TEST(check_signers)
{
    setup();
    char why[256];
    time_t exp;
    int len;
    /* another CA signs (and includes its certificate): refused, unless not verifying */
    unsigned char *der = response(leaf, V_OCSP_CERTSTATUS_GOOD, -60, 600, other, other_key, &len);
    CHECK_INT(check(der, len, true, &exp, why), -1);
    CHECK(strstr(why, "does not verify against the issuer") != NULL);
    CHECK_INT(check(der, len, false, &exp, why), V_OCSP_CERTSTATUS_GOOD);
    OPENSSL_free(der);
    /* a responder the CA delegated to (OCSPSigning) */
    der = response(leaf, V_OCSP_CERTSTATUS_GOOD, -60, 600, delegate, resp_key, &len);
    CHECK_INT(check(der, len, true, &exp, why), V_OCSP_CERTSTATUS_GOOD);
    OPENSSL_free(der);
    /* a leaf of the CA without OCSPSigning may not answer for its siblings */
    der = response(leaf, V_OCSP_CERTSTATUS_GOOD, -60, 600, leaf2, leaf_key, &len);
    CHECK_INT(check(der, len, true, &exp, why), -1);
    OPENSSL_free(der);
}

TEST(status_callback_never_staples_expired)
{
    setup();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    CHECK(SSL_CTX_use_certificate(ctx, leaf) == 1);
    CHECK(SSL_CTX_use_PrivateKey(ctx, leaf_key) == 1);
    ent_t e = {.ctx = ctx, .leaf = leaf};
    SSL *ssl = SSL_new(ctx);
    CHECK_INT(status_cb(ssl, &e), SSL_TLSEXT_ERR_NOACK); /* nothing fetched yet */
    unsigned char der[] = {1, 2, 3};
    install(&e, der, sizeof(der), time(NULL) + 60);
    CHECK_INT(status_cb(ssl, &e), SSL_TLSEXT_ERR_OK);
    e.expires = time(NULL) - 1;
    SSL_free(ssl);
    ssl = SSL_new(ctx);
    CHECK_INT(status_cb(ssl, &e), SSL_TLSEXT_ERR_NOACK);
    /* another certificate of the context (cert_alt) has its own response */
    ent_t alt = {.ctx = ctx, .leaf = leaf2, .next = NULL};
    e.next = NULL;
    e.expires = time(NULL) + 60;
    CHECK_INT(status_cb(ssl, &alt), SSL_TLSEXT_ERR_NOACK);
    alt.next = &e;
    CHECK_INT(status_cb(ssl, &alt), SSL_TLSEXT_ERR_OK);
    SSL_free(ssl);
    free(e.resp);
    SSL_CTX_free(ctx);
}

TEST_MAIN()
