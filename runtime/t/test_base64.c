/*
 * test_base64.c — unit tests for the strict base64 codec: RFC 4648 §10 vectors in both
 * alphabets, with and without padding, and every malformed input it must refuse.
 */
#include <string.h>

#include "mg_test.h"
#include "../mg_base64.c"

static const char *enc(const char *s, bool url, bool pad)
{
    static char out[128];
    size_t n = mg_base64_encode((const unsigned char *)s, strlen(s), out, url, pad);
    out[n] = '\0';
    return out;
}

static const char *dec(const char *s, bool url)
{
    static char out[128];
    long n = mg_base64_decode(s, strlen(s), (unsigned char *)out, url);
    if (n < 0) return NULL;
    out[n] = '\0';
    return out;
}

TEST(rfc4648_vectors)
{
    const char *plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *b64[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        CHECK_STR(enc(plain[i], false, true), b64[i]);
        CHECK_STR(dec(b64[i], false), plain[i]);
    }
    CHECK_STR(enc("foob", true, false), "Zm9vYg");
    CHECK_STR(dec("Zm9vYg", true), "foob");
    CHECK_STR(dec("Zm9vYg", false), "foob"); /* padding is optional */
}

TEST(url_alphabet)
{
    CHECK_STR(enc("\xfb\xff", false, true), "+/8=");
    CHECK_STR(enc("\xfb\xff", true, false), "-_8");
    CHECK_STR(dec("-_8", true), "\xfb\xff");
    CHECK(dec("-_8", false) == NULL);
    CHECK(dec("+/8=", true) == NULL);
}

TEST(refuses_malformed_input)
{
    const char *bad[] = {
        "Z",     "Zg=",   "Zg===",  "Z===", "Zm9v=",
        "=Zm9",  "Zm 9v", "Zm9v\n", "Zh==", /* non-zero trailing bits: a second spelling of "f" */
        "Zm8x=", "Zg=a",  NULL};
    for (int i = 0; bad[i]; i++) {
        if (dec(bad[i], false) != NULL) fprintf(stderr, "#   accepted \"%s\"\n", bad[i]);
        CHECK(dec(bad[i], false) == NULL);
    }
}

TEST(binary_round_trip)
{
    unsigned char in[256], out[256];
    char text[MG_BASE64_ENCODED_LEN(256)];
    for (int i = 0; i < 256; i++)
        in[i] = (unsigned char)i;
    for (size_t n = 0; n <= 256; n += 17) {
        size_t t = mg_base64_encode(in, n, text, true, false);
        CHECK_INT(mg_base64_decode(text, t, out, true), n);
        CHECK(memcmp(in, out, n) == 0);
    }
}

TEST_MAIN()
