/*
 * mg_out.h — a tiny bounded appender for building heads and log lines without printf: every
 * write checks the room left, and an overflow is reported once, at the end (o.overflow).
 * Used where a request pays for formatting: the upstream request head, the response head,
 * the access log line.
 */
#ifndef MG_OUT_H
#define MG_OUT_H

#include "mg_core.h"

typedef struct {
    char *p, *end;
    bool overflow;
} mg_out_t;

static inline void mg_out_put(mg_out_t *o, const char *s, size_t n)
{
    if (n == 0) return; /* s may be NULL for an empty string */
    if ((size_t)(o->end - o->p) < n) {
        o->overflow = true;
        return;
    }
    memcpy(o->p, s, n);
    o->p += n;
}

static inline void mg_out_cstr(mg_out_t *o, const char *s)
{
    mg_out_put(o, s, strlen(s));
}

static inline void mg_out_u64(mg_out_t *o, uint64_t v)
{
    char tmp[24], *p = tmp + sizeof(tmp);
    do
        *--p = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    mg_out_put(o, p, (size_t)(tmp + sizeof(tmp) - p));
}

/* v with exactly `decimals` digits after the point (v >= 0, rounded). */
static inline void mg_out_fixed(mg_out_t *o, double v, int decimals)
{
    uint64_t scale = 1;
    for (int i = 0; i < decimals; i++)
        scale *= 10;
    uint64_t n = (uint64_t)(v * (double)scale + 0.5);
    mg_out_u64(o, n / scale);
    if (decimals == 0) return;
    char frac[24];
    uint64_t f = n % scale;
    for (int i = decimals - 1; i >= 0; i--, f /= 10)
        frac[i] = (char)('0' + f % 10);
    mg_out_put(o, ".", 1);
    mg_out_put(o, frac, (size_t)decimals);
}

#define MG_OUT_LIT(o, lit) mg_out_put((o), (lit), sizeof(lit) - 1)
#define MG_OUT_STR(o, s) mg_out_put((o), (s).data, (s).len)

#endif
