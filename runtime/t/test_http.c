/*
 * test_http.c — unit tests that pin the HTTP/1.1 parser: what a valid request head parses
 * to, the exact status for every strictness and request-smuggling vector, the size limits,
 * body decoding (Content-Length, chunked, re-framing, limits, a nearly full output buffer),
 * upstream response heads, hop-by-hop headers, the canned error response and rebasing.
 * Every request vector is checked twice: parsed in one call and fed as growing prefixes,
 * each copied to an exact-size heap buffer so that ASan catches any read past `len`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_test.h"
#include "../mg_http.c"

#define NHDR 128

/* A span equals a C string. */
#define CHECK_SPAN(s, lit)                                                                         \
    do {                                                                                           \
        mg_str_t s_ = (s);                                                                         \
        char span_[1024];                                                                          \
        snprintf(span_, sizeof(span_), "%.*s", (int)s_.len, s_.data ? s_.data : "");               \
        CHECK_STR(span_, (lit));                                                                   \
    } while (0)

static mg_limits_t limits(void)
{
    mg_limits_t l;
    memset(&l, 0, sizeof(l));
    l.max_request_line = 8192;
    l.max_header_line = 8192;
    l.max_headers_size = 32768;
    l.max_headers = 100;
    return l;
}

typedef struct {
    mg_http_msg_t m;
    mg_header_t h[NHDR];
    char *copy; /* the prefix the head was parsed from (byte-split runs), freed by done() */
} req_t;

static int parse_req_lim(req_t *r, const char *s, size_t len, const mg_limits_t *lim)
{
    mg_http_msg_init(&r->m, HTTP_REQUEST, r->h, lim->max_headers);
    r->copy = NULL;
    return mg_http_parse_request_head(&r->m, s, len, lim);
}

static int parse_req(req_t *r, const char *s)
{
    mg_limits_t lim = limits();
    return parse_req_lim(r, s, strlen(s), &lim);
}

/*
 * Feeds s[0..n) for n = 1, 2, ... into one message, each prefix in its own exact-size heap
 * copy, until the parser stops asking for more. Returns that result; *at is the prefix length
 * it was returned for. On MG_OK, r->copy holds the prefix the spans point into.
 */
static int parse_req_split_lim(req_t *r, const char *s, size_t len, const mg_limits_t *lim,
                               size_t *at)
{
    mg_http_msg_init(&r->m, HTTP_REQUEST, r->h, lim->max_headers);
    r->copy = NULL;
    int rc = MG_AGAIN;
    for (size_t n = 1; n <= len; n++) {
        char *c = malloc(n);
        memcpy(c, s, n);
        rc = mg_http_parse_request_head(&r->m, c, n, lim);
        *at = n;
        if (rc == MG_OK) {
            r->copy = c;
            return rc;
        }
        free(c);
        if (rc != MG_AGAIN) return rc;
    }
    return rc;
}

static void done(req_t *r)
{
    free(r->copy);
    r->copy = NULL;
}

/* The request gets `status` both in one call and fed byte by byte. */
static void expect_lim(const char *s, size_t len, const mg_limits_t *lim, int status,
                       const char *label)
{
    req_t r;
    size_t at;
    int rc1 = parse_req_lim(&r, s, len, lim);
    if (rc1 != status) fprintf(stderr, "#   %s: one-shot\n", label);
    CHECK_INT(rc1, status);
    if (status != MG_OK) CHECK(r.m.error != NULL);
    int rc2 = parse_req_split_lim(&r, s, len, lim, &at);
    if (rc2 != status) fprintf(stderr, "#   %s: byte by byte (stopped at %zu)\n", label, at);
    CHECK_INT(rc2, status);
    done(&r);
}

static void expect_req(const char *s, int status)
{
    mg_limits_t lim = limits();
    expect_lim(s, strlen(s), &lim, status, s);
}

