/*
 * mg_base64.c — strict base64 / base64url codec (see mg_base64.h).
 */
#include <stdint.h>

#include "mg_base64.h"

static const char std_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t mg_base64_encode(const unsigned char *src, size_t n, char *dst, bool url, bool pad)
{
    const char *a = url ? url_alphabet : std_alphabet;
    char *d = dst;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 | src[i + 2];
        *d++ = a[v >> 18];
        *d++ = a[(v >> 12) & 63];
        *d++ = a[(v >> 6) & 63];
        *d++ = a[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)src[i] << 16;
        *d++ = a[v >> 18];
        *d++ = a[(v >> 12) & 63];
        if (pad) *d++ = '=', *d++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8;
        *d++ = a[v >> 18];
        *d++ = a[(v >> 12) & 63];
        *d++ = a[(v >> 6) & 63];
        if (pad) *d++ = '=';
    }
    return (size_t)(d - dst);
}

/* Each alphabet's reverse: 0..63, or -1 for a character outside it. Built at start-up; a
 * table lookup per character instead of a chain of range tests (JWTs are decoded per
 * request). */
static signed char std_value[256], url_value[256];

__attribute__((constructor)) static void build_values(void)
{
    for (int i = 0; i < 256; i++)
        std_value[i] = url_value[i] = -1;
    for (int i = 0; i < 64; i++) {
        std_value[(unsigned char)std_alphabet[i]] = (signed char)i;
        url_value[(unsigned char)url_alphabet[i]] = (signed char)i;
    }
}

long mg_base64_decode(const char *src, size_t n, unsigned char *dst, bool url)
{
    /* padding: only at the end, only to complete the last group of four */
    size_t pad = 0;
    while (pad < 2 && n > pad && src[n - 1 - pad] == '=')
        pad++;
    if (pad && n % 4 != 0) return -1;
    size_t len = n - pad;
    if (len % 4 == 1) return -1; /* one character cannot carry a byte */
    const signed char *value = url ? url_value : std_value;
    unsigned char *d = dst;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = value[(unsigned char)src[i]];
        if (v < 0) return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *d++ = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) return -1; /* the unused low bits of the last character must be zero */
    return (long)(d - dst);
}
