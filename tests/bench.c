/* bench -- load generator and probes for an Arc v1 hub (`make bench`).
 *
 * tests/bench.py drives it: it starts a fresh hub for every run and calls
 * one subcommand of this program against it. Each subcommand prints exactly
 * one JSON object on stdout (times in milliseconds) and exits 0, or prints
 * a message on stderr and exits 1 (2 for usage errors).
 *
 * It is compiled together with arc.c (-DARC_NO_MAIN, as tests/unit.c is) to
 * reuse Buf/Str, the JSON reader and the clock helpers. All HTTP traffic
 * runs on one thread over non-blocking sockets multiplexed with epoll
 * (poll() off Linux), so one process drives thousands of connections.
 * Nothing here is specific to arc: the same measurements run against any
 * hub that speaks Arc v1 (the Python reference included); where a hub
 * closes every connection, a "keep-alive" client simply reconnects, as a
 * real client would.
 *
 *   bench post   --url URL [--conns N] [--seconds S | --count N] [--close]
 *                [--idle N [--batch K]]
 *   bench get    --url URL [--conns N] [--seconds S] [--path P] [--close]
 *                [--idle N [--batch K]]
 *       Closed-loop throughput: each connection sends its next request as
 *       soon as the previous answer is in. Reports req/s (2xx answers per
 *       second), errors, and latency percentiles (from queueing the request,
 *       including the connect with --close, to the last byte of the answer).
 *       --idle N first parks N more connections in a long-poll on a channel
 *       nobody posts to, and keeps them open during the run.
 *       In --path, every "{r:N}" becomes a random integer in [0, N), drawn
 *       afresh for each request (history pages: since_id={r:1000000}).
 *   bench seq    --url URL --file F [--runs N] [--seconds S] [--timeout-ms T]
 *       A fixed sequence of requests, one per line of F ("METHOD PATH
 *       [BODY]"; blank lines and lines starting with # skipped; {r:N} as
 *       above), sent one after another on one keep-alive connection; the
 *       whole sequence again and again until N runs (default 20) or S
 *       seconds (default 10) have passed, at least once. Reports the
 *       percentiles of the sequence's time and each line's median. A
 *       request unanswered after T ms (default 120000) ends the run
 *       ("timed_out": true; the hub is still busy with it).
 *   bench wake   --url URL [--count N] [--gap-ms G] [--sse]
 *       One waiter parked on GET /v1/events?timeout=30 (or an open
 *       GET /v1/stream with --sse); a second connection posts; the latency
 *       is from sending the POST to receiving the waiter's answer (event).
 *       Before each post: a GET /v1/hub-info round trip on the posting
 *       connection (so a single-threaded hub has read the waiter's request)
 *       and a random pause of 0..G ms (so the post lands at a random phase
 *       of a hub that polls on a timer).
 *   bench fanout --url URL --waiters N [--settle-ms MS] [--batch K]
 *       Park N long-polls (distinct agents), then post once; time until
 *       every waiter has its answer. A waiter refused at connect time (503,
 *       e.g. past the hub's connection limit) is counted, not waited for.
 *       Waiters connect K at a time (default 256), each batch once the hub
 *       has accept()ed the previous one (a short listen backlog, like the
 *       reference's 5, would otherwise drop handshakes).
 *   bench park   --url URL --pid PID --steps N[,N...] [--seconds S] [--batch K]
 *                [--path P]
 *       Hub RSS (VmRSS) idle, then with N parked long-polls for each step,
 *       and the hub's CPU time (utime+stime) over S seconds at each step.
 *       --path: the waiters' request (default: GET /v1/events per agent).
 *   bench relay  --spool DIR [--count N] [--gap-ms G]
 *       File-relay round trip of GET /v1/hub-info: write the request file
 *       atomically into DIR/requests/<agent>/, wait (inotify) for
 *       DIR/responses/<agent>/<id>.json.
 *   bench relay2 --spool DIR [--count N] [--gap-ms G] [--poll-timeout S]
 *       The same for a second agent while a first agent keeps a long-poll
 *       (GET /v1/events?timeout=S) open through the relay.
 *   bench coldstart [--runs N] --dir DIR -- CMD ARG...
 *       fork/exec CMD (with {port} and {dir} in its arguments replaced by a
 *       free port and a fresh directory under DIR) and time until the first
 *       GET /v1/hub-info is answered; the hub is then stopped.
 *   bench exec   [--runs N] [--cwd DIR] -- CMD ARG...
 *       Wall time of running CMD to completion (e.g. `arc ensure`).
 */

#include "../arc.c"

/* ==== helpers ============================================================= */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ms(double ms) {
    if (ms <= 0) return;
    struct timespec ts = { (time_t)(ms / 1000), (long)(fmod(ms, 1000) * 1e6) };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

ARC_NORETURN ARC_PRINTF(1, 2) static void usage_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (see the comment at the top of tests/bench.c)\n", stderr);
    va_end(ap);
    exit(2);
}

/* Uniform in [0, 1), from a xorshift generator seeded per process. */
static uint64_t g_rng;
static double rnd01(void) {
    if (!g_rng) g_rng = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32) ^ 1;
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}

/* Copy tmpl into out, replacing every "{r:N}" by a uniform random integer
 * in [0, N), drawn afresh on every call. Returns out's text. */
static const char *expand_rand(Buf *out, const char *tmpl) {
    buf_reset(out);
    for (const char *p = tmpl; *p;) {
        if (p[0] == '{' && p[1] == 'r' && p[2] == ':') {
            char *end;
            long long n = strtoll(p + 3, &end, 10);
            if (*end == '}' && n > 0) {
                buf_addf(out, "%lld", (long long)(rnd01() * (double)n));
                p = end + 1;
                continue;
            }
        }
        buf_addc(out, *p++);
    }
    return buf_cstr(out);
}

/* memmem() is a GNU extension; arc.c builds with plain POSIX. */
static const char *find_seq(const char *p, size_t n, const char *pat, size_t m) {
    for (size_t i = 0; i + m <= n; i++)
        if (p[i] == pat[0] && !memcmp(p + i, pat, m)) return p + i;
    return NULL;
}

/* Raise the open-file soft limit to the hard limit (10,000 sockets). */
static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ---- latency samples ---- */

typedef struct {
    double *v;      /* owned; milliseconds */
    size_t n, cap;
} Samples;

static void samples_add(Samples *s, double ms) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 1024;
        s->v = xrealloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = ms;
}

static int dbl_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted samples (p in 0..100). */
static double pct(const Samples *s, double p) {
    if (!s->n) return 0;
    size_t k = (size_t)ceil(p / 100.0 * (double)s->n);
    if (k < 1) k = 1;
    if (k > s->n) k = s->n;
    return s->v[k - 1];
}

/* Append `"p50_ms":..,"p90_ms":..,...` for the samples (sorted here). */
static void samples_json(Buf *b, Samples *s) {
    qsort(s->v, s->n, sizeof *s->v, dbl_cmp);
    double sum = 0;
    for (size_t i = 0; i < s->n; i++) sum += s->v[i];
    buf_addf(b, "\"samples\":%zu,\"p50_ms\":%.4f,\"p90_ms\":%.4f,\"p99_ms\":%.4f,"
             "\"min_ms\":%.4f,\"max_ms\":%.4f,\"mean_ms\":%.4f",
             s->n, pct(s, 50), pct(s, 90), pct(s, 99), s->n ? s->v[0] : 0,
             s->n ? s->v[s->n - 1] : 0, s->n ? sum / (double)s->n : 0);
}

/* ---- /proc ---- */

static long proc_rss_kb(int pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

/* utime + stime of the whole process, in milliseconds. */
static double proc_cpu_ms(int pid) {
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');   /* comm may contain spaces */
    if (!p) return -1;
    unsigned long ut = 0, st = 0;
    /* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt
     * majflt cmajflt utime(14) stime(15) */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
               &ut, &st) != 2)
        return -1;
    return (double)(ut + st) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

/* ==== the HTTP client: many connections, one thread ====================== */

enum { HC_IDLE, HC_CONNECTING, HC_OPEN };

