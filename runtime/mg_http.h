/*
 * mg_http.h — HTTP/1.1 messages as the proxy sees them: a strict head parser for requests
 * (RFC 9112, hardened against request smuggling) and for upstream responses, the header
 * table, body framing (Content-Length, chunked, read-until-close) and the canned error
 * responses the gateway sends itself. No I/O happens here, so the parser can be unit-tested
 * and fuzzed on plain byte arrays.
 */
#ifndef MG_HTTP_H
#define MG_HTTP_H

#include <http_parser.h>

#include "mg_core.h"
#include "mg_buf.h"
#include "mg_config.h"

typedef struct {
    mg_str_t name, value; /* value has surrounding whitespace trimmed */
} mg_header_t;

typedef enum {
    MG_BODY_NONE = 0, /* no body */
    MG_BODY_LENGTH,   /* Content-Length bytes */
    MG_BODY_CHUNKED,  /* Transfer-Encoding: chunked */
    MG_BODY_EOF,      /* responses only: until the upstream closes */
} mg_body_kind_t;

typedef struct mg_http_msg_s {
    http_parser parser;
    /* request */
    mg_str_t method, target, path, query, host;
    /* response */
    unsigned status;
    uint8_t major, minor;

    mg_header_t *headers; /* caller-provided array of `max_headers` entries */
    unsigned nheaders, max_headers;

    mg_body_kind_t body_kind;
    uint64_t content_length; /* the Content-Length value (see has_content_length) */
    uint64_t body_seen;      /* body bytes (decoded) consumed so far */
    uint64_t body_limit;     /* 0 = unlimited; exceeding it answers 413 */

    unsigned keepalive : 1;       /* connection may be reused after this message */
    unsigned upgrade : 1;         /* request: Upgrade + Connection: upgrade; response: 101 */
    unsigned expect_continue : 1; /* request carried Expect: 100-continue */
    unsigned head_done : 1;
    unsigned body_done : 1;
    unsigned out_chunked : 1; /* mg_http_body_feed re-frames the body as chunked */
    unsigned skip_body : 1;   /* response to HEAD, or 204/304 */
    unsigned in_trailers : 1;
    unsigned has_content_length : 1; /* a Content-Length header was present (even 0) */
    unsigned conn_close : 1;         /* Connection: close */
    unsigned conn_keepalive : 1;     /* Connection: keep-alive */
    unsigned nconnection; /* names listed in Connection beyond close, keep-alive, upgrade */

    /* incremental head scanning state (offsets from the start of the head) */
    size_t scan_pos, line_start, head_len;
    unsigned lines;

    const char *error; /* short reason for the error log, set with an error status */
    mg_buf_t *out;     /* body output while feeding */
} mg_http_msg_t;

/*
 * Prepares m for a new message. `headers` must hold `max_headers` entries and outlive m.
 */
void mg_http_msg_init(mg_http_msg_t *m, enum http_parser_type type, mg_header_t *headers,
                      unsigned max_headers);

/*
 * Parses a request head from data[0..len) (the bytes received so far; the same prefix is
 * passed again with more bytes appended on the next call). Returns MG_AGAIN when more bytes
 * are needed, MG_OK when the head is complete (m->head_len bytes; the body, if any, follows),
 * or the HTTP status to answer with (400, 414, 431, 501, 505) with m->error set.
 */
int mg_http_parse_request_head(mg_http_msg_t *m, const char *data, size_t len,
                               const mg_limits_t *lim);

/*
 * Parses an upstream response head, like the above. Errors return 502 (the upstream sent
 * something that is not a valid HTTP/1.x response, or bad framing). `request_method_head`
 * tells the parser the response has no body. A 1xx other than 101 is returned as MG_OK with
 * m->status set; the caller skips it and parses again after m->head_len bytes.
 */
int mg_http_parse_response_head(mg_http_msg_t *m, const char *data, size_t len, size_t max_head,
                                bool request_method_head);

/*
 * Consumes body bytes from data[0..len) and appends them to out, re-framed as chunked when
 * m->out_chunked is set, never writing more than fits in out. Sets *consumed to the bytes
 * used. Returns MG_OK (more body to come), MG_DONE (the body is complete; bytes after it are
 * left unconsumed: the next pipelined message), or an HTTP status: 400 for bad chunked
 * framing (502 for responses), 413 when body_limit is exceeded.
 */
int mg_http_body_feed(mg_http_msg_t *m, const char *data, size_t len, mg_buf_t *out,
                      size_t *consumed);

/* Appends the end of a chunked body ("0\r\n\r\n") when out_chunked is set and there is room.
 * Returns MG_OK or MG_AGAIN (no room yet). */
int mg_http_body_finish(mg_http_msg_t *m, mg_buf_t *out);

/* Re-points every span of m from the head at old_base to a copy of it at new_base (the
 * caller copied m->head_len bytes), so the parsed head outlives the read buffer. */
void mg_http_msg_rebase(mg_http_msg_t *m, const char *old_base, const char *new_base);

/* Returns the first header named `name` (lower-case literal), or NULL. */
const mg_header_t *mg_http_header(const mg_http_msg_t *m, mg_str_t name);

/* True when `name` must not be forwarded: hop-by-hop (RFC 9110 §7.6.1), framing headers the
 * proxy regenerates, or a name listed in the message's Connection header. */
bool mg_http_is_hop_by_hop(const mg_http_msg_t *m, mg_str_t name);

/* Reason phrase for a status code ("Unknown" for unlisted ones). */
const char *mg_http_reason(unsigned status);

/* The {"message":"..."} body the gateway answers `status` with (Kong's texts). */
const char *mg_http_error_message(unsigned status);

/* The current time as an HTTP date ("Sun, 06 Nov 1994 08:49:37 GMT"), cached per second. */
const char *mg_http_date(void);

/* The JSON body of an error response, {"message":"..."} (the status's standard message when
 * `message` is NULL), into body; returns its length. */
#define MG_HTTP_ERROR_BODY_MAX 512
size_t mg_http_error_body(char body[MG_HTTP_ERROR_BODY_MAX], unsigned status, const char *message);

/*
 * Writes a complete error response (JSON body, Content-Length, Server without version, Date,
 * `request_id_header: request_id` when both are given, Connection: close when `close`) into out.
 * Returns MG_OK, or MG_ERROR when it does not fit.
 */
int mg_http_write_error(mg_buf_t *out, unsigned status, const char *message,
                        const char *request_id_header, mg_str_t request_id, bool close);

#endif
