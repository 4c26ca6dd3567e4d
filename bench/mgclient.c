/*
 * mgclient.c — the two load shapes wrk cannot make, for bench/run.sh. `reqs` sends an exact
 * number of GET requests over K keep-alive connections (one request in flight per connection,
 * no pipelining), so an instruction count divided by N is a cost per request. `idle` opens N
 * keep-alive connections, completes one request on each, and then holds them all open and idle
 * until it is sent SIGTERM, so the server's memory per idle connection can be read from /proc.
 * Responses must carry Content-Length (chunked bodies are not supported); anything but a 200
 * counts as an error.
 *
 * Build: cc -O2 -o mgclient bench/mgclient.c
 * Usage: mgclient reqs HOST PORT N K [HEADER [ROTATE]] -> "ok=N err=E reconnects=R secs=S"
 *                                            HEADER: one more request header line, e.g.
 *                                            "X-In: hello"; a "%d" in it is replaced by
 *                                            1, 2, … ROTATE, 1, … over the requests sent
 *                                            (default ROTATE 1000): "apikey: key-%d"
 *        mgclient idle HOST PORT N [P] [HOLD] -> "ready ok=N err=E" once all are idle (at most P
 *                                            connects in flight, default 200), then holds them
 *                                            until SIGTERM or HOLD seconds (default 600)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    int sent;      /* bytes of the request written */
    int got;       /* bytes of the response buffered */
    int requests;  /* responses completed on this connection */
    int connected; /* the non-blocking connect() finished */
    int reqlen;    /* length of the request being sent */
    char req[1536]; /* room for a long header: an RS256 JWT is ~600 bytes */
    char buf[4096];
} cl_t;

static struct sockaddr_in addr;
static char host_hdr[128];
static const char *extra_hdr; /* NULL, or a header line that may contain one %d */
static long rotate = 1000, seq;
static int epfd;
static long n_ok, n_err, n_reconnect;
static int idle;
static long n, k, opened, issued;
static cl_t *cls;

/* The next request into c->req: the same bytes every time unless the extra header rotates. */
static void next_request(cl_t *c)
{
    char line[1024] = "";
    if (extra_hdr != NULL) {
        snprintf(line, sizeof(line), extra_hdr, (int)(seq % rotate) + 1);
        seq++;
    }
    c->reqlen = snprintf(c->req, sizeof(c->req),
                         "GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: mgclient\r\n%s%s\r\n", host_hdr,
                         line, extra_hdr != NULL ? "\r\n" : "");
    c->sent = 0;
}