typedef struct HC {
    int fd;               /* -1 when not connected */
    int state;
    int id;               /* index in Cl.c */
    Buf out;              /* request bytes; out_off of them sent */
    size_t out_off;
    Buf in;               /* response bytes not yet consumed */
    int64_t t0;           /* ns: when the current request was queued */
    int pending;          /* a request is outstanding */
    int req_close;        /* it said Connection: close */
    /* the response head, once parsed (head_len > 0) */
    size_t head_len;
    int status, resp_close, stream;
    int64_t clen;         /* -1: none (body ends at EOF) */
    /* results, for the generic handler */
    int last_status;      /* 0: connection failed */
    Buf body;             /* body of the last answer */
    int64_t t_done;       /* ns: last answer complete */
    int64_t n_done;       /* answers so far */
    int64_t tag;          /* for the modes */
    int reg_fd;           /* epoll: the fd registered for it, or -1 */
    short reg_ev;         /* ... and the events asked for */
} HC;

typedef struct Cl Cl;
struct Cl {
    HC *c;
    int n;
    struct pollfd *pfd;   /* poll(): one per open conn */
    int *pmap;            /* ... and its index in c */
#ifdef ARC_EPOLL
    int epfd;
    struct epoll_event *ev;   /* one per conn */
#endif
    struct sockaddr_in sa;
    char hostport[96];
    /* answer complete (status 0: the connection failed); may send again */
    void (*on_resp)(Cl *, HC *, int status, Str body, int64_t t);
    /* SSE: one event's data (the text after "data:"), as it arrives */
    void (*on_event)(Cl *, HC *, Str data, int64_t t);
    void *ctx;
    int64_t connects, connect_fail;
};

static void hc_resp_store(Cl *cl, HC *c, int status, Str body, int64_t t) {
    (void)cl;
    c->last_status = status;
    buf_reset(&c->body);
    buf_addstr(&c->body, body);
    c->t_done = t;
    c->n_done++;
}

/* Parse "http://HOST:PORT" (IPv4 literal or localhost). */
static void cl_init(Cl *cl, const char *url, int n) {
    memset(cl, 0, sizeof *cl);
    const char *p = url;
    if (!strncmp(p, "http://", 7)) p += 7;
    char host[64];
    int port = 80;
    const char *colon = strchr(p, ':');
    size_t hl = colon ? (size_t)(colon - p) : strcspn(p, "/");
    if (hl >= sizeof host) usage_die("bad --url %s", url);
    memcpy(host, p, hl);
    host[hl] = 0;
    if (colon) port = atoi(colon + 1);
    if (!strcmp(host, "localhost")) snprintf(host, sizeof host, "127.0.0.1");
    cl->sa.sin_family = AF_INET;
    cl->sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &cl->sa.sin_addr) != 1)
        usage_die("--url needs an IPv4 address: %s", url);
    snprintf(cl->hostport, sizeof cl->hostport, "%s:%d", host, port);
    cl->n = n;
    cl->c = xrealloc(NULL, (size_t)n * sizeof *cl->c);
    memset(cl->c, 0, (size_t)n * sizeof *cl->c);
    for (int i = 0; i < n; i++) {
        cl->c[i].fd = cl->c[i].reg_fd = -1;
        cl->c[i].id = i;
    }
    cl->pfd = xrealloc(NULL, (size_t)n * sizeof *cl->pfd);
    cl->pmap = xrealloc(NULL, (size_t)n * sizeof *cl->pmap);
#ifdef ARC_EPOLL
    cl->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (cl->epfd < 0) die("epoll_create1: %s", strerror(errno));
    cl->ev = xrealloc(NULL, (size_t)n * sizeof *cl->ev);
#endif
    cl->on_resp = hc_resp_store;
}

/* Close a connection. `abort` sends RST (no TIME_WAIT left behind). */
static void hc_close(HC *c, int abort_it) {
    if (c->fd >= 0) {
        if (abort_it) {
            struct linger lg = { 1, 0 };
            setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(c->fd);
    }
    c->fd = c->reg_fd = -1;   /* a closed fd leaves the epoll set */
    c->state = HC_IDLE;
    buf_reset(&c->in);
    buf_reset(&c->out);
    c->out_off = 0;
    c->head_len = 0;
    c->stream = 0;
}

static void cl_free(Cl *cl) {
    for (int i = 0; i < cl->n; i++) {
        hc_close(&cl->c[i], 1);
        buf_free(&cl->c[i].in);
        buf_free(&cl->c[i].out);
        buf_free(&cl->c[i].body);
    }
    free(cl->c);
    free(cl->pfd);
    free(cl->pmap);
#ifdef ARC_EPOLL
    close(cl->epfd);
    free(cl->ev);
#endif
}

/* The current request failed: report it and drop the connection. */
static void hc_fail(Cl *cl, HC *c) {
    int was = c->pending;
    hc_close(c, 1);
    c->pending = 0;
    if (was) cl->on_resp(cl, c, 0, (Str){ "", 0 }, now_ns());
}

static void hc_flush(Cl *cl, HC *c) {
    while (c->out_off < c->out.len) {
        ssize_t w = send(c->fd, c->out.p + c->out_off, c->out.len - c->out_off,
                         MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (w <= 0) {
            hc_fail(cl, c);
            return;
        }
        c->out_off += (size_t)w;
    }
    buf_reset(&c->out);
    c->out_off = 0;
}

static void hc_connect(Cl *cl, HC *c) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cl->connects++;
    if (fd < 0) {
        cl->connect_fail++;
        hc_fail(cl, c);
        return;
    }
    fd_nonblock(fd);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    if (connect(fd, (struct sockaddr *)&cl->sa, sizeof cl->sa) == 0) {
        c->state = HC_OPEN;
        hc_flush(cl, c);
    } else if (errno == EINPROGRESS) {
        c->state = HC_CONNECTING;
    } else {
        cl->connect_fail++;
        hc_fail(cl, c);
    }
}

/* Queue one request on c (connecting first if needed) and start sending. */
static void hc_send(Cl *cl, HC *c, const char *method, const char *path,
                    Str body, int close_it) {
    c->t0 = now_ns();
    c->pending = 1;
    c->req_close = close_it;
    buf_addf(&c->out, "%s %s HTTP/1.1\r\nHost: %s\r\n", method, path, cl->hostport);
    if (body.n || !strcmp(method, "POST"))
        buf_addf(&c->out, "Content-Type: application/json\r\nContent-Length: %zu\r\n",
                 body.n);
    if (close_it) buf_adds(&c->out, "Connection: close\r\n");
    buf_adds(&c->out, "\r\n");
    buf_addstr(&c->out, body);
    if (c->fd < 0) hc_connect(cl, c);
    else if (c->state == HC_OPEN) hc_flush(cl, c);
}

static int64_t hdr_int(Str v) {
    int64_t n;
    return parse_int_text(v, &n) ? -1 : n;
}

/* Parse the response head in c->in. Returns 1 parsed, 0 need more, -1 bad. */
static int hc_head(HC *c) {
    const char *p = c->in.p, *end = find_seq(p, c->in.len, "\r\n\r\n", 4);
    if (!end) return c->in.len > 65536 ? -1 : 0;
    c->head_len = (size_t)(end - p) + 4;
    if (c->in.len < 12 || memcmp(p, "HTTP/1.", 7)) return -1;
    int minor = p[7] - '0';
    c->status = atoi(p + 9);
    c->clen = -1;
    c->resp_close = minor == 0;
    c->stream = 0;
    const char *line = memchr(p, '\n', c->head_len);
    while (line && line + 1 < end) {
        const char *ls = line + 1;
        const char *le = memchr(ls, '\n', (size_t)(end + 2 - ls));
        if (!le) break;
        Str l = { ls, (size_t)(le - ls) };
        if (l.n && l.p[l.n - 1] == '\r') l.n--;
        const char *colon = memchr(l.p, ':', l.n);
        if (colon) {
            Str name = { l.p, (size_t)(colon - l.p) };
            Str v = str_trim((Str){ colon + 1, l.n - name.n - 1 });
            if (str_ieq(name, "content-length")) c->clen = hdr_int(v);
            else if (str_ieq(name, "connection")) {
                if (http_has_token(v, "close")) c->resp_close = 1;
                else if (http_has_token(v, "keep-alive")) c->resp_close = 0;
            } else if (str_ieq(name, "content-type")) {
                if (v.n >= 17 && str_ieq((Str){ v.p, 17 }, "text/event-stream"))
                    c->stream = 1;
            }
        }
        line = le;
    }
    return 1;
}

/* Hand complete SSE events in c->in (after the head) to on_event. */
static void hc_events(Cl *cl, HC *c, int64_t t) {
    for (;;) {
        const char *p = c->in.p + c->head_len;
        size_t n = c->in.len - c->head_len;
        const char *e = find_seq(p, n, "\n\n", 2);
        if (!e) break;
        Str blk = { p, (size_t)(e - p) };
        while (blk.n) {
            const char *nl = memchr(blk.p, '\n', blk.n);
            Str l = { blk.p, nl ? (size_t)(nl - blk.p) : blk.n };
            if (l.n && l.p[l.n - 1] == '\r') l.n--;
            if (l.n >= 5 && !memcmp(l.p, "data:", 5) && cl->on_event) {
                Str d = { l.p + 5, l.n - 5 };
                if (d.n && d.p[0] == ' ') d.p++, d.n--;
                cl->on_event(cl, c, d, t);
            }
            if (!nl) break;
            blk.n -= (size_t)(nl - blk.p) + 1;
            blk.p = nl + 1;
        }
        size_t used = (size_t)(e - c->in.p) + 2 - c->head_len;
        memmove(c->in.p + c->head_len, c->in.p + c->head_len + used,
                c->in.len - c->head_len - used);
        c->in.len -= used;
    }
}

/* Deliver every complete answer in c->in. `eof`: the peer closed. */
static void hc_parse(Cl *cl, HC *c, int eof, int64_t t) {
    while (c->fd >= 0) {
        if (!c->head_len) {
            if (!c->in.len) break;
            int r = hc_head(c);
            if (r < 0) {
                hc_fail(cl, c);
                return;
            }
            if (r == 0) break;
        }
        if (c->stream) {
            hc_events(cl, c, t);
            if (eof) hc_fail(cl, c);
            return;
        }
        size_t have = c->in.len - c->head_len;
        if (c->clen >= 0 ? have < (size_t)c->clen : !eof) break;
        size_t blen = c->clen >= 0 ? (size_t)c->clen : have;
        int status = c->status;
        int close_it = c->resp_close || c->req_close || c->clen < 0;
        /* Keep the body while the handler runs: it may send again. */
        Buf tmp = { 0 };
        buf_add(&tmp, c->in.p + c->head_len, blen);
        buf_consume(&c->in, c->head_len + blen);
        c->head_len = 0;
        c->pending = 0;
        if (close_it) hc_close(c, 0);
        cl->on_resp(cl, c, status, buf_str(&tmp), t);
        buf_free(&tmp);
        if (close_it) return;
    }
    if (eof && c->fd >= 0) {
        if (c->pending) hc_fail(cl, c);
        else hc_close(c, 0);
    }
}

static void hc_read(Cl *cl, HC *c) {
    int eof = 0;
    for (;;) {
        buf_reserve(&c->in, 16384);
        ssize_t r = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len - 1, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (r <= 0) {
            eof = 1;
            break;
        }
        c->in.len += (size_t)r;
        c->in.p[c->in.len] = 0;
        if (c->in.cap - c->in.len > 1) break;   /* drained (probably) */
    }
    hc_parse(cl, c, eof, now_ns());
}

/* I/O on one ready connection; `fd` is the one the readiness was for. */
static void cl_ready(Cl *cl, HC *c, int fd, unsigned re) {
    if (c->fd != fd) return;   /* replaced meanwhile */
    if (c->state == HC_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            cl->connect_fail++;
            hc_fail(cl, c);
            return;
        }
        c->state = HC_OPEN;
        hc_flush(cl, c);
        return;
    }
    if (re & POLLOUT) hc_flush(cl, c);
    if (c->fd >= 0 && (re & (POLLIN | POLLHUP | POLLERR))) hc_read(cl, c);
}