static char *repeat(char c, size_t n)
{
    char *s = malloc(n + 1);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* ---- valid requests ---------------------------------------------------------------------- */

TEST(parses_simple_get_method_path_query_host_headers)
{
    static const char req[] = "GET /a/b?x=1&y=2 HTTP/1.1\r\n"
                              "Host: example.com\r\n"
                              "User-Agent:  t/1 \r\n"
                              "Accept: */*\r\n"
                              "\r\n";
    req_t r;
    CHECK_INT(parse_req(&r, req), MG_OK);
    CHECK_SPAN(r.m.method, "GET");
    CHECK_SPAN(r.m.target, "/a/b?x=1&y=2");
    CHECK_SPAN(r.m.path, "/a/b");
    CHECK_SPAN(r.m.query, "x=1&y=2");
    CHECK_SPAN(r.m.host, "example.com");
    CHECK_INT(r.m.major, 1);
    CHECK_INT(r.m.minor, 1);
    CHECK_INT(r.m.nheaders, 3);
    CHECK_SPAN(r.m.headers[0].name, "Host");
    CHECK_SPAN(r.m.headers[1].name, "User-Agent");
    CHECK_SPAN(r.m.headers[1].value, "t/1"); /* surrounding whitespace trimmed */
    CHECK_SPAN(r.m.headers[2].value, "*/*");
    CHECK_INT(r.m.keepalive, 1);
    CHECK_INT(r.m.upgrade, 0);
    CHECK_INT(r.m.body_kind, MG_BODY_NONE);
    CHECK_INT(r.m.head_len, sizeof(req) - 1);
    CHECK(r.m.error == NULL);
    const mg_header_t *ua = mg_http_header(&r.m, MG_STR("user-agent"));
    CHECK(ua == &r.m.headers[1]);
    CHECK(mg_http_header(&r.m, MG_STR("cookie")) == NULL);
}

TEST(query_is_null_when_target_has_no_question_mark)
{
    req_t r;
    CHECK_INT(parse_req(&r, "GET /p HTTP/1.1\r\nHost: a\r\n\r\n"), MG_OK);
    CHECK_SPAN(r.m.path, "/p");
    CHECK_INT(r.m.query.len, 0);
    CHECK(r.m.query.data == NULL);
}

TEST(connection_close_disables_keepalive_in_http11)
{
    req_t r;
    CHECK_INT(parse_req(&r, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), MG_OK);
    CHECK_INT(r.m.keepalive, 0);
}

TEST(http10_without_host_is_accepted_and_not_keepalive)
{
    req_t r;
    CHECK_INT(parse_req(&r, "GET /x HTTP/1.0\r\n\r\n"), MG_OK);
    CHECK_INT(r.m.minor, 0);
    CHECK_INT(r.m.host.len, 0);
    CHECK_SPAN(r.m.path, "/x");
    CHECK_INT(r.m.keepalive, 0);
}

TEST(http10_is_keepalive_only_with_connection_keep_alive)
{
    req_t r;
    CHECK_INT(parse_req(&r, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), MG_OK);
    CHECK_INT(r.m.keepalive, 1);
    CHECK_INT(parse_req(&r, "GET / HTTP/1.0\r\nConnection: close\r\n\r\n"), MG_OK);
    CHECK_INT(r.m.keepalive, 0);
}

TEST(pipelined_second_request_is_left_unconsumed)
{
    static const char one[] = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n";
    static const char two[] = "GET /2?b HTTP/1.1\r\nHost: b\r\n\r\n";
    char both[sizeof(one) + sizeof(two)];
    snprintf(both, sizeof(both), "%s%s", one, two);
    req_t r;
    CHECK_INT(parse_req(&r, both), MG_OK);
    CHECK_INT(r.m.head_len, sizeof(one) - 1);
    CHECK_SPAN(r.m.path, "/1");
    CHECK_SPAN(r.m.host, "a");
    CHECK_INT(parse_req(&r, both + sizeof(one) - 1), MG_OK);
    CHECK_INT(r.m.head_len, sizeof(two) - 1);
    CHECK_SPAN(r.m.path, "/2");
    CHECK_SPAN(r.m.query, "b");
    CHECK_SPAN(r.m.host, "b");
}

TEST(head_split_byte_by_byte_parses_identically)
{
    static const char req[] = "POST /up/load?k=v HTTP/1.1\r\n"
                              "Host: example.com:8080\r\n"
                              "Content-Type: text/plain\r\n"
                              "X-Empty:\r\n"
                              "Content-Length: 11\r\n"
                              "\r\n"
                              "hello world";
    size_t head = sizeof(req) - 1 - 11;
    req_t a, b;
    CHECK_INT(parse_req(&a, req), MG_OK);
    size_t at = 0;
    mg_limits_t lim = limits();
    CHECK_INT(parse_req_split_lim(&b, req, sizeof(req) - 1, &lim, &at), MG_OK);
    CHECK_INT(at, head); /* MG_AGAIN for every shorter prefix */
    CHECK_INT(b.m.head_len, head);
    CHECK_INT(b.m.scan_pos, head);
    CHECK_INT(b.m.lines, 5);
    CHECK_INT(a.m.head_len, head);
    CHECK_SPAN(b.m.method, "POST");
    CHECK_SPAN(b.m.path, "/up/load");
    CHECK_SPAN(b.m.query, "k=v");
    CHECK_SPAN(b.m.host, "example.com:8080");
    CHECK_INT(b.m.nheaders, a.m.nheaders);
    for (unsigned i = 0; i < a.m.nheaders && i < b.m.nheaders; i++) {
        CHECK(mg_str_eq(a.m.headers[i].name, b.m.headers[i].name));
        CHECK(mg_str_eq(a.m.headers[i].value, b.m.headers[i].value));
    }
    CHECK_SPAN(b.m.headers[2].name, "X-Empty");
    CHECK_INT(b.m.headers[2].value.len, 0);
    CHECK_INT(b.m.body_kind, MG_BODY_LENGTH);
    CHECK_INT(b.m.content_length, 11);
    CHECK_INT(b.m.keepalive, a.m.keepalive);
    done(&b);
}

TEST(incremental_scanner_resumes_where_it_stopped)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    req_t r;
    mg_limits_t lim = limits();
    mg_http_msg_init(&r.m, HTTP_REQUEST, r.h, NHDR);
    CHECK_INT(mg_http_parse_request_head(&r.m, req, 16, &lim), MG_AGAIN); /* request line */
    CHECK_INT(r.m.lines, 1);
    CHECK_INT(r.m.line_start, 16);
    CHECK_INT(r.m.scan_pos, 16);
    CHECK_INT(mg_http_parse_request_head(&r.m, req, 20, &lim), MG_AGAIN);
    CHECK_INT(r.m.scan_pos, 20);
    CHECK_INT(r.m.line_start, 16);
    CHECK_INT(mg_http_parse_request_head(&r.m, req, sizeof(req) - 1, &lim), MG_OK);
    CHECK_INT(r.m.head_len, sizeof(req) - 1);
    CHECK_SPAN(r.m.host, "a");
}

TEST(leading_empty_lines_before_request_are_ignored_also_byte_by_byte)
{
    expect_req("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", MG_OK);
    req_t r;
    size_t at;
    static const char req[] = "\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    mg_limits_t lim = limits();
    CHECK_INT(parse_req_split_lim(&r, req, sizeof(req) - 1, &lim, &at), MG_OK);
    CHECK_SPAN(r.m.path, "/x");
    CHECK_INT(r.m.head_len, sizeof(req) - 1);
    done(&r);
}

TEST(scanner_rechecks_a_cr_that_ended_the_previous_call)
{
    /* http-parser happens to refuse these too; the scanner must not depend on it */
    static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rX-B: c\r\n\r\n";
    const char *cr = strchr(req + 26, '\r');
    size_t upto = (size_t)(cr - req) + 1;
    req_t r;
    mg_http_msg_init(&r.m, HTTP_REQUEST, r.h, NHDR);
    CHECK_INT(scan_head(&r.m, req, upto, 8192, 8192, 32768, 100, true), MG_AGAIN);
    CHECK_INT(r.m.scan_pos, upto - 1); /* the CR is looked at again */
    CHECK_INT(scan_head(&r.m, req, upto + 1, 8192, 8192, 32768, 100, true), 400);
    CHECK_STR(r.m.error, "bare CR in head");
}

TEST(partial_line_limit_does_not_count_a_pending_cr)
{
    mg_limits_t lim = limits();
    lim.max_header_line = 8;
    static const char ok[] = "GET / HTTP/1.1\r\nHost: ab\r\n\r\n"; /* "Host: ab" is 8 */
    static const char big[] = "GET / HTTP/1.1\r\nHost: abc\r\n\r\n";
    expect_lim(ok, sizeof(ok) - 1, &lim, MG_OK, "header line == limit");
    expect_lim(big, sizeof(big) - 1, &lim, 431, "header line == limit + 1");
}

TEST(absolute_form_target_sets_host_and_path)
{
    req_t r;
    CHECK_INT(parse_req(&r, "GET http://Example.com:8080/p/q?z=1 HTTP/1.1\r\nHost: other\r\n\r\n"),
              MG_OK);
    CHECK_SPAN(r.m.host, "Example.com:8080");
    CHECK_SPAN(r.m.path, "/p/q");
    CHECK_SPAN(r.m.query, "z=1");
    CHECK_SPAN(r.m.target, "/p/q?z=1");
    CHECK_INT(parse_req(&r, "GET https://h.example HTTP/1.1\r\nHost: h.example\r\n\r\n"), MG_OK);
    CHECK_SPAN(r.m.host, "h.example");
    CHECK_SPAN(r.m.path, "/");
}

