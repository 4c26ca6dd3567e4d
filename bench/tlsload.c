/*
 * tlsload.c — TLS handshake load for bench/run.sh's tls_handshake scenarios: C concurrent
 * connections, each a new TCP connection and a FULL TLS handshake (a fresh SSL object, no
 * session offered, no ticket kept), one `GET /` with `Connection: close`, the response read
 * to its Content-Length, then closed and replaced, for S seconds. wrk cannot do this: across a
 * reconnect it keeps the SSL object (SSL_shutdown + SSL_clear), so its next handshake resumes
 * the session from the server's ticket and measures resumption, not handshakes.
 *
 * The output imitates wrk's, so that run.sh parses both alike: requests completed, rate,
 * latency percentiles (connect to last response byte, i.e. handshake + request), non-2xx
 * responses and socket errors, plus the count of resumed handshakes (must stay 0).
 *
 * Build: cc -O2 -o tlsload bench/tlsload.c -lssl -lcrypto
 * Usage: tlsload HOST PORT CONNECTIONS SECONDS [tls1.2|tls1.3|any] (default any: TLS 1.3)
 */
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_LAT_US 10000000 /* latencies above 10 s go in the last bucket */

typedef struct {
    int fd;
    SSL *ssl;
    int state; /* 0 connecting, 1 handshaking, 2 writing, 3 reading */
    int sent, got;
    double t0;
    char buf[4096];
} cl_t;

static struct sockaddr_in addr;
static SSL_CTX *ctx;
static int epfd;
static char req[256];
static int reqlen;
static long n_ok, n_non2xx, e_connect, e_read, e_write, n_resumed;
static unsigned *hist; /* latency histogram, 1 µs buckets */
static long n_lat;
static int stopping;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void watch(cl_t *c, int op, unsigned ev)
{
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(epfd, op, c->fd, &e);
}

static void open_conn(cl_t *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        perror("socket");
        exit(1);
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->ssl = NULL;
    c->state = 0;
    c->sent = c->got = 0;
    c->t0 = now();
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 && errno != EINPROGRESS) {
        e_connect++;
        close(c->fd);
        c->fd = -1;
        return;
    }
    watch(c, EPOLL_CTL_ADD, EPOLLOUT);
}

static void close_conn(cl_t *c)
{
    if (c->ssl) SSL_free(c->ssl); /* no SSL_shutdown: nothing is kept for a next time */
    close(c->fd);
    c->fd = -1;
    if (!stopping) open_conn(c);
}

/* 1: a whole response is in c->buf (head and Content-Length bytes of body), 0: not yet,
 * -1: malformed */
static int response_done(cl_t *c, int *status)
{
    c->buf[c->got] = '\0';
    char *end = strstr(c->buf, "\r\n\r\n");
    if (end == NULL) return c->got >= (int)sizeof(c->buf) - 1 ? -1 : 0;
    if (sscanf(c->buf, "HTTP/1.%*d %d", status) != 1) return -1;
    char *cl = strcasestr(c->buf, "\r\ncontent-length:");
    if (cl == NULL || cl > end) return -1;
    long len = strtol(cl + 17, NULL, 10);
    return (end + 4 - c->buf) + len <= c->got ? 1 : 0;
}

/* Drives one connection as far as it can go without blocking. */
static void step(cl_t *c)
{
    if (c->state == 0) {
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err != 0) {
            e_connect++;
            close_conn(c);
            return;
        }
        c->ssl = SSL_new(ctx);
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_tlsext_host_name(c->ssl, "bench.test");
        SSL_set_connect_state(c->ssl);
        c->state = 1;
    }
    for (;;) {
        int r, e;
        if (c->state == 1) {
            r = SSL_do_handshake(c->ssl);
            if (r == 1) {
                if (SSL_session_reused(c->ssl)) n_resumed++;
                c->state = 2;
                continue;
            }
        } else if (c->state == 2) {
            r = SSL_write(c->ssl, req + c->sent, reqlen - c->sent);
            if (r > 0) {
                c->sent += r;
                if (c->sent == reqlen) c->state = 3;
                continue;
            }
        } else {
            r = SSL_read(c->ssl, c->buf + c->got, (int)sizeof(c->buf) - 1 - c->got);
            if (r > 0) {
                c->got += r;
                int status = 0, d = response_done(c, &status);
                if (d == 0) continue;
                if (d < 0) {
                    e_read++;
                } else {
                    if (status >= 200 && status < 400)
                        n_ok++;
                    else
                        n_non2xx++;
                    long us = (long)((now() - c->t0) * 1e6);
                    hist[us < MAX_LAT_US ? us : MAX_LAT_US]++;
                    n_lat++;
                }
                close_conn(c);
                return;
            }
        }
        e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) {
            watch(c, EPOLL_CTL_MOD, EPOLLIN);
            return;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
            watch(c, EPOLL_CTL_MOD, EPOLLOUT);
            return;
        }
        if (c->state == 2)
            e_write++;
        else
            e_read++;
        ERR_clear_error();
        close_conn(c);
        return;
    }
}

static long percentile(double p)
{
    long want = (long)(n_lat * p), seen = 0;
    for (long us = 0; us <= MAX_LAT_US; us++) {
        seen += hist[us];
        if (seen > want) return us;
    }
    return MAX_LAT_US;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: tlsload HOST PORT CONNECTIONS SECONDS [tls1.2|tls1.3|any]\n");
        return 2;
    }
    int conns = atoi(argv[3]);
    double secs = atof(argv[4]);
    const char *ver = argc > 5 ? argv[5] : "any";
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1 || conns < 1 || secs <= 0) {
        fprintf(stderr, "tlsload: bad arguments\n");
        return 2;
    }
    reqlen =
        snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n",
                 argv[1], argv[2]);
    hist = calloc(MAX_LAT_US + 1, sizeof(*hist));

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* the same certificate on both sides */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (strcmp(ver, "tls1.2") == 0) SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    if (strcmp(ver, "tls1.3") == 0) SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);

    epfd = epoll_create1(0);
    cl_t *cls = calloc((size_t)conns, sizeof(*cls));
    for (int i = 0; i < conns; i++)
        open_conn(&cls[i]);

    struct epoll_event evs[256];
    double start = now(), end = start + secs, t;
    while ((t = now()) < end) {
        int ms = (int)((end - t) * 1000) + 1;
        int n = epoll_wait(epfd, evs, 256, ms > 100 ? 100 : ms);
        for (int i = 0; i < n; i++)
            step(evs[i].data.ptr);
        for (int i = 0; i < conns; i++) /* a connect that failed at once: retry */
            if (cls[i].fd < 0) open_conn(&cls[i]);
    }
    double took = now() - start;
    stopping = 1;

    printf("Running %.0fs test @ https://%s:%s/ (full handshakes, %s)\n", secs, argv[1], argv[2],
           ver);
    printf("  %d connections\n", conns);
    printf("  Latency Distribution\n");
    printf("     50%% %ldus\n", percentile(0.50));
    printf("     90%% %ldus\n", percentile(0.90));
    printf("     99%% %ldus\n", percentile(0.99));
    printf("  %ld requests in %.2fs\n", n_ok + n_non2xx, took);
    if (e_connect + e_read + e_write > 0)
        printf("  Socket errors: connect %ld, read %ld, write %ld, timeout 0\n", e_connect, e_read,
               e_write);
    if (n_non2xx > 0) printf("  Non-2xx or 3xx responses: %ld\n", n_non2xx);
    printf("Requests/sec: %.2f\n", (n_ok + n_non2xx) / took);
    printf("Resumed handshakes: %ld\n", n_resumed);
    return 0;
}