/* Wait for readiness of every open connection, then do all the I/O it
 * allows. Returns the number of open connections. With epoll (Linux) a
 * wait costs what is ready, not what is open: a poll() over 10,000 parked
 * waiters took the client longer than the hub took to answer them all. */
static int cl_poll(Cl *cl, int timeout_ms) {
    int n = 0;
    for (int i = 0; i < cl->n; i++) {
        HC *c = &cl->c[i];
        if (c->fd < 0) continue;
        short ev = c->state == HC_CONNECTING ? POLLOUT : POLLIN;
        if (c->state == HC_OPEN && c->out_off < c->out.len) ev |= POLLOUT;
#ifdef ARC_EPOLL
        if (c->reg_fd != c->fd || c->reg_ev != ev) {
            struct epoll_event e = {
                .events = (ev & POLLIN ? EPOLLIN : 0u) | (ev & POLLOUT ? EPOLLOUT : 0u),
                .data.u64 = (uint64_t)(uint32_t)c->fd << 32 | (uint32_t)i };
            if (epoll_ctl(cl->epfd, c->reg_fd == c->fd ? EPOLL_CTL_MOD : EPOLL_CTL_ADD,
                          c->fd, &e))
                die("epoll_ctl: %s", strerror(errno));
            c->reg_fd = c->fd;
            c->reg_ev = ev;
        }
#else
        cl->pfd[n] = (struct pollfd){ .fd = c->fd, .events = ev };
        cl->pmap[n] = i;
#endif
        n++;
    }
    if (!n) {
        sleep_ms(timeout_ms);
        return 0;
    }
#ifdef ARC_EPOLL
    int r = epoll_wait(cl->epfd, cl->ev, cl->n, timeout_ms);
    if (r < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    for (int k = 0; k < r; k++) {
        uint32_t e = cl->ev[k].events;
        cl_ready(cl, &cl->c[(uint32_t)cl->ev[k].data.u64], (int)(cl->ev[k].data.u64 >> 32),
                 (e & EPOLLIN ? POLLIN : 0u) | (e & EPOLLOUT ? POLLOUT : 0u) |
                     (e & EPOLLHUP ? POLLHUP : 0u) | (e & EPOLLERR ? POLLERR : 0u));
    }
#else
    int r = poll(cl->pfd, (nfds_t)n, timeout_ms);
    if (r < 0 && errno != EINTR) die("poll: %s", strerror(errno));
    for (int k = 0; k < n && r > 0; k++)   /* r: 0 on timeout, EINTR */
        if (cl->pfd[k].revents)
            cl_ready(cl, &cl->c[cl->pmap[k]], cl->pfd[k].fd, (unsigned)cl->pfd[k].revents);
#endif
    return n;
}

/* Poll until *flag is nonzero or the deadline (ns) passes. */
static int cl_wait(Cl *cl, const int64_t *count, int64_t want, int64_t deadline) {
    while (*count < want) {
        int64_t left = (deadline - now_ns()) / 1000000;
        if (left <= 0) return -1;
        cl_poll(cl, left > 100 ? 100 : (int)left + 1);
    }
    return 0;
}

/* Blocking request on c (sent, then polled to completion). Returns the
 * status (0 on failure or timeout); the body is in c->body. */
static int hc_call(Cl *cl, HC *c, const char *method, const char *path, Str body,
                   int timeout_ms) {
    int64_t want = c->n_done + 1;
    hc_send(cl, c, method, path, body, 0);
    if (cl_wait(cl, &c->n_done, want, now_ns() + (int64_t)timeout_ms * 1000000)) {
        hc_close(c, 1);
        c->pending = 0;
        return 0;
    }
    return c->last_status;
}

/* The id of a message in {"ok":true,"result":{...}} (a POST's answer). */
static int64_t result_id(Str body) {
    Json j = { 0 };
    int64_t id = -1;
    if (json_parse(&j, body.p, body.n) == 0) {
        uint32_t r = json_get(&j, 0, "result");
        uint32_t v = r ? json_get(&j, r, "id") : 0;
        if (v) json_to_i64(&j, v, &id);
    }
    json_free(&j);
    return id;
}

/* Highest "id" among the messages of {"ok":true,"result":[...]}; 0 for an
 * empty list, -1 if the text is not such an answer. */
static int64_t result_max_id(Str body) {
    Json j = { 0 };
    int64_t best = -1;
    if (json_parse(&j, body.p, body.n) == 0) {
        uint32_t r = json_get(&j, 0, "result");
        if (r && j.t[r].type == JSON_ARR) {
            best = 0;
            uint32_t i = r + 1;
            for (uint32_t k = 0; k < j.t[r].n; k++) {
                uint32_t v = json_get(&j, i, "id");
                int64_t id;
                if (v && json_to_i64(&j, v, &id) == 0 && id > best) best = id;
                i = j.t[i].next;
            }
        }
    }
    json_free(&j);
    return best;
}

/* ==== options ============================================================= */

typedef struct {
    const char *url, *path, *spool, *dir, *cwd, *steps;
    int conns, count, runs, sse, close_it, waiters, pid, batch, idle;
    double seconds, gap_ms, settle_ms, poll_timeout;
    char **cmd;          /* after "--" */
    int ncmd;
} Opts;

static void opts_parse(int argc, char **argv, Opts *o) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--")) {
            o->cmd = argv + i + 1;
            o->ncmd = argc - i - 1;
            return;
        }
        if (!strcmp(a, "--close")) { o->close_it = 1; continue; }
        if (!strcmp(a, "--sse")) { o->sse = 1; continue; }
        if (strncmp(a, "--", 2) || i + 1 >= argc) usage_die("bad argument %s", a);
        v = argv[++i];
        if (!strcmp(a, "--url")) o->url = v;
        else if (!strcmp(a, "--path") || !strcmp(a, "--file")) o->path = v;
        else if (!strcmp(a, "--timeout-ms")) o->gap_ms = atof(v);
        else if (!strcmp(a, "--spool")) o->spool = v;
        else if (!strcmp(a, "--dir")) o->dir = v;
        else if (!strcmp(a, "--cwd")) o->cwd = v;
        else if (!strcmp(a, "--steps")) o->steps = v;
        else if (!strcmp(a, "--conns")) o->conns = atoi(v);
        else if (!strcmp(a, "--count")) o->count = atoi(v);
        else if (!strcmp(a, "--runs")) o->runs = atoi(v);
        else if (!strcmp(a, "--waiters")) o->waiters = atoi(v);
        else if (!strcmp(a, "--pid")) o->pid = atoi(v);
        else if (!strcmp(a, "--batch")) o->batch = atoi(v);
        else if (!strcmp(a, "--idle")) o->idle = atoi(v);
        else if (!strcmp(a, "--seconds")) o->seconds = atof(v);
        else if (!strcmp(a, "--gap-ms")) o->gap_ms = atof(v);
        else if (!strcmp(a, "--settle-ms")) o->settle_ms = atof(v);
        else if (!strcmp(a, "--poll-timeout")) o->poll_timeout = atof(v);
        else usage_die("unknown option %s", a);
    }
}

