/*
 * test_ca.c — unit tests for mg_ca.c: the `ca_certificates` entity's checks (a CA loads, PEM
 * text or a file path; bad PEM, two certificates, an expired one, a leaf without the CA basic
 * constraint, a wrong cert_digest, unknown fields and duplicate ids are refused with their
 * paths) and references by id (unknown ids, duplicates, required lists), and that the store
 * built from references verifies a leaf the CA signed and nothing else.
 */
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "mg_test.h"
#include "../mg_ca.c"

/* A certificate made on the spot: self-signed when issuer is NULL; `ca` adds CA:TRUE;
 * validity from now+from_days to now+to_days. The key in *key_out when asked for. */
static X509 *make_cert(const char *cn, bool ca, int from_days, int to_days, X509 *issuer,
                       EVP_PKEY *ikey, EVP_PKEY **key_out)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(rand() & 0x7fffffff));
    X509_gmtime_adj(X509_getm_notBefore(x), (long)from_days * 86400);
    X509_gmtime_adj(X509_getm_notAfter(x), (long)to_days * 86400);
    X509_set_pubkey(x, key);
    X509_NAME *nm = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : nm);
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    X509_EXTENSION *e =
        X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, ca ? "critical,CA:TRUE" : "CA:FALSE");
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    X509_sign(x, issuer ? ikey : key, EVP_sha256());
    if (key_out)
        *key_out = key;
    else
        EVP_PKEY_free(key);
    return x;
}

static char *pem_of(X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, x);
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *s = strndup(data, (size_t)n);
    BIO_free(b);
    return s;
}

/* A config holding `n` ca_certificates maps built from (id, cert) pairs; extra key optional. */
typedef struct {
    mg_config_t cfg;
    mg_value_t list, ents[4], fields[4][3];
    char *keys[4][3];
} fake_t;

static void fake_add(fake_t *f, const char *id, const char *cert, const char *k3, const char *v3)
{
    size_t i = f->list.len++;
    mg_value_t *e = &f->ents[i];
    size_t n = 0;
    if (id) {
        f->keys[i][n] = "id";
        f->fields[i][n++] = (mg_value_t){.kind = MG_VAL_STRING, .str = (char *)id};
    }
    f->keys[i][n] = "cert";
    f->fields[i][n++] = (mg_value_t){.kind = MG_VAL_STRING, .str = (char *)cert};
    if (k3) {
        f->keys[i][n] = (char *)k3;
        f->fields[i][n++] = (mg_value_t){.kind = MG_VAL_STRING, .str = (char *)v3};
    }
    *e = (mg_value_t){.kind = MG_VAL_MAP, .len = n, .keys = f->keys[i], .items = f->fields[i]};
}

static void fake_init(fake_t *f)
{
    memset(f, 0, sizeof(*f));
    f->list = (mg_value_t){.kind = MG_VAL_ARRAY, .items = f->ents};
    f->cfg.ca_certificates = &f->list;
    f->cfg.prefix = "/";
}

/* True when errs holds exactly one message, equal to `want` (or starting with it when `want`
 * ends with '*': OpenSSL's reasons vary across versions). */
static bool one_error(mg_config_errors_t *errs, const char *want)
{
    size_t n = strlen(want);
    bool prefix = n > 0 && want[n - 1] == '*';
    if (errs->n != 1 ||
        (prefix ? strncmp(errs->items[0], want, n - 1) : strcmp(errs->items[0], want)) != 0) {
        for (size_t i = 0; i < errs->n; i++)
            fprintf(stderr, "#   got: %s\n", errs->items[i]);
        return false;
    }
    return true;
}

static X509 *root;
static EVP_PKEY *root_key;
static char *root_pem;

static void setup(void)
{
    if (root) return;
    root = make_cert("Test Root", true, -1, 365, NULL, NULL, &root_key);
    root_pem = pem_of(root);
}

TEST(ca_loads_from_pem_and_file)
{
    setup();
    char path[] = "/tmp/mg_test_ca_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, root_pem, strlen(root_pem)) == (ssize_t)strlen(root_pem));
    close(fd);
    fake_t f;
    fake_init(&f);
    EVP_PKEY *k;
    X509 *other = make_cert("Other Root", true, -1, 365, NULL, NULL, &k);
    EVP_PKEY_free(k);
    char *other_pem = pem_of(other);
    fake_add(&f, "a", other_pem, NULL, NULL);
    fake_add(&f, "b", path, NULL, NULL);
    mg_config_errors_t errs;
    mg_config_errors_init(&errs);
    mg_ca_set_t *set = mg_ca_load(&f.cfg, &errs);
    CHECK_INT(errs.n, 0);
    CHECK_INT(mg_ca_count(set), 2);
    CHECK_INT(mg_ca_find(set, "b"), 1);
    CHECK_INT(mg_ca_find(set, "zz"), -1);
    CHECK(X509_cmp(mg_ca_cert(set, 1), root) == 0);
    CHECK(X509_cmp(mg_ca_cert(set, 0), other) == 0);
    mg_ca_free(set);
    X509_free(other);
    free(other_pem);
    mg_config_errors_free(&errs);
    unlink(path);
}