TEST(asterisk_form_only_for_options)
{
    req_t r;
    CHECK_INT(parse_req(&r, "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), MG_OK);
    CHECK_SPAN(r.m.path, "*");
    expect_req("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

TEST(expect_100_continue_is_flagged)
{
    req_t r;
    CHECK_INT(parse_req(&r, "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n"
                            "Content-Length: 3\r\n\r\n"),
              MG_OK);
    CHECK_INT(r.m.expect_continue, 1);
    CHECK_INT(r.m.body_kind, MG_BODY_LENGTH);
}

TEST(upgrade_request_sets_upgrade)
{
    req_t r;
    CHECK_INT(parse_req(&r, "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                            "Connection: Upgrade\r\n\r\n"),
              MG_OK);
    CHECK_INT(r.m.upgrade, 1);
    CHECK_INT(r.m.body_kind, MG_BODY_NONE);
}

TEST(chunked_request_has_chunked_body_kind)
{
    req_t r;
    CHECK_INT(parse_req(&r, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"),
              MG_OK);
    CHECK_INT(r.m.body_kind, MG_BODY_CHUNKED);
}

TEST(content_length_zero_means_no_body)
{
    req_t r;
    CHECK_INT(parse_req(&r, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"), MG_OK);
    CHECK_INT(r.m.body_kind, MG_BODY_NONE);
}

TEST(accepts_identical_duplicate_content_length)
{
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
               MG_OK);
    req_t r;
    CHECK_INT(parse_req(&r, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                            "Content-Length: 5\r\n\r\n"),
              MG_OK);
    CHECK_INT(r.m.body_kind, MG_BODY_LENGTH);
    CHECK_INT(r.m.content_length, 5);
}

/* ---- smuggling and strictness vectors ----------------------------------------------------- */

TEST(rejects_space_before_colon_with_400)
{
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400);
}

TEST(rejects_obs_fold_with_400)
{
    expect_req("GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n", 400);
    expect_req("GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n\ttwo\r\n\r\n", 400);
}

TEST(rejects_whitespace_before_first_header_with_400)
{
    expect_req("GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400);
}

TEST(rejects_transfer_encoding_in_http10_with_400)
{
    expect_req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
}

TEST(rejects_chunked_twice_in_one_header_with_400)
{
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400);
}

TEST(rejects_two_chunked_transfer_encoding_headers_with_400)
{
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
               "Transfer-Encoding: chunked\r\n\r\n",
               400);
}

TEST(rejects_content_length_with_transfer_encoding_with_400)
{
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
               "Transfer-Encoding: chunked\r\n\r\n",
               400);
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
               "Content-Length: 5\r\n\r\n",
               400);
}

TEST(rejects_two_different_content_lengths_with_400)
{
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400);
}

TEST(rejects_content_length_list_of_different_values_with_400)
{
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400);
}

TEST(rejects_non_numeric_negative_or_signed_content_length_with_400)
{
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", 400);
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", 400);
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400);
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\n", 400);
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", 400);
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400);
}

TEST(rejects_space_in_header_name_with_400)
{
    expect_req("GET / HTTP/1.1\r\nHost: a\r\nX Foo: bar\r\n\r\n", 400);
}

TEST(rejects_empty_header_name_with_400)
{
    expect_req("GET / HTTP/1.1\r\nHost: a\r\n: bar\r\n\r\n", 400);
}

TEST(rejects_nul_in_header_value_with_400)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n";
    mg_limits_t lim = limits();
    expect_lim(req, sizeof(req) - 1, &lim, 400, "NUL in value");
}

TEST(rejects_control_character_in_header_value_with_400)
{
    expect_req("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01"
               "c\r\n\r\n",
               400);
    expect_req("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7f\r\n\r\n", 400);
}