static void need_url(const Opts *o) {
    if (!o->url) usage_die("--url is required");
}

static void emit(Buf *b) {
    buf_addc(b, '}');
    printf("%s\n", buf_cstr(b));
    fflush(stdout);
    buf_free(b);
}

/* ==== post / get: closed-loop throughput ================================= */

typedef struct {
    int n;                /* waiters (connections 1..n of the Cl) */
    int64_t parked, refused, early, failed;
} Park;

static const char *g_wait_path;   /* --path (park): what waiters ask instead */
static void park_waiters(Cl *cl, Park *pk, int from, int to, int64_t since,
                         int timeout_s, int batch, double settle_ms);

typedef struct {
    int post, close_it;
    const char *path;
    int64_t end_ns;       /* stop issuing after this */
    int64_t max_count;    /* or after this many requests (0: no limit) */
    int64_t issued, ok, errors, inflight, retry, last_ns;
    int64_t err_status[6];   /* 0 (connection), 1xx..5xx */
    Samples lat;
    Buf pbuf;             /* the path with its {r:N} drawn */
} Load;

static void load_issue(Cl *cl, HC *c) {
    Load *L = cl->ctx;
    if (now_ns() >= L->end_ns || (L->max_count && L->issued >= L->max_count))
        return;
    L->issued++;
    L->inflight++;
    if (L->post) {
        char body[160];
        int n = snprintf(body, sizeof body,
                         "{\"from_agent\":\"bench-%d\",\"channel\":\"general\","
                         "\"body\":\"bench message %lld\"}",
                         c->id, (long long)L->issued);
        hc_send(cl, c, "POST", "/v1/messages", (Str){ body, (size_t)n }, L->close_it);
    } else {
        hc_send(cl, c, "GET", expand_rand(&L->pbuf, L->path), (Str){ "", 0 },
                L->close_it);
    }
}

static void load_resp(Cl *cl, HC *c, int status, Str body, int64_t t) {
    Load *L = cl->ctx;
    (void)body;
    L->inflight--;
    L->last_ns = t;
    if (status >= 200 && status < 300) {
        L->ok++;
        samples_add(&L->lat, (double)(t - c->t0) / 1e6);
    } else {
        L->errors++;
        L->err_status[status >= 100 && status < 600 ? status / 100 : 0]++;
        if (status == 0) {     /* the connection failed: retry from the loop */
            c->tag = 1;
            L->retry++;
            return;
        }
    }
    load_issue(cl, c);
}

static int bench_load(Opts *o, int post) {
    need_url(o);
    raise_nofile();
    if (o->conns < 1) o->conns = 1;
    Cl cl;
    cl_init(&cl, o->url, o->conns);
    Load L = { .post = post, .close_it = o->close_it,
               .path = o->path ? o->path : "/v1/messages?channel=general&limit=100",
               .max_count = o->count };
    double secs = o->seconds > 0 ? o->seconds : (o->count ? 3600 : 5);
    cl.ctx = &L;
    cl.on_resp = load_resp;
    /* --idle N: first park N long-polls on a channel nobody posts to; they
     * stay open (and unread) for the whole run. */
    Cl idle;
    Park ipk = { .n = o->idle };
    if (o->idle > 0) {
        cl_init(&idle, o->url, o->idle + 1);
        hc_call(&idle, &idle.c[0], "POST", "/v1/channels",
                STR_LIT("{\"name\":\"bench-idle\",\"created_by\":\"bench\"}"), 10000);
        g_wait_path = "/v1/messages?channel=bench-idle&timeout=50";
        park_waiters(&idle, &ipk, 1, o->idle, 0, 50, o->batch > 0 ? o->batch : 256,
                     o->settle_ms > 0 ? o->settle_ms : 300);
    }
    int64_t start = now_ns();
    L.end_ns = start + (int64_t)(secs * 1e9);
    L.last_ns = start;
    for (int i = 0; i < o->conns; i++) load_issue(&cl, &cl.c[i]);
    int64_t hard_end = L.end_ns + 5 * (int64_t)1000000000;   /* drain */
    while ((L.inflight > 0 || L.retry > 0) && now_ns() < hard_end) {
        cl_poll(&cl, 100);
        for (int i = 0; i < o->conns; i++)
            if (cl.c[i].tag) {     /* after a failed connection */
                cl.c[i].tag = 0;
                L.retry--;
                if (!cl.c[i].pending) load_issue(&cl, &cl.c[i]);
            }
    }
    double elapsed = (double)(L.last_ns - start) / 1e9;
    Buf b = { 0 };
    buf_addf(&b, "{\"mode\":\"%s\",\"conns\":%d,\"close\":%s,\"requests\":%lld,"
             "\"ok\":%lld,\"errors\":%lld,\"unfinished\":%lld,\"elapsed_s\":%.3f,"
             "\"rps\":%.1f,\"connects\":%lld,",
             post ? "post" : "get", o->conns, o->close_it ? "true" : "false",
             (long long)L.issued, (long long)L.ok, (long long)(L.errors + L.inflight),
             (long long)L.inflight, elapsed,
             elapsed > 0 ? (double)L.ok / elapsed : 0, (long long)cl.connects);
    buf_addf(&b, "\"errors_by_class\":{\"conn\":%lld,\"4xx\":%lld,\"5xx\":%lld},",
             (long long)L.err_status[0], (long long)L.err_status[4],
             (long long)L.err_status[5]);
    if (o->idle > 0) {
        buf_addf(&b, "\"idle\":%d,\"idle_parked\":%lld,", o->idle, (long long)ipk.parked);
        cl_free(&idle);
    }
    samples_json(&b, &L.lat);
    emit(&b);
    free(L.lat.v);
    buf_free(&L.pbuf);
    cl_free(&cl);
    return 0;
}