static void expect_refused(const char *cert, const char *k3, const char *v3, const char *want)
{
    fake_t f;
    fake_init(&f);
    fake_add(&f, "a", cert, k3, v3);
    mg_config_errors_t errs;
    mg_config_errors_init(&errs);
    mg_ca_set_t *set = mg_ca_load(&f.cfg, &errs);
    CHECK(one_error(&errs, want));
    mg_ca_free(set);
    mg_config_errors_free(&errs);
}

TEST(ca_refusals)
{
    setup();
    EVP_PKEY *k;
    X509 *leaf = make_cert("leaf", false, -1, 30, root, root_key, NULL);
    X509 *old = make_cert("Old Root", true, -30, -1, NULL, NULL, &k);
    EVP_PKEY_free(k);
    char *leaf_pem = pem_of(leaf), *old_pem = pem_of(old);
    char two[8192];
    snprintf(two, sizeof(two), "%s%s", root_pem, leaf_pem);
    expect_refused(leaf_pem, NULL, NULL,
                   "ca_certificates[0].cert: certificate does not appear to be a CA because it "
                   "is missing the \"CA\" basic constraint");
    expect_refused(old_pem, NULL, NULL,
                   "ca_certificates[0].cert: certificate expired, \"Not After\" time is in the "
                   "past");
    expect_refused(two, NULL, NULL,
                   "ca_certificates[0].cert: please submit only one certificate at a time");
    expect_refused("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", NULL, NULL,
                   "ca_certificates[0].cert: invalid PEM certificate (*");
    expect_refused("/nonexistent/ca.pem", NULL, NULL,
                   "ca_certificates[0].cert: cannot read '/nonexistent/ca.pem': No such file or "
                   "directory");
    expect_refused(root_pem, "key", "x", "ca_certificates[0].key: unknown field");
    char hex[65], want[256];
    CHECK(digest_hex(root, hex));
    snprintf(want, sizeof(want),
             "ca_certificates[0].cert_digest: does not match the certificate (its SHA-256 is %s)",
             hex);
    expect_refused(root_pem, "cert_digest", "00", want);
    /* the right digest, in either case, is accepted */
    fake_t f;
    fake_init(&f);
    for (char *p = hex; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    fake_add(&f, "a", root_pem, "cert_digest", hex);
    mg_config_errors_t errs;
    mg_config_errors_init(&errs);
    mg_ca_set_t *set = mg_ca_load(&f.cfg, &errs);
    CHECK_INT(errs.n, 0);
    mg_ca_free(set);
    mg_config_errors_free(&errs);
    X509_free(leaf);
    X509_free(old);
    free(leaf_pem);
    free(old_pem);
}

TEST(ca_duplicates_and_shapes)
{
    setup();
    EVP_PKEY *k;
    X509 *other = make_cert("Other Root", true, -1, 365, NULL, NULL, &k);
    EVP_PKEY_free(k);
    char *other_pem = pem_of(other);
    fake_t f;
    fake_init(&f);
    fake_add(&f, "a", root_pem, NULL, NULL);
    fake_add(&f, "a", other_pem, NULL, NULL);
    mg_config_errors_t errs;
    mg_config_errors_init(&errs);
    mg_ca_set_t *set = mg_ca_load(&f.cfg, &errs);
    CHECK(one_error(&errs, "ca_certificates[1].id: 'a' is already used by ca_certificates[0]"));
    mg_ca_free(set);
    errs.n = 0;
    fake_init(&f);
    fake_add(&f, "a", root_pem, NULL, NULL);
    fake_add(&f, "b", root_pem, NULL, NULL);
    set = mg_ca_load(&f.cfg, &errs);
    CHECK(one_error(&errs, "ca_certificates[1].cert: the same certificate as ca_certificates[0]"));
    mg_ca_free(set);
    errs.n = 0;
    /* a list of mappings, each with string fields */
    fake_init(&f);
    f.list.kind = MG_VAL_MAP;
    set = mg_ca_load(&f.cfg, &errs);
    CHECK(one_error(&errs, "ca_certificates: must be a list"));
    mg_ca_free(set);
    errs.n = 0;
    fake_init(&f);
    f.list.len = 1;
    f.ents[0] = (mg_value_t){.kind = MG_VAL_STRING, .str = "x"};
    set = mg_ca_load(&f.cfg, &errs);
    CHECK(one_error(&errs, "ca_certificates[0]: must be a mapping"));
    mg_ca_free(set);
    errs.n = 0;
    fake_init(&f);
    fake_add(&f, "a", root_pem, "cert_digest", "x");
    f.fields[0][0] = (mg_value_t){.kind = MG_VAL_INT};
    f.fields[0][2] = (mg_value_t){.kind = MG_VAL_BOOL};
    set = mg_ca_load(&f.cfg, &errs);
    CHECK_INT(errs.n, 2);
    CHECK(errs.n == 2 && strcmp(errs.items[0], "ca_certificates[0].id: must be a string") == 0);
    CHECK(errs.n == 2 &&
          strcmp(errs.items[1], "ca_certificates[0].cert_digest: must be a string") == 0);
    mg_ca_free(set);
    mg_config_errors_free(&errs);
    X509_free(other);
    free(other_pem);
}

TEST(ca_references)
{
    setup();
    fake_t f;
    fake_init(&f);
    EVP_PKEY *k;
    X509 *other = make_cert("Other Root", true, -1, 365, NULL, NULL, &k);
    EVP_PKEY_free(k);
    char *other_pem = pem_of(other);
    X509_free(other);
    fake_add(&f, "a", root_pem, NULL, NULL);
    fake_add(&f, NULL, other_pem, NULL, NULL); /* no id: cannot be referenced */
    mg_config_errors_t errs;
    mg_config_errors_init(&errs);
    mg_ca_set_t *set = mg_ca_load(&f.cfg, &errs);
    CHECK_INT(errs.n, 0);
    mg_ca_refs_t refs;
    const char *good[] = {"a"}, *bad[] = {"a", "b"}, *twice[] = {"a", "a"};
    CHECK(mg_ca_refs_ids(set, good, 1, "x.ca_certificates", &errs, &refs));
    CHECK_INT(refs.n, 1);
    CHECK_INT(refs.idx[0], 0);
    mg_ca_refs_free(&refs);
    CHECK(!mg_ca_refs_ids(set, bad, 2, "x.ca", &errs, &refs));
    CHECK(one_error(&errs, "x.ca[1]: no ca_certificate has id 'b'"));
    CHECK(refs.n == 0 && refs.idx == NULL);
    errs.n = 0;
    CHECK(!mg_ca_refs_ids(set, twice, 2, "x.ca", &errs, &refs));
    CHECK(one_error(&errs, "x.ca[1]: 'a' is listed twice"));
    errs.n = 0;
    /* from config values: strings, {id: ...} maps, wrong shapes, required */
    mg_value_t idv = {.kind = MG_VAL_STRING, .str = "a"};
    char *idk[] = {"id"};
    mg_value_t items[2] = {{.kind = MG_VAL_MAP, .len = 1, .keys = idk, .items = &idv},
                           {.kind = MG_VAL_INT}};
    mg_value_t list = {.kind = MG_VAL_ARRAY, .len = 1, .items = items};
    CHECK(mg_ca_refs(set, &list, "l", true, &errs, &refs));
    CHECK_INT(refs.n, 1);
    mg_ca_refs_free(&refs);
    list.len = 2;
    CHECK(!mg_ca_refs(set, &list, "l", true, &errs, &refs));
    CHECK(one_error(&errs, "l[1]: must be a ca_certificate id"));
    errs.n = 0;
    CHECK(!mg_ca_refs(set, NULL, "l", true, &errs, &refs));
    CHECK(one_error(&errs, "l: required"));
    errs.n = 0;
    CHECK(mg_ca_refs(set, NULL, "l", false, &errs, &refs) && refs.n == 0);
    CHECK(!mg_ca_refs(set, &idv, "l", false, &errs, &refs));
    CHECK(one_error(&errs, "l: must be a list of ca_certificate ids"));
    mg_ca_free(set);
    mg_config_errors_free(&errs);
    free(other_pem);
}

TEST(ca_store_verifies_its_leaves_only)
{
    setup();
    EVP_PKEY *k2;
    X509 *other = make_cert("Other Root", true, -1, 365, NULL, NULL, &k2);
    X509 *mine = make_cert("mine", false, -1, 30, root, root_key, NULL);
    X509 *theirs = make_cert("theirs", false, -1, 30, other, k2, NULL);
    fake_t f;
    fake_init(&f);
    fake_add(&f, "a", root_pem, NULL, NULL);
    mg_config_errors_t errs;
    mg_config_errors_init(&errs);
    mg_ca_set_t *set = mg_ca_load(&f.cfg, &errs);
    const char *ids[] = {"a"};
    mg_ca_refs_t refs;
    CHECK(mg_ca_refs_ids(set, ids, 1, "p", &errs, &refs));
    X509_STORE *st = mg_ca_store(set, &refs);
    CHECK(st != NULL);
    X509 *leaves[2] = {mine, theirs};
    for (int i = 0; i < 2; i++) {
        X509_STORE_CTX *vc = X509_STORE_CTX_new();
        X509_STORE_CTX_init(vc, st, leaves[i], NULL);
        CHECK_INT(X509_verify_cert(vc), i == 0 ? 1 : 0);
        X509_STORE_CTX_free(vc);
    }
    STACK_OF(X509_NAME) *names = mg_ca_names(set, &refs);
    CHECK_INT(sk_X509_NAME_num(names), 1);
    CHECK(X509_NAME_cmp(sk_X509_NAME_value(names, 0), X509_get_subject_name(root)) == 0);
    sk_X509_NAME_pop_free(names, X509_NAME_free);
    X509_STORE_free(st);
    mg_ca_refs_free(&refs);
    mg_ca_free(set);
    mg_config_errors_free(&errs);
    X509_free(other);
    X509_free(mine);
    X509_free(theirs);
    EVP_PKEY_free(k2);
}

TEST_MAIN()