TEST(rejects_bare_cr_in_header_value_with_400)
{
    expect_req("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400);
    /* a bare CR ending a line: the classic header-injection vector */
    expect_req("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rTransfer-Encoding: chunked\r\n\r\n", 400);
}

TEST(rejects_bare_lf_line_ending_with_400)
{
    expect_req("GET / HTTP/1.1\nHost: a\r\n\r\n", 400);
    expect_req("GET / HTTP/1.1\r\nHost: a\n\r\n", 400);
    expect_req("GET / HTTP/1.1\r\nHost: a\r\n\n", 400);
}

TEST(rejects_missing_host_in_http11_with_400)
{
    expect_req("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400);
}

TEST(rejects_duplicate_host_with_400)
{
    expect_req("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400);
    expect_req("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400);
}

TEST(rejects_invalid_host_characters_with_400)
{
    expect_req("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400);
    expect_req("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400);
    expect_req("GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n", 400);
    expect_req("GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", 400);
}

TEST(rejects_http2_version_with_505)
{
    expect_req("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505);
}

TEST(rejects_http12_version_with_505)
{
    expect_req("GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505);
}

TEST(rejects_http09_style_request_line_with_400)
{
    expect_req("GET /\r\n\r\n", 400);
    expect_req("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_req("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_req("GET / FOO/1.1\r\nHost: a\r\n\r\n", 400);
}

TEST(rejects_unknown_transfer_coding_with_501)
{
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501);
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", 501);
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 501);
}

TEST(rejects_empty_transfer_encoding_with_400)
{
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", 400);
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", 400);
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", 400);
}

TEST(rejects_connect_with_405)
{
    expect_req("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405);
}

TEST(rejects_unknown_expectation_with_417)
{
    expect_req("POST / HTTP/1.1\r\nHost: a\r\nExpect: something-else\r\n\r\n", 417);
}

TEST(rejects_fragment_in_target_with_400)
{
    expect_req("GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

TEST(rejects_target_not_starting_with_slash_with_400)
{
    expect_req("GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400);
    expect_req("GET ftp://a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

TEST(rejects_userinfo_in_absolute_form_with_400)
{
    expect_req("GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400);
}

TEST(rejects_upgrade_request_with_body_with_400)
{
    expect_req("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
               "Content-Length: 5\r\n\r\n",
               400);
}

/* ---- limits ------------------------------------------------------------------------------- */

TEST(request_line_over_max_request_line_answers_414)
{
    char *a = repeat('a', 9000);
    size_t cap = 9100;
    char *req = malloc(cap);
    snprintf(req, cap, "GET /%s HTTP/1.1\r\nHost: a\r\n\r\n", a);
    expect_req(req, 414);
    free(req);
    free(a);
}

TEST(incomplete_request_line_over_max_request_line_answers_414)
{
    char *a = repeat('a', 9000);
    size_t cap = 9100;
    char *req = malloc(cap);
    snprintf(req, cap, "GET /%s", a);
    req_t r;
    CHECK_INT(parse_req(&r, req), 414);
    free(req);
    free(a);
}

TEST(request_line_at_max_request_line_is_accepted)
{
    mg_limits_t lim = limits();
    lim.max_request_line = 20;
    static const char ok[] = "GET /abcdef HTTP/1.1\r\nHost: a\r\n\r\n"; /* line of 20 */
    static const char big[] = "GET /abcdefg HTTP/1.1\r\nHost: a\r\n\r\n";
    expect_lim(ok, sizeof(ok) - 1, &lim, MG_OK, "line == limit");
    expect_lim(big, sizeof(big) - 1, &lim, 414, "line == limit + 1");
}

TEST(header_line_over_max_header_line_answers_431)
{
    char *a = repeat('a', 9000);
    size_t cap = 9100;
    char *req = malloc(cap);
    snprintf(req, cap, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: %s\r\n\r\n", a);
    expect_req(req, 431);
    /* still incomplete */
    snprintf(req, cap, "GET / HTTP/1.1\r\nHost: a\r\nX-Big: %s", a);
    req_t r;
    CHECK_INT(parse_req(&r, req), 431);
    free(req);
    free(a);
}

TEST(head_over_max_headers_size_answers_431)
{
    char *a = repeat('a', 7000);
    size_t cap = 40000;
    char *req = malloc(cap);
    snprintf(req, cap,
             "GET / HTTP/1.1\r\nHost: a\r\nA: %s\r\nB: %s\r\nC: %s\r\nD: %s\r\nE: %s\r\n\r\n", a, a,
             a, a, a);
    expect_req(req, 431);
    /* still incomplete */
    snprintf(req, cap, "GET / HTTP/1.1\r\nHost: a\r\nA: %s\r\nB: %s\r\nC: %s\r\nD: %s\r\nE: %s", a,
             a, a, a, a);
    req_t r;
    CHECK_INT(parse_req(&r, req), 431);
    free(req);
    free(a);
}

static char *many_headers(unsigned n)
{
    size_t cap = 64 + (size_t)n * 16;
    char *req = malloc(cap);
    size_t o = (size_t)snprintf(req, cap, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (unsigned i = 1; i < n; i++)
        o += (size_t)snprintf(req + o, cap - o, "X-%u: v\r\n", i);
    snprintf(req + o, cap - o, "\r\n");
    return req;
}

TEST(more_than_max_headers_answers_431)
{
    char *req = many_headers(101);
    expect_req(req, 431);
    free(req);
}

TEST(exactly_max_headers_is_accepted)
{
    char *req = many_headers(100);
    req_t r;
    CHECK_INT(parse_req(&r, req), MG_OK);
    CHECK_INT(r.m.nheaders, 100);
    expect_req(req, MG_OK);
    free(req);
}

/* ---- bodies ------------------------------------------------------------------------------- */

static mg_buf_t *buf_new(size_t size)
{
    mg_buf_t *b = malloc(sizeof(mg_buf_t) + size);
    b->next = NULL;
    b->start = b->end = 0;
    b->size = size;
    return b;
}

static void buf_str(mg_buf_t *b, char *dst, size_t cap)
{
    snprintf(dst, cap, "%.*s", (int)mg_buf_len(b), mg_buf_pos(b));
}

/* Parses a request head from s and returns the offset of the body. */
static size_t head_of(req_t *r, const char *s)
{
    int rc = parse_req(r, s);
    CHECK_INT(rc, MG_OK);
    return rc == MG_OK ? r->m.head_len : 0;
}

TEST(content_length_body_is_copied_and_done_exactly_at_its_end)
{
    static const char req[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
                              "helloGET /next HTTP/1.1\r\n";
    req_t r;
    size_t off = head_of(&r, req);
    mg_buf_t *out = buf_new(256);
    size_t used;
    CHECK_INT(mg_http_body_feed(&r.m, req + off, sizeof(req) - 1 - off, out, &used), MG_DONE);
    CHECK_INT(used, 5);
    char s[64];
    buf_str(out, s, sizeof(s));
    CHECK_STR(s, "hello");
    CHECK_INT(r.m.body_seen, 5);
    CHECK_INT(r.m.body_done, 1);
    /* the next message's bytes are never taken */
    CHECK_INT(mg_http_body_feed(&r.m, req + off + 5, 10, out, &used), MG_DONE);
    CHECK_INT(used, 0);
    free(out);
}

TEST(content_length_body_fed_in_pieces_is_done_on_the_last_byte)
{
    static const char req[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloX";
    req_t r;
    size_t off = head_of(&r, req);
    mg_buf_t *out = buf_new(256);
    size_t used;
    for (size_t i = 0; i < 4; i++) {
        CHECK_INT(mg_http_body_feed(&r.m, req + off + i, 1, out, &used), MG_OK);
        CHECK_INT(used, 1);
    }
    CHECK_INT(mg_http_body_feed(&r.m, req + off + 4, 2, out, &used), MG_DONE);
    CHECK_INT(used, 1);
    char s[64];
    buf_str(out, s, sizeof(s));
    CHECK_STR(s, "hello");
    free(out);
}

TEST(content_length_body_reframed_as_chunked)
{
    static const char req[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world";
    req_t r;
    size_t off = head_of(&r, req);
    r.m.out_chunked = 1;
    mg_buf_t *out = buf_new(256);
    size_t used;
    CHECK_INT(mg_http_body_feed(&r.m, req + off, 5, out, &used), MG_OK);
    CHECK_INT(mg_http_body_feed(&r.m, req + off + 5, 6, out, &used), MG_DONE);
    CHECK_INT(mg_http_body_finish(&r.m, out), MG_OK);
    char s[128];
    buf_str(out, s, sizeof(s));
    CHECK_STR(s, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    free(out);
}

static const char chunked_req[] = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  "5\r\nhello\r\n"
                                  "6;name=value\r\n world\r\n"
                                  "0\r\n"
                                  "X-Trailer: t\r\n"
                                  "\r\n"
                                  "GET /next HTTP/1.1\r\n";
#define CHUNKED_BODY_LEN (sizeof(chunked_req) - 1 - sizeof("GET /next HTTP/1.1\r\n") + 1)

TEST(chunked_body_is_reframed_as_chunked_exactly)
{
    req_t r;
    size_t off = head_of(&r, chunked_req);
    r.m.out_chunked = 1;
    mg_buf_t *out = buf_new(512);
    size_t used;
    int rc = mg_http_body_feed(&r.m, chunked_req + off, sizeof(chunked_req) - 1 - off, out, &used);
    CHECK_INT(rc, MG_DONE);
    CHECK_INT(used, CHUNKED_BODY_LEN - off);
    CHECK_INT(mg_http_body_finish(&r.m, out), MG_OK);
    char s[256];
    buf_str(out, s, sizeof(s));
    CHECK_STR(s, "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    CHECK_INT(r.m.body_seen, 11);
    free(out);
}

TEST(chunked_body_is_decoded_raw_without_out_chunked)
{
    req_t r;
    size_t off = head_of(&r, chunked_req);
    mg_buf_t *out = buf_new(512);
    size_t used;
    int rc = mg_http_body_feed(&r.m, chunked_req + off, sizeof(chunked_req) - 1 - off, out, &used);
    CHECK_INT(rc, MG_DONE);
    CHECK_INT(used, CHUNKED_BODY_LEN - off);
    CHECK_INT(mg_http_body_finish(&r.m, out), MG_OK); /* nothing to add */
    char s[256];
    buf_str(out, s, sizeof(s));
    CHECK_STR(s, "hello world");
    free(out);
}

TEST(chunked_body_fed_byte_by_byte_decodes_identically)
{
    req_t r;
    size_t off = head_of(&r, chunked_req);
    mg_buf_t *out = buf_new(512);
    size_t pos = off, used;
    int rc = MG_OK;
    while (rc == MG_OK && pos < sizeof(chunked_req) - 1) {
        rc = mg_http_body_feed(&r.m, chunked_req + pos, 1, out, &used);
        CHECK_INT(used, 1);
        pos += used;
    }
    CHECK_INT(rc, MG_DONE);
    CHECK_INT(pos, CHUNKED_BODY_LEN);
    char s[256];
    buf_str(out, s, sizeof(s));
    CHECK_STR(s, "hello world");
    free(out);
}

TEST(body_feed_with_no_bytes_asks_for_more)
{
    req_t r;
    size_t off = head_of(&r, chunked_req);
    mg_buf_t *out = buf_new(512);
    size_t used = 99;
    /* http_parser_execute() reads len 0 as end of input: it must never see an empty feed */
    CHECK_INT(mg_http_body_feed(&r.m, chunked_req + off, 0, out, &used), MG_OK);
    CHECK_INT(used, 0);
    CHECK_INT(mg_http_body_feed(&r.m, chunked_req + off, 3, out, &used), MG_OK);
    CHECK_INT(used, 3);
    CHECK_INT(mg_http_body_feed(&r.m, chunked_req + off + 3, 0, out, &used), MG_OK);
    CHECK_INT(mg_http_body_feed(&r.m, chunked_req + off + 3, sizeof(chunked_req) - 1 - off - 3, out,
                                &used),
              MG_DONE);
    char s[64];
    buf_str(out, s, sizeof(s));
    CHECK_STR(s, "hello world");
    free(out);
}

static int feed_chunked(const char *body, uint64_t limit, unsigned *consumed_total)
{
    req_t r;
    char req[512];
    snprintf(req, sizeof(req), "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n%s",
             body);
    size_t off = head_of(&r, req);
    r.m.body_limit = limit;
    mg_buf_t *out = buf_new(512);
    size_t used;
    int rc = mg_http_body_feed(&r.m, req + off, strlen(req) - off, out, &used);
    if (consumed_total) *consumed_total = (unsigned)used;
    CHECK(out->end <= out->size);
    free(out);
    return rc;
}

TEST(rejects_invalid_chunk_size_with_400)
{
    CHECK_INT(feed_chunked("zz\r\nhello\r\n0\r\n\r\n", 0, NULL), 400);
    CHECK_INT(feed_chunked("-5\r\nhello\r\n0\r\n\r\n", 0, NULL), 400);
}

TEST(rejects_overflowing_chunk_size_with_400)
{
    CHECK_INT(feed_chunked("fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n", 0, NULL), 400);
    CHECK_INT(feed_chunked("10000000000000000\r\nhello\r\n0\r\n\r\n", 0, NULL), 400);
}

TEST(chunked_body_over_body_limit_answers_413)
{
    CHECK_INT(feed_chunked("5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 8, NULL), 413);
    CHECK_INT(feed_chunked("5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 10, NULL), MG_DONE);
}

TEST(content_length_body_over_body_limit_answers_413)
{
    static const char req[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789";
    req_t r;
    size_t off = head_of(&r, req);
    r.m.body_limit = 5;
    mg_buf_t *out = buf_new(256);
    size_t used;
    CHECK_INT(mg_http_body_feed(&r.m, req + off, 3, out, &used), MG_OK);
    CHECK_INT(used, 3);
    CHECK_INT(mg_http_body_feed(&r.m, req + off + 3, 7, out, &used), 413);
    CHECK(r.m.error != NULL);
    free(out);
}

TEST(full_output_buffer_consumes_nothing)
{
    static const char req[] = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n";
    req_t r;
    head_of(&r, req);
    mg_buf_t *out = buf_new(64);
    out->end = 54; /* 10 bytes free */
    size_t used;
    char body[100];
    memset(body, 'b', sizeof(body));
    CHECK_INT(mg_http_body_feed(&r.m, body, sizeof(body), out, &used), MG_OK);
    CHECK_INT(used, 10);
    CHECK_INT(out->end, 64);
    CHECK_INT(mg_http_body_feed(&r.m, body + 10, 90, out, &used), MG_OK);
    CHECK_INT(used, 0);
    CHECK_INT(out->end, 64);
    /* re-framing needs room for the chunk framing: nothing fits in 10 bytes */
    r.m.out_chunked = 1;
    out->end = 54;
    CHECK_INT(mg_http_body_feed(&r.m, body + 10, 90, out, &used), MG_OK);
    CHECK_INT(used, 0);
    CHECK_INT(out->end, 54);
    free(out);
}

/* Decodes a chunked stream (no extensions, no trailers); returns its length or -1. */
static long dechunk(const char *s, size_t len, char *dst, size_t cap)
{
    size_t i = 0, o = 0;
    for (;;) {
        char *end;
        unsigned long n = strtoul(s + i, &end, 16);
        if (end == s + i || end + 2 > s + len || end[0] != '\r' || end[1] != '\n') return -1;
        i = (size_t)(end - s) + 2;
        if (n == 0) return i + 2 == len && s[i] == '\r' && s[i + 1] == '\n' ? (long)o : -1;
        if (i + n + 2 > len || o + n > cap || s[i + n] != '\r' || s[i + n + 1] != '\n') return -1;
        memcpy(dst + o, s + i, n);
        o += n;
        i += n + 2;
    }
}

/*
 * Feeds `in` to m through a small output buffer, draining it into `acc` after every call,
 * `step` input bytes at a time. Returns the final rc; *acc_len is what came out.
 */
static int pump(mg_http_msg_t *m, const char *in, size_t len, size_t step, size_t outsize,
                char *acc, size_t cap, size_t *acc_len, size_t *in_used)
{
    mg_buf_t *out = buf_new(outsize);
    size_t pos = 0, o = 0, used;
    int rc = MG_OK;
    for (int guard = 0; guard < 100000; guard++) {
        /* leave the buffer partly full so every call sees a different amount of room */
        size_t n = MG_MIN(step, len - pos);
        rc = mg_http_body_feed(m, in + pos, n, out, &used);
        CHECK(out->end <= out->size);
        CHECK(used <= n);
        pos += used;
        if (rc == MG_DONE && mg_buf_len(out) + 5 <= out->size) {
            if (mg_http_body_finish(m, out) != MG_OK) CHECK(0);
            m->out_chunked = 0;
        }
        size_t drain = mg_buf_len(out) / 2 + (rc == MG_DONE || used == 0 ? mg_buf_len(out) : 0);
        drain = MG_MIN(drain, mg_buf_len(out));
        if (o + drain > cap) break;
        memcpy(acc + o, mg_buf_pos(out), drain);
        o += drain;
        out->start += drain;
        if (rc != MG_OK && mg_buf_len(out) == 0 && (rc != MG_DONE || !m->out_chunked)) break;
    }
    free(out);
    *acc_len = o;
    *in_used = pos;
    return rc;
}

TEST(nearly_full_output_buffer_never_overflows_and_drains_to_exact_body)
{
    /* a 3000-byte body in chunks of varying sizes */
    enum { BODY = 3000 };
    char body[BODY];
    for (int i = 0; i < BODY; i++)
        body[i] = (char)('a' + i % 26);
    size_t cap = 65536; /* 1-byte steps re-framed as chunked grow the body six-fold */
    char *req = malloc(cap);
    size_t o = (size_t)snprintf(req, cap,
                                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    size_t head = o;
    for (size_t b = 0, k = 1; b < BODY; k = k * 3 % 257 + 1) {
        size_t n = MG_MIN(k, BODY - b);
        o += (size_t)snprintf(req + o, cap - o, "%zx\r\n", n);
        memcpy(req + o, body + b, n);
        o += n;
        memcpy(req + o, "\r\n", 2);
        o += 2;
        b += n;
    }
    o += (size_t)snprintf(req + o, cap - o, "0\r\n\r\nNEXT");
    size_t body_end = o - 4;

    char *acc = malloc(cap), *dec = malloc(cap);
    static const size_t steps[] = {1, 7, 64, 5000};
    static const size_t sizes[] = {64, 65, 100, 257};
    for (size_t si = 0; si < MG_ARRAY_SIZE(steps); si++) {
        for (size_t zi = 0; zi < MG_ARRAY_SIZE(sizes); zi++) {
            for (int chunked = 0; chunked < 2; chunked++) {
                req_t r;
                mg_limits_t lim = limits();
                CHECK_INT(parse_req_lim(&r, req, head, &lim), MG_OK);
                r.m.out_chunked = chunked;
                size_t got, used;
                int rc =
                    pump(&r.m, req + head, o - head, steps[si], sizes[zi], acc, cap, &got, &used);
                CHECK_INT(rc, MG_DONE);
                CHECK_INT(used, body_end - head);
                if (chunked) {
                    long n = dechunk(acc, got, dec, cap);
                    CHECK_INT(n, BODY);
                    CHECK(n == BODY && memcmp(dec, body, BODY) == 0);
                } else {
                    CHECK_INT(got, BODY);
                    CHECK(got == BODY && memcmp(acc, body, BODY) == 0);
                }
            }
        }
    }

    /* the same body with Content-Length */
    size_t clreq_len = 0;
    char *clreq = malloc(cap);
    clreq_len = (size_t)snprintf(clreq, cap,
                                 "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n", BODY);
    size_t clhead = clreq_len;
    memcpy(clreq + clreq_len, body, BODY);
    clreq_len += BODY;
    memcpy(clreq + clreq_len, "NEXT", 4);
    clreq_len += 4;
    for (size_t si = 0; si < MG_ARRAY_SIZE(steps); si++) {
        for (size_t zi = 0; zi < MG_ARRAY_SIZE(sizes); zi++) {
            for (int chunked = 0; chunked < 2; chunked++) {
                req_t r;
                mg_limits_t lim = limits();
                CHECK_INT(parse_req_lim(&r, clreq, clhead, &lim), MG_OK);
                r.m.out_chunked = chunked;
                size_t got, used;
                int rc = pump(&r.m, clreq + clhead, clreq_len - clhead, steps[si], sizes[zi], acc,
                              cap, &got, &used);
                CHECK_INT(rc, MG_DONE);
                CHECK_INT(used, BODY);
                if (chunked) {
                    long n = dechunk(acc, got, dec, cap);
                    CHECK_INT(n, BODY);
                    CHECK(n == BODY && memcmp(dec, body, BODY) == 0);
                } else {
                    CHECK_INT(got, BODY);
                    CHECK(got == BODY && memcmp(acc, body, BODY) == 0);
                }
            }
        }
    }
    free(clreq);
    free(acc);
    free(dec);
    free(req);
}

/* ---- responses ---------------------------------------------------------------------------- */

typedef struct {
    mg_http_msg_t m;
    mg_header_t h[NHDR];
} resp_t;

static int parse_resp(resp_t *r, const char *s, bool head)
{
    mg_http_msg_init(&r->m, HTTP_RESPONSE, r->h, NHDR);
    return mg_http_parse_response_head(&r->m, s, strlen(s), 65536, head);
}

/* The response gets `status` both in one call and fed byte by byte (exact-size copies). */
static void expect_resp(const char *s, int status)
{
    resp_t r;
    size_t len = strlen(s);
    int rc1 = parse_resp(&r, s, false);
    if (rc1 != status) fprintf(stderr, "#   %s: one-shot\n", s);
    CHECK_INT(rc1, status);
    mg_http_msg_init(&r.m, HTTP_RESPONSE, r.h, NHDR);
    int rc2 = MG_AGAIN;
    size_t n;
    for (n = 1; n <= len && rc2 == MG_AGAIN; n++) {
        char *c = malloc(n);
        memcpy(c, s, n);
        rc2 = mg_http_parse_response_head(&r.m, c, n, 65536, false);
        free(c);
    }
    if (rc2 != status) fprintf(stderr, "#   %s: byte by byte (stopped at %zu)\n", s, n - 1);
    CHECK_INT(rc2, status);
}

TEST(response_200_with_content_length)
{
    static const char s[] = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-A: b\r\n\r\nhello world!";
    resp_t r;
    CHECK_INT(parse_resp(&r, s, false), MG_OK);
    CHECK_INT(r.m.status, 200);
    CHECK_INT(r.m.minor, 1);
    CHECK_INT(r.m.body_kind, MG_BODY_LENGTH);
    CHECK_INT(r.m.content_length, 12);
    CHECK_INT(r.m.keepalive, 1);
    CHECK_INT(r.m.head_len, sizeof(s) - 1 - 12);
    CHECK_INT(r.m.nheaders, 2);
    mg_buf_t *out = buf_new(64);
    size_t used;
    CHECK_INT(mg_http_body_feed(&r.m, s + r.m.head_len, 12, out, &used), MG_DONE);
    CHECK_INT(used, 12);
    free(out);
}

TEST(response_chunked)
{
    static const char s[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                            "3\r\nabc\r\n0\r\n\r\n";
    resp_t r;
    CHECK_INT(parse_resp(&r, s, false), MG_OK);
    CHECK_INT(r.m.body_kind, MG_BODY_CHUNKED);
    CHECK_INT(r.m.keepalive, 1);
    mg_buf_t *out = buf_new(128);
    size_t used;
    CHECK_INT(mg_http_body_feed(&r.m, s + r.m.head_len, sizeof(s) - 1 - r.m.head_len, out, &used),
              MG_DONE);
    char b[64];
    buf_str(out, b, sizeof(b));
    CHECK_STR(b, "abc");
    free(out);
}

TEST(response_bad_chunk_size_answers_502)
{
    static const char s[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
    resp_t r;
    CHECK_INT(parse_resp(&r, s, false), MG_OK);
    mg_buf_t *out = buf_new(128);
    size_t used;
    CHECK_INT(mg_http_body_feed(&r.m, s + r.m.head_len, sizeof(s) - 1 - r.m.head_len, out, &used),
              502);
    free(out);
}

TEST(response_without_framing_reads_until_eof_and_is_not_keepalive)
{
    static const char s[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsome";
    resp_t r;
    CHECK_INT(parse_resp(&r, s, false), MG_OK);
    CHECK_INT(r.m.body_kind, MG_BODY_EOF);
    CHECK_INT(r.m.keepalive, 0);
    mg_buf_t *out = buf_new(64);
    size_t used;
    CHECK_INT(mg_http_body_feed(&r.m, "some", 4, out, &used), MG_OK);
    CHECK_INT(used, 4);
    free(out);
}

TEST(response_to_head_with_content_length_has_no_body)
{
    resp_t r;
    CHECK_INT(parse_resp(&r, "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", true), MG_OK);
    CHECK_INT(r.m.body_kind, MG_BODY_NONE);
    CHECK_INT(r.m.keepalive, 1);
    CHECK_INT(parse_resp(&r, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true), MG_OK);
    CHECK_INT(r.m.body_kind, MG_BODY_NONE);
}

TEST(response_204_and_304_have_no_body)
{
    resp_t r;
    CHECK_INT(parse_resp(&r, "HTTP/1.1 204 No Content\r\n\r\n", false), MG_OK);
    CHECK_INT(r.m.status, 204);
    CHECK_INT(r.m.body_kind, MG_BODY_NONE);
    CHECK_INT(r.m.keepalive, 1);
    CHECK_INT(parse_resp(&r, "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n", false),
              MG_OK);
    CHECK_INT(r.m.status, 304);
    CHECK_INT(r.m.body_kind, MG_BODY_NONE);
}

TEST(response_100_continue_is_returned_with_its_head_len)
{
    static const char s[] =
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    resp_t r;
    CHECK_INT(parse_resp(&r, s, false), MG_OK);
    CHECK_INT(r.m.status, 100);
    CHECK_INT(r.m.head_len, 25);
    CHECK_INT(r.m.body_kind, MG_BODY_NONE);
    CHECK_INT(parse_resp(&r, s + 25, false), MG_OK);
    CHECK_INT(r.m.status, 200);
}

TEST(response_101_sets_upgrade)
{
    resp_t r;
    CHECK_INT(parse_resp(&r,
                         "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\n\r\n\x81\x05hello",
                         false),
              MG_OK);
    CHECK_INT(r.m.status, 101);
    CHECK_INT(r.m.upgrade, 1);
    CHECK_INT(r.m.body_kind, MG_BODY_NONE);
}

TEST(response_garbage_answers_502)
{
    resp_t r;
    CHECK_INT(parse_resp(&r, "this is not http\r\n\r\n", false), 502);
    CHECK(r.m.error != NULL);
    expect_resp("this is not http\r\n\r\n", 502);
    expect_resp("HTTP/2 200\r\n\r\n", 502);
    expect_resp("HTTP/1.1 99 Low\r\n\r\n", 502);
}

TEST(response_strictness_vectors_answer_502)
{
    expect_resp("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", 502);
    expect_resp("HTTP/1.1 200 OK\r\nX-A : x\r\n\r\n", 502);
    expect_resp("HTTP/1.1 200 OK\r\nX-A: x\r\n y\r\n\r\n", 502);
    expect_resp("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", 502);
    expect_resp("HTTP/1.1 200 OK\rX-A: b\r\n\r\n", 502);
    expect_resp("HTTP/1.1 200 OK\r\nX-A: b\rContent-Length: 5\r\n\r\n", 502);
    expect_resp("HTTP/1.1 200 OK\nX-A: b\r\n\r\n", 502);
    expect_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", 502);
    expect_resp("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", 502);
}

TEST(response_valid_head_parses_identically_byte_by_byte)
{
    expect_resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\n", MG_OK);
    expect_resp("HTTP/1.0 404 Not Found\r\n\r\n", MG_OK);
}

TEST(response_accepts_identical_duplicate_content_length)
{
    resp_t r;
    CHECK_INT(
        parse_resp(&r, "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n", false),
        MG_OK);
    CHECK_INT(r.m.body_kind, MG_BODY_LENGTH);
    CHECK_INT(r.m.content_length, 7);
}

TEST(response_incomplete_head_asks_for_more)
{
    resp_t r;
    CHECK_INT(parse_resp(&r, "HTTP/1.1 200 OK\r\nContent-Len", false), MG_AGAIN);
}

TEST(response_head_over_max_answers_502)
{
    resp_t r;
    mg_http_msg_init(&r.m, HTTP_RESPONSE, r.h, NHDR);
    static const char s[] = "HTTP/1.1 200 OK\r\nX-A: 0123456789\r\n\r\n";
    CHECK_INT(mg_http_parse_response_head(&r.m, s, sizeof(s) - 1, 16, false), 502);
}

TEST(response_with_content_length_and_transfer_encoding_answers_502)
{
    resp_t r;
    CHECK_INT(parse_resp(&r,
                         "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n",
                         false),
              502);
    CHECK_INT(
        parse_resp(&r, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", false),
        502);
}

/* ---- hop-by-hop, errors, rebase ----------------------------------------------------------- */

TEST(hop_by_hop_headers_are_recognised)
{
    req_t r;
    CHECK_INT(parse_req(&r, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret ,x-other\r\n"
                            "X-Secret: s\r\n\r\n"),
              MG_OK);
    static const char *const hop[] = {"connection",        "Keep-Alive", "TE",
                                      "transfer-encoding", "Upgrade",    "content-length",
                                      "proxy-connection",  "Trailer",    "x-secret",
                                      "X-SECRET",          "x-other"};
    for (size_t i = 0; i < MG_ARRAY_SIZE(hop); i++) {
        bool h = mg_http_is_hop_by_hop(&r.m, (mg_str_t){strlen(hop[i]), hop[i]});
        if (!h) fprintf(stderr, "#   %s\n", hop[i]);
        CHECK(h);
    }
    static const char *const e2e[] = {"host", "content-type", "x-forwarded-for", "cookie",
                                      "keep", "accept",       "x-secretive",     "authorization"};
    for (size_t i = 0; i < MG_ARRAY_SIZE(e2e); i++) {
        bool h = mg_http_is_hop_by_hop(&r.m, (mg_str_t){strlen(e2e[i]), e2e[i]});
        if (h) fprintf(stderr, "#   %s\n", e2e[i]);
        CHECK(!h);
    }
}

/* Removes the "Date: ...\r\n" line from s (its value changes every second) and returns
 * whether it was there with an IMF-fixdate value ("Sun, 06 Nov 1994 08:49:37 GMT"). */
static bool strip_date(char *s)
{
    char *d = strstr(s, "\r\nDate: ");
    if (d == NULL) return false;
    char *v = d + 8, *eol = strstr(v, "\r\n");
    bool ok = eol && eol - v == 29 && v[3] == ',' && memcmp(eol - 4, " GMT", 4) == 0;
    if (eol) memmove(d, eol, strlen(eol) + 1);
    return ok;
}

TEST(write_error_writes_full_json_response)
{
    mg_buf_t *out = buf_new(1024);
    CHECK_INT(mg_http_write_error(out, 404, NULL, NULL, MG_NULL_STR, false), MG_OK);
    char s[1024];
    buf_str(out, s, sizeof(s));
    CHECK(strip_date(s));
    CHECK_STR(s, "HTTP/1.1 404 Not Found\r\n"
                 "Content-Type: application/json; charset=utf-8\r\n"
                 "Content-Length: 24\r\n"
                 "Server: moongate\r\n"
                 "\r\n"
                 "{\"message\":\"Not found\"}\n");
    const char *body = strstr(s, "\r\n\r\n") + 4;
    CHECK_INT(strlen(body), 24);
    free(out);
}

TEST(write_error_adds_request_id_and_connection_close)
{
    mg_buf_t *out = buf_new(1024);
    CHECK_INT(mg_http_write_error(out, 400, NULL, "X-Request-Id", MG_STR("abc-123"), true), MG_OK);
    char s[1024];
    buf_str(out, s, sizeof(s));
    CHECK(strip_date(s));
    CHECK_STR(s, "HTTP/1.1 400 Bad Request\r\n"
                 "Content-Type: application/json; charset=utf-8\r\n"
                 "Content-Length: 26\r\n"
                 "Server: moongate\r\n"
                 "X-Request-Id: abc-123\r\n"
                 "Connection: close\r\n"
                 "\r\n"
                 "{\"message\":\"Bad request\"}\n");
    CHECK(strstr(s, MG_VERSION) == NULL);
    free(out);
}

TEST(write_error_escapes_quotes_in_message)
{
    mg_buf_t *out = buf_new(1024);
    CHECK_INT(mg_http_write_error(out, 403, "say \"no\" \\ now", NULL, MG_NULL_STR, false), MG_OK);
    char s[1024];
    buf_str(out, s, sizeof(s));
    const char *body = strstr(s, "\r\n\r\n");
    CHECK(body != NULL);
    if (body) {
        CHECK_STR(body + 4, "{\"message\":\"say \\\"no\\\" \\\\ now\"}\n");
        char cl[64];
        snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", strlen(body + 4));
        CHECK(strstr(s, cl) != NULL);
    }
    CHECK(strstr(s, "HTTP/1.1 403 Forbidden\r\n") == s);
    free(out);
}

TEST(write_error_refuses_when_it_does_not_fit)
{
    mg_buf_t *out = buf_new(64);
    CHECK_INT(mg_http_write_error(out, 500, NULL, NULL, MG_NULL_STR, false), MG_ERROR);
    CHECK_INT(out->end, 0);
    free(out);
}

TEST(write_error_appends_after_pending_bytes)
{
    mg_buf_t *out = buf_new(1024);
    mg_buf_append(out, "xxABC", 5);
    out->start = 2;
    CHECK_INT(mg_http_write_error(out, 502, NULL, NULL, MG_NULL_STR, false), MG_OK);
    CHECK_INT(out->start, 0);
    CHECK(memcmp(out->data, "ABCHTTP/1.1 502 Bad Gateway\r\n", 29) == 0);
    free(out);
}

TEST(msg_rebase_moves_spans_to_the_copy)
{
    static const char req[] = "GET /p?q=1 HTTP/1.1\r\nHost: h\r\nX-A: v\r\n\r\n";
    char *a = malloc(sizeof(req)), *b = malloc(sizeof(req));
    memcpy(a, req, sizeof(req));
    req_t r;
    CHECK_INT(parse_req(&r, a), MG_OK);
    memcpy(b, a, r.m.head_len);
    mg_http_msg_rebase(&r.m, a, b);
    memset(a, '#', sizeof(req));
    free(a);
    CHECK(r.m.path.data == b + 4);
    CHECK_SPAN(r.m.target, "/p?q=1");
    CHECK_SPAN(r.m.path, "/p");
    CHECK_SPAN(r.m.query, "q=1");
    CHECK_SPAN(r.m.host, "h");
    CHECK_SPAN(r.m.method, "GET");
    CHECK_SPAN(r.m.headers[1].name, "X-A");
    CHECK_SPAN(r.m.headers[1].value, "v");
    CHECK(r.m.headers[1].value.data >= b && r.m.headers[1].value.data < b + r.m.head_len);
    free(b);
}

TEST(reason_and_error_message_texts)
{
    CHECK_STR(mg_http_reason(431), "Request Header Fields Too Large");
    CHECK_STR(mg_http_reason(799), "Unknown");
    CHECK_STR(mg_http_error_message(413), "Request size limit exceeded");
    CHECK_STR(mg_http_error_message(418), "Unknown");
}

TEST_MAIN()
