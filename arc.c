/* arc -- local-first coordination hub for AI coding agents.
 *
 * One file, one binary: an HTTP/1.1 + SSE hub on a single event loop over
 * SQLite, plus the client commands that talk to it. The wire contract is Arc
 * Protocol v1 as described in docs/PROTOCOL.md; code cites its sections as
 * "PROTOCOL §N".
 *
 * Sections, in order (grep -n '^/\* ==== ' arc.c):
 *   base   limits, core types, die/log, Str, Buf, clock, sha256, options
 *   json   strict RFC 8259 token reader, writer into Buf, coercions
 *   http   incremental request parser, query/path decoding, responses,
 *          the client's response parser
 *   store  schema, prepared statements, group-commit transactions, rows,
 *          the rendered-message cache
 *   hub    sessions, channels, messages, claims, locks, tasks, threads,
 *          shared memory (kv); access checks (Host, Origin, token),
 *          routing, JSON envelopes
 *   relay  the file-spool thread: inotify, claim, hand to the loop, answer
 *   loop   the Loop: event loop (epoll or poll()), Conn lifecycle and
 *          output sinks (socket or relay answer), timer heap, parking in
 *          wait buckets, fan-out
 *   serve  start / run / stop of a hub: options, listening socket, pidfile
 *   client blocking HTTP/relay client (every command's), response limits,
 *          finding a running hub (pidfile, probe)
 *   setup  `arc setup HARNESS` and `arc doctor`: arc's entries merged into
 *          each harness's config files (JSON spliced as text, one TOML
 *          table), backups, exact undo
 *   cli    ensure/stop/reset/status, post/poll/whoami, the standalone
 *          relay and relay-gc
 *   smoke  the reference's three smoke roles and `arc smoke`
 *   mcp    the MCP tools and dispatcher, served by the hub at /mcp (sessions,
 *          parked calls); `arc mcp`, the stdio bridge to it, heartbeat
 *   dash   the embedded dashboard page, generated from dash/dash.html
 *   main   command table, arc_main(), main()
 *
 * tests/check_map.py (run by make test) checks that this list names every
 * section banner, in order.
 */

/* ==== base: limits, types, log, Str, Buf, clock, sha256, options ========= */

/* C11 plus POSIX.1-2008 with the XSI bits (realpath). Everything else we use
 * is plain POSIX; nothing here needs _GNU_SOURCE. */
#define _XOPEN_SOURCE 700

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/inotify.h>
#endif
/* The loop waits with epoll on Linux, with poll() elsewhere or when built
 * with -DARC_POLL (which keeps that path testable here: make test-poll). */
#if defined(__linux__) && !defined(ARC_POLL)
#define ARC_EPOLL 1
#include <sys/epoll.h>
#endif

#include "sqlite3.h"

#define ARC_VERSION "0.1.0"

/* Every limit is a macro so a test build can shrink it (-DARC_MAX_HEAD=512)
 * and reach the overflow paths with small inputs. PROTOCOL §4 names them. */
#ifndef ARC_MAX_URL
#define ARC_MAX_URL 8192          /* request line bytes; beyond: 414 */
#endif
#ifndef ARC_MAX_HEAD
#define ARC_MAX_HEAD 16384        /* request line + headers; beyond: 431 */
#endif
#ifndef ARC_MAX_HEADERS
#define ARC_MAX_HEADERS 100       /* header lines; beyond: 431 */
#endif
#ifndef ARC_JSON_DEPTH
#define ARC_JSON_DEPTH 128        /* nesting of arrays/objects; beyond: 400 */
#endif
/* The connection limits below are defaults: `arc serve` can change each
 * (--max-conns, --idle-timeout-ms, --head-timeout-ms, --body-timeout-ms). */
#ifndef ARC_MAX_CONNS
#define ARC_MAX_CONNS 16384       /* open client sockets; beyond: 503 */
#endif
#ifndef ARC_IDLE_MS
#define ARC_IDLE_MS 60000         /* keep-alive idle, or a stalled writer */
#endif
#ifndef ARC_HEAD_MS
#define ARC_HEAD_MS 10000         /* a head, from its first byte: else 408 */
#endif
#ifndef ARC_BODY_MS
#define ARC_BODY_MS 30000         /* a body, from the end of its head: 408 */
#endif
#ifndef ARC_MAX_OUT
#define ARC_MAX_OUT (4u << 20)    /* unsent bytes per conn before we drop it */
#endif
#ifndef ARC_CLIENT_MAX_BODY
#define ARC_CLIENT_MAX_BODY (256u << 20) /* a response body the client reads */
#endif
#ifndef ARC_BUF_MIN
#define ARC_BUF_MIN 256           /* first allocation of a Buf */
#endif
#ifndef ARC_HEARTBEAT_MS
#define ARC_HEARTBEAT_MS 15000    /* SSE comment line while a stream idles */
#endif
#ifndef ARC_DATA_VERSION_MS
#define ARC_DATA_VERSION_MS 100   /* foreign-commit check while anyone waits */
#endif
#ifndef ARC_WAL_SETTLE_MS
#define ARC_WAL_SETTLE_MS 2       /* re-check interval after a -wal write */
#endif
#ifndef ARC_GATHER_PASSES
#define ARC_GATHER_PASSES 8       /* more reads before a turn's commit */
#endif
#ifndef ARC_WAL_WATCH_MS
#define ARC_WAL_WATCH_MS 1000     /* how long to re-check after a -wal write */
#endif
#ifndef ARC_MAX_TOKEN
#define ARC_MAX_TOKEN 256         /* bearer token characters (PROTOCOL §2.4) */
#endif
#ifndef ARC_MAX_ALLOWED_HOSTS
#define ARC_MAX_ALLOWED_HOSTS 16  /* --allowed-host names (PROTOCOL §2.2) */
#endif
#ifndef ARC_BUSY_MS
#define ARC_BUSY_MS 5000          /* a write waits this long for the lock */
#endif
#ifndef ARC_BUSY_TURN_MS
#define ARC_BUSY_TURN_MS 10       /* the loop blocks on locks per turn */
#endif
#define ARC_BUSY_RETRY_MS 10      /* a write blocked by a lock: next try */
#ifndef ARC_MSG_CACHE_BYTES
#define ARC_MSG_CACHE_BYTES (16u << 20) /* rendered-message cache, in all */
#endif
#define ARC_MSG_CACHE_SLOTS 16384 /* ... direct-mapped by message id */
#define ARC_MSG_CACHE_ENTRY 16384 /* ... larger messages are not cached */
#ifndef ARC_MAX_STORED_DEPTH
/* Nesting of a stored JSON value (metadata, an attachment list): an answer
 * wraps it in at most 5 more levels (envelope, result, thread, list,
 * message), and arc's own clients parse answers with ARC_JSON_DEPTH. */
#define ARC_MAX_STORED_DEPTH (ARC_JSON_DEPTH / 2)   /* 64 */
#endif
_Static_assert(ARC_MAX_STORED_DEPTH + 5 <= ARC_JSON_DEPTH,
               "stored values must fit in an answer arc can parse");
#ifndef ARC_MAX_PAGE_BYTES
/* A page of messages stops before the row that would take it past this
 * (the first row always goes in); PROTOCOL §4.3. */
#define ARC_MAX_PAGE_BYTES (1u << 20)
#endif
#ifndef ARC_MAX_KV_KEY
#define ARC_MAX_KV_KEY 256        /* a shared-memory key, UTF-8 bytes (§13.1) */
#endif
#ifndef ARC_MAX_BLOCKERS
#define ARC_MAX_BLOCKERS 64       /* metadata.blocked_by ids per task */
#endif
#ifndef ARC_MAX_TASK_DEPTH
#define ARC_MAX_TASK_DEPTH 256    /* ancestors a rollup or cycle check walks */
#endif
#ifndef ARC_MAX_DEP_SCAN
#define ARC_MAX_DEP_SCAN 4096     /* open tasks one cycle check may visit */
#endif
#define ARC_MAX_LIMIT 500         /* PROTOCOL §3: limit clamp */
/* Full-text search (PROTOCOL §15): results per request, the snippet's
 * length in tokens (FTS5 allows 1..64), the longest query, and how many
 * messages one catch-up step indexes: one search, or one loop turn while
 * a backlog is left, holds the loop that long (5,000 messages of 8-24
 * words took ~50-90 ms here; tests/bench_search.py). */
#define ARC_SEARCH_LIMIT 20       /* default `limit` */
#define ARC_SEARCH_MAX_LIMIT 100  /* `limit` clamp */
#define ARC_SEARCH_SNIPPET_TOKENS 16
#define ARC_SEARCH_MAX_QUERY 1024 /* bytes of `q` */
/* Messages indexed per step of a backlog: one step holds the loop (and
 * its turn's commit) for ~10-20 ms here; 5,000 held it 50-90 ms. */
#ifndef ARC_SEARCH_CHUNK
#define ARC_SEARCH_CHUNK 1000
#endif
/* The most matches one search ranks: the newest this many of the words,
 * before filters (PROTOCOL §15.1, "the window"). BM25 scores each, so
 * this, not the store's size, bounds a search's time on the loop. */
#ifndef ARC_SEARCH_MAX_CANDIDATES
#define ARC_SEARCH_MAX_CANDIDATES 2000
#endif
#define ARC_MAX_WAIT_S 60         /* PROTOCOL §3: long-poll timeout clamp */
#define ARC_MAX_TTL_S 315360000   /* ten years: keeps expiry dates printable */
#define ARC_MAX_ID 9007199254740991LL /* 2^53 - 1, PROTOCOL §3 */
#define ARC_NO_ID INT64_MIN       /* "no id" where any int64 is a valid id */
#define ARC_ERRLEN 512            /* an error message a caller gets back */
/* Paths and URLs arc builds itself. A cut one would name another file or
 * hub, so every snprintf() into these checks for truncation. */
#define ARC_PATHLEN (PATH_MAX + 16)  /* a directory plus "/.arc.pid" etc. */
#define ARC_URLLEN 320            /* "http://[" host (<= 255) "]:65535" */
#define ARC_AGAIN (-2)            /* parser: need more input */
#define ARC_BAD (-1)              /* parser: malformed input */

#if defined(__GNUC__) || defined(__clang__)
#define ARC_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define ARC_NORETURN __attribute__((noreturn))
#else
#define ARC_PRINTF(f, a)
#define ARC_NORETURN
#endif

int arc_main(int argc, char **argv);

/* Set by signal handlers; read by the loop once per turn. */
static volatile sig_atomic_t g_stop;
static int g_quiet;                /* --quiet: only warnings on stderr */

/* Borrowed byte range: never owns memory, never assumed NUL-terminated. */
typedef struct {
    const char *p;
    size_t n;
} Str;
#define STR_LIT(s) ((Str){ (s), sizeof(s) - 1 })

static Str str_c(const char *s) { return (Str){ s, s ? strlen(s) : 0 }; }

static int str_eq(Str a, const char *b) {
    size_t n = strlen(b);
    return a.n == n && memcmp(a.p, b, n) == 0;
}

/* Case-insensitive compare against an ASCII literal (header names). */
static int str_ieq(Str a, const char *b) {
    size_t n = strlen(b);
    if (a.n != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (tolower((unsigned char)a.p[i]) != tolower((unsigned char)b[i]))
            return 0;
    return 1;
}

/* Strip ASCII whitespace (the set Python's str.strip() removes for ASCII). */
static Str str_trim(Str s) {
    while (s.n && isspace((unsigned char)s.p[0])) s.p++, s.n--;
    while (s.n && isspace((unsigned char)s.p[s.n - 1])) s.n--;
    return s;
}

ARC_NORETURN ARC_PRINTF(1, 2) static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("arc: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

ARC_PRINTF(2, 0) static void log_v(const char *level, const char *fmt, va_list ap) {
    char stamp[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(stderr, "[arc %s] %s", stamp, level);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

ARC_PRINTF(1, 2) static void log_info(const char *fmt, ...) {
    if (g_quiet) return;
    va_list ap;
    va_start(ap, fmt);
    log_v("", fmt, ap);
    va_end(ap);
}

ARC_PRINTF(1, 2) static void log_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_v("warning: ", fmt, ap);
    va_end(ap);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) die("out of memory (%zu bytes)", n);
    return q;
}

/* Room for one more element: *cap grows by doubling (from 16) and the
 * array is reallocated; call it when the count reaches *cap. Returns the
 * new array. The one growth idiom for every array in arc. */
static void *vec_grow(void *p, int *cap, size_t elem) {
    if (*cap > INT_MAX / 2) die("out of memory (array of %d)", *cap);
    *cap = *cap ? *cap * 2 : 16;
    return xrealloc(p, (size_t)*cap * elem);
}

static char *xstrndup(const char *p, size_t n) {
    char *s = xrealloc(NULL, n + 1);
    memcpy(s, p, n);
    s[n] = 0;
    return s;
}

/* Growable byte buffer, NUL-terminated after every append. Appends return
 * void: past `max` they drop data and set the sticky `err`; check it once
 * at the end. Out of memory is fatal. */
typedef struct {
    char *p;        /* owned; NULL until the first append */
    size_t len;     /* bytes used, not counting the NUL */
    size_t cap;     /* bytes allocated */
    size_t max;     /* 0 = unlimited */
    int err;        /* a limit was hit and data was dropped */
} Buf;

/* The slow half of buf_reserve(): enforce max, grow. */
static int buf_grow(Buf *b, size_t extra) {
    if (b->max && b->len + extra > b->max) {
        b->err = 1;
        return -1;
    }
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : ARC_BUF_MIN;
    while (cap < b->len + extra + 1) cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
    return 0;
}

/* Make room for `extra` more bytes (and the NUL). Returns 0, or -1 past
 * max. Inline: every append starts here, and rendering a page of rows is
 * mostly appends (the fast path is one comparison). */
static inline int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra < b->cap && !b->max) return 0;
    return buf_grow(b, extra);
}

static inline void buf_add(Buf *b, const void *p, size_t n) {
    if (buf_reserve(b, n)) return;
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = 0;
}

static inline void buf_adds(Buf *b, const char *s) { buf_add(b, s, strlen(s)); }
static inline void buf_addstr(Buf *b, Str s) { buf_add(b, s.p, s.n); }
static inline void buf_addc(Buf *b, char c) { buf_add(b, &c, 1); }

/* Decimal digits of v, without printf (hot: every id of every row). */
static void buf_add_i64(Buf *b, int64_t v) {
    char tmp[24], *p = tmp + sizeof tmp;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do *--p = (char)('0' + u % 10); while (u /= 10);
    if (v < 0) *--p = '-';
    buf_add(b, p, (size_t)(tmp + sizeof tmp - p));
}

ARC_PRINTF(2, 3) static void buf_addf(Buf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        buf_add(b, tmp, (size_t)n);
        return;
    }
    if (buf_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void buf_reset(Buf *b) {
    b->len = 0;
    b->err = 0;
    if (b->p) b->p[0] = 0;
}

static void buf_free(Buf *b) {
    free(b->p);
    *b = (Buf){ .max = b->max };
}

/* Drop the first n bytes (consumed input). */
static void buf_consume(Buf *b, size_t n) {
    if (n >= b->len) {
        buf_reset(b);
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
    b->p[b->len] = 0;
}

static Str buf_str(const Buf *b) { return (Str){ b->p ? b->p : "", b->len }; }
static const char *buf_cstr(const Buf *b) { return b->p ? b->p : ""; }

/* Append s to out for a log line and return out's text: control
 * characters, DEL, C1 controls, bytes that are not UTF-8 and the backslash
 * itself become \xNN, so a name that came from outside (a spool file, an
 * agent directory) can neither forge a log line nor send terminal escapes.
 * Use one Buf per argument: the pointer lives until out changes. */
static const char *log_esc(Buf *out, const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n = *p < 0x80 ? 1 : *p >= 0xc2 && *p <= 0xdf ? 2
                 : *p >= 0xe0 && *p <= 0xef ? 3 : *p >= 0xf0 && *p <= 0xf4 ? 4 : 0;
        for (size_t i = 1; i < n; i++)
            if ((p[i] & 0xc0) != 0x80) n = 0;      /* also stops at the NUL */
        if (n == 2 && p[0] == 0xc2 && p[1] < 0xa0) n = 0;   /* U+0080-U+009F */
        if (n == 1 && (*p < 0x20 || *p == 0x7f || *p == '\\')) n = 0;
        if (n) buf_add(out, p, n);
        else buf_addf(out, "\\x%02x", *p);
        p += n ? n : 1;
    }
    return buf_cstr(out);
}

static int fd_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* qsort comparator for an array of C strings. */
static int cstr_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Monotonic milliseconds, for deadlines and intervals. */
static int64_t clock_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wall-clock microseconds since the epoch, for stored timestamps. */
static int64_t clock_wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* RFC 3339 UTC with microseconds: "2026-11-21T07:00:00.123456Z". Microseconds
 * (not whole seconds as in the reference) so that a storage file recreated at
 * the same path within one second still gets a new instance id (§10). */
#define ISO_LEN 32
static void iso_format(int64_t us, char out[ISO_LEN]) {
    int64_t s = us >= 0 ? us / 1000000 : -((-us + 999999) / 1000000);
    int64_t frac = us - s * 1000000, days = s >= 0 ? s / 86400 : -((-s + 86399) / 86400);
    int64_t sod = s - days * 86400;
    /* Civil date from days since 1970-01-01 (Howard Hinnant's algorithm):
     * written out because this runs for every write, and gmtime_r plus
     * strftime plus snprintf showed up in profiles. */
    int64_t z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153, d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9, y = yoe + era * 400 + (m <= 2);
    if (y < 0 || y > 9999) {   /* not reachable from a sane clock */
        snprintf(out, ISO_LEN, "%04d-01-01T00:00:00.000000Z", y < 0 ? 0 : 9999);
        return;
    }
    int64_t f[] = { y, m, d, sod / 3600, sod / 60 % 60, sod % 60, frac };
    static const int width[] = { 4, 2, 2, 2, 2, 2, 6 };
    static const char sep[] = "--T::.Z";
    char *p = out;
    for (int i = 0; i < 7; i++) {
        for (int k = width[i] - 1; k >= 0; k--, f[i] /= 10) p[k] = (char)('0' + f[i] % 10);
        p += width[i];
        *p++ = sep[i];
    }
    *p = 0;
}

/* Parse an RFC 3339 UTC timestamp as either hub writes it ("...:SSZ" or
 * "...:SS.ffffffZ", "+00:00" accepted too) into microseconds since the
 * epoch. Returns 0, or -1 when s is not such a timestamp. */
static int iso_parse(Str s, int64_t *us) {
    int y, mo, d, hh, mi, ss;
    if (s.n < 19 || s.p[4] != '-' || s.p[7] != '-' ||
        (s.p[10] != 'T' && s.p[10] != ' ') || s.p[13] != ':' || s.p[16] != ':')
        return -1;
    char tmp[20];
    memcpy(tmp, s.p, 19);
    tmp[19] = 0;
    if (sscanf(tmp, "%4d-%2d-%2d%*c%2d:%2d:%2d", &y, &mo, &d, &hh, &mi, &ss) != 6)
        return -1;
    int64_t frac = 0, scale = 100000;
    size_t i = 19;
    if (i < s.n && s.p[i] == '.')
        for (i++; i < s.n && isdigit((unsigned char)s.p[i]); i++, scale /= 10)
            frac += scale ? (s.p[i] - '0') * scale : 0;
    /* Days from the civil date (Howard Hinnant's algorithm). */
    int64_t yy = mo <= 2 ? y - 1 : y;
    int64_t era = (yy >= 0 ? yy : yy - 399) / 400;
    int64_t yoe = yy - era * 400;
    int64_t doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    int64_t days = era * 146097 + doe - 719468;
    *us = ((days * 86400) + hh * 3600 + mi * 60 + ss) * 1000000 + frac;
    return 0;
}

/* ---- processes: is a pid still the process it was (PROTOCOL §17.5) ---- */

/* Read /proc/PID/stat: the state (field 3), parent (4) and start time in
 * clock ticks since boot (22), and the command name (2, which may itself
 * hold spaces and parentheses: fields are counted after its last ')').
 * A pid with the same start time is the same process, so a reused pid is
 * told apart. Returns 0, or -1 with no such process (or no /proc). */
static int proc_stat(long pid, char *state, long *ppid, int64_t *start,
                     char comm[16]) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return -1;
    ssize_t n;
    do n = read(fd, buf, sizeof buf - 1); while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *lp = strchr(buf, '('), *rp = strrchr(buf, ')');
    if (!lp || !rp || rp < lp) return -1;
    if (comm) snprintf(comm, 16, "%.*s", (int)(rp - lp - 1), lp + 1);
    const char *p = rp + 1;
    for (int field = 3; field <= 22; field++) {
        while (*p == ' ') p++;
        if (!*p) return -1;
        if (field == 3 && state) *state = *p;
        if (field == 4 && ppid) *ppid = strtol(p, NULL, 10);
        if (field == 22 && start) *start = strtoll(p, NULL, 10);
        p += strcspn(p, " ");
    }
    return 0;
}

/* Is pid running and the process that started at `start` (ticks)? A
 * zombie has ended. Returns 1 yes, 0 no, -1 cannot tell (no /proc). */
static int proc_alive(long pid, int64_t start) {
    char state = 0;
    int64_t st = -1;
    if (proc_stat(pid, &state, NULL, &st, NULL) == 0)
        return st == start && state != 'Z' && state != 'X';
    struct stat sb;
    return stat("/proc/self/stat", &sb) == 0 ? 0 : -1;
}

/* The harness an agent's command runs under: the nearest ancestor that is
 * not a shell or env (hooks run as `sh -c 'arc hook ...'`, and that
 * shell's pid ends with the command). Its start time goes to *start.
 * Returns the pid, or 0 when unknown (no /proc). */
static long proc_harness_pid(int64_t *start) {
    static const char *const shells[] = { "sh", "bash", "dash", "zsh", "ksh",
                                          "fish", "busybox", "env" };
    long pid = (long)getppid();
    for (int depth = 0; depth < 8 && pid > 1; depth++) {
        char comm[16];
        long ppid = 0;
        int shell = 0;
        if (proc_stat(pid, NULL, &ppid, start, comm)) return 0;
        for (size_t i = 0; i < sizeof shells / sizeof *shells; i++)
            shell |= !strcmp(comm, shells[i]);
        if (!shell) return pid;
        pid = ppid;
    }
    return 0;
}

/* /dev/urandom, opened once (arc_main opens it first thing) and kept: a
 * hub out of descriptors must still make session ids and relay file
 * names, and opening it per call then failed fatally. Shared by threads:
 * read() on it needs no lock. */
static int g_urandom = -1;

static void rand_open(void) {
    if (g_urandom < 0) g_urandom = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
}

/* Fill p with n unpredictable bytes. */
static void rand_bytes(unsigned char *p, size_t n) {
    rand_open();
    size_t got = 0;
    while (g_urandom >= 0 && got < n) {
        ssize_t r = read(g_urandom, p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    if (got < n) die("cannot read /dev/urandom");
}

/* A random (version 4) UUID in its canonical 36-character text form. */
static void uuid4(char out[37]) {
    unsigned char b[16];
    rand_bytes(b, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    static const char hex[] = "0123456789abcdef";
    int o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = 0;
}

/* ---- files in directories that others may write (STYLE §6b) ---- */

/* The hub's own files (.arc.pid, arc.log, .arc.lock) sit beside the
 * storage file, which by default is the workspace: a sandboxed agent can
 * plant anything there. A directory is named by the user, so its path is
 * followed; the file inside it never is: it is opened relative to the
 * directory's descriptor with O_NOFOLLOW, without blocking (a FIFO), and
 * what was opened is checked before a byte is written or trusted. */

/* May a file or directory we found be trusted: ours (a directory may be
 * root's), and writable by nobody else? Group write passes only for our
 * own primary group: with the user-private-group convention (umask 002)
 * every directory a user makes is group-writable, by a group of one. */
static int fs_trusted(const struct stat *st) {
    uid_t me = geteuid();
    if (st->st_uid != me && !(S_ISDIR(st->st_mode) && st->st_uid == 0)) return 0;
    if (st->st_mode & S_IWOTH) return 0;
    if ((st->st_mode & S_IWGRP) && st->st_gid != getegid()) return 0;
    return 1;
}

/* The directory that holds `path` (a file name; the directory part is
 * followed as given, "." when there is none), opened for the *at() calls.
 * Returns the descriptor or -1 with err filled. */
static int fs_open_parent(const char *path, char err[ARC_ERRLEN]) {
    const char *slash = strrchr(path, '/');
    Buf dir = { 0 };
    if (!slash) buf_addc(&dir, '.');
    else if (slash == path) buf_addc(&dir, '/');
    else buf_add(&dir, path, (size_t)(slash - path));
    int fd = open(dir.p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        snprintf(err, ARC_ERRLEN, "cannot open directory %s: %s", dir.p,
                 strerror(errno));
    buf_free(&dir);
    return fd;
}

/* Open `name` inside directory `dfd` with `flags` (O_CREAT with mode 0600
 * allowed), never through a symbolic link, and only if it is a regular
 * file with one name that is ours: a FIFO, a device, a link to another
 * file, or a hard link (two names: perhaps ~/.ssh/authorized_keys) is
 * refused. Returns the descriptor (blocking again) or -1 with err. */
static int fs_openat(int dfd, const char *name, int flags, char err[ARC_ERRLEN]) {
    int fd = openat(dfd, name, flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
                    0600);
    if (fd < 0) {
        /* ENXIO: a FIFO opened for writing with no reader. */
        snprintf(err, ARC_ERRLEN, "%s: %s", name,
                 errno == ELOOP ? "is a symbolic link"
                 : errno == ENXIO ? "is not a regular file" : strerror(errno));
        return -1;
    }
    struct stat st;
    const char *why = NULL;
    if (fstat(fd, &st)) why = strerror(errno);
    else if (!S_ISREG(st.st_mode)) why = "is not a regular file";
    else if (st.st_nlink != 1) why = "has more than one name (a hard link)";
    else if (st.st_uid != geteuid()) why = "belongs to another user";
    if (why) {
        snprintf(err, ARC_ERRLEN, "%s %s", name, why);
        close(fd);
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}

/* Replace dir/name with `data`, atomically and without writing through
 * whatever was there (a planted link is replaced, not followed): a new
 * file made O_EXCL under a random name, then renameat() over the name. */
static int fs_replace_at(int dfd, const char *name, Str data,
                         char err[ARC_ERRLEN]) {
    unsigned char r[6];
    rand_bytes(r, sizeof r);
    char tmp[64];
    snprintf(tmp, sizeof tmp, ".arc-tmp-%02x%02x%02x%02x%02x%02x", r[0], r[1],
             r[2], r[3], r[4], r[5]);
    int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
                    O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, ARC_ERRLEN, "cannot create %s: %s", tmp, strerror(errno));
        return -1;
    }
    int rc = -1;
    size_t off = 0;
    while (off < data.n) {
        ssize_t w = write(fd, data.p + off, data.n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    if (off < data.n) snprintf(err, ARC_ERRLEN, "cannot write %s: %s", tmp, strerror(errno));
    else if (renameat(dfd, tmp, dfd, name))
        snprintf(err, ARC_ERRLEN, "cannot rename %s to %s: %s", tmp, name, strerror(errno));
    else rc = 0;
    close(fd);
    if (rc) unlinkat(dfd, tmp, 0);
    return rc;
}

/* Read at most n - 1 bytes of dir/name (opened as fs_openat opens) into
 * buf, NUL-terminated; the file's stat in *st. Returns the length or -1. */
static ssize_t fs_read_at(int dfd, const char *name, char *buf, size_t n,
                          struct stat *st, char err[ARC_ERRLEN]) {
    int fd = fs_openat(dfd, name, O_RDONLY, err);
    if (fd < 0) return -1;
    ssize_t got = 0;
    if (fstat(fd, st)) got = -1;
    while (got >= 0 && (size_t)got < n - 1) {
        ssize_t k = read(fd, buf + got, n - 1 - (size_t)got);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) got = -1;
        if (k <= 0) break;
        got += k;
    }
    close(fd);
    if (got < 0) snprintf(err, ARC_ERRLEN, "cannot read %s: %s", name, strerror(errno));
    else buf[got] = 0;
    return got;
}

/* SHA-256 (FIPS 180-4), used only for the instance id (PROTOCOL §10). */
typedef struct {
    uint32_t h[8];
    unsigned char blk[64];
    uint64_t total;
    size_t fill;
} Sha256;

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define SHA_ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(Sha256 *s, const unsigned char *p) {
    uint32_t w[64], a[8];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = SHA_ROR(w[i - 15], 7) ^ SHA_ROR(w[i - 15], 18) ^
                      (w[i - 15] >> 3);
        uint32_t s1 = SHA_ROR(w[i - 2], 17) ^ SHA_ROR(w[i - 2], 19) ^
                      (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(a, s->h, sizeof a);
    for (int i = 0; i < 64; i++) {
        uint32_t e = a[4], x = a[0];
        uint32_t t1 = a[7] + (SHA_ROR(e, 6) ^ SHA_ROR(e, 11) ^ SHA_ROR(e, 25)) +
                      ((e & a[5]) ^ (~e & a[6])) + sha_k[i] + w[i];
        uint32_t t2 = (SHA_ROR(x, 2) ^ SHA_ROR(x, 13) ^ SHA_ROR(x, 22)) +
                      ((x & a[1]) ^ (x & a[2]) ^ (a[1] & a[2]));
        memmove(a + 1, a, 7 * sizeof a[0]);
        a[4] += t1;
        a[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++) s->h[i] += a[i];
}

static void sha256_init(Sha256 *s) {
    static const uint32_t h0[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372,
                                    0xa54ff53a, 0x510e527f, 0x9b05688c,
                                    0x1f83d9ab, 0x5be0cd19 };
    memcpy(s->h, h0, sizeof h0);
    s->total = 0;
    s->fill = 0;
}

static void sha256_add(Sha256 *s, const void *data, size_t n) {
    const unsigned char *p = data;
    s->total += n;
    while (n) {
        size_t k = 64 - s->fill < n ? 64 - s->fill : n;
        memcpy(s->blk + s->fill, p, k);
        s->fill += k, p += k, n -= k;
        if (s->fill == 64) {
            sha256_block(s, s->blk);
            s->fill = 0;
        }
    }
}

/* Finish and write the digest as 64 lowercase hex characters plus NUL. */
static void sha256_hex(Sha256 *s, char out[65]) {
    uint64_t bits = s->total * 8;
    unsigned char pad = 0x80, zero = 0, len[8];
    sha256_add(s, &pad, 1);
    while (s->fill != 56) sha256_add(s, &zero, 1);
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_add(s, len, 8);
    for (int i = 0; i < 8; i++) snprintf(out + 8 * i, 9, "%08x", s->h[i]);
}

/* Is `given` the secret `want` (want_n bytes, then NUL bytes up to
 * ARC_MAX_TOKEN)? Constant time: always ARC_MAX_TOKEN steps with no early
 * exit and no branch on the secret, so the time a guess takes reveals
 * neither the secret's bytes nor its length (only the guess's own length
 * steers a branch). */
static int token_eq(Str given, const char want[ARC_MAX_TOKEN + 1], size_t want_n) {
    const volatile unsigned char *w = (const unsigned char *)want;
    unsigned d = (unsigned)(given.n != want_n) | (unsigned)(given.n > ARC_MAX_TOKEN);
    for (size_t i = 0; i < ARC_MAX_TOKEN; i++) {
        unsigned char g = i < given.n ? (unsigned char)given.p[i] : 0;
        d |= (unsigned)(g ^ w[i]);
    }
    return d == 0;
}

/* ---- options: one table per command, one parser, one serialiser ---- */

/* A command's options are data: tables of Opt, one per struct they fill
 * (HubConfig for the serve options, LifeOpts for ensure's --timeout, ...),
 * combined per command as OptGroups. opt_parse() reads argv against them
 * ("--port 6969" and "--port=6969" alike), opt_help() prints --help from
 * them, and opt_argv() turns parsed values back into argv (what `arc
 * ensure` hands the hub it starts), so the usage text, the parser and the
 * spawner cannot disagree. String values are borrowed from argv, which
 * outlives every command. Usage errors exit 2 (STYLE §7). */

static int parse_int_text(Str s, int64_t *out);   /* json: Python's int() */

typedef enum {
    OPT_END,         /* ends a table */
    OPT_TEXT,        /* not an option: a line of --help */
    OPT_FLAG,        /* int, set to 1; takes no value */
    OPT_STR,         /* const char *, borrowed from argv */
    OPT_INT,         /* int within [lo, hi] */
    OPT_I64,         /* int64_t within [lo, hi] */
    OPT_SECS,        /* double seconds within [lo, hi] (OPT_ABOVE_LO: > lo) */
    OPT_WORD,        /* int: the value paired with one of `words` */
    OPT_LIST,        /* const char *[hi], the count an int at off_n */
    OPT_TOKEN,       /* --token: see opt_token(); off: char[ARC_MAX_TOKEN+1] */
    OPT_TOKEN_FILE,  /* --token-file: the same, from a file's first line */
    OPT_IGNORED,     /* takes a value, accepted for compatibility, unused */
    OPT_ARG          /* const char *: the operand (post's BODY; "-" too) */
} OptKind;

enum {
    OPT_PASS = 1,      /* arc ensure (and arc smoke) hand it to a new hub */
    OPT_WHICH = 2,     /* names the hub: stop/status/reset list only these */
    OPT_ABOVE_LO = 4   /* OPT_SECS: lo itself is out of range */
};

typedef struct {
    const char *word;
    int value;
} OptWord;

typedef struct {
    const char *name;      /* "--port"; NULL for OPT_TEXT and OPT_ARG */
    OptKind kind;
    size_t off;            /* the value's offset in the group's struct ... */
    void *ptr;             /* ... or, when set, its address (a global) */
    int64_t lo, hi;        /* INT, I64, SECS: the range; LIST: most values */
    size_t off_n;          /* OPT_LIST: offset of the int count */
    const OptWord *words;  /* OPT_WORD: the words, ending with { NULL } */
    int (*ok)(const char *v);  /* STR, LIST: 0 if v is acceptable */
    const char *bad;       /* ... else "--name <bad>" is the error */
    const char *arg;       /* the value's name in --help ("N", "FILE") */
    const char *help;      /* --help text; '\n' continues it, indented */
    unsigned flags;        /* OPT_PASS, OPT_WHICH, OPT_ABOVE_LO */
} Opt;

/* One table of a command and the struct it fills. */
typedef struct {
    const Opt *opts;       /* ends with OPT_END */
    void *dst;             /* borrowed: where the offsets point */
    const char *title;     /* --help: a line before its options, or NULL */
    unsigned show;         /* --help: 0 all, else only options with a flag */
} OptGroup;

/* What --help says around the option lines, and the command's name. */
typedef struct {
    const char *cmd;       /* "serve": errors read "arc serve: ..." */
    const char *usage;     /* before the options */
    const char *footer;    /* after them, or NULL */
} OptHelp;

/* Growable argv of owned strings, NULL-terminated once non-empty. */
typedef struct {
    char **v;
    int n, cap;
} OptArgv;

#define OPT_HELP_COL 26    /* "--name ARG" column width in --help */

/* The bearer token a command uses (PROTOCOL §2.4): --token, else the first
 * line of --token-file, else $ARC_TOKEN; "" when none is set. Both flags at
 * once, an unreadable or empty file, or a token that is not 1 to
 * ARC_MAX_TOKEN visible ASCII characters is an error. Every command
 * resolves its token here (opt_parse_args does it for a table with
 * OPT_TOKEN). Returns 0 with out filled and NUL-padded to its end (as
 * token_eq() wants it), or -1 with err. */
static int opt_token(const char *flag_token, const char *flag_file,
                     char out[ARC_MAX_TOKEN + 1], char err[ARC_ERRLEN]) {
    char line[ARC_MAX_TOKEN + 64];
    const char *what = "--token";
    Str t = str_c(flag_token);
    memset(out, 0, ARC_MAX_TOKEN + 1);
    if (flag_token && flag_file) {
        snprintf(err, ARC_ERRLEN, "give --token or --token-file, not both");
        return -1;
    }
    if (flag_file) {
        what = "--token-file";
        FILE *f = fopen(flag_file, "r");
        struct stat sb;
        if (!f) {
            snprintf(err, ARC_ERRLEN, "--token-file %s: %s", flag_file, strerror(errno));
            return -1;
        }
        if (fstat(fileno(f), &sb) == 0 && (sb.st_mode & 077))
            fprintf(stderr, "arc: warning: token file %s can be read by other users "
                    "(chmod 600 it)\n", flag_file);
        size_t n = fread(line, 1, sizeof line - 1, f);
        fclose(f);
        line[n] = 0;
        t = (Str){ line, strcspn(line, "\n") };
    } else if (!flag_token) {
        what = "ARC_TOKEN";
        t = str_c(getenv("ARC_TOKEN"));
        if (!t.n) return 0;
    }
    t = str_trim(t);
    if (t.n == 0 || t.n > ARC_MAX_TOKEN) {
        snprintf(err, ARC_ERRLEN, "%s: the token must be 1 to %d characters", what,
                 ARC_MAX_TOKEN);
        return -1;
    }
    for (size_t i = 0; i < t.n; i++)
        if ((unsigned char)t.p[i] <= 0x20 || (unsigned char)t.p[i] >= 0x7f) {
            snprintf(err, ARC_ERRLEN, "%s: the token may hold only visible ASCII "
                     "characters (no spaces)", what);
            return -1;
        }
    memcpy(out, t.p, t.n);
    out[t.n] = 0;
    return 0;
}

#ifndef NDEBUG   /* the checks below serve assert() and tests/unit.c */
/* Does this kind of option take a value? */
static int opt_takes_value(OptKind k) {
    return k != OPT_END && k != OPT_TEXT && k != OPT_FLAG && k != OPT_ARG;
}

/* Is the table well formed (names, ranges, help, what may be passed on)?
 * For assert() before every parse, and for the unit tests. It walks the
 * whole table once per entry, so keep tables short (they are). */
static int opt_table_ok(const Opt *t) {
    for (const Opt *o = t; o->kind != OPT_END; o++) {
        if (!o->help) return 0;
        if (o->kind == OPT_TEXT) {
            if (o->name || o->flags) return 0;
            continue;
        }
        if (o->kind == OPT_ARG) {
            if (o->name || !o->arg || o->flags) return 0;
            continue;
        }
        if (!o->name || strncmp(o->name, "--", 2) || strchr(o->name, '=') ||
            !o->name[2] || !o->arg != !opt_takes_value(o->kind))
            return 0;
        for (const Opt *p = t; p < o; p++)
            if (p->name && !strcmp(p->name, o->name)) return 0;
        if ((o->kind == OPT_INT || o->kind == OPT_I64 || o->kind == OPT_SECS) &&
            o->lo > o->hi)
            return 0;
        if (o->kind == OPT_INT && (o->lo < INT_MIN || o->hi > INT_MAX)) return 0;
        if (o->kind == OPT_LIST && (o->hi < 1 || o->off_n == o->off || o->ptr))
            return 0;
        if (o->kind == OPT_WORD && (!o->words || !o->words[0].word)) return 0;
        if ((o->ok != NULL) != (o->bad != NULL)) return 0;
        if ((o->flags & OPT_PASS) && (o->kind == OPT_TOKEN ||
            o->kind == OPT_TOKEN_FILE || o->kind == OPT_IGNORED))
            return 0;   /* a token goes by environment, never argv */
    }
    return 1;
}

/* Are the groups together well formed: each table, and no name twice? */
static int opt_groups_ok(const OptGroup *g, int ng) {
    int tokens = 0;
    for (int i = 0; i < ng; i++) {
        if (!opt_table_ok(g[i].opts) || !g[i].dst) return 0;
        for (const Opt *o = g[i].opts; o->kind != OPT_END; o++) {
            tokens += o->kind == OPT_TOKEN;
            for (int k = 0; k < i && o->name; k++)
                for (const Opt *p = g[k].opts; p->kind != OPT_END; p++)
                    if (p->name && !strcmp(p->name, o->name)) return 0;
        }
    }
    return tokens <= 1;   /* one token per command */
}
#endif

/* Where option o of group g keeps its value. */
static void *opt_dst(const Opt *o, const OptGroup *g) {
    return o->ptr ? o->ptr : (char *)g->dst + o->off;
}

/* Store value v of option o at p; the token flags go to tok[0..1].
 * Returns 0, or -1 with err. */
static int opt_set(const Opt *o, void *p, const char *v, const char *tok[2],
                   char err[ARC_ERRLEN]) {
    int64_t n;
    switch (o->kind) {
    case OPT_FLAG:
        *(int *)p = 1;
        return 0;
    case OPT_STR:
    case OPT_ARG:
        if (o->ok && o->ok(v)) break;
        *(const char **)p = v;
        return 0;
    case OPT_INT:
    case OPT_I64:
        if (parse_int_text(str_c(v), &n) || n < o->lo || n > o->hi) {
            snprintf(err, ARC_ERRLEN, "%s must be a whole number from %lld to %lld",
                     o->name, (long long)o->lo, (long long)o->hi);
            return -1;
        }
        if (o->kind == OPT_INT) *(int *)p = (int)n;
        else *(int64_t *)p = n;
        return 0;
    case OPT_SECS: {
        char *end;
        double d = strtod(v, &end), lo = (double)o->lo;
        int above = (o->flags & OPT_ABOVE_LO) != 0;
        if (end == v || *end || !(d >= lo) || d > (double)o->hi || (above && d == lo)) {
            snprintf(err, ARC_ERRLEN, "%s must be a number of seconds %s %lld %s "
                     "%lld", o->name, above ? "above" : "from", (long long)o->lo,
                     above ? "up to" : "to", (long long)o->hi);
            return -1;
        }
        *(double *)p = d;
        return 0;
    }
    case OPT_WORD: {
        Buf ws = { 0 };
        for (const OptWord *w = o->words; w->word; w++) {
            if (!strcmp(v, w->word)) {
                *(int *)p = w->value;
                buf_free(&ws);
                return 0;
            }
            buf_adds(&ws, w == o->words ? "" : w[1].word ? ", " : " or ");
            buf_adds(&ws, w->word);
        }
        snprintf(err, ARC_ERRLEN, "%s must be %s", o->name, buf_cstr(&ws));
        buf_free(&ws);
        return -1;
    }
    case OPT_LIST: {
        int *count = (int *)((char *)p - o->off + o->off_n);
        if (*count >= o->hi || (o->ok && o->ok(v))) {
            snprintf(err, ARC_ERRLEN, "%s %s, at most %lld times", o->name,
                     o->bad ? o->bad : "is repeatable", (long long)o->hi);
            return -1;
        }
        ((const char **)p)[(*count)++] = v;
        return 0;
    }
    case OPT_TOKEN:
    case OPT_TOKEN_FILE:
        tok[o->kind == OPT_TOKEN_FILE] = v;
        return 0;
    case OPT_IGNORED:
        return 0;
    case OPT_END:
    case OPT_TEXT:
        break;
    }
    assert(o->ok);   /* only a failed check gets here */
    snprintf(err, ARC_ERRLEN, "%s %s", o->name, o->bad);
    return -1;
}

/* The option of the groups named `name`, or for an operand (name.p NULL)
 * the first OPT_ARG still unset; NULL if none. Sets *gi to its group. */
static const Opt *opt_find(const OptGroup *g, int ng, Str name, int *gi) {
    for (int i = 0; i < ng; i++)
        for (const Opt *o = g[i].opts; o->kind != OPT_END; o++) {
            *gi = i;
            if (!name.p && o->kind == OPT_ARG && !*(const char **)opt_dst(o, &g[i]))
                return o;
            if (name.p && o->name && str_eq(name, o->name)) return o;
        }
    return NULL;
}

/* Parse argv into the groups' structs, which hold their defaults already;
 * the token, if a table has one, is resolved last (opt_token). Returns 0,
 * 1 when --help (or -h) was asked for, or -1 with err (a usage error). */
static int opt_parse_args(const OptHelp *h, const OptGroup *g, int ng, int argc,
                          char **argv, char err[ARC_ERRLEN]) {
    assert(opt_groups_ok(g, ng));
    const char *tok[2] = { NULL, NULL };
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *eq = strchr(a, '='), *v = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
        int dashes = a[0] == '-' && a[1] == '-', gi = 0;
        Str name = dashes ? (Str){ a, eq ? (size_t)(eq - a) : strlen(a) }
                          : (Str){ NULL, 0 };
        const Opt *o = dashes || a[0] != '-' || !strcmp(a, "-")
                           ? opt_find(g, ng, name, &gi) : NULL;
        if (!o) {
            snprintf(err, ARC_ERRLEN, "%s %s (see arc %s --help)",
                     a[0] == '-' ? "unknown option" : "unexpected argument", a,
                     h->cmd);
            return -1;
        }
        if (o->kind == OPT_ARG) {
            v = a;
        } else if (o->kind == OPT_FLAG) {
            if (eq) {
                snprintf(err, ARC_ERRLEN, "%s takes no value", o->name);
                return -1;
            }
        } else if (eq) {
            v = eq + 1;
        } else if (i + 1 < argc) {
            v = argv[++i];
        } else {
            snprintf(err, ARC_ERRLEN, "%s needs a value", o->name);
            return -1;
        }
        if (opt_set(o, opt_dst(o, &g[gi]), v, tok, err)) return -1;
    }
    for (int i = 0; i < ng; i++)
        for (const Opt *o = g[i].opts; o->kind != OPT_END; o++)
            if (o->kind == OPT_TOKEN)
                return opt_token(tok[0], tok[1], opt_dst(o, &g[i]), err);
    return 0;
}

/* Print --help: the usage text, each group's options from its table (those
 * a group shows), the footer. */
static void opt_help(const OptHelp *h, const OptGroup *g, int ng, FILE *f) {
    fputs(h->usage, f);
    for (int i = 0; i < ng; i++) {
        if (g[i].title) fputs(g[i].title, f);
        for (const Opt *o = g[i].opts; o->kind != OPT_END; o++) {
            if (g[i].show && !(o->flags & g[i].show)) continue;
            if (o->kind == OPT_TEXT) {
                fprintf(f, "%s\n", o->help);
                continue;
            }
            char col[64];
            snprintf(col, sizeof col, "%s%s%s", o->name ? o->name : o->arg,
                     o->name && o->arg ? " " : "", o->name && o->arg ? o->arg : "");
            fprintf(f, "  %-*s  ", OPT_HELP_COL, col);
            for (const char *p = o->help; *p; p++) {
                fputc(*p, f);
                if (*p == '\n') fprintf(f, "%*s", OPT_HELP_COL + 4, "");
            }
            fputc('\n', f);
        }
    }
    if (h->footer) fputs(h->footer, f);
}

/* A command's parse: opt_parse_args(), then --help printed (exit 0) or the
 * usage error reported as "arc CMD: ..." (exit 2). */
static void opt_parse(const OptHelp *h, const OptGroup *g, int ng, int argc,
                      char **argv) {
    char err[ARC_ERRLEN];
    int rc = opt_parse_args(h, g, ng, argc, argv, err);
    if (rc > 0) {
        opt_help(h, g, ng, stdout);
        exit(0);
    }
    if (rc < 0) {
        fprintf(stderr, "arc %s: %s\n", h->cmd, err);
        exit(2);
    }
}

/* Append a copy of s, keeping the array NULL-terminated. */
static void opt_argv_add(OptArgv *a, const char *s) {
    if (a->n + 1 >= a->cap) a->v = vec_grow(a->v, &a->cap, sizeof *a->v);
    a->v[a->n++] = xstrndup(s, strlen(s));
    a->v[a->n] = NULL;
}

static void opt_argv_free(OptArgv *a) {
    for (int i = 0; i < a->n; i++) free(a->v[i]);
    free(a->v);
    *a = (OptArgv){ 0 };
}

/* Append, for every option of the table with one of `flags`, the argv
 * that opt_parse_args() reads back into the same value: "--name value"
 * (each value of a list; a flag only when set, a string only when not
 * NULL). The array grows as needed, so no count of options can overflow
 * it. */
static void opt_argv(OptArgv *a, const Opt *t, const void *src, unsigned flags) {
    char num[40];
    for (const Opt *o = t; o->kind != OPT_END; o++) {
        if (!(o->flags & flags)) continue;
        const void *p = o->ptr ? o->ptr : (const char *)src + o->off;
        const char *v = NULL;
        switch (o->kind) {
        case OPT_FLAG:
            if (*(const int *)p) opt_argv_add(a, o->name);
            continue;
        case OPT_STR:
            v = *(const char *const *)p;
            break;
        case OPT_INT:
            snprintf(num, sizeof num, "%d", *(const int *)p);
            v = num;
            break;
        case OPT_I64:
            snprintf(num, sizeof num, "%lld", (long long)*(const int64_t *)p);
            v = num;
            break;
        case OPT_SECS:
            snprintf(num, sizeof num, "%.17g", *(const double *)p);
            v = num;
            break;
        case OPT_WORD:
            for (const OptWord *w = o->words; w->word && !v; w++)
                if (w->value == *(const int *)p) v = w->word;
            assert(v);   /* the value came from a word */
            break;
        case OPT_LIST: {
            int n = *(const int *)((const char *)src + o->off_n);
            assert(n >= 0 && n <= o->hi);
            for (int i = 0; i < n; i++) {
                opt_argv_add(a, o->name);
                opt_argv_add(a, ((const char *const *)p)[i]);
            }
            continue;
        }
        default:
            assert(0);   /* opt_table_ok() lets no other kind be passed on */
            continue;
        }
        if (!v) continue;
        opt_argv_add(a, o->name);
        opt_argv_add(a, v);
    }
}

/* ==== json: strict reader, writer into Buf, Python-compatible coercions == */

/* The reader follows jsmn's model: one pass fills a flat token array over the
 * borrowed source, no allocation per node. It is strict RFC 8259: UTF-8 is
 * validated inside strings (outside them only ASCII is legal anyway), \u
 * escapes must form whole characters (a lone surrogate is an error), numbers
 * follow the grammar exactly (no NaN/Infinity), and nesting is capped at
 * ARC_JSON_DEPTH. Objects keep duplicate keys in the token array; lookups
 * return the last one, as Python's json module does. */
typedef enum {
    JSON_NULL = 1, JSON_FALSE, JSON_TRUE, JSON_NUM, JSON_STR, JSON_ARR, JSON_OBJ
} JsonType;

typedef struct {
    unsigned char type;   /* JsonType */
    unsigned char esc;    /* STR: contains backslash escapes */
    unsigned char frac;   /* NUM: has a fraction or exponent */
    uint32_t off, len;    /* STR: bytes between the quotes; else whole text */
    uint32_t n;           /* ARR: elements; OBJ: members (key/value pairs) */
    uint32_t next;        /* index of the first token after this subtree */
} JsonTok;

typedef struct {
    const char *src;      /* borrowed from the caller; must outlive the Json */
    size_t srclen;
    JsonTok *t;           /* owned */
    uint32_t nt, cap;
    size_t pos;           /* reader position */
    char err[ARC_ERRLEN];
} Json;

static void json_free(Json *j) {
    free(j->t);
    j->t = NULL;
    j->nt = j->cap = 0;
}

ARC_PRINTF(2, 3) static int json_fail(Json *j, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->err, sizeof j->err, fmt, ap);
    va_end(ap);
    return -1;
}

static uint32_t json_push(Json *j, JsonType type, size_t off) {
    if (j->nt == j->cap) {   /* uint32_t counts: not vec_grow's int */
        j->cap = j->cap ? j->cap * 2 : 16;
        j->t = xrealloc(j->t, j->cap * sizeof *j->t);
    }
    j->t[j->nt] = (JsonTok){ .type = (unsigned char)type, .off = (uint32_t)off };
    return j->nt++;
}

static void json_skip_ws(Json *j) {
    while (j->pos < j->srclen) {
        char c = j->src[j->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        j->pos++;
    }
}

/* Length of the UTF-8 sequence at p (n bytes available), or 0 if it is not
 * well formed: no overlongs, no encoded surrogates, nothing past U+10FFFF. */
static size_t utf8_len(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    if (c < 0x80) return 1;
    if (c < 0xc2 || c > 0xf4) return 0;
    size_t k = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    if (n < k) return 0;
    for (size_t i = 1; i < k; i++)
        if ((p[i] & 0xc0) != 0x80) return 0;
    if (c == 0xe0 && p[1] < 0xa0) return 0;    /* overlong */
    if (c == 0xed && p[1] > 0x9f) return 0;    /* surrogate */
    if (c == 0xf0 && p[1] < 0x90) return 0;    /* overlong */
    if (c == 0xf4 && p[1] > 0x8f) return 0;    /* > U+10FFFF */
    return k;
}

static int utf8_valid(const char *p, size_t n) {
    for (size_t i = 0; i < n;) {
        size_t k = utf8_len((const unsigned char *)p + i, n - i);
        if (!k) return 0;
        i += k;
    }
    return 1;
}

/* Code points in a valid UTF-8 string: what Python's len() counts. */
static size_t utf8_chars(const char *p, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)p[i] & 0xc0) != 0x80) c++;
    return c;
}

static int hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* A string token, checked in place (escapes, surrogate pairs, UTF-8) but
 * not decoded: esc marks one that json_unescape() must decode. */
static int json_parse_str(Json *j) {
    size_t start = ++j->pos;     /* past the opening quote */
    uint32_t ti = json_push(j, JSON_STR, start);
    const char *s = j->src;
    while (j->pos < j->srclen) {
        unsigned char c = (unsigned char)s[j->pos];
        if (c == '"') {
            j->t[ti].len = (uint32_t)(j->pos - start);
            j->t[ti].next = j->nt;
            j->pos++;
            return 0;
        }
        if (c < 0x20) return json_fail(j, "control character in string");
        if (c == '\\') {
            j->t[ti].esc = 1;
            if (j->pos + 1 >= j->srclen) break;
            char e = s[j->pos + 1];
            if (strchr("\"\\/bfnrt", e) && e) {
                j->pos += 2;
                continue;
            }
            if (e != 'u') return json_fail(j, "invalid escape in string");
            unsigned u, lo;
            if (j->pos + 6 > j->srclen || hex4(s + j->pos + 2, &u))
                return json_fail(j, "invalid \\u escape");
            j->pos += 6;
            if (u >= 0xdc00 && u <= 0xdfff)
                return json_fail(j, "lone surrogate in \\u escape");
            if (u >= 0xd800 && u <= 0xdbff) {
                if (j->pos + 6 > j->srclen || s[j->pos] != '\\' ||
                    s[j->pos + 1] != 'u' || hex4(s + j->pos + 2, &lo) ||
                    lo < 0xdc00 || lo > 0xdfff)
                    return json_fail(j, "lone surrogate in \\u escape");
                j->pos += 6;
            }
            continue;
        }
        size_t k = utf8_len((const unsigned char *)s + j->pos,
                            j->srclen - j->pos);
        if (!k) return json_fail(j, "invalid UTF-8 in string");
        j->pos += k;
    }
    return json_fail(j, "unterminated string");
}

/* A number token in JSON's grammar (no leading zeros, no bare '.'); frac
 * marks a fraction or exponent, so the coercions tell ints from floats. */
static int json_parse_num(Json *j) {
    const char *s = j->src;
    size_t p = j->pos, n = j->srclen, start = p;
    int frac = 0;
    if (p < n && s[p] == '-') p++;
    if (p < n && s[p] == '0') p++;
    else if (p < n && s[p] >= '1' && s[p] <= '9')
        while (p < n && isdigit((unsigned char)s[p])) p++;
    else return json_fail(j, "invalid number");
    if (p < n && s[p] == '.') {
        p++, frac = 1;
        if (p >= n || !isdigit((unsigned char)s[p]))
            return json_fail(j, "invalid number");
        while (p < n && isdigit((unsigned char)s[p])) p++;
    }
    if (p < n && (s[p] == 'e' || s[p] == 'E')) {
        p++, frac = 1;
        if (p < n && (s[p] == '+' || s[p] == '-')) p++;
        if (p >= n || !isdigit((unsigned char)s[p]))
            return json_fail(j, "invalid number");
        while (p < n && isdigit((unsigned char)s[p])) p++;
    }
    uint32_t ti = json_push(j, JSON_NUM, start);
    j->t[ti].len = (uint32_t)(p - start);
    j->t[ti].frac = (unsigned char)frac;
    j->t[ti].next = j->nt;
    j->pos = p;
    return 0;
}

static int json_parse_value(Json *j, int depth);

/* Arrays and objects share one routine: `obj` adds the key and colon. */
static int json_parse_container(Json *j, int depth, int obj) {
    if (depth >= ARC_JSON_DEPTH)
        return json_fail(j, "JSON nested deeper than %d levels", ARC_JSON_DEPTH);
    uint32_t ti = json_push(j, obj ? JSON_OBJ : JSON_ARR, j->pos);
    char close = obj ? '}' : ']';
    uint32_t count = 0;
    j->pos++;
    json_skip_ws(j);
    if (j->pos < j->srclen && j->src[j->pos] == close) {
        j->pos++;
    } else {
        for (;;) {
            json_skip_ws(j);
            if (obj) {
                if (j->pos >= j->srclen || j->src[j->pos] != '"')
                    return json_fail(j, "expected a string key");
                if (json_parse_str(j)) return -1;
                json_skip_ws(j);
                if (j->pos >= j->srclen || j->src[j->pos] != ':')
                    return json_fail(j, "expected ':' after key");
                j->pos++;
            }
            if (json_parse_value(j, depth + 1)) return -1;
            count++;
            json_skip_ws(j);
            if (j->pos >= j->srclen) return json_fail(j, "unexpected end");
            char c = j->src[j->pos++];
            if (c == close) break;
            if (c != ',') return json_fail(j, "expected ',' or '%c'", close);
        }
    }
    j->t[ti].n = count;
    j->t[ti].len = (uint32_t)(j->pos - j->t[ti].off);
    j->t[ti].next = j->nt;
    return 0;
}

static int json_parse_lit(Json *j, const char *lit, JsonType type) {
    size_t n = strlen(lit);
    if (j->srclen - j->pos < n || memcmp(j->src + j->pos, lit, n))
        return json_fail(j, "invalid literal");
    uint32_t ti = json_push(j, type, j->pos);
    j->t[ti].len = (uint32_t)n;
    j->t[ti].next = j->nt;
    j->pos += n;
    return 0;
}

static int json_parse_value(Json *j, int depth) {
    json_skip_ws(j);
    if (j->pos >= j->srclen) return json_fail(j, "unexpected end of JSON");
    switch (j->src[j->pos]) {
    case '{': return json_parse_container(j, depth, 1);
    case '[': return json_parse_container(j, depth, 0);
    case '"': return json_parse_str(j);
    case 't': return json_parse_lit(j, "true", JSON_TRUE);
    case 'f': return json_parse_lit(j, "false", JSON_FALSE);
    case 'n': return json_parse_lit(j, "null", JSON_NULL);
    default: return json_parse_num(j);
    }
}

/* Parse one JSON text. Returns 0 with tokens in j->t (root at index 0), or
 * -1 with a message in j->err. The source must stay alive and unchanged. */
static int json_parse(Json *j, const char *src, size_t n) {
    j->src = src;
    j->srclen = n;
    j->nt = 0;
    j->pos = 0;
    j->err[0] = 0;
    if (n > UINT32_MAX) return json_fail(j, "JSON text too large");
    if (json_parse_value(j, 0)) return -1;
    json_skip_ws(j);
    if (j->pos != n) return json_fail(j, "trailing data after JSON value");
    return 0;
}

/* Append the decoded contents of string token i to b. */
static void json_unescape(const Json *j, uint32_t i, Buf *b) {
    const JsonTok *t = &j->t[i];
    const char *s = j->src + t->off;
    if (!t->esc) {
        buf_add(b, s, t->len);
        return;
    }
    for (uint32_t k = 0; k < t->len;) {
        if (s[k] != '\\') {
            buf_addc(b, s[k++]);
            continue;
        }
        char e = s[k + 1];
        k += 2;
        unsigned u, lo;
        switch (e) {
        case 'b': buf_addc(b, '\b'); continue;
        case 'f': buf_addc(b, '\f'); continue;
        case 'n': buf_addc(b, '\n'); continue;
        case 'r': buf_addc(b, '\r'); continue;
        case 't': buf_addc(b, '\t'); continue;
        case 'u': break;
        default: buf_addc(b, e); continue;
        }
        hex4(s + k, &u);
        k += 4;
        if (u >= 0xd800 && u <= 0xdbff) {   /* validated pair */
            hex4(s + k + 2, &lo);
            k += 6;
            u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
        }
        char o[4];
        int on;
        if (u < 0x80) o[0] = (char)u, on = 1;
        else if (u < 0x800)
            o[0] = (char)(0xc0 | u >> 6), o[1] = (char)(0x80 | (u & 63)), on = 2;
        else if (u < 0x10000)
            o[0] = (char)(0xe0 | u >> 12), o[1] = (char)(0x80 | (u >> 6 & 63)),
            o[2] = (char)(0x80 | (u & 63)), on = 3;
        else
            o[0] = (char)(0xf0 | u >> 18), o[1] = (char)(0x80 | (u >> 12 & 63)),
            o[2] = (char)(0x80 | (u >> 6 & 63)), o[3] = (char)(0x80 | (u & 63)),
            on = 4;
        buf_add(b, o, (size_t)on);
    }
}

/* Does string token i decode to exactly `s`? */
static int json_str_is(const Json *j, uint32_t i, Str s) {
    const JsonTok *t = &j->t[i];
    if (t->type != JSON_STR) return 0;
    if (!t->esc) return t->len == s.n && memcmp(j->src + t->off, s.p, s.n) == 0;
    Buf b = { 0 };
    json_unescape(j, i, &b);
    int eq = b.len == s.n && memcmp(buf_cstr(&b), s.p, s.n) == 0;
    buf_free(&b);
    return eq;
}

/* Value token of the last member named `key` in object `obj`, or 0 (the
 * root can never be a member, so 0 means absent). */
static uint32_t json_get(const Json *j, uint32_t obj, const char *key) {
    if (!j->t || j->t[obj].type != JSON_OBJ) return 0;
    Str k = str_c(key);
    uint32_t found = 0, i = obj + 1;
    for (uint32_t m = 0; m < j->t[obj].n; m++) {
        if (json_str_is(j, i, k)) found = i + 1;
        i = j->t[i + 1].next;
    }
    return found;
}

/* Like json_get, but JSON null counts as absent, as `body.get(k)` is None
 * in the reference. */
static uint32_t json_get_val(const Json *j, uint32_t obj, const char *key) {
    uint32_t v = json_get(j, obj, key);
    return v && j->t[v].type != JSON_NULL ? v : 0;
}

/* Python truthiness of a JSON value: false for null, false, 0, "", [], {}. */
static int json_truthy(const Json *j, uint32_t i) {
    const JsonTok *t = &j->t[i];
    switch (t->type) {
    case JSON_NULL: case JSON_FALSE: return 0;
    case JSON_TRUE: return 1;
    case JSON_STR: return t->len > 0;
    case JSON_ARR: case JSON_OBJ: return t->n > 0;
    default: {
        /* strtod on a bounded copy: the token need not end the source. */
        char *tmp = xstrndup(j->src + t->off, t->len);
        int truthy = strtod(tmp, NULL) != 0.0;
        free(tmp);
        return truthy;
    }
    }
}

/* Parse a decimal integer the way Python's int(str) does for ASCII input:
 * surrounding whitespace, an optional sign, digits with single underscores
 * between them. Returns 0 and *out, or -1 (not an integer, or out of the
 * int64 range). */
static int parse_int_text(Str s, int64_t *out) {
    s = str_trim(s);
    size_t i = 0;
    int neg = 0;
    if (i < s.n && (s.p[i] == '+' || s.p[i] == '-')) neg = s.p[i++] == '-';
    if (i >= s.n) return -1;
    uint64_t v = 0, lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    int prev_digit = 0;
    for (; i < s.n; i++) {
        char c = s.p[i];
        if (c == '_' && prev_digit && i + 1 < s.n &&
            isdigit((unsigned char)s.p[i + 1])) {
            prev_digit = 0;
            continue;
        }
        if (!isdigit((unsigned char)c)) return -1;
        unsigned d = (unsigned)(c - '0');
        if (v > (lim - d) / 10) return -1;
        v = v * 10 + d;
        prev_digit = 1;
    }
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

/* Coerce a value to an integer as the reference's int(x) does: integers,
 * finite numbers with a fraction (truncated toward zero), numeric strings,
 * and booleans. Returns 0 and *out, or -1. */
static int json_to_i64(const Json *j, uint32_t i, int64_t *out) {
    const JsonTok *t = &j->t[i];
    switch (t->type) {
    case JSON_TRUE: *out = 1; return 0;
    case JSON_FALSE: *out = 0; return 0;
    case JSON_NUM:
        if (!t->frac)
            return parse_int_text((Str){ j->src + t->off, t->len }, out);
        {
            char tmp[64];
            if (t->len >= sizeof tmp) {
                /* Longer than any double needs; strtod still copes. */
                char *s = xstrndup(j->src + t->off, t->len);
                double d = strtod(s, NULL);
                free(s);
                if (!isfinite(d) || d >= 9.2e18 || d <= -9.2e18) return -1;
                *out = (int64_t)d;
                return 0;
            }
            memcpy(tmp, j->src + t->off, t->len);
            tmp[t->len] = 0;
            double d = strtod(tmp, NULL);
            if (!isfinite(d) || d >= 9.2e18 || d <= -9.2e18) return -1;
            *out = (int64_t)d;
            return 0;
        }
    case JSON_STR: {
        Buf b = { 0 };
        json_unescape(j, i, &b);
        int rc = parse_int_text(buf_str(&b), out);
        buf_free(&b);
        return rc;
    }
    default: return -1;
    }
}

/* Does any of the eight bytes in w need escaping (< 0x20, >= 0x80, '"' or
 * '\\')? SWAR: such a byte leaves its high bit set in the result. */
static int json_bad8(uint64_t w) {
    const uint64_t ones = 0x0101010101010101u, high = 0x8080808080808080u;
    uint64_t q = w ^ (ones * '"'), bs = w ^ (ones * '\\');
    return (((w - ones * 0x20) | w | ((q - ones) & ~q) | ((bs - ones) & ~bs)) & high) != 0;
}

/* How many leading bytes of s need no escaping: printable ASCII other
 * than '"' and '\\'. Eight bytes at a time (the tail padded with 'a');
 * byte by byte only from the word that has one. */
static size_t json_plain_len(const char *s, size_t n) {
    size_t i = 0;
    uint64_t w;
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, s + i, 8);
        if (json_bad8(w)) goto bytewise;
    }
    if (i == n) return n;
    w = 0x6161616161616161u;
    memcpy(&w, s + i, n - i);
    if (!json_bad8(w)) return n;
bytewise:
    while (i < n && (unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x80 &&
           s[i] != '"' && s[i] != '\\')
        i++;
    return i;
}

/* Write s as a JSON string literal. Input that is not valid UTF-8 (only
 * possible from a foreign database row) is repaired with U+FFFD, so the
 * output is always valid JSON. */
static void json_str(Buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    /* Fast path, and the common case: printable ASCII without '"' or '\\'
     * is copied as it is, with one reservation for the whole literal. */
    size_t i = json_plain_len(s, n);
    if (i == n) {
        if (buf_reserve(b, n + 2)) return;
        char *d = b->p + b->len;
        d[0] = '"';
        memcpy(d + 1, s, n);
        d[n + 1] = '"';
        d[n + 2] = 0;
        b->len += n + 2;
        return;
    }
    buf_addc(b, '"');
    size_t run = 0;              /* start of the pending verbatim run */
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            continue;
        }
        size_t k = c < 0x80 ? 1 : utf8_len((const unsigned char *)s + i, n - i);
        if (k > 1) {
            i += k;
            continue;
        }
        buf_add(b, s + run, i - run);
        if (k == 0) buf_adds(b, "\xef\xbf\xbd");
        else if (c == '"') buf_adds(b, "\\\"");
        else if (c == '\\') buf_adds(b, "\\\\");
        else if (c == '\n') buf_adds(b, "\\n");
        else if (c == '\r') buf_adds(b, "\\r");
        else if (c == '\t') buf_adds(b, "\\t");
        else {
            char u[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
            buf_add(b, u, 6);
        }
        run = ++i;
    }
    buf_add(b, s + run, n - run);
    buf_addc(b, '"');
}

static void json_strs(Buf *b, Str s) { json_str(b, s.p, s.n); }
static void json_cstr(Buf *b, const char *s) { json_str(b, s, strlen(s)); }

/* A member's key (decoded if it had escapes) and its index, for sorting. */
typedef struct {
    Str key;
    uint32_t m;
} JsonKeyRef;

static int json_keyref_cmp(const void *a, const void *b) {
    const JsonKeyRef *x = a, *y = b;
    size_t n = x->key.n < y->key.n ? x->key.n : y->key.n;
    int c = memcmp(x->key.p, y->key.p, n);
    if (c) return c;
    if (x->key.n != y->key.n) return x->key.n < y->key.n ? -1 : 1;
    return x->m < y->m ? -1 : x->m > y->m;
}

/* Mark, for object `obj`, which members survive duplicate-key resolution:
 * keep[m] is 0 for every member whose key appears again later (the last
 * value wins, as in Python). Returns an owned array of one flag per member.
 * The keys are always sorted (by bytes, then member index), so equal keys
 * sit together and all but the last of each run are dropped: O(n log n) for
 * any size, plus one decode per escaped key. */
static unsigned char *json_obj_keep(const Json *j, uint32_t obj) {
    uint32_t n = j->t[obj].n;
    unsigned char *keep = xrealloc(NULL, n);
    memset(keep, 1, n);
    if (n < 2) return keep;
    JsonKeyRef *refs = xrealloc(NULL, n * sizeof *refs);
    Buf *dec = xrealloc(NULL, n * sizeof *dec);
    uint32_t i = obj + 1;
    for (uint32_t m = 0; m < n; m++) {
        dec[m] = (Buf){ 0 };
        if (j->t[i].esc) {
            json_unescape(j, i, &dec[m]);
            refs[m].key = buf_str(&dec[m]);
        } else {
            refs[m].key = (Str){ j->src + j->t[i].off, j->t[i].len };
        }
        refs[m].m = m;
        i = j->t[i + 1].next;
    }
    qsort(refs, n, sizeof *refs, json_keyref_cmp);
    for (uint32_t k = 0; k + 1 < n; k++)
        if (refs[k].key.n == refs[k + 1].key.n &&
            memcmp(refs[k].key.p, refs[k + 1].key.p, refs[k].key.n) == 0)
            keep[refs[k].m] = 0;
    for (uint32_t m = 0; m < n; m++) buf_free(&dec[m]);
    free(dec);
    free(refs);
    return keep;
}

/* Write token i (and its subtree) as compact JSON: strings re-escaped,
 * numbers verbatim, duplicate keys resolved. `skip`, if non-NULL, names an
 * object key to leave out at the top level (it is about to be replaced). */
static void json_write_skip(Buf *b, const Json *j, uint32_t i, const char *skip) {
    const JsonTok *t = &j->t[i];
    switch (t->type) {
    case JSON_STR: {
        if (!t->esc) {
            json_str(b, j->src + t->off, t->len);
            break;
        }
        Buf tmp = { 0 };
        json_unescape(j, i, &tmp);
        json_strs(b, buf_str(&tmp));
        buf_free(&tmp);
        break;
    }
    case JSON_ARR: {
        buf_addc(b, '[');
        uint32_t c = i + 1;
        for (uint32_t m = 0; m < t->n; m++) {
            if (m) buf_addc(b, ',');
            json_write_skip(b, j, c, NULL);
            c = j->t[c].next;
        }
        buf_addc(b, ']');
        break;
    }
    case JSON_OBJ: {
        unsigned char *keep = json_obj_keep(j, i);
        int first = 1;
        buf_addc(b, '{');
        uint32_t c = i + 1;
        for (uint32_t m = 0; m < t->n; m++) {
            if (keep[m] && !(skip && json_str_is(j, c, str_c(skip)))) {
                if (!first) buf_addc(b, ',');
                first = 0;
                json_write_skip(b, j, c, NULL);
                buf_addc(b, ':');
                json_write_skip(b, j, c + 1, NULL);
            }
            c = j->t[c + 1].next;
        }
        free(keep);
        buf_addc(b, '}');
        break;
    }
    default:
        buf_add(b, j->src + t->off, t->len);
    }
}

static void json_write(Buf *b, const Json *j, uint32_t i) {
    json_write_skip(b, j, i, NULL);
}

/* The text Python's str() gives a value that the reference expects to be a
 * string: strings as themselves, true/false as True/False, null as None,
 * anything else as its compact JSON. */
static void json_as_text(Buf *b, const Json *j, uint32_t i) {
    switch (j->t[i].type) {
    case JSON_STR: json_unescape(j, i, b); break;
    case JSON_TRUE: buf_adds(b, "True"); break;
    case JSON_FALSE: buf_adds(b, "False"); break;
    case JSON_NULL: buf_adds(b, "None"); break;
    default: json_write(b, j, i);
    }
}

/* Length of Python's json.dumps(value) with its defaults (ASCII escapes,
 * ", " and ": " separators): the reference measures attachment size this
 * way (PROTOCOL §6), so we count the same. Numbers count as written. */
static size_t json_pylen(const Json *j, uint32_t i) {
    const JsonTok *t = &j->t[i];
    switch (t->type) {
    case JSON_STR: {
        Buf tmp = { 0 };
        json_unescape(j, i, &tmp);
        size_t len = 2;
        const unsigned char *s = (const unsigned char *)buf_cstr(&tmp);
        for (size_t k = 0; k < tmp.len;) {
            unsigned char c = s[k];
            if (c >= 0x80) {
                size_t q = utf8_len(s + k, tmp.len - k);
                len += q == 4 ? 12 : 6;
                k += q ? q : 1;
                continue;
            }
            if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' ||
                c == '\b' || c == '\f')
                len += 2;
            else if (c < 0x20 || c == 0x7f)
                len += 6;
            else
                len += 1;
            k++;
        }
        buf_free(&tmp);
        return len;
    }
    case JSON_ARR: case JSON_OBJ: {
        /* Python sees an object after duplicate keys collapsed. */
        unsigned char *keep = t->type == JSON_OBJ ? json_obj_keep(j, i) : NULL;
        size_t len = 2;
        int first = 1;
        uint32_t c = i + 1;
        for (uint32_t m = 0; m < t->n; m++) {
            uint32_t v = keep ? c + 1 : c;
            if (!keep || keep[m]) {
                len += first ? 0 : 2;
                first = 0;
                if (keep) len += json_pylen(j, c) + 2;
                len += json_pylen(j, v);
            }
            c = j->t[v].next;
        }
        free(keep);
        return len;
    }
    case JSON_TRUE: return 4;
    case JSON_FALSE: return 5;
    case JSON_NULL: return 4;
    default: return t->len;
    }
}

/* Nesting depth of the value at token i: 0 for a scalar, 1 for [] or {},
 * one more per level inside. The hub bounds what it stores by it
 * (ARC_MAX_STORED_DEPTH), so that every answer carrying a stored value
 * stays within ARC_JSON_DEPTH for its readers. */
static int json_depth(const Json *j, uint32_t i) {
    uint32_t ends[ARC_JSON_DEPTH + 1];   /* open containers' next indices */
    int n = 0, max = 0;
    for (uint32_t k = i; k < j->t[i].next; k++) {
        while (n && k >= ends[n - 1]) n--;
        if (j->t[k].type != JSON_ARR && j->t[k].type != JSON_OBJ) continue;
        assert(n <= ARC_JSON_DEPTH);
        ends[n++] = j->t[k].next;
        if (n > max) max = n;
    }
    return max;
}

/* ==== http: request parsing, query decoding, responses ==================== */

/* The parser never allocates and never keeps state between calls: the loop
 * hands it everything received so far, and it either finds a complete head
 * (returns its length), asks for more (ARC_AGAIN), or rejects the request
 * (ARC_BAD, with the status and message to answer with). Re-parsing a short
 * head on each read is cheaper than keeping a resumable state machine, and
 * heads are capped at ARC_MAX_HEAD. Bare LF line ends are accepted. */
typedef struct {
    Str method, target, path, query;  /* borrowed from the input buffer */
    int minor;                        /* 0 or 1: HTTP/1.minor */
    int64_t content_length;           /* -1 when absent */
    unsigned keep_alive : 1;          /* connection may serve another request */
    unsigned transfer_encoding : 1;   /* body framing we refuse (chunked) */
    unsigned has_host : 1;            /* a Host header was sent ... */
    unsigned dup_host : 1;            /* ... more than once (PROTOCOL §2.2) */
    unsigned dup_origin : 1;          /* Origin sent more than once (§2.3) */
    unsigned dup_site : 1;            /* Sec-Fetch-Site sent more than once */
    unsigned expect_continue : 1;     /* Expect: 100-continue (§4.2) */
    Str host, origin, last_event_id, sec_fetch_site, authorization;
    int n_headers;
    int err_status;                   /* with ARC_BAD: status to answer */
    const char *err_msg;              /* with ARC_BAD: static text */
    int head_len;                     /* http_frame: the head's bytes, 0
                                         while it is incomplete */
    Str body;                         /* http_frame: borrowed, after the head */
    /* MCP over HTTP (/mcp, docs/MCP.md): Mcp-Session-Id, MCP-Protocol-Version,
     * Mcp-Method, Mcp-Name, X-Arc-Agent and Accept; empty when absent. */
    Str mcp_session, mcp_version, mcp_method, mcp_name, arc_agent, accept;
} HttpReq;

static int http_bad(HttpReq *r, int status, const char *msg) {
    r->err_status = status;
    r->err_msg = msg;
    return ARC_BAD;
}

static int http_tchar(unsigned char c) {
    return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Find the end of the line starting at p[i]: index of its '\n' or -1. */
static long http_eol(const char *p, size_t n, size_t i) {
    const char *nl = memchr(p + i, '\n', n - i);
    return nl ? (long)(nl - p) : -1;
}

static Str http_line(const char *p, size_t from, size_t nl) {
    size_t end = nl;
    if (end > from && p[end - 1] == '\r') end--;
    return (Str){ p + from, end - from };
}

static int http_parse_request_line(Str line, HttpReq *r) {
    const char *sp1 = memchr(line.p, ' ', line.n);
    if (!sp1) return http_bad(r, 400, "malformed request line");
    r->method = (Str){ line.p, (size_t)(sp1 - line.p) };
    Str rest = { sp1 + 1, line.n - r->method.n - 1 };
    const char *sp2 = memchr(rest.p, ' ', rest.n);
    if (!sp2 || r->method.n == 0) return http_bad(r, 400, "malformed request line");
    for (size_t i = 0; i < r->method.n; i++)
        if (!http_tchar((unsigned char)r->method.p[i]))
            return http_bad(r, 400, "malformed request method");
    r->target = (Str){ rest.p, (size_t)(sp2 - rest.p) };
    Str ver = { sp2 + 1, rest.n - r->target.n - 1 };
    if (str_eq(ver, "HTTP/1.1")) r->minor = 1;
    else if (str_eq(ver, "HTTP/1.0")) r->minor = 0;
    else if (ver.n == 8 && memcmp(ver.p, "HTTP/", 5) == 0)
        return http_bad(r, 505, "HTTP version not supported");
    else return http_bad(r, 400, "malformed request line");
    if (r->target.n == 0 || r->target.p[0] != '/')
        return http_bad(r, 400, "request target must start with '/'");
    for (size_t i = 0; i < r->target.n; i++) {
        unsigned char c = (unsigned char)r->target.p[i];
        if (c <= 0x20 || c >= 0x7f)
            return http_bad(r, 400, "request target has invalid characters");
    }
    const char *q = memchr(r->target.p, '?', r->target.n);
    r->path = (Str){ r->target.p, q ? (size_t)(q - r->target.p) : r->target.n };
    r->query = q ? (Str){ q + 1, r->target.n - r->path.n - 1 } : (Str){ "", 0 };
    r->keep_alive = r->minor == 1;
    return 0;
}

/* Is `tok` one of the comma-separated tokens of header value v? */
static int http_has_token(Str v, const char *tok) {
    while (v.n) {
        const char *c = memchr(v.p, ',', v.n);
        Str part = { v.p, c ? (size_t)(c - v.p) : v.n };
        if (str_ieq(str_trim(part), tok)) return 1;
        if (!c) break;
        v.n -= part.n + 1;
        v.p = c + 1;
    }
    return 0;
}

static int http_header(HttpReq *r, Str line) {
    const char *colon = memchr(line.p, ':', line.n);
    if (!colon || colon == line.p) return http_bad(r, 400, "malformed header line");
    Str name = { line.p, (size_t)(colon - line.p) };
    for (size_t i = 0; i < name.n; i++)
        if (!http_tchar((unsigned char)name.p[i]))
            return http_bad(r, 400, "malformed header name");
    Str v = str_trim((Str){ colon + 1, line.n - name.n - 1 });
    for (size_t i = 0; i < v.n; i++)
        if (((unsigned char)v.p[i] < 0x20 && v.p[i] != '\t') || v.p[i] == 0x7f)
            return http_bad(r, 400, "control character in header value");
    if (str_ieq(name, "content-length")) {
        int64_t n;
        if (v.n == 0 || v.n > 15) return http_bad(r, 400, "invalid Content-Length");
        for (size_t i = 0; i < v.n; i++)
            if (!isdigit((unsigned char)v.p[i]))
                return http_bad(r, 400, "invalid Content-Length");
        parse_int_text(v, &n);
        if (r->content_length >= 0 && r->content_length != n)
            return http_bad(r, 400, "conflicting Content-Length headers");
        r->content_length = n;
    } else if (str_ieq(name, "transfer-encoding")) {
        r->transfer_encoding = 1;
    } else if (str_ieq(name, "connection")) {
        if (http_has_token(v, "close")) r->keep_alive = 0;
        else if (http_has_token(v, "keep-alive")) r->keep_alive = 1;
    } else if (str_ieq(name, "host")) {
        if (r->has_host) r->dup_host = 1;
        r->has_host = 1;
        r->host = v;
    } else if (str_ieq(name, "origin")) {
        if (r->origin.p) r->dup_origin = 1;   /* which one would count? */
        r->origin = v;
    } else if (str_ieq(name, "last-event-id")) {
        r->last_event_id = v;
    } else if (str_ieq(name, "sec-fetch-site")) {
        if (r->sec_fetch_site.p) r->dup_site = 1;
        r->sec_fetch_site = v;
    } else if (str_ieq(name, "expect")) {
        r->expect_continue = str_ieq(v, "100-continue") != 0;
    } else if (str_ieq(name, "authorization")) {
        r->authorization = v;
    } else if (str_ieq(name, "mcp-session-id")) {
        r->mcp_session = v;
    } else if (str_ieq(name, "mcp-protocol-version")) {
        r->mcp_version = v;
    } else if (str_ieq(name, "mcp-method")) {
        r->mcp_method = v;
    } else if (str_ieq(name, "mcp-name")) {
        r->mcp_name = v;
    } else if (str_ieq(name, "x-arc-agent")) {
        r->arc_agent = v;
    } else if (str_ieq(name, "accept")) {
        r->accept = v;
    }
    return 0;
}

/* Parse the head of one request at p[0..n). Returns the head's length in
 * bytes (the body, if any, follows), ARC_AGAIN, or ARC_BAD. */
static int http_parse(const char *p, size_t n, HttpReq *r) {
    *r = (HttpReq){ .content_length = -1 };
    size_t i = 0;
    while (i < n && (p[i] == '\r' || p[i] == '\n')) i++;  /* RFC 9112 §2.2 */
    long nl = http_eol(p, n, i);
    if (nl < 0) {
        if (n - i > ARC_MAX_URL) return http_bad(r, 414, "request line too long");
        if (n > ARC_MAX_HEAD) return http_bad(r, 431, "request head too large");
        return ARC_AGAIN;
    }
    if ((size_t)nl - i > ARC_MAX_URL) return http_bad(r, 414, "request line too long");
    Str line = http_line(p, i, (size_t)nl);
    /* Find the blank line that ends the head before judging anything else,
     * so that a complete but invalid head is answered only once it is all
     * here and its length is known. */
    size_t pos = (size_t)nl + 1, head_end = 0;
    int lines = 0;
    for (;;) {
        long e = http_eol(p, n, pos);
        if (e < 0) {
            if (n > ARC_MAX_HEAD) return http_bad(r, 431, "request head too large");
            return ARC_AGAIN;
        }
        Str h = http_line(p, pos, (size_t)e);
        pos = (size_t)e + 1;
        if (h.n == 0) {
            head_end = pos;
            break;
        }
        if (++lines > ARC_MAX_HEADERS)
            return http_bad(r, 431, "too many header lines");
        if (pos > ARC_MAX_HEAD) return http_bad(r, 431, "request head too large");
    }
    if (head_end > ARC_MAX_HEAD) return http_bad(r, 431, "request head too large");
    if (http_parse_request_line(line, r)) return ARC_BAD;
    pos = (size_t)nl + 1;
    while (pos < head_end) {
        long e = http_eol(p, n, pos);
        Str h = http_line(p, pos, (size_t)e);
        pos = (size_t)e + 1;
        if (h.n == 0) break;
        if (h.p[0] == ' ' || h.p[0] == '\t')
            return http_bad(r, 400, "obsolete header line folding");
        if (http_header(r, h)) return ARC_BAD;
        r->n_headers++;
    }
    if (r->transfer_encoding)
        return http_bad(r, 411, "Transfer-Encoding (chunked) request bodies "
                                "are not supported; send Content-Length");
    return (int)head_end;
}

/* Frame one request, head and body, at p[0..n), the way a connection's
 * input is read: a Content-Length over max_body is refused before the body
 * arrives (PROTOCOL §4). Returns the bytes the whole request takes (its
 * head, parsed into r, then r->body); ARC_AGAIN while it is incomplete,
 * r->head_len telling whether the head is (0: not yet); or ARC_BAD with
 * r->err_status and r->err_msg, after which the connection closes. */
static int64_t http_frame(const char *p, size_t n, int64_t max_body, HttpReq *r) {
    int head = http_parse(p, n, r);
    if (head < 0) return head;   /* ARC_AGAIN (head_len 0) or ARC_BAD */
    int64_t cl = r->content_length < 0 ? 0 : r->content_length;
    if (cl > max_body) return http_bad(r, 400, "request body exceeds max size");
    r->head_len = head;
    if ((uint64_t)cl > n - (size_t)head) return ARC_AGAIN;
    r->body = (Str){ p + head, (size_t)cl };
    return head + cl;
}

static int http_hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decode s into out (appending). `plus` turns '+' into a space, as
 * in query strings. A '%' not followed by two hex digits stays as it is.
 * Returns 0, or -1 when the result is not valid UTF-8. */
static int http_unquote(Str s, int plus, Buf *out) {
    size_t start = out->len;
    for (size_t i = 0; i < s.n; i++) {
        char c = s.p[i];
        if (c == '%' && i + 2 < s.n && http_hexval(s.p[i + 1]) >= 0 &&
            http_hexval(s.p[i + 2]) >= 0) {
            buf_addc(out, (char)(http_hexval(s.p[i + 1]) * 16 +
                                 http_hexval(s.p[i + 2])));
            i += 2;
        } else {
            buf_addc(out, plus && c == '+' ? ' ' : c);
        }
    }
    return utf8_valid(buf_cstr(out) + start, out->len - start) ? 0 : -1;
}

/* Find query parameter `name` and decode its first non-empty value into out
 * (reset first). Empty values count as absent, as with Python's parse_qs.
 * Returns 1 found, 0 absent, -1 not valid UTF-8. */
static int http_query_get(Str q, const char *name, Buf *out) {
    Buf key = { 0 };
    int rc = 0;
    while (q.n && rc == 0) {
        const char *amp = memchr(q.p, '&', q.n);
        Str part = { q.p, amp ? (size_t)(amp - q.p) : q.n };
        q.p += part.n + (amp ? 1 : 0);
        q.n -= part.n + (amp ? 1 : 0);
        const char *eq = memchr(part.p, '=', part.n);
        if (!eq || eq == part.p + part.n - 1) continue;
        buf_reset(&key);
        if (http_unquote((Str){ part.p, (size_t)(eq - part.p) }, 1, &key))
            continue;
        if (strcmp(buf_cstr(&key), name) != 0) continue;
        buf_reset(out);
        rc = http_unquote((Str){ eq + 1, part.n - (size_t)(eq - part.p) - 1 },
                          1, out) ? -1 : 1;
    }
    buf_free(&key);
    return rc;
}

static const char *http_reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* Append a response head. `len` < 0 means no Content-Length (a stream that
 * ends when the connection closes). `extra` is zero or more complete
 * "Name: value\r\n" lines. */
static void http_head(Buf *out, int status, const char *ctype, long long len,
                      int keep_alive, const char *extra) {
    buf_adds(out, "HTTP/1.1 ");
    buf_add_i64(out, status);
    buf_addc(out, ' ');
    buf_adds(out, http_reason(status));
    buf_adds(out, "\r\nContent-Type: ");
    buf_adds(out, ctype);
    if (len >= 0) {
        buf_adds(out, "\r\nContent-Length: ");
        buf_add_i64(out, len);
    }
    buf_adds(out, "\r\n");
    buf_adds(out, keep_alive ? "Connection: keep-alive\r\n"
                             : "Connection: close\r\n");
    if (extra) buf_adds(out, extra);
    buf_adds(out, "\r\n");
}

/* ---- responses, as the client reads them ---- */

/* How a response's body ends (RFC 9112 §6.3). */
typedef enum {
    HTTP_BODY_LENGTH,    /* content_length bytes (none for 1xx, 204, 304) */
    HTTP_BODY_CHUNKED,   /* Transfer-Encoding ending in chunked */
    HTTP_BODY_CLOSE      /* everything until the server closes (an SSE
                          * stream, or a head with no framing at all) */
} HttpBody;

/* A response head, from http_parse_response(). The contract is the request
 * parser's: no allocation, no state between calls, (p, n) in, bytes
 * consumed, ARC_AGAIN or ARC_BAD out, heads capped at ARC_MAX_HEAD bytes
 * and ARC_MAX_HEADERS lines. Stricter than the request side where leniency
 * buys nothing: no leading blank lines, and Content-Length next to
 * Transfer-Encoding is refused (response splitting, RFC 9112 §6.3). */
typedef struct {
    int minor;                 /* 0 or 1: HTTP/1.minor */
    int status;                /* 100..599 */
    Str reason;                /* borrowed from the input; may be empty */
    Str content_type;          /* borrowed; empty when absent */
    HttpBody body;
    int64_t content_length;    /* with HTTP_BODY_LENGTH; -1 otherwise */
    unsigned close : 1;        /* the connection ends after this response */
    int n_headers;
    const char *err_msg;       /* with ARC_BAD: static text */
} HttpResp;

static int http_resp_bad(HttpResp *r, const char *msg) {
    r->err_msg = msg;
    return ARC_BAD;
}

/* "HTTP/1.x SSS reason" (the reason and the space before it may be
 * missing). Returns 0 or ARC_BAD. */
static int http_status_line(Str l, HttpResp *r) {
    if (l.n < 12 || memcmp(l.p, "HTTP/1.", 7) != 0 || l.p[8] != ' ' ||
        (l.n > 12 && l.p[12] != ' '))
        return http_resp_bad(r, "malformed status line");
    if (l.p[7] != '0' && l.p[7] != '1')
        return http_resp_bad(r, "HTTP version not supported");
    r->minor = l.p[7] - '0';
    for (int i = 9; i < 12; i++) {
        if (!isdigit((unsigned char)l.p[i]))
            return http_resp_bad(r, "malformed status code");
        r->status = r->status * 10 + (l.p[i] - '0');
    }
    if (r->status < 100 || r->status > 599)
        return http_resp_bad(r, "malformed status code");
    r->reason = l.n > 13 ? (Str){ l.p + 13, l.n - 13 } : (Str){ "", 0 };
    for (size_t i = 0; i < r->reason.n; i++) {
        unsigned char c = (unsigned char)r->reason.p[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return http_resp_bad(r, "control character in reason phrase");
    }
    return 0;
}

/* Is the last comma-separated token of v `tok`? (Transfer-Encoding: only
 * a final chunked frames the body, RFC 9112 §6.3.) */
static int http_last_token(Str v, const char *tok) {
    size_t i = v.n;
    while (i > 0 && v.p[i - 1] != ',') i--;
    return str_ieq(str_trim((Str){ v.p + i, v.n - i }), tok);
}

/* One header line of a response. Returns 0 or ARC_BAD. *te, *chunked and
 * *keep collect Transfer-Encoding and the connection's fate for the
 * caller; *keep: 1 kept alive, 0 closed by default (HTTP/1.0), -1 closed
 * by a Connection: close, which no later header undoes. */
static int http_resp_header(HttpResp *r, Str line, int *te, int *chunked,
                            int *keep) {
    if (line.p[0] == ' ' || line.p[0] == '\t')
        return http_resp_bad(r, "obsolete header line folding");
    const char *colon = memchr(line.p, ':', line.n);
    if (!colon || colon == line.p) return http_resp_bad(r, "malformed header line");
    Str name = { line.p, (size_t)(colon - line.p) };
    for (size_t i = 0; i < name.n; i++)
        if (!http_tchar((unsigned char)name.p[i]))
            return http_resp_bad(r, "malformed header name");
    Str v = str_trim((Str){ colon + 1, line.n - name.n - 1 });
    for (size_t i = 0; i < v.n; i++)
        if (((unsigned char)v.p[i] < 0x20 && v.p[i] != '\t') || v.p[i] == 0x7f)
            return http_resp_bad(r, "control character in header value");
    if (str_ieq(name, "content-length")) {
        int64_t n = 0;
        if (v.n == 0 || v.n > 15) return http_resp_bad(r, "invalid Content-Length");
        for (size_t i = 0; i < v.n; i++) {
            if (!isdigit((unsigned char)v.p[i]))
                return http_resp_bad(r, "invalid Content-Length");
            n = n * 10 + (v.p[i] - '0');
        }
        if (r->content_length >= 0 && r->content_length != n)
            return http_resp_bad(r, "conflicting Content-Length headers");
        r->content_length = n;
    } else if (str_ieq(name, "transfer-encoding")) {
        *te = 1;
        *chunked = http_last_token(v, "chunked");   /* the last one counts */
    } else if (str_ieq(name, "connection")) {
        if (http_has_token(v, "close")) *keep = -1;          /* sticky */
        else if (http_has_token(v, "keep-alive") && *keep == 0) *keep = 1;
    } else if (str_ieq(name, "content-type")) {
        r->content_type = v;
    }
    return 0;
}

/* Parse the head of one response at p[0..n) (the client side of
 * http_parse()). Returns the head's length in bytes (the body, framed as
 * r->body says, follows), ARC_AGAIN, or ARC_BAD with r->err_msg. A head
 * is judged once complete, except that bytes which cannot begin a status
 * line are refused at once: a peer that is not an HTTP hub fails fast. */
static int http_parse_response(const char *p, size_t n, HttpResp *r) {
    *r = (HttpResp){ .content_length = -1, .reason = { "", 0 },
                     .content_type = { "", 0 } };
    if (n == 0) return ARC_AGAIN;         /* p may be NULL (an empty Buf) */
    if (memcmp(p, "HTTP/1.", n < 7 ? n : 7) != 0)
        return http_resp_bad(r, "not an HTTP/1.x response");
    size_t pos = 0, head_end = 0;
    int lines = -1;                       /* the status line is not a header */
    for (;;) {
        long e = http_eol(p, n, pos);
        if (e < 0) {
            if (n > ARC_MAX_HEAD) return http_resp_bad(r, "response head too large");
            return ARC_AGAIN;
        }
        Str h = http_line(p, pos, (size_t)e);
        pos = (size_t)e + 1;
        if (pos > ARC_MAX_HEAD) return http_resp_bad(r, "response head too large");
        if (h.n == 0 && lines >= 0) {
            head_end = pos;
            break;
        }
        if (++lines > ARC_MAX_HEADERS)
            return http_resp_bad(r, "too many header lines");
    }
    long e = http_eol(p, n, 0);
    if (http_status_line(http_line(p, 0, (size_t)e), r)) return ARC_BAD;
    int te = 0, chunked = 0, keep = r->minor == 1;
    pos = (size_t)e + 1;
    while (pos < head_end) {
        e = http_eol(p, n, pos);
        Str h = http_line(p, pos, (size_t)e);
        pos = (size_t)e + 1;
        if (h.n == 0) break;
        if (http_resp_header(r, h, &te, &chunked, &keep)) return ARC_BAD;
        r->n_headers++;
    }
    if (te && r->content_length >= 0)
        return http_resp_bad(r, "both Transfer-Encoding and Content-Length");
    if (r->status < 200 || r->status == 204 || r->status == 304) {
        r->body = HTTP_BODY_LENGTH;       /* never a body (RFC 9110 §6.4.1) */
        r->content_length = 0;
    } else if (te) {
        r->body = chunked ? HTTP_BODY_CHUNKED : HTTP_BODY_CLOSE;
        r->content_length = -1;
    } else {
        r->body = r->content_length >= 0 ? HTTP_BODY_LENGTH : HTTP_BODY_CLOSE;
    }
    r->close = keep <= 0 || r->body == HTTP_BODY_CLOSE;
    return (int)head_end;
}

/* ==== store: schema, statements, transactions, row emitters =============== */

/* The schema is the reference's (PROTOCOL §10), index names included, so a
 * file written by either hub is served by the other without migration. JSON
 * columns hold serialized text; the API returns them decoded. */
static const char store_schema[] =
    "CREATE TABLE IF NOT EXISTS channels(name TEXT PRIMARY KEY,"
    " created_at TEXT NOT NULL, created_by TEXT,"
    " metadata_json TEXT NOT NULL DEFAULT '{}');"
    "CREATE TABLE IF NOT EXISTS messages(id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " ts TEXT NOT NULL, from_agent TEXT NOT NULL, to_agent TEXT,"
    " channel TEXT NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,"
    " attachments_json TEXT NOT NULL DEFAULT '[]', reply_to INTEGER,"
    " thread_id TEXT, metadata_json TEXT NOT NULL DEFAULT '{}');"
    "CREATE INDEX IF NOT EXISTS ix_m_ch ON messages(channel,id);"
    "CREATE INDEX IF NOT EXISTS ix_m_to ON messages(to_agent,id);"
    "CREATE INDEX IF NOT EXISTS ix_m_th ON messages(thread_id,id);"
    "CREATE TABLE IF NOT EXISTS sessions(session_id TEXT PRIMARY KEY,"
    " agent_id TEXT NOT NULL, display_name TEXT NOT NULL,"
    " capabilities_json TEXT NOT NULL DEFAULT '[]',"
    " metadata_json TEXT NOT NULL DEFAULT '{}', created_at TEXT NOT NULL,"
    " last_seen TEXT NOT NULL, active INTEGER NOT NULL DEFAULT 1);"
    "CREATE INDEX IF NOT EXISTS ix_s_ag ON sessions(agent_id);"
    "CREATE INDEX IF NOT EXISTS ix_s_ac ON sessions(active,last_seen);"
    "CREATE TABLE IF NOT EXISTS claims(claim_key TEXT PRIMARY KEY,"
    " thread_id TEXT, task_message_id INTEGER, owner_agent_id TEXT NOT NULL,"
    " claimed_at TEXT NOT NULL, expires_at TEXT NOT NULL, released_at TEXT,"
    " metadata_json TEXT NOT NULL DEFAULT '{}');"
    "CREATE INDEX IF NOT EXISTS ix_c_th ON claims(thread_id);"
    "CREATE TABLE IF NOT EXISTS locks(file_path TEXT PRIMARY KEY,"
    " agent_id TEXT NOT NULL, locked_at TEXT NOT NULL,"
    " expires_at TEXT NOT NULL, released_at TEXT,"
    " metadata_json TEXT NOT NULL DEFAULT '{}');"
    "CREATE INDEX IF NOT EXISTS ix_l_ag ON locks(agent_id);"
    "CREATE TABLE IF NOT EXISTS tasks(task_id INTEGER PRIMARY KEY,"
    " parent_task_id INTEGER, channel TEXT NOT NULL, thread_id TEXT,"
    " status TEXT NOT NULL DEFAULT 'open', created_at TEXT NOT NULL,"
    " completed_at TEXT, FOREIGN KEY(parent_task_id) REFERENCES tasks(task_id));"
    "CREATE INDEX IF NOT EXISTS ix_t_par ON tasks(parent_task_id);"
    "CREATE INDEX IF NOT EXISTS ix_t_st ON tasks(status);"
    /* arc's own, beside the reference's tables (PROTOCOL §10.7): indexes
     * the reference's queries ignore, and the thread summary with its
     * watermark. No triggers: the reference writes these tables too. */
    "CREATE INDEX IF NOT EXISTS ix_arc_m_chto ON messages(channel,to_agent,id);"
    "CREATE INDEX IF NOT EXISTS ix_arc_t_th ON tasks(thread_id,parent_task_id,"
    "status,channel);"
    "CREATE INDEX IF NOT EXISTS ix_arc_c_own ON claims(owner_agent_id)"
    " WHERE released_at IS NULL;"
    "CREATE TABLE IF NOT EXISTS arc_thread_msgs(thread_id TEXT PRIMARY KEY,"
    " n INTEGER NOT NULL, first_channel TEXT, latest_id INTEGER NOT NULL,"
    " latest_ts TEXT, latest_artifact INTEGER) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS arc_folds(name TEXT PRIMARY KEY,"
    " upto INTEGER NOT NULL);"
    "INSERT OR IGNORE INTO arc_folds VALUES('thread_msgs',0);";

/* Shared memory (PROTOCOL §13): arc's own tables beside the reference's,
 * which never reads them. arc_kv holds one row per key ever written, a
 * deleted key as a tombstone (deleted 1, value NULL) so that its version
 * keeps counting; arc_kv_history holds every write, put or delete. */
static const char store_schema_kv[] =
    "CREATE TABLE IF NOT EXISTS arc_kv(key TEXT PRIMARY KEY,"
    " version INTEGER NOT NULL, type TEXT NOT NULL, value_json TEXT,"
    " deleted INTEGER NOT NULL DEFAULT 0, created_by TEXT NOT NULL,"
    " created_at TEXT NOT NULL, updated_by TEXT NOT NULL,"
    " updated_at TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS arc_kv_history(key TEXT NOT NULL,"
    " version INTEGER NOT NULL, op TEXT NOT NULL, type TEXT NOT NULL,"
    " value_json TEXT, agent_id TEXT NOT NULL, at TEXT NOT NULL,"
    " PRIMARY KEY(key, version)) WITHOUT ROWID;";

/* Extension tables of arc:task_deps (PROTOCOL §14), in the same file but
 * never touching the reference's tables: which tasks wait for which, filled
 * when arc stores a task and caught up from other processes' task messages
 * (metadata.blocked_by) up to the message id in arc_task_deps_mark. */
static const char store_schema_deps[] =
    "CREATE TABLE IF NOT EXISTS arc_task_deps(task_id INTEGER NOT NULL,"
    " blocker_id INTEGER NOT NULL, PRIMARY KEY(task_id,blocker_id))"
    " WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS arc_ix_td_blk ON arc_task_deps(blocker_id);"
    "CREATE TABLE IF NOT EXISTS arc_task_deps_mark(k INTEGER PRIMARY KEY"
    " CHECK(k=0), scanned_id INTEGER NOT NULL);";

/* Extension tables of arc:delivery (PROTOCOL §16), beside the reference's:
 * one row per message deliverable into an agent's turns (a DM, a request,
 * a mention, a reply, a notice about its claims or locks), filled when the
 * message is stored and caught up from other processes' messages up to
 * arc_delivery_mark. `via` is NULL while the message is owed and names the
 * path that surfaced it after; the partial indexes keep a take to the owed
 * rows and the Stop check to the requests. */
static const char store_schema_delivery[] =
    "CREATE TABLE IF NOT EXISTS arc_delivery(agent_id TEXT NOT NULL,"
    " message_id INTEGER NOT NULL, reason TEXT NOT NULL, via TEXT,"
    " surfaced_at TEXT, nudges INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY(agent_id,message_id)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS arc_ix_dl_owed ON arc_delivery(agent_id,"
    "message_id) WHERE via IS NULL;"
    "CREATE INDEX IF NOT EXISTS arc_ix_dl_req ON arc_delivery(agent_id,"
    "message_id) WHERE reason='request';"
    "CREATE TABLE IF NOT EXISTS arc_delivery_mark(k INTEGER PRIMARY KEY"
    " CHECK(k=0), scanned_id INTEGER NOT NULL);"
    /* A store that predates the extension owes nothing from before it. */
    "INSERT OR IGNORE INTO arc_delivery_mark"
    " SELECT 0,coalesce(max(id),0) FROM messages;";

/* Extension tables of arc:receipts (PROTOCOL §17), built on arc:delivery's
 * record: a receipt's recipients and its queued/surfaced states are the
 * arc_delivery rows of reasons dm, request and mention, so they are not
 * kept twice; arc_receipts adds what happens after (read, acked, answered)
 * in rows written only when one of those happens. arc_waiting holds what
 * still waits for an answer or an ack, so the unanswered list and the
 * escalation timer read a small table through an index, never the
 * messages. arc_presence is each agent's last reported state (§17.5). The
 * index on arc_delivery(message_id) finds a message's recipients. */
static const char store_schema_receipts[] =
    "CREATE TABLE IF NOT EXISTS arc_receipts(message_id INTEGER NOT NULL,"
    " agent_id TEXT NOT NULL, read_at TEXT, read_via TEXT, acked_at TEXT,"
    " answered_at TEXT, answered_by INTEGER,"
    " PRIMARY KEY(message_id,agent_id)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS arc_waiting(message_id INTEGER NOT NULL,"
    " agent_id TEXT NOT NULL, kind TEXT NOT NULL, since_at TEXT NOT NULL,"
    " escalated_at TEXT, PRIMARY KEY(message_id,agent_id)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS arc_ix_wait_due ON arc_waiting(since_at)"
    " WHERE escalated_at IS NULL;"
    "CREATE INDEX IF NOT EXISTS arc_ix_wait_ag ON arc_waiting(agent_id,since_at);"
    "CREATE INDEX IF NOT EXISTS arc_ix_dl_msg ON arc_delivery(message_id);"
    "CREATE TABLE IF NOT EXISTS arc_presence(agent_id TEXT PRIMARY KEY,"
    " state TEXT NOT NULL, since_at TEXT NOT NULL, seen_at TEXT NOT NULL,"
    " pid INTEGER, pid_start INTEGER) WITHOUT ROWID;";

/* Column lists in the order the row emitters read them. */
#define M_COLS "id,ts,from_agent,to_agent,channel,kind,body,attachments_json," \
               "reply_to,thread_id,metadata_json"
#define S_COLS "session_id,agent_id,display_name,capabilities_json," \
               "metadata_json,created_at,last_seen,active"
#define C_COLS "claim_key,thread_id,task_message_id,owner_agent_id," \
               "claimed_at,expires_at,released_at,metadata_json"
#define L_COLS "file_path,agent_id,locked_at,expires_at,released_at," \
               "metadata_json"
#define T_COLS "task_id,parent_task_id,channel,thread_id,status,created_at," \
               "completed_at"
#define CH_COLS "name,created_at,created_by,metadata_json"
#define KV_COLS "key,value_json,type,version,created_by,created_at," \
                "updated_by,updated_at"
#define KVH_COLS "key,version,op,type,value_json,agent_id,at"

#define STORE_MAX_STMTS 192

/* Prepared statements are cached by the address of their SQL text: every
 * query is a string literal, so the pointer is a cheap, unique key. */
typedef struct {
    const char *sql;       /* borrowed: a string literal */
    sqlite3_stmt *st;      /* owned */
} StoreStmt;

/* One rendered message in the store's cache (store_cache_get). */
typedef struct {
    int64_t id;
    char *json;            /* owned, NUL-terminated; NULL: empty slot */
    size_t len;
} StoreCached;

typedef struct {
    sqlite3 *db;                        /* owned; loop thread only */
    char path[PATH_MAX];                /* absolute, resolved */
    char instance_id[32];               /* "mh1-" + 20 hex, PROTOCOL §10 */
    char journal_mode[16];
    StoreStmt stmts[STORE_MAX_STMTS];
    int n_stmts;
    int in_tx;                          /* a batch transaction is open */
    int64_t data_version;               /* last PRAGMA data_version seen */
    Json scratch;                       /* reused to validate JSON columns */
    int busy;                           /* the last BEGIN found it locked */
    int64_t busy_budget_ms;             /* most blocking per turn on locks */
    int64_t busy_until_ms;              /* this turn's limit; 0 = not set */
    dev_t dev[2];                       /* the storage file and its -wal, */
    ino_t ino[2];                       /* to notice them removed or replaced */
    int files_watch;                    /* inotify on them, or -1 */
    int gone;                           /* they were: refuse every write */
    char err[256];                      /* why the last store call failed */
    StoreCached *cache;                 /* owned: ARC_MSG_CACHE_SLOTS, or NULL */
    size_t cache_bytes;                 /* JSON bytes the cache holds */
    int64_t cache_version;              /* data_version the cache is valid at */
    int64_t threads_gen;                /* changes to what a thread list
                                           reads, by this connection
                                           (store_update_hook) */
} Store;

/* A statement for `sql`, reset and with no bindings; NULL on failure (the
 * error is logged). */
static sqlite3_stmt *store_stmt(Store *s, const char *sql) {
    for (int i = 0; i < s->n_stmts; i++)
        if (s->stmts[i].sql == sql) {
            sqlite3_stmt *st = s->stmts[i].st;
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            return st;
        }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st,
                           NULL) != SQLITE_OK) {
        log_warn("store: prepare failed: %s: %s", sqlite3_errmsg(s->db), sql);
        return NULL;
    }
    if (s->n_stmts == STORE_MAX_STMTS) die("store: statement cache full");
    s->stmts[s->n_stmts++] = (StoreStmt){ sql, st };
    return st;
}

/* Bind a borrowed string, or NULL when s.p is NULL. */
static void store_bind(sqlite3_stmt *st, int i, Str s) {
    if (s.p) sqlite3_bind_text(st, i, s.p, (int)s.n, SQLITE_STATIC);
    else sqlite3_bind_null(st, i);
}

static void store_bind_c(sqlite3_stmt *st, int i, const char *s) {
    store_bind(st, i, str_c(s));
}

/* Run one statement with no results (BEGIN, SAVEPOINT, ...) through the
 * statement cache: these run on every request, and re-parsing them showed
 * up in profiles. Returns 0 or -1. */
static int store_exec(Store *s, const char *sql) {
    sqlite3_stmt *st = store_stmt(s, sql);
    if (!st) return -1;
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        log_warn("store: %s: %s", sql, sqlite3_errmsg(s->db));
        return -1;
    }
    return 0;
}

/* Step a write statement to completion. Returns 0 or -1. */
static int store_done(Store *s, sqlite3_stmt *st) {
    if (!st) return -1;
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        log_warn("store: %s", sqlite3_errmsg(s->db));
        return -1;
    }
    return 0;
}

/* Text column i as a Str (p == NULL for SQL NULL); valid until the next
 * step or reset of st. Through the column's value: one statement lookup
 * instead of two per column (the value is "unprotected", which only
 * matters to a connection shared between threads). */
static Str store_col(sqlite3_stmt *st, int i) {
    sqlite3_value *v = sqlite3_column_value(st, i);
    const char *p = (const char *)sqlite3_value_text(v);
    return (Str){ p, p ? (size_t)sqlite3_value_bytes(v) : 0 };
}

/* Is the file at `path` the one we opened (dev, ino)? */
static int store_same_file(const char *path, dev_t dev, ino_t ino) {
    struct stat sb;
    return stat(path, &sb) == 0 && sb.st_dev == dev && sb.st_ino == ino;
}

/* Remember which files the store has open, and on Linux watch them for
 * what removing or replacing them does to them: the link count drops
 * (IN_ATTRIB: an unlink, or a rename over the name) or they move. */
static void store_watch_files(Store *s) {
    const char *names[2] = { s->path, NULL };
    Buf wal = { 0 };
    buf_addf(&wal, "%s-wal", s->path);
    if (!strcmp(s->journal_mode, "wal")) names[1] = wal.p;
    struct stat sb;
    for (int i = 0; i < 2; i++)
        if (names[i] && stat(names[i], &sb) == 0) s->dev[i] = sb.st_dev, s->ino[i] = sb.st_ino;
#ifdef __linux__
    s->files_watch = inotify_init();
    for (int i = 0; i < 2 && s->files_watch >= 0; i++)
        if (s->ino[i] && inotify_add_watch(s->files_watch, names[i],
                                           IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF) < 0) {
            close(s->files_watch);
            s->files_watch = -1;
        }
    if (s->files_watch >= 0) {
        fd_nonblock(s->files_watch);
        fcntl(s->files_watch, F_SETFD, FD_CLOEXEC);
    }
#endif
    buf_free(&wal);
}

/* Before each write transaction: are the storage file and its -wal still
 * the files we have open? If someone removed or replaced them, SQLite
 * would go on writing into unlinked files that vanish when we close, so
 * every acknowledged write would be lost. Writes are refused from then on
 * (503); reads go on from what is open. With the inotify watch the files
 * are looked at only after an event. A stat() per write turn cost 12-15%
 * of POST throughput at 16 connections (make bench A/B): on Linux 6.13+
 * reading a file's timestamps makes the next write give it a fine-grained
 * new one (multigrain timestamps), so the fsync must write the inode too;
 * on ext4 here a 4 KiB write + fsync took ~100 us, ~170 us with an fstat
 * before each. */
static int store_check_files(Store *s) {
    if (!s->gone && s->files_watch >= 0) {
        char ev[4096];
        ssize_t n = read(s->files_watch, ev, sizeof ev);
        if (n <= 0) return 0;   /* nothing happened to them */
        while (read(s->files_watch, ev, sizeof ev) > 0) {}
    }
    char wal[PATH_MAX + 8];
    snprintf(wal, sizeof wal, "%s-wal", s->path);
    if (!s->gone && ((s->ino[0] && !store_same_file(s->path, s->dev[0], s->ino[0])) ||
                     (s->ino[1] && !store_same_file(wal, s->dev[1], s->ino[1]))))
        s->gone = 1;
    if (!s->gone) return 0;
    if (s->gone == 1) {
        log_warn("storage file %s (or its -wal) was removed or replaced while "
                 "in use; refusing writes until arc is restarted", s->path);
        s->gone = 2;
    }
    snprintf(s->err, sizeof s->err, "storage file was removed or replaced "
             "while the hub was running; restart the hub");
    return -1;
}

/* Busy handler: wait for another process's lock, but never block the loop
 * for more than busy_budget_ms in one turn, however many statements ask
 * (the loop resets busy_until_ms every turn). A write that finds the lock
 * taken is retried on later turns instead (PROTOCOL §10.2). */
static int store_on_busy(void *arg, int n) {
    Store *s = arg;
    int64_t now = clock_ms();
    (void)n;
    if (!s->busy_until_ms) s->busy_until_ms = now + s->busy_budget_ms;
    if (now >= s->busy_until_ms) return 0;
    struct timespec ts = { 0, 1000000 };   /* 1 ms */
    nanosleep(&ts, NULL);
    return 1;
}

/* Open the batch transaction if none is open. All writes of one loop turn
 * share it and are committed together by store_commit() (group commit);
 * their responses are sent only after that commit. On failure s->err says
 * why and s->busy whether the lock was taken by someone else. */
static int store_begin(Store *s) {
    if (s->in_tx) return 0;
    s->busy = 0;
    if (store_check_files(s)) return -1;
    if (store_exec(s, "BEGIN IMMEDIATE")) {
        s->busy = (sqlite3_errcode(s->db) & 0xff) == SQLITE_BUSY;
        snprintf(s->err, sizeof s->err, "%s", sqlite3_errmsg(s->db));
        return -1;
    }
    s->in_tx = 1;
    return 0;
}

/* Commit the batch. On failure s->err holds COMMIT's error (not that of
 * the ROLLBACK after it: SQLite may already have rolled back, on a full
 * disk for instance). */
static int store_commit(Store *s) {
    if (!s->in_tx) return 0;
    s->in_tx = 0;
    if (store_exec(s, "COMMIT") == 0) return 0;
    snprintf(s->err, sizeof s->err, "%s", sqlite3_errmsg(s->db));
    if (!sqlite3_get_autocommit(s->db)) store_exec(s, "ROLLBACK");
    return -1;
}

/* Is the batch transaction open? Rows read while it is may show writes
 * that are not committed yet. */
static int store_in_tx(const Store *s) { return s->in_tx; }

/* A new loop turn: a fresh budget for lock waits (store_on_busy). */
static void store_turn_begin(Store *s) { s->busy_until_ms = 0; }

/* A stored JSON column, or `dflt` when the stored text is not valid JSON
 * (a foreign writer could have put anything there). */
static Str store_json_or(Store *s, Str v, const char *dflt) {
    if (v.n == 2 && (str_eq(v, "{}") || str_eq(v, "[]"))) return v;
    if (v.p && v.n && json_parse(&s->scratch, v.p, v.n) == 0) return v;
    return str_c(dflt);
}

/* Emit a stored JSON column, or `dflt` (store_json_or). */
static void store_emit_json(Store *s, Buf *b, Str v, const char *dflt) {
    buf_addstr(b, store_json_or(s, v, dflt));
}

static void store_emit_text(Buf *b, Str v) {
    if (v.p) json_strs(b, v);
    else buf_adds(b, "null");
}

static void store_emit_int(Buf *b, sqlite3_stmt *st, int i) {
    sqlite3_value *v = sqlite3_column_value(st, i);
    if (sqlite3_value_type(v) == SQLITE_NULL) buf_adds(b, "null");
    else buf_add_i64(b, sqlite3_value_int64(v));
}

static int64_t store_data_version(Store *s) {
    sqlite3_stmt *st = store_stmt(s, "PRAGMA data_version");
    int64_t v = -1;
    if (st && sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
    if (st) sqlite3_reset(st);
    return v;
}

/* Did another process commit since the last call (PROTOCOL §8.2)? */
static int store_foreign_commit(Store *s) {
    int64_t v = store_data_version(s);
    int changed = v != s->data_version;
    s->data_version = v;
    return changed;
}

/* ---- rendered messages: a cache of their JSON ---- */

/* Rendering rows as JSON was most of the work of a GET /v1/messages page,
 * and readers mostly ask for the same recent messages. arc never changes a
 * committed message: it inserts messages and never updates or deletes one
 * (keep it so, or flush the cache there), and AUTOINCREMENT never reuses
 * an id. So a message's JSON is cached by id, direct-mapped, under rules
 * that keep it exact:
 *  - only committed rows go in: the turn's new messages once their commit
 *    succeeded (the very JSON their POST answered with), and rows read while
 *    no transaction is open; a failed commit flushes it all anyway;
 *  - another process may change rows (the reference hub rewrites a new
 *    task_result's metadata in a second transaction). Any commit by another
 *    connection changes PRAGMA data_version, which each query reads inside
 *    its own snapshot (store_cache_sync), flushing the cache if it moved;
 *  - memory is bounded: ARC_MSG_CACHE_BYTES in all (flushed when full),
 *    nothing over ARC_MSG_CACHE_ENTRY, nothing allocated before first use;
 *  - storage removed or replaced under the hub (store_check_files) needs
 *    nothing here: writes are refused from then on, and reads go on from
 *    the files still open, which is what the cache holds. */
static void store_cache_flush(Store *s) {
    if (!s->cache) return;
    for (int i = 0; i < ARC_MSG_CACHE_SLOTS; i++) {
        free(s->cache[i].json);
        s->cache[i].json = NULL;
    }
    s->cache_bytes = 0;
}

static void store_cache_put(Store *s, int64_t id, const char *json, size_t len) {
    if (len > ARC_MSG_CACHE_ENTRY) return;
    if (!s->cache) {
        s->cache = xrealloc(NULL, ARC_MSG_CACHE_SLOTS * sizeof *s->cache);
        memset(s->cache, 0, ARC_MSG_CACHE_SLOTS * sizeof *s->cache);
    }
    StoreCached *c = &s->cache[(uint64_t)id % ARC_MSG_CACHE_SLOTS];
    if (c->json && c->id == id) return;
    if (s->cache_bytes + len > ARC_MSG_CACHE_BYTES) store_cache_flush(s);
    if (c->json) s->cache_bytes -= c->len;
    free(c->json);
    c->json = xstrndup(json, len);
    c->id = id;
    c->len = len;
    s->cache_bytes += len;
    assert(s->cache_bytes <= ARC_MSG_CACHE_BYTES);
}

static const StoreCached *store_cache_get(const Store *s, int64_t id) {
    if (!s->cache) return NULL;
    const StoreCached *c = &s->cache[(uint64_t)id % ARC_MSG_CACHE_SLOTS];
    /* An entry sits in its id's slot and is no larger than an entry may be. */
    assert(!c->json || ((uint64_t)c->id % ARC_MSG_CACHE_SLOTS ==
                        (uint64_t)id % ARC_MSG_CACHE_SLOTS &&
                        c->len <= ARC_MSG_CACHE_ENTRY && c->len <= s->cache_bytes));
    return c->json && c->id == id ? c : NULL;
}

/* Call once per query that renders messages, after its first step (so
 * inside its read snapshot): drop the cache if another connection has
 * committed since it was last valid. */
static void store_cache_sync(Store *s) {
    int64_t v = store_data_version(s);
    if (v == s->cache_version) return;
    store_cache_flush(s);
    s->cache_version = v;
}

/* Count the row changes this connection makes that a thread list
 * (PROTOCOL §7.15) depends on: to messages, tasks, claims and locks. The
 * hub's cached list is valid while the count stands (hub_threads_fresh);
 * other connections' commits are seen through PRAGMA data_version. A
 * change rolled back later still counts, which only costs a rebuild. */
static void store_update_hook(void *arg, int op, const char *db, const char *table,
                              sqlite3_int64 rowid) {
    (void)op, (void)db, (void)rowid;
    Store *s = arg;
    switch (table[0]) {   /* first letters: not a strcmp per row for others */
    case 'm': if (!strcmp(table, "messages")) s->threads_gen++; break;
    case 't': if (!strcmp(table, "tasks")) s->threads_gen++; break;
    case 'c': if (!strcmp(table, "claims")) s->threads_gen++; break;
    case 'l': if (!strcmp(table, "locks")) s->threads_gen++; break;
    default: break;
    }
}

/* ---- the thread summary: messages folded per thread ---- */

/* GET /v1/threads used to aggregate every message of every thread on each
 * call (9 s for 200,000 messages). arc_thread_msgs holds, per thread, what
 * its messages contribute to a summary (PROTOCOL §5.7): their count, the
 * first one's channel, the latest id and ts, the latest artifact. Those
 * come only from columns no hub ever changes (the reference rewrites only
 * metadata_json) of rows nobody deletes, and ids commit in increasing
 * order (one writer at a time, AUTOINCREMENT), so the table is exact for
 * every message up to a watermark, arc_folds.upto, and a reader adds the
 * messages above it (store_fold_upto, in the same snapshot). arc folds in
 * the write transaction of each insert, and in chunks after start and on
 * the prune tick for rows other processes wrote (PROTOCOL §10.7). */
#define STORE_FOLD_CHUNK 8192   /* ids folded per call: ~10 ms of work */

/* The watermark: every message with an id at or below it is folded. */
static int64_t store_fold_upto(Store *s) {
    sqlite3_stmt *st = store_stmt(s,
        "SELECT upto FROM arc_folds WHERE name='thread_msgs'");
    int64_t v = 0;
    if (st && sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
    if (st) sqlite3_reset(st);
    return v;
}

/* Fold the messages above the watermark, ids up to `chunk` past it, into
 * arc_thread_msgs; inside a write transaction. *behind says whether more
 * remain. Returns 0 or -1. */
static int store_fold_threads(Store *s, int64_t chunk, int *behind) {
    static const char fold[] =
        "INSERT INTO arc_thread_msgs(thread_id,n,first_channel,latest_id,"
        "latest_ts,latest_artifact)"
        " SELECT thread_id,1,channel,id,ts,CASE WHEN kind='artifact' THEN id END"
        " FROM messages WHERE id>?1 AND id<=?2 AND thread_id IS NOT NULL"
        " ORDER BY id"
        " ON CONFLICT(thread_id) DO UPDATE SET n=n+1,"
        " latest_id=excluded.latest_id, latest_ts=excluded.latest_ts,"
        " latest_artifact=coalesce(excluded.latest_artifact,latest_artifact)";
    assert(s->in_tx);
    int64_t upto = store_fold_upto(s), top = 0;
    sqlite3_stmt *st = store_stmt(s, "SELECT max(id) FROM messages");
    if (!st) return -1;
    if (sqlite3_step(st) == SQLITE_ROW) top = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    int64_t hi = top - upto > chunk ? upto + chunk : top;
    *behind = hi < top;
    if (hi <= upto) return 0;
    st = store_stmt(s, fold);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, upto);
    sqlite3_bind_int64(st, 2, hi);
    if (store_done(s, st)) return -1;
    st = store_stmt(s, "UPDATE arc_folds SET upto=? WHERE name='thread_msgs'");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, hi);
    return store_done(s, st);
}

/* Fold message `id` of `thread` (NULL: none), just inserted in this
 * transaction, the cheap way when it is the only one above the watermark
 * (nobody else wrote since): from its values, without reading it back.
 * Otherwise store_fold_threads(). Returns 0 or -1. */
static int store_fold_insert(Store *s, int64_t id, Str thread, Str channel, Str ts,
                             int artifact, int *behind) {
    static const char one[] =
        "INSERT INTO arc_thread_msgs VALUES(?1,1,?2,?3,?4,?5)"
        " ON CONFLICT(thread_id) DO UPDATE SET n=n+1, latest_id=?3, latest_ts=?4,"
        " latest_artifact=coalesce(?5,latest_artifact)";
    if (store_fold_upto(s) != id - 1) return store_fold_threads(s, STORE_FOLD_CHUNK, behind);
    *behind = 0;
    sqlite3_stmt *st;
    if (thread.p) {
        if (!(st = store_stmt(s, one))) return -1;
        store_bind(st, 1, thread);
        store_bind(st, 2, channel);
        sqlite3_bind_int64(st, 3, id);
        store_bind(st, 4, ts);
        if (artifact) sqlite3_bind_int64(st, 5, id);
        if (store_done(s, st)) return -1;
    }
    st = store_stmt(s, "UPDATE arc_folds SET upto=? WHERE name='thread_msgs'");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, id);
    return store_done(s, st);
}

/* Is the summary behind the messages (a reader then adds more rows)? */
static int store_fold_behind(Store *s) {
    sqlite3_stmt *st = store_stmt(s, "SELECT max(id) FROM messages");
    int64_t top = 0;
    if (st && sqlite3_step(st) == SQLITE_ROW) top = sqlite3_column_int64(st, 0);
    if (st) sqlite3_reset(st);
    return top > store_fold_upto(s);
}

/* Run the reads that follow in one snapshot: a read transaction, unless
 * the batch's is open. Pass what it returns to store_read_end(). */
static int store_read_begin(Store *s) {
    return !s->in_tx && store_exec(s, "BEGIN") == 0;
}

static void store_read_end(Store *s, int opened) {
    if (opened) store_exec(s, "COMMIT");
}

/* A message as the one renderer takes it: from a stored row, or from a
 * request at insert time. Str fields with p == NULL are null; attachments
 * and metadata are valid JSON text (an array, an object). */
typedef struct {
    int64_t id;
    int64_t reply_to;      /* ARC_NO_ID: null */
    Str ts, from, to, channel, kind, body, thread;
    Str attachments, metadata;
} StoreMsg;

/* The one message renderer (PROTOCOL §5 field order). A POST's answer and
 * the fan-out to waiters are rendered here at insert time, and those bytes
 * go into the cache after the commit; a GET renders the stored row here. So
 * the cache stays exact only while both render through this function, from
 * fields that round-trip through SQLite unchanged (tests/unit.c
 * test_message_render compares the two). */
static void store_render_message(Buf *b, const StoreMsg *m) {
    buf_adds(b, "{\"id\":");
    buf_add_i64(b, m->id);
    buf_adds(b, ",\"ts\":");
    store_emit_text(b, m->ts);
    buf_adds(b, ",\"from_agent\":");
    store_emit_text(b, m->from);
    buf_adds(b, ",\"to_agent\":");
    store_emit_text(b, m->to);
    buf_adds(b, ",\"channel\":");
    store_emit_text(b, m->channel);
    buf_adds(b, ",\"kind\":");
    store_emit_text(b, m->kind);
    buf_adds(b, ",\"body\":");
    store_emit_text(b, m->body);
    buf_adds(b, ",\"attachments\":");
    buf_addstr(b, m->attachments);
    buf_adds(b, ",\"reply_to\":");
    if (m->reply_to != ARC_NO_ID) buf_add_i64(b, m->reply_to);
    else buf_adds(b, "null");
    buf_adds(b, ",\"thread_id\":");
    store_emit_text(b, m->thread);
    buf_adds(b, ",\"metadata\":");
    buf_addstr(b, m->metadata);
    buf_addc(b, '}');
}

/* Row emitters: one JSON object per row, fields in PROTOCOL §5 order.
 *
 * A message comes from the cache when it can, and goes in when it may. A
 * list of messages selects only their ids, so a cached one costs SQLite no
 * more than finding it (stepping the full row took more than half of a
 * cached page); a row that is not cached is then read by id, in the same
 * snapshot (the list statement is still open). Rows of M_COLS work too. */
static void store_emit_message(Store *s, Buf *b, sqlite3_stmt *st) {
    int64_t id = sqlite3_column_int64(st, 0);
    const StoreCached *c = store_cache_get(s, id);
    if (c) {
        buf_add(b, c->json, c->len);
        return;
    }
    if (sqlite3_column_count(st) == 1) {
        sqlite3_stmt *row = store_stmt(s, "SELECT " M_COLS " FROM messages WHERE id=?");
        if (!row) return;
        sqlite3_bind_int64(row, 1, id);
        if (sqlite3_step(row) == SQLITE_ROW) store_emit_message(s, b, row);
        else buf_adds(b, "null");   /* not reachable: same snapshot */
        sqlite3_reset(row);
        return;
    }
    /* A foreign writer's reply_to of INT64_MIN would read as null: the hub
     * never stores one (PROTOCOL §3 bounds ids). */
    sqlite3_value *rv = sqlite3_column_value(st, 8);
    StoreMsg m = {
        .id = id,
        .reply_to = sqlite3_value_type(rv) == SQLITE_NULL ? ARC_NO_ID
                                                          : sqlite3_value_int64(rv),
        .ts = store_col(st, 1), .from = store_col(st, 2), .to = store_col(st, 3),
        .channel = store_col(st, 4), .kind = store_col(st, 5),
        .body = store_col(st, 6), .thread = store_col(st, 9),
        .attachments = store_json_or(s, store_col(st, 7), "[]"),
        .metadata = store_json_or(s, store_col(st, 10), "{}"),
    };
    size_t mark = b->len;
    store_render_message(b, &m);
    if (!s->in_tx && !b->err) store_cache_put(s, id, b->p + mark, b->len - mark);
}

static void store_emit_session(Store *s, Buf *b, sqlite3_stmt *st) {
    buf_adds(b, "{\"session_id\":");
    store_emit_text(b, store_col(st, 0));
    buf_adds(b, ",\"agent_id\":");
    store_emit_text(b, store_col(st, 1));
    buf_adds(b, ",\"display_name\":");
    store_emit_text(b, store_col(st, 2));
    buf_adds(b, ",\"capabilities\":");
    store_emit_json(s, b, store_col(st, 3), "[]");
    buf_adds(b, ",\"metadata\":");
    store_emit_json(s, b, store_col(st, 4), "{}");
    buf_adds(b, ",\"created_at\":");
    store_emit_text(b, store_col(st, 5));
    buf_adds(b, ",\"last_seen\":");
    store_emit_text(b, store_col(st, 6));
    buf_adds(b, sqlite3_column_int(st, 7) ? ",\"active\":true}"
                                          : ",\"active\":false}");
}

static void store_emit_claim(Store *s, Buf *b, sqlite3_stmt *st) {
    buf_adds(b, "{\"claim_key\":");
    store_emit_text(b, store_col(st, 0));
    buf_adds(b, ",\"thread_id\":");
    store_emit_text(b, store_col(st, 1));
    buf_adds(b, ",\"task_message_id\":");
    store_emit_int(b, st, 2);
    buf_adds(b, ",\"owner_agent_id\":");
    store_emit_text(b, store_col(st, 3));
    buf_adds(b, ",\"claimed_at\":");
    store_emit_text(b, store_col(st, 4));
    buf_adds(b, ",\"expires_at\":");
    store_emit_text(b, store_col(st, 5));
    buf_adds(b, ",\"released_at\":");
    store_emit_text(b, store_col(st, 6));
    buf_adds(b, ",\"metadata\":");
    store_emit_json(s, b, store_col(st, 7), "{}");
    buf_addc(b, '}');
}

static void store_emit_lock(Store *s, Buf *b, sqlite3_stmt *st) {
    buf_adds(b, "{\"file_path\":");
    store_emit_text(b, store_col(st, 0));
    buf_adds(b, ",\"agent_id\":");
    store_emit_text(b, store_col(st, 1));
    buf_adds(b, ",\"locked_at\":");
    store_emit_text(b, store_col(st, 2));
    buf_adds(b, ",\"expires_at\":");
    store_emit_text(b, store_col(st, 3));
    buf_adds(b, ",\"released_at\":");
    store_emit_text(b, store_col(st, 4));
    buf_adds(b, ",\"metadata\":");
    store_emit_json(s, b, store_col(st, 5), "{}");
    buf_addc(b, '}');
}

static void store_emit_task(Store *s, Buf *b, sqlite3_stmt *st) {
    (void)s;
    buf_adds(b, "{\"task_id\":");
    store_emit_int(b, st, 0);
    buf_adds(b, ",\"parent_task_id\":");
    store_emit_int(b, st, 1);
    buf_adds(b, ",\"channel\":");
    store_emit_text(b, store_col(st, 2));
    buf_adds(b, ",\"thread_id\":");
    store_emit_text(b, store_col(st, 3));
    buf_adds(b, ",\"status\":");
    store_emit_text(b, store_col(st, 4));
    buf_adds(b, ",\"created_at\":");
    store_emit_text(b, store_col(st, 5));
    buf_adds(b, ",\"completed_at\":");
    store_emit_text(b, store_col(st, 6));
    buf_addc(b, '}');
}

/* A task row followed by two arc:task_deps columns (PROTOCOL §14): the
 * blocker ids as a JSON array (text) and whether it is claimable (0/1). */
static void store_emit_task_deps(Store *s, Buf *b, sqlite3_stmt *st) {
    store_emit_task(s, b, st);
    if (b->len) b->p[--b->len] = 0;   /* reopen the object */
    Str ids = store_col(st, 7);
    buf_adds(b, ",\"blocked_by\":");
    if (ids.p && ids.n) buf_addstr(b, ids);
    else buf_adds(b, "[]");
    buf_adds(b, sqlite3_column_int(st, 8) ? ",\"claimable\":true}"
                                          : ",\"claimable\":false}");
}

static void store_emit_channel(Store *s, Buf *b, sqlite3_stmt *st) {
    buf_adds(b, "{\"name\":");
    store_emit_text(b, store_col(st, 0));
    buf_adds(b, ",\"created_at\":");
    store_emit_text(b, store_col(st, 1));
    buf_adds(b, ",\"created_by\":");
    store_emit_text(b, store_col(st, 2));
    buf_adds(b, ",\"metadata\":");
    store_emit_json(s, b, store_col(st, 3), "{}");
    buf_addc(b, '}');
}

/* A shared-memory row (PROTOCOL §13.2), from KV_COLS. */
static void store_emit_kv(Store *s, Buf *b, sqlite3_stmt *st) {
    buf_adds(b, "{\"key\":");
    store_emit_text(b, store_col(st, 0));
    buf_adds(b, ",\"value\":");
    store_emit_json(s, b, store_col(st, 1), "null");
    buf_adds(b, ",\"type\":");
    store_emit_text(b, store_col(st, 2));
    buf_adds(b, ",\"version\":");
    store_emit_int(b, st, 3);
    buf_adds(b, ",\"created_by\":");
    store_emit_text(b, store_col(st, 4));
    buf_adds(b, ",\"created_at\":");
    store_emit_text(b, store_col(st, 5));
    buf_adds(b, ",\"updated_by\":");
    store_emit_text(b, store_col(st, 6));
    buf_adds(b, ",\"updated_at\":");
    store_emit_text(b, store_col(st, 7));
    buf_addc(b, '}');
}

/* One write in a key's history (PROTOCOL §13.2), from KVH_COLS. */
static void store_emit_kv_change(Store *s, Buf *b, sqlite3_stmt *st) {
    buf_adds(b, "{\"key\":");
    store_emit_text(b, store_col(st, 0));
    buf_adds(b, ",\"version\":");
    store_emit_int(b, st, 1);
    buf_adds(b, ",\"op\":");
    store_emit_text(b, store_col(st, 2));
    buf_adds(b, ",\"type\":");
    store_emit_text(b, store_col(st, 3));
    buf_adds(b, ",\"value\":");
    store_emit_json(s, b, store_col(st, 4), "null");
    buf_adds(b, ",\"agent_id\":");
    store_emit_text(b, store_col(st, 5));
    buf_adds(b, ",\"at\":");
    store_emit_text(b, store_col(st, 6));
    buf_addc(b, '}');
}

typedef void (*StoreEmit)(Store *, Buf *, sqlite3_stmt *);

/* Step st to the end, emitting every row as a JSON array element. Returns
 * the number of rows, or -1 on a database error. */
static int store_emit_rows(Store *s, Buf *b, sqlite3_stmt *st, StoreEmit emit) {
    int n = 0, rc;
    buf_addc(b, '[');
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n++) buf_addc(b, ',');
        else if (emit == store_emit_message) store_cache_sync(s);
        emit(s, b, st);
    }
    buf_addc(b, ']');
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
        log_warn("store: %s", sqlite3_errmsg(s->db));
        return -1;
    }
    return n;
}

/* Step st once; emit the row as an object or "null". Returns 1, 0 or -1. */
static int store_emit_one(Store *s, Buf *b, sqlite3_stmt *st, StoreEmit emit) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) emit(s, b, st);
    else buf_adds(b, "null");
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

/* ---- full-text search: arc's own index over messages (PROTOCOL §15) ---- */

/* The index lives in tables of arc's own, beside the reference's and never
 * hooked to them (no triggers, no new columns), so any process may write
 * messages, the reference hub included, even with a SQLite built without
 * FTS5: a virtual table whose module is missing is an error only for a
 * statement that uses it, and nothing but arc names these tables.
 *
 *  - arc_search_src, a view: each message's id, body and the text of its
 *    attachments (content, path, description; the JSON text of non-string
 *    values). Rows whose attachments_json is not valid JSON index the body.
 *  - arc_search, FTS5 with the view as external content: it holds only the
 *    index, not a second copy of the text; snippet() reads the view.
 *  - arc_search_state: the watermark, the highest message id indexed.
 *
 * Messages are indexed lazily, in id order from the watermark
 * (store_search_catch_up), by a search or by the loop while a search left
 * a backlog, never by a POST. arc never changes a message's body or
 * attachments once written and neither does the reference, and ids only
 * grow (AUTOINCREMENT, one writer at a time), so a row below the
 * watermark is indexed as it stands. Hubs sharing the file share the
 * index: the watermark moves inside the write transaction that indexes. */
static const char store_search_schema[] =
    "CREATE TABLE IF NOT EXISTS arc_search_state(id INTEGER PRIMARY KEY"
    " CHECK(id=1), indexed_id INTEGER NOT NULL);"
    "INSERT OR IGNORE INTO arc_search_state VALUES(1,0);"
    "CREATE VIEW IF NOT EXISTS arc_search_src AS SELECT id, body,"
    " CASE WHEN attachments_json='[]' OR NOT json_valid(attachments_json)"
    " THEN '' ELSE (SELECT group_concat(concat_ws(' ',"
    " json_extract(value,'$.content'), json_extract(value,'$.path'),"
    " json_extract(value,'$.description')),' ')"
    " FROM json_each(attachments_json) WHERE type='object') END AS attach"
    " FROM messages;"
    "CREATE VIRTUAL TABLE IF NOT EXISTS arc_search USING fts5(body, attach,"
    " content='arc_search_src', content_rowid='id',"
    " tokenize='unicode61 remove_diacritics 2');";

/* arc_rank(arc_search): BM25 as FTS5's bm25() computes it (k1 1.2, b 0.75,
 * both columns weighted 1), but positive, and with a bounded estimate of
 * each word's document frequency. bm25() counts every row that holds the
 * word (xQueryPhrase over its whole doclist: ~20 ms for a common word at
 * 1M messages, growing with the store); arc_rank stops after
 * ARC_SEARCH_MAX_CANDIDATES of them, oldest first, and scales the count by
 * the share of ids they spanned (message ids are dense). The estimate
 * changes scores, never which rows match. */
typedef struct {
    int64_t n;          /* rows seen, at most ARC_SEARCH_MAX_CANDIDATES */
    int64_t first, last;   /* their lowest and highest rowids */
} StoreRankCount;

/* xQueryPhrase's callback: count a row; SQLITE_DONE stops the walk. */
static int store_rank_count(const Fts5ExtensionApi *api, Fts5Context *fts,
                            void *arg) {
    StoreRankCount *c = arg;
    int64_t id = api->xRowid(fts);
    if (!c->n++) c->first = id;
    c->last = id;
    return c->n >= ARC_SEARCH_MAX_CANDIDATES ? SQLITE_DONE : SQLITE_OK;
}

/* Per query (xSetAuxdata): the average row length and each phrase's IDF. */
typedef struct {
    double avgdl;
    int n_phrase;
    double idf[];       /* n_phrase of them */
} StoreRankData;

static void store_rank(const Fts5ExtensionApi *api, Fts5Context *fts,
                       sqlite3_context *ctx, int argc, sqlite3_value **argv) {
    (void)argc, (void)argv;
    StoreRankData *d = api->xGetAuxdata(fts, 0);
    int rc = SQLITE_OK, n_phrase = api->xPhraseCount(fts);
    if (!d) {
        sqlite3_int64 n_row = 0, n_tok = 0;
        d = sqlite3_malloc64(sizeof *d + (size_t)n_phrase * sizeof(double));
        if (!d) {
            sqlite3_result_error_nomem(ctx);
            return;
        }
        d->n_phrase = n_phrase;
        rc = api->xRowCount(fts, &n_row);
        if (!rc) rc = api->xColumnTotalSize(fts, -1, &n_tok);
        d->avgdl = n_row ? (double)n_tok / (double)n_row : 1;
        for (int i = 0; !rc && i < n_phrase; i++) {
            StoreRankCount c = { 0, 0, 0 };
            rc = api->xQueryPhrase(fts, i, &c, store_rank_count);
            double hits = (double)c.n;
            if (c.n >= ARC_SEARCH_MAX_CANDIDATES && c.last > c.first)
                hits *= (double)n_row / (double)(c.last - c.first + 1);
            if (hits > (double)n_row) hits = (double)n_row;
            double idf = log(((double)n_row - hits + 0.5) / (hits + 0.5));
            d->idf[i] = idf > 1e-6 ? idf : 1e-6;   /* as bm25(): never <= 0 */
        }
        if (!rc) rc = api->xSetAuxdata(fts, d, sqlite3_free);
        else sqlite3_free(d);
        if (rc) {
            sqlite3_result_error_code(ctx, rc);
            return;
        }
    }
    int n_inst = 0, dl = 0;
    rc = api->xInstCount(fts, &n_inst);
    if (!rc) rc = api->xColumnSize(fts, -1, &dl);
    double score = 0;
    for (int i = 0; !rc && i < d->n_phrase; i++) {
        int f = 0;
        for (int k = 0; !rc && k < n_inst; k++) {
            int ph, col, off;
            rc = api->xInst(fts, k, &ph, &col, &off);
            f += ph == i;
        }
        double k1 = 1.2, b = 0.75;
        score += d->idf[i] * f * (k1 + 1) /
                 (f + k1 * (1 - b + b * dl / d->avgdl));
    }
    if (rc) sqlite3_result_error_code(ctx, rc);
    else sqlite3_result_double(ctx, score);
}

/* Register arc_rank on s's connection. Returns 0 or -1. */
static int store_search_register(Store *s) {
    fts5_api *api = NULL;
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(s->db, "SELECT fts5(?1)", -1, &st, NULL)) goto done;
    sqlite3_bind_pointer(st, 1, &api, "fts5_api_ptr", NULL);
    sqlite3_step(st);
    if (!api || api->iVersion < 2) goto done;
    if (api->xCreateFunction(api, "arc_rank", NULL, store_rank, NULL)) goto done;
    rc = 0;
done:
    sqlite3_finalize(st);
    return rc;
}

/* The watermark and the newest message id: *indexed < *latest means a
 * backlog. Returns 0 or -1. */
static int store_search_state(Store *s, int64_t *indexed, int64_t *latest) {
    sqlite3_stmt *st = store_stmt(s, "SELECT (SELECT indexed_id FROM"
        " arc_search_state WHERE id=1), (SELECT coalesce(max(id),0) FROM messages)");
    if (!st || sqlite3_step(st) != SQLITE_ROW) {
        if (st) sqlite3_reset(st);
        return -1;
    }
    *indexed = sqlite3_column_int64(st, 0);
    *latest = sqlite3_column_int64(st, 1);
    sqlite3_reset(st);
    return 0;
}

/* Index the next at most max_rows messages above the watermark and move
 * it. Must run inside a write transaction (the batch's), so that two hubs
 * never index a row twice. Returns the rows indexed, or -1 (s->err). */
static int64_t store_search_catch_up(Store *s, int64_t max_rows) {
    int64_t from, latest, to = 0, n = -1;
    assert(s->in_tx);
    if (store_search_state(s, &from, &latest)) goto done;
    if (from >= latest) return 0;
    sqlite3_stmt *st = store_stmt(s, "SELECT max(id), count(*) FROM (SELECT id"
        " FROM messages WHERE id>?1 ORDER BY id LIMIT ?2)");
    if (!st) goto done;
    sqlite3_bind_int64(st, 1, from);
    sqlite3_bind_int64(st, 2, max_rows);
    if (sqlite3_step(st) == SQLITE_ROW) {
        to = sqlite3_column_int64(st, 0);
        n = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    if (n < 0) goto done;
    st = store_stmt(s, "INSERT INTO arc_search(rowid,body,attach) SELECT id,"
                       " body, attach FROM arc_search_src WHERE id>?1 AND id<=?2");
    if (!st) goto fail;
    sqlite3_bind_int64(st, 1, from);
    sqlite3_bind_int64(st, 2, to);
    if (store_done(s, st)) goto fail;
    st = store_stmt(s, "UPDATE arc_search_state SET indexed_id=? WHERE id=1");
    if (!st) goto fail;
    sqlite3_bind_int64(st, 1, to);
    if (store_done(s, st)) goto fail;
    goto done;
fail:
    n = -1;
done:
    if (n < 0) snprintf(s->err, sizeof s->err, "%s", sqlite3_errmsg(s->db));
    return n;
}

/* Messages above the watermark: the backlog still to index. */
static int64_t store_search_backlog(Store *s) {
    int64_t indexed, latest, n = 0;
    if (store_search_state(s, &indexed, &latest) || indexed >= latest) return 0;
    sqlite3_stmt *st = store_stmt(s, "SELECT count(*) FROM messages WHERE id>?");
    if (!st) return 0;
    sqlite3_bind_int64(st, 1, indexed);
    if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return n;
}

/* Emit message `id` (the cache's copy, or the stored row). */
static void store_emit_message_id(Store *s, Buf *b, int64_t id) {
    const StoreCached *c = store_cache_get(s, id);
    if (c) {
        buf_add(b, c->json, c->len);
        return;
    }
    sqlite3_stmt *row = store_stmt(s, "SELECT " M_COLS " FROM messages WHERE id=?1");
    if (!row) return;
    sqlite3_bind_int64(row, 1, id);
    if (sqlite3_step(row) == SQLITE_ROW) store_emit_message(s, b, row);
    else buf_adds(b, "null");   /* not reachable: same snapshot */
    sqlite3_reset(row);
}

static void store_close(Store *s) {
    if (!s->db) return;
    if (s->in_tx) store_commit(s);
    for (int i = 0; i < s->n_stmts; i++) sqlite3_finalize(s->stmts[i].st);
    s->n_stmts = 0;
    /* Closing the last connection checkpoints the WAL into the main file. */
    if (sqlite3_close(s->db) != SQLITE_OK)
        log_warn("store: close: %s", sqlite3_errmsg(s->db));
    s->db = NULL;
    if (s->files_watch >= 0) close(s->files_watch);
    s->files_watch = -1;
    json_free(&s->scratch);
    store_cache_flush(s);
    free(s->cache);
    s->cache = NULL;
}

/* Open (creating if needed) the storage file, apply the schema, make the
 * default channels and derive the instance id. Fills err on failure. */
static int store_open(Store *s, const char *path, int64_t busy_ms, int sync_full,
                      char err[ARC_ERRLEN]) {
    memset(s, 0, sizeof *s);
    s->files_watch = -1;
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(err, ARC_ERRLEN, "storage path is a directory: %s", path);
        return -1;
    }
    /* Create the file ourselves, 0600: SQLite would make it 0644 (less the
     * umask), and gives the -wal and -shm files the main file's mode. An
     * existing file keeps its mode. */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
    int rc = sqlite3_open_v2(path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                             SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, ARC_ERRLEN, "cannot open storage %s: %s", path,
                 s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        goto fail;   /* SQLite returns a handle even then: close it */
    }
    s->busy_budget_ms = busy_ms;
    sqlite3_busy_handler(s->db, store_on_busy, s);
    /* Keep plans stable: otherwise every re-bound LIMIT ? re-prepares the
     * statement (seen as ~9% of a GET /v1/messages). */
    sqlite3_db_config(s->db, SQLITE_DBCONFIG_ENABLE_QPSG, 1, (int *)NULL);
    char *e = NULL;
    const char *sync = sync_full ? "PRAGMA synchronous=FULL;"
                                 : "PRAGMA synchronous=NORMAL;";
    /* The schema and the default channels go in one transaction: one
     * fsync instead of one per statement on a new file. A page cache of
     * 32 MiB, not SQLite's 2: a thread list reads ~10 MiB of summary, task
     * and claim pages (1M messages, 20,000 threads), which then stay in
     * memory instead of being read from the file again on every list. */
    if (sqlite3_exec(s->db, "PRAGMA journal_mode=WAL;", NULL, NULL, &e) ||
        sqlite3_exec(s->db, sync, NULL, NULL, &e) ||
        sqlite3_exec(s->db, "PRAGMA cache_size=-32768;", NULL, NULL, &e) ||
        sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, &e) ||
        sqlite3_exec(s->db, store_schema, NULL, NULL, &e) ||
        sqlite3_exec(s->db, store_schema_kv, NULL, NULL, &e) ||
        sqlite3_exec(s->db, store_schema_deps, NULL, NULL, &e) ||
        sqlite3_exec(s->db, store_schema_delivery, NULL, NULL, &e) ||
        sqlite3_exec(s->db, store_schema_receipts, NULL, NULL, &e) ||
        sqlite3_exec(s->db, store_search_schema, NULL, NULL, &e) ||
        store_search_register(s)) {
        snprintf(err, ARC_ERRLEN, "cannot initialise storage %s: %s", path,
                 e ? e : sqlite3_errmsg(s->db));
        sqlite3_free(e);
        goto fail;
    }
    if (!realpath(path, s->path)) {
        snprintf(err, ARC_ERRLEN, "cannot resolve %s: %s", path, strerror(errno));
        goto fail;
    }
    sqlite3_stmt *st = store_stmt(s, "PRAGMA journal_mode");
    if (st && sqlite3_step(st) == SQLITE_ROW)
        snprintf(s->journal_mode, sizeof s->journal_mode, "%s",
                 (const char *)sqlite3_column_text(st, 0));
    if (st) sqlite3_reset(st);
    char now[ISO_LEN];
    iso_format(clock_wall_us(), now);
    static const char ins[] =
        "INSERT OR IGNORE INTO channels VALUES(?,?,'system','{}')";
    static const char *const defaults[] = { "general", "direct" };
    for (int i = 0; i < 2; i++) {
        st = store_stmt(s, ins);
        if (!st) break;
        store_bind_c(st, 1, defaults[i]);
        store_bind_c(st, 2, now);
        if (store_done(s, st)) {
            snprintf(err, ARC_ERRLEN, "cannot write storage %s: %s", path,
                     sqlite3_errmsg(s->db));
            goto fail;
        }
    }
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, &e)) {
        snprintf(err, ARC_ERRLEN, "cannot write storage %s: %s", path,
                 e ? e : sqlite3_errmsg(s->db));
        sqlite3_free(e);
        goto fail;
    }
    /* PROTOCOL §10: the id names the state, not the process, so two hubs on
     * one file agree and a recreated file gets a new one. */
    Buf marker = { 0 };
    st = store_stmt(s, "SELECT created_at FROM channels WHERE name='general'");
    if (st && sqlite3_step(st) == SQLITE_ROW) buf_addstr(&marker, store_col(st, 0));
    else buf_adds(&marker, "unknown");
    if (st) sqlite3_reset(st);
    Sha256 h;
    char hex[65];
    sha256_init(&h);
    sha256_add(&h, s->path, strlen(s->path));
    sha256_add(&h, "|", 1);
    sha256_add(&h, buf_cstr(&marker), marker.len);
    sha256_hex(&h, hex);
    buf_free(&marker);
    snprintf(s->instance_id, sizeof s->instance_id, "mh1-%.20s", hex);
    s->data_version = s->cache_version = store_data_version(s);
    sqlite3_update_hook(s->db, store_update_hook, s);
    store_watch_files(s);   /* for store_check_files */
    return 0;
fail:
    s->in_tx = 0;   /* closing rolls back a BEGIN left open */
    store_close(s);
    return -1;
}


/* ==== hub: the coordination model and the request handlers ================ */

/* Handlers are pure request -> response functions over the Store. They never
 * touch sockets: the loop hands them a parsed Req and gets back a Res, which
 * may ask to park (a long-poll with nothing to return yet) or to stream
 * (SSE). Writes go into the loop turn's batch transaction (store_begin) under
 * a per-request savepoint, so a failed request rolls back alone while the
 * rest of the batch commits together. PROTOCOL §7 defines each endpoint. */

typedef struct {
    const char *host;              /* listen address */
    int port;
    const char *storage;           /* SQLite file */
    const char *spool_dir;         /* the relay spool it serves (§11) */
    int allow_remote;              /* may bind a non-loopback address */
    int insecure_no_auth;          /* ... even without a token */
    char token[ARC_MAX_TOKEN + 1]; /* bearer token; "" = none (§2.4) */
    const char *allowed_hosts[ARC_MAX_ALLOWED_HOSTS];  /* borrowed from argv */
    int n_allowed_hosts;           /* --allowed-host names (§2.2) */
    int64_t max_body_chars;        /* message body, in code points */
    int64_t max_attachment_chars;  /* one attachment's JSON-encoded content */
    int64_t max_attachments;       /* per message */
    int64_t max_metadata_chars;    /* one stored metadata object, encoded */
    int64_t presence_ttl_s;        /* a session idle this long expires */
    int sync_full;                 /* PRAGMA synchronous=FULL (default) */
    int max_conns;                 /* client sockets, ARC_MAX_CONNS */
    int64_t idle_ms;               /* ARC_IDLE_MS */
    int64_t head_ms;               /* ARC_HEAD_MS */
    int64_t body_ms;               /* ARC_BODY_MS */
    int64_t max_kv_value_chars;    /* one shared-memory value, encoded */
    int64_t escalate_after_s;      /* unanswered this long: a notice (§17.4) */
    const char *escalate_channel;  /* ... posted here; borrowed from argv */
} HubConfig;

/* A message committed in this loop turn, kept until the turn ends to answer
 * parked long-polls and streams without going back to SQLite. */
typedef struct {
    int64_t id;
    char *from, *to, *channel, *thread;  /* owned; to/thread NULL if unset */
    char *json;                          /* owned: the message object */
    size_t json_len;
} NewMsg;

/* What a parked request or a stream waits for (PROTOCOL §8). */
typedef enum { WAIT_EVENTS = 1, WAIT_MESSAGES, WAIT_STREAM } WaitKind;

typedef struct {
    WaitKind kind;
    char *agent;          /* owned; events/stream: whose view */
    char *channel;        /* owned or NULL: channel filter */
    char *thread;         /* owned or NULL: thread filter */
    char **channels;      /* owned, stream only: channels=a,b */
    int n_channels;
    char *channel_set;    /* owned: the channels as a JSON array, or NULL */
    int64_t since_id;     /* answer only ids above this */
    int limit;
    int exclude_self;
    char *via;            /* owned or NULL: events: leave out what was
                             surfaced to agent, mark what is answered
                             surfaced this way (PROTOCOL §16.4) */
} Wait;

static void wait_free(Wait *w) {
    free(w->via);
    free(w->agent);
    free(w->channel);
    free(w->thread);
    for (int i = 0; i < w->n_channels; i++) free(w->channels[i]);
    free(w->channels);
    free(w->channel_set);
    memset(w, 0, sizeof *w);
}

/* A parked read with `surfaced` that the loop answered (hub_wait_answered):
 * what it returned, ids in (since, upto] passing its filters, is marked
 * surfaced at the next transaction (hub_dl_flush, PROTOCOL §16.4). */
typedef struct {
    char *agent, *via;          /* owned */
    char *channel, *thread;     /* owned, or NULL: no such filter */
    int64_t since, upto;
} HubSurfaced;

/* The model: configuration, storage and what this loop turn wrote. The
 * event loop (Loop, in the loop section) owns everything about sockets,
 * timers and waiters and drives the model through hub_turn_*() and the
 * handlers; the model never calls into the loop. */
typedef struct {
    HubConfig cfg;
    size_t token_n;              /* strlen(cfg.token) */
    Store store;
    int64_t max_request_bytes;   /* body cap, PROTOCOL §4 */
    NewMsg *batch;               /* messages written in this turn */
    int n_batch, cap_batch;
    char started_at[ISO_LEN];    /* when this process began serving */
    char spool_path[PATH_MAX];   /* the relay's spool, absolute; "" = none */
    int64_t shutdown_at_ms;      /* pending shutdown deadline, 0 = none */
    int64_t shutdown_delay_s;
    int shutdown_now;            /* leave the loop at the end of this turn */
    int64_t deps_mark;           /* messages scanned for blocked_by (§14);
                                    0: ask arc_task_deps_mark */
    int search_behind;           /* the search index has a backlog (§15) */
    int fold_behind;             /* the thread summary lags: fold on (timer_fold) */
    int64_t dl_mark;             /* messages indexed for delivery (§16);
                                    0: ask arc_delivery_mark */
    int64_t dl_saved;            /* the mark as last written to the table */
    HubSurfaced *dl_later;       /* owned: answered parked reads to mark */
    int n_dl_later, cap_dl_later;
    Buf threads;                 /* the last GET /v1/threads result, JSON */
    int threads_ok;              /* it is there (hub_threads_fresh) */
    int64_t threads_gen;         /* Store.threads_gen it was built at */
    int64_t threads_dv;          /* PRAGMA data_version it was built at */
    int64_t threads_at_us;       /* built then (wall clock) */
    int64_t threads_until_us;    /* valid before: the first live claim's
                                    or lock's expiry, INT64_MAX if none */
    int64_t rc_due_ms;           /* next unanswered check, clock_ms (§17.4);
                                    0: at once */
    int64_t pr_check_ms;         /* next check of agents' pids (§17.5);
                                    0: no pid to watch */
    struct McpHub *mcp;          /* owned: /mcp sessions and parked calls, or
                                    NULL until the first /mcp request */
} Hub;

/* One request as the handlers see it. */
typedef struct {
    Str method;
    Str query;           /* raw query string */
    Buf arg;             /* decoded path argument ({agent_id}, {id}), if any */
    Json body;           /* POST: parsed body, root object at token 0 */
    int has_body;
    Str last_event_id;   /* SSE resume header */
    int sp_open;         /* a savepoint is open for this request */
    int busy;            /* its write found the lock taken: retry later */
    int batch_mark;      /* h->n_batch when the savepoint opened */
    Buf tmp;             /* scratch for query parameters */
    /* /mcp only (docs/MCP.md): */
    const HttpReq *hr;   /* borrowed: the HTTP head, NULL when relayed */
    Str raw_body;        /* the body, unparsed (hub_handle leaves it so) */
    uint64_t mcp_call;   /* a parked call this request runs again, or 0 */
    int relayed;         /* it came through the file relay */
} Req;

typedef struct {
    int status;
    Buf body;            /* the response body (a JSON envelope, usually) */
    const char *ctype;   /* NULL: application/json */
    const char *extra;   /* extra header lines, static */
    int park;            /* parked: wait holds the filter */
    int stream;          /* SSE: wait holds the filter */
    int64_t wait_ms;     /* park: how long */
    Wait wait;
    /* /mcp only (docs/MCP.md): */
    uint64_t mcp_call;   /* park: the call to run again when the wait ends */
    int raw;             /* body is bytes for an SSE response already begun
                          * (with park: sent before parking; else the last,
                          * and the connection closes) */
    Buf hdr;             /* owned: header lines behind `extra` */
} Res;

ARC_PRINTF(3, 4) static void hub_fail(Res *r, int status, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    r->status = status;
    buf_reset(&r->body);
    buf_adds(&r->body, "{\"ok\":false,\"error\":");
    json_cstr(&r->body, msg);
    buf_addc(&r->body, '}');
}

/* Success envelope: hub_ok() opens it, the handler writes the result value,
 * hub_ok_end() closes it. */
static void hub_ok(Res *r, int status) {
    r->status = status;
    buf_reset(&r->body);
    buf_adds(&r->body, "{\"ok\":true,\"result\":");
}

static void hub_ok_end(Res *r) { buf_addc(&r->body, '}'); }

static void hub_db_fail(Hub *h, Res *r) {
    hub_fail(r, 503, "storage error: %s", sqlite3_errmsg(h->store.db));
}

static void hub_now(char out[ISO_LEN]) { iso_format(clock_wall_us(), out); }

/* Open the batch transaction and this request's savepoint before its first
 * write. Returns 0, or -1 with a 503 in r. */
/* Defined with the delivery index below; hub_tx runs it before any
 * request's savepoint, so a request that fails does not undo it. */
static void hub_dl_flush(Hub *h);

static int hub_tx(Hub *h, Req *q, Res *r) {
    if (q->sp_open) return 0;
    if (store_begin(&h->store)) {
        q->busy = h->store.busy;
        hub_fail(r, 503, "storage error: %s", h->store.err);
        return -1;
    }
    if (h->n_dl_later) hub_dl_flush(h);
    if (store_exec(&h->store, "SAVEPOINT req")) {
        hub_db_fail(h, r);
        return -1;
    }
    q->sp_open = 1;
    q->batch_mark = h->n_batch;
    return 0;
}

static void hub_newmsg_free(NewMsg *m) {
    free(m->from);
    free(m->to);
    free(m->channel);
    free(m->thread);
    free(m->json);
}

/* Drop batch entries from index `from` on (their savepoint rolled back, or
 * the turn's commit failed). */
static void hub_batch_truncate(Hub *h, int from) {
    while (h->n_batch > from) hub_newmsg_free(&h->batch[--h->n_batch]);
}

/* Close the request's savepoint: keep its writes if it succeeded. */
static void hub_tx_end(Hub *h, Req *q, int ok) {
    if (!q->sp_open) return;
    q->sp_open = 0;
    if (!ok) {
        store_exec(&h->store, "ROLLBACK TO req");
        hub_batch_truncate(h, q->batch_mark);
        h->deps_mark = 0;   /* it may have caught up, undone now (§14) */
        h->dl_mark = h->dl_saved = 0;   /* likewise the delivery index (§16) */
    }
    store_exec(&h->store, "RELEASE req");
}

/* ---- the turn: what the loop asks of the model ---- */

/* The loop reaches the store only through these (and the handlers): a turn
 * is hub_turn_begin(), requests and timer actions (each a savepoint in the
 * batch transaction, hub_tx), hub_turn_commit(), the fan-out from
 * h->batch, hub_turn_end(). */
static void hub_turn_begin(Hub *h) { store_turn_begin(&h->store); }

/* Is the turn's transaction open? Answers built from the database while it
 * is may show uncommitted writes, so the loop holds them for the commit. */
static int hub_turn_open(const Hub *h) { return store_in_tx(&h->store); }

/* Commit the turn's batch. Returns 0, its messages now in the cache; or -1
 * with the reason in *why (borrowed from the store, valid until its next
 * call): none of the batch happened, and it is forgotten. */
static int hub_turn_commit(Hub *h, const char **why) {
    if (store_commit(&h->store) == 0) {
        for (int i = 0; i < h->n_batch; i++)
            store_cache_put(&h->store, h->batch[i].id, h->batch[i].json,
                            h->batch[i].json_len);
        return 0;
    }
    *why = h->store.err;
    hub_batch_truncate(h, 0);
    h->deps_mark = 0;   /* a catch-up of task deps went with it (§14) */
    h->dl_mark = h->dl_saved = 0;   /* and of the delivery index (§16) */
    store_cache_flush(&h->store);
    return -1;
}

/* Did another process commit since the last check (PROTOCOL §8.2)? Then
 * waiters must ask SQLite again: the batch does not hold its rows. */
static int hub_foreign_commit(Hub *h) { return store_foreign_commit(&h->store); }

/* The turn is over (committed and fanned out): forget its batch. */
static void hub_turn_end(Hub *h) { hub_batch_truncate(h, 0); }

/* This hub's instance id, for the X-Arc-Instance header (PROTOCOL §4.4). */
static const char *hub_instance(const Hub *h) { return h->store.instance_id; }

/* ---- request fields, coerced as the reference coerces them ---- */

/* Identifiers (agents, channels, threads, claim keys, lock paths) may not
 * hold NUL: SQLite compares all their bytes while C strings and query
 * filters stop at the first NUL, so `general\0x` would be two names at
 * once (PROTOCOL §3.6). Returns 0, or -1 with r failed. */
static int hub_no_nul(Res *r, const char *name, Str v) {
    if (!v.n || !memchr(v.p, 0, v.n)) return 0;
    hub_fail(r, 400, "%s must not contain a NUL character", name);
    return -1;
}

/* A JSON value the hub stores and echoes (PROTOCOL §4.3): nested at most
 * ARC_MAX_STORED_DEPTH levels, counting the `outer` levels it will sit in
 * (an attachment's value sits 2 deep in the stored list), and when
 * size_max > 0 at most that long JSON-encoded, as Python counts. Returns
 * 0, or -1 with r failed. */
static int hub_stored(Res *r, const Json *j, uint32_t v, const char *name,
                      int outer, int64_t size_max) {
    if (json_depth(j, v) + outer > ARC_MAX_STORED_DEPTH) {
        hub_fail(r, 400, "%s nested deeper than %d levels "
                 "(ARC_MAX_STORED_DEPTH)", name, ARC_MAX_STORED_DEPTH);
        return -1;
    }
    if (size_max > 0 && (int64_t)json_pylen(j, v) > size_max) {
        hub_fail(r, 400, "%s exceeds max size (max_metadata_chars %lld)", name,
                 (long long)size_max);
        return -1;
    }
    return 0;
}

/* String field: absent or null -> 0 (or "NAME is required" when required);
 * present -> its text, trimmed, in out, 1. A required field that trims to
 * nothing is missing too. Returns 1, 0, or -1 with r failed. */
static int hub_str(Req *q, Res *r, const char *name, int required, Buf *out) {
    buf_reset(out);
    uint32_t v = q->has_body ? json_get_val(&q->body, 0, name) : 0;
    if (v) {
        json_as_text(out, &q->body, v);
        Str t = str_trim(buf_str(out));
        memmove(out->p, t.p, t.n);
        out->len = t.n;
        out->p[t.n] = 0;
        if (hub_no_nul(r, name, buf_str(out))) return -1;
        if (t.n || !required) return 1;
    }
    if (!required) return 0;
    hub_fail(r, 400, "%s is required", name);
    return -1;
}

/* Integer field; absent or null -> 0, present -> 1 with *out, or -1. */
static int hub_int(Req *q, Res *r, const char *name, int64_t *out) {
    uint32_t v = q->has_body ? json_get_val(&q->body, 0, name) : 0;
    if (!v) return 0;
    if (json_to_i64(&q->body, v, out) == 0) {
        if (*out != ARC_NO_ID) return 1;   /* "absent" to the handlers */
        hub_fail(r, 400, "%s is out of range", name);
        return -1;
    }
    hub_fail(r, 400, "%s must be an integer", name);
    return -1;
}

/* The metadata field of a session, channel, claim or lock into out: its
 * compact JSON, "{}" when absent or null. Returns 0, or -1 with r failed. */
static int hub_meta(Hub *h, Req *q, Res *r, Buf *out) {
    uint32_t v = q->has_body ? json_get_val(&q->body, 0, "metadata") : 0;
    if (v && q->body.t[v].type != JSON_OBJ) {
        hub_fail(r, 400, "metadata must be a JSON object");
        return -1;
    }
    if (v && hub_stored(r, &q->body, v, "metadata", 0,
                        h->cfg.max_metadata_chars))
        return -1;
    if (v) json_write(out, &q->body, v);
    else buf_adds(out, "{}");
    return 0;
}

/* A ttl_sec field (claims, locks): default 300, at least 5, at most ten
 * years so that expiry stays a printable date. */
static int hub_ttl(Req *q, Res *r, int64_t *ttl) {
    *ttl = 300;
    int rc = hub_int(q, r, "ttl_sec", ttl);
    if (rc < 0) return -1;
    if (rc && *ttl < 5) {
        hub_fail(r, 400, "ttl_sec must be at least 5");
        return -1;
    }
    if (rc && *ttl > ARC_MAX_TTL_S) {
        hub_fail(r, 400, "ttl_sec must be at most %d", ARC_MAX_TTL_S);
        return -1;
    }
    return 0;
}

/* Query parameter into q->tmp: 1 present (non-empty), 0 absent, -1 (r
 * failed) when it does not decode to UTF-8. */
static int hub_qp(Req *q, Res *r, const char *name) {
    int rc = http_query_get(q->query, name, &q->tmp);
    if (rc < 0) hub_fail(r, 400, "query parameter %s is not valid UTF-8", name);
    return rc;
}

/* An identifier in the query (agent, channel, thread...) into q->tmp: as
 * hub_qp, and -1 (r failed) when it holds a NUL (see hub_no_nul). */
static int hub_qid(Req *q, Res *r, const char *name) {
    int rc = hub_qp(q, r, name);
    if (rc > 0 && memchr(q->tmp.p, 0, q->tmp.len)) {
        hub_fail(r, 400, "query parameter %s must not contain a NUL character",
                 name);
        return -1;
    }
    return rc;
}

/* Query identifier copied out (owned), or NULL when absent. */
static char *hub_qdup(Req *q, Res *r, const char *name, int *err) {
    int rc = hub_qid(q, r, name);
    if (rc < 0) *err = 1;
    return rc > 0 ? xstrndup(q->tmp.p, q->tmp.len) : NULL;
}

static int hub_qbool(Req *q, const char *name) {
    Buf b = { 0 };
    int v = 0;
    if (http_query_get(q->query, name, &b) > 0) {
        Str s = buf_str(&b);
        v = str_ieq(s, "true") || str_eq(s, "1") || str_ieq(s, "yes");
    }
    buf_free(&b);
    return v;
}

/* Integer query parameter with a default; -1 with r failed on bad input. */
static int hub_qint(Req *q, Res *r, const char *name, int64_t dflt,
                    int64_t *out) {
    *out = dflt;
    int rc = hub_qp(q, r, name);
    if (rc < 0) return -1;
    if (rc == 0) return 0;
    if (parse_int_text(buf_str(&q->tmp), out)) {
        hub_fail(r, 400, "%s must be an integer", name);
        return -1;
    }
    return 0;
}

static int hub_since_limit(Req *q, Res *r, int64_t *since, int *limit) {
    int64_t l;
    if (hub_qint(q, r, "since_id", 0, since)) return -1;
    if (*since < 0) {
        hub_fail(r, 400, "since_id must be >= 0");
        return -1;
    }
    if (hub_qint(q, r, "limit", 100, &l)) return -1;
    if (l < 1) {
        hub_fail(r, 400, "limit must be at least 1");
        return -1;
    }
    *limit = l > ARC_MAX_LIMIT ? ARC_MAX_LIMIT : (int)l;
    return 0;
}

/* Long-poll timeout in milliseconds, clamped to [0, 60 s]. */
static int hub_timeout(Req *q, Res *r, int64_t *ms) {
    *ms = 0;
    int rc = hub_qp(q, r, "timeout");
    if (rc <= 0) return rc;
    char *end;
    errno = 0;
    double t = strtod(buf_cstr(&q->tmp), &end);
    while (*end && isspace((unsigned char)*end)) end++;
    /* The number must run to the end of the value: a decoded %00 would
     * otherwise end it early for strtod and strpbrk alike. */
    if (end == q->tmp.p || end != q->tmp.p + q->tmp.len || isnan(t) ||
        strpbrk(q->tmp.p, "xX")) {
        hub_fail(r, 400, "timeout must be a number");
        return -1;
    }
    if (t < 0) t = 0;
    if (t > ARC_MAX_WAIT_S) t = ARC_MAX_WAIT_S;
    *ms = (int64_t)(t * 1000);
    return 0;
}

/* ---- sessions and presence ---- */

static void hub_touch(Hub *h, Req *q, Res *r, Str agent) {
    static const char sql[] =
        "UPDATE sessions SET last_seen=? WHERE agent_id=? AND active=1";
    if (!agent.n || hub_tx(h, q, r)) return;
    char now[ISO_LEN];
    hub_now(now);
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) return;
    store_bind_c(st, 1, now);
    store_bind(st, 2, agent);
    store_done(&h->store, st);
}

/* Is a stored timestamp at or after `cutoff_us`? Unparseable counts as old. */
static int hub_ts_at_least(Str ts, int64_t cutoff_us) {
    int64_t us;
    return ts.p && iso_parse(ts, &us) == 0 && us >= cutoff_us;
}

static int hub_post_system(Hub *h, Req *q, Res *r, Str channel, Str body,
                           int64_t reply_to, Str thread, const char *meta);
static int hub_thread_channel(Hub *h, Str thread, Buf *out);

/* A claim or lock of an expired agent, collected before any notice is
 * posted (posting reuses the statements being stepped). */
typedef struct {
    char *key;       /* owned: claim_key or file_path */
    char *thread;    /* owned or NULL: the thread it belongs to */
    char *channel;   /* owned or NULL: a lock's metadata.channel */
    int64_t task;    /* a claim's task_message_id, or ARC_NO_ID */
} Stale;

/* Collect an agent's live claims (is_lock 0) or locks (1). Returns the
 * count; *out is owned by the caller. */
static int hub_stale_collect(Hub *h, Str agent, const char *now, int is_lock,
                             Stale **out) {
    static const char claims_sql[] =
        "SELECT claim_key,thread_id,task_message_id FROM claims"
        " WHERE owner_agent_id=? AND released_at IS NULL"
        " AND julianday(expires_at)>=julianday(?) ORDER BY claimed_at";
    static const char locks_sql[] =
        "SELECT file_path,metadata_json FROM locks WHERE agent_id=?"
        " AND released_at IS NULL AND julianday(expires_at)>=julianday(?)"
        " ORDER BY locked_at";
    Stale *items = NULL;
    int n = 0, cap = 0;
    Json mj = { 0 };
    Buf tmp = { 0 };
    sqlite3_stmt *st = store_stmt(&h->store, is_lock ? locks_sql : claims_sql);
    if (st) {
        store_bind(st, 1, agent);
        store_bind_c(st, 2, now);
    }
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        if (n == cap) items = vec_grow(items, &cap, sizeof *items);
        Stale *it = &items[n++];
        Str k = store_col(st, 0), t = store_col(st, 1);
        *it = (Stale){ .key = xstrndup(k.p ? k.p : "", k.n), .task = ARC_NO_ID };
        if (!is_lock) {
            it->thread = t.p ? xstrndup(t.p, t.n) : NULL;
            if (sqlite3_column_type(st, 2) != SQLITE_NULL)
                it->task = sqlite3_column_int64(st, 2);
        } else if (t.p && json_parse(&mj, t.p, t.n) == 0) {   /* metadata */
            static const char *const keys[] = { "thread_id", "channel" };
            char **dst[] = { &it->thread, &it->channel };
            for (int i = 0; i < 2; i++) {
                uint32_t v = json_get_val(&mj, 0, keys[i]);
                if (!v) continue;
                buf_reset(&tmp);
                json_as_text(&tmp, &mj, v);
                *dst[i] = xstrndup(buf_cstr(&tmp), tmp.len);
            }
        }
    }
    if (st) sqlite3_reset(st);
    json_free(&mj);
    buf_free(&tmp);
    *out = items;
    return n;
}

/* Release one stale claim or lock and post its recovery notice: in the
 * thread's channel, else the lock's metadata.channel, else general. */
static void hub_stale_release(Hub *h, Req *q, Res *r, Str agent, const char *now,
                              const Stale *it, int is_lock) {
    static const char rel_claim[] =
        "UPDATE claims SET released_at=? WHERE claim_key=?";
    static const char rel_lock[] =
        "UPDATE locks SET released_at=? WHERE file_path=?";
    sqlite3_stmt *st = store_stmt(&h->store, is_lock ? rel_lock : rel_claim);
    if (st) {
        store_bind_c(st, 1, now);
        store_bind_c(st, 2, it->key);
        store_done(&h->store, st);
    }
    Buf chan = { 0 }, body = { 0 }, meta = { 0 };
    if (!it->thread || !hub_thread_channel(h, str_c(it->thread), &chan))
        buf_adds(&chan, it->channel && *it->channel ? it->channel : "general");
    buf_addf(&body, is_lock ? "Recovered stale lock on %s from "
                            : "Recovered stale claim %s from ", it->key);
    buf_addstr(&body, agent);
    buf_adds(&body, is_lock ? ". The file is available for pickup."
                            : ". Work is available for pickup.");
    buf_adds(&meta, "{\"recovery\":true,\"stale_agent_id\":");
    json_strs(&meta, agent);
    buf_adds(&meta, is_lock ? ",\"file_path\":" : ",\"claim_key\":");
    json_cstr(&meta, it->key);
    if (!is_lock) {
        buf_adds(&meta, ",\"task_message_id\":");
        if (it->task != ARC_NO_ID) buf_add_i64(&meta, it->task);
        else buf_adds(&meta, "null");
    }
    buf_addc(&meta, '}');
    hub_post_system(h, q, r, buf_str(&chan), buf_str(&body), it->task,
                    str_c(it->thread), buf_cstr(&meta));
    buf_free(&chan), buf_free(&body), buf_free(&meta);
}

/* Release every active claim and lock of an agent whose session expired,
 * posting a recovery notice for each (PROTOCOL §9). */
static void hub_recover(Hub *h, Req *q, Res *r, Str agent) {
    char now[ISO_LEN];
    hub_now(now);
    for (int is_lock = 0; is_lock < 2; is_lock++) {
        Stale *items;
        int n = hub_stale_collect(h, agent, now, is_lock, &items);
        for (int i = 0; i < n; i++) {
            hub_stale_release(h, q, r, agent, now, &items[i], is_lock);
            free(items[i].key), free(items[i].thread), free(items[i].channel);
        }
        free(items);
    }
}

/* Presence follows sessions that end (§17.5); defined with receipts. */
static int hub_pr_gone(Hub *h, const char *session, Str agent);

/* Deactivate sessions idle past the presence TTL and recover their work.
 * Runs on the prune tick and before listing agents. Returns how many. */
static int hub_expire_sessions(Hub *h, Req *q, Res *r) {
    static const char find[] =
        "SELECT session_id,agent_id,last_seen FROM sessions WHERE active=1";
    static const char deact[] =
        "UPDATE sessions SET active=0 WHERE session_id=?";
    int64_t cutoff = clock_wall_us() - h->cfg.presence_ttl_s * 1000000;
    struct { char *id, *agent; } *ex = NULL;   /* owned, and their strings */
    int n = 0, cap = 0;
    sqlite3_stmt *st = store_stmt(&h->store, find);
    if (!st) return 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (hub_ts_at_least(store_col(st, 2), cutoff)) continue;
        if (n == cap) ex = vec_grow(ex, &cap, sizeof *ex);
        Str a = store_col(st, 0), b = store_col(st, 1);
        ex[n].id = xstrndup(a.p ? a.p : "", a.n);
        ex[n].agent = xstrndup(b.p ? b.p : "", b.n);
        n++;
    }
    sqlite3_reset(st);
    if (n && hub_tx(h, q, r) == 0) {
        for (int i = 0; i < n; i++) {
            st = store_stmt(&h->store, deact);
            if (!st) break;
            store_bind_c(st, 1, ex[i].id);
            store_done(&h->store, st);
            hub_pr_gone(h, NULL, str_c(ex[i].agent));   /* §17.5 */
            Buf a = { 0 };   /* agent ids are the clients' text: escaped */
            log_info("session expired: agent=%s session=%s", log_esc(&a, ex[i].agent),
                     ex[i].id);
            buf_free(&a);
        }
        for (int i = 0; i < n; i++) hub_recover(h, q, r, str_c(ex[i].agent));
    }
    for (int i = 0; i < n; i++) free(ex[i].id), free(ex[i].agent);
    free(ex);
    return n;
}

/* ---- the thread summary's catch-up (store_fold_threads) ---- */

/* Fold one chunk into the thread summary if it lags. A chunk that cannot
 * be written (the lock is taken) waits for the next prune tick. */
static void hub_fold(Hub *h, Req *q, Res *r) {
    if (!h->fold_behind) return;
    h->fold_behind = 0;
    if (hub_tx(h, q, r)) return;
    int behind;
    if (store_fold_threads(&h->store, STORE_FOLD_CHUNK, &behind)) hub_db_fail(h, r);
    else h->fold_behind = behind;
}

/* Does the summary lag (rows of another process, or an old file)? Asked
 * on the prune tick; timer_fold then catches up. */
static void hub_fold_check(Hub *h) { h->fold_behind = store_fold_behind(&h->store); }

static int hub_fold_pending(const Hub *h) { return h->fold_behind; }

/* ---- delivery: what is owed to an agent's turns (arc:delivery, §16) ---- */

/* Every message is indexed once, when stored (hub_dl_new) or, written by
 * another process, when a later request catches up (hub_dl_sync): each
 * agent it is deliverable to gets a row in arc_delivery, owed (via NULL)
 * until some path surfaces it. A take is then one range of the partial
 * index arc_ix_dl_owed, however large the store. */

#define ARC_DL_MAX_MENTIONS 16    /* agents one message can mention */
#define ARC_DL_CHUNK 4000         /* foreign messages indexed per request */
#define ARC_DL_MAX_VIA 32         /* bytes of a `via` name */

/* May c continue a mention token (PROTOCOL §16.2)? */
static int hub_dl_tokc(unsigned char c) {
    return isalnum(c) || c == '_' || c == '-' || c == '.';
}

/* Record that message `id` is deliverable to `agent` (first reason wins).
 * Returns 0 or -1. */
static int hub_dl_add(Hub *h, Str agent, int64_t id, const char *reason) {
    static const char sql[] = "INSERT OR IGNORE INTO arc_delivery"
        "(agent_id,message_id,reason) VALUES(?1,?2,?3)";
    if (!agent.n || memchr(agent.p, 0, agent.n)) return 0;
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) return -1;
    store_bind(st, 1, agent);
    sqlite3_bind_int64(st, 2, id);
    store_bind_c(st, 3, reason);
    return store_done(&h->store, st);
}

/* The sender of message `id` into out (reset first); 1 found, 0 not. */
static int hub_dl_author(Hub *h, int64_t id, Buf *out) {
    sqlite3_stmt *st = store_stmt(&h->store,
                                  "SELECT from_agent FROM messages WHERE id=?1");
    int found = 0;
    buf_reset(out);
    if (!st) return 0;
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) == SQLITE_ROW) {
        buf_addstr(out, store_col(st, 0));
        found = 1;
    }
    sqlite3_reset(st);
    return found;
}

/* Receipts index every message right after its delivery rows (§17.1);
 * defined with them below, after the delivery endpoints they read. */
static int hub_rc_index(Hub *h, const StoreMsg *m);

/* Index one stored message (PROTOCOL §16.2): who it is deliverable to.
 * Returns 0 or -1 (a database error). */
static int hub_dl_index(Hub *h, const StoreMsg *m) {
    int rc = -1;
    Buf who = { 0 };
    Json j = { 0 };
    Str from = m->from;
    if (m->to.p) {   /* a DM or request reaches its recipient alone */
        int self = m->to.n == from.n && !memcmp(m->to.p, from.p, from.n);
        rc = self ? 0 : hub_dl_add(h, m->to, m->id,
                                   str_eq(m->kind, "task_request") ? "request" : "dm");
        goto done;
    }
    const char *b = m->body.p ? m->body.p : "";
    int n_men = 0;
    for (size_t i = 0; i < m->body.n && n_men < ARC_DL_MAX_MENTIONS; i++) {
        if (b[i] != '@') continue;
        if (i && (hub_dl_tokc((unsigned char)b[i - 1]) || b[i - 1] == '@' ||
                  b[i - 1] == '+'))
            continue;   /* bob@example.org, @@x: not a mention */
        size_t k = i + 1;
        while (k < m->body.n && hub_dl_tokc((unsigned char)b[k])) k++;
        Str tok = { b + i + 1, k - i - 1 };
        while (tok.n && tok.p[tok.n - 1] == '.') tok.n--;   /* "@bob." */
        i = k - 1;
        if (!tok.n || (tok.n == from.n && !memcmp(tok.p, from.p, from.n))) continue;
        if (hub_dl_add(h, tok, m->id, "mention")) goto done;
        n_men++;
    }
    if (m->reply_to != ARC_NO_ID && hub_dl_author(h, m->reply_to, &who) &&
        !str_eq(from, who.p) && hub_dl_add(h, buf_str(&who), m->id, "reply"))
        goto done;
    if (str_eq(from, "system") && str_eq(m->kind, "notice") && m->metadata.n &&
        json_parse(&j, m->metadata.p, m->metadata.n) == 0 &&
        j.t[0].type == JSON_OBJ) {
        uint32_t v = json_get(&j, 0, "stale_agent_id");   /* §9.3 */
        if (v && j.t[v].type == JSON_STR) {
            buf_reset(&who);
            json_unescape(&j, v, &who);
            if (hub_dl_add(h, buf_str(&who), m->id, "notice")) goto done;
        }
        int64_t task;   /* §14.4: the unblocked task's author */
        if ((v = json_get(&j, 0, "unblocked")) && j.t[v].type == JSON_TRUE &&
            (v = json_get(&j, 0, "task_id")) && json_to_i64(&j, v, &task) == 0 &&
            hub_dl_author(h, task, &who) &&
            hub_dl_add(h, buf_str(&who), m->id, "notice"))
            goto done;
    }
    rc = 0;
done:
    if (!rc) rc = hub_rc_index(h, m);   /* receipts, on these rows (§17) */
    json_free(&j);
    buf_free(&who);
    return rc;
}

/* The mark as stored (the row exists from store_open on). */
static int64_t hub_dl_mark(Hub *h) {
    if (h->dl_mark) return h->dl_mark;
    sqlite3_stmt *st = store_stmt(&h->store,
                                  "SELECT scanned_id FROM arc_delivery_mark WHERE k=0");
    if (st && sqlite3_step(st) == SQLITE_ROW) h->dl_mark = sqlite3_column_int64(st, 0);
    if (st) sqlite3_reset(st);
    h->dl_saved = h->dl_mark;
    return h->dl_mark;
}

/* Write the mark into the table when it moved far enough (re-indexing is
 * harmless, INSERT OR IGNORE, so a lagging stored mark only costs a
 * re-scan after a restart). Inside the request's transaction. */
static int hub_dl_save(Hub *h, int force) {
    if (h->dl_mark == h->dl_saved || (!force && h->dl_mark - h->dl_saved < 64))
        return 0;
    sqlite3_stmt *st = store_stmt(&h->store,
                                  "UPDATE arc_delivery_mark SET scanned_id=?1 WHERE k=0");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, h->dl_mark);
    if (store_done(&h->store, st)) return -1;
    h->dl_saved = h->dl_mark;
    return 0;
}

/* The highest message id (0: none), or -1 on a database error. */
static int64_t hub_dl_top(Hub *h) {
    sqlite3_stmt *st = store_stmt(&h->store, "SELECT max(id) FROM messages");
    int64_t top = -1;
    if (!st) return -1;
    if (sqlite3_step(st) == SQLITE_ROW) top = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return top;
}

/* Index the messages after the mark, up to `top` but at most ARC_DL_CHUNK
 * of them, inside the open transaction. Returns 0 or -1. */
static int hub_dl_catch_up(Hub *h, int64_t top) {
    int64_t mark = hub_dl_mark(h);
    if (top <= mark) return 0;
    sqlite3_stmt *st = store_stmt(&h->store, "SELECT " M_COLS " FROM messages"
                                  " WHERE id>?1 AND id<=?2 ORDER BY id LIMIT ?3");
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, mark);
    sqlite3_bind_int64(st, 2, top);
    sqlite3_bind_int(st, 3, ARC_DL_CHUNK);
    int rc, n = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sqlite3_value *rv = sqlite3_column_value(st, 8);
        StoreMsg m = {
            .id = sqlite3_column_int64(st, 0),
            .reply_to = sqlite3_value_type(rv) == SQLITE_NULL ? ARC_NO_ID
                                                              : sqlite3_value_int64(rv),
            .from = store_col(st, 2), .to = store_col(st, 3),
            .kind = store_col(st, 5), .body = store_col(st, 6),
            .metadata = store_col(st, 10),
        };
        if (hub_dl_index(h, &m)) break;
        mark = m.id;
        n++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) return -1;   /* a step or hub_dl_index failed */
    h->dl_mark = n < ARC_DL_CHUNK ? top : mark;
    return hub_dl_save(h, 1);
}

/* Index messages other processes stored since the mark (hub_dl_catch_up),
 * opening the request's transaction only when there are some. Returns 0,
 * or -1 with r failed. */
static int hub_dl_sync(Hub *h, Req *q, Res *r) {
    int64_t top = hub_dl_top(h);
    if (top < 0) goto db;
    if (top <= hub_dl_mark(h)) return 0;
    if (hub_tx(h, q, r)) return -1;
    if (hub_dl_catch_up(h, top)) goto db;
    return 0;
db:
    hub_db_fail(h, r);
    return -1;
}

/* After storing message m (id m->id): index it, first catching up on what
 * others stored before it. Returns 0, or -1 with r failed. */
static int hub_dl_new(Hub *h, Req *q, Res *r, const StoreMsg *m) {
    if (hub_dl_mark(h) != m->id - 1) return hub_dl_sync(h, q, r);
    if (hub_dl_index(h, m)) {
        hub_db_fail(h, r);
        return -1;
    }
    h->dl_mark = m->id;
    if (hub_dl_save(h, 0)) {
        hub_db_fail(h, r);
        return -1;
    }
    return 0;
}

/* Mark agent's owed messages with ids in (since, upto] that pass the
 * channel and thread filters (NULL: none) as surfaced through `via`: what
 * a read of /v1/events returned (PROTOCOL §16.4). Returns 0 or -1. */
static int hub_dl_mark_range(Hub *h, const char *agent, const char *via,
                             int64_t since, int64_t upto, const char *channel,
                             const char *thread) {
    static const char sql[] = "UPDATE arc_delivery SET via=?2,surfaced_at=?3"
        " WHERE agent_id=?1 AND via IS NULL AND message_id>?4 AND message_id<=?5"
        " AND (?6 IS NULL OR message_id IN (SELECT id FROM messages"
        " WHERE id>?4 AND id<=?5 AND channel=?6))"
        " AND (?7 IS NULL OR message_id IN (SELECT id FROM messages"
        " WHERE id>?4 AND id<=?5 AND thread_id=?7))";
    char now[ISO_LEN];
    hub_now(now);
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) return -1;
    store_bind_c(st, 1, agent);
    store_bind_c(st, 2, via);
    store_bind_c(st, 3, now);
    sqlite3_bind_int64(st, 4, since);
    sqlite3_bind_int64(st, 5, upto);
    store_bind_c(st, 6, channel);
    store_bind_c(st, 7, thread);
    return store_done(&h->store, st);
}

static void hub_dl_later_free(HubSurfaced *s) {
    free(s->agent), free(s->via), free(s->channel), free(s->thread);
}

/* Mark what the loop answered parked reads with (hub_wait_answered), in
 * the batch transaction hub_tx has just opened: before any other request
 * of this hub can take the same messages. A failed write loses the marks:
 * such messages may be surfaced once more (at least once, §16.4). */
static void hub_dl_flush(Hub *h) {
    HubSurfaced *list = h->dl_later;   /* taken: nothing re-enters here */
    int n = h->n_dl_later;
    h->dl_later = NULL;
    h->n_dl_later = h->cap_dl_later = 0;
    int64_t top = hub_dl_top(h);
    int rc = top < 0 || (top > hub_dl_mark(h) && hub_dl_catch_up(h, top));
    for (int i = 0; i < n && !rc; i++)
        rc = hub_dl_mark_range(h, list[i].agent, list[i].via, list[i].since,
                               list[i].upto, list[i].channel, list[i].thread);
    if (rc) log_warn("delivery: cannot mark answered reads: %s",
                     sqlite3_errmsg(h->store.db));
    for (int i = 0; i < n; i++) hub_dl_later_free(&list[i]);
    free(list);
}

/* The loop answered w, a parked read, with messages up to id `upto`: if
 * it asked for them to be marked surfaced, remember to (hub_dl_flush). */
static void hub_wait_answered(Hub *h, const Wait *w, int64_t upto) {
    if (!w->via || w->kind != WAIT_EVENTS) return;
    if (h->n_dl_later == h->cap_dl_later)
        h->dl_later = vec_grow(h->dl_later, &h->cap_dl_later, sizeof *h->dl_later);
    HubSurfaced *s = &h->dl_later[h->n_dl_later++];
    s->agent = xstrndup(w->agent, strlen(w->agent));
    s->via = xstrndup(w->via, strlen(w->via));
    s->channel = w->channel ? xstrndup(w->channel, strlen(w->channel)) : NULL;
    s->thread = w->thread ? xstrndup(w->thread, strlen(w->thread)) : NULL;
    s->since = w->since_id;
    s->upto = upto;
}

/* Was m, new this turn, surfaced already to the agent of w, a parked read
 * with `surfaced` (PROTOCOL §16.4)? By a take or read in the turn that
 * committed it (its arc_delivery row has a `via`), or by a parked read
 * answered earlier in this fan-out (a mark hub_dl_flush has still to
 * write). One primary-key probe; a message not owed to the agent never
 * was. A database error answers no: at least once, never lost. */
static int hub_dl_shown(Hub *h, const Wait *w, const NewMsg *m) {
    static const char sql[] = "SELECT via IS NOT NULL FROM arc_delivery"
        " WHERE agent_id=?1 AND message_id=?2";
    assert(w->via && w->kind == WAIT_EVENTS);
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) return 0;
    store_bind_c(st, 1, w->agent);
    sqlite3_bind_int64(st, 2, m->id);
    int rc = sqlite3_step(st), shown = rc == SQLITE_ROW && sqlite3_column_int(st, 0);
    sqlite3_reset(st);
    if (rc != SQLITE_ROW || shown) return shown;
    for (int i = 0; i < h->n_dl_later; i++) {
        const HubSurfaced *s = &h->dl_later[i];
        if (m->id > s->since && m->id <= s->upto && !strcmp(s->agent, w->agent) &&
            (!s->channel || !strcmp(s->channel, m->channel)) &&
            (!s->thread || (m->thread && !strcmp(s->thread, m->thread))))
            return 1;
    }
    return 0;
}

/* The delivery endpoints' agent: the path segment (PROTOCOL §16.3). */
static Str hub_dl_agent(Req *q) { return buf_str(&q->arg); }

/* Append agent's open task_requests with fewer than max_nudges Stop
 * continuations (PROTOCOL §16.5) as {"nudges":N,"message":{...}} items;
 * with `bump`, count one more continuation for each. Returns how many, or
 * -1 on a database error. */
static int hub_dl_requests(Hub *h, Str agent, int64_t max_nudges, int bump, Buf *b) {
    static const char sql[] = "SELECT d.message_id,d.nudges FROM arc_delivery d"
        " JOIN tasks t ON t.task_id=d.message_id WHERE d.agent_id=?1"
        " AND d.reason='request' AND t.status='open' AND d.nudges<?2"
        " ORDER BY d.message_id LIMIT 20";
    static const char inc[] = "UPDATE arc_delivery SET nudges=nudges+1"
        " WHERE agent_id=?1 AND message_id=?2";
    int64_t ids[20], nudges[20];
    int n = 0, rc;
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) return -1;
    store_bind(st, 1, agent);
    sqlite3_bind_int64(st, 2, max_nudges);
    while (n < 20 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        ids[n] = sqlite3_column_int64(st, 0);
        nudges[n++] = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    buf_addc(b, '[');
    for (int i = 0; i < n; i++) {
        if (bump) {
            if (!(st = store_stmt(&h->store, inc))) return -1;
            store_bind(st, 1, agent);
            sqlite3_bind_int64(st, 2, ids[i]);
            if (store_done(&h->store, st)) return -1;
        }
        buf_addf(b, "%s{\"nudges\":%lld,\"message\":", i ? "," : "",
                 (long long)(nudges[i] + bump));
        store_emit_message_id(&h->store, b, ids[i]);
        buf_addc(b, '}');
    }
    buf_addc(b, ']');
    return n;
}

/* How many messages agent is owed; -1 on a database error. */
static int64_t hub_dl_owed(Hub *h, Str agent) {
    sqlite3_stmt *st = store_stmt(&h->store, "SELECT count(*) FROM arc_delivery"
                                  " WHERE agent_id=?1 AND via IS NULL");
    int64_t n = -1;
    if (!st) return -1;
    store_bind(st, 1, agent);
    if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return n;
}

/* Append agent's owed messages, oldest first, as {"reason","message"}
 * items: at most `limit`, stopping before the one that would take the
 * items past max_chars bytes (the first always goes in). With `via`,
 * mark them surfaced. Returns how many, or -1 on a database error. */
static int hub_dl_items(Hub *h, Str agent, int64_t limit, int64_t max_chars,
                        const char *via, Buf *b) {
    static const char sql[] = "SELECT message_id,reason FROM arc_delivery"
        " WHERE agent_id=?1 AND via IS NULL ORDER BY message_id LIMIT ?2";
    static const char mark[] = "UPDATE arc_delivery SET via=?3,surfaced_at=?4"
        " WHERE agent_id=?1 AND message_id=?2";
    int64_t *ids = NULL;
    char (*why)[12] = NULL;
    int n = 0, cap = 0, rc = -1, taken = 0;
    Buf item = { 0 };
    char now[ISO_LEN];
    hub_now(now);
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) goto done;
    store_bind(st, 1, agent);
    sqlite3_bind_int64(st, 2, limit);
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (n == cap) {
            ids = vec_grow(ids, &cap, sizeof *ids);
            why = xrealloc(why, (size_t)cap * sizeof *why);
        }
        ids[n] = sqlite3_column_int64(st, 0);
        snprintf(why[n++], sizeof *why, "%s", (const char *)sqlite3_column_text(st, 1));
    }
    sqlite3_reset(st);
    store_cache_sync(&h->store);
    size_t start = b->len;
    buf_addc(b, '[');
    for (int i = 0; i < n; i++) {
        buf_reset(&item);
        buf_adds(&item, i ? ",{\"reason\":" : "{\"reason\":");
        json_cstr(&item, why[i]);
        buf_adds(&item, ",\"message\":");
        store_emit_message_id(&h->store, &item, ids[i]);
        buf_addc(&item, '}');
        if (taken && (int64_t)(b->len - start + item.len + 1) > max_chars) break;
        if (via) {
            if (!(st = store_stmt(&h->store, mark))) goto done;
            store_bind(st, 1, agent);
            sqlite3_bind_int64(st, 2, ids[i]);
            store_bind_c(st, 3, via);
            store_bind_c(st, 4, now);
            if (store_done(&h->store, st)) goto done;
        }
        buf_addstr(b, buf_str(&item));
        taken++;
    }
    buf_addc(b, ']');
    rc = taken;
done:
    free(ids);
    free(why);
    buf_free(&item);
    return rc;
}

/* A presence report riding on a delivery call (PROTOCOL §16.3, §17.5), so
 * a hook says what its agent is doing without a second round trip: parsed
 * before the call's work, recorded after it. */
typedef struct {
    char state[12];      /* "" none */
    char if_any[12];     /* recorded instead when the call returned something */
    int has_pid;         /* pid, start: a live process here, to watch */
    int64_t pid, start;
} HubPrReport;

/* Defined with presence below, beside the §17.5 route they share. */
static int hub_pr_report_parse(Hub *h, Req *q, Res *r, HubPrReport *p);
static int hub_pr_report(Hub *h, Req *q, Res *r, Str agent, const HubPrReport *p,
                         int any);

/* POST /v1/delivery/{agent_id}/take (PROTOCOL §16.3): the owed messages,
 * marked surfaced in the same transaction, and how many more are owed. */
static void hub_delivery_take(Hub *h, Req *q, Res *r) {
    Str agent = hub_dl_agent(q);
    Buf via = { 0 };
    int64_t limit = 20, max_chars = 65536;
    int rc = hub_int(q, r, "limit", &limit);
    if (rc < 0) goto done;
    if (rc && limit < 1) {
        hub_fail(r, 400, "limit must be at least 1");
        goto done;
    }
    if (limit > ARC_MAX_LIMIT) limit = ARC_MAX_LIMIT;
    if ((rc = hub_int(q, r, "max_chars", &max_chars)) < 0) goto done;
    if (rc && max_chars < 1) {
        hub_fail(r, 400, "max_chars must be at least 1");
        goto done;
    }
    if ((rc = hub_str(q, r, "via", 0, &via)) < 0) goto done;
    if (!rc) buf_adds(&via, "take");
    for (size_t i = 0; i < via.len; i++)
        if (!islower((unsigned char)via.p[i]) && !isdigit((unsigned char)via.p[i]) &&
            via.p[i] != '_' && via.p[i] != '-')
            via.len = ARC_DL_MAX_VIA + 1;
    if (!via.len || via.len > ARC_DL_MAX_VIA) {
        hub_fail(r, 400, "via must be 1 to %d characters of a-z, 0-9, _ and -",
                 ARC_DL_MAX_VIA);
        goto done;
    }
    HubPrReport pr;
    if (hub_pr_report_parse(h, q, r, &pr)) goto done;
    /* Nothing owed and nothing to index: answer from a read, so the hook
     * on every prompt and tool call costs no write (and no fsync). */
    int64_t top = hub_dl_top(h);
    if (top >= 0 && top <= hub_dl_mark(h) && hub_dl_owed(h, agent) == 0) {
        if (hub_pr_report(h, q, r, agent, &pr, 0)) goto done;
        hub_ok(r, 200);
        buf_adds(&r->body, "{\"agent_id\":");
        json_strs(&r->body, agent);
        buf_adds(&r->body, ",\"items\":[],\"more\":0}");
        hub_ok_end(r);
        goto done;
    }
    hub_touch(h, q, r, agent);   /* a hook's call is the agent at work */
    if (r->status >= 400 || hub_tx(h, q, r) || hub_dl_sync(h, q, r)) goto done;
    hub_ok(r, 200);
    buf_adds(&r->body, "{\"agent_id\":");
    json_strs(&r->body, agent);
    buf_adds(&r->body, ",\"items\":");
    int64_t more;
    int n = hub_dl_items(h, agent, limit, max_chars, buf_cstr(&via), &r->body);
    if (n < 0 || (more = hub_dl_owed(h, agent)) < 0) {
        hub_db_fail(h, r);
        goto done;
    }
    if (hub_pr_report(h, q, r, agent, &pr, n > 0)) goto done;
    buf_addf(&r->body, ",\"more\":%lld}", (long long)more);
    hub_ok_end(r);
done:
    buf_free(&via);
}

/* GET /v1/delivery/{agent_id}?limit=N (PROTOCOL §16.3): what is owed and
 * the open requests, marking nothing. */
static void hub_delivery_peek(Hub *h, Req *q, Res *r) {
    Str agent = hub_dl_agent(q);
    int64_t limit, owed;
    if (hub_qint(q, r, "limit", 20, &limit)) return;
    if (limit < 0) {
        hub_fail(r, 400, "limit must be >= 0");
        return;
    }
    if (limit > ARC_MAX_LIMIT) limit = ARC_MAX_LIMIT;
    if (hub_dl_sync(h, q, r)) return;
    hub_ok(r, 200);
    buf_adds(&r->body, "{\"agent_id\":");
    json_strs(&r->body, agent);
    if ((owed = hub_dl_owed(h, agent)) < 0) goto db;
    buf_addf(&r->body, ",\"owed\":%lld,\"items\":", (long long)owed);
    if (limit && hub_dl_items(h, agent, limit, INT64_MAX, NULL, &r->body) < 0) goto db;
    if (!limit) buf_adds(&r->body, "[]");
    buf_adds(&r->body, ",\"requests\":");
    if (hub_dl_requests(h, agent, INT64_MAX, 0, &r->body) < 0) goto db;
    buf_addc(&r->body, '}');
    hub_ok_end(r);
    return;
db:
    hub_db_fail(h, r);
}

/* POST /v1/delivery/{agent_id}/nudge (PROTOCOL §16.5): the open requests
 * a Stop hook may still continue the turn for, each counted once more. */
static void hub_delivery_nudge(Hub *h, Req *q, Res *r) {
    Str agent = hub_dl_agent(q);
    int64_t max = 3;
    int rc = hub_int(q, r, "max", &max);
    if (rc < 0) return;
    if (rc && max < 1) {
        hub_fail(r, 400, "max must be at least 1");
        return;
    }
    HubPrReport pr;
    if (hub_pr_report_parse(h, q, r, &pr)) return;
    if (hub_tx(h, q, r) || hub_dl_sync(h, q, r)) return;
    hub_ok(r, 200);
    buf_adds(&r->body, "{\"agent_id\":");
    json_strs(&r->body, agent);
    buf_adds(&r->body, ",\"requests\":");
    int n = hub_dl_requests(h, agent, max, 1, &r->body);
    if (n < 0) {
        hub_db_fail(h, r);
        return;
    }
    if (hub_pr_report(h, q, r, agent, &pr, n > 0)) return;
    buf_addc(&r->body, '}');
    hub_ok_end(r);
}

/* ---- receipts, unanswered requests, presence (arc:receipts, §17) ---- */

/* A receipt is one (message, recipient) pair: an arc_delivery row of reason
 * dm, request or mention (§16.2), which already says queued (via NULL) or
 * surfaced (via, surfaced_at); arc_receipts adds read, acked and answered.
 * What waits for an answer or an ack is in arc_waiting until it comes:
 * the unanswered list and the escalation timer read that small table. */

#define ARC_RC_REASONS "('dm','request','mention')"   /* who gets receipts */
#define ARC_RC_BATCH 20         /* messages escalated per check */
#define ARC_RC_IDLE_MS 60000    /* check again when nothing is waiting */
#define ARC_PR_CHECK_MS 1000    /* how often watched pids are checked */

/* Defined with the admin surface below; a pid names a process only on the
 * hub's own machine, i.e. when the hub listens on loopback (§17.5). */
static int hub_is_loopback(const char *host);

/* An id, or null for 0. */
static void hub_rc_id(Buf *b, int64_t v) {
    if (v) buf_add_i64(b, v);
    else buf_adds(b, "null");
}

/* Does a message's metadata ask for acks, {"ack_required": true} (§17.1)?
 * The substring test spares a parse of every other message's metadata. */
static int hub_rc_ack_wanted(Str meta) {
    static const char key[] = "\"ack_required\"";
    int found = 0, yes = 0;
    for (size_t i = 0; i + sizeof key - 1 <= meta.n && !found; i++)
        found = !memcmp(meta.p + i, key, sizeof key - 1);
    Json j = { 0 };
    if (found && json_parse(&j, meta.p, meta.n) == 0 && j.t[0].type == JSON_OBJ) {
        uint32_t v = json_get(&j, 0, "ack_required");
        yes = v && j.t[v].type == JSON_TRUE;
    }
    json_free(&j);
    return yes;
}

/* Index one stored message for receipts, after hub_dl_index wrote its
 * delivery rows, in the same transaction (so new messages and those other
 * processes stored are indexed alike): a reply by a recipient answers its
 * receipt and ends what waited on it; a task_result ends the request's
 * wait for everyone; a task_request to an agent, or a message asking for
 * an ack, starts waiting for each recipient. Returns 0 or -1. */
static int hub_rc_index(Hub *h, const StoreMsg *m) {
    static const char answer[] =
        "INSERT INTO arc_receipts(message_id,agent_id,read_at,read_via,"
        "answered_at,answered_by) SELECT ?1,?2,?3,'answer',?3,?4"
        " WHERE EXISTS(SELECT 1 FROM arc_delivery WHERE agent_id=?2"
        " AND message_id=?1 AND reason IN " ARC_RC_REASONS ")"
        " ON CONFLICT(message_id,agent_id) DO UPDATE SET"
        " read_at=coalesce(read_at,excluded.read_at),"
        " read_via=coalesce(read_via,excluded.read_via),"
        " answered_at=coalesce(answered_at,excluded.answered_at),"
        " answered_by=coalesce(answered_by,excluded.answered_by)";
    static const char unwait[] = "DELETE FROM arc_waiting WHERE message_id=?1"
        " AND (agent_id=?2 OR (?3 AND kind='request'))";
    static const char wait[] =
        "INSERT OR IGNORE INTO arc_waiting(message_id,agent_id,kind,since_at)"
        " SELECT message_id,agent_id,CASE reason WHEN 'request' THEN 'request'"
        " ELSE 'ack' END,?2 FROM arc_delivery WHERE message_id=?1"
        " AND reason IN " ARC_RC_REASONS " AND (?3 OR reason='request')";
    char now[ISO_LEN];
    sqlite3_stmt *st;
    hub_now(now);
    if (m->reply_to != ARC_NO_ID) {
        if (!(st = store_stmt(&h->store, answer))) return -1;
        sqlite3_bind_int64(st, 1, m->reply_to);
        store_bind(st, 2, m->from);
        store_bind_c(st, 3, now);
        sqlite3_bind_int64(st, 4, m->id);
        if (store_done(&h->store, st)) return -1;
        if (!(st = store_stmt(&h->store, unwait))) return -1;
        sqlite3_bind_int64(st, 1, m->reply_to);
        store_bind(st, 2, m->from);
        sqlite3_bind_int(st, 3, str_eq(m->kind, "task_result"));
        if (store_done(&h->store, st)) return -1;
    }
    int ack = hub_rc_ack_wanted(m->metadata);
    if (!ack && !(m->to.p && str_eq(m->kind, "task_request"))) return 0;
    if (!(st = store_stmt(&h->store, wait))) return -1;
    sqlite3_bind_int64(st, 1, m->id);
    store_bind_c(st, 2, now);
    sqlite3_bind_int(st, 3, ack);
    if (store_done(&h->store, st)) return -1;
    int64_t due = clock_ms() + h->cfg.escalate_after_s * 1000;
    if (h->cfg.escalate_after_s > 0 && sqlite3_changes(h->store.db) &&
        h->rc_due_ms && due < h->rc_due_ms)
        h->rc_due_ms = due;   /* the timer wakes for it (hub_rc_next_ms) */
    return 0;
}

/* ---- presence ---- */

/* An agent's presence as shown (§17.5). */
typedef struct {
    char state[12];          /* working idle waiting present offline */
    char since[ISO_LEN];     /* when it entered it; "" never heard of */
    int live;                /* has a session within the presence TTL */
    int64_t pid;             /* the harness pid watched, 0 none */
} HubPresence;

/* Fill p for agent: its reported state while it is heard from (a live
 * session, a watched pid, or a report within the presence TTL), else
 * "present" with a live session, else offline since it was last heard.
 * Returns 0 or -1 (database). */
static int hub_pr_get(Hub *h, Str agent, HubPresence *p) {
    static const char row_sql[] = "SELECT state,since_at,seen_at,pid"
        " FROM arc_presence WHERE agent_id=?1";
    static const char last_sql[] =
        "SELECT max(last_seen) FROM sessions WHERE agent_id=?1";
    static const char live_sql[] = "SELECT created_at,last_seen FROM sessions"
        " WHERE agent_id=?1 AND active=1 ORDER BY created_at DESC LIMIT 1";
    int64_t cutoff = clock_wall_us() - h->cfg.presence_ttl_s * 1000000;
    char seen[ISO_LEN] = "", created[ISO_LEN] = "";
    int row = 0, heard = 0;
    memset(p, 0, sizeof *p);
    sqlite3_stmt *st = store_stmt(&h->store, row_sql);
    if (!st) return -1;
    store_bind(st, 1, agent);
    if (sqlite3_step(st) == SQLITE_ROW) {
        Str s = store_col(st, 0), since = store_col(st, 1), at = store_col(st, 2);
        row = 1;
        snprintf(p->state, sizeof p->state, "%.*s", (int)s.n, s.p ? s.p : "");
        snprintf(p->since, sizeof p->since, "%.*s", (int)since.n, since.p ? since.p : "");
        snprintf(seen, sizeof seen, "%.*s", (int)at.n, at.p ? at.p : "");
        p->pid = sqlite3_column_int64(st, 3);
        heard = p->pid || hub_ts_at_least(at, cutoff);
    }
    sqlite3_reset(st);
    if (!(st = store_stmt(&h->store, live_sql))) return -1;
    store_bind(st, 1, agent);
    if (sqlite3_step(st) == SQLITE_ROW) {
        Str c = store_col(st, 0);
        p->live = hub_ts_at_least(store_col(st, 1), cutoff);
        snprintf(created, sizeof created, "%.*s", (int)c.n, c.p ? c.p : "");
    }
    sqlite3_reset(st);
    int offline = row && !strcmp(p->state, "offline");
    if (row && !offline && (p->live || heard)) return 0;
    if (p->live) {
        snprintf(p->state, sizeof p->state, "present");
        if (!row || offline) memcpy(p->since, created, sizeof created);
        return 0;
    }
    if (!offline) {   /* not heard from: offline since it last was */
        if (!(st = store_stmt(&h->store, last_sql))) return -1;
        store_bind(st, 1, agent);
        Str last = sqlite3_step(st) == SQLITE_ROW ? store_col(st, 0) : (Str){ NULL, 0 };
        snprintf(p->since, sizeof p->since, "%.*s", (int)last.n, last.p ? last.p : "");
        sqlite3_reset(st);
        if (strcmp(seen, p->since) > 0) memcpy(p->since, seen, sizeof seen);
    }
    snprintf(p->state, sizeof p->state, "offline");
    p->pid = 0;
    return 0;
}

static void hub_pr_emit(Buf *b, const HubPresence *p) {
    buf_adds(b, "\"state\":");
    json_cstr(b, p->state);
    buf_adds(b, ",\"state_since\":");
    if (p->since[0]) json_cstr(b, p->since);
    else buf_adds(b, "null");
}

/* Record agent's reported state (keeping since when it is unchanged);
 * with set_pid, also the harness pid to watch (0: none). Returns 0 or -1. */
static int hub_pr_set(Hub *h, Str agent, const char *state, int set_pid,
                      int64_t pid, int64_t pid_start) {
    static const char sql[] =
        "INSERT INTO arc_presence(agent_id,state,since_at,seen_at,pid,pid_start)"
        " VALUES(?1,?2,?3,?3,?4,?5) ON CONFLICT(agent_id) DO UPDATE SET"
        " since_at=CASE WHEN state=excluded.state THEN since_at"
        " ELSE excluded.since_at END, state=excluded.state,"
        " seen_at=excluded.seen_at,"
        " pid=CASE WHEN ?6 THEN excluded.pid ELSE pid END,"
        " pid_start=CASE WHEN ?6 THEN excluded.pid_start ELSE pid_start END";
    char now[ISO_LEN];
    hub_now(now);
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) return -1;
    store_bind(st, 1, agent);
    store_bind_c(st, 2, state);
    store_bind_c(st, 3, now);
    if (set_pid && pid > 0) {
        sqlite3_bind_int64(st, 4, pid);
        sqlite3_bind_int64(st, 5, pid_start);
        if (!h->pr_check_ms) h->pr_check_ms = clock_ms() + ARC_PR_CHECK_MS;
    }
    sqlite3_bind_int(st, 6, set_pid);
    return store_done(&h->store, st);
}

/* The harness pid and start time a registration or state report carries
 * (§17.5): 1 with both, 0 without, -1 with r failed. Ignored (0) when the
 * hub is not on loopback: a remote client's pid names nothing here. */
static int hub_pr_pid(Hub *h, Req *q, Res *r, int64_t *pid, int64_t *start) {
    int a = hub_int(q, r, "pid", pid), b = a < 0 ? -1 : hub_int(q, r, "pid_start", start);
    if (a < 0 || b < 0) return -1;
    if (a != b || (a && (*pid < 2 || *pid > INT32_MAX || *start < 0))) {
        hub_fail(r, 400, "pid and pid_start go together: a process id above 1 and "
                 "its start time in clock ticks (/proc/PID/stat field 22)");
        return -1;
    }
    /* A pid from another pid namespace (a sandbox) names some other
     * process here, or none: watching it would take a live agent offline.
     * Watch only a process that is alive here with that start time. */
    return a && hub_is_loopback(h->cfg.host) && proc_alive((long)*pid, *start) == 1;
}

/* The presence members of a delivery call's body (PROTOCOL §16.3):
 * "state", "state_if_any" (working, idle, waiting or present), "pid" and
 * "pid_start" as §17.5's. Returns 0, or -1 with r failed (400). */
static int hub_pr_report_parse(Hub *h, Req *q, Res *r, HubPrReport *p) {
    static const char *const states[] = { "working", "idle", "waiting", "present" };
    static const char *const keys[] = { "state", "state_if_any" };
    char *dst[] = { p->state, p->if_any };
    Buf s = { 0 };
    int rc = 0;
    memset(p, 0, sizeof *p);
    for (int i = 0; i < 2 && !rc; i++) {
        int got = hub_str(q, r, keys[i], 0, &s), ok = 0;
        if (got <= 0) {
            rc = got;
            continue;
        }
        for (size_t k = 0; k < sizeof states / sizeof *states; k++)
            if (str_eq(buf_str(&s), states[k]))
                ok = 1, snprintf(dst[i], sizeof p->state, "%s", states[k]);
        if (!ok) {
            hub_fail(r, 400, "%s must be working, idle, waiting or present", keys[i]);
            rc = -1;
        }
    }
    if (!rc && (p->has_pid = hub_pr_pid(h, q, r, &p->pid, &p->start)) < 0) rc = -1;
    buf_free(&s);
    return rc;
}

/* Record a delivery call's presence report for agent: its if_any state
 * when the call returned something (`any`: a Stop hook that continues the
 * turn), else its state. Best effort, as the marks of a read (§17.2): a
 * failed write is logged and the call still answers. An unchanged state
 * and pid heard within a quarter of the presence TTL write nothing, so a
 * hook on every tool call costs no fsync. Returns 0, or -1 with r failed
 * when the transaction could not begin (503: a busy store retries). */
static int hub_pr_report(Hub *h, Req *q, Res *r, Str agent, const HubPrReport *p,
                         int any) {
    static const char sql[] = "SELECT state,pid,pid_start,seen_at FROM arc_presence"
        " WHERE agent_id=?1";
    const char *state = any && p->if_any[0] ? p->if_any : p->state;
    int same = 0;
    if (!state[0]) return 0;
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (st) {
        store_bind(st, 1, agent);
        if (sqlite3_step(st) == SQLITE_ROW) {
            int64_t fresh = clock_wall_us() - h->cfg.presence_ttl_s * 250000;
            same = str_eq(store_col(st, 0), state) &&
                   hub_ts_at_least(store_col(st, 3), fresh) &&
                   (!p->has_pid || (sqlite3_column_int64(st, 1) == p->pid &&
                                    sqlite3_column_int64(st, 2) == p->start));
        }
        sqlite3_reset(st);
    }
    if (same) return 0;
    if (hub_tx(h, q, r)) return -1;
    if (hub_pr_set(h, agent, state, p->has_pid, p->pid, p->start)) {
        Buf a = { 0 };
        log_warn("presence: report for %s: %s", log_esc(&a, agent.p ? agent.p : ""),
                 sqlite3_errmsg(h->store.db));
        buf_free(&a);
    }
    return 0;
}

/* A session was registered (POST /v1/sessions): the agent is present,
 * unless its hooks just said what it is doing (`before`: its presence
 * until now), and its pid (if given) is watched from now on. Returns 0,
 * or -1 with r failed. */
static int hub_pr_register(Hub *h, Req *q, Res *r, Str agent, const HubPresence *before) {
    int64_t pid = 0, start = 0;
    int rc = hub_pr_pid(h, q, r, &pid, &start);
    if (rc < 0) return -1;
    const char *state = strcmp(before->state, "offline") && before->state[0]
                        ? before->state : "present";
    if (hub_pr_set(h, agent, state, 1, rc ? pid : 0, start) == 0) return 0;
    hub_db_fail(h, r);
    return -1;
}

/* Agents whose sessions ended (deleted, or expired unless heard from
 * otherwise within the TTL) are offline from now (§17.5). `session`: the
 * deleted session's id, or NULL with `agent`. Returns 0 or -1. */
static int hub_pr_gone(Hub *h, const char *session, Str agent) {
    static const char by_sid[] = "UPDATE arc_presence SET state='offline',"
        "since_at=?2,pid=NULL WHERE state<>'offline' AND agent_id=(SELECT agent_id"
        " FROM sessions WHERE session_id=?1) AND NOT EXISTS(SELECT 1 FROM sessions"
        " s WHERE s.agent_id=arc_presence.agent_id AND s.active=1)";
    static const char by_agent[] = "UPDATE arc_presence SET state='offline',"
        "since_at=?2 WHERE agent_id=?1 AND state<>'offline' AND pid IS NULL"
        " AND seen_at<?3";
    char now[ISO_LEN], cutoff[ISO_LEN];
    hub_now(now);
    iso_format(clock_wall_us() - h->cfg.presence_ttl_s * 1000000, cutoff);
    sqlite3_stmt *st = store_stmt(&h->store, session ? by_sid : by_agent);
    if (!st) return -1;
    if (session) store_bind_c(st, 1, session);
    else store_bind(st, 1, agent);
    store_bind_c(st, 2, now);
    store_bind_c(st, 3, cutoff);
    return store_done(&h->store, st);
}

/* The timer's pid check (§17.5): an agent whose harness process is gone
 * (or is another process now: its start time differs) is offline at once:
 * its sessions end and its claims and locks are recovered, as on expiry. */
static void hub_pr_check(Hub *h, Req *q, Res *r) {
    static const char sql[] = "SELECT agent_id,pid,pid_start FROM arc_presence"
        " WHERE pid IS NOT NULL AND state<>'offline'";
    static const char off[] = "UPDATE arc_presence SET state='offline',"
        "since_at=?2,pid=NULL WHERE agent_id=?1";
    static const char end[] =
        "UPDATE sessions SET active=0 WHERE agent_id=?1 AND active=1";
    char **gone = NULL;   /* owned, and their strings */
    int n = 0, cap = 0, watched = 0;
    h->pr_check_ms = 0;
    if (!hub_is_loopback(h->cfg.host)) return;
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) return;
    while (sqlite3_step(st) == SQLITE_ROW) {
        int alive = proc_alive((long)sqlite3_column_int64(st, 1),
                               sqlite3_column_int64(st, 2));
        watched += alive == 1;   /* -1: no /proc here, nothing to watch */
        if (alive) continue;
        if (n == cap) gone = vec_grow(gone, &cap, sizeof *gone);
        Str a = store_col(st, 0);
        gone[n++] = xstrndup(a.p ? a.p : "", a.n);
    }
    sqlite3_reset(st);
    if (n && hub_tx(h, q, r) == 0) {
        char now[ISO_LEN];
        hub_now(now);
        for (int i = 0; i < n; i++) {
            Buf a = { 0 };
            log_info("agent offline: its process is gone: agent=%s",
                     log_esc(&a, gone[i]));
            buf_free(&a);
            if (!(st = store_stmt(&h->store, off))) break;
            store_bind_c(st, 1, gone[i]);
            store_bind_c(st, 2, now);
            if (store_done(&h->store, st) || !(st = store_stmt(&h->store, end))) break;
            store_bind_c(st, 1, gone[i]);
            if (store_done(&h->store, st)) break;
            if (sqlite3_changes(h->store.db)) hub_recover(h, q, r, str_c(gone[i]));
        }
    }
    for (int i = 0; i < n; i++) free(gone[i]);
    free(gone);
    if (watched) h->pr_check_ms = clock_ms() + ARC_PR_CHECK_MS;
}

/* POST /v1/agents/{agent_id}/state (§17.5): what the agent's harness says
 * it is doing, from its hooks; "offline" also ends its sessions. */
static void hub_pr_post(Hub *h, Req *q, Res *r) {
    static const char *const states[] = { "working", "idle", "waiting", "present",
                                          "offline" };
    static const char end[] =
        "UPDATE sessions SET active=0 WHERE agent_id=?1 AND active=1";
    Str agent = buf_str(&q->arg);
    Buf state = { 0 };
    int64_t pid = 0, start = 0;
    int ok = 0, has_pid;
    if (hub_str(q, r, "state", 1, &state) < 0) goto done;
    for (size_t i = 0; i < sizeof states / sizeof *states; i++)
        ok |= str_eq(buf_str(&state), states[i]);
    if (!ok) {
        hub_fail(r, 400, "state must be working, idle, waiting, present or offline");
        goto done;
    }
    if ((has_pid = hub_pr_pid(h, q, r, &pid, &start)) < 0) goto done;
    int offline = str_eq(buf_str(&state), "offline");
    if (hub_tx(h, q, r)) goto done;
    hub_touch(h, q, r, agent);
    if (hub_pr_set(h, agent, buf_cstr(&state), has_pid || offline,
                   offline ? 0 : pid, start))
        goto db;
    sqlite3_stmt *st = offline ? store_stmt(&h->store, end) : NULL;
    if (offline) {
        if (!st) goto db;
        store_bind(st, 1, agent);
        if (store_done(&h->store, st)) goto db;
    }
    HubPresence p;
    if (hub_pr_get(h, agent, &p)) goto db;
    hub_ok(r, 200);
    buf_adds(&r->body, "{\"agent_id\":");
    json_strs(&r->body, agent);
    buf_addc(&r->body, ',');
    hub_pr_emit(&r->body, &p);
    buf_addf(&r->body, ",\"live\":%s,\"pid\":", p.live ? "true" : "false");
    hub_rc_id(&r->body, p.pid);
    buf_adds(&r->body, "}");
    hub_ok_end(r);
    goto done;
db:
    hub_db_fail(h, r);
done:
    buf_free(&state);
}

/* GET /v1/presence[?agent_id=A] (§17.5): every agent the hub has heard
 * of, live or not, with its state and since when. */
static void hub_pr_list(Hub *h, Req *q, Res *r) {
    static const char all[] = "SELECT agent_id FROM arc_presence UNION"
        " SELECT agent_id FROM sessions WHERE active=1 ORDER BY 1";
    int err = 0;
    char *only = hub_qdup(q, r, "agent_id", &err);
    if (err) return;
    sqlite3_stmt *st = only ? NULL : store_stmt(&h->store, all);
    char **ids = NULL;
    int n = 0, cap = 0;
    if (only) {
        ids = vec_grow(ids, &cap, sizeof *ids);
        ids[n++] = only;   /* hand-off: freed with the list */
    } else if (!st) {
        goto db;
    }
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        if (n == cap) ids = vec_grow(ids, &cap, sizeof *ids);
        Str a = store_col(st, 0);
        ids[n++] = xstrndup(a.p ? a.p : "", a.n);
    }
    if (st) sqlite3_reset(st);
    hub_ok(r, 200);
    buf_addc(&r->body, '[');
    for (int i = 0; i < n; i++) {
        HubPresence p;
        if (hub_pr_get(h, str_c(ids[i]), &p)) goto db;
        buf_adds(&r->body, i ? ",{\"agent_id\":" : "{\"agent_id\":");
        json_cstr(&r->body, ids[i]);
        buf_addc(&r->body, ',');
        hub_pr_emit(&r->body, &p);
        buf_addf(&r->body, ",\"live\":%s,\"pid\":", p.live ? "true" : "false");
        hub_rc_id(&r->body, p.pid);
        buf_addc(&r->body, '}');
    }
    buf_addc(&r->body, ']');
    hub_ok_end(r);
    goto done;
db:
    hub_db_fail(h, r);
done:
    for (int i = 0; i < n; i++) free(ids[i]);
    free(ids);
}

/* GET /v1/agents?presence=1: each live session with its agent's state
 * and state_since (§17.5), beside the v1 fields. */
static int hub_pr_sessions(Hub *h, Buf *b, sqlite3_stmt *st) {
    Buf row = { 0 };
    int n = 0, rc;
    buf_addc(b, '[');
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        HubPresence p;
        buf_reset(&row);
        store_emit_session(&h->store, &row, st);
        Str agent = store_col(st, 1);
        char *a = xstrndup(agent.p ? agent.p : "", agent.n);
        row.len--;   /* the closing brace: the state goes in */
        buf_addc(&row, ',');
        int bad = hub_pr_get(h, str_c(a), &p);   /* other statements: st stays */
        free(a);
        if (bad) break;
        hub_pr_emit(&row, &p);
        buf_addc(&row, '}');
        if (n++) buf_addc(b, ',');
        buf_addstr(b, buf_str(&row));
    }
    buf_addc(b, ']');
    sqlite3_reset(st);
    buf_free(&row);
    return rc == SQLITE_DONE ? n : -1;
}

/* ---- receipts ---- */

/* A receipt row's columns, for hub_rc_emit. */
#define RC_COLS "d.message_id,d.agent_id,d.reason,d.via,d.surfaced_at,r.read_at," \
    "r.read_via,r.acked_at,r.answered_at,r.answered_by,w.kind,w.since_at," \
    "w.escalated_at,m.ts"
#define RC_FROM " FROM arc_delivery d JOIN messages m ON m.id=d.message_id" \
    " LEFT JOIN arc_receipts r ON r.message_id=d.message_id AND" \
    " r.agent_id=d.agent_id LEFT JOIN arc_waiting w ON" \
    " w.message_id=d.message_id AND w.agent_id=d.agent_id"

/* One receipt (PROTOCOL §17.2) from a row of RC_COLS: its times, the
 * furthest state reached, the recipient's presence, and a summary line
 * ("queued — recipient offline since ..."). Returns 0 or -1. */
static int hub_rc_emit(Hub *h, Buf *b, sqlite3_stmt *st) {
    static const char *const names[] = { "surfaced_via", "surfaced_at", "read_at",
        "read_via", "acked_at", "answered_at" };
    Str c[14];
    for (int i = 0; i < 14; i++) c[i] = store_col(st, i);
    const char *state = c[8].p ? "answered" : c[7].p ? "acked" : c[5].p ? "read"
                      : c[3].p ? "surfaced" : "queued";
    char *agent = xstrndup(c[1].p ? c[1].p : "", c[1].n);
    buf_addf(b, "{\"message_id\":%lld,\"agent_id\":",
             (long long)sqlite3_column_int64(st, 0));
    json_strs(b, c[1]);
    buf_adds(b, ",\"reason\":");
    store_emit_text(b, c[2]);
    buf_addf(b, ",\"state\":\"%s\",\"queued_at\":", state);
    store_emit_text(b, c[13]);
    for (int i = 0; i < 6; i++) {
        buf_addf(b, ",\"%s\":", names[i]);
        store_emit_text(b, c[i + 3]);
    }
    int64_t by = sqlite3_column_type(st, 9) == SQLITE_NULL ? -1
                                                           : sqlite3_column_int64(st, 9);
    buf_adds(b, ",\"answered_by\":");
    hub_rc_id(b, by > 0 ? by : 0);
    buf_adds(b, ",\"waiting\":");
    store_emit_text(b, c[10]);
    buf_adds(b, ",\"escalated_at\":");
    store_emit_text(b, c[12]);
    Buf sum = { 0 };
    if (!strcmp(state, "queued")) buf_adds(&sum, "queued");
    else if (!strcmp(state, "surfaced"))
        buf_addf(&sum, "surfaced via %.*s at %.*s", (int)c[3].n, c[3].p, (int)c[4].n,
                 c[4].p ? c[4].p : "");
    else if (!strcmp(state, "read"))
        buf_addf(&sum, "read at %.*s", (int)c[5].n, c[5].p);
    else if (!strcmp(state, "acked"))
        buf_addf(&sum, "acked at %.*s", (int)c[7].n, c[7].p);
    else
        buf_addf(&sum, "answered by #%lld at %.*s", (long long)by, (int)c[8].n, c[8].p);
    HubPresence p;   /* after the columns: it runs other statements */
    int rc = hub_pr_get(h, str_c(agent), &p);
    if (!rc) {
        buf_adds(b, ",\"recipient\":{");
        hub_pr_emit(b, &p);
        buf_addc(b, '}');
        if (!strcmp(state, "queued") && !strcmp(p.state, "offline")) {
            if (p.since[0]) buf_addf(&sum, " — recipient offline since %s", p.since);
            else buf_adds(&sum, " — recipient never seen");
        }
    }
    buf_adds(b, ",\"summary\":");
    json_strs(b, buf_str(&sum));
    buf_addc(b, '}');
    buf_free(&sum);
    free(agent);
    return rc;
}

/* Emit the receipts st yields (RC_COLS rows) as a JSON array. Rows are
 * taken out first: hub_rc_emit runs other statements. Returns the count,
 * or -1 on a database error. */
static int hub_rc_emit_all(Hub *h, Buf *b, sqlite3_stmt *st) {
    typedef struct { int64_t id; char *agent; } Key;
    static const char one[] = "SELECT " RC_COLS RC_FROM
        " WHERE d.message_id=?1 AND d.agent_id=?2";
    Key *keys = NULL;
    int n = 0, cap = 0, out = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) keys = vec_grow(keys, &cap, sizeof *keys);
        Str a = store_col(st, 1);
        keys[n].id = sqlite3_column_int64(st, 0);
        keys[n++].agent = xstrndup(a.p ? a.p : "", a.n);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) out = -1;
    buf_addc(b, '[');
    for (int i = 0; i < n && out >= 0; i++) {
        sqlite3_stmt *s1 = store_stmt(&h->store, one);
        if (!s1) { out = -1; break; }
        sqlite3_bind_int64(s1, 1, keys[i].id);
        store_bind_c(s1, 2, keys[i].agent);
        if (sqlite3_step(s1) != SQLITE_ROW) { sqlite3_reset(s1); continue; }
        if (out) buf_addc(b, ',');
        int bad = hub_rc_emit(h, b, s1);   /* it reads s1 first, then queries */
        sqlite3_reset(s1);
        out = bad ? -1 : out + 1;
    }
    buf_addc(b, ']');
    for (int i = 0; i < n; i++) free(keys[i].agent);
    free(keys);
    return out;
}

/* The message id in the path of /v1/messages/{id}/...; 0, or -1 with r
 * failed (404) when no such message exists. */
static int hub_rc_message(Hub *h, Req *q, Res *r, int64_t *id) {
    sqlite3_stmt *st;
    if (parse_int_text(buf_str(&q->arg), id) || *id < 1 ||
        !(st = store_stmt(&h->store, "SELECT 1 FROM messages WHERE id=?1"))) {
        hub_fail(r, 404, "message not found");
        return -1;
    }
    sqlite3_bind_int64(st, 1, *id);
    int found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_reset(st);
    if (found) return 0;
    hub_fail(r, 404, "message not found");
    return -1;
}

/* GET /v1/messages/{id}/receipts (PROTOCOL §17.2). */
static void hub_rc_receipts(Hub *h, Req *q, Res *r) {
    static const char sql[] = "SELECT " RC_COLS RC_FROM " WHERE d.message_id=?1"
        " AND d.reason IN " ARC_RC_REASONS " ORDER BY d.agent_id";
    int64_t id;
    if (hub_rc_message(h, q, r, &id) || hub_dl_sync(h, q, r)) return;
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) { hub_db_fail(h, r); return; }
    sqlite3_bind_int64(st, 1, id);
    hub_ok(r, 200);
    buf_addf(&r->body, "{\"message_id\":%lld,\"receipts\":", (long long)id);
    if (hub_rc_emit_all(h, &r->body, st) < 0) { hub_db_fail(h, r); return; }
    buf_addc(&r->body, '}');
    hub_ok_end(r);
}

/* POST /v1/messages/{id}/ack {"agent_id": A} (PROTOCOL §17.3): A, a
 * recipient, acknowledges the message (and so has read it); idempotent:
 * the first ack's time stays. Answers A's receipt. */
static void hub_rc_ack(Hub *h, Req *q, Res *r) {
    static const char is_rcpt[] = "SELECT 1 FROM arc_delivery WHERE agent_id=?1"
        " AND message_id=?2 AND reason IN " ARC_RC_REASONS;
    static const char ack[] =
        "INSERT INTO arc_receipts(message_id,agent_id,read_at,read_via,acked_at)"
        " VALUES(?2,?1,?3,'ack',?3) ON CONFLICT(message_id,agent_id) DO UPDATE SET"
        " read_at=coalesce(read_at,excluded.read_at),"
        " read_via=coalesce(read_via,excluded.read_via),"
        " acked_at=coalesce(acked_at,excluded.acked_at)";
    static const char unwait[] = "DELETE FROM arc_waiting WHERE agent_id=?1"
        " AND message_id=?2 AND kind='ack'";
    static const char one[] = "SELECT " RC_COLS RC_FROM
        " WHERE d.agent_id=?1 AND d.message_id=?2";
    Buf agent = { 0 };
    int64_t id;
    char now[ISO_LEN];
    sqlite3_stmt *st;
    if (hub_str(q, r, "agent_id", 1, &agent) < 0 || hub_rc_message(h, q, r, &id) ||
        hub_tx(h, q, r) || hub_dl_sync(h, q, r))
        goto done;
    if (!(st = store_stmt(&h->store, is_rcpt))) goto db;
    store_bind(st, 1, buf_str(&agent));
    sqlite3_bind_int64(st, 2, id);
    int rcpt = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_reset(st);
    if (!rcpt) {
        hub_fail(r, 409, "%s is not a recipient of message %lld (only a DM's "
                 "to_agent, a request's addressee or a mentioned agent acks)",
                 buf_cstr(&agent), (long long)id);
        goto done;
    }
    hub_now(now);
    static const char *const steps[] = { ack, unwait };
    for (int i = 0; i < 2; i++) {
        if (!(st = store_stmt(&h->store, steps[i]))) goto db;
        store_bind(st, 1, buf_str(&agent));
        sqlite3_bind_int64(st, 2, id);
        if (i == 0) store_bind_c(st, 3, now);
        if (store_done(&h->store, st)) goto db;
    }
    hub_touch(h, q, r, buf_str(&agent));
    if (!(st = store_stmt(&h->store, one))) goto db;
    store_bind(st, 1, buf_str(&agent));
    sqlite3_bind_int64(st, 2, id);
    if (sqlite3_step(st) != SQLITE_ROW) { sqlite3_reset(st); goto db; }
    hub_ok(r, 200);
    int bad = hub_rc_emit(h, &r->body, st);
    sqlite3_reset(st);
    if (bad) goto db;
    hub_ok_end(r);
    goto done;
db:
    hub_db_fail(h, r);
done:
    buf_free(&agent);
}

/* Reads that mark receipts read (PROTOCOL §17.2): the inbox of A (its
 * own view, so the reader is A) ascending or its tail, and a thread read
 * with agent_id=A. Each selects the unread receipts of A among the `n`
 * messages the read returned: the same query the read ran, limited to n. */
#define RC_UNREAD(ids) "SELECT d.message_id FROM arc_delivery d WHERE" \
    " d.agent_id=?1 AND d.reason IN " ARC_RC_REASONS " AND d.message_id IN" \
    " (" ids ") AND NOT EXISTS(SELECT 1 FROM arc_receipts x WHERE" \
    " x.message_id=d.message_id AND x.agent_id=?1 AND x.read_at IS NOT NULL)"
enum { RC_READ_INBOX, RC_READ_INBOX_TAIL, RC_READ_THREAD };
static const char *const hub_rc_unread_sql[] = {
    RC_UNREAD("SELECT id FROM messages WHERE to_agent=?1 AND id>?2 ORDER BY id"
              " LIMIT ?3"),
    RC_UNREAD("SELECT id FROM messages WHERE to_agent=?1 ORDER BY id DESC LIMIT ?3"),
    RC_UNREAD("SELECT id FROM messages WHERE thread_id=?4 AND id>?2 ORDER BY id"
              " LIMIT ?3"),
};

/* After a read that returned n messages: mark agent's unread receipts
 * among them read, through `via`. Best effort: a failure is logged and
 * the read answered all the same. */
static void hub_rc_read(Hub *h, Req *q, int which, Str agent, Str thread,
                        int64_t since, int n) {
    static const char mark[] =
        "INSERT INTO arc_receipts(message_id,agent_id,read_at,read_via)"
        " VALUES(?1,?2,?3,?4) ON CONFLICT(message_id,agent_id) DO UPDATE SET"
        " read_at=excluded.read_at,read_via=excluded.read_via"
        " WHERE read_at IS NULL";
    int64_t *ids = NULL;
    int k = 0, cap = 0;
    Res scratch = { 0 };   /* a failure here must not fail the read */
    if (n <= 0 || !agent.n) return;
    sqlite3_stmt *st = store_stmt(&h->store, hub_rc_unread_sql[which]);
    if (!st) goto done;
    store_bind(st, 1, agent);
    sqlite3_bind_int64(st, 2, since);
    sqlite3_bind_int(st, 3, n);
    store_bind(st, 4, thread);
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (k == cap) ids = vec_grow(ids, &cap, sizeof *ids);
        ids[k++] = sqlite3_column_int64(st, 0);
    }
    sqlite3_reset(st);
    if (!k || hub_tx(h, q, &scratch)) goto done;
    char now[ISO_LEN];
    hub_now(now);
    for (int i = 0; i < k; i++) {
        if (!(st = store_stmt(&h->store, mark))) break;
        sqlite3_bind_int64(st, 1, ids[i]);
        store_bind(st, 2, agent);
        store_bind_c(st, 3, now);
        store_bind_c(st, 4, which == RC_READ_THREAD ? "thread" : "inbox");
        if (store_done(&h->store, st)) break;
    }
done:
    free(ids);
    buf_free(&scratch.body);
}

/* ---- unanswered: what still waits, and its escalation (§17.4) ---- */

/* GET /v1/unanswered[?agent_id=A][&from_agent=F][&older_than=SEC][&limit=N]:
 * requests and ack-required messages still waiting, oldest first; A: the
 * agent that owes the answer, F: the one who asked. */
static void hub_rc_unanswered(Hub *h, Req *q, Res *r) {
    static const char sql[] = "SELECT w.message_id,w.agent_id,w.kind,w.since_at,"
        "w.escalated_at,m.from_agent FROM arc_waiting w JOIN messages m"
        " ON m.id=w.message_id WHERE (?1 IS NULL OR w.agent_id=?1)"
        " AND (?2 IS NULL OR m.from_agent=?2) AND w.since_at<=?3"
        " AND (w.kind<>'request' OR EXISTS(SELECT 1 FROM tasks t"
        " WHERE t.task_id=w.message_id AND t.status='open'))"
        " ORDER BY w.since_at,w.message_id,w.agent_id LIMIT ?4";
    int err = 0;
    int64_t older = 0, limit = 100;
    char *agent = hub_qdup(q, r, "agent_id", &err);
    char *from = err ? NULL : hub_qdup(q, r, "from_agent", &err);
    if (err || hub_qint(q, r, "older_than", 0, &older) ||
        hub_qint(q, r, "limit", 100, &limit))
        goto done;
    if (older < 0 || limit < 1) {
        hub_fail(r, 400, "older_than must be >= 0 and limit at least 1");
        goto done;
    }
    if (limit > ARC_MAX_LIMIT) limit = ARC_MAX_LIMIT;
    if (older > 86400LL * 3650) older = 86400LL * 3650;
    if (hub_dl_sync(h, q, r)) goto done;
    char cutoff[ISO_LEN];
    int64_t now_us = clock_wall_us();
    iso_format(now_us - older * 1000000, cutoff);
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) goto db;
    store_bind_c(st, 1, agent);
    store_bind_c(st, 2, from);
    store_bind_c(st, 3, cutoff);
    sqlite3_bind_int64(st, 4, limit);
    typedef struct { int64_t id; char *agent, *kind, *since, *esc, *from; } Item;
    Item *it = NULL;
    int n = 0, cap = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (n == cap) it = vec_grow(it, &cap, sizeof *it);
        char **f[] = { &it[n].agent, &it[n].kind, &it[n].since, &it[n].esc, &it[n].from };
        it[n].id = sqlite3_column_int64(st, 0);
        for (int i = 0; i < 5; i++) {
            Str v = store_col(st, i + 1);
            *f[i] = v.p ? xstrndup(v.p, v.n) : NULL;
        }
        n++;
    }
    sqlite3_reset(st);
    hub_ok(r, 200);
    buf_addc(&r->body, '[');
    for (int i = 0; i < n; i++) {
        int64_t at = 0;
        iso_parse(str_c(it[i].since), &at);
        buf_addf(&r->body, "%s{\"message_id\":%lld,\"agent_id\":", i ? "," : "",
                 (long long)it[i].id);
        json_cstr(&r->body, it[i].agent);
        buf_adds(&r->body, ",\"from_agent\":");
        store_emit_text(&r->body, str_c(it[i].from));
        buf_adds(&r->body, ",\"waiting\":");
        json_cstr(&r->body, it[i].kind);
        buf_adds(&r->body, ",\"since\":");
        json_cstr(&r->body, it[i].since);
        buf_addf(&r->body, ",\"age_sec\":%lld,\"escalated_at\":",
                 (long long)((now_us - at) / 1000000));
        store_emit_text(&r->body, str_c(it[i].esc));
        buf_adds(&r->body, ",\"message\":");
        store_emit_message_id(&h->store, &r->body, it[i].id);
        buf_addc(&r->body, '}');
    }
    buf_addc(&r->body, ']');
    hub_ok_end(r);
    for (int i = 0; i < n; i++)
        free(it[i].agent), free(it[i].kind), free(it[i].since), free(it[i].esc),
            free(it[i].from);
    free(it);
    goto done;
db:
    hub_db_fail(h, r);
done:
    free(agent);
    free(from);
}

/* Post the one escalation notice of message id (§17.4): to the escalation
 * channel, replying to the message (so its author is told, §16.2), naming
 * and mentioning every recipient it still waits for. Requests whose task
 * is no longer open stop waiting instead. Returns 0 or -1 (r failed). */
static int hub_rc_escalate_one(Hub *h, Req *q, Res *r, int64_t id, const char *now) {
    static const char closed[] = "DELETE FROM arc_waiting WHERE message_id=?1"
        " AND kind='request' AND NOT EXISTS(SELECT 1 FROM tasks"
        " WHERE task_id=?1 AND status='open')";
    static const char who[] = "SELECT w.agent_id,w.kind,w.since_at,m.from_agent,"
        "m.kind FROM arc_waiting w JOIN messages m ON m.id=w.message_id"
        " WHERE w.message_id=?1 AND w.escalated_at IS NULL ORDER BY w.agent_id";
    static const char done_sql[] = "UPDATE arc_waiting SET escalated_at=?2"
        " WHERE message_id=?1 AND escalated_at IS NULL";
    static const char chan[] = "INSERT OR IGNORE INTO channels VALUES(?1,?2,'system','{}')";
    Buf names = { 0 }, list = { 0 }, from = { 0 }, kind = { 0 }, since = { 0 };
    Buf body = { 0 }, meta = { 0 };
    int rc = -1, n = 0, ack = 0;
    sqlite3_stmt *st = store_stmt(&h->store, closed);
    if (!st) goto done;
    sqlite3_bind_int64(st, 1, id);
    if (store_done(&h->store, st) || !(st = store_stmt(&h->store, who))) goto done;
    sqlite3_bind_int64(st, 1, id);
    while (sqlite3_step(st) == SQLITE_ROW) {
        Str a = store_col(st, 0);
        buf_adds(&names, n ? ", @" : "@");
        buf_addstr(&names, a);
        buf_addc(&list, n ? ',' : '[');
        json_strs(&list, a);
        if (!n++) {
            ack = str_eq(store_col(st, 1), "ack");
            buf_addstr(&since, store_col(st, 2));
            buf_addstr(&from, store_col(st, 3));
            buf_addstr(&kind, store_col(st, 4));
        }
    }
    sqlite3_reset(st);
    if (!n) { rc = 0; goto done; }
    buf_addc(&list, ']');
    if (!(st = store_stmt(&h->store, done_sql))) goto done;
    sqlite3_bind_int64(st, 1, id);
    store_bind_c(st, 2, now);
    if (store_done(&h->store, st)) goto done;
    if (!sqlite3_changes(h->store.db)) { rc = 0; goto done; }   /* another hub did */
    if (!(st = store_stmt(&h->store, chan))) goto done;
    store_bind_c(st, 1, h->cfg.escalate_channel);
    store_bind_c(st, 2, now);
    if (store_done(&h->store, st)) goto done;
    int64_t after = h->cfg.escalate_after_s;
    buf_addf(&body, "Unanswered after %lld %s: %s ", (long long)(after >= 120 ? after / 60 : after),
             after >= 120 ? "min" : "s", buf_cstr(&names));
    buf_addf(&body, "%s not %s %s's %s #%lld.", n == 1 ? "has" : "have",
             ack ? "acknowledged" : "answered", buf_cstr(&from), buf_cstr(&kind),
             (long long)id);
    buf_addf(&meta, "{\"escalation\":true,\"message_id\":%lld,\"from_agent\":",
             (long long)id);
    json_strs(&meta, buf_str(&from));
    buf_adds(&meta, ",\"waiting_on\":");
    buf_addstr(&meta, buf_str(&list));
    buf_addf(&meta, ",\"waiting\":\"%s\",\"since\":", ack ? "ack" : "request");
    json_strs(&meta, buf_str(&since));
    buf_addc(&meta, '}');
    rc = hub_post_system(h, q, r, str_c(h->cfg.escalate_channel), buf_str(&body), id,
                         (Str){ NULL, 0 }, buf_cstr(&meta));
done:
    if (rc && r->status < 400) hub_db_fail(h, r);
    buf_free(&names), buf_free(&list), buf_free(&from), buf_free(&kind);
    buf_free(&since), buf_free(&body), buf_free(&meta);
    return rc;
}

/* The escalation check (§17.4): post one notice for each message that
 * waited escalate_after seconds, a batch at a time, then set the next
 * check for when the oldest wait still unescalated comes due. */
static void hub_rc_escalate(Hub *h, Req *q, Res *r) {
    static const char due_sql[] = "SELECT message_id FROM arc_waiting"
        " WHERE escalated_at IS NULL AND since_at<=?1 ORDER BY since_at LIMIT ?2";
    static const char next_sql[] =
        "SELECT min(since_at) FROM arc_waiting WHERE escalated_at IS NULL";
    int64_t after = h->cfg.escalate_after_s, ids[ARC_RC_BATCH];
    int n = 0;
    h->rc_due_ms = clock_ms() + ARC_RC_IDLE_MS;
    if (after <= 0) {
        h->rc_due_ms = INT64_MAX;
        return;
    }
    char now[ISO_LEN], cutoff[ISO_LEN];
    int64_t wall = clock_wall_us();
    iso_format(wall, now);
    iso_format(wall - after * 1000000, cutoff);
    sqlite3_stmt *st = store_stmt(&h->store, due_sql);
    if (!st) return;
    store_bind_c(st, 1, cutoff);
    sqlite3_bind_int(st, 2, ARC_RC_BATCH);
    while (n < ARC_RC_BATCH && sqlite3_step(st) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(st, 0);
        int seen = 0;
        for (int i = 0; i < n; i++) seen |= ids[i] == id;
        if (!seen) ids[n++] = id;
    }
    sqlite3_reset(st);
    for (int i = 0; i < n; i++)
        if ((i == 0 && hub_tx(h, q, r)) || hub_rc_escalate_one(h, q, r, ids[i], now)) {
            h->rc_due_ms = clock_ms() + ARC_PR_CHECK_MS;   /* busy: retry soon */
            return;
        }
    if (n == ARC_RC_BATCH) {
        h->rc_due_ms = clock_ms();   /* more are due: the next turn goes on */
        return;
    }
    if (!(st = store_stmt(&h->store, next_sql))) return;
    int64_t oldest;
    if (sqlite3_step(st) == SQLITE_ROW && iso_parse(store_col(st, 0), &oldest) == 0) {
        int64_t wait_ms = (oldest + after * 1000000 - wall) / 1000 + 1;
        if (wait_ms < ARC_RC_IDLE_MS) h->rc_due_ms = clock_ms() + (wait_ms > 0 ? wait_ms : 0);
    }
    sqlite3_reset(st);
}

/* The receipts timer's work, whichever part is due: the pid check and
 * the escalation check. */
static void hub_rc_tick(Hub *h, Req *q, Res *r) {
    int64_t now = clock_ms();
    if (h->pr_check_ms && now >= h->pr_check_ms) hub_pr_check(h, q, r);
    if (r->status < 400 && now >= h->rc_due_ms) hub_rc_escalate(h, q, r);
}

/* When the receipts timer runs next (clock_ms): the loop asks. */
static int64_t hub_rc_next_ms(const Hub *h) {
    int64_t t = h->rc_due_ms;
    if (h->pr_check_ms && h->pr_check_ms < t) t = h->pr_check_ms;
    return t;
}

/* The digest a registration asked for (?digest=1, PROTOCOL §17.6): when
 * the agent was last heard (null: it was live, or never seen) and what it
 * is owed, oldest first, marking nothing. Appended to b as a member. */
static int hub_rc_digest(Hub *h, Buf *b, Str agent, const HubPresence *away) {
    int64_t owed = hub_dl_owed(h, agent);
    if (owed < 0) return -1;
    buf_adds(b, ",\"digest\":{\"away_since\":");
    if (!strcmp(away->state, "offline") && away->since[0]) json_cstr(b, away->since);
    else buf_adds(b, "null");
    buf_addf(b, ",\"owed\":%lld,\"items\":", (long long)owed);
    if (hub_dl_items(h, agent, 50, 65536, NULL, b) < 0) return -1;
    buf_addc(b, '}');
    return 0;
}

/* ---- messages ---- */

/* Insert a message, already validated and normalised (attachments and
 * metadata compact JSON; m's id and ts are ignored: the store assigns
 * them), and remember it for this turn's wake-ups. On success the message
 * object is appended to out (if non-NULL) and its id stored in *id. The row
 * and the JSON come from one StoreMsg, so they say the same. Returns 0, or
 * -1 with r failed. */
static int hub_insert_message(Hub *h, Req *q, Res *r, const StoreMsg *m, Buf *out,
                              int64_t *id) {
    static const char sql[] =
        "INSERT INTO messages(ts,from_agent,to_agent,channel,kind,body,"
        "attachments_json,reply_to,thread_id,metadata_json)"
        " VALUES(?,?,?,?,?,?,?,?,?,?)";
    if (hub_tx(h, q, r)) return -1;
    char now[ISO_LEN];
    hub_now(now);
    StoreMsg sm = *m;
    sm.ts = str_c(now);
    if (!sm.body.p) sm.body = STR_LIT("");   /* the column is NOT NULL */
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) {
        hub_db_fail(h, r);
        return -1;
    }
    store_bind(st, 1, sm.ts);
    store_bind(st, 2, sm.from);
    store_bind(st, 3, sm.to);
    store_bind(st, 4, sm.channel);
    store_bind(st, 5, sm.kind);
    store_bind(st, 6, sm.body);
    store_bind(st, 7, sm.attachments);
    if (sm.reply_to != ARC_NO_ID) sqlite3_bind_int64(st, 8, sm.reply_to);
    store_bind(st, 9, sm.thread);
    store_bind(st, 10, sm.metadata);
    if (store_done(&h->store, st)) {
        hub_db_fail(h, r);
        return -1;
    }
    *id = sm.id = sqlite3_last_insert_rowid(h->store.db);
    if (*id > ARC_MAX_ID) {   /* PROTOCOL §3: never mint past 2^53-1 */
        hub_fail(r, 500, "message id space exhausted");
        return -1;
    }
    int behind;   /* the thread summary, in the same transaction */
    if (store_fold_insert(&h->store, *id, sm.thread, sm.channel, sm.ts,
                          str_eq(sm.kind, "artifact"), &behind)) {
        hub_db_fail(h, r);
        return -1;
    }
    h->fold_behind |= behind;
    if (hub_dl_new(h, q, r, &sm)) return -1;   /* who it is owed to (§16) */
    Buf j = { 0 };
    store_render_message(&j, &sm);
    if (out) buf_addstr(out, buf_str(&j));
    if (h->n_batch == h->cap_batch)
        h->batch = vec_grow(h->batch, &h->cap_batch, sizeof *h->batch);
    NewMsg *nm = &h->batch[h->n_batch++];
    nm->id = *id;
    nm->from = xstrndup(m->from.p, m->from.n);
    nm->to = m->to.p ? xstrndup(m->to.p, m->to.n) : NULL;
    nm->channel = xstrndup(m->channel.p, m->channel.n);
    nm->thread = m->thread.p ? xstrndup(m->thread.p, m->thread.n) : NULL;
    nm->json_len = j.len;
    nm->json = j.p ? j.p : xstrndup("", 0);   /* hand-off: the batch owns it */
    return 0;
}

/* Post a notice from "system" (rollups, recoveries, shutdown). */
static int hub_post_system(Hub *h, Req *q, Res *r, Str channel, Str body,
                           int64_t reply_to, Str thread, const char *meta) {
    StoreMsg m = { .from = STR_LIT("system"), .to = { NULL, 0 },
                .channel = channel, .kind = STR_LIT("notice"), .body = body,
                .thread = thread, .attachments = STR_LIT("[]"),
                .metadata = str_c(meta), .reply_to = reply_to };
    int64_t id;
    return hub_insert_message(h, q, r, &m, NULL, &id);
}

static int hub_channel_exists(Hub *h, Str name) {
    sqlite3_stmt *st = store_stmt(&h->store,
                                  "SELECT 1 FROM channels WHERE name=?");
    if (!st) return 0;
    store_bind(st, 1, name);
    int found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_reset(st);
    return found;
}

static const char *const hub_kinds[] = {
    "artifact", "chat", "claim", "notice", "release", "task", "task_request",
    "task_result",
};

/* Normalise one attachment into out (PROTOCOL §6): only the keys its type
 * defines are kept. Returns 0 or -1 with r failed. */
static int hub_attachment(Hub *h, Json *j, uint32_t a, Res *r, Buf *out) {
    if (j->t[a].type != JSON_OBJ) {
        hub_fail(r, 400, "attachments must contain JSON objects");
        return -1;
    }
    Buf type = { 0 }, tmp = { 0 };
    int rc = -1;
    uint32_t v = json_get_val(j, a, "type");
    if (v) json_as_text(&type, j, v);
    Str t = str_trim(buf_str(&type));
    int inline_ = str_eq(t, "text") || str_eq(t, "json") || str_eq(t, "code");
    int ref = str_eq(t, "file_ref") || str_eq(t, "diff_ref");
    if (!inline_ && !ref) {
        hub_fail(r, 400, "unsupported attachment type: %.*s", (int)t.n, t.p);
        goto done;
    }
    buf_adds(out, "{\"type\":");
    json_strs(out, t);
    if (inline_) {
        uint32_t c = json_get(j, a, "content");
        if (!c) {
            hub_fail(r, 400, "attachment type %.*s requires content", (int)t.n, t.p);
            goto done;
        }
        if ((int64_t)json_pylen(j, c) > h->cfg.max_attachment_chars) {
            hub_fail(r, 400, "attachment type %.*s exceeds max size", (int)t.n, t.p);
            goto done;
        }
        if (hub_stored(r, j, c, "attachment content", 2, 0)) goto done;
        buf_adds(out, ",\"content\":");
        json_write(out, j, c);
        if (str_eq(t, "code") && (v = json_get_val(j, a, "language"))) {
            json_as_text(&tmp, j, v);
            buf_adds(out, ",\"language\":");
            json_strs(out, buf_str(&tmp));
        }
    } else {
        v = json_get_val(j, a, "path");
        if (v) json_as_text(&tmp, j, v);
        Str p = str_trim(buf_str(&tmp));
        if (!v || !p.n) {
            hub_fail(r, 400, "attachment type %.*s requires path", (int)t.n, t.p);
            goto done;
        }
        buf_adds(out, ",\"path\":");
        json_strs(out, p);
        static const char *const opt[] = { "description", "base", "head" };
        for (int i = 0; i < 3; i++)
            if ((v = json_get_val(j, a, opt[i]))) {
                if (hub_stored(r, j, v, opt[i], 2, 0)) goto done;
                buf_addf(out, ",\"%s\":", opt[i]);
                json_write(out, j, v);
            }
        static const char *const lines[] = { "start_line", "end_line" };
        for (int i = 0; i < 2; i++)
            if ((v = json_get_val(j, a, lines[i]))) {
                int64_t n;
                if (json_to_i64(j, v, &n)) {
                    hub_fail(r, 400, "%s must be an integer", lines[i]);
                    goto done;
                }
                buf_addf(out, ",\"%s\":%lld", lines[i], (long long)n);
            }
    }
    buf_addc(out, '}');
    rc = 0;
done:
    buf_free(&type);
    buf_free(&tmp);
    return rc;
}

/* Is message `id` an open task_request? */
static int hub_open_request(Hub *h, int64_t id) {
    static const char sql[] =
        "SELECT 1 FROM messages m JOIN tasks t ON t.task_id=m.id"
        " WHERE m.id=? AND m.kind='task_request' AND t.status='open'";
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) return 0;
    sqlite3_bind_int64(st, 1, id);
    int yes = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_reset(st);
    return yes;
}

static int hub_task_exists(Hub *h, int64_t id) {
    sqlite3_stmt *st = store_stmt(&h->store, "SELECT 1 FROM tasks WHERE task_id=?");
    if (!st) return 0;
    sqlite3_bind_int64(st, 1, id);
    int yes = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_reset(st);
    return yes;
}

/* Mark task `id` done. Returns 1 when it was open (this call completed
 * it), 0 when it was done already or does not exist, -1 on a database
 * error. */
static int hub_complete_task_row(Hub *h, int64_t id) {
    static const char sql[] =
        "UPDATE tasks SET status='done',completed_at=?"
        " WHERE task_id=? AND status!='done'";
    char now[ISO_LEN];
    hub_now(now);
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) return -1;
    store_bind_c(st, 1, now);
    sqlite3_bind_int64(st, 2, id);
    if (store_done(&h->store, st)) return -1;
    return sqlite3_changes(h->store.db) > 0;
}

/* ---- task dependencies (arc:task_deps, PROTOCOL §14) ---- */

/* A task names the tasks it waits for in its message's metadata.blocked_by,
 * which v1 hubs and clients keep as opaque metadata. The pairs also live in
 * arc_task_deps, for the question asked when task B completes: who waited
 * for B? arc fills the table when it stores a task; tasks another process
 * wrote (the reference hub on a shared file) are caught up from the
 * messages above a watermark before any answer that uses the table
 * (hub_deps_sync). blocked_by is fixed at creation and must name existing
 * tasks, so every pair points to a smaller id and blocked_by alone cannot
 * form a cycle; what can is the task naming itself, or a task that waits
 * for an ancestor whose rollup waits for the new task (hub_deps_check). */

/* A growable list of task ids; v owned. */
typedef struct {
    int64_t *v;
    int n, cap;
} HubIds;

static void hub_ids_push(HubIds *l, int64_t id) {
    if (l->n == l->cap) l->v = vec_grow(l->v, &l->cap, sizeof *l->v);
    l->v[l->n++] = id;
}

static int hub_ids_has(const HubIds *l, int64_t id) {
    for (int i = 0; i < l->n; i++)
        if (l->v[i] == id) return 1;
    return 0;
}

static void hub_ids_free(HubIds *l) {
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* Append the ids separated by sep ("," in JSON, ", " in prose). */
static void hub_ids_text(Buf *b, const HubIds *l, const char *sep) {
    for (int i = 0; i < l->n; i++) {
        if (i) buf_adds(b, sep);
        buf_add_i64(b, l->v[i]);
    }
}

/* Append column 0 of every row of sql, with ?1 bound to id, to out.
 * Returns the count appended, or -1 on a database error. */
static int hub_ids_query(Hub *h, const char *sql, int64_t id, HubIds *out) {
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) return -1;
    sqlite3_bind_int64(st, 1, id);
    int n = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        hub_ids_push(out, sqlite3_column_int64(st, 0));
        n++;
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? n : -1;
}

/* Catch arc_task_deps up with the task messages other processes wrote
 * since the watermark, keeping only ids below the task's own that name
 * task messages (so the graph stays acyclic) and at most ARC_MAX_BLOCKERS.
 * When nothing new names blocked_by it costs two reads and the mark moves
 * in memory only; otherwise it writes in the request's savepoint. Returns
 * 0, or -1 with r failed. */
static int hub_deps_sync(Hub *h, Req *q, Res *r) {
    static const char get_mark[] =
        "SELECT scanned_id FROM arc_task_deps_mark WHERE k=0";
    static const char get_top[] = "SELECT max(id) FROM messages";
    static const char any[] =
        "SELECT 1 FROM messages WHERE id>?1 AND id<=?2"
        " AND kind IN ('task','task_request')"
        " AND instr(metadata_json,'\"blocked_by\"')>0 LIMIT 1";
    static const char fill[] =
        "INSERT OR IGNORE INTO arc_task_deps(task_id,blocker_id)"
        " SELECT m.id,j.value FROM messages m,json_each(CASE WHEN"
        " json_valid(m.metadata_json) AND json_type(m.metadata_json,"
        "'$.blocked_by')='array' THEN m.metadata_json"
        " ELSE '{\"blocked_by\":[]}' END,'$.blocked_by') j"
        " WHERE m.id>?1 AND m.id<=?2 AND m.kind IN ('task','task_request')"
        " AND j.type='integer' AND j.value<m.id AND j.key<?3"
        " AND EXISTS(SELECT 1 FROM messages b WHERE b.id=j.value"
        " AND b.kind IN ('task','task_request'))";
    static const char set_mark[] =
        "INSERT OR REPLACE INTO arc_task_deps_mark(k,scanned_id) VALUES(0,?)";
    int64_t mark = h->deps_mark, top = 0;
    sqlite3_stmt *st;
    if (!mark && (st = store_stmt(&h->store, get_mark))) {
        if (sqlite3_step(st) == SQLITE_ROW) mark = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
    }
    if (!(st = store_stmt(&h->store, get_top))) goto db;
    if (sqlite3_step(st) == SQLITE_ROW) top = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    if (top <= mark) {
        h->deps_mark = mark;
        return 0;
    }
    if (!(st = store_stmt(&h->store, any))) goto db;
    sqlite3_bind_int64(st, 1, mark);
    sqlite3_bind_int64(st, 2, top);
    int found = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_reset(st);
    /* Nothing to add: the mark moves in memory, and is saved only when
     * the request writes anyway and the scan was long (so that the next
     * start does not scan again), never making a read a write. */
    if (!found && (!q->sp_open || top - mark < 1024)) {
        h->deps_mark = top;
        return 0;
    }
    if (hub_tx(h, q, r)) return -1;
    if (found) {
        if (!(st = store_stmt(&h->store, fill))) goto db;
        sqlite3_bind_int64(st, 1, mark);
        sqlite3_bind_int64(st, 2, top);
        sqlite3_bind_int(st, 3, ARC_MAX_BLOCKERS);
        if (store_done(&h->store, st)) goto db;
    }
    if (!(st = store_stmt(&h->store, set_mark))) goto db;
    sqlite3_bind_int64(st, 1, top);
    if (store_done(&h->store, st)) goto db;
    h->deps_mark = top;
    return 0;
db:
    hub_db_fail(h, r);
    return -1;
}

/* The blockers of task `id` that are not done, ascending, into out (a
 * blocker without a task row counts as not done). Returns their count, or
 * -1 on a database error. */
static int hub_deps_open(Hub *h, int64_t id, HubIds *out) {
    static const char sql[] =
        "SELECT d.blocker_id FROM arc_task_deps d WHERE d.task_id=?1 AND NOT"
        " EXISTS(SELECT 1 FROM tasks b WHERE b.task_id=d.blocker_id"
        " AND b.status='done') ORDER BY d.blocker_id";
    return hub_ids_query(h, sql, id, out);
}

/* metadata.blocked_by of a new task into ids, without repeats; absent or
 * null names none. `meta` is the metadata object's token, or 0. Returns
 * 0, or -1 with r failed. */
static int hub_deps_parse(const Json *j, uint32_t meta, Res *r, HubIds *ids) {
    uint32_t v = meta ? json_get_val(j, meta, "blocked_by") : 0;
    if (!v) return 0;
    if (j->t[v].type != JSON_ARR) goto bad;
    if (j->t[v].n > ARC_MAX_BLOCKERS) {
        hub_fail(r, 400, "metadata.blocked_by names more than %d tasks "
                 "(ARC_MAX_BLOCKERS)", ARC_MAX_BLOCKERS);
        return -1;
    }
    uint32_t e = v + 1;
    for (uint32_t i = 0; i < j->t[v].n; i++, e = j->t[e].next) {
        int64_t id;
        if (j->t[e].type != JSON_NUM || j->t[e].frac || json_to_i64(j, e, &id))
            goto bad;
        if (!hub_ids_has(ids, id)) hub_ids_push(ids, id);
    }
    return 0;
bad:
    hub_fail(r, 400, "metadata.blocked_by must be a list of task ids");
    return -1;
}

/* Task `id`'s parent, or ARC_NO_ID. */
static int64_t hub_task_parent(Hub *h, int64_t id) {
    sqlite3_stmt *st = store_stmt(&h->store,
                                  "SELECT parent_task_id FROM tasks WHERE task_id=?");
    if (!st) return ARC_NO_ID;
    sqlite3_bind_int64(st, 1, id);
    int64_t p = ARC_NO_ID;
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
        p = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    return p;
}

static int hub_task_open(Hub *h, int64_t id) {
    sqlite3_stmt *st = store_stmt(&h->store,
        "SELECT 1 FROM tasks WHERE task_id=? AND status='open'");
    if (!st) return 0;
    sqlite3_bind_int64(st, 1, id);
    int yes = sqlite3_step(st) == SQLITE_ROW;
    sqlite3_reset(st);
    return yes;
}

/* Refuse blocked_by of the new task `id` (child of `parent`, or ARC_NO_ID)
 * when it names the task itself, a task that does not exist, or a task
 * that waits, through blockers or open subtasks, for an ancestor of the
 * new task: that ancestor's rollup waits for the new task, so neither
 * could finish. Only open tasks are followed (a done task waits for
 * nothing), at most ARC_MAX_DEP_SCAN of them. Returns 0, or -1 with r
 * failed (400). */
static int hub_deps_check(Hub *h, Res *r, int64_t id, int64_t parent,
                          const HubIds *ids) {
    static const char blockers[] =
        "SELECT blocker_id FROM arc_task_deps WHERE task_id=?1";
    static const char children[] =
        "SELECT task_id FROM tasks WHERE parent_task_id=?1";
    HubIds unknown = { 0 }, anc = { 0 }, seen = { 0 }, from = { 0 }, next = { 0 };
    Buf b = { 0 };
    int rc = -1;
    if (hub_ids_has(ids, id)) {
        hub_fail(r, 400, "metadata.blocked_by forms a cycle: task %lld would "
                 "wait for itself", (long long)id);
        goto done;
    }
    for (int i = 0; i < ids->n; i++)
        if (!hub_task_exists(h, ids->v[i])) hub_ids_push(&unknown, ids->v[i]);
    if (unknown.n) {
        hub_ids_text(&b, &unknown, ", ");
        hub_fail(r, 400, "metadata.blocked_by references unknown tasks: %s",
                 buf_cstr(&b));
        goto done;
    }
    for (int64_t p = parent; p != ARC_NO_ID && anc.n < ARC_MAX_TASK_DEPTH &&
                             !hub_ids_has(&anc, p); p = hub_task_parent(h, p))
        hub_ids_push(&anc, p);
    for (int i = 0; i < ids->n; i++)
        hub_ids_push(&seen, ids->v[i]), hub_ids_push(&from, ids->v[i]);
    for (int i = 0; i < seen.n; i++) {
        int64_t t = seen.v[i];
        if (hub_ids_has(&anc, t)) {
            if (t == from.v[i])
                hub_fail(r, 400, "metadata.blocked_by forms a cycle: task %lld "
                         "would wait for task %lld, its ancestor, which waits "
                         "for its subtasks", (long long)id, (long long)t);
            else
                hub_fail(r, 400, "metadata.blocked_by forms a cycle: task %lld "
                         "would wait for task %lld, which waits for task %lld, "
                         "an ancestor of task %lld", (long long)id,
                         (long long)from.v[i], (long long)t, (long long)id);
            goto done;
        }
        if (!hub_task_open(h, t)) continue;
        next.n = 0;
        if (hub_ids_query(h, blockers, t, &next) < 0 ||
            hub_ids_query(h, children, t, &next) < 0) {
            hub_db_fail(h, r);
            goto done;
        }
        for (int k = 0; k < next.n; k++) {
            if (hub_ids_has(&seen, next.v[k])) continue;
            if (seen.n >= ARC_MAX_DEP_SCAN) {
                hub_fail(r, 400, "metadata.blocked_by: more than %d open tasks "
                         "to check for cycles (ARC_MAX_DEP_SCAN)", ARC_MAX_DEP_SCAN);
                goto done;
            }
            hub_ids_push(&seen, next.v[k]), hub_ids_push(&from, from.v[i]);
        }
    }
    rc = 0;
done:
    hub_ids_free(&unknown), hub_ids_free(&anc), hub_ids_free(&seen);
    hub_ids_free(&from), hub_ids_free(&next);
    buf_free(&b);
    return rc;
}

/* Store the pairs of a new task, checked by hub_deps_check. */
static int hub_deps_record(Hub *h, int64_t id, const HubIds *ids) {
    static const char sql[] = "INSERT OR IGNORE INTO arc_task_deps VALUES(?,?)";
    for (int i = 0; i < ids->n; i++) {
        sqlite3_stmt *st = store_stmt(&h->store, sql);
        if (!st) return -1;
        sqlite3_bind_int64(st, 1, id);
        sqlite3_bind_int64(st, 2, ids->v[i]);
        if (store_done(&h->store, st)) return -1;
    }
    return 0;
}

/* If a claim covering task `task` would take a task that still waits,
 * refuse it: 409 naming the open blockers, also as a top-level
 * "blocked_by" list. Returns 0 (go on), or -1 with r failed. */
static int hub_deps_refuse(Hub *h, Req *q, Res *r, int64_t task) {
    HubIds open = { 0 };
    Buf b = { 0 };
    int rc = -1, n;
    if (hub_deps_sync(h, q, r)) goto done;
    if ((n = hub_deps_open(h, task, &open)) < 0) {
        hub_db_fail(h, r);
        goto done;
    }
    if (n == 0) {
        rc = 0;
        goto done;
    }
    hub_ids_text(&b, &open, ", ");
    hub_fail(r, 409, "task %lld is blocked by open tasks: %s", (long long)task,
             buf_cstr(&b));
    r->body.p[--r->body.len] = 0;   /* add blocked_by to the envelope */
    buf_adds(&r->body, ",\"blocked_by\":[");
    hub_ids_text(&r->body, &open, ",");
    buf_adds(&r->body, "]}");
done:
    hub_ids_free(&open);
    buf_free(&b);
    return rc;
}

/* Task `blocker` has just changed from open to done: post one notice for
 * each open task that waited for it and now waits for nothing, in that
 * task's channel and thread, replying to it and addressed to its active
 * claimant, else to the agent the task message was addressed to, else to
 * everyone (PROTOCOL §14). Only the open -> done change calls this, so a
 * retried completion posts nothing. Returns 0, or -1 with r failed. */
static int hub_deps_unblock(Hub *h, Req *q, Res *r, int64_t blocker) {
    static const char waiting[] =
        "SELECT d.task_id FROM arc_task_deps d JOIN tasks t"
        " ON t.task_id=d.task_id WHERE d.blocker_id=?1 AND t.status='open'"
        " ORDER BY d.task_id";
    static const char all[] =
        "SELECT blocker_id FROM arc_task_deps WHERE task_id=?1 ORDER BY blocker_id";
    static const char about[] =
        "SELECT t.channel,t.thread_id,m.to_agent,(SELECT c.owner_agent_id"
        " FROM claims c WHERE c.task_message_id=t.task_id AND"
        " c.released_at IS NULL AND julianday(c.expires_at)>=julianday(?2)"
        " ORDER BY c.claimed_at DESC LIMIT 1)"
        " FROM tasks t LEFT JOIN messages m ON m.id=t.task_id WHERE t.task_id=?1";
    HubIds w = { 0 };
    int rc = -1;
    if (hub_ids_query(h, waiting, blocker, &w) < 0) {
        hub_db_fail(h, r);
        goto done;
    }
    for (int i = 0; i < w.n; i++) {
        HubIds ids = { 0 };
        Buf chan = { 0 }, thread = { 0 }, to = { 0 }, body = { 0 }, meta = { 0 };
        int has_thread = 0, has_to = 0, bad = 0;
        int n = hub_deps_open(h, w.v[i], &ids);
        if (n == 0 && hub_ids_query(h, all, w.v[i], &ids) < 0) n = -1;
        sqlite3_stmt *st = n == 0 ? store_stmt(&h->store, about) : NULL;
        if (st) {
            char now[ISO_LEN];
            hub_now(now);
            sqlite3_bind_int64(st, 1, w.v[i]);
            store_bind_c(st, 2, now);
            if (sqlite3_step(st) == SQLITE_ROW) {
                buf_addstr(&chan, store_col(st, 0));
                has_thread = store_col(st, 1).p != NULL;
                buf_addstr(&thread, store_col(st, 1));
                Str who = store_col(st, 3).p ? store_col(st, 3) : store_col(st, 2);
                has_to = who.p && who.n;
                buf_addstr(&to, who);
            }
            sqlite3_reset(st);
        }
        if (n < 0 || (n == 0 && !st)) {
            hub_db_fail(h, r);
            bad = 1;
        } else if (n == 0) {
            buf_addf(&body, "Task %lld is unblocked: its blockers (",
                     (long long)w.v[i]);
            hub_ids_text(&body, &ids, ", ");
            buf_adds(&body, ") are done, so it can be claimed now.");
            buf_addf(&meta, "{\"unblocked\":true,\"task_id\":%lld,\"blocked_by\":[",
                     (long long)w.v[i]);
            hub_ids_text(&meta, &ids, ",");
            buf_addf(&meta, "],\"completed_blocker\":%lld}", (long long)blocker);
            StoreMsg m = { .from = STR_LIT("system"),
                .to = has_to ? buf_str(&to) : (Str){ NULL, 0 },
                .channel = chan.len ? buf_str(&chan) : STR_LIT("general"),
                .kind = STR_LIT("notice"), .body = buf_str(&body),
                .thread = has_thread ? buf_str(&thread) : (Str){ NULL, 0 },
                .attachments = STR_LIT("[]"), .metadata = buf_str(&meta),
                .reply_to = w.v[i] };
            int64_t mid;
            bad = hub_insert_message(h, q, r, &m, NULL, &mid) != 0;
        }
        hub_ids_free(&ids);
        buf_free(&chan), buf_free(&thread), buf_free(&to);
        buf_free(&body), buf_free(&meta);
        if (bad) goto done;
    }
    rc = 0;
done:
    hub_ids_free(&w);
    return rc;
}

/* Complete task `id` by any path (the endpoint, a task_result) and post
 * the notices of the tasks that no longer wait. Returns 1 when it was
 * open, 0 when not, -1 with r failed. */
static int hub_task_done(Hub *h, Req *q, Res *r, int64_t id) {
    int ch = hub_complete_task_row(h, id);
    if (ch < 0) hub_db_fail(h, r);
    if (ch > 0 && hub_deps_unblock(h, q, r, id)) return -1;
    return ch;
}

/* POST /v1/messages (PROTOCOL §7.10). Validation order follows the
 * reference so the first error reported is the same. */
static void hub_post_message(Hub *h, Req *q, Res *r) {
    Buf from = { 0 }, to = { 0 }, chan = { 0 }, kind = { 0 }, body = { 0 },
        thread = { 0 }, atts = { 0 }, meta = { 0 }, out = { 0 };
    Json *j = &q->body;
    int64_t parent = ARC_NO_ID, reply = ARC_NO_ID, id;
    int rc, has_to, has_thread;
    uint32_t v;
    HubIds deps = { 0 };   /* metadata.blocked_by of a task (§14) */
    if ((rc = hub_int(q, r, "parent_task_id", &parent)) < 0) goto done;
    if (rc && !hub_task_exists(h, parent)) {
        hub_fail(r, 400, "parent_task_id references unknown task");
        goto done;
    }
    if (!rc) parent = ARC_NO_ID;
    if ((rc = hub_str(q, r, "from_agent", 0, &from)) < 0) goto done;
    if (rc == 0 || from.len == 0) {
        hub_fail(r, 400, "from_agent is required");
        goto done;
    }
    if ((rc = hub_str(q, r, "to_agent", 0, &to)) < 0) goto done;
    has_to = rc > 0 && to.len > 0;
    v = json_get(j, 0, "channel");
    if (v && json_truthy(j, v)) {
        json_as_text(&chan, j, v);
        Str c = str_trim(buf_str(&chan));
        if (!c.n) {
            hub_fail(r, 400, "channel must be non-empty");
            goto done;
        }
        memmove(chan.p, c.p, c.n);
        chan.len = c.n;
        if (hub_no_nul(r, "channel", c)) goto done;
    } else {
        buf_adds(&chan, has_to ? "direct" : "general");
    }
    v = json_get(j, 0, "kind");
    if (v) json_as_text(&kind, j, v);
    else buf_adds(&kind, "chat");
    {
        Str k = str_trim(buf_str(&kind));
        Buf low = { 0 };
        for (size_t i = 0; i < k.n; i++)
            buf_addc(&low, (char)tolower((unsigned char)k.p[i]));
        buf_free(&kind);
        kind = low;
    }
    rc = 0;
    for (size_t i = 0; i < sizeof hub_kinds / sizeof *hub_kinds; i++)
        if (str_eq(buf_str(&kind), hub_kinds[i])) rc = 1;
    if (!rc) {
        hub_fail(r, 400, "unsupported kind: %s", buf_cstr(&kind));
        goto done;
    }
    v = json_get_val(j, 0, "body");
    if (v) json_as_text(&body, j, v);
    v = json_get(j, 0, "attachments");
    buf_addc(&atts, '[');
    int n_atts = 0;
    if (v && json_truthy(j, v)) {
        if (j->t[v].type != JSON_ARR) {
            hub_fail(r, 400, "attachments must be a list");
            goto done;
        }
        if ((int64_t)j->t[v].n > h->cfg.max_attachments) {
            hub_fail(r, 400, "too many attachments");
            goto done;
        }
        uint32_t a = v + 1;
        for (uint32_t i = 0; i < j->t[v].n; i++, n_atts++) {
            if (i) buf_addc(&atts, ',');
            if (hub_attachment(h, j, a, r, &atts)) goto done;
            a = j->t[a].next;
        }
    }
    buf_addc(&atts, ']');
    if (body.len == 0 && n_atts == 0) {
        hub_fail(r, 400, "body or attachments is required");
        goto done;
    }
    if ((int64_t)utf8_chars(body.p, body.len) > h->cfg.max_body_chars) {
        hub_fail(r, 400, "body exceeds max size");
        goto done;
    }
    if ((rc = hub_int(q, r, "reply_to", &reply)) < 0) goto done;
    if (!rc) reply = ARC_NO_ID;
    v = json_get_val(j, 0, "thread_id");
    has_thread = v != 0;
    if (v) json_as_text(&thread, j, v);
    if (hub_no_nul(r, "thread_id", buf_str(&thread))) goto done;
    v = json_get(j, 0, "metadata");
    int complete = str_eq(buf_str(&kind), "task_result") && reply != ARC_NO_ID &&
                   hub_open_request(h, reply);
    if (v && json_truthy(j, v)) {
        if (j->t[v].type != JSON_OBJ) {
            hub_fail(r, 400, "metadata must be a JSON object");
            goto done;
        }
        if (hub_stored(r, j, v, "metadata", 0, h->cfg.max_metadata_chars))
            goto done;
        json_write_skip(&meta, j, v, complete ? "task_completed" : NULL);
    } else {
        buf_adds(&meta, "{}");
    }
    if (complete) {   /* PROTOCOL §7.10: stored with the message, atomically */
        meta.len--;
        buf_addf(&meta, "%s\"task_completed\":%lld}", meta.len > 1 ? "," : "",
                 (long long)reply);
    }
    if (!has_to && !hub_channel_exists(h, buf_str(&chan))) {
        hub_fail(r, 400, "channel does not exist: %s", buf_cstr(&chan));
        goto done;
    }
    int is_task = str_eq(buf_str(&kind), "task") ||
                  str_eq(buf_str(&kind), "task_request");
    v = json_get(j, 0, "metadata");
    if (is_task && v && j->t[v].type == JSON_OBJ &&
        hub_deps_parse(j, v, r, &deps))
        goto done;
    if ((deps.n || complete) && hub_deps_sync(h, q, r)) goto done;
    StoreMsg m = {
        .from = buf_str(&from), .to = has_to ? buf_str(&to) : (Str){ NULL, 0 },
        .channel = buf_str(&chan), .kind = buf_str(&kind), .body = buf_str(&body),
        .thread = has_thread ? buf_str(&thread) : (Str){ NULL, 0 },
        .attachments = buf_str(&atts), .metadata = buf_str(&meta),
        .reply_to = reply,
    };
    if (hub_insert_message(h, q, r, &m, &out, &id)) goto done;
    if (is_task) {
        static const char sql[] =
            "INSERT OR IGNORE INTO tasks VALUES(?,?,?,?,'open',?,NULL)";
        char now[ISO_LEN];
        hub_now(now);
        sqlite3_stmt *st = store_stmt(&h->store, sql);
        if (!st) goto db;
        sqlite3_bind_int64(st, 1, id);
        if (parent != ARC_NO_ID) sqlite3_bind_int64(st, 2, parent);
        store_bind(st, 3, m.channel);
        store_bind(st, 4, m.thread);
        store_bind_c(st, 5, now);
        if (store_done(&h->store, st)) goto db;
        if (deps.n && hub_deps_check(h, r, id, parent, &deps)) goto done;
        if (deps.n && hub_deps_record(h, id, &deps)) goto db;
    } else if (complete && hub_task_done(h, q, r, reply) < 0) {
        goto done;
    }
    hub_touch(h, q, r, m.from);
    hub_ok(r, 201);
    buf_addstr(&r->body, buf_str(&out));
    hub_ok_end(r);
    goto done;
db:
    hub_db_fail(h, r);
done:
    buf_free(&from), buf_free(&to), buf_free(&chan), buf_free(&kind);
    buf_free(&body), buf_free(&thread), buf_free(&atts), buf_free(&meta);
    buf_free(&out);
    hub_ids_free(&deps);
}

/* ---- pages of messages ---- */

/* Step st, a list of message ids, appending the messages to b as a JSON
 * array that stops before the row that would take it past
 * ARC_MAX_PAGE_BYTES; the first row always goes in, so a reader paging
 * with since_id always moves on (PROTOCOL §4.3). *more is set when rows
 * were left out. With `desc`, st yields the newest first (a tail read):
 * the newest rows that fit are kept, and emitted oldest first. Returns the
 * row count, or -1 on a database error. hub_emit_page_from() takes st with
 * its first step done: rc is what it returned (and if it was a row, the
 * cache was synced, store_cache_sync). *last, if not NULL, gets the id of
 * an ascending page's last row; for desc, the newest row's. */
static int hub_emit_page_from(Hub *h, Buf *b, sqlite3_stmt *st, int rc, int desc,
                              int *more, int64_t *last) {
    Buf rows = { 0 };    /* desc: the rows, newest first, back to back */
    size_t *ends = NULL; /* desc: where each row ends in rows */
    size_t start = b->len;
    int n = 0, cap = 0;
    *more = 0;
    buf_addc(b, '[');
    for (; rc == SQLITE_ROW; rc = sqlite3_step(st)) {
        Buf *out = desc ? &rows : b;
        size_t mark = out->len;
        if (n && !desc) buf_addc(b, ',');
        store_emit_message(&h->store, out, st);
        size_t used = desc ? 1 + rows.len + (size_t)n : b->len - start;
        if (n && used > ARC_MAX_PAGE_BYTES) {
            out->len = mark;     /* the row does not fit: take it back */
            out->p[mark] = 0;
            *more = 1;
            break;
        }
        if (desc) {
            if (n == cap) ends = vec_grow(ends, &cap, sizeof *ends);
            ends[n] = rows.len;
        }
        if (last && (!n || !desc)) *last = sqlite3_column_int64(st, 0);
        n++;
    }
    for (int i = desc ? n - 1 : -1; i >= 0; i--) {
        size_t from = i ? ends[i - 1] : 0;
        if (i != n - 1) buf_addc(b, ',');
        buf_add(b, rows.p + from, ends[i] - from);
    }
    buf_addc(b, ']');
    sqlite3_reset(st);
    buf_free(&rows);
    free(ends);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        log_warn("store: %s", sqlite3_errmsg(h->store.db));
        return -1;
    }
    return n;
}

static int hub_emit_page(Hub *h, Buf *b, sqlite3_stmt *st, int desc, int *more) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) store_cache_sync(&h->store);
    return hub_emit_page_from(h, b, st, rc, desc, more, NULL);
}

/* ---- threads ---- */

/* A thread's summary (PROTOCOL §5.7), gathered with a few aggregate
 * queries instead of loading every row. */
typedef struct {
    int64_t n_msgs, latest_id, latest_artifact, n_tasks, n_open, root_task;
    int64_t n_claims, active_claims, n_locks, active_locks;
    Buf latest_ts, channel;
    int has_channel;
} ThreadInfo;

/* Locks belong to a thread through metadata.thread_id (a string). */
#define LOCK_IN_THREAD \
    "json_valid(metadata_json) AND json_type(metadata_json,'$.thread_id')=" \
    "'text' AND json_extract(metadata_json,'$.thread_id')=?1"
#define ACTIVE_AT_2 "released_at IS NULL AND julianday(expires_at)>=julianday(?2)"

static int64_t hub_col_i64(sqlite3_stmt *st, int i) {
    return sqlite3_column_type(st, i) == SQLITE_NULL ? -1
                                                     : sqlite3_column_int64(st, i);
}

/* Fill ti for thread `tid`. Returns 1 if the thread exists (has messages,
 * tasks, claims or locks), 0 if not, -1 on a database error. Its messages
 * are the summary row plus those above the watermark (§10.7). */
static int hub_thread_info(Hub *h, Str tid, ThreadInfo *ti) {
    static const char q_sum[] =
        "SELECT n,first_channel,latest_id,latest_ts,latest_artifact"
        " FROM arc_thread_msgs WHERE thread_id=?1";
    static const char q_msgs[] =
        "SELECT count(*),max(id),max(CASE WHEN kind='artifact' THEN id END),"
        " (SELECT ts FROM messages WHERE thread_id=?1 AND id>?2"
        "  ORDER BY id DESC LIMIT 1),"
        " (SELECT channel FROM messages WHERE thread_id=?1 AND id>?2"
        "  ORDER BY id LIMIT 1)"
        " FROM messages WHERE thread_id=?1 AND id>?2";
    static const char q_tasks[] =
        "SELECT count(*),sum(status='open'),"
        " (SELECT min(task_id) FROM tasks WHERE thread_id=?1 AND"
        "  +parent_task_id IS NULL),"   /* +: on ix_arc_t_th, not ix_t_par */
        " (SELECT channel FROM tasks WHERE thread_id=?1 AND"
        "  +parent_task_id IS NULL ORDER BY task_id LIMIT 1),"
        " (SELECT channel FROM tasks WHERE thread_id=?1 ORDER BY task_id LIMIT 1)"
        " FROM tasks WHERE thread_id=?1";
    static const char q_claims[] =
        "SELECT count(*),coalesce(sum(" ACTIVE_AT_2 "),0)"
        " FROM claims WHERE thread_id=?1";
    static const char q_locks[] =
        "SELECT count(*),coalesce(sum(" ACTIVE_AT_2 "),0)"
        " FROM locks WHERE " LOCK_IN_THREAD;
    char now[ISO_LEN];
    hub_now(now);
    memset(ti, 0, sizeof *ti);
    Str msg_chan = { NULL, 0 }, root_chan = { NULL, 0 }, task_chan = { NULL, 0 };
    Buf mc = { 0 }, rc_ = { 0 }, tc = { 0 };
    int ok = -1, has_mc = 0, snap = store_read_begin(&h->store);
    ti->latest_artifact = -1;
    sqlite3_stmt *st = store_stmt(&h->store, q_sum);
    if (!st) goto done;
    store_bind(st, 1, tid);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        ti->n_msgs = sqlite3_column_int64(st, 0);
        if (store_col(st, 1).p) buf_addstr(&mc, store_col(st, 1)), has_mc = 1;
        ti->latest_id = sqlite3_column_int64(st, 2);
        buf_addstr(&ti->latest_ts, store_col(st, 3));
        ti->latest_artifact = hub_col_i64(st, 4);
    }
    sqlite3_reset(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) goto done;
    st = store_stmt(&h->store, q_msgs);
    if (!st) goto done;
    store_bind(st, 1, tid);
    sqlite3_bind_int64(st, 2, store_fold_upto(&h->store));
    if (sqlite3_step(st) != SQLITE_ROW) goto done_reset;
    if (sqlite3_column_int64(st, 0)) {   /* messages above the watermark */
        ti->n_msgs += sqlite3_column_int64(st, 0);
        ti->latest_id = sqlite3_column_int64(st, 1);
        if (sqlite3_column_type(st, 2) != SQLITE_NULL)
            ti->latest_artifact = sqlite3_column_int64(st, 2);
        buf_reset(&ti->latest_ts);
        buf_addstr(&ti->latest_ts, store_col(st, 3));
        if (!has_mc && store_col(st, 4).p) buf_addstr(&mc, store_col(st, 4)), has_mc = 1;
    }
    if (has_mc) msg_chan = buf_str(&mc);
    sqlite3_reset(st);
    st = store_stmt(&h->store, q_tasks);
    if (!st) goto done;
    store_bind(st, 1, tid);
    if (sqlite3_step(st) != SQLITE_ROW) goto done_reset;
    ti->n_tasks = sqlite3_column_int64(st, 0);
    ti->n_open = sqlite3_column_int64(st, 1);
    ti->root_task = hub_col_i64(st, 2);
    if ((root_chan = store_col(st, 3)).p) buf_addstr(&rc_, root_chan), root_chan = buf_str(&rc_);
    if ((task_chan = store_col(st, 4)).p) buf_addstr(&tc, task_chan), task_chan = buf_str(&tc);
    sqlite3_reset(st);
    static const char *const counts[] = { q_claims, q_locks };
    for (int i = 0; i < 2; i++) {
        st = store_stmt(&h->store, counts[i]);
        if (!st) goto done;
        store_bind(st, 1, tid);
        store_bind_c(st, 2, now);
        if (sqlite3_step(st) != SQLITE_ROW) goto done_reset;
        int64_t total = sqlite3_column_int64(st, 0), act = sqlite3_column_int64(st, 1);
        if (i == 0) ti->n_claims = total, ti->active_claims = act;
        else ti->n_locks = total, ti->active_locks = act;
        sqlite3_reset(st);
    }
    Str chan = root_chan.p ? root_chan : msg_chan.p ? msg_chan : task_chan;
    if (chan.p) {
        buf_addstr(&ti->channel, chan);
        ti->has_channel = 1;
    }
    ok = ti->n_msgs || ti->n_tasks || ti->n_claims || ti->n_locks;
    goto done;
done_reset:
    sqlite3_reset(st);
done:
    store_read_end(&h->store, snap);
    buf_free(&mc), buf_free(&rc_), buf_free(&tc);
    return ok;
}

static void hub_thread_info_free(ThreadInfo *ti) {
    buf_free(&ti->latest_ts);
    buf_free(&ti->channel);
}

static void hub_emit_opt_id(Buf *b, int64_t v) {
    if (v < 0) buf_adds(b, "null");
    else buf_add_i64(b, v);
}

/* A thread summary (PROTOCOL §7.15): completed once it has tasks and none
 * is open, open while a claim or lock is live, else waiting. The numbers
 * come from ti, the channel (p NULL: none) and latest ts from chan and ts. */
static void hub_emit_thread_s(Buf *b, Str tid, const ThreadInfo *ti, Str chan, Str ts) {
    const char *status = ti->n_tasks > 0 && ti->n_open == 0 ? "completed"
                         : ti->active_claims || ti->active_locks ? "open"
                                                                 : "waiting";
    buf_adds(b, "{\"thread_id\":");
    json_strs(b, tid);
    buf_adds(b, ",\"channel\":");
    if (chan.p) json_strs(b, chan);
    else buf_adds(b, "null");
    buf_adds(b, ",\"root_task_id\":");
    hub_emit_opt_id(b, ti->root_task);
    buf_adds(b, ",\"latest_message_id\":");
    hub_emit_opt_id(b, ti->n_msgs ? ti->latest_id : -1);
    buf_adds(b, ",\"latest_message_ts\":");
    if (ti->n_msgs) json_strs(b, ts);
    else buf_adds(b, "null");
    buf_adds(b, ",\"latest_artifact_id\":");
    hub_emit_opt_id(b, ti->latest_artifact);
    /* buf_add_i64, not buf_addf: printf was a fifth of a 20,000-thread list */
    buf_adds(b, ",\"message_count\":");
    buf_add_i64(b, ti->n_msgs);
    buf_adds(b, ",\"total_task_count\":");
    buf_add_i64(b, ti->n_tasks);
    buf_adds(b, ",\"open_task_count\":");
    buf_add_i64(b, ti->n_open);
    buf_adds(b, ",\"active_claim_count\":");
    buf_add_i64(b, ti->active_claims);
    buf_adds(b, ",\"active_lock_count\":");
    buf_add_i64(b, ti->active_locks);
    buf_adds(b, ",\"status\":\"");
    buf_adds(b, status);
    buf_adds(b, "\"}");
}

static void hub_emit_thread(Buf *b, Str tid, const ThreadInfo *ti) {
    hub_emit_thread_s(b, tid, ti, ti->has_channel ? buf_str(&ti->channel) : (Str){ NULL, 0 },
                      buf_str(&ti->latest_ts));
}

/* The thread's derived channel into out; returns 1 if it has one. */
static int hub_thread_channel(Hub *h, Str thread, Buf *out) {
    ThreadInfo ti;
    int ok = hub_thread_info(h, thread, &ti) > 0 && ti.has_channel;
    if (ok) buf_addstr(out, buf_str(&ti.channel));
    hub_thread_info_free(&ti);
    return ok;
}

/* Thread ids compare as SQLite's BINARY collation does (bytes, then length):
 * the order the list's queries yield them in. */
static int hub_tid_cmp(Str a, Str b) {
    size_t m = a.n < b.n ? a.n : b.n;
    int c = m ? memcmp(a.p, b.p, m) : 0;
    return c ? c : a.n < b.n ? -1 : a.n > b.n;
}

/* A thread of the list: its numbers, and its strings in a shared buffer. */
typedef struct {
    int64_t latest;        /* sort key: latest message id, -1 if none */
    int64_t n_msgs, latest_artifact, n_tasks, n_open, root_task;
    int64_t active_claims, active_locks;
    size_t tid, tid_n;     /* the id, in the strings buffer */
    size_t chan, chan_n;   /* the channel, there too, if has_channel */
    size_t ts, ts_n;       /* the latest message's ts, if n_msgs */
    int has_channel;
} ThreadRow;

static const char *g_thread_names;   /* loop only: qsort's view of names */

static int hub_thread_row_cmp(const void *a, const void *b) {
    const ThreadRow *x = a, *y = b;
    if (x->latest != y->latest) return x->latest < y->latest ? 1 : -1;
    return -hub_tid_cmp((Str){ g_thread_names + x->tid, x->tid_n },
                        (Str){ g_thread_names + y->tid, y->tid_n });
}

/* The list's sources, each in thread_id order, stepped side by side (a
 * merge join) in one read snapshot: the summary and the messages above its
 * watermark (§10.7), tasks, claims, active locks. None reads a message
 * below the watermark; tasks and claims are read whole, tasks in one pass
 * along ix_arc_t_th (counted in C: the root task and the channels are
 * those of the lowest task ids). Claims and locks also give the earliest
 * expiry of a live one, until which the list stays valid (Hub.threads). */
enum { TS_SUM, TS_NEW, TS_TASKS, TS_CLAIMS, TS_LOCKS, TS_N };
static const char *const hub_thread_src[TS_N] = {
    "SELECT thread_id,n,first_channel,latest_id,latest_ts,latest_artifact"
    " FROM arc_thread_msgs ORDER BY thread_id",
    /* NOT INDEXED: by rowid from the watermark, never along ix_m_th */
    "SELECT thread_id,id,channel,kind,ts FROM messages NOT INDEXED WHERE id>coalesce("
    "(SELECT upto FROM arc_folds WHERE name='thread_msgs'),0)"
    " AND thread_id IS NOT NULL ORDER BY thread_id,id",
    "SELECT thread_id,task_id,parent_task_id IS NULL,status='open',channel"
    " FROM tasks WHERE thread_id IS NOT NULL ORDER BY thread_id",
    "SELECT thread_id,coalesce(sum(" ACTIVE_AT_2 "),0),"
    " min(CASE WHEN " ACTIVE_AT_2 " THEN julianday(expires_at) END) FROM claims"
    " WHERE thread_id IS NOT NULL GROUP BY thread_id ORDER BY thread_id",
    "SELECT json_extract(metadata_json,'$.thread_id') AS t,count(*),"
    " min(julianday(expires_at)) FROM locks"
    " WHERE " ACTIVE_AT_2 " AND json_valid(metadata_json) AND"
    " json_type(metadata_json,'$.thread_id')='text' GROUP BY t ORDER BY t",
};

/* Wall-clock microseconds of a julianday() column, rounded down by a few
 * ms: SQLite compares julianday()s in whole ms, and a double of that size
 * is exact to ~50 us. NULL: INT64_MAX. */
static int64_t hub_jd_us(sqlite3_stmt *st, int i) {
    if (sqlite3_column_type(st, i) == SQLITE_NULL) return INT64_MAX;
    double us = (sqlite3_column_double(st, i) - 2440587.5) * 86400e6;
    return us > 9e18 ? INT64_MAX : us < -9e18 ? INT64_MIN : (int64_t)us - 2000;
}

/* The thread list, built: the result array of GET /v1/threads into out,
 * and into *until_us the wall-clock time it stops being exact at (the
 * first live claim or lock expiring). Reads in the caller's snapshot. */
static int hub_threads_build(Hub *h, const char *now, Buf *out, int64_t *until_us) {
    sqlite3_stmt *st[TS_N] = { 0 };
    int live[TS_N] = { 0 }, n = 0, cap = 0, failed = 0;
    ThreadRow *rows = NULL;
    Buf strs = { 0 }, tid = { 0 }, ts = { 0 }, mchan = { 0 }, tchan = { 0 }, rchan = { 0 };
    *until_us = INT64_MAX;
    for (int i = 0; i < TS_N; i++) {
        if (!(st[i] = store_stmt(&h->store, hub_thread_src[i]))) { failed = 1; goto done; }
        store_bind_c(st[i], 2, now);   /* the claims' and locks' ?2 */
    }
    for (int i = 0; i < TS_N; i++) live[i] = sqlite3_step(st[i]) == SQLITE_ROW;
    for (;;) {
        int lo = -1;   /* the source with the smallest thread_id */
        for (int i = 0; i < TS_N; i++)
            if (live[i] && (lo < 0 || hub_tid_cmp(store_col(st[i], 0), store_col(st[lo], 0)) < 0))
                lo = i;
        if (lo < 0) break;
        buf_reset(&tid);
        buf_addstr(&tid, store_col(st[lo], 0));
        Str t = buf_str(&tid);
        buf_reset(&ts), buf_reset(&mchan), buf_reset(&tchan), buf_reset(&rchan);
        ThreadRow row = { .latest_artifact = -1, .root_task = -1 };
        int64_t latest_id = -1, first_task = -1;
        int known = 0, has_m = 0;
        for (int i = 0; i < TS_N; i++) {
            while (live[i] && hub_tid_cmp(store_col(st[i], 0), t) == 0) {
                sqlite3_stmt *s = st[i];
                switch (i) {
                case TS_SUM:
                    row.n_msgs = sqlite3_column_int64(s, 1);
                    buf_addstr(&mchan, store_col(s, 2)), has_m = 1;
                    latest_id = sqlite3_column_int64(s, 3);
                    buf_addstr(&ts, store_col(s, 4));
                    row.latest_artifact = hub_col_i64(s, 5);
                    break;
                case TS_NEW:   /* in id order, after the summary's rows */
                    row.n_msgs++;
                    if (!has_m) buf_addstr(&mchan, store_col(s, 2)), has_m = 1;
                    latest_id = sqlite3_column_int64(s, 1);
                    buf_reset(&ts);
                    buf_addstr(&ts, store_col(s, 4));
                    if (str_eq(store_col(s, 3), "artifact")) row.latest_artifact = latest_id;
                    break;
                case TS_TASKS: {   /* one task, in no particular id order */
                    int64_t id = sqlite3_column_int64(s, 1);
                    row.n_tasks++;
                    row.n_open += sqlite3_column_int64(s, 3);
                    if (first_task < 0 || id < first_task) {
                        first_task = id;
                        buf_reset(&tchan);
                        buf_addstr(&tchan, store_col(s, 4));
                    }
                    if (sqlite3_column_int64(s, 2) && (row.root_task < 0 || id < row.root_task)) {
                        row.root_task = id;
                        buf_reset(&rchan);
                        buf_addstr(&rchan, store_col(s, 4));
                    }
                    break;
                }
                case TS_CLAIMS:
                    row.active_claims = sqlite3_column_int64(s, 1);
                    if (hub_jd_us(s, 2) < *until_us) *until_us = hub_jd_us(s, 2);
                    break;
                default:
                    row.active_locks = sqlite3_column_int64(s, 1);
                    if (hub_jd_us(s, 2) < *until_us) *until_us = hub_jd_us(s, 2);
                }
                if (i != TS_LOCKS) known = 1;
                int rc = sqlite3_step(s);
                live[i] = rc == SQLITE_ROW;
                if (rc != SQLITE_ROW && rc != SQLITE_DONE) failed = 1;
            }
        }
        if (failed) goto done;
        if (!known) continue;   /* locks alone do not make a thread known */
        /* The channel: the root task's, else the first message's, else the
         * first task's (PROTOCOL §7.15). */
        Buf *chan = row.root_task >= 0 ? &rchan : has_m ? &mchan : first_task >= 0 ? &tchan : NULL;
        row.latest = row.n_msgs ? latest_id : -1;
        row.tid = strs.len, row.tid_n = t.n;
        buf_addstr(&strs, t);
        if (chan) {
            row.has_channel = 1;
            row.chan = strs.len, row.chan_n = chan->len;
            buf_addstr(&strs, buf_str(chan));
        }
        row.ts = strs.len, row.ts_n = ts.len;
        buf_addstr(&strs, buf_str(&ts));
        if (n == cap) rows = vec_grow(rows, &cap, sizeof *rows);
        rows[n++] = row;
    }
    g_thread_names = strs.p;
    if (n) qsort(rows, (size_t)n, sizeof *rows, hub_thread_row_cmp);
    /* One pass to size it, so the answer is written without regrowing. */
    size_t need = 2;
    for (int i = 0; i < n; i++) need += 300 + 2 * (rows[i].tid_n + rows[i].chan_n);
    buf_reserve(out, need);
    buf_addc(out, '[');
    for (int i = 0; i < n; i++) {
        const ThreadRow *w = &rows[i];
        ThreadInfo ti = { .n_msgs = w->n_msgs, .latest_id = w->latest,
                          .latest_artifact = w->latest_artifact, .n_tasks = w->n_tasks,
                          .n_open = w->n_open, .root_task = w->root_task,
                          .active_claims = w->active_claims, .active_locks = w->active_locks };
        if (i) buf_addc(out, ',');
        hub_emit_thread_s(out, (Str){ strs.p + w->tid, w->tid_n }, &ti,
                          w->has_channel ? (Str){ strs.p + w->chan, w->chan_n } : (Str){ NULL, 0 },
                          (Str){ strs.p + w->ts, w->ts_n });
    }
    buf_addc(out, ']');
done:
    for (int i = 0; i < TS_N; i++)
        if (st[i]) sqlite3_reset(st[i]);
    free(rows);
    buf_free(&strs), buf_free(&tid), buf_free(&ts);
    buf_free(&mchan), buf_free(&tchan), buf_free(&rchan);
    return failed ? -1 : 0;
}

/* Is the cached list (Hub.threads) what a build would give now? It is
 * while nothing it reads changed: no change to messages, tasks, claims or
 * locks by this hub (Store.threads_gen, counted as rows change, so even
 * this turn's uncommitted writes count), no commit by another connection
 * (PRAGMA data_version, read in the caller's snapshot), and no live claim
 * or lock expired (until_us); a clock set back rebuilds too. */
static int hub_threads_fresh(const Hub *h, int64_t dv, int64_t now_us) {
    return h->threads_ok && h->threads_gen == h->store.threads_gen &&
           h->threads_dv == dv && now_us >= h->threads_at_us &&
           now_us < h->threads_until_us;
}

/* GET /v1/threads (PROTOCOL §7.15): all threads, newest first. Building
 * the list reads every thread's summary, task and claim (tens of ms on a
 * store of 20,000 threads), and the dashboard asks for it on every load,
 * so the last one is kept and served while hub_threads_fresh(). Only a
 * list read outside a write transaction is kept: it then holds committed
 * rows only, which no rollback can take back. */
static void hub_list_threads(Hub *h, Req *q, Res *r) {
    (void)q;
    int64_t now_us = clock_wall_us(), until_us;
    char now[ISO_LEN];
    iso_format(now_us, now);
    int snap = store_read_begin(&h->store);
    int64_t dv = store_data_version(&h->store);   /* opens the snapshot */
    int failed = 0;
    if (hub_threads_fresh(h, dv, now_us)) {
        hub_ok(r, 200);
        buf_addstr(&r->body, buf_str(&h->threads));
        hub_ok_end(r);
        goto done;
    }
    h->threads_ok = 0;
    buf_reset(&h->threads);
    int64_t gen = h->store.threads_gen;
    if (hub_threads_build(h, now, &h->threads, &until_us)) {
        failed = 1;
        buf_free(&h->threads);
        goto done;
    }
    hub_ok(r, 200);
    buf_addstr(&r->body, buf_str(&h->threads));
    hub_ok_end(r);
    if (store_in_tx(&h->store) || h->store.threads_gen != gen) {
        buf_free(&h->threads);   /* not kept: may hold uncommitted rows */
        goto done;
    }
    h->threads_ok = 1;
    h->threads_gen = gen;
    h->threads_dv = dv;
    h->threads_at_us = now_us;
    h->threads_until_us = until_us;
done:
    store_read_end(&h->store, snap);
    if (failed) hub_db_fail(h, r);
}

/* GET /v1/threads/{thread_id}: its messages are a page (ARC_MAX_PAGE_BYTES)
 * that since_id continues, as in every read of messages (PROTOCOL §7.16). */
static void hub_get_thread(Hub *h, Req *q, Res *r) {
    static const char q_msgs[] =
        "SELECT id FROM messages WHERE thread_id=?1 AND id>?2 ORDER BY id";
    static const char q_tasks[] =
        "SELECT " T_COLS " FROM tasks WHERE thread_id=? ORDER BY task_id";
    static const char q_claims[] =
        "SELECT " C_COLS " FROM claims WHERE thread_id=? ORDER BY claimed_at";
    static const char q_locks[] =
        "SELECT " L_COLS " FROM locks WHERE " LOCK_IN_THREAD
        " ORDER BY locked_at";
    Str tid = buf_str(&q->arg);
    ThreadInfo ti;
    int64_t since;
    int more = 0, n_msgs = 0;
    if (hub_qint(q, r, "since_id", 0, &since)) return;
    if (since < 0) {
        hub_fail(r, 400, "since_id must be >= 0");
        return;
    }
    int ok = hub_thread_info(h, tid, &ti);
    if (ok <= 0) {
        hub_thread_info_free(&ti);
        if (ok < 0) { hub_db_fail(h, r); return; }
        { hub_fail(r, 404, "thread not found"); return; }
    }
    hub_ok(r, 200);
    buf_adds(&r->body, "{\"thread\":");
    hub_emit_thread(&r->body, tid, &ti);
    hub_thread_info_free(&ti);
    static const char *const names[] = { "messages", "tasks", "claims", "locks" };
    static const char *const sqls[] = { q_msgs, q_tasks, q_claims, q_locks };
    static const StoreEmit emits[] = { store_emit_message, store_emit_task,
                                       store_emit_claim, store_emit_lock };
    for (int i = 0; i < 4; i++) {
        sqlite3_stmt *st = store_stmt(&h->store, sqls[i]);
        if (!st) { hub_db_fail(h, r); return; }
        store_bind(st, 1, tid);
        buf_addf(&r->body, ",\"%s\":", names[i]);
        if (i == 0) sqlite3_bind_int64(st, 2, since);
        int n = i == 0 ? hub_emit_page(h, &r->body, st, 0, &more)
                       : store_emit_rows(&h->store, &r->body, st, emits[i]);
        if (n < 0) { hub_db_fail(h, r); return; }
        if (i == 0) n_msgs = n;
    }
    buf_addc(&r->body, '}');
    if (more) buf_adds(&r->body, ",\"more\":true");
    hub_ok_end(r);
    Buf who = { 0 };   /* ?agent_id=A: A read these (§17.2) */
    if (http_query_get(q->query, "agent_id", &who) > 0 && !memchr(who.p, 0, who.len))
        hub_rc_read(h, q, RC_READ_THREAD, buf_str(&who), tid, since, n_msgs);
    buf_free(&who);
}

/* ---- sessions, agents, channels ---- */

static const char hub_active_session_sql[] =
    "SELECT " S_COLS " FROM sessions WHERE agent_id=? AND active=1"
    " ORDER BY created_at DESC LIMIT 1";

/* POST /v1/sessions (PROTOCOL §7.3) */
static void hub_create_session(Hub *h, Req *q, Res *r) {
    Buf agent = { 0 }, name = { 0 }, caps = { 0 }, meta = { 0 }, tmp = { 0 };
    Json *j = &q->body;
    if (hub_str(q, r, "agent_id", 1, &agent) < 0) goto done;
    if (hub_str(q, r, "display_name", 0, &name) < 0) goto done;
    uint32_t v = json_get_val(j, 0, "capabilities");
    buf_addc(&caps, '[');
    if (v) {
        if (j->t[v].type != JSON_ARR) {
            hub_fail(r, 400, "capabilities must be a list");
            goto done;
        }
        uint32_t c = v + 1;
        for (uint32_t i = 0; i < j->t[v].n; i++, c = j->t[c].next) {
            if (i) buf_addc(&caps, ',');
            buf_reset(&tmp);
            json_as_text(&tmp, j, c);
            if (hub_no_nul(r, "capabilities", buf_str(&tmp))) goto done;
            json_strs(&caps, buf_str(&tmp));
        }
    }
    buf_addc(&caps, ']');
    if (hub_meta(h, q, r, &meta)) goto done;
    v = json_get_val(j, 0, "replace");
    int replace = v && json_truthy(j, v);
    int digest = hub_qbool(q, "digest");   /* PROTOCOL §17.6 */
    HubPresence before;
    if (hub_pr_get(h, buf_str(&agent), &before)) goto db;
    if (hub_tx(h, q, r)) goto done;
    sqlite3_stmt *st = store_stmt(&h->store, hub_active_session_sql);
    if (!st) goto db;
    store_bind(st, 1, buf_str(&agent));
    if (sqlite3_step(st) == SQLITE_ROW) {
        int64_t cutoff = clock_wall_us() - h->cfg.presence_ttl_s * 1000000;
        int fresh = hub_ts_at_least(store_col(st, 6), cutoff);
        buf_reset(&tmp);
        buf_addstr(&tmp, store_col(st, 0));
        sqlite3_reset(st);
        if (fresh && !replace) {
            hub_fail(r, 409, "agent_id already has an active session");
            goto done;
        }
        st = store_stmt(&h->store, "UPDATE sessions SET active=0 WHERE session_id=?");
        if (!st) goto db;
        store_bind(st, 1, buf_str(&tmp));
        if (store_done(&h->store, st)) goto db;
    } else {
        sqlite3_reset(st);
    }
    char sid[37], now[ISO_LEN];
    uuid4(sid);
    hub_now(now);
    Str dn = name.len ? buf_str(&name) : buf_str(&agent);
    st = store_stmt(&h->store, "INSERT INTO sessions VALUES(?,?,?,?,?,?,?,1)");
    if (!st) goto db;
    store_bind_c(st, 1, sid);
    store_bind(st, 2, buf_str(&agent));
    store_bind(st, 3, dn);
    store_bind(st, 4, buf_str(&caps));
    store_bind(st, 5, buf_str(&meta));
    store_bind_c(st, 6, now);
    store_bind_c(st, 7, now);
    if (store_done(&h->store, st)) goto db;
    if (hub_pr_register(h, q, r, buf_str(&agent), &before) ||
        (digest && hub_dl_sync(h, q, r)))
        goto done;
    hub_ok(r, 201);
    Buf *b = &r->body;
    buf_adds(b, "{\"session_id\":");
    json_cstr(b, sid);
    buf_adds(b, ",\"agent_id\":");
    json_strs(b, buf_str(&agent));
    buf_adds(b, ",\"display_name\":");
    json_strs(b, dn);
    buf_adds(b, ",\"capabilities\":");
    buf_addstr(b, buf_str(&caps));
    buf_adds(b, ",\"metadata\":");
    buf_addstr(b, buf_str(&meta));
    buf_adds(b, ",\"created_at\":");
    json_cstr(b, now);
    buf_adds(b, ",\"last_seen\":");
    json_cstr(b, now);
    buf_adds(b, ",\"active\":true");
    if (digest && hub_rc_digest(h, b, buf_str(&agent), &before)) goto db;
    buf_addc(b, '}');
    hub_ok_end(r);
    goto done;
db:
    hub_db_fail(h, r);
done:
    buf_free(&agent), buf_free(&name), buf_free(&caps), buf_free(&meta);
    buf_free(&tmp);
}

/* POST /v1/sessions/{agent_id}/rename */
static void hub_rename_session(Hub *h, Req *q, Res *r) {
    Buf name = { 0 };
    if (hub_str(q, r, "display_name", 1, &name) < 0) goto done;
    if (utf8_chars(name.p, name.len) > 64) {
        hub_fail(r, 400, "display_name must be 64 characters or fewer");
        goto done;
    }
    if (hub_tx(h, q, r)) goto done;
    char now[ISO_LEN];
    hub_now(now);
    sqlite3_stmt *st = store_stmt(&h->store,
        "UPDATE sessions SET display_name=?, last_seen=?"
        " WHERE agent_id=? AND active=1");
    if (!st) goto db;
    store_bind(st, 1, buf_str(&name));
    store_bind_c(st, 2, now);
    store_bind(st, 3, buf_str(&q->arg));
    if (store_done(&h->store, st)) goto db;
    if (sqlite3_changes(h->store.db) == 0) {
        hub_fail(r, 404, "no active session for agent_id");
        goto done;
    }
    st = store_stmt(&h->store, hub_active_session_sql);
    if (!st) goto db;
    store_bind(st, 1, buf_str(&q->arg));
    hub_ok(r, 200);
    if (store_emit_one(&h->store, &r->body, st, store_emit_session) < 0) goto db;
    hub_ok_end(r);
    goto done;
db:
    hub_db_fail(h, r);
done:
    buf_free(&name);
}

/* DELETE /v1/sessions/{session_id} */
static void hub_delete_session(Hub *h, Req *q, Res *r) {
    if (hub_tx(h, q, r)) return;
    sqlite3_stmt *st = store_stmt(&h->store,
        "UPDATE sessions SET active=0 WHERE session_id=? AND active=1");
    if (!st) { hub_db_fail(h, r); return; }
    store_bind(st, 1, buf_str(&q->arg));
    if (store_done(&h->store, st)) { hub_db_fail(h, r); return; }
    if (sqlite3_changes(h->store.db) == 0) {
        hub_fail(r, 404, "session not found");
        return;
    }
    if (hub_pr_gone(h, buf_cstr(&q->arg), (Str){ NULL, 0 })) {   /* §17.5 */
        hub_db_fail(h, r);
        return;
    }
    hub_ok(r, 200);
    buf_adds(&r->body, "{\"session_id\":");
    json_strs(&r->body, buf_str(&q->arg));
    buf_adds(&r->body, ",\"deleted\":true}");
    hub_ok_end(r);
}

static const char hub_live_sql[] =
    "SELECT " S_COLS " FROM sessions WHERE active=1 ORDER BY agent_id";
static const char hub_live_cap_sql[] =
    "SELECT " S_COLS " FROM sessions WHERE active=1 AND json_valid"
    "(capabilities_json) AND EXISTS(SELECT 1 FROM json_each(capabilities_json)"
    " WHERE type='text' AND value=?) ORDER BY agent_id";

/* GET /v1/agents (PROTOCOL §7.6) */
static void hub_list_agents(Hub *h, Req *q, Res *r) {
    int err = 0;
    char *cap = hub_qdup(q, r, "capability", &err);
    char *as = err ? NULL : hub_qdup(q, r, "as", &err);
    if (err) goto done;
    if (as) hub_touch(h, q, r, str_c(as));
    hub_expire_sessions(h, q, r);
    if (r->status >= 400) goto done;   /* storage error from the above */
    sqlite3_stmt *st = store_stmt(&h->store, cap ? hub_live_cap_sql : hub_live_sql);
    if (!st) { hub_db_fail(h, r); goto done; }
    if (cap) store_bind_c(st, 1, cap);
    hub_ok(r, 200);
    if ((hub_qbool(q, "presence")   /* PROTOCOL §17.5: state, state_since */
             ? hub_pr_sessions(h, &r->body, st)
             : store_emit_rows(&h->store, &r->body, st, store_emit_session)) < 0)
        hub_db_fail(h, r);
    else
        hub_ok_end(r);
done:
    free(cap);
    free(as);
}

/* GET /v1/bootstrap (PROTOCOL §7.13) */
static void hub_bootstrap(Hub *h, Req *q, Res *r) {
    /* Two index lookups (ix_m_to): max() over the OR scanned the store. */
    static const char latest[] =
        "SELECT max(coalesce((SELECT max(id) FROM messages WHERE to_agent IS NULL),0),"
        " coalesce((SELECT max(id) FROM messages WHERE to_agent=?1),0))";
    int rc = hub_qid(q, r, "agent_id");
    if (rc < 0) return;
    if (rc == 0) { hub_fail(r, 400, "agent_id query parameter is required"); return; }
    char *agent = xstrndup(q->tmp.p, q->tmp.len);
    hub_expire_sessions(h, q, r);
    if (r->status >= 400) {
        free(agent);
        return;
    }
    hub_ok(r, 200);
    Buf *b = &r->body;
    buf_adds(b, "{\"agent_id\":");
    json_cstr(b, agent);
    buf_adds(b, ",\"session\":");
    sqlite3_stmt *st = store_stmt(&h->store, hub_active_session_sql);
    if (!st) goto db;
    store_bind_c(st, 1, agent);
    if (store_emit_one(&h->store, b, st, store_emit_session) < 0) goto db;
    st = store_stmt(&h->store, latest);
    if (!st) goto db;
    store_bind_c(st, 1, agent);
    if (sqlite3_step(st) != SQLITE_ROW) { sqlite3_reset(st); goto db; }
    buf_addf(b, ",\"latest_visible_id\":%lld,\"live_agents\":",
             (long long)sqlite3_column_int64(st, 0));
    sqlite3_reset(st);
    st = store_stmt(&h->store, hub_live_sql);
    if (!st || store_emit_rows(&h->store, b, st, store_emit_session) < 0) goto db;
    buf_adds(b, ",\"default_channel\":\"general\"}");
    hub_ok_end(r);
    free(agent);
    return;
db:
    free(agent);
    hub_db_fail(h, r);
}

/* GET /v1/channels */
static void hub_list_channels(Hub *h, Req *q, Res *r) {
    (void)q;
    sqlite3_stmt *st = store_stmt(&h->store,
        "SELECT " CH_COLS " FROM channels ORDER BY name");
    hub_ok(r, 200);
    if (!st || store_emit_rows(&h->store, &r->body, st, store_emit_channel) < 0)
        hub_db_fail(h, r);
    else
        hub_ok_end(r);
}

/* POST /v1/channels: 201 when created, 200 when it already existed. */
static void hub_create_channel(Hub *h, Req *q, Res *r) {
    Buf name = { 0 }, by = { 0 }, meta = { 0 };
    if (hub_str(q, r, "name", 1, &name) < 0) goto done;
    int has_by = hub_str(q, r, "created_by", 0, &by);
    if (has_by < 0) goto done;
    if (hub_meta(h, q, r, &meta)) goto done;
    int created = 0;
    if (!hub_channel_exists(h, buf_str(&name))) {
        if (hub_tx(h, q, r)) goto done;
        char now[ISO_LEN];
        hub_now(now);
        sqlite3_stmt *st = store_stmt(&h->store,
            "INSERT OR IGNORE INTO channels VALUES(?,?,?,?)");
        if (!st) goto db;
        store_bind(st, 1, buf_str(&name));
        store_bind_c(st, 2, now);
        store_bind(st, 3, has_by ? buf_str(&by) : (Str){ NULL, 0 });
        store_bind(st, 4, buf_str(&meta));
        if (store_done(&h->store, st)) goto db;
        created = sqlite3_changes(h->store.db) > 0;
    }
    sqlite3_stmt *st = store_stmt(&h->store,
        "SELECT " CH_COLS " FROM channels WHERE name=?");
    if (!st) goto db;
    store_bind(st, 1, buf_str(&name));
    hub_ok(r, created ? 201 : 200);
    if (store_emit_one(&h->store, &r->body, st, store_emit_channel) < 0) goto db;
    hub_ok_end(r);
    goto done;
db:
    hub_db_fail(h, r);
done:
    buf_free(&name), buf_free(&by), buf_free(&meta);
}

/* ---- reading messages; the filters parked requests wait on ---- */

/* Channel and thread reads (GET /v1/messages) and the visible stream of one
 * agent (GET /v1/events, /v1/stream). Parameters: ?1 channel, ?2 thread,
 * ?3 since_id, ?4 limit, ?5 agent, ?6 exclude_self. Separate statements
 * per shape keep each on its index. Like every list of messages they
 * select ids only (store_emit_message). */
#define Q_CH " FROM messages WHERE channel=?1 AND to_agent IS NULL AND id>?3" \
    " ORDER BY id LIMIT ?4"
#define Q_TH " FROM messages WHERE thread_id=?2 AND to_agent IS NULL AND id>?3" \
    " ORDER BY id LIMIT ?4"
#define Q_THCH " FROM messages WHERE thread_id=?2 AND channel=?1" \
    " AND to_agent IS NULL AND id>?3 ORDER BY id LIMIT ?4"
/* Tail reads select newest first; hub_emit_page turns them around. */
#define Q_CH_TAIL " FROM messages WHERE channel=?1 AND to_agent IS NULL" \
    " ORDER BY id DESC LIMIT ?4"
#define Q_TH_TAIL " FROM messages WHERE thread_id=?2 AND to_agent IS NULL" \
    " ORDER BY id DESC LIMIT ?4"
#define Q_THCH_TAIL " FROM messages WHERE thread_id=?2 AND channel=?1" \
    " AND to_agent IS NULL ORDER BY id DESC LIMIT ?4"
/* The shapes of GET /v1/messages: [thread?][channel and thread?][tail?];
 * each as ids, and as whole rows for a page from history
 * (hub_wait_query). */
static const char *const q_msgs[2][2][2] = {
    { { "SELECT id" Q_CH, "SELECT id" Q_CH_TAIL }, { NULL, NULL } },
    { { "SELECT id" Q_TH, "SELECT id" Q_TH_TAIL },
      { "SELECT id" Q_THCH, "SELECT id" Q_THCH_TAIL } },
};
static const char *const q_msgs_whole[2][2][2] = {
    { { "SELECT " M_COLS Q_CH, "SELECT " M_COLS Q_CH_TAIL }, { NULL, NULL } },
    { { "SELECT " M_COLS Q_TH, "SELECT " M_COLS Q_TH_TAIL },
      { "SELECT " M_COLS Q_THCH, "SELECT " M_COLS Q_THCH_TAIL } },
};
#define Q_EVENTS "SELECT id FROM messages WHERE id>?3" \
    " AND (to_agent IS NULL OR to_agent=?5)" \
    " AND (?1 IS NULL OR channel=?1) AND (?2 IS NULL OR thread_id=?2)" \
    " AND (?6=0 OR from_agent!=?5)" \
    " AND (?7 IS NULL OR channel IN (SELECT value FROM json_each(?7)))"
static const char q_events[] = Q_EVENTS " ORDER BY id LIMIT ?4";
/* Events read with `surfaced` (PROTOCOL §16.4): less what some path has
 * surfaced to the agent already, one primary-key probe of arc_delivery
 * per row. A separate statement keeps v1 reads as they were. */
static const char q_events_fresh[] = Q_EVENTS " AND NOT EXISTS (SELECT 1"
    " FROM arc_delivery d WHERE d.agent_id=?5 AND d.message_id=messages.id"
    " AND d.via IS NOT NULL) ORDER BY id LIMIT ?4";

/* Does a newly committed message match what w waits for? */
static int hub_wait_match(const Wait *w, const NewMsg *m) {
    /* Events and streams are some agent's view; a channel set is a stream's
     * and replaces the single channel (hub_stream). */
    assert(w->kind == WAIT_MESSAGES ? !w->n_channels : w->agent != NULL);
    assert(!(w->channel && w->n_channels));
    if (m->id <= w->since_id) return 0;
    if (w->channel && strcmp(m->channel, w->channel) != 0) return 0;
    if (w->thread && (!m->thread || strcmp(m->thread, w->thread) != 0)) return 0;
    if (w->kind == WAIT_MESSAGES) return m->to == NULL;
    if (m->to && strcmp(m->to, w->agent) != 0) return 0;
    if (w->exclude_self && strcmp(m->from, w->agent) == 0) return 0;
    if (w->n_channels) {
        for (int i = 0; i < w->n_channels; i++)
            if (strcmp(m->channel, w->channels[i]) == 0) return 1;
        return 0;
    }
    return 1;
}

/* The statement for w's query, bound and ready to step (with tail, for the
 * newest `limit` rows), selecting ids, or with `whole` (messages only) the
 * rows' M_COLS; NULL on error. */
static sqlite3_stmt *hub_wait_stmt_as(Hub *h, const Wait *w, int tail, int whole) {
    const char *sql = w->via ? q_events_fresh : q_events;
    if (w->kind == WAIT_MESSAGES)
        sql = (whole ? q_msgs_whole : q_msgs)[w->thread != NULL]
                                             [w->thread && w->channel][tail != 0];
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) return NULL;
    /* Unused parameter numbers simply fail to bind (SQLITE_RANGE). */
    store_bind_c(st, 1, w->channel);
    store_bind_c(st, 2, w->thread);
    sqlite3_bind_int64(st, 3, w->since_id);
    sqlite3_bind_int(st, 4, w->limit);
    if (w->kind != WAIT_MESSAGES) {
        store_bind_c(st, 5, w->agent);
        sqlite3_bind_int(st, 6, w->exclude_self);
        store_bind_c(st, 7, w->channel_set);
    }
    return st;
}

static sqlite3_stmt *hub_wait_stmt(Hub *h, const Wait *w, int tail) {
    return hub_wait_stmt_as(h, w, tail, 0);
}

/* Run w's query and append the matching rows as a JSON array to b; with
 * tail, the newest `limit` rows; *upto gets the last row's id. Returns the
 * row count, -1 on error.
 * Selecting ids and rendering each from the cache is the cheap way for
 * recent messages; a page from history, though, is all cache misses, and
 * reading those by id one at a time cost twice what reading the rows
 * whole does. So a page of messages whose first one is not cached is read
 * again as whole rows (in the same snapshot when a transaction is open;
 * otherwise a commit in between can only add newer rows, which a
 * read a moment later would have seen too). */
static int hub_wait_query(Hub *h, const Wait *w, int tail, Buf *b, int *more,
                          int64_t *upto) {
    sqlite3_stmt *st = hub_wait_stmt(h, w, tail);
    *upto = 0;
    if (!st) return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) store_cache_sync(&h->store);
    if (rc == SQLITE_ROW && w->kind == WAIT_MESSAGES &&
        !store_cache_get(&h->store, sqlite3_column_int64(st, 0))) {
        sqlite3_reset(st);
        if (!(st = hub_wait_stmt_as(h, w, tail, 1))) return -1;
        rc = sqlite3_step(st);
    }
    return hub_emit_page_from(h, b, st, rc, tail, more, upto);
}

/* Step st (from hub_wait_stmt) to its next message: its JSON into msg
 * (reset first), its id into *id; `first` on the first call. Returns 1,
 * or 0 when there are no more. The loop fills streams with it. */
static int hub_wait_next(Hub *h, sqlite3_stmt *st, int first, Buf *msg,
                         int64_t *id) {
    if (sqlite3_step(st) != SQLITE_ROW) return 0;
    if (first) store_cache_sync(&h->store);
    buf_reset(msg);
    store_emit_message(&h->store, msg, st);
    *id = sqlite3_column_int64(st, 0);
    return 1;
}

/* Answer a read with rows now, or park it when it asked to wait and there
 * is nothing yet (PROTOCOL §8). The Wait moves into r on parking. */
static void hub_answer_or_park(Hub *h, Res *r, Wait *w, int tail, int64_t wait_ms) {
    int more;
    int64_t upto;
    hub_ok(r, 200);
    /* Room for a page of typical messages (~600 bytes each) up front:
     * growing 60 kB by doubling was a twentieth of a history page. */
    buf_reserve(&r->body, (size_t)w->limit * 640);
    int n = hub_wait_query(h, w, tail, &r->body, &more, &upto);
    if (n > 0 && w->via &&   /* in the request's transaction (hub_get_events) */
        hub_dl_mark_range(h, w->agent, w->via, w->since_id, upto, w->channel,
                          w->thread))
        n = -1;
    if (n < 0) {
        hub_db_fail(h, r);
        wait_free(w);
        return;
    }
    if (more) buf_adds(&r->body, ",\"more\":true");
    hub_ok_end(r);
    if (n == 0 && wait_ms > 0) {
        r->park = 1;
        r->wait_ms = wait_ms;
        r->wait = *w;                        /* hand-off: r owns it now */
        memset(w, 0, sizeof *w);
        return;
    }
    wait_free(w);
}

/* GET /v1/messages (PROTOCOL §7.11) */
static void hub_get_messages(Hub *h, Req *q, Res *r) {
    Wait w = { .kind = WAIT_MESSAGES };
    int err = 0;
    int64_t wait_ms;
    w.channel = hub_qdup(q, r, "channel", &err);
    if (!err) w.thread = hub_qdup(q, r, "thread_id", &err);
    if (err) goto fail;
    if (!w.channel && !w.thread) {
        hub_fail(r, 400, "channel or thread_id query parameter is required");
        goto fail;
    }
    if (w.channel && !hub_channel_exists(h, str_c(w.channel))) {
        hub_fail(r, 404, "channel not found");
        goto fail;
    }
    if (hub_since_limit(q, r, &w.since_id, &w.limit) || hub_timeout(q, r, &wait_ms))
        goto fail;
    int tail = hub_qbool(q, "tail") && w.since_id <= 0;
    hub_answer_or_park(h, r, &w, tail, wait_ms);
    return;
fail:
    wait_free(&w);
}

/* GET /v1/events (PROTOCOL §7.12): what one agent can see. */
static void hub_get_events(Hub *h, Req *q, Res *r) {
    Wait w = { .kind = WAIT_EVENTS };
    int err = 0;
    int64_t wait_ms;
    w.agent = hub_qdup(q, r, "agent_id", &err);
    if (!err && !w.agent) {
        hub_fail(r, 400, "agent_id query parameter is required");
        err = 1;
    }
    if (!err) w.channel = hub_qdup(q, r, "channel", &err);
    if (!err) w.thread = hub_qdup(q, r, "thread_id", &err);
    if (err) goto fail;
    if (w.channel && !hub_channel_exists(h, str_c(w.channel))) {
        hub_fail(r, 404, "channel not found");
        goto fail;
    }
    w.exclude_self = hub_qbool(q, "exclude_self");
    if (hub_since_limit(q, r, &w.since_id, &w.limit) || hub_timeout(q, r, &wait_ms))
        goto fail;
    if (!err) w.via = hub_qdup(q, r, "surfaced", &err);   /* PROTOCOL §16.4 */
    if (err) goto fail;
    if (w.via && (!*w.via || strlen(w.via) > ARC_DL_MAX_VIA ||
                  strspn(w.via, "abcdefghijklmnopqrstuvwxyz0123456789_-") !=
                  strlen(w.via))) {
        hub_fail(r, 400, "surfaced must be 1 to %d characters of a-z, 0-9, _ and -",
                 ARC_DL_MAX_VIA);
        goto fail;
    }
    hub_touch(h, q, r, str_c(w.agent));  /* PROTOCOL §9: waiting is presence */
    if (r->status >= 400) goto fail;
    if (w.via && (hub_tx(h, q, r) || hub_dl_sync(h, q, r))) goto fail;
    hub_answer_or_park(h, r, &w, 0, wait_ms);
    return;
fail:
    wait_free(&w);
}

/* GET /v1/inbox/{agent_id}: direct messages only. */
static void hub_get_inbox(Hub *h, Req *q, Res *r) {
    static const char sql[] = "SELECT id FROM messages"
        " WHERE to_agent=?1 AND id>?2 ORDER BY id LIMIT ?3";
    static const char sql_tail[] = "SELECT id FROM messages WHERE to_agent=?1"
        " ORDER BY id DESC LIMIT ?3";   /* hub_emit_page turns it around */
    int64_t since;
    int limit, more;
    if (hub_since_limit(q, r, &since, &limit)) return;
    int tail = hub_qbool(q, "tail") && since <= 0;
    sqlite3_stmt *st = store_stmt(&h->store, tail ? sql_tail : sql);
    if (!st) { hub_db_fail(h, r); return; }
    store_bind(st, 1, buf_str(&q->arg));
    sqlite3_bind_int64(st, 2, since);
    sqlite3_bind_int(st, 3, limit);
    hub_ok(r, 200);
    int n = hub_emit_page(h, &r->body, st, tail, &more);
    if (n < 0) {
        hub_db_fail(h, r);
        return;
    }
    if (more) buf_adds(&r->body, ",\"more\":true");
    hub_ok_end(r);
    /* The inbox is its agent's own view: reading it is reading (§17.2). */
    hub_rc_read(h, q, tail ? RC_READ_INBOX_TAIL : RC_READ_INBOX, buf_str(&q->arg),
                (Str){ NULL, 0 }, since, n);
}

/* GET /v1/stream (PROTOCOL §7.27): validate, then hand the filter to the
 * loop, which writes the head, the backlog and every later match. */
static void hub_stream(Hub *h, Req *q, Res *r) {
    Wait w = { .kind = WAIT_STREAM, .limit = 256 };
    int err = 0;
    w.agent = hub_qdup(q, r, "agent_id", &err);
    if (!err && !w.agent) {
        hub_fail(r, 400, "agent_id query parameter is required");
        err = 1;
    }
    char *chans = err ? NULL : hub_qdup(q, r, "channels", &err);
    if (err) goto fail;
    if (hub_qint(q, r, "since_id", 0, &w.since_id)) goto fail;
    if (w.since_id < 0) {
        hub_fail(r, 400, "since_id must be >= 0");
        goto fail;
    }
    int64_t last;
    if (q->last_event_id.n && parse_int_text(q->last_event_id, &last) == 0 &&
        last > w.since_id)
        w.since_id = last;
    w.exclude_self = hub_qbool(q, "exclude_self");
    hub_touch(h, q, r, str_c(w.agent));  /* PROTOCOL §9: streaming is presence */
    if (r->status >= 400) goto fail;
    int cap = 0;
    for (char *c = chans; c && *c;) {
        char *comma = strchr(c, ',');
        size_t n = comma ? (size_t)(comma - c) : strlen(c);
        Str t = str_trim((Str){ c, n });
        if (t.n) {
            if (w.n_channels == cap)
                w.channels = vec_grow(w.channels, &cap, sizeof *w.channels);
            w.channels[w.n_channels++] = xstrndup(t.p, t.n);
        }
        c = comma ? comma + 1 : c + n;
    }
    if (w.n_channels == 1) {   /* one channel: the indexed filter */
        w.channel = w.channels[0];
        free(w.channels);
        w.channels = NULL;
        w.n_channels = 0;
    } else if (w.n_channels) {
        Buf set = { 0 };
        for (int i = 0; i < w.n_channels; i++) {
            buf_addc(&set, i ? ',' : '[');
            json_cstr(&set, w.channels[i]);
        }
        buf_addc(&set, ']');
        w.channel_set = set.p;   /* hand-off: the Wait owns it */
    }
    free(chans);
    r->status = 200;
    r->stream = 1;
    r->wait = w;
    return;
fail:
    free(chans);
    wait_free(&w);
}

/* ---- claims and locks: TTL leases (PROTOCOL §7.17-§7.24) ---- */

/* Claims and locks are the same lease keyed differently; this table holds
 * what differs, so acquire/refresh/release are written once. */
typedef struct {
    const char *noun;          /* "claim" / "lock", for error messages */
    const char *state_sql;     /* owner, released_at, expires_at by key */
    const char *row_sql;       /* the full row by key */
    const char *extend_sql;    /* ?1 expires_at, ?2 key */
    const char *release_sql;   /* ?1 released_at, ?2 key */
    const char *insert_sql;    /* ?1 key ?2 owner ?3 now ?4 expires ?5 meta
                                  ?6 thread ?7 task (claims only) */
    const char *reown_sql;     /* same parameters, for a dead lease */
    StoreEmit emit;
} LeaseKind;

static const LeaseKind lease_claim = {
    "claim",
    "SELECT owner_agent_id,released_at,expires_at FROM claims WHERE claim_key=?",
    "SELECT " C_COLS " FROM claims WHERE claim_key=?",
    "UPDATE claims SET expires_at=?1 WHERE claim_key=?2",
    "UPDATE claims SET released_at=?1 WHERE claim_key=?2",
    "INSERT INTO claims VALUES(?1,?6,?7,?2,?3,?4,NULL,?5)",
    "UPDATE claims SET thread_id=?6,task_message_id=?7,owner_agent_id=?2,"
    "claimed_at=?3,expires_at=?4,released_at=NULL,metadata_json=?5"
    " WHERE claim_key=?1",
    store_emit_claim,
};

static const LeaseKind lease_lock = {
    "lock",
    "SELECT agent_id,released_at,expires_at FROM locks WHERE file_path=?",
    "SELECT " L_COLS " FROM locks WHERE file_path=?",
    "UPDATE locks SET expires_at=?1 WHERE file_path=?2",
    "UPDATE locks SET released_at=?1 WHERE file_path=?2",
    "INSERT INTO locks VALUES(?1,?2,?3,?4,NULL,?5)",
    "UPDATE locks SET agent_id=?2,locked_at=?3,expires_at=?4,released_at=NULL,"
    "metadata_json=?5 WHERE file_path=?1",
    store_emit_lock,
};

/* Look up a lease: returns 1 (exists; *owned = held by `owner`, *alive =
 * not released and not expired), 0 (no row), -1 (database error). */
static int hub_lease_state(Hub *h, const LeaseKind *lk, Str key, Str owner,
                           int *owned, int *alive) {
    sqlite3_stmt *st = store_stmt(&h->store, lk->state_sql);
    if (!st) return -1;
    store_bind(st, 1, key);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        Str o = store_col(st, 0);
        *owned = o.p && o.n == owner.n && memcmp(o.p, owner.p, o.n) == 0;
        *alive = !store_col(st, 1).p &&
                 hub_ts_at_least(store_col(st, 2), clock_wall_us());
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

/* Emit {"ok":true,"acquired":X,"result":row} (acquired < 0: no flag). */
static void hub_lease_reply(Hub *h, Res *r, const LeaseKind *lk, Str key,
                            int status, int acquired) {
    sqlite3_stmt *st = store_stmt(&h->store, lk->row_sql);
    if (!st) { hub_db_fail(h, r); return; }
    store_bind(st, 1, key);
    r->status = status;
    buf_reset(&r->body);
    buf_adds(&r->body, "{\"ok\":true,");
    if (acquired >= 0)
        buf_adds(&r->body, acquired ? "\"acquired\":true," : "\"acquired\":false,");
    buf_adds(&r->body, "\"result\":");
    if (store_emit_one(&h->store, &r->body, st, lk->emit) < 0) hub_db_fail(h, r);
    else hub_ok_end(r);
}

static int hub_lease_set(Hub *h, const LeaseKind *lk, const char *sql, Str key,
                         const char *when) {
    sqlite3_stmt *st = store_stmt(&h->store, sql ? sql : lk->extend_sql);
    if (!st) return -1;
    store_bind_c(st, 1, when);
    store_bind(st, 2, key);
    return store_done(&h->store, st);
}

/* Acquire (or re-acquire) a lease. thread/task are claims only. */
static void hub_lease_acquire(Hub *h, Req *q, Res *r, const LeaseKind *lk,
                              Str key, Str owner, int64_t ttl, Str meta,
                              Str thread, int64_t task, int has_task) {
    int owned = 0, alive = 0;
    if (hub_tx(h, q, r)) return;
    int ex = hub_lease_state(h, lk, key, owner, &owned, &alive);
    if (ex < 0) { hub_db_fail(h, r); return; }
    char now[ISO_LEN], exp[ISO_LEN];
    int64_t now_us = clock_wall_us();
    iso_format(now_us, now);
    iso_format(now_us + ttl * 1000000, exp);
    if (ex && alive && !owned) {
        hub_lease_reply(h, r, lk, key, 200, 0);
        hub_touch(h, q, r, owner);
        return;
    }
    if (ex && alive) {
        if (hub_lease_set(h, lk, NULL, key, exp)) { hub_db_fail(h, r); return; }
    } else {
        sqlite3_stmt *st = store_stmt(&h->store, ex ? lk->reown_sql : lk->insert_sql);
        if (!st) { hub_db_fail(h, r); return; }
        store_bind(st, 1, key);
        store_bind(st, 2, owner);
        store_bind_c(st, 3, now);
        store_bind_c(st, 4, exp);
        store_bind(st, 5, meta);
        store_bind(st, 6, thread);
        if (has_task) sqlite3_bind_int64(st, 7, task);
        else sqlite3_bind_null(st, 7);
        if (store_done(&h->store, st)) { hub_db_fail(h, r); return; }
    }
    hub_lease_reply(h, r, lk, key, 201, 1);
    hub_touch(h, q, r, owner);
}

/* Refresh (release == 0) or release a live lease held by owner. */
static void hub_lease_update(Hub *h, Req *q, Res *r, const LeaseKind *lk,
                             Str key, Str owner, int64_t ttl, int release,
                             const char *owner_field) {
    int owned = 0, alive = 0;
    if (hub_tx(h, q, r)) return;   /* the write lock first: check, then act */
    int ex = hub_lease_state(h, lk, key, owner, &owned, &alive);
    if (ex < 0) { hub_db_fail(h, r); return; }
    if (!ex || !owned || !alive) {
        hub_fail(r, 404, "%s not found or not owned by %s", lk->noun, owner_field);
        return;
    }
    char when[ISO_LEN];
    int64_t now_us = clock_wall_us();
    iso_format(release ? now_us : now_us + ttl * 1000000, when);
    if (hub_lease_set(h, lk, release ? lk->release_sql : NULL, key, when)) {
        hub_db_fail(h, r);
        return;
    }
    hub_lease_reply(h, r, lk, key, 200, release ? -1 : 1);
    hub_touch(h, q, r, owner);
}

/* POST /v1/claims */
static void hub_claim(Hub *h, Req *q, Res *r) {
    Buf owner = { 0 }, key = { 0 }, thread = { 0 }, meta = { 0 };
    int64_t task = 0, ttl;
    int has_task;
    if (hub_str(q, r, "owner_agent_id", 1, &owner) < 0) goto done;
    if (hub_str(q, r, "claim_key", 0, &key) < 0) goto done;
    if ((has_task = hub_int(q, r, "task_message_id", &task)) < 0) goto done;
    int has_thread = hub_str(q, r, "thread_id", 0, &thread);
    if (has_thread < 0) goto done;
    has_thread = has_thread > 0 && thread.len;
    if (hub_ttl(q, r, &ttl)) goto done;
    if (hub_meta(h, q, r, &meta)) goto done;
    if (!key.len) {
        if (!has_task) {
            hub_fail(r, 400, "claim_key or task_message_id is required");
            goto done;
        }
        buf_addf(&key, "task-%lld", (long long)task);
    }
    if (has_task && hub_deps_refuse(h, q, r, task)) goto done;
    hub_lease_acquire(h, q, r, &lease_claim, buf_str(&key), buf_str(&owner), ttl,
                      buf_str(&meta), has_thread ? buf_str(&thread) : (Str){ NULL, 0 },
                      task, has_task);
done:
    buf_free(&owner), buf_free(&key), buf_free(&thread), buf_free(&meta);
}

/* POST /v1/locks */
static void hub_lock(Hub *h, Req *q, Res *r) {
    Buf agent = { 0 }, path = { 0 }, meta = { 0 };
    int64_t ttl;
    if (hub_str(q, r, "agent_id", 1, &agent) < 0) goto done;
    if (hub_str(q, r, "file_path", 1, &path) < 0) goto done;
    if (hub_ttl(q, r, &ttl)) goto done;
    if (hub_meta(h, q, r, &meta)) goto done;
    hub_lease_acquire(h, q, r, &lease_lock, buf_str(&path), buf_str(&agent), ttl,
                      buf_str(&meta), (Str){ NULL, 0 }, 0, 0);
done:
    buf_free(&agent), buf_free(&path), buf_free(&meta);
}

/* The four refresh/release endpoints differ only in field names. */
static void hub_lease_op(Hub *h, Req *q, Res *r, const LeaseKind *lk,
                         const char *key_f, const char *owner_f, int release) {
    Buf key = { 0 }, owner = { 0 };
    int64_t ttl = 300;
    if (hub_str(q, r, key_f, 1, &key) < 0) goto done;
    if (hub_str(q, r, owner_f, 1, &owner) < 0) goto done;
    if (!release && hub_ttl(q, r, &ttl)) goto done;
    hub_lease_update(h, q, r, lk, buf_str(&key), buf_str(&owner), ttl, release,
                     owner_f);
done:
    buf_free(&key), buf_free(&owner);
}

static void hub_claim_refresh(Hub *h, Req *q, Res *r) {
    hub_lease_op(h, q, r, &lease_claim, "claim_key", "owner_agent_id", 0);
}
static void hub_claim_release(Hub *h, Req *q, Res *r) {
    hub_lease_op(h, q, r, &lease_claim, "claim_key", "agent_id", 1);
}
static void hub_lock_refresh(Hub *h, Req *q, Res *r) {
    hub_lease_op(h, q, r, &lease_lock, "file_path", "agent_id", 0);
}
static void hub_lock_release(Hub *h, Req *q, Res *r) {
    hub_lease_op(h, q, r, &lease_lock, "file_path", "agent_id", 1);
}

/* GET /v1/claims and GET /v1/locks: one optional filter plus active_only. */
static void hub_lease_list(Hub *h, Req *q, Res *r, const char *param,
                           const char *sql, const char *sql_active, StoreEmit emit) {
    int err = 0;
    char *filter = hub_qdup(q, r, param, &err);
    if (err) return;
    int active = hub_qbool(q, "active_only");
    char now[ISO_LEN];
    hub_now(now);
    sqlite3_stmt *st = store_stmt(&h->store, active ? sql_active : sql);
    if (!st) { free(filter); hub_db_fail(h, r); return; }
    store_bind_c(st, 1, filter);
    if (active) store_bind_c(st, 2, now);
    hub_ok(r, 200);
    if (store_emit_rows(&h->store, &r->body, st, emit) < 0) hub_db_fail(h, r);
    else hub_ok_end(r);
    free(filter);
}

static void hub_list_claims(Hub *h, Req *q, Res *r) {
    hub_lease_list(h, q, r, "thread_id",
        "SELECT " C_COLS " FROM claims WHERE (?1 IS NULL OR thread_id=?1)"
        " ORDER BY claimed_at",
        "SELECT " C_COLS " FROM claims WHERE (?1 IS NULL OR thread_id=?1) AND "
        ACTIVE_AT_2 " ORDER BY claimed_at",
        store_emit_claim);
}

static void hub_list_locks(Hub *h, Req *q, Res *r) {
    hub_lease_list(h, q, r, "agent_id",
        "SELECT " L_COLS " FROM locks WHERE (?1 IS NULL OR agent_id=?1)"
        " ORDER BY locked_at",
        "SELECT " L_COLS " FROM locks WHERE (?1 IS NULL OR agent_id=?1) AND "
        ACTIVE_AT_2 " ORDER BY locked_at",
        store_emit_lock);
}

/* ---- tasks ---- */

/* GET /v1/tasks, each task with its blocked_by and claimable (§14). */
static void hub_list_tasks(Hub *h, Req *q, Res *r) {
#define Q_TASKS "SELECT " T_COLS ",(SELECT json_group_array(" \
        "blocker_id) FROM (SELECT blocker_id FROM arc_task_deps" \
        " WHERE task_id=tasks.task_id ORDER BY blocker_id))," \
        " status='open' AND NOT EXISTS(SELECT 1 FROM arc_task_deps d" \
        " WHERE d.task_id=tasks.task_id AND NOT EXISTS(SELECT 1 FROM tasks b" \
        " WHERE b.task_id=d.blocker_id AND b.status='done'))" \
        " FROM tasks WHERE"
#define Q_TASKS_WHERE \
        " (?1 IS NULL OR parent_task_id=?1) AND (?2 IS NULL OR status=?2) AND" \
        " (?3 IS NULL OR channel=?3) AND (?4 IS NULL OR thread_id=?4)" \
        " ORDER BY task_id"
    /* The filters as `?N IS NULL OR ...` alone would scan every task (plans
     * are fixed at prepare time, QPSG): the most selective filter given
     * also appears as a plain equality, which puts the query on its index
     * (ix_arc_t_th, ix_t_par, ix_t_st). */
    static const char q_all[] = Q_TASKS Q_TASKS_WHERE;
    static const char q_thread[] = Q_TASKS " thread_id=?4 AND" Q_TASKS_WHERE;
    static const char q_parent[] = Q_TASKS " parent_task_id=?1 AND" Q_TASKS_WHERE;
    static const char q_status[] = Q_TASKS " status=?2 AND" Q_TASKS_WHERE;
    int err = 0;
    int64_t parent;
    int has_parent = hub_qp(q, r, "parent_id");
    if (has_parent < 0) return;
    if (has_parent && parse_int_text(buf_str(&q->tmp), &parent)) {
        hub_fail(r, 400, "parent_id must be an integer");
        return;
    }
    char *status = hub_qdup(q, r, "status", &err);
    char *chan = err ? NULL : hub_qdup(q, r, "channel", &err);
    char *thread = err ? NULL : hub_qdup(q, r, "thread_id", &err);
    if (err) goto done;
    if (status && strcmp(status, "open") && strcmp(status, "done")) {
        hub_fail(r, 400, "status must be 'open' or 'done'");
        goto done;
    }
    if (hub_deps_sync(h, q, r)) goto done;
    const char *sql = thread ? q_thread : has_parent ? q_parent : status ? q_status : q_all;
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) { hub_db_fail(h, r); goto done; }
    if (has_parent) sqlite3_bind_int64(st, 1, parent);
    store_bind_c(st, 2, status);
    store_bind_c(st, 3, chan);
    store_bind_c(st, 4, thread);
    hub_ok(r, 200);
    if (store_emit_rows(&h->store, &r->body, st, store_emit_task_deps) < 0)
        hub_db_fail(h, r);
    else
        hub_ok_end(r);
done:
    free(status), free(chan), free(thread);
}

/* POST /v1/tasks/{id}/complete (PROTOCOL §7.26, §14): completing the last
 * open child completes its parent with a notice, and so on up the tree
 * (at most ARC_MAX_TASK_DEPTH ancestors); every task this completes posts
 * the unblock notices of the tasks that waited for it. */
static void hub_complete_task(Hub *h, Req *q, Res *r) {
    static const char get[] = "SELECT " T_COLS " FROM tasks WHERE task_id=?";
    static const char siblings[] =
        "SELECT count(*),sum(status='done') FROM tasks WHERE parent_task_id=?";
    int64_t id, parent = ARC_NO_ID;
    Buf task = { 0 }, chan = { 0 }, thread = { 0 };
    HubIds rolled = { 0 };
    if (parse_int_text(buf_str(&q->arg), &id) || !hub_task_exists(h, id)) {
        hub_fail(r, 404, "task not found");
        return;
    }
    if (hub_tx(h, q, r) || hub_deps_sync(h, q, r)) return;
    if (hub_task_done(h, q, r, id) < 0) return;
    sqlite3_stmt *st = store_stmt(&h->store, get);
    if (!st) goto db;
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) == SQLITE_ROW) {
        store_emit_task(&h->store, &task, st);
        if (sqlite3_column_type(st, 1) != SQLITE_NULL)
            parent = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    /* Up the tree: a parent already done is passed through, so repeating
     * the call on a child also completes ancestors left open. */
    for (int depth = 0; parent != ARC_NO_ID && depth < ARC_MAX_TASK_DEPTH;
         depth++) {
        int64_t n = 0, done = 0, up = ARC_NO_ID;
        int open = 0, has_thread = 0;
        if (!(st = store_stmt(&h->store, siblings))) goto db;
        sqlite3_bind_int64(st, 1, parent);
        if (sqlite3_step(st) == SQLITE_ROW)
            n = sqlite3_column_int64(st, 0), done = sqlite3_column_int64(st, 1);
        sqlite3_reset(st);
        if (n == 0 || n != done) break;
        if (!(st = store_stmt(&h->store, get))) goto db;
        sqlite3_bind_int64(st, 1, parent);
        buf_reset(&chan), buf_reset(&thread);
        if (sqlite3_step(st) == SQLITE_ROW) {
            open = str_eq(store_col(st, 4), "open");
            buf_addstr(&chan, store_col(st, 2));
            has_thread = store_col(st, 3).p != NULL;
            buf_addstr(&thread, store_col(st, 3));
            if (sqlite3_column_type(st, 1) != SQLITE_NULL)
                up = sqlite3_column_int64(st, 1);
        }
        sqlite3_reset(st);
        if (open) {
            char body[128], meta[128];
            snprintf(body, sizeof body,
                     "All %lld subtasks of task %lld are complete.",
                     (long long)n, (long long)parent);
            snprintf(meta, sizeof meta,
                     "{\"auto_rollup\":true,\"parent_task_id\":%lld}",
                     (long long)parent);
            int ch = hub_complete_task_row(h, parent);
            if (ch < 0 ||
                hub_post_system(h, q, r, buf_str(&chan), str_c(body), parent,
                                has_thread ? buf_str(&thread) : (Str){ NULL, 0 },
                                meta))
                goto db;
            hub_ids_push(&rolled, parent);
            if (ch > 0 && hub_deps_unblock(h, q, r, parent)) goto done;
        }
        parent = up;
    }
    hub_ok(r, 200);
    buf_addstr(&r->body, buf_str(&task));
    if (rolled.n && rolled.v[0] == hub_task_parent(h, id))
        buf_adds(&r->body, ",\"parent_completed\":true");
    if (rolled.n) {
        buf_adds(&r->body, ",\"rolled_up\":[");
        hub_ids_text(&r->body, &rolled, ",");
        buf_addc(&r->body, ']');
    }
    hub_ok_end(r);
    goto done;
db:
    hub_db_fail(h, r);
done:
    buf_free(&task), buf_free(&chan), buf_free(&thread);
    hub_ids_free(&rolled);
}

/* ---- admin surface and hub info ---- */

static void hub_emit_shutdown(Hub *h, Buf *b) {
    int64_t left = (h->shutdown_at_ms - clock_ms()) / 1000;
    buf_addf(b, "{\"remaining_sec\":%lld,\"delay_sec\":%lld}",
             (long long)(left < 0 ? 0 : left), (long long)h->shutdown_delay_s);
}

static void hub_shutdown_status(Hub *h, Req *q, Res *r) {
    (void)q;
    hub_ok(r, 200);
    if (h->shutdown_at_ms) hub_emit_shutdown(h, &r->body);
    else buf_adds(&r->body, "null");
    hub_ok_end(r);
}

static void hub_notice_general(Hub *h, Req *q, Res *r, const char *body,
                               const char *meta) {
    hub_post_system(h, q, r, STR_LIT("general"), str_c(body), ARC_NO_ID,
                    (Str){ NULL, 0 }, meta);
}

/* POST /v1/shutdown: arm the timer (delay 0 = at the end of this turn). */
static void hub_shutdown(Hub *h, Req *q, Res *r) {
    int64_t delay = 60;
    int rc = hub_int(q, r, "delay_sec", &delay);
    if (rc < 0) return;
    if (rc && delay < 0) { hub_fail(r, 400, "delay_sec must be >= 0"); return; }
    if (rc && delay > 3600) { hub_fail(r, 400, "delay_sec must be <= 3600"); return; }
    if (h->shutdown_at_ms || h->shutdown_now) {
        hub_fail(r, 400, "shutdown already pending");
        return;
    }
    char body[128], meta[96];
    if (delay == 0) {
        hub_notice_general(h, q, r, "Hub is shutting down now.",
                           "{\"shutdown\":true,\"delay_sec\":0}");
        h->shutdown_now = 1;
        log_info("shutdown initiated (immediate)");
        hub_ok(r, 200);
        buf_adds(&r->body, "{\"status\":\"shutdown_initiated\"}");
        hub_ok_end(r);
        return;
    }
    snprintf(body, sizeof body,
             "Hub shutdown initiated. Shutting down in %lld seconds.",
             (long long)delay);
    snprintf(meta, sizeof meta, "{\"shutdown\":true,\"delay_sec\":%lld}",
             (long long)delay);
    hub_notice_general(h, q, r, body, meta);
    h->shutdown_at_ms = clock_ms() + delay * 1000;
    h->shutdown_delay_s = delay;
    log_info("shutdown initiated (delay=%llds)", (long long)delay);
    hub_ok(r, 200);
    buf_adds(&r->body, "{\"status\":\"shutdown_initiated\",");
    Buf s = { 0 };
    hub_emit_shutdown(h, &s);
    buf_add(&r->body, s.p + 1, s.len - 1);   /* merge the two objects */
    buf_free(&s);
    hub_ok_end(r);
}

static void hub_shutdown_cancel(Hub *h, Req *q, Res *r) {
    if (!h->shutdown_at_ms) { hub_fail(r, 400, "no shutdown pending"); return; }
    h->shutdown_at_ms = 0;
    h->shutdown_delay_s = 0;
    hub_notice_general(h, q, r, "Hub shutdown cancelled.",
                       "{\"shutdown_cancelled\":true}");
    log_info("shutdown cancelled");
    hub_ok(r, 200);
    buf_adds(&r->body, "{\"status\":\"shutdown_cancelled\"}");
    hub_ok_end(r);
}

/* The loop asks about a shutdown request through these two, each turn: the
 * schedule is model state (GET /v1/shutdown reports it), so the handlers
 * above only record it and never reach into the loop. */
static int64_t hub_shutdown_at(const Hub *h) { return h->shutdown_at_ms; }
static int hub_shutdown_now(const Hub *h) { return h->shutdown_now; }

/* The shutdown timer fired (timer_shutdown): tell everyone, then ask the
 * loop to stop at the end of this turn. */
static void hub_shutdown_fire(Hub *h, Req *q, Res *r) {
    hub_notice_general(h, q, r, "Hub is shutting down now.",
                       "{\"shutdown\":true,\"final\":true}");
    log_info("executing shutdown");
    h->shutdown_at_ms = 0;
    h->shutdown_now = 1;
}

static int hub_is_loopback(const char *host) {
    return !strcmp(host, "127.0.0.1") || !strcmp(host, "localhost") ||
           !strcmp(host, "::1");
}

/* POST /v1/network: the socket is bound once, so turning remote access on
 * for a loopback-bound hub would be a lie; refuse it (PROTOCOL §7.31). */
static void hub_network(Hub *h, Req *q, Res *r) {
    uint32_t v = q->has_body ? json_get(&q->body, 0, "allow_remote") : 0;
    if (v) {
        int want = json_truthy(&q->body, v);
        if (want && hub_is_loopback(h->cfg.host)) {
            hub_fail(r, 400, "cannot enable remote access at runtime: hub is "
                     "bound to %s and the listening socket cannot be rebound. "
                     "Restart the hub with `--host 0.0.0.0 --allow-remote` to "
                     "expose it on the LAN.", h->cfg.host);
            return;
        }
        h->cfg.allow_remote = want;
    }
    hub_ok(r, 200);
    buf_addf(&r->body, "{\"allow_remote\":%s,\"listen_host\":",
             h->cfg.allow_remote ? "true" : "false");
    json_cstr(&r->body, h->cfg.host);
    buf_addc(&r->body, '}');
    hub_ok_end(r);
}

/* The feature tokens arc implements (PROTOCOL §7.9): the v1 ones, then
 * arc's vendor tokens; arc:auth only while a token is required. */
static const char hub_features[] =
    "[\"sse\",\"relay\",\"long_poll_keepalive\",\"subtask_rollup\",\"rpc_kinds\","
    "\"capability_filter\",\"shutdown_control\",\"session_rename\","
    "\"arc:origin_check\""
    ",\"arc:kv\",\"arc:task_deps\",\"arc:deep_rollup\",\"arc:search\""
    ",\"arc:delivery\""
    ",\"arc:receipts\",\"arc:presence\""
    ",\"arc:mcp\"";

/* GET /v1/hub-info (PROTOCOL §7.9): limits, features, storage. */
static void hub_info(Hub *h, Req *q, Res *r) {
    (void)q;
    Store *s = &h->store;
    hub_ok(r, 200);
    Buf *b = &r->body;
    buf_adds(b, "{\"instance_id\":");
    json_cstr(b, s->instance_id);
    buf_adds(b, ",\"protocol_version\":\"1\",\"implementation\":\"arc\","
                "\"implementation_version\":\"" ARC_VERSION "\","
                "\"default_channel\":\"general\",");
    buf_addf(b, "\"max_body_chars\":%lld,\"max_attachment_chars\":%lld,"
             "\"max_attachments\":%lld,\"max_metadata_chars\":%lld,"
             "\"features\":%s%s],\"message_kinds\":[",
             (long long)h->cfg.max_body_chars,
             (long long)h->cfg.max_attachment_chars,
             (long long)h->cfg.max_attachments,
             (long long)h->cfg.max_metadata_chars, hub_features,
             h->cfg.token[0] ? ",\"arc:auth\"" : "");
    for (size_t i = 0; i < sizeof hub_kinds / sizeof *hub_kinds; i++)
        buf_addf(b, "%s\"%s\"", i ? "," : "", hub_kinds[i]);
    buf_adds(b, "],\"storage_path\":");
    json_cstr(b, s->path);
    buf_adds(b, ",\"journal_mode\":");
    json_cstr(b, s->journal_mode);
    buf_addf(b, ",\"wal_mode\":%s,\"allow_remote\":%s,\"started_at\":\"%s\"",
             strcmp(s->journal_mode, "wal") ? "false" : "true",
             h->cfg.allow_remote ? "true" : "false", h->started_at);
    buf_addf(b, ",\"presence_ttl_sec\":%lld,\"pid\":%d",
             (long long)h->cfg.presence_ttl_s, (int)getpid());
    buf_addf(b, ",\"max_kv_value_chars\":%lld,\"max_kv_key_bytes\":%d",
             (long long)h->cfg.max_kv_value_chars, ARC_MAX_KV_KEY);
    buf_adds(b, ",\"mcp_path\":\"/mcp\"");   /* arc:mcp, docs/MCP.md */
    if (h->spool_path[0]) {   /* `arc smoke` finds the spool it serves here */
        buf_adds(b, ",\"spool_path\":");
        json_cstr(b, h->spool_path);
    }
    sqlite3_stmt *st = store_stmt(s, "SELECT coalesce(max(id),0) FROM messages");
    if (st && sqlite3_step(st) == SQLITE_ROW)
        buf_addf(b, ",\"latest_message_id\":%lld",
                 (long long)sqlite3_column_int64(st, 0));
    if (st) sqlite3_reset(st);
    buf_addc(b, '}');
    hub_ok_end(r);
}

/* ---- full-text search (PROTOCOL §15) ---- */

/* Turn the user's text into an FTS5 query that cannot be malformed: each
 * whitespace-separated word becomes a quoted string ("" for a quote in
 * it), so FTS5's operators (AND, OR, NOT, NEAR), parentheses, column
 * filters and carets are plain text to it; a word ending in '*' after at
 * least one other character is a prefix search. All words must match.
 * Returns the number of words. */
static int hub_search_expr(Str text, Buf *out) {
    int n = 0;
    for (size_t i = 0; i < text.n;) {
        while (i < text.n && isspace((unsigned char)text.p[i])) i++;
        size_t start = i;
        while (i < text.n && !isspace((unsigned char)text.p[i])) i++;
        if (i == start) break;
        Str w = { text.p + start, i - start };
        int prefix = w.n > 1 && w.p[w.n - 1] == '*';
        if (prefix) w.n--;
        buf_adds(out, n++ ? " \"" : "\"");
        for (size_t k = 0; k < w.n; k++) {
            if (w.p[k] == '"') buf_addc(out, '"');
            buf_addc(out, w.p[k]);
        }
        buf_adds(out, prefix ? "\"*" : "\"");
    }
    return n;
}

/* Index up to ARC_SEARCH_CHUNK messages above the watermark in q's
 * savepoint, and note whether a backlog is left for the loop
 * (hub_search_tick). Returns the backlog (with `count`, how many messages;
 * else 1), 0 when none is left, or -1 with r failed. Counting scans the
 * backlog, so the loop's chunks do not: at 1M messages that made the
 * build quadratic. */
static int64_t hub_search_catch_up(Hub *h, Req *q, Res *r, int count) {
    int64_t indexed, latest;
    if (store_search_state(&h->store, &indexed, &latest)) {
        hub_db_fail(h, r);
        return -1;
    }
    h->search_behind = 0;
    if (indexed >= latest) return 0;
    if (hub_tx(h, q, r)) return -1;
    if (store_search_catch_up(&h->store, ARC_SEARCH_CHUNK) < 0) {
        hub_fail(r, 503, "storage error: %s", h->store.err);
        return -1;
    }
    if (store_search_state(&h->store, &indexed, &latest)) {
        hub_db_fail(h, r);
        return -1;
    }
    h->search_behind = indexed < latest;
    if (!h->search_behind) return 0;
    return count ? store_search_backlog(&h->store) : 1;
}

/* Is part of the search index still to build (a search found more than
 * one chunk to index)? The loop then indexes a chunk every turn. */
static int hub_search_behind(const Hub *h) { return h->search_behind; }

/* A timer action: index the next chunk of the backlog. */
static void hub_search_tick(Hub *h, Req *q, Res *r) { hub_search_catch_up(h, q, r, 0); }

/* The ranked query, over a window: the newest ?9 matches below id ?8
 * (FTS5 walks the doclist newest first and stops there, so bm25 runs ?9
 * times at most, whatever the store's size). The first row sums the
 * window up: how many matches it held and the oldest id in it. Then the
 * hits (h): the window's rows that pass ?2 channel, ?3 from_agent, ?4 kind
 * (NULL: any) and privacy for the reader ?5, best first, at most ?6. A
 * direct message is seen by its two parties only; without a reader, by
 * no one (PROTOCOL §15.3). Snippets (s) come from one more pass over the
 * hits' id range, where CASE calls snippet() for the hits alone: a query
 * per hit would set the expression up again each time (a prefix's merged
 * doclist, ~4 ms at 100k). ?7 is the snippet's length in tokens; hits are
 * marked with « » and cuts with an ellipsis. */
static const char hub_search_sql[] =
    "WITH w AS MATERIALIZED (SELECT rowid AS id, arc_rank(arc_search) AS score"
    " FROM arc_search WHERE arc_search MATCH ?1 AND rowid<?8"
    " ORDER BY rowid DESC LIMIT ?9),"
    " h AS MATERIALIZED (SELECT m.id, w.score FROM w JOIN messages m"
    " ON m.id=w.id WHERE (?2 IS NULL OR m.channel=?2)"
    " AND (?3 IS NULL OR m.from_agent=?3) AND (?4 IS NULL OR m.kind=?4)"
    " AND (m.to_agent IS NULL OR m.to_agent=?5 OR m.from_agent=?5)"
    " ORDER BY w.score DESC, m.id DESC LIMIT ?6),"
    " s AS MATERIALIZED (SELECT rowid AS id, CASE WHEN rowid IN (SELECT id"
    " FROM h) THEN snippet(arc_search,-1,'\xc2\xab','\xc2\xbb',"
    "'\xe2\x80\xa6',?7) END AS snip FROM arc_search WHERE arc_search"
    " MATCH ?1 AND rowid>=(SELECT min(id) FROM h)"
    " AND rowid<=(SELECT max(id) FROM h))"
    " SELECT count(*), coalesce(min(id),0), 0, NULL FROM w"
    " UNION ALL SELECT * FROM (SELECT h.id, 0, h.score, s.snip FROM h"
    " JOIN s ON s.id=h.id ORDER BY h.score DESC, h.id DESC)";

/* GET /v1/search (PROTOCOL §15) */
static void hub_search(Hub *h, Req *q, Res *r) {
    Buf expr = { 0 };
    char *agent = NULL, *channel = NULL, *from = NULL, *kind = NULL;
    int err = 0, rc = hub_qp(q, r, "q");
    if (rc < 0) goto done;
    if (rc && memchr(q->tmp.p, 0, q->tmp.len)) {
        hub_fail(r, 400, "query parameter q must not contain a NUL character");
        goto done;
    }
    if (rc && q->tmp.len > ARC_SEARCH_MAX_QUERY) {
        hub_fail(r, 400, "q is longer than %d bytes", ARC_SEARCH_MAX_QUERY);
        goto done;
    }
    if (!rc || !hub_search_expr(buf_str(&q->tmp), &expr)) {
        hub_fail(r, 400, "q query parameter is required");
        goto done;
    }
    agent = hub_qdup(q, r, "agent_id", &err);
    if (!err) channel = hub_qdup(q, r, "channel", &err);
    if (!err) from = hub_qdup(q, r, "from", &err);
    if (!err) kind = hub_qdup(q, r, "kind", &err);
    if (err) goto done;
    if (channel && !hub_channel_exists(h, str_c(channel))) {
        hub_fail(r, 404, "channel not found");
        goto done;
    }
    int known = !kind;
    for (size_t i = 0; kind && i < sizeof hub_kinds / sizeof *hub_kinds; i++)
        known |= !strcmp(kind, hub_kinds[i]);
    if (!known) {
        hub_fail(r, 400, "unsupported kind: %s", kind);
        goto done;
    }
    int64_t limit;
    if (hub_qint(q, r, "limit", ARC_SEARCH_LIMIT, &limit)) goto done;
    if (limit < 1) {
        hub_fail(r, 400, "limit must be at least 1");
        goto done;
    }
    if (limit > ARC_SEARCH_MAX_LIMIT) limit = ARC_SEARCH_MAX_LIMIT;
    int64_t before;
    if (hub_qint(q, r, "before", INT64_MAX, &before)) goto done;
    if (before < 1) {
        hub_fail(r, 400, "before must be at least 1");
        goto done;
    }
    int64_t pending = hub_search_catch_up(h, q, r, 1);
    if (pending < 0) goto done;
    sqlite3_stmt *st = store_stmt(&h->store, hub_search_sql);
    if (!st) {
        hub_db_fail(h, r);
        goto done;
    }
    store_bind(st, 1, buf_str(&expr));
    store_bind_c(st, 2, channel);
    store_bind_c(st, 3, from);
    store_bind_c(st, 4, kind);
    store_bind_c(st, 5, agent);
    sqlite3_bind_int64(st, 6, limit);
    sqlite3_bind_int(st, 7, ARC_SEARCH_SNIPPET_TOKENS);
    sqlite3_bind_int64(st, 8, before);
    sqlite3_bind_int(st, 9, ARC_SEARCH_MAX_CANDIDATES);
    hub_ok(r, 200);
    Buf *b = &r->body;
    size_t start = b->len;
    int n = 0, more = 0;
    int64_t n_window = 0, oldest = 0;
    buf_addc(b, '[');
    if ((rc = sqlite3_step(st)) == SQLITE_ROW) {   /* the window's sum */
        n_window = sqlite3_column_int64(st, 0);
        oldest = sqlite3_column_int64(st, 1);
    }
    while (rc == SQLITE_ROW && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!n) store_cache_sync(&h->store);
        size_t mark = b->len;
        int64_t id = sqlite3_column_int64(st, 0);
        buf_adds(b, n ? ",{\"message\":" : "{\"message\":");
        store_emit_message_id(&h->store, b, id);
        buf_adds(b, ",\"snippet\":");
        store_emit_text(b, store_col(st, 3));
        buf_addf(b, ",\"score\":%.6g}", sqlite3_column_double(st, 2));
        if (n && b->len - start > ARC_MAX_PAGE_BYTES) {
            b->len = mark;   /* the hit does not fit: leave it out */
            b->p[mark] = 0;
            more = 1;
            break;
        }
        n++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        /* Quoting leaves FTS5 little to refuse, but what it does refuse
         * is the query's fault, not the storage's. */
        const char *msg = sqlite3_errmsg(h->store.db);
        if (!strncmp(msg, "fts5:", 5)) hub_fail(r, 400, "invalid search query: %s", msg);
        else hub_db_fail(h, r);
        goto done;
    }
    buf_addc(b, ']');
    if (more) buf_adds(b, ",\"more\":true");
    /* A full window: older matches may exist (PROTOCOL §15.1). */
    if (n_window >= ARC_SEARCH_MAX_CANDIDATES)
        buf_addf(b, ",\"truncated\":true,\"oldest_id\":%lld", (long long)oldest);
    if (pending) buf_addf(b, ",\"pending\":%lld", (long long)pending);
    hub_ok_end(r);
done:
    buf_free(&expr);
    free(agent), free(channel), free(from), free(kind);
}

/* ---- the dashboard (PROTOCOL §7.32): GET / ---- */

/* The page (some 1,250 lines of data) lives in the dash section, just before
 * main; it is declared here, ahead of its definition, so that the hub's code
 * reads on without it. */
static Str dash_page(void);

static void hub_root(Hub *h, Req *q, Res *r) {
    (void)h, (void)q;
    r->status = 200;
    r->ctype = "text/html; charset=utf-8";
    /* No other page may frame it (clickjacking): frame-ancestors for
     * current browsers, X-Frame-Options for older ones (PROTOCOL §2.3). */
    r->extra = "Content-Security-Policy: default-src 'self'; "
               "style-src 'self' 'unsafe-inline'; script-src 'self' "
               "'unsafe-inline'; frame-ancestors 'none'\r\n"
               "X-Frame-Options: DENY\r\nX-Content-Type-Options: nosniff\r\n";
    buf_reset(&r->body);
    buf_addstr(&r->body, dash_page());
}

/* ---- shared memory: /v1/kv (arc extension, PROTOCOL §13) ---- */

/* A key/value memory every agent sees: decisions, facts, constraints. Each
 * key has a version that counts its writes (a delete is a write, and the
 * tombstone keeps the count, so a compare-and-set made before a delete and
 * recreate still fails); every write is kept in arc_kv_history with who
 * and when. Writes run under the request's savepoint after BEGIN
 * IMMEDIATE, so the version check and the write are one step even against
 * another hub on the file. Each write also posts a notice (kind notice,
 * from the writer, in channel ARC_KV_CHANNEL), which wakes long-polls and
 * streams the way any message does. */

#define ARC_KV_CHANNEL "memory"   /* where change notices are posted */

static const char *const hub_kv_types[] = {
    "decision", "fact", "constraint", "artifact", "note",
};

/* Is q->arg (the {key} path segment, decoded) a valid key? 1 to
 * ARC_MAX_KV_KEY bytes and no control characters (the NUL is refused
 * earlier, by hub_handle). Returns 0, or -1 with r failed. */
static int hub_kv_key(Req *q, Res *r) {
    int ok = q->arg.len >= 1 && q->arg.len <= ARC_MAX_KV_KEY;
    for (size_t i = 0; ok && i < q->arg.len; i++)
        if ((unsigned char)q->arg.p[i] < 0x20 || q->arg.p[i] == 0x7f) ok = 0;
    if (ok) return 0;
    hub_fail(r, 400, "key must be 1 to %d bytes without control characters "
             "(ARC_MAX_KV_KEY)", ARC_MAX_KV_KEY);
    return -1;
}

/* Is t one of hub_kv_types? Returns 0, or -1 with r failed. */
static int hub_kv_type_ok(Res *r, Str t) {
    for (size_t i = 0; i < sizeof hub_kv_types / sizeof *hub_kv_types; i++)
        if (str_eq(t, hub_kv_types[i])) return 0;
    hub_fail(r, 400, "type must be decision, fact, constraint, artifact or note");
    return -1;
}

/* The state of `key`: returns 1 with its version, whether it is live (not
 * a tombstone) and its type in *type; 0 when it was never written (version
 * 0); -1 on a database error. */
static int hub_kv_state(Hub *h, Str key, int64_t *version, int *live, Buf *type) {
    sqlite3_stmt *st = store_stmt(&h->store,
        "SELECT version,deleted,type FROM arc_kv WHERE key=?");
    if (!st) return -1;
    store_bind(st, 1, key);
    *version = 0;
    *live = 0;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *version = sqlite3_column_int64(st, 0);
        *live = sqlite3_column_int(st, 1) == 0;
        buf_reset(type);
        buf_addstr(type, store_col(st, 2));
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

/* Append the live row of `key` to b, or null. Returns 1, 0 or -1. */
static int hub_kv_emit(Hub *h, Buf *b, Str key) {
    sqlite3_stmt *st = store_stmt(&h->store,
        "SELECT " KV_COLS " FROM arc_kv WHERE key=? AND deleted=0");
    if (!st) return -1;
    store_bind(st, 1, key);
    return store_emit_one(&h->store, b, st, store_emit_kv);
}

/* A failed compare-and-set: 409 whose envelope carries the key's live row
 * (or null) as "current", so the writer can merge and retry. */
static void hub_kv_conflict(Hub *h, Res *r, Str key, int64_t want, int64_t have) {
    hub_fail(r, 409, "version mismatch: expected %lld, the key is at %lld",
             (long long)want, (long long)have);
    r->body.len--;                           /* reopen the envelope */
    buf_adds(&r->body, ",\"current\":");
    if (hub_kv_emit(h, &r->body, key) < 0) { hub_db_fail(h, r); return; }
    buf_addc(&r->body, '}');
}

/* Record a write: its history row and the notice that tells waiters. */
static int hub_kv_record(Hub *h, Req *q, Res *r, Str key, int64_t version,
                         const char *op, Str type, Str value, Str agent,
                         const char *now) {
    sqlite3_stmt *st = store_stmt(&h->store,
        "INSERT INTO arc_kv_history VALUES(?,?,?,?,?,?,?)");
    if (!st) return -1;
    store_bind(st, 1, key);
    sqlite3_bind_int64(st, 2, version);
    store_bind_c(st, 3, op);
    store_bind(st, 4, type);
    store_bind(st, 5, value);
    store_bind(st, 6, agent);
    store_bind_c(st, 7, now);
    if (store_done(&h->store, st)) return -1;
    st = store_stmt(&h->store, "INSERT OR IGNORE INTO channels"
                               " VALUES('" ARC_KV_CHANNEL "',?,'system','{}')");
    if (!st) return -1;
    store_bind_c(st, 1, now);
    if (store_done(&h->store, st)) return -1;
    Buf body = { 0 }, meta = { 0 };
    buf_addf(&body, "%s memory key ", str_eq(str_c(op), "put") ? "set" : "deleted");
    json_strs(&body, key);
    buf_addf(&body, " (%.*s, version %lld)", (int)type.n, type.p, (long long)version);
    buf_addf(&meta, "{\"kv\":{\"op\":\"%s\",\"key\":", op);
    json_strs(&meta, key);
    buf_addf(&meta, ",\"version\":%lld,\"type\":", (long long)version);
    json_strs(&meta, type);
    buf_adds(&meta, "}}");
    StoreMsg m = { .from = agent, .channel = STR_LIT(ARC_KV_CHANNEL),
                   .kind = STR_LIT("notice"), .body = buf_str(&body),
                   .attachments = STR_LIT("[]"), .metadata = buf_str(&meta),
                   .reply_to = ARC_NO_ID };
    int64_t id;
    int rc = hub_insert_message(h, q, r, &m, NULL, &id);
    buf_free(&body), buf_free(&meta);
    return rc;
}

/* PUT /v1/kv/{key} (PROTOCOL §13.3) */
static void hub_kv_put(Hub *h, Req *q, Res *r) {
    static const char upsert[] =
        "INSERT INTO arc_kv VALUES(?1,?2,?3,?4,0,?5,?6,?5,?6)"
        " ON CONFLICT(key) DO UPDATE SET version=excluded.version,"
        " type=excluded.type, value_json=excluded.value_json,"
        " created_by=CASE WHEN deleted THEN excluded.created_by"
        " ELSE created_by END,"
        " created_at=CASE WHEN deleted THEN excluded.created_at"
        " ELSE created_at END,"
        " deleted=0, updated_by=excluded.updated_by,"
        " updated_at=excluded.updated_at";
    Buf agent = { 0 }, type = { 0 }, cur_type = { 0 }, value = { 0 };
    Json *j = &q->body;
    int64_t want = 0, have, rc;
    int live, has_want;
    Str key = buf_str(&q->arg);
    if (hub_kv_key(q, r) || hub_str(q, r, "agent_id", 1, &agent) < 0) goto done;
    uint32_t v = json_get(j, 0, "value");
    if (!v) {
        hub_fail(r, 400, "value is required");
        goto done;
    }
    if (hub_stored(r, j, v, "value", 0, 0)) goto done;
    if ((int64_t)json_pylen(j, v) > h->cfg.max_kv_value_chars) {
        hub_fail(r, 400, "value exceeds max size (max_kv_value_chars %lld)",
                 (long long)h->cfg.max_kv_value_chars);
        goto done;
    }
    if ((rc = hub_str(q, r, "type", 0, &type)) < 0) goto done;
    if (rc && type.len && hub_kv_type_ok(r, buf_str(&type))) goto done;
    if ((has_want = hub_int(q, r, "version", &want)) < 0) goto done;
    if (has_want && want < 0) {
        hub_fail(r, 400, "version must be >= 0");
        goto done;
    }
    json_write(&value, j, v);
    if (hub_tx(h, q, r)) goto done;
    if ((rc = hub_kv_state(h, key, &have, &live, &cur_type)) < 0) goto db;
    if (has_want && want != (live ? have : 0)) {
        hub_kv_conflict(h, r, key, want, live ? have : 0);
        goto done;
    }
    if (!type.len) buf_adds(&type, live ? buf_cstr(&cur_type) : "note");
    char now[ISO_LEN];
    hub_now(now);
    sqlite3_stmt *st = store_stmt(&h->store, upsert);
    if (!st) goto db;
    store_bind(st, 1, key);
    sqlite3_bind_int64(st, 2, have + 1);
    store_bind(st, 3, buf_str(&type));
    store_bind(st, 4, buf_str(&value));
    store_bind(st, 5, buf_str(&agent));
    store_bind_c(st, 6, now);
    if (store_done(&h->store, st) ||
        hub_kv_record(h, q, r, key, have + 1, "put", buf_str(&type),
                      buf_str(&value), buf_str(&agent), now))
        goto db;
    hub_touch(h, q, r, buf_str(&agent));
    hub_ok(r, live ? 200 : 201);
    if (hub_kv_emit(h, &r->body, key) < 0) goto db;
    hub_ok_end(r);
    goto done;
db:
    hub_db_fail(h, r);
done:
    buf_free(&agent), buf_free(&type), buf_free(&cur_type), buf_free(&value);
}

/* GET /v1/kv/{key} */
static void hub_kv_get(Hub *h, Req *q, Res *r) {
    if (hub_kv_key(q, r)) return;
    hub_ok(r, 200);
    int rc = hub_kv_emit(h, &r->body, buf_str(&q->arg));
    if (rc < 0) hub_db_fail(h, r);
    else if (rc == 0) hub_fail(r, 404, "key not found");
    else hub_ok_end(r);
}

/* DELETE /v1/kv/{key}?agent_id=A[&version=N] (PROTOCOL §13.6): a DELETE
 * body is not read (§3.4), so the writer comes in the query. */
static void hub_kv_delete(Hub *h, Req *q, Res *r) {
    static const char tomb[] =
        "UPDATE arc_kv SET version=?2, value_json=NULL, deleted=1,"
        " updated_by=?3, updated_at=?4 WHERE key=?1";
    Buf type = { 0 };
    int err = 0, live;
    int64_t want = 0, have;
    Str key = buf_str(&q->arg);
    if (hub_kv_key(q, r)) return;
    char *agent = hub_qdup(q, r, "agent_id", &err);
    if (err) goto done;
    if (!agent || !*agent) {
        hub_fail(r, 400, "agent_id query parameter is required");
        goto done;
    }
    int has_want = hub_qp(q, r, "version");
    if (has_want < 0 || hub_qint(q, r, "version", 0, &want)) goto done;
    if (hub_tx(h, q, r)) goto done;
    if (hub_kv_state(h, key, &have, &live, &type) < 0) goto db;
    if (!live) {
        hub_fail(r, 404, "key not found");
        goto done;
    }
    if (has_want && want != have) {
        hub_kv_conflict(h, r, key, want, have);
        goto done;
    }
    char now[ISO_LEN];
    hub_now(now);
    sqlite3_stmt *st = store_stmt(&h->store, tomb);
    if (!st) goto db;
    store_bind(st, 1, key);
    sqlite3_bind_int64(st, 2, have + 1);
    store_bind_c(st, 3, agent);
    store_bind_c(st, 4, now);
    if (store_done(&h->store, st) ||
        hub_kv_record(h, q, r, key, have + 1, "delete", buf_str(&type),
                      (Str){ NULL, 0 }, str_c(agent), now))
        goto db;
    hub_touch(h, q, r, str_c(agent));
    st = store_stmt(&h->store, "SELECT " KVH_COLS " FROM arc_kv_history"
                               " WHERE key=? AND version=?");
    if (!st) goto db;
    store_bind(st, 1, key);
    sqlite3_bind_int64(st, 2, have + 1);
    hub_ok(r, 200);
    if (store_emit_one(&h->store, &r->body, st, store_emit_kv_change) < 0) goto db;
    hub_ok_end(r);
    goto done;
db:
    hub_db_fail(h, r);
done:
    free(agent);
    buf_free(&type);
}

/* The `limit` of a list (default 100, at most ARC_MAX_LIMIT). */
static int hub_kv_limit(Req *q, Res *r, int *limit) {
    int64_t l;
    if (hub_qint(q, r, "limit", 100, &l)) return -1;
    if (l < 1) {
        hub_fail(r, 400, "limit must be at least 1");
        return -1;
    }
    *limit = l > ARC_MAX_LIMIT ? ARC_MAX_LIMIT : (int)l;
    return 0;
}

/* Answer with the rows of st (selected with LIMIT limit + 1) as the
 * result array: at most `limit` rows, stopping before the row that would
 * take the page past ARC_MAX_PAGE_BYTES (the first always goes in), and
 * "more": true when rows were left out (PROTOCOL §13.4). */
static void hub_kv_page(Hub *h, Res *r, sqlite3_stmt *st, int limit, StoreEmit emit) {
    int n = 0, more = 0, rc;
    hub_ok(r, 200);
    size_t start = r->body.len;
    buf_addc(&r->body, '[');
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        size_t mark = r->body.len;
        if (n == limit) {
            more = 1;
            break;
        }
        if (n) buf_addc(&r->body, ',');
        emit(&h->store, &r->body, st);
        if (n && r->body.len - start > ARC_MAX_PAGE_BYTES) {
            r->body.len = mark;
            r->body.p[mark] = 0;
            more = 1;
            break;
        }
        n++;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        hub_db_fail(h, r);
        return;
    }
    buf_addc(&r->body, ']');
    if (more) buf_adds(&r->body, ",\"more\":true");
    hub_ok_end(r);
}

/* GET /v1/kv?prefix=&type=&after=&limit= (PROTOCOL §13.4): live keys in
 * key order. The prefix is a range on the primary key: every UTF-8 key
 * that starts with P lies in [P, P "\xff"), since no UTF-8 byte is 0xff. */
static void hub_kv_list(Hub *h, Req *q, Res *r) {
    static const char sql[] = "SELECT " KV_COLS " FROM arc_kv WHERE deleted=0"
        " AND (?1 IS NULL OR (key>=?1 AND key<?2)) AND (?3 IS NULL OR type=?3)"
        " AND (?4 IS NULL OR key>?4) ORDER BY key LIMIT ?5";
    int err = 0, limit;
    Buf upper = { 0 };
    char *prefix = hub_qdup(q, r, "prefix", &err);
    char *type = err ? NULL : hub_qdup(q, r, "type", &err);
    char *after = err ? NULL : hub_qdup(q, r, "after", &err);
    if (err || hub_kv_limit(q, r, &limit)) goto done;
    if (type && hub_kv_type_ok(r, str_c(type))) goto done;
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) { hub_db_fail(h, r); goto done; }
    if (prefix) {
        buf_adds(&upper, prefix);
        buf_addc(&upper, '\xff');
        store_bind_c(st, 1, prefix);
        store_bind(st, 2, buf_str(&upper));
    }
    store_bind_c(st, 3, type);
    store_bind_c(st, 4, after);
    sqlite3_bind_int(st, 5, limit + 1);
    hub_kv_page(h, r, st, limit, store_emit_kv);
done:
    free(prefix), free(type), free(after);
    buf_free(&upper);
}

/* GET /v1/kv/{key}/history?since_version=&limit= (PROTOCOL §13.5): every
 * write of a key, deleted or not, oldest first. */
static void hub_kv_history(Hub *h, Req *q, Res *r) {
    static const char sql[] = "SELECT " KVH_COLS " FROM arc_kv_history"
        " WHERE key=?1 AND version>?2 ORDER BY version LIMIT ?3";
    int64_t since, have;
    int limit, live;
    Buf type = { 0 };
    Str key = buf_str(&q->arg);
    if (hub_kv_key(q, r) || hub_qint(q, r, "since_version", 0, &since) ||
        hub_kv_limit(q, r, &limit))
        goto done;
    int ex = hub_kv_state(h, key, &have, &live, &type);
    if (ex < 0) { hub_db_fail(h, r); goto done; }
    if (!ex) {
        hub_fail(r, 404, "key not found");
        goto done;
    }
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) { hub_db_fail(h, r); goto done; }
    store_bind(st, 1, key);
    sqlite3_bind_int64(st, 2, since);
    sqlite3_bind_int(st, 3, limit + 1);
    hub_kv_page(h, r, st, limit, store_emit_kv_change);
done:
    buf_free(&type);
}

/* ---- access: Host, Origin and bearer token (PROTOCOL §2) ---- */

/* Every HTTP request passes hub_admit() before it is routed; the file relay
 * does not (file access is its trust boundary). The Host check stops DNS
 * rebinding, which needs a domain name that now resolves to us; the Origin
 * and Sec-Fetch-Site checks stop pages of other origins, whose requests a
 * browser sends (and, without CORS headers from us, only hides the answers
 * of); the token keeps everyone else out in network mode. */

/* Case-insensitive equality of two byte ranges (host names). */
static int str_ieqs(Str a, Str b) {
    if (a.n != b.n) return 0;
    for (size_t i = 0; i < a.n; i++)
        if (tolower((unsigned char)a.p[i]) != tolower((unsigned char)b.p[i]))
            return 0;
    return 1;
}

/* May a Host header name this hub? Host is "name[:port]" or "[v6][:port]"
 * (RFC 9110 §7.2). Allowed are IP literals, `localhost` and the
 * --allowed-host names; the port is not compared (a proxy may change it).
 * Returns 1 allowed, 0 not allowed (*name is the host), -1 malformed. */
static int hub_host_allowed(const Hub *h, Str v, Str *name) {
    char tmp[256];
    Str port = { "", 0 };
    *name = v;
    if (v.n && v.p[0] == '[') {
        const char *end = memchr(v.p, ']', v.n);
        if (!end) return -1;
        *name = (Str){ v.p + 1, (size_t)(end - v.p - 1) };
        size_t rest = v.n - (size_t)(end - v.p) - 1;
        if (rest && end[1] != ':') return -1;
        if (rest) port = (Str){ end + 2, rest - 1 };
    } else {
        const char *colon = memchr(v.p, ':', v.n);
        if (colon) {
            *name = (Str){ v.p, (size_t)(colon - v.p) };
            port = (Str){ colon + 1, v.n - name->n - 1 };
        }
    }
    if (name->n == 0 || name->n >= sizeof tmp || port.n > 5) return -1;
    for (size_t i = 0; i < port.n; i++)
        if (!isdigit((unsigned char)port.p[i])) return -1;
    memcpy(tmp, name->p, name->n);
    tmp[name->n] = 0;
    unsigned char addr[16];
    if (v.p[0] == '[') return inet_pton(AF_INET6, tmp, addr) == 1 ? 1 : -1;
    for (size_t i = 0; i < name->n; i++) {   /* RFC 3986 reg-name */
        unsigned char c = (unsigned char)tmp[i];
        if (!isalnum(c) && !strchr("-._~%!$&'()*+,;=", c)) return -1;
    }
    if (inet_pton(AF_INET, tmp, addr) == 1 || str_ieqs(*name, STR_LIT("localhost")))
        return 1;
    for (int i = 0; i < h->cfg.n_allowed_hosts; i++)
        if (str_ieqs(*name, str_c(h->cfg.allowed_hosts[i]))) return 1;
    return 0;
}

/* Does an Origin header name the origin the Host header names, i.e. the
 * page that sent the request was served by this hub under that name? */
static int hub_same_origin(Str origin, Str host) {
    Str rest;
    if (origin.n > 7 && str_ieqs((Str){ origin.p, 7 }, STR_LIT("http://")))
        rest = (Str){ origin.p + 7, origin.n - 7 };
    else if (origin.n > 8 && str_ieqs((Str){ origin.p, 8 }, STR_LIT("https://")))
        rest = (Str){ origin.p + 8, origin.n - 8 };
    else
        return 0;   /* "null" (sandboxed frames, file: pages) and the like */
    return host.n && str_ieqs(rest, host);
}

/* The token a request carries: "Authorization: Bearer T", or for
 * GET /v1/stream, which an EventSource opens without headers, the query
 * parameter access_token (RFC 6750 §2.3). Returns 1 found, 0 none. */
static int hub_request_token(const HttpReq *hr, Buf *tmp, Str *tok) {
    Str a = hr->authorization;
    if (a.p) {
        if (a.n < 7 || !str_ieqs((Str){ a.p, 6 }, STR_LIT("bearer")) ||
            (a.p[6] != ' ' && a.p[6] != '\t')) {
            *tok = (Str){ "", 0 };   /* another scheme: a wrong token */
            return 1;
        }
        *tok = str_trim((Str){ a.p + 7, a.n - 7 });
        return 1;
    }
    if (str_eq(hr->method, "GET") && str_eq(hr->path, "/v1/stream") &&
        http_query_get(hr->query, "access_token", tmp) == 1) {
        *tok = buf_str(tmp);
        return 1;
    }
    return 0;
}

/* Decide whether an HTTP request may be served at all. Returns 0, or -1
 * with the refusal in r: 400 a missing or malformed Host, 403 a Host not
 * allowed or another origin's request, 401 no or a wrong token. GET / (the
 * dashboard page, which holds no data) needs no token and may be opened
 * from a link on any site. */
static int hub_admit(Hub *h, const HttpReq *hr, Res *r) {
    Str name;
    int page = str_eq(hr->method, "GET") && str_eq(hr->path, "/");
    if (hr->dup_host || hr->dup_origin || hr->dup_site) {
        hub_fail(r, 400, "multiple %s headers", hr->dup_host ? "Host" :
                 hr->dup_origin ? "Origin" : "Sec-Fetch-Site");
        return -1;
    }
    if (!hr->has_host && hr->minor == 1) {
        hub_fail(r, 400, "missing Host header");
        return -1;
    }
    int allowed = hr->has_host ? hub_host_allowed(h, hr->host, &name) : 1;
    if (allowed < 0) {
        hub_fail(r, 400, "invalid Host header");
        return -1;
    }
    if (!allowed) {
        hub_fail(r, 403, "Host not allowed: %.*s (use an IP address or localhost, "
                 "or start the hub with --allowed-host %.*s)", (int)name.n, name.p,
                 (int)name.n, name.p);
        return -1;
    }
    Str site = hr->sec_fetch_site;
    if (!page && site.p && !str_ieq(site, "same-origin") && !str_ieq(site, "none")) {
        hub_fail(r, 403, "cross-origin request refused (Sec-Fetch-Site: %.*s)",
                 (int)site.n, site.p);
        return -1;
    }
    if (!page && hr->origin.p && !hub_same_origin(hr->origin, hr->host)) {
        hub_fail(r, 403, "cross-origin request refused (Origin: %.*s)",
                 (int)hr->origin.n, hr->origin.p);
        return -1;
    }
    if (!h->cfg.token[0] || page) return 0;
    Buf tmp = { 0 };
    Str tok;
    int has = hub_request_token(hr, &tmp, &tok);
    int ok = has && token_eq(tok, h->cfg.token, h->token_n);
    buf_free(&tmp);
    if (ok) return 0;
    if (has) hub_fail(r, 401, "invalid token");
    else hub_fail(r, 401, "this hub requires a token: send Authorization: Bearer "
                  "TOKEN (arc commands take --token, --token-file or ARC_TOKEN)");
    r->extra = "WWW-Authenticate: Bearer realm=\"arc\"\r\n";
    return -1;
}

/* ---- routing ---- */

typedef void (*HubHandler)(Hub *, Req *, Res *);

/* Patterns match whole path segments: '*' is one non-empty segment and
 * '#' one all-digit segment, captured (percent-decoded) into Req.arg. */
typedef struct {
    const char *method;
    const char *pattern;
    HubHandler fn;
} Route;

/* POST, GET and DELETE /mcp: MCP over HTTP (docs/MCP.md). The tools are
 * the mcp section's, which comes after the loop and the client. */
static void hub_mcp(Hub *h, Req *q, Res *r);

static const Route hub_routes[] = {
    { "GET", "/", hub_root },
    { "GET", "/v1/hub-info", hub_info },
    { "GET", "/v1/agents", hub_list_agents },
    { "GET", "/v1/channels", hub_list_channels },
    { "POST", "/v1/channels", hub_create_channel },
    { "POST", "/v1/sessions", hub_create_session },
    { "POST", "/v1/sessions/*/rename", hub_rename_session },
    { "DELETE", "/v1/sessions/*", hub_delete_session },
    { "GET", "/v1/bootstrap", hub_bootstrap },
    { "POST", "/v1/messages", hub_post_message },
    { "GET", "/v1/messages", hub_get_messages },
    { "GET", "/v1/events", hub_get_events },
    { "GET", "/v1/stream", hub_stream },
    { "GET", "/v1/inbox/*", hub_get_inbox },
    { "GET", "/v1/threads", hub_list_threads },
    { "GET", "/v1/threads/*", hub_get_thread },
    { "POST", "/v1/claims", hub_claim },
    { "POST", "/v1/claims/refresh", hub_claim_refresh },
    { "POST", "/v1/claims/release", hub_claim_release },
    { "GET", "/v1/claims", hub_list_claims },
    { "POST", "/v1/locks", hub_lock },
    { "POST", "/v1/locks/refresh", hub_lock_refresh },
    { "POST", "/v1/locks/release", hub_lock_release },
    { "GET", "/v1/locks", hub_list_locks },
    { "GET", "/v1/tasks", hub_list_tasks },
    { "POST", "/v1/tasks/#/complete", hub_complete_task },
    { "GET", "/v1/shutdown", hub_shutdown_status },
    { "POST", "/v1/shutdown", hub_shutdown },
    { "POST", "/v1/shutdown/cancel", hub_shutdown_cancel },
    { "POST", "/v1/network", hub_network },
    { "GET", "/v1/kv", hub_kv_list },
    { "GET", "/v1/kv/*", hub_kv_get },
    { "PUT", "/v1/kv/*", hub_kv_put },
    { "DELETE", "/v1/kv/*", hub_kv_delete },
    { "GET", "/v1/kv/*/history", hub_kv_history },
    { "GET", "/v1/search", hub_search },
    { "GET", "/v1/delivery/*", hub_delivery_peek },
    { "POST", "/v1/delivery/*/take", hub_delivery_take },
    { "POST", "/v1/delivery/*/nudge", hub_delivery_nudge },
    { "POST", "/v1/messages/#/ack", hub_rc_ack },
    { "GET", "/v1/messages/#/receipts", hub_rc_receipts },
    { "GET", "/v1/unanswered", hub_rc_unanswered },
    { "POST", "/v1/agents/*/state", hub_pr_post },
    { "GET", "/v1/presence", hub_pr_list },
    { "POST", "/mcp", hub_mcp },
    { "GET", "/mcp", hub_mcp },
    { "DELETE", "/mcp", hub_mcp },
};

/* Match path against pattern; on a wildcard, decode the segment into arg.
 * Returns 1 on a match, 0 otherwise. */
static int hub_route_match(const char *pat, Str path, Buf *arg) {
    size_t i = 0;
    for (const char *p = pat; *p; p++) {
        if (*p == '*' || *p == '#') {
            size_t start = i;
            while (i < path.n && path.p[i] != '/') i++;
            if (i == start) return 0;
            Str seg = { path.p + start, i - start };
            if (*p == '#')
                for (size_t k = 0; k < seg.n; k++)
                    if (!isdigit((unsigned char)seg.p[k])) return 0;
            buf_reset(arg);
            if (http_unquote(seg, 0, arg)) return 0;
            continue;
        }
        if (i >= path.n || path.p[i] != *p) return 0;
        i++;
    }
    return i == path.n;
}

/* Handle one request: route it, parse a POST body, run the handler, and
 * settle its savepoint. Shared by every transport (HTTP, and later the file
 * relay), so they behave identically. Req fields are filled by the caller;
 * r must be zeroed. */
static void hub_handle(Hub *h, Req *q, Str path, Str body, Res *r) {
    const Route *rt = NULL;
    int known = str_eq(q->method, "GET") || str_eq(q->method, "POST") ||
                str_eq(q->method, "DELETE") || str_eq(q->method, "PUT");
    if (!known) {
        hub_fail(r, 501, "method not supported: %.*s", (int)q->method.n,
                 q->method.p);
        return;
    }
    for (size_t i = 0; i < sizeof hub_routes / sizeof *hub_routes && !rt; i++)
        if (str_eq(q->method, hub_routes[i].method) &&
            hub_route_match(hub_routes[i].pattern, path, &q->arg))
            rt = &hub_routes[i];
    if (!rt) {
        hub_fail(r, 404, "not found");
        return;
    }
    if (strchr(rt->pattern, '*') && q->arg.len &&         /* see hub_no_nul */
        memchr(q->arg.p, 0, q->arg.len)) {
        hub_fail(r, 400, "path parameter must not contain a NUL character");
        return;
    }
    q->raw_body = body;
    if ((str_eq(q->method, "POST") || str_eq(q->method, "PUT")) && rt->fn != hub_mcp) {
        if (!utf8_valid(body.p, body.n)) {
            hub_fail(r, 400, "request body must be valid UTF-8");
            return;
        }
        Str b = body.n ? body : STR_LIT("{}");
        if (json_parse(&q->body, b.p, b.n)) {
            hub_fail(r, 400, "malformed JSON: %s", q->body.err);
            return;
        }
        if (q->body.t[0].type != JSON_OBJ) {
            hub_fail(r, 400, "request body must be a JSON object");
            return;
        }
        q->has_body = 1;
    }
    rt->fn(h, q, r);
    hub_tx_end(h, q, r->status < 400);
}

static void req_free(Req *q) {
    buf_free(&q->arg);
    buf_free(&q->tmp);
    json_free(&q->body);
}

static void res_free(Res *r) {
    buf_free(&r->body);
    buf_free(&r->hdr);
    wait_free(&r->wait);
}

/* ==== relay: the file-spool binding for sandboxed agents ================== */

/* Agents that can write files in a shared workspace but cannot reach the
 * hub's socket talk through a spool (PROTOCOL §11):
 *   requests/<agent>/<id>.json   written by the client (atomically, by rename)
 *   requests/<agent>/<id>.work   the same file once the hub has claimed it
 *   responses/<agent>/<id>.json  the answer, written atomically by the hub
 * One thread watches the spool and only moves bytes: it claims and reads a
 * request, hands it to the loop through a mutex-guarded queue and one byte
 * on the loop's wake pipe, and writes the answer file when the loop hands
 * the response back. The loop serves a relayed request exactly like an HTTP
 * one, parking it if it is a long-poll, so one agent's long wait never
 * delays another's request, and SQLite stays on the loop thread.
 *
 * The spool is hostile ground (STYLE §6b, PROTOCOL §11): any agent can put
 * symlinks, FIFOs or odd names in it, and swap them while the thread works.
 * So nothing is done by path below the root: the root is resolved once at
 * start and held as a descriptor opened O_DIRECTORY|O_NOFOLLOW, and every
 * open, rename, mkdir and stat below it is an *at() call relative to a
 * directory descriptor, with O_NOFOLLOW / AT_SYMLINK_NOFOLLOW; requests/,
 * responses/ and agent directories are opened O_DIRECTORY|O_NOFOLLOW each
 * time, so a symlink in their place is refused, not followed. Request files
 * are opened non-blocking and must fstat as regular files (a FIFO would
 * block the thread). Answers go through a short temporary name, so any
 * request name that fits NAME_MAX can be answered.
 *
 * Watching is incremental (inotify on Linux): requests/ and each agent
 * directory has a watch; a new agent directory gets its watch and one scan
 * of its own, so a thousand mkdirs cost a thousand small scans, not a
 * thousand full ones. The full scan of every agent directory runs at
 * start, on inotify overflow, when the root or requests/ is replaced,
 * and as a backstop every ARC_RELAY_RESCAN_MS; only without inotify, or
 * when a watch could not be added (the kernel's watch limit), does it run
 * every ARC_RELAY_SCAN_MS as the only way to notice files. Every
 * ARC_RELAY_SCAN_MS the thread checks, with two stat calls, that the root
 * path still names the root it holds and which requests/ is watched: an
 * idle hub costs nothing per agent directory. */

#ifndef ARC_RELAY_SCAN_MS
#define ARC_RELAY_SCAN_MS 1000    /* root check; full scan without inotify */
#endif
#ifndef ARC_RELAY_RESCAN_MS
#define ARC_RELAY_RESCAN_MS 60000 /* full scan as a backstop to inotify */
#endif
#define ARC_RELAY_MAX_FILE (16u << 20)  /* a request file larger is refused */
/* Opening a spool directory: never a symlink, never inherited. */
#define RELAY_DIR_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)

/* One relayed request, owned by whichever side's queue holds it. */
typedef struct RelayReq {
    struct RelayReq *next;
    struct Relay *owner;  /* borrowed: the relay that claimed it, which
                             outlives it and writes its answer */
    char *agent;          /* owned: the agent's directory name */
    char *file_id;        /* owned: the file's stem, names the answer file */
    char *request_id;     /* owned: echoed in the answer */
    char *method, *path;  /* owned */
    char *body;           /* owned JSON text, or NULL */
    int status;           /* the answer, filled by the loop */
    Buf answer;           /* the hub's JSON envelope */
} RelayReq;

/* An inotify watch on one agent directory of requests/. */
typedef struct {
    int wd;
    char *name;   /* owned: the directory's name under requests/ */
} RelayWatch;

struct Relay;
/* Where a claimed request goes: NULL means the hub's own loop; `arc relay`
 * forwards it over HTTP instead (cli section). */
typedef void (*RelayDispatch)(struct Relay *, RelayReq *);

typedef struct Relay {
    RelayDispatch dispatch;    /* NULL: queue for the loop */
    const char *forward_url;   /* borrowed: `arc relay --base-url` */
    const char *forward_token; /* borrowed: that hub's token, or NULL */
    int n_forwarding;          /* shared: forwards in flight */
    pthread_t thread;
    int thread_live;           /* creator only: the thread is not joined */
    pthread_mutex_t mu;        /* guards the two queues and stop */
    RelayReq *to_loop;         /* shared: requests for the loop (LIFO) */
    RelayReq *to_files;        /* shared: answers to write */
    int stop;                  /* shared: leave the thread */
    int loop_wake;             /* the loop's wake pipe (write end) */
    int wake_rd, wake_wr;      /* the relay's own wake pipe */
    char root[PATH_MAX];       /* the spool directory, resolved at start */
    /* The rest belongs to the relay thread once it runs. */
    int root_fd;               /* the root, opened O_DIRECTORY|O_NOFOLLOW */
    dev_t root_dev, req_dev;   /* identity of the root held, and of the */
    ino_t root_ino, req_ino;   /*   requests/ that req_wd watches */
    int root_moved, req_bad;   /* warned that the root path or requests/
                                  no longer names a directory we hold */
    int inotify_fd;            /* -1 without inotify */
    int req_wd;                /* watch on requests/, or -1 */
    RelayWatch *watches;       /* agent directory watches, sorted by wd */
    int n_watches, cap_watches;
    int n_unwatched;           /* agent directories the last full scan
                                  could not watch (watch limit) */
    int64_t next_scan;         /* the next full scan (clock_ms) */
    int64_t starved_until;     /* out of descriptors, so take nothing
                                  until then (a full scan is due then) */
} Relay;

static void relay_req_free(RelayReq *r) {
    free(r->agent), free(r->file_id), free(r->request_id);
    free(r->method), free(r->path), free(r->body);
    buf_free(&r->answer);
    free(r);
}

/* The reference's rule for agent directory names: every run of characters
 * outside [A-Za-z0-9._-] becomes one '_'; empty becomes "agent". */
static void relay_safe_name(const char *agent, Buf *out) {
    Str a = str_trim(str_c(agent));
    int in_bad = 0;
    for (size_t i = 0; i < a.n; i++) {
        unsigned char c = (unsigned char)a.p[i];
        if (isalnum(c) || c == '.' || c == '_' || c == '-') {
            buf_addc(out, (char)c);
            in_bad = 0;
        } else if (!in_bad) {
            buf_addc(out, '_');
            in_bad = 1;
        }
    }
    if (!out->len) buf_adds(out, "agent");
    /* Unlike the reference, never a name starting with '.': "." and ".."
     * would name the spool's own directories, and the hub skips hidden
     * ones. */
    if (out->p[0] == '.') out->p[0] = '_';
}

/* mkdir -p for the spool's own directories, mode 0700. By path: for the
 * spool root at start and for clients writing into their own spool. */
static int relay_mkdirs(const char *path) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0700) && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(tmp, 0700) && errno != EEXIST ? -1 : 0;
}

/* "." and "..": the only directory entries that are never agents. */
static int relay_dot_name(const char *name) {
    return !strcmp(name, ".") || !strcmp(name, "..");
}

/* Open the directory `name` under dirfd, never through a symlink; with
 * `create`, make it (mode 0700) first if missing. Returns the descriptor,
 * or -1 with errno (ELOOP for a symlink, ENOTDIR for another file). */
static int relay_open_dir(int dirfd, const char *name, int create) {
    if (relay_dot_name(name) || strchr(name, '/')) {
        errno = EINVAL;
        return -1;
    }
    if (create && mkdirat(dirfd, name, 0700) && errno != EEXIST) return -1;
    int fd;
    while ((fd = openat(dirfd, name, RELAY_DIR_FLAGS)) < 0 && errno == EINTR) {}
    return fd;
}

/* Open root/sub/agent (sub is "requests" or "responses") through
 * descriptors; with `create`, make the missing directories. */
static int relay_agent_dir(Relay *rl, const char *sub, const char *agent, int create) {
    int sfd = relay_open_dir(rl->root_fd, sub, create);
    if (sfd < 0) return -1;
    int fd = relay_open_dir(sfd, agent, create);
    int e = errno;
    close(sfd);
    errno = e;
    return fd;
}

/* Write `data` to dirfd/name atomically: a new temporary file, then
 * renameat. The temporary name is short and fixed-length, so every name
 * that fits NAME_MAX can be written; it starts with '.' and ends in .tmp,
 * so no relay takes it and relay-gc collects it if left behind. */
static int relay_write_at(int dirfd, const char *name, Str data) {
    char tmp[32];
    unsigned char r[8];
    rand_bytes(r, sizeof r);
    snprintf(tmp, sizeof tmp, ".arc-%02x%02x%02x%02x%02x%02x%02x%02x.tmp",
             r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
    int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                    0600);
    if (fd < 0) return -1;
    size_t off = 0;
    while (off < data.n) {
        ssize_t w = write(fd, data.p + off, data.n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    int ok = off == data.n;
    if (close(fd)) ok = 0;
    if (ok && renameat(dirfd, tmp, dirfd, name) == 0) return 0;
    int e = errno;
    unlinkat(dirfd, tmp, 0);
    errno = e;
    return -1;
}

/* Write `data` to dir/name atomically (the client's side, in a spool it
 * writes as a client: dir is its own path). */
static int relay_write_file(const char *dir, const char *name, Str data) {
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return -1;
    int rc = relay_write_at(dfd, name, data);
    int e = errno;
    close(dfd);
    errno = e;
    return rc;
}

/* Is errno "out of descriptors or memory for now", worth a retry? */
static int relay_starved(void) {
    return errno == EMFILE || errno == ENFILE || errno == ENOMEM;
}

/* Out of descriptors: take nothing for half a scan interval, then scan
 * everything (whatever was missed meanwhile is found then). Without the
 * pause an unclaimed file's rename back, itself an event, would be taken
 * again at once, spinning the thread. */
static void relay_starve(Relay *rl) {
    rl->starved_until = clock_ms() + ARC_RELAY_SCAN_MS / 2;
    if (rl->next_scan > rl->starved_until) rl->next_scan = rl->starved_until;
}

/* Log that no answer can be written for agent/file_id, escaping both. */
static void relay_warn_unanswered(const char *agent, const char *file_id,
                                  const char *why) {
    Buf a = { 0 }, f = { 0 };
    log_warn("relay: no answer for requests/%s/%s.json: %s", log_esc(&a, agent),
             log_esc(&f, file_id), why);
    buf_free(&a);
    buf_free(&f);
}

/* Write the answer file for r: the reference's response envelope. Returns
 * 0 (written, or refused for good), or ARC_AGAIN when the process is out
 * of descriptors: the caller keeps r and tries again later. */
static int relay_answer(Relay *rl, RelayReq *r, const char *error) {
    char now[ISO_LEN], name[300];
    int dfd = relay_agent_dir(rl, "responses", r->agent, 1);
    if (dfd < 0) {
        if (relay_starved()) return ARC_AGAIN;
        relay_warn_unanswered(r->agent, r->file_id, "responses/<agent> is not "
                              "a directory we can write");
        return 0;
    }
    int rc = 0;
    Buf b = { 0 };
    Json j = { 0 };
    int ok = 0;
    Buf err = { 0 };
    if (error) buf_adds(&err, error);
    if (!error && json_parse(&j, buf_cstr(&r->answer), r->answer.len) == 0 &&
        j.t[0].type == JSON_OBJ) {
        uint32_t v = json_get(&j, 0, "ok");
        ok = v && json_truthy(&j, v);
        v = json_get(&j, 0, "error");
        if (v && j.t[v].type == JSON_STR) json_unescape(&j, v, &err);
    }
    iso_format(clock_wall_us(), now);
    buf_adds(&b, "{\"request_id\":");
    json_cstr(&b, r->request_id ? r->request_id : r->file_id);
    buf_addf(&b, ",\"ok\":%s,\"status\":%d,", ok ? "true" : "false", r->status);
    if (!error) {
        buf_adds(&b, "\"body\":");
        buf_addstr(&b, buf_str(&r->answer));
        buf_addc(&b, ',');
    }
    buf_adds(&b, "\"completed_at\":");
    json_cstr(&b, now);
    if (err.len) {
        buf_adds(&b, ",\"error\":");
        json_strs(&b, buf_str(&err));
    }
    buf_addc(&b, '}');
    snprintf(name, sizeof name, "%s.json", r->file_id);
    if (relay_write_at(dfd, name, buf_str(&b))) {
        if (relay_starved()) rc = ARC_AGAIN;
        else relay_warn_unanswered(r->agent, r->file_id, strerror(errno));
    }
    close(dfd);
    json_free(&j);
    buf_free(&b);
    buf_free(&err);
    return rc;
}

/* Check a request envelope (PROTOCOL §11) held in data and fill r's
 * request_id, method, path and body. Pure: no file or socket is touched,
 * so the fuzzer drives it directly (tests/fuzz_relay.c). Returns 0, or -1
 * with the reason in err (r may then hold some fields; the caller frees
 * it whole). */
static int relay_parse_envelope(Str data, RelayReq *r, char err[ARC_ERRLEN]) {
    Json j = { 0 };
    Buf v = { 0 };
    int rc = -1;
    if (data.n > ARC_RELAY_MAX_FILE) {
        snprintf(err, ARC_ERRLEN, "request file larger than %u bytes",
                 ARC_RELAY_MAX_FILE);
        goto done;
    }
    if (!utf8_valid(data.p, data.n) || json_parse(&j, data.p, data.n)) {
        snprintf(err, ARC_ERRLEN, "invalid relay request: not valid JSON%s%.300s",
                 j.err[0] ? ": " : "", j.err);
        goto done;
    }
    if (j.t[0].type != JSON_OBJ) {
        snprintf(err, ARC_ERRLEN, "invalid relay request: request envelope must "
                 "be a JSON object");
        goto done;
    }
    uint32_t t = json_get_val(&j, 0, "request_id");
    if (t && json_truthy(&j, t)) {
        json_as_text(&v, &j, t);
        Str s = str_trim(buf_str(&v));
        if (s.n) r->request_id = xstrndup(s.p, s.n);
    }
    buf_reset(&v);
    if ((t = json_get_val(&j, 0, "method")) && json_truthy(&j, t)) json_as_text(&v, &j, t);
    for (size_t i = 0; i < v.len; i++) v.p[i] = (char)toupper((unsigned char)v.p[i]);
    if (!v.len) {
        snprintf(err, ARC_ERRLEN, "invalid relay request: request envelope "
                 "missing method");
        goto done;
    }
    /* The loop reads method and path as C strings: a NUL inside would
     * silently cut them short ("GET\u0000X" served as GET). */
    if (memchr(v.p, 0, v.len)) {
        snprintf(err, ARC_ERRLEN, "invalid relay request: method contains NUL");
        goto done;
    }
    r->method = xstrndup(v.p, v.len);
    buf_reset(&v);
    if ((t = json_get_val(&j, 0, "path")) && json_truthy(&j, t)) json_as_text(&v, &j, t);
    if (!v.len || v.p[0] != '/') {
        snprintf(err, ARC_ERRLEN, "invalid relay request: request path must "
                 "start with '/'");
        goto done;
    }
    if (memchr(v.p, 0, v.len)) {
        snprintf(err, ARC_ERRLEN, "invalid relay request: path contains NUL");
        goto done;
    }
    r->path = xstrndup(v.p, v.len);
    if ((t = json_get_val(&j, 0, "body"))) {
        if (j.t[t].type != JSON_OBJ) {
            snprintf(err, ARC_ERRLEN, "invalid relay request: request body must "
                     "be a JSON object when provided");
            goto done;
        }
        Buf b = { 0 };
        json_write(&b, &j, t);
        r->body = b.p;   /* hand-off: r owns it */
    }
    rc = 0;
done:
    json_free(&j);
    buf_free(&v);
    return rc;
}

/* Read a claimed request file, dirfd/name, and check it. Returns 0 with r
 * filled, -1 with the reason in err, or ARC_AGAIN when the process is out
 * of descriptors or memory for now (the request is fine; try it later).
 * Opened non-blocking: a FIFO swapped in must not block the thread. */
static int relay_parse(int dirfd, const char *name, RelayReq *r, char err[ARC_ERRLEN]) {
    int fd = openat(dirfd, name, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (relay_starved()) return ARC_AGAIN;
        snprintf(err, ARC_ERRLEN, "invalid relay request: cannot read the file: %s",
                 errno == ELOOP ? "it is a symbolic link" : strerror(errno));
        return -1;
    }
    struct stat sb;
    Buf data = { .max = ARC_RELAY_MAX_FILE + 1 };   /* one byte over refuses */
    int rc = -1;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode)) {
        snprintf(err, ARC_ERRLEN, "invalid relay request: not a regular file");
        goto done;
    }
    if ((uint64_t)sb.st_size > ARC_RELAY_MAX_FILE) {
        snprintf(err, ARC_ERRLEN, "request file larger than %u bytes",
                 ARC_RELAY_MAX_FILE);
        goto done;
    }
    char chunk[16384];
    ssize_t n = 0;
    while (!data.err) {
        n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        buf_add(&data, chunk, (size_t)n);
    }
    if (n < 0) {
        snprintf(err, ARC_ERRLEN, "cannot read request: %s", strerror(errno));
    } else if (data.err) {
        snprintf(err, ARC_ERRLEN, "request file larger than %u bytes",
                 ARC_RELAY_MAX_FILE);
    } else {
        rc = relay_parse_envelope(buf_str(&data), r, err);
    }
done:
    close(fd);
    buf_free(&data);
    return rc;
}

/* Claim one request file, requests/<agent>/<file> with afd the agent's
 * directory (rename .json -> .work), and either queue it for the loop or
 * answer a malformed one with 400 at once. A request whose answer could
 * not be written (responses/<agent> is not a directory we can open) is
 * claimed but never executed. */
static void relay_take(Relay *rl, int afd, const char *agent, const char *file) {
    size_t n = strlen(file);
    if (n < 6 || n > 255 || strcmp(file + n - 5, ".json") != 0) return;
    char work[260];
    snprintf(work, sizeof work, "%.*s.work", (int)(n - 5), file);
    struct stat sb;
    if (clock_ms() < rl->starved_until) return;
    if (fstatat(afd, file, &sb, AT_SYMLINK_NOFOLLOW) || !S_ISREG(sb.st_mode)) return;
    if (renameat(afd, file, afd, work)) return;   /* another relay took it */
    RelayReq *r = xrealloc(NULL, sizeof *r);
    memset(r, 0, sizeof *r);
    r->owner = rl;
    r->agent = xstrndup(agent, strlen(agent));
    r->file_id = xstrndup(file, n - 5);
    char err[ARC_ERRLEN];
    int rc = relay_parse(afd, work, r, err);
    int rfd = rc == ARC_AGAIN ? -1 : relay_agent_dir(rl, "responses", agent, 1);
    if (rc == ARC_AGAIN || (rfd < 0 && relay_starved())) {
        relay_starve(rl);   /* unclaim it for the scan that follows */
        if (renameat(afd, work, afd, file)) {
            Buf a = { 0 }, f = { 0 };
            log_warn("relay: cannot unclaim requests/%s/%s", log_esc(&a, agent),
                     log_esc(&f, work));
            buf_free(&a), buf_free(&f);
        }
        relay_req_free(r);
        return;
    }
    if (rfd < 0) {
        relay_warn_unanswered(agent, r->file_id, "responses/<agent> is not a "
                              "directory we can write; not executed");
        relay_req_free(r);
        return;
    }
    close(rfd);
    if (rc) {
        r->status = 400;
        relay_answer(rl, r, err);
        relay_req_free(r);
        return;
    }
    if (rl->dispatch) {
        rl->dispatch(rl, r);
        return;
    }
    pthread_mutex_lock(&rl->mu);
    r->next = rl->to_loop;
    rl->to_loop = r;
    pthread_mutex_unlock(&rl->mu);
    ssize_t w = write(rl->loop_wake, "r", 1);
    (void)w;
}

/* The index of watch wd in rl->watches, or -(insertion point) - 1. */
static int relay_watch_find(const Relay *rl, int wd) {
    int lo = 0, hi = rl->n_watches;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (rl->watches[mid].wd == wd) return mid;
        if (rl->watches[mid].wd < wd) lo = mid + 1;
        else hi = mid;
    }
    return -lo - 1;
}

/* Add an inotify watch on the directory open as fd, named `path` (for
 * systems without /proc). Through /proc/self/fd the watch lands on exactly
 * the directory we hold, whatever the path names by now. Returns the wd or
 * -1. */
static int relay_add_watch(Relay *rl, int fd, const char *path, uint32_t mask) {
#ifdef __linux__
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    int wd = inotify_add_watch(rl->inotify_fd, proc, mask | IN_ONLYDIR);
    if (wd < 0 && errno == ENOENT)
        wd = inotify_add_watch(rl->inotify_fd, path, mask | IN_ONLYDIR | IN_DONT_FOLLOW);
    return wd;
#else
    (void)rl, (void)fd, (void)path, (void)mask;
    return -1;
#endif
}

/* Watch the agent directory open as afd (requests/<agent>). A directory
 * watched already (renamed, or seen again by a full scan) keeps its wd;
 * only its name is brought up to date. Returns 0, or -1 if no watch. */
static int relay_watch(Relay *rl, int afd, const char *agent) {
#ifdef __linux__
    if (rl->inotify_fd < 0) return -1;
    Buf path = { 0 };
    buf_addf(&path, "%s/requests/%s", rl->root, agent);
    int wd = relay_add_watch(rl, afd, path.p, IN_MOVED_TO | IN_CLOSE_WRITE);
    buf_free(&path);
    if (wd < 0) return -1;
    int i = relay_watch_find(rl, wd);
    if (i >= 0) {
        if (strcmp(rl->watches[i].name, agent)) {
            free(rl->watches[i].name);
            rl->watches[i].name = xstrndup(agent, strlen(agent));
        }
        return 0;
    }
    i = -i - 1;
    if (rl->n_watches == rl->cap_watches)
        rl->watches = vec_grow(rl->watches, &rl->cap_watches, sizeof *rl->watches);
    memmove(rl->watches + i + 1, rl->watches + i,
            (size_t)(rl->n_watches - i) * sizeof *rl->watches);
    rl->watches[i] = (RelayWatch){ wd, xstrndup(agent, strlen(agent)) };
    rl->n_watches++;
    return 0;
#else
    (void)rl, (void)afd, (void)agent;
    return -1;
#endif
}

/* Watch requests/<agent> and take every request waiting in it, oldest name
 * first. reqs_fd is requests/. */
static void relay_scan_agent(Relay *rl, int reqs_fd, const char *agent) {
    int afd = relay_open_dir(reqs_fd, agent, 0);
    if (afd < 0) {   /* gone, or not a directory: not an agent */
        if (relay_starved()) relay_starve(rl);
        return;
    }
    if (relay_watch(rl, afd, agent) && rl->inotify_fd >= 0) rl->n_unwatched++;
    int dfd = dup(afd);
    DIR *ad = dfd < 0 ? NULL : fdopendir(dfd);
    if (!ad) {
        relay_starve(rl);
        if (dfd >= 0) close(dfd);
        close(afd);
        return;
    }
    char **names = NULL;
    int n = 0, cap = 0;
    struct dirent *f;
    while ((f = readdir(ad))) {
        size_t len = strlen(f->d_name);
        if (len < 6 || strcmp(f->d_name + len - 5, ".json")) continue;
        if (n == cap) names = vec_grow(names, &cap, sizeof *names);
        names[n++] = xstrndup(f->d_name, len);
    }
    closedir(ad);
    if (n) qsort(names, (size_t)n, sizeof *names, cstr_cmp);
    for (int i = 0; i < n; i++) {
        relay_take(rl, afd, agent, names[i]);
        free(names[i]);
    }
    free(names);
    close(afd);
}

/* Scan every agent directory: at start, on inotify overflow, when the
 * root or requests/ changed, and as the backstop (see the design note). */
static void relay_scan(Relay *rl) {
    rl->n_unwatched = 0;
    int reqs_fd = relay_open_dir(rl->root_fd, "requests", 0);
    if (reqs_fd < 0) {
        if (relay_starved()) relay_starve(rl);
        return;
    }
    int dfd = dup(reqs_fd);
    DIR *d = dfd < 0 ? NULL : fdopendir(dfd);
    if (!d) {
        relay_starve(rl);
        if (dfd >= 0) close(dfd);
        close(reqs_fd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (relay_dot_name(e->d_name) || strlen(e->d_name) > 255) continue;
#ifdef DT_DIR
        if (e->d_type != DT_DIR && e->d_type != DT_UNKNOWN) continue;
#endif
        relay_scan_agent(rl, reqs_fd, e->d_name);
    }
    closedir(d);
    close(reqs_fd);
    if (rl->n_unwatched) {
        Buf r = { 0 };
        log_warn("relay: %d agent directories in %s/requests cannot be watched "
                 "(inotify watch limit?); scanning every %d ms", rl->n_unwatched,
                 log_esc(&r, rl->root), ARC_RELAY_SCAN_MS);
        buf_free(&r);
    }
}

/* When the next full scan is due after one that ran at `now`. */
static int64_t relay_next_scan(const Relay *rl, int64_t now) {
    int polled = rl->inotify_fd < 0 || rl->req_wd < 0 || rl->n_unwatched;
    return now + (polled ? ARC_RELAY_SCAN_MS : ARC_RELAY_RESCAN_MS);
}

/* Every ARC_RELAY_SCAN_MS: does the root path still name the root we hold,
 * and is the requests/ under it the one we watch? A new real directory at
 * the root path (the spool was removed and made again) is taken over; a
 * symlink or other file there is refused and the held root kept. A new
 * requests/ gets a watch. Either change makes a full scan due now. */
static void relay_check(Relay *rl) {
    struct stat sb;
    Buf p = { 0 };
    if (lstat(rl->root, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        if (sb.st_dev == rl->root_dev && sb.st_ino == rl->root_ino) {
            rl->root_moved = 0;
        } else {
            int fd = open(rl->root, RELAY_DIR_FLAGS);
            if (fd >= 0 && fstat(fd, &sb) == 0) {
                close(rl->root_fd);
                rl->root_fd = fd, fd = -1;
                rl->root_dev = sb.st_dev, rl->root_ino = sb.st_ino;
                rl->root_moved = 0;
                rl->req_ino = 0;
                rl->next_scan = 0;
            }
            if (fd >= 0) close(fd);
        }
    } else if (!rl->root_moved) {
        rl->root_moved = 1;
        log_warn("relay: %s is no longer the spool directory (a symlink, another "
                 "file, or gone); nothing is followed there, the directory held "
                 "since start is still served", log_esc(&p, rl->root));
    }
    if (fstatat(rl->root_fd, "requests", &sb, AT_SYMLINK_NOFOLLOW) || !S_ISDIR(sb.st_mode)) {
        if (!rl->req_bad) {
            buf_reset(&p);
            log_warn("relay: %s/requests is not a directory (a symlink?); ignored",
                     log_esc(&p, rl->root));
        }
        rl->req_bad = 1;
        buf_free(&p);
        return;
    }
    rl->req_bad = 0;
    buf_free(&p);
    if (sb.st_dev == rl->req_dev && sb.st_ino == rl->req_ino && rl->req_wd >= 0) return;
    rl->req_dev = sb.st_dev, rl->req_ino = sb.st_ino;
    rl->next_scan = 0;
#ifdef __linux__
    if (rl->inotify_fd < 0) return;
    int fd = relay_open_dir(rl->root_fd, "requests", 0);
    if (fd < 0) return;
    if (rl->req_wd >= 0) inotify_rm_watch(rl->inotify_fd, rl->req_wd);
    Buf path = { 0 };
    buf_addf(&path, "%s/requests", rl->root);
    rl->req_wd = relay_add_watch(rl, fd, path.p, IN_CREATE | IN_MOVED_TO);
    buf_free(&path);
    close(fd);
#endif
}

/* Write every answer the loop has handed back. */
static void relay_flush(Relay *rl) {
    pthread_mutex_lock(&rl->mu);
    RelayReq *list = rl->to_files, *again = NULL;
    rl->to_files = NULL;
    pthread_mutex_unlock(&rl->mu);
    while (list) {
        RelayReq *r = list;
        list = r->next;
        if (relay_answer(rl, r, NULL) == ARC_AGAIN) {
            r->next = again;   /* out of descriptors: the next tick retries */
            again = r;
            continue;
        }
        relay_req_free(r);
    }
    if (!again) return;
    pthread_mutex_lock(&rl->mu);
    for (RelayReq *r = again, *next; r; r = next) {
        next = r->next;
        r->next = rl->to_files;
        rl->to_files = r;
    }
    pthread_mutex_unlock(&rl->mu);
}

/* Handle inotify events: new agent directories and new request files. */
static void relay_events(Relay *rl) {
#ifdef __linux__
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    while ((n = read(rl->inotify_fd, buf, sizeof buf)) > 0) {
        int reqs_fd = -1;   /* requests/, opened once per batch when needed */
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)(void *)p;
            p += sizeof *ev + ev->len;
            if (ev->mask & IN_Q_OVERFLOW) {
                rl->next_scan = 0;   /* events were lost: scan everything */
                continue;
            }
            if (ev->mask & IN_IGNORED) {   /* the directory went away */
                int i = relay_watch_find(rl, ev->wd);
                if (ev->wd == rl->req_wd) rl->req_wd = -1;   /* relay_check */
                if (i < 0) continue;
                free(rl->watches[i].name);
                memmove(rl->watches + i, rl->watches + i + 1,
                        (size_t)(rl->n_watches - i - 1) * sizeof *rl->watches);
                rl->n_watches--;
                continue;
            }
            if (!ev->len || relay_dot_name(ev->name)) continue;
            if (reqs_fd < 0) reqs_fd = relay_open_dir(rl->root_fd, "requests", 0);
            if (reqs_fd < 0) {   /* not a directory now: relay_check */
                if (relay_starved()) relay_starve(rl);
                break;
            }
            if (ev->wd == rl->req_wd) {   /* a new agent directory: just it */
                if (ev->mask & IN_ISDIR) relay_scan_agent(rl, reqs_fd, ev->name);
                continue;
            }
            int i = relay_watch_find(rl, ev->wd);
            if (i < 0) continue;
            int afd = relay_open_dir(reqs_fd, rl->watches[i].name, 0);
            if (afd < 0) {
                if (relay_starved()) relay_starve(rl);
                continue;
            }
            relay_take(rl, afd, rl->watches[i].name, ev->name);
            close(afd);
        }
        if (reqs_fd >= 0) close(reqs_fd);
    }
#else
    (void)rl;
#endif
}

static void *relay_main(void *arg) {
    Relay *rl = arg;
    int64_t next_check = 0;
    for (;;) {
        pthread_mutex_lock(&rl->mu);
        int stop = rl->stop;
        pthread_mutex_unlock(&rl->mu);
        relay_flush(rl);
        if (stop) break;
        int64_t now = clock_ms();
        if (now >= next_check) {
            relay_check(rl);
            next_check = now + ARC_RELAY_SCAN_MS;
        }
        if (now >= rl->next_scan) {
            rl->next_scan = INT64_MAX;   /* the scan may ask for an earlier one */
            relay_scan(rl);
            int64_t next = relay_next_scan(rl, now);
            if (next < rl->next_scan) rl->next_scan = next;
        }
        struct pollfd p[2] = { { .fd = rl->wake_rd, .events = POLLIN },
                               { .fd = rl->inotify_fd, .events = POLLIN } };
        int np = rl->inotify_fd >= 0 ? 2 : 1;
        int64_t until = rl->next_scan < next_check ? rl->next_scan : next_check;
        int64_t wait = until - clock_ms();
        if (poll(p, (nfds_t)np, wait < 0 ? 0 : (int)wait) < 0 && errno != EINTR) break;
        if (p[0].revents) {
            char tmp[64];
            while (read(rl->wake_rd, tmp, sizeof tmp) > 0) {}
        }
        if (np == 2 && p[1].revents) relay_events(rl);
    }
    return NULL;
}

/* Create the spool directories, open the root and start the thread. */
static Relay *relay_start(const char *spool, int loop_wake, RelayDispatch dispatch,
                          const char *forward_url, const char *forward_token,
                          char err[ARC_ERRLEN]) {
    Relay *rl = xrealloc(NULL, sizeof *rl);
    memset(rl, 0, sizeof *rl);
    rl->loop_wake = loop_wake;
    rl->dispatch = dispatch;
    rl->forward_url = forward_url;
    rl->forward_token = forward_token;
    rl->inotify_fd = -1;
    rl->req_wd = -1;
    /* The path the user gave is followed once, here; the root is then
     * held by descriptor (realpath leaves no symlink in rl->root, and
     * O_NOFOLLOW refuses one swapped in since). */
    struct stat sb;
    rl->root_fd = -1;
    if (relay_mkdirs(spool) || !realpath(spool, rl->root) ||
        (rl->root_fd = open(rl->root, RELAY_DIR_FLAGS)) < 0 || fstat(rl->root_fd, &sb) ||
        (mkdirat(rl->root_fd, "requests", 0700) && errno != EEXIST) ||
        (mkdirat(rl->root_fd, "responses", 0700) && errno != EEXIST)) {
        snprintf(err, ARC_ERRLEN, "cannot create relay spool %s: %s", spool,
                 strerror(errno));
        if (rl->root_fd >= 0) close(rl->root_fd);
        free(rl);
        return NULL;
    }
    rl->root_dev = sb.st_dev, rl->root_ino = sb.st_ino;
    int pfd[2];
    if (pipe(pfd)) die("pipe: %s", strerror(errno));
    rl->wake_rd = pfd[0], rl->wake_wr = pfd[1];
    fd_nonblock(rl->wake_rd);
    fd_nonblock(rl->wake_wr);
    fcntl(rl->wake_rd, F_SETFD, FD_CLOEXEC);
    fcntl(rl->wake_wr, F_SETFD, FD_CLOEXEC);
#ifdef __linux__
    rl->inotify_fd = inotify_init();
    if (rl->inotify_fd >= 0) {
        fd_nonblock(rl->inotify_fd);
        fcntl(rl->inotify_fd, F_SETFD, FD_CLOEXEC);
    }
#endif
    pthread_mutex_init(&rl->mu, NULL);
    if (pthread_create(&rl->thread, NULL, relay_main, rl)) die("pthread_create");
    rl->thread_live = 1;
    return rl;
}

/* Loop side (or `arc relay`'s forward threads): hand an answered request
 * back to the thread that writes answer files; rl owns r from here. */
static void relay_done(Relay *rl, RelayReq *r) {
    pthread_mutex_lock(&rl->mu);
    r->next = rl->to_files;
    rl->to_files = r;
    pthread_mutex_unlock(&rl->mu);
    ssize_t w = write(rl->wake_wr, "d", 1);
    (void)w;
}

/* Loop side: take every queued request (oldest first). */
static RelayReq *relay_intake(Relay *rl) {
    pthread_mutex_lock(&rl->mu);
    RelayReq *lifo = rl->to_loop, *fifo = NULL;
    rl->to_loop = NULL;
    pthread_mutex_unlock(&rl->mu);
    while (lifo) {
        RelayReq *r = lifo;
        lifo = r->next;
        r->next = fifo;
        fifo = r;
    }
    return fifo;
}

/* Stop the thread, which first writes the answers already handed back. No
 * file is claimed after this returns, so whatever it claimed is in the
 * queue for the loop to serve before the hub exits; relay_stop() writes
 * those answers. */
static void relay_halt(Relay *rl) {
    if (!rl || !rl->thread_live) return;
    pthread_mutex_lock(&rl->mu);
    rl->stop = 1;
    pthread_mutex_unlock(&rl->mu);
    ssize_t w = write(rl->wake_wr, "q", 1);
    (void)w;
    pthread_join(rl->thread, NULL);
    rl->thread_live = 0;
}

/* After relay_halt (the thread is gone): give back the requests claimed
 * but not yet taken by the loop, renaming <id>.work to <id>.json unexecuted
 * so the next hub serves them. A busy hub stopped by SIGTERM can hold
 * thousands, more than its last turn serves before the drain gives up
 * (seen under ThreadSanitizer: 24,100 requests left as .work, which no
 * hub ever reads again). Returns how many were given back. */
static int relay_unclaim_pending(Relay *rl) {
    if (!rl) return 0;
    int n = 0;
    for (RelayReq *r = relay_intake(rl), *next; r; r = next) {
        next = r->next;
        char work[300], json[300];
        int afd = relay_agent_dir(rl, "requests", r->agent, 0);
        if (afd >= 0 &&
            (size_t)snprintf(work, sizeof work, "%s.work", r->file_id) < sizeof work &&
            (size_t)snprintf(json, sizeof json, "%s.json", r->file_id) < sizeof json &&
            renameat(afd, work, afd, json) == 0)
            n++;
        if (afd >= 0) close(afd);
        relay_req_free(r);
    }
    return n;
}

/* Halt, write every answer still pending, and free. */
static void relay_stop(Relay *rl) {
    if (!rl) return;
    relay_halt(rl);
    /* `arc relay`: let forwards in flight finish (bounded), then write
     * their answers here. */
    for (int64_t until = clock_ms() + 2000; clock_ms() < until;) {
        pthread_mutex_lock(&rl->mu);
        int busy = rl->n_forwarding;
        pthread_mutex_unlock(&rl->mu);
        if (!busy) break;
        struct timespec ts = { 0, 5 * 1000000 };
        nanosleep(&ts, NULL);
    }
    relay_flush(rl);
    pthread_mutex_lock(&rl->mu);
    int stuck = rl->n_forwarding;
    pthread_mutex_unlock(&rl->mu);
    if (stuck) return;   /* the process is exiting; forwards still use rl */
    for (RelayReq *r = relay_intake(rl); r;) {   /* never served: no answer */
        RelayReq *next = r->next;
        relay_req_free(r);
        r = next;
    }
    for (RelayReq *r = rl->to_files; r;) {   /* still out of descriptors */
        RelayReq *next = r->next;
        Buf a = { 0 }, f = { 0 };
        log_warn("relay: no answer written for %s/%s", log_esc(&a, r->agent),
                 log_esc(&f, r->file_id));
        buf_free(&a), buf_free(&f);
        relay_req_free(r);
        r = next;
    }
    if (rl->inotify_fd >= 0) close(rl->inotify_fd);
    close(rl->root_fd);
    close(rl->wake_rd), close(rl->wake_wr);
    pthread_mutex_destroy(&rl->mu);
    for (int i = 0; i < rl->n_watches; i++) free(rl->watches[i].name);
    free(rl->watches);
    free(rl);
}

/* ==== loop: the poller, connections, timers, parking, fan-out ============= */

/* One thread runs everything. Each turn: wait for readiness; read what
 * arrived; parse and handle complete requests (their writes join one batch
 * transaction); fire timers; COMMIT the batch; wake the parked requests and
 * streams that the committed messages match, from memory; then write.
 * Writing after the commit is what makes an acknowledged write durable,
 * and one commit per turn is what makes durability cheap under load (group
 * commit).
 *
 * A turn costs what is active, not what is open: the poller reports ready
 * descriptors (epoll on Linux), every conn the turn acts on goes on a
 * "touched" list, and only those are written, rescheduled and re-armed at
 * its end. Parked requests and streams sit in wait buckets by channel, so a
 * message wakes only the waiters that can match it.
 *
 * The hub never stops serving for want of resources: a connection beyond
 * --max-conns, or one that arrives while the process is out of descriptors,
 * is answered 503 and closed (loop_accept_emfile), a failed wait is logged
 * and retried, and a write that finds the database locked by another
 * process is retried on later turns instead of blocking the loop
 * (loop_retry_busy).
 *
 * All of this is the Loop's state; the model is the Hub it points to. The
 * loop drives the model through the handlers (hub_admit, hub_handle), the
 * turn (hub_turn_begin/open/commit/end, hub_foreign_commit), the shutdown
 * schedule (hub_shutdown_at/now) and the timer actions (timer_*), which
 * run in the batch like requests; the model never calls the loop. A
 * relayed request is a Conn without a socket: only its intake
 * (loop_relay_*) and its output sink (conn_respond, conn_send) differ. */

typedef enum {
    CONN_READ,     /* serving requests (and writing their responses) */
    CONN_PARKED,   /* long-poll: waiting for a message or its deadline */
    CONN_STREAM,   /* SSE: writes whenever a matching message commits */
    CONN_DEAD      /* freed at the end of the turn, never earlier */
} ConnState;

typedef struct Conn Conn;

/* /mcp calls that park (docs/MCP.md) are the mcp section's, below the
 * loop: the loop tells it when a conn holding one goes away, and asks it
 * which calls notifications/cancelled or DELETE /mcp ended. */
static void mcp_hub_forget(Hub *h, uint64_t call);
static uint64_t mcp_hub_cancelled(Hub *h);
static void mcp_hub_free(Hub *h);   /* serve_stop: the hub's /mcp state */

/* The parked requests and streams that wait on one channel (Wait.channel),
 * or, in Loop.wb_any, on any channel. */
typedef struct WaitBucket {
    struct WaitBucket *next;   /* hash chain in Loop.wb */
    char *channel;             /* owned; NULL for Loop.wb_any */
    uint32_t hash;
    Conn *head;                /* linked through Conn.wprev/wnext */
    int64_t stamp;             /* fan-out pass that last visited it */
} WaitBucket;

struct Conn {
    Conn *prev, *next;       /* Loop.conns */
    int fd;
    int poll_slot;           /* poll() backend: index in its set, or -1 */
    unsigned ev;             /* events the poller watches for it now */
    ConnState state;
    Buf in, out;             /* in: unconsumed input; out: out_off sent */
    size_t out_off;
    int64_t deadline_ms;     /* next timer for this conn; 0 = none */
    int heap_idx;            /* position in Loop.heap, -1 if absent */
    int64_t active_ms;       /* last read/write progress */
    int64_t req_ms;          /* first byte of an incomplete head, or 0 */
    int64_t body_ms;         /* end of the head of an incomplete body, or 0 */
    int64_t retry_ms;        /* its write found the lock taken: retry then */
    int64_t busy_since_ms;   /* first try of the request being retried */
    int64_t park_until_ms;   /* PARKED: when to answer [] */
    Wait wait;               /* PARKED/STREAM filter */
    WaitBucket *bucket;      /* PARKED/STREAM: the bucket that holds it */
    Conn *wprev, *wnext;     /* ... and its neighbours there */
    RelayReq *relay;         /* owned: a relayed request (fd is -1) */
    uint64_t mcp_call;       /* a parked /mcp call (its request stays in
                              * `in` or `relay` to run again), or 0 */
    size_t held_from;        /* out offset where uncommitted answers start */
    unsigned keep_alive : 1; /* the current request allows reuse */
    unsigned close_after : 1;/* close once out is drained */
    unsigned peer_closed : 1;/* read returned 0 */
    unsigned held : 1;       /* in Loop.held this turn */
    unsigned behind : 1;     /* STREAM: backlog not yet fully queued */
    unsigned touched : 1;    /* in Loop.touched */
    unsigned fed : 1;        /* input arrived since the parser asked for more */
};

/* ---- the poller: epoll where there is one, poll() elsewhere ---- */

/* The loop registers descriptors with a tag (a Conn, or one of its own
 * fds) and the events it wants: POLLIN and/or POLLOUT, the poll.h bits in
 * both backends; hang-ups and errors are always reported. With epoll a
 * wait costs what is ready, not what is open: 10,000 parked long-polls used
 * to make every turn scan 10,000 descriptors, in the kernel and in arc,
 * and cut POST throughput by 8x. The poll() backend keeps the hub portable
 * (the protocol asks only for POSIX); -DARC_POLL selects it on Linux too
 * (ARC_EPOLL is decided next to the includes). */
#define POLLER_MAX_EV 1024   /* ready events taken per wait */

typedef struct {
    void *tag;
    unsigned revents;
} PollEv;

typedef struct Poller {
    PollEv ev[POLLER_MAX_EV];   /* the last wait's results */
#ifdef ARC_EPOLL
    int epfd;
    struct epoll_event raw[POLLER_MAX_EV];
#else
    struct pollfd *pfd;         /* owned: one per registered fd */
    void **tag;                 /* owned: pfd[i]'s tag */
    int **slot;                 /* owned: where pfd[i]'s index is kept */
    int n, cap;
#endif
} Poller;

static int poller_open(Poller *p) {
#ifdef ARC_EPOLL
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    return p->epfd < 0 ? -1 : 0;
#else
    p->pfd = NULL, p->tag = NULL, p->slot = NULL, p->n = p->cap = 0;
    return 0;
#endif
}

static void poller_close(Poller *p) {
#ifdef ARC_EPOLL
    close(p->epfd);
#else
    free(p->pfd), free(p->tag), free(p->slot);
#endif
}

/* Watch fd for `ev` (0: only hang-ups), registering it on first use; *slot
 * is the caller's registration handle, -1 while unregistered. Returns 0, or
 * -1 when the kernel cannot watch it (epoll: ENOMEM, or ENOSPC past
 * max_user_watches); the caller then drops that connection. */
static int poller_watch(Poller *p, int fd, void *tag, int *slot, unsigned ev) {
#ifdef ARC_EPOLL
    struct epoll_event e = { .events = (ev & POLLIN ? EPOLLIN : 0u) |
                                       (ev & POLLOUT ? EPOLLOUT : 0u),
                             .data.ptr = tag };
    int op = *slot < 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    if (epoll_ctl(p->epfd, op, fd, &e)) return -1;
    *slot = 0;
#else
    if (*slot < 0) {
        if (p->n == p->cap) {
            p->cap = p->cap ? p->cap * 2 : 64;
            p->pfd = xrealloc(p->pfd, (size_t)p->cap * sizeof *p->pfd);
            p->tag = xrealloc(p->tag, (size_t)p->cap * sizeof *p->tag);
            p->slot = xrealloc(p->slot, (size_t)p->cap * sizeof *p->slot);
        }
        *slot = p->n++;
        p->tag[*slot] = tag;
        p->slot[*slot] = slot;
    }
    p->pfd[*slot] = (struct pollfd){ .fd = fd, .events = (short)ev };
#endif
    return 0;
}

/* Forget fd before it is closed. (epoll forgets a closed descriptor by
 * itself; arc never duplicates one.) */
static void poller_forget(Poller *p, int *slot) {
#ifdef ARC_EPOLL
    (void)p;
#else
    int i = *slot;
    if (i < 0) return;
    if (i != --p->n) {
        p->pfd[i] = p->pfd[p->n];
        p->tag[i] = p->tag[p->n];
        p->slot[i] = p->slot[p->n];
        *p->slot[i] = i;
    }
#endif
    *slot = -1;
}

/* Wait up to timeout_ms for readiness. Returns how many entries of p->ev
 * were filled (0 on timeout or EINTR), or -1 with errno when the wait
 * itself failed (ENOMEM: the caller backs off and waits again). */
static int poller_wait(Poller *p, int timeout_ms) {
    int n = 0;
#ifdef ARC_EPOLL
    int k = epoll_wait(p->epfd, p->raw, POLLER_MAX_EV, timeout_ms);
    if (k < 0 && errno != EINTR) return -1;
    for (int i = 0; i < k; i++) {
        unsigned e = p->raw[i].events;
        p->ev[n++] = (PollEv){ p->raw[i].data.ptr,
                               (e & EPOLLIN ? POLLIN : 0u) | (e & EPOLLOUT ? POLLOUT : 0u) |
                               (e & EPOLLHUP ? POLLHUP : 0u) | (e & EPOLLERR ? POLLERR : 0u) };
    }
#else
    int k = poll(p->pfd, (nfds_t)p->n, timeout_ms);
    if (k < 0 && errno != EINTR) return -1;
    for (int i = 0; i < p->n && k > 0 && n < POLLER_MAX_EV; i++)
        if (p->pfd[i].revents) {
            p->ev[n++] = (PollEv){ p->tag[i], (unsigned)p->pfd[i].revents };
            k--;
        }
#endif
    return n;
}

/* ---- the Loop: everything the event loop owns ---- */

/* All state of the event loop; the model it serves is behind `hub`. Loop
 * thread only, except what Sender hands to its threads for a fan-out. */
typedef struct Loop {
    Hub *hub;                    /* borrowed: the model, outlives the loop */
    int64_t now_ms;              /* read once per turn */
    /* descriptors and the poller */
    Poller *poller;              /* owned: readiness of all our fds */
    int listen_fd;               /* owned (serve_start opens it) */
    int wake_rd, wake_wr;        /* owned: self-pipe (signals, the relay) */
    int wal_watch;               /* owned: inotify on the -wal file, or -1 */
    int spare_fd;                /* held open to shed load on EMFILE, or -1 */
    int wake_slot, listen_slot, wal_slot;   /* their poller handles */
    unsigned listen_ev, wal_ev;  /* what the listener, the watch are watched for */
    int64_t accept_pause_until;  /* EMFILE back-off without a spare fd */
    int64_t warned_ms;           /* last EMFILE/poll warning (rate limit) */
    /* connections */
    Conn *conns;                 /* owned: all client connections */
    int n_conns;                 /* conns, relayed ones included */
    int n_sockets;               /* conns with a socket: cfg.max_conns */
    Conn **touched;              /* conns this turn acted on */
    int n_touched, cap_touched;
    Conn **held;                 /* conns whose responses await the commit */
    int n_held, cap_held;
    struct Relay *relay;         /* owned: the spool thread, or NULL */
    /* timers */
    Conn **heap;                 /* min-heap of conns by deadline_ms */
    int n_heap, cap_heap;
    int64_t next_prune_ms, next_touch_ms;   /* timer actions (timer_*) */
    int64_t next_dv_ms;          /* next PRAGMA data_version check */
    int64_t dv_until_ms;         /* re-check data_version until then */
    int64_t dv_step_ms;          /* the re-check interval, doubling */
    /* waiters and fan-out */
    struct WaitBucket **wb;      /* waiting conns by channel: hash table */
    int n_wb, cap_wb;
    struct WaitBucket *wb_any;   /* owned: those waiting on any channel */
    int n_parked;                /* conns parked or streaming */
    int64_t fan_stamp;           /* fan-out passes (WaitBucket.stamp) */
    int *fan_idx, *fan_tmp;      /* fan-out: the shared answer's matches */
    int fan_n, cap_fan, fan_key; /* ... how many; its conn_share_key() */
    Buf fan_resp;                /* ... and its bytes */
    struct Sender *sender;       /* owned: threads for large fan-outs */
    int sending;                 /* this fan-out's writes go to them */
} Loop;

/* ---- invariants, checked in test builds ---- */

/* The timer heap and the wait buckets keep invariants that a slip would
 * break silently (a deadline that never fires, a waiter never woken).
 * Checking them is O(n), so they are asserted after every change only
 * when ARC_CHECK_INVARIANTS is 1: tests/unit.c sets it before it includes
 * this file; the tuned loop of a normal build never pays for them. */
#ifndef ARC_CHECK_INVARIANTS
#define ARC_CHECK_INVARIANTS 0
#endif
#if ARC_CHECK_INVARIANTS
static int heap_valid(const Loop *l);
static int loop_buckets_valid(const Loop *l);
#define LOOP_CHECK(x) assert(x)
#else
#define LOOP_CHECK(x) ((void)0)
#endif

/* ---- timer heap: every conn with a deadline, earliest on top ---- */

static void heap_swap(Loop *l, int a, int b) {
    Conn *t = l->heap[a];
    l->heap[a] = l->heap[b];
    l->heap[b] = t;
    l->heap[a]->heap_idx = a;
    l->heap[b]->heap_idx = b;
}

static void heap_up(Loop *l, int i) {
    while (i > 0) {
        int p = (i - 1) / 2;
        if (l->heap[p]->deadline_ms <= l->heap[i]->deadline_ms) break;
        heap_swap(l, p, i);
        i = p;
    }
}

static void heap_down(Loop *l, int i) {
    for (;;) {
        int lc = 2 * i + 1, rc = lc + 1, m = i;
        if (lc < l->n_heap && l->heap[lc]->deadline_ms < l->heap[m]->deadline_ms) m = lc;
        if (rc < l->n_heap && l->heap[rc]->deadline_ms < l->heap[m]->deadline_ms) m = rc;
        if (m == i) break;
        heap_swap(l, i, m);
        i = m;
    }
}

/* Take c out of the heap (if it is in it) and restore the order. */
static void heap_remove(Loop *l, Conn *c) {
    int i = c->heap_idx;
    if (i < 0) return;
    c->heap_idx = -1;
    if (--l->n_heap == i) return;
    l->heap[i] = l->heap[l->n_heap];
    l->heap[i]->heap_idx = i;
    heap_up(l, i);
    heap_down(l, l->heap[i]->heap_idx);
    LOOP_CHECK(heap_valid(l));
}

/* Set (or clear, with 0) a conn's deadline and restore the heap order. */
static void heap_set(Loop *l, Conn *c, int64_t deadline) {
    if (!deadline) {
        heap_remove(l, c);
        c->deadline_ms = 0;
        return;
    }
    c->deadline_ms = deadline;
    if (c->heap_idx < 0) {
        if (l->n_heap == l->cap_heap)
            l->heap = vec_grow(l->heap, &l->cap_heap, sizeof *l->heap);
        c->heap_idx = l->n_heap++;
        l->heap[c->heap_idx] = c;
    }
    heap_up(l, c->heap_idx);
    heap_down(l, c->heap_idx);
    LOOP_CHECK(heap_valid(l));
}

/* Where c's sendable output ends: answers that wait for this turn's
 * commit stay queued, and everything behind them waits too. */
static size_t conn_send_end(const Conn *c) {
    return c->held && c->held_from < c->out.len ? c->held_from : c->out.len;
}

/* Derive a conn's deadline from its state (PROTOCOL §4.3 timeouts). A head
 * or body deadline counts from when it started, not from the last byte, so
 * a client trickling bytes cannot stretch it. */
static void conn_schedule(Loop *l, Conn *c) {
    int64_t d;
    if (c->retry_ms && c->state == CONN_READ) {
        d = c->retry_ms;
        if (d != c->deadline_ms || c->heap_idx < 0) heap_set(l, c, d);
        return;
    }
    switch (c->state) {
    case CONN_DEAD: d = 0; break;
    case CONN_PARKED: d = c->park_until_ms; break;
    case CONN_STREAM:
        /* A stream with sendable output waits for the reader, up to the
         * idle timeout; one without gets its heartbeat. */
        d = c->active_ms + (c->out_off < conn_send_end(c) ? l->hub->cfg.idle_ms
                                                          : ARC_HEARTBEAT_MS);
        break;
    default:
        if (c->out_off < c->out.len) d = c->active_ms + l->hub->cfg.idle_ms;
        else if (c->body_ms) d = c->body_ms + l->hub->cfg.body_ms;
        else if (c->req_ms) d = c->req_ms + l->hub->cfg.head_ms;
        else d = c->active_ms + l->hub->cfg.idle_ms;
    }
    if (d != c->deadline_ms || (d && c->heap_idx < 0)) heap_set(l, c, d);
}


/* ---- connections ---- */

/* Put c on this turn's list of conns to finish (write, reschedule, re-arm,
 * free) at its end. */
static void loop_touch(Loop *l, Conn *c) {
    if (c->touched) return;
    c->touched = 1;
    if (l->n_touched == l->cap_touched)
        l->touched = vec_grow(l->touched, &l->cap_touched, sizeof *l->touched);
    l->touched[l->n_touched++] = c;
}

/* FNV-1a: channel names to wait buckets. */
static uint32_t loop_hash(const char *s) {
    uint32_t x = 2166136261u;
    for (; *s; s++) x = (x ^ (unsigned char)*s) * 16777619u;
    return x;
}

/* The bucket for `channel`, or NULL; `make` creates it. */
static WaitBucket *loop_bucket(Loop *l, const char *channel, int make) {
    uint32_t x = loop_hash(channel);
    if (l->cap_wb) {
        for (WaitBucket *b = l->wb[x & (uint32_t)(l->cap_wb - 1)]; b; b = b->next)
            if (b->hash == x && !strcmp(b->channel, channel)) return b;
    }
    if (!make) return NULL;
    if (l->n_wb >= l->cap_wb) {   /* grow (and rehash) at load factor 1 */
        int cap = l->cap_wb ? l->cap_wb * 2 : 16;
        WaitBucket **t = xrealloc(NULL, (size_t)cap * sizeof *t);
        memset(t, 0, (size_t)cap * sizeof *t);
        for (int i = 0; i < l->cap_wb; i++)
            for (WaitBucket *b = l->wb[i], *next; b; b = next) {
                next = b->next;
                b->next = t[b->hash & (uint32_t)(cap - 1)];
                t[b->hash & (uint32_t)(cap - 1)] = b;
            }
        free(l->wb);
        l->wb = t;
        l->cap_wb = cap;
    }
    WaitBucket *b = xrealloc(NULL, sizeof *b);
    *b = (WaitBucket){ .channel = xstrndup(channel, strlen(channel)), .hash = x };
    b->next = l->wb[x & (uint32_t)(l->cap_wb - 1)];
    l->wb[x & (uint32_t)(l->cap_wb - 1)] = b;
    l->n_wb++;
    return b;
}

/* c starts waiting (PARKED or STREAM, its Wait set): file it by channel. */
static void loop_wait_add(Loop *l, Conn *c) {
    WaitBucket *b = c->wait.channel ? loop_bucket(l, c->wait.channel, 1) : l->wb_any;
    c->bucket = b;
    c->wprev = NULL;
    c->wnext = b->head;
    if (b->head) b->head->wprev = c;
    b->head = c;
    l->n_parked++;
    LOOP_CHECK(loop_buckets_valid(l));
}

/* c stops waiting: unfile it, freeing its bucket once empty. */
static void loop_wait_del(Loop *l, Conn *c) {
    WaitBucket *b = c->bucket;
    if (!b) return;
    if (c->wprev) c->wprev->wnext = c->wnext;
    else b->head = c->wnext;
    if (c->wnext) c->wnext->wprev = c->wprev;
    c->bucket = NULL;
    c->wprev = c->wnext = NULL;
    l->n_parked--;
    if (!b->head && b != l->wb_any) {   /* the last waiter: drop the bucket */
        WaitBucket **pp = &l->wb[b->hash & (uint32_t)(l->cap_wb - 1)];
        while (*pp != b) pp = &(*pp)->next;
        *pp = b->next;
        free(b->channel);
        free(b);
        l->n_wb--;
    }
    LOOP_CHECK(loop_buckets_valid(l));
}

/* Every waiting conn, in a new array the caller frees (the waits may
 * change while it is worked through); *n gets the count. */
static Conn **loop_waiters(Loop *l, int *n) {
    Conn **all = xrealloc(NULL, (size_t)(l->n_parked + 1) * sizeof *all);
    int k = 0;
    for (Conn *c = l->wb_any->head; c; c = c->wnext) all[k++] = c;
    for (int i = 0; i < l->cap_wb; i++)
        for (WaitBucket *b = l->wb[i]; b; b = b->next)
            for (Conn *c = b->head; c; c = c->wnext) all[k++] = c;
    assert(k == l->n_parked);
    *n = k;
    return all;
}

#if ARC_CHECK_INVARIANTS
/* Is every heap entry at its heap_idx, with a deadline, and no earlier
 * than its parent? */
static int heap_valid(const Loop *l) {
    for (int i = 0; i < l->n_heap; i++) {
        const Conn *c = l->heap[i];
        if (c->heap_idx != i || !c->deadline_ms) return 0;
        if (i && l->heap[(i - 1) / 2]->deadline_ms > c->deadline_ms) return 0;
    }
    return 1;
}

/* Is every waiter in the bucket of its channel (Loop.wb_any without one),
 * correctly linked, every bucket but wb_any non-empty and in the slot of
 * its hash, and are n_parked and n_wb the counts? One bucket, counting
 * its waiters into *n: */
static int loop_bucket_valid(const WaitBucket *b, int *n) {
    const Conn *prev = NULL;
    for (const Conn *c = b->head; c; prev = c, c = c->wnext, ++*n) {
        if (c->bucket != b || c->wprev != prev) return 0;
        if (c->state != CONN_PARKED && c->state != CONN_STREAM) return 0;
        if (!b->channel != !c->wait.channel) return 0;
        if (b->channel && strcmp(b->channel, c->wait.channel)) return 0;
    }
    return 1;
}

/* ... over wb_any and every bucket in the table. */
static int loop_buckets_valid(const Loop *l) {
    int n = 0, n_wb = 0;
    if (!l->wb_any || l->wb_any->channel || !loop_bucket_valid(l->wb_any, &n)) return 0;
    for (int i = 0; i < l->cap_wb; i++)
        for (const WaitBucket *b = l->wb[i]; b; b = b->next, n_wb++) {
            if (!b->head || !b->channel || b->hash != loop_hash(b->channel)) return 0;
            if ((b->hash & (uint32_t)(l->cap_wb - 1)) != (uint32_t)i) return 0;
            if (!loop_bucket_valid(b, &n)) return 0;
        }
    return n == l->n_parked && n_wb == l->n_wb;
}
#endif

/* c is done: out of its bucket and the heap, freed at the turn's end. */
static void conn_kill(Loop *l, Conn *c) {
    if (c->state == CONN_PARKED || c->state == CONN_STREAM) loop_wait_del(l, c);
    c->state = CONN_DEAD;
    heap_remove(l, c);
    loop_touch(l, c);
}

/* ---- output sinks: a socket, or a relayed request's answer ---- */

/* A conn's answers go to one of two sinks. A socket (fd >= 0) gets HTTP
 * responses. A request the relay thread took from the spool (Conn.relay,
 * fd -1) gets one answer, status and body without a head, which the relay
 * thread writes to a file. Only the functions here and the relay's intake
 * (loop_relay_*) tell the two apart: parsing aside, parking, holding for
 * the commit, fan-out and timers treat both alike. */

/* Two conns with the same key get the same bytes for the same answer (the
 * fan-out builds one and copies it): keep-alive or not, or headless. */
static int conn_share_key(const Conn *c) { return c->relay ? 2 : c->keep_alive; }

/* Queue a complete response. A socket closes after it unless the request
 * allowed keep-alive; a relayed conn always ends with its one answer. */
static void conn_respond(Loop *l, Conn *c, int status, const char *ctype,
                         const char *extra, Str body) {
    if (c->relay) {          /* the relay writes the answer file, no head */
        c->relay->status = status;
        buf_reset(&c->out);
        buf_addstr(&c->out, body);
        c->close_after = 1;
        return;
    }
    if (!c->keep_alive) c->close_after = 1;
    char hdr[640], *p = hdr;   /* the extra lines are static and short */
    p = stpcpy(p, "X-Arc-Instance: ");
    p = stpcpy(p, hub_instance(l->hub));
    p = stpcpy(p, "\r\n");
    if (extra && strlen(extra) < sizeof hdr - (size_t)(p - hdr)) stpcpy(p, extra);
    http_head(&c->out, status, ctype ? ctype : "application/json",
              (long long)body.n, !c->close_after, hdr);
    buf_addstr(&c->out, body);
}

/* Queue `bytes`: a 200 answer that conn_respond() made for a conn with the
 * same conn_share_key(). */
static void conn_respond_copy(Conn *c, Str bytes) {
    if (c->relay) {
        c->relay->status = 200;
        buf_reset(&c->out);
        c->close_after = 1;
    } else if (!c->keep_alive) {
        c->close_after = 1;
    }
    buf_addstr(&c->out, bytes);
}

/* Send c->out up to `end`: write it to the socket as far as it takes it,
 * or hand a relayed conn's complete answer to the relay thread (c->out is
 * then empty, and the conn is closed like a socket that sent its last
 * response). Returns 1 if anything went, 0 if not, -1 if the connection
 * failed. Touches only c->fd or c->relay, c->out and c->out_off, so a
 * sender thread may run it (see "parallel sends"). */
static int conn_send(Conn *c, size_t end) {
    if (c->relay) {
        if (c->state != CONN_READ || !c->close_after || !end || end != c->out.len)
            return 0;   /* no answer yet, or it waits for the commit */
        RelayReq *r = c->relay;
        c->relay = NULL;
        r->answer = c->out;        /* hand-off: the request owns it now */
        c->out = (Buf){ 0 };
        relay_done(r->owner, r);   /* and the relay thread owns the request */
        return 1;
    }
    int wrote = 0;
    while (c->out_off < end) {
        ssize_t w = write(c->fd, c->out.p + c->out_off, end - c->out_off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (w <= 0) return -1;
        c->out_off += (size_t)w;
        wrote = 1;
    }
    return wrote;
}

/* Release c's sink when c is freed: close the socket, or drop a relayed
 * request that was never answered (the hub is stopping). */
static void conn_close(Loop *l, Conn *c) {
    if (c->fd >= 0) {
        poller_forget(l->poller, &c->poll_slot);
        close(c->fd);
        l->n_sockets--;
    }
    if (c->relay) relay_req_free(c->relay);
    c->fd = -1;
    c->relay = NULL;
}

/* A framing error: answer with the JSON envelope and close (PROTOCOL §4). */
static void conn_error(Loop *l, Conn *c, int status, const char *msg) {
    Buf b = { 0 };
    buf_adds(&b, "{\"ok\":false,\"error\":");
    json_cstr(&b, msg);
    buf_addc(&b, '}');
    c->close_after = 1;
    c->keep_alive = 0;
    conn_respond(l, c, status, NULL, NULL, buf_str(&b));
    buf_free(&b);
    buf_reset(&c->in);
    c->req_ms = c->body_ms = 0;
}

/* Remember that c's output since `mark` depends on this turn's commit. */
static void loop_hold(Loop *l, Conn *c, size_t mark) {
    if (c->held) {
        if (mark < c->held_from) c->held_from = mark;
        return;
    }
    c->held = 1;
    c->held_from = mark;
    if (l->n_held == l->cap_held)
        l->held = vec_grow(l->held, &l->cap_held, sizeof *l->held);
    l->held[l->n_held++] = c;
}

/* c's output from `mark` on was made from the database: if this turn's
 * batch is open, it may show uncommitted writes and waits for the commit. */
static void loop_depend(Loop *l, Conn *c, size_t mark) {
    if (hub_turn_open(l->hub)) loop_hold(l, c, mark);
}

/* Append one SSE event (PROTOCOL §8.4). */
static void loop_sse_event(Conn *c, int64_t id, Str json) {
    buf_adds(&c->out, "id: ");
    buf_add_i64(&c->out, id);
    buf_adds(&c->out, "\ndata: ");
    buf_addstr(&c->out, json);
    buf_adds(&c->out, "\n\n");
    if (id > c->wait.since_id) c->wait.since_id = id;
}

/* Queue the backlog of a stream, at most one query's worth (and about
 * ARC_MAX_OUT / 4 bytes) per call; the rest follows as the client drains
 * its output (Conn.behind), so a long backlog of large messages never
 * trips the slow-reader limit by itself. */
static void loop_stream_fill(Loop *l, Conn *c) {
    sqlite3_stmt *st = hub_wait_stmt(l->hub, &c->wait, 0);
    Buf msg = { 0 };
    int n = 0;
    loop_depend(l, c, c->out.len);
    c->behind = 0;
    int64_t id;
    while (st && hub_wait_next(l->hub, st, !n, &msg, &id)) {
        loop_sse_event(c, id, buf_str(&msg));
        if (++n < c->wait.limit && c->out.len - c->out_off > ARC_MAX_OUT / 4) {
            c->behind = 1;
            break;
        }
    }
    if (st) sqlite3_reset(st);
    buf_free(&msg);
    if (n >= c->wait.limit) c->behind = 1;
}

/* Turn a handler's Res into output, a parked wait, or a stream. */
static void loop_finish(Loop *l, Conn *c, Res *r) {
    uint64_t was = c->mcp_call;   /* an /mcp call parks, or ends */
    c->mcp_call = r->park ? r->mcp_call : 0;
    if (was && was != c->mcp_call) mcp_hub_forget(l->hub, was);
    if (r->raw) {   /* an SSE answer to /mcp already begun */
        buf_addstr(&c->out, buf_str(&r->body));
        if (!r->park) c->close_after = 1;
    }
    if (r->stream) {
        buf_adds(&c->out, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"
                 "X-Arc-Instance: ");
        buf_adds(&c->out, hub_instance(l->hub));
        buf_adds(&c->out, "\r\nConnection: close\r\n\r\nretry: 1000\n\n");
        c->state = CONN_STREAM;
        c->wait = r->wait;                 /* hand-off: the conn owns it */
        memset(&r->wait, 0, sizeof r->wait);
        c->close_after = 0;
        loop_wait_add(l, c);
        loop_stream_fill(l, c);
        return;
    }
    if (r->park) {
        c->state = CONN_PARKED;
        c->wait = r->wait;                 /* hand-off: the conn owns it */
        memset(&r->wait, 0, sizeof r->wait);
        c->park_until_ms = l->now_ms + r->wait_ms;
        loop_wait_add(l, c);
        return;
    }
    if (!r->raw) conn_respond(l, c, r->status, r->ctype, r->extra, buf_str(&r->body));
}

static void loop_mcp_again(Loop *l, Conn *c);

/* The parked /mcp calls that notifications/cancelled or DELETE /mcp
 * cancelled run once more, now, to end their HTTP answers without a
 * JSON-RPC one (202, or the end of an SSE stream). */
static void loop_mcp_cancels(Loop *l) {
    uint64_t id;
    while ((id = mcp_hub_cancelled(l->hub)))
        for (Conn *c = l->conns; c; c = c->next)
            if (c->mcp_call == id && c->state == CONN_PARKED) loop_mcp_again(l, c);
}

/* A request whose write found the storage locked by another process (a
 * second hub, a sqlite3 shell) is not answered 503 at once: its answer is
 * dropped and it is handled again ARC_BUSY_RETRY_MS later, for up to
 * ARC_BUSY_MS, without blocking the loop meanwhile (PROTOCOL §10.2). Only
 * a failed BEGIN sets q->busy, so the request wrote nothing. Returns 1
 * when c is to retry (conn_schedule sets its timer; loop_timers clears
 * retry_ms when it fires, and c is served again from the touched list). */
static int loop_retry_busy(Loop *l, Conn *c, const Req *q, const Res *r) {
    if (!q->busy || r->status != 503) {
        c->busy_since_ms = 0;
        return 0;
    }
    if (!c->busy_since_ms) c->busy_since_ms = l->now_ms;
    if (l->now_ms - c->busy_since_ms >= ARC_BUSY_MS) {
        c->busy_since_ms = 0;   /* waited long enough: answer the 503 */
        return 0;
    }
    c->retry_ms = l->now_ms + ARC_BUSY_RETRY_MS;
    return 1;
}

/* A request whose head has arrived but whose body has not: decide now
 * whether it may be served at all (PROTOCOL §2.5), so that a refused
 * request is answered at once instead of holding up to the request cap in
 * memory first (with a token, 48 unauthenticated 8 MiB bodies pinned
 * ~400 MB). Called once per request, when its body is first found
 * incomplete, after the framing checks. Admitted: a client that sent
 * `Expect: 100-continue` waits for "100 Continue" before the body (curl,
 * for a second, for bodies over 1 MiB), so it gets one; HTTP/1.0 clients
 * get no interim answers (RFC 9110 §15.2). Refused: the answer now, and
 * the connection closes, since the client may or may not send the body
 * (PROTOCOL §4.2). Returns 1 if c was answered. */
static int loop_admit_early(Loop *l, Conn *c, const HttpReq *hr) {
    if (c->relay) return 0;   /* the relay is not admitted (§2) */
    Res r = { 0 };
    int refused = hub_admit(l->hub, hr, &r) != 0;
    if (!refused && hr->expect_continue && hr->minor == 1)
        buf_adds(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
    if (refused) {
        c->keep_alive = 0;
        conn_respond(l, c, r.status, NULL, r.extra, buf_str(&r.body));
        buf_reset(&c->in);
        c->req_ms = c->body_ms = 0;
    }
    res_free(&r);
    return refused;
}

/* Parse and handle every complete request in c->in, in order, until one
 * parks, the input runs out, enough output is queued, or a write must
 * wait for another process's lock. */
static void loop_process(Loop *l, Conn *c) {
    /* An incomplete request with no new input is as incomplete as before:
     * re-parsing it every turn is what a thousand slow clients would cost. */
    if ((c->req_ms || c->body_ms) && !c->fed) return;
    c->fed = 0;
    while (c->state == CONN_READ && !c->close_after && c->in.len &&
           !c->retry_ms && c->out.len - c->out_off < ARC_MAX_OUT / 4) {
        HttpReq hr;
        int64_t n = http_frame(c->in.p, c->in.len, l->hub->max_request_bytes, &hr);
        if (n == ARC_AGAIN && !hr.head_len) {
            if (!c->req_ms) c->req_ms = l->now_ms;
            break;
        }
        if (n == ARC_AGAIN) {
            if (!c->body_ms && !loop_admit_early(l, c, &hr)) c->body_ms = l->now_ms;
            break;
        }
        if (n == ARC_BAD) {
            conn_error(l, c, hr.err_status, hr.err_msg);
            break;
        }
        c->keep_alive = hr.keep_alive;
        Req q = { .method = hr.method, .query = hr.query,
                  .last_event_id = hr.last_event_id, .hr = &hr,
                  .mcp_call = c->mcp_call };
        Res r = { 0 };
        size_t mark = c->out.len;
        int known = str_eq(hr.method, "GET") || str_eq(hr.method, "POST") ||
                    str_eq(hr.method, "DELETE") || str_eq(hr.method, "PUT");
        if (!known) c->keep_alive = 0;   /* its body, if any, is not ours */
        if (hub_admit(l->hub, &hr, &r) == 0) {   /* PROTOCOL §2 */
            hub_handle(l->hub, &q, hr.path, hr.body, &r);
            if (loop_retry_busy(l, c, &q, &r)) {   /* keep the input, no answer */
                req_free(&q);
                res_free(&r);
                c->req_ms = c->body_ms = 0;
                break;
            }
        }
        loop_finish(l, c, &r);
        loop_depend(l, c, mark);
        req_free(&q);
        res_free(&r);
        loop_mcp_cancels(l);
        /* A parked /mcp call keeps its request: it runs again on waking. */
        if (!(c->state == CONN_PARKED && c->mcp_call)) buf_consume(&c->in, (size_t)n);
        c->req_ms = c->body_ms = 0;
    }
    /* A waiter with nothing pipelined keeps no input buffer: 10,000 parked
     * long-polls would otherwise hold 16 KiB each. */
    if (c->state != CONN_READ && !c->in.len) buf_free(&c->in);
}

/* After conn_send() returned rc: close or recycle c's output. */
static void loop_sent(Loop *l, Conn *c, int rc) {
    if (rc < 0) {
        conn_kill(l, c);
        return;
    }
    if (rc) c->active_ms = l->now_ms;
    if (c->out_off == c->out.len) {
        buf_reset(&c->out);
        c->out_off = 0;
        c->held_from = 0;   /* all that follows is newer */
        if (c->close_after) {
            conn_kill(l, c);
            return;
        }
        if (c->state == CONN_STREAM && c->behind) loop_stream_fill(l, c);
    } else if (c->state == CONN_STREAM && c->out.len - c->out_off > ARC_MAX_OUT) {
        /* Only a stream grows without a request; a reader that stalls on
         * ordinary responses is bounded by loop_process and the idle
         * timeout (PROTOCOL §4.1). */
        log_info("dropping a client that stopped reading (%zu bytes queued)",
                 c->out.len - c->out_off);
        conn_kill(l, c);
    }
}

/* Send as much of c->out as its sink takes (and may be sent). */
static void loop_write(Loop *l, Conn *c) {
    loop_sent(l, c, conn_send(c, conn_send_end(c)));
}

/* Send what c may send now (the answer is complete and releasable). */
static void loop_flush(Loop *l, Conn *c) {
    if (c->state != CONN_DEAD && c->out_off < conn_send_end(c)) loop_write(l, c);
}

/* Read everything available. Returns 0, or -1 if the conn died. */
static int loop_read(Loop *l, Conn *c) {
    size_t cap = (size_t)l->hub->max_request_bytes + 2 * ARC_MAX_HEAD;
    while (c->in.len < cap) {
        /* Read into all the room there is, at least 16 KiB (a fresh buffer
         * is exactly that; a parked conn keeps none, see loop_process). */
        if (c->in.cap - c->in.len < 4096 + 1 && buf_reserve(&c->in, 16383)) break;
        size_t room = c->in.cap - c->in.len - 1;
        ssize_t n = read(c->fd, c->in.p + c->in.len, room);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) {
            c->peer_closed = 1;
            break;
        }
        c->in.len += (size_t)n;
        c->in.p[c->in.len] = 0;
        c->active_ms = l->now_ms;
        c->fed = 1;
        /* A short read emptied the socket: the poller is level-triggered,
         * so more input (or the end) is reported again; no read to learn
         * EAGAIN (one syscall per request saved). */
        if ((size_t)n < room) break;
    }
    if (c->peer_closed && c->state != CONN_READ) {
        conn_kill(l, c);   /* a waiter that hung up is dropped at once */
        return -1;
    }
    return 0;
}

/* ---- parallel sends for large fan-outs ---- */

/* A post that wakes thousands of waiters spends nearly all of its time in
 * write(): on loopback each write also runs the receiver's half of TCP in
 * the writer's context (~8 us per waiter on the 2-core test VM, 90% of a
 * 10,000-waiter fan-out in perf). So while the loop builds the answers,
 * sender threads write them, taking conns in chunks as the loop publishes
 * them; at the end the loop writes alongside them and waits. A job hands
 * over c->fd, c->out and c->out_off, which nobody else touches until
 * sender_finish(); the bookkeeping after the write (loop_sent) stays on the
 * loop. The threads start with the first large fan-out and sleep on a
 * condition variable otherwise. */
#define ARC_SEND_MIN 256      /* waiters that make a fan-out parallel */
#define ARC_SEND_CHUNK 32     /* jobs published, and taken, at a time */
#define ARC_SEND_THREADS 3    /* sender threads at most (and CPUs - 1) */

typedef struct {
    Conn *c;
    size_t end;   /* send c->out up to here */
    int rc;       /* conn_send()'s answer */
} SendJob;

typedef struct Sender {
    pthread_mutex_t mu;
    pthread_cond_t more;   /* jobs published, or stop */
    pthread_cond_t idle;   /* the last busy thread finished a chunk */
    SendJob *job;          /* owned; resized only between fan-outs */
    int cap, n;            /* room; jobs the loop appended */
    int published, next;   /* jobs that may be taken; the next to take */
    int busy;              /* threads writing a chunk */
    int stop, n_threads, tried;
    pthread_t th[ARC_SEND_THREADS];
} Sender;

/* With s->mu held: write the next chunk of published jobs, unlocked. */
static void sender_take(Sender *s) {
    int i = s->next, k = s->published - i;
    if (k > ARC_SEND_CHUNK) k = ARC_SEND_CHUNK;
    s->next += k;
    s->busy++;
    pthread_mutex_unlock(&s->mu);
    for (SendJob *j = s->job + i; j < s->job + i + k; j++) j->rc = conn_send(j->c, j->end);
    pthread_mutex_lock(&s->mu);
    if (!--s->busy) pthread_cond_signal(&s->idle);
}

/* A sender thread: write chunks as they are published, until stop. */
static void *sender_main(void *arg) {
    Sender *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->stop && s->next >= s->published) pthread_cond_wait(&s->more, &s->mu);
        if (s->stop) break;
        sender_take(s);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* The threads, started on first use: 0 if there are none (one CPU, or
 * they could not be made); the loop then writes by itself. */
static int sender_ready(Loop *l) {
    Sender *s = l->sender;
    if (s->tried) return s->n_threads;
    s->tried = 1;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int want = cpus - 1 < ARC_SEND_THREADS ? (int)cpus - 1 : ARC_SEND_THREADS;
    while (s->n_threads < want &&
           pthread_create(&s->th[s->n_threads], NULL, sender_main, s) == 0)
        s->n_threads++;
    return s->n_threads;
}

/* Before a fan-out: 1 if its writes go to the sender threads. */
static int sender_begin(Loop *l) {
    Sender *s = l->sender;
    if (l->n_parked < ARC_SEND_MIN || !sender_ready(l)) return 0;
    if (s->cap < l->n_parked) {   /* every waiter at most; nothing reads it now */
        s->cap = l->n_parked;
        s->job = xrealloc(s->job, (size_t)s->cap * sizeof *s->job);
    }
    return 1;
}

/* Let the threads see the jobs appended so far. */
static void sender_publish(Sender *s) {
    pthread_mutex_lock(&s->mu);
    s->published = s->n;
    pthread_cond_broadcast(&s->more);
    pthread_mutex_unlock(&s->mu);
}

/* Queue c's output up to `end` for writing. */
static void sender_add(Loop *l, Conn *c, size_t end) {
    Sender *s = l->sender;
    assert(s->n < s->cap);
    s->job[s->n++] = (SendJob){ c, end, 0 };
    if (s->n - s->published >= ARC_SEND_CHUNK) sender_publish(s);
}

/* After the fan-out: write what is left alongside the threads, wait for
 * them, then settle every conn as loop_write() would have. */
static void sender_finish(Loop *l) {
    Sender *s = l->sender;
    if (!s->n) return;   /* woke nobody: leave the threads asleep */
    pthread_mutex_lock(&s->mu);
    /* What sender_add() has not published is less than a chunk: the loop
     * writes it itself (busy threads may take some). Waking a thread for
     * it, say a post that wakes one of 9,000 waiters, would only cost. */
    s->published = s->n;
    while (s->next < s->published) sender_take(s);
    while (s->busy) pthread_cond_wait(&s->idle, &s->mu);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n; i++) loop_sent(l, s->job[i].c, s->job[i].rc);
    s->n = s->published = s->next = 0;
}

static void sender_open(Loop *l) {
    l->sender = xrealloc(NULL, sizeof *l->sender);
    *l->sender = (Sender){ 0 };
    pthread_mutex_init(&l->sender->mu, NULL);
    pthread_cond_init(&l->sender->more, NULL);
    pthread_cond_init(&l->sender->idle, NULL);
}

/* Stop and join the threads, and free the Sender. */
static void sender_close(Loop *l) {
    Sender *s = l->sender;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->more);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_threads; i++) pthread_join(s->th[i], NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->more);
    pthread_cond_destroy(&s->idle);
    free(s->job);
    free(s);
    l->sender = NULL;
}

/* ---- parked requests and streams ---- */

/* c stops waiting and goes back to serving requests. */
static void loop_unparked(Loop *l, Conn *c) {
    loop_wait_del(l, c);
    wait_free(&c->wait);
    c->state = CONN_READ;
    c->active_ms = l->now_ms;   /* the idle clock restarts with the answer */
}

/* Answer a parked request with `result` (a JSON array; `more`: cut by
 * ARC_MAX_PAGE_BYTES) and resume reading any requests it had pipelined
 * behind it. */
static void loop_unpark(Loop *l, Conn *c, Str result, int more) {
    Buf b = { 0 };
    buf_adds(&b, "{\"ok\":true,\"result\":");
    buf_addstr(&b, result);
    buf_adds(&b, more ? ",\"more\":true}" : "}");
    loop_unparked(l, c);
    conn_respond(l, c, 200, NULL, NULL, buf_str(&b));
    buf_free(&b);
}

/* A parked /mcp call's wait is over (a match, its deadline, another
 * process's commit): it goes back to serving, and its request, which it
 * kept (loop_process, loop_relay_serve), runs again from the touched list
 * (conn_pending). The tool sees what is new, or waits again. */
static void loop_mcp_again(Loop *l, Conn *c) {
    loop_unparked(l, c);
    loop_touch(l, c);
}

/* Wake c from this turn's committed batch, without touching SQLite (but
 * for one probe per match of a read with `surfaced`: hub_dl_shown).
 * Parked requests that match the same messages get the same bytes, so the
 * answer is built once per distinct match (Loop.fan_*) and then copied: a
 * post that wakes 10,000 agents builds one response, not 10,000. */
static void loop_wake_batch(Loop *l, Conn *c) {
    if (c->state == CONN_STREAM) {
        if (c->behind) return;
        for (int i = 0; i < l->hub->n_batch; i++) {
            NewMsg *m = &l->hub->batch[i];
            if (hub_wait_match(&c->wait, m))
                loop_sse_event(c, m->id, (Str){ m->json, m->json_len });
        }
        return;
    }
    if (c->mcp_call) {
        for (int i = 0; i < l->hub->n_batch; i++)
            if (hub_wait_match(&c->wait, &l->hub->batch[i])) {
                loop_mcp_again(l, c);
                return;
            }
        return;
    }
    if (l->cap_fan < l->hub->n_batch) {
        l->cap_fan = l->hub->n_batch;
        l->fan_idx = xrealloc(l->fan_idx, (size_t)l->cap_fan * sizeof *l->fan_idx);
        l->fan_tmp = xrealloc(l->fan_tmp, (size_t)l->cap_fan * sizeof *l->fan_tmp);
    }
    int n = 0, more = 0;
    size_t used = 1;   /* the answer's array so far: as hub_emit_page counts */
    for (int i = 0; i < l->hub->n_batch && n < c->wait.limit; i++) {
        if (!hub_wait_match(&c->wait, &l->hub->batch[i]) ||
            (c->wait.via && hub_dl_shown(l->hub, &c->wait, &l->hub->batch[i])))
            continue;
        used += l->hub->batch[i].json_len + (n ? 1 : 0);
        if (n && used > ARC_MAX_PAGE_BYTES) {
            more = 1;
            break;
        }
        l->fan_tmp[n++] = i;
    }
    if (!n) return;
    hub_wait_answered(l->hub, &c->wait, l->hub->batch[l->fan_tmp[n - 1]].id);
    int key = conn_share_key(c);
    if (!more && l->fan_n == n && l->fan_key == key &&
        !memcmp(l->fan_idx, l->fan_tmp, (size_t)n * sizeof *l->fan_idx)) {
        loop_unparked(l, c);
        conn_respond_copy(c, buf_str(&l->fan_resp));
        return;
    }
    Buf res = { 0 };
    for (int k = 0; k < n; k++) {
        NewMsg *m = &l->hub->batch[l->fan_tmp[k]];
        buf_addc(&res, k ? ',' : '[');
        buf_add(&res, m->json, m->json_len);
    }
    buf_addc(&res, ']');
    size_t mark = c->out.len;
    loop_unpark(l, c, buf_str(&res), more);
    buf_free(&res);
    if (more) return;   /* a cut answer carries a flag: not shared */
    int *t = l->fan_idx;   /* remember this answer: its matches, its bytes */
    l->fan_idx = l->fan_tmp;
    l->fan_tmp = t;
    l->fan_n = n;
    l->fan_key = key;
    buf_reset(&l->fan_resp);
    buf_add(&l->fan_resp, c->out.p + mark, c->out.len - mark);
}

/* Wake by asking SQLite again: after another process committed. */
static void loop_wake_query(Loop *l, Conn *c) {
    if (c->state == CONN_STREAM) {
        if (!c->behind) loop_stream_fill(l, c);
        return;
    }
    if (c->mcp_call) {
        loop_mcp_again(l, c);
        return;
    }
    Buf res = { 0 };
    int more;
    int64_t upto;
    if (hub_wait_query(l->hub, &c->wait, 0, &res, &more, &upto) > 0) {
        hub_wait_answered(l->hub, &c->wait, upto);
        loop_unpark(l, c, buf_str(&res), more);
    }
    buf_free(&res);
}

/* c may have new output from a wake-up (from `mark` on): hold it as its
 * data requires, and send it at once if it may go (by a sender thread in
 * a parallel fan-out). */
static void loop_woken(Loop *l, Conn *c, size_t mark) {
    if (c->out.len == mark) return;
    loop_depend(l, c, mark);
    loop_touch(l, c);
    if (l->sending && c->state != CONN_DEAD && c->out_off < conn_send_end(c))
        sender_add(l, c, conn_send_end(c));
    else
        loop_flush(l, c);
}

/* Wake every waiter in b that the batch may match. */
static void loop_wake_bucket(Loop *l, WaitBucket *b) {
    for (Conn *c = b->head, *next; c; c = next) {
        next = c->wnext;   /* c may leave the bucket */
        size_t mark = c->out.len;
        loop_wake_batch(l, c);
        loop_woken(l, c, mark);
    }
}

/* Every waiter asks SQLite again (after another process committed). */
static void loop_wake_all(Loop *l) {
    int n;
    Conn **all = loop_waiters(l, &n);
    for (int i = 0; i < n; i++) {
        Conn *c = all[i];
        if (c->state != CONN_PARKED && c->state != CONN_STREAM) continue;
        size_t mark = c->out.len;
        loop_wake_query(l, c);
        loop_woken(l, c, mark);
    }
    free(all);
}

/* The waiters of the channels this turn's batch wrote to, and those
 * waiting on any channel, from the batch. */
static void loop_wake_batches(Loop *l) {
    l->fan_stamp++;
    l->fan_n = 0;   /* no shared answer yet: batch indices are this turn's */
    for (int i = 0; i < l->hub->n_batch; i++) {
        WaitBucket *b = loop_bucket(l, l->hub->batch[i].channel, 0);
        if (b && b->stamp != l->fan_stamp) {
            b->stamp = l->fan_stamp;
            loop_wake_bucket(l, b);
        }
    }
    loop_wake_bucket(l, l->wb_any);
}

/* After the commit: answer every waiter that something new matches, each
 * as soon as its answer is built. If another process committed since we
 * last looked, rows may exist that are not in our batch, so every waiter
 * re-queries instead (PROTOCOL §8.2). */
static void loop_fanout(Loop *l, int check_foreign) {
    int foreign = 0;
    if (check_foreign && l->n_parked) foreign = hub_foreign_commit(l->hub);
    if (!foreign && (!l->hub->n_batch || !l->n_parked)) return;
    l->sending = sender_begin(l);
    if (foreign) loop_wake_all(l);
    else loop_wake_batches(l);
    if (l->sending) sender_finish(l);
    l->sending = 0;
}

/* ---- timers ---- */

/* A timer action: model work outside any request (prune tick, presence,
 * shutdown), run by timer_run() as if it were one. */
typedef void (*TimerAction)(Loop *, Req *, Res *);

/* Run fn in the turn's batch transaction under its own savepoint. */
static void timer_run(Loop *l, TimerAction fn) {
    Req q = { .method = STR_LIT("TIMER") };
    Res r = { .status = 200 };
    fn(l, &q, &r);
    hub_tx_end(l->hub, &q, r.status < 400);
    req_free(&q);
    res_free(&r);
}

static void timer_prune(Loop *l, Req *q, Res *r) { hub_expire_sessions(l->hub, q, r); }

/* Fold a chunk of messages into the thread summary while it lags: after
 * start on a file others wrote, or after their writes (PROTOCOL §10.7). */
static void timer_fold(Loop *l, Req *q, Res *r) { hub_fold(l->hub, q, r); }

/* PROTOCOL §9: an agent waiting in a long-poll or stream stays present.
 * One UPDATE per distinct waiting agent per tick bounds the write load. */
static void timer_touch_waiters(Loop *l, Req *q, Res *r) {
    int n, k = 0;
    Conn **all = loop_waiters(l, &n);
    const char **agents = xrealloc(NULL, (size_t)(n + 1) * sizeof *agents);
    for (int i = 0; i < n; i++)
        if (all[i]->wait.agent) agents[k++] = all[i]->wait.agent;
    free(all);
    if (k) qsort(agents, (size_t)k, sizeof *agents, cstr_cmp);
    for (int i = 0; i < k; i++)
        if (i == 0 || strcmp(agents[i], agents[i - 1]))
            hub_touch(l->hub, q, r, str_c(agents[i]));
    free(agents);
}

/* POST /v1/shutdown's delay is over (the model asks to stop after it). */
static void timer_shutdown(Loop *l, Req *q, Res *r) { hub_shutdown_fire(l->hub, q, r); }

/* A search left part of the index to build: one chunk per turn, between
 * the turn's requests, until it is done (PROTOCOL §15). */
static void timer_search(Loop *l, Req *q, Res *r) { hub_search_tick(l->hub, q, r); }

/* Unanswered messages past their age, agents whose process is gone: the
 * model keeps when each is due (hub_rc_next_ms, PROTOCOL §17.4-§17.5). */
static void timer_receipts(Loop *l, Req *q, Res *r) { hub_rc_tick(l->hub, q, r); }

static int64_t loop_tick_ms(Loop *l) {
    int64_t t = l->hub->cfg.presence_ttl_s / 3;
    return (t < 1 ? 1 : t) * 1000;
}

/* Fire due conn deadlines and hub timers. */
static void loop_timers(Loop *l) {
    while (l->n_heap && l->heap[0]->deadline_ms <= l->now_ms) {
        Conn *c = l->heap[0];
        heap_remove(l, c);
        c->deadline_ms = 0;
        loop_touch(l, c);
        switch (c->state) {
        case CONN_PARKED:
            if (c->mcp_call) loop_mcp_again(l, c);
            else loop_unpark(l, c, STR_LIT("[]"), 0);
            break;
        case CONN_STREAM:
            if (c->out_off == conn_send_end(c)) {
                buf_adds(&c->out, ": keepalive\n\n");
                c->active_ms = l->now_ms;
            } else if (l->now_ms - c->active_ms >= l->hub->cfg.idle_ms) {
                /* A stream that is behind queues no more than about
                 * ARC_MAX_OUT / 4 (loop_stream_fill), so a reader that
                 * stopped is told by time, not by size (PROTOCOL §8.4). */
                log_info("dropping a stream that stopped reading (%zu bytes "
                         "queued)", c->out.len - c->out_off);
                conn_kill(l, c);
            }
            break;
        case CONN_READ:
            if (c->retry_ms) {
                c->retry_ms = 0;   /* loop_serve retries it (loop_settle_touched) */
                c->active_ms = l->now_ms;   /* not idle: the idle clock restarts */
            }
            else if (c->out_off < c->out.len || (!c->req_ms && !c->body_ms))
                conn_kill(l, c);   /* stalled reader, or idle keep-alive */
            else if (c->body_ms)
                conn_error(l, c, 408, "request body not received in time");
            else
                conn_error(l, c, 408, "request head not received in time");
            break;
        default: break;
        }
        if (c->state != CONN_DEAD) conn_schedule(l, c);
    }
    if (l->now_ms >= l->next_prune_ms) {
        timer_run(l, timer_prune);
        l->next_prune_ms = l->now_ms + loop_tick_ms(l);
        hub_fold_check(l->hub);
    }
    if (hub_fold_pending(l->hub)) timer_run(l, timer_fold);
    if (l->now_ms >= l->next_touch_ms) {
        if (l->n_parked) timer_run(l, timer_touch_waiters);
        int64_t t = loop_tick_ms(l);
        l->next_touch_ms = l->now_ms + (t > 30000 ? 30000 : t);
    }
    int64_t stop_at = hub_shutdown_at(l->hub);
    if (stop_at && clock_ms() >= stop_at) timer_run(l, timer_shutdown);
    if (hub_search_behind(l->hub)) timer_run(l, timer_search);
    if (clock_ms() >= hub_rc_next_ms(l->hub)) timer_run(l, timer_receipts);
}

/* ---- commit and durability ---- */

/* Take back c's answers from `from` on and answer 503 with `why` instead,
 * closing after it: what they reported did not happen, or may not last. */
static void loop_withdraw(Loop *l, Conn *c, size_t from, const char *why) {
    char msg[300];
    c->out.len = from;
    if (c->state == CONN_PARKED || c->state == CONN_STREAM) {
        loop_wait_del(l, c);
        wait_free(&c->wait);
        c->state = CONN_READ;
    }
    snprintf(msg, sizeof msg, "storage error: %s", why);
    conn_error(l, c, 503, msg);
    loop_touch(l, c);
}

/* Commit the turn's batch, then send its held answers at once, before any
 * fan-out: a poster hears back before the agents it woke. If the commit
 * fails, nothing of it happened: replace every held answer with a 503 and
 * forget the batch. */
static void loop_commit(Loop *l) {
    const char *why = NULL;
    assert(hub_turn_open(l->hub) || (l->n_held == 0 && l->hub->n_batch == 0));
    if (hub_turn_commit(l->hub, &why)) {
        log_warn("commit failed: %s", why);
        for (int i = 0; i < l->n_held; i++) {
            Conn *c = l->held[i];
            if (c->state != CONN_DEAD) loop_withdraw(l, c, c->held_from, why);
        }
    }
    for (int i = 0; i < l->n_held; i++) l->held[i]->held = 0;
    for (int i = 0; i < l->n_held; i++) loop_flush(l, l->held[i]);
    l->n_held = 0;
}

/* ---- accept, the poll set, freeing ---- */

/* Tags for the loop's own descriptors in the poller. */
static char loop_tag_wake, loop_tag_listen, loop_tag_wal;

/* Add c to Loop.conns. */
static void loop_link(Loop *l, Conn *c) {
    c->prev = NULL;
    c->next = l->conns;
    if (l->conns) l->conns->prev = c;
    l->conns = c;
    l->n_conns++;
}

/* The fixed answer to a connection beyond the limit: it is sent before the
 * conn exists, so without X-Arc-Instance (PROTOCOL §4.4). */
static const char loop_busy[] =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
    "application/json\r\nContent-Length: 48\r\nConnection: close"
    "\r\n\r\n{\"ok\":false,\"error\":\"too many open connections\"}";

/* Answer 503 and close, without reading: one write into an empty socket
 * buffer always fits, and a client that is gone costs nothing (EPIPE is
 * an error return, SIGPIPE being ignored). */
static void loop_refuse(int fd) {
    ssize_t w;
    do w = write(fd, loop_busy, sizeof loop_busy - 1);
    while (w < 0 && errno == EINTR);
    close(fd);
}

/* Out of descriptors (EMFILE/ENFILE). The listener stays readable, so
 * ignoring the error would spin the loop. Instead: give back the spare
 * descriptor, accept the waiting client on it to refuse it with 503, and
 * take the spare again. Without a spare, stop watching the listener for
 * 100 ms (loop_turn). Returns 1 when a client was taken off the queue. */
static int loop_accept_emfile(Loop *l, int err) {
    if (l->now_ms - l->warned_ms >= 1000) {   /* at most 1 a second */
        log_warn("accept: %s (%d connections open); refusing new ones",
                 strerror(err), l->n_sockets);
        l->warned_ms = l->now_ms;
    }
    int taken = 0;
    if (l->spare_fd >= 0) {
        close(l->spare_fd);
        int fd = accept(l->listen_fd, NULL, NULL);
        if (fd >= 0) {
            loop_refuse(fd);
            taken = 1;
        }
        l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    if (!taken) l->accept_pause_until = l->now_ms + 100;
    return taken;
}

/* Accept every waiting client: refuse it with 503 past --max-conns or
 * without a spare descriptor, else make it a Conn watched for input. */
static void loop_accept(Loop *l) {
    for (;;) {
        int fd = accept(l->listen_fd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE) {
                if (loop_accept_emfile(l, errno)) continue;
            } else if (errno == ENOBUFS || errno == ENOMEM) {
                l->accept_pause_until = l->now_ms + 100;
            }
            return;   /* EAGAIN: the queue is empty */
        }
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        if (l->n_sockets >= l->hub->cfg.max_conns) {
            loop_refuse(fd);
            continue;
        }
        /* The spare was lost (the relay thread took the descriptor while it
         * was free): take it back before anything else, even if that means
         * refusing this client, or the next EMFILE would find none. */
        if (l->spare_fd < 0 &&
            (l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
            loop_refuse(fd);
            l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            continue;
        }
        fd_nonblock(fd);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        Conn *c = xrealloc(NULL, sizeof *c);
        *c = (Conn){ .fd = fd, .poll_slot = -1, .heap_idx = -1,
                     .state = CONN_READ, .active_ms = l->now_ms };
        loop_link(l, c);
        l->n_sockets++;
        c->ev = POLLIN;
        if (poller_watch(l->poller, fd, c, &c->poll_slot, c->ev))
            conn_kill(l, c);   /* cannot watch it: freed at the turn's end */
        else
            conn_schedule(l, c);
    }
}

/* The wait for readiness failed with something other than EINTR: only
 * ENOMEM can happen with a well-formed set. Nothing is lost by waiting;
 * the turn goes on with no events, which is harmless. */
static void loop_poll_failed(Loop *l) {
    if (l->now_ms - l->warned_ms >= 1000) {
        log_warn("poll: %s", strerror(errno));
        l->warned_ms = l->now_ms;
    }
    struct timespec ts = { 0, 10 * 1000000 };
    nanosleep(&ts, NULL);
}

/* Make the poller watch for what c can use now: input while there is room
 * for it, output while some may be sent. */
static void loop_watch(Loop *l, Conn *c) {
    if (c->fd < 0) return;
    size_t cap = (size_t)l->hub->max_request_bytes + 2 * ARC_MAX_HEAD;
    unsigned ev = 0;
    if (c->in.len < cap && !c->peer_closed) ev |= POLLIN;
    if (c->out_off < conn_send_end(c)) ev |= POLLOUT;
    if (ev == c->ev) return;
    c->ev = ev;
    if (poller_watch(l->poller, c->fd, c, &c->poll_slot, ev))
        conn_kill(l, c);   /* ENOMEM: cannot watch it, so drop it */
}

/* Unlink and free c, releasing its sink (loop_settle_touched, loop_reap). */
static void loop_free(Loop *l, Conn *c) {
    if (c->prev) c->prev->next = c->next;
    else l->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    l->n_conns--;
    if (c->mcp_call) mcp_hub_forget(l->hub, c->mcp_call);
    conn_close(l, c);
    buf_free(&c->in);
    buf_free(&c->out);
    wait_free(&c->wait);
    free(c);
}

/* Has c complete requests it has not handled (pipelined behind a park, or
 * a write whose lock retry is due), with nothing left to send first? A
 * relayed conn without an answer has its request to handle again. */
static int conn_pending(const Conn *c) {
    return c->state == CONN_READ && !c->req_ms && !c->body_ms && !c->retry_ms &&
           !c->close_after && c->out_off == c->out.len && (c->in.len || c->relay);
}

/* End of turn for every touched conn: send, free the dead, reschedule,
 * re-arm. Conns with requests still to handle stay on the list, and the
 * next turn does not wait for readiness. */
static void loop_settle_touched(Loop *l) {
    int k = 0;
    for (int i = 0; i < l->n_touched; i++) {
        Conn *c = l->touched[i];
        loop_flush(l, c);
        if (c->state != CONN_DEAD) {
            conn_schedule(l, c);
            loop_watch(l, c);
        }
        if (c->state == CONN_DEAD) {
            loop_free(l, c);
            continue;
        }
        if (conn_pending(c)) l->touched[k++] = c;
        else c->touched = 0;
    }
    l->n_touched = k;
}

/* How long the poller may wait: until the nearest conn deadline or loop
 * timer, 0 when work is left over, at most a minute. */
static int loop_timeout_ms(Loop *l) {
    if (l->n_touched || g_stop || hub_shutdown_now(l->hub) ||
        hub_search_behind(l->hub))
        return 0;
    if (hub_fold_pending(l->hub)) return 0;   /* timer_fold goes on */
    int64_t t = l->next_prune_ms;
    if (l->n_heap && l->heap[0]->deadline_ms < t) t = l->heap[0]->deadline_ms;
    if (l->n_parked && l->next_touch_ms < t) t = l->next_touch_ms;
    if (l->n_parked && (l->wal_watch < 0 || l->now_ms < l->dv_until_ms) &&
        l->next_dv_ms < t)
        t = l->next_dv_ms;
    int64_t stop_at = hub_shutdown_at(l->hub);
    if (stop_at && stop_at < t) t = stop_at;
    if (hub_rc_next_ms(l->hub) < t) t = hub_rc_next_ms(l->hub);   /* §17.4 */
    if (l->accept_pause_until > l->now_ms && l->accept_pause_until < t)
        t = l->accept_pause_until;
    t -= l->now_ms;
    return t < 0 ? 0 : t > 60000 ? 60000 : (int)t;
}

/* A loop for h with nothing open yet: serve_start() fills in its
 * descriptors, then loop_open() starts it. */
static void loop_init(Loop *l, Hub *h) {
    *l = (Loop){ .hub = h, .listen_fd = -1, .wake_rd = -1, .wake_wr = -1,
                 .wal_watch = -1, .spare_fd = -1 };
}

/* Set up the poller over the wake pipe, the listener and the -wal watch,
 * and the timers; take the spare descriptor (loop_accept_emfile). */
static void loop_open(Loop *l) {
    l->poller = xrealloc(NULL, sizeof *l->poller);
    if (poller_open(l->poller)) die("poller: %s", strerror(errno));
    l->wb_any = xrealloc(NULL, sizeof *l->wb_any);
    *l->wb_any = (WaitBucket){ 0 };
    sender_open(l);
    l->wake_slot = l->listen_slot = l->wal_slot = -1;
    l->listen_ev = POLLIN;
    l->wal_ev = 0;   /* until someone waits (loop_turn) */
    if (poller_watch(l->poller, l->wake_rd, &loop_tag_wake, &l->wake_slot, POLLIN) ||
        poller_watch(l->poller, l->listen_fd, &loop_tag_listen, &l->listen_slot,
                     POLLIN) ||
        (l->wal_watch >= 0 &&
         poller_watch(l->poller, l->wal_watch, &loop_tag_wal, &l->wal_slot, 0)))
        die("poller: %s", strerror(errno));
    l->now_ms = clock_ms();
    l->next_prune_ms = l->now_ms + loop_tick_ms(l);
    l->next_touch_ms = l->now_ms + loop_tick_ms(l);
    l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* Free everything the loop owns (after loop_drain: no conns are left) and
 * close its descriptors; safe on a loop that was never opened. */
static void loop_close(Loop *l) {
    assert(!l->conns && !l->n_heap && !l->n_parked);
    if (l->poller) {
        sender_close(l);
        poller_close(l->poller);
    }
    free(l->poller);
    free(l->wb_any);
    free(l->touched);
    free(l->held);
    free(l->heap);
    free(l->wb);   /* every bucket was freed with its last waiter */
    free(l->fan_idx);
    free(l->fan_tmp);
    buf_free(&l->fan_resp);
    int *fds[] = { &l->listen_fd, &l->wake_rd, &l->wake_wr, &l->wal_watch,
                   &l->spare_fd };
    for (size_t i = 0; i < sizeof fds / sizeof *fds; i++)
        if (*fds[i] >= 0) close(*fds[i]), *fds[i] = -1;
    l->poller = NULL;
}

/* The signal handler's half of the self-pipe. */
static int g_wake_wr = -1;

/* SIGTERM/SIGINT: ask the loop to stop, and wake it (async-signal-safe). */
static void loop_on_signal(int sig) {
    (void)sig;
    int saved = errno;
    g_stop = 1;
    if (g_wake_wr >= 0) {
        ssize_t w = write(g_wake_wr, "s", 1);
        (void)w;
    }
    errno = saved;
}

/* Handle the relayed request of socketless conn c (again, after a retry). */
static void loop_relay_serve(Loop *l, Conn *c) {
    RelayReq *r = c->relay;
    const char *qm = strchr(r->path, '?');
    Str path = { r->path, qm ? (size_t)(qm - r->path) : strlen(r->path) };
    Req q = { .method = str_c(r->method), .query = str_c(qm ? qm + 1 : ""),
              .relayed = 1, .mcp_call = c->mcp_call };
    Res res = { 0 };
    if (r->body && (int64_t)strlen(r->body) > l->hub->max_request_bytes)
        hub_fail(&res, 400, "request body exceeds max size");
    else
        hub_handle(l->hub, &q, path, str_c(r->body ? r->body : ""), &res);
    if (res.stream) {
        wait_free(&res.wait);
        res.stream = 0;
        hub_fail(&res, 400, "GET /v1/stream is not available through the relay; "
                 "use /v1/events with a timeout");
    }
    if (!loop_retry_busy(l, c, &q, &res)) {
        loop_finish(l, c, &res);
        loop_depend(l, c, 0);
    }
    req_free(&q);
    res_free(&res);
    loop_mcp_cancels(l);
}

/* Serve one request from the spool exactly as an HTTP request: through a
 * socketless Conn, so parking, group commit and fan-out all apply. */
static void loop_relay_request(Loop *l, RelayReq *r) {
    Conn *c = xrealloc(NULL, sizeof *c);
    *c = (Conn){ .fd = -1, .poll_slot = -1, .heap_idx = -1,
                 .state = CONN_READ, .active_ms = l->now_ms, .relay = r };
    loop_link(l, c);
    loop_touch(l, c);
    loop_relay_serve(l, c);
}

/* Take the requests the relay thread has queued. */
static void loop_intake(Loop *l) {
    if (!l->relay) return;
    for (RelayReq *r = relay_intake(l->relay), *next; r; r = next) {
        next = r->next;
        loop_relay_request(l, r);
    }
}

/* Handle what c has read: its complete requests, then its hang-up. A
 * relayed conn without an answer yet is one whose lock retry is due. */
static void loop_serve(Loop *l, Conn *c) {
    if (c->state != CONN_READ) return;
    if (c->relay) {
        if (!c->close_after && !c->retry_ms) loop_relay_serve(l, c);
        return;
    }
    loop_process(l, c);
    if (c->peer_closed && c->state == CONN_READ) {
        /* A request cut short by the client's half-close (a body shorter
         * than its Content-Length) is incomplete: nothing is stored, and
         * the client, which may still read, is told so. */
        if ((c->req_ms || c->body_ms) && !c->retry_ms && !c->close_after)
            conn_error(l, c, 400, "incomplete request: the connection was "
                       "closed before the request ended");
        if (c->out_off < c->out.len) c->close_after = 1;
        else conn_kill(l, c);
    }
}

/* Act on n ready events: read and serve conns, write what they may send,
 * accept, drain the wake pipe and take relayed requests. Returns 1 if the
 * -wal watch fired. */
static int loop_events(Loop *l, int n) {
    int wal_touched = 0;
    for (int i = 0; i < n; i++) {
        PollEv *e = &l->poller->ev[i];
        if (e->tag == &loop_tag_wake) {
            char tmp[64];
            while (read(l->wake_rd, tmp, sizeof tmp) > 0) {}
            loop_intake(l);   /* the nudge may be the relay's */
        } else if (e->tag == &loop_tag_listen) {
            loop_accept(l);
        } else if (e->tag == &loop_tag_wal) {
            char tmp[4096];
            while (read(l->wal_watch, tmp, sizeof tmp) > 0) {}
            wal_touched = 1;
        } else {
            Conn *c = e->tag;
            if (c->state == CONN_DEAD) continue;
            loop_touch(l, c);
            if (e->revents & (POLLIN | POLLHUP | POLLERR)) {
                if (loop_read(l, c)) continue;
            }
            if (e->revents & POLLOUT) loop_write(l, c);
            if (c->state != CONN_DEAD) loop_serve(l, c);
        }
    }
    return wal_touched;
}

/* One turn of the loop. Returns 0 to go on, 1 when the hub should stop. */
static int loop_turn(Loop *l) {
    hub_turn_begin(l->hub);   /* a new turn's budget for lock waits */
    for (int i = 0; i < l->n_touched; i++)   /* left over from the last turn */
        loop_serve(l, l->touched[i]);
    int n = poller_wait(l->poller, loop_timeout_ms(l));
    l->now_ms = clock_ms();
    if (n < 0) {
        loop_poll_failed(l);
        n = 0;
    }
    int wal_touched = loop_events(l, n);
    loop_intake(l);
    /* Requests that arrived while this turn's were handled join its commit
     * instead of waiting a whole commit for the next: clients answered by
     * one commit come back at about the same time, and each commit waits
     * for an fsync (group commit, PROTOCOL §10.2). */
    for (int pass = 0; pass < ARC_GATHER_PASSES && hub_turn_open(l->hub); pass++) {
        if ((n = poller_wait(l->poller, 0)) <= 0) break;
        wal_touched |= loop_events(l, n);
    }
    loop_timers(l);
    int had_batch = l->hub->n_batch > 0;
    loop_commit(l);
    /* Foreign commits (PROTOCOL §8.2). Without inotify: one PRAGMA
     * data_version every ARC_DATA_VERSION_MS while anyone waits. With it: a
     * write to the -wal file starts a short watch, checking after
     * ARC_WAL_SETTLE_MS and then at doubling intervals for ARC_WAL_WATCH_MS,
     * because the writer's frames land (and notify us) before its commit
     * becomes visible after its fsync: a commit is seen at most about twice
     * its fsync time late, with ~10 checks per write. Idle, nothing runs. */
    if (wal_touched) {
        l->dv_until_ms = l->now_ms + ARC_WAL_WATCH_MS;
        l->dv_step_ms = ARC_WAL_SETTLE_MS;
    }
    int watching = l->wal_watch < 0 || l->now_ms < l->dv_until_ms;
    int dv_due = l->n_parked && watching && l->now_ms >= l->next_dv_ms;
    loop_fanout(l, had_batch || dv_due || wal_touched);
    if (l->wal_watch < 0) {
        if (dv_due || !l->n_parked) l->next_dv_ms = l->now_ms + ARC_DATA_VERSION_MS;
    } else if (wal_touched || dv_due) {
        l->next_dv_ms = l->now_ms + l->dv_step_ms;
        l->dv_step_ms *= 2;
    }
    hub_turn_end(l->hub);
    loop_settle_touched(l);
    /* Out of descriptors without a spare: leave the listener alone for a
     * moment (loop_accept_emfile), or it would report the same client as
     * readable on every wait. */
    unsigned lev = l->now_ms >= l->accept_pause_until ? POLLIN : 0;
    if (lev != l->listen_ev &&
        poller_watch(l->poller, l->listen_fd, &loop_tag_listen, &l->listen_slot, lev) == 0)
        l->listen_ev = lev;
    /* The -wal watch matters only to waiters; without any, our own commits
     * would wake the loop once more each (the queue keeps one event). */
    unsigned wev = l->n_parked ? POLLIN : 0;
    if (l->wal_watch >= 0 && wev != l->wal_ev &&
        poller_watch(l->poller, l->wal_watch, &loop_tag_wal, &l->wal_slot, wev) == 0)
        l->wal_ev = wev;
    return g_stop || hub_shutdown_now(l->hub);
}

/* Free the dead among the touched conns (shutdown only). */
static void loop_reap(Loop *l) {
    for (int i = 0; i < l->n_touched; i++) {
        Conn *c = l->touched[i];
        c->touched = 0;
        if (c->state == CONN_DEAD) loop_free(l, c);
    }
    l->n_touched = 0;
}

/* Stop serving: answer parked long-polls with what they have (nothing),
 * end streams, and give every client a short, bounded chance to receive
 * what is queued for it. */
static void loop_drain(Loop *l) {
    for (Conn *c = l->conns; c; c = c->next) {
        if (c->state == CONN_READ && c->busy_since_ms && !c->close_after) {
            c->retry_ms = 0;   /* waiting for a lock: give up now */
            conn_error(l, c, 503, "storage error: database is locked");
        }
        if (c->state == CONN_PARKED && !c->mcp_call) loop_unpark(l, c, STR_LIT("[]"), 0);
        else if (c->state == CONN_STREAM || c->state == CONN_PARKED) conn_kill(l, c);
        loop_flush(l, c);
        if (c->state != CONN_DEAD) c->close_after = 1;
        if (c->state != CONN_DEAD && c->out_off == c->out.len) conn_kill(l, c);
    }
    struct pollfd *pfd = NULL;
    Conn **cs = NULL;
    int64_t until = clock_ms() + 1000;
    while (l->n_conns && clock_ms() < until) {
        loop_reap(l);
        pfd = xrealloc(pfd, (size_t)(l->n_conns + 1) * sizeof *pfd);
        cs = xrealloc(cs, (size_t)(l->n_conns + 1) * sizeof *cs);
        int n = 0;
        for (Conn *c = l->conns; c; c = c->next) {
            cs[n] = c;
            pfd[n++] = (struct pollfd){ .fd = c->fd, .events = POLLOUT };
        }
        if (!n) break;
        if (poll(pfd, (nfds_t)n, 100) < 0) {
            if (errno == EINTR) continue;   /* a second SIGTERM, say */
            break;
        }
        l->now_ms = clock_ms();
        for (int i = 0; i < n; i++)
            if (pfd[i].revents) loop_write(l, cs[i]);
    }
    free(pfd);
    free(cs);
    for (Conn *c = l->conns; c; c = c->next) conn_kill(l, c);
    loop_reap(l);
}

/* ==== serve: start, run and stop a hub; its socket, pidfile, options ===== */

/* `arc serve` makes one Hub (the model) and one Loop that serves it, in
 * three steps. serve_start() checks the options against the network rules,
 * opens the storage, binds, writes the pidfile and starts the relay thread
 * and the loop; serve_run() turns the loop until a signal or POST
 * /v1/shutdown; serve_stop() answers what is in flight and releases all of
 * it in reverse order. serve_stop() undoes a partial start too, so a
 * failed step only has to say why. */

/* Is v a name for --allowed-host: not empty, no port, no brackets? */
static int serve_host_name_ok(const char *v) {
    return *v && !strpbrk(v, ":/[] \t") ? 0 : -1;
}

/* Is v a plausible --host (1 to 255 bytes: a DNS name's limit)? It also
 * keeps every URL built from it (serve_url) within ARC_URLLEN. */
static int serve_host_ok(const char *v) {
    size_t n = strlen(v);
    return n >= 1 && n <= 255 ? 0 : -1;
}

/* Is v a plausible --escalate-channel: 1 to 100 bytes, no control
 * characters (a channel a client could also name)? */
static int serve_channel_ok(const char *v) {
    size_t n = strlen(v);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f) return -1;
    return n >= 1 && n <= 100 ? 0 : -1;
}

static const OptWord serve_sync_words[] = {
    { "full", 1 }, { "normal", 0 }, { NULL, 0 }
};

/* The serve options: `arc serve` parses them, `arc ensure` (and smoke)
 * too, handing those marked OPT_PASS to the hub it starts (life_spawn). */
#define SERVE_OPT(f) offsetof(HubConfig, f)
static const Opt serve_opts[] = {
    { "--host", OPT_STR, SERVE_OPT(host), .arg = "ADDR", .ok = serve_host_ok,
      .bad = "takes an address or name of 1 to 255 characters",
      .help = "listen address (default 127.0.0.1)", .flags = OPT_PASS | OPT_WHICH },
    { "--port", OPT_INT, SERVE_OPT(port), .lo = 0, .hi = 65535, .arg = "N",
      .help = "listen port (default 6969; 0 = any free)",
      .flags = OPT_PASS | OPT_WHICH },
    { "--storage", OPT_STR, SERVE_OPT(storage), .arg = "FILE",
      .help = "SQLite file (default arc.sqlite3)", .flags = OPT_PASS | OPT_WHICH },
    { "--spool-dir", OPT_STR, SERVE_OPT(spool_dir), .arg = "DIR",
      .help = "file relay spool (default .arc-relay)", .flags = OPT_PASS },
    { "--token-file", OPT_TOKEN_FILE, SERVE_OPT(token), .arg = "FILE",
      .help = "require this bearer token (its first line)\n"
              "on every request but GET /; or ARC_TOKEN", .flags = OPT_WHICH },
    { "--token", OPT_TOKEN, SERVE_OPT(token), .arg = "TOKEN",
      .help = "the same (visible in ps: prefer the others)", .flags = OPT_WHICH },
    { "--allow-remote", OPT_FLAG, SERVE_OPT(allow_remote),
      .help = "allow a non-loopback --host; needs a token", .flags = OPT_PASS },
    { "--insecure-no-auth", OPT_FLAG, SERVE_OPT(insecure_no_auth),
      .help = "... or this, to serve the network without one", .flags = OPT_PASS },
    { "--allowed-host", OPT_LIST, SERVE_OPT(allowed_hosts),
      .off_n = SERVE_OPT(n_allowed_hosts), .hi = ARC_MAX_ALLOWED_HOSTS,
      .ok = serve_host_name_ok, .bad = "takes a host name without a port",
      .arg = "NAME", .help = "accept Host: NAME besides IP addresses and\n"
                             "localhost (repeatable; DNS rebinding guard)",
      .flags = OPT_PASS },
    { "--quiet", OPT_FLAG, .ptr = &g_quiet, .help = "log only warnings",
      .flags = OPT_PASS },
    { "--max-body-chars", OPT_I64, SERVE_OPT(max_body_chars), .lo = 1,
      .hi = 1 << 30, .arg = "N", .help = "message body limit (default 128000)",
      .flags = OPT_PASS },
    { "--max-attachment-chars", OPT_I64, SERVE_OPT(max_attachment_chars),
      .lo = 1, .hi = 1 << 30, .arg = "N",
      .help = "per-attachment limit (default 256000)", .flags = OPT_PASS },
    { "--max-attachments", OPT_I64, SERVE_OPT(max_attachments), .lo = 0,
      .hi = 1000, .arg = "N", .help = "attachments per message (default 32)",
      .flags = OPT_PASS },
    { "--max-metadata-chars", OPT_I64, SERVE_OPT(max_metadata_chars), .lo = 2,
      .hi = 1 << 30, .arg = "N",
      .help = "a stored metadata object, JSON-encoded\n(default 65536)",
      .flags = OPT_PASS },
    { "--max-kv-value-chars", OPT_I64, SERVE_OPT(max_kv_value_chars), .lo = 1,
      .hi = 1 << 30, .arg = "N",
      .help = "a shared-memory value, JSON-encoded\n(default 65536)",
      .flags = OPT_PASS },
    { "--presence-ttl", OPT_I64, SERVE_OPT(presence_ttl_s), .lo = 5,
      .hi = 86400 * 365, .arg = "SEC",
      .help = "idle session expiry (default 120, min 5)", .flags = OPT_PASS },
    { "--sync", OPT_WORD, SERVE_OPT(sync_full), .words = serve_sync_words,
      .arg = "full|normal", .help = "full (default): a write is on disk before\n"
                                    "it is acknowledged; normal: faster, but the\n"
                                    "last commits can be lost on power failure",
      .flags = OPT_PASS },
    { .kind = OPT_TEXT, .help = "connection limits (PROTOCOL.md 4.3):" },
    { "--max-conns", OPT_INT, SERVE_OPT(max_conns), .lo = 1, .hi = 1000000,
      .arg = "N", .help = "open client connections (default 16384, or\n"
                          "the open-file limit less 64 if lower)",
      .flags = OPT_PASS },
    { "--idle-timeout-ms", OPT_I64, SERVE_OPT(idle_ms), .lo = 100,
      .hi = 86400000, .arg = "N",
      .help = "close an idle keep-alive connection, or one\n"
              "that stopped reading (default 60000)", .flags = OPT_PASS },
    { "--head-timeout-ms", OPT_I64, SERVE_OPT(head_ms), .lo = 100,
      .hi = 86400000, .arg = "N",
      .help = "408 unless a request head is complete this\n"
              "long after its first byte (default 10000)", .flags = OPT_PASS },
    { "--body-timeout-ms", OPT_I64, SERVE_OPT(body_ms), .lo = 100,
      .hi = 86400000, .arg = "N",
      .help = "408 unless a request body is complete this\n"
              "long after its head (default 30000)", .flags = OPT_PASS },
    { .kind = OPT_TEXT, .help = "receipts (PROTOCOL.md 17):" },
    { "--escalate-after", OPT_I64, SERVE_OPT(escalate_after_s), .lo = 0,
      .hi = 86400 * 365, .arg = "SEC",
      .help = "a request or ack-required message unanswered\n"
              "this long gets one notice (default 600; 0 never)",
      .flags = OPT_PASS },
    { "--escalate-channel", OPT_STR, SERVE_OPT(escalate_channel), .arg = "C",
      .ok = serve_channel_ok, .bad = "takes a channel name of 1 to 100 characters",
      .help = "where those notices go (default general)", .flags = OPT_PASS },
    { 0 }
};
#undef SERVE_OPT

static const OptHelp serve_help = {
    "serve", "usage: arc [serve] [options]\nRun the hub in the foreground.\n", NULL
};

/* The serve defaults (the token: ARC_TOKEN's, resolved by opt_parse). */
static void serve_defaults(HubConfig *cfg) {
    *cfg = (HubConfig){ .host = "127.0.0.1", .port = 6969,
                        .storage = "arc.sqlite3", .spool_dir = ".arc-relay",
                        .max_body_chars = 128000, .max_attachment_chars = 256000,
                        .max_attachments = 32, .max_metadata_chars = 65536,
                        .presence_ttl_s = 120,
                        .sync_full = 1, .max_conns = ARC_MAX_CONNS,
                        .idle_ms = ARC_IDLE_MS, .head_ms = ARC_HEAD_MS,
                        .body_ms = ARC_BODY_MS,
                        .max_kv_value_chars = 65536,
                        .escalate_after_s = 600, .escalate_channel = "general" };
}

/* Parse the serve options into cfg; exits 0 after --help, 2 on bad usage. */
static void serve_options(int argc, char **argv, HubConfig *cfg) {
    serve_defaults(cfg);
    OptGroup g[] = { { serve_opts, cfg, NULL, 0 } };
    opt_parse(&serve_help, g, 1, argc, argv);
}

/* `arc --help`: after the command list, the serve options (the default
 * command). */
static void serve_print_help(void) {
    HubConfig cfg;
    serve_defaults(&cfg);
    OptGroup g[] = { { serve_opts, &cfg, NULL, 0 } };
    opt_help(&serve_help, g, 1, stdout);
}

/* Bind and listen on host:port. Returns the fd, or -1 with err filled. */
static int serve_listen(const char *host, int port, int *bound_port,
                        char err[ARC_ERRLEN]) {
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE }, *res = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc) {
        snprintf(err, ARC_ERRLEN, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0)
            break;
        snprintf(err, ARC_ERRLEN, "cannot listen on %s:%d: %s", host, port,
                 strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) return -1;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *bound_port = ntohs(ss.ss_family == AF_INET6
                            ? ((struct sockaddr_in6 *)&ss)->sin6_port
                            : ((struct sockaddr_in *)&ss)->sin_port);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    fd_nonblock(fd);
    return fd;
}

/* The URL clients should use for a hub bound to host:port. */
static void serve_url(const char *host, int port, char *out, size_t n) {
    if (!strcmp(host, "0.0.0.0") || !strcmp(host, "::")) host = "127.0.0.1";
    if (strchr(host, ':')) snprintf(out, n, "http://[%s]:%d", host, port);
    else snprintf(out, n, "http://%s:%d", host, port);
}

/* The pidfile, .arc.pid beside the storage file: {"pid","port","url"} as
 * the reference writes it. It is written through the storage directory's
 * descriptor by fs_replace_at, so a planted link is replaced, never
 * written through (PROTOCOL §2.6). Returns 0 or -1 (logged). */
static int serve_pidfile_write(int dfd, int port, const char *url) {
    char err[ARC_ERRLEN];
    Buf b = { 0 };
    buf_addf(&b, "{\"pid\": %d, \"port\": %d, \"url\": ", (int)getpid(), port);
    json_cstr(&b, url);
    buf_addc(&b, '}');
    int rc = fs_replace_at(dfd, ".arc.pid", buf_str(&b), err);
    if (rc) log_warn("cannot write the pidfile: %s", err);
    buf_free(&b);
    return rc;
}

/* Remove the pidfile if it is still ours (a newer hub may have replaced
 * it), and only once the storage is closed: `arc stop` takes its removal
 * as the end. */
static void serve_pidfile_remove(int dfd) {
    char buf[512], err[ARC_ERRLEN], mine[64];
    struct stat st;
    snprintf(mine, sizeof mine, "{\"pid\": %d,", (int)getpid());
    if (fs_read_at(dfd, ".arc.pid", buf, sizeof buf, &st, err) >= 0 &&
        !strncmp(buf, mine, strlen(mine)))
        unlinkat(dfd, ".arc.pid", 0);
}

/* An inotify descriptor that becomes readable whenever the -wal file is
 * written, by us or by another process on the same file (PROTOCOL §8.2);
 * -1 where inotify is missing, and the loop falls back to a timer. */
static int serve_watch_wal(const Store *s) {
#ifdef __linux__
    Buf wal = { 0 };
    buf_addf(&wal, "%s-wal", s->path);
    int fd = inotify_init();
    if (fd >= 0 && inotify_add_watch(fd, wal.p, IN_MODIFY) < 0) {
        close(fd);
        fd = -1;
    }
    if (fd >= 0) {
        fd_nonblock(fd);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    buf_free(&wal);
    return fd;
#else
    (void)s;
    return -1;
#endif
}

/* Every connection is a descriptor: take all the kernel allows, and fit
 * the default --max-conns under it. */
static void serve_nofile(HubConfig *cfg) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)cfg->max_conns + 64) {
        /* The default bows to the kernel quietly; a number asked for is
         * kept (EMFILE is refused with 503 too) and warned about. */
        if (cfg->max_conns == ARC_MAX_CONNS && rl.rlim_cur > 64 + 64)
            cfg->max_conns = (int)rl.rlim_cur - 64;
        else
            log_warn("the open-file limit (%llu) is below --max-conns (%d) plus "
                     "arc's own files; connections beyond it get 503",
                     (unsigned long long)rl.rlim_cur, cfg->max_conns);
    }
}

/* A running hub: its model, its loop, and what serve_stop() must undo. */
typedef struct {
    Hub hub;
    Loop loop;                     /* loop.hub points at hub */
    int store_open;                /* hub.store is open */
    int pid_dfd;                   /* the pidfile's directory, or -1 */
} Serve;

/* Refuse a configuration that would expose the hub (PROTOCOL §2.3): a
 * non-loopback address needs --allow-remote and a token (or the explicit
 * --insecure-no-auth). Returns 0, or 2 after saying why. */
static int serve_check_network(const HubConfig *cfg) {
    if (!cfg->allow_remote && !hub_is_loopback(cfg->host)) {
        fprintf(stderr, "arc: refusing to listen on %s without --allow-remote "
                "(network mode; it needs a token too, see arc --help)\n", cfg->host);
        return 2;
    }
    if (!hub_is_loopback(cfg->host) && !cfg->token[0] && !cfg->insecure_no_auth) {
        fprintf(stderr,
                "arc: refusing to listen on %s without a token: everyone who can\n"
                "arc: reach it could read and write every agent's messages.\n"
                "arc: Set one with --token-file FILE or ARC_TOKEN (clients then\n"
                "arc: need the same), or add --insecure-no-auth to run without.\n",
                cfg->host);
        return 2;
    }
    return 0;
}

/* Start serving from the command line: options, storage, listening socket,
 * wake pipe and signals, pidfile, relay thread, loop. Returns 0, or the
 * exit status (2: refused configuration, 1: could not start) with what was
 * set up left for serve_stop(). */
static int serve_start(Serve *s, int argc, char **argv) {
    Hub *h = &s->hub;
    Loop *l = &s->loop;
    HubConfig *cfg = &h->cfg;
    char err[ARC_ERRLEN] = "", url[300];
    int rc, port = 0, pipefd[2];
    loop_init(l, h);
    serve_options(argc, argv, cfg);
    if ((rc = serve_check_network(cfg))) goto done;
    rc = 1;
    h->token_n = strlen(cfg->token);   /* cfg->token is NUL-padded (opt_token) */
    if (cfg->token[0] && h->token_n < 16)
        log_warn("the token is only %zu characters long; use a long random "
                 "one (openssl rand -hex 32)", h->token_n);
    h->max_request_bytes = cfg->max_body_chars +
                           cfg->max_attachment_chars * cfg->max_attachments + 65536;
    serve_nofile(cfg);
    if (store_open(&h->store, cfg->storage, ARC_BUSY_MS, cfg->sync_full, err))
        goto done;
    s->store_open = 1;
    h->store.busy_budget_ms = ARC_BUSY_TURN_MS;   /* see loop_retry_busy */
    h->fold_behind = store_fold_behind(&h->store);   /* caught up by timer_fold */
    h->pr_check_ms = 1;   /* pids recorded before a restart: check them once */
    if ((l->listen_fd = serve_listen(cfg->host, cfg->port, &port, err)) < 0) goto done;
    l->wal_watch = serve_watch_wal(&h->store);
    if (pipe(pipefd)) die("pipe: %s", strerror(errno));
    l->wake_rd = pipefd[0];
    l->wake_wr = g_wake_wr = pipefd[1];
    fd_nonblock(l->wake_rd);
    fd_nonblock(l->wake_wr);
    struct sigaction sa = { .sa_handler = loop_on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    serve_url(cfg->host, port, url, sizeof url);
    s->pid_dfd = fs_open_parent(h->store.path, err);
    if (s->pid_dfd < 0) log_warn("no pidfile: %s", err);
    else serve_pidfile_write(s->pid_dfd, port, url);
    int remote = !hub_is_loopback(cfg->host);
    if (remote && !cfg->token[0])
        log_warn("\n"
                 "  ****************************************************************\n"
                 "  * NO AUTHENTICATION (--insecure-no-auth): listening on %s\n"
                 "  * port %d without a token. Every host that can reach it can read\n"
                 "  * and write every message, claim, lock and task, and stop it.\n"
                 "  ****************************************************************",
                 cfg->host, port);
    else if (remote)
        log_info("network mode: every request but GET / needs the bearer token; "
                 "plain HTTP is not encrypted, so use it on trusted networks or "
                 "behind TLS");
    if (!(l->relay = relay_start(cfg->spool_dir, l->wake_wr, NULL, NULL, NULL, err)))
        goto done;
    snprintf(h->spool_path, sizeof h->spool_path, "%s", l->relay->root);
    log_info("listening on %s (storage=%s, journal_mode=%s, instance=%s, "
             "relay=%s)", url, h->store.path, h->store.journal_mode,
             h->store.instance_id, l->relay->root);
    hub_now(h->started_at);
    loop_open(l);
    rc = 0;
done:
    if (rc && err[0]) fprintf(stderr, "arc: %s\n", err);
    return rc;
}

/* Serve until a signal or POST /v1/shutdown asks to stop. */
static void serve_run(Serve *s) {
    while (!loop_turn(&s->loop)) {}
}

/* Stop serving and release everything serve_start() set up, however far
 * it got. */
static void serve_stop(Serve *s) {
    Loop *l = &s->loop;
    if (l->poller) {   /* it served */
        log_info("shutting down");
        /* No request file is claimed from here on; those claimed but not
         * yet taken go back for the next hub, and one more turn serves
         * those already taken, so none is left unanswered. */
        relay_halt(l->relay);
        int back = relay_unclaim_pending(l->relay);
        if (back) log_info("relay: %d unserved requests left for the next hub", back);
        loop_turn(l);
        loop_drain(l);
    }
    relay_stop(l->relay);
    l->relay = NULL;
    if (l->listen_fd >= 0) close(l->listen_fd);
    l->listen_fd = -1;
    if (s->store_open) store_close(&s->hub.store);
    /* Only now that the storage is closed: `arc stop` takes the pidfile's
     * removal as the end. */
    if (s->pid_dfd >= 0) {
        serve_pidfile_remove(s->pid_dfd);
        close(s->pid_dfd);
        s->pid_dfd = -1;
    }
    g_wake_wr = -1;
    loop_close(l);
    mcp_hub_free(&s->hub);
    hub_batch_truncate(&s->hub, 0);
    free(s->hub.batch);
    for (int i = 0; i < s->hub.n_dl_later; i++) hub_dl_later_free(&s->hub.dl_later[i]);
    free(s->hub.dl_later);
    buf_free(&s->hub.threads);
}

/* arc serve: start, run until asked to stop, stop. */
static int cmd_serve(int argc, char **argv) {
    Serve *s = xrealloc(NULL, sizeof *s);
    memset(s, 0, sizeof *s);
    s->pid_dfd = -1;
    int rc = serve_start(s, argc, argv);
    if (rc == 0) serve_run(s);
    serve_stop(s);
    free(s);
    return rc;
}

/* ==== client: the blocking HTTP and relay client every command uses ======= */

/* One client for every command that talks to a hub: the CLI, `arc smoke`,
 * `arc mcp` and the standalone `arc relay`. A Client is one blocking
 * HTTP/1.1 connection, kept alive between calls, or, with relay_dir set,
 * the file spool a sandboxed agent must use (PROTOCOL §11); both give the
 * same answer, a status and a JSON body. Every call has a deadline and can
 * be cancelled through a file descriptor (MCP's notifications/cancelled),
 * since a blocking command has nothing else to do while it waits. The hub
 * is not trusted to be well-behaved: responses are read with
 * http_parse_response() and bounded (ARC_MAX_HEAD, ARC_CLIENT_MAX_BODY).
 * Calls are long-polls, never streams: GET /v1/stream is the dashboard's.
 * Below the calls, finding a running hub: its pidfile, then a probe. */

typedef struct {
    char host[128];
    int port;
    char base[200];        /* "http://host:port", no trailing slash */
    int fd;                /* kept open between calls; -1 when closed */
    Buf in;                /* response bytes read ahead */
    const char *relay_dir; /* borrowed: talk through this spool instead */
    const char *agent;     /* borrowed: whose spool directories (relay) */
    int cancel_fd;         /* readable = give up waiting (MCP cancellation) */
    const char *token;     /* borrowed: bearer token (opt_token), or NULL;
                            * never sent through the relay (PROTOCOL §2.4) */
} Client;

/* Set c up for the hub at url ("http://HOST:PORT", HOST may be [v6]); no
 * connection yet. Every Client starts here. Returns 0, or -1 with err. */
static int client_url(Client *c, const char *url, char err[ARC_ERRLEN]) {
    memset(c, 0, sizeof *c);
    c->fd = c->cancel_fd = -1;
    const char *p = url;
    if (strncmp(p, "http://", 7) != 0) {
        snprintf(err, ARC_ERRLEN, "unsupported URL (want http://HOST:PORT): %s", url);
        return -1;
    }
    p += 7;
    const char *end = p + strcspn(p, "/");
    const char *hs = p, *he, *colon;
    if (*p == '[') {
        hs = p + 1;
        he = memchr(p, ']', (size_t)(end - p));
        if (!he) goto bad;
        colon = he + 1 < end && he[1] == ':' ? he + 1 : NULL;
    } else {
        colon = memchr(p, ':', (size_t)(end - p));
        he = colon ? colon : end;
    }
    if (he == hs || (size_t)(he - hs) >= sizeof c->host) goto bad;
    memcpy(c->host, hs, (size_t)(he - hs));
    c->port = 80;
    if (colon) {
        int64_t port;
        if (parse_int_text((Str){ colon + 1, (size_t)(end - colon - 1) }, &port) ||
            port < 1 || port > 65535)
            goto bad;
        c->port = (int)port;
    }
    snprintf(c->base, sizeof c->base, "%.*s", (int)(end - url), url);
    return 0;
bad:
    snprintf(err, ARC_ERRLEN, "invalid URL: %s", url);
    return -1;
}

static void client_close(Client *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    buf_reset(&c->in);
}

static void client_free(Client *c) {
    client_close(c);
    buf_free(&c->in);
}

/* Wait until fd is ready for `events`. -1 when the deadline passes or
 * cancel_fd (if not -1) becomes readable first. */
static int client_wait(int fd, short events, int cancel_fd, int64_t deadline_ms) {
    for (;;) {
        int64_t left = deadline_ms - clock_ms();
        if (left <= 0) return -1;
        struct pollfd p[2] = { { .fd = fd, .events = events },
                               { .fd = cancel_fd, .events = POLLIN } };
        int rc = poll(p, cancel_fd >= 0 ? 2 : 1, (int)left);
        if (rc > 0 && p[1].revents) return -1;
        if (rc > 0) return 0;
        if (rc < 0 && errno != EINTR) return -1;
    }
}

/* Open c->fd to the hub, trying each resolved address until one accepts
 * (non-blocking connect, so the deadline and cancel_fd hold). 0 or -1. */
static int client_connect(Client *c, int64_t deadline_ms, char err[ARC_ERRLEN]) {
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM },
                    *res = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", c->port);
    int rc = getaddrinfo(c->host, ps, &hints, &res);
    if (rc) {
        snprintf(err, ARC_ERRLEN, "cannot resolve %s: %s", c->host, gai_strerror(rc));
        return -1;
    }
    snprintf(err, ARC_ERRLEN, "cannot connect to %s", c->base);
    for (struct addrinfo *ai = res; ai && c->fd < 0; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) continue;
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        fd_nonblock(fd);
        int ok = connect(fd, ai->ai_addr, ai->ai_addrlen) == 0;
        if (!ok && errno == EINPROGRESS &&
            client_wait(fd, POLLOUT, c->cancel_fd, deadline_ms) == 0) {
            int e = 0;
            socklen_t el = sizeof e;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el);
            ok = e == 0;
            if (e) errno = e;
        }
        if (ok) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            c->fd = fd;
        } else {
            snprintf(err, ARC_ERRLEN, "cannot connect to %s: %s", c->base,
                     strerror(errno));
            close(fd);
        }
    }
    freeaddrinfo(res);
    return c->fd >= 0 ? 0 : -1;
}

/* The same call through the file spool (PROTOCOL §11): write the request
 * file atomically, then wait for the answer file. Transport failures use
 * the reference's statuses: 597 the spool could not be written, 598 no
 * answer in time; both return -1 like an unreachable hub. */
static int client_relay_call(Client *c, const char *method, const char *path,
                          Str body, int64_t timeout_ms, int *status, Buf *out,
                          char err[ARC_ERRLEN]) {
    int64_t deadline = clock_ms() + timeout_ms;
    Buf agent = { 0 }, reqdir = { 0 }, respdir = { 0 }, env = { 0 }, resp = { 0 };
    char id[33], now[ISO_LEN];
    unsigned char rnd[16];
    int rc = -1, ino = -1;
    rand_bytes(rnd, sizeof rnd);
    for (int i = 0; i < 16; i++) snprintf(id + 2 * i, 3, "%02x", rnd[i]);
    relay_safe_name(c->agent, &agent);
    buf_addf(&reqdir, "%s/requests/%s", c->relay_dir, agent.p);
    buf_addf(&respdir, "%s/responses/%s", c->relay_dir, agent.p);
    if (relay_mkdirs(reqdir.p) || relay_mkdirs(respdir.p)) {
        *status = 597;
        snprintf(err, ARC_ERRLEN, "relay spool write failed: %s: %s", reqdir.p,
                 strerror(errno));
        goto done;
    }
#ifdef __linux__
    ino = inotify_init();
    if (ino >= 0) fd_nonblock(ino);
    if (ino >= 0 && inotify_add_watch(ino, respdir.p, IN_MOVED_TO | IN_CLOSE_WRITE) < 0) {
        close(ino);
        ino = -1;
    }
#endif
    iso_format(clock_wall_us(), now);
    buf_addf(&env, "{\"request_id\":\"%s\",\"agent_id\":", id);
    json_cstr(&env, c->agent);
    buf_adds(&env, ",\"method\":");
    json_cstr(&env, method);
    buf_adds(&env, ",\"path\":");
    json_cstr(&env, path);
    buf_adds(&env, ",\"body\":");
    if (body.p) buf_addstr(&env, body);
    else buf_adds(&env, "null");
    buf_addf(&env, ",\"created_at\":\"%s\"}", now);
    char name[48];
    snprintf(name, sizeof name, "%s.json", id);
    if (relay_write_file(reqdir.p, name, buf_str(&env))) {
        *status = 597;
        snprintf(err, ARC_ERRLEN, "relay spool write failed: %s", strerror(errno));
        goto done;
    }
    buf_addf(&resp, "%s/%s", respdir.p, name);
    for (;;) {
        int fd = open(resp.p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
            /* The answer's body is bounded as over HTTP; the envelope
             * around it gets a little room. */
            Buf data = { .max = (size_t)ARC_CLIENT_MAX_BODY + 4096 };
            char chunk[16384];
            ssize_t n;
            while (!data.err && (n = read(fd, chunk, sizeof chunk)) != 0) {
                if (n > 0) buf_add(&data, chunk, (size_t)n);
                else if (errno != EINTR) break;
            }
            close(fd);
            Json j = { 0 };
            uint32_t st, b;
            if (data.err) {
                snprintf(err, ARC_ERRLEN, "relay answer %s is larger than "
                         "ARC_CLIENT_MAX_BODY (%zu bytes)", resp.p,
                         (size_t)ARC_CLIENT_MAX_BODY);
            } else if (json_parse(&j, buf_cstr(&data), data.len) == 0 &&
                (st = json_get(&j, 0, "status")) && (b = json_get(&j, 0, "body")) &&
                j.t[b].type == JSON_OBJ) {
                int64_t s64 = 0;
                json_to_i64(&j, st, &s64);
                *status = (int)s64;
                buf_reset(out);
                json_write(out, &j, b);
                rc = 0;
            } else {
                uint32_t e = json_parse(&j, buf_cstr(&data), data.len) == 0
                                 ? json_get(&j, 0, "error") : 0;
                Buf m = { 0 };
                if (e) json_as_text(&m, &j, e);
                snprintf(err, ARC_ERRLEN, "relay answered without a hub response: %s",
                         m.len ? m.p : "invalid response file");
                buf_free(&m);
            }
            json_free(&j);
            buf_free(&data);
            break;
        }
        int64_t left = deadline - clock_ms();
        if (left <= 0) {
            *status = 598;
            snprintf(err, ARC_ERRLEN, "relay timed out waiting for response in %s",
                     respdir.p);
            break;
        }
        /* Without inotify, look every 10 ms; the cancel fd stays in slot 1. */
        struct pollfd p[2] = { { .fd = ino, .events = POLLIN },
                               { .fd = c->cancel_fd, .events = POLLIN } };
        poll(p, 2, ino >= 0 ? (int)(left < 1000 ? left : 1000)
                            : (int)(left < 10 ? left : 10));
        if (p[1].revents) {
            *status = 598;
            snprintf(err, ARC_ERRLEN, "cancelled");
            break;
        }
        if (ino >= 0 && p[0].revents) {
            char tmp[4096];
            while (read(ino, tmp, sizeof tmp) > 0) {}
        }
    }
done:
    if (ino >= 0) close(ino);
    buf_free(&agent), buf_free(&reqdir), buf_free(&respdir);
    buf_free(&env), buf_free(&resp);
    return rc;
}

/* Read the response to the request just sent on c->fd: its head through
 * http_parse_response(), then its body, framed by Content-Length or by
 * the connection's end and never more than ARC_CLIENT_MAX_BODY bytes.
 * Interim 1xx heads are skipped. Returns 0 with the status and body, -1
 * with err, or 1 when the connection was closed before a single byte came
 * back (a kept-alive connection the hub had dropped: the caller retries). */
static int client_read_response(Client *c, int64_t deadline, int64_t timeout_ms,
                                int *status, Buf *out, char err[ARC_ERRLEN]) {
    HttpResp r;
    int head = ARC_AGAIN, eof = 0;
    size_t got = 0;                      /* bytes read for this response */
    for (;;) {
        if (head == ARC_AGAIN) head = http_parse_response(c->in.p, c->in.len, &r);
        if (head == ARC_BAD) {
            snprintf(err, ARC_ERRLEN, "invalid response from %s: %s", c->base,
                     r.err_msg);
            return -1;
        }
        if (head > 0 && r.status < 200) {   /* 100 Continue and the like */
            buf_consume(&c->in, (size_t)head);
            head = ARC_AGAIN;
            continue;
        }
        if (head > 0 && r.body == HTTP_BODY_CHUNKED) {
            snprintf(err, ARC_ERRLEN, "%s answered with a chunked body, which "
                     "arc's client does not read", c->base);
            return -1;
        }
        size_t have = head > 0 ? c->in.len - (size_t)head : 0;
        if (head > 0 && r.body == HTTP_BODY_LENGTH &&
            r.content_length <= (int64_t)ARC_CLIENT_MAX_BODY &&
            have >= (size_t)r.content_length)
            break;
        if (head > 0 && (r.content_length > (int64_t)ARC_CLIENT_MAX_BODY ||
                         have > ARC_CLIENT_MAX_BODY)) {
            snprintf(err, ARC_ERRLEN, "response from %s is larger than "
                     "ARC_CLIENT_MAX_BODY (%zu bytes)", c->base,
                     (size_t)ARC_CLIENT_MAX_BODY);
            return -1;
        }
        if (head > 0 && r.body == HTTP_BODY_CLOSE && eof) break;
        if (eof) {
            if (got == 0) return 1;
            snprintf(err, ARC_ERRLEN, "connection to %s closed mid-response",
                     c->base);
            return -1;
        }
        if (client_wait(c->fd, POLLIN, c->cancel_fd, deadline)) {
            if (clock_ms() < deadline)
                snprintf(err, ARC_ERRLEN, "cancelled");
            else
                snprintf(err, ARC_ERRLEN, "no answer from %s within %lld ms",
                         c->base, (long long)timeout_ms);
            return -1;
        }
        buf_reserve(&c->in, 65536);      /* c->in has no max: cannot fail */
        ssize_t n = read(c->fd, c->in.p + c->in.len, 65536);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) {                    /* the end, or a reset: the same */
            eof = 1;
            continue;
        }
        got += (size_t)n;
        c->in.len += (size_t)n;
        c->in.p[c->in.len] = 0;
    }
    size_t blen = r.body == HTTP_BODY_LENGTH ? (size_t)r.content_length
                                             : c->in.len - (size_t)head;
    *status = r.status;
    buf_reset(out);
    buf_add(out, c->in.p + head, blen);
    if (r.close) client_close(c);
    else buf_consume(&c->in, (size_t)head + blen);
    return 0;
}

/* Send one request and read its response. Returns 0 with the status and
 * body, or -1 with err (no response). Reuses the kept-alive connection and,
 * if the hub had closed it meanwhile, retries once on a fresh one. */
static int client_call(Client *c, const char *method, const char *path, Str body,
                    int64_t timeout_ms, int *status, Buf *out,
                    char err[ARC_ERRLEN]) {
    if (c->relay_dir)
        return client_relay_call(c, method, path, body, timeout_ms, status, out, err);
    int64_t deadline = clock_ms() + timeout_ms;
    Buf req = { 0 };
    int v6 = strchr(c->host, ':') != NULL;
    buf_addf(&req, "%s %s HTTP/1.1\r\nHost: %s%s%s:%d\r\nUser-Agent: arc/"
             ARC_VERSION "\r\n", method, path, v6 ? "[" : "", c->host, v6 ? "]" : "",
             c->port);
    if (c->token && c->token[0])
        buf_addf(&req, "Authorization: Bearer %s\r\n", c->token);
    if (body.p)
        buf_addf(&req, "Content-Type: application/json\r\nContent-Length: %zu\r\n",
                 body.n);
    buf_adds(&req, "\r\n");
    if (body.p) buf_addstr(&req, body);
    int rc = -1;
    for (int attempt = 0; attempt < 2 && rc < 0; attempt++) {
        int reused = c->fd >= 0;
        if (!reused && client_connect(c, deadline, err)) break;
        buf_reset(&c->in);
        size_t off = 0;
        while (off < req.len) {
            ssize_t w = write(c->fd, req.p + off, req.len - off);
            if (w > 0) { off += (size_t)w; continue; }
            if (w < 0 && errno == EINTR) continue;
            if (w < 0 && errno == EAGAIN &&
                client_wait(c->fd, POLLOUT, c->cancel_fd, deadline) == 0)
                continue;
            break;
        }
        if (off < req.len) {
            snprintf(err, ARC_ERRLEN, "cannot send to %s: %s", c->base, strerror(errno));
            client_close(c);
            if (reused) continue;
            break;
        }
        rc = client_read_response(c, deadline, timeout_ms, status, out, err);
        if (rc == 0) break;
        client_close(c);
        if (rc == 1 && reused) {         /* the hub closed an idle connection */
            rc = -1;
            continue;
        }
        if (rc == 1)
            snprintf(err, ARC_ERRLEN, "connection to %s closed mid-response",
                     c->base);
        rc = -1;
        break;
    }
    buf_free(&req);
    return rc;
}

/* ---- finding a running hub ---- */

typedef struct {
    int pid;            /* 0 if unknown */
    char url[320];
    char path[PATH_MAX + 16];   /* the pidfile */
    int refused;        /* it answers, but refuses our token (401) */
} HubRef;

/* Is body a hub-info answer, from the process pid if pid > 0? An arc hub
 * reports its pid; the reference reports none, and is taken at its word. */
static int cli_probe_match(const Buf *body, int pid) {
    Json j = { 0 };
    uint32_t res, v;
    int64_t got;
    int ok = json_parse(&j, buf_cstr(body), body->len) == 0 &&
             (res = json_get(&j, 0, "result")) && json_get(&j, res, "instance_id") &&
             (pid <= 0 || !(v = json_get(&j, res, "pid")) ||
              (json_to_i64(&j, v, &got) == 0 && got == pid));
    json_free(&j);
    return ok;
}

/* Does a hub answer at url, given our token (or none)? With pid > 0 (from
 * a pidfile) a hub that reports another pid in hub-info is not the one the
 * pidfile names. Returns PROBE_OK, PROBE_REFUSED when a hub answers 401 (it
 * wants another token), or 0. */
enum { PROBE_OK = 1, PROBE_REFUSED = 2 };
static int client_probe(const char *url, const char *token, int pid,
                     int64_t timeout_ms) {
    Client c;
    char err[ARC_ERRLEN] = "";
    Buf body = { 0 };
    int status = 0, ok = 0;
    if (client_url(&c, url, err) == 0) {
        c.token = token;
        if (client_call(&c, "GET", "/v1/hub-info", (Str){ NULL, 0 }, timeout_ms,
                     &status, &body, err) == 0) {
            if (status == 200 && cli_probe_match(&body, pid)) ok = PROBE_OK;
            else if (status == 401 && strstr(buf_cstr(&body), "\"ok\":false"))
                ok = PROBE_REFUSED;
        }
    }
    client_free(&c);
    buf_free(&body);
    return ok;
}

/* The message for a hub that refused our token. */
static void client_refused_msg(const char *url, const char *token, char *out, size_t n) {
    snprintf(out, n, "the hub at %s %s (give it with --token-file, ARC_TOKEN or "
             "--token)", url, token && *token ? "refused the token"
                                              : "requires a token");
}

/* Is url an http URL on a loopback address (127.0.0.0/8, [::1],
 * localhost)? A pidfile naming anything else is not obeyed. */
static int cli_url_loopback(const char *url) {
    if (strncmp(url, "http://", 7)) return 0;
    const char *h = url + 7;
    size_t n = strcspn(h, ":/");
    if (h[0] == '[') return !strncmp(h, "[::1]", 5) && strchr(":/", h[5]) && h[5];
    if (str_ieq((Str){ h, n }, "localhost")) return 1;
    struct in_addr a;
    char ip[16];
    if (n >= sizeof ip) return 0;
    memcpy(ip, h, n);
    ip[n] = 0;
    return inet_pton(AF_INET, ip, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

/* Is pid a live process of ours running arc? On Linux its executable is
 * this very binary, or one named arc* whose first argument is "serve" (a
 * hub started by another build of arc). Elsewhere only that it is ours and
 * alive; the hub then has to confirm the pid over HTTP (client_probe). A pid
 * that is gone, another user's, or another program's is not obeyed: a
 * planted pidfile must not make `arc stop` signal it. */
static int cli_pid_is_arc(int pid) {
    if (pid <= 1 || kill(pid, 0) != 0) return 0;   /* EPERM: not ours */
#ifdef __linux__
    char path[64], exe[PATH_MAX];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    int ours = 0;
    if (f) {
        char line[256];
        unsigned long uid;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "Uid: %*u %lu", &uid) == 1) {
                ours = uid == (unsigned long)geteuid();
                break;
            }
        fclose(f);
    }
    if (!ours) return 0;
    struct stat a, b;
    snprintf(path, sizeof path, "/proc/%d/exe", pid);
    if (stat(path, &a) == 0 && stat("/proc/self/exe", &b) == 0 &&
        a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        return 1;
    ssize_t n = readlink(path, exe, sizeof exe - 1);
    if (n <= 0) return 0;
    exe[n] = 0;
    const char *base = strrchr(exe, '/');
    base = base ? base + 1 : exe;
    if (strncmp(base, "arc", 3)) return 0;
    char args[256] = "";
    snprintf(path, sizeof path, "/proc/%d/cmdline", pid);
    f = fopen(path, "r");
    size_t got = f ? fread(args, 1, sizeof args - 1, f) : 0;
    if (f) fclose(f);
    args[got] = 0;
    size_t first = strlen(args);   /* argv[0], then NUL, then argv[1] */
    return first + 1 < got && !strcmp(args + first + 1, "serve");
#else
    return 1;
#endif
}

/* Read and vet the pidfile dir/.arc.pid: obeyed only if the directory and
 * the file are ours and writable by nobody else (fs_trusted), the file is
 * a regular one reached without a link, its URL is on loopback and its pid
 * is an arc process of ours (PROTOCOL §2.6). Returns 0 with ref->pid, url
 * and path filled; -1 (why in err) otherwise. */
static int client_read_pidfile(const char *dir, HubRef *ref, char err[ARC_ERRLEN]) {
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        snprintf(err, ARC_ERRLEN, "%.400s: %s", dir, strerror(errno));
        return -1;
    }
    char buf[1024];
    struct stat dst, fst;
    ssize_t n = -1;
    if (fstat(dfd, &dst) || !fs_trusted(&dst))
        snprintf(err, ARC_ERRLEN, "%.400s is writable by others", dir);
    else if ((n = fs_read_at(dfd, ".arc.pid", buf, sizeof buf, &fst, err)) >= 0 &&
             !fs_trusted(&fst)) {
        snprintf(err, ARC_ERRLEN, "%.400s/.arc.pid is writable by others", dir);
        n = -1;
    }
    close(dfd);
    if (n < 0) return -1;
    Json j = { 0 };
    int rc = -1;
    int64_t pid;
    uint32_t vp, vu;
    snprintf(err, ARC_ERRLEN, "%.400s/.arc.pid holds no pid and url", dir);
    if (json_parse(&j, buf, (size_t)n) == 0 && (vp = json_get(&j, 0, "pid")) &&
        (vu = json_get(&j, 0, "url")) && j.t[vu].type == JSON_STR &&
        json_to_i64(&j, vp, &pid) == 0 && pid > 0 && pid < INT_MAX) {
        Buf u = { 0 };
        json_unescape(&j, vu, &u);
        int cut = snprintf(ref->url, sizeof ref->url, "%s", buf_cstr(&u)) >=
                  (int)sizeof ref->url;
        ref->pid = (int)pid;
        snprintf(ref->path, sizeof ref->path, "%s/.arc.pid", dir);
        if (cut || !cli_url_loopback(ref->url))
            snprintf(err, ARC_ERRLEN, "%.400s names a URL that is not loopback",
                     ref->path);
        else if (!cli_pid_is_arc(ref->pid))
            snprintf(err, ARC_ERRLEN, "%.400s names pid %d, not an arc process "
                     "of this user", ref->path, ref->pid);
        else
            rc = 0;
        buf_free(&u);
    }
    json_free(&j);
    return rc;
}

/* The directory holding the storage file, made absolute (it need not
 * exist yet). */
static void client_storage_dir(const char *storage, char *out, size_t n) {
    char cwd[PATH_MAX] = ".";
    if (!getcwd(cwd, sizeof cwd)) snprintf(cwd, sizeof cwd, ".");
    const char *slash = strrchr(storage, '/');
    if (storage[0] == '/')
        snprintf(out, n, "%.*s", slash == storage ? 1 : (int)(slash - storage), storage);
    else if (slash) snprintf(out, n, "%s/%.*s", cwd, (int)(slash - storage), storage);
    else snprintf(out, n, "%s", cwd);
    char real[PATH_MAX];
    if (realpath(out, real)) snprintf(out, n, "%s", real);
}

/* Look for a live hub's pidfile in the current directory and its parents,
 * then beside the storage file and its parents (as the reference does). A
 * pidfile whose process is gone, or whose URL does not answer as an arc hub,
 * is stale and skipped. Returns 1 with ref filled, or 0. */
static int client_discover(const char *storage, const char *token, HubRef *ref) {
    char roots[2][PATH_MAX];
    if (!getcwd(roots[0], sizeof roots[0])) snprintf(roots[0], PATH_MAX, "/");
    client_storage_dir(storage, roots[1], sizeof roots[1]);
    for (int r = 0; r < 2; r++) {
        char dir[PATH_MAX];
        memcpy(dir, roots[r], sizeof dir);
        for (;;) {
            char why[ARC_ERRLEN];
            int probe;
            if (client_read_pidfile(dir, ref, why) == 0 &&
                (probe = client_probe(ref->url, token, ref->pid, 2000))) {
                ref->refused = probe == PROBE_REFUSED;
                return 1;
            }
            char *slash = strrchr(dir, '/');
            if (!slash || slash == dir) {
                if (strcmp(dir, "/") == 0) break;
                snprintf(dir, sizeof dir, "/");
                continue;
            }
            *slash = 0;
        }
    }
    return 0;
}

/* ==== setup: `arc setup HARNESS` and `arc doctor`: wiring agent harnesses == */

/* `arc setup` merges arc into a harness's own config files: an MCP server
 * entry running `ARC mcp --agent NAME` and, where the harness has hooks,
 * entries running `ARC hook HARNESS EVENT --agent NAME` (ARC is this
 * binary's absolute path, from /proc/self/exe, else argv[0] resolved).
 * What each harness gets, and where it lives, is the table setup_harnesses[]
 * (docs/SETUP.md cites the source of every fact in it).
 *
 * A config file belongs to the user: setup edits it as text, never
 * re-serialises it. JSON is parsed with the json section's reader, whose
 * tokens keep byte offsets, and arc's members are spliced in or out at
 * those offsets, so every other byte (order, spacing, escapes) stays as it
 * was; a new member takes the indentation of its siblings. A file that is
 * not strict JSON (comments, trailing commas: JSONC) is refused, never
 * rewritten. Codex's TOML gets a textual edit of one table,
 * [mcp_servers.arc]; no other table is touched.
 *
 * Every edit is a pure function of (the file's bytes, harness, agent,
 * ARC), which gives idempotence (a second run finds nothing to change) and
 * an exact undo: the first change of an existing file keeps its original
 * bytes in FILE.arc-backup, and --remove restores them when the file is
 * exactly what setup would make of the backup; otherwise (the user edited
 * it since) it takes arc's entries out and leaves the rest. A file setup
 * created is deleted. Files are reached from the project directory (or
 * $HOME) one component at a time with O_NOFOLLOW and replaced atomically
 * (fs_openat, fs_replace_at): a symbolic link anywhere on the way is
 * refused with an error, never followed. */

#define SETUP_MAX_FILE (64u << 20)   /* a config file we will read */
#define SETUP_AGENT_MAX 64           /* characters of an agent name */

/* Defined in cli, below: the argv[0] arc was started with. A tentative
 * declaration, so setup can find its own binary when /proc is missing. */
static const char *g_argv0;

typedef enum { SETUP_PROJECT, SETUP_USER } SetupScope;

/* One change to one file. */
typedef enum {
    SE_MCP,        /* JSON: member "arc" of the object at `path` */
    SE_APPROVE,    /* JSON: "arc" in the string array at `path` */
    SE_HOOKS,      /* JSON: arc's hook entries in the object at `path` */
    SE_TOML_MCP,   /* TOML: the table [mcp_servers.arc] */
    SE_AGENT,      /* whole file: the agent's name, for `arc hook` */
    SE_PLUGIN      /* whole file: OpenCode's plugin */
} SetupKind;

/* How an MCP server entry or a hook entry is spelled for a harness. */
enum {
    MS_STDIO = 1,  /* {"type":"stdio","command","args"} */
    MS_PLAIN,      /* {"command","args"} */
    MS_COPILOT,    /* {"type":"local","command","args","tools":["*"]} */
    MS_OPENCODE,   /* {"type":"local","command":[...],"enabled":true} */
    HS_GROUPS,     /* EVENT: [{"matcher"?, "hooks": [{"type":"command",...}]}] */
    HS_GEMINI,     /* the same, each handler also named, timeouts in ms */
    HS_FLAT        /* Cursor: EVENT: [{"command", "matcher"?, "timeout"}] */
};

typedef struct {
    const char *file[2];   /* per SetupScope, relative to the project or
                            * $HOME; NULL: not in that scope */
    SetupKind kind;
    const char *path;      /* JSON: the object's key ("mcpServers") */
    int style;             /* MS_* or HS_* */
} SetupEdit;

/* One hook entry: under JSON key `key`, run `arc hook H EVENT`. */
typedef struct {
    const char *key;       /* the harness's event name */
    const char *event;     /* arc hook's EVENT argument */
    const char *matcher;   /* or NULL: every tool / every occasion */
    int timeout;           /* in the harness's unit (s; Gemini: ms); 0: none */
    int rewake;            /* Claude Code: asyncRewake (runs in background,
                            * exit 2 wakes the idle session) */
} SetupHook;

typedef struct {
    const char *name;      /* `arc setup NAME` */
    const char *bin;       /* its executable, for doctor; NULL: an editor */
    const SetupEdit *edits;
    int n_edits;
    const SetupHook *hooks;
    int n_hooks;
    int user_only;         /* no project file: --scope user is implied */
    const char *note[2];   /* the human step after setup, per scope */
} SetupHarness;

static const SetupEdit setup_claude_edits[] = {
    { { ".mcp.json", ".claude.json" }, SE_MCP, "mcpServers", MS_STDIO },
    { { ".claude/settings.local.json", NULL }, SE_APPROVE,
      "enabledMcpjsonServers", 0 },
    { { ".claude/settings.json", ".claude/settings.json" }, SE_HOOKS, "hooks",
      HS_GROUPS },
    { { ".arc/agent-claude", ".arc/agent-claude" }, SE_AGENT, NULL, 0 },
};
static const SetupHook setup_claude_hooks[] = {
    { "SessionStart", "SessionStart", NULL, 10, 0 },
    { "UserPromptSubmit", "UserPromptSubmit", NULL, 10, 0 },
    { "PreToolUse", "PreToolUse", "Edit|Write|MultiEdit|NotebookEdit", 10, 0 },
    { "PostToolUse", "PostToolUse", NULL, 10, 0 },
    { "Stop", "Stop", NULL, 10, 0 },
    { "Stop", "wait", NULL, 3600, 1 },
    { "SessionEnd", "SessionEnd", NULL, 10, 0 },
    /* waiting on a human: hook_notify_waits (not idle_prompt) */
    { "Notification", "Notification", "permission_prompt|elicitation_dialog", 10, 0 },
};
static const SetupEdit setup_codex_edits[] = {
    { { ".codex/config.toml", ".codex/config.toml" }, SE_TOML_MCP, NULL, 0 },
    { { ".codex/hooks.json", ".codex/hooks.json" }, SE_HOOKS, "hooks",
      HS_GROUPS },
    { { ".arc/agent-codex", ".arc/agent-codex" }, SE_AGENT, NULL, 0 },
};
static const SetupHook setup_codex_hooks[] = {
    { "SessionStart", "SessionStart", NULL, 10, 0 },
    { "UserPromptSubmit", "UserPromptSubmit", NULL, 10, 0 },
    /* apply_patch, Codex's file edits: tool_input.command is the patch */
    { "PreToolUse", "PreToolUse", "apply_patch", 10, 0 },
    { "PostToolUse", "PostToolUse", NULL, 10, 0 },
    { "Stop", "Stop", NULL, 10, 0 },
};
static const SetupEdit setup_gemini_edits[] = {
    { { ".gemini/settings.json", ".gemini/settings.json" }, SE_MCP,
      "mcpServers", MS_PLAIN },
    { { ".gemini/settings.json", ".gemini/settings.json" }, SE_HOOKS, "hooks",
      HS_GEMINI },
    { { ".arc/agent-gemini", ".arc/agent-gemini" }, SE_AGENT, NULL, 0 },
};
static const SetupHook setup_gemini_hooks[] = {
    { "SessionStart", "SessionStart", NULL, 10000, 0 },
    { "BeforeAgent", "BeforeAgent", NULL, 10000, 0 },
    { "BeforeTool", "BeforeTool", "write_file|replace", 10000, 0 },
    { "AfterTool", "AfterTool", NULL, 10000, 0 },
    { "AfterAgent", "AfterAgent", NULL, 10000, 0 },
    { "SessionEnd", "SessionEnd", NULL, 10000, 0 },
    { "Notification", "Notification", NULL, 10000, 0 },   /* ToolPermission */
};
static const SetupEdit setup_cursor_edits[] = {
    { { ".cursor/mcp.json", ".cursor/mcp.json" }, SE_MCP, "mcpServers",
      MS_PLAIN },
    { { ".cursor/hooks.json", ".cursor/hooks.json" }, SE_HOOKS, "hooks",
      HS_FLAT },
    { { ".arc/agent-cursor", ".arc/agent-cursor" }, SE_AGENT, NULL, 0 },
};
/* No beforeSubmitPrompt: Cursor lets it only block the prompt (continue,
 * user_message), not add context, so it has nothing to carry. */
static const SetupHook setup_cursor_hooks[] = {
    { "sessionStart", "sessionStart", NULL, 10, 0 },
    { "preToolUse", "preToolUse", "Write|StrReplace|Edit|MultiEdit|Delete", 10, 0 },
    { "postToolUse", "postToolUse", NULL, 10, 0 },
    { "stop", "stop", NULL, 10, 0 },
    { "sessionEnd", "sessionEnd", NULL, 10, 0 },
};
static const SetupEdit setup_opencode_edits[] = {
    { { "opencode.json", ".config/opencode/opencode.json" }, SE_MCP, "mcp",
      MS_OPENCODE },
    { { ".opencode/plugins/arc.js", ".config/opencode/plugins/arc.js" },
      SE_PLUGIN, NULL, 0 },
    { { ".arc/agent-opencode", ".arc/agent-opencode" }, SE_AGENT, NULL, 0 },
};
static const SetupEdit setup_vscode_edits[] = {
    { { ".vscode/mcp.json",
#ifdef __APPLE__
        "Library/Application Support/Code/User/mcp.json"
#else
        ".config/Code/User/mcp.json"
#endif
      }, SE_MCP, "servers", MS_STDIO },
};
static const SetupEdit setup_copilot_edits[] = {
    { { NULL, ".copilot/mcp-config.json" }, SE_MCP, "mcpServers", MS_COPILOT },
};
static const SetupEdit setup_windsurf_edits[] = {
    { { NULL, ".codeium/windsurf/mcp_config.json" }, SE_MCP, "mcpServers",
      MS_PLAIN },
};

#define SETUP_N(a) ((int)(sizeof a / sizeof *a))
static const SetupHarness setup_harnesses[] = {
    { "claude", "claude", setup_claude_edits, SETUP_N(setup_claude_edits),
      setup_claude_hooks, SETUP_N(setup_claude_hooks), 0,
      { "start `claude` here; `claude mcp list` shows arc (approved in "
        ".claude/settings.local.json)", "start `claude`; `claude mcp list` "
        "shows arc" } },
    { "codex", "codex", setup_codex_edits, SETUP_N(setup_codex_edits),
      setup_codex_hooks, SETUP_N(setup_codex_hooks), 0,
      { "Codex reads .codex/ only in a trusted project: run `codex` here and "
        "trust the folder; then type /hooks and trust arc's hooks (Codex "
        "skips untrusted hooks silently). Codex before hooks were on by "
        "default also needs `[features] codex_hooks = true` in "
        "~/.codex/config.toml",
        "run `codex`, type /hooks and trust arc's hooks (Codex skips "
        "untrusted hooks silently)" } },
    { "gemini", "gemini", setup_gemini_edits, SETUP_N(setup_gemini_edits),
      setup_gemini_hooks, SETUP_N(setup_gemini_hooks), 0,
      { "Gemini CLI ignores .gemini/settings.json in an untrusted folder: run "
        "`gemini` here and trust it; `/mcp` lists arc", "run `gemini`; `/mcp` "
        "lists arc" } },
    { "cursor", NULL, setup_cursor_edits, SETUP_N(setup_cursor_edits),
      setup_cursor_hooks, SETUP_N(setup_cursor_hooks), 0,
      { "in Cursor: Settings > MCP, enable arc (hooks load on restart)",
        "in Cursor: Settings > MCP, enable arc (hooks load on restart)" } },
    { "opencode", "opencode", setup_opencode_edits,
      SETUP_N(setup_opencode_edits), NULL, 0, 0,
      { "restart opencode here; `opencode mcp list` shows arc",
        "restart opencode; `opencode mcp list` shows arc" } },
    { "vscode", NULL, setup_vscode_edits, SETUP_N(setup_vscode_edits), NULL,
      0, 0, { "in VS Code: run `MCP: List Servers`, start arc and trust it",
              "in VS Code: run `MCP: List Servers`, start arc and trust it" } },
    { "copilot", "copilot", setup_copilot_edits, SETUP_N(setup_copilot_edits),
      NULL, 0, 1, { NULL, "in `copilot`, `/mcp show` lists arc" } },
    { "windsurf", NULL, setup_windsurf_edits, SETUP_N(setup_windsurf_edits),
      NULL, 0, 1, { NULL, "in Windsurf: Cascade > MCP servers, refresh" } },
};

/* One run of setup, remove or doctor for one harness and scope. */
typedef struct {
    const SetupHarness *h;
    SetupScope scope;
    int dry, remove;
    const char *agent;     /* borrowed: argv, or agent_buf */
    char agent_buf[SETUP_AGENT_MAX + 1];
    char arc[PATH_MAX];    /* this binary, absolute */
    Buf arc_sh;            /* arc, quoted for a shell when it needs it */
    int rootfd;            /* the project directory or $HOME */
    const char *root;      /* its name in messages: "" or "~/" */
    int check;             /* setup_one: compute and report errors only */
    int channel;           /* claude: the entry runs `arc mcp --channel` */
    int found_channel;     /* setup_stored_agent: the stored entry does */
} SetupCtx;

/* ---- finding ourselves, naming the agent ---- */

/* This binary's absolute path into out: /proc/self/exe where there is one,
 * else argv[0] made absolute (through $PATH when it has no slash). */
static int setup_self(char out[PATH_MAX], char err[ARC_ERRLEN]) {
    ssize_t n = readlink("/proc/self/exe", out, PATH_MAX - 1);
    if (n > 0) {
        out[n] = 0;
        if (out[0] == '/' && !strstr(out, " (deleted)")) return 0;
    }
    const char *a0 = g_argv0 ? g_argv0 : "arc";
    if (strchr(a0, '/')) {
        if (realpath(a0, out)) return 0;
    } else {
        const char *p = getenv("PATH");
        while (p && *p) {
            size_t k = strcspn(p, ":");
            char cand[PATH_MAX];
            if (k && snprintf(cand, sizeof cand, "%.*s/%s", (int)k, p, a0) <
                         (int)sizeof cand &&
                access(cand, X_OK) == 0 && realpath(cand, out))
                return 0;
            p += k + (p[k] == ':');
        }
    }
    snprintf(err, ARC_ERRLEN, "cannot find this arc binary's path");
    return -1;
}

/* Append s to b quoted for a POSIX shell when it needs quoting. */
static void setup_shq(Buf *b, const char *s) {
    if (*s && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                        "0123456789/._-+=,:@%") == strlen(s)) {
        buf_adds(b, s);
        return;
    }
    buf_addc(b, '\'');
    for (; *s; s++)
        if (*s == '\'') buf_adds(b, "'\\''");
        else buf_addc(b, *s);
    buf_addc(b, '\'');
}

/* Is v a usable agent name: 1 to SETUP_AGENT_MAX of [A-Za-z0-9._-], not
 * starting with '-' or '.'? (It goes into shell commands unquoted.) */
static int setup_agent_bad(const char *v) {
    size_t n = strlen(v);
    if (!n || n > SETUP_AGENT_MAX || v[0] == '-' || v[0] == '.') return 1;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)v[i]) && !strchr("._-", v[i])) return 1;
    return 0;
}

/* The default agent name: HARNESS-BASENAME of the project directory
 * (project scope) or HARNESS-$USER (user scope: one hub per project, so
 * the name need only differ between harnesses), squeezed into the
 * allowed characters. */
static void setup_default_agent(SetupCtx *x) {
    char cwd[PATH_MAX] = "";
    const char *who = NULL;
    if (x->scope == SETUP_USER) who = getenv("USER");
    else if (getcwd(cwd, sizeof cwd)) {
        char *s = strrchr(cwd, '/');
        who = s && s[1] ? s + 1 : "root";
    }
    Buf b = { 0 };
    buf_adds(&b, x->h->name);
    buf_addc(&b, '-');
    for (const char *p = who && *who ? who : "agent"; *p && b.len < SETUP_AGENT_MAX; p++)
        buf_addc(&b, isalnum((unsigned char)*p) || strchr("._-", *p) ? *p : '-');
    snprintf(x->agent_buf, sizeof x->agent_buf, "%s", buf_cstr(&b));
    buf_free(&b);
    x->agent = x->agent_buf;
}

/* ---- files: reached without links, read whole, replaced atomically ---- */

/* Open the directory holding rel (a path relative to x->rootfd), one
 * component at a time with O_NOFOLLOW; with `create`, missing directories
 * are made (0755; 0700 under $HOME). Sets *base to rel's last component.
 * Returns the descriptor, -1 with err, or -2 when a directory is missing
 * and create is 0. */
static int setup_dir(const SetupCtx *x, const char *rel, int create,
                     const char **base, char err[ARC_ERRLEN]) {
    int dfd = dup(x->rootfd);
    const char *p = rel;
    const char *slash = strrchr(rel, '/');
    *base = slash ? slash + 1 : rel;   /* set on every return */
    while (dfd >= 0 && (slash = strchr(p, '/'))) {
        char comp[NAME_MAX + 1];
        snprintf(comp, sizeof comp, "%.*s", (int)(slash - p), p);
        int fd = openat(dfd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT && create) {
            if (mkdirat(dfd, comp, x->scope == SETUP_USER ? 0700 : 0755) &&
                errno != EEXIST) {
                snprintf(err, ARC_ERRLEN, "cannot create %s%.*s: %s", x->root,
                         (int)(slash - rel), rel, strerror(errno));
                close(dfd);
                return -1;
            }
            fd = openat(dfd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        }
        int e = errno;
        close(dfd);
        if (fd < 0) {
            if (e == ENOENT) return -2;
            snprintf(err, ARC_ERRLEN, "%s%.*s %s", x->root, (int)(slash - rel),
                     rel, e == ELOOP || e == ENOTDIR
                     ? "is a symbolic link or not a directory; arc setup will "
                       "not follow it (edit the file by hand)" : strerror(e));
            return -1;
        }
        dfd = fd;
        p = slash + 1;
    }
    *base = p;
    return dfd;
}

/* Read dir/name whole into out (cleared first). Returns 1 when read, 0
 * when there is no such file, -1 with err (a link, a FIFO, too big ...).
 * *mode gets its permission bits. */
static int setup_read(int dfd, const char *name, Buf *out, mode_t *mode,
                      char err[ARC_ERRLEN]) {
    buf_reset(out);
    struct stat st;
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW)) {
        if (errno == ENOENT) return 0;
        snprintf(err, ARC_ERRLEN, "%s: %s", name, strerror(errno));
        return -1;
    }
    if (S_ISLNK(st.st_mode)) {
        snprintf(err, ARC_ERRLEN, "%s is a symbolic link; arc setup will not "
                 "follow it (edit the file by hand)", name);
        return -1;
    }
    int fd = fs_openat(dfd, name, O_RDONLY, err);
    if (fd < 0) return -1;
    int rc = 1;
    if (fstat(fd, &st) || (size_t)st.st_size > SETUP_MAX_FILE) {
        snprintf(err, ARC_ERRLEN, "%s is larger than %u bytes", name,
                 (unsigned)SETUP_MAX_FILE);
        rc = -1;
    }
    *mode = st.st_mode & 07777;
    char chunk[8192];
    for (ssize_t k; rc > 0 && (k = read(fd, chunk, sizeof chunk)) != 0;) {
        if (k < 0 && errno == EINTR) continue;
        if (k < 0 || out->len + (size_t)k > SETUP_MAX_FILE) {
            snprintf(err, ARC_ERRLEN, "cannot read %s: %s", name,
                     k < 0 ? strerror(errno) : "too large");
            rc = -1;
            break;
        }
        buf_add(out, chunk, (size_t)k);
    }
    close(fd);
    return rc;
}

/* Replace dir/name with data (fs_replace_at), then give it `mode`. */
static int setup_write(int dfd, const char *name, Str data, mode_t mode,
                       char err[ARC_ERRLEN]) {
    if (fs_replace_at(dfd, name, data, err)) return -1;
    int fd = fs_openat(dfd, name, O_RDONLY, err);
    if (fd < 0) return -1;
    if (fchmod(fd, mode)) {
        snprintf(err, ARC_ERRLEN, "chmod %s: %s", name, strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* ---- JSON edited as text ---- */

/* First and one-past-last byte of token i's text (strings with quotes). */
static size_t setup_tbeg(const Json *j, uint32_t i) {
    return j->t[i].off - (j->t[i].type == JSON_STR);
}
static size_t setup_tend(const Json *j, uint32_t i) {
    return (size_t)j->t[i].off + j->t[i].len + (j->t[i].type == JSON_STR);
}

/* Replace bytes [a, b) of doc with `with`. */
static void setup_splice(Buf *doc, size_t a, size_t b, Str with) {
    Buf o = { 0 };
    buf_add(&o, doc->p, a);
    buf_addstr(&o, with);
    buf_add(&o, doc->p + b, doc->len - b);
    buf_free(doc);
    *doc = o;
}

/* The leading whitespace of the line holding byte pos, into ind. */
static void setup_line_indent(Str s, size_t pos, Buf *ind) {
    size_t a = pos;
    while (a > 0 && s.p[a - 1] != '\n') a--;
    size_t e = a;
    while (e < s.n && (s.p[e] == ' ' || s.p[e] == '\t')) e++;
    buf_reset(ind);
    buf_add(ind, s.p + a, e - a);
}

/* The file's indentation unit: the leading whitespace of its first
 * indented line, else two spaces. */
static void setup_indent_unit(Str s, Buf *unit) {
    buf_reset(unit);
    for (size_t i = 0; i + 1 < s.n; i++)
        if (s.p[i] == '\n' && (s.p[i + 1] == ' ' || s.p[i + 1] == '\t')) {
            size_t e = i + 1;
            while (e < s.n && s.p[e] == s.p[i + 1]) e++;
            buf_add(unit, s.p + i + 1, e - i - 1);
            return;
        }
    buf_adds(unit, "  ");
}

/* Append value i of j, pretty-printed as JSON.stringify(v, null, unit)
 * would, its lines after the first starting with `ind`. */
static void setup_pretty(Buf *b, const Json *j, uint32_t i, Str ind, Str unit) {
    const JsonTok *t = &j->t[i];
    if ((t->type != JSON_OBJ && t->type != JSON_ARR) || !t->n) {
        json_write(b, j, i);
        return;
    }
    int obj = t->type == JSON_OBJ;
    Buf in = { 0 };
    buf_addstr(&in, ind);
    buf_addstr(&in, unit);
    buf_adds(b, obj ? "{\n" : "[\n");
    uint32_t k = i + 1;
    for (uint32_t m = 0; m < t->n; m++) {
        buf_addstr(b, buf_str(&in));
        if (obj) {
            json_write(b, j, k);
            buf_adds(b, ": ");
            k++;
        }
        setup_pretty(b, j, k, buf_str(&in), unit);
        buf_adds(b, m + 1 < t->n ? ",\n" : "\n");
        k = j->t[k].next;
    }
    buf_addstr(b, ind);
    buf_addc(b, obj ? '}' : ']');
    buf_free(&in);
}

/* The compact form of value i: what two values are compared by. */
static int setup_same(const Json *j, uint32_t i, Str compact) {
    Buf b = { 0 };
    json_write(&b, j, i);
    int same = b.len == compact.n && !memcmp(b.p, compact.p, b.len);
    buf_free(&b);
    return same;
}

/* Render compact JSON text v pretty at indentation ind (of the line the
 * value starts on) into out. */
static void setup_render(Buf *out, Str v, Str ind, Str unit) {
    Json j = { 0 };
    int rc = json_parse(&j, v.p, v.n);
    assert(rc == 0);   /* v is ours */
    (void)rc;
    setup_pretty(out, &j, 0, ind, unit);
    json_free(&j);
}

/* Insert a new last element (arr: the value v) or member (key k: value v)
 * into container c of j, whose text is doc. Single-line containers stay on
 * one line; others get the indentation of their first element, and an
 * empty one opens a line indented one unit past its own. */
static void setup_insert(Buf *doc, const Json *j, uint32_t c, const char *k,
                         Str v) {
    Str s = buf_str(doc);
    Buf ind = { 0 }, unit = { 0 }, add = { 0 };
    setup_indent_unit(s, &unit);
    const JsonTok *t = &j->t[c];
    size_t at;
    int oneline = 0;
    if (t->n) {
        uint32_t first = c + 1, last = first, val;
        for (uint32_t m = 1; m < t->n; m++) last = j->t[k ? last + 1 : last].next;
        val = k ? last + 1 : last;
        at = setup_tend(j, val);
        size_t fb = setup_tbeg(j, first);
        oneline = !memchr(s.p + t->off, '\n', fb - t->off);
        setup_line_indent(s, fb, &ind);
        buf_adds(&add, oneline ? ", " : ",\n");
        if (!oneline) buf_addstr(&add, buf_str(&ind));
    } else {
        at = t->off + 1;
        size_t close = t->off + t->len - 1;
        setup_line_indent(s, t->off, &ind);
        buf_addstr(&ind, buf_str(&unit));
        buf_addc(&add, '\n');
        buf_addstr(&add, buf_str(&ind));
        /* the whitespace inside an empty container goes */
        Buf tail = { 0 };
        setup_line_indent(s, t->off, &tail);
        setup_splice(doc, at, close, (Str){ "", 0 });
        s = buf_str(doc);
        Str kk = str_c(k);
        if (k) {
            json_strs(&add, kk);
            buf_adds(&add, ": ");
        }
        setup_render(&add, v, buf_str(&ind), buf_str(&unit));
        buf_addc(&add, '\n');
        buf_addstr(&add, buf_str(&tail));
        setup_splice(doc, at, at, buf_str(&add));
        buf_free(&tail);
        goto done;
    }
    if (k) {
        json_cstr(&add, k);
        buf_adds(&add, ": ");
    }
    if (oneline) buf_addstr(&add, v);   /* a one-line container stays one */
    else setup_render(&add, v, buf_str(&ind), buf_str(&unit));
    setup_splice(doc, at, at, buf_str(&add));
done:
    buf_free(&ind), buf_free(&unit), buf_free(&add);
}

/* Delete element m (of n) of container c: with the comma before it, or
 * for the first, up to the next one; the last one leaves {} or []. */
static void setup_delete(Buf *doc, const Json *j, uint32_t c, uint32_t m) {
    const JsonTok *t = &j->t[c];
    int obj = t->type == JSON_OBJ;
    uint32_t prev = 0, cur = c + 1;
    for (uint32_t i = 0; i < m; i++) prev = cur, cur = j->t[obj ? cur + 1 : cur].next;
    uint32_t curv = obj ? cur + 1 : cur;
    if (t->n == 1)
        setup_splice(doc, t->off + 1, t->off + t->len - 1, (Str){ "", 0 });
    else if (m > 0)
        setup_splice(doc, setup_tend(j, obj ? prev + 1 : prev), setup_tend(j, curv),
                     (Str){ "", 0 });
    else
        setup_splice(doc, setup_tbeg(j, cur), setup_tbeg(j, j->t[curv].next),
                     (Str){ "", 0 });
}

/* Parse doc into j (freed first); an all-blank doc becomes "{}\n". A doc
 * that is not a strict JSON object is an error naming the file. */
static int setup_parse(Buf *doc, Json *j, const char *file, char err[ARC_ERRLEN]) {
    if (str_trim(buf_str(doc)).n == 0) {
        buf_reset(doc);
        buf_adds(doc, "{}\n");
    }
    if (json_parse(j, buf_cstr(doc), doc->len)) {
        snprintf(err, ARC_ERRLEN, "%s is not valid JSON (%.200s); arc setup "
                 "edits only strict JSON (no comments or trailing commas) and "
                 "left it untouched", file, j->err);
        return -1;
    }
    if (j->t[0].type != JSON_OBJ) {
        snprintf(err, ARC_ERRLEN, "%s does not hold a JSON object; left "
                 "untouched", file);
        return -1;
    }
    return 0;
}

/* Member index and value token of key k in object o, or 0 (value) when
 * absent; the last of duplicates, as json_get. */
static uint32_t setup_member(const Json *j, uint32_t o, const char *k, uint32_t *m) {
    uint32_t i = o + 1, found = 0;
    for (uint32_t n = 0; n < j->t[o].n; n++) {
        if (json_str_is(j, i, str_c(k))) found = i + 1, *m = n;
        i = j->t[i + 1].next;
    }
    return found;
}

/* The object at root key `path` of doc, made ({}) when missing and
 * `make`. Returns its token (j parsed over doc), 0 when absent, or -1
 * when it is not an object. */
static int64_t setup_obj(Buf *doc, Json *j, const char *path, int make,
                         const char *file, char err[ARC_ERRLEN]) {
    uint32_t m, v = setup_member(j, 0, path, &m);
    if (!v && make) {
        setup_insert(doc, j, 0, path, STR_LIT("{}"));
        if (setup_parse(doc, j, file, err)) return -1;
        v = setup_member(j, 0, path, &m);
    }
    if (v && j->t[v].type != JSON_OBJ) {
        snprintf(err, ARC_ERRLEN, "%s: \"%s\" is not an object; left untouched",
                 file, path);
        return -1;
    }
    return v;
}

/* Set member k of object o (j over doc) to compact value v, in place when
 * it exists and differs; added last otherwise. */
static void setup_put(Buf *doc, const Json *j, uint32_t o, const char *k, Str v) {
    uint32_t m, cur = setup_member(j, o, k, &m);
    if (!cur) {
        setup_insert(doc, j, o, k, v);
        return;
    }
    if (setup_same(j, cur, v)) return;
    Buf ind = { 0 }, unit = { 0 }, add = { 0 };
    setup_line_indent(buf_str(doc), setup_tbeg(j, cur - 1), &ind);
    setup_indent_unit(buf_str(doc), &unit);
    setup_render(&add, v, buf_str(&ind), buf_str(&unit));
    setup_splice(doc, setup_tbeg(j, cur), setup_tend(j, cur), buf_str(&add));
    buf_free(&ind), buf_free(&unit), buf_free(&add);
}

/* ---- what arc writes ---- */

/* The MCP server entry, compact, in the harness's spelling. */
static void setup_mcp_value(const SetupCtx *x, int style, Buf *b) {
    if (style == MS_OPENCODE) {
        buf_adds(b, "{\"type\":\"local\",\"command\":[");
        json_cstr(b, x->arc);
        buf_adds(b, ",\"mcp\",\"--agent\",");
        json_cstr(b, x->agent);
        buf_adds(b, "],\"enabled\":true}");
        return;
    }
    buf_adds(b, style == MS_STDIO ? "{\"type\":\"stdio\"," :
                style == MS_COPILOT ? "{\"type\":\"local\"," : "{");
    buf_adds(b, "\"command\":");
    json_cstr(b, x->arc);
    buf_adds(b, ",\"args\":[\"mcp\",\"--agent\",");
    json_cstr(b, x->agent);
    if (x->channel) buf_adds(b, ",\"--channel\"");   /* docs/MCP.md, channels */
    buf_adds(b, "]");
    if (style == MS_COPILOT) buf_adds(b, ",\"tools\":[\"*\"]");
    buf_adds(b, "}");
}

/* The shell command of hook hk. */
static void setup_hook_cmd(const SetupCtx *x, const SetupHook *hk, Buf *b) {
    buf_addstr(b, buf_str(&x->arc_sh));
    buf_addf(b, " hook %s %s --agent %s", x->h->name, hk->event, x->agent);
}

/* One hook entry (a matcher group, or Cursor's flat entry), compact. */
static void setup_hook_value(const SetupCtx *x, const SetupHook *hk, int style,
                             Buf *b) {
    Buf cmd = { 0 };
    setup_hook_cmd(x, hk, &cmd);
    if (style == HS_FLAT) {
        buf_adds(b, "{\"command\":");
        json_strs(b, buf_str(&cmd));
        if (hk->matcher) buf_adds(b, ",\"matcher\":"), json_cstr(b, hk->matcher);
        if (hk->timeout) buf_addf(b, ",\"timeout\":%d", hk->timeout);
        buf_addc(b, '}');
    } else {
        buf_addc(b, '{');
        if (hk->matcher) buf_adds(b, "\"matcher\":"), json_cstr(b, hk->matcher),
                         buf_addc(b, ',');
        buf_adds(b, "\"hooks\":[{");
        if (style == HS_GEMINI) buf_addf(b, "\"name\":\"arc-%s\",", hk->event);
        buf_adds(b, "\"type\":\"command\",\"command\":");
        json_strs(b, buf_str(&cmd));
        if (hk->timeout) buf_addf(b, ",\"timeout\":%d", hk->timeout);
        if (hk->rewake) buf_adds(b, ",\"asyncRewake\":true");
        buf_adds(b, "}]}");
    }
    buf_free(&cmd);
}

/* Is shell command s one of arc's hooks for harness h: its first word an
 * arc binary (basename arc*), then "hook", h? Sets event (the 4th word). */
static int setup_is_ours(Str s, const char *h, Buf *event) {
    size_t i = 0;
    Buf w[4] = { { 0 } };
    int n = 0;
    while (n < 4) {
        while (i < s.n && s.p[i] == ' ') i++;
        if (i >= s.n) break;
        if (s.p[i] == '\'') {   /* as setup_shq() quotes */
            for (i++; i < s.n; i++) {
                if (s.p[i] != '\'') { buf_addc(&w[n], s.p[i]); continue; }
                if (i + 3 < s.n && !memcmp(s.p + i, "'\\''", 4)) {
                    buf_addc(&w[n], '\''), i += 3;
                    continue;
                }
                i++;
                break;
            }
        } else {
            while (i < s.n && s.p[i] != ' ') buf_addc(&w[n], s.p[i++]);
        }
        n++;
    }
    const char *base = strrchr(buf_cstr(&w[0]), '/');
    base = base ? base + 1 : buf_cstr(&w[0]);
    int ours = n == 4 && !strncmp(base, "arc", 3) &&
               !strcmp(buf_cstr(&w[1]), "hook") && !strcmp(buf_cstr(&w[2]), h);
    buf_reset(event);
    if (ours) buf_addstr(event, buf_str(&w[3]));
    for (int k = 0; k < 4; k++) buf_free(&w[k]);
    return ours;
}

/* Of hook entry e (j), arc's event when one of its commands is arc's (for
 * a group: any handler), else 0. *mixed: a group that also holds handlers
 * that are not arc's. */
static int setup_entry_ours(const SetupCtx *x, const Json *j, uint32_t e,
                            Buf *event, int *mixed) {
    *mixed = 0;
    if (j->t[e].type != JSON_OBJ) return 0;
    uint32_t c = json_get(j, e, "command");
    if (c && j->t[c].type == JSON_STR) {
        Buf s = { 0 };
        json_unescape(j, c, &s);
        int ours = setup_is_ours(buf_str(&s), x->h->name, event);
        buf_free(&s);
        return ours;
    }
    uint32_t hs = json_get(j, e, "hooks");
    if (!hs || j->t[hs].type != JSON_ARR) return 0;
    int ours = 0, theirs = 0;
    Buf ev = { 0 };
    for (uint32_t k = 0, i = hs + 1; k < j->t[hs].n; k++, i = j->t[i].next) {
        uint32_t cc = j->t[i].type == JSON_OBJ ? json_get(j, i, "command") : 0;
        Buf s = { 0 };
        if (cc && j->t[cc].type == JSON_STR) json_unescape(j, cc, &s);
        if (cc && setup_is_ours(buf_str(&s), x->h->name, &ev)) {
            if (!ours) buf_reset(event), buf_addstr(event, buf_str(&ev));
            ours = 1;
        } else {
            theirs = 1;
        }
        buf_free(&s);
    }
    buf_free(&ev);
    *mixed = ours && theirs;
    return ours;
}

/* Is arc's entry for (key, event) one setup writes? */
static const SetupHook *setup_wanted(const SetupCtx *x, const char *key,
                                     Str event) {
    for (int i = 0; i < x->h->n_hooks; i++)
        if (!strcmp(x->h->hooks[i].key, key) && str_eq(event, x->h->hooks[i].event))
            return &x->h->hooks[i];
    return NULL;
}

/* Take arc's entries out of hooks object o: whole entries, or from a mixed
 * group only arc's handlers. With `keep`, entries setup still writes stay.
 * Repeats until nothing changes (every delete re-parses). Event arrays
 * left empty go too. */
static int setup_hooks_strip(const SetupCtx *x, Buf *doc, Json *j, const char *file,
                             int keep, char err[ARC_ERRLEN]) {
    for (int again = 1; again;) {
        again = 0;
        int64_t o = setup_obj(doc, j, "hooks", 0, file, err);
        if (o <= 0) return (int)o;
        Buf ev = { 0 }, key = { 0 };
        uint32_t i = (uint32_t)o + 1;
        for (uint32_t m = 0; m < j->t[o].n && !again; m++, i = j->t[i + 1].next) {
            uint32_t arr = i + 1;
            if (j->t[arr].type != JSON_ARR) continue;
            buf_reset(&key);
            json_unescape(j, i, &key);
            if (!j->t[arr].n) {
                /* an event array arc emptied (keep=0) goes; a user's stays */
                continue;
            }
            uint32_t e = arr + 1;
            for (uint32_t k = 0; k < j->t[arr].n && !again; k++, e = j->t[e].next) {
                int mixed;
                if (!setup_entry_ours(x, j, e, &ev, &mixed)) continue;
                if (keep && !mixed && setup_wanted(x, buf_cstr(&key), buf_str(&ev)))
                    continue;
                if (mixed) {   /* delete arc's handlers inside the group */
                    uint32_t hs = json_get(j, e, "hooks"), h = hs + 1;
                    for (uint32_t q = 0; q < j->t[hs].n; q++, h = j->t[h].next) {
                        uint32_t cc = json_get(j, h, "command");
                        Buf s = { 0 }, e2 = { 0 };
                        if (cc && j->t[cc].type == JSON_STR) json_unescape(j, cc, &s);
                        int ours = cc && setup_is_ours(buf_str(&s), x->h->name, &e2);
                        buf_free(&s), buf_free(&e2);
                        if (ours) {
                            setup_delete(doc, j, hs, q);
                            break;
                        }
                    }
                } else if (j->t[arr].n == 1) {
                    setup_delete(doc, j, (uint32_t)o, m);   /* the event key */
                } else {
                    setup_delete(doc, j, arr, k);
                }
                again = 1;
            }
        }
        buf_free(&ev), buf_free(&key);
        if (again && setup_parse(doc, j, file, err)) return -1;
    }
    /* a hooks object arc emptied goes, unless it was there before: we
     * cannot tell, so an empty one stays (it means the same) */
    return 0;
}

/* Add or refresh arc's hook entries: each in place when present, else
 * appended to its event's array (made when missing). */
static int setup_hooks_put(const SetupCtx *x, Buf *doc, Json *j, int style,
                           const char *file, char err[ARC_ERRLEN]) {
    if (setup_hooks_strip(x, doc, j, file, 1, err)) return -1;
    if (style == HS_FLAT && !json_get(j, 0, "version")) {
        setup_insert(doc, j, 0, "version", STR_LIT("1"));
        if (setup_parse(doc, j, file, err)) return -1;
    }
    Buf v = { 0 }, ev = { 0 };
    int rc = 0;
    for (int h = 0; h < x->h->n_hooks && !rc; h++) {
        const SetupHook *hk = &x->h->hooks[h];
        buf_reset(&v);
        setup_hook_value(x, hk, style, &v);
        int64_t o = setup_obj(doc, j, "hooks", 1, file, err);
        if (o < 0) { rc = -1; break; }
        uint32_t m, arr = setup_member(j, (uint32_t)o, hk->key, &m);
        if (arr && j->t[arr].type != JSON_ARR) {
            snprintf(err, ARC_ERRLEN, "%s: hooks.%s is not an array; left "
                     "untouched", file, hk->key);
            rc = -1;
            break;
        }
        if (!arr) {
            Buf one = { 0 };
            buf_addc(&one, '[');
            buf_addstr(&one, buf_str(&v));
            buf_addc(&one, ']');
            setup_insert(doc, j, (uint32_t)o, hk->key, buf_str(&one));
            buf_free(&one);
        } else {
            uint32_t e = arr + 1, found = 0;
            for (uint32_t k = 0; k < j->t[arr].n; k++, e = j->t[e].next) {
                int mixed;
                if (setup_entry_ours(x, j, e, &ev, &mixed) &&
                    str_eq(buf_str(&ev), hk->event)) {
                    found = e;
                    break;
                }
            }
            if (!found) {
                setup_insert(doc, j, arr, NULL, buf_str(&v));
            } else if (!setup_same(j, found, buf_str(&v))) {
                Buf ind = { 0 }, unit = { 0 }, add = { 0 };
                setup_line_indent(buf_str(doc), setup_tbeg(j, found), &ind);
                setup_indent_unit(buf_str(doc), &unit);
                setup_render(&add, buf_str(&v), buf_str(&ind), buf_str(&unit));
                setup_splice(doc, setup_tbeg(j, found), setup_tend(j, found),
                             buf_str(&add));
                buf_free(&ind), buf_free(&unit), buf_free(&add);
            }
        }
        rc = setup_parse(doc, j, file, err);
    }
    buf_free(&v), buf_free(&ev);
    return rc;
}

/* ---- TOML: one table, as text ---- */

/* Where the table [mcp_servers.arc] (with its subtables) sits in s: from
 * its header line to the end of its last non-blank line. Returns 1 and
 * [*a, *b), or 0. A definition of mcp_servers.arc in another form (inline,
 * dotted keys) is an error: arc will not guess how to edit it. */
static int setup_toml_find(Str s, size_t *a, size_t *b, const char *file,
                           char err[ARC_ERRLEN]) {
    int in = 0, found = 0, in_servers = 0;
    size_t end = 0;
    for (size_t i = 0; i < s.n;) {
        size_t e = i;
        while (e < s.n && s.p[e] != '\n') e++;
        Str line = str_trim((Str){ s.p + i, e - i });
        Str key = line;
        if (line.n && line.p[0] == '[') {
            /* a header: [name] or [[name]], whitespace inside allowed */
            Buf nm = { 0 };
            for (size_t k = 0; k < line.n && line.p[k] != ']' && line.p[k] != '#'; k++)
                if (line.p[k] != '[' && line.p[k] != ' ' && line.p[k] != '"')
                    buf_addc(&nm, line.p[k]);
            Str n = buf_str(&nm);
            int ours = str_eq(n, "mcp_servers.arc") ||
                       (n.n > 16 && !memcmp(n.p, "mcp_servers.arc.", 16));
            in_servers = str_eq(n, "mcp_servers");
            if (ours && !in && found) {
                snprintf(err, ARC_ERRLEN, "%s: [mcp_servers.arc] is split in "
                         "two; arc setup left the file untouched", file);
                buf_free(&nm);
                return -1;
            }
            if (ours && !in) *a = i, found = 1;
            in = ours;
            buf_free(&nm);
        } else if (line.n && line.p[0] != '#') {
            size_t k = 0;
            while (k < key.n && key.p[k] != '=' && key.p[k] != ' ') k++;
            Str kn = { key.p, k };
            if ((in_servers && (str_eq(kn, "arc") || (kn.n > 4 &&
                 !memcmp(kn.p, "arc.", 4)))) ||
                (kn.n >= 15 && !memcmp(kn.p, "mcp_servers.arc", 15) &&
                 (kn.n == 15 || kn.p[15] == '.'))) {
                snprintf(err, ARC_ERRLEN, "%s defines mcp_servers.arc as "
                         "dotted keys or an inline table; arc setup edits only a "
                         "[mcp_servers.arc] table and left the file untouched",
                         file);
                return -1;
            }
        }
        if (in && line.n) end = e;
        i = e < s.n ? e + 1 : e;
    }
    *b = end;
    return found;
}

/* Append s as a TOML basic string. */
static void setup_toml_str(Buf *b, const char *s) {
    buf_addc(b, '"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') buf_addc(b, '\\'), buf_addc(b, (char)c);
        else if (c < 0x20 || c == 0x7f) buf_addf(b, "\\u%04x", c);
        else buf_addc(b, (char)c);
    }
    buf_addc(b, '"');
}

/* Put (or with `remove`, take out) the [mcp_servers.arc] table. */
static int setup_toml(const SetupCtx *x, Buf *doc, int remove, const char *file,
                      char err[ARC_ERRLEN]) {
    size_t a = 0, b = 0;
    int found = setup_toml_find(buf_str(doc), &a, &b, file, err);
    if (found < 0) return -1;
    if (remove) {
        if (!found) return 0;
        /* the table, its newline, and the blank line setup put before it
         * when it is last */
        size_t e = b < doc->len && doc->p[b] == '\n' ? b + 1 : b;
        if (e == doc->len && a >= 2 && doc->p[a - 1] == '\n' && doc->p[a - 2] == '\n')
            a--;
        setup_splice(doc, a, e, (Str){ "", 0 });
        return 0;
    }
    Buf t = { 0 };
    buf_adds(&t, "[mcp_servers.arc]\ncommand = ");
    setup_toml_str(&t, x->arc);
    buf_adds(&t, "\nargs = [\"mcp\", \"--agent\", ");
    setup_toml_str(&t, x->agent);
    buf_adds(&t, "]");
    if (found) {
        setup_splice(doc, a, b, buf_str(&t));
    } else {
        if (doc->len && doc->p[doc->len - 1] != '\n') buf_addc(doc, '\n');
        if (doc->len) buf_addc(doc, '\n');
        buf_addstr(doc, buf_str(&t));
        buf_addc(doc, '\n');
    }
    buf_free(&t);
    return 0;
}

/* ---- whole files arc owns ---- */

#define SETUP_PLUGIN_MARK "// arc setup opencode:"

/* OpenCode's plugin: runs `arc hook opencode EVENT --agent NAME` with the
 * event as JSON on stdin (cwd: OpenCode's directory), never blocking
 * OpenCode's loop (an async child). `wait`, started in the background
 * whenever a session goes idle, is a long-poll: a non-empty stdout (exit 0) is sent to the
 * session as a new prompt (client.session.promptAsync), which wakes it.
 * `PreToolUse` (tool.execute.before): exit 2 refuses the tool, stderr
 * saying why. `PostToolUse` (tool.execute.after): a non-empty stdout is
 * appended to the tool's output, which the model reads next. No hub, no
 * output: nothing. */
static void setup_plugin_text(const SetupCtx *x, Buf *b) {
    buf_adds(b, SETUP_PLUGIN_MARK " written by `arc setup opencode`; "
                "`arc setup opencode --remove`\n// deletes it. It runs `arc "
                "hook opencode EVENT` (docs/SETUP.md).\n"
                "import { spawn } from \"node:child_process\";\n\n"
                "const ARC = ");
    json_cstr(b, x->arc);
    buf_adds(b, ";\nconst AGENT = ");
    json_cstr(b, x->agent);
    buf_adds(b, ";\n\n"
        "function hook(event, input) {\n"
        "  return new Promise((resolve) => {\n"
        "    const c = spawn(ARC, [\"hook\", \"opencode\", event, \"--agent\", "
        "AGENT]);\n"
        "    let out = \"\", err = \"\";\n"
        "    c.stdout.on(\"data\", (d) => (out += d));\n"
        "    c.stderr.on(\"data\", (d) => (err += d));\n"
        "    c.on(\"error\", () => resolve({ status: -1, out: \"\", err: \"\" }));\n"
        "    c.on(\"close\", (status) => resolve({ status, out, err }));\n"
        "    c.stdin.on(\"error\", () => {});\n"
        "    c.stdin.end(JSON.stringify(input));\n"
        "  });\n"
        "}\n\n"
        "export const ArcPlugin = async ({ client, directory }) => {\n"
        "  const waiting = new Set();\n"
        "  const tool = (input, args) => ({ session_id: input.sessionID, cwd: directory,\n"
        "    tool_name: input.tool, tool_input: args });\n"
        "  return {\n"
        "    event: async ({ event }) => {\n"
        "      if (event.type !== \"session.idle\") return;\n"
        "      const id = event.properties.sessionID;\n"
        "      if (waiting.has(id)) return;\n"
        "      waiting.add(id);\n"
        "      // in the background: OpenCode's event bus must not wait on it\n"
        "      hook(\"wait\", { session_id: id, cwd: directory }).then(async (r) => {\n"
        "        waiting.delete(id);\n"
        "        if (r.status === 0 && r.out.trim())\n"
        "          await client.session.promptAsync({\n"
        "            path: { id }, body: { parts: [{ type: \"text\", text: r.out }] },\n"
        "          });\n"
        "      }).catch(() => waiting.delete(id));\n"
        "    },\n"
        "    \"tool.execute.before\": async (input, output) => {\n"
        "      const r = await hook(\"PreToolUse\", tool(input, output.args));\n"
        "      if (r.status === 2) throw new Error(r.err.trim() || \"refused by arc\");\n"
        "    },\n"
        "    \"tool.execute.after\": async (input, output) => {\n"
        "      const r = await hook(\"PostToolUse\", tool(input, {}));\n"
        "      if (r.status === 0 && r.out.trim() && typeof output.output === \"string\")\n"
        "        output.output += \"\\n\\n\" + r.out;\n"
        "    },\n"
        "  };\n"
        "};\n");
}

/* ---- one file: apply, compare, show, write ---- */

/* Apply to doc every edit of the harness aimed at `file` (setup, or with
 * `remove` the undo). doc empty = the file is absent; an edit that leaves
 * it empty means "no file". */
static int setup_apply(const SetupCtx *x, const char *file, Buf *doc, int remove,
                       char err[ARC_ERRLEN]) {
    Json j = { 0 };
    int rc = 0, was_empty = str_trim(buf_str(doc)).n == 0;
    for (int i = 0; i < x->h->n_edits && !rc; i++) {
        const SetupEdit *e = &x->h->edits[i];
        if (!e->file[x->scope] || strcmp(e->file[x->scope], file)) continue;
        if (e->kind == SE_TOML_MCP) {
            rc = setup_toml(x, doc, remove, file, err);
            continue;
        }
        if (e->kind == SE_AGENT || e->kind == SE_PLUGIN) {
            Buf want = { 0 };
            if (e->kind == SE_AGENT) buf_addf(&want, "%s\n", x->agent);
            else setup_plugin_text(x, &want);
            if (e->kind == SE_PLUGIN && doc->len &&
                strncmp(buf_cstr(doc), SETUP_PLUGIN_MARK, strlen(SETUP_PLUGIN_MARK))) {
                snprintf(err, ARC_ERRLEN, "%s was not written by arc setup; left "
                         "untouched", file);
                rc = -1;
            } else {
                buf_reset(doc);
                if (!remove) buf_addstr(doc, buf_str(&want));
            }
            buf_free(&want);
            continue;
        }
        if (remove && was_empty) continue;
        if (setup_parse(doc, &j, file, err)) { rc = -1; break; }
        if (e->kind == SE_HOOKS) {
            rc = remove ? setup_hooks_strip(x, doc, &j, file, 0, err)
                        : setup_hooks_put(x, doc, &j, e->style, file, err);
            continue;
        }
        uint32_t m;
        if (e->kind == SE_MCP) {
            int64_t o = setup_obj(doc, &j, e->path, !remove, file, err);
            if (o <= 0) { rc = (int)o; continue; }
            if (remove) {
                if (setup_member(&j, (uint32_t)o, "arc", &m))
                    setup_delete(doc, &j, (uint32_t)o, m);
                continue;
            }
            Buf v = { 0 };
            setup_mcp_value(x, e->style, &v);
            setup_put(doc, &j, (uint32_t)o, "arc", buf_str(&v));
            buf_free(&v);
            continue;
        }
        /* SE_APPROVE: "arc" in the string array at root key e->path */
        uint32_t arr = setup_member(&j, 0, e->path, &m);
        if (arr && j.t[arr].type != JSON_ARR) {
            snprintf(err, ARC_ERRLEN, "%s: \"%s\" is not an array; left untouched",
                     file, e->path);
            rc = -1;
            continue;
        }
        uint32_t at = 0, el = arr + 1, found = 0;
        for (uint32_t k = 0; arr && k < j.t[arr].n; k++, el = j.t[el].next)
            if (json_str_is(&j, el, STR_LIT("arc"))) found = 1, at = k;
        if (remove && found) setup_delete(doc, &j, arr, at);
        else if (!remove && !arr) setup_insert(doc, &j, 0, e->path, STR_LIT("[\"arc\"]"));
        else if (!remove && !found) setup_insert(doc, &j, arr, NULL, STR_LIT("\"arc\""));
    }
    json_free(&j);
    return rc;
}

/* Print a unified-style diff of a -> b: one hunk, the lines between the
 * first and the last that differ, with up to 2 lines of context. */
static void setup_diff(const char *name, Str a, Str b) {
    size_t pa = 0, la = 1;   /* common prefix, in bytes and lines */
    for (size_t i = 0; i < a.n && i < b.n && a.p[i] == b.p[i]; i++)
        if (a.p[i] == '\n') pa = i + 1, la++;
    size_t sa = a.n, sb = b.n;   /* common suffix: whole lines after pa */
    while (sa > pa && sb > pa && a.p[sa - 1] == b.p[sb - 1]) sa--, sb--;
    while (sa < a.n && sa > pa && a.p[sa - 1] != '\n') sa++, sb++;
    int ctx = 0;
    size_t c0 = pa;
    while (c0 > 0 && ctx < 2) {
        c0--;
        while (c0 > 0 && a.p[c0 - 1] != '\n') c0--;
        ctx++, la--;
    }
    size_t ea = sa, eb = sb;
    for (int k = 0; k < 2 && ea < a.n; k++) {
        while (ea < a.n && a.p[ea] != '\n') ea++;
        if (ea < a.n) ea++;
    }
    eb = sb + (ea - sa);
    size_t na = 0, nb = 0;
    for (size_t i = c0; i < ea; i++) na += a.p[i] == '\n';
    for (size_t i = c0; i < eb; i++) nb += b.p[i] == '\n';
    printf("--- %s\n+++ %s\n@@ -%zu,%zu +%zu,%zu @@\n", name, name, la, na, la, nb);
    struct { Str s; size_t from, to; char mark; } part[4] = {
        { a, c0, pa, ' ' }, { a, pa, sa, '-' }, { b, pa, sb, '+' }, { a, sa, ea, ' ' }
    };
    for (int p = 0; p < 4; p++)
        for (size_t i = part[p].from; i < part[p].to;) {
            size_t e = i;
            while (e < part[p].to && part[p].s.p[e] != '\n') e++;
            printf("%c%.*s\n", part[p].mark, (int)(e - i), part[p].s.p + i);
            if (e == part[p].to && e > i && part[p].s.p[e - 1] != '\n' &&
                e == part[p].s.n)
                printf("\\ No newline at end of file\n");
            i = e + 1;
        }
}

/* Is JSON value i hollow: an object or array holding nothing but hollow
 * values (Cursor's "version" member aside, which setup adds to a
 * hooks.json it makes)? */
static int setup_hollow(const Json *j, uint32_t i) {
    const JsonTok *t = &j->t[i];
    if (t->type != JSON_OBJ && t->type != JSON_ARR) return 0;
    int obj = t->type == JSON_OBJ;
    for (uint32_t m = 0, k = i + 1; m < t->n; m++) {
        uint32_t v = obj ? k + 1 : k;
        if (!setup_hollow(j, v) &&
            !(obj && i == 0 && json_str_is(j, k, STR_LIT("version"))))
            return 0;
        k = j->t[v].next;
    }
    return 1;
}

/* Does text s hold nothing but arc's entries (what setup would have made
 * from no file)? Such a file is arc's own: setup keeps no backup of it and
 * --remove deletes it. */
static int setup_only_arc(const SetupCtx *x, const char *file, Str s) {
    Buf b = { 0 };
    char err[ARC_ERRLEN];
    buf_addstr(&b, s);
    int only = 0;
    if (setup_apply(x, file, &b, 1, err) == 0) {
        Json j = { 0 };
        only = str_trim(buf_str(&b)).n == 0 ||
               (json_parse(&j, buf_cstr(&b), b.len) == 0 && setup_hollow(&j, 0));
        json_free(&j);
    }
    buf_free(&b);
    return only;
}

/* Set up (or remove) one file of the harness. Prints one line for it.
 * Returns 1 when it changed (or would), 0 when not, -1 on error. */
static int setup_one(const SetupCtx *x, const char *file) {
    char err[ARC_ERRLEN] = "";
    const char *base;
    Buf cur = { 0 }, next = { 0 }, orig = { 0 }, bakname = { 0 };
    mode_t mode = x->scope == SETUP_USER ? 0600 : 0644, bmode;
    int rc = -1, dfd = setup_dir(x, file, !x->remove && !x->dry && !x->check,
                                   &base, err);
    int have = 0, have_bak = 0;
    const char *what = NULL;
    if (dfd == -2) {   /* its directory is missing: so is the file */
        if (x->remove) {
            printf("  %s: not present\n", file);
            rc = 0;
            goto done;
        }
        dfd = -1;
    } else if (dfd < 0) {
        goto done;
    }
    if (dfd >= 0 && (have = setup_read(dfd, base, &cur, &mode, err)) < 0) goto done;
    buf_addf(&bakname, "%s.arc-backup", base);
    if (dfd >= 0 && (have_bak = setup_read(dfd, buf_cstr(&bakname), &orig, &bmode,
                                           err)) < 0)
        goto done;
    buf_addstr(&next, buf_str(&cur));
    if (x->remove) {
        if (!have) {
            printf("  %s: not present\n", file);
            rc = 0;
            goto done;
        }
        /* unchanged since setup: what setup makes of the original */
        Buf made = { 0 };
        buf_addstr(&made, buf_str(&orig));
        int same = setup_apply(x, file, &made, 0, err) == 0 && made.len == cur.len &&
                   !memcmp(buf_cstr(&made), buf_cstr(&cur), cur.len);
        buf_free(&made);
        err[0] = 0;
        if (same) {
            buf_reset(&next);
            buf_addstr(&next, buf_str(&orig));
            what = have_bak ? "restored the original bytes" : "deleted (setup made it)";
        } else {
            if (setup_apply(x, file, &next, 1, err)) goto done;
            what = "took arc's entries out";
        }
    } else if (setup_apply(x, file, &next, 0, err)) {
        goto done;
    }
    int gone = x->remove && !next.len && (!have_bak || what[0] == 'd');
    if (x->check) {   /* the first pass: nothing printed, nothing written */
        rc = 0;
        goto done;
    }
    if (next.len == cur.len && !memcmp(buf_cstr(&next), buf_cstr(&cur), cur.len) &&
        !gone) {
        printf("  %s: unchanged%s\n", file, x->remove ? " (no arc entries)" : "");
        if (x->remove && have_bak && !x->dry)
            printf("    (%s.arc-backup kept: the file as it was before the first "
               "setup)\n", file);
        rc = 0;
        goto done;
    }
    if (!what) what = have ? "updated" : "created";
    if (gone && !have_bak) what = "deleted (setup made it)";
    printf("  %s: %s%s\n", file, x->dry ? "would be " : "", what);
    if (x->dry) {
        setup_diff(file, buf_str(&cur), buf_str(&next));
        rc = 1;
        goto done;
    }
    if (dfd < 0 && (dfd = setup_dir(x, file, 1, &base, err)) < 0) goto done;
    if (!x->remove && have && !have_bak &&   /* the first change: back up */
        !setup_only_arc(x, file, buf_str(&cur))) {
        if (setup_write(dfd, buf_cstr(&bakname), buf_str(&cur), mode, err)) goto done;
        printf("    backup: %s.arc-backup\n", file);
    }
    if (gone) {
        if (unlinkat(dfd, base, 0)) {
            snprintf(err, ARC_ERRLEN, "cannot delete %s: %s", file, strerror(errno));
            goto done;
        }
    } else if (setup_write(dfd, base, buf_str(&next), mode, err)) {
        goto done;
    }
    if (x->remove && have_bak && what[0] == 'r') unlinkat(dfd, buf_cstr(&bakname), 0);
    else if (x->remove && have_bak)
        printf("    (%s kept: the file as it was before the first setup)\n",
               buf_cstr(&bakname));
    rc = 1;
done:
    if (rc < 0) fprintf(stderr, "arc setup: %s: %s\n", file, err);
    if (dfd >= 0) close(dfd);
    buf_free(&cur), buf_free(&next), buf_free(&orig), buf_free(&bakname);
    return rc;
}

/* Open the scope's root: the current directory, or $HOME (absolute). */
static int setup_root(SetupCtx *x, char err[ARC_ERRLEN]) {
    const char *home = getenv("HOME");
    if (x->scope == SETUP_USER && (!home || home[0] != '/')) {
        snprintf(err, ARC_ERRLEN, "--scope user needs HOME set to an absolute path");
        return -1;
    }
    x->root = x->scope == SETUP_USER ? "~/" : "";
    x->rootfd = open(x->scope == SETUP_USER ? home : ".",
                     O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (x->rootfd < 0) {
        snprintf(err, ARC_ERRLEN, "cannot open %s: %s",
                 x->scope == SETUP_USER ? home : ".", strerror(errno));
        return -1;
    }
    return 0;
}

/* The agent named by arc's MCP entry in JSON text s (the value after
 * "--agent" in its args, or command for OpenCode) into out; 0 if none.
 * *channel: whether the args hold --channel. */
static int setup_entry_agent(Str s, const char *path, char *out, size_t n, int *channel) {
    Json j = { 0 };
    int ok = 0;
    uint32_t o, a, args;
    if (json_parse(&j, s.p, s.n) == 0 && (o = json_get(&j, 0, path)) &&
        (a = json_get(&j, o, "arc")) && j.t[a].type == JSON_OBJ &&
        (((args = json_get(&j, a, "args")) && j.t[args].type == JSON_ARR) ||
         ((args = json_get(&j, a, "command")) && j.t[args].type == JSON_ARR))) {
        int next = 0, found = 0;
        *channel = 0;
        for (uint32_t k = 0, i = args + 1; k < j.t[args].n; k++, i = j.t[i].next) {
            if (j.t[i].type != JSON_STR) { next = 0; continue; }
            Buf v = { 0 };
            json_unescape(&j, i, &v);
            if (next && !found)
                snprintf(out, n, "%s", buf_cstr(&v)), found = 1, ok = !setup_agent_bad(out);
            next = !strcmp(buf_cstr(&v), "--agent");
            if (!strcmp(buf_cstr(&v), "--channel")) *channel = 1;
            buf_free(&v);
        }
    }
    json_free(&j);
    return ok;
}

/* The agent setup wrote for this harness, from its agent file (or else
 * its MCP entry), into x->agent; 0 if there is none. */
static int setup_stored_agent(SetupCtx *x) {
    for (int i = 0; i < x->h->n_edits; i++) {
        const SetupEdit *e = &x->h->edits[i];
        if (e->kind != SE_MCP || !e->file[x->scope]) continue;
        char err[ARC_ERRLEN];
        const char *base;
        Buf b = { 0 };
        mode_t mode;
        int dfd = setup_dir(x, e->file[x->scope], 0, &base, err), ok = 0;
        if (dfd >= 0 && setup_read(dfd, base, &b, &mode, err) > 0)
            ok = setup_entry_agent(buf_str(&b), e->path, x->agent_buf,
                                   sizeof x->agent_buf, &x->found_channel);
        if (dfd >= 0) close(dfd);
        buf_free(&b);
        if (ok) x->agent = x->agent_buf;
        if (ok) return 1;
    }
    for (int i = 0; i < x->h->n_edits; i++) {
        const SetupEdit *e = &x->h->edits[i];
        if (e->kind != SE_AGENT || !e->file[x->scope]) continue;
        char err[ARC_ERRLEN];
        const char *base;
        Buf b = { 0 };
        mode_t mode;
        int dfd = setup_dir(x, e->file[x->scope], 0, &base, err), ok = 0;
        if (dfd >= 0 && setup_read(dfd, base, &b, &mode, err) > 0) {
            Str s = str_trim(buf_str(&b));
            snprintf(x->agent_buf, sizeof x->agent_buf, "%.*s", (int)s.n, s.p);
            ok = s.n > 0 && !setup_agent_bad(x->agent_buf);
        }
        if (dfd >= 0) close(dfd);
        buf_free(&b);
        if (ok) x->agent = x->agent_buf;
        return ok;
    }
    return 0;
}

static const SetupHarness *setup_find(const char *name) {
    for (int i = 0; i < SETUP_N(setup_harnesses); i++)
        if (!strcmp(setup_harnesses[i].name, name)) return &setup_harnesses[i];
    return NULL;
}

/* Every file of the harness in this scope, in table order, once each. */
static int setup_files(const SetupCtx *x, const char *files[8]) {
    int n = 0;
    for (int i = 0; i < x->h->n_edits; i++) {
        const char *f = x->h->edits[i].file[x->scope];
        int seen = !f;
        for (int k = 0; k < n && !seen; k++) seen = !strcmp(files[k], f);
        if (!seen && n < 8) files[n++] = f;
    }
    return n;
}

typedef struct {
    const char *harness;
    const char *agent;
    int scope;
    int dry, remove, channel;
} SetupOpts;

static int setup_agent_check(const char *v) { return setup_agent_bad(v); }

static const OptWord setup_scopes[] = {
    { "project", SETUP_PROJECT }, { "user", SETUP_USER }, { NULL, 0 }
};

static const Opt setup_opts[] = {
    { NULL, OPT_ARG, offsetof(SetupOpts, harness), NULL, 0, 0, 0, NULL, NULL,
      NULL, "HARNESS", "claude, codex, gemini, cursor, opencode, vscode,\n"
      "copilot or windsurf", 0 },
    { "--agent", OPT_STR, offsetof(SetupOpts, agent), NULL, 0, 0, 0, NULL,
      setup_agent_check, "must be 1 to 64 of A-Z a-z 0-9 . _ - (not first . -)",
      "NAME", "the agent the harness runs as (default: HARNESS-DIR,\n"
      "DIR the project directory's name; user scope: HARNESS-$USER)", 0 },
    { "--scope", OPT_WORD, offsetof(SetupOpts, scope), NULL, 0, 0, 0,
      setup_scopes, NULL, NULL, "WHERE", "project (files in this directory, "
      "the default) or\nuser (files under $HOME; copilot and windsurf "
      "have only this)", 0 },
    { "--dry-run", OPT_FLAG, offsetof(SetupOpts, dry), NULL, 0, 0, 0, NULL, NULL,
      NULL, NULL, "show what would change, as a diff; write nothing", 0 },
    { "--remove", OPT_FLAG, offsetof(SetupOpts, remove), NULL, 0, 0, 0, NULL,
      NULL, NULL, NULL, "undo: take arc's entries out; a file unchanged since\n"
      "setup gets its original bytes back (or is deleted)", 0 },
    { "--channel", OPT_FLAG, offsetof(SetupOpts, channel), NULL, 0, 0, 0, NULL,
      NULL, NULL, NULL, "claude only: the server runs `arc mcp --channel`, which\n"
      "pushes messages as Claude Code channel events (docs/MCP.md)", 0 },
    { NULL, OPT_END, 0, NULL, 0, 0, 0, NULL, NULL, NULL, NULL, NULL, 0 },
};

static const OptHelp setup_help = {
    "setup", "usage: arc setup HARNESS [--agent NAME] [--scope project|user] "
             "[--dry-run] [--remove]\n"
             "Wire arc into a harness's own config files: an MCP server entry\n"
             "running `arc mcp --agent NAME` and, for claude, codex, gemini and\n"
             "cursor, hooks running `arc hook HARNESS EVENT --agent NAME`\n"
             "(opencode: a plugin file that runs them). Other servers, hooks\n"
             "and keys are kept byte for byte; the first change of a file keeps\n"
             "FILE.arc-backup; a second run changes nothing. docs/SETUP.md\n"
             "lists every file per harness.\n\n",
    "\nexit status: 0 done (or nothing to do), 1 a file was refused (not\n"
    "strict JSON, a symbolic link, ...; it is left untouched), 2 usage.\n"
};

/* Set up, or remove, one harness. */
static int cmd_setup(int argc, char **argv) {
    SetupOpts o = { 0 };
    OptGroup g = { setup_opts, &o, NULL, 0 };
    opt_parse(&setup_help, &g, 1, argc, argv);
    SetupCtx x = { 0 };
    char err[ARC_ERRLEN];
    if (!o.harness || !(x.h = setup_find(o.harness))) {
        fprintf(stderr, "arc setup: %s%s (see arc setup --help)\n",
                o.harness ? "unknown harness " : "name a harness",
                o.harness ? o.harness : "");
        return 2;
    }
    if (o.channel && strcmp(x.h->name, "claude")) {
        fprintf(stderr, "arc setup: --channel is for claude only (Claude Code channels)\n");
        return 2;
    }
    x.scope = x.h->user_only ? SETUP_USER : (SetupScope)o.scope;
    x.dry = o.dry, x.remove = o.remove, x.channel = o.channel;
    if (setup_self(x.arc, err) || setup_root(&x, err)) {
        fprintf(stderr, "arc setup: %s\n", err);
        return 1;
    }
    setup_shq(&x.arc_sh, x.arc);
    if (o.agent) x.agent = o.agent;
    else if (!setup_stored_agent(&x)) setup_default_agent(&x);
    printf("arc setup %s%s: %s scope, agent %s, arc %s%s\n", x.h->name,
           x.remove ? " --remove" : "", x.scope == SETUP_USER ? "user" : "project",
           x.agent, x.arc, x.dry ? " (dry run: nothing is written)" : "");
    const char *files[8];
    int n = setup_files(&x, files), changed = 0, failed = 0;
    /* All or nothing: a file that would be refused stops the whole run
     * before any file is written. */
    x.check = 1;
    for (int i = 0; i < n; i++) failed += setup_one(&x, files[i]) < 0;
    x.check = 0;
    if (failed) printf("nothing was written: fix the file%s above, or wire it "
                       "by hand (docs/SETUP.md)\n", failed > 1 ? "s" : "");
    for (int i = 0; i < n && !failed; i++) {
        int r = setup_one(&x, files[i]);
        if (r < 0) failed++;
        else changed += r;
    }
    if (!failed && !changed)
        printf("nothing to change: %s\n", x.remove ? "arc is not set up here"
                                                    : "arc is already set up");
    else if (!failed && !x.remove && !x.dry && x.h->note[x.scope])
        printf("next: %s\n", x.h->note[x.scope]);
    if (!failed && !x.remove && x.channel)
        printf("channel: start Claude Code as `claude --dangerously-load-development-"
               "channels server:arc` (a claude.ai login; docs/MCP.md, \"Claude Code "
               "channels\")\n");
    close(x.rootfd);
    buf_free(&x.arc_sh);
    return failed ? 1 : 0;
}

/* ---- arc doctor ---- */

typedef struct {
    int problems;
} SetupDoc;

ARC_PRINTF(3, 4) static void setup_finding(SetupDoc *d, const char *fix,
                                          const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", fix ? "FAIL" : "ok  ");
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    if (fix) printf("     fix: %s\n", fix), d->problems++;
}

/* Is an executable named `bin` on $PATH? */
static int setup_on_path(const char *bin) {
    const char *p = getenv("PATH");
    while (p && *p) {
        size_t k = strcspn(p, ":");
        char cand[PATH_MAX];
        if (k && snprintf(cand, sizeof cand, "%.*s/%s", (int)k, p, bin) <
                     (int)sizeof cand && access(cand, X_OK) == 0)
            return 1;
        p += k + (p[k] == ':');
    }
    return 0;
}

/* Check one harness in one scope: are arc's entries there, and exactly
 * what setup writes (same binary, same agent, every hook)? */
static void setup_doctor_one(SetupDoc *d, SetupCtx *x) {
    const char *files[8];
    int n = setup_files(x, files), present = 0, stale = 0, bad = 0;
    Buf fix = { 0 }, list = { 0 };
    if (!setup_stored_agent(x)) setup_default_agent(x);
    x->channel = x->found_channel;   /* the channel variant is as good */
    buf_addf(&fix, "arc setup %s --agent %s%s%s", x->h->name, x->agent,
             x->scope == SETUP_USER && !x->h->user_only ? " --scope user" : "",
             x->channel ? " --channel" : "");
    for (int i = 0; i < n; i++) {
        char err[ARC_ERRLEN] = "";
        const char *base;
        Buf cur = { 0 }, want = { 0 }, none = { 0 };
        mode_t mode;
        int dfd = setup_dir(x, files[i], 0, &base, err), have = 0;
        if (dfd >= 0) have = setup_read(dfd, base, &cur, &mode, err);
        if (dfd == -1 || have < 0) {
            printf("FAIL %s: %s\n     fix: repair it by hand, then %s\n",
                   files[i], err, buf_cstr(&fix));
            d->problems++, bad = 1;
        } else if (have > 0) {
            buf_addstr(&want, buf_str(&cur));
            buf_addstr(&none, buf_str(&cur));
            if (setup_apply(x, files[i], &want, 0, err) ||
                setup_apply(x, files[i], &none, 1, err)) {
                printf("FAIL %s: %s\n", files[i], err);
                d->problems++, bad = 1;
            } else {
                int mine = none.len != cur.len || memcmp(buf_cstr(&none),
                                                         buf_cstr(&cur), cur.len);
                present += mine;
                if (mine && (want.len != cur.len ||
                             memcmp(buf_cstr(&want), buf_cstr(&cur), cur.len))) {
                    stale = 1;
                    buf_addf(&list, "%s%s", list.len ? ", " : "", files[i]);
                }
            }
        }
        if (dfd >= 0) close(dfd);
        buf_free(&cur), buf_free(&want), buf_free(&none);
    }
    const char *sc = x->scope == SETUP_USER ? "user" : "project";
    if (bad) {
    } else if (!present) {
        printf("--   %s (%s): not set up (%s)\n", x->h->name, sc, buf_cstr(&fix));
    } else if (stale) {
        Buf why = { 0 };
        buf_addf(&why, "%s (%s): %s differ from what setup writes (arc %s, "
                 "agent %s): a hook or entry is missing or stale", x->h->name, sc,
                 buf_cstr(&list), x->arc, x->agent);
        setup_finding(d, buf_cstr(&fix), "%s", buf_cstr(&why));
        buf_free(&why);
    } else {
        setup_finding(d, NULL, "%s (%s): wired as setup wires it (agent %s)",
                      x->h->name, sc, x->agent);
    }
    buf_free(&fix), buf_free(&list);
}

static const OptHelp doctor_help = {
    "doctor", "usage: arc doctor [DIR]\n"
              "Check a project (DIR, default the current directory): a hub\n"
              "answers for it, and each harness's config (project files and\n"
              "yours under $HOME) is wired as `arc setup` would wire it, hooks\n"
              "included. Each problem comes with the command that fixes it.\n"
              "Exit 0 when nothing is wrong, 1 otherwise.\n", NULL
};

static const Opt doctor_opts[] = {
    { NULL, OPT_ARG, 0, NULL, 0, 0, 0, NULL, NULL, NULL, "DIR",
      "the project directory (default: .)", 0 },
    { NULL, OPT_END, 0, NULL, 0, 0, 0, NULL, NULL, NULL, NULL, NULL, 0 },
};

static int cmd_doctor(int argc, char **argv) {
    const char *dir = NULL;
    OptGroup g = { doctor_opts, &dir, NULL, 0 };
    opt_parse(&doctor_help, &g, 1, argc, argv);
    char err[ARC_ERRLEN], tok[ARC_MAX_TOKEN + 1];
    if (dir && chdir(dir)) {
        fprintf(stderr, "arc doctor: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    SetupDoc d = { 0 };
    HubRef ref;
    if (opt_token(NULL, NULL, tok, err)) tok[0] = 0;
    if (client_discover("arc.sqlite3", tok, &ref))
        setup_finding(&d, ref.refused ? "give the hub's token in ARC_TOKEN" : NULL,
                      "hub %s at %s (pid %d)", ref.refused ? "refuses our token"
                      : "answers", ref.url, ref.pid);
    else
        setup_finding(&d, "arc ensure", "no hub answers for this directory");
    for (int i = 0; i < SETUP_N(setup_harnesses); i++)
        for (int s = 0; s < 2; s++) {
            SetupCtx x = { 0 };
            x.h = &setup_harnesses[i];
            x.scope = (SetupScope)s;
            if (s == SETUP_PROJECT && x.h->user_only) continue;
            if (setup_self(x.arc, err) || setup_root(&x, err)) {
                if (s == SETUP_PROJECT) fprintf(stderr, "arc doctor: %s\n", err);
                continue;
            }
            setup_shq(&x.arc_sh, x.arc);
            setup_doctor_one(&d, &x);
            close(x.rootfd);
            buf_free(&x.arc_sh);
        }
    for (int i = 0; i < SETUP_N(setup_harnesses); i++)
        if (setup_harnesses[i].bin)
            printf("--   %s: %s\n", setup_harnesses[i].bin,
                   setup_on_path(setup_harnesses[i].bin) ? "on PATH"
                                                         : "not on PATH");
    printf("%d problem%s\n", d.problems, d.problems == 1 ? "" : "s");
    return d.problems ? 1 : 0;
}

/* ==== cli: lifecycle commands, post/poll/whoami, relay, relay-gc ========= */

/* The one-shot commands, built on the client above. Output is what the
 * reference prints (pretty JSON laid out like Python's json.dumps). Exit
 * codes: 0 ok, 1 the hub said no (its error is printed), 2 usage or no hub
 * to talk to. */

/* Write a JSON value the way Python's json.dumps(indent=2) lays it out, so
 * lifecycle output matches the reference's. */
static void cli_pretty(Buf *b, const Json *j, uint32_t i, int depth) {
    const JsonTok *t = &j->t[i];
    if ((t->type != JSON_ARR && t->type != JSON_OBJ) || t->n == 0) {
        json_write(b, j, i);
        return;
    }
    int obj = t->type == JSON_OBJ;
    buf_addc(b, obj ? '{' : '[');
    uint32_t c = i + 1;
    for (uint32_t m = 0; m < t->n; m++) {
        buf_adds(b, m ? ",\n" : "\n");
        for (int k = 0; k <= depth; k++) buf_adds(b, "  ");
        if (obj) {
            json_write(b, j, c);
            buf_adds(b, ": ");
            c++;
        }
        cli_pretty(b, j, c, depth + 1);
        c = j->t[c].next;
    }
    buf_addc(b, '\n');
    for (int k = 0; k < depth; k++) buf_adds(b, "  ");
    buf_addc(b, obj ? '}' : ']');
}

/* Print a JSON text pretty on stdout (or verbatim if it does not parse). */
static void cli_print_json(Str s) {
    Json j = { 0 };
    Buf b = { 0 };
    if (json_parse(&j, s.p, s.n) == 0) cli_pretty(&b, &j, 0, 0);
    else buf_addstr(&b, s);
    printf("%s\n", buf_cstr(&b));
    buf_free(&b);
    json_free(&j);
}

/* ---- lifecycle: ensure, stop, reset, status ---- */

typedef struct {
    HubConfig hub;          /* what a started hub gets */
    double timeout_s;       /* ensure: how long to wait for it */
    const char *argv0;
} LifeOpts;

static const char *g_argv0 = "arc";

/* ensure's own option; stop, reset and status accept it too (unused). */
static const Opt life_opts[] = {
    { "--timeout", OPT_SECS, offsetof(LifeOpts, timeout_s), .lo = 0, .hi = 86400,
      .arg = "SEC", .help = "wait this long for a new hub (default 60)",
      .flags = OPT_ABOVE_LO },
    { 0 }
};

/* Parse lifecycle options: life_opts, then the serve options, which
 * `ensure` hands on to a hub it starts (full) and stop, reset and status
 * use to find one: their --help lists only those (OPT_WHICH). */
static void life_options(const OptHelp *h, int full, int argc, char **argv,
                         LifeOpts *o) {
    o->timeout_s = 60;
    serve_defaults(&o->hub);
    unsigned show = full ? 0 : OPT_WHICH;
    OptGroup g[] = {
        { life_opts, o, NULL, show },
        { serve_opts, &o->hub,
          full ? "and every 'arc serve' option, passed to a hub it starts:\n"
               : "which hub (the other 'arc ensure' options are accepted, "
                 "unused):\n", show },
    };
    opt_parse(h, g, 2, argc, argv);
}

/* The URL of the hub these options name. serve_host_ok() bounds the host,
 * so it always fits. */
static void life_base_url(const HubConfig *cfg, char out[ARC_URLLEN]) {
    assert(strlen(cfg->host) <= 255);
    serve_url(cfg->host, cfg->port, out, ARC_URLLEN);
}

/* Print the last lines of a log file on stderr. */
static void life_log_tail(const char *path, int lines) {
    char err[ARC_ERRLEN];
    int dfd = fs_open_parent(path, err), fd = -1;
    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    if (dfd >= 0) fd = fs_openat(dfd, name, O_RDONLY, err), close(dfd);
    FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
    if (!f) {
        if (fd >= 0) close(fd);
        return;
    }
    char buf[8192];
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    long from = size > (long)sizeof buf - 1 ? size - (long)sizeof buf + 1 : 0;
    fseek(f, from, SEEK_SET);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = buf + n;
    for (int k = 0; p > buf && k <= lines;)
        if (*--p == '\n' && p + 1 < buf + n) k++;
    fprintf(stderr, "--- last lines of %s ---\n%s", path, *p == '\n' ? p + 1 : p);
}

/* Open the hub's log for appending, as fs_openat allows (the log sits in
 * the workspace: a planted link must not make the hub append to a file of
 * the user's choosing). Returns the descriptor or -1 with err. */
static int life_open_log(const char *log, char err[ARC_ERRLEN]) {
    int dfd = fs_open_parent(log, err);
    if (dfd < 0) return -1;
    const char *slash = strrchr(log, '/');
    int fd = fs_openat(dfd, slash ? slash + 1 : log, O_WRONLY | O_CREAT | O_APPEND,
                       err);
    close(dfd);
    return fd;
}

/* Start `arc serve` detached: its own session, stdin from /dev/null, output
 * appended to `log` (opened here, before the fork, so a refusal can be
 * told). Its argv is the serve options marked OPT_PASS, written back from
 * o->hub by opt_argv() (it grows as needed); the token goes by
 * environment. Returns the child's pid, or -1 with why filled. */
static pid_t life_spawn(const LifeOpts *o, const char *log, char why[ARC_ERRLEN]) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) exe[n] = 0;
    else if (!realpath(o->argv0, exe) &&
             (size_t)snprintf(exe, sizeof exe, "%s", o->argv0) >= sizeof exe) {
        snprintf(why, ARC_ERRLEN, "the path of arc itself is too long");
        return -1;   /* a cut path would run another program */
    }
    int out = life_open_log(log, why);
    if (out < 0) return -1;
    OptArgv args = { 0 };
    opt_argv_add(&args, exe);
    opt_argv_add(&args, "serve");
    opt_argv(&args, serve_opts, &o->hub, OPT_PASS);
    pid_t pid = fork();
    if (pid < 0) snprintf(why, ARC_ERRLEN, "fork: %s", strerror(errno));
    if (pid != 0) {
        close(out);
        opt_argv_free(&args);
        return pid;
    }
    setsid();
    /* The token goes by environment, not argv, where every local user
     * could read it (ps). The caller is single-threaded here. */
    if (o->hub.token[0]) setenv("ARC_TOKEN", o->hub.token, 1);
    int in = open("/dev/null", O_RDONLY);
    if (in >= 0) dup2(in, 0);
    dup2(out, 1), dup2(out, 2);
    execv(exe, args.v);
    fprintf(stderr, "arc: cannot run %s: %s\n", exe, strerror(errno));
    _exit(127);
}

/* The log file of a hub started for this storage: arc.log beside it (its
 * directory is created). Returns 0, or -1 if the path does not fit. */
static int life_log_path(const char *storage, char log[ARC_PATHLEN]) {
    char dir[PATH_MAX];
    client_storage_dir(storage, dir, sizeof dir);
    mkdir(dir, 0700);
    return (size_t)snprintf(log, ARC_PATHLEN, "%s/arc.log", dir) < ARC_PATHLEN
               ? 0 : -1;
}

/* Serialise concurrent `arc ensure`s for one storage file with a POSIX
 * record lock on .arc.lock beside it, so two at once start one hub.
 * Returns the locked descriptor; -1 when the directory does not exist yet
 * (nothing to serialise: ensure makes it); -2 with err when .arc.lock is
 * not a file of ours (fs_openat): a planted one is not used. */
static int life_lock(const char *storage, char err[ARC_ERRLEN]) {
    char dir[PATH_MAX];
    client_storage_dir(storage, dir, sizeof dir);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return -1;
    int fd = fs_openat(dfd, ".arc.lock", O_RDWR | O_CREAT, err);
    close(dfd);
    if (fd < 0) return -2;
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
    while (fcntl(fd, F_SETLKW, &fl) < 0 && errno == EINTR) {}
    return fd;   /* closing it releases the lock */
}

/* Find the hub for these options: pidfile first (1), then host:port (2);
 * 0 if none answers. ref->refused: it wants another token. */
_Static_assert(sizeof ((HubRef *)0)->url == ARC_URLLEN, "HubRef.url is a URL");
static int life_find(const LifeOpts *o, HubRef *ref) {
    if (client_discover(o->hub.storage, o->hub.token, ref)) return 1;
    memset(ref, 0, sizeof *ref);
    life_base_url(&o->hub, ref->url);
    int probe = client_probe(ref->url, o->hub.token, 0, 2000);
    ref->refused = probe == PROBE_REFUSED;
    return probe ? 2 : 0;
}

static void life_print(int running, int started, const char *url, const char *error) {
    Buf b = { 0 };
    buf_addf(&b, "{\n  \"running\": %s,\n  \"started\": %s,\n  \"url\": ",
             running ? "true" : "false", started ? "true" : "false");
    json_cstr(&b, url);
    if (error) {
        buf_adds(&b, ",\n  \"error\": ");
        json_cstr(&b, error);
    }
    buf_adds(&b, "\n}");
    printf("%s\n", b.p);
    buf_free(&b);
}

/* Make sure a hub answers for these options, starting one in the
 * background if needed. Returns 0 with its URL in url (*started set when
 * we started it); 1 when a hub runs there but refuses our token; -1 when
 * none could be started. why says what went wrong; log names the started
 * hub's log ("" if none). Writes nothing to stdout, so the MCP server can
 * use it too. Holds life_lock() while it looks and starts. */
static int life_ensure(const LifeOpts *o, char url[ARC_URLLEN], int *started,
                       char why[ARC_ERRLEN], char log[ARC_PATHLEN]) {
    char base[ARC_URLLEN];
    life_base_url(&o->hub, base);
    HubRef ref;
    int lock = -1, rc = -1;
    *started = 0;
    log[0] = 0;
    memcpy(url, base, ARC_URLLEN);
    for (int pass = 0; pass < 2; pass++) {
        /* Whoever held the lock before our second look may have just
         * started it. */
        if (life_find(o, &ref)) {
            memcpy(url, ref.url, ARC_URLLEN);
            if (ref.refused) client_refused_msg(ref.url, o->hub.token, why, ARC_ERRLEN);
            rc = ref.refused ? 1 : 0;
            goto done;
        }
        if (!pass && (lock = life_lock(o->hub.storage, why)) == -2) {
            char e[ARC_ERRLEN];
            snprintf(e, sizeof e, "refusing %.400s", why);
            memcpy(why, e, ARC_ERRLEN);
            goto done;
        }
    }
    if (life_log_path(o->hub.storage, log)) {
        log[0] = 0;
        snprintf(why, ARC_ERRLEN, "the storage path is too long");
        goto done;
    }
    char e[ARC_ERRLEN];
    pid_t pid = life_spawn(o, log, e);
    if (pid < 0) {
        snprintf(why, ARC_ERRLEN, "cannot start a hub: %.400s", e);
        goto done;
    }
    *started = 1;
    int64_t deadline = clock_ms() + (int64_t)(o->timeout_s * 1000);
    snprintf(why, ARC_ERRLEN, "timeout");
    while (clock_ms() < deadline) {
        if (client_probe(base, o->hub.token, 0, 1000) == PROBE_OK) {
            rc = 0;
            break;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            snprintf(why, ARC_ERRLEN, "hub exited with status %d before answering",
                     WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
            break;
        }
        struct timespec ts = { 0, 10 * 1000000 };
        nanosleep(&ts, NULL);
    }
done:
    if (lock >= 0) close(lock);
    return rc;
}

static const OptHelp ensure_help = {
    "ensure", "usage: arc ensure [options]\n"
              "Start a hub in the background unless one is already running.\n",
    NULL
};

static int cmd_ensure(int argc, char **argv) {
    LifeOpts o = { .argv0 = g_argv0 };
    life_options(&ensure_help, 1, argc, argv, &o);
    char url[ARC_URLLEN], why[ARC_ERRLEN], log[ARC_PATHLEN];
    int started;
    int rc = life_ensure(&o, url, &started, why, log);
    life_print(rc >= 0, started, url, rc ? why : NULL);
    if (rc < 0 && log[0]) life_log_tail(log, 10);
    return rc ? 1 : 0;
}

/* Has pid exited? A zombie has (its parent may take a while to reap it:
 * PID 1 in some containers is slow), so on Linux look at its state. */
static int life_pid_gone(int pid) {
    if (kill(pid, 0) < 0 && errno == ESRCH) return 1;
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *close_paren = strrchr(buf, ')');
    return close_paren && close_paren[1] == ' ' && close_paren[2] == 'Z';
}

/* SIGTERM the hub and wait (bounded) until its process is gone. */
static int life_stop(const HubRef *ref, char *err, size_t n) {
    if (kill(ref->pid, SIGTERM) < 0) {
        snprintf(err, n, "failed to stop pid %d: %s", ref->pid, strerror(errno));
        return -1;
    }
    int64_t deadline = clock_ms() + 10000;
    while (clock_ms() < deadline) {
        waitpid(ref->pid, NULL, WNOHANG);   /* in case it is our child */
        if (life_pid_gone(ref->pid)) return 0;
        struct timespec ts = { 0, 10 * 1000000 };
        nanosleep(&ts, NULL);
    }
    snprintf(err, n, "pid %d did not exit within 10 s", ref->pid);
    return -1;
}

static const OptHelp stop_help = {
    "stop", "usage: arc stop [options]\n"
            "Stop the running hub (SIGTERM) and wait for it to exit.\n", NULL
};

/* Stop the hub these options name; prints the outcome as JSON. */
static int cmd_stop(int argc, char **argv) {
    LifeOpts o = { .argv0 = g_argv0 };
    life_options(&stop_help, 0, argc, argv, &o);
    HubRef ref;
    int found = life_find(&o, &ref);
    char err[ARC_ERRLEN];
    if (!found) {
        printf("{\n  \"stopped\": false,\n  \"error\": \"no running hub found\"\n}\n");
        fprintf(stderr, "arc: no running hub found\n");
        return 1;
    }
    if (found == 2) {
        printf("{\n  \"stopped\": false,\n  \"error\": \"hub is responding but no "
               "pidfile found to identify process\"\n}\n");
        return 1;
    }
    if (life_stop(&ref, err, sizeof err)) {
        Buf b = { 0 };
        json_cstr(&b, err);
        printf("{\n  \"stopped\": false,\n  \"error\": %s\n}\n", b.p);
        buf_free(&b);
        return 1;
    }
    Buf u = { 0 };
    json_cstr(&u, ref.url);
    printf("{\n  \"stopped\": true,\n  \"pid\": %d,\n  \"url\": %s\n}\n", ref.pid, u.p);
    buf_free(&u);
    return 0;
}

static const OptHelp reset_help = {
    "reset", "usage: arc reset [options]\n"
             "Stop the hub if it runs, then delete the storage file\n"
             "with its -wal and -shm files. Everything stored is lost.\n", NULL
};

/* Stop the hub, then delete its storage files; prints what it removed. */
static int cmd_reset(int argc, char **argv) {
    LifeOpts o = { .argv0 = g_argv0 };
    life_options(&reset_help, 0, argc, argv, &o);
    HubRef ref;
    int found = life_find(&o, &ref);
    char err[ARC_ERRLEN];
    if (found == 2 || (found == 1 && life_stop(&ref, err, sizeof err))) {
        if (found == 2) snprintf(err, sizeof err, "hub is responding but no pidfile "
                                 "found to identify process");
        Buf b = { 0 };
        json_cstr(&b, err);
        printf("{\n  \"reset\": false,\n  \"error\": %s\n}\n", b.p);
        buf_free(&b);
        return 1;
    }
    Buf removed = { 0 };
    static const char *const suffix[] = { "", "-wal", "-shm" };
    for (int i = 0; i < 3; i++) {
        char p[ARC_PATHLEN];
        if ((size_t)snprintf(p, sizeof p, "%s%s", o.hub.storage, suffix[i]) >=
            sizeof p) {   /* a cut name would delete another file */
            fprintf(stderr, "arc: the storage path is too long\n");
            printf("{\n  \"reset\": false,\n  \"error\": \"failed to remove storage\"\n}\n");
            buf_free(&removed);
            return 1;
        }
        if (unlink(p) == 0) {
            const char *base = strrchr(p, '/');
            buf_adds(&removed, removed.len ? ",\n    " : "\n    ");
            json_cstr(&removed, base ? base + 1 : p);
        } else if (errno != ENOENT) {
            fprintf(stderr, "arc: cannot remove %s: %s\n", p, strerror(errno));
            printf("{\n  \"reset\": false,\n  \"error\": \"failed to remove storage\"\n}\n");
            buf_free(&removed);
            return 1;
        }
    }
    if (removed.len)
        printf("{\n  \"reset\": true,\n  \"removed\": [%s\n  ]\n}\n", removed.p);
    else
        printf("{\n  \"reset\": true,\n  \"note\": \"database did not exist\"\n}\n");
    buf_free(&removed);
    return 0;
}

static const OptHelp status_help = {
    "status", "usage: arc status [options]\n"
              "Print whether a hub runs for this storage/port, with its\n"
              "url, pid, uptime and counts. Exit 0 if running, 1 if not.\n", NULL
};

/* Is a hub running for these options? Prints it as JSON (PROTOCOL §10's
 * hub-info fields plus uptime and the agent count). */
static int cmd_status(int argc, char **argv) {
    LifeOpts o = { .argv0 = g_argv0 };
    life_options(&status_help, 0, argc, argv, &o);
    HubRef ref;
    int found = life_find(&o, &ref);
    if (!found) {
        Buf u = { 0 };
        life_base_url(&o.hub, ref.url);
        json_cstr(&u, ref.url);
        printf("{\n  \"running\": false,\n  \"url\": %s\n}\n", u.p);
        buf_free(&u);
        return 1;
    }
    Client c;
    char err[ARC_ERRLEN] = "";
    Buf info = { 0 }, agents = { 0 }, out = { 0 };
    int st = 0;
    client_url(&c, ref.url, err);
    c.token = o.hub.token;
    if (!ref.refused) {
        client_call(&c, "GET", "/v1/hub-info", (Str){ NULL, 0 }, 5000, &st, &info, err);
        client_call(&c, "GET", "/v1/agents", (Str){ NULL, 0 }, 5000, &st, &agents, err);
    }
    client_free(&c);
    Json ji = { 0 }, ja = { 0 };
    buf_adds(&out, "{\"running\":true,\"url\":");
    json_cstr(&out, ref.url);
    if (ref.pid) buf_addf(&out, ",\"pid\":%d", ref.pid);
    if (ref.refused) {   /* running, but we may not ask it anything */
        client_refused_msg(ref.url, o.hub.token, err, sizeof err);
        fprintf(stderr, "arc: %s\n", err);
        buf_adds(&out, ",\"error\":");
        json_cstr(&out, err);
    }
    if (json_parse(&ji, info.p ? info.p : "", info.len) == 0) {
        uint32_t r = json_get(&ji, 0, "result");
        static const char *const keys[] = { "instance_id", "implementation",
            "implementation_version", "storage_path", "started_at",
            "latest_message_id" };
        for (int i = 0; r && i < 6; i++) {
            uint32_t v = json_get(&ji, r, keys[i]);
            if (!v) continue;
            buf_addf(&out, ",\"%s\":", keys[i]);
            json_write(&out, &ji, v);
            int64_t us;
            if (i == 4 && iso_parse((Str){ ji.src + ji.t[v].off, ji.t[v].len }, &us) == 0)
                buf_addf(&out, ",\"uptime_sec\":%lld",
                         (long long)((clock_wall_us() - us) / 1000000));
        }
    }
    if (json_parse(&ja, agents.p ? agents.p : "", agents.len) == 0) {
        uint32_t r = json_get(&ja, 0, "result");
        if (r && ja.t[r].type == JSON_ARR) buf_addf(&out, ",\"agents\":%u", ja.t[r].n);
    }
    buf_addc(&out, '}');
    cli_print_json(buf_str(&out));
    json_free(&ji), json_free(&ja);
    buf_free(&info), buf_free(&agents), buf_free(&out);
    return ref.refused ? 1 : 0;
}

/* ---- agent commands: post, poll, whoami ---- */

typedef struct {
    const char *agent, *base_url, *relay_dir, *channel, *to, *kind, *thread, *body;
    const char *blocked_by;          /* post: "3,4", metadata.blocked_by */
    int64_t parent;                  /* post: parent_task_id, 0 = none */
    const char *status;              /* tasks: open or done */
    double timeout_s;
    int64_t since_id;
    int include_self;
    char token[ARC_MAX_TOKEN + 1];   /* the hub's token, "" = none */
} AgentOpts;

#define AGENT_OPT(f) offsetof(AgentOpts, f)
/* Every agent command's options. */
static const Opt agent_opts[] = {
    { "--agent", OPT_STR, AGENT_OPT(agent), .arg = "ID",
      .help = "act as this agent (default ARC_AGENT)" },
    { "--base-url", OPT_STR, AGENT_OPT(base_url), .arg = "URL",
      .help = "hub (default ARC_URL, else http://127.0.0.1:6969)" },
    { "--relay-dir", OPT_STR, AGENT_OPT(relay_dir), .arg = "DIR",
      .help = "talk through a hub's file spool instead of\n"
              "HTTP, for sandboxed agents (or ARC_RELAY_DIR)" },
    { "--token-file", OPT_TOKEN_FILE, AGENT_OPT(token), .arg = "FILE",
      .help = "bearer token for a hub that requires one (or\n"
              "ARC_TOKEN; not needed through the relay)" },
    { "--token", OPT_TOKEN, AGENT_OPT(token), .arg = "TOKEN",
      .help = "the same (visible in ps: prefer the others)" },
    { 0 }
};

/* post's and poll's: where. */
static const Opt agent_where_opts[] = {
    { "--channel", OPT_STR, AGENT_OPT(channel), .arg = "C",
      .help = "channel (post: default general; poll: all)" },
    { "--thread-id", OPT_STR, AGENT_OPT(thread), .arg = "T", .help = "thread" },
    { 0 }
};

static const Opt agent_post_opts[] = {
    { "--to", OPT_STR, AGENT_OPT(to), .arg = "AGENT",
      .help = "a direct message to this agent" },
    { "--kind", OPT_STR, AGENT_OPT(kind), .arg = "KIND",
      .help = "message kind (default chat)" },
    { "--parent", OPT_I64, AGENT_OPT(parent), .lo = 1, .hi = ARC_MAX_ID,
      .arg = "ID", .help = "a task: the task it is a subtask of" },
    { "--blocked-by", OPT_STR, AGENT_OPT(blocked_by), .arg = "IDS",
      .help = "a task: ids of the tasks it waits for,\nseparated by commas "
              "(PROTOCOL §14)" },
    { .kind = OPT_ARG, .off = AGENT_OPT(body), .arg = "BODY",
      .help = "the message text; - reads it from stdin" },
    { 0 }
};

static const Opt agent_poll_opts[] = {
    { "--timeout", OPT_SECS, AGENT_OPT(timeout_s), .lo = 0, .hi = 60,
      .arg = "SEC", .help = "wait this long for a message (default 30)" },
    { "--since-id", OPT_I64, AGENT_OPT(since_id), .lo = 0, .hi = ARC_MAX_ID,
      .arg = "N", .help = "only messages after this id (default: from\nthe first)" },
    { "--include-self", OPT_FLAG, AGENT_OPT(include_self),
      .help = "also the agent's own messages" },
    { 0 }
};
static const Opt agent_tasks_opts[] = {
    { "--status", OPT_STR, AGENT_OPT(status), .arg = "S",
      .help = "open or done (default: both)" },
    { 0 }
};
#undef AGENT_OPT

#define AGENT_FOOTER                                                        \
    "Registers the agent unless it is live (never replacing a session of\n" \
    "another process, such as its arc mcp), then acts as it.\n"            \
    "Exit: 0 ok, 1 the hub refused, 2 usage or no hub.\n"

static const OptHelp agent_help[] = {
    { "post", "usage: arc post --agent ID [options] BODY\n"
              "Post a message (or a direct message with --to) as agent ID.\n",
      AGENT_FOOTER },
    { "poll", "usage: arc poll --agent ID [options]\n"
              "Wait for messages visible to agent ID; print one JSON message\n"
              "per line (by default without the agent's own), less those a\n"
              "hook or an earlier poll already surfaced to it.\n", AGENT_FOOTER },
    { "whoami", "usage: arc whoami --agent ID [options]\n"
                "Register agent ID and print its bootstrap.\n", AGENT_FOOTER },
    { "tasks", "usage: arc tasks [options]\n"
               "Print the hub's tasks, one JSON object per line, with what\n"
               "each waits for (blocked_by) and whether it is claimable.\n",
      "Registers no agent (--agent only names the relay's spool).\n"
      "Exit: 0 ok, 1 the hub refused, 2 usage or no hub.\n" },
};

/* Parse post's, poll's or whoami's options into o (defaults: ARC_AGENT,
 * ARC_URL, ARC_RELAY_DIR); exits 2 on bad usage. */
static void agent_options(const char *cmd, int argc, char **argv, AgentOpts *o) {
    *o = (AgentOpts){ .agent = getenv("ARC_AGENT"), .base_url = getenv("ARC_URL"),
                      .relay_dir = getenv("ARC_RELAY_DIR"),
                      .channel = NULL, .kind = "chat", .timeout_s = 30 };
    if (!o->base_url || !*o->base_url) o->base_url = "http://127.0.0.1:6969";
    int is_post = !strcmp(cmd, "post"), is_poll = !strcmp(cmd, "poll");
    int is_tasks = !strcmp(cmd, "tasks");
    OptGroup g[] = {
        { agent_opts, o, NULL, 0 },
        { agent_where_opts, o, NULL, 0 },
        { is_post ? agent_post_opts : is_tasks ? agent_tasks_opts : agent_poll_opts,
          o, NULL, 0 },
    };
    const OptHelp *h = &agent_help[is_post ? 0 : is_poll ? 1 : is_tasks ? 3 : 2];
    opt_parse(h, g, is_post || is_poll || is_tasks ? 3 : 1, argc, argv);
    if (o->relay_dir && !*o->relay_dir) o->relay_dir = NULL;
    if (is_tasks && (!o->agent || !*o->agent)) o->agent = "cli";
    if (!o->agent || !*o->agent) {
        fprintf(stderr, "arc %s: --agent is required (or set ARC_AGENT)\n", cmd);
        exit(2);
    }
    if (is_post && !o->body) {
        fprintf(stderr, "arc post: BODY is required (use - to read stdin)\n");
        exit(2);
    }
}

/* Judge one call's outcome (client_call failed, or its status and body):
 * 0 for an ok envelope; otherwise print why and return 1 (the hub said
 * no) or 2 (no hub). */
static int agent_answer(Client *c, int failed, int status, const Buf *out,
                        const char *err) {
    if (failed) {
        if (c->relay_dir)
            fprintf(stderr, "arc: no answer through the relay at %s (is a hub "
                    "serving --spool-dir %s?): %s\n", c->relay_dir, c->relay_dir, err);
        else
            fprintf(stderr, "arc: no hub at %s (run: arc ensure): %s\n", c->base, err);
        return 2;
    }
    Json j = { 0 };
    int rc = 0;
    uint32_t ok = 0;
    if (json_parse(&j, out->p ? out->p : "", out->len) || !(ok = json_get(&j, 0, "ok"))) {
        fprintf(stderr, "arc: unexpected answer from %s (HTTP %d)\n", c->base, status);
        rc = 1;
    } else if (j.t[ok].type != JSON_TRUE) {
        uint32_t e = json_get(&j, 0, "error");
        Buf m = { 0 };
        if (e) json_as_text(&m, &j, e);
        fprintf(stderr, "arc: %s\n", m.len ? m.p : "hub error");
        buf_free(&m);
        rc = 1;
    }
    json_free(&j);
    return rc;
}

/* Call the hub; on success leave the response body in out and return 0.
 * Otherwise print why and return the exit code (1 hub error, 2 no hub). */
static int agent_call(Client *c, const char *method, const char *path, Str body,
                      int64_t timeout_ms, Buf *out) {
    char err[ARC_ERRLEN] = "";
    int status = 0;
    int failed = client_call(c, method, path, body, timeout_ms, &status, out, err);
    return agent_answer(c, failed, status, out, err);
}

/* Append s percent-encoded: fit for a query value or a path segment. */
static void cli_pct(Buf *b, const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (isalnum(*p) || strchr("-._~", *p)) buf_addc(b, (char)*p);
        else buf_addf(b, "%%%02X", *p);
    }
}

/* Append "?name=value" (or "&..." after the first) with the value
 * percent-encoded. */
static void agent_qparam(Buf *b, const char *name, const char *value) {
    buf_addf(b, "%c%s=", b->p && strchr(b->p, '?') ? '&' : '?', name);
    cli_pct(b, value);
}

/* Register the agent unless it is live, and return the client ready for
 * more calls. A live session belongs to another process (its `arc mcp`,
 * say): replacing it would cut that process off (issue 18), and acting as
 * the agent needs no session of one's own, so a 409 is fine here. */
static int agent_start(const char *cmd, int argc, char **argv, AgentOpts *o,
                       Client *c) {
    agent_options(cmd, argc, argv, o);
    char err[ARC_ERRLEN];
    if (client_url(c, o->base_url, err)) {
        fprintf(stderr, "arc: %s\n", err);
        return 2;
    }
    c->relay_dir = o->relay_dir;
    c->agent = o->agent;
    c->token = o->token;
    Buf body = { 0 }, out = { 0 };
    buf_adds(&body, "{\"agent_id\":");
    json_cstr(&body, o->agent);
    buf_adds(&body, ",\"replace\":false}");
    int status = 0, rc = 0;
    int failed = client_call(c, "POST", "/v1/sessions", buf_str(&body), 15000,
                             &status, &out, err);
    if (failed || status != 409) rc = agent_answer(c, failed, status, &out, err);
    buf_free(&body);
    buf_free(&out);
    return rc;
}

/* Print the "result" member of a hub envelope, pretty or as one line. */
static void agent_print_result(Buf *env, int one_line_items) {
    Json j = { 0 };
    if (json_parse(&j, env->p, env->len) == 0) {
        uint32_t r = json_get(&j, 0, "result");
        Buf b = { 0 };
        if (r && one_line_items && j.t[r].type == JSON_ARR) {
            uint32_t m = r + 1;
            for (uint32_t i = 0; i < j.t[r].n; i++, m = j.t[m].next) {
                buf_reset(&b);
                json_write(&b, &j, m);
                printf("%s\n", b.p);
            }
        } else if (r) {
            cli_pretty(&b, &j, r, 0);
            printf("%s\n", b.p);
        }
        buf_free(&b);
    }
    json_free(&j);
}

static int cmd_post(int argc, char **argv) {
    AgentOpts o;
    Client c;
    int rc = agent_start("post", argc, argv, &o, &c);
    Buf text = { 0 }, body = { 0 }, out = { 0 };
    if (rc) goto done;
    if (!strcmp(o.body, "-")) {
        char chunk[4096];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0) buf_add(&text, chunk, n);
        while (text.len && (text.p[text.len - 1] == '\n')) text.p[--text.len] = 0;
    } else {
        buf_adds(&text, o.body);
    }
    if (!utf8_valid(text.p ? text.p : "", text.len)) {
        fprintf(stderr, "arc post: BODY is not valid UTF-8\n");
        rc = 2;
        goto done;
    }
    buf_adds(&body, "{\"from_agent\":");
    json_cstr(&body, o.agent);
    buf_adds(&body, ",\"channel\":");
    json_cstr(&body, o.channel ? o.channel : o.to ? "direct" : "general");
    if (o.to) buf_adds(&body, ",\"to_agent\":"), json_cstr(&body, o.to);
    buf_adds(&body, ",\"kind\":");
    json_cstr(&body, o.kind);
    if (o.thread) buf_adds(&body, ",\"thread_id\":"), json_cstr(&body, o.thread);
    if (o.parent) buf_addf(&body, ",\"parent_task_id\":%lld", (long long)o.parent);
    if (o.blocked_by) {   /* "3,4" or "3, 4": each one an id */
        buf_adds(&body, ",\"metadata\":{\"blocked_by\":[");
        for (const char *p = o.blocked_by, *q; ; p = q + 1) {
            int64_t id;
            q = p + strcspn(p, ",");
            if (parse_int_text(str_trim((Str){ p, (size_t)(q - p) }), &id) || id < 1) {
                fprintf(stderr, "arc post: --blocked-by takes task ids separated by "
                        "commas, e.g. 3,4\n");
                rc = 2;
                goto done;
            }
            buf_addf(&body, "%s%lld", p == o.blocked_by ? "" : ",", (long long)id);
            if (!*q) break;
        }
        buf_adds(&body, "]}");
    }
    buf_adds(&body, ",\"body\":");
    json_strs(&body, buf_str(&text));
    buf_addc(&body, '}');
    rc = agent_call(&c, "POST", "/v1/messages", buf_str(&body), 15000, &out);
    if (!rc) agent_print_result(&out, 0);
done:
    buf_free(&text), buf_free(&body), buf_free(&out);
    client_free(&c);
    return rc;
}

static int cmd_poll(int argc, char **argv) {
    AgentOpts o;
    Client c;
    int rc = agent_start("poll", argc, argv, &o, &c);
    Buf path = { 0 }, out = { 0 };
    if (rc) goto done;
    buf_adds(&path, "/v1/events");
    agent_qparam(&path, "agent_id", o.agent);
    buf_adds(&path, "&limit=100");
    buf_addf(&path, "&since_id=%lld&timeout=%g", (long long)o.since_id, o.timeout_s);
    buf_adds(&path, "&surfaced=poll");   /* a hook will not repeat them (§16.4) */
    if (!o.include_self) buf_adds(&path, "&exclude_self=1");
    if (o.channel) agent_qparam(&path, "channel", o.channel);
    if (o.thread) agent_qparam(&path, "thread_id", o.thread);
    rc = agent_call(&c, "GET", path.p, (Str){ NULL, 0 },
                    (int64_t)(o.timeout_s * 1000) + 15000, &out);
    if (!rc) agent_print_result(&out, 1);
done:
    buf_free(&path), buf_free(&out);
    client_free(&c);
    return rc;
}

static int cmd_whoami(int argc, char **argv) {
    AgentOpts o;
    Client c;
    int rc = agent_start("whoami", argc, argv, &o, &c);
    Buf path = { 0 }, out = { 0 };
    if (rc) goto done;
    buf_adds(&path, "/v1/bootstrap");
    agent_qparam(&path, "agent_id", o.agent);
    rc = agent_call(&c, "GET", path.p, (Str){ NULL, 0 }, 15000, &out);
    if (!rc) agent_print_result(&out, 0);
done:
    buf_free(&path), buf_free(&out);
    client_free(&c);
    return rc;
}

/* ---- arc kv: the shared memory (PROTOCOL §13) ---- */

/* Unlike post and poll, kv does not register the agent: reads need no
 * agent at all, and a write names its agent in the request, so running
 * `arc kv` never replaces the session of an `arc mcp` of the same name. */

typedef struct {
    const char *action, *key, *value, *type, *prefix, *after;
    int64_t version;       /* -1: not given */
    int64_t limit;
} KvOpts;

#define KV_OPT(f) offsetof(KvOpts, f)
static const Opt kv_opts[] = {
    { "--type", OPT_STR, KV_OPT(type), .arg = "TYPE",
      .help = "put: decision, fact, constraint, artifact or\nnote; list: only this type" },
    { "--version", OPT_I64, KV_OPT(version), .lo = 0, .hi = ARC_MAX_ID, .arg = "N",
      .help = "put, del: only if the key is at version N\n(0: only if it does not exist)" },
    { "--prefix", OPT_STR, KV_OPT(prefix), .arg = "P", .help = "list: keys starting with P" },
    { "--after", OPT_STR, KV_OPT(after), .arg = "KEY", .help = "list: keys after KEY (paging)" },
    { "--limit", OPT_I64, KV_OPT(limit), .lo = 1, .hi = ARC_MAX_LIMIT, .arg = "N",
      .help = "list, history: at most N rows (default 100)" },
    { .kind = OPT_ARG, .off = KV_OPT(action), .arg = "ACTION",
      .help = "get, put, list, del or history" },
    { .kind = OPT_ARG, .off = KV_OPT(key), .arg = "KEY", .help = "the key (not for list)" },
    { .kind = OPT_ARG, .off = KV_OPT(value), .arg = "VALUE",
      .help = "put: JSON, else taken as a string; - reads\nstdin" },
    { 0 }
};
#undef KV_OPT

static const OptHelp kv_help = {
    "kv", "usage: arc kv get|put|list|del|history [KEY] [VALUE] [options]\n"
          "Read and write the hub's shared memory. put and del need --agent.\n",
    "Prints the row (get, put), the change (del) or one JSON row per line\n"
    "(list, history). A lost compare-and-set prints the current row.\n"
    "Exit: 0 ok, 1 the hub refused (409: the key changed), 2 usage or no hub.\n"
};

static int cmd_kv(int argc, char **argv) {
    static const char *const acts[] = { "get", "put", "list", "del", "history" };
    AgentOpts o = { .agent = getenv("ARC_AGENT"), .base_url = getenv("ARC_URL"),
                    .relay_dir = getenv("ARC_RELAY_DIR") };
    KvOpts k = { .version = -1, .limit = 0 };
    OptGroup g[] = { { agent_opts, &o, NULL, 0 }, { kv_opts, &k, NULL, 0 } };
    opt_parse(&kv_help, g, 2, argc, argv);
    if (!o.base_url || !*o.base_url) o.base_url = "http://127.0.0.1:6969";
    if (o.relay_dir && !*o.relay_dir) o.relay_dir = NULL;
    int a = -1;
    for (int i = 0; i < 5 && k.action; i++)
        if (!strcmp(k.action, acts[i])) a = i;
    const char *why = a < 0 ? "ACTION must be get, put, list, del or history"
                    : a != 2 && !k.key ? "KEY is required"
                    : a == 2 && k.key ? "list takes no KEY (use --prefix)"
                    : a == 1 && !k.value ? "VALUE is required (use - to read stdin)"
                    : a != 1 && k.value ? "only put takes a VALUE"
                    : (a == 1 || a == 3) && (!o.agent || !*o.agent)
                        ? "--agent is required to write (or set ARC_AGENT)" : NULL;
    if (why) {
        fprintf(stderr, "arc kv: %s\n", why);
        return 2;
    }
    Client c;
    char err[ARC_ERRLEN];
    if (client_url(&c, o.base_url, err)) {
        fprintf(stderr, "arc: %s\n", err);
        return 2;
    }
    c.relay_dir = o.relay_dir;
    c.agent = o.agent;
    c.token = o.token;
    Buf path = { 0 }, body = { 0 }, text = { 0 }, out = { 0 };
    Json j = { 0 };
    int rc = 2;
    buf_adds(&path, "/v1/kv");
    if (a != 2) buf_addc(&path, '/'), cli_pct(&path, k.key);
    if (a == 1) {
        if (!strcmp(k.value, "-")) {
            char chunk[4096];
            size_t n;
            while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0) buf_add(&text, chunk, n);
            while (text.len && text.p[text.len - 1] == '\n') text.p[--text.len] = 0;
        } else {
            buf_adds(&text, k.value);
        }
        if (!utf8_valid(buf_cstr(&text), text.len)) {
            fprintf(stderr, "arc kv: VALUE is not valid UTF-8\n");
            goto done;
        }
        buf_adds(&body, "{\"agent_id\":");
        json_cstr(&body, o.agent);
        buf_adds(&body, ",\"value\":");
        if (text.len && json_parse(&j, text.p, text.len) == 0) json_write(&body, &j, 0);
        else json_strs(&body, buf_str(&text));
        if (k.type) buf_adds(&body, ",\"type\":"), json_cstr(&body, k.type);
        if (k.version >= 0) buf_addf(&body, ",\"version\":%lld", (long long)k.version);
        buf_addc(&body, '}');
    } else if (a == 3) {
        agent_qparam(&path, "agent_id", o.agent);
        if (k.version >= 0) buf_addf(&path, "&version=%lld", (long long)k.version);
    } else if (a == 4) {
        buf_adds(&path, "/history");
    }
    if (a == 2 && k.prefix) agent_qparam(&path, "prefix", k.prefix);
    if (a == 2 && k.type) agent_qparam(&path, "type", k.type);
    if (a == 2 && k.after) agent_qparam(&path, "after", k.after);
    if ((a == 2 || a == 4) && k.limit) {
        char n[24];
        snprintf(n, sizeof n, "%lld", (long long)k.limit);
        agent_qparam(&path, "limit", n);
    }
    rc = agent_call(&c, a == 1 ? "PUT" : a == 3 ? "DELETE" : "GET", path.p,
                    a == 1 ? buf_str(&body) : (Str){ NULL, 0 }, 15000, &out);
    if (!rc) {
        agent_print_result(&out, a == 2 || a == 4);
    } else if (rc == 1) {   /* a lost compare-and-set: show what is there */
        json_free(&j);
        uint32_t cur;
        if (out.len && json_parse(&j, out.p, out.len) == 0 &&
            (cur = json_get(&j, 0, "current"))) {
            buf_reset(&text);
            cli_pretty(&text, &j, cur, 0);
            printf("%s\n", buf_cstr(&text));
        }
    }
done:
    json_free(&j);
    buf_free(&path), buf_free(&body), buf_free(&text), buf_free(&out);
    client_free(&c);
    return rc;
}


/* arc tasks: GET /v1/tasks, one task per line (blocked_by and claimable
 * come with each, PROTOCOL §14). Registers no session: listing must not
 * replace the session of an agent that is working. */
static int cmd_tasks(int argc, char **argv) {
    AgentOpts o;
    Client c;
    char err[ARC_ERRLEN];
    Buf path = { 0 }, out = { 0 };
    int rc = 2;
    agent_options("tasks", argc, argv, &o);
    if (client_url(&c, o.base_url, err)) {
        fprintf(stderr, "arc: %s\n", err);
        return 2;
    }
    c.relay_dir = o.relay_dir;
    c.agent = o.agent;
    c.token = o.token;
    buf_adds(&path, "/v1/tasks");
    if (o.status) agent_qparam(&path, "status", o.status);
    if (o.channel) agent_qparam(&path, "channel", o.channel);
    if (o.thread) agent_qparam(&path, "thread_id", o.thread);
    rc = agent_call(&c, "GET", path.p, (Str){ NULL, 0 }, 15000, &out);
    if (!rc) agent_print_result(&out, 1);
    buf_free(&path), buf_free(&out);
    client_free(&c);
    return rc;
}

/* ---- arc search: full-text search as an agent (PROTOCOL §15) ---- */

typedef struct {
    AgentOpts a;               /* --agent, --base-url, --relay-dir, tokens */
    const char *channel, *from, *kind, *query;
    int limit;
} SearchOpts;

#define SEARCH_OPT(f) offsetof(SearchOpts, f)
static const Opt search_opts[] = {
    { "--channel", OPT_STR, SEARCH_OPT(channel), .arg = "C", .help = "only this channel" },
    { "--from", OPT_STR, SEARCH_OPT(from), .arg = "AGENT", .help = "only messages by AGENT" },
    { "--kind", OPT_STR, SEARCH_OPT(kind), .arg = "KIND", .help = "only this message kind" },
    { "--limit", OPT_INT, SEARCH_OPT(limit), .lo = 1, .hi = ARC_SEARCH_MAX_LIMIT,
      .arg = "N", .help = "at most N results (default 20, up to 100)" },
    { .kind = OPT_ARG, .off = SEARCH_OPT(query), .arg = "QUERY",
      .help = "words that must all occur; word* matches a prefix" },
    { 0 }
};
#undef SEARCH_OPT

/* Search the hub's messages; print one JSON hit ({message, snippet,
 * score}) per line, best first. Direct messages count only with --agent,
 * and only the agent's own; the agent is not registered. */
static int cmd_search(int argc, char **argv) {
    static const OptHelp help = {
        "search", "usage: arc search [--agent ID] [options] QUERY\n"
                  "Full-text search over message bodies and attachments, ranked.\n",
        "Without --agent (or ARC_AGENT), direct messages are left out.\n"
        "Exit: 0 ok, 1 the hub refused, 2 usage or no hub.\n" };
    SearchOpts o = { .a = { .agent = getenv("ARC_AGENT"), .base_url = getenv("ARC_URL"),
                            .relay_dir = getenv("ARC_RELAY_DIR") },
                     .limit = ARC_SEARCH_LIMIT };
    OptGroup g[] = { { agent_opts, &o.a, NULL, 0 }, { search_opts, &o, NULL, 0 } };
    opt_parse(&help, g, 2, argc, argv);
    if (!o.a.base_url || !*o.a.base_url) o.a.base_url = "http://127.0.0.1:6969";
    if (o.a.relay_dir && !*o.a.relay_dir) o.a.relay_dir = NULL;
    if (!o.query || !*o.query) {
        fprintf(stderr, "arc search: QUERY is required\n");
        return 2;
    }
    Client c;
    char err[ARC_ERRLEN];
    if (client_url(&c, o.a.base_url, err)) {
        fprintf(stderr, "arc: %s\n", err);
        return 2;
    }
    c.relay_dir = o.a.relay_dir;
    c.agent = o.a.agent;
    c.token = o.a.token;
    Buf path = { 0 }, out = { 0 };
    buf_adds(&path, "/v1/search");
    agent_qparam(&path, "q", o.query);
    buf_addf(&path, "&limit=%d", o.limit);
    if (o.a.agent && *o.a.agent) agent_qparam(&path, "agent_id", o.a.agent);
    if (o.channel) agent_qparam(&path, "channel", o.channel);
    if (o.from) agent_qparam(&path, "from", o.from);
    if (o.kind) agent_qparam(&path, "kind", o.kind);
    int rc = agent_call(&c, "GET", path.p, (Str){ NULL, 0 }, 30000, &out);
    if (!rc) {
        agent_print_result(&out, 1);
        Json j = { 0 };
        uint32_t p;
        if (json_parse(&j, out.p, out.len) == 0 && (p = json_get(&j, 0, "pending"))) {
            Buf n = { 0 };
            json_as_text(&n, &j, p);
            fprintf(stderr, "arc search: the index is catching up; %s newer messages "
                    "were not searched yet\n", n.p);
            buf_free(&n);
        }
        json_free(&j);
    }
    buf_free(&path), buf_free(&out);
    client_free(&c);
    return rc;
}

/* ---- arc relay: the standalone spool relay, and relay-gc ---- */

#define ARC_RELAY_MAX_FORWARDS 256   /* concurrent forwards of `arc relay` */

/* One forward: its own thread and HTTP connection, so a long-poll waits
 * without holding up anyone else's request. */
static void *relay_forward_main(void *arg) {
    RelayReq *r = arg;
    Relay *rl = r->owner;
    Client c;
    char err[ARC_ERRLEN] = "";
    int status = 0;
    Buf out = { 0 };
    Json parsed = { 0 };   /* only to check that the answer is JSON */
    /* A long-poll may take 60 s; allow for it plus margin. */
    int bad_url = client_url(&c, rl->forward_url, err);
    c.token = rl->forward_token;
    if (bad_url ||
        client_call(&c, r->method, r->path, r->body ? str_c(r->body) : (Str){ NULL, 0 },
                 75000, &status, &out, err)) {
        status = 599;   /* the reference's "connection error" status */
        buf_reset(&out);
        buf_adds(&out, "{\"ok\":false,\"error\":");
        Buf m = { 0 };
        buf_addf(&m, "connection error: %s", err);
        json_strs(&out, buf_str(&m));
        buf_free(&m);
        buf_addc(&out, '}');
    } else if (json_parse(&parsed, out.p ? out.p : "", out.len)) {
        Buf wrapped = { 0 };   /* not JSON: pass it on as an error string */
        buf_adds(&wrapped, "{\"ok\":false,\"error\":");
        json_strs(&wrapped, buf_str(&out));
        buf_addc(&wrapped, '}');
        buf_free(&out);
        out = wrapped;
    }
    json_free(&parsed);
    client_free(&c);
    r->status = status;
    r->answer = out;   /* hand-off */
    pthread_mutex_lock(&rl->mu);
    rl->n_forwarding--;
    pthread_mutex_unlock(&rl->mu);
    relay_done(rl, r);
    return NULL;
}

static void relay_forward(Relay *rl, RelayReq *r) {
    pthread_mutex_lock(&rl->mu);
    int busy = rl->n_forwarding >= ARC_RELAY_MAX_FORWARDS;
    if (!busy) rl->n_forwarding++;
    pthread_mutex_unlock(&rl->mu);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (busy || pthread_create(&t, &attr, relay_forward_main, r)) {
        if (!busy) {
            pthread_mutex_lock(&rl->mu);
            rl->n_forwarding--;
            pthread_mutex_unlock(&rl->mu);
        }
        pthread_mutex_lock(&rl->mu);
        rl->n_forwarding++;
        pthread_mutex_unlock(&rl->mu);
        relay_forward_main(r);   /* at the cap: serve it on this thread */
    }
    pthread_attr_destroy(&attr);
}

/* `arc relay`'s options. */
typedef struct {
    const char *url, *spool;
    char token[ARC_MAX_TOKEN + 1];   /* sent with every forwarded request */
} RelayOpts;

static const Opt relay_opts[] = {
    { "--base-url", OPT_STR, offsetof(RelayOpts, url), .arg = "URL",
      .help = "the hub (default ARC_URL, else http://127.0.0.1:6969)" },
    { "--spool-dir", OPT_STR, offsetof(RelayOpts, spool), .arg = "DIR",
      .help = "the spool to serve (default .arc-relay)" },
    { "--token-file", OPT_TOKEN_FILE, offsetof(RelayOpts, token), .arg = "FILE",
      .help = "the hub's bearer token (or ARC_TOKEN)" },
    { "--token", OPT_TOKEN, offsetof(RelayOpts, token), .arg = "TOKEN",
      .help = "the same (visible in ps: prefer the others)" },
    { "--poll-interval-sec", OPT_IGNORED, .arg = "SEC",
      .help = "accepted for compatibility and ignored: arc\n"
              "watches the spool with inotify" },
    { "--request-timeout-sec", OPT_IGNORED, .arg = "SEC",
      .help = "the same" },
    { 0 }
};

static const OptHelp relay_help = {
    "relay", "usage: arc relay [options]\n"
             "Serve a file spool by forwarding each request to a hub over HTTP, each\n"
             "in its own thread (at most 256 at once). Only needed when the hub runs\n"
             "elsewhere: a hub already serves its own --spool-dir. Stop with SIGTERM.\n"
             "A hub that requires a token gets this one (or ARC_TOKEN) with every\n"
             "forwarded request: whoever can write the spool acts with it.\n",
    NULL
};

/* Forward a spool to a hub over HTTP until SIGTERM. */
static int cmd_relay(int argc, char **argv) {
    RelayOpts o = { .url = getenv("ARC_URL"), .spool = ".arc-relay" };
    if (!o.url || !*o.url) o.url = "http://127.0.0.1:6969";
    OptGroup g[] = { { relay_opts, &o, NULL, 0 } };
    opt_parse(&relay_help, g, 1, argc, argv);
    const char *url = o.url, *spool = o.spool, *token = o.token;
    char err[ARC_ERRLEN];
    Client probe;
    if (client_url(&probe, url, err)) {
        fprintf(stderr, "arc relay: %s\n", err);
        return 2;
    }
    int pipefd[2];
    if (pipe(pipefd)) die("pipe: %s", strerror(errno));
    g_wake_wr = pipefd[1];
    struct sigaction sa = { .sa_handler = loop_on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    Relay *rl = relay_start(spool, -1, relay_forward, url, token, err);
    if (!rl) {
        fprintf(stderr, "arc: %s\n", err);
        return 1;
    }
    log_info("relay: %s -> %s", rl->root, url);
    while (!g_stop) {
        struct pollfd p = { .fd = pipefd[0], .events = POLLIN };
        poll(&p, 1, -1);
    }
    relay_stop(rl);
    g_wake_wr = -1;
    close(pipefd[0]), close(pipefd[1]);
    return 0;
}

/* Parse "90", "90s", "15m", "2h", "7d" into seconds; -1 if invalid. */
static int64_t parse_duration(const char *s) {
    char *end;
    errno = 0;
    long long n = strtoll(s, &end, 10);
    if (end == s || n < 0 || errno) return -1;
    int64_t mul = !*end || !strcmp(end, "s") ? 1 : !strcmp(end, "m") ? 60
                : !strcmp(end, "h") ? 3600 : !strcmp(end, "d") ? 86400 : -1;
    return mul < 0 || n > INT64_MAX / 86400 ? -1 : n * mul;
}

/* Remove files older than `cutoff` (epoch seconds) whose names end in one
 * of the suffixes from each agent directory under root/sub, and agent
 * directories idle since before the cutoff that end up empty. Through
 * directory descriptors and never through a link (STYLE §6b): a symlink
 * in place of sub, an agent directory or a file is left alone, so nothing
 * outside the spool is deleted. Returns the number of entries removed. */
static int relay_gc_dir(int root_fd, const char *sub, const char *const *suffixes,
                        time_t cutoff) {
    int removed = 0;
    int sfd = relay_open_dir(root_fd, sub, 0);
    int dfd = sfd < 0 ? -1 : dup(sfd);
    DIR *d = dfd < 0 ? NULL : fdopendir(dfd);
    if (!d && dfd >= 0) close(dfd);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int afd = relay_open_dir(sfd, e->d_name, 0);
        struct stat ast, sb;
        if (afd < 0) continue;
        int adup = fstat(afd, &ast) ? -1 : dup(afd);
        DIR *ad = adup < 0 ? NULL : fdopendir(adup);
        if (!ad && adup >= 0) close(adup);
        struct dirent *f;
        while (ad && (f = readdir(ad))) {
            size_t n = strlen(f->d_name);
            int match = 0;
            for (int i = 0; suffixes[i]; i++) {
                size_t k = strlen(suffixes[i]);
                match |= n > k && !strcmp(f->d_name + n - k, suffixes[i]);
            }
            if (match && fstatat(afd, f->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
                S_ISREG(sb.st_mode) && sb.st_mtime < cutoff &&
                unlinkat(afd, f->d_name, 0) == 0)
                removed++;
        }
        if (ad) closedir(ad);
        close(afd);
        /* Idle: not changed since the cutoff before this sweep. rmdir
         * fails on anything left in it, and on a symlink. */
        if (ad && ast.st_mtime < cutoff && unlinkat(sfd, e->d_name, AT_REMOVEDIR) == 0)
            removed++;
    }
    if (d) closedir(d);
    if (sfd >= 0) close(sfd);
    return removed;
}

/* `arc relay-gc`'s options. */
typedef struct {
    const char *spool, *older_than;
} RelayGcOpts;

static const Opt relay_gc_opts[] = {
    { "--older-than", OPT_STR, offsetof(RelayGcOpts, older_than),
      .arg = "DURATION", .help = "required: 3600, 30m, 12h, 7d, ..." },
    { "--spool-dir", OPT_STR, offsetof(RelayGcOpts, spool), .arg = "DIR",
      .help = "the spool (default .arc-relay)" },
    { 0 }
};

static const OptHelp relay_gc_help = {
    "relay-gc", "usage: arc relay-gc --older-than DURATION [options]\n"
                "Delete claimed requests (.work), answers and stray temporary\n"
                "files older than DURATION. Requests not yet claimed (.json\n"
                "under requests/) are never deleted.\n", NULL
};

/* Delete old claimed requests and answers from a spool (relay_gc_dir). */
static int cmd_relay_gc(int argc, char **argv) {
    RelayGcOpts o = { .spool = ".arc-relay" };
    OptGroup g[] = { { relay_gc_opts, &o, NULL, 0 } };
    opt_parse(&relay_gc_help, g, 1, argc, argv);
    const char *spool = o.spool;
    int64_t age = o.older_than ? parse_duration(o.older_than) : -1;
    if (o.older_than && age < 0) {
        fprintf(stderr, "arc relay-gc: bad duration %s (try 30m, 12h, 7d)\n",
                o.older_than);
        return 2;
    }
    if (age < 0) {
        fputs("arc relay-gc: --older-than is required\n", stderr);
        return 2;
    }
    time_t cutoff = time(NULL) - (time_t)age;
    static const char *const req_sfx[] = { ".work", ".tmp", NULL };
    static const char *const resp_sfx[] = { ".json", ".tmp", NULL };
    /* The spool path itself is the user's and followed; nothing under it. */
    int root_fd = open(spool, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0 && errno != ENOENT) {
        fprintf(stderr, "arc relay-gc: %s: %s\n", spool, strerror(errno));
        return 1;
    }
    int n = relay_gc_dir(root_fd, "requests", req_sfx, cutoff) +
            relay_gc_dir(root_fd, "responses", resp_sfx, cutoff);
    if (root_fd >= 0) close(root_fd);
    printf("{\n  \"removed\": %d\n}\n", n);
    return 0;
}

/* ---- arc hook HARNESS EVENT: delivery into an agent's turns (§16) ---- */

/* A harness (Claude Code, Codex, Gemini CLI, Cursor) runs `arc hook HARNESS
 * EVENT --agent NAME` at points of its agent's turn, with a JSON object on
 * stdin, and reads the answer in its own contract from stdout and the exit
 * status. Every event maps to one of a few jobs: a digest at session start,
 * owed messages into the turn, continuing a turn while a request is
 * unanswered, refusing an edit of a path another agent locked, closing the
 * session, and waiting to wake an idle agent. A hook must never break a
 * turn: with no hub, no identity or bad input it prints nothing and exits
 * 0, and each call has a short deadline. Hooks act as the agent without a
 * session of their own: they never register, so they never replace the
 * agent's `arc mcp` session. */

#define HOOK_CALL_MS 2000          /* one hub call; loopback answers in ~1 ms */
#define HOOK_MAX_INPUT (1 << 20)   /* stdin bytes read */
#define HOOK_MAX_CONTEXT 9000      /* additionalContext (Claude caps at 10,000) */
#define HOOK_MAX_BODY 1500         /* one message's body in a hook's text */
#define HOOK_MAX_NUDGES 3          /* Stop continuations per open request */

typedef enum {
    HOOK_NONE, HOOK_START, HOOK_TURN, HOOK_STOP, HOOK_EDIT, HOOK_END, HOOK_WAIT,
    HOOK_STATE   /* only says what the agent is doing (a prompt waits on a human) */
} HookJob;

/* Which job each harness's event does, the name its answer carries, and
 * the agent's presence it reports (PROTOCOL §17.5; NULL: none). A Stop
 * that continues the turn reports working instead of idle. */
typedef struct {
    const char *harness, *event;
    HookJob job;
    const char *state;
} HookEvent;

static const HookEvent hook_events[] = {
    { "claude", "SessionStart", HOOK_START, "idle" },
    { "claude", "UserPromptSubmit", HOOK_TURN, "working" },
    { "claude", "PostToolUse", HOOK_TURN, "working" },
    { "claude", "Stop", HOOK_STOP, "idle" },
    { "claude", "SubagentStop", HOOK_NONE, NULL },   /* a subagent is not the agent */
    { "claude", "PreToolUse", HOOK_EDIT, "working" },
    { "claude", "SessionEnd", HOOK_END, "offline" },
    { "claude", "wait", HOOK_WAIT, NULL },   /* Stop said idle; it may block */
    { "codex", "SessionStart", HOOK_START, "idle" },
    { "codex", "UserPromptSubmit", HOOK_TURN, "working" },
    { "codex", "PostToolUse", HOOK_TURN, "working" },
    { "codex", "Stop", HOOK_STOP, "idle" },
    { "codex", "PreToolUse", HOOK_EDIT, "working" },
    { "gemini", "SessionStart", HOOK_START, "idle" },
    { "gemini", "BeforeAgent", HOOK_TURN, "working" },
    { "gemini", "AfterTool", HOOK_TURN, "working" },
    { "gemini", "AfterAgent", HOOK_STOP, "idle" },
    { "gemini", "BeforeTool", HOOK_EDIT, "working" },
    { "gemini", "SessionEnd", HOOK_END, "offline" },
    { "cursor", "sessionStart", HOOK_START, "idle" },
    { "cursor", "postToolUse", HOOK_TURN, "working" },
    { "cursor", "preToolUse", HOOK_EDIT, "working" },
    { "cursor", "stop", HOOK_STOP, "idle" },
    { "cursor", "sessionEnd", HOOK_END, "offline" },
    /* OpenCode: run by the plugin `arc setup opencode` writes; it waits
     * whenever a session goes idle */
    { "opencode", "PostToolUse", HOOK_TURN, "working" },
    { "opencode", "PreToolUse", HOOK_EDIT, "working" },
    { "opencode", "wait", HOOK_WAIT, "idle" },
    /* a permission prompt or a question to the user (notification_type,
     * hook_notify_waits); Gemini CLI's is a tool permission */
    { "claude", "Notification", HOOK_STATE, "waiting" },
    { "gemini", "Notification", HOOK_STATE, "waiting" },
};

/* The notification types that mean the agent waits on a human. Claude
 * Code's idle_prompt (a minute after a turn ended) is the idle its Stop
 * already reported; auth_success is nothing the agent waits on. */
static const char *const hook_notify_waits[] = {
    "permission_prompt", "elicitation_dialog", "ToolPermission"
};

/* The tools that write files, and where their tool_input names them:
 * `keys`, the members tried in turn (space-separated), hold a path, or
 * with `patch` the text of a patch whose file headers name them. */
static const struct {
    const char *tool, *keys;
    int patch;
} hook_edit_tools[] = {
    { "Edit", "file_path", 0 }, { "Write", "file_path path", 0 },  /* Claude */
    { "MultiEdit", "file_path", 0 }, { "NotebookEdit", "notebook_path", 0 },
    { "write_file", "file_path", 0 }, { "replace", "file_path", 0 },   /* Gemini */
    { "apply_patch", "command input patch", 1 },                     /* Codex */
    { "StrReplace", "file_path path", 0 },                           /* Cursor */
    { "Delete", "file_path path", 0 },
    { "edit", "filePath", 0 }, { "write", "filePath", 0 },           /* OpenCode */
    { "multiedit", "filePath", 0 }, { "patch", "patchText", 1 },
};
#define HOOK_MAX_TARGETS 64        /* files of one patch checked for locks */

typedef struct {
    const char *harness, *event;   /* borrowed from argv */
    HookJob job;
    const char *state;             /* the presence the event reports, or NULL */
    long pid;                      /* the harness's pid (0 unknown, -1 not yet) */
    int64_t pid_start;             /* ... its start time (clock ticks) */
    int status;                    /* the last hub call's HTTP status, 0 none */
    AgentOpts o;
    double wait_s;                 /* wait: give up after this long */
    Client c;
    Buf in;                        /* stdin */
    Json j;                        /* ... parsed; t == NULL if it was not */
    Buf agent;                     /* whose hook this is */
    Buf root;                      /* the project: where .arc/agent was, or cwd */
    Buf cwd;                       /* the hook's cwd */
    Buf out;                       /* the last hub answer ... */
    Json res;                      /* ... parsed */
    Buf text;                      /* what the agent is told */
} Hook;

static const Opt hook_opts[] = {
    { "--timeout", OPT_SECS, offsetof(Hook, wait_s), .lo = 0, .hi = 3600,
      .arg = "SEC", .help = "wait: give up after SEC (default 540)" },
    { .kind = OPT_ARG, .off = offsetof(Hook, harness), .arg = "HARNESS",
      .help = "claude, codex, gemini, cursor or opencode" },
    { .kind = OPT_ARG, .off = offsetof(Hook, event), .arg = "EVENT",
      .help = "the harness's hook event (SessionStart, ...), or wait" },
    { 0 }
};

static const OptHelp hook_help = {
    "hook", "usage: arc hook HARNESS EVENT [--agent NAME] [options]\n"
            "Answer a harness's hook: read its JSON on stdin, print its answer.\n",
    "The agent: --agent, else ARC_AGENT, else the first line of\n"
    ".arc/agent-HARNESS or .arc/agent in the hook's cwd or the nearest\n"
    "directory above it, else ~/.arc/agent-HARNESS (arc setup writes them).\n"
    "Events: claude SessionStart UserPromptSubmit PostToolUse Stop PreToolUse\n"
    "SessionEnd Notification wait; codex SessionStart UserPromptSubmit\n"
    "PostToolUse Stop PreToolUse; gemini SessionStart BeforeAgent AfterTool\n"
    "AfterAgent BeforeTool SessionEnd Notification; cursor sessionStart\n"
    "postToolUse preToolUse stop sessionEnd; opencode PostToolUse PreToolUse\n"
    "wait (its plugin). Each also reports the agent's state (working, idle,\n"
    "waiting, offline). See PROTOCOL §16.6.\n"
    "Exit: 0 (also with no hub: a hook never breaks a turn); 2 from claude\n"
    "wait when a message woke the agent (asyncRewake), and from opencode\n"
    "PreToolUse when a lock refuses the edit (stderr says why).\n"
};

/* A string member of the hook's input into out (reset first); 1 if set. */
static int hook_in_str(Hook *k, uint32_t obj, const char *key, Buf *out) {
    buf_reset(out);
    uint32_t v = k->j.t ? json_get(&k->j, obj, key) : 0;
    if (!v || k->j.t[v].type != JSON_STR) return 0;
    json_unescape(&k->j, v, out);
    return out->len > 0;
}

/* Read an agent file we did not create (the workspace may be hostile):
 * `name` in directory dfd, through fs_openat (no symbolic link, a regular
 * file with one name, ours), under 256 bytes; its first line, trimmed,
 * must be an agent name as setup writes them (setup_agent_bad). Returns 1
 * with out set, 0 otherwise. */
static int hook_read_agent(int dfd, const char *name, Buf *out) {
    char err[ARC_ERRLEN], line[256];
    struct stat sb;
    ssize_t n = -1;
    int fd = fs_openat(dfd, name, O_RDONLY, err);
    if (fd < 0) return 0;
    if (fstat(fd, &sb) == 0 && sb.st_size < (off_t)sizeof line)
        while ((n = read(fd, line, sizeof line - 1)) < 0 && errno == EINTR) {}
    close(fd);
    if (n <= 0) return 0;
    line[n] = 0;
    Str s = str_trim((Str){ line, strcspn(line, "\n") });
    char name_buf[SETUP_AGENT_MAX + 1];
    if (!s.n || s.n > SETUP_AGENT_MAX) return 0;
    memcpy(name_buf, s.p, s.n);
    name_buf[s.n] = 0;
    if (setup_agent_bad(name_buf)) return 0;
    buf_reset(out);
    buf_addstr(out, s);
    return 1;
}

/* Normalise path p (absolute, or relative to base) lexically into out:
 * "/a/b", no ".", "..", or repeated slashes. */
static void hook_path_norm(const char *base, Str p, Buf *out) {
    Buf all = { 0 };
    buf_reset(out);
    if (!p.n || p.p[0] != '/') buf_adds(&all, base), buf_addc(&all, '/');
    buf_addstr(&all, p);
    const char *s = buf_cstr(&all), *end = s + all.len;
    while (s < end) {
        const char *e = memchr(s, '/', (size_t)(end - s));
        if (!e) e = end;
        size_t n = (size_t)(e - s);
        if (n == 2 && s[0] == '.' && s[1] == '.') {
            while (out->len && out->p[out->len - 1] != '/') out->len--;
            if (out->len) out->len--;
            if (out->p) out->p[out->len] = 0;
        } else if (n && !(n == 1 && s[0] == '.')) {
            buf_addc(out, '/');
            buf_add(out, s, n);
        }
        s = e + 1;
    }
    if (!out->len) buf_addc(out, '/');
    buf_free(&all);
}

/* The agent file in directory dfd's .arc: agent-HARNESS (what `arc setup
 * HARNESS` writes), else agent (one name for every harness). Returns 1
 * with the name in out. */
static int hook_agent_file(Hook *k, int dfd, Buf *out) {
    int arc = openat(dfd, ".arc", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (arc < 0) return 0;
    char per[64];
    snprintf(per, sizeof per, "agent-%s", k->harness);
    int found = hook_read_agent(arc, per, out) || hook_read_agent(arc, "agent", out);
    close(arc);
    return found;
}

/* Find the agent file (hook_agent_file) in dir or the nearest directory
 * above it: the agent's name into k->agent (unless given) and that
 * directory, the project root, into k->root. $HOME is skipped: its
 * .arc/agent-HARNESS is setup's user scope, not a project (hook_identity
 * reads it last). */
static void hook_find_project(Hook *k, const char *dir) {
    char path[PATH_MAX];
    Buf norm = { 0 }, home = { 0 };   /* lexically, as the paths compared */
    const char *h = getenv("HOME");
    hook_path_norm("/", str_c(dir), &norm);
    if (h && *h == '/') hook_path_norm("/", str_c(h), &home);
    snprintf(path, sizeof path, "%s", buf_cstr(&norm));
    buf_free(&norm);
    for (int depth = 0; depth < 64; depth++) {
        int dfd = home.len && !strcmp(path, home.p) ? -1
                  : open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        int found = 0;
        if (dfd >= 0) {
            Buf name = { 0 };
            found = hook_agent_file(k, dfd, &name);
            if (found && !k->agent.len) buf_addstr(&k->agent, buf_str(&name));
            buf_free(&name);
            close(dfd);
        }
        if (found) {
            buf_reset(&k->root);
            buf_adds(&k->root, path);
            break;
        }
        char *slash = strrchr(path, '/');
        if (!slash || slash == path) break;
        *slash = 0;
    }
    buf_free(&home);
}

/* Who the hook acts for, and the project root (PROTOCOL §16.6): --agent or
 * ARC_AGENT (already in k->agent), else the agent file found from
 * CLAUDE_PROJECT_DIR (Claude Code) or the hook's cwd upwards, else
 * ~/.arc/agent-HARNESS; the root is the directory holding the file found,
 * else CLAUDE_PROJECT_DIR, else cwd. */
static void hook_identity(Hook *k) {
    const char *proj = getenv("CLAUDE_PROJECT_DIR"), *home = getenv("HOME");
    if (proj && *proj != '/') proj = NULL;
    if (proj && !strcmp(k->harness, "claude")) hook_find_project(k, proj);
    if (!k->root.len) hook_find_project(k, k->cwd.p);
    if (!k->root.len) buf_adds(&k->root, proj ? proj : k->cwd.p);
    if (k->agent.len || !home || *home != '/') return;
    int dfd = open(home, O_RDONLY | O_DIRECTORY | O_CLOEXEC), arc;
    if (dfd < 0) return;
    arc = openat(dfd, ".arc", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    char per[64];
    snprintf(per, sizeof per, "agent-%s", k->harness);
    if (arc >= 0) hook_read_agent(arc, per, &k->agent), close(arc);
    close(dfd);
}

/* One hub call; on an ok envelope its result token, else 0 (silently: a
 * hook's failures must not reach the agent). */
static uint32_t hook_call(Hook *k, const char *method, const char *path, Str body,
                          int64_t timeout_ms) {
    char err[ARC_ERRLEN];
    int status = 0;
    json_free(&k->res);
    buf_reset(&k->out);
    if (client_call(&k->c, method, path, body, timeout_ms, &status, &k->out, err))
        status = 0;
    k->status = status;
    if (!status || status >= 400 || json_parse(&k->res, buf_cstr(&k->out), k->out.len)) {
        json_free(&k->res);
        return 0;
    }
    uint32_t ok = json_get(&k->res, 0, "ok");
    if (!ok || k->res.t[ok].type != JSON_TRUE) return 0;
    return json_get(&k->res, 0, "result");
}

/* The presence members of a hub call (PROTOCOL §16.3, §17.5), each with a
 * leading comma: the state to report, the one to report instead when the
 * call returns something, and the harness's pid (found once). */
static void hook_pr_members(Hook *k, Buf *b, const char *state, const char *if_any) {
    if (!state && !if_any) return;
    if (state) buf_addf(b, ",\"state\":\"%s\"", state);
    if (if_any) buf_addf(b, ",\"state_if_any\":\"%s\"", if_any);
    if (k->pid < 0) k->pid = proc_harness_pid(&k->pid_start);
    if (k->pid > 1)
        buf_addf(b, ",\"pid\":%ld,\"pid_start\":%lld", k->pid, (long long)k->pid_start);
}

/* POST {members + presence members} to path. A hub that refuses the call
 * (4xx) is asked once more without the presence: reporting what the agent
 * does must never cost it its messages. */
static uint32_t hook_post_pr(Hook *k, const char *path, const char *members,
                             const char *state, const char *if_any) {
    Buf b = { 0 };
    buf_addc(&b, '{');
    buf_adds(&b, members);
    size_t mark = b.len;
    hook_pr_members(k, &b, state, if_any);
    int pr = b.len > mark;
    buf_addc(&b, '}');
    uint32_t r = hook_call(k, "POST", path, buf_str(&b), HOOK_CALL_MS);
    if (!r && pr && k->status >= 400 && k->status < 500) {
        b.len = mark;
        buf_addc(&b, '}');
        r = hook_call(k, "POST", path, buf_str(&b), HOOK_CALL_MS);
    }
    buf_free(&b);
    return r;
}

/* Report the agent's state on its own (POST /v1/agents/A/state, §17.5).
 * Returns 1 if the hub took it. */
static int hook_state(Hook *k, const char *state) {
    Buf path = { 0 }, body = { 0 };
    buf_adds(&path, "/v1/agents/");
    cli_pct(&path, k->agent.p);
    buf_adds(&path, "/state");
    hook_pr_members(k, &body, state, NULL);
    body.p[0] = '{';   /* the first member's comma */
    buf_addc(&body, '}');
    uint32_t r = hook_call(k, "POST", path.p, buf_str(&body), HOOK_CALL_MS);
    buf_free(&path), buf_free(&body);
    return r != 0;
}

/* Append one message as a line of facts: who, why it is owed, where. */
static void hook_render_msg(Buf *b, const Json *j, uint32_t m, const char *reason) {
    Buf t = { 0 };
    uint32_t v;
    buf_adds(b, "\n- #");
    if ((v = json_get(j, m, "id"))) json_as_text(b, j, v);
    buf_adds(b, " from ");
    if ((v = json_get(j, m, "from_agent"))) json_as_text(b, j, v);
    if (reason) buf_addf(b, " (%s", reason);
    if ((v = json_get(j, m, "kind")) && !json_str_is(j, v, STR_LIT("chat")))
        buf_adds(b, reason ? ", " : " ("), json_as_text(b, j, v), reason = "";
    if ((v = json_get(j, m, "to_agent")) && j->t[v].type == JSON_STR) {
        buf_adds(b, reason ? ", direct" : " (direct");
        reason = "";
    } else if ((v = json_get(j, m, "channel"))) {
        buf_adds(b, reason ? ", in " : " (in ");
        json_as_text(b, j, v);
        reason = "";
    }
    if ((v = json_get_val(j, m, "reply_to")))
        buf_adds(b, ", reply to #"), json_as_text(b, j, v);
    if ((v = json_get_val(j, m, "thread_id")))
        buf_adds(b, ", thread "), json_as_text(b, j, v);
    if (reason) buf_addc(b, ')');
    buf_adds(b, ": ");
    if ((v = json_get(j, m, "body"))) json_as_text(&t, j, v);
    if (t.len > HOOK_MAX_BODY) {   /* cut on a UTF-8 boundary */
        size_t n = HOOK_MAX_BODY;
        while (n && ((unsigned char)t.p[n] & 0xc0) == 0x80) n--;
        t.len = n;
        buf_addstr(b, buf_str(&t));
        buf_adds(b, " [...]");
    } else {
        buf_addstr(b, buf_str(&t));
    }
    buf_free(&t);
}

/* Take the owed messages (PROTOCOL §16.3) into k->text as facts,
 * reporting the agent's state (or if_any when something was taken) in the
 * same call. Returns how many, 0 also when the hub did not answer. */
static int hook_take(Hook *k, const char *via, int64_t max_chars, const char *state,
                     const char *if_any) {
    Buf path = { 0 }, body = { 0 };
    buf_adds(&path, "/v1/delivery/");
    cli_pct(&path, k->agent.p);
    buf_adds(&path, "/take");
    buf_addf(&body, "\"limit\":20,\"max_chars\":%lld,\"via\":\"%s\"",
             (long long)max_chars, via);
    uint32_t r = hook_post_pr(k, path.p, body.p, state, if_any);
    buf_free(&path), buf_free(&body);
    uint32_t items = r ? json_get(&k->res, r, "items") : 0, more;
    if (!items || k->res.t[items].type != JSON_ARR || !k->res.t[items].n) return 0;
    int n = (int)k->res.t[items].n;
    int64_t left = 0;
    if ((more = json_get(&k->res, r, "more"))) json_to_i64(&k->res, more, &left);
    buf_addf(&k->text, "arc: %d new message%s for %s:", n, n == 1 ? "" : "s", k->agent.p);
    Buf why = { 0 };
    uint32_t e = items + 1;
    for (int i = 0; i < n; i++, e = k->res.t[e].next) {
        uint32_t m = json_get(&k->res, e, "message"), w = json_get(&k->res, e, "reason");
        buf_reset(&why);
        if (w) json_as_text(&why, &k->res, w);
        if (m) hook_render_msg(&k->text, &k->res, m, why.len ? why.p : NULL);
    }
    buf_free(&why);
    if (left > 0)
        buf_addf(&k->text, "\n%lld more owed: they come with the next turn's context, "
                 "or read them with arc_poll_messages or arc_inbox.", (long long)left);
    return n;
}

/* The open requests to the agent into k->text; with `nudge`, those a Stop
 * may still continue the turn for, counted (PROTOCOL §16.5), reporting
 * `state` (working when it continues the turn). Returns how many. */
static int hook_requests(Hook *k, int nudge, const char *state) {
    Buf path = { 0 }, body = { 0 };
    buf_adds(&path, "/v1/delivery/");
    cli_pct(&path, k->agent.p);
    buf_adds(&path, nudge ? "/nudge" : "?limit=0");
    buf_addf(&body, "\"max\":%d", HOOK_MAX_NUDGES);
    uint32_t r = nudge ? hook_post_pr(k, path.p, body.p, state, "working")
                       : hook_call(k, "GET", path.p, (Str){ NULL, 0 }, HOOK_CALL_MS);
    buf_free(&path), buf_free(&body);
    uint32_t reqs = r ? json_get(&k->res, r, "requests") : 0;
    if (!reqs || k->res.t[reqs].type != JSON_ARR || !k->res.t[reqs].n) return 0;
    int n = (int)k->res.t[reqs].n;
    buf_addf(&k->text, "arc: %d request%s to %s %s unanswered (a task_result with "
             "reply_to the request's id answers it: arc_task_result):",
             n, n == 1 ? "" : "s", k->agent.p, n == 1 ? "is" : "are");
    uint32_t e = reqs + 1;
    for (int i = 0; i < n; i++, e = k->res.t[e].next) {
        uint32_t m = json_get(&k->res, e, "message"), c = json_get(&k->res, e, "nudges");
        if (m) hook_render_msg(&k->text, &k->res, m, "request");
        if (c && nudge) {
            buf_adds(&k->text, " [reminder ");
            json_as_text(&k->text, &k->res, c);
            buf_addf(&k->text, " of %d]", HOOK_MAX_NUDGES);
        }
    }
    return n;
}

/* A lease row's "PATH (holder, until T)"-style facts for the digest. */
static void hook_digest_leases(Hook *k, const char *what, const char *path,
                               const char *key, const char *owner_key) {
    uint32_t r = hook_call(k, "GET", path, (Str){ NULL, 0 }, HOOK_CALL_MS);
    if (!r || k->res.t[r].type != JSON_ARR) return;
    int first = 1;
    uint32_t e = r + 1;
    for (uint32_t i = 0; i < k->res.t[r].n; i++, e = k->res.t[e].next) {
        uint32_t o = json_get(&k->res, e, owner_key), v;
        if (!o || !json_str_is(&k->res, o, buf_str(&k->agent))) continue;
        buf_addf(&k->text, first ? "\nYour %s: " : ", ", what);
        first = 0;
        if ((v = json_get(&k->res, e, key))) json_as_text(&k->text, &k->res, v);
        if ((v = json_get(&k->res, e, "expires_at")))
            buf_adds(&k->text, " until "), json_as_text(&k->text, &k->res, v);
    }
}

/* SessionStart: who I am, who is online, what is owed, my leases.
 * Returns 0 when no hub answered (then nothing is said). */
static int hook_digest(Hook *k) {
    uint32_t r = hook_call(k, "GET", "/v1/agents", (Str){ NULL, 0 }, HOOK_CALL_MS);
    if (!r) return 0;
    buf_addf(&k->text, "arc: you are agent %s on the hub at %s.", k->agent.p,
             k->o.relay_dir ? k->o.relay_dir : k->c.base);
    if (k->res.t[r].type == JSON_ARR) {
        buf_addf(&k->text, "\nOnline (%u):", k->res.t[r].n);
        uint32_t e = r + 1, v;
        for (uint32_t i = 0; i < k->res.t[r].n && i < 50; i++, e = k->res.t[e].next)
            if ((v = json_get(&k->res, e, "agent_id")))
                buf_adds(&k->text, i ? ", " : " "), json_as_text(&k->text, &k->res, v);
    }
    /* Away since when (§17.6's away_since), asked before this hook says
     * the agent is back; the messages of its absence are the take below. */
    Buf path = { 0 };
    buf_adds(&path, "/v1/presence");
    agent_qparam(&path, "agent_id", k->agent.p);
    r = hook_call(k, "GET", path.p, (Str){ NULL, 0 }, HOOK_CALL_MS);
    uint32_t st = r && k->res.t[r].type == JSON_ARR && k->res.t[r].n
                  ? json_get(&k->res, r + 1, "state") : 0;
    uint32_t since = st ? json_get(&k->res, r + 1, "state_since") : 0;
    if (st && json_str_is(&k->res, st, STR_LIT("offline")) && since &&
        k->res.t[since].type == JSON_STR)
        buf_adds(&k->text, "\nAway (offline) since "),
            json_as_text(&k->text, &k->res, since), buf_adds(&k->text, ".");
    buf_reset(&path);
    buf_adds(&path, "/v1/locks?active_only=1");
    agent_qparam(&path, "agent_id", k->agent.p);
    hook_digest_leases(k, "locks", path.p, "file_path", "agent_id");
    hook_digest_leases(k, "claims", "/v1/claims?active_only=1", "claim_key",
                       "owner_agent_id");
    buf_free(&path);
    size_t mark = k->text.len;
    buf_addc(&k->text, '\n');
    if (!hook_requests(k, 0, NULL)) k->text.len = mark, k->text.p[mark] = 0;
    mark = k->text.len;
    buf_addc(&k->text, '\n');
    int64_t room = HOOK_MAX_CONTEXT - (int64_t)k->text.len - 200;
    if (room < 1000) hook_state(k, k->state);
    if (room < 1000 || !hook_take(k, "hook", room, k->state, NULL))
        k->text.len = mark, k->text.p[mark] = 0;
    return 1;
}

/* Is target (normalised) the lock's path, or under it? */
static int hook_lock_covers(Str lock, Str target) {
    if (lock.n > target.n || memcmp(lock.p, target.p, lock.n)) return 0;
    return lock.n == target.n || (lock.n && lock.p[lock.n - 1] == '/') ||
           target.p[lock.n] == '/';
}

/* The files a patch writes, from its headers ("*** Add File: P", "***
 * Update File: P", "*** Delete File: P", "*** Move to: P"; leading
 * whitespace allowed, as Codex reads them), each NUL-terminated into out.
 * Returns how many (at most HOOK_MAX_TARGETS). */
static int hook_patch_files(Str patch, Buf *out) {
    static const char *const heads[] = {
        "*** Add File: ", "*** Update File: ", "*** Delete File: ", "*** Move to: "
    };
    int n = 0;
    for (size_t i = 0; i < patch.n && n < HOOK_MAX_TARGETS;) {
        size_t e = i;
        while (e < patch.n && patch.p[e] != '\n') e++;
        Str line = str_trim((Str){ patch.p + i, e - i });
        for (size_t h = 0; h < sizeof heads / sizeof *heads; h++) {
            size_t k = strlen(heads[h]);
            if (line.n <= k || memcmp(line.p, heads[h], k)) continue;
            Str f = str_trim((Str){ line.p + k, line.n - k });
            if (f.n && !memchr(f.p, 0, f.n)) buf_addstr(out, f), buf_addc(out, 0), n++;
            break;
        }
        i = e + 1;
    }
    return n;
}

/* The files the hook's tool call would write (hook_edit_tools), each
 * NUL-terminated into out. Returns how many. */
static int hook_edit_targets(Hook *k, Buf *out) {
    Buf tool = { 0 }, v = { 0 };
    int n = 0;
    hook_in_str(k, 0, "tool_name", &tool);
    uint32_t in = k->j.t ? json_get(&k->j, 0, "tool_input") : 0;
    for (size_t i = 0; tool.len && in && k->j.t[in].type == JSON_OBJ &&
                       i < sizeof hook_edit_tools / sizeof *hook_edit_tools; i++) {
        if (strcmp(tool.p, hook_edit_tools[i].tool)) continue;
        for (const char *key = hook_edit_tools[i].keys; *key && !n;) {
            size_t kn = strcspn(key, " ");
            char kb[32];
            snprintf(kb, sizeof kb, "%.*s", (int)kn, key);
            key += kn + (key[kn] == ' ');
            if (!hook_in_str(k, in, kb, &v) || memchr(v.p, 0, v.len)) continue;
            if (hook_edit_tools[i].patch) {
                n = hook_patch_files(buf_str(&v), out);
            } else {
                buf_addstr(out, buf_str(&v)), buf_addc(out, 0);
                n = 1;
            }
        }
        break;
    }
    buf_free(&tool), buf_free(&v);
    return n;
}

/* PreToolUse and the like: if the tool writes a file that another agent
 * holds an active lock on, say who and until when into k->text. Returns
 * 1 to deny, 0 to let the harness decide. */
static int hook_edit(Hook *k) {
    Buf files = { 0 }, target = { 0 }, lp = { 0 }, lock = { 0 };
    int deny = 0, n = hook_edit_targets(k, &files);
    uint32_t r = n ? hook_call(k, "GET", "/v1/locks?active_only=1", (Str){ NULL, 0 },
                               HOOK_CALL_MS) : 0;
    if (!r || k->res.t[r].type != JSON_ARR) goto done;
    const char *file = files.p;
    for (int f = 0; f < n && !deny; f++, file += strlen(file) + 1) {
        hook_path_norm(k->cwd.p, str_c(file), &target);
        uint32_t e = r + 1;
        for (uint32_t i = 0; i < k->res.t[r].n && !deny; i++, e = k->res.t[e].next) {
            uint32_t a = json_get(&k->res, e, "agent_id");
            uint32_t fp = json_get(&k->res, e, "file_path");
            if (!a || !fp || json_str_is(&k->res, a, buf_str(&k->agent))) continue;
            buf_reset(&lp);
            json_as_text(&lp, &k->res, fp);
            /* A relative lock path names a file of the project (§16.6). */
            for (int pass = 0; pass < 2 && !deny; pass++) {
                const char *base = pass ? k->cwd.p : k->root.p;
                if (pass && !strcmp(k->root.p, k->cwd.p)) break;
                hook_path_norm(base, buf_str(&lp), &lock);
                deny = hook_lock_covers(buf_str(&lock), buf_str(&target));
            }
            if (!deny) continue;
            uint32_t x = json_get(&k->res, e, "expires_at");
            buf_adds(&k->text, "arc: ");
            buf_adds(&k->text, file);
            buf_adds(&k->text, " is locked by agent ");
            json_as_text(&k->text, &k->res, a);
            if (strcmp(buf_cstr(&lp), file))
                buf_adds(&k->text, " (lock on "), buf_addstr(&k->text, buf_str(&lp)),
                    buf_addc(&k->text, ')');
            if (x) buf_adds(&k->text, " until "), json_as_text(&k->text, &k->res, x);
            buf_adds(&k->text, "; the edit was not made. The holder can release it, "
                     "or the lock lapses at its expiry.");
        }
    }
done:
    buf_free(&files), buf_free(&target), buf_free(&lp), buf_free(&lock);
    return deny;
}

/* SessionEnd: close the agent's active session, if it has one. */
static void hook_end(Hook *k) {
    Buf path = { 0 }, sid = { 0 };
    buf_adds(&path, "/v1/bootstrap");
    agent_qparam(&path, "agent_id", k->agent.p);
    uint32_t r = hook_call(k, "GET", path.p, (Str){ NULL, 0 }, HOOK_CALL_MS);
    uint32_t s = r ? json_get(&k->res, r, "session") : 0, v;
    if (s && k->res.t[s].type == JSON_OBJ && (v = json_get(&k->res, s, "session_id"))) {
        json_as_text(&sid, &k->res, v);
        buf_reset(&path);
        buf_adds(&path, "/v1/sessions/");
        cli_pct(&path, sid.p);
        hook_call(k, "DELETE", path.p, (Str){ NULL, 0 }, HOOK_CALL_MS);
    }
    buf_free(&path), buf_free(&sid);
}

/* wait: until something is owed (taken into k->text: 1) or wait_s passed
 * or the hub went away (0). Waits on the agent's events feed, then takes:
 * channel chatter wakes the long-poll but is not owed, so it waits on. */
static int hook_wait(Hook *k) {
    int64_t deadline = clock_ms() + (int64_t)(k->wait_s * 1000), since = -1;
    /* The newest id before the first take: a message stored between the
     * take and the wait then wakes the wait (taken the other way round,
     * it would sit owed until the next message came). */
    uint32_t r0 = hook_call(k, "GET", "/v1/hub-info", (Str){ NULL, 0 }, HOOK_CALL_MS), v0;
    if (!r0 || !(v0 = json_get(&k->res, r0, "latest_message_id")) ||
        json_to_i64(&k->res, v0, &since))
        return 0;
    /* What it takes wakes the agent: working. OpenCode runs it when a
     * session goes idle, so its first take reports idle (k->state). */
    for (const char *state = k->state;; state = NULL) {
        if (hook_take(k, "wake", HOOK_MAX_CONTEXT, state, "working")) return 1;
        int64_t left = deadline - clock_ms();
        if (left <= 0) return 0;
        if (left > 50000) left = 50000;
        Buf path = { 0 };
        buf_adds(&path, "/v1/events");
        agent_qparam(&path, "agent_id", k->agent.p);
        buf_addf(&path, "&exclude_self=1&limit=100&since_id=%lld&timeout=%.3f",
                 (long long)since, (double)left / 1000.0);
        uint32_t r = hook_call(k, "GET", path.p, (Str){ NULL, 0 }, left + HOOK_CALL_MS);
        buf_free(&path);
        if (!r || k->res.t[r].type != JSON_ARR) return 0;
        uint32_t e = r + 1, v;
        for (uint32_t i = 0; i < k->res.t[r].n; i++, e = k->res.t[e].next) {
            int64_t id;
            if ((v = json_get(&k->res, e, "id")) && json_to_i64(&k->res, v, &id) == 0 &&
                id > since)
                since = id;
        }
    }
}

/* Print {"hookSpecificOutput":{"hookEventName":EVENT,"additionalContext":
 * TEXT}}: the shape Claude Code, Codex and Gemini CLI share. */
static void hook_print_context(Hook *k, Buf *o) {
    buf_adds(o, "{\"hookSpecificOutput\":{\"hookEventName\":");
    json_cstr(o, k->event);
    buf_adds(o, ",\"additionalContext\":");
    json_strs(o, buf_str(&k->text));
    buf_adds(o, "}}");
}

/* Run the job and write the harness's answer into o (stdout) or err_out
 * (stderr); returns the exit status. 2 comes from Claude Code's wait
 * (asyncRewake turns it into a wake-up with stderr as the message) and
 * from OpenCode's PreToolUse (its plugin refuses the tool with stderr). */
static int hook_run(Hook *k, Buf *o, Buf *err_out) {
    int cursor = !strcmp(k->harness, "cursor"), gemini = !strcmp(k->harness, "gemini");
    int opencode = !strcmp(k->harness, "opencode");
    switch (k->job) {
    case HOOK_START:
        if (!hook_digest(k)) return 0;
        if (cursor) {
            buf_adds(o, "{\"additional_context\":");
            json_strs(o, buf_str(&k->text));
            buf_addc(o, '}');
        } else {
            hook_print_context(k, o);
        }
        return 0;
    case HOOK_TURN:
        if (!hook_take(k, "hook", HOOK_MAX_CONTEXT, k->state, NULL)) return 0;
        if (opencode) {   /* the plugin appends it to the tool's output */
            buf_addstr(o, buf_str(&k->text));
        } else if (cursor) {
            buf_adds(o, "{\"additional_context\":");
            json_strs(o, buf_str(&k->text));
            buf_addc(o, '}');
        } else {
            hook_print_context(k, o);
        }
        return 0;
    case HOOK_STOP: {
        /* A harness that continues a turn with a new prompt also hears of
         * new messages; Claude Code's Stop continues only for requests.
         * The agent is idle unless the turn goes on (each call reports
         * working when it returns something). */
        int n = hook_requests(k, 1, k->state);
        if (strcmp(k->harness, "claude")) {
            size_t mark = k->text.len;
            if (n) buf_addc(&k->text, '\n');
            if (hook_take(k, "hook", HOOK_MAX_CONTEXT - (int64_t)k->text.len,
                          n ? NULL : k->state, "working"))
                n++;
            else k->text.len = mark;
        }
        if (!n) return 0;
        if (cursor) buf_adds(o, "{\"followup_message\":");
        else buf_adds(o, gemini ? "{\"decision\":\"deny\",\"reason\":"
                                : "{\"decision\":\"block\",\"reason\":");
        json_strs(o, buf_str(&k->text));
        buf_addc(o, '}');
        return 0;
    }
    case HOOK_EDIT:
        hook_state(k, k->state);
        if (!hook_edit(k)) return 0;
        if (opencode) {
            buf_addstr(err_out, buf_str(&k->text));
            buf_addc(err_out, '\n');
            return 2;
        }
        if (cursor) {   /* agent_message goes to the model, user_message to the user */
            buf_adds(o, "{\"permission\":\"deny\",\"user_message\":");
            json_strs(o, buf_str(&k->text));
            buf_adds(o, ",\"agent_message\":");
        } else if (gemini) {
            buf_adds(o, "{\"decision\":\"deny\",\"reason\":");
        } else {
            buf_adds(o, "{\"hookSpecificOutput\":{\"hookEventName\":");
            json_cstr(o, k->event);
            buf_adds(o, ",\"permissionDecision\":\"deny\",\"permissionDecisionReason\":");
        }
        json_strs(o, buf_str(&k->text));
        buf_adds(o, cursor || gemini ? "}" : "}}");
        return 0;
    case HOOK_END:   /* offline ends its sessions; a hub without §17.5: by hand */
        if (!hook_state(k, k->state)) hook_end(k);
        return 0;
    case HOOK_STATE: {   /* a notification: only one that waits on a human */
        Buf type = { 0 };
        int waits = !hook_in_str(k, 0, "notification_type", &type);
        for (size_t i = 0; i < sizeof hook_notify_waits / sizeof *hook_notify_waits; i++)
            waits |= type.len && !strcmp(type.p, hook_notify_waits[i]);
        buf_free(&type);
        if (waits) hook_state(k, k->state);
        return 0;
    }
    case HOOK_WAIT: {
        /* Only an interactive session has an idle to wake. `claude -p` and
         * the Agent SDKs (CLAUDE_CODE_ENTRYPOINT sdk-cli, sdk-ts, sdk-py)
         * hold their exit until asyncRewake hooks end, so a wait there
         * would keep every scripted run alive for --timeout. */
        const char *entry = getenv("CLAUDE_CODE_ENTRYPOINT");
        if (entry && !strncmp(entry, "sdk-", 4)) return 0;
        if (!hook_wait(k)) return 0;
        if (opencode) {   /* the plugin sends stdout as the next prompt */
            buf_addstr(o, buf_str(&k->text));
            return 0;
        }
        buf_addstr(err_out, buf_str(&k->text));
        buf_addc(err_out, '\n');
        return 2;
    }
    case HOOK_NONE:
        break;
    }
    return 0;
}

static int cmd_hook(int argc, char **argv) {
    Hook k = { .wait_s = 540, .pid = -1 };
    k.o = (AgentOpts){ .agent = getenv("ARC_AGENT"), .base_url = getenv("ARC_URL"),
                       .relay_dir = getenv("ARC_RELAY_DIR") };
    OptGroup g[] = { { agent_opts, &k.o, NULL, 0 }, { hook_opts, &k, NULL, 0 } };
    char err[ARC_ERRLEN];
    Buf o = { 0 }, e = { 0 };
    int rc = opt_parse_args(&hook_help, g, 2, argc, argv, err);
    if (rc > 0) {
        opt_help(&hook_help, g, 2, stdout);
        return 0;
    }
    if (rc < 0 || !k.harness || !k.event) {   /* 1, not 2: 2 would block the turn */
        fprintf(stderr, "arc hook: %s\n", rc < 0 ? err : "HARNESS and EVENT are required");
        return 1;
    }
    rc = 0;
    for (size_t i = 0; i < sizeof hook_events / sizeof *hook_events; i++)
        if (!strcmp(k.harness, hook_events[i].harness) &&
            str_ieq(str_c(k.event), hook_events[i].event)) {
            k.job = hook_events[i].job;
            k.state = hook_events[i].state;
            k.event = hook_events[i].event;   /* the harness's spelling */
        }
    if (k.job == HOOK_NONE) goto done;
    if (!isatty(STDIN_FILENO)) {
        char chunk[8192];
        ssize_t n;
        while (k.in.len < HOOK_MAX_INPUT &&
               (n = read(STDIN_FILENO, chunk, sizeof chunk)) != 0) {
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) break;
            buf_add(&k.in, chunk, (size_t)n);
        }
    }
    if (!k.in.len || json_parse(&k.j, k.in.p, k.in.len) || k.j.t[0].type != JSON_OBJ)
        json_free(&k.j);
    if (k.o.agent && *k.o.agent) buf_adds(&k.agent, k.o.agent);
    char here[PATH_MAX];
    /* The hook's directory: its cwd member, else (Cursor) the first of its
     * workspace_roots, else the directory it was started in. */
    uint32_t roots = k.j.t ? json_get(&k.j, 0, "workspace_roots") : 0;
    if (!hook_in_str(&k, 0, "cwd", &k.cwd) || k.cwd.p[0] != '/') {
        buf_reset(&k.cwd);
        if (roots && k.j.t[roots].type == JSON_ARR && k.j.t[roots].n &&
            k.j.t[roots + 1].type == JSON_STR)
            json_unescape(&k.j, roots + 1, &k.cwd);
        if (!k.cwd.len || k.cwd.p[0] != '/' || memchr(k.cwd.p, 0, k.cwd.len)) {
            buf_reset(&k.cwd);
            if (getcwd(here, sizeof here)) buf_adds(&k.cwd, here);
            else buf_adds(&k.cwd, "/");
        }
    }
    hook_identity(&k);
    if (!k.agent.len || memchr(k.agent.p, 0, k.agent.len)) goto done;
    if (!k.o.base_url || !*k.o.base_url) k.o.base_url = "http://127.0.0.1:6969";
    if (k.o.relay_dir && !*k.o.relay_dir) k.o.relay_dir = NULL;
    if (client_url(&k.c, k.o.base_url, err)) goto done;
    k.c.relay_dir = k.o.relay_dir;
    k.c.agent = k.agent.p;
    k.c.token = k.o.token;
    rc = hook_run(&k, &o, &e);
    client_free(&k.c);
done:
    if (o.len) fwrite(o.p, 1, o.len, stdout), fputc('\n', stdout);
    if (e.len) fwrite(e.p, 1, e.len, stderr);
    json_free(&k.j), json_free(&k.res);
    buf_free(&k.in), buf_free(&k.agent), buf_free(&k.root), buf_free(&k.cwd);
    buf_free(&k.out), buf_free(&k.text), buf_free(&o), buf_free(&e);
    return rc;
}

/* ---- arc ack, arc receipts, arc unanswered (PROTOCOL §17) ---- */

typedef struct {
    AgentOpts a;               /* --agent, --base-url, --relay-dir, tokens */
    const char *id;            /* ack, receipts: the message id */
    const char *from;          /* unanswered: asked by this agent */
    int64_t older_than;        /* unanswered: waiting at least this long */
} ReceiptOpts;

#define RECEIPT_OPT(f) offsetof(ReceiptOpts, f)
static const Opt receipt_id_opts[] = {
    { .kind = OPT_ARG, .off = RECEIPT_OPT(id), .arg = "ID", .help = "the message id" },
    { 0 }
};
static const Opt receipt_list_opts[] = {
    { "--from", OPT_STR, RECEIPT_OPT(from), .arg = "AGENT",
      .help = "only what AGENT asked (--agent: what it owes)" },
    { "--older-than", OPT_I64, RECEIPT_OPT(older_than), .lo = 0, .hi = 86400 * 3650,
      .arg = "SEC", .help = "only what waited at least SEC seconds" },
    { 0 }
};
#undef RECEIPT_OPT

/* arc ack ID --agent A: acknowledge a message as its recipient A and
 * print A's receipt; arc receipts ID: print every recipient's receipt;
 * arc unanswered: print what still waits for an answer or an ack, one
 * JSON item per line, oldest first. None registers the agent. */
static int cli_receipts(const char *cmd, int argc, char **argv) {
    static const OptHelp help[] = {
        { "ack", "usage: arc ack --agent ID [options] MESSAGE_ID\n"
                 "Acknowledge a message sent to agent ID; print its receipt.\n",
          "Exit: 0 ok, 1 the hub refused (not a recipient), 2 usage or no hub.\n" },
        { "receipts", "usage: arc receipts [options] MESSAGE_ID\n"
                      "Print a message's receipts: per recipient, queued, surfaced\n"
                      "(and how), read, acked, answered, with times.\n",
          "Exit: 0 ok, 1 the hub refused (no such message), 2 usage or no hub.\n" },
        { "unanswered", "usage: arc unanswered [--agent ID] [options]\n"
                        "Print requests and ack-required messages still waiting,\n"
                        "one JSON object per line, oldest first; with --agent, only\n"
                        "those agent ID owes.\n",
          "Exit: 0 ok, 1 the hub refused, 2 usage or no hub.\n" },
    };
    int k = !strcmp(cmd, "ack") ? 0 : !strcmp(cmd, "receipts") ? 1 : 2;
    ReceiptOpts o = { .a = { .agent = getenv("ARC_AGENT"), .base_url = getenv("ARC_URL"),
                             .relay_dir = getenv("ARC_RELAY_DIR") } };
    OptGroup g[] = { { agent_opts, &o.a, NULL, 0 },
                     { k < 2 ? receipt_id_opts : receipt_list_opts, &o, NULL, 0 } };
    opt_parse(&help[k], g, 2, argc, argv);
    if (!o.a.base_url || !*o.a.base_url) o.a.base_url = "http://127.0.0.1:6969";
    if (o.a.relay_dir && !*o.a.relay_dir) o.a.relay_dir = NULL;
    if (o.a.agent && !*o.a.agent) o.a.agent = NULL;
    int64_t id = 0;
    if (k < 2 && (!o.id || parse_int_text(str_c(o.id), &id) || id < 1)) {
        fprintf(stderr, "arc %s: MESSAGE_ID must be a message id\n", cmd);
        return 2;
    }
    if (k == 0 && !o.a.agent) {
        fprintf(stderr, "arc ack: --agent is required (or set ARC_AGENT)\n");
        return 2;
    }
    Client c;
    char err[ARC_ERRLEN];
    if (client_url(&c, o.a.base_url, err)) {
        fprintf(stderr, "arc: %s\n", err);
        return 2;
    }
    c.relay_dir = o.a.relay_dir;
    c.agent = o.a.agent ? o.a.agent : "cli";   /* the relay's spool name */
    c.token = o.a.token;
    Buf path = { 0 }, body = { 0 }, out = { 0 };
    if (k == 0) {
        buf_addf(&path, "/v1/messages/%lld/ack", (long long)id);
        buf_adds(&body, "{\"agent_id\":");
        json_cstr(&body, o.a.agent);
        buf_addc(&body, '}');
    } else if (k == 1) {
        buf_addf(&path, "/v1/messages/%lld/receipts", (long long)id);
    } else {
        buf_addf(&path, "/v1/unanswered?older_than=%lld", (long long)o.older_than);
        if (o.a.agent) buf_adds(&path, "&agent_id="), cli_pct(&path, o.a.agent);
        if (o.from) buf_adds(&path, "&from_agent="), cli_pct(&path, o.from);
    }
    int rc = agent_call(&c, k == 0 ? "POST" : "GET", path.p,
                        k == 0 ? buf_str(&body) : (Str){ NULL, 0 }, 15000, &out);
    if (!rc) agent_print_result(&out, k == 2);
    buf_free(&path), buf_free(&body), buf_free(&out);
    client_free(&c);
    return rc;
}

static int cmd_ack(int argc, char **argv) { return cli_receipts("ack", argc, argv); }
static int cmd_receipts(int argc, char **argv) { return cli_receipts("receipts", argc, argv); }
static int cmd_unanswered(int argc, char **argv) {
    return cli_receipts("unanswered", argc, argv);
}

/* ==== smoke: deterministic smoke agents and `arc smoke` =================== */

/* The reference's three roles, step for step, with the same message kinds
 * and texts, so any mix of reference and arc roles passes: smoke-a creates
 * the channel and posts a task; smoke-b claims it, posts an artifact and
 * releases; smoke-c checks that both are visible and reports the claim's
 * state; a and b then confirm. Waiting is a long-poll on the thread, never
 * a fixed sleep. Each role reports its steps through a callback so `arc
 * smoke` can run all three at once and print one line per step. */

typedef struct {
    const char *role;        /* smoke-a, smoke-b or smoke-c */
    Client client;           /* HTTP or relay transport */
    const char *channel, *thread, *claim_key;
    int64_t deadline_ms;
    int64_t poll_ms;         /* back-off while the channel does not exist */
    char err[ARC_ERRLEN];    /* why it failed */
    Buf msgs;                /* the thread's messages seen so far (JSON) */
    void (*step)(const char *role, const char *what);   /* may be NULL */
    char token[ARC_MAX_TOKEN + 1];   /* smoke-agent: the hub's token */
} Smoke;

/* How long one call that wants `want_ms` may take: never past the run's
 * deadline, so --timeout-sec bounds every role, the relay's included.
 * 0 when the time is up. */
static int64_t smoke_budget(const Smoke *s, int64_t want_ms) {
    int64_t left = s->deadline_ms - clock_ms();
    return left <= 0 ? 0 : left < want_ms ? left : want_ms;
}

/* One hub call; a hub error or transport failure fails the role. Returns
 * 0 and the parsed envelope in *j (its source is `out`), or -1. */
static int smoke_call(Smoke *s, const char *action, const char *method,
                      const char *path, Str body, int64_t timeout_ms, Buf *out,
                      Json *j) {
    int status = 0;
    char err[ARC_ERRLEN] = "";
    int64_t budget = smoke_budget(s, timeout_ms);
    if (!budget) {
        snprintf(s->err, sizeof s->err, "%s failed: timed out", action);
        return -1;
    }
    if (client_call(&s->client, method, path, body, budget, &status, out, err)) {
        if (s->client.relay_dir && status == 598)   /* no answer file in time */
            snprintf(s->err, sizeof s->err, "%s failed: timed out: no hub answered "
                     "through the relay spool %.300s (is a hub serving it?)", action,
                     s->client.relay_dir);
        else
            snprintf(s->err, sizeof s->err, "%s failed: connection error: %.400s",
                     action, err);
        return -1;
    }
    uint32_t ok = 0;
    if (json_parse(j, buf_cstr(out), out->len) || !(ok = json_get(j, 0, "ok")) ||
        j->t[ok].type != JSON_TRUE) {
        Buf m = { 0 };
        uint32_t e = j->t && j->nt ? json_get(j, 0, "error") : 0;
        if (e) json_as_text(&m, j, e);
        snprintf(s->err, sizeof s->err, "%s failed: %.400s", action,
                 m.len ? m.p : "unknown error");
        buf_free(&m);
        return -1;
    }
    if (s->step) s->step(s->role, action);
    return 0;
}

/* POST a JSON body built by the caller; returns 0 or -1. */
static int smoke_post(Smoke *s, const char *action, const char *path, Buf *body,
                      Json *j) {
    Buf out = { 0 };
    Json tmp = { 0 };
    int rc = smoke_call(s, action, "POST", path, buf_str(body), 30000, &out,
                        j ? j : &tmp);
    if (j) j->src = NULL;   /* out is freed: the caller may only read flags */
    json_free(&tmp);
    buf_free(&out);
    return rc;
}

/* Post one message of `kind` in the smoke thread. */
static int smoke_message(Smoke *s, const char *action, const char *kind,
                         const char *text) {
    Buf b = { 0 };
    buf_adds(&b, "{\"from_agent\":");
    json_cstr(&b, s->role);
    buf_adds(&b, ",\"channel\":");
    json_cstr(&b, s->channel);
    buf_addf(&b, ",\"kind\":\"%s\",\"body\":", kind);
    json_cstr(&b, text);
    buf_adds(&b, ",\"thread_id\":");
    json_cstr(&b, s->thread);
    buf_addc(&b, '}');
    int rc = smoke_post(s, action, "/v1/messages", &b, NULL);
    buf_free(&b);
    return rc;
}

/* Has someone in the seen messages posted `kind` (containing `text`)? */
static int smoke_seen(Smoke *s, const char *from, const char *kind, const char *text) {
    Json j = { 0 };
    int found = 0;
    if (s->msgs.len && json_parse(&j, s->msgs.p, s->msgs.len) == 0) {
        uint32_t m = 1;
        for (uint32_t i = 0; i < j.t[0].n && !found; i++, m = j.t[m].next) {
            uint32_t f = json_get(&j, m, "from_agent"), k = json_get(&j, m, "kind"),
                     b = json_get(&j, m, "body");
            Buf body = { 0 };
            if (b) json_as_text(&body, &j, b);
            found = f && k && json_str_is(&j, f, str_c(from)) &&
                    json_str_is(&j, k, str_c(kind)) &&
                    (!text || strstr(buf_cstr(&body), text));
            buf_free(&body);
        }
    }
    json_free(&j);
    return found;
}

/* Wait until pred(s) holds for the thread's messages: read the thread,
 * then long-poll it for what comes next. Until smoke-a has created the
 * channel, wait for any new message the role can see instead. */
static int smoke_wait(Smoke *s, const char *what, int (*pred)(Smoke *)) {
    int64_t since = 0;
    buf_reset(&s->msgs);
    buf_adds(&s->msgs, "[]");
    for (;;) {
        if (pred(s)) {
            if (s->step) s->step(s->role, what);
            return 0;
        }
        int64_t left = s->deadline_ms - clock_ms();
        if (left <= 0) {
            snprintf(s->err, sizeof s->err, "timed out waiting for %s on thread %s",
                     what, s->thread);
            return -1;
        }
        /* Through a relay, wait at most --poll-interval-sec per call: the
         * reference's relay serves one request at a time, so a long wait
         * there would hold up every other sandboxed agent. arc's relay has
         * no such problem, and a message still ends the wait at once. */
        int64_t cap = s->client.relay_dir ? (s->poll_ms + 999) / 1000 : 25;
        int64_t wait_s = left / 1000 > cap ? cap : left / 1000;
        Buf path = { 0 }, out = { 0 };
        buf_adds(&path, "/v1/messages");
        agent_qparam(&path, "channel", s->channel);
        agent_qparam(&path, "thread_id", s->thread);
        buf_addf(&path, "&since_id=%lld&timeout=%lld", (long long)since,
                 (long long)wait_s);
        int status = 0;
        char err[ARC_ERRLEN] = "";
        int rc = client_call(&s->client, "GET", path.p, (Str){ NULL, 0 },
                          smoke_budget(s, wait_s * 1000 + 15000), &status, &out, err);
        Json j = { 0 };
        if (rc == 0 && status == 200 && json_parse(&j, buf_cstr(&out), out.len) == 0) {
            uint32_t r = json_get(&j, 0, "result");
            if (r && j.t[r].type == JSON_ARR && j.t[r].n) {
                s->msgs.len--;                    /* drop ']' and append */
                uint32_t m = r + 1;
                for (uint32_t i = 0; i < j.t[r].n; i++, m = j.t[m].next) {
                    if (s->msgs.len > 1) buf_addc(&s->msgs, ',');
                    json_write(&s->msgs, &j, m);
                    int64_t id;
                    uint32_t v = json_get(&j, m, "id");
                    if (v && json_to_i64(&j, v, &id) == 0 && id > since) since = id;
                }
                buf_addc(&s->msgs, ']');
            }
        } else if (rc == 0 && status == 404) {
            /* No channel yet: sleep on the role's own event stream. */
            buf_reset(&path);
            buf_adds(&path, "/v1/events");
            agent_qparam(&path, "agent_id", s->role);
            buf_addf(&path, "&since_id=%lld&timeout=%lld&limit=1",
                     (long long)since, (long long)(s->poll_ms / 1000 + 1));
            /* Any wake-up, or the wait running out: look at the thread
             * again (a failure shows up there). */
            int64_t budget = smoke_budget(s, s->poll_ms + 15000);
            if (budget)
                (void)client_call(&s->client, "GET", path.p, (Str){ NULL, 0 }, budget,
                               &status, &out, err);
        } else if (rc && clock_ms() < s->deadline_ms) {   /* else: timed out */
            snprintf(s->err, sizeof s->err, "waiting for %s: %.400s", what, err);
            json_free(&j);
            buf_free(&path), buf_free(&out);
            return -1;
        }
        json_free(&j);
        buf_free(&path), buf_free(&out);
    }
}

static int smoke_pred_a(Smoke *s) {
    return smoke_seen(s, "smoke-b", "artifact", NULL) &&
           smoke_seen(s, "smoke-c", "notice", "verified");
}
static int smoke_pred_task(Smoke *s) { return smoke_seen(s, "smoke-a", "task", NULL); }
static int smoke_pred_verified(Smoke *s) {
    return smoke_seen(s, "smoke-c", "notice", "verified");
}
static int smoke_pred_c(Smoke *s) {
    return smoke_seen(s, "smoke-a", "task", NULL) &&
           smoke_seen(s, "smoke-b", "artifact", NULL);
}

/* Run one role to the end. Returns 0 or -1 with s->err. */
static int smoke_role(Smoke *s) {
    Buf b = { 0 };
    Json j = { 0 };
    int rc = -1;
    buf_adds(&b, "{\"agent_id\":");
    json_cstr(&b, s->role);
    buf_adds(&b, ",\"display_name\":");
    json_cstr(&b, s->role);
    buf_adds(&b, ",\"replace\":true}");
    if (smoke_post(s, "open session", "/v1/sessions", &b, NULL)) goto done;
    if (!strcmp(s->role, "smoke-a")) {
        buf_reset(&b);
        buf_adds(&b, "{\"name\":");
        json_cstr(&b, s->channel);
        buf_adds(&b, ",\"created_by\":\"smoke-a\"}");
        if (smoke_post(s, "create channel", "/v1/channels", &b, NULL) ||
            smoke_message(s, "post task", "task", "smoke task from smoke-a") ||
            smoke_wait(s, "artifact and verification", smoke_pred_a) ||
            smoke_message(s, "post final notice", "notice",
                          "smoke-a saw both agents and the smoke test passed "
                          "from the host side"))
            goto done;
    } else if (!strcmp(s->role, "smoke-b")) {
        if (smoke_wait(s, "task", smoke_pred_task)) goto done;
        buf_reset(&b);
        buf_adds(&b, "{\"claim_key\":");
        json_cstr(&b, s->claim_key);
        buf_adds(&b, ",\"owner_agent_id\":\"smoke-b\",\"thread_id\":");
        json_cstr(&b, s->thread);
        buf_addc(&b, '}');
        Buf out = { 0 };
        int st = smoke_call(s, "acquire claim", "POST", "/v1/claims", buf_str(&b),
                            30000, &out, &j);
        uint32_t acq = st == 0 ? json_get(&j, 0, "acquired") : 0;
        int granted = acq && j.t[acq].type == JSON_TRUE;
        buf_free(&out);
        if (st) goto done;
        if (!granted) {
            snprintf(s->err, sizeof s->err, "claim denied to smoke-b");
            goto done;
        }
        buf_reset(&b);
        buf_adds(&b, "{\"claim_key\":");
        json_cstr(&b, s->claim_key);
        buf_adds(&b, ",\"agent_id\":\"smoke-b\"}");
        if (smoke_message(s, "post artifact", "artifact",
                          "smoke-b reached the hub through relay mode") ||
            smoke_post(s, "release claim", "/v1/claims/release", &b, NULL) ||
            smoke_wait(s, "verification", smoke_pred_verified) ||
            smoke_message(s, "post confirmation notice", "notice",
                          "smoke-b confirms relay interop works"))
            goto done;
    } else {
        if (smoke_wait(s, "task and artifact", smoke_pred_c)) goto done;
        Buf path = { 0 }, out = { 0 };
        buf_adds(&path, "/v1/claims");
        agent_qparam(&path, "thread_id", s->thread);
        buf_adds(&path, "&active_only=true");
        int st = smoke_call(s, "list claims", "GET", path.p, (Str){ NULL, 0 }, 30000,
                            &out, &j);
        buf_free(&path);
        char state[300] = "released";
        uint32_t r = st == 0 ? json_get(&j, 0, "result") : 0;
        if (r && j.t[r].type == JSON_ARR) {
            uint32_t m = r + 1;
            for (uint32_t i = 0; i < j.t[r].n; i++, m = j.t[m].next) {
                uint32_t k = json_get(&j, m, "claim_key"),
                         o = json_get(&j, m, "owner_agent_id");
                if (k && json_str_is(&j, k, str_c(s->claim_key))) {
                    Buf owner = { 0 };
                    if (o) json_as_text(&owner, &j, o);
                    snprintf(state, sizeof state, "held by %.200s", buf_cstr(&owner));
                    buf_free(&owner);
                    break;
                }
            }
        }
        buf_free(&out);
        if (st) goto done;
        char text[400];
        snprintf(text, sizeof text, "smoke-c verified shared visibility across "
                 "direct HTTP and relay mode (%s)", state);
        if (smoke_message(s, "post verifier notice", "notice", text)) goto done;
    }
    rc = 0;
done:
    json_free(&j);
    buf_free(&b);
    return rc;
}

/* What smoke-agent and smoke read from argv. */
typedef struct {
    const char *role, *transport, *url, *relay, *channel, *thread, *claim_key;
    double timeout_s, poll_s;
    char token[ARC_MAX_TOKEN + 1];   /* smoke-agent's (smoke: the hub's) */
} SmokeOpts;

#define SMOKE_OPT(f) offsetof(SmokeOpts, f)
/* The options smoke-agent and smoke share. */
static const Opt smoke_opts[] = {
    { "--base-url", OPT_STR, SMOKE_OPT(url), .arg = "URL",
      .help = "hub (default ARC_URL, else http://127.0.0.1:6969)" },
    { "--channel", OPT_STR, SMOKE_OPT(channel), .arg = "C",
      .help = "channel (default smoke-room)" },
    { "--timeout-sec", OPT_SECS, SMOKE_OPT(timeout_s), .lo = 0, .hi = 86400,
      .arg = "SEC", .help = "give up after this long (default: smoke-agent\n"
                            "120, smoke 60)", .flags = OPT_ABOVE_LO },
    { "--poll-interval-sec", OPT_SECS, SMOKE_OPT(poll_s), .lo = 0, .hi = 3600,
      .arg = "SEC", .help = "back-off while the channel is missing (default 1)",
      .flags = OPT_ABOVE_LO },
    { 0 }
};

/* One role's: smoke-agent uses them; arc smoke accepts them, unused. */
static const Opt smoke_role_opts[] = {
    { "--role", OPT_STR, SMOKE_OPT(role), .arg = "ROLE",
      .help = "smoke-a, smoke-b or smoke-c" },
    { "--transport", OPT_STR, SMOKE_OPT(transport), .arg = "http|relay",
      .help = "how the role talks to the hub" },
    { "--relay-dir", OPT_STR, SMOKE_OPT(relay), .arg = "DIR",
      .help = "the hub's spool (default .arc-relay)" },
    { "--thread-id", OPT_STR, SMOKE_OPT(thread), .arg = "T",
      .help = "thread (default smoke-relay-001)" },
    { "--claim-key", OPT_STR, SMOKE_OPT(claim_key), .arg = "K",
      .help = "claim key (default smoke-claim-001)" },
    { 0 }
};

/* smoke-agent's token (arc smoke's goes to the hub's, in serve_opts). */
static const Opt smoke_token_opts[] = {
    { "--token-file", OPT_TOKEN_FILE, SMOKE_OPT(token), .arg = "FILE",
      .help = "the hub's bearer token (or ARC_TOKEN)" },
    { "--token", OPT_TOKEN, SMOKE_OPT(token), .arg = "TOKEN",
      .help = "the same (visible in ps: prefer the others)" },
    { 0 }
};
#undef SMOKE_OPT

static const OptHelp smoke_agent_help = {
    "smoke-agent", "usage: arc smoke-agent --role ROLE --transport http|relay "
                   "[options]\n"
                   "Run one deterministic smoke role (the reference's). Exit 0 on "
                   "success;\n1 with 'Smoke test failed: ...' otherwise.\n", NULL
};

/* Parse the options of smoke-agent (hub NULL) or smoke (the hub to start,
 * if none runs) into s, *transport and *timeout_s (which holds the
 * default); exits 2 on bad usage. */
static void smoke_options(int argc, char **argv, Smoke *s, const char **transport,
                          double *timeout_s, const OptHelp *h, HubConfig *hub) {
    SmokeOpts o = { .url = getenv("ARC_URL"),
                    .channel = "smoke-room", .thread = "smoke-relay-001",
                    .claim_key = "smoke-claim-001", .timeout_s = *timeout_s,
                    .poll_s = 1 };
    OptGroup g[] = {
        { smoke_role_opts, &o, NULL, 0 },
        { smoke_opts, &o, NULL, 0 },
        { smoke_token_opts, &o, NULL, 0 },
    };
    if (hub) {   /* --help: the role options are only named in the usage */
        serve_defaults(hub);
        hub->spool_dir = NULL;   /* NULL after parsing: not given */
        g[0].show = OPT_PASS;
        g[2] = (OptGroup){ serve_opts, hub, "hub options, as for arc ensure:\n", 0 };
    }
    opt_parse(h, g, 3, argc, argv);
    if (!hub && o.role) s->role = o.role;   /* arc smoke names its three */
    s->channel = o.channel, s->thread = o.thread, s->claim_key = o.claim_key;
    s->poll_ms = (int64_t)(o.poll_s * 1000);
    memcpy(s->token, o.token, sizeof s->token);
    *transport = o.transport;
    *timeout_s = o.timeout_s;
    const char *url = o.url, *relay = o.relay ? o.relay : ".arc-relay";
    /* arc smoke: the spool named with --spool-dir or --relay-dir, else
     * none yet: cmd_smoke asks the hub which spool it serves (and a hub
     * it starts gets the default). */
    if (hub) {
        relay = hub->spool_dir ? hub->spool_dir : o.relay;
        if (!hub->spool_dir) hub->spool_dir = o.relay ? o.relay : ".arc-relay";
    }
    char err[ARC_ERRLEN], base[ARC_URLLEN];
    if (!url || !*url) {
        if (hub) serve_url(hub->host, hub->port, base, sizeof base);
        else snprintf(base, sizeof base, "http://127.0.0.1:6969");
        url = base;
    }
    if (client_url(&s->client, url, err)) {
        fprintf(stderr, "arc %s: %s\n", h->cmd, err);
        exit(2);
    }
    s->client.relay_dir = relay;
    s->client.token = hub ? hub->token : s->token;
}

/* Run one smoke role in this process; exit 0 when it passed. */
static int cmd_smoke_agent(int argc, char **argv) {
    Smoke s = { 0 };
    const char *transport = NULL;
    double timeout_s = 120;
    smoke_options(argc, argv, &s, &transport, &timeout_s, &smoke_agent_help, NULL);
    if (!s.role || (strcmp(s.role, "smoke-a") && strcmp(s.role, "smoke-b") &&
                    strcmp(s.role, "smoke-c"))) {
        fputs("arc smoke-agent: --role must be smoke-a, smoke-b or smoke-c\n", stderr);
        return 2;
    }
    if (!transport || (strcmp(transport, "http") && strcmp(transport, "relay"))) {
        fputs("arc smoke-agent: --transport must be http or relay\n", stderr);
        return 2;
    }
    if (strcmp(transport, "relay")) s.client.relay_dir = NULL;
    s.client.agent = s.role;
    s.deadline_ms = clock_ms() + (int64_t)(timeout_s * 1000);
    int rc = smoke_role(&s);
    if (rc) printf("Smoke test failed: %s\n", s.err);
    buf_free(&s.msgs);
    client_free(&s.client);
    return rc ? 1 : 0;
}

/* ---- arc smoke: all three roles at once against this machine's hub ---- */

static pthread_mutex_t g_smoke_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t g_smoke_t0;

static void smoke_print_step(const char *role, const char *what) {
    pthread_mutex_lock(&g_smoke_mu);
    printf("%s: %s ok\n", role, what);
    fflush(stdout);
    pthread_mutex_unlock(&g_smoke_mu);
}

static void *smoke_thread(void *arg) {
    Smoke *s = arg;
    if (smoke_role(s)) {
        pthread_mutex_lock(&g_smoke_mu);
        printf("%s: FAILED: %s\n", s->role, s->err);
        fflush(stdout);
        pthread_mutex_unlock(&g_smoke_mu);
    }
    return NULL;
}

static const OptHelp smoke_help = {
    "smoke", "usage: arc smoke [options]\n"
             "Check an installation end to end: start a hub if none runs (as arc\n"
             "ensure would), then run the three smoke roles at once -- smoke-a over\n"
             "HTTP, smoke-b through the hub's file relay, smoke-c over HTTP -- on a\n"
             "fresh thread. The relay is the spool the hub reports serving, unless\n"
             "--spool-dir or --relay-dir names one. Prints one line per step and\n"
             "'smoke: ok in N ms', or the failing step. --timeout-sec bounds the\n"
             "whole run. Exit 0 ok, 1 failed. A hub that requires a token\n"
             "gets it from --token-file, --token or ARC_TOKEN, as with arc ensure.\n"
             "(--role, --transport, --thread-id and --claim-key are accepted and\n"
             "unused: each role sets its own.)\n",
    NULL
};

/* The spool directory the hub at c reports serving (hub-info's spool_path,
 * PROTOCOL §7.9) into out; -1 if it does not say (the reference, say). */
static int smoke_hub_spool(Client *c, int64_t timeout_ms, char *out, size_t n) {
    Buf body = { 0 };
    Json j = { 0 };
    int status = 0, rc = -1;
    char err[ARC_ERRLEN];
    uint32_t r, p;
    if (timeout_ms > 0 &&
        client_call(c, "GET", "/v1/hub-info", (Str){ NULL, 0 }, timeout_ms, &status,
                    &body, err) == 0 &&
        status == 200 && json_parse(&j, buf_cstr(&body), body.len) == 0 &&
        (r = json_get(&j, 0, "result")) && (p = json_get(&j, r, "spool_path")) &&
        j.t[p].type == JSON_STR) {
        Buf path = { 0 };
        json_unescape(&j, p, &path);
        if (path.len && path.len < n && !memchr(path.p, 0, path.len)) {
            memcpy(out, path.p, path.len + 1);
            rc = 0;
        }
        buf_free(&path);
    }
    json_free(&j);
    buf_free(&body);
    return rc;
}

/* Run the three smoke roles at once against this machine's hub, starting
 * one if none answers; prints a line per step. */
static int cmd_smoke(int argc, char **argv) {
    Smoke roles[3] = { { .role = "smoke-a" }, { .role = "smoke-b" },
                       { .role = "smoke-c" } };
    const char *transport = NULL;
    double timeout_s = 60;
    LifeOpts o = { .argv0 = g_argv0, .timeout_s = 30 };
    smoke_options(argc, argv, &roles[0], &transport, &timeout_s, &smoke_help, &o.hub);
    /* --timeout-sec bounds everything from here: finding or starting the
     * hub, and every call of every role. */
    int64_t deadline = clock_ms() + (int64_t)(timeout_s * 1000);
    /* A fresh thread and claim per run, so an earlier run's messages
     * cannot satisfy this one. */
    char thread[64], claim[80];
    unsigned char r[6];
    rand_bytes(r, sizeof r);
    snprintf(thread, sizeof thread, "smoke-%02x%02x%02x%02x%02x%02x", r[0], r[1],
             r[2], r[3], r[4], r[5]);
    snprintf(claim, sizeof claim, "%s-claim", thread);
    int64_t left = deadline - clock_ms();
    if (!client_probe(roles[0].client.base, o.hub.token, 0, left < 2000 ? left : 2000)) {
        printf("smoke: no hub at %s, starting one\n", roles[0].client.base);
        fflush(stdout);
        char log[ARC_PATHLEN];
        g_quiet = 1;
        char e[ARC_ERRLEN] = "the storage path is too long";
        pid_t pid = life_log_path(o.hub.storage, log) ? -1 : life_spawn(&o, log, e);
        if (pid < 0) fprintf(stderr, "smoke: cannot start a hub: %s\n", e);
        int64_t until = clock_ms() + 10000;
        if (until > deadline) until = deadline;
        while (pid > 0 && clock_ms() < until &&
               !client_probe(roles[0].client.base, o.hub.token, 0, 500)) {
            struct timespec ts = { 0, 10 * 1000000 };
            nanosleep(&ts, NULL);
        }
    }
    g_smoke_t0 = clock_ms();
    /* smoke-b goes through the spool the hub serves, wherever it was
     * started; the default only for a hub that does not say. */
    char served[PATH_MAX];
    const char *spool = roles[0].client.relay_dir;
    if (!spool) {
        left = deadline - clock_ms();
        spool = smoke_hub_spool(&roles[0].client, left < 5000 ? left : 5000, served,
                                sizeof served) ? o.hub.spool_dir : served;
    }
    pthread_t th[3];
    /* b and c copy a's client: all three are set up before any runs. */
    for (int i = 0; i < 3; i++) {
        Smoke *s = &roles[i];
        if (i) {
            s->client = roles[0].client;
            s->client.fd = -1;
            s->client.in = (Buf){ 0 };
            s->poll_ms = roles[0].poll_ms;
        }
        s->client.agent = s->role;
        s->client.relay_dir = i == 1 ? spool : NULL;   /* b uses the relay */
        s->channel = roles[0].channel;
        s->thread = thread;
        s->claim_key = claim;
        s->deadline_ms = deadline;
        s->step = smoke_print_step;
    }
    for (int i = 0; i < 3; i++)
        if (pthread_create(&th[i], NULL, smoke_thread, &roles[i])) die("pthread_create");
    int failed = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        failed |= roles[i].err[0] != 0;
        buf_free(&roles[i].msgs);
        client_free(&roles[i].client);
    }
    if (failed) {
        if (clock_ms() >= deadline)
            printf("smoke: FAILED: timed out after %g s (--timeout-sec)\n", timeout_s);
        else
            printf("smoke: FAILED\n");
        return 1;
    }
    printf("smoke: ok in %lld ms\n", (long long)(clock_ms() - g_smoke_t0));
    return 0;
}

/* ==== mcp: MCP tools in the hub (/mcp); `arc mcp`, its stdio bridge ====== */

/* MCP (JSON-RPC 2.0) for agents, from one implementation of the tools,
 * served two ways (docs/MCP.md):
 * - by the hub at /mcp: Streamable HTTP (2025-11-25 and older, with
 *   initialize and Mcp-Session-Id) and the stateless 2026-07-28 revision.
 *   The dispatcher and the tools run in the loop thread; a tool calls the
 *   handlers in-process (hub_handle, as the relay does), so its writes join
 *   the turn's batch and its answer is held until they commit. A tool that
 *   waits (a poll, an rpc call) parks its connection like a long-poll; when
 *   the wait ends the loop runs the request again (Conn.mcp_call), and the
 *   call's McpRun makes that safe: its writes are replayed, not redone.
 * - by `arc mcp --agent NAME`, a bridge for clients that start a process:
 *   it frames stdin, posts each message to the hub's /mcp (over HTTP, or
 *   through the file relay for sandboxed agents) and writes the answers,
 *   and SSE progress events, back to stdout as lines. It keeps the agent's
 *   MCP session with a heartbeat, starts a hub when none runs, opens a new
 *   session when the hub comes back, and, while no hub can be reached,
 *   answers with the same dispatcher in-process, every tool failing with
 *   the reason.
 * The hub owns the per-agent state (McpState: presence session, negotiated
 * version, poll cursors), so there is one copy of it for both transports.
 *
 * Both protocol eras are served from one dispatcher. The handshake era
 * (2024-11-05 .. 2025-11-25) negotiates a version with `initialize`; the
 * stateless era (2026-07-28) sends its version and capabilities in every
 * request's _meta, asks `server/discover` instead, and wants `resultType`
 * on results. Shapes that differ by version (annotations, outputSchema and
 * structuredContent, batches) follow the version of each request. */

#define MCP_MAX_MSG (4 << 20)        /* one JSON-RPC message on stdin */
#define MCP_MAX_CALLS 64             /* bridge: tool calls in flight at once */
#define MCP_MAX_WAIT_S 50            /* waiting tools; clients cut at 60 s */
#define MCP_SLICE_MS 5000            /* long-poll slice between progress notes */
#define MCP_RETRY_MS 2000            /* re-register attempts while the hub is away */
#define MCP_HUB_MS 15000             /* one ordinary hub request */
#define MCP_REG_WAIT_MS 3000         /* bridge: a client's request waits this long
                                        for a registration under way */
#ifndef MCP_MAX_CURSORS
#define MCP_MAX_CURSORS 256          /* poll filters that keep a read position */
#endif
#define MCP_CURSOR_BUCKETS 512       /* their hash table; a power of two */
#ifndef MCP_MAX_STATES
#define MCP_MAX_STATES 1024          /* hub: MCP sessions and stateless agents */
#endif

#define MCP_V_STATELESS "2026-07-28"
#define MCP_V_LEGACY "2025-11-25"    /* newest version with a handshake */
static const char *const mcp_versions[] = {
    MCP_V_STATELESS, MCP_V_LEGACY, "2025-06-18", "2025-03-26", "2024-11-05"
};

/* JSON-RPC and MCP error codes. */
enum {
    MCP_PARSE = -32700, MCP_INVALID = -32600, MCP_NO_METHOD = -32601,
    MCP_BAD_PARAMS = -32602, MCP_INTERNAL = -32603,
    MCP_HEADER_MISMATCH = -32020,     /* HTTP headers disagree with the body */
    MCP_BAD_VERSION = -32022          /* UnsupportedProtocolVersionError */
};

typedef struct McpCursor McpCursor;

/* Where a filtered poll (channel and/or thread) has read up to. Polls with
 * different filters keep separate cursors: the reference moves one cursor
 * for all, so a poll of one thread silently skips the other channels'
 * messages up to that point. A model can invent any number of filters, so
 * at most MCP_MAX_CURSORS are kept, found by hash; the least recently used
 * is dropped first, and its filter, polled again, starts over like a new
 * one: from the unfiltered cursor (docs/MCP.md, "Read positions"). */
struct McpCursor {
    McpCursor *newer, *older;  /* McpCursors' recency list */
    McpCursor *hnext;          /* next in the same hash bucket */
    uint32_t hash;             /* loop_hash(key) */
    char *key;                 /* channel \x1f thread (owned) */
    int64_t since;
};

typedef struct {
    McpCursor *newest, *oldest;                /* the recency list's ends */
    McpCursor *bucket[MCP_CURSOR_BUCKETS];     /* chains by hash */
    int n;                                     /* <= MCP_MAX_CURSORS */
} McpCursors;

/* The agent a tool call acts for, as the tools read it. The hub fills it
 * from the call's McpState before each call and takes the cursor back
 * after (mcp_run_tool): loop thread only, one call at a time. In the
 * bridge it names the agent for the tools answered without a hub. */
typedef struct {
    const char *agent;            /* borrowed: the agent id */
    const char *url, *relay_dir;  /* borrowed: where the agent's hub is */
    char session_id[128];         /* its presence session (PROTOCOL §9) */
    int64_t cursor;               /* since_id of unfiltered polls */
    McpCursors *cursors;          /* borrowed: ... and of filtered ones */
    pthread_mutex_t mu;           /* the tools lock it; never contended */
} Mcp;

static Mcp g_mcp = { .mu = PTHREAD_MUTEX_INITIALIZER };

/* ---- the hub's state: MCP sessions and parked calls ---- */

typedef struct McpState McpState;
typedef struct McpRun McpRun;

/* One MCP session (Mcp-Session-Id, from initialize), or one agent's state
 * for requests without a session (the stateless era, the relay). It holds
 * what `arc mcp` used to keep in its process. Lapses when unused for the
 * presence TTL (mcp_hub_sweep). */
struct McpState {
    McpState *next;
    char sid[33];            /* the session id; "" for an agent's own state */
    char *agent;             /* owned */
    char *display_name;      /* owned or NULL: for (re-)registering */
    char *caps;              /* owned or NULL: "a,b" */
    int64_t pid, pid_start;  /* the harness, from `arc mcp` (§17.5); 0 none */
    char arc_session[128];   /* its presence session; "" before registering */
    char version[16];        /* negotiated by initialize; "" before */
    int64_t cursor;          /* since_id of unfiltered polls, -1 unknown */
    McpCursors cursors;      /* ... and of filtered ones */
    int64_t used_ms;         /* last request */
    int64_t checked_ms;      /* last look at whether arc_session is live */
};

/* A written request's answer, kept for a re-run (McpRun.writes). */
typedef struct {
    int status;
    char *body;              /* owned */
    size_t n;
} McpWrite;

/* A tools/call in the hub, from its first run to its answer. A call that
 * parks keeps it (in McpHub.runs, named by Conn.mcp_call) so the run after
 * the wait finds the writes it already made (replayed in order, never
 * done twice), the wait's start and deadline, and its progress token. */
struct McpRun {
    McpRun *next;
    uint64_t serial;         /* Conn.mcp_call; never 0 */
    McpState *st;            /* borrowed: its state, which outlives it */
    Buf id;                  /* the JSON-RPC id, as JSON */
    Buf progress;            /* _meta.progressToken as JSON, empty if none */
    McpWrite *writes;        /* owned: its writes' answers, in order */
    int n_writes, cap_writes;
    int64_t t0_ms;           /* the first wait began; 0 before */
    int64_t deadline_ms;     /* ... and ends: no wait of the call goes past */
    int64_t slice_end_ms;    /* the current wait's slice (progress notes) */
    double wait_s;           /* the wait asked for: progress's total */
    int sse;                 /* the answer is an SSE stream, its head sent */
    int cancelled;           /* ended unanswered: its run says so and goes */
};

/* Hub.mcp: everything /mcp keeps between requests. Loop thread only. */
typedef struct McpHub {
    McpState *states;
    int n_states;
    McpRun *runs;
    uint64_t next_serial;
    uint64_t *cancel;        /* owned: ended calls for loop_mcp_cancels */
    int n_cancel, cap_cancel;
    char url[ARC_URLLEN];    /* this hub, as arc_whoami reports it */
} McpHub;

/* One message (or batch) on its way through the dispatcher, in the hub
 * or in the bridge: where its answers go and what its tool calls act on. */
typedef struct {
    Hub *h;                  /* NULL: no hub (the bridge answers alone) */
    const char *offline;     /* with h NULL: why; every tool's error text */
    McpState *st;            /* hub: whose state */
    McpRun *run;             /* hub: the parked call run again, or NULL */
    Req *q;                  /* hub: the /mcp request (busy, relayed) */
    int sse_ok;              /* hub: the client accepts text/event-stream */
    char version[16];        /* for requests without _meta; "" = legacy */
    int negotiated;          /* initialize set version */
    int channel;             /* bridge: `arc mcp --channel` (declare claude/channel) */
    int batch;               /* answers go into one array; no parking */
    Buf out;                 /* the answers */
    Buf notes;               /* hub: notifications to send first (progress) */
    int parked;              /* a call waits: run is it, wait its filter */
    Wait wait;
    int64_t wait_ms;
    /* hub: the request's MCP-Protocol-Version (or the relay's ?version=),
     * Mcp-Method and Mcp-Name, trimmed, empty when absent; borrowed from
     * the request. Checked against each message's body (mcp_admit). */
    Str hdr_version, hdr_method, hdr_name;
    int headers;             /* hub over HTTP: the request has headers */
    const char *no_call;     /* hub, no state: why a tools/call cannot run */
    int status;              /* hub: HTTP status an error answer asks; 0 = 200 */
} McpIo;

ARC_PRINTF(1, 2) static void mcp_log(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("arc mcp: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- answers ---- */

/* Add one answer to io->out (into the batch's array when in one). `msg`
 * is consumed; an empty one (a cancelled call) says nothing. */
static void mcp_emit(McpIo *io, Buf *msg) {
    if (msg->len) {
        if (io->batch) buf_addc(&io->out, io->out.len ? ',' : '[');
        buf_addstr(&io->out, buf_str(msg));
    }
    buf_free(msg);
}

static void mcp_error(McpIo *io, Str id, int code, const char *msg,
                      const char *data_json) {
    Buf b = { 0 };
    /* An unknown id is left out rather than null: the SDKs reject null. */
    buf_adds(&b, "{\"jsonrpc\":\"2.0\",");
    if (id.n) buf_adds(&b, "\"id\":"), buf_addstr(&b, id), buf_addc(&b, ',');
    buf_addf(&b, "\"error\":{\"code\":%d,\"message\":", code);
    json_cstr(&b, msg);
    if (data_json) buf_adds(&b, ",\"data\":"), buf_adds(&b, data_json);
    buf_adds(&b, "}}");
    mcp_emit(io, &b);
}

/* An error that the stateless revision (2026-07-28) answers over HTTP with
 * an HTTP error status as well (docs/MCP.md, "Errors"); the bridge and a
 * batch ignore the status. */
static void mcp_reject(McpIo *io, Str id, int status, int code, const char *msg,
                       const char *data_json) {
    if (!io->batch) io->status = status;
    mcp_error(io, id, code, msg, data_json);
}

/* Start a result: {"jsonrpc":"2.0","id":ID,"result":{ ...; the caller adds
 * members (each preceded by a comma) and calls mcp_result_end. */
static void mcp_result_begin(Buf *b, Str id, const char *version) {
    buf_adds(b, "{\"jsonrpc\":\"2.0\",\"id\":");
    buf_addstr(b, id);
    buf_adds(b, ",\"result\":{");
    if (!strcmp(version, MCP_V_STATELESS))
        buf_adds(b, "\"resultType\":\"complete\",\"_meta\":{\"io.modelcontextprotocol/"
                    "serverInfo\":{\"name\":\"arc\",\"version\":\"" ARC_VERSION "\"}}");
}

static void mcp_result_end(McpIo *io, Buf *b) {
    buf_adds(b, "}}");
    mcp_emit(io, b);
}

/* Members after mcp_result_begin: a comma unless the object is empty. */
static void mcp_member(Buf *b, const char *key) {
    if (b->p[b->len - 1] != '{') buf_addc(b, ',');
    json_cstr(b, key);
    buf_addc(b, ':');
}

/* Cache hints, which the stateless revision requires on list results: the
 * tool list never changes while this process runs. */
static void mcp_cache_hint(Buf *b, const char *version) {
    if (strcmp(version, MCP_V_STATELESS)) return;
    mcp_member(b, "ttlMs");
    buf_adds(b, "3600000");
    mcp_member(b, "cacheScope");
    buf_adds(b, "\"public\"");
}

/* A progress notification for a waiting call, as an SSE event into
 * io->notes (only calls with a token on a stream get them). */
static void mcp_notify_progress(McpIo *io, const McpRun *run, double progress,
                                double total, const char *message) {
    if (!run->progress.len) return;
    buf_adds(&io->notes, "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":"
                         "\"notifications/progress\",\"params\":{\"progressToken\":");
    buf_addstr(&io->notes, buf_str(&run->progress));
    buf_addf(&io->notes, ",\"progress\":%.0f,\"total\":%.0f,\"message\":", progress, total);
    json_cstr(&io->notes, message);
    buf_adds(&io->notes, "}}\n\n");
}

/* Does this protocol version have feature `since` (a version date)? The
 * versions are dates, so they compare as strings. */
static int mcp_has(const char *version, const char *since) {
    return strcmp(version, since) >= 0;
}

static int mcp_known_version(const char *v) {
    for (size_t i = 0; i < sizeof mcp_versions / sizeof *mcp_versions; i++)
        if (!strcmp(v, mcp_versions[i])) return 1;
    return 0;
}

static void mcp_versions_json(Buf *b) {
    buf_addc(b, '[');
    for (size_t i = 0; i < sizeof mcp_versions / sizeof *mcp_versions; i++)
        buf_addf(b, "%s\"%s\"", i ? "," : "", mcp_versions[i]);
    buf_addc(b, ']');
}

/* One request to the hub's handlers, in-process (the loop thread): `path`
 * may carry a query. The answer's body goes to *out; with `keep`, the Res
 * itself is handed over too (a wait that parks). A write that found the
 * storage locked marks `outer` busy, so the loop retries the whole /mcp
 * request (loop_retry_busy). Returns the HTTP status. */
static int mcp_local(Hub *h, Req *outer, const char *method, const char *path, Str body,
                     Buf *out, Res *keep) {
    const char *qm = strchr(path, '?');
    Req q = { .method = str_c(method), .query = str_c(qm ? qm + 1 : "") };
    Res r = { 0 };
    hub_handle(h, &q, (Str){ path, qm ? (size_t)(qm - path) : strlen(path) }, body, &r);
    if (q.busy && outer) outer->busy = 1;
    buf_reset(out);
    buf_addstr(out, buf_str(&r.body));
    int status = r.status;
    if (keep) {
        *keep = r;   /* hand-off: the caller frees it */
        r = (Res){ 0 };
    }
    req_free(&q);
    res_free(&r);
    return status;
}

/* ---- tool calls: arguments, hub requests, readable results ---- */

typedef struct {
    McpIo *io;            /* where the call came from (hub, or none) */
    McpRun *run;          /* hub: the call across its runs; NULL in the bridge */
    int n_writes;         /* writes this run made or replayed (run->writes) */
    Json req;             /* the request */
    uint32_t args;        /* its params.arguments object, 0 if none */
    Buf out;              /* the last hub answer ... */
    Json j;               /* ... parsed */
    uint32_t res;         /* its "result" token */
    int status;           /* its HTTP status */
    Buf text;             /* content[0].text if not data's JSON (mcp_call_done) */
    Buf data;             /* structuredContent, an object */
    int failed;           /* isError */
    int parked;           /* a wait parked the call: no answer yet */
} McpCtx;

ARC_PRINTF(2, 3) static int mcp_fail(McpCtx *x, const char *fmt, ...) {
    va_list ap;
    char msg[1024];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    buf_reset(&x->text);
    buf_adds(&x->text, msg);
    buf_reset(&x->data);
    x->failed = 1;
    return -1;
}

/* Argument `name` as text: 1 present (numbers are taken as their text;
 * models often quote or unquote ids), 0 absent or null, -1 wrong type. */
static int mcp_arg_str(McpCtx *x, const char *name, Buf *out) {
    uint32_t v = x->args ? json_get_val(&x->req, x->args, name) : 0;
    buf_reset(out);
    if (!v) return 0;
    int type = x->req.t[v].type;
    if (type != JSON_STR && type != JSON_NUM)
        return mcp_fail(x, "argument %s must be a string", name);
    json_as_text(out, &x->req, v);
    return 1;
}

/* A required string argument, not blank. */
static int mcp_arg_need(McpCtx *x, const char *name, Buf *out) {
    int rc = mcp_arg_str(x, name, out);
    if (rc == 0 || (rc > 0 && !str_trim(buf_str(out)).n))
        return mcp_fail(x, "argument %s is required", name);
    return rc;
}

/* A number argument (a numeric string is accepted): 1, 0 absent, -1 bad. */
static int mcp_arg_num(McpCtx *x, const char *name, double *out) {
    Buf t = { 0 };
    int rc = mcp_arg_str(x, name, &t);
    if (rc > 0) {
        char *end;
        errno = 0;
        *out = strtod(buf_cstr(&t), &end);
        if (end == t.p || *end || errno || *out != *out)
            rc = mcp_fail(x, "argument %s must be a number", name);
    }
    buf_free(&t);
    return rc;
}

static int mcp_arg_int(McpCtx *x, const char *name, int64_t *out) {
    Buf t = { 0 };
    int rc = mcp_arg_str(x, name, &t);
    if (rc > 0 && parse_int_text(buf_str(&t), out))
        rc = mcp_fail(x, "argument %s must be a whole number", name);
    buf_free(&t);
    return rc;
}

/* A waiting tool's timeout in seconds: the argument, else `dflt`, clamped
 * to 0..MCP_MAX_WAIT_S. */
static int mcp_arg_wait(McpCtx *x, double dflt, double *out) {
    *out = dflt;
    if (mcp_arg_num(x, "timeout", out) < 0) return -1;
    if (*out < 0) *out = 0;
    if (*out > MCP_MAX_WAIT_S) *out = MCP_MAX_WAIT_S;
    return 0;
}

/* Can the call reach the hub? In the hub, always; in the bridge (no hub
 * answered), no: -1 with the bridge's reason as the tool's error text. */
static int mcp_ready(McpCtx *x) {
    if (x->io->h) return 0;
    return mcp_fail(x, "%s", x->io->offline ? x->io->offline : "arc hub not reachable");
}

/* x->out holds a hub answer: parse it into x->j. 0 with x->res (the hub
 * said ok), else -1 and the failure as the tool's error text. */
static int mcp_hub_answer(McpCtx *x) {
    if (json_parse(&x->j, buf_cstr(&x->out), x->out.len) || x->j.t[0].type != JSON_OBJ)
        return mcp_fail(x, "unexpected answer from the hub (HTTP %d)", x->status);
    uint32_t ok = json_get(&x->j, 0, "ok");
    if (!ok || x->j.t[ok].type != JSON_TRUE) {
        uint32_t e = json_get(&x->j, 0, "error");
        Buf m = { 0 };
        if (e) json_as_text(&m, &x->j, e);
        mcp_fail(x, "arc hub refused (HTTP %d): %s", x->status,
                 m.len ? m.p : "no error message");
        buf_free(&m);
        return -1;
    }
    x->res = json_get(&x->j, 0, "result");
    if (!x->res) return mcp_fail(x, "arc hub answered without a result");
    return 0;
}

/* One hub request for a tool, in-process: 0 with x->res (the hub said
 * ok), else -1 and the failure as the tool's error text. A write is done
 * once per call: a run after a wait gets the first run's answer back. */
static int mcp_hub(McpCtx *x, const char *method, const char *path, Str body,
                   int64_t timeout_ms) {
    (void)timeout_ms;   /* in-process: nothing to wait for */
    if (mcp_ready(x)) return -1;
    json_free(&x->j);
    x->res = 0;
    McpRun *run = x->run;
    int write = strcmp(method, "GET") != 0;
    if (write && run && x->n_writes < run->n_writes) {
        McpWrite *w = &run->writes[x->n_writes++];
        buf_reset(&x->out);
        buf_add(&x->out, w->body, w->n);
        x->status = w->status;
    } else {
        x->status = mcp_local(x->io->h, x->io->q, method, path, body, &x->out, NULL);
        if (write && run && !x->io->q->busy) {   /* a busy one did nothing */
            if (run->n_writes == run->cap_writes)
                run->writes = vec_grow(run->writes, &run->cap_writes, sizeof *run->writes);
            run->writes[run->n_writes++] = (McpWrite){
                x->status, xstrndup(buf_cstr(&x->out), x->out.len), x->out.len };
            x->n_writes++;
        }
    }
    return mcp_hub_answer(x);
}

/* structuredContent: {"key": <token>} */
static void mcp_data_one(McpCtx *x, const char *key, uint32_t tok) {
    buf_reset(&x->data);
    buf_addc(&x->data, '{');
    json_cstr(&x->data, key);
    buf_addc(&x->data, ':');
    json_write(&x->data, &x->j, tok);
    buf_addc(&x->data, '}');
}

/* structuredContent: the object token itself. */
static void mcp_data_obj(McpCtx *x, uint32_t tok) {
    buf_reset(&x->data);
    json_write(&x->data, &x->j, tok);
}

/* A list the reference returns bare: the text is the list, and
 * structuredContent {"key": <list>}. */
static void mcp_data_list(McpCtx *x, const char *key, uint32_t arr) {
    mcp_data_one(x, key, arr);
    buf_reset(&x->text);
    json_write(&x->text, &x->j, arr);
}

/* The "from_agent"/"agent_id"... member that starts most request bodies. */
static void mcp_body_begin(Buf *b, const char *agent_key) {
    buf_addf(b, "{\"%s\":", agent_key);
    json_cstr(b, g_mcp.agent);
}

/* Add "key": <string argument> to a body if the argument is there. */
static int mcp_body_str(McpCtx *x, Buf *b, const char *name, const char *key) {
    Buf v = { 0 };
    int rc = mcp_arg_str(x, name, &v);
    if (rc > 0) {
        buf_addf(b, ",\"%s\":", key ? key : name);
        json_strs(b, buf_str(&v));
    }
    buf_free(&v);
    return rc < 0 ? -1 : 0;
}

static int mcp_body_int(McpCtx *x, Buf *b, const char *name) {
    int64_t v;
    int rc = mcp_arg_int(x, name, &v);
    if (rc > 0) buf_addf(b, ",\"%s\":%lld", name, (long long)v);
    return rc < 0 ? -1 : 0;
}

/* Post a message built in body (an object missing its closing brace); the
 * result is the stored message, as the reference's. */
static int mcp_post(McpCtx *x, Buf *body) {
    buf_addc(body, '}');
    if (mcp_hub(x, "POST", "/v1/messages", buf_str(body), MCP_HUB_MS)) return -1;
    mcp_data_obj(x, x->res);
    return 0;
}

/* Advance a cursor to the highest id in a message array. */
static int64_t mcp_max_id(const Json *j, uint32_t arr, int64_t since) {
    uint32_t m = arr + 1;
    for (uint32_t i = 0; i < j->t[arr].n; i++, m = j->t[m].next) {
        int64_t id;
        uint32_t v = json_get(j, m, "id");
        if (v && json_to_i64(j, v, &id) == 0 && id > since) since = id;
    }
    return since;
}

/* Take k out of the recency list. */
static void mcp_cursor_unlink(McpCursors *t, McpCursor *k) {
    if (k->newer) k->newer->older = k->older;
    else t->newest = k->older;
    if (k->older) k->older->newer = k->newer;
    else t->oldest = k->newer;
    k->newer = k->older = NULL;
}

/* Put k at the newest end of the recency list. */
static void mcp_cursor_push(McpCursors *t, McpCursor *k) {
    k->older = t->newest;
    k->newer = NULL;
    if (t->newest) t->newest->newer = k;
    else t->oldest = k;
    t->newest = k;
}

/* The read position for `key`, now the most recently used. A key not in
 * the table gets a new one starting at `start`; past MCP_MAX_CURSORS that
 * reuses the least recently used entry. The pointer is valid until the
 * next call (the caller holds g_mcp.mu). */
static int64_t *mcp_cursor_get(McpCursors *t, const char *key, int64_t start) {
    uint32_t h = loop_hash(key);
    McpCursor **head = &t->bucket[h & (MCP_CURSOR_BUCKETS - 1)], *k = *head;
    while (k && (k->hash != h || strcmp(k->key, key))) k = k->hnext;
    if (k) {
        mcp_cursor_unlink(t, k);
        mcp_cursor_push(t, k);
        return &k->since;
    }
    if (t->n < MCP_MAX_CURSORS) {
        k = xrealloc(NULL, sizeof *k);
        t->n++;
    } else {   /* evict the oldest: out of the list and its chain */
        k = t->oldest;
        assert(k);
        mcp_cursor_unlink(t, k);
        McpCursor **p = &t->bucket[k->hash & (MCP_CURSOR_BUCKETS - 1)];
        while (*p != k) p = &(*p)->hnext;
        *p = k->hnext;
        free(k->key);
    }
    assert(t->n <= MCP_MAX_CURSORS);
    k->key = xstrndup(key, strlen(key));
    k->hash = h;
    k->since = start;
    k->hnext = *head;
    *head = k;
    mcp_cursor_push(t, k);
    return &k->since;
}

/* Free every cursor; the table is empty (and usable) again. */
static void mcp_cursors_free(McpCursors *t) {
    for (McpCursor *k = t->newest, *older; k; k = older) {
        older = k->older;
        free(k->key);
        free(k);
    }
    memset(t, 0, sizeof *t);
}

/* The cursor for a poll filter, created from the unfiltered one. */
static int64_t *mcp_cursor(const char *channel, const char *thread) {
    if (!*channel && !*thread) return &g_mcp.cursor;
    Buf key = { 0 };
    buf_addf(&key, "%s\x1f%s", channel, thread);
    int64_t *since = mcp_cursor_get(g_mcp.cursors, key.p, g_mcp.cursor);
    buf_free(&key);
    return since;
}

/* Wait for the agent's events (GET /v1/events) from `since`, up to wait_s
 * seconds from the call's first wait: 0 with the answer in x (possibly an
 * empty array, once the wait is over), or -1. With nothing yet, the call
 * parks (x->parked, the filter in io->wait) and is run again when a
 * matching message commits or the wait, or its slice, ends; with a
 * progress token on an SSE answer the slices are MCP_SLICE_MS, with a
 * progress note after each. `extra` is appended to the query (filters).
 * In a batch nothing parks: the wait is 0. */
static int mcp_wait_events(McpCtx *x, int64_t since, double wait_s, const char *extra,
                           int exclude_self, const char *what) {
    if (mcp_ready(x)) return -1;
    McpRun *run = x->run;
    McpIo *io = x->io;
    int64_t now = clock_ms(), deadline = now + (int64_t)(wait_s * 1000);
    if (!run->t0_ms) {
        run->t0_ms = now;
        run->wait_s = wait_s;
        run->deadline_ms = deadline;
    }
    if (deadline > run->deadline_ms) deadline = run->deadline_ms;
    int64_t left = io->batch || deadline < now ? 0 : deadline - now;
    int notes = run->progress.len && io->sse_ok;
    if (notes && left > MCP_SLICE_MS) left = MCP_SLICE_MS;
    Buf path = { 0 };
    buf_adds(&path, "/v1/events");
    agent_qparam(&path, "agent_id", g_mcp.agent);
    buf_addf(&path, "&since_id=%lld&limit=100&timeout=%.3f%s%s", (long long)since,
             (double)left / 1000.0, exclude_self ? "&exclude_self=1" : "", extra);
    Res r = { 0 };
    json_free(&x->j);
    x->res = 0;
    x->status = mcp_local(io->h, io->q, "GET", path.p, (Str){ NULL, 0 }, &x->out, &r);
    buf_free(&path);
    if (r.park) {
        if (notes && run->slice_end_ms && now >= run->slice_end_ms) {
            char note[128];
            double took = (double)(now - run->t0_ms) / 1000.0;
            snprintf(note, sizeof note, "%s (%.0f s of %.0f s)", what, took, run->wait_s);
            mcp_notify_progress(io, run, took, run->wait_s, note);
        }
        run->slice_end_ms = now + left;
        wait_free(&io->wait);
        io->wait = r.wait;                  /* hand-off: io owns it now */
        memset(&r.wait, 0, sizeof r.wait);
        io->wait_ms = r.wait_ms;
        x->parked = 1;
        res_free(&r);
        return -1;
    }
    res_free(&r);
    if (mcp_hub_answer(x)) return -1;
    if (x->j.t[x->res].type != JSON_ARR) return mcp_fail(x, "arc hub sent no list");
    return 0;
}

/* ---- the tools ---- */

/* The reference's six come first, with its names and arguments, so a
 * client configured for the reference keeps working; the rest cover what
 * else an agent does on arc. Few tools, each with a precise description:
 * every schema costs the model context on every turn. */

/* blocked_by (PROTOCOL §14) as metadata.blocked_by: a list of ids, or
 * one id or "3, 4" (models pass lists either way). Returns 0 or -1. */
static int mcp_body_blocked_by(McpCtx *x, Buf *b) {
    uint32_t v = x->args ? json_get_val(&x->req, x->args, "blocked_by") : 0;
    if (!v) return 0;
    Buf t = { 0 };
    int rc = -1, n = 0;
    uint32_t k = x->req.t[v].type == JSON_ARR ? x->req.t[v].n : 1;
    uint32_t e = x->req.t[v].type == JSON_ARR ? v + 1 : v;
    buf_adds(b, ",\"metadata\":{\"blocked_by\":[");
    for (uint32_t i = 0; i < k; i++, e = x->req.t[e].next) {
        int type = x->req.t[e].type;
        if (type != JSON_STR && type != JSON_NUM) goto bad;
        buf_reset(&t);
        json_as_text(&t, &x->req, e);
        for (const char *p = buf_cstr(&t), *q; *p; p = q) {
            int64_t id;
            q = p + strcspn(p, ",");
            Str one = str_trim((Str){ p, (size_t)(q - p) });
            if (*q) q++;
            if (!one.n && !*q) break;
            if (parse_int_text(one, &id)) goto bad;
            buf_addf(b, "%s%lld", n++ ? "," : "", (long long)id);
        }
    }
    buf_adds(b, "]}");
    rc = 0;
    goto done;
bad:
    mcp_fail(x, "argument blocked_by must be a list of task ids");
done:
    buf_free(&t);
    return rc;
}

static int mcp_t_post(McpCtx *x) {
    Buf body = { 0 }, ch = { 0 };
    int rc = -1;
    if (mcp_arg_need(x, "channel", &ch) < 0) goto done;
    mcp_body_begin(&body, "from_agent");
    buf_adds(&body, ",\"channel\":");
    json_strs(&body, buf_str(&ch));
    if (mcp_body_str(x, &body, "body", NULL) || mcp_body_str(x, &body, "kind", NULL) ||
        mcp_body_str(x, &body, "thread_id", NULL) ||
        mcp_body_str(x, &body, "to_agent", NULL) || mcp_body_int(x, &body, "reply_to") ||
        mcp_body_int(x, &body, "parent_task_id") || mcp_body_blocked_by(x, &body))
        goto done;
    rc = mcp_post(x, &body);
done:
    buf_free(&body), buf_free(&ch);
    return rc;
}

static int mcp_t_dm(McpCtx *x) {
    Buf body = { 0 }, to = { 0 };
    int rc = -1;
    if (mcp_arg_need(x, "to_agent", &to) < 0) goto done;
    mcp_body_begin(&body, "from_agent");
    buf_adds(&body, ",\"channel\":\"direct\",\"kind\":\"chat\",\"to_agent\":");
    json_strs(&body, buf_str(&to));
    if (mcp_body_str(x, &body, "body", NULL)) goto done;
    rc = mcp_post(x, &body);
done:
    buf_free(&body), buf_free(&to);
    return rc;
}

/* arc_poll_messages: long-poll the agent's events past its cursor for this
 * channel/thread filter, then move that cursor past what came back. */
static int mcp_t_poll(McpCtx *x) {
    Buf ch = { 0 }, th = { 0 }, extra = { 0 };
    double wait_s;
    int rc = -1;
    if (mcp_arg_str(x, "channel", &ch) < 0 || mcp_arg_str(x, "thread_id", &th) < 0 ||
        mcp_arg_wait(x, 5, &wait_s) || mcp_ready(x))
        goto done;
    if (ch.len) buf_adds(&extra, "&channel="), cli_pct(&extra, ch.p);
    if (th.len) buf_adds(&extra, "&thread_id="), cli_pct(&extra, th.p);
    buf_adds(&extra, "&surfaced=mcp");   /* not again through a hook (§16.4) */
    pthread_mutex_lock(&g_mcp.mu);
    int64_t since = *mcp_cursor(buf_cstr(&ch), buf_cstr(&th));
    pthread_mutex_unlock(&g_mcp.mu);
    if (since < 0) since = 0;   /* registered, but the bootstrap failed */
    if (mcp_wait_events(x, since, wait_s, buf_cstr(&extra), 1, "waiting for messages"))
        goto done;
    int64_t next = mcp_max_id(&x->j, x->res, since);
    pthread_mutex_lock(&g_mcp.mu);
    int64_t *cur = mcp_cursor(buf_cstr(&ch), buf_cstr(&th));
    if (*cur < next) *cur = next;
    pthread_mutex_unlock(&g_mcp.mu);
    mcp_data_list(x, "messages", x->res);
    rc = 0;
done:
    buf_free(&ch), buf_free(&th), buf_free(&extra);
    return rc;
}

static int mcp_t_agents(McpCtx *x) {
    if (mcp_hub(x, "GET", "/v1/agents", (Str){ NULL, 0 }, MCP_HUB_MS)) return -1;
    mcp_data_list(x, "agents", x->res);
    return 0;
}

static int mcp_t_channel(McpCtx *x) {
    Buf name = { 0 }, body = { 0 };
    int rc = -1;
    if (mcp_arg_need(x, "name", &name) < 0) goto done;
    buf_adds(&body, "{\"name\":");
    json_strs(&body, buf_str(&name));
    buf_adds(&body, ",\"created_by\":");
    json_cstr(&body, g_mcp.agent);
    buf_addc(&body, '}');
    if (mcp_hub(x, "POST", "/v1/channels", buf_str(&body), MCP_HUB_MS)) goto done;
    mcp_data_obj(x, x->res);
    rc = 0;
done:
    buf_free(&name), buf_free(&body);
    return rc;
}

/* Send a task_request and wait for the task_result that replies to it:
 * long-polls on our own feed (broadcasts and DMs to us), so the answer
 * arrives the moment it is posted; the reference re-queries once a second.
 * The result is that task_result message, as the reference's. */
static int mcp_t_rpc(McpCtx *x) {
    Buf to = { 0 }, body = { 0 };
    double wait_s;
    int rc = -1;
    if (mcp_arg_need(x, "to_agent", &to) < 0 || mcp_arg_wait(x, 30, &wait_s)) goto done;
    mcp_body_begin(&body, "from_agent");
    buf_adds(&body, ",\"channel\":\"direct\",\"kind\":\"task_request\",\"to_agent\":");
    json_strs(&body, buf_str(&to));
    if (mcp_body_str(x, &body, "body", NULL)) goto done;
    buf_addc(&body, '}');
    if (mcp_hub(x, "POST", "/v1/messages", buf_str(&body), MCP_HUB_MS)) goto done;
    int64_t req_id = 0;
    json_to_i64(&x->j, json_get(&x->j, x->res, "id"), &req_id);
    int64_t since = req_id, deadline = clock_ms() + (int64_t)(wait_s * 1000);
    for (;;) {
        double left = (double)(deadline - clock_ms()) / 1000.0;
        if (mcp_wait_events(x, since, left > 0 ? left : 0, "", 1, "waiting for the result"))
            goto done;
        uint32_t arr = x->res, m = arr + 1;
        for (uint32_t i = 0; i < x->j.t[arr].n; i++, m = x->j.t[m].next) {
            uint32_t k = json_get(&x->j, m, "kind"), r = json_get(&x->j, m, "reply_to");
            int64_t rid;
            if (k && json_str_is(&x->j, k, str_c("task_result")) && r &&
                json_to_i64(&x->j, r, &rid) == 0 && rid == req_id) {
                mcp_data_obj(x, m);
                rc = 0;
                goto done;
            }
        }
        since = mcp_max_id(&x->j, arr, since);
        if (clock_ms() >= deadline) break;
    }
    mcp_fail(x, "no task_result from %s within %.0f s; task #%lld stays open. Its answer "
             "will reach you through arc_poll_messages.", to.p, wait_s, (long long)req_id);
done:
    buf_free(&to), buf_free(&body);
    return rc;
}

static int mcp_t_inbox(McpCtx *x) {
    int64_t since = -1, limit = 20;
    if (mcp_arg_int(x, "since_id", &since) < 0 || mcp_arg_int(x, "limit", &limit) < 0)
        return -1;
    if (limit < 1 || limit > 500) return mcp_fail(x, "argument limit must be 1 to 500");
    Buf path = { 0 };
    buf_adds(&path, "/v1/inbox/");
    cli_pct(&path, g_mcp.agent);
    if (since >= 0) buf_addf(&path, "?since_id=%lld&limit=%lld", (long long)since,
                             (long long)limit);
    else buf_addf(&path, "?tail=1&limit=%lld", (long long)limit);
    int rc = mcp_hub(x, "GET", path.p, (Str){ NULL, 0 }, MCP_HUB_MS);
    buf_free(&path);
    if (rc) return -1;
    mcp_data_one(x, "messages", x->res);
    return 0;
}

/* arc_read_thread: the hub's answer (the thread's summary, messages, tasks,
 * claims and locks) with only the last `limit` messages. */
static int mcp_t_thread(McpCtx *x) {
    Buf id = { 0 }, path = { 0 };
    int64_t limit = 50;
    int rc = -1;
    if (mcp_arg_need(x, "thread_id", &id) < 0 || mcp_arg_int(x, "limit", &limit) < 0)
        goto done;
    if (limit < 1) limit = 1;
    buf_adds(&path, "/v1/threads/");
    cli_pct(&path, id.p);
    agent_qparam(&path, "agent_id", g_mcp.agent);   /* we read it (§17.2) */
    if (mcp_hub(x, "GET", path.p, (Str){ NULL, 0 }, MCP_HUB_MS)) goto done;
    uint32_t msgs = json_get(&x->j, x->res, "messages");
    buf_reset(&x->data);
    if (!msgs || x->j.t[msgs].type != JSON_ARR || x->j.t[msgs].n <= (uint64_t)limit) {
        mcp_data_obj(x, x->res);
    } else {   /* the rest as it is, then "messages" cut */
        json_write_skip(&x->data, &x->j, x->res, "messages");
        x->data.len--;   /* its closing brace */
        buf_adds(&x->data, x->data.len > 1 ? ",\"messages\":[" : "\"messages\":[");
        uint32_t n = x->j.t[msgs].n, m = msgs + 1;
        for (uint32_t i = 0; i < n; i++, m = x->j.t[m].next) {
            if (n - i > (uint64_t)limit) continue;
            if (n - i < (uint64_t)limit) buf_addc(&x->data, ',');
            json_write(&x->data, &x->j, m);
        }
        buf_adds(&x->data, "]}");
    }
    rc = 0;
done:
    buf_free(&id), buf_free(&path);
    return rc;
}

/* Which of acquire/refresh/release; -1 (and the tool error) otherwise. */
static int mcp_arg_action(McpCtx *x) {
    Buf a = { 0 };
    int rc = mcp_arg_str(x, "action", &a), act = 0;
    if (rc > 0) {
        act = !strcmp(a.p, "acquire") ? 0 : !strcmp(a.p, "refresh") ? 1
            : !strcmp(a.p, "release") ? 2 : -1;
        if (act < 0) mcp_fail(x, "argument action must be acquire, refresh or release");
    }
    buf_free(&a);
    return rc < 0 ? -1 : act;
}

/* arc_claim and arc_lock: the same three requests on two kinds of lease. */
typedef struct {
    const char *paths[3];              /* acquire, refresh, release */
    const char *key;                   /* the field naming what is leased */
    const char *data;                  /* structuredContent member */
    int claim;                         /* claims name their owner differently
                                        * and take task fields on acquire */
} McpLease;

static const McpLease mcp_claims = {
    { "/v1/claims", "/v1/claims/refresh", "/v1/claims/release" }, "claim_key", "claim", 1
};
static const McpLease mcp_locks = {
    { "/v1/locks", "/v1/locks/refresh", "/v1/locks/release" }, "file_path", "lock", 0
};

/* Report the answer: {"acquired": bool, "<data>": row}. A denial is not an
 * error: the row says who holds it and until when. */
static void mcp_lease_result(McpCtx *x, const McpLease *l) {
    uint32_t acq = json_get(&x->j, 0, "acquired");   /* in the envelope */
    int granted = !acq || x->j.t[acq].type == JSON_TRUE;
    buf_reset(&x->data);
    buf_addf(&x->data, "{\"acquired\":%s,\"%s\":", granted ? "true" : "false", l->data);
    json_write(&x->data, &x->j, x->res);
    buf_addc(&x->data, '}');
}

static int mcp_lease(McpCtx *x, const McpLease *l) {
    Buf body = { 0 };
    int rc = -1, act = mcp_arg_action(x);
    if (act < 0) goto done;
    mcp_body_begin(&body, l->claim && act != 2 ? "owner_agent_id" : "agent_id");
    if (mcp_body_str(x, &body, l->key, NULL) || mcp_body_int(x, &body, "ttl_sec") ||
        (l->claim && act == 0 && (mcp_body_int(x, &body, "task_message_id") ||
                                  mcp_body_str(x, &body, "thread_id", NULL))))
        goto done;
    buf_addc(&body, '}');
    if (mcp_hub(x, "POST", l->paths[act], buf_str(&body), MCP_HUB_MS)) goto done;
    mcp_lease_result(x, l);
    rc = 0;
done:
    buf_free(&body);
    return rc;
}

static int mcp_t_claim(McpCtx *x) { return mcp_lease(x, &mcp_claims); }
static int mcp_t_lock(McpCtx *x) { return mcp_lease(x, &mcp_locks); }

static int mcp_t_tasks(McpCtx *x) {
    Buf path = { 0 }, v = { 0 };
    int64_t id;
    int rc = -1, has_id = mcp_arg_int(x, "complete_task_id", &id);
    if (has_id < 0) goto done;
    if (has_id) {
        buf_addf(&path, "/v1/tasks/%lld/complete", (long long)id);
        if (mcp_hub(x, "POST", path.p, str_c("{}"), MCP_HUB_MS)) goto done;
        uint32_t pc = json_get(&x->j, 0, "parent_completed");
        uint32_t up = json_get(&x->j, 0, "rolled_up");
        int parent = pc && x->j.t[pc].type == JSON_TRUE;
        buf_adds(&x->data, "{\"tasks\":[");
        json_write(&x->data, &x->j, x->res);
        buf_addf(&x->data, "],\"parent_completed\":%s", parent ? "true" : "false");
        if (up) buf_adds(&x->data, ",\"rolled_up\":"), json_write(&x->data, &x->j, up);
        buf_addc(&x->data, '}');
        rc = 0;
        goto done;
    }
    buf_adds(&path, "/v1/tasks?status=");
    if (mcp_arg_str(x, "status", &v) < 0) goto done;
    cli_pct(&path, v.len ? v.p : "open");
    static const char *const filters[] = { "channel", "thread_id" };
    for (int i = 0; i < 2; i++) {
        if (mcp_arg_str(x, filters[i], &v) < 0) goto done;
        if (v.len) buf_addf(&path, "&%s=", filters[i]), cli_pct(&path, v.p);
    }
    if (mcp_hub(x, "GET", path.p, (Str){ NULL, 0 }, MCP_HUB_MS)) goto done;
    mcp_data_one(x, "tasks", x->res);
    rc = 0;
done:
    buf_free(&path), buf_free(&v);
    return rc;
}

/* Answer a task_request: a task_result replying to it, in the request's
 * channel and thread, addressed to the asker when the request was a direct
 * message to us (to_agent and channel override). The request is looked up
 * in our own feed, which holds both broadcasts and our DMs. */
static int mcp_t_result(McpCtx *x) {
    Buf body = { 0 }, to = { 0 }, ch = { 0 }, path = { 0 }, thread = { 0 };
    int64_t id;
    int rc = -1;
    if (mcp_arg_int(x, "task_id", &id) <= 0) {
        if (!x->failed) mcp_fail(x, "argument task_id is required");
        goto done;
    }
    if (mcp_arg_str(x, "to_agent", &to) < 0 || mcp_arg_str(x, "channel", &ch) < 0) goto done;
    buf_adds(&path, "/v1/events");
    agent_qparam(&path, "agent_id", g_mcp.agent);
    buf_addf(&path, "&since_id=%lld&limit=1", (long long)(id > 0 ? id - 1 : 0));
    if (mcp_hub(x, "GET", path.p, (Str){ NULL, 0 }, MCP_HUB_MS)) goto done;
    uint32_t m = x->res + 1, f;
    int64_t got = 0;
    if (x->j.t[x->res].n && json_to_i64(&x->j, json_get(&x->j, m, "id"), &got) == 0 &&
        got == id) {
        if (!to.len && json_get_val(&x->j, m, "to_agent") &&
            (f = json_get_val(&x->j, m, "from_agent")))
            json_as_text(&to, &x->j, f);
        if (!ch.len && (f = json_get_val(&x->j, m, "channel"))) json_as_text(&ch, &x->j, f);
        if ((f = json_get_val(&x->j, m, "thread_id"))) json_as_text(&thread, &x->j, f);
    }
    mcp_body_begin(&body, "from_agent");
    buf_addf(&body, ",\"kind\":\"task_result\",\"reply_to\":%lld,\"channel\":", (long long)id);
    json_cstr(&body, ch.len ? ch.p : to.len ? "direct" : "general");
    if (to.len) buf_adds(&body, ",\"to_agent\":"), json_strs(&body, buf_str(&to));
    if (thread.len) buf_adds(&body, ",\"thread_id\":"), json_strs(&body, buf_str(&thread));
    if (mcp_body_str(x, &body, "body", NULL)) goto done;
    rc = mcp_post(x, &body);
done:
    buf_free(&body), buf_free(&to), buf_free(&ch), buf_free(&path), buf_free(&thread);
    return rc;
}

/* arc_whoami: this server's agent, session, hub and read cursor, with the
 * hub's bootstrap for the agent. */
static int mcp_t_whoami(McpCtx *x) {
    Buf path = { 0 };
    buf_adds(&path, "/v1/bootstrap");
    agent_qparam(&path, "agent_id", g_mcp.agent);
    int rc = mcp_hub(x, "GET", path.p, (Str){ NULL, 0 }, MCP_HUB_MS);
    buf_free(&path);
    if (rc) return -1;
    pthread_mutex_lock(&g_mcp.mu);
    int64_t cursor = g_mcp.cursor;
    char sid[sizeof g_mcp.session_id];
    memcpy(sid, g_mcp.session_id, sizeof sid);
    pthread_mutex_unlock(&g_mcp.mu);
    buf_adds(&x->data, "{\"agent_id\":");
    json_cstr(&x->data, g_mcp.agent);
    buf_adds(&x->data, ",\"session_id\":");
    json_cstr(&x->data, sid);
    buf_adds(&x->data, ",\"hub\":");
    json_cstr(&x->data, g_mcp.relay_dir ? g_mcp.relay_dir : g_mcp.url);
    buf_addf(&x->data, ",\"cursor\":%lld,\"bootstrap\":", (long long)cursor);
    json_write(&x->data, &x->j, x->res);
    buf_addc(&x->data, '}');
    return 0;
}
/* arc_search: full-text search of what this agent may see (PROTOCOL §15):
 * the hits (message and snippet), best first. */
static int mcp_t_search(McpCtx *x) {
    static const char *const filters[][2] = {
        { "channel", "channel" }, { "from_agent", "from" }, { "kind", "kind" }
    };
    Buf q = { 0 }, v = { 0 }, path = { 0 };
    int64_t limit = 10;
    int rc = -1;
    if (mcp_arg_need(x, "query", &q) < 0 || mcp_arg_int(x, "limit", &limit) < 0) goto done;
    if (limit < 1 || limit > ARC_SEARCH_MAX_LIMIT) {
        mcp_fail(x, "argument limit must be 1 to %d", ARC_SEARCH_MAX_LIMIT);
        goto done;
    }
    buf_adds(&path, "/v1/search");
    agent_qparam(&path, "q", q.p);
    agent_qparam(&path, "agent_id", g_mcp.agent);
    buf_addf(&path, "&limit=%lld", (long long)limit);
    for (size_t i = 0; i < sizeof filters / sizeof *filters; i++) {
        if (mcp_arg_str(x, filters[i][0], &v) < 0) goto done;
        if (v.len) agent_qparam(&path, filters[i][1], v.p);
    }
    if (mcp_hub(x, "GET", path.p, (Str){ NULL, 0 }, MCP_HUB_MS)) goto done;
    /* The envelope's notes: a full window (oldest_id, PROTOCOL §15.1) and
     * an index still catching up (pending). */
    mcp_data_one(x, "results", x->res);
    x->data.len--;
    static const char *const notes[] = { "oldest_id", "pending" };
    for (size_t i = 0; i < sizeof notes / sizeof *notes; i++) {
        uint32_t n = json_get(&x->j, 0, notes[i]);
        if (n) buf_addf(&x->data, ",\"%s\":", notes[i]), json_write(&x->data, &x->j, n);
    }
    buf_addc(&x->data, '}');
    rc = 0;
done:
    buf_free(&q), buf_free(&v), buf_free(&path);
    return rc;
}

/* ---- arc_kv: the shared memory (PROTOCOL §13) ---- */

/* One tool for the five requests, to keep the tool list short. A failed
 * compare-and-set is not an error: the answer shows the current row, so
 * the model can merge and retry; a get of a missing key says so. */

static const char *const mcp_kv_actions[] = { "get", "put", "list", "delete", "history" };

static int mcp_t_kv(McpCtx *x) {
    Buf act = { 0 }, key = { 0 }, path = { 0 }, body = { 0 }, v = { 0 };
    int rc = -1, a = -1;
    if (mcp_arg_str(x, "action", &act) < 0) goto done;
    for (int i = 0; i < 5; i++)
        if (!strcmp(buf_cstr(&act), mcp_kv_actions[i])) a = i;
    if (a < 0) {
        mcp_fail(x, "argument action must be get, put, list, delete or history");
        goto done;
    }
    buf_adds(&path, "/v1/kv");
    if (a != 2) {
        if (mcp_arg_need(x, "key", &key) < 0) goto done;
        buf_addc(&path, '/');
        cli_pct(&path, key.p);
    }
    const char *method = a == 1 ? "PUT" : a == 3 ? "DELETE" : "GET";
    Str send = { NULL, 0 };
    int64_t ver = 0;
    int has_ver = mcp_arg_int(x, "version", &ver);
    if (has_ver < 0) goto done;
    if (a == 1) {   /* put: the body */
        uint32_t val = x->args ? json_get(&x->req, x->args, "value") : 0;
        if (!val) {
            mcp_fail(x, "argument value is required to put");
            goto done;
        }
        mcp_body_begin(&body, "agent_id");
        buf_adds(&body, ",\"value\":");
        json_write(&body, &x->req, val);
        if (mcp_body_str(x, &body, "type", NULL)) goto done;
        if (has_ver) buf_addf(&body, ",\"version\":%lld", (long long)ver);
        buf_addc(&body, '}');
        send = buf_str(&body);
    } else if (a == 3) {
        agent_qparam(&path, "agent_id", g_mcp.agent);
        if (has_ver) buf_addf(&path, "&version=%lld", (long long)ver);
    } else if (a == 2) {
        static const char *const filters[] = { "prefix", "type" };
        for (int i = 0; i < 2; i++) {
            if (mcp_arg_str(x, filters[i], &v) < 0) goto done;
            if (v.len) agent_qparam(&path, filters[i], v.p);
        }
        agent_qparam(&path, "limit", "500");
    } else if (a == 4) {
        buf_adds(&path, "/history?limit=500");
    }
    if (mcp_hub(x, method, path.p, send, MCP_HUB_MS)) {
        uint32_t cur = json_get(&x->j, 0, "current");
        if (x->status == 409 && cur) {   /* lost a compare-and-set */
            x->failed = 0;
            buf_reset(&x->text);
            buf_adds(&x->data, "{\"conflict\":true,\"entry\":");
            json_write(&x->data, &x->j, cur);
            buf_addc(&x->data, '}');
            rc = 0;
        } else if (x->status == 404 && a == 0) {
            x->failed = 0;
            buf_reset(&x->text);
            buf_adds(&x->data, "{\"entry\":null}");
            rc = 0;
        }
        goto done;
    }
    mcp_data_one(x, a == 2 || a == 4 ? "entries" : "entry", x->res);
    rc = 0;
done:
    buf_free(&act), buf_free(&key), buf_free(&path), buf_free(&body), buf_free(&v);
    return rc;
}

/* ---- arc_ack, arc_receipts, arc_unanswered (PROTOCOL §17) ---- */

/* The result as compact JSON text, and as structuredContent under key. */
static void mcp_rc_answer(McpCtx *x, const char *key) {
    mcp_data_one(x, key, x->res);   /* the text is this JSON (mcp_call_done) */
}

/* The message_id argument (required, at least 1); 0 or -1 (x failed). */
static int mcp_rc_id(McpCtx *x, int64_t *id) {
    if (mcp_arg_int(x, "message_id", id) > 0 && *id >= 1) return 0;
    if (!x->failed) mcp_fail(x, "argument message_id is required");
    return -1;
}

static int mcp_t_ack(McpCtx *x) {
    int64_t id;
    if (mcp_rc_id(x, &id)) return -1;
    Buf path = { 0 }, body = { 0 };
    buf_addf(&path, "/v1/messages/%lld/ack", (long long)id);
    mcp_body_begin(&body, "agent_id");
    buf_addc(&body, '}');
    int rc = mcp_hub(x, "POST", path.p, buf_str(&body), MCP_HUB_MS);
    buf_free(&path), buf_free(&body);
    if (!rc) mcp_rc_answer(x, "receipt");
    return rc;
}

static int mcp_t_receipts(McpCtx *x) {
    int64_t id;
    if (mcp_rc_id(x, &id)) return -1;
    Buf path = { 0 };
    buf_addf(&path, "/v1/messages/%lld/receipts", (long long)id);
    int rc = mcp_hub(x, "GET", path.p, (Str){ NULL, 0 }, MCP_HUB_MS);
    buf_free(&path);
    if (rc) return -1;
    x->res = json_get(&x->j, x->res, "receipts");
    if (!x->res) return mcp_fail(x, "arc hub sent no receipts");
    mcp_rc_answer(x, "receipts");
    return 0;
}

/* What this agent owes (default), or with asked, what it is owed. */
static int mcp_t_unanswered(McpCtx *x) {
    Buf who = { 0 }, path = { 0 };
    int rc = mcp_arg_str(x, "side", &who);
    if (rc < 0) goto done;
    int asked = str_eq(buf_str(&who), "asked");
    if (who.len && !asked && !str_eq(buf_str(&who), "owe")) {
        rc = mcp_fail(x, "argument side must be owe or asked");
        goto done;
    }
    buf_adds(&path, "/v1/unanswered");
    agent_qparam(&path, asked ? "from_agent" : "agent_id", g_mcp.agent);
    rc = mcp_hub(x, "GET", path.p, (Str){ NULL, 0 }, MCP_HUB_MS);
    if (!rc) mcp_rc_answer(x, "unanswered");
done:
    buf_free(&who), buf_free(&path);
    return rc;
}

/* ---- the tool table ---- */

#define MCP_S(props, req) "{\"type\":\"object\",\"properties\":{" props "},\"required\":[" req "]}"
#define MCP_O(props) "{\"type\":\"object\",\"properties\":{" props "}}"   /* none required */
#define MCP_STR(name, desc) "\"" name "\":{\"type\":\"string\",\"description\":\"" desc "\"}"
#define MCP_INT(name, desc) "\"" name "\":{\"type\":\"integer\",\"description\":\"" desc "\"}"
#define MCP_T(name, type) "\"" name "\":{\"type\":\"" type "\"}"
#define MCP_OBJ(name) MCP_T(name, "object")
#define MCP_ARR(name) "\"" name "\":{\"type\":\"array\",\"items\":{\"type\":\"object\"}}"
#define MCP_ACTION "\"action\":{\"type\":\"string\",\"enum\":[\"acquire\",\"refresh\"," \
                   "\"release\"],\"default\":\"acquire\"}"
#define MCP_TTL MCP_INT("ttl_sec", "Lease length in seconds (default 300, at least 5).")
/* Output schemas of the results that are one hub row (the reference's
 * shapes): a message, a channel. */
#define MCP_MSG_OUT MCP_S(MCP_T("id", "integer"), "\"id\"")
#define MCP_CHANNEL_OUT MCP_S(MCP_T("name", "string"), "\"name\"")

typedef struct {
    const char *name, *title, *description;
    const char *input, *output;        /* JSON Schemas */
    int read_only, idempotent;
    int (*run)(McpCtx *);
} McpTool;

static const McpTool mcp_tools[] = {
    { "arc_post_message", "Post a message",
      "Post a message to an arc channel (or, with to_agent, a direct message). Returns the "
      "stored message.",
      MCP_S(MCP_STR("channel", "Channel name, e.g. general; must exist unless to_agent is set.") ","
            MCP_STR("body", "Message text.") ","
            "\"kind\":{\"type\":\"string\",\"default\":\"chat\",\"enum\":[\"chat\",\"task\","
            "\"task_request\",\"task_result\",\"artifact\",\"notice\",\"claim\",\"release\"]}" ","
            MCP_STR("thread_id", "Thread to post in; any string, a new one starts a thread.") ","
            MCP_STR("to_agent", "Make it a direct message to this agent.") ","
            MCP_INT("reply_to", "Id of the message this one answers.") ","
            MCP_INT("parent_task_id", "A task: the task it is a subtask of.") ","
            "\"blocked_by\":{\"type\":\"array\",\"items\":{\"type\":\"integer\"},"
            "\"description\":\"A task: ids of the tasks it waits for.\"}",
            "\"channel\",\"body\""),
      MCP_MSG_OUT, 0, 0, mcp_t_post },
    { "arc_poll_messages", "Wait for new messages",
      "Return messages you have not seen yet (broadcasts and direct messages to you, not "
      "your own), waiting up to timeout seconds for the first one. Each channel/thread "
      "filter keeps its own read position.",
      MCP_O(MCP_STR("channel", "Only this channel.") ","
            "\"timeout\":{\"type\":\"number\",\"default\":5,\"description\":\"Seconds to wait "
            "when nothing is new (0 to 50).\"}" ","
            MCP_STR("thread_id", "Only this thread.")),
      MCP_S(MCP_ARR("messages"), "\"messages\""), 1, 0, mcp_t_poll },
    { "arc_dm", "Direct message",
      "Send a direct message to another agent.",
      MCP_S(MCP_STR("to_agent", "Recipient agent id.") "," MCP_STR("body", "Message text."),
            "\"to_agent\",\"body\""),
      MCP_MSG_OUT, 0, 0, mcp_t_dm },
    { "arc_list_agents", "List live agents",
      "List the agents currently live on the hub, with their capabilities.",
      MCP_O(""), MCP_S(MCP_ARR("agents"), "\"agents\""), 1, 1, mcp_t_agents },
    { "arc_create_channel", "Create a channel",
      "Create a channel (nothing changes if it exists).",
      MCP_S(MCP_STR("name", "Channel name."), "\"name\""),
      MCP_CHANNEL_OUT, 0, 1, mcp_t_channel },
    { "arc_rpc_call", "Ask another agent and wait",
      "Send a task_request to another agent and wait for its task_result (answered with "
      "arc_task_result on their side).",
      MCP_S(MCP_STR("to_agent", "Agent to ask.") "," MCP_STR("body", "The request.") ","
            "\"timeout\":{\"type\":\"number\",\"default\":30,\"description\":\"Seconds to "
            "wait for the answer (0 to 50).\"}",
            "\"to_agent\",\"body\""),
      MCP_MSG_OUT, 0, 0, mcp_t_rpc },
    { "arc_inbox", "Read direct messages",
      "Direct messages sent to you, read or not: the newest ones, or those after since_id.",
      MCP_O(MCP_INT("since_id", "Only messages with a larger id.") ","
            MCP_INT("limit", "At most this many (default 20, up to 500).")),
      MCP_S(MCP_ARR("messages"), "\"messages\""), 1, 1, mcp_t_inbox },
    { "arc_read_thread", "Read a thread",
      "A thread's status, open tasks, claims and locks, and its messages.",
      MCP_S(MCP_STR("thread_id", "The thread.") ","
            MCP_INT("limit", "At most this many of the latest messages (default 50)."),
            "\"thread_id\""),
      MCP_S(MCP_OBJ("thread") "," MCP_ARR("messages"), "\"thread\""), 1, 1, mcp_t_thread },
    { "arc_claim", "Claim work",
      "Claim work so no one else takes it (acquire), extend the claim (refresh) or give it "
      "back (release). One held by someone else is reported (acquired false), not taken.",
      MCP_O(MCP_STR("claim_key", "What you claim, e.g. a task key; default task-<task_message_id>.") ","
            MCP_ACTION "," MCP_INT("task_message_id", "The task message being claimed.") ","
            MCP_STR("thread_id", "Thread the work belongs to.") "," MCP_TTL),
      MCP_S("\"acquired\":{\"type\":\"boolean\"}," MCP_OBJ("claim"), "\"acquired\",\"claim\""),
      0, 1, mcp_t_claim },
    { "arc_lock", "Lock a file",
      "Lock a file path before editing it (acquire), extend the lock (refresh) or unlock "
      "it (release). One held by someone else is reported (acquired false), not taken.",
      MCP_S(MCP_STR("file_path", "The path, as the team names it.") "," MCP_ACTION ","
            MCP_TTL, "\"file_path\""),
      MCP_S("\"acquired\":{\"type\":\"boolean\"}," MCP_OBJ("lock"), "\"acquired\",\"lock\""),
      0, 1, mcp_t_lock },
    { "arc_tasks", "List or complete tasks",
      "List tasks (open ones unless status says done), or mark one done with "
      "complete_task_id. A task that waits for others (blocked_by) cannot be claimed "
      "until they are done; create one with arc_post_message kind task and blocked_by.",
      MCP_O("\"status\":{\"type\":\"string\",\"enum\":[\"open\",\"done\"],\"default\":\"open\"}"
            "," MCP_STR("channel", "Only this channel.") ","
            MCP_STR("thread_id", "Only this thread.") ","
            MCP_INT("complete_task_id", "Mark this task done instead of listing.")),
      MCP_S(MCP_ARR("tasks") ",\"parent_completed\":{\"type\":\"boolean\"}"
            ",\"rolled_up\":{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}",
            "\"tasks\""),
      0, 1, mcp_t_tasks },
    { "arc_task_result", "Answer a task request",
      "Answer a task_request (e.g. from arc_rpc_call) with a task_result; this completes "
      "the task and wakes the asker.",
      MCP_S(MCP_INT("task_id", "Id of the task_request message.") ","
            MCP_STR("body", "The answer.") ","
            MCP_STR("to_agent", "Who to send it to; default: whoever asked you directly.") ","
            MCP_STR("channel", "Channel; default that of the request."),
            "\"task_id\",\"body\""),
      MCP_MSG_OUT, 0, 0, mcp_t_result },
    { "arc_whoami", "Who am I",
      "Your agent id and session, the hub, and how far you have read.",
      MCP_O(""),
      MCP_S(MCP_T("agent_id", "string") "," MCP_T("session_id", "string") ","
            MCP_T("hub", "string") "," MCP_T("cursor", "integer") "," MCP_OBJ("bootstrap"),
            "\"agent_id\""),
      1, 1, mcp_t_whoami },
    { "arc_kv", "Shared memory",
      "Team memory every agent sees: decisions, facts, constraints. get, list (by prefix or "
      "type) and history read; put writes a value (give the version you read to write only "
      "if no one changed it since: else conflict true and the current entry); delete "
      "removes a key.",
      MCP_S("\"action\":{\"type\":\"string\",\"enum\":[\"get\",\"put\",\"list\","
            "\"delete\",\"history\"]}," MCP_STR("key", "e.g. decisions/database.") ","
            "\"value\":{\"description\":\"put: any JSON value.\"},"
            "\"type\":{\"type\":\"string\",\"enum\":[\"decision\",\"fact\","
            "\"constraint\",\"artifact\",\"note\"]}," MCP_STR("prefix", "list: keys starting so.")
            "," MCP_INT("version", "put/delete: only if the key is at this version (0: absent)."),
            "\"action\""),
      MCP_O("\"entry\":{\"type\":[\"object\",\"null\"]}," MCP_ARR("entries") ","
            "\"conflict\":{\"type\":\"boolean\"}"),
      0, 0, mcp_t_kv },
    { "arc_search", "Search messages",
      "Full-text search of the messages you can see (channels and your direct messages), "
      "best match first, with a snippet of each.",
      MCP_S(MCP_STR("query", "Words that must all occur; word* matches a prefix.") ","
            MCP_STR("channel", "Only this channel.") ","
            MCP_STR("from_agent", "Only messages from this agent.") ","
            MCP_STR("kind", "Only this kind, e.g. task or artifact.") ","
            MCP_INT("limit", "At most this many (default 10, up to 100)."), "\"query\""),
      MCP_S(MCP_ARR("results") "," MCP_T("oldest_id", "integer") ","
            MCP_T("pending", "integer"), "\"results\""), 1, 1, mcp_t_search },
    { "arc_ack", "Acknowledge a message",
      "Tell the sender you got a message sent to you (it may ask: metadata.ack_required).",
      MCP_S(MCP_INT("message_id", "The message."), "\"message_id\""),
      MCP_S(MCP_OBJ("receipt"), "\"receipt\""), 0, 1, mcp_t_ack },
    { "arc_receipts", "Message receipts",
      "Per recipient of a message: queued, surfaced, read, acked or answered, with times.",
      MCP_S(MCP_INT("message_id", "The message."), "\"message_id\""),
      MCP_S(MCP_ARR("receipts"), "\"receipts\""), 1, 1, mcp_t_receipts },
    { "arc_unanswered", "Unanswered requests",
      "Requests and ack-required messages still waiting: those you owe, or with side "
      "asked, those you sent.",
      MCP_S("\"side\":{\"type\":\"string\",\"enum\":[\"owe\",\"asked\"],"
            "\"default\":\"owe\"}", ""),
      MCP_S(MCP_ARR("unanswered"), "\"unanswered\""), 1, 1, mcp_t_unanswered },
};

static const char mcp_instructions[] =
    "arc connects you with the other coding agents working on this project. You are "
    "registered as one agent and stay present while this server runs. Check for news with "
    "arc_poll_messages (it waits briefly when nothing is new), talk with arc_post_message "
    "and arc_dm, ask another agent and wait for the answer with arc_rpc_call, and answer "
    "requests sent to you with arc_task_result. Before working on a shared task, claim it "
    "with arc_claim; before editing a file others may edit, take arc_lock; release both "
    "when done. Record decisions, facts and constraints the team must share with arc_kv, "
    "and read it before deciding.";

static const McpTool *mcp_tool(Str name) {
    for (size_t i = 0; i < sizeof mcp_tools / sizeof *mcp_tools; i++)
        if (str_eq(name, mcp_tools[i].name)) return &mcp_tools[i];
    return NULL;
}

/* tools/list, shaped for the request's protocol version. */
static void mcp_tools_json(Buf *b, const char *version) {
    buf_adds(b, "[");
    for (size_t i = 0; i < sizeof mcp_tools / sizeof *mcp_tools; i++) {
        const McpTool *t = &mcp_tools[i];
        buf_addf(b, "%s{\"name\":\"%s\"", i ? "," : "", t->name);
        if (mcp_has(version, "2025-06-18")) buf_addf(b, ",\"title\":\"%s\"", t->title);
        buf_adds(b, ",\"description\":");
        json_cstr(b, t->description);
        buf_addf(b, ",\"inputSchema\":%s", t->input);
        if (mcp_has(version, "2025-06-18")) buf_addf(b, ",\"outputSchema\":%s", t->output);
        /* Hints at their spec defaults (readOnlyHint and idempotentHint
         * false) are left out, and so is the title where the tool has one
         * of its own: every character is sent to the model. */
        if (mcp_has(version, "2025-03-26")) {
            buf_adds(b, ",\"annotations\":{");
            if (!mcp_has(version, "2025-06-18")) buf_addf(b, "\"title\":\"%s\",", t->title);
            if (t->read_only) buf_adds(b, "\"readOnlyHint\":true,");
            if (t->idempotent && !t->read_only) buf_adds(b, "\"idempotentHint\":true,");
            buf_adds(b, "\"destructiveHint\":false,\"openWorldHint\":false}");
        }
        buf_addc(b, '}');
    }
    buf_addc(b, ']');
}

/* ---- running a tool call ---- */

/* One JSON-RPC request or notification, as its method's handler gets it:
 * id is the request id's JSON text (empty for a notification), version the
 * protocol version it is answered in (mcp_admit). All borrowed
 * for the length of the call. */
typedef struct {
    McpIo *io;             /* where the answer goes, what it acts on */
    Str id;
    const Json *j;
    uint32_t m, params;    /* the message and its params (0: none) */
    Str msg;               /* the message's text */
    const char *version;   /* requests only */
} McpReq;

static void mcp_run_free(McpRun *run) {
    buf_free(&run->id);
    buf_free(&run->progress);
    for (int i = 0; i < run->n_writes; i++) free(run->writes[i].body);
    free(run->writes);
    free(run);
}

/* Take run out of McpHub.runs (if it is there) and free it. */
static void mcp_run_drop(McpHub *mh, McpRun *run) {
    for (McpRun **pp = &mh->runs; *pp; pp = &(*pp)->next)
        if (*pp == run) {
            *pp = run->next;
            break;
        }
    mcp_run_free(run);
}

/* A tool's result (docs/MCP.md, "Tools") is JSON: structuredContent is
 * x->data, an object, and content[0].text its compact serialization, so a
 * client that shows the model only the text shows the same thing. The
 * reference's tools return its hub result as it is; where that is a list
 * (arc_poll_messages, arc_list_agents) the text is the list itself, as the
 * reference's, and structuredContent, which must be an object, holds it
 * under one key. */
static void mcp_tool_answer(McpIo *io, Str id, const char *version, McpCtx *x) {
    Buf b = { 0 };
    mcp_result_begin(&b, id, version);
    mcp_member(&b, "content");
    buf_adds(&b, "[{\"type\":\"text\",\"text\":");
    /* An error's message, else the result's JSON (mcp_data_obj). */
    json_strs(&b, buf_str(x->failed || x->text.len ? &x->text : &x->data));
    buf_adds(&b, "}]");
    if (x->failed) {
        mcp_member(&b, "isError");
        buf_adds(&b, "true");
    } else if (x->data.len && mcp_has(version, "2025-06-18")) {
        mcp_member(&b, "structuredContent");
        buf_addstr(&b, buf_str(&x->data));
    }
    mcp_result_end(io, &b);
}

/* Run a validated tools/call: the message is rq's. In the hub the call
 * gets an McpRun (io->run when it is run again after a wait) and acts
 * for io->st's agent through g_mcp; if it parks, io says so and the run
 * is kept, else it is answered and the run dropped. */
static void mcp_run_tool(const McpReq *rq, const McpTool *tool) {
    McpIo *io = rq->io;
    McpCtx x = { .io = io };
    McpHub *mh = io->h ? io->h->mcp : NULL;
    if (mh && io->run) {
        x.run = io->run;
    } else if (mh) {
        x.run = xrealloc(NULL, sizeof *x.run);
        *x.run = (McpRun){ .serial = ++mh->next_serial, .st = io->st, .next = mh->runs };
        mh->runs = x.run;
        buf_addstr(&x.run->id, rq->id);
        uint32_t meta = json_get(rq->j, rq->params, "_meta");
        uint32_t tok = meta ? json_get_val(rq->j, meta, "progressToken") : 0;
        if (tok) json_write(&x.run->progress, rq->j, tok);
    }
    /* The dispatcher checked the shape: arguments, if present, is an
     * object. The tools read the request through x.req. */
    json_parse(&x.req, rq->msg.p, rq->msg.n);
    uint32_t params = json_get(&x.req, 0, "params");
    x.args = json_get_val(&x.req, params, "arguments");
    if (mh) {
        McpState *st = io->st;
        g_mcp.agent = st->agent;
        snprintf(g_mcp.session_id, sizeof g_mcp.session_id, "%s", st->arc_session);
        g_mcp.cursor = st->cursor;
        g_mcp.cursors = &st->cursors;
        g_mcp.relay_dir = io->q->relayed ? io->h->spool_path : NULL;
        g_mcp.url = mh->url;
    }
    if (tool->run(&x) && !x.failed && !x.parked) mcp_fail(&x, "%s failed", tool->name);
    if (mh) io->st->cursor = g_mcp.cursor;
    if (x.parked) {
        io->parked = 1;
        io->run = x.run;
    } else {
        mcp_tool_answer(io, rq->id, rq->version, &x);
        if (x.run) {
            if (io->run == x.run) io->run = NULL;
            mcp_run_drop(mh, x.run);
        }
    }
    json_free(&x.req);
    json_free(&x.j);
    buf_free(&x.out), buf_free(&x.text), buf_free(&x.data);
}

/* A call ended from outside: loop_mcp_cancels runs it once more. */
static void mcp_cancel_push(McpHub *mh, uint64_t serial) {
    if (mh->n_cancel == mh->cap_cancel)
        mh->cancel = vec_grow(mh->cancel, &mh->cap_cancel, sizeof *mh->cancel);
    mh->cancel[mh->n_cancel++] = serial;
}

/* notifications/cancelled in the hub: end the call of io's state with
 * this id. Its request runs once more (loop_mcp_cancels) to end its HTTP
 * answer without a JSON-RPC one (hub_mcp). */
static void mcp_hub_cancel(McpIo *io, Str id) {
    McpHub *mh = io->h->mcp;
    for (McpRun *run = mh->runs; run; run = run->next) {
        if (run->st != io->st || run->cancelled || !str_eq(id, buf_cstr(&run->id)))
            continue;
        mcp_cancel_push(mh, run->serial);
        run->cancelled = 1;
        return;
    }
}

/* ---- dispatch ---- */

/* The body field Mcp-Name mirrors for a method, or NULL (SEP-2243, and
 * SEP-2663 for tasks). */
static const char *mcp_name_field(const char *method) {
    static const char *const t[][2] = {
        { "tools/call", "name" }, { "prompts/get", "name" }, { "resources/read", "uri" },
        { "tasks/get", "taskId" }, { "tasks/update", "taskId" }, { "tasks/cancel", "taskId" },
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        if (!strcmp(method, t[i][0])) return t[i][1];
    return NULL;
}

#define MCP_META_V "io.modelcontextprotocol/protocolVersion"
#define MCP_META_CAPS "io.modelcontextprotocol/clientCapabilities"

/* Admit a request (not a notification) to its method: the checks the
 * stateless revision makes first, in the order of the official SDK
 * (docs/MCP.md, "Errors"): a _meta that claims a version must be whole
 * (-32602), and so must _meta be under a 2026-07-28 MCP-Protocol-Version
 * header; the headers must agree with the body (-32020); the version must
 * be one we speak (-32022). All answer with HTTP 400. A request is answered
 * in its _meta's version, else the header's, else io's (negotiated), else
 * the newest handshake one, which goes to version. Returns 0, or -1 after
 * answering the request with the error. */
static int mcp_admit(McpIo *io, const McpReq *rq, const char *method, char version[16]) {
    const Json *j = rq->j;
    uint32_t meta = rq->params ? json_get(j, rq->params, "_meta") : 0;
    uint32_t v = meta ? json_get(j, meta, MCP_META_V) : 0;
    uint32_t caps = meta ? json_get(j, meta, MCP_META_CAPS) : 0;
    uint32_t info = meta ? json_get(j, meta, "io.modelcontextprotocol/clientInfo") : 0;
    const char *field = mcp_name_field(method);
    uint32_t named = field && rq->params ? json_get(j, rq->params, field) : 0;
    Buf want = { 0 }, name = { 0 }, data = { 0 };
    const char *why = NULL;
    int code = MCP_HEADER_MISMATCH, rc = -1, on_name = 0;
    if (v && (j->t[v].type != JSON_STR || !caps || j->t[caps].type != JSON_OBJ ||
              (info && j->t[info].type != JSON_OBJ))) {
        code = MCP_BAD_PARAMS;
        why = "Invalid params: _meta needs a string " MCP_META_V " and an " MCP_META_CAPS
              " object";
    } else if (!v && str_eq(io->hdr_version, MCP_V_STATELESS)) {
        code = MCP_BAD_PARAMS;
        why = "Invalid params: a " MCP_V_STATELESS " request needs _meta with "
              MCP_META_V " and " MCP_META_CAPS;
    }
    if (v && !why) json_unescape(j, v, &want);
    else if (io->hdr_version.n) buf_addstr(&want, io->hdr_version);
    else buf_adds(&want, io->version[0] ? io->version : MCP_V_LEGACY);
    if (named && j->t[named].type == JSON_STR) json_unescape(j, named, &name);
    if (why) {
        /* the envelope is answered first */
    } else if (v && io->hdr_version.n && !str_eq(io->hdr_version, buf_cstr(&want))) {
        why = "the MCP-Protocol-Version header does not match _meta's " MCP_META_V;
    } else if (io->hdr_method.n && !str_eq(io->hdr_method, method)) {
        why = "the Mcp-Method header does not match the body's method";
    } else if (io->headers && v && io->hdr_version.n && !io->hdr_method.n) {
        why = "an Mcp-Method header is required";
    } else if (!mcp_known_version(buf_cstr(&want)) || want.len != strlen(buf_cstr(&want))) {
        code = MCP_BAD_VERSION;
        why = "Unsupported protocol version";
        buf_adds(&data, "{\"supported\":");
        mcp_versions_json(&data);
        buf_adds(&data, ",\"requested\":");
        json_strs(&data, buf_str(&want));
        buf_addc(&data, '}');
    } else if (named && io->hdr_name.n && j->t[named].type == JSON_STR &&
               !str_eq(io->hdr_name, buf_cstr(&name))) {
        why = "the Mcp-Name header does not match the body's params.";
        on_name = 1;
    } else if (named && j->t[named].type == JSON_STR && io->hdr_method.n && !io->hdr_name.n) {
        why = "an Mcp-Name header is required: the body has params.";
        on_name = 1;
    }
    if (why) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s%s", why, on_name ? field : "");
        mcp_reject(io, rq->id, 400, code, msg, data.len ? data.p : NULL);
        goto done;
    }
    snprintf(version, 16, "%s", buf_cstr(&want));
    rc = 0;
done:
    buf_free(&want), buf_free(&name), buf_free(&data);
    return rc;
}

/* What the channel mode adds to the instructions (docs/MCP.md, "Claude Code
 * channels"). */
static const char mcp_channel_instructions[] =
    " Messages owed to you (direct messages, requests, mentions of @you, replies to you) "
    "also arrive by themselves, each once, as <channel source=\"arc\"> events whose "
    "attributes say who sent it (from_agent), why you get it (reason) and its message_id; "
    "answer one with arc_post_message (to_agent, or reply_to the message_id).";

/* capabilities, serverInfo and instructions. `channel`: the bridge's
 * channel mode, which adds Claude Code's experimental claude/channel. */
static void mcp_server_info(Buf *b, const char *version, int channel) {
    mcp_member(b, "capabilities");
    buf_adds(b, "{\"tools\":{\"listChanged\":false}");
    if (channel) buf_adds(b, ",\"experimental\":{\"claude/channel\":{}}");
    buf_addc(b, '}');
    mcp_member(b, "serverInfo");
    buf_adds(b, "{\"name\":\"arc\",\"version\":\"" ARC_VERSION "\"");
    if (mcp_has(version, "2025-06-18")) buf_adds(b, ",\"title\":\"arc coordination hub\"");
    buf_addc(b, '}');
    mcp_member(b, "instructions");
    if (channel) {
        Buf t = { 0 };
        buf_adds(&t, mcp_instructions);
        buf_adds(&t, mcp_channel_instructions);
        json_strs(b, buf_str(&t));
        buf_free(&t);
    } else {
        json_cstr(b, mcp_instructions);
    }
}

static void mcp_m_initialize(const McpReq *rq) {
    const Json *j = rq->j;
    uint32_t pv = rq->params ? json_get(j, rq->params, "protocolVersion") : 0;
    Buf want = { 0 };
    if (pv && j->t[pv].type == JSON_STR) json_unescape(j, pv, &want);
    /* The stateless revision has no handshake; a client asking for it in
     * initialize gets the newest version that has one. */
    const char *v = mcp_known_version(buf_cstr(&want)) && strcmp(want.p, MCP_V_STATELESS)
                        ? want.p : MCP_V_LEGACY;
    snprintf(rq->io->version, sizeof rq->io->version, "%s", v);
    rq->io->negotiated = 1;
    Buf b = { 0 };
    mcp_result_begin(&b, rq->id, v);
    mcp_member(&b, "protocolVersion");
    json_cstr(&b, v);
    mcp_server_info(&b, v, rq->io->channel);
    mcp_result_end(rq->io, &b);
    buf_free(&want);
}

static void mcp_m_ping(const McpReq *rq) {
    Buf b = { 0 };
    mcp_result_begin(&b, rq->id, rq->version);
    mcp_result_end(rq->io, &b);
}

/* server/discover (2026-07-28): answered in the stateless revision always. */
static void mcp_m_discover(const McpReq *rq) {
    Buf b = { 0 };
    mcp_result_begin(&b, rq->id, MCP_V_STATELESS);
    mcp_member(&b, "supportedVersions");
    mcp_versions_json(&b);
    mcp_server_info(&b, MCP_V_STATELESS, 0);
    mcp_cache_hint(&b, MCP_V_STATELESS);
    mcp_result_end(rq->io, &b);
}

static void mcp_m_tools_list(const McpReq *rq) {
    Buf b = { 0 };
    mcp_result_begin(&b, rq->id, rq->version);
    mcp_member(&b, "tools");
    mcp_tools_json(&b, rq->version);
    mcp_cache_hint(&b, rq->version);
    mcp_result_end(rq->io, &b);
}

/* tools/call: check the name and arguments here, so a bad call is answered
 * at once; a good one runs (mcp_run_tool). */
static void mcp_m_tools_call(const McpReq *rq) {
    const Json *j = rq->j;
    uint32_t tn = rq->params ? json_get(j, rq->params, "name") : 0;
    uint32_t args = rq->params ? json_get_val(j, rq->params, "arguments") : 0;
    Buf tname = { 0 };
    const McpTool *tool = NULL;
    if (tn && j->t[tn].type == JSON_STR) json_unescape(j, tn, &tname);
    if (rq->io->h && !rq->io->st)   /* the hub answered without an agent */
        mcp_reject(rq->io, rq->id, 400, MCP_INVALID, rq->io->no_call, NULL);
    else if (!tn || j->t[tn].type != JSON_STR)
        mcp_error(rq->io, rq->id, MCP_BAD_PARAMS, "Invalid params: name (a string) is required",
                  NULL);
    else if (!(tool = mcp_tool(buf_str(&tname))) || tname.len != strlen(tname.p)) {
        Buf e = { 0 };
        buf_adds(&e, "Unknown tool: ");
        buf_addstr(&e, buf_str(&tname));
        mcp_error(rq->io, rq->id, MCP_BAD_PARAMS, e.p, NULL);
        buf_free(&e);
    } else if (args && j->t[args].type != JSON_OBJ)
        mcp_error(rq->io, rq->id, MCP_BAD_PARAMS, "Invalid params: arguments must be an object",
                  NULL);
    else
        mcp_run_tool(rq, tool);
    buf_free(&tname);
}

/* notifications/cancelled: cancel the call with that requestId (in the
 * hub; the bridge cancels its own before it forwards this). */
static void mcp_m_cancelled(const McpReq *rq) {
    uint32_t rid = rq->params ? json_get(rq->j, rq->params, "requestId") : 0;
    if (!rid || !rq->io->h || !rq->io->h->mcp || !rq->io->st) return;
    Buf r = { 0 };
    json_write(&r, rq->j, rid);
    mcp_hub_cancel(rq->io, buf_str(&r));
    buf_free(&r);
}

#define MCP_NOTE 1u        /* a notification: handled, never answered */
#define MCP_HANDSHAKE 2u   /* not in the stateless revision (2026-07-28) */

/* The methods arc answers, and the notifications it acts on; other
 * notifications (initialized, progress, roots/list_changed ...) are
 * ignored, other requests get "Method not found". Nothing waits for
 * initialize: the stateless revision (2026-07-28) has no handshake, and
 * older clients are served before it too. */
typedef struct {
    const char *name;
    void (*run)(const McpReq *rq);
    unsigned flags;        /* MCP_NOTE, MCP_HANDSHAKE */
} McpMethod;

static const McpMethod mcp_methods[] = {
    { "initialize",              mcp_m_initialize, MCP_HANDSHAKE },
    { "ping",                    mcp_m_ping,       MCP_HANDSHAKE },
    { "server/discover",         mcp_m_discover,   0 },
    { "tools/list",              mcp_m_tools_list, 0 },
    { "tools/call",              mcp_m_tools_call, 0 },
    { "notifications/cancelled", mcp_m_cancelled,  MCP_NOTE },
};

/* The entry for a request (note 0) or a notification (note 1), or NULL. A
 * method name is compared as a C string, up to any NUL in it. */
static const McpMethod *mcp_method(const char *name, int note) {
    for (size_t i = 0; i < sizeof mcp_methods / sizeof *mcp_methods; i++)
        if (!(mcp_methods[i].flags & MCP_NOTE) == !note && !strcmp(mcp_methods[i].name, name))
            return &mcp_methods[i];
    return NULL;
}

/* A JSON-RPC message (object token m of j, whose text is msg): check the
 * envelope, then run its method from mcp_methods. Requests get exactly one
 * answer into io (unless their call parks); notifications none. */
static void mcp_dispatch(McpIo *io, const Json *j, uint32_t m, Str msg) {
    uint32_t idt = j->t[m].type == JSON_OBJ ? json_get(j, m, "id") : 0;
    uint32_t method = j->t[m].type == JSON_OBJ ? json_get(j, m, "method") : 0;
    int notification = j->t[m].type == JSON_OBJ && !idt;
    /* A response (to a request we never send) or junk: nothing to answer. */
    if (j->t[m].type == JSON_OBJ && !method &&
        (notification || json_get(j, m, "result") || json_get(j, m, "error")))
        return;
    Buf idb = { 0 }, name = { 0 };
    if (idt && (j->t[idt].type == JSON_STR || j->t[idt].type == JSON_NUM))
        json_write(&idb, j, idt);
    Str id = buf_str(&idb);
    uint32_t jv = j->t[m].type == JSON_OBJ ? json_get(j, m, "jsonrpc") : 0;
    uint32_t params = j->t[m].type == JSON_OBJ ? json_get(j, m, "params") : 0;
    char version[16];
    if (j->t[m].type != JSON_OBJ || !jv || !json_str_is(j, jv, str_c("2.0")) ||
        (idt && !idb.len) || !method || j->t[method].type != JSON_STR) {
        if (!notification)
            mcp_error(io, id, MCP_INVALID, "Invalid Request: want a JSON-RPC 2.0 object "
                      "with a string method and a string or number id", NULL);
        goto done;
    }
    json_unescape(j, method, &name);
    if (params && j->t[params].type != JSON_OBJ) {
        if (!notification)
            mcp_error(io, id, MCP_BAD_PARAMS, "Invalid params: params must be an object", NULL);
        goto done;
    }
    McpReq rq = { .io = io, .id = id, .j = j, .m = m, .params = params, .msg = msg,
                  .version = version };
    const McpMethod *mt = mcp_method(buf_cstr(&name), notification);
    if (notification) {
        if (mt) mt->run(&rq);
        goto done;
    }
    if (mcp_admit(io, &rq, buf_cstr(&name), version)) goto done;
    /* The stateless revision removed the handshake's methods. */
    if (mt && (mt->flags & MCP_HANDSHAKE) && !strcmp(version, MCP_V_STATELESS)) mt = NULL;
    if (mt) {
        mt->run(&rq);
    } else {
        Buf e = { 0 };
        buf_adds(&e, "Method not found: ");
        buf_addstr(&e, buf_str(&name));
        mcp_reject(io, id, strcmp(version, MCP_V_STATELESS) ? 0 : 404, MCP_NO_METHOD, e.p,
                   NULL);
        buf_free(&e);
    }
done:
    buf_free(&idb), buf_free(&name);
}

/* One framed message: a request, a notification or (where the version has
 * them, 2025-03-26 only) a batch, whose answers become one array. The
 * answers are in io->out (empty: nothing to answer, or a call parked). */
static void mcp_handle(McpIo *io, Str msg) {
    Json j = { 0 };
    if (json_parse(&j, msg.p, msg.n)) {
        char e[ARC_ERRLEN + 16];
        snprintf(e, sizeof e, "Parse error: %s", j.err);
        mcp_error(io, (Str){ NULL, 0 }, MCP_PARSE, e, NULL);
    } else if (j.t[0].type != JSON_ARR) {
        mcp_dispatch(io, &j, 0, msg);
    } else if (strcmp(io->version, "2025-03-26") || j.t[0].n == 0) {
        mcp_error(io, (Str){ NULL, 0 }, MCP_INVALID, j.t[0].n
                  ? "Invalid Request: batches exist only in protocol version 2025-03-26"
                  : "Invalid Request: empty batch", NULL);
    } else {
        io->batch = 1;
        uint32_t e = 1;
        for (uint32_t i = 0; i < j.t[0].n; i++, e = j.t[e].next)
            mcp_dispatch(io, &j, e, (Str){ msg.p + j.t[e].off, j.t[e].len });
        if (io->out.len) buf_addc(&io->out, ']');
    }
    json_free(&j);
}

/* ---- the hub's /mcp (docs/MCP.md) ---- */

/* Hub.mcp, made on first use. */
static McpHub *mcp_hub_get(Hub *h) {
    if (h->mcp) return h->mcp;
    h->mcp = xrealloc(NULL, sizeof *h->mcp);
    *h->mcp = (McpHub){ 0 };
    int v6 = strchr(h->cfg.host, ':') != NULL;
    snprintf(h->mcp->url, sizeof h->mcp->url, "http://%s%s%s:%d", v6 ? "[" : "",
             h->cfg.host, v6 ? "]" : "", h->cfg.port);
    return h->mcp;
}

static void mcp_state_free(McpState *st) {
    free(st->agent);
    free(st->display_name);
    free(st->caps);
    mcp_cursors_free(&st->cursors);
    free(st);
}

/* End st: its parked calls are cancelled (and no longer st's), then it
 * is freed. */
static void mcp_state_drop(McpHub *mh, McpState *st) {
    for (McpRun *run = mh->runs; run; run = run->next) {
        if (run->st != st) continue;
        run->st = NULL;
        if (!run->cancelled) mcp_cancel_push(mh, run->serial);
        run->cancelled = 1;
    }
    for (McpState **pp = &mh->states; *pp; pp = &(*pp)->next)
        if (*pp == st) {
            *pp = st->next;
            break;
        }
    mh->n_states--;
    mcp_state_free(st);
}

/* States unused for the presence TTL lapse, as the session of an agent
 * that stopped polling would (PROTOCOL §9), unless a call of theirs is
 * parked: waiting is presence. */
static void mcp_hub_sweep(Hub *h, int64_t now) {
    McpHub *mh = h->mcp;
    int64_t ttl = h->cfg.presence_ttl_s * 1000;
    for (McpState *st = mh->states, *next; st; st = next) {
        next = st->next;
        int parked = 0;
        for (McpRun *run = mh->runs; run && !parked; run = run->next) parked = run->st == st;
        if (!parked && now - st->used_ms >= ttl) mcp_state_drop(mh, st);
    }
}

/* The loop freed a conn that held a parked call: forget the call. */
static void mcp_hub_forget(Hub *h, uint64_t call) {
    if (!h->mcp) return;
    for (McpRun *run = h->mcp->runs; run; run = run->next)
        if (run->serial == call) {
            mcp_run_drop(h->mcp, run);
            return;
        }
}

/* The next call to end without an answer, or 0 (loop_mcp_cancels). */
static uint64_t mcp_hub_cancelled(Hub *h) {
    if (!h->mcp || !h->mcp->n_cancel) return 0;
    return h->mcp->cancel[--h->mcp->n_cancel];
}

static void mcp_hub_free(Hub *h) {
    McpHub *mh = h->mcp;
    if (!mh) return;
    while (mh->runs) mcp_run_drop(mh, mh->runs);
    for (McpState *st = mh->states, *next; st; st = next) {
        next = st->next;
        mcp_state_free(st);
    }
    free(mh->cancel);
    free(mh);
    h->mcp = NULL;
}

/* Does the one-parameter query `sql` find a row for `arg`? */
static int mcp_sql_found(Hub *h, const char *sql, const char *arg) {
    sqlite3_stmt *s = store_stmt(&h->store, sql);
    if (!s) return 0;
    store_bind_c(s, 1, arg);
    int found = sqlite3_step(s) == SQLITE_ROW;
    sqlite3_reset(s);
    return found;
}

/* Register st's agent (replacing an earlier session of it, as `arc mcp`
 * always did) and start its cursor at the newest message it can see, as
 * the reference's quickstart does: a fresh agent should not replay
 * history. Registering again only moves the cursor back (a hub that
 * restarted on fresh storage has smaller ids). Returns 0 or -1. */
static int mcp_state_register(Hub *h, Req *q, McpState *st) {
    Buf body = { 0 }, out = { 0 }, path = { 0 }, sid = { 0 };
    Json j = { 0 };
    uint32_t r, v;
    int rc = -1;
    int64_t latest = -1;
    buf_adds(&body, "{\"agent_id\":");
    json_cstr(&body, st->agent);
    buf_adds(&body, ",\"replace\":true,\"display_name\":");
    json_cstr(&body, st->display_name ? st->display_name : st->agent);
    if (st->caps) {
        buf_adds(&body, ",\"capabilities\":[");
        for (const char *p = st->caps; *p;) {
            size_t k = strcspn(p, ",");
            Str cap = str_trim((Str){ p, k });
            if (cap.n) {
                if (body.p[body.len - 1] != '[') buf_addc(&body, ',');
                json_strs(&body, cap);
            }
            p += k + (p[k] == ',');
        }
        buf_addc(&body, ']');
    }
    if (st->pid)
        buf_addf(&body, ",\"pid\":%lld,\"pid_start\":%lld", (long long)st->pid,
                 (long long)st->pid_start);
    buf_addc(&body, '}');
    int status = mcp_local(h, q, "POST", "/v1/sessions", buf_str(&body), &out, NULL);
    if ((status != 200 && status != 201) || json_parse(&j, buf_cstr(&out), out.len) ||
        !(r = json_get(&j, 0, "result")) || !(v = json_get(&j, r, "session_id")))
        goto done;
    json_unescape(&j, v, &sid);
    snprintf(st->arc_session, sizeof st->arc_session, "%s", buf_cstr(&sid));
    json_free(&j);
    buf_adds(&path, "/v1/bootstrap");
    agent_qparam(&path, "agent_id", st->agent);
    if (mcp_local(h, q, "GET", path.p, (Str){ NULL, 0 }, &out, NULL) == 200 &&
        json_parse(&j, buf_cstr(&out), out.len) == 0 && (r = json_get(&j, 0, "result")) &&
        (v = json_get(&j, r, "latest_visible_id")))
        json_to_i64(&j, v, &latest);
    if (latest >= 0 && (st->cursor < 0 || latest < st->cursor)) {
        st->cursor = latest;
        for (McpCursor *k = st->cursors.newest; k; k = k->older)
            if (k->since > latest) k->since = latest;
    }
    rc = 0;
done:
    json_free(&j);
    buf_free(&body), buf_free(&out), buf_free(&path), buf_free(&sid);
    return rc;
}

/* Keep st's agent present (PROTOCOL §9): touch it on every request and,
 * every third of the presence TTL, make sure its session still is. One
 * that expired, or a hub that restarted on other storage, gets a new one,
 * unless another session of the agent is live: another process took the
 * name, and st does not take it back. */
static void mcp_state_live(Hub *h, Req *q, McpState *st, int64_t now) {
    static const char q_mine[] = "SELECT 1 FROM sessions WHERE session_id=? AND active=1";
    static const char q_any[] = "SELECT 1 FROM sessions WHERE agent_id=? AND active=1";
    Req tq = { .method = STR_LIT("TOUCH") };
    Res tr = { .status = 200 };
    hub_touch(h, &tq, &tr, str_c(st->agent));
    hub_tx_end(h, &tq, tr.status < 400);
    if (tq.busy) q->busy = 1;
    req_free(&tq);
    res_free(&tr);
    if (st->arc_session[0] && now - st->checked_ms < h->cfg.presence_ttl_s * 1000 / 3)
        return;
    st->checked_ms = now;
    if (st->arc_session[0] && (mcp_sql_found(h, q_mine, st->arc_session) ||
                               mcp_sql_found(h, q_any, st->agent)))
        return;
    mcp_state_register(h, q, st);
}

/* Another state of st's agent still in use: a call of its parked, or a
 * request within half the presence TTL (`arc mcp` beats every third of
 * it), so one whose process died without ending it does not count for
 * long. NULL if none. */
static McpState *mcp_state_heir(Hub *h, McpState *st, int64_t now) {
    McpHub *mh = h->mcp;
    for (McpState *o = mh->states; o; o = o->next) {
        if (o == st || strcmp(o->agent, st->agent)) continue;
        if (now - o->used_ms < h->cfg.presence_ttl_s * 1000 / 2) return o;
        for (McpRun *run = mh->runs; run; run = run->next)
            if (run->st == o) return o;
    }
    return NULL;
}

/* DELETE of st: the agent leaves, as at the end of `arc mcp`: its arc
 * session ends (PROTOCOL §17.5: offline), unless another state of the
 * agent is in use (another process: two `arc mcp` overlapping, or an HTTP
 * client), which keeps it, and ends it in turn when it leaves. */
static void mcp_state_leave(Hub *h, Req *q, McpState *st, int64_t now) {
    static const char q_mine[] = "SELECT 1 FROM sessions WHERE session_id=? AND active=1";
    if (!st->arc_session[0]) return;
    McpState *heir = mcp_state_heir(h, st, now);
    if (heir) {
        if (!(heir->arc_session[0] && mcp_sql_found(h, q_mine, heir->arc_session)))
            memcpy(heir->arc_session, st->arc_session, sizeof heir->arc_session);
        return;
    }
    Buf path = { 0 }, out = { 0 };
    buf_adds(&path, "/v1/sessions/");
    cli_pct(&path, st->arc_session);
    mcp_local(h, q, "DELETE", path.p, (Str){ NULL, 0 }, &out, NULL);
    buf_free(&path), buf_free(&out);
}

/* A new state for agent (sid "" for the agent's own), or NULL past
 * MCP_MAX_STATES. */
static McpState *mcp_state_new(Hub *h, Req *q, const char *agent, int session) {
    McpHub *mh = h->mcp;
    if (mh->n_states >= MCP_MAX_STATES) return NULL;
    McpState *st = xrealloc(NULL, sizeof *st);
    *st = (McpState){ .agent = xstrndup(agent, strlen(agent)), .cursor = -1,
                      .next = mh->states };
    if (session) {
        unsigned char rnd[16];
        rand_bytes(rnd, sizeof rnd);
        for (int i = 0; i < 16; i++) snprintf(st->sid + 2 * i, 3, "%02x", rnd[i]);
    }
    Buf v = { 0 };
    if (http_query_get(q->query, "display_name", &v) > 0 && v.len)
        st->display_name = xstrndup(v.p, v.len);
    buf_reset(&v);
    if (http_query_get(q->query, "capabilities", &v) > 0 && v.len)
        st->caps = xstrndup(v.p, v.len);
    buf_reset(&v);
    if (http_query_get(q->query, "pid", &v) > 0 && v.len) st->pid = strtoll(v.p, NULL, 10);
    buf_reset(&v);
    if (http_query_get(q->query, "pid_start", &v) > 0 && v.len)
        st->pid_start = strtoll(v.p, NULL, 10);
    if (st->pid < 2 || st->pid > INT32_MAX || st->pid_start < 0) st->pid = st->pid_start = 0;
    buf_free(&v);
    mh->states = st;
    mh->n_states++;
    return st;
}

/* The state of session sid, or with sid "" the agent's own. */
static McpState *mcp_state_find(McpHub *mh, const char *sid, const char *agent) {
    for (McpState *st = mh->states; st; st = st->next)
        if (*sid ? !strcmp(st->sid, sid) : !st->sid[0] && !strcmp(st->agent, agent))
            return st;
    return NULL;
}

/* A refusal before any JSON-RPC message is handled: a JSON-RPC error in
 * an HTTP error status, with the request's id when it is known. */
static void mcp_http_fail(Res *r, int status, int code, const char *msg, const Buf *id) {
    r->status = status;
    buf_reset(&r->body);
    buf_adds(&r->body, "{\"jsonrpc\":\"2.0\",");
    if (id && id->len) buf_adds(&r->body, "\"id\":"), buf_addstr(&r->body, buf_str(id)),
        buf_addc(&r->body, ',');
    buf_addf(&r->body, "\"error\":{\"code\":%d,\"message\":", code);
    json_cstr(&r->body, msg);
    buf_adds(&r->body, "}}");
}

/* An agent id as X-Arc-Agent or ?agent= gives it: 1 to 128 bytes of
 * UTF-8, no control characters, no blanks around it. */
static int mcp_agent_ok(Str a) {
    if (!a.n || a.n > 128 || !utf8_valid(a.p, a.n) || str_trim(a).n != a.n) return 0;
    for (size_t i = 0; i < a.n; i++)
        if ((unsigned char)a.p[i] < 0x20 || a.p[i] == 0x7f) return 0;
    return 1;
}

/* Does hay contain needle, ignoring ASCII case? */
static int mcp_has_ci(Str hay, const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= hay.n; i++)
        if (str_ieq((Str){ hay.p + i, n }, needle)) return 1;
    return 0;
}

/* What the hub must know of a POST's body before dispatching it: the
 * first message's method (a string, or empty) and id, and whether it is a
 * request, is in the stateless era, or calls a tool. */
typedef struct {
    Buf method;           /* the first message's method */
    Buf id;               /* ... and its id's JSON, if a string or number */
    int request;          /* some message has an id and a method */
    int call;             /* some message is a tools/call request */
    int stateless;        /* _meta carries a protocol version, or discover */
} McpPeek;

static void mcp_peek(const Json *j, McpPeek *pk) {
    uint32_t n = j->t[0].type == JSON_ARR ? j->t[0].n : 1, m = j->t[0].type == JSON_ARR;
    for (uint32_t i = 0; i < n; i++, m = j->t[m].next) {
        if (j->t[m].type != JSON_OBJ) continue;
        uint32_t meth = json_get(j, m, "method"), params = json_get(j, m, "params");
        uint32_t id = json_get(j, m, "id");
        if (meth && id) pk->request = 1;
        if (meth && id && json_str_is(j, meth, str_c("tools/call"))) pk->call = 1;
        if (i) continue;
        if (meth && j->t[meth].type == JSON_STR) json_unescape(j, meth, &pk->method);
        if (id && (j->t[id].type == JSON_STR || j->t[id].type == JSON_NUM))
            json_write(&pk->id, j, id);
        uint32_t meta = params ? json_get(j, params, "_meta") : 0;
        pk->stateless = (meta && json_get(j, meta, MCP_META_V)) ||
                        str_eq(buf_str(&pk->method), "server/discover");
    }
}

/* POST, DELETE and GET /mcp: MCP over HTTP (docs/MCP.md). Only a tool call
 * acts for an agent: the other requests are answered without one. */
static void hub_mcp(Hub *h, Req *q, Res *r) {
    static const char which[] = "which agent? Send an X-Arc-Agent header or ?agent=NAME "
                                "on the URL (docs/MCP.md)";
    McpHub *mh = mcp_hub_get(h);
    const HttpReq *hr = q->hr;
    int64_t now = clock_ms();
    Buf agent = { 0 }, sid = { 0 }, ver = { 0 }, msg = { 0 };
    McpPeek pk = { 0 };
    McpIo io = { .h = h, .q = q, .headers = hr != NULL };
    Json j = { 0 };
    McpState *st = NULL;
    mcp_hub_sweep(h, now);
    if (q->mcp_call) {   /* a parked call runs again: ended meanwhile? */
        McpRun *run = mh->runs;
        while (run && run->serial != q->mcp_call) run = run->next;
        if (!run || run->cancelled) {
            /* No JSON-RPC answer for a cancelled request: an SSE stream
             * just ends, a JSON one is 202 with no body. */
            if (run && run->sse) r->raw = 1;
            else r->status = 202;
            if (q->relayed) buf_adds(&r->body, "{}");
            if (run) mcp_run_drop(mh, run);
            goto done;
        }
    }
    if (str_eq(q->method, "GET")) {   /* the spec allows a server no GET stream */
        mcp_http_fail(r, 405, MCP_INVALID, "GET /mcp: no server-initiated stream; "
                      "POST requests to /mcp (docs/MCP.md)", NULL);
        r->extra = "Allow: POST, DELETE\r\n";
        goto done;
    }
    if (hr && hr->arc_agent.n) buf_addstr(&agent, hr->arc_agent);
    else if (http_query_get(q->query, "agent", &agent) <= 0) buf_reset(&agent);
    if (agent.len && !mcp_agent_ok(buf_str(&agent))) {
        mcp_http_fail(r, 400, MCP_INVALID, "invalid agent id: 1 to 128 bytes of UTF-8 "
                      "without control characters", NULL);
        goto done;
    }
    /* Without headers (the relay) the session and version are parameters. */
    if (hr && hr->mcp_session.n) buf_addstr(&sid, hr->mcp_session);
    else if (hr || http_query_get(q->query, "session", &sid) <= 0) buf_reset(&sid);
    if (hr && hr->mcp_version.n) buf_addstr(&ver, hr->mcp_version);
    else if (hr || http_query_get(q->query, "version", &ver) <= 0) buf_reset(&ver);
    /* An unknown version is answered by the dispatcher (-32022, mcp_admit). */
    io.hdr_version = str_trim(buf_str(&ver));
    if (hr) io.hdr_method = str_trim(hr->mcp_method), io.hdr_name = str_trim(hr->mcp_name);
    if (ver.len < sizeof io.version && mcp_known_version(buf_cstr(&ver)))
        snprintf(io.version, sizeof io.version, "%s", ver.p);
    if (str_eq(q->method, "DELETE")) {
        if (hr && !sid.len) {
            mcp_http_fail(r, 400, MCP_INVALID, "DELETE /mcp needs an Mcp-Session-Id header",
                          NULL);
            goto done;
        }
        if (!agent.len) {
            mcp_http_fail(r, 400, MCP_INVALID, which, NULL);
            goto done;
        }
        st = mcp_state_find(mh, buf_cstr(&sid), agent.p);
        if (!st || strcmp(st->agent, agent.p)) {
            mcp_http_fail(r, 404, MCP_INVALID, "no such MCP session", NULL);
            goto done;
        }
        mcp_state_leave(h, q, st, now);
        mcp_state_drop(mh, st);
        r->status = 200;
        buf_adds(&r->body, "{}");
        goto done;
    }
    Str body = q->raw_body;
    if (!utf8_valid(body.p, body.n) || json_parse(&j, body.p, body.n)) {
        char e[ARC_ERRLEN + 32];
        snprintf(e, sizeof e, "Parse error: %s", j.err[0] ? j.err : "invalid UTF-8");
        mcp_http_fail(r, 400, MCP_PARSE, e, NULL);
        goto done;
    }
    mcp_peek(&j, &pk);
    /* initialize opens a session (for an agent), unless it comes in the
     * stateless revision, which answers it "Method not found". */
    int init = pk.request && j.t[0].type == JSON_OBJ &&
               str_eq(buf_str(&pk.method), "initialize") && !pk.stateless &&
               !str_eq(io.hdr_version, MCP_V_STATELESS);
    if (init && agent.len) {
        st = mcp_state_new(h, q, agent.p, 1);
    } else if (sid.len) {
        if (!agent.len) {
            mcp_http_fail(r, 400, MCP_INVALID, which, &pk.id);
            goto done;
        }
        st = mcp_state_find(mh, sid.p, agent.p);
        if (!st) {
            mcp_http_fail(r, 404, MCP_INVALID, "unknown MCP session (it ended, or the hub "
                          "restarted): initialize again", &pk.id);
            goto done;
        }
        if (strcmp(st->agent, agent.p)) {
            mcp_http_fail(r, 400, MCP_INVALID, "that MCP session is another agent's", &pk.id);
            goto done;
        }
    } else if (agent.len && (pk.stateless || !hr)) {
        st = mcp_state_find(mh, "", agent.p);
        if (!st) st = mcp_state_new(h, q, agent.p, 0);
    } else if (!pk.request) {   /* notifications of no session: nothing to do */
        r->status = 202;
        goto done;
    } else {   /* answered without state; a tools/call is refused, saying why */
        io.no_call = !agent.len ? which : "an Mcp-Session-Id header is required (from "
                     "initialize), or a 2026-07-28 request with _meta";
    }
    if (st) {
        st->used_ms = now;
        mcp_state_live(h, q, st, now);
        if (!io.version[0]) snprintf(io.version, sizeof io.version, "%s", st->version);
    } else if (!io.no_call) {   /* mcp_state_new found no room */
        mcp_http_fail(r, 503, MCP_INTERNAL, "too many MCP sessions; end some (DELETE /mcp)",
                      &pk.id);
        goto done;
    }
    io.st = st;
    io.sse_ok = hr && mcp_has_ci(hr->accept, "text/event-stream");
    if (q->mcp_call) {   /* this request parked; it runs again */
        for (McpRun *run = mh->runs; run && !io.run; run = run->next)
            if (run->serial == q->mcp_call && run->st == st) io.run = run;
        if (!io.run) {
            mcp_http_fail(r, 410, MCP_INTERNAL, "the call ended", NULL);
            goto done;
        }
    }
    int streaming = io.run && io.run->sse;
    mcp_handle(&io, body);
    if (io.negotiated && st) snprintf(st->version, sizeof st->version, "%s", io.version);
    if (q->busy && !io.parked) {   /* a write found the lock taken: retried */
        hub_fail(r, 503, "storage error: database is locked");
        goto done;
    }
    r->status = 200;
    if (io.parked) {
        r->park = 1;
        r->wait = io.wait;                 /* hand-off: r owns it now */
        memset(&io.wait, 0, sizeof io.wait);
        r->wait_ms = io.wait_ms;
        r->mcp_call = io.run->serial;
        if (io.run->progress.len && io.sse_ok) {
            r->raw = 1;
            if (!io.run->sse) {
                buf_addf(&r->body, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"
                         "X-Arc-Instance: %s\r\nConnection: close\r\n\r\n", hub_instance(h));
                io.run->sse = 1;
            }
            buf_addstr(&r->body, buf_str(&io.notes));
        }
    } else if (streaming) {
        r->raw = 1;
        buf_addstr(&r->body, buf_str(&io.notes));
        buf_adds(&r->body, "event: message\ndata: ");
        buf_addstr(&r->body, buf_str(&io.out));
        buf_adds(&r->body, "\n\n");
    } else if (!io.out.len) {
        r->status = 202;   /* notifications and responses only */
        if (q->relayed) buf_adds(&r->body, "{}");
    } else {
        if (io.status) r->status = io.status;
        buf_addstr(&r->body, buf_str(&io.out));
    }
    if (init && st) {
        buf_addf(&r->hdr, "Mcp-Session-Id: %s\r\n", st->sid);
        r->extra = r->hdr.p;
    }
done:
    json_free(&j);
    wait_free(&io.wait);
    buf_free(&io.out), buf_free(&io.notes);
    buf_free(&agent), buf_free(&sid), buf_free(&ver), buf_free(&msg);
    buf_free(&pk.method), buf_free(&pk.id);
}

/* ---- framing: newline-delimited, or Content-Length from older clients ---- */

/* Find the next message in p[0..n). Returns 1 with it at [*off, *off+*len),
 * 0 when more input is needed, -1 on a framing error (err says why). In
 * every case *used bytes may be dropped. `eof`: no more input will come.
 * A line longer than MCP_MAX_MSG sets *skip: drop input up to the next
 * newline. Pure, so it is unit-tested and fuzzed. */
static int mcp_frame(const char *p, size_t n, int eof, size_t *off, size_t *len,
                     size_t *used, int *skip, const char **err) {
    static const char cl[] = "content-length";
    size_t i = 0;
    *used = 0;
    *skip = 0;
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n')) i++;
    *used = i;
    if (i == n) return 0;
    size_t avail = n - i < sizeof cl - 1 ? n - i : sizeof cl - 1, same = 0;
    while (same < avail && tolower((unsigned char)p[i + same]) == cl[same]) same++;
    if (same == avail) {
        if (avail < sizeof cl - 1) return eof ? (*used = n, *err = "truncated header", -1) : 0;
        /* Headers end at an empty line, \r\n or \n style. */
        size_t h = i, body = 0;
        int64_t clen = -1;
        while (h < n) {
            size_t e = h;
            while (e < n && p[e] != '\n') e++;
            if (e == n) break;
            Str line = { p + h, e - h };
            if (line.n && line.p[line.n - 1] == '\r') line.n--;
            h = e + 1;
            if (!line.n) {
                body = h;
                break;
            }
            if (line.n > 15 && str_ieq((Str){ line.p, 15 }, "content-length:")) {
                Str v = str_trim((Str){ line.p + 15, line.n - 15 });
                clen = 0;
                for (size_t k = 0; k < v.n && clen >= 0; k++)
                    clen = v.p[k] >= '0' && v.p[k] <= '9' && clen <= MCP_MAX_MSG
                               ? clen * 10 + (v.p[k] - '0') : -1;
                if (!v.n) clen = -1;
            }
        }
        if (!body) {
            if (n - i > 8192 || eof)
                return *used = n, *err = "unterminated Content-Length header", -1;
            return 0;
        }
        if (clen < 0 || clen > MCP_MAX_MSG)
            return *used = body, *err = "bad Content-Length header", -1;
        if (n - body < (size_t)clen)
            return eof ? (*used = n, *err = "message shorter than its Content-Length", -1) : 0;
        *off = body, *len = (size_t)clen, *used = body + (size_t)clen;
        return 1;
    }
    const char *nl = memchr(p + i, '\n', n - i);
    if (!nl && !eof) {
        if (n - i <= MCP_MAX_MSG) return 0;
        *used = n, *skip = 1, *err = "message larger than 4 MiB";
        return -1;
    }
    size_t e = nl ? (size_t)(nl - p) : n;
    *off = i, *len = e - i, *used = nl ? e + 1 : n;
    if (*len && p[e - 1] == '\r') (*len)--;
    if (*len > MCP_MAX_MSG) return *err = "message larger than 4 MiB", -1;
    return 1;
}

/* Frame and hand on every complete message in `in`, dropping what was
 * used; `*skipping` carries an over-long line's state between reads. The
 * stdin loop and the fuzz target share it. */
static void mcp_drain(Buf *in, int eof, int *skipping, void (*on_msg)(Str, void *),
                      void (*on_err)(const char *, void *), void *arg) {
    for (;;) {
        if (*skipping) {
            char *nl = in->len ? memchr(in->p, '\n', in->len) : NULL;
            buf_consume(in, nl ? (size_t)(nl - in->p) + 1 : in->len);
            if (!nl) break;
            *skipping = 0;
        }
        size_t off = 0, len = 0, used = 0;
        const char *err = NULL;
        int rc = mcp_frame(buf_cstr(in), in->len, eof, &off, &len, &used, skipping, &err);
        if (rc > 0) on_msg((Str){ in->p + off, len }, arg);
        if (rc < 0) on_err(err, arg);
        buf_consume(in, used);
        if (rc == 0 || (rc < 0 && !used)) break;
    }
}

/* ---- arc mcp: the stdio bridge ---- */

typedef struct McpCall McpCall;

/* A tools/call the bridge posted to the hub and waits on, on its own
 * thread, so a poll waiting 50 s never holds up a ping or another call,
 * and notifications/cancelled can interrupt it (Client.cancel_fd). */
struct McpCall {
    McpCall *next;
    char *msg;            /* owned: the message */
    size_t n;
    Buf id;               /* its id, as JSON */
    int cancel[2];        /* pipe: written to give up waiting */
    int cancelled;        /* nothing is written for it */
};

/* The bridge process. Threads: the main thread reads stdin and forwards
 * everything but tools/call itself (quick answers, in order); each
 * tools/call has a thread; the heartbeat thread keeps the session, and is
 * the only one that opens it (mcp_register): the others ask it to and wait
 * (mcp_await_session), the stdin thread at most MCP_REG_WAIT_MS, so a hub
 * that is slow to open a session never holds up the client's requests
 * (they are answered here meanwhile, as while no hub answers). The session
 * is opened only once the client sends a request other than
 * server/discover (`wanted`): Claude Code probes a stdio server with a
 * throwaway copy that sends only that, and registering there would take
 * the agent's session from the bridge in use (docs/MCP.md). */
typedef struct {
    /* Set once at start. */
    const char *agent, *display_name, *caps, *url, *relay_dir;
    char token[ARC_MAX_TOKEN + 1];   /* the hub's bearer token, "" = none */
    long pid;                     /* the harness (PROTOCOL §17.5), 0 unknown */
    int64_t pid_start;            /* ... its start time, /proc/PID/stat */
    int channel;                  /* --channel: push owed messages (Claude Code) */
    int chan_cancel[2];           /* pipe: written at shutdown, ends the push's waits */
    /* Guarded by mu. */
    pthread_mutex_t mu;
    pthread_cond_t cond;          /* a call ended; closing; wake the heartbeat */
    char sid[64];                 /* our MCP session at the hub; the relay has none */
    int registered;               /* the hub knows our session */
    int wanted;                   /* the client is no mere probe: open one */
    uint64_t gen;                 /* registrations so far: names the session */
    int want_reg;                 /* a thread waits for a registration */
    uint64_t n_tries;             /* registration attempts finished */
    uint64_t slow_try;            /* n_tries + 1 when the attempt under way
                                     kept the stdin thread waiting in vain */
    char reg_err[ARC_ERRLEN];     /* why the last attempt failed */
    char version[16];             /* the client's initialize negotiated; "" before */
    McpCall *calls;
    int ncalls;
    int closing;                  /* stdin reached EOF */
    int chan_ready;               /* the client listed tools after initialize */
    int64_t beat_ms;              /* heartbeat interval */
    pthread_mutex_t out_mu;       /* stdout */
    int stop[2];                  /* pipe: written at shutdown to cut short
                                     the heartbeat's request; set up before
                                     any thread starts, never changed after */
} McpBridge;

static McpBridge g_br = { .mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER,
                          .out_mu = PTHREAD_MUTEX_INITIALIZER, .beat_ms = 30000,
                          .chan_cancel = { -1, -1 }, .stop = { -1, -1 } };

/* MCP clients stop a stdio server with a signal as often as with EOF
 * (Claude Code sends SIGINT, Codex and Gemini CLI SIGTERM, a closed
 * terminal SIGHUP), so those take EOF's orderly path. The handler only
 * writes the signal's number into this pipe (async-signal-safe, on whatever
 * thread it lands); the stdin loop polls the read end. Shared: set up in
 * cmd_mcp before the handler is installed, never changed after. */
static int g_mcp_sig[2] = { -1, -1 };

/* Write one message as a line to stdout; nothing else is ever written there. */
static void mcp_write_line(Str msg) {
    pthread_mutex_lock(&g_br.out_mu);
    for (int part = 0; part < 2; part++) {
        Str s = part ? STR_LIT("\n") : msg;
        for (size_t off = 0; off < s.n;) {
            ssize_t w = write(1, s.p + off, s.n - off);
            if (w > 0) off += (size_t)w;
            else if (w < 0 && errno == EINTR) continue;
            else if (w < 0 && errno == EAGAIN) {
                struct pollfd p = { .fd = 1, .events = POLLOUT };
                poll(&p, 1, 1000);
            } else break;   /* the client went away; EOF on stdin follows */
        }
    }
    pthread_mutex_unlock(&g_br.out_mu);
}

static const char *mcp_where(void) { return g_br.relay_dir ? g_br.relay_dir : g_br.url; }

/* The hub lost session `gen` (404), or did not answer in it: the
 * heartbeat opens a new one. A session opened since stays: threads that
 * all saw the old one fail open one new session, not one each. */
static void mcp_session_lost(uint64_t gen) {
    pthread_mutex_lock(&g_br.mu);
    if (g_br.registered && g_br.gen == gen) {
        g_br.registered = 0;
        g_br.want_reg = 1;
        pthread_cond_broadcast(&g_br.cond);
    }
    pthread_mutex_unlock(&g_br.mu);
}

/* Has call been cancelled (NULL: never)? */
static int mcp_call_cancelled(McpCall *call) {
    if (!call) return 0;
    pthread_mutex_lock(&g_br.mu);
    int c = call->cancelled;
    pthread_mutex_unlock(&g_br.mu);
    return c;
}

/* A hub connection for one thread, cancelled through cancel_fd. */
static int mcp_client(Client *c, int cancel_fd) {
    char err[ARC_ERRLEN];
    if (client_url(c, g_br.url, err)) return -1;
    c->relay_dir = g_br.relay_dir;
    c->agent = g_br.agent;
    c->token = g_br.token;
    c->cancel_fd = cancel_fd;
    return 0;
}

/* Write the messages of an SSE body in p[0..n) (events end with a blank
 * line) to stdout, unless call was cancelled; returns the bytes used. */
static size_t mcp_sse_lines(const char *p, size_t n, McpCall *call) {
    size_t used = 0;
    for (;;) {
        const char *end = NULL;
        for (size_t i = used; i + 1 < n && !end; i++)
            if (p[i] == '\n' && (p[i + 1] == '\n' || (p[i + 1] == '\r' && i + 2 < n &&
                                                        p[i + 2] == '\n')))
                end = p + i + 1;
        if (!end) return used;
        for (const char *l = p + used; l < end;) {
            const char *nl = memchr(l, '\n', (size_t)(end - l));
            Str line = { l, (size_t)(nl - l) };
            if (line.n && line.p[line.n - 1] == '\r') line.n--;
            if (line.n > 5 && !memcmp(line.p, "data:", 5) && !mcp_call_cancelled(call))
                mcp_write_line(str_trim((Str){ line.p + 5, line.n - 5 }));
            l = nl + 1;
        }
        used = (size_t)(end - p) + (*end == '\r' ? 2 : 1);
    }
}

/* Does msg name its own protocol version in _meta (the stateless era)?
 * Then the bridge sends no version of its own with it: the hub would take
 * a different one for a header that contradicts the body (-32020). */
static int mcp_claims_version(Str msg) {
    Json j = { 0 };
    uint32_t p, meta;
    int yes = msg.p && json_parse(&j, msg.p, msg.n) == 0 && j.t[0].type == JSON_OBJ &&
              (p = json_get(&j, 0, "params")) && (meta = json_get(&j, p, "_meta")) &&
              json_get(&j, meta, MCP_META_V);
    json_free(&j);
    return yes;
}

/* POST (or DELETE) one message to the hub's /mcp over HTTP, with the
 * session's headers, waiting at most wait_ms. A JSON answer goes to *json;
 * an SSE one is written to stdout event by event as it comes (*streamed).
 * With sid_out the message is an initialize: it goes without a session,
 * and the new session's id goes to sid_out. Returns the HTTP status, or
 * -1 with err. */
static int mcp_http(Client *c, const char *method, const char *path, Str msg, McpCall *call,
                    int64_t wait_ms, Buf *json, int *streamed, char *sid_out, size_t sid_n,
                    char err[ARC_ERRLEN]) {
    int64_t deadline = clock_ms() + wait_ms;
    Buf req = { 0 };
    int v6 = strchr(c->host, ':') != NULL, status = -1, head = ARC_AGAIN, eof = 0;
    size_t used = 0;
    HttpResp hr;
    buf_addf(&req, "%s %s HTTP/1.1\r\nHost: %s%s%s:%d\r\nUser-Agent: arc/" ARC_VERSION
             "\r\nAccept: application/json, text/event-stream\r\nConnection: close\r\n",
             method, path, v6 ? "[" : "", c->host, v6 ? "]" : "", c->port);
    if (c->token && c->token[0]) buf_addf(&req, "Authorization: Bearer %s\r\n", c->token);
    int own = mcp_claims_version(msg);
    pthread_mutex_lock(&g_br.mu);
    if (g_br.sid[0] && !sid_out) buf_addf(&req, "Mcp-Session-Id: %s\r\n", g_br.sid);
    if (g_br.version[0] && !own)
        buf_addf(&req, "MCP-Protocol-Version: %s\r\n", g_br.version);
    pthread_mutex_unlock(&g_br.mu);
    if (msg.p) buf_addf(&req, "Content-Type: application/json\r\nContent-Length: %zu\r\n",
                        msg.n);
    buf_adds(&req, "\r\n");
    if (msg.p) buf_addstr(&req, msg);
    *streamed = 0;
    buf_reset(json);
    client_close(c);
    if (client_connect(c, deadline, err)) goto done;
    for (size_t off = 0; off < req.len;) {
        ssize_t w = write(c->fd, req.p + off, req.len - off);
        if (w > 0) off += (size_t)w;
        else if (w < 0 && errno == EINTR) continue;
        else if (w < 0 && errno == EAGAIN &&
                 client_wait(c->fd, POLLOUT, c->cancel_fd, deadline) == 0) continue;
        else {
            snprintf(err, ARC_ERRLEN, "cannot send to %s", c->base);
            goto done;
        }
    }
    for (;;) {
        if (head == ARC_AGAIN) head = http_parse_response(c->in.p, c->in.len, &hr);
        if (head == ARC_BAD) {
            snprintf(err, ARC_ERRLEN, "invalid response from %s: %s", c->base, hr.err_msg);
            goto done;
        }
        if (head > 0 && hr.status < 200) {   /* 100 Continue */
            buf_consume(&c->in, (size_t)head);
            head = ARC_AGAIN;
            continue;
        }
        if (head > 0) {
            size_t have = c->in.len - (size_t)head;
            if (mcp_has_ci(hr.content_type, "text/event-stream")) {
                *streamed = 1;
                used += mcp_sse_lines(c->in.p + head + used, have - used, call);
                if (eof) break;
            } else if (hr.body == HTTP_BODY_LENGTH && have >= (size_t)hr.content_length) {
                have = (size_t)hr.content_length;
                buf_add(json, c->in.p + head, have);
                break;
            } else if (hr.body != HTTP_BODY_LENGTH && eof) {
                buf_add(json, c->in.p + head, have);
                break;
            }
            if (have > ARC_CLIENT_MAX_BODY) {
                snprintf(err, ARC_ERRLEN, "response from %s is too large", c->base);
                goto done;
            }
        }
        if (eof) {
            snprintf(err, ARC_ERRLEN, "connection to %s closed mid-response", c->base);
            goto done;
        }
        if (client_wait(c->fd, POLLIN, c->cancel_fd, deadline)) {
            snprintf(err, ARC_ERRLEN, clock_ms() < deadline ? "cancelled" : "no answer in time");
            goto done;
        }
        buf_reserve(&c->in, 65536);
        ssize_t n = read(c->fd, c->in.p + c->in.len, 65536);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) eof = 1;
        else c->in.len += (size_t)n, c->in.p[c->in.len] = 0;
    }
    status = hr.status;
    if (sid_out) {   /* Mcp-Session-Id among the head's lines */
        Str h = { c->in.p, (size_t)head };
        sid_out[0] = 0;
        for (size_t i = 0; i + 16 < h.n; i++)
            if (h.p[i] == '\n' && str_ieq((Str){ h.p + i + 1, 15 }, "mcp-session-id:")) {
                Str v = { h.p + i + 16, 0 };
                while (v.p + v.n < h.p + h.n && v.p[v.n] != '\r' && v.p[v.n] != '\n') v.n++;
                v = str_trim(v);
                snprintf(sid_out, sid_n, "%.*s", (int)v.n, v.p);
            }
    }
done:
    client_close(c);
    buf_free(&req);
    return status;
}

/* One message to the hub's /mcp, over HTTP or the relay (where the session
 * and version are query parameters, and answers are JSON); mcp_http says
 * the rest. */
static int mcp_send(Client *c, const char *method, Str msg, McpCall *call, int64_t wait_ms,
                    Buf *json, int *streamed, char *sid_out, size_t sid_n,
                    char err[ARC_ERRLEN]) {
    Buf path = { 0 };
    buf_adds(&path, "/mcp");
    agent_qparam(&path, "agent", g_br.agent);
    if (g_br.display_name) agent_qparam(&path, "display_name", g_br.display_name);
    if (g_br.caps) agent_qparam(&path, "capabilities", g_br.caps);
    if (g_br.pid)   /* the hub watches it: offline the moment it ends */
        buf_addf(&path, "&pid=%ld&pid_start=%lld", g_br.pid, (long long)g_br.pid_start);
    int status;
    if (g_br.relay_dir) {
        int own = mcp_claims_version(msg);
        pthread_mutex_lock(&g_br.mu);
        if (g_br.version[0] && !own) agent_qparam(&path, "version", g_br.version);
        pthread_mutex_unlock(&g_br.mu);
        *streamed = 0;
        if (sid_out) sid_out[0] = 0;
        err[0] = 0;
        if (client_relay_call(c, method, path.p, msg, wait_ms, &status, json, err))
            status = -1;
    } else {
        status = mcp_http(c, method, path.p, msg, call, wait_ms, json, streamed, sid_out,
                          sid_n, err);
    }
    buf_free(&path);
    return status;
}

/* Is body a JSON-RPC answer (one message or a batch's array), rather than
 * a refusal in the hub's {"ok":false} envelope? */
static int mcp_is_jsonrpc(const Buf *body) {
    Json j = { 0 };
    int yes = json_parse(&j, buf_cstr(body), body->len) == 0 &&
              (j.t[0].type == JSON_ARR || (j.t[0].type == JSON_OBJ && json_get(&j, 0, "jsonrpc")));
    json_free(&j);
    return yes;
}

/* A 404 with a JSON-RPC body: the hub lost our session, unless it is a
 * "Method not found" (the stateless revision answers that with 404). */
static int mcp_hub_forgot(int status, const Buf *body) {
    Json j = { 0 };
    uint32_t e, c;
    int64_t code = 0;
    int lost = status == 404 && mcp_is_jsonrpc(body);
    if (lost && json_parse(&j, buf_cstr(body), body->len) == 0 && j.t[0].type == JSON_OBJ &&
        (e = json_get(&j, 0, "error")) && (c = json_get(&j, e, "code")) &&
        json_to_i64(&j, c, &code) == 0 && code == MCP_NO_METHOD)
        lost = 0;
    json_free(&j);
    return lost;
}

/* Open our session at the hub: over HTTP an initialize (its answer names
 * the session), over the relay a ping (the hub keeps the agent's state by
 * its name). Also learns the presence TTL for the heartbeat. Only the
 * heartbeat thread calls it; shutdown cuts it short through g_br.stop.
 * Waiters (mcp_await_session) learn the outcome. 0 or -1 with err. */
static int mcp_register(char err[ARC_ERRLEN]) {
    static const char init[] =
        "{\"jsonrpc\":\"2.0\",\"id\":\"arc-bridge\",\"method\":\"initialize\",\"params\":"
        "{\"protocolVersion\":\"" MCP_V_LEGACY "\",\"capabilities\":{},\"clientInfo\":"
        "{\"name\":\"arc-mcp-bridge\",\"version\":\"" ARC_VERSION "\"}}}";
    static const char ping[] = "{\"jsonrpc\":\"2.0\",\"id\":\"arc-bridge\",\"method\":\"ping\"}";
    Client c;
    Buf out = { 0 };
    Json j = { 0 };
    char sid[64];
    int rc = -1, streamed, status;
    int64_t ttl = 120;
    if (mcp_client(&c, g_br.stop[0])) {
        snprintf(err, ARC_ERRLEN, "invalid hub URL: %s", g_br.url);
        goto done;
    }
    status = mcp_send(&c, "POST", g_br.relay_dir ? str_c(ping) : str_c(init), NULL,
                      MCP_HUB_MS, &out, &streamed, sid, sizeof sid, err);
    if (status != 200 || !mcp_is_jsonrpc(&out)) {
        if (status > 0) {
            uint32_t e;
            Buf m = { 0 };
            if (json_parse(&j, buf_cstr(&out), out.len) == 0 && j.t[0].type == JSON_OBJ &&
                (e = json_get(&j, 0, "error"))) {
                uint32_t mm = j.t[e].type == JSON_OBJ ? json_get(&j, e, "message") : e;
                if (mm) json_as_text(&m, &j, mm);
            }
            snprintf(err, ARC_ERRLEN, "refused (HTTP %d): %s", status,
                     m.len ? m.p : "no error message");
            buf_free(&m);
        }
        goto done;
    }
    uint32_t r, t;
    int hs;
    json_free(&j);
    if (client_call(&c, "GET", "/v1/hub-info", (Str){ NULL, 0 }, MCP_HUB_MS, &hs, &out, err) ==
            0 && hs == 200 && json_parse(&j, buf_cstr(&out), out.len) == 0 &&
        (r = json_get(&j, 0, "result")) && (t = json_get(&j, r, "presence_ttl_sec")))
        json_to_i64(&j, t, &ttl);
    rc = 0;
done:
    pthread_mutex_lock(&g_br.mu);
    if (rc == 0) {
        snprintf(g_br.sid, sizeof g_br.sid, "%s", sid);
        /* Touch well inside the TTL: a third of it, at most every 30 s. */
        g_br.beat_ms = ttl / 3 * 1000;
        if (g_br.beat_ms < 1000) g_br.beat_ms = 1000;
        if (g_br.beat_ms > 30000) g_br.beat_ms = 30000;
        g_br.registered = 1;
        g_br.gen++;
    } else {
        snprintf(g_br.reg_err, sizeof g_br.reg_err, "%s", err);
    }
    g_br.n_tries++;
    pthread_cond_broadcast(&g_br.cond);
    pthread_mutex_unlock(&g_br.mu);
    json_free(&j);
    buf_free(&out);
    client_free(&c);
    return rc;
}

/* Wait until we have a session at the hub, asking the heartbeat to open
 * one if need be, for at most wait_ms, while call (NULL: none) is not
 * cancelled. 0 with the session's generation in *gen, or -1 with err when
 * an attempt failed meanwhile (the hub is away: answer here), time ran
 * out, or the bridge is closing. An attempt that already kept the stdin
 * thread waiting in vain is not waited for again: each of the client's
 * requests would wait its turn behind it. */
static int mcp_await_session(McpCall *call, int64_t wait_ms, uint64_t *gen,
                             char err[ARC_ERRLEN]) {
    int rc = -1;
    pthread_mutex_lock(&g_br.mu);
    uint64_t tries = g_br.n_tries;
    if (!g_br.registered && !call && g_br.slow_try == tries + 1) {
        snprintf(err, ARC_ERRLEN, "the hub has not yet opened our session");
        goto done;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(wait_ms / 1000);
    ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    while (!g_br.registered) {
        if (g_br.closing || (call && call->cancelled)) {
            snprintf(err, ARC_ERRLEN, "cancelled");
            goto done;
        }
        if (g_br.n_tries != tries) {   /* an attempt ended, and failed */
            snprintf(err, ARC_ERRLEN, "%s", g_br.reg_err);
            goto done;
        }
        if (!g_br.want_reg) {
            g_br.want_reg = g_br.wanted = 1;
            pthread_cond_broadcast(&g_br.cond);   /* wake the heartbeat */
        }
        if (pthread_cond_timedwait(&g_br.cond, &g_br.mu, &ts) == ETIMEDOUT &&
            !g_br.registered) {
            if (!call) g_br.slow_try = tries + 1;
            snprintf(err, ARC_ERRLEN, "the hub has not yet opened our session");
            goto done;
        }
    }
    *gen = g_br.gen;
    rc = 0;
done:
    pthread_mutex_unlock(&g_br.mu);
    return rc;
}

/* Answer msg in-process, without the hub (it cannot be reached, or
 * refuses us): the same dispatcher; tools fail with `offline`. */
static void mcp_answer_here(Str msg, const char *offline, McpCall *call) {
    McpIo io = { .offline = offline, .channel = g_br.channel };
    pthread_mutex_lock(&g_br.mu);
    snprintf(io.version, sizeof io.version, "%s", g_br.version);
    pthread_mutex_unlock(&g_br.mu);
    mcp_handle(&io, msg);
    if (io.negotiated) {
        pthread_mutex_lock(&g_br.mu);
        snprintf(g_br.version, sizeof g_br.version, "%s", io.version);
        pthread_mutex_unlock(&g_br.mu);
    }
    if (io.out.len && !mcp_call_cancelled(call)) mcp_write_line(buf_str(&io.out));
    buf_free(&io.out);
    buf_free(&io.notes);
}

/* Is body a JSON-RPC error without an id: what the hub sends in an HTTP
 * error status when it refuses a POST before handling its message (an
 * unknown session, too many sessions)? It answers no request. */
static int mcp_is_refusal(const Buf *body) {
    Json j = { 0 };
    int yes = json_parse(&j, buf_cstr(body), body->len) == 0 && j.t[0].type == JSON_OBJ &&
              json_get(&j, 0, "error") && !json_get(&j, 0, "id");
    json_free(&j);
    return yes;
}

/* Forward one message to the hub and write its answers; when the hub
 * cannot be reached, or refuses it (a token, an unknown session, no
 * session yet), answer here, so every request gets an answer with its id.
 * A session the hub no longer knows (it restarted) is opened again, once.
 * Only a tools/call (call) may wait at the hub; the stdin thread's
 * requests stop waiting when a stopping signal comes. */
static void mcp_forward(Str msg, McpCall *call) {
    char err[ARC_ERRLEN] = "", why[ARC_ERRLEN + 200] = "";
    Buf out = { 0 };
    Client c;
    int status = -1, streamed = 0;
    uint64_t gen = 0;
    int64_t wait_ms = call ? MCP_MAX_WAIT_S * 1000 + MCP_HUB_MS : MCP_HUB_MS;
    if (mcp_client(&c, call ? call->cancel[0] : g_mcp_sig[0])) {
        snprintf(why, sizeof why, "invalid hub URL: %s", g_br.url);
        goto here;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        if (mcp_await_session(call, call ? MCP_HUB_MS : MCP_REG_WAIT_MS, &gen, err)) {
            status = -2;
            break;
        }
        status = mcp_send(&c, "POST", msg, call, wait_ms, &out, &streamed, NULL, 0, err);
        if (mcp_hub_forgot(status, &out) && attempt == 0) {
            mcp_session_lost(gen);   /* the hub forgot our session */
            continue;
        }
        break;
    }
    if (mcp_call_cancelled(call) || (status < 0 && !strcmp(err, "cancelled"))) goto done;
    if (status < 0) {
        if (status == -1) mcp_session_lost(gen);
        snprintf(why, sizeof why, "arc hub not reachable at %s: %s. Start it with `arc "
                 "ensure`; this server keeps retrying and re-registers when it is back.",
                 mcp_where(), err);
        goto here;
    }
    if (streamed || status == 202) goto done;
    if (mcp_is_jsonrpc(&out) && !(status >= 400 && mcp_is_refusal(&out))) {
        if (out.len) mcp_write_line(buf_str(&out));
        goto done;
    }
    Json j = { 0 };
    uint32_t e;
    Buf m = { 0 };
    if (json_parse(&j, buf_cstr(&out), out.len) == 0 && j.t[0].type == JSON_OBJ &&
        (e = json_get(&j, 0, "error"))) {
        uint32_t mm = j.t[e].type == JSON_OBJ ? json_get(&j, e, "message") : e;
        if (mm) json_as_text(&m, &j, mm);
    }
    snprintf(why, sizeof why, "arc hub refused (HTTP %d): %s", status,
             m.len ? m.p : "no error message");
    buf_free(&m);
    json_free(&j);
here:
    mcp_answer_here(msg, why, call);
done:
    buf_free(&out);
    client_free(&c);
}

/* ---- the heartbeat ---- */

/* One heartbeat: a ping in our session keeps the agent present (the hub
 * touches it on every request). A hub that lost the session, or came back
 * after being away, gets a new one. */
static void mcp_beat(void) {
    static const char ping[] = "{\"jsonrpc\":\"2.0\",\"id\":\"arc-heartbeat\",\"method\":\"ping\"}";
    static int said_down;   /* only this thread reads or writes it */
    char err[ARC_ERRLEN];
    pthread_mutex_lock(&g_br.mu);
    int registered = g_br.registered, wanted = g_br.wanted;
    uint64_t gen = g_br.gen;
    g_br.want_reg = 0;   /* what waits now is served by this beat */
    pthread_mutex_unlock(&g_br.mu);
    if (!wanted) return;   /* a probe, so far: no session */
    if (!registered) {
        if (mcp_register(err) == 0) {
            mcp_log("registered as %s at %s", g_br.agent, mcp_where());
            said_down = 0;
        } else if (!said_down && strcmp(err, "cancelled")) {
            mcp_log("cannot register at %s (%s); retrying every %d s", mcp_where(), err,
                    MCP_RETRY_MS / 1000);
            said_down = 1;
        }
        return;
    }
    Client c;
    Buf out = { 0 };
    int streamed;
    if (mcp_client(&c, g_br.stop[0])) return;
    int status = mcp_send(&c, "POST", str_c(ping), NULL, MCP_HUB_MS, &out, &streamed, NULL,
                          0, err);
    if ((status < 0 && strcmp(err, "cancelled")) ||
        (status == 404 && mcp_is_refusal(&out))) {
        mcp_session_lost(gen);
        if (status > 0 && mcp_register(err) == 0)
            mcp_log("the hub had lost the session; registered %s again", g_br.agent);
    }
    buf_free(&out);
    client_free(&c);
}

/* Beat every beat_ms while registered, retry every MCP_RETRY_MS while
 * not, and register at once when a thread waits for a session. Until the
 * session is wanted, only wait for that. */
static void *mcp_heartbeat_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&g_br.mu);
    while (!g_br.closing) {
        pthread_mutex_unlock(&g_br.mu);
        mcp_beat();
        pthread_mutex_lock(&g_br.mu);
        int64_t wait = g_br.registered ? g_br.beat_ms : MCP_RETRY_MS;
        if (!g_br.wanted) wait = 3600 * 1000;   /* until mcp_want_session */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += (time_t)(wait / 1000);
        ts.tv_nsec += (long)(wait % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        int rc = 0;
        while (!g_br.closing && rc != ETIMEDOUT && !(g_br.want_reg && !g_br.registered))
            rc = pthread_cond_timedwait(&g_br.cond, &g_br.mu, &ts);
    }
    pthread_mutex_unlock(&g_br.mu);
    return NULL;
}

/* ---- the channel push (Claude Code channels) ---- */

/* `arc mcp --channel` (docs/MCP.md, "Claude Code channels"). The bridge
 * declares the experimental `claude/channel` capability in initialize, and
 * a thread of its own takes what is owed to the agent (PROTOCOL §16.3,
 * via=channel) and writes each message as a notifications/claude/channel
 * line. Claude Code queues such an event as a prompt of its own, so it
 * reaches an idle session as well as a busy one. Claude Code listens only
 * on a connection made with initialize (not the stateless era), which is
 * why this mode answers server/discover with "Method not found": that
 * makes it fall back to initialize. A notification it is not listening
 * for is dropped, while the take has already marked it surfaced, so the
 * push starts only once the client has listed the tools after initialize
 * (Claude Code registers its listener after that), plus a grace period.
 * Between takes the thread waits on the agent's events feed, as `arc hook
 * claude wait` does (PROTOCOL §16.6): anything new wakes it, and a take
 * says whether it was owed. */

#define MCP_CHAN_GRACE_MS 1000      /* after the first tools/list, before a push */
#define MCP_CHAN_WAIT_S 50          /* one long-poll of the events feed */
#define MCP_CHAN_MAX_CHARS 262144   /* one take's items, as JSON */

/* Wait ms, or until closing; 1 if closing. */
static int mcp_chan_sleep(int64_t ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&g_br.mu);
    int rc = 0;
    while (!g_br.closing && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&g_br.cond, &g_br.mu, &ts);
    int closing = g_br.closing;
    pthread_mutex_unlock(&g_br.mu);
    return closing;
}

/* One taken item (`{"reason":R,"message":{...}}`) as a channel
 * notification into b: `content` is the body; `meta` says who sent it, why
 * it is owed and where. Claude Code drops the whole event unless every meta
 * value is a string and every key matches [a-zA-Z_][a-zA-Z0-9_]*, so
 * numbers go as their text and nulls are left out. */
static void mcp_chan_note(Buf *b, const Json *j, uint32_t item) {
    static const char *const keys[][2] = {   /* message field, meta key */
        { "id", "message_id" }, { "from_agent", "from_agent" }, { "kind", "kind" },
        { "channel", "channel" }, { "thread_id", "thread_id" },
        { "reply_to", "reply_to" }, { "ts", "ts" },
    };
    uint32_t m = json_get(j, item, "message"), r = json_get(j, item, "reason"), v;
    Buf t = { 0 };
    if (m && j->t[m].type == JSON_OBJ && (v = json_get_val(j, m, "body")))
        json_as_text(&t, j, v);
    buf_adds(b, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/claude/channel\","
             "\"params\":{\"content\":");
    json_strs(b, buf_str(&t));
    buf_adds(b, ",\"meta\":{\"reason\":");
    buf_reset(&t);
    if (r) json_as_text(&t, j, r);
    json_strs(b, buf_str(&t));
    for (size_t i = 0; m && i < sizeof keys / sizeof *keys; i++) {
        if (!(v = json_get_val(j, m, keys[i][0]))) continue;
        if (!strcmp(keys[i][0], "channel") && json_get_val(j, m, "to_agent")) continue;
        buf_reset(&t);
        json_as_text(&t, j, v);
        buf_addf(b, ",\"%s\":", keys[i][1]);
        json_strs(b, buf_str(&t));
    }
    buf_adds(b, "}}}");
    buf_free(&t);
}

/* Take what is owed (via=channel) and push it. Returns how many were
 * pushed, or -1 when the hub did not answer. *more: still owed after. */
static int mcp_chan_take(Client *c, int64_t *more) {
    char err[ARC_ERRLEN];
    Buf path = { 0 }, out = { 0 }, note = { 0 };
    Json j = { 0 };
    int status = 0, n = -1;
    uint32_t r, items, e;
    *more = 0;
    buf_adds(&path, "/v1/delivery/");
    cli_pct(&path, g_br.agent);
    buf_adds(&path, "/take");
    char body[96];
    snprintf(body, sizeof body, "{\"limit\":20,\"max_chars\":%d,\"via\":\"channel\"}",
             MCP_CHAN_MAX_CHARS);
    if (client_call(c, "POST", path.p, str_c(body), MCP_HUB_MS, &status, &out, err) ||
        status != 200 || json_parse(&j, buf_cstr(&out), out.len) ||
        !(r = json_get(&j, 0, "result")) || !(items = json_get(&j, r, "items")) ||
        j.t[items].type != JSON_ARR)
        goto done;
    if ((e = json_get(&j, r, "more"))) json_to_i64(&j, e, more);
    n = (int)j.t[items].n;
    e = items + 1;
    for (int i = 0; i < n; i++, e = j.t[e].next) {
        buf_reset(&note);
        mcp_chan_note(&note, &j, e);
        mcp_write_line(buf_str(&note));
    }
done:
    json_free(&j);
    buf_free(&path), buf_free(&out), buf_free(&note);
    return n;
}

/* Long-poll the agent's events feed past *since (at most MCP_CHAN_WAIT_S),
 * moving *since to the newest id seen. 0, or -1 (no hub; cancelled). */
static int mcp_chan_wait(Client *c, int64_t *since) {
    char err[ARC_ERRLEN];
    Buf path = { 0 }, out = { 0 };
    Json j = { 0 };
    int status = 0, rc = -1;
    uint32_t r, e, v;
    buf_adds(&path, "/v1/events");
    agent_qparam(&path, "agent_id", g_br.agent);
    buf_addf(&path, "&exclude_self=1&limit=100&since_id=%lld&timeout=%d", (long long)*since,
             MCP_CHAN_WAIT_S);
    if (client_call(c, "GET", path.p, (Str){ NULL, 0 }, MCP_CHAN_WAIT_S * 1000 + MCP_HUB_MS,
                    &status, &out, err) ||
        status != 200 || json_parse(&j, buf_cstr(&out), out.len) ||
        !(r = json_get(&j, 0, "result")) || j.t[r].type != JSON_ARR)
        goto done;
    e = r + 1;
    for (uint32_t i = 0; i < j.t[r].n; i++, e = j.t[e].next) {
        int64_t id;
        if ((v = json_get(&j, e, "id")) && json_to_i64(&j, v, &id) == 0 && id > *since)
            *since = id;
    }
    rc = 0;
done:
    json_free(&j);
    buf_free(&path), buf_free(&out);
    return rc;
}

/* The hub's newest message id into *id (the events feed's start). 0/-1. */
static int mcp_chan_latest(Client *c, int64_t *id) {
    char err[ARC_ERRLEN];
    Buf out = { 0 };
    Json j = { 0 };
    int status = 0, rc = -1;
    uint32_t r, v;
    if (client_call(c, "GET", "/v1/hub-info", (Str){ NULL, 0 }, MCP_HUB_MS, &status, &out,
                    err) == 0 && status == 200 &&
        json_parse(&j, buf_cstr(&out), out.len) == 0 && (r = json_get(&j, 0, "result")) &&
        (v = json_get(&j, r, "latest_message_id")) && json_to_i64(&j, v, id) == 0)
        rc = 0;
    json_free(&j);
    buf_free(&out);
    return rc;
}

/* The push thread: waits for the client, then takes, waits, takes ... The
 * feed's position is read before each take, so a message stored between
 * the take and the wait has a newer id and ends the wait at once. */
static void *mcp_chan_main(void *arg) {
    (void)arg;
    Client take, feed;   /* take: never cancelled midway, or taken items are lost */
    int ok = mcp_client(&take, -1) == 0;
    if (ok && mcp_client(&feed, g_br.chan_cancel[0])) client_free(&take), ok = 0;
    if (!ok) return NULL;
    pthread_mutex_lock(&g_br.mu);
    while (!g_br.closing && !g_br.chan_ready) pthread_cond_wait(&g_br.cond, &g_br.mu);
    pthread_mutex_unlock(&g_br.mu);
    int said_down = 0;
    if (!mcp_chan_sleep(MCP_CHAN_GRACE_MS)) mcp_log("channel: pushing messages owed to %s",
                                                    g_br.agent);
    for (int64_t since = -1, more = 0;;) {
        pthread_mutex_lock(&g_br.mu);
        int closing = g_br.closing;
        pthread_mutex_unlock(&g_br.mu);
        if (closing) break;
        if (since < 0 && mcp_chan_latest(&feed, &since)) since = -1;
        int n = since < 0 ? -1 : mcp_chan_take(&take, &more);
        if (n >= 0 && more > 0) continue;
        if (n < 0 || mcp_chan_wait(&feed, &since)) {
            if (mcp_chan_sleep(said_down ? MCP_RETRY_MS : 0)) break;
            if (!said_down) mcp_log("channel: the hub does not answer; retrying");
            said_down = 1;
            since = -1;
            continue;
        }
        said_down = 0;
    }
    client_free(&take);
    client_free(&feed);
    return NULL;
}

/* ---- tool calls in flight ---- */

static void mcp_call_free(McpCall *call) {
    free(call->msg);
    buf_free(&call->id);
    if (call->cancel[0] >= 0) close(call->cancel[0]);
    if (call->cancel[1] >= 0) close(call->cancel[1]);
    free(call);
}

static void *mcp_call_main(void *arg) {
    McpCall *call = arg;
    mcp_forward((Str){ call->msg, call->n }, call);
    pthread_mutex_lock(&g_br.mu);
    McpCall **pp = &g_br.calls;
    while (*pp != call) pp = &(*pp)->next;
    *pp = call->next;
    g_br.ncalls--;
    pthread_cond_broadcast(&g_br.cond);
    pthread_mutex_unlock(&g_br.mu);
    mcp_call_free(call);
    return NULL;
}

/* Start a tools/call (whose id, as JSON, is id) on its own thread. */
static void mcp_call_start(Str msg, Str id) {
    pthread_mutex_lock(&g_br.mu);
    int busy = g_br.ncalls >= MCP_MAX_CALLS;
    pthread_mutex_unlock(&g_br.mu);
    if (busy) {
        McpIo io = { 0 };
        mcp_error(&io, id, MCP_INTERNAL, "too many tool calls in flight (at most "
                  "64); retry when one has finished", NULL);
        mcp_write_line(buf_str(&io.out));
        buf_free(&io.out);
        return;
    }
    McpCall *call = xrealloc(NULL, sizeof *call);
    *call = (McpCall){ .msg = xstrndup(msg.p, msg.n), .n = msg.n };
    buf_addstr(&call->id, id);
    if (pipe(call->cancel)) {
        call->cancel[0] = call->cancel[1] = -1;
    } else {
        fcntl(call->cancel[0], F_SETFD, FD_CLOEXEC);
        fcntl(call->cancel[1], F_SETFD, FD_CLOEXEC);
    }
    pthread_mutex_lock(&g_br.mu);
    call->next = g_br.calls;
    g_br.calls = call;
    g_br.ncalls++;
    pthread_mutex_unlock(&g_br.mu);
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &at, mcp_call_main, call)) {
        mcp_log("cannot start a thread for a call: %s", strerror(errno));
        mcp_call_main(call);   /* then on this one */
    }
    pthread_attr_destroy(&at);
}

/* Cancel calls: the one whose id is `id`, or all of them (id.p NULL). The
 * waiting thread wakes through its pipe and writes nothing. */
static void mcp_cancel(Str id) {
    pthread_mutex_lock(&g_br.mu);
    for (McpCall *c = g_br.calls; c; c = c->next) {
        if (id.p && !str_eq(id, buf_cstr(&c->id))) continue;
        c->cancelled = 1;
        if (c->cancel[1] >= 0 && write(c->cancel[1], "x", 1) < 0) {}
    }
    pthread_cond_broadcast(&g_br.cond);   /* one may wait for a session */
    pthread_mutex_unlock(&g_br.mu);
}

/* The client sent a request other than server/discover: it is the real
 * connection, not a probe, so the heartbeat opens our session now (the
 * agent is present from here on) without anyone waiting for it (want 1).
 * Returns whether the session is wanted. */
static int mcp_want_session(int want) {
    pthread_mutex_lock(&g_br.mu);
    if (want && !g_br.wanted) {
        g_br.wanted = g_br.want_reg = 1;
        pthread_cond_broadcast(&g_br.cond);   /* wake the heartbeat */
    }
    int wanted = g_br.wanted;
    pthread_mutex_unlock(&g_br.mu);
    return wanted;
}

/* One framed message from stdin. initialize is answered here (the version
 * it negotiates is sent along with every later request), and so are
 * server/discover, whose answer is the same at every hub, and what does
 * not parse: a probe that sends only those never opens a session
 * (McpBridge); nor does a notification before any request. A tools/call goes to the hub on a
 * thread; notifications/cancelled cancels our thread for the call, then
 * goes on to the hub (which ends the call there, even through the relay);
 * the rest goes to the hub in order. With --channel, server/discover is
 * refused here and the first tools/list after initialize starts the push. */
static void mcp_on_msg(Str msg, void *arg) {
    (void)arg;
    Json j = { 0 };
    Buf method = { 0 }, id = { 0 };
    int note = 0, parsed = json_parse(&j, msg.p, msg.n) == 0;   /* note: a notification */
    if (parsed && j.t[0].type == JSON_OBJ) {
        uint32_t m = json_get(&j, 0, "method"), i = json_get(&j, 0, "id");
        note = m && !i;
        if (m && j.t[m].type == JSON_STR) json_unescape(&j, m, &method);
        if (i && (j.t[i].type == JSON_STR || j.t[i].type == JSON_NUM)) json_write(&id, &j, i);
        uint32_t p = json_get(&j, 0, "params"), r;
        if (!i && str_eq(buf_str(&method), "notifications/cancelled") && p &&
            j.t[p].type == JSON_OBJ && (r = json_get(&j, p, "requestId"))) {
            Buf rid = { 0 };
            json_write(&rid, &j, r);
            mcp_cancel(buf_str(&rid));
            buf_free(&rid);
        }
    }
    int discover = id.len && str_eq(buf_str(&method), "server/discover");
    if (!mcp_want_session(parsed && !note && !discover) && note) {
        /* a notification before any request: no session it could be about */
    } else if (!parsed || (id.len && str_eq(buf_str(&method), "initialize"))) {
        mcp_answer_here(msg, NULL, NULL);   /* !parsed: a parse error */
    } else if (discover && !g_br.channel) {
        mcp_answer_here(msg, NULL, NULL);
    } else if (id.len && str_eq(buf_str(&method), "tools/call")) {
        mcp_call_start(msg, buf_str(&id));
    } else if (discover) {   /* --channel */
        /* Claude Code takes this as "no stateless era here" and connects
         * with initialize, the only handshake it pushes channels on. */
        McpIo io = { 0 };
        mcp_error(&io, buf_str(&id), MCP_NO_METHOD, "Method not found: server/discover "
                  "(arc mcp --channel speaks the initialize handshake)", NULL);
        mcp_write_line(buf_str(&io.out));
        buf_free(&io.out);
    } else {
        mcp_forward(msg, NULL);
        if (g_br.channel && id.len && str_eq(buf_str(&method), "tools/list")) {
            pthread_mutex_lock(&g_br.mu);   /* the push may start (mcp_chan_main) */
            if (g_br.version[0] && !g_br.chan_ready) {
                g_br.chan_ready = 1;
                pthread_cond_broadcast(&g_br.cond);
            }
            pthread_mutex_unlock(&g_br.mu);
        }
    }
    json_free(&j);
    buf_free(&method), buf_free(&id);
}

static void mcp_on_frame_error(const char *why, void *arg) {
    char e[128];
    McpIo io = { 0 };
    (void)arg;
    snprintf(e, sizeof e, "Parse error: %s", why);
    mcp_error(&io, (Str){ NULL, 0 }, MCP_PARSE, e, NULL);
    mcp_write_line(buf_str(&io.out));
    buf_free(&io.out);
}

static void mcp_on_signal(int sig) {
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (write(g_mcp_sig[1], &b, 1) < 0) {}   /* full pipe: one byte is enough */
    errno = saved;
}

/* Route SIGINT, SIGTERM and SIGHUP to mcp_on_signal, even if they were
 * ignored when we started (a background job's SIGINT): the MCP client that
 * sends one means it. SA_RESTART: other threads' calls carry on. */
static void mcp_catch_signals(void) {
    if (pipe(g_mcp_sig)) {
        mcp_log("pipe: %s; signals end the process at once", strerror(errno));
        g_mcp_sig[0] = g_mcp_sig[1] = -1;
        return;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(g_mcp_sig[i], F_SETFD, FD_CLOEXEC);
        fd_nonblock(g_mcp_sig[i]);
    }
    struct sigaction sa = { .sa_handler = mcp_on_signal, .sa_flags = SA_RESTART };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
}

/* Read stdin until EOF or a stopping signal, handling each message as it
 * is framed. Input not yet framed when a signal comes is dropped. */
static void mcp_read_stdin(void) {
    Buf in = { 0 };
    int eof = 0, skipping = 0;
    while (!eof) {
        if (buf_reserve(&in, 65536)) break;
        /* Wait for either (a client may also leave stdin non-blocking). */
        struct pollfd p[2] = { { .fd = 0, .events = POLLIN },
                               { .fd = g_mcp_sig[0], .events = POLLIN } };
        if (poll(p, 2, -1) < 0 && errno != EINTR) break;
        unsigned char sig;
        if (p[1].revents && read(g_mcp_sig[0], &sig, 1) == 1) {
            mcp_log("%s: closing the session", sig == SIGINT ? "SIGINT" :
                    sig == SIGTERM ? "SIGTERM" : sig == SIGHUP ? "SIGHUP" : "signal");
            break;
        }
        if (!p[0].revents) continue;
        ssize_t r = read(0, in.p + in.len, 65536);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (r <= 0) eof = 1;
        else in.len += (size_t)r;
        mcp_drain(&in, eof, &skipping, mcp_on_msg, mcp_on_frame_error, NULL);
    }
    buf_free(&in);
}

/* ---- arc mcp ---- */

/* What `arc mcp` reads from argv. */
typedef struct {
    const char *agent, *url, *relay, *display_name, *caps;
    int no_autostart, channel;
    char token[ARC_MAX_TOKEN + 1];
} McpOpts;

#define MCP_OPT(f) offsetof(McpOpts, f)
static const Opt mcp_opts[] = {
    { "--agent", OPT_STR, MCP_OPT(agent), .arg = "NAME",
      .help = "agent id (default ARC_AGENT, else mcp-client)" },
    { "--base-url", OPT_STR, MCP_OPT(url), .arg = "URL",
      .help = "hub (default ARC_URL, else http://127.0.0.1:6969)" },
    { "--relay-dir", OPT_STR, MCP_OPT(relay), .arg = "DIR",
      .help = "talk through this file spool instead (ARC_RELAY_DIR)" },
    { "--display-name", OPT_STR, MCP_OPT(display_name), .arg = "TEXT",
      .help = "shown to other agents (default NAME)" },
    { "--capabilities", OPT_STR, MCP_OPT(caps), .arg = "A,B",
      .help = "advertised capabilities" },
    { "--no-autostart", OPT_FLAG, MCP_OPT(no_autostart),
      .help = "do not start a hub when none answers at a local URL" },
    { "--token-file", OPT_TOKEN_FILE, MCP_OPT(token), .arg = "FILE",
      .help = "bearer token for a hub that requires one (or\n"
              "ARC_TOKEN); a started hub gets it too" },
    { "--token", OPT_TOKEN, MCP_OPT(token), .arg = "TOKEN",
      .help = "the same (visible in ps: prefer the others)" },
    { "--channel", OPT_FLAG, MCP_OPT(channel),
      .help = "push messages owed to NAME as Claude Code channel\n"
              "events (claude --dangerously-load-development-channels\n"
              "server:arc); answers server/discover with an error" },
    { 0 }
};
#undef MCP_OPT

static const OptHelp mcp_help = {
    "mcp",
    "usage: arc mcp --agent NAME [options]\n"
    "Serve MCP over stdin/stdout (JSON-RPC, one message per line) as agent NAME,\n"
    "for a client's .mcp.json: {\"command\": \"arc\", \"args\": [\"mcp\", \"--agent\", \"NAME\"]}.\n",
    "Registers at the first request other than server/discover (replacing an\n"
    "earlier session of NAME), stays present while it runs, re-registers when the\n"
    "hub comes back, and closes the session at EOF or on SIGINT, SIGTERM or SIGHUP\n"
    "(exit status 0).\n"
    "Protocol versions: 2024-11-05, 2025-03-26, 2025-06-18, 2025-11-25, 2026-07-28.\n"
};

/* When the URL is local and nothing answers, start a hub as `arc ensure`
 * would (same storage default, relative to the client's working directory,
 * which is the project). Done before any thread exists: it forks. */
static void mcp_autostart(int explicit_url) {
    Client c;
    char err[ARC_ERRLEN];
    if (client_url(&c, g_br.url, err)) return;
    int local = hub_is_loopback(c.host);
    client_free(&c);
    if (!local || client_probe(g_br.url, g_br.token, 0, 1000)) return;
    LifeOpts o = { .argv0 = g_argv0, .timeout_s = 15 };
    serve_defaults(&o.hub);
    o.hub.host = c.host;
    o.hub.port = c.port;
    memcpy(o.hub.token, g_br.token, sizeof o.hub.token);
    char url[ARC_URLLEN], why[ARC_ERRLEN], log[ARC_PATHLEN];
    int started;
    if (life_ensure(&o, url, &started, why, log)) {
        mcp_log("could not start a hub at %s: %s%s%s", g_br.url, why,
                log[0] ? "; see " : "", log);
        return;
    }
    if (started) mcp_log("started a hub at %s (log: %s)", url, log);
    if (strcmp(url, g_br.url)) {
        if (explicit_url) mcp_log("a hub runs at %s, not at --base-url %s", url, g_br.url);
        else g_br.url = xstrndup(url, strlen(url));
    }
}

/* EOF or a stopping signal: give calls just sent half a second to finish
 * and answer, cancel what still waits (clients kill the server 2 s after
 * closing its stdin; the hub ends a call whose connection closes), and end
 * the session at the hub (DELETE /mcp), which closes the agent's. */
static void mcp_shutdown(pthread_t beat, const pthread_t *chan) {
    pthread_mutex_lock(&g_br.mu);
    g_br.closing = 1;
    pthread_cond_broadcast(&g_br.cond);
    pthread_mutex_unlock(&g_br.mu);
    if (chan) {   /* the push: its long-poll ends through the pipe */
        if (write(g_br.chan_cancel[1], "x", 1) < 0) {}
        pthread_join(*chan, NULL);
    }
    pthread_mutex_lock(&g_br.mu);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 500 * 1000000L;   /* quick calls just sent still get answers */
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    while (g_br.ncalls && pthread_cond_timedwait(&g_br.cond, &g_br.mu, &ts) != ETIMEDOUT) {}
    pthread_mutex_unlock(&g_br.mu);
    mcp_cancel((Str){ NULL, 0 });   /* then stop what waits */
    pthread_mutex_lock(&g_br.mu);
    ts.tv_sec += 1;
    while (g_br.ncalls && pthread_cond_timedwait(&g_br.cond, &g_br.mu, &ts) != ETIMEDOUT) {}
    pthread_mutex_unlock(&g_br.mu);
    /* Only once the heartbeat is done: a registration it was in the middle
     * of is one to end too. One that has not ended by now (the hub does not
     * answer) is given up. */
    if (g_br.stop[1] >= 0 && write(g_br.stop[1], "x", 1) < 0) {}
    pthread_join(beat, NULL);
    pthread_mutex_lock(&g_br.mu);
    int registered = g_br.registered;
    pthread_mutex_unlock(&g_br.mu);
    Client c;
    if (registered && mcp_client(&c, -1) == 0) {
        Buf out = { 0 };
        int streamed;
        char err[ARC_ERRLEN];
        /* Briefly: clients kill a server 2 s after closing its stdin. */
        mcp_send(&c, "DELETE", (Str){ NULL, 0 }, NULL, 2000, &out, &streamed, NULL, 0, err);
        buf_free(&out);
        client_free(&c);
    }
}

/* Bridge MCP on stdin/stdout to the hub's /mcp as one agent until EOF. */
static int cmd_mcp(int argc, char **argv) {
    const char *env_url = getenv("ARC_URL");
    McpOpts o = { .agent = getenv("ARC_AGENT"), .url = env_url,
                  .relay = getenv("ARC_RELAY_DIR") };
    OptGroup g[] = { { mcp_opts, &o, NULL, 0 } };
    opt_parse(&mcp_help, g, 1, argc, argv);
    /* A URL from ARC_URL or --base-url is not replaced by the one of a hub
     * found elsewhere (mcp_autostart). */
    int autostart = !o.no_autostart;
    int explicit_url = o.url != env_url || (env_url && *env_url);
    g_br.agent = o.agent && *o.agent ? o.agent : "mcp-client";
    g_br.url = o.url && *o.url ? o.url : "http://127.0.0.1:6969";
    g_br.relay_dir = o.relay && *o.relay ? o.relay : NULL;
    g_br.display_name = o.display_name;
    g_br.caps = o.caps;
    g_br.channel = o.channel;
    g_br.pid = proc_harness_pid(&g_br.pid_start);
    memcpy(g_br.token, o.token, sizeof g_br.token);
    Client probe;
    char err[ARC_ERRLEN];
    if (client_url(&probe, g_br.url, err)) {
        fprintf(stderr, "arc mcp: %s\n", err);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (autostart && !g_br.relay_dir) mcp_autostart(explicit_url);
    /* The tools answered here (no hub) name the agent through g_mcp. */
    g_mcp.agent = g_br.agent;
    g_mcp.url = g_br.url;
    g_mcp.relay_dir = g_br.relay_dir;
    mcp_catch_signals();   /* after autostart: the hub it starts keeps running */
    mcp_log("serving agent %s through %s", g_br.agent, mcp_where());
    /* The heartbeat thread registers at the first request that wants a
     * session (mcp_want_session): stdin is served meanwhile,
     * so a client's initialize never waits for the hub. */
    g_br.beat_ms = 0;
    if (pipe(g_br.stop)) {
        g_br.stop[0] = g_br.stop[1] = -1;   /* then shutdown waits for the hub */
    } else {
        fcntl(g_br.stop[0], F_SETFD, FD_CLOEXEC);
        fcntl(g_br.stop[1], F_SETFD, FD_CLOEXEC);
    }
    pthread_t beat;
    if (pthread_create(&beat, NULL, mcp_heartbeat_main, NULL)) {
        fprintf(stderr, "arc mcp: cannot start the heartbeat thread\n");
        return 1;
    }
    pthread_t chan;
    int have_chan = 0;
    if (g_br.channel) {
        if (pipe(g_br.chan_cancel) == 0) {
            for (int i = 0; i < 2; i++) fcntl(g_br.chan_cancel[i], F_SETFD, FD_CLOEXEC);
            have_chan = pthread_create(&chan, NULL, mcp_chan_main, NULL) == 0;
        }
        if (!have_chan) mcp_log("cannot start the channel push: %s", strerror(errno));
    }
    mcp_read_stdin();
    mcp_shutdown(beat, have_chan ? &chan : NULL);
    signal(SIGINT, SIG_IGN);   /* the session is closed: a late signal is moot */
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    for (int i = 0; i < 2; i++) {
        if (g_mcp_sig[i] >= 0) close(g_mcp_sig[i]);
        if (g_br.chan_cancel[i] >= 0) close(g_br.chan_cancel[i]);
        if (g_br.stop[i] >= 0) close(g_br.stop[i]);
    }
    return 0;
}

/* ==== dash: the embedded dashboard page (data only) ======================= */

/* The live dashboard (PROTOCOL §7.32), served by hub_root(). Generated from
 * dash/dash.html by dash/gen_dash.py, one HTML line per C line (make test
 * checks that they agree): edit the HTML, then run `make dash`. The page
 * uses only the public /v1 API and one EventSource on /v1/stream, renders
 * everything agents wrote with textContent, and keeps at most 1,500 rows in
 * the DOM. */
static const char dash_html[] =
    "<!doctype html>\n"
    "<html lang='en'>\n"
    "<head>\n"
    "<meta charset='utf-8'>\n"
    "<meta name='viewport' content='width=device-width,initial-scale=1'>\n"
    "<title>arc</title>\n"
    "<link rel='icon' href='/'>\n"
    "<style>\n"
    ":root{--bg:#0d1117;--pa:#151a21;--pb:#1c232c;--bd:#2b333e;--tx:#d5dce4;--dim:#8a96a3;\n"
    "--ac:#5aa9ff;--ok:#3fb950;--bad:#f26b63;--warn:#e3b341;color-scheme:dark}\n"
    "*{box-sizing:border-box}\n"
    "[hidden]{display:none!important}\n"
    "html,body{height:100%;margin:0}\n"
    "body{background:var(--bg);color:var(--tx);display:flex;flex-direction:column;\n"
    "overflow:hidden;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,\n"
    "'DejaVu Sans',sans-serif}\n"
    "button,select,textarea,input{font:inherit;color:inherit}\n"
    "button{cursor:pointer}\n"
    "code,pre,.mono{font-family:ui-monospace,'DejaVu Sans Mono',Menlo,Consolas,monospace}\n"
    "#top{display:flex;flex-wrap:wrap;align-items:center;gap:6px 12px;padding:7px 12px;\n"
    "background:var(--pa);border-bottom:1px solid var(--bd)}\n"
    "#brand{font-weight:700;color:var(--ac);font-size:16px;letter-spacing:.5px}\n"
    ".conn{display:inline-flex;align-items:center;gap:6px;font-size:12px;color:var(--dim)}\n"
    ".conn i{width:9px;height:9px;border-radius:50%;background:var(--warn);display:block}\n"
    ".conn.live i{background:var(--ok);box-shadow:0 0 6px var(--ok)}\n"
    ".conn.down i{background:var(--bad)}\n"
    ".conn.down b{color:var(--bad)}\n"
    ".conn b{font-weight:500}\n"
    ".pick{display:flex;align-items:center;gap:5px;font-size:12px;color:var(--dim);min-width:0}\n"
    ".pick select{background:var(--bg);border:1px solid var(--bd);border-radius:5px;\n"
    "padding:3px 4px;font-size:13px;color:var(--tx);max-width:230px;min-width:0}\n"
    "#me{margin-left:auto;font-size:12px;color:var(--dim)}\n"
    "#me b{color:var(--tx)}\n"
    "#banner{display:flex;flex-wrap:wrap;align-items:center;justify-content:center;gap:6px 12px;\n"
    "padding:7px 12px;background:#5c1d1a;color:#ffd7a8;font-weight:600;text-align:center}\n"
    "#banner button{background:#2a0e0c;border:1px solid #ffb38a;border-radius:5px;color:#ffd7a8;\n"
    "padding:2px 10px}\n"
    "#tabs{display:none;background:var(--pa);border-bottom:1px solid var(--bd)}\n"
    "#tabs button{flex:1;background:none;border:0;border-bottom:2px solid transparent;\n"
    "padding:7px 2px;color:var(--dim);font-size:13px}\n"
    "#tabs button.on{color:var(--tx);border-bottom-color:var(--ac)}\n"
    "#tabs b{color:var(--warn);font-weight:600}\n"
    "#main{flex:1;display:flex;min-height:0}\n"
    "#feedcol{flex:1;display:flex;flex-direction:column;min-width:0;position:relative}\n"
    "#viewhd{display:flex;flex-wrap:wrap;align-items:baseline;gap:2px 10px;padding:6px 14px;\n"
    "border-bottom:1px solid var(--bd);font-size:13px;color:var(--dim);min-width:0}\n"
    "#viewname{color:var(--tx);font-weight:600;font-size:15px;overflow-wrap:anywhere}\n"
    "#viewback{margin-left:auto;flex-shrink:0;max-width:none}\n"
    "#feed{flex:1;overflow-y:auto;padding:6px 0 10px;overflow-anchor:none}\n"
    "#older{display:block;margin:4px auto 8px;background:var(--pb);border:1px solid var(--bd);\n"
    "border-radius:14px;padding:3px 14px;font-size:12px;color:var(--dim)}\n"
    ".empty{color:var(--dim);font-style:italic;padding:24px;text-align:center}\n"
    ".msg,.local{padding:2px 14px;overflow-wrap:anywhere}\n"
    ".msg:hover{background:var(--pa)}\n"
    ".msg .t{color:#66717d;font-size:11px;margin-right:7px}\n"
    ".msg .from{font-weight:600;margin-right:5px}\n"
    ".msg .to{color:var(--warn);margin-right:5px;font-size:12px}\n"
    ".msg .re{color:var(--dim);font-size:11px;margin-right:5px;white-space:nowrap}\n"
    ".msg .b{white-space:pre-wrap}\n"
    ".msg.sys .from{color:var(--dim)}\n"
    ".msg.sys .b{color:var(--dim);font-style:italic}\n"
    ".msg.alert{background:#2a1d0b}\n"
    ".msg.alert .b{color:var(--warn);font-style:normal}\n"
    ".msg.self .from{color:var(--ac)!important}\n"
    ".more{background:none;border:0;color:var(--ac);padding:0 4px;font-size:12px}\n"
    ".badge{display:inline-block;border-radius:4px;padding:0 5px;margin-right:5px;\n"
    "font-size:11px;font-weight:600;vertical-align:1px;background:#30363d;color:#c9d1d9}\n"
    ".k-notice{background:#4a3a10;color:#f2cc60}\n"
    ".k-task,.k-task_request{background:#3b2363;color:#d2a8ff}\n"
    ".k-task_result{background:#113d3d;color:#6fe0d0}\n"
    ".k-claim{background:#4d2d12;color:#ffa657}\n"
    ".k-release{background:#3a2e2e;color:#e6a5a5}\n"
    ".k-artifact{background:#12391f;color:#56d364}\n"
    ".chip{display:inline-block;border:1px solid var(--bd);border-radius:10px;padding:0 6px;\n"
    "margin-right:5px;font-size:11px;color:var(--dim);background:none;max-width:100%;\n"
    "white-space:nowrap;overflow:hidden;text-overflow:ellipsis;line-height:15px;\n"
    "vertical-align:-3px}\n"
    "button.chip:hover{color:var(--ac);border-color:var(--ac)}\n"
    ".atts{margin:2px 0 2px 18px}\n"
    ".att{font-size:12px;color:var(--dim)}\n"
    ".att summary{cursor:pointer}\n"
    ".att .lbl{color:var(--ac);margin-right:6px}\n"
    ".att pre{margin:3px 0 6px;padding:6px 8px;background:var(--pa);border:1px solid var(--bd);\n"
    "border-radius:5px;max-height:300px;overflow:auto;white-space:pre-wrap;color:var(--tx)}\n"
    ".local{color:#9fb1c4;font-size:13px;white-space:pre-wrap;border-left:2px solid var(--ac);\n"
    "margin:3px 14px;padding:2px 8px;background:var(--pa)}\n"
    ".local.err{color:var(--bad);border-left-color:var(--bad)}\n"
    ".help div{display:flex;flex-wrap:wrap;column-gap:12px}\n"
    ".help code{min-width:12.5em;color:var(--tx)}\n"
    "#jump{position:absolute;right:18px;bottom:78px;background:var(--ac);color:#06111f;\n"
    "border:0;border-radius:14px;padding:4px 12px;font-weight:600;font-size:12px;\n"
    "box-shadow:0 2px 8px #0008}\n"
    "#compose{display:flex;gap:8px;padding:8px 12px;border-top:1px solid var(--bd);\n"
    "background:var(--pa)}\n"
    "#input{flex:1;resize:none;min-height:36px;max-height:160px;background:var(--bg);\n"
    "border:1px solid var(--bd);border-radius:6px;padding:7px 9px;line-height:1.4;min-width:0}\n"
    "#input:focus{outline:none;border-color:var(--ac)}\n"
    "#input::placeholder{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}\n"
    "#send{background:#1f3b5c;border:1px solid #2f5f93;border-radius:6px;padding:0 16px;\n"
    "color:#cfe4ff}\n"
    "#side{width:340px;flex-shrink:0;border-left:1px solid var(--bd);background:var(--pa);\n"
    "overflow-y:auto;padding-bottom:10px}\n"
    ".sec h2{display:flex;align-items:center;gap:6px;margin:0;padding:9px 12px 5px;\n"
    "font-size:11px;font-weight:700;text-transform:uppercase;letter-spacing:.8px;\n"
    "color:var(--dim)}\n"
    ".sec h2 .n{background:var(--pb);border-radius:8px;padding:0 6px;color:var(--tx);\n"
    "letter-spacing:0}\n"
    ".sec h2 .n.hot{background:var(--warn);color:#231a00}\n"
    ".list{padding:0 6px}\n"
    ".item{padding:5px 6px;border-radius:5px;font-size:13px;overflow-wrap:anywhere;\n"
    "cursor:pointer}\n"
    ".item:hover{background:var(--pb)}\n"
    ".item.new{background:#2a2410}\n"
    "#search{padding:0 6px 6px}\n"
    "#q{width:100%;box-sizing:border-box;background:var(--bg);border:1px solid var(--pb);\n"
    "border-radius:5px;padding:4px 6px}\n"
    ".hit mark{background:#5a4a10;color:inherit}\n"
    ".item .meta{font-size:11px;color:var(--dim)}\n"
    ".item .meta span{margin-right:8px}\n"
    ".item .txt{white-space:pre-wrap;display:block;max-height:4.3em;overflow:hidden}\n"
    ".dot{display:inline-block;width:8px;height:8px;border-radius:50%;margin-right:6px;\n"
    "background:var(--ok);vertical-align:1px}\n"
    ".dot.idle{background:var(--warn)}\n"
    ".caps{display:block;margin-top:2px}\n"
    ".cap{display:inline-block;font-size:10px;border-radius:3px;padding:0 4px;margin:1px 3px 0 0;\n"
    "background:var(--pb);color:#a8b8c8;border:1px solid var(--bd)}\n"
    ".you{font-size:10px;color:var(--ac);margin-left:5px}\n"
    ".key{font-weight:600}\n"
    ".kv .txt{display:block;max-height:4.2em;overflow:hidden}\n"
    ".soon{color:var(--warn)}\n"
    ".item.blocked .key,.item .blk{color:var(--warn)}\n"
    ".none{color:#6b7580;font-size:12px;font-style:italic;padding:2px 8px}\n"
    ".tick{color:var(--dim);font-size:11px;margin-right:5px;cursor:help}\n"
    ".tick.ans{color:var(--ok)}\n"
    ".tick.wait{color:var(--warn)}\n"
    "#hubinfo{font-size:11px;color:#6b7580;padding:12px 12px 0;overflow-wrap:anywhere}\n"
    "@media (max-width:860px){\n"
    "#tabs{display:flex}\n"
    "#side{width:auto;flex:1;border-left:0}\n"
    "body:not([data-tab=feed]) #feedcol{display:none}\n"
    "body[data-tab=feed] #side{display:none}\n"
    "body:not([data-tab=agents]) .sec[data-sec=agents]{display:none}\n"
    "body:not([data-tab=inbox]) .sec[data-sec=inbox]{display:none}\n"
    "body:not([data-tab=work]) .sec[data-sec=work]{display:none}\n"
    "body:not([data-tab=memory]) .sec[data-sec=memory]{display:none}\n"
    ".pick select{max-width:none;width:100%}\n"
    ".pick{flex:1 1 130px}\n"
    "#me{margin-left:0}\n"
    "#jump{bottom:70px}\n"
    "}\n"
    "#auth{position:fixed;inset:0;z-index:10;display:flex;align-items:center;\n"
    "justify-content:center;background:#0d1117e6;padding:16px}\n"
    "#auth div{background:var(--pa);border:1px solid var(--bd);border-radius:8px;\n"
    "padding:18px 20px;width:100%;max-width:380px;display:flex;flex-direction:column;gap:10px}\n"
    "#auth b{font-size:15px}\n"
    "#auth p{margin:0;font-size:13px;color:var(--dim)}\n"
    "#auth p.err{color:var(--bad)}\n"
    "#auth input{background:var(--bg);border:1px solid var(--bd);border-radius:6px;\n"
    "padding:7px 9px;min-width:0}\n"
    "#auth button{align-self:flex-end;background:#1f3b5c;border:1px solid #2f5f93;\n"
    "border-radius:6px;padding:5px 16px;color:#cfe4ff}\n"
    "@media (max-width:480px){\n"
    "#top{padding:6px 8px;gap:5px 8px}\n"
    ".msg,.local{padding-left:8px;padding-right:8px}\n"
    ".local{margin:3px 8px}\n"
    "#compose{padding:6px 8px}\n"
    "#send{padding:0 10px}\n"
    "}\n"
    "</style>\n"
    "</head>\n"
    "<body data-tab='feed'>\n"
    "<header id='top'>\n"
    "<span id='brand'>arc</span>\n"
    "<span id='conn' class='conn'><i></i><b id='conntx'>connecting</b></span>\n"
    "<label class='pick'>channel <select id='ch' aria-label='channel'></select></label>\n"
    "<label class='pick'>thread <select id='th' aria-label='thread'></select></label>\n"
    "<span id='me'></span>\n"
    "</header>\n"
    "<div id='banner' role='alert' hidden><span id='bantx'></span>\n"
    "<button id='bancancel' type='button'>Cancel shutdown</button></div>\n"
    "<nav id='tabs'>\n"
    "<button type='button' data-tab='feed' class='on'>Feed</button>\n"
    "<button type='button' data-tab='agents'>Agents <b id='tabAgents'></b></button>\n"
    "<button type='button' data-tab='inbox'>Inbox <b id='tabInbox'></b></button>\n"
    "<button type='button' data-tab='work'>Work <b id='tabWork'></b></button>\n"
    "<button type='button' data-tab='memory' id='tabMemBtn' hidden>Memory</button>\n"
    "</nav>\n"
    "<main id='main'>\n"
    "<section id='feedcol'>\n"
    "<div id='viewhd'><span id='viewname'></span><span id='viewinfo'></span>\n"
    "<button id='viewback' class='chip' type='button' hidden>back to channel</button></div>\n"
    "<div id='feed'>\n"
    "<button id='older' type='button' hidden>Load older messages</button>\n"
    "<div id='rows'></div>\n"
    "<div id='empty' class='empty' hidden></div>\n"
    "</div>\n"
    "<button id='jump' type='button' hidden></button>\n"
    "<form id='compose' autocomplete='off'>\n"
    "<textarea id='input' rows='1' aria-label='message'></textarea>\n"
    "<button id='send' type='submit'>Send</button>\n"
    "</form>\n"
    "</section>\n"
    "<aside id='side'>\n"
    "<section class='sec' data-sec='agents'>\n"
    "<h2>Agents <span id='nAgents' class='n'>0</span></h2><div id='agents' class='list'></div>\n"
    "</section>\n"
    "<section class='sec' data-sec='inbox' id='inboxsec'>\n"
    "<h2>Inbox <span id='nInbox' class='n'>0</span></h2><div id='inbox' class='list'></div>\n"
    "</section>\n"
    "<section class='sec' data-sec='memory' id='memsec' hidden>\n"
    "<h2>Memory <span id='nMemory' class='n'>0</span></h2><div id='memory' class='list'></div>\n"
    "</section>\n"
    "<section class='sec' data-sec='work'>\n"
    "<h2>Open tasks <span id='nTasks' class='n'>0</span></h2><div id='tasks' class='list'></div>\n"
    "</section>\n"
    "<section class='sec' data-sec='work' id='unansec' hidden>\n"
    "<h2>Unanswered <span id='nUnans' class='n'>0</span></h2><div id='unans' class='list'></div>\n"
    "</section>\n"
    "<section class='sec' data-sec='work'>\n"
    "<h2>Claims <span id='nClaims' class='n'>0</span></h2><div id='claims' class='list'></div>\n"
    "</section>\n"
    "<section class='sec' data-sec='work'>\n"
    "<h2>Locks <span id='nLocks' class='n'>0</span></h2><div id='locks' class='list'></div>\n"
    "<div id='hubinfo'></div>\n"
    "</section>\n"
    "<section class='sec' data-sec='work' id='searchsec'>\n"
    "<h2>Search <span id='nHits' class='n'></span></h2>\n"
    "<form id='search' role='search' autocomplete='off'><input id='q' type='search'\n"
    " aria-label='search messages' placeholder='words in messages and attachments'></form>\n"
    "<div id='hits' class='list'></div>\n"
    "</section>\n"
    "</aside>\n"
    "</main>\n"
    "<form id='auth' hidden><div>\n"
    "<b>This hub requires a token</b>\n"
    "<p id='autherr'>Enter the hub's token (its --token-file or ARC_TOKEN). It is kept in this\n"
    "tab only, and sent to this hub only.</p>\n"
    "<input id='token' type='password' autocomplete='off' spellcheck='false'\n"
    "aria-label='token' required>\n"
    "<button type='submit'>Connect</button>\n"
    "</div></form>\n"
    "<script>\n"
    "'use strict';\n"
    "/* Live dashboard: one EventSource on /v1/stream feeds everything; the lists\n"
    " * beside it are re-read when a message says they changed, or every 10 s.\n"
    " * Every string that came from the hub is put in the page as text. */\n"
    "const PAGE = 500;        /* messages per load; the live window keeps this many */\n"
    "const MAX_ROWS = 1500;   /* rendered rows after paging back, at most */\n"
    "const BODY_CAP = 1200;   /* characters of a body shown before 'show all' */\n"
    "const BODY_LINES = 16;   /* lines of a body shown before 'show all' */\n"
    "const ATT_CAP = 20000;   /* characters of an attachment shown when opened */\n"
    "const NL = String.fromCharCode(10);\n"
    "const WORK_KINDS = ['task', 'task_request', 'task_result', 'claim', 'release'];\n"
    "const $ = id => document.getElementById(id);\n"
    "\n"
    "const S = {\n"
    "  nick: 'operator', session: null, skew: 0, instance: '', def: 'general',\n"
    "  channel: '', thread: '', cursor: 0, es: null, esTimer: 0, backoff: 1000, fails: 0,\n"
    "  live: false, wasDown: false, channels: [], chanSet: new Set(), unread: new Map(),\n"
    "  threads: [], agents: [], agentSet: new Set(), taskBody: new Map(),\n"
    "  tasks: [], claims: [], locks: [], memory: [], info: null, started: false,\n"
    "};\n"
    "const F = {              /* the feed window: rows first..last of the view */\n"
    "  rows: $('rows'), box: $('feed'), first: 0, last: 0, count: 0, gen: 0,\n"
    "  loading: false, hasOlder: false, live: true, pending: 0, unseen: 0,\n"
    "  q: [], overflow: false, timer: 0, busy: false, held: [], failed: false,\n"
    "};\n"
    "const IN = { items: [], unread: 0 };\n"
    "\n"
    "function load(k) { try { return localStorage.getItem(k); } catch (e) { return null; } }\n"
    "function save(k, v) { try { localStorage.setItem(k, v); } catch (e) { /* private mode */ } }\n"
    "/* The hub's token, if it wants one: in sessionStorage (this tab only, gone\n"
    " * when it closes), sent as a header, never as a cookie (no other site or\n"
    " * port ever gets it); the stream, which cannot send headers, gets it as\n"
    " * access_token (PROTOCOL.md section 2.4). */\n"
    "function token() {\n"
    "  try { return sessionStorage.getItem('arc.token') || ''; } catch (e) { return ''; }\n"
    "}\n"
    "function setToken(t) {\n"
    "  try { sessionStorage.setItem('arc.token', t); } catch (e) { /* private mode */ }\n"
    "}\n"
    "function has(v) { return v !== null && v !== undefined; }\n"
    "function isObj(v) { return v !== null && typeof v === 'object' && !Array.isArray(v); }\n"
    "function enc(s) { return encodeURIComponent(s); }\n"
    "\n"
    "/* el('span', 'cls', text): an element whose only content is that text. */\n"
    "function el(tag, cls, text) {\n"
    "  const e = document.createElement(tag);\n"
    "  if (cls) e.className = cls;\n"
    "  if (text !== undefined && text !== null) e.textContent = String(text);\n"
    "  return e;\n"
    "}\n"
    "\n"
    "/* One call of the public API: {ok, status, result, error}; never throws. */\n"
    "async function api(method, path, body) {\n"
    "  const opt = { method: method, cache: 'no-store', headers: {} };\n"
    "  if (body !== undefined) {\n"
    "    opt.body = JSON.stringify(body);\n"
    "    opt.headers['Content-Type'] = 'application/json';\n"
    "  }\n"
    "  if (token()) opt.headers['Authorization'] = 'Bearer ' + token();\n"
    "  let r, j = null;\n"
    "  try { r = await fetch(path, opt); } catch (e) {\n"
    "    return { ok: false, status: 0, error: 'hub unreachable' };\n"
    "  }\n"
    "  try { j = await r.json(); } catch (e) { j = null; }\n"
    "  if (r.status === 401) askToken();\n"
    "  if (!isObj(j)) return { ok: false, status: r.status, error: 'HTTP ' + r.status };\n"
    "  return { ok: j.ok === true, status: r.status, result: j.result, more: j.more === true,\n"
    "           pending: Number(j.pending) || 0, error: String(j.error || 'HTTP ' + r.status) };\n"
    "}\n"
    "\n"
    "/* ---- time ---- */\n"
    "function pad(n) { return n < 10 ? '0' + n : String(n); }\n"
    "/* Milliseconds of an RFC 3339 UTC stamp; arc writes six fractional digits. */\n"
    "function tms(ts) {\n"
    "  if (typeof ts !== 'string') return 0;\n"
    "  const dot = ts.indexOf('.');\n"
    "  if (dot > 0 && ts.endsWith('Z'))\n"
    "    ts = ts.slice(0, dot) + (ts.slice(dot, -1) + '000').slice(0, 4) + 'Z';\n"
    "  const t = Date.parse(ts);\n"
    "  return isNaN(t) ? 0 : t;\n"
    "}\n"
    "function serverNow() { return Date.now() - S.skew; }\n"
    "function clock(ts) {\n"
    "  const t = tms(ts);\n"
    "  if (!t) return '';\n"
    "  const d = new Date(t);\n"
    "  const hms = pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());\n"
    "  if (d.toDateString() === new Date().toDateString()) return hms;\n"
    "  return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + hms;\n"
    "}\n"
    "function dur(sec) {\n"
    "  sec = Math.max(0, Math.floor(sec));\n"
    "  if (sec < 60) return sec + 's';\n"
    "  if (sec < 3600) return Math.floor(sec / 60) + 'm ' + pad(sec % 60) + 's';\n"
    "  if (sec < 86400)\n"
    "    return Math.floor(sec / 3600) + 'h ' + pad(Math.floor(sec / 60) % 60) + 'm';\n"
    "  return Math.floor(sec / 86400) + 'd ' + Math.floor(sec / 3600) % 24 + 'h';\n"
    "}\n"
    "function nickColor(name) {\n"
    "  let h = 0;\n"
    "  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;\n"
    "  return 'hsl(' + (h % 360) + ',62%,70%)';\n"
    "}\n"
    "\n"
    "/* ---- messages ---- */\n"
    "function attText(v) {\n"
    "  if (typeof v === 'string') return v;\n"
    "  try { return String(JSON.stringify(v, null, 2)); } catch (e) { return String(v); }\n"
    "}\n"
    "const KINDS = ['chat', 'notice', 'task', 'claim', 'release', 'artifact', 'task_request',\n"
    "               'task_result'];\n"
    "function badge(kind) {\n"
    "  kind = String(kind);\n"
    "  return el('span', KINDS.includes(kind) ? 'badge k-' + kind : 'badge', kind);\n"
    "}\n"
    "function attRow(a) {\n"
    "  if (!isObj(a)) return el('div', 'att', '[attachment]');\n"
    "  const type = String(a.type || 'attachment');\n"
    "  if (type === 'file_ref' || type === 'diff_ref') {\n"
    "    const d = el('div', 'att');\n"
    "    d.append(el('span', 'lbl', type === 'file_ref' ? 'file' : 'diff'));\n"
    "    let where = String(a.path || '');\n"
    "    if (a.start_line !== undefined && a.start_line !== null) {\n"
    "      where += ':' + a.start_line;\n"
    "      if (a.end_line !== undefined && a.end_line !== null) where += '-' + a.end_line;\n"
    "    }\n"
    "    d.append(el('span', 'mono', where));\n"
    "    if (a.base !== undefined || a.head !== undefined)\n"
    "      d.append(el('span', '', '  ' + attText(a.base || '') + '..' + attText(a.head || '')));\n"
    "    if (a.description !== undefined && a.description !== null)\n"
    "      d.append(el('span', '', ' - ' + attText(a.description)));\n"
    "    return d;\n"
    "  }\n"
    "  const full = attText(a.content);\n"
    "  const det = el('details', 'att');\n"
    "  const sum = el('summary');\n"
    "  let lbl = type;\n"
    "  if (type === 'code' && a.language) lbl += ' ' + a.language;\n"
    "  const lines = full.split(NL);\n"
    "  const size = lines.length + (lines.length === 1 ? ' line, ' : ' lines, ') + full.length;\n"
    "  sum.append(el('span', 'lbl', lbl), el('span', 'mono', lines[0].slice(0, 100)),\n"
    "             el('span', '', '  (' + size + ' chars)'));\n"
    "  det.append(sum);\n"
    "  det.addEventListener('toggle', () => {\n"
    "    if (det.open && !det.querySelector('pre'))\n"
    "      det.append(el('pre', '', full.length > ATT_CAP ? full.slice(0, ATT_CAP) + ' ...'\n"
    "                                                     : full));\n"
    "  });\n"
    "  return det;\n"
    "}\n"
    "function bodyEl(text) {\n"
    "  const b = el('span', 'b');\n"
    "  let cut = Math.min(text.length, BODY_CAP);\n"
    "  for (let i = 0, n = 0; i < cut; i++) if (text[i] === NL && ++n === BODY_LINES) cut = i;\n"
    "  if (cut === text.length) { b.textContent = text; return b; }\n"
    "  b.textContent = text.slice(0, cut);\n"
    "  const more = el('button', 'more', '... show all ' + text.length + ' characters');\n"
    "  more.type = 'button';\n"
    "  more.addEventListener('click', () => { b.textContent = text; });\n"
    "  b.append(more);\n"
    "  return b;\n"
    "}\n"
    "function msgRow(m) {\n"
    "  const row = el('div', 'msg');\n"
    "  const md = isObj(m.metadata) ? m.metadata : {};\n"
    "  const from = String(m.from_agent);\n"
    "  row.dataset.id = m.id;\n"
    "  if (from === 'system') row.classList.add('sys');\n"
    "  if (md.shutdown || md.recovery || md.shutdown_cancelled) row.classList.add('alert');\n"
    "  if (from === S.nick) row.classList.add('self');\n"
    "  const t = el('time', 't', clock(m.ts));\n"
    "  t.title = m.ts + '  id ' + m.id;\n"
    "  const f = el('span', 'from', from);\n"
    "  if (from !== 'system') f.style.color = nickColor(from);\n"
    "  row.append(t, f);\n"
    "  if (has(m.to_agent)) row.append(el('span', 'to', '\\u2192 ' + m.to_agent));\n"
    "  if (m.kind && m.kind !== 'chat') row.append(badge(m.kind));\n"
    "  if (has(m.thread_id) && m.thread_id !== '' && m.thread_id !== S.thread) {\n"
    "    const c = el('button', 'chip', 'thread ' + m.thread_id);\n"
    "    c.type = 'button';\n"
    "    c.title = 'open this thread';\n"
    "    c.addEventListener('click', () => switchThread(String(m.thread_id)));\n"
    "    row.append(c);\n"
    "  }\n"
    "  if (has(m.reply_to)) row.append(el('span', 're', 're #' + m.reply_to));\n"
    "  const asks = has(m.to_agent) || m.kind === 'task_request';\n"
    "  if (from !== 'system' && asks && hasReceipts()) {\n"
    "    const k = el('span', 'tick', '\\u2026');   /* filled by loadTicks */\n"
    "    k.dataset.rid = m.id;\n"
    "    row.append(k);\n"
    "    soon('ticks', 500);\n"
    "  }\n"
    "  if (has(md.task_completed))\n"
    "    row.append(el('span', 're', 'completes #' + md.task_completed));\n"
    "  const body = typeof m.body === 'string' ? m.body : has(m.body) ? attText(m.body) : '';\n"
    "  row.append(bodyEl(body));\n"
    "  if (Array.isArray(m.attachments) && m.attachments.length) {\n"
    "    const box = el('div', 'atts');\n"
    "    for (const a of m.attachments.slice(0, 64)) box.append(attRow(a));\n"
    "    row.append(box);\n"
    "  }\n"
    "  return row;\n"
    "}\n"
    "function rememberTask(m) {\n"
    "  if (m.kind !== 'task' && m.kind !== 'task_request') return;\n"
    "  S.taskBody.set(m.id, String(m.body || ''));\n"
    "  if (S.taskBody.size > 5000) S.taskBody.delete(S.taskBody.keys().next().value);\n"
    "}\n"
    "\n"
    "/* ---- the feed window ---- */\n"
    "function viewQuery() {\n"
    "  return S.thread ? 'thread_id=' + enc(S.thread) : 'channel=' + enc(S.channel);\n"
    "}\n"
    "function inView(m) {\n"
    "  if (S.thread) return m.thread_id === S.thread;\n"
    "  return (m.to_agent === null || m.to_agent === undefined) && m.channel === S.channel;\n"
    "}\n"
    "function atBottom() {\n"
    "  return F.box.scrollHeight - F.box.scrollTop - F.box.clientHeight < 40;\n"
    "}\n"
    "function toBottom() { F.box.scrollTop = F.box.scrollHeight; F.unseen = 0; updJump(); }\n"
    "function firstMsg() { return F.rows.querySelector('.msg'); }\n"
    "function updFeedBits() {\n"
    "  $('older').hidden = !F.hasOlder;\n"
    "  $('empty').hidden = F.count > 0 || F.loading;\n"
    "  $('empty').textContent = 'No messages yet in ' + viewName() + '.';\n"
    "}\n"
    "function updJump() {\n"
    "  const j = $('jump');\n"
    "  if (!F.live) {\n"
    "    j.hidden = false;\n"
    "    j.textContent = (F.pending ? F.pending + ' newer - ' : '') + 'jump to latest';\n"
    "  } else if (F.unseen) {\n"
    "    j.hidden = false;\n"
    "    j.textContent = '\\u2193 ' + F.unseen + ' new';\n"
    "  } else j.hidden = true;\n"
    "}\n"
    "function appendRows(list) {\n"
    "  const frag = document.createDocumentFragment();\n"
    "  let n = 0;\n"
    "  for (const m of list) {\n"
    "    if (m.id <= F.last) continue;\n"
    "    rememberTask(m);\n"
    "    frag.append(msgRow(m));\n"
    "    F.last = m.id;\n"
    "    if (!F.first) F.first = m.id;\n"
    "    F.count++, n++;\n"
    "  }\n"
    "  F.rows.append(frag);\n"
    "  return n;\n"
    "}\n"
    "/* Drop rendered rows from the top until keep messages are left. */\n"
    "function trimTop(keep) {\n"
    "  const before = F.box.scrollHeight;\n"
    "  while (F.count > keep && F.rows.firstChild) {\n"
    "    if (F.rows.firstChild.classList.contains('msg')) F.count--;\n"
    "    F.rows.firstChild.remove();\n"
    "  }\n"
    "  const m = firstMsg();\n"
    "  if (m && Number(m.dataset.id) !== F.first) F.hasOlder = true;\n"
    "  F.first = m ? Number(m.dataset.id) : 0;\n"
    "  return before - F.box.scrollHeight;\n"
    "}\n"
    "function trimBottom(keep) {\n"
    "  while (F.count > keep && F.rows.lastChild) {\n"
    "    if (F.rows.lastChild.classList.contains('msg')) F.count--;\n"
    "    F.rows.lastChild.remove();\n"
    "  }\n"
    "  const all = F.rows.querySelectorAll('.msg');\n"
    "  F.last = all.length ? Number(all[all.length - 1].dataset.id) : 0;\n"
    "  F.live = false;\n"
    "}\n"
    "async function loadView() {\n"
    "  const gen = ++F.gen;\n"
    "  F.loading = true; F.q = []; F.overflow = false; F.live = true;\n"
    "  F.pending = 0; F.unseen = 0; F.first = 0; F.last = 0; F.count = 0; F.hasOlder = false;\n"
    "  F.rows.replaceChildren(el('div', 'empty', 'loading ' + viewName() + ' ...'));\n"
    "  showView();\n"
    "  const r = await api('GET', '/v1/messages?' + viewQuery() + '&tail=1&limit=' + PAGE);\n"
    "  if (gen !== F.gen) return;\n"
    "  F.loading = false;\n"
    "  F.rows.replaceChildren();\n"
    "  F.failed = !r.ok;\n"
    "  if (!r.ok) {\n"
    "    F.rows.append(el('div', 'local err', 'cannot read ' + viewName() + ': ' + r.error));\n"
    "    F.last = Number.MAX_SAFE_INTEGER;   /* nothing to append to until a reload */\n"
    "  } else {\n"
    "    appendRows(r.result);\n"
    "    F.hasOlder = r.result.length >= PAGE || r.more === true;   /* cut by bytes */\n"
    "  }\n"
    "  F.rows.append(...F.held);\n"
    "  F.held = [];\n"
    "  updFeedBits();\n"
    "  updJump();\n"
    "  toBottom();\n"
    "  flushFeed();\n"
    "}\n"
    "/* Messages of the view that the stream brought: appended in one batch. */\n"
    "function queueFeed(m) {\n"
    "  F.q.push(m);\n"
    "  if (F.q.length > PAGE) { F.q.shift(); F.overflow = true; }\n"
    "  if (!F.timer) F.timer = setTimeout(flushFeed, 16);\n"
    "}\n"
    "function flushFeed() {\n"
    "  F.timer = 0;\n"
    "  if (F.loading) return;\n"
    "  let q = F.q.filter(m => m.id > F.last);\n"
    "  const overflow = F.overflow;\n"
    "  F.q = []; F.overflow = false;\n"
    "  if (!q.length) return;\n"
    "  if (!F.live) { F.pending += q.length; updJump(); return; }\n"
    "  const stick = atBottom();\n"
    "  if (overflow) {              /* more arrived than a window holds: start afresh */\n"
    "    F.rows.replaceChildren(); F.count = 0; F.first = 0; F.last = 0; F.hasOlder = true;\n"
    "    q = q.slice(-PAGE);\n"
    "  }\n"
    "  const n = appendRows(q);\n"
    "  if (stick) {\n"
    "    trimTop(PAGE);\n"
    "    toBottom();\n"
    "  } else {\n"
    "    if (F.count > MAX_ROWS) F.box.scrollTop -= trimTop(MAX_ROWS);\n"
    "    F.unseen += n;\n"
    "    updJump();\n"
    "  }\n"
    "  updFeedBits();\n"
    "}\n"
    "/* The n messages of the view just before id `before`, ascending. The API\n"
    " * pages forward only (since_id), so probe back from `before` in growing\n"
    " * spans of ids; ids are sparse, so every result is checked, never assumed. */\n"
    "async function fetchBefore(before, n, gen) {\n"
    "  let got = [], hi = before, span = n * 4;\n"
    "  for (;;) {\n"
    "    const lo = Math.max(0, hi - span);\n"
    "    const chunk = [];\n"
    "    let since = lo;\n"
    "    for (;;) {\n"
    "      const r = await api('GET', '/v1/messages?' + viewQuery() + '&since_id=' + since +\n"
    "                          '&limit=' + PAGE);\n"
    "      if (gen !== F.gen) return null;\n"
    "      if (!r.ok) throw new Error(r.error);\n"
    "      const part = r.result.filter(m => m.id < hi);\n"
    "      chunk.push(...part);\n"
    "      if (part.length < r.result.length || (r.result.length < PAGE && !r.more)) break;\n"
    "      since = r.result[r.result.length - 1].id;\n"
    "    }\n"
    "    got = chunk.concat(got);\n"
    "    if (got.length >= n) return { rows: got.slice(-n), more: true };\n"
    "    if (lo === 0) return { rows: got, more: false };\n"
    "    const density = got.length / (before - lo);\n"
    "    span = density > 0 ? Math.ceil((n - got.length) / density * 1.5) + n : span * 8;\n"
    "    hi = lo + 1;\n"
    "  }\n"
    "}\n"
    "async function loadOlder() {\n"
    "  if (F.busy || !F.first) return;\n"
    "  F.busy = true;\n"
    "  const btn = $('older');\n"
    "  btn.textContent = 'loading ...';\n"
    "  const gen = F.gen;\n"
    "  try {\n"
    "    const res = await fetchBefore(F.first, PAGE, gen);\n"
    "    if (!res) return;\n"
    "    const old = res.rows.filter(m => m.id < F.first);\n"
    "    const h = F.box.scrollHeight;\n"
    "    const frag = document.createDocumentFragment();\n"
    "    for (const m of old) { rememberTask(m); frag.append(msgRow(m)); }\n"
    "    F.rows.prepend(frag);\n"
    "    F.count += old.length;\n"
    "    if (old.length) F.first = old[0].id;\n"
    "    F.hasOlder = res.more && old.length > 0;\n"
    "    F.box.scrollTop += F.box.scrollHeight - h;\n"
    "    if (F.count > MAX_ROWS) { trimBottom(MAX_ROWS); updJump(); }\n"
    "  } catch (e) {\n"
    "    note('cannot load older messages: ' + e.message, true);\n"
    "  } finally {\n"
    "    F.busy = false;\n"
    "    btn.textContent = 'Load older messages';\n"
    "    updFeedBits();\n"
    "  }\n"
    "}\n"
    "/* A line from the dashboard itself (command output), not from the hub. */\n"
    "function note(text, bad) {\n"
    "  const n = typeof text === 'string' ? el('div', bad ? 'local err' : 'local', text) : text;\n"
    "  if (F.loading) { F.held.push(n); return; }\n"
    "  const stick = atBottom();\n"
    "  F.rows.append(n);\n"
    "  if (stick || !bad) toBottom();\n"
    "}\n"
    "\n"
    "/* ---- views and pickers ---- */\n"
    "function viewName() { return S.thread ? 'thread ' + S.thread : '#' + S.channel; }\n"
    "function threadOf(id) { return S.threads.find(t => t.thread_id === id); }\n"
    "function showView() {\n"
    "  $('viewname').textContent = viewName();\n"
    "  const t = S.thread ? threadOf(S.thread) : null;\n"
    "  let info = '';\n"
    "  const n = (k, w) => k + ' ' + w + (k === 1 ? '' : 's');\n"
    "  if (t) info = (t.channel ? '#' + t.channel + ' - ' : '') + n(t.message_count, 'message') +\n"
    "                ', ' + n(t.open_task_count, 'open task') + ', ' + t.status;\n"
    "  $('viewinfo').textContent = info;\n"
    "  $('viewback').hidden = !S.thread;\n"
    "  $('input').placeholder = 'Message ' + viewName() + '  (/help: commands)';\n"
    "  document.title = (IN.unread ? '(' + IN.unread + ') ' : '') + viewName() + ' - arc';\n"
    "}\n"
    "function setOptions(sel, opts, value) {\n"
    "  const sig = JSON.stringify(opts);\n"
    "  if (sel.dataset.sig !== sig) {\n"
    "    sel.dataset.sig = sig;\n"
    "    sel.replaceChildren(...opts.map(o => new Option(o[1], o[0])));\n"
    "  }\n"
    "  sel.value = value;\n"
    "}\n"
    "function renderChannels() {\n"
    "  const names = S.channels.slice();\n"
    "  if (S.channel && !S.chanSet.has(S.channel)) names.push(S.channel);\n"
    "  const label = n => '#' + n + (S.unread.get(n) ? '  (' + S.unread.get(n) + ')' : '');\n"
    "  setOptions($('ch'), names.map(n => [n, label(n)]), S.channel);\n"
    "}\n"
    "function renderThreads() {\n"
    "  const opts = [['', '(whole channel)']];\n"
    "  let seen = false;\n"
    "  for (const t of S.threads.slice(0, 200)) {\n"
    "    if (typeof t.thread_id !== 'string' || !t.thread_id) continue;\n"
    "    seen = seen || t.thread_id === S.thread;\n"
    "    opts.push([t.thread_id, t.thread_id + (t.channel ? '  #' + t.channel : '') + '  ' +\n"
    "               t.message_count + ' msg' + (t.status === 'waiting' ? '' : ', ' + t.status)]);\n"
    "  }\n"
    "  if (S.thread && !seen) opts.push([S.thread, S.thread]);\n"
    "  setOptions($('th'), opts, S.thread);\n"
    "}\n"
    "function switchChannel(name) {\n"
    "  S.channel = name; S.thread = ''; S.unread.delete(name);\n"
    "  save('arc.channel', name);\n"
    "  renderChannels(); renderThreads(); setTab('feed');\n"
    "  loadView();\n"
    "}\n"
    "function switchThread(id) {\n"
    "  if (!id) { switchChannel(S.channel); return; }\n"
    "  S.thread = id;\n"
    "  renderThreads(); setTab('feed');\n"
    "  loadView();\n"
    "}\n"
    "async function loadChannels() {\n"
    "  const r = await api('GET', '/v1/channels');\n"
    "  if (!r.ok) return false;\n"
    "  S.channels = r.result.map(c => String(c.name));\n"
    "  S.chanSet = new Set(S.channels);\n"
    "  renderChannels();\n"
    "  return true;\n"
    "}\n"
    "async function loadThreads() {\n"
    "  const r = await api('GET', '/v1/threads');\n"
    "  if (!r.ok) return;\n"
    "  S.threads = r.result;\n"
    "  renderThreads();\n"
    "  if (S.thread) showView();\n"
    "}\n"
    "\n"
    "/* ---- side panels ---- */\n"
    "function fill(id, nid, items, make, empty) {\n"
    "  const box = $(id);\n"
    "  box.replaceChildren(...items.slice(0, 200).map(make));\n"
    "  if (!items.length) box.append(el('div', 'none', empty));\n"
    "  else if (items.length > 200)\n"
    "    box.append(el('div', 'none', '+' + (items.length - 200) + ' more'));\n"
    "  $(nid).textContent = items.length;\n"
    "}\n"
    "/* Elements whose text counts up from (seen) or down to (exp) a time. */\n"
    "function ago(e, ts) { e.dataset.seen = tms(ts); tickOne(e); }\n"
    "function expiry(e, ts) { e.dataset.exp = tms(ts); tickOne(e); }\n"
    "function tickOne(e) {\n"
    "  if (e.dataset.exp) {\n"
    "    const left = (Number(e.dataset.exp) - serverNow()) / 1000;\n"
    "    e.textContent = left > 0 ? 'expires in ' + dur(left) : 'expired';\n"
    "    e.className = left < 60 ? 'soon' : '';\n"
    "  } else if (e.dataset.seen) {\n"
    "    e.textContent = 'seen ' + dur((serverNow() - Number(e.dataset.seen)) / 1000) + ' ago';\n"
    "  }\n"
    "}\n"
    "function dmPrefill(agent) {\n"
    "  const i = $('input');\n"
    "  i.value = '/dm ' + agent + ' ';\n"
    "  setTab('feed');\n"
    "  i.focus();\n"
    "}\n"
    "function agentRow(a) {\n"
    "  const d = el('div', 'item');\n"
    "  const dot = el('span', 'dot');\n"
    "  const idle = serverNow() - tms(a.last_seen) > 60000;\n"
    "  if (idle) dot.classList.add('idle');\n"
    "  dot.title = idle ? 'idle' : 'active';\n"
    "  const name = String(a.display_name || a.agent_id);\n"
    "  d.append(dot, el('span', 'key', name));\n"
    "  if (name !== a.agent_id) d.append(el('span', 'meta', '  ' + a.agent_id));\n"
    "  if (a.agent_id === S.nick) d.append(el('span', 'you', 'you'));\n"
    "  if (a.state) {   /* arc:presence (PROTOCOL 17.5): what its hooks report */\n"
    "    const st = el('span', 'meta', '  ' + a.state);\n"
    "    if (a.state_since) st.title = a.state + ' since ' + a.state_since;\n"
    "    d.append(st);\n"
    "  }\n"
    "  const meta = el('div', 'meta');\n"
    "  const seen = el('span');\n"
    "  ago(seen, a.last_seen);\n"
    "  meta.append(seen);\n"
    "  d.append(meta);\n"
    "  if (Array.isArray(a.capabilities) && a.capabilities.length) {\n"
    "    const caps = el('span', 'caps');\n"
    "    for (const c of a.capabilities.slice(0, 24)) caps.append(el('span', 'cap', c));\n"
    "    d.append(caps);\n"
    "  }\n"
    "  d.title = 'click to send a direct message';\n"
    "  d.addEventListener('click', () => dmPrefill(a.agent_id));\n"
    "  return d;\n"
    "}\n"
    "async function loadAgents() {\n"
    "  const r = await api('GET', '/v1/agents?presence=1&as=' + enc(S.nick));\n"
    "  if (!r.ok) return;\n"
    "  S.agents = r.result;\n"
    "  S.agentSet = new Set(r.result.map(a => a.agent_id));\n"
    "  fill('agents', 'nAgents', S.agents, agentRow, 'no live agents');\n"
    "  $('tabAgents').textContent = S.agents.length;\n"
    "}\n"
    "function inboxRow(m) {\n"
    "  const d = el('div', 'item');\n"
    "  if (m.fresh) d.classList.add('new');\n"
    "  const meta = el('div', 'meta');\n"
    "  const f = el('span', '', String(m.from_agent));\n"
    "  f.style.color = nickColor(String(m.from_agent));\n"
    "  meta.append(el('span', '', clock(m.ts)), f);\n"
    "  if (m.kind && m.kind !== 'chat') meta.append(badge(m.kind));\n"
    "  if (has(m.thread_id)) meta.append(el('span', '', 'thread ' + m.thread_id));\n"
    "  let text = String(m.body || '');\n"
    "  if (Array.isArray(m.attachments) && m.attachments.length)\n"
    "    text += (text ? NL : '') + '[attachments: ' + m.attachments.length + ']';\n"
    "  d.append(meta, el('span', 'txt', text.slice(0, 600)));\n"
    "  d.title = 'click to reply';\n"
    "  d.addEventListener('click', () => dmPrefill(String(m.from_agent)));\n"
    "  return d;\n"
    "}\n"
    "function renderInbox() {\n"
    "  fill('inbox', 'nInbox', IN.items, inboxRow, 'no direct messages to ' + S.nick);\n"
    "  const n = $('nInbox');\n"
    "  n.textContent = IN.unread ? IN.unread + ' new' : IN.items.length;\n"
    "  n.classList.toggle('hot', IN.unread > 0);\n"
    "  $('tabInbox').textContent = IN.unread || '';\n"
    "  showView();\n"
    "}\n"
    "/* ---- search (PROTOCOL \302\24715): ranked hits, matches marked \302\253 \302\273 ---- */\n"
    "/* The snippet as text nodes, the marked words in <mark>. */\n"
    "function snippetNode(text) {\n"
    "  const d = el('span', 'txt');\n"
    "  String(text).split('\\u00ab').forEach((part, i) => {\n"
    "    const end = i ? part.indexOf('\\u00bb') : -1;\n"
    "    if (end >= 0) {\n"
    "      d.append(el('mark', '', part.slice(0, end)));\n"
    "      part = part.slice(end + 1);\n"
    "    }\n"
    "    d.append(document.createTextNode(part));\n"
    "  });\n"
    "  return d;\n"
    "}\n"
    "function hitRow(h) {\n"
    "  const m = isObj(h.message) ? h.message : {};\n"
    "  const d = el('div', 'item hit');\n"
    "  const meta = el('div', 'meta');\n"
    "  const f = el('span', '', String(m.from_agent));\n"
    "  f.style.color = nickColor(String(m.from_agent));\n"
    "  meta.append(el('span', '', '#' + m.id), f, el('span', '', String(m.channel)));\n"
    "  if (m.kind && m.kind !== 'chat') meta.append(badge(m.kind));\n"
    "  d.append(meta, snippetNode(h.snippet || m.body || ''));\n"
    "  return d;\n"
    "}\n"
    "async function runSearch() {\n"
    "  const q = $('q').value.trim();\n"
    "  if (!q) { $('hits').replaceChildren(); $('nHits').textContent = ''; return; }\n"
    "  const r = await api('GET', '/v1/search?limit=50&q=' + encodeURIComponent(q) +\n"
    "                      (S.nick ? '&agent_id=' + encodeURIComponent(S.nick) : ''));\n"
    "  if (!r.ok) {\n"
    "    $('hits').replaceChildren(el('div', 'none', r.error));\n"
    "    $('nHits').textContent = '';\n"
    "    return;\n"
    "  }\n"
    "  fill('hits', 'nHits', r.result, hitRow, 'nothing found for ' + q);\n"
    "  if (r.pending)   /* the hub is still indexing older history (PROTOCOL \302\24715.4) */\n"
    "    $('hits').append(el('div', 'none', r.pending + ' newer messages not indexed yet: ' +\n"
    "                        'search again in a moment'));\n"
    "}\n"
    "/* Merge messages into the inbox (newest first, 100 kept), by id. */\n"
    "function addInbox(list, fresh) {\n"
    "  const have = new Set(IN.items.map(m => m.id));\n"
    "  let n = 0;\n"
    "  for (const m of list) {\n"
    "    if (have.has(m.id)) continue;\n"
    "    if (fresh) m.fresh = true;\n"
    "    IN.items.push(m);\n"
    "    n++;\n"
    "  }\n"
    "  if (!n) return;\n"
    "  IN.items.sort((a, b) => b.id - a.id);\n"
    "  IN.items.length = Math.min(IN.items.length, 100);\n"
    "  if (fresh) IN.unread += n;\n"
    "  renderInbox();\n"
    "}\n"
    "function readInbox() {\n"
    "  if (!IN.unread) return;\n"
    "  IN.unread = 0;\n"
    "  for (const m of IN.items) delete m.fresh;\n"
    "  renderInbox();\n"
    "}\n"
    "async function loadInbox() {\n"
    "  const r = await api('GET', '/v1/inbox/' + enc(S.nick) + '?tail=1&limit=100');\n"
    "  if (r.ok) { addInbox(r.result, false); renderInbox(); }\n"
    "}\n"
    "function taskRow(t) {\n"
    "  const d = el('div', 'item');\n"
    "  const body = S.taskBody.get(t.task_id);\n"
    "  d.append(el('span', 'key', '#' + t.task_id + ' '),\n"
    "           el('span', '', body === undefined ? '' : body.split(NL)[0].slice(0, 160)));\n"
    "  const meta = el('div', 'meta');\n"
    "  // arc:task_deps (PROTOCOL \302\24714): an open task that is not claimable waits.\n"
    "  if (t.claimable === false && Array.isArray(t.blocked_by)) {\n"
    "    d.classList.add('blocked');\n"
    "    const open = t.blocked_by.filter(i => S.tasks.some(x => x.task_id === i));\n"
    "    meta.append(el('span', 'blk', 'blocked: waits for ' +\n"
    "                   (open.length ? open : t.blocked_by).map(i => '#' + i).join(', ')));\n"
    "  }\n"
    "  meta.append(el('span', '', '#' + t.channel));\n"
    "  if (has(t.thread_id)) meta.append(el('span', '', 'thread ' + t.thread_id));\n"
    "  if (has(t.parent_task_id))\n"
    "    meta.append(el('span', '', 'parent #' + t.parent_task_id));\n"
    "  meta.append(el('span', '', dur((serverNow() - tms(t.created_at)) / 1000) + ' old'));\n"
    "  d.append(meta);\n"
    "  d.title = 'open its ' + (t.thread_id ? 'thread' : 'channel');\n"
    "  d.addEventListener('click', () => {\n"
    "    if (t.thread_id) switchThread(String(t.thread_id));\n"
    "    else if (S.chanSet.has(t.channel)) switchChannel(String(t.channel));\n"
    "  });\n"
    "  return d;\n"
    "}\n"
    "// Claims and locks are both leases: key, owner, expiry, a few facts.\n"
    "function leaseRow(key, keyCls, owner, expiresAt, facts, thread) {\n"
    "  const d = el('div', 'item');\n"
    "  const o = el('span', '', String(owner));\n"
    "  o.style.color = nickColor(String(owner));\n"
    "  d.append(el('span', keyCls, key + '  '), o);\n"
    "  const meta = el('div', 'meta');\n"
    "  const e = el('span');\n"
    "  expiry(e, expiresAt);\n"
    "  meta.append(e);\n"
    "  for (const f of facts) meta.append(el('span', '', f));\n"
    "  if (has(thread)) meta.append(el('span', '', 'thread ' + thread));\n"
    "  d.append(meta);\n"
    "  if (thread) d.addEventListener('click', () => switchThread(String(thread)));\n"
    "  return d;\n"
    "}\n"
    "function claimRow(c) {\n"
    "  const facts = has(c.task_message_id) ? ['task #' + c.task_message_id] : [];\n"
    "  return leaseRow(c.claim_key, 'key', c.owner_agent_id, c.expires_at, facts, c.thread_id);\n"
    "}\n"
    "function lockRow(l) {\n"
    "  const tid = isObj(l.metadata) ? l.metadata.thread_id : undefined;\n"
    "  return leaseRow(l.file_path, 'key mono', l.agent_id, l.expires_at, [], tid);\n"
    "}\n"
    "function renderWork() {\n"
    "  fill('tasks', 'nTasks', S.tasks, taskRow, 'no open tasks');\n"
    "  fill('claims', 'nClaims', S.claims, claimRow, 'no active claims');\n"
    "  fill('locks', 'nLocks', S.locks, lockRow, 'no active locks');\n"
    "  const n = S.tasks.length + S.claims.length + S.locks.length;\n"
    "  $('tabWork').textContent = n || '';\n"
    "}\n"
    "/* Task rows carry no text: read a task's message once, as the first\n"
    " * broadcast of its channel from its own id on. */\n"
    "async function taskBodies() {\n"
    "  const want = S.tasks.filter(t => !S.taskBody.has(t.task_id) && S.chanSet.has(t.channel));\n"
    "  if (!want.length) return;\n"
    "  await Promise.all(want.slice(0, 40).map(async t => {\n"
    "    const r = await api('GET', '/v1/messages?channel=' + enc(t.channel) + '&since_id=' +\n"
    "                        (t.task_id - 1) + '&limit=1');\n"
    "    const m = r.ok && r.result[0];\n"
    "    S.taskBody.set(t.task_id, m && m.id === t.task_id ? String(m.body || '') : '');\n"
    "  }));\n"
    "  renderWork();\n"
    "}\n"
    "async function loadWork() {\n"
    "  const [t, c, l] = await Promise.all([api('GET', '/v1/tasks?status=open'),\n"
    "    api('GET', '/v1/claims?active_only=1'), api('GET', '/v1/locks?active_only=1')]);\n"
    "  if (t.ok) S.tasks = t.result.slice().reverse();\n"
    "  if (c.ok) S.claims = c.result;\n"
    "  if (l.ok) S.locks = l.result;\n"
    "  renderWork();\n"
    "  taskBodies();\n"
    "}\n"
    "\n"
    "/* ---- receipts (arc:receipts, PROTOCOL 17): ticks, the unanswered queue ---- */\n"
    "function hasReceipts() { return !!(S.info && Array.isArray(S.info.features) &&\n"
    "                                   S.info.features.includes('arc:receipts')); }\n"
    "const TICK = { queued: '\\u2026', surfaced: '\\u2713', read: '\\u2713\\u2713',\n"
    "  acked: '\\u2713\\u2713 ack', answered: '\\u21a9 answered' };\n"
    "const RANK = ['queued', 'surfaced', 'read', 'acked', 'answered'];\n"
    "/* A sent DM's or request's tick: the least advanced of its receipts. */\n"
    "async function tickOf(k) {\n"
    "  const r = await api('GET', '/v1/messages/' + k.dataset.rid + '/receipts');\n"
    "  if (!r.ok || !Array.isArray(r.result.receipts) || !r.result.receipts.length) return;\n"
    "  const rs = r.result.receipts;\n"
    "  let low = RANK.length - 1;\n"
    "  for (const x of rs) low = Math.min(low, Math.max(0, RANK.indexOf(x.state)));\n"
    "  k.textContent = TICK[RANK[low]];\n"
    "  k.className = 'tick' + (low === 4 ? ' ans' : rs.some(x => x.escalated_at) ? ' wait' : '');\n"
    "  k.title = rs.map(x => x.agent_id + ': ' + x.summary).join(NL);\n"
    "}\n"
    "async function loadTicks() {\n"
    "  const ks = Array.from(document.querySelectorAll('.tick[data-rid]')).slice(-40);\n"
    "  await Promise.all(ks.map(tickOf));\n"
    "}\n"
    "function unansRow(u) {\n"
    "  const m = isObj(u.message) ? u.message : {};\n"
    "  const d = el('div', 'item');\n"
    "  d.append(el('span', 'key', '#' + u.message_id + '  '), badge(u.waiting));\n"
    "  const meta = el('div', 'meta');\n"
    "  const who = el('span', '', String(u.agent_id));\n"
    "  who.style.color = nickColor(String(u.agent_id));\n"
    "  meta.append(who, el('span', '', 'owes ' + u.from_agent),\n"
    "              el('span', '', 'waiting ' + dur(u.age_sec)));\n"
    "  if (u.escalated_at) meta.append(el('span', 'soon', 'escalated'));\n"
    "  d.append(el('span', 'txt', String(m.body || '').slice(0, 200)), meta);\n"
    "  return d;\n"
    "}\n"
    "async function loadUnanswered() {\n"
    "  const on = hasReceipts();\n"
    "  $('unansec').hidden = !on;\n"
    "  if (!on) return;\n"
    "  const r = await api('GET', '/v1/unanswered?limit=100');\n"
    "  if (r.ok) fill('unans', 'nUnans', r.result, unansRow, 'nothing waits for an answer');\n"
    "}\n"
    "\n"
    "/* ---- shared memory (arc:kv, PROTOCOL 13): shown when the hub has it ---- */\n"
    "function hasKv() { return !!(S.info && Array.isArray(S.info.features) &&\n"
    "                             S.info.features.includes('arc:kv')); }\n"
    "function memRow(k) {\n"
    "  const d = el('div', 'item kv');\n"
    "  d.append(el('span', 'key mono', k.key + '  '), badge(k.type));\n"
    "  let v;\n"
    "  try { v = JSON.stringify(k.value); } catch (e) { v = String(k.value); }\n"
    "  d.append(el('span', 'txt mono', String(v).slice(0, 300)));\n"
    "  const meta = el('div', 'meta');\n"
    "  const by = el('span', '', String(k.updated_by));\n"
    "  by.style.color = nickColor(String(k.updated_by));\n"
    "  meta.append(el('span', '', 'v' + k.version), by, el('span', '', clock(k.updated_at)));\n"
    "  d.append(meta);\n"
    "  d.title = k.key;\n"
    "  return d;\n"
    "}\n"
    "async function loadMemory() {\n"
    "  const on = hasKv();\n"
    "  $('memsec').hidden = !on;\n"
    "  $('tabMemBtn').hidden = !on;\n"
    "  if (!on) return;\n"
    "  const r = await api('GET', '/v1/kv?limit=500');\n"
    "  if (!r.ok) return;\n"
    "  S.memory = r.result;\n"
    "  fill('memory', 'nMemory', S.memory, memRow, 'nothing remembered yet');\n"
    "  if (r.more) $('nMemory').textContent = S.memory.length + '+';\n"
    "}\n"
    "\n"
    "/* ---- shutdown banner ---- */\n"
    "const SD = { deadline: 0, now: false };\n"
    "function renderBanner() {\n"
    "  const b = $('banner');\n"
    "  if (SD.now) {\n"
    "    b.hidden = false;\n"
    "    $('bantx').textContent = 'The hub is shutting down now.';\n"
    "    $('bancancel').hidden = true;\n"
    "  } else if (SD.deadline) {\n"
    "    b.hidden = false;\n"
    "    $('bantx').textContent = 'Hub shutdown in ' + dur((SD.deadline - Date.now()) / 1000);\n"
    "    $('bancancel').hidden = false;\n"
    "  } else b.hidden = true;\n"
    "}\n"
    "async function loadShutdown() {\n"
    "  const r = await api('GET', '/v1/shutdown');\n"
    "  if (!r.ok) return;\n"
    "  SD.now = false;\n"
    "  SD.deadline = isObj(r.result) ? Date.now() + r.result.remaining_sec * 1000 + 999 : 0;\n"
    "  renderBanner();\n"
    "}\n"
    "function shutdownNotice(m, md) {\n"
    "  const fresh = serverNow() - tms(m.ts) < 10000;\n"
    "  if (fresh && (md.final || md.delay_sec === 0)) { SD.now = true; renderBanner(); return; }\n"
    "  if (fresh && md.shutdown && md.delay_sec > 0) {\n"
    "    SD.now = false;\n"
    "    SD.deadline = Date.now() + md.delay_sec * 1000 - (serverNow() - tms(m.ts));\n"
    "    renderBanner();\n"
    "  }\n"
    "  if (fresh && md.shutdown_cancelled) { SD.deadline = 0; SD.now = false; renderBanner(); }\n"
    "  soon('shutdown', 100);\n"
    "}\n"
    "\n"
    "/* ---- refresh scheduling ---- */\n"
    "/* Maps, never plain objects, for anything keyed by a name: a channel\n"
    " * called __proto__ or constructor must not find Object.prototype's. */\n"
    "const REFRESH = new Map([['agents', loadAgents], ['work', loadWork],\n"
    "  ['threads', loadThreads], ['channels', loadChannels], ['shutdown', loadShutdown],\n"
    "  ['chlist', renderChannels], ['memory', loadMemory], ['ticks', loadTicks],\n"
    "  ['unanswered', loadUnanswered]]);\n"
    "const timers = new Map();\n"
    "function soon(key, ms) {\n"
    "  if (timers.get(key)) return;\n"
    "  timers.set(key, setTimeout(() => { timers.delete(key); REFRESH.get(key)(); }, ms || 300));\n"
    "}\n"
    "function refreshAll() {\n"
    "  loadAgents(); loadWork(); loadChannels(); loadThreads(); loadShutdown();\n"
    "  loadMemory(); loadUnanswered(); loadTicks();\n"
    "}\n"
    "\n"
    "/* ---- the event stream ---- */\n"
    "function setConn(state) {\n"
    "  const c = $('conn');\n"
    "  c.className = 'conn ' + state;\n"
    "  $('conntx').textContent = state === 'live' ? 'live' : state === 'auth' ? 'token needed' :\n"
    "    state === 'down' ? 'disconnected - retrying' : 'connecting';\n"
    "  c.title = state === 'live' ? 'event stream open' : 'no event stream';\n"
    "  S.live = state === 'live';\n"
    "}\n"
    "function dispatch(m) {\n"
    "  const md = isObj(m.metadata) ? m.metadata : {};\n"
    "  const dm = has(m.to_agent);\n"
    "  rememberTask(m);\n"
    "  if (dm && m.to_agent === S.nick) addInbox([m], true);\n"
    "  if (inView(m)) queueFeed(m);\n"
    "  else if (!dm && m.channel !== S.channel) {\n"
    "    S.unread.set(m.channel, (S.unread.get(m.channel) || 0) + 1);\n"
    "    soon('chlist', 250);\n"
    "  }\n"
    "  if (m.from_agent === 'system') {\n"
    "    if (md.shutdown || md.shutdown_cancelled) shutdownNotice(m, md);\n"
    "    if (md.recovery) { soon('agents'); soon('work'); }\n"
    "    if (md.auto_rollup || md.unblocked) soon('work');\n"
    "  } else if (!S.agentSet.has(m.from_agent)) soon('agents');\n"
    "  if (WORK_KINDS.includes(m.kind) || md.task_completed !== undefined) soon('work');\n"
    "  if (isObj(md.kv)) soon('memory');\n"
    "  if (hasReceipts()) { soon('unanswered', 500); soon('ticks', 500); }\n"
    "  if (has(m.thread_id)) soon('threads', 1000);\n"
    "  if (!dm && !S.chanSet.has(m.channel)) soon('channels');\n"
    "}\n"
    "function openStream() {\n"
    "  if (S.es) S.es.close();\n"
    "  clearTimeout(S.esTimer);\n"
    "  const es = new EventSource('/v1/stream?agent_id=' + enc(S.nick) +\n"
    "                             '&since_id=' + S.cursor +\n"
    "                             (token() ? '&access_token=' + enc(token()) : ''));\n"
    "  S.es = es;\n"
    "  es.onopen = () => {\n"
    "    if (es !== S.es) return;\n"
    "    S.backoff = 1000;\n"
    "    S.fails = 0;\n"
    "    setConn('live');\n"
    "    if (S.wasDown) { S.wasDown = false; resync(); }\n"
    "  };\n"
    "  es.onmessage = ev => {\n"
    "    if (es !== S.es) return;\n"
    "    let m;\n"
    "    try { m = JSON.parse(ev.data); } catch (e) { return; }\n"
    "    if (!isObj(m) || typeof m.id !== 'number' || m.id <= S.cursor) return;\n"
    "    S.cursor = m.id;\n"
    "    dispatch(m);\n"
    "  };\n"
    "  /* The browser retries by itself (retry: 1000, with Last-Event-ID); after\n"
    "   * a few failures, or when it gives up, reopen with since_id and back off. */\n"
    "  es.onerror = () => {\n"
    "    if (es !== S.es) return;\n"
    "    setConn('down');\n"
    "    S.wasDown = true;\n"
    "    const refused = es.readyState === EventSource.CLOSED;   /* not a stream */\n"
    "    if (refused || ++S.fails >= 3) {\n"
    "      es.close();\n"
    "      if (refused) api('GET', '/v1/hub-info');   /* a 401 brings up the form */\n"
    "      S.esTimer = setTimeout(openStream, S.backoff);\n"
    "      S.backoff = Math.min(S.backoff * 2, 8000);\n"
    "    }\n"
    "  };\n"
    "}\n"
    "/* After the stream came back: the hub may have restarted, or be other state. */\n"
    "async function resync() {\n"
    "  const info = await api('GET', '/v1/hub-info');\n"
    "  if (!info.ok) return;\n"
    "  showInfo(info.result);\n"
    "  await register(S.nick);\n"
    "  if (info.result.instance_id !== S.instance) {\n"
    "    S.instance = info.result.instance_id;\n"
    "    S.cursor = Number(info.result.latest_message_id) || 0;\n"
    "    IN.items = []; IN.unread = 0; S.taskBody.clear();\n"
    "    openStream();\n"
    "    loadView(); loadInbox();\n"
    "  } else if (F.failed) loadView();\n"
    "  refreshAll();\n"
    "}\n"
    "function showInfo(i) {\n"
    "  S.info = i;\n"
    "  $('hubinfo').textContent = (i.implementation || 'hub') + ' ' +\n"
    "    (i.implementation_version || '') + ' - protocol ' + i.protocol_version +\n"
    "    ' - instance ' + i.instance_id + ' - remote access ' +\n"
    "    (i.allow_remote ? 'on' : 'off') + (i.storage_path ? ' - ' + i.storage_path : '');\n"
    "}\n"
    "async function register(nick) {\n"
    "  const r = await api('POST', '/v1/sessions', { agent_id: nick, display_name: nick,\n"
    "    capabilities: ['operator', 'human'], metadata: { client: 'arc-dashboard' },\n"
    "    replace: true });\n"
    "  if (r.ok) {\n"
    "    S.session = r.result;\n"
    "    const t = tms(r.result.created_at);\n"
    "    if (t) S.skew = Date.now() - t;\n"
    "  }\n"
    "  return r;\n"
    "}\n"
    "function showMe() {\n"
    "  const me = $('me');\n"
    "  me.replaceChildren('as ', el('b', '', S.nick));\n"
    "  me.title = 'your agent id; change it with /nick NAME';\n"
    "}\n"
    "\n"
    "/* ---- input and commands ---- */\n"
    "const HELP = [\n"
    "  ['/channels', 'list channels'],\n"
    "  ['/channel NAME', 'switch to a channel'],\n"
    "  ['/create-channel NAME', 'create a channel and switch to it'],\n"
    "  ['/dm AGENT TEXT', 'direct message to an agent'],\n"
    "  ['/nick NAME', 'post as NAME (kept in this browser)'],\n"
    "  ['/network on|off', 'allow or refuse remote access'],\n"
    "  ['/quit [SEC]', 'shut the hub down in SEC seconds (default 60)'],\n"
    "  ['/cancel', 'cancel a pending shutdown'],\n"
    "  ['//text', 'post text that starts with /'],\n"
    "  ['Enter', 'send (Shift+Enter: new line; Up: history)']];\n"
    "function help() {\n"
    "  const box = el('div', 'local help');\n"
    "  for (const [c, d] of HELP) {\n"
    "    const line = el('div');\n"
    "    line.append(el('code', '', c), el('span', '', d));\n"
    "    box.append(line);\n"
    "  }\n"
    "  return box;\n"
    "}\n"
    "/* Split off the first word: [word, rest]; whitespace is any char <= ' '. */\n"
    "function word(s) {\n"
    "  s = s.trim();\n"
    "  let i = 0;\n"
    "  while (i < s.length && s[i] > ' ') i++;\n"
    "  return [s.slice(0, i), s.slice(i).trim()];\n"
    "}\n"
    "function postChannel() {\n"
    "  const t = S.thread ? threadOf(S.thread) : null;\n"
    "  return t && t.channel ? String(t.channel) : S.channel;\n"
    "}\n"
    "async function cmdNick(name) {\n"
    "  if (!name || word(name)[1] || name.length > 64) {\n"
    "    note('usage: /nick NAME (one word)', true);\n"
    "    return;\n"
    "  }\n"
    "  if (name === S.nick) return;\n"
    "  const old = S.session;\n"
    "  const r = await register(name);\n"
    "  if (!r.ok) { note('cannot register ' + name + ': ' + r.error, true); return; }\n"
    "  if (old && old.session_id) api('DELETE', '/v1/sessions/' + enc(old.session_id));\n"
    "  S.nick = name;\n"
    "  save('arc.nick', name);\n"
    "  IN.items = []; IN.unread = 0;\n"
    "  showMe(); openStream(); loadInbox(); loadAgents();\n"
    "  note('you are now ' + name);\n"
    "}\n"
    "async function command(line) {\n"
    "  const [cmd0, rest] = word(line);\n"
    "  const cmd = cmd0.toLowerCase();\n"
    "  const [arg, tail] = word(rest);\n"
    "  let r;\n"
    "  switch (cmd) {\n"
    "  case '/help': case '/?':\n"
    "    note(help()); break;\n"
    "  case '/channels':\n"
    "    await loadChannels();\n"
    "    note('channels: ' + S.channels.map(c => '#' + c).join('  '));\n"
    "    break;\n"
    "  case '/channel': case '/join': {\n"
    "    const name = arg.replace(/^#/, '');\n"
    "    if (!name) { note('usage: /channel NAME', true); break; }\n"
    "    if (!S.chanSet.has(name)) await loadChannels();\n"
    "    if (!S.chanSet.has(name)) {\n"
    "      note('no channel #' + name + ' (create it with /create-channel ' + name + ')', true);\n"
    "      break;\n"
    "    }\n"
    "    switchChannel(name);\n"
    "    break;\n"
    "  }\n"
    "  case '/create-channel': {\n"
    "    const name = arg.replace(/^#/, '');\n"
    "    if (!name) { note('usage: /create-channel NAME', true); break; }\n"
    "    r = await api('POST', '/v1/channels', { name: name, created_by: S.nick });\n"
    "    if (!r.ok) { note('cannot create #' + name + ': ' + r.error, true); break; }\n"
    "    await loadChannels();\n"
    "    switchChannel(String(r.result.name));\n"
    "    note((r.status === 201 ? 'created #' : 'already there: #') + r.result.name);\n"
    "    break;\n"
    "  }\n"
    "  case '/dm': case '/msg':\n"
    "    if (!arg || !tail) { note('usage: /dm AGENT TEXT', true); break; }\n"
    "    r = await api('POST', '/v1/messages', { from_agent: S.nick, to_agent: arg,\n"
    "                                            body: tail });\n"
    "    if (r.ok) note('\\u2192 ' + arg + ': ' + tail);\n"
    "    else note('not sent: ' + r.error, true);\n"
    "    break;\n"
    "  case '/nick':\n"
    "    await cmdNick(rest);\n"
    "    break;\n"
    "  case '/network': {\n"
    "    const on = arg.toLowerCase();\n"
    "    if (on && on !== 'on' && on !== 'off') { note('usage: /network on|off', true); break; }\n"
    "    r = await api('POST', '/v1/network', on ? { allow_remote: on === 'on' } : {});\n"
    "    if (!r.ok) { note('network: ' + r.error, true); break; }\n"
    "    note('remote access is ' + (r.result.allow_remote ? 'on' : 'off') + ' (listening on ' +\n"
    "         r.result.listen_host + ')');\n"
    "    if (S.info) { S.info.allow_remote = r.result.allow_remote; showInfo(S.info); }\n"
    "    break;\n"
    "  }\n"
    "  case '/quit': case '/shutdown': {\n"
    "    const sec = arg === '' ? 60 : Number(arg);\n"
    "    r = await api('POST', '/v1/shutdown', { delay_sec: Number.isFinite(sec) ? sec : arg });\n"
    "    if (!r.ok) { note('shutdown: ' + r.error, true); break; }\n"
    "    note(r.result.delay_sec ? 'hub shutdown in ' + r.result.delay_sec +\n"
    "                              ' s (/cancel to stop it)' : 'hub is shutting down now');\n"
    "    if (r.result.delay_sec) loadShutdown();\n"
    "    else { SD.now = true; renderBanner(); }\n"
    "    break;\n"
    "  }\n"
    "  case '/cancel':\n"
    "    r = await api('POST', '/v1/shutdown/cancel', {});\n"
    "    if (!r.ok) { note('cancel: ' + r.error, true); break; }\n"
    "    SD.deadline = 0; SD.now = false; renderBanner();\n"
    "    note('shutdown cancelled');\n"
    "    break;\n"
    "  default:\n"
    "    note('unknown command ' + cmd + ' (try /help)', true);\n"
    "  }\n"
    "}\n"
    "const H = { list: [], pos: 0 };\n"
    "async function send() {\n"
    "  const input = $('input');\n"
    "  const text = input.value;\n"
    "  if (!text.trim()) return;\n"
    "  input.value = '';\n"
    "  grow();\n"
    "  H.list.push(text);\n"
    "  if (H.list.length > 50) H.list.shift();\n"
    "  H.pos = H.list.length;\n"
    "  if (text[0] === '/' && text[1] !== '/') { await command(text.trim()); return; }\n"
    "  const msg = { from_agent: S.nick, channel: postChannel(), kind: 'chat',\n"
    "                body: text[0] === '/' ? text.slice(1) : text };\n"
    "  if (S.thread) msg.thread_id = S.thread;\n"
    "  const r = await api('POST', '/v1/messages', msg);\n"
    "  if (!r.ok) {\n"
    "    note('not sent: ' + r.error, true);\n"
    "    if (!input.value) { input.value = text; grow(); }\n"
    "  }\n"
    "}\n"
    "function grow() {\n"
    "  const i = $('input');\n"
    "  i.style.height = 'auto';\n"
    "  i.style.height = Math.min(i.scrollHeight + 2, 160) + 'px';\n"
    "}\n"
    "function setTab(tab) {\n"
    "  document.body.dataset.tab = tab;\n"
    "  for (const b of document.querySelectorAll('#tabs button'))\n"
    "    b.classList.toggle('on', b.dataset.tab === tab);\n"
    "  if (tab === 'inbox') readInbox();\n"
    "}\n"
    "\n"
    "/* ---- wiring ---- */\n"
    "$('compose').addEventListener('submit', e => { e.preventDefault(); send(); });\n"
    "$('input').addEventListener('keydown', e => {\n"
    "  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {\n"
    "    e.preventDefault();\n"
    "    send();\n"
    "    return;\n"
    "  }\n"
    "  const i = e.target;\n"
    "  if (e.key === 'ArrowUp' && H.pos > 0 && (!i.value || i.value === H.list[H.pos])) {\n"
    "    e.preventDefault(); i.value = H.list[--H.pos]; grow();\n"
    "  } else if (e.key === 'ArrowDown' && H.pos < H.list.length && i.value === H.list[H.pos]) {\n"
    "    e.preventDefault(); i.value = H.list[++H.pos] || ''; grow();\n"
    "  }\n"
    "});\n"
    "$('input').addEventListener('input', grow);\n"
    "$('ch').addEventListener('change', e => switchChannel(e.target.value));\n"
    "$('th').addEventListener('change', e => switchThread(e.target.value));\n"
    "$('viewback').addEventListener('click', () => switchChannel(S.channel));\n"
    "$('older').addEventListener('click', loadOlder);\n"
    "$('jump').addEventListener('click', () => { if (F.live) toBottom(); else loadView(); });\n"
    "$('feed').addEventListener('scroll', () => {\n"
    "  if (F.unseen && atBottom()) { F.unseen = 0; updJump(); }\n"
    "});\n"
    "$('bancancel').addEventListener('click', () => command('/cancel'));\n"
    "$('inboxsec').addEventListener('click', readInbox);\n"
    "$('search').addEventListener('submit', (ev) => { ev.preventDefault(); runSearch(); });\n"
    "$('inboxsec').addEventListener('mouseenter', readInbox);\n"
    "for (const b of document.querySelectorAll('#tabs button'))\n"
    "  b.addEventListener('click', () => setTab(b.dataset.tab));\n"
    "setInterval(() => {\n"
    "  for (const e of document.querySelectorAll('#side [data-exp], #side [data-seen]'))\n"
    "    tickOne(e);\n"
    "  if (SD.deadline && !SD.now) {\n"
    "    if (Date.now() > SD.deadline + 3000) { SD.deadline = 0; soon('shutdown', 10); }\n"
    "    renderBanner();\n"
    "  }\n"
    "}, 1000);\n"
    "setInterval(() => { if (S.live && !document.hidden) refreshAll(); }, 10000);\n"
    "document.addEventListener('visibilitychange', () => {\n"
    "  if (!document.hidden && S.live) refreshAll();\n"
    "});\n"
    "\n"
    "/* Show the token form (the hub answered 401); once a token is entered,\n"
    " * start, or reconnect and catch up as after a dropped stream. */\n"
    "function askToken() {\n"
    "  const f = $('auth');\n"
    "  if (!f.hidden) return;\n"
    "  const had = token() !== '';\n"
    "  $('autherr').className = had ? 'err' : '';\n"
    "  if (had) $('autherr').textContent = 'The hub refused that token. Enter the current one.';\n"
    "  f.hidden = false;\n"
    "  $('token').value = '';\n"
    "  $('token').focus();\n"
    "}\n"
    "$('auth').addEventListener('submit', e => {\n"
    "  e.preventDefault();\n"
    "  setToken($('token').value.trim());\n"
    "  $('auth').hidden = true;\n"
    "  if (!S.started) { init(); return; }\n"
    "  S.wasDown = true;\n"
    "  openStream();\n"
    "});\n"
    "\n"
    "async function init() {\n"
    "  setConn('connecting');\n"
    "  const info = await api('GET', '/v1/hub-info');\n"
    "  if (info.status === 401) { setConn('auth'); return; }   /* the form restarts us */\n"
    "  if (!info.ok) { setConn('down'); setTimeout(init, 2000); return; }\n"
    "  S.started = true;\n"
    "  showInfo(info.result);\n"
    "  S.instance = info.result.instance_id;\n"
    "  S.def = String(info.result.default_channel || 'general');\n"
    "  S.nick = load('arc.nick') || 'operator';\n"
    "  showMe();\n"
    "  const reg = await register(S.nick);\n"
    "  if (!reg.ok) note('cannot register as ' + S.nick + ': ' + reg.error, true);\n"
    "  if (typeof info.result.latest_message_id === 'number') {\n"
    "    S.cursor = info.result.latest_message_id;\n"
    "  } else {\n"
    "    const b = await api('GET', '/v1/bootstrap?agent_id=' + enc(S.nick));\n"
    "    S.cursor = b.ok ? Number(b.result.latest_visible_id) || 0 : 0;\n"
    "  }\n"
    "  await loadChannels();\n"
    "  const want = load('arc.channel');\n"
    "  S.channel = want && S.chanSet.has(want) ? want : S.def;\n"
    "  renderChannels();\n"
    "  renderThreads();\n"
    "  openStream();\n"
    "  loadView(); loadInbox(); refreshAll();\n"
    "}\n"
    "init();\n"
    "</script>\n"
    "</body>\n"
    "</html>\n";

/* The page's bytes, without the terminating NUL. */
static Str dash_page(void) { return (Str){ dash_html, sizeof dash_html - 1 }; }

/* ==== main: the command table, arc_main(), main() ======================== */

static int cmd_version(int argc, char **argv) {
    (void)argc, (void)argv;
    printf("arc %s (SQLite %s)\n", ARC_VERSION, sqlite3_libversion());
    return 0;
}

static int cmd_help(int argc, char **argv);

typedef struct {
    const char *name;
    int (*run)(int, char **);
    const char *help;
} Cmd;

static const Cmd cmds[] = {
    { "serve", cmd_serve, "run the hub in the foreground (the default)" },
    { "ensure", cmd_ensure, "start a hub in the background unless one runs" },
    { "stop", cmd_stop, "stop the running hub" },
    { "reset", cmd_reset, "stop the hub and delete its storage" },
    { "status", cmd_status, "is a hub running? url, pid, uptime, counts" },
    { "post", cmd_post, "post a message (or a DM with --to) as an agent" },
    { "poll", cmd_poll, "wait for messages visible to an agent" },
    { "whoami", cmd_whoami, "register an agent and print its bootstrap" },
    { "tasks", cmd_tasks, "list tasks, what each waits for, claimable or not" },
    { "kv", cmd_kv, "shared memory: get, put, list, del, history" },
    { "search", cmd_search, "full-text search of messages as an agent" },
    { "ack", cmd_ack, "acknowledge a message as its recipient" },
    { "receipts", cmd_receipts, "who got a message: surfaced, read, acked, answered" },
    { "unanswered", cmd_unanswered, "requests and acks still waiting, oldest first" },
    { "smoke", cmd_smoke, "check an installation: three agents, HTTP + relay" },
    { "smoke-agent", cmd_smoke_agent, "run one deterministic smoke role" },
    { "mcp", cmd_mcp, "serve MCP tools over stdio as one agent" },
    { "relay", cmd_relay, "forward a file spool to a hub over HTTP" },
    { "relay-gc", cmd_relay_gc, "delete old answered files from a spool" },
    { "hook", cmd_hook, "answer a harness's hook as an agent (PROTOCOL §16.6)" },
    { "setup", cmd_setup, "wire arc into a harness: claude, codex, gemini ..." },
    { "doctor", cmd_doctor, "check a project: hub, each harness's arc wiring" },
    { "version", cmd_version, "print the version" },
    { "help", cmd_help, "list the commands" },
};

static int cmd_help(int argc, char **argv) {
    (void)argc, (void)argv;
    printf("arc %s -- local-first coordination hub for AI coding agents\n\n"
           "usage: arc [COMMAND] [options]   (no command: serve)\n\n"
           "commands:\n", ARC_VERSION);
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
        printf("  %-12s %s\n", cmds[i].name, cmds[i].help);
    printf("\nRun 'arc COMMAND --help' for a command's options.\n");
    return 0;
}

int arc_main(int argc, char **argv) {
    if (argc > 0) g_argv0 = argv[0];
    /* A peer that closes early (a hub, a client, a pipe) must turn into an
     * EPIPE error return, never a silent death. */
    signal(SIGPIPE, SIG_IGN);
    rand_open();
    if (argc < 2 || argv[1][0] == '-') {
        if (argc >= 2 && !strcmp(argv[1], "--version")) return cmd_version(0, NULL);
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
            cmd_help(0, NULL);
            printf("\n");
            serve_print_help();
            return 0;
        }
        return cmd_serve(argc - 1, argv + 1);
    }
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
        if (!strcmp(argv[1], cmds[i].name)) return cmds[i].run(argc - 2, argv + 2);
    fprintf(stderr, "arc: unknown command '%s' (see arc help)\n", argv[1]);
    return 2;
}

#ifndef ARC_NO_MAIN
int main(int argc, char **argv) { return arc_main(argc, argv); }
#endif