/* ==== seq: a fixed sequence of requests, timed as a whole ================= */

typedef struct {
    char *method, *path, *body;   /* owned */
    Samples lat;
    int64_t errors;
    int status;                   /* the last answer's */
} SeqStep;

static int bench_seq(Opts *o) {
    need_url(o);
    if (!o->path) usage_die("seq needs --file");
    FILE *f = fopen(o->path, "r");
    if (!f) die("seq: cannot open %s: %s", o->path, strerror(errno));
    SeqStep *steps = NULL;
    int n = 0, cap = 0;
    char line[8192];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0] || line[0] == '#') continue;
        char *sp = strchr(line, ' ');
        if (!sp) usage_die("seq: bad line %s", line);
        *sp = 0;
        char *path = sp + 1, *body = strchr(path, ' ');
        if (body) *body++ = 0;
        if (n == cap) steps = vec_grow(steps, &cap, sizeof *steps);
        if (!body) body = sp;   /* an empty string */
        steps[n++] = (SeqStep){ .method = xstrndup(line, strlen(line)),
                                .path = xstrndup(path, strlen(path)),
                                .body = xstrndup(body, strlen(body)) };
    }
    fclose(f);
    if (!n) usage_die("seq: %s holds no requests", o->path);
    int runs = o->runs > 0 ? o->runs : 20;
    double secs = o->seconds > 0 ? o->seconds : 10;
    int timeout_ms = o->gap_ms > 0 ? (int)o->gap_ms : 120000;
    Cl cl;
    cl_init(&cl, o->url, 1);
    HC *c = &cl.c[0];
    Samples total = { 0 };
    Buf pb = { 0 };
    int64_t errors = 0;
    int timed_out = 0, done = 0;
    int64_t end = now_ns() + (int64_t)(secs * 1e9);
    while (done < runs && (done == 0 || now_ns() < end) && !timed_out) {
        int64_t t0 = now_ns();
        for (int i = 0; i < n; i++) {
            int64_t s0 = now_ns();
            int st = hc_call(&cl, c, steps[i].method, expand_rand(&pb, steps[i].path),
                             str_c(steps[i].body), timeout_ms);
            int64_t s1 = now_ns();
            steps[i].status = st;
            if (st == 0 && (s1 - s0) / 1000000 >= timeout_ms) {
                timed_out = 1;
                break;
            }
            if (st / 100 != 2) steps[i].errors++, errors++;
            samples_add(&steps[i].lat, (double)(s1 - s0) / 1e6);
        }
        if (timed_out) break;
        samples_add(&total, (double)(now_ns() - t0) / 1e6);
        done++;
    }
    Buf b = { 0 };
    buf_addf(&b, "{\"mode\":\"seq\",\"runs\":%d,\"errors\":%lld,\"timed_out\":%s,"
             "\"timeout_ms\":%d,", done, (long long)errors, timed_out ? "true" : "false",
             timeout_ms);
    samples_json(&b, &total);
    buf_adds(&b, ",\"steps\":[");
    for (int i = 0; i < n; i++) {
        Samples *s = &steps[i].lat;
        qsort(s->v, s->n, sizeof *s->v, dbl_cmp);
        if (i) buf_addc(&b, ',');
        buf_adds(&b, "{\"request\":");
        json_cstr(&b, steps[i].method);
        buf_adds(&b, ",\"path\":");
        json_cstr(&b, steps[i].path);
        buf_addf(&b, ",\"status\":%d,\"errors\":%lld,\"p50_ms\":%.4f,\"max_ms\":%.4f}",
                 steps[i].status, (long long)steps[i].errors, pct(s, 50),
                 s->n ? s->v[s->n - 1] : 0);
        free(steps[i].method), free(steps[i].path), free(steps[i].body), free(s->v);
    }
    buf_addc(&b, ']');
    emit(&b);
    free(steps);
    free(total.v);
    buf_free(&pb);
    cl_free(&cl);
    return 0;
}

/* ==== wake: post -> long-poll answer, or post -> SSE event ================ */

typedef struct {
    int64_t want_id;      /* the id just posted (0: not known yet) */
    int64_t max_seen;     /* highest event id seen on the stream */
    int64_t seen_at;      /* ns: when the event with want_id... */
    int64_t n_events;
    struct { int64_t id, t; } ev[64];   /* recent events: id and arrival */
    int nev;
} Sse;

static void sse_event(Cl *cl, HC *c, Str data, int64_t t) {
    Sse *s = cl->ctx;
    (void)c;
    Json j = { 0 };
    int64_t id = -1;
    if (json_parse(&j, data.p, data.n) == 0) {
        uint32_t v = json_get(&j, 0, "id");
        if (v) json_to_i64(&j, v, &id);
    }
    json_free(&j);
    if (id < 0) return;
    s->n_events++;
    if (id > s->max_seen) s->max_seen = id;
    s->ev[s->nev % 64].id = id;
    s->ev[s->nev % 64].t = t;
    s->nev++;
}

/* When did the event with this id arrive? 0 if not (yet). */
static int64_t sse_seen(const Sse *s, int64_t id) {
    int k = s->nev < 64 ? s->nev : 64;
    for (int i = 0; i < k; i++)
        if (s->ev[i].id == id) return s->ev[i].t;
    return 0;
}

static int bench_wake(Opts *o) {
    need_url(o);
    int count = o->count > 0 ? o->count : 200;
    Cl cl;
    cl_init(&cl, o->url, 2);
    HC *P = &cl.c[0], *W = &cl.c[1];
    Sse sse = { 0 };
    cl.ctx = &sse;
    cl.on_event = sse_event;
    int64_t errors = 0, early = 0;
    Samples lat = { 0 };
    const char *post_body = "{\"from_agent\":\"bench-poster\",\"channel\":\"general\","
                            "\"body\":\"wake\"}";
    Str pb = str_c(post_body);
    /* A first message gives the cursor to wait after. */
    if (hc_call(&cl, P, "POST", "/v1/messages", pb, 10000) / 100 != 2)
        die("wake: the first POST failed (status %d)", P->last_status);
    int64_t since = result_id(buf_str(&P->body));
    char path[256];
    if (o->sse) {
        snprintf(path, sizeof path,
                 "/v1/stream?agent_id=bench-waiter&since_id=%lld", (long long)since);
        hc_send(&cl, W, "GET", path, (Str){ "", 0 }, 0);
        /* The stream is open once its head has arrived. */
        int64_t dl = now_ns() + 10 * (int64_t)1000000000;
        while (!(W->head_len && W->stream) && now_ns() < dl) cl_poll(&cl, 50);
        if (!W->stream) die("wake: GET /v1/stream did not start a stream");
    }
    int64_t deadline_all = now_ns() + 300 * (int64_t)1000000000;
    for (int i = 0; i < count && now_ns() < deadline_all; i++) {
        int64_t w_want = W->n_done + 1;
        if (!o->sse) {
            snprintf(path, sizeof path,
                     "/v1/events?agent_id=bench-waiter&since_id=%lld&timeout=30",
                     (long long)since);
            hc_send(&cl, W, "GET", path, (Str){ "", 0 }, 0);
        }
        /* A round trip on the other connection: a single-threaded hub has
         * now read (and parked) the waiter's request. */
        if (hc_call(&cl, P, "GET", "/v1/hub-info", (Str){ "", 0 }, 10000) != 200) {
            errors++;
            continue;
        }
        /* A random pause (drains anything that arrives meanwhile). */
        int64_t until = now_ns() + (int64_t)(rnd01() * o->gap_ms * 1e6);
        while (now_ns() < until) {
            int64_t left = (until - now_ns()) / 1000000;
            cl_poll(&cl, left > 0 ? (int)left : 0);
            if (left <= 0) break;
        }
        if (!o->sse && W->n_done >= w_want) {   /* answered before the post */
            early++;
            errors++;
            if (W->last_status == 200) {
                int64_t m = result_max_id(buf_str(&W->body));
                if (m > since) since = m;
            }
            continue;
        }
        int64_t p_want = P->n_done + 1;
        int64_t t0 = now_ns();
        hc_send(&cl, P, "POST", "/v1/messages", pb, 0);
        int64_t dl = t0 + 35 * (int64_t)1000000000;
        int64_t id = 0, t1 = 0;
        while (now_ns() < dl) {
            if (!id && P->n_done >= p_want) {
                if (P->last_status / 100 != 2) break;
                id = result_id(buf_str(&P->body));
            }
            if (o->sse) {
                if (id > 0 && (t1 = sse_seen(&sse, id))) break;
                if (W->fd < 0) break;   /* the stream ended */
            } else if (W->n_done >= w_want) {
                t1 = W->t_done;
                if (id) break;
            }
            cl_poll(&cl, 100);
        }
        if (!id || !t1) {
            errors++;
            if (o->sse && W->fd < 0) die("wake: the stream closed");
            continue;
        }
        if (!o->sse) {
            int64_t m = W->last_status == 200 ? result_max_id(buf_str(&W->body)) : -1;
            if (m < id) {   /* answered, but not with our message */
                errors++;
                if (m > since) since = m;
                continue;
            }
        }
        since = id;
        samples_add(&lat, (double)(t1 - t0) / 1e6);
    }
    Buf b = { 0 };
    buf_addf(&b, "{\"mode\":\"wake\",\"via\":\"%s\",\"gap_ms\":%.1f,\"errors\":%lld,"
             "\"early\":%lld,",
             o->sse ? "sse" : "long-poll", o->gap_ms, (long long)errors,
             (long long)early);
    samples_json(&b, &lat);
    emit(&b);
    free(lat.v);
    cl_free(&cl);
    return 0;
}

