/*
 * mg_log.h — the error log (levelled lines to a file or stderr) and the access log (one JSON
 * object per request, buffered and flushed in batches so that logging costs no syscall per
 * request).
 */
#ifndef MG_LOG_H
#define MG_LOG_H

#include "mg_config.h"

/* Opens the logs named by cfg (relative paths against cfg->prefix). Returns MG_OK or
 * MG_ERROR with a message on stderr. Safe to call again on reload: old fds are closed. */
int mg_log_open(const mg_config_t *cfg);
void mg_log_close(void);

extern mg_log_level_t mg_log_level;
void mg_log_write(mg_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define mg_log(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) >= mg_log_level) mg_log_write((level), __VA_ARGS__);                           \
    } while (0)
#define mg_log_debug(...) mg_log(MG_LOG_DEBUG, __VA_ARGS__)
#define mg_log_info(...) mg_log(MG_LOG_INFO, __VA_ARGS__)
#define mg_log_notice(...) mg_log(MG_LOG_NOTICE, __VA_ARGS__)
#define mg_log_warn(...) mg_log(MG_LOG_WARN, __VA_ARGS__)
#define mg_log_err(...) mg_log(MG_LOG_ERR, __VA_ARGS__)
#define mg_log_crit(...) mg_log(MG_LOG_CRIT, __VA_ARGS__)

/* Access log: true when an access log is configured. */
bool mg_access_log_enabled(void);
/* Reserves `len` bytes at the end of the access-log buffer (flushing first when full);
 * returns NULL when logging is off. The caller writes at most len bytes and commits. */
char *mg_access_log_reserve(size_t len);
void mg_access_log_commit(size_t len);
/* Writes buffered lines out (called from a short timer and at exit). */
void mg_access_log_flush(void);

/* Appends s to dst as the inside of a JSON string, escaping as needed, at most cap bytes.
 * Returns bytes written. */
size_t mg_json_escape(char *dst, size_t cap, const char *s, size_t len);

#endif
