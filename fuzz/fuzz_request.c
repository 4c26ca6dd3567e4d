/*
 * fuzz_request.c — libFuzzer harness for the request head parser and its strict checks
 * (mg_http.c), then the body decoder on whatever follows the head. The input is fed in two
 * pieces (split at a position taken from the first byte) to exercise the incremental
 * scanner the way a slow client does. Invariants checked: the parser never reads past the
 * input, a complete head is never longer than the input, and every error is a 4xx/5xx.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mg_http.h"

static const mg_limits_t limits = {
    .client_max_body_size = 1 << 20,
    .max_request_line = 8192,
    .max_header_line = 8192,
    .max_headers_size = 32768,
    .max_headers = 100,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t split = data[0] % (size);
    data++, size--;
    char *copy = malloc(size ? size : 1); /* exact-size copy so ASan sees any overread */
    memcpy(copy, data, size);

    mg_header_t headers[101];
    mg_http_msg_t m;
    mg_http_msg_init(&m, HTTP_REQUEST, headers, 101);
    m.body_limit = limits.client_max_body_size;
    int rc = mg_http_parse_request_head(&m, copy, split < size ? split : size, &limits);
    if (rc == MG_AGAIN) rc = mg_http_parse_request_head(&m, copy, size, &limits);
    if (rc == MG_OK) {
        if (m.head_len > size) abort();
        mg_buf_t *out = mg_buf_get();
        size_t off = m.head_len;
        for (int i = 0; i < 1000 && off <= size; i++) {
            size_t used;
            out->start = out->end = 0;
            int brc = mg_http_body_feed(&m, copy + off, size - off, out, &used);
            off += used;
            if (brc != MG_OK || used == 0) break;
        }
        mg_buf_put(out);
    } else if (rc != MG_AGAIN && (rc < 400 || rc > 599)) {
        abort();
    }
    free(copy);
    return 0;
}
