/*
 * mg_http.c — strict HTTP/1.1 message parsing for a proxy. http-parser tokenises the
 * grammar; before it sees a byte, scan_head() enforces what http-parser is lenient about
 * (bare CR/LF, NUL and other controls, obs-fold, whitespace before the colon or before the
 * first header, line and size limits), and after it, check_request() decides framing from
 * our own reading of Content-Length / Transfer-Encoding and refuses every ambiguity that
 * request smuggling relies on (RFC 9112 §6.3). Our framing decision is authoritative and is
 * cross-checked against http-parser's, so the two can never disagree silently.
 */
#include <stdio.h>
#include <inttypes.h>
#include <time.h>

#include "mg_http.h"
#include "mg_log.h"

static int on_url(http_parser *p, const char *at, size_t len);
static int on_header_field(http_parser *p, const char *at, size_t len);
static int on_header_value(http_parser *p, const char *at, size_t len);
static int on_headers_complete(http_parser *p);
static int on_body(http_parser *p, const char *at, size_t len);
static int on_message_complete(http_parser *p);
static int scan_head(mg_http_msg_t *m, const char *d, size_t len, size_t max_line_first,
                     size_t max_line, size_t max_total, unsigned max_headers, bool request);
static int check_request(mg_http_msg_t *m);
static int check_framing(mg_http_msg_t *m, int bad_status);

static const http_parser_settings settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* RFC 9110 tchar */
static const uint8_t tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1,  ['N'] = 1, ['O'] = 1,
    ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,  ['V'] = 1, ['W'] = 1,
    ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1,  ['d'] = 1, ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1, ['m'] = 1,
    ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,  ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

/* True when one of the eight bytes is a control character (< 0x20) or DEL (0x7f). */
static inline bool has_ctl(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    uint64_t lt20 = (x - ones * 0x20) & ~x & highs; /* some byte < 0x20 */
    uint64_t del = x ^ (ones * 0x7f);
    uint64_t is7f = (del - ones) & ~del & highs; /* some byte == 0x7f */
    return (lt20 | is7f) != 0;
}