/* ==== parking many connections (fanout, park) ============================= */

/* Connections that completed the handshake but that the hub has not yet
 * accept()ed: the accept queue of its listening socket on `port` (Linux
 * reports it as rx_queue in /proc/net/tcp). -1 if unknown. */
static long listen_queue(int port) {
    static const char *files[] = { "/proc/net/tcp", "/proc/net/tcp6" };
    for (int f = 0; f < 2; f++) {
        FILE *fp = fopen(files[f], "r");
        if (!fp) continue;
        char line[512];
        long q = -1;
        while (fgets(line, sizeof line, fp)) {
            char local[128];
            unsigned st;
            unsigned long txq, rxq;
            if (sscanf(line, " %*d: %127s %*s %x %lx:%lx", local, &st, &txq, &rxq) != 4)
                continue;
            const char *colon = strrchr(local, ':');
            if (st == 0x0A && colon && strtol(colon + 1, NULL, 16) == port) {
                q = (long)rxq;
                break;
            }
        }
        fclose(fp);
        if (q >= 0) return q;
    }
    return -1;
}

/* Open waiters from..to on cl (connection 0 is the control connection) and
 * send each a long-poll, `batch` connections at a time: a batch is sent
 * only once the previous one is connected, written and accept()ed by the
 * hub (its accept queue is empty again), so a hub with a short listen
 * backlog (the reference's is 5) drops no handshakes. Then make sure the
 * hub has read the requests: a round trip on the control connection and a
 * settle period in which early answers (a 503 past the hub's connection
 * limit, or anything else) are collected. */
static void park_waiters(Cl *cl, Park *pk, int from, int to, int64_t since,
                         int timeout_s, int batch, double settle_ms) {
    char path[200];
    int port = ntohs(cl->sa.sin_port);
    int64_t dl = now_ns() + 120 * (int64_t)1000000000;
    for (int next = from; next <= to && now_ns() < dl;) {
        int first = next;
        for (; next <= to && next - first < batch; next++) {
            HC *c = &cl->c[next];
            snprintf(path, sizeof path,
                     "/v1/events?agent_id=bench-w%d&since_id=%lld&timeout=%d", next,
                     (long long)since, timeout_s);
            hc_send(cl, c, "GET", g_wait_path ? g_wait_path : path, (Str){ "", 0 }, 0);
        }
        for (;;) {
            int busy = 0;
            for (int i = first; i < next && !busy; i++)
                if (cl->c[i].state == HC_CONNECTING ||
                    (cl->c[i].fd >= 0 && cl->c[i].out.len))
                    busy = 1;
            if (!busy && listen_queue(port) <= 0) break;
            if (now_ns() > dl) break;
            cl_poll(cl, busy ? 20 : 1);
        }
    }
    HC *ctl = &cl->c[0];
    hc_call(cl, ctl, "GET", "/v1/hub-info", (Str){ "", 0 }, 30000);
    int64_t until = now_ns() + (int64_t)(settle_ms * 1e6);
    while (now_ns() < until) cl_poll(cl, 20);
    for (int i = from; i <= to; i++) {
        HC *c = &cl->c[i];
        if (c->n_done) {
            if (c->last_status == 503) pk->refused++;
            else if (c->last_status == 0) pk->failed++;
            else pk->early++;
        } else if (c->pending && c->fd >= 0) {
            pk->parked++;
        } else {
            pk->failed++;
        }
    }
}

static int bench_fanout(Opts *o) {
    need_url(o);
    raise_nofile();
    int n = o->waiters > 0 ? o->waiters : 100;
    Cl cl;
    cl_init(&cl, o->url, n + 1);
    HC *P = &cl.c[0];
    Str pb = STR_LIT("{\"from_agent\":\"bench-poster\",\"channel\":\"general\","
                     "\"body\":\"fan-out\"}");
    if (hc_call(&cl, P, "POST", "/v1/messages", pb, 10000) / 100 != 2)
        die("fanout: the first POST failed (status %d)", P->last_status);
    int64_t since = result_id(buf_str(&P->body));
    Park pk = { .n = n };
    int64_t t_park = now_ns();
    park_waiters(&cl, &pk, 1, n, since, 30, o->batch > 0 ? o->batch : 256,
                 o->settle_ms > 0 ? o->settle_ms : 300);
    double park_ms = (double)(now_ns() - t_park) / 1e6;
    /* Everyone still waiting gets its answer from this one post. */
    int64_t base = 0;
    for (int i = 1; i <= n; i++) base += cl.c[i].n_done;
    int64_t t0 = now_ns();
    hc_send(&cl, P, "POST", "/v1/messages", pb, 0);
    int64_t p_want = P->n_done + 1, dl = t0 + 35 * (int64_t)1000000000;
    int64_t answered = 0, got = 0, post_t = 0;
    for (;;) {
        answered = 0;
        for (int i = 1; i <= n; i++) answered += cl.c[i].n_done;
        answered -= base;
        if (!post_t && P->n_done >= p_want) post_t = P->t_done;
        if ((answered >= pk.parked && post_t) || now_ns() > dl) break;
        cl_poll(&cl, 100);
    }
    int64_t post_id = result_id(buf_str(&P->body));
    Samples lat = { 0 };
    int64_t t_last = t0;
    for (int i = 1; i <= n; i++) {
        HC *c = &cl.c[i];
        if (!c->n_done || c->t_done < t0) continue;
        samples_add(&lat, (double)(c->t_done - t0) / 1e6);
        if (c->t_done > t_last) t_last = c->t_done;
        if (c->last_status == 200 && result_max_id(buf_str(&c->body)) >= post_id &&
            post_id > 0)
            got++;
    }
    Buf b = { 0 };
    buf_addf(&b, "{\"mode\":\"fanout\",\"waiters\":%d,\"parked\":%lld,\"refused\":%lld,"
             "\"early\":%lld,\"failed\":%lld,\"answered\":%lld,\"delivered\":%lld,"
             "\"errors\":%lld,\"park_ms\":%.1f,\"post_ms\":%.3f,\"all_ms\":%.3f,",
             n, (long long)pk.parked, (long long)pk.refused, (long long)pk.early,
             (long long)pk.failed, (long long)answered, (long long)got,
             (long long)(pk.parked - got + pk.failed), park_ms,
             post_t ? (double)(post_t - t0) / 1e6 : -1,
             (double)(t_last - t0) / 1e6);
    samples_json(&b, &lat);
    emit(&b);
    free(lat.v);
    cl_free(&cl);
    return 0;
}

