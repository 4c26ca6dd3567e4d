/*
 * mg_core.h — return codes, the {len,data} string type and the handful of macros every
 * runtime file uses. Nothing here allocates or depends on libev/OpenSSL, so unit tests and
 * fuzz harnesses can include it alone.
 */
#ifndef MG_CORE_H
#define MG_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <string.h>

#define MG_OK 0
#define MG_ERROR -1
#define MG_AGAIN -2
#define MG_BUSY -3
#define MG_DONE -4
#define MG_DECLINED -5

#define MG_VERSION "0.1.0"
#define MG_SERVER_NAME "moongate" /* never followed by a version: no version leak */

#define MG_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MG_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MG_MAX(a, b) ((a) > (b) ? (a) : (b))
#define MG_LIKELY(x) __builtin_expect(!!(x), 1)
#define MG_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define MG_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* A non-owning byte string. `data` need not be NUL-terminated. */
typedef struct {
    size_t len;
    const char *data;
} mg_str_t;

#define MG_STR(lit) ((mg_str_t){sizeof(lit) - 1, (lit)})
#define MG_NULL_STR ((mg_str_t){0, NULL})

static inline bool mg_str_eq(mg_str_t a, mg_str_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0);
}

/* ASCII case-insensitive comparison; header names and hosts are compared with this. */
static inline bool mg_str_caseeq(mg_str_t a, mg_str_t b)
{
    if (a.len != b.len) return false;
    for (size_t i = 0; i < a.len; i++) {
        unsigned char x = (unsigned char)a.data[i], y = (unsigned char)b.data[i];
        if (x >= 'A' && x <= 'Z') x |= 0x20;
        if (y >= 'A' && y <= 'Z') y |= 0x20;
        if (x != y) return false;
    }
    return true;
}

static inline bool mg_str_caseeq_lit(mg_str_t a, const char *lit)
{
    return mg_str_caseeq(a, (mg_str_t){strlen(lit), lit});
}

static inline char mg_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c | 0x20) : c;
}

#endif