/* "HTTP/1.x NNN[ reason]" — a strict reading of RFC 9112 §4. */
static int parse_status_line(mg_http_msg_t *m, const char *p, size_t n)
{
    if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') || p[8] != ' ' ||
        p[9] < '1' || p[9] > '9' || p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9' ||
        (n > 12 && p[12] != ' ')) {
        m->error = "invalid response status line";
        return MG_ERROR;
    }
    m->major = 1;
    m->minor = (uint8_t)(p[7] - '0');
    m->status = (unsigned)((p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0'));
    return MG_OK;
}

/* Host header bytes: RFC 3986 reg-name / IP-literal characters and ':' for the port. */
static const uint8_t host_char[256] = {
    ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1, ['!'] = 1, ['$'] = 1, ['&'] = 1, ['\''] = 1,
    ['('] = 1, [')'] = 1, ['*'] = 1, ['+'] = 1, [','] = 1, [';'] = 1, ['='] = 1, [':'] = 1,
    ['['] = 1, [']'] = 1, ['%'] = 1, ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1,
    ['5'] = 1, ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1,
    ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1,
    ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1,
    ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1,
    ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1,
    ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1,
    ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1,
    ['z'] = 1,
};

void mg_http_msg_init(mg_http_msg_t *m, enum http_parser_type type, mg_header_t *headers,
                      unsigned max_headers)
{
    memset(m, 0, sizeof(*m));
    http_parser_init(&m->parser, type);
    m->parser.data = m;
    m->headers = headers;
    m->max_headers = max_headers;
}

static mg_str_t trim(const char *at, size_t len)
{
    while (len && (at[0] == ' ' || at[0] == '\t'))
        at++, len--;
    while (len && (at[len - 1] == ' ' || at[len - 1] == '\t'))
        len--;
    return (mg_str_t){len, at};
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    mg_http_msg_t *m = p->data;
    m->target = (mg_str_t){len, at};
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    mg_http_msg_t *m = p->data;
    if (m->in_trailers || m->head_done) return 0; /* trailers are read and dropped */
    if (m->nheaders >= m->max_headers) return -1; /* scan_head counted lines already */
    /* http-parser refuses any repeated Content-Length, but RFC 9110 §8.6 allows identical
     * ones: let it read the repeat; check_framing() refuses differing values */
    if (len == 14 && mg_str_caseeq_lit((mg_str_t){len, at}, "content-length"))
        p->flags &= ~F_CONTENTLENGTH;
    m->headers[m->nheaders].name = (mg_str_t){len, at};
    m->headers[m->nheaders].value = (mg_str_t){0, at}; /* until on_header_value runs */
    m->nheaders++;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    mg_http_msg_t *m = p->data;
    if (m->in_trailers || m->head_done) return 0;
    m->headers[m->nheaders - 1].value = trim(at, len);
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    mg_http_msg_t *m = p->data;
    m->head_done = 1;
    m->in_trailers = 1;
    /* http-parser cannot know a response to HEAD has no body unless told here */
    return (p->type == HTTP_RESPONSE && m->skip_body) ? 1 : 0;
}

static void append_chunk_header(mg_buf_t *out, size_t len)
{
    char hdr[24];
    int n = snprintf(hdr, sizeof(hdr), "%zx\r\n", len);
    mg_buf_append(out, hdr, (size_t)n);
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    mg_http_msg_t *m = p->data;
    m->body_seen += len;
    if (m->body_limit && m->body_seen > m->body_limit) {
        m->error = "body exceeds client_max_body_size";
        return -1;
    }
    /* mg_http_body_feed never passes more input than fits, framing included */
    if (m->out_chunked) append_chunk_header(m->out, len);
    mg_buf_append(m->out, at, len);
    if (m->out_chunked) mg_buf_append(m->out, "\r\n", 2);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    mg_http_msg_t *m = p->data;
    m->body_done = 1;
    http_parser_pause(p, 1); /* stop at the end of this message: the rest is pipelined */
    return 0;
}

/*
 * Validates the raw head incrementally (m->scan_pos remembers how far we got, so a client
 * sending one byte at a time costs O(n), not O(n^2)). Returns MG_AGAIN, MG_OK with
 * m->head_len set, or an error status.
 */
static int scan_head(mg_http_msg_t *m, const char *d, size_t len, size_t max_line_first,
                     size_t max_line, size_t max_total, unsigned max_headers, bool request)
{
    size_t i = m->scan_pos;
    for (; i < len; i++) {
        /* skip eight ordinary bytes at a time: most of a head is printable text */
        while (i + 8 <= len) {
            uint64_t x;
            memcpy(&x, d + i, 8);
            if (has_ctl(x)) break;
            i += 8;
        }
        if (i >= len) break;
        unsigned char c = (unsigned char)d[i];
        if (MG_LIKELY(c >= 0x20 && c != 0x7f)) continue;
        if (c == '\t') continue;
        if (c == '\r') {
            if (i + 1 == len) break; /* rescan it when we see what follows */
            if (d[i + 1] != '\n') {
                m->error = "bare CR in head";
                return 400;
            }
            continue;
        }
        if (c != '\n') {
            m->error = "control character in head";
            return 400;
        }
        if (i == 0 || d[i - 1] != '\r') {
            m->error = "bare LF in head";
            return 400;
        }
        size_t ls = m->line_start, line_len = i - 1 - ls;
        if (m->lines == 0) {
            if (request && line_len == 0 && ls < 8) {
                /* RFC 9112 §2.2: ignore at least one empty line before a request */
                m->line_start = i + 1;
                continue;
            }
            if (line_len > max_line_first) {
                m->error = "request line too long";
                return request ? 414 : 502;
            }
            if (!request && parse_status_line(m, d + ls, line_len) != MG_OK) return 502;
            if (request) { /* method SP target SP version: exactly two spaces, no tabs */
                unsigned spaces = 0;
                for (size_t k = ls; k < ls + line_len; k++) {
                    if (d[k] == ' ')
                        spaces++;
                    else if (d[k] == '\t')
                        spaces = 99;
                }
                if (spaces != 2) {
                    m->error = "malformed request line";
                    return 400;
                }
            }
        } else if (line_len == 0) {
            m->head_len = i + 1;
            m->scan_pos = i + 1;
            if (m->head_len > max_total) {
                m->error = "request head too large";
                return request ? 431 : 502;
            }
            return MG_OK;
        } else {
            if (line_len > max_line) {
                m->error = "header line too long";
                return request ? 431 : 502;
            }
            if (m->lines > max_headers) {
                m->error = "too many headers";
                return request ? 431 : 502;
            }
            /* field-name: 1*tchar immediately followed by ':' (no obs-fold, no leading
             * whitespace, no whitespace before the colon) */
            size_t k = ls;
            while (k < i - 1 && tchar[(unsigned char)d[k]])
                k++;
            if (k == ls || d[k] != ':') {
                m->error = (d[ls] == ' ' || d[ls] == '\t') ? "obs-fold or leading whitespace"
                                                           : "invalid header name";
                return request ? 400 : 502;
            }
        }
        m->lines++;
        m->line_start = i + 1;
    }
    m->scan_pos = i;
    size_t partial = i - m->line_start; /* without a CR still waiting for its LF */
    if (m->lines == 0 && partial > max_line_first) {
        m->error = "request line too long";
        return request ? 414 : 502;
    }
    if (m->lines > 0 && partial > max_line) {
        m->error = "header line too long";
        return request ? 431 : 502;
    }
    if (len > max_total) {
        m->error = "request head too large";
        return request ? 431 : 502;
    }
    return MG_AGAIN;
}

static bool parse_content_length(mg_str_t v, uint64_t *out)
{
    /* a comma-separated list of identical values is allowed by RFC 9110 §8.6; we accept
     * repeats of one value and refuse everything else */
    bool have = false;
    uint64_t first = 0;
    size_t i = 0;
    while (i <= v.len) {
        size_t j = i;
        while (j < v.len && v.data[j] != ',')
            j++;
        mg_str_t e = trim(v.data + i, j - i);
        if (e.len == 0 || e.len > 18) return false;
        uint64_t n = 0;
        for (size_t k = 0; k < e.len; k++) {
            if (e.data[k] < '0' || e.data[k] > '9') return false;
            n = n * 10 + (uint64_t)(e.data[k] - '0');
        }
        if (have && n != first) return false;
        first = n;
        have = true;
        i = j + 1;
    }
    *out = first;
    return have;
}

/* True when the comma-separated list v contains token (case-insensitive). */
static bool header_has_token(mg_str_t v, mg_str_t token)
{
    size_t i = 0;
    while (i <= v.len) {
        size_t j = i;
        while (j < v.len && v.data[j] != ',')
            j++;
        if (mg_str_caseeq(trim(v.data + i, j - i), token)) return true;
        i = j + 1;
    }
    return false;
}

/* Decides body framing from Content-Length / Transfer-Encoding and notes the Connection
 * header's options. Returns MG_OK or a status. */
static int check_framing(mg_http_msg_t *m, int bad_status)
{
    bool have_cl = false, chunked = false;
    uint64_t cl = 0;
    for (unsigned h = 0; h < m->nheaders; h++) {
        mg_header_t *hd = &m->headers[h];
        if (hd->name.len == 10 && mg_str_caseeq_lit(hd->name, "connection")) {
            /* one pass over the options: close / keep-alive set flags; any other token names
             * a header that is hop-by-hop for this message (counted, so that the common
             * "Connection: keep-alive" costs no per-header lookup later) */
            mg_str_t v = hd->value;
            size_t i = 0;
            while (i <= v.len) {
                size_t j = i;
                while (j < v.len && v.data[j] != ',')
                    j++;
                mg_str_t t = trim(v.data + i, j - i);
                if (t.len == 5 && mg_str_caseeq_lit(t, "close"))
                    m->conn_close = 1;
                else if (t.len == 10 && mg_str_caseeq_lit(t, "keep-alive"))
                    m->conn_keepalive = 1;
                else if (t.len && !(t.len == 7 && mg_str_caseeq_lit(t, "upgrade")))
                    m->nconnection++;
                i = j + 1;
            }
            continue;
        }
        if (hd->name.len != 14 && hd->name.len != 17) continue;
        if (mg_str_caseeq_lit(hd->name, "content-length")) {
            uint64_t v;
            if (!parse_content_length(hd->value, &v) || (have_cl && v != cl)) {
                m->error = "invalid or conflicting Content-Length";
                return bad_status;
            }
            have_cl = true;
            cl = v;
        } else if (mg_str_caseeq_lit(hd->name, "transfer-encoding")) {
            if (m->parser.type == HTTP_REQUEST && m->minor == 0) {
                m->error = "Transfer-Encoding in an HTTP/1.0 request";
                return bad_status;
            }
            size_t i = 0;
            mg_str_t v = hd->value;
            if (v.len == 0) {
                m->error = "empty Transfer-Encoding";
                return bad_status;
            }
            while (i <= v.len) {
                size_t j = i;
                while (j < v.len && v.data[j] != ',')
                    j++;
                mg_str_t e = trim(v.data + i, j - i);
                if (!mg_str_caseeq_lit(e, "chunked")) {
                    m->error = "unsupported transfer coding";
                    return e.len == 0 ? bad_status : (bad_status == 400 ? 501 : bad_status);
                }
                if (chunked) {
                    m->error = "chunked applied twice";
                    return bad_status;
                }
                chunked = true;
                i = j + 1;
            }
        }
    }
    if (chunked && have_cl) {
        m->error = "both Content-Length and Transfer-Encoding";
        return bad_status;
    }
    /* for requests, http-parser read the head too: our reading must agree with its reading,
     * or someone found a gap between the two parsers */
    if (m->parser.type == HTTP_REQUEST &&
        (chunked != !!(m->parser.flags & F_CHUNKED) ||
         (have_cl && m->parser.content_length != cl && !m->body_done))) {
        m->error = "framing disagreement";
        return bad_status;
    }
    m->has_content_length = have_cl;
    m->content_length = cl;
    if (chunked)
        m->body_kind = MG_BODY_CHUNKED;
    else if (have_cl && cl > 0)
        m->body_kind = MG_BODY_LENGTH;
    else
        m->body_kind = MG_BODY_NONE;
    return MG_OK;
}

static bool valid_host(mg_str_t h)
{
    for (size_t i = 0; i < h.len; i++)
        if (!host_char[(unsigned char)h.data[i]]) return false;
    return true;
}

static int check_request(mg_http_msg_t *m)
{
    m->major = (uint8_t)m->parser.http_major;
    m->minor = (uint8_t)m->parser.http_minor;
    if (m->parser.http_major != 1 || m->parser.http_minor > 1) {
        m->error = "unsupported HTTP version";
        return 505;
    }
    m->method =
        (mg_str_t){strlen(http_method_str(m->parser.method)), http_method_str(m->parser.method)};
    if (m->parser.method == HTTP_CONNECT) {
        m->error = "CONNECT is not supported";
        return 405;
    }

    const mg_header_t *host = NULL;
    for (unsigned h = 0; h < m->nheaders; h++) {
        mg_header_t *hd = &m->headers[h];
        if (hd->name.len == 4 && mg_str_caseeq_lit(hd->name, "host")) {
            if (host) {
                m->error = "duplicate Host";
                return 400;
            }
            host = hd;
        } else if (hd->name.len == 6 && mg_str_caseeq_lit(hd->name, "expect")) {
            if (!mg_str_caseeq_lit(hd->value, "100-continue")) {
                m->error = "unsupported expectation";
                return 417;
            }
            m->expect_continue = 1;
        }
    }
    if (host == NULL && m->minor == 1) {
        m->error = "missing Host";
        return 400;
    }
    if (host && !valid_host(host->value)) {
        m->error = "invalid Host";
        return 400;
    }
    if (host) m->host = host->value;

    /* request-target: origin-form, absolute-form (its authority replaces Host, RFC 9112
     * §3.2.2) or asterisk-form for OPTIONS; fragments never belong in a target */
    mg_str_t t = m->target;
    if (memchr(t.data, '#', t.len)) {
        m->error = "fragment in request target";
        return 400;
    }
    if (t.len >= 7 && (strncasecmp(t.data, "http://", 7) == 0 ||
                       (t.len >= 8 && strncasecmp(t.data, "https://", 8) == 0))) {
        size_t s = t.data[4] == ':' ? 7 : 8, e = s;
        while (e < t.len && t.data[e] != '/' && t.data[e] != '?')
            e++;
        m->host = (mg_str_t){e - s, t.data + s};
        if (m->host.len == 0 || !valid_host(m->host) || memchr(m->host.data, '@', m->host.len)) {
            m->error = "invalid authority in request target";
            return 400;
        }
        t = (mg_str_t){t.len - e, t.data + e};
        if (t.len == 0) t = MG_STR("/");
    } else if (t.len == 1 && t.data[0] == '*') {
        if (m->parser.method != HTTP_OPTIONS) {
            m->error = "asterisk-form outside OPTIONS";
            return 400;
        }
    } else if (t.len == 0 || t.data[0] != '/') {
        m->error = "invalid request target";
        return 400;
    }
    const char *q = memchr(t.data, '?', t.len);
    m->path = (mg_str_t){q ? (size_t)(q - t.data) : t.len, t.data};
    m->query = q ? (mg_str_t){t.len - m->path.len - 1, q + 1} : MG_NULL_STR;
    m->target = t;

    int rc = check_framing(m, 400);
    if (rc != MG_OK) return rc;
    m->keepalive = http_should_keep_alive(&m->parser) ? 1 : 0;
    m->upgrade = m->parser.upgrade ? 1 : 0;
    if (m->upgrade && m->body_kind != MG_BODY_NONE) {
        m->error = "upgrade request with a body";
        return 400;
    }
    return MG_OK;
}

int mg_http_parse_request_head(mg_http_msg_t *m, const char *data, size_t len,
                               const mg_limits_t *lim)
{
    int rc = scan_head(m, data, len, lim->max_request_line, lim->max_header_line,
                       lim->max_headers_size, lim->max_headers, true);
    if (rc != MG_OK) return rc;
    size_t n = http_parser_execute(&m->parser, &settings, data, m->head_len);
    enum http_errno e = HTTP_PARSER_ERRNO(&m->parser);
    if ((e != HPE_OK && e != HPE_PAUSED) || !m->head_done ||
        (n != m->head_len && !m->parser.upgrade && e != HPE_PAUSED)) {
        if (e == HPE_INVALID_TRANSFER_ENCODING || e == HPE_UNEXPECTED_CONTENT_LENGTH ||
            e == HPE_INVALID_CONTENT_LENGTH) {
            /* http-parser refused the framing; our own reading picks the right status
             * (501 for an unknown coding, 400 for the rest) */
            m->minor = (uint8_t)m->parser.http_minor;
            rc = check_framing(m, 400);
            if (rc != MG_OK) return rc;
        }
        if (m->error == NULL) m->error = http_errno_description(e);
        return 400;
    }
    if (e == HPE_PAUSED) http_parser_pause(&m->parser, 0);
    return check_request(m);
}

/* Fills m->headers from a complete response head that scan_head() validated (every line
 * ends in CRLF and has a colon after a token). Done once the head is complete, because the
 * buffer may move between partial reads. */
static void tokenize_response_headers(mg_http_msg_t *m, const char *d)
{
    const char *p = memchr(d, '\n', m->head_len) + 1; /* after the status line */
    const char *end = d + m->head_len - 2;            /* the final empty line */
    m->nheaders = 0;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end + 2 - p));
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        m->headers[m->nheaders].name = (mg_str_t){(size_t)(colon - p), p};
        m->headers[m->nheaders].value = trim(colon + 1, (size_t)(eol - 1 - (colon + 1)));
        m->nheaders++;
        p = eol + 1;
    }
}