static int open_conn(cl_t *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("socket");
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 && errno != EINPROGRESS) {
        perror("connect");
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->got = c->requests = c->connected = 0;
    next_request(c);
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static void close_conn(cl_t *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

/* Returns 1 when a whole response is buffered (and sets *status, *keep), 0 if more is needed,
 * -1 on a malformed response. */
static int parse(cl_t *c, int *status, int *keep, int *total)
{
    c->buf[c->got] = '\0';
    char *end = strstr(c->buf, "\r\n\r\n");
    if (end == NULL) return c->got >= (int)sizeof(c->buf) - 1 ? -1 : 0;
    if (strncmp(c->buf, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(c->buf + 9);
    *keep = c->buf[7] == '1';
    long clen = -1;
    for (char *l = strstr(c->buf, "\r\n"); l && l < end; l = strstr(l + 2, "\r\n")) {
        char *h = l + 2;
        if (strncasecmp(h, "content-length:", 15) == 0)
            clen = strtol(h + 15, NULL, 10);
        else if (strncasecmp(h, "connection:", 11) == 0) {
            char *v = h + 11;
            while (*v == ' ')
                v++;
            if (strncasecmp(v, "close", 5) == 0) *keep = 0;
        }
    }
    if (clen < 0) return -1;
    *total = (int)(end + 4 - c->buf) + (int)clen;
    if (*total >= (int)sizeof(c->buf)) return -1;
    return c->got >= *total;
}

static int open_conn(cl_t *c);

/* After a connection failed: `reqs` reopens it for the next request, `idle` starts the next
 * connection so that one failure does not stall the rest. */
static void replace_failed(cl_t *c)
{
    if (!idle && issued < n && open_conn(c) == 0)
        issued++;
    else if (idle && opened < k && open_conn(&cls[opened]) == 0)
        opened++;
}

static int want_write(cl_t *c, int on)
{
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    return epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: %s reqs HOST PORT N K [HEADER [ROTATE]] | idle HOST PORT N [P] [HOLD]\n", argv[0]);
        return 2;
    }
    idle = strcmp(argv[1], "idle") == 0;
    n = atol(argv[4]);
    k = idle ? n : (argc > 5 ? atol(argv[5]) : 1);
    long parallel = idle ? (argc > 5 ? atol(argv[5]) : 200) : k;
    if (k > n) k = n;
    if (parallel > k) parallel = k;

    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &addr.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", argv[2]);
        return 2;
    }
    snprintf(host_hdr, sizeof(host_hdr), "%s:%s", argv[2], argv[3]);
    if (!idle && argc > 6 && argv[6][0] != '\0') {
        const char *pct = strchr(argv[6], '%');
        if (strlen(argv[6]) > 1000 || (pct != NULL && (pct[1] != 'd' || strchr(pct + 1, '%')))) {
            fprintf(stderr, "HEADER: at most 1000 bytes and one %%d\n");
            return 2;
        }
        extra_hdr = argv[6];
        if (argc > 7) rotate = atol(argv[7]);
        if (rotate < 1) rotate = 1;
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    cls = calloc((size_t)k, sizeof(cl_t));
    if (cls == NULL) {
        perror("calloc");
        return 1;
    }
    long done = 0;
    for (; opened < parallel; opened++) {
        if (open_conn(&cls[opened]) < 0) return 1;
        issued++;
    }

    double t0 = now();
    struct epoll_event evs[256];
    while (done < (idle ? k : n)) {
        int ne = epoll_wait(epfd, evs, 256, 10000);
        if (ne == 0) {
            fprintf(stderr, "mgclient: stalled for 10 s (%ld of %ld done)\n", done, idle ? k : n);
            break;
        }
        for (int i = 0; i < ne; i++) {
            cl_t *c = evs[i].data.ptr;
            if (c->fd < 0) continue;
            if (!c->connected && (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
                int err = 0;
                socklen_t len = sizeof(err);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    if (n_err < 5) fprintf(stderr, "mgclient: connect: %s\n", strerror(err));
                    n_err++;
                    close_conn(c);
                    done++;
                    replace_failed(c);
                    continue;
                }
                c->connected = 1;
            }
            if (c->sent < c->reqlen && (evs[i].events & EPOLLOUT)) {
                ssize_t w = write(c->fd, c->req + c->sent, (size_t)(c->reqlen - c->sent));
                if (w > 0) c->sent += (int)w;
                if (c->sent == c->reqlen) want_write(c, 0);
            }
            if (!(evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            ssize_t r = read(c->fd, c->buf + c->got, sizeof(c->buf) - 1 - (size_t)c->got);
            if (r < 0 && errno == EAGAIN) continue;
            if (r <= 0) {
                /* The server closed an idle keep-alive connection: reconnect and resend. */
                if (!idle && c->got == 0 && c->requests > 0) {
                    close_conn(c);
                    n_reconnect++;
                    open_conn(c);
                    continue;
                }
                if (n_err < 5)
                    fprintf(stderr, "mgclient: %s after %d bytes of a response\n",
                            r == 0 ? "EOF" : strerror(errno), c->got);
                n_err++;
                close_conn(c);
                done++;
                replace_failed(c);
                continue;
            }
            c->got += (int)r;
            int status = 0, keep = 0, total = 0;
            int rc = parse(c, &status, &keep, &total);
            if (rc == 0) continue;
            done++;
            if (rc < 0 || status != 200) {
                if (n_err < 5) fprintf(stderr, "mgclient: bad response: %.*s\n", 200, c->buf);
                n_err++;
                close_conn(c);
                replace_failed(c);
                continue;
            }
            n_ok++;
            c->requests++;
            memmove(c->buf, c->buf + total, (size_t)(c->got - total));
            c->got -= total;
            if (idle) {
                /* Stay connected and idle; start the next connection if any are left. */
                if (!keep) n_err++;
                if (opened < k) {
                    if (open_conn(&cls[opened]) < 0) return 1;
                    opened++;
                }
                continue;
            }
            if (issued >= n) {
                close_conn(c);
                continue;
            }
            issued++;
            if (!keep) {
                close_conn(c);
                n_reconnect++;
                open_conn(c);
                continue;
            }
            next_request(c);
            ssize_t w = write(c->fd, c->req, (size_t)c->reqlen);
            if (w > 0) c->sent = (int)w;
            if (c->sent < c->reqlen) want_write(c, 1);
        }
    }
    double secs = now() - t0;

    if (!idle) {
        printf("ok=%ld err=%ld reconnects=%ld secs=%.3f\n", n_ok, n_err, n_reconnect, secs);
        return n_err ? 1 : 0;
    }
    printf("ready ok=%ld err=%ld secs=%.3f\n", n_ok, n_err, secs);
    fflush(stdout);
    /* Hold the connections; SIGTERM (default action) ends us, the alarm is a backstop in case
     * whoever started us dies without killing us. */
    alarm((unsigned)(argc > 6 ? atoi(argv[6]) : 600));
    for (;;)
        pause();
}