static int bench_park(Opts *o) {
    need_url(o);
    if (!o->pid) usage_die("park needs --pid");
    raise_nofile();
    const char *steps = o->steps ? o->steps : "1000";
    int st[16], ns = 0, max = 0;
    for (const char *p = steps; *p && ns < 16;) {
        st[ns] = atoi(p);
        if (st[ns] > max) max = st[ns];
        ns++;
        p += strcspn(p, ",");
        if (*p == ',') p++;
    }
    double secs = o->seconds > 0 ? o->seconds : 5;
    g_wait_path = o->path;
    Cl cl;
    cl_init(&cl, o->url, max + 1);
    HC *P = &cl.c[0];
    if (hc_call(&cl, P, "GET", "/v1/hub-info", (Str){ "", 0 }, 10000) != 200)
        die("park: GET /v1/hub-info failed");
    /* since_id far ahead: nothing ever matches, everyone waits. */
    int64_t since = 1000000000;
    sleep_ms(500);
    long rss_idle = proc_rss_kb(o->pid);
    Buf b = { 0 };
    buf_addf(&b, "{\"mode\":\"park\",\"pid\":%d,\"rss_idle_kb\":%ld,\"steps\":[",
             o->pid, rss_idle);
    Park pk = { 0 };
    int have = 0;
    for (int s = 0; s < ns; s++) {
        int64_t t_park = now_ns();
        park_waiters(&cl, &pk, have + 1, st[s], since, 50, o->batch > 0 ? o->batch : 256,
                     o->settle_ms > 0 ? o->settle_ms : 300);
        have = st[s];
        double park_ms = (double)(now_ns() - t_park) / 1e6;
        long rss0 = proc_rss_kb(o->pid);
        double cpu0 = proc_cpu_ms(o->pid);
        int64_t w0 = now_ns();
        int64_t until = w0 + (int64_t)(secs * 1e9);
        int64_t answered0 = 0, answered1 = 0;
        for (int i = 1; i <= have; i++) answered0 += cl.c[i].n_done;
        while (now_ns() < until) cl_poll(&cl, 200);
        for (int i = 1; i <= have; i++) answered1 += cl.c[i].n_done;
        double cpu1 = proc_cpu_ms(o->pid);
        double wall = (double)(now_ns() - w0) / 1e6;
        long rss1 = proc_rss_kb(o->pid);
        buf_addf(&b, "%s{\"conns\":%d,\"parked\":%lld,\"refused\":%lld,\"early\":%lld,"
                 "\"failed\":%lld,\"park_ms\":%.1f,\"rss_kb\":%ld,\"cpu_ms\":%.1f,"
                 "\"window_ms\":%.1f,\"answered_in_window\":%lld}",
                 s ? "," : "", st[s], (long long)pk.parked, (long long)pk.refused,
                 (long long)pk.early, (long long)pk.failed, park_ms,
                 rss1 > rss0 ? rss1 : rss0, cpu1 - cpu0, wall,
                 (long long)(answered1 - answered0));
    }
    buf_addc(&b, ']');
    emit(&b);
    cl_free(&cl);
    return 0;
}

/* ==== relay: the file spool ============================================== */

typedef struct {
    char agent[64];
    char req_dir[PATH_MAX], resp_dir[PATH_MAX];
    int wd;
} RelayAgent;

static void mkdir_p(const char *path) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        mkdir(tmp, 0700);
        *p = '/';
    }
    mkdir(tmp, 0700);
}

static void relay_agent(int ino, const char *spool, const char *agent, RelayAgent *a) {
    snprintf(a->agent, sizeof a->agent, "%s", agent);
    snprintf(a->req_dir, sizeof a->req_dir, "%s/requests/%s", spool, agent);
    snprintf(a->resp_dir, sizeof a->resp_dir, "%s/responses/%s", spool, agent);
    mkdir_p(a->req_dir);
    mkdir_p(a->resp_dir);
    a->wd = inotify_add_watch(ino, a->resp_dir, IN_MOVED_TO | IN_CLOSE_WRITE);
    if (a->wd < 0) die("inotify_add_watch %s: %s", a->resp_dir, strerror(errno));
}

/* Write the request file atomically: a hidden temporary, then rename. */
static void relay_write(const RelayAgent *a, const char *id, const char *method,
                        const char *path) {
    char tmp[PATH_MAX + 64], dst[PATH_MAX + 64], stamp[ISO_LEN];
    iso_format(clock_wall_us(), stamp);
    Buf b = { 0 };
    buf_adds(&b, "{\"request_id\":");
    json_cstr(&b, id);
    buf_adds(&b, ",\"agent_id\":");
    json_cstr(&b, a->agent);
    buf_addf(&b, ",\"method\":\"%s\",\"path\":", method);
    json_cstr(&b, path);
    buf_addf(&b, ",\"body\":null,\"created_at\":\"%s\"}", stamp);
    snprintf(tmp, sizeof tmp, "%s/.%s.json.tmp", a->req_dir, id);
    snprintf(dst, sizeof dst, "%s/%s.json", a->req_dir, id);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, b.p, b.len) != (ssize_t)b.len || close(fd))
        die("relay: cannot write %s: %s", tmp, strerror(errno));
    if (rename(tmp, dst)) die("relay: rename %s: %s", dst, strerror(errno));
    buf_free(&b);
}

/* Wait for inotify events; note every response file that appeared. */
typedef struct {
    int wd;
    char name[128];
    int64_t t;
} Arrival;

typedef struct {
    int ino;
    Arrival a[256];
    int n;
} Arrivals;

static void arrivals_poll(Arrivals *ar, int timeout_ms) {
    struct pollfd p = { .fd = ar->ino, .events = POLLIN };
    if (poll(&p, 1, timeout_ms) <= 0) return;
    int64_t t = now_ns();
    union {
        struct inotify_event ev;
        char b[8192];
    } u;
    char *buf = u.b;
    for (;;) {
        ssize_t r = read(ar->ino, buf, sizeof u);
        if (r <= 0) break;
        for (char *q = buf; q < buf + r;) {
            struct inotify_event *ev = (struct inotify_event *)(void *)q;
            /* The hub's hidden temporaries (closed, then renamed) are not
             * answers; kept, they filled the table after ~256 round trips
             * and every later answer went unseen. When full, the oldest
             * arrival (an answer nobody waits for any more) makes room. */
            if (ev->len && ev->name[0] != '.') {
                if (ar->n == 256) memmove(ar->a, ar->a + 1, (size_t)--ar->n * sizeof *ar->a);
                ar->a[ar->n].wd = ev->wd;
                snprintf(ar->a[ar->n].name, sizeof ar->a[ar->n].name, "%s", ev->name);
                ar->a[ar->n].t = t;
                ar->n++;
            }
            q += sizeof *ev + ev->len;
        }
    }
}

/* Take the arrival of `name` under watch wd, if any: its time, else 0. */
static int64_t arrivals_take(Arrivals *ar, int wd, const char *name) {
    for (int i = 0; i < ar->n; i++) {
        if (ar->a[i].wd != wd || strcmp(ar->a[i].name, name)) continue;
        int64_t t = ar->a[i].t;
        ar->a[i] = ar->a[--ar->n];
        return t;
    }
    return 0;
}

/* Was the answer file an ok envelope? */
static int relay_answer_ok(const RelayAgent *a, const char *name) {
    char path[PATH_MAX + 160];
    snprintf(path, sizeof path, "%s/%s", a->resp_dir, name);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    Buf b = { 0 };
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) buf_add(&b, tmp, n);
    fclose(f);
    Json j = { 0 };
    int ok = 0;
    if (json_parse(&j, buf_cstr(&b), b.len) == 0) {
        uint32_t v = json_get(&j, 0, "ok");
        ok = v && j.t[v].type == JSON_TRUE;
    }
    json_free(&j);
    buf_free(&b);
    return ok;
}

