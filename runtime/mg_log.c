/*
 * mg_log.c — error and access logs. Error lines are written immediately (they are rare and
 * must survive a crash); access lines are JSON objects collected in a 64 KiB buffer that is
 * written when full and by a 100 ms timer in the worker, so logging costs no syscall per
 * request. Writes use O_APPEND so several workers can share one file without interleaving
 * partial lines (each flush writes whole lines).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/time.h>

#include "mg_log.h"

#define ACCESS_BUF_SIZE (64 * 1024)

mg_log_level_t mg_log_level = MG_LOG_NOTICE;
static int error_fd = 2;
static int access_fd = -1;
static char access_buf[ACCESS_BUF_SIZE];
static size_t access_len;

static const char *level_names[] = {"debug", "info", "notice", "warn", "error", "crit"};

static int open_target(const mg_config_t *cfg, const char *target, int std_fd)
{
    if (strcmp(target, "stdout") == 0) return 1;
    if (strcmp(target, "stderr") == 0) return 2;
    (void)std_fd;
    char path[4096];
    if (target[0] == '/' || cfg->prefix == NULL)
        snprintf(path, sizeof(path), "%s", target);
    else
        snprintf(path, sizeof(path), "%s/%s", cfg->prefix, target);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) fprintf(stderr, "moongate: cannot open log \"%s\": %s\n", path, strerror(errno));
    return fd;
}

int mg_log_open(const mg_config_t *cfg)
{
    int efd = open_target(cfg, cfg->error_log ? cfg->error_log : "stderr", 2);
    if (efd < 0) return MG_ERROR;
    int afd = -1;
    if (cfg->access_log && strcmp(cfg->access_log, "off") != 0) {
        afd = open_target(cfg, cfg->access_log, 1);
        if (afd < 0) {
            if (efd > 2) close(efd);
            return MG_ERROR;
        }
    }
    mg_access_log_flush();
    if (error_fd > 2) close(error_fd);
    if (access_fd > 2) close(access_fd);
    error_fd = efd;
    access_fd = afd;
    mg_log_level = cfg->log_level;
    return MG_OK;
}

void mg_log_close(void)
{
    mg_access_log_flush();
    if (access_fd > 2) close(access_fd);
    access_fd = -1;
}

void mg_log_write(mg_log_level_t level, const char *fmt, ...)
{
    char line[2048];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    localtime_r(&tv.tv_sec, &tm);
    int n = (int)strftime(line, sizeof(line), "%Y/%m/%d %H:%M:%S", &tm);
    n += snprintf(line + n, sizeof(line) - (size_t)n, " [%s] %d: ", level_names[level], getpid());
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0) return;
    n += m;
    if ((size_t)n > sizeof(line) - 2) n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    ssize_t w = write(error_fd, line, (size_t)n);
    (void)w;
}

bool mg_access_log_enabled(void)
{
    return access_fd >= 0;
}

char *mg_access_log_reserve(size_t len)
{
    if (access_fd < 0 || len > ACCESS_BUF_SIZE) return NULL;
    if (ACCESS_BUF_SIZE - access_len < len) mg_access_log_flush();
    return access_buf + access_len;
}

void mg_access_log_commit(size_t len)
{
    access_len += len;
}

void mg_access_log_flush(void)
{
    size_t off = 0;
    while (access_fd >= 0 && off < access_len) {
        ssize_t w = write(access_fd, access_buf + off, access_len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break; /* a full disk must not stall the proxy: drop the batch */
        off += (size_t)w;
    }
    access_len = 0;
}

size_t mg_json_escape(char *dst, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x7f) {
            if (o + 1 > cap) break;
            dst[o++] = (char)c;
        } else {
            if (o + 6 > cap) break;
            dst[o++] = '\\';
            if (c == '"' || c == '\\')
                dst[o++] = (char)c;
            else {
                dst[o++] = 'u';
                dst[o++] = '0';
                dst[o++] = '0';
                dst[o++] = hex[c >> 4];
                dst[o++] = hex[c & 15];
            }
        }
    }
    return o;
}