int mg_http_parse_response_head(mg_http_msg_t *m, const char *data, size_t len, size_t max_head,
                                bool request_method_head)
{
    int rc = scan_head(m, data, len, max_head, max_head, max_head, m->max_headers, false);
    if (rc != MG_OK) return rc == MG_AGAIN ? rc : 502;
    tokenize_response_headers(m, data);
    m->head_done = 1;
    m->skip_body = request_method_head ? 1 : 0;
    if (m->status < 200) {
        m->upgrade = m->status == 101;
        m->body_kind = MG_BODY_NONE;
        return MG_OK;
    }
    rc = check_framing(m, 502);
    if (rc != MG_OK) return rc;
    if (request_method_head || m->status == 204 || m->status == 304) {
        m->body_kind = MG_BODY_NONE;
    } else if (m->body_kind == MG_BODY_NONE && !m->has_content_length) {
        m->body_kind = MG_BODY_EOF; /* no framing: the body ends when the upstream closes */
    } else if (m->body_kind == MG_BODY_CHUNKED) {
        /* http-parser decodes chunked bodies; put it in that state with a minimal head */
        static const char chunked_head[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        http_parser_init(&m->parser, HTTP_RESPONSE);
        m->parser.data = m;
        size_t n =
            http_parser_execute(&m->parser, &settings, chunked_head, sizeof(chunked_head) - 1);
        if (n != sizeof(chunked_head) - 1 || HTTP_PARSER_ERRNO(&m->parser) != HPE_OK) return 502;
    }
    bool keep = m->minor == 1 ? !m->conn_close : m->conn_keepalive && !m->conn_close;
    m->keepalive = (m->body_kind != MG_BODY_EOF && keep) ? 1 : 0;
    return MG_OK;
}

int mg_http_body_feed(mg_http_msg_t *m, const char *data, size_t len, mg_buf_t *out,
                      size_t *consumed)
{
    *consumed = 0;
    if (m->body_done || m->body_kind == MG_BODY_NONE) return MG_DONE;
    if (len == 0) return MG_OK; /* http_parser_execute() would take it for end of input */
    mg_buf_compact(out);
    size_t room = mg_buf_free(out);
    if (m->body_kind == MG_BODY_CHUNKED) {
        /* each decoded piece may grow by a chunk header and CRLF; http-parser hands out at
         * most one piece per input chunk, and each input chunk costs >= 5 bytes, so
         * capping input at room - 32 and output pieces at input size keeps us in bounds */
        if (room < 64) return MG_OK;
        size_t feed = MG_MIN(len, (room - 32) / 2);
        m->out = out;
        size_t n = http_parser_execute(&m->parser, &settings, data, feed);
        enum http_errno e = HTTP_PARSER_ERRNO(&m->parser);
        *consumed = n;
        if (e == HPE_PAUSED) {
            http_parser_pause(&m->parser, 0);
            return MG_DONE;
        }
        if (e != HPE_OK) {
            if (m->body_limit && m->body_seen > m->body_limit) return 413;
            m->error = http_errno_description(e);
            return m->parser.type == HTTP_REQUEST ? 400 : 502;
        }
        return MG_OK;
    }
    size_t want = len;
    if (m->body_kind == MG_BODY_LENGTH) want = MG_MIN(want, m->content_length - m->body_seen);
    if (m->out_chunked) room = room > 32 ? room - 32 : 0;
    want = MG_MIN(want, room);
    if (want == 0)
        return m->body_kind == MG_BODY_LENGTH && m->body_seen == m->content_length
                   ? (m->body_done = 1, MG_DONE)
                   : MG_OK;
    if (m->body_limit && m->body_seen + want > m->body_limit) {
        m->error = "body exceeds client_max_body_size";
        return 413;
    }
    if (m->out_chunked) append_chunk_header(out, want);
    mg_buf_append(out, data, want);
    if (m->out_chunked) mg_buf_append(out, "\r\n", 2);
    m->body_seen += want;
    *consumed = want;
    if (m->body_kind == MG_BODY_LENGTH && m->body_seen == m->content_length) {
        m->body_done = 1;
        return MG_DONE;
    }
    return MG_OK;
}

int mg_http_body_finish(mg_http_msg_t *m, mg_buf_t *out)
{
    if (!m->out_chunked) return MG_OK;
    mg_buf_compact(out);
    if (mg_buf_free(out) < 5) return MG_AGAIN;
    mg_buf_append(out, "0\r\n\r\n", 5);
    return MG_OK;
}

static void rebase(mg_str_t *s, const char *old_base, size_t len, const char *new_base)
{
    if (s->data >= old_base && s->data < old_base + len) s->data = new_base + (s->data - old_base);
}

void mg_http_msg_rebase(mg_http_msg_t *m, const char *old_base, const char *new_base)
{
    size_t len = m->head_len;
    rebase(&m->target, old_base, len, new_base);
    rebase(&m->path, old_base, len, new_base);
    rebase(&m->query, old_base, len, new_base);
    rebase(&m->host, old_base, len, new_base);
    for (unsigned i = 0; i < m->nheaders; i++) {
        rebase(&m->headers[i].name, old_base, len, new_base);
        rebase(&m->headers[i].value, old_base, len, new_base);
    }
}

const mg_header_t *mg_http_header(const mg_http_msg_t *m, mg_str_t name)
{
    for (unsigned h = 0; h < m->nheaders; h++)
        if (mg_str_caseeq(m->headers[h].name, name)) return &m->headers[h];
    return NULL;
}

static bool listed_in_connection(const mg_http_msg_t *m, mg_str_t name)
{
    if (m->nconnection == 0) return false;
    for (unsigned h = 0; h < m->nheaders; h++) {
        if (m->headers[h].name.len == 10 && mg_str_caseeq_lit(m->headers[h].name, "connection") &&
            header_has_token(m->headers[h].value, name))
            return true;
    }
    return false;
}

bool mg_http_is_hop_by_hop(const mg_http_msg_t *m, mg_str_t n)
{
    switch (n.len) {
    case 2:
        if (mg_str_caseeq_lit(n, "te")) return true;
        break;
    case 7:
        if (mg_str_caseeq_lit(n, "trailer") || mg_str_caseeq_lit(n, "upgrade")) return true;
        break;
    case 10:
        if (mg_str_caseeq_lit(n, "connection") || mg_str_caseeq_lit(n, "keep-alive")) return true;
        break;
    case 14:
        if (mg_str_caseeq_lit(n, "content-length")) return true;
        break;
    case 16:
        if (mg_str_caseeq_lit(n, "proxy-connection")) return true;
        break;
    case 17:
        if (mg_str_caseeq_lit(n, "transfer-encoding")) return true;
        break;
    }
    return listed_in_connection(m, n);
}

const char *mg_http_reason(unsigned status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 426:
        return "Upgrade Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

const char *mg_http_error_message(unsigned status)
{
    switch (status) {
    case 400:
        return "Bad request";
    case 404:
        return "Not found";
    case 405:
        return "Method not allowed";
    case 408:
        return "Request timeout";
    case 411:
        return "Length required";
    case 413:
        return "Request size limit exceeded";
    case 414:
        return "URI too long";
    case 417:
        return "Expectation failed";
    case 431:
        return "Request header fields too large";
    case 500:
        return "An unexpected error occurred";
    case 501:
        return "Not implemented";
    case 502:
        return "An invalid response was received from the upstream server";
    case 503:
        return "Service unavailable";
    case 504:
        return "The upstream server is timing out";
    case 505:
        return "HTTP version not supported";
    default:
        return mg_http_reason(status);
    }
}

const char *mg_http_date(void)
{
    /* RFC 9110 §6.6.1: an origin with a clock sends Date; formatted once per second */
    static time_t cached;
    static char date[32];
    time_t now = time(NULL);
    if (now != cached) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        cached = now;
    }
    return date;
}

size_t mg_http_error_body(char body[MG_HTTP_ERROR_BODY_MAX], unsigned status, const char *message)
{
    const char *text = message ? message : mg_http_error_message(status);
    memcpy(body, "{\"message\":\"", 12);
    size_t blen = 12 + mg_json_escape(body + 12, MG_HTTP_ERROR_BODY_MAX - 16, text, strlen(text));
    memcpy(body + blen, "\"}\n", 3);
    return blen + 3;
}

int mg_http_write_error(mg_buf_t *out, unsigned status, const char *message,
                        const char *request_id_header, mg_str_t request_id, bool close)
{
    char body[MG_HTTP_ERROR_BODY_MAX];
    size_t blen = mg_http_error_body(body, status, message);
    bool rid = request_id_header && request_id.len;
    mg_buf_compact(out);
    char *p = mg_buf_last(out);
    size_t room = mg_buf_free(out);
    int n =
        snprintf(p, room,
                 "HTTP/1.1 %u %s\r\n"
                 "Content-Type: application/json; charset=utf-8\r\n"
                 "Content-Length: %zu\r\n"
                 "Server: " MG_SERVER_NAME "\r\n"
                 "Date: %s\r\n"
                 "%s%s%.*s%s"
                 "%s"
                 "\r\n%.*s",
                 status, mg_http_reason(status), blen, mg_http_date(), rid ? request_id_header : "",
                 rid ? ": " : "", rid ? (int)request_id.len : 0, rid ? request_id.data : "",
                 rid ? "\r\n" : "", close ? "Connection: close\r\n" : "", (int)blen, body);
    if (n < 0 || (size_t)n >= room) return MG_ERROR;
    out->end += (size_t)n;
    return MG_OK;
}