static int bench_relay(Opts *o, int with_poller) {
    if (!o->spool) usage_die("relay needs --spool");
    int count = o->count > 0 ? o->count : 200;
    double poll_to = o->poll_timeout > 0 ? o->poll_timeout : 30;
    Arrivals ar = { .ino = inotify_init() };
    if (ar.ino < 0) die("inotify_init: %s", strerror(errno));
    fd_nonblock(ar.ino);
    RelayAgent A, B;
    relay_agent(ar.ino, o->spool, "bench-relay-b", &B);
    if (with_poller) relay_agent(ar.ino, o->spool, "bench-relay-a", &A);
    sleep_ms(200);   /* let the hub notice (and watch) the new directories */
    char id[96], name[128], poll_id[96], poll_name[128];
    int64_t errors = 0, polls_answered = 0, poll_t0 = 0;
    Samples lat = { 0 };
    int seq = 0;
    char poll_path[200];
    snprintf(poll_path, sizeof poll_path,
             "/v1/events?agent_id=bench-relay-a&since_id=1000000000&timeout=%g", poll_to);
    if (with_poller) {
        snprintf(poll_id, sizeof poll_id, "p%d-%d", (int)getpid(), seq++);
        snprintf(poll_name, sizeof poll_name, "%s.json", poll_id);
        relay_write(&A, poll_id, "GET", poll_path);
        poll_t0 = now_ns();
        sleep_ms(400);   /* claimed (and parked) before the first timed request */
    }
    /* One untimed warm-up round trip, then `count` timed ones. */
    for (int i = -1; i < count; i++) {
        if (i >= 0) sleep_ms(rnd01() * o->gap_ms);
        snprintf(id, sizeof id, "b%d-%d", (int)getpid(), seq++);
        snprintf(name, sizeof name, "%s.json", id);
        int64_t t0 = now_ns(), t1 = 0;
        relay_write(&B, id, "GET", "/v1/hub-info");
        int64_t dl = t0 + (int64_t)((poll_to + 35) * 1e9);
        while (now_ns() < dl) {
            if ((t1 = arrivals_take(&ar, B.wd, name))) break;
            if (with_poller && arrivals_take(&ar, A.wd, poll_name)) {
                /* The poller got its (timeout) answer: it polls again. */
                polls_answered++;
                snprintf(poll_id, sizeof poll_id, "p%d-%d", (int)getpid(), seq++);
                snprintf(poll_name, sizeof poll_name, "%s.json", poll_id);
                relay_write(&A, poll_id, "GET", poll_path);
                poll_t0 = now_ns();
            }
            arrivals_poll(&ar, 100);
        }
        if (i < 0) continue;
        if (!t1 || !relay_answer_ok(&B, name)) {
            errors++;
            continue;
        }
        samples_add(&lat, (double)(t1 - t0) / 1e6);
    }
    (void)poll_t0;
    Buf b = { 0 };
    buf_addf(&b, "{\"mode\":\"%s\",\"gap_ms\":%.1f,\"errors\":%lld,",
             with_poller ? "relay2" : "relay", o->gap_ms, (long long)errors);
    if (with_poller)
        buf_addf(&b, "\"poll_timeout_s\":%g,\"poller_answers\":%lld,", poll_to,
                 (long long)polls_answered);
    samples_json(&b, &lat);
    emit(&b);
    free(lat.v);
    close(ar.ino);
    return 0;
}

/* ==== coldstart and exec: processes ======================================= */

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) ||
        getsockname(fd, (struct sockaddr *)&sa, &sl))
        die("free port: %s", strerror(errno));
    close(fd);
    return ntohs(sa.sin_port);
}

/* Replace every {port} and {dir} in s. */
static char *expand(const char *s, int port, const char *dir) {
    Buf b = { 0 };
    while (*s) {
        if (!strncmp(s, "{port}", 6)) buf_addf(&b, "%d", port), s += 6;
        else if (!strncmp(s, "{dir}", 5)) buf_adds(&b, dir), s += 5;
        else buf_addc(&b, *s++);
    }
    buf_addc(&b, 0);
    return b.p;
}

static pid_t spawn(char **argv, const char *cwd) {
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid) return pid;
    int nul = open("/dev/null", O_RDWR);
    if (nul >= 0) dup2(nul, 0), dup2(nul, 1), dup2(nul, 2);
    if (cwd && chdir(cwd)) _exit(126);
    execvp(argv[0], argv);
    _exit(127);
}

static int wait_exit(pid_t pid, int timeout_ms) {
    int64_t dl = clock_ms() + timeout_ms;
    int st;
    while (clock_ms() < dl) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        sleep_ms(2);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

/* Try one GET /v1/hub-info on a fresh blocking socket; 1 if answered 200. */
static int probe_once(const struct sockaddr_in *sa) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    int ok = 0, one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) == 0) {
        static const char req[] = "GET /v1/hub-info HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  "Connection: close\r\n\r\n";
        if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) == (ssize_t)sizeof req - 1) {
            char buf[4096];
            size_t got = 0;
            struct pollfd p = { .fd = fd, .events = POLLIN };
            while (got < 12 && poll(&p, 1, 5000) > 0) {
                ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
                if (r <= 0) break;
                got += (size_t)r;
            }
            ok = got >= 12 && !memcmp(buf + 9, "200", 3);
        }
    }
    close(fd);
    return ok;
}

static int bench_coldstart(Opts *o) {
    if (!o->ncmd || !o->dir) usage_die("coldstart needs --dir and -- CMD");
    int runs = o->runs > 0 ? o->runs : 5;
    Samples s = { 0 };
    int64_t errors = 0;
    for (int r = 0; r < runs; r++) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s/cold%d", o->dir, r);
        mkdir_p(dir);
        int port = free_port();
        char **argv = xrealloc(NULL, (size_t)(o->ncmd + 1) * sizeof *argv);
        for (int i = 0; i < o->ncmd; i++) argv[i] = expand(o->cmd[i], port, dir);
        argv[o->ncmd] = NULL;
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        int64_t t0 = now_ns(), t1 = 0;
        pid_t pid = spawn(argv, dir);
        int64_t dl = t0 + 30 * (int64_t)1000000000;
        while (now_ns() < dl) {
            if (probe_once(&sa)) {
                t1 = now_ns();
                break;
            }
            if (waitpid(pid, NULL, WNOHANG) == pid) {
                pid = 0;
                break;
            }
            sleep_ms(0.1);
        }
        if (t1) samples_add(&s, (double)(t1 - t0) / 1e6);
        else errors++;
        if (pid) {
            kill(pid, SIGTERM);
            if (wait_exit(pid, 5000) < 0) errors++;
        }
        for (int i = 0; i < o->ncmd; i++) free(argv[i]);
        free(argv);
    }
    Buf b = { 0 };
    buf_addf(&b, "{\"mode\":\"coldstart\",\"runs\":%d,\"errors\":%lld,", runs,
             (long long)errors);
    samples_json(&b, &s);
    emit(&b);
    free(s.v);
    return 0;
}

static int bench_exec(Opts *o) {
    if (!o->ncmd) usage_die("exec needs -- CMD");
    int runs = o->runs > 0 ? o->runs : 20;
    Samples s = { 0 };
    int64_t errors = 0;
    char **argv = xrealloc(NULL, (size_t)(o->ncmd + 1) * sizeof *argv);
    for (int i = 0; i < o->ncmd; i++) argv[i] = o->cmd[i];
    argv[o->ncmd] = NULL;
    for (int r = 0; r < runs; r++) {
        int64_t t0 = now_ns();
        pid_t pid = spawn(argv, o->cwd);
        int rc = wait_exit(pid, 60000);
        int64_t t1 = now_ns();
        if (rc) errors++;
        else samples_add(&s, (double)(t1 - t0) / 1e6);
    }
    free(argv);
    Buf b = { 0 };
    buf_addf(&b, "{\"mode\":\"exec\",\"runs\":%d,\"errors\":%lld,", runs,
             (long long)errors);
    samples_json(&b, &s);
    emit(&b);
    free(s.v);
    return 0;
}

/* ==== main ================================================================ */

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) usage_die("usage: bench MODE [options]");
    Opts o = { 0 };
    opts_parse(argc - 2, argv + 2, &o);
    const char *m = argv[1];
    if (!strcmp(m, "post")) return bench_load(&o, 1);
    if (!strcmp(m, "get")) return bench_load(&o, 0);
    if (!strcmp(m, "seq")) return bench_seq(&o);
    if (!strcmp(m, "wake")) return bench_wake(&o);
    if (!strcmp(m, "fanout")) return bench_fanout(&o);
    if (!strcmp(m, "park")) return bench_park(&o);
    if (!strcmp(m, "relay")) return bench_relay(&o, 0);
    if (!strcmp(m, "relay2")) return bench_relay(&o, 1);
    if (!strcmp(m, "coldstart")) return bench_coldstart(&o);
    if (!strcmp(m, "exec")) return bench_exec(&o);
    usage_die("unknown mode %s", m);
}
