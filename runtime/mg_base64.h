/*
 * mg_base64.h — base64 (RFC 4648 §4) and base64url (§5), strict on decode: what JWTs, HTTP
 * Basic credentials and Digest headers carry. Decoding rejects characters outside the
 * alphabet, misplaced or excess padding and non-zero trailing bits, so two different strings
 * never decode to the same bytes (a signature cannot be re-encoded to slip past a cache).
 */
#ifndef MG_BASE64_H
#define MG_BASE64_H

#include <stdbool.h>
#include <stddef.h>

/* Bytes needed to encode n bytes (with padding). */
#define MG_BASE64_ENCODED_LEN(n) ((((n) + 2) / 3) * 4)
/* Bytes at most produced by decoding n characters. */
#define MG_BASE64_DECODED_LEN(n) (((n) + 3) / 4 * 3)

/* Encodes; `url` picks the alphabet ("-_" for "+/"), `pad` adds '='. Returns the length. */
size_t mg_base64_encode(const unsigned char *src, size_t n, char *dst, bool url, bool pad);

/* Decodes into dst (MG_BASE64_DECODED_LEN(n) bytes); padding is optional but, when present,
 * must be exact. Returns the decoded length, or -1 when the input is not valid. */
long mg_base64_decode(const char *src, size_t n, unsigned char *dst, bool url);

#endif
