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
 *   http   incremental request parser, query/path decoding, responses
 *   store  schema, prepared statements, group-commit transactions, rows,
 *          the rendered-message cache
 *   hub    sessions, channels, messages, claims, locks, tasks, threads;
 *          access checks (Host, Origin, token), routing, JSON envelopes
 *   relay  the file-spool thread: inotify, claim, hand to the loop, answer
 *   loop   event loop (epoll or poll()), Conn lifecycle, timer heap,
 *          parking in wait buckets, fan-out;
 *          then `serve`: options, listening socket, pidfile, the hub's life
 *   cli    blocking HTTP/relay client, ensure/stop/reset/status,
 *          post/poll/whoami, the standalone relay and relay-gc
 *   smoke  the reference's three smoke roles and `arc smoke`
 *   main   command table, arc_main(), main()
 */

/* ==== base: limits, types, log, Str, Buf, clock, sha256 ================== */

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
#define ARC_MSG_CACHE_BYTES (4u << 20)  /* rendered-message cache, in all */
#endif
#define ARC_MSG_CACHE_SLOTS 4096  /* ... direct-mapped by message id */
#define ARC_MSG_CACHE_ENTRY 16384 /* ... larger messages are not cached */
#define ARC_MAX_LIMIT 500         /* PROTOCOL §3: limit clamp */
#define ARC_MAX_WAIT_S 60         /* PROTOCOL §3: long-poll timeout clamp */
#define ARC_MAX_TTL_S 315360000   /* ten years: keeps expiry dates printable */
#define ARC_MAX_ID 9007199254740991LL /* 2^53 - 1, PROTOCOL §3 */
#define ARC_NO_ID INT64_MIN       /* "no id" where any int64 is a valid id */
#define ARC_ERRLEN 512
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

/* Mark, for object `obj`, which members survive duplicate-key resolution:
 * keep[m] is 0 for every member whose key appears again later (the last
 * value wins, as in Python). Quadratic, so only for objects of sane size;
 * larger ones are deduplicated by sorting. */
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
    Str host, origin, last_event_id, sec_fetch_site, authorization;
    int n_headers;
    int err_status;                   /* with ARC_BAD: status to answer */
    const char *err_msg;              /* with ARC_BAD: static text */
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
        if ((unsigned char)v.p[i] < 0x20 && v.p[i] != '\t')
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
        r->origin = v;
    } else if (str_ieq(name, "last-event-id")) {
        r->last_event_id = v;
    } else if (str_ieq(name, "sec-fetch-site")) {
        r->sec_fetch_site = v;
    } else if (str_ieq(name, "authorization")) {
        r->authorization = v;
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
    "CREATE INDEX IF NOT EXISTS ix_t_st ON tasks(status);";

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

/* Emit a stored JSON column, falling back to `dflt` when the stored text is
 * not valid JSON (a foreign writer could have put anything there). */
static void store_emit_json(Store *s, Buf *b, Str v, const char *dflt) {
    if (v.n == 2 && (str_eq(v, "{}") || str_eq(v, "[]"))) buf_addstr(b, v);
    else if (v.p && v.n && json_parse(&s->scratch, v.p, v.n) == 0) buf_addstr(b, v);
    else buf_adds(b, dflt);
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
}

static const StoreCached *store_cache_get(const Store *s, int64_t id) {
    if (!s->cache) return NULL;
    const StoreCached *c = &s->cache[(uint64_t)id % ARC_MSG_CACHE_SLOTS];
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
    size_t mark = b->len;
    buf_adds(b, "{\"id\":");
    store_emit_int(b, st, 0);
    buf_adds(b, ",\"ts\":");
    store_emit_text(b, store_col(st, 1));
    buf_adds(b, ",\"from_agent\":");
    store_emit_text(b, store_col(st, 2));
    buf_adds(b, ",\"to_agent\":");
    store_emit_text(b, store_col(st, 3));
    buf_adds(b, ",\"channel\":");
    store_emit_text(b, store_col(st, 4));
    buf_adds(b, ",\"kind\":");
    store_emit_text(b, store_col(st, 5));
    buf_adds(b, ",\"body\":");
    store_emit_text(b, store_col(st, 6));
    buf_adds(b, ",\"attachments\":");
    store_emit_json(s, b, store_col(st, 7), "[]");
    buf_adds(b, ",\"reply_to\":");
    store_emit_int(b, st, 8);
    buf_adds(b, ",\"thread_id\":");
    store_emit_text(b, store_col(st, 9));
    buf_adds(b, ",\"metadata\":");
    store_emit_json(s, b, store_col(st, 10), "{}");
    buf_addc(b, '}');
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
     * fsync instead of one per statement on a new file. */
    if (sqlite3_exec(s->db, "PRAGMA journal_mode=WAL;", NULL, NULL, &e) ||
        sqlite3_exec(s->db, sync, NULL, NULL, &e) ||
        sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, &e) ||
        sqlite3_exec(s->db, store_schema, NULL, NULL, &e)) {
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
    const char *spool_dir;         /* relay spool (reported only, for now) */
    int allow_remote;              /* may bind a non-loopback address */
    int insecure_no_auth;          /* ... even without a token */
    char token[ARC_MAX_TOKEN + 1]; /* bearer token; "" = none (§2.4) */
    const char *allowed_hosts[ARC_MAX_ALLOWED_HOSTS];  /* borrowed from argv */
    int n_allowed_hosts;           /* --allowed-host names (§2.2) */
    int64_t max_body_chars;        /* message body, in code points */
    int64_t max_attachment_chars;  /* one attachment's JSON-encoded content */
    int64_t max_attachments;       /* per message */
    int64_t presence_ttl_s;        /* a session idle this long expires */
    int sync_full;                 /* PRAGMA synchronous=FULL (default) */
    int max_conns;                 /* client sockets, ARC_MAX_CONNS */
    int64_t idle_ms;               /* ARC_IDLE_MS */
    int64_t head_ms;               /* ARC_HEAD_MS */
    int64_t body_ms;               /* ARC_BODY_MS */
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
} Wait;

static void wait_free(Wait *w) {
    free(w->agent);
    free(w->channel);
    free(w->thread);
    for (int i = 0; i < w->n_channels; i++) free(w->channels[i]);
    free(w->channels);
    free(w->channel_set);
    memset(w, 0, sizeof *w);
}

typedef struct Conn Conn;   /* loop: one client socket */

typedef struct {
    HubConfig cfg;
    size_t token_n;              /* strlen(cfg.token) */
    Store store;
    int64_t max_request_bytes;   /* body cap, PROTOCOL §4 */
    NewMsg *batch;               /* messages written in this turn */
    int n_batch, cap_batch;
    char started_at[ISO_LEN];    /* when this process began serving */
    int64_t shutdown_at_ms;      /* pending shutdown deadline, 0 = none */
    int64_t shutdown_delay_s;
    int shutdown_now;            /* leave the loop at the end of this turn */
    /* loop state (see the loop section) */
    int listen_fd, wake_rd, wake_wr;
    Conn *conns;                 /* all client connections */
    int n_conns;                 /* conns, relayed ones included */
    int n_sockets;               /* conns with a socket: cfg.max_conns */
    int spare_fd;                /* held open to shed load on EMFILE, or -1 */
    int64_t accept_pause_until;  /* EMFILE back-off without a spare fd */
    int64_t warned_ms;           /* last EMFILE/poll warning (rate limit) */
    Conn **heap;                 /* min-heap of conns by deadline_ms */
    int n_heap, cap_heap;
    struct Poller *poller;       /* owned: readiness of all our fds */
    int wake_slot, listen_slot, wal_slot;   /* their poller handles */
    unsigned listen_ev, wal_ev;  /* what the listener, the watch are watched for */
    Conn **touched;              /* conns this turn acted on */
    int n_touched, cap_touched;
    struct WaitBucket **wb;      /* waiting conns by channel: hash table */
    int n_wb, cap_wb;
    struct WaitBucket *wb_any;   /* owned: those waiting on any channel */
    int64_t fan_stamp;           /* fan-out passes (WaitBucket.stamp) */
    int *fan_idx, *fan_tmp;      /* fan-out: the shared answer's matches */
    int fan_n, cap_fan, fan_keep;
    Buf fan_resp;                /* ... and its bytes */
    struct Sender *sender;       /* owned: threads for large fan-outs */
    int sending;                 /* this fan-out's writes go to them */
    int n_parked;                /* conns parked or streaming */
    int64_t now_ms;
    int64_t next_prune_ms, next_touch_ms, next_dv_ms;
    int wal_watch;               /* inotify on the -wal file, or -1 */
    int64_t dv_until_ms;         /* re-check data_version until then */
    int64_t dv_step_ms;          /* the re-check interval, doubling */
    Conn **held;                 /* conns whose responses await the commit */
    struct Relay *relay;         /* the spool thread, or NULL */
    int n_held, cap_held;
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
static int hub_tx(Hub *h, Req *q, Res *r) {
    if (q->sp_open) return 0;
    if (store_begin(&h->store)) {
        q->busy = h->store.busy;
        hub_fail(r, 503, "storage error: %s", h->store.err);
        return -1;
    }
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
    }
    store_exec(&h->store, "RELEASE req");
}

/* ---- request fields, coerced as the reference coerces them ---- */

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
    if (json_to_i64(&q->body, v, out) == 0) return 1;
    hub_fail(r, 400, "%s must be an integer", name);
    return -1;
}

/* Object field: token index (0 = absent or null), or -1 with r failed. */
static long hub_obj(Req *q, Res *r, const char *name) {
    uint32_t v = q->has_body ? json_get_val(&q->body, 0, name) : 0;
    if (!v) return 0;
    if (q->body.t[v].type == JSON_OBJ) return (long)v;
    hub_fail(r, 400, "%s must be a JSON object", name);
    return -1;
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

/* Query parameter copied out (owned), or NULL when absent. */
static char *hub_qdup(Req *q, Res *r, const char *name, int *err) {
    int rc = hub_qp(q, r, name);
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
    int n = 0;
    Json mj = { 0 };
    Buf tmp = { 0 };
    sqlite3_stmt *st = store_stmt(&h->store, is_lock ? locks_sql : claims_sql);
    if (st) {
        store_bind(st, 1, agent);
        store_bind_c(st, 2, now);
    }
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        items = xrealloc(items, (size_t)(n + 1) * sizeof *items);
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

/* Deactivate sessions idle past the presence TTL and recover their work.
 * Runs on the prune tick and before listing agents. Returns how many. */
static int hub_expire_sessions(Hub *h, Req *q, Res *r) {
    static const char find[] =
        "SELECT session_id,agent_id,last_seen FROM sessions WHERE active=1";
    static const char deact[] =
        "UPDATE sessions SET active=0 WHERE session_id=?";
    int64_t cutoff = clock_wall_us() - h->cfg.presence_ttl_s * 1000000;
    char **ids = NULL, **agents = NULL;
    int n = 0;
    sqlite3_stmt *st = store_stmt(&h->store, find);
    if (!st) return 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (hub_ts_at_least(store_col(st, 2), cutoff)) continue;
        ids = xrealloc(ids, (size_t)(n + 1) * sizeof *ids);
        agents = xrealloc(agents, (size_t)(n + 1) * sizeof *agents);
        Str a = store_col(st, 0), b = store_col(st, 1);
        ids[n] = xstrndup(a.p ? a.p : "", a.n);
        agents[n] = xstrndup(b.p ? b.p : "", b.n);
        n++;
    }
    sqlite3_reset(st);
    if (n && hub_tx(h, q, r) == 0) {
        for (int i = 0; i < n; i++) {
            st = store_stmt(&h->store, deact);
            if (!st) break;
            store_bind_c(st, 1, ids[i]);
            store_done(&h->store, st);
            log_info("session expired: agent=%s session=%s", agents[i], ids[i]);
        }
        for (int i = 0; i < n; i++) hub_recover(h, q, r, str_c(agents[i]));
    }
    for (int i = 0; i < n; i++) free(ids[i]), free(agents[i]);
    free(ids);
    free(agents);
    return n;
}

/* ---- messages ---- */

/* A message to store, already validated and normalised. Str fields with
 * p == NULL are SQL NULL. */
typedef struct {
    Str from, to, channel, kind, body, thread;
    Str attachments;   /* compact JSON array */
    Str metadata;      /* compact JSON object */
    int64_t reply_to;  /* ARC_NO_ID: none */
} MsgIn;

/* Insert a message and remember it for this turn's wake-ups. On success the
 * message object is appended to out (if non-NULL) and its id stored in *id.
 * Returns 0, or -1 with r failed. */
static int hub_insert_message(Hub *h, Req *q, Res *r, const MsgIn *m, Buf *out,
                              int64_t *id) {
    static const char sql[] =
        "INSERT INTO messages(ts,from_agent,to_agent,channel,kind,body,"
        "attachments_json,reply_to,thread_id,metadata_json)"
        " VALUES(?,?,?,?,?,?,?,?,?,?)";
    if (hub_tx(h, q, r)) return -1;
    char now[ISO_LEN];
    hub_now(now);
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) {
        hub_db_fail(h, r);
        return -1;
    }
    store_bind_c(st, 1, now);
    store_bind(st, 2, m->from);
    store_bind(st, 3, m->to);
    store_bind(st, 4, m->channel);
    store_bind(st, 5, m->kind);
    store_bind(st, 6, m->body.p ? m->body : STR_LIT(""));
    store_bind(st, 7, m->attachments);
    if (m->reply_to != ARC_NO_ID) sqlite3_bind_int64(st, 8, m->reply_to);
    store_bind(st, 9, m->thread);
    store_bind(st, 10, m->metadata);
    if (store_done(&h->store, st)) {
        hub_db_fail(h, r);
        return -1;
    }
    *id = sqlite3_last_insert_rowid(h->store.db);
    if (*id > ARC_MAX_ID) {   /* PROTOCOL §3: never mint past 2^53-1 */
        hub_fail(r, 500, "message id space exhausted");
        return -1;
    }
    Buf j = { 0 };
    buf_addf(&j, "{\"id\":%lld,\"ts\":", (long long)*id);
    json_cstr(&j, now);
    buf_adds(&j, ",\"from_agent\":");
    json_strs(&j, m->from);
    buf_adds(&j, ",\"to_agent\":");
    store_emit_text(&j, m->to);
    buf_adds(&j, ",\"channel\":");
    json_strs(&j, m->channel);
    buf_adds(&j, ",\"kind\":");
    json_strs(&j, m->kind);
    buf_adds(&j, ",\"body\":");
    json_strs(&j, m->body.p ? m->body : STR_LIT(""));
    buf_adds(&j, ",\"attachments\":");
    buf_addstr(&j, m->attachments);
    buf_adds(&j, ",\"reply_to\":");
    if (m->reply_to != ARC_NO_ID) buf_addf(&j, "%lld", (long long)m->reply_to);
    else buf_adds(&j, "null");
    buf_adds(&j, ",\"thread_id\":");
    store_emit_text(&j, m->thread);
    buf_adds(&j, ",\"metadata\":");
    buf_addstr(&j, m->metadata);
    buf_addc(&j, '}');
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
    MsgIn m = { .from = STR_LIT("system"), .to = { NULL, 0 },
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
    return store_done(&h->store, st);
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
    if ((rc = hub_int(q, r, "parent_task_id", &parent)) < 0) goto done;
    if (rc && !hub_task_exists(h, parent)) {
        hub_fail(r, 400, "parent_task_id references unknown task");
        goto done;
    }
    if (!rc) parent = ARC_NO_ID;
    if (hub_str(q, r, "from_agent", 0, &from) <= 0 || from.len == 0) {
        hub_fail(r, 400, "from_agent is required");
        goto done;
    }
    has_to = hub_str(q, r, "to_agent", 0, &to) > 0 && to.len > 0;
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
    v = json_get(j, 0, "metadata");
    int complete = str_eq(buf_str(&kind), "task_result") && reply != ARC_NO_ID &&
                   hub_open_request(h, reply);
    if (v && json_truthy(j, v)) {
        if (j->t[v].type != JSON_OBJ) {
            hub_fail(r, 400, "metadata must be a JSON object");
            goto done;
        }
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
    MsgIn m = {
        .from = buf_str(&from), .to = has_to ? buf_str(&to) : (Str){ NULL, 0 },
        .channel = buf_str(&chan), .kind = buf_str(&kind), .body = buf_str(&body),
        .thread = has_thread ? buf_str(&thread) : (Str){ NULL, 0 },
        .attachments = buf_str(&atts), .metadata = buf_str(&meta),
        .reply_to = reply,
    };
    if (hub_insert_message(h, q, r, &m, &out, &id)) goto done;
    if (str_eq(m.kind, "task") || str_eq(m.kind, "task_request")) {
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
    } else if (complete && hub_complete_task_row(h, reply)) {
        goto db;
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
 * tasks, claims or locks), 0 if not, -1 on a database error. */
static int hub_thread_info(Hub *h, Str tid, ThreadInfo *ti) {
    static const char q_msgs[] =
        "SELECT count(*),max(id),max(CASE WHEN kind='artifact' THEN id END),"
        " (SELECT ts FROM messages WHERE thread_id=?1 ORDER BY id DESC LIMIT 1),"
        " (SELECT channel FROM messages WHERE thread_id=?1 ORDER BY id LIMIT 1)"
        " FROM messages WHERE thread_id=?1";
    static const char q_tasks[] =
        "SELECT count(*),sum(status='open'),"
        " (SELECT min(task_id) FROM tasks WHERE thread_id=?1 AND"
        "  parent_task_id IS NULL),"
        " (SELECT channel FROM tasks WHERE thread_id=?1 AND"
        "  parent_task_id IS NULL ORDER BY task_id LIMIT 1),"
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
    int ok = -1;
    sqlite3_stmt *st = store_stmt(&h->store, q_msgs);
    if (!st) goto done;
    store_bind(st, 1, tid);
    if (sqlite3_step(st) != SQLITE_ROW) goto done_reset;
    ti->n_msgs = sqlite3_column_int64(st, 0);
    ti->latest_id = hub_col_i64(st, 1);
    ti->latest_artifact = hub_col_i64(st, 2);
    if (store_col(st, 3).p) buf_addstr(&ti->latest_ts, store_col(st, 3));
    if ((msg_chan = store_col(st, 4)).p) buf_addstr(&mc, msg_chan), msg_chan = buf_str(&mc);
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
    buf_free(&mc), buf_free(&rc_), buf_free(&tc);
    return ok;
}

static void hub_thread_info_free(ThreadInfo *ti) {
    buf_free(&ti->latest_ts);
    buf_free(&ti->channel);
}

static void hub_emit_opt_id(Buf *b, int64_t v) {
    if (v < 0) buf_adds(b, "null");
    else buf_addf(b, "%lld", (long long)v);
}

static void hub_emit_thread(Buf *b, Str tid, const ThreadInfo *ti) {
    const char *status = ti->n_tasks > 0 && ti->n_open == 0 ? "completed"
                         : ti->active_claims || ti->active_locks ? "open"
                                                                 : "waiting";
    buf_adds(b, "{\"thread_id\":");
    json_strs(b, tid);
    buf_adds(b, ",\"channel\":");
    if (ti->has_channel) json_strs(b, buf_str(&ti->channel));
    else buf_adds(b, "null");
    buf_adds(b, ",\"root_task_id\":");
    hub_emit_opt_id(b, ti->root_task);
    buf_adds(b, ",\"latest_message_id\":");
    hub_emit_opt_id(b, ti->n_msgs ? ti->latest_id : -1);
    buf_adds(b, ",\"latest_message_ts\":");
    if (ti->n_msgs) json_strs(b, buf_str(&ti->latest_ts));
    else buf_adds(b, "null");
    buf_adds(b, ",\"latest_artifact_id\":");
    hub_emit_opt_id(b, ti->latest_artifact);
    buf_addf(b, ",\"message_count\":%lld,\"total_task_count\":%lld,"
             "\"open_task_count\":%lld,\"active_claim_count\":%lld,"
             "\"active_lock_count\":%lld,\"status\":\"%s\"}",
             (long long)ti->n_msgs, (long long)ti->n_tasks,
             (long long)ti->n_open, (long long)ti->active_claims,
             (long long)ti->active_locks, status);
}

/* The thread's derived channel into out; returns 1 if it has one. */
static int hub_thread_channel(Hub *h, Str thread, Buf *out) {
    ThreadInfo ti;
    int ok = hub_thread_info(h, thread, &ti) > 0 && ti.has_channel;
    if (ok) buf_addstr(out, buf_str(&ti.channel));
    hub_thread_info_free(&ti);
    return ok;
}

typedef struct {
    int64_t latest;   /* sort key: latest message id, -1 if none */
    char *tid;        /* owned */
    Buf json;
} ThreadRow;

static int hub_thread_row_cmp(const void *a, const void *b) {
    const ThreadRow *x = a, *y = b;
    if (x->latest != y->latest) return x->latest < y->latest ? 1 : -1;
    return -strcmp(x->tid, y->tid);   /* both keys descending */
}

/* GET /v1/threads */
static void hub_list_threads(Hub *h, Req *q, Res *r) {
    static const char sql[] =
        "SELECT thread_id FROM messages WHERE thread_id IS NOT NULL UNION"
        " SELECT thread_id FROM tasks WHERE thread_id IS NOT NULL UNION"
        " SELECT thread_id FROM claims WHERE thread_id IS NOT NULL";
    (void)q;
    ThreadRow *rows = NULL;
    int n = 0;
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) { hub_db_fail(h, r); return; }
    while (sqlite3_step(st) == SQLITE_ROW) {
        rows = xrealloc(rows, (size_t)(n + 1) * sizeof *rows);
        Str t = store_col(st, 0);
        rows[n++] = (ThreadRow){ .tid = xstrndup(t.p, t.n) };
    }
    sqlite3_reset(st);
    for (int i = 0; i < n; i++) {
        ThreadInfo ti;
        if (hub_thread_info(h, str_c(rows[i].tid), &ti) > 0)
            hub_emit_thread(&rows[i].json, str_c(rows[i].tid), &ti);
        rows[i].latest = ti.n_msgs ? ti.latest_id : -1;
        hub_thread_info_free(&ti);
    }
    if (n) qsort(rows, (size_t)n, sizeof *rows, hub_thread_row_cmp);
    hub_ok(r, 200);
    buf_addc(&r->body, '[');
    int first = 1;
    for (int i = 0; i < n; i++) {
        if (rows[i].json.len) {
            if (!first) buf_addc(&r->body, ',');
            first = 0;
            buf_addstr(&r->body, buf_str(&rows[i].json));
        }
        buf_free(&rows[i].json);
        free(rows[i].tid);
    }
    free(rows);
    buf_addc(&r->body, ']');
    hub_ok_end(r);
}

/* GET /v1/threads/{thread_id} */
static void hub_get_thread(Hub *h, Req *q, Res *r) {
    static const char q_msgs[] =
        "SELECT id FROM messages WHERE thread_id=? ORDER BY id";
    static const char q_tasks[] =
        "SELECT " T_COLS " FROM tasks WHERE thread_id=? ORDER BY task_id";
    static const char q_claims[] =
        "SELECT " C_COLS " FROM claims WHERE thread_id=? ORDER BY claimed_at";
    static const char q_locks[] =
        "SELECT " L_COLS " FROM locks WHERE " LOCK_IN_THREAD
        " ORDER BY locked_at";
    Str tid = buf_str(&q->arg);
    ThreadInfo ti;
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
        if (store_emit_rows(&h->store, &r->body, st, emits[i]) < 0)
            { hub_db_fail(h, r); return; }
    }
    buf_addc(&r->body, '}');
    hub_ok_end(r);
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
            json_strs(&caps, buf_str(&tmp));
        }
    }
    buf_addc(&caps, ']');
    long mo = hub_obj(q, r, "metadata");
    if (mo < 0) goto done;
    if (mo) json_write(&meta, j, (uint32_t)mo);
    else buf_adds(&meta, "{}");
    v = json_get_val(j, 0, "replace");
    int replace = v && json_truthy(j, v);
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
    buf_adds(b, ",\"active\":true}");
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
    if (store_emit_rows(&h->store, &r->body, st, store_emit_session) < 0)
        hub_db_fail(h, r);
    else
        hub_ok_end(r);
done:
    free(cap);
    free(as);
}

/* GET /v1/bootstrap (PROTOCOL §7.13) */
static void hub_bootstrap(Hub *h, Req *q, Res *r) {
    static const char latest[] =
        "SELECT coalesce(max(id),0) FROM messages"
        " WHERE to_agent IS NULL OR to_agent=?";
    int rc = hub_qp(q, r, "agent_id");
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
    int has_by = hub_str(q, r, "created_by", 0, &by) > 0;
    long mo = hub_obj(q, r, "metadata");
    if (mo < 0) goto done;
    if (mo) json_write(&meta, &q->body, (uint32_t)mo);
    else buf_adds(&meta, "{}");
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
static const char q_ch[] = "SELECT id FROM messages WHERE channel=?1"
    " AND to_agent IS NULL AND id>?3 ORDER BY id LIMIT ?4";
static const char q_th[] = "SELECT id FROM messages WHERE thread_id=?2"
    " AND to_agent IS NULL AND id>?3 ORDER BY id LIMIT ?4";
static const char q_thch[] = "SELECT id FROM messages WHERE"
    " thread_id=?2 AND channel=?1 AND to_agent IS NULL AND id>?3"
    " ORDER BY id LIMIT ?4";
static const char q_ch_tail[] = "SELECT id FROM (SELECT id"
    " FROM messages WHERE channel=?1 AND to_agent IS NULL"
    " ORDER BY id DESC LIMIT ?4) ORDER BY id";
static const char q_th_tail[] = "SELECT id FROM (SELECT id"
    " FROM messages WHERE thread_id=?2 AND to_agent IS NULL"
    " ORDER BY id DESC LIMIT ?4) ORDER BY id";
static const char q_thch_tail[] = "SELECT id FROM (SELECT id"
    " FROM messages WHERE thread_id=?2 AND channel=?1 AND to_agent IS NULL"
    " ORDER BY id DESC LIMIT ?4) ORDER BY id";
static const char q_events[] = "SELECT id FROM messages WHERE id>?3"
    " AND (to_agent IS NULL OR to_agent=?5)"
    " AND (?1 IS NULL OR channel=?1) AND (?2 IS NULL OR thread_id=?2)"
    " AND (?6=0 OR from_agent!=?5)"
    " AND (?7 IS NULL OR channel IN (SELECT value FROM json_each(?7)))"
    " ORDER BY id LIMIT ?4";

/* Does a newly committed message match what w waits for? */
static int hub_wait_match(const Wait *w, const NewMsg *m) {
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

/* Run w's query and append the matching rows as a JSON array to b; with
 * tail, the newest `limit` rows. Returns the row count, -1 on error. */
/* The statement for w's query, bound and ready to step; NULL on error. */
static sqlite3_stmt *hub_wait_stmt(Hub *h, const Wait *w, int tail) {
    const char *sql;
    if (w->kind == WAIT_MESSAGES) {
        if (w->thread)
            sql = w->channel ? (tail ? q_thch_tail : q_thch) : (tail ? q_th_tail : q_th);
        else
            sql = tail ? q_ch_tail : q_ch;
    } else {
        sql = q_events;
    }
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

static int hub_wait_query(Hub *h, const Wait *w, int tail, Buf *b) {
    sqlite3_stmt *st = hub_wait_stmt(h, w, tail);
    return st ? store_emit_rows(&h->store, b, st, store_emit_message) : -1;
}

/* Answer a read with rows now, or park it when it asked to wait and there
 * is nothing yet (PROTOCOL §8). The Wait moves into r on parking. */
static void hub_answer_or_park(Hub *h, Res *r, Wait *w, int tail, int64_t wait_ms) {
    hub_ok(r, 200);
    int n = hub_wait_query(h, w, tail, &r->body);
    if (n < 0) {
        hub_db_fail(h, r);
        wait_free(w);
        return;
    }
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
    hub_touch(h, q, r, str_c(w.agent));  /* PROTOCOL §9: waiting is presence */
    if (r->status >= 400) goto fail;
    hub_answer_or_park(h, r, &w, 0, wait_ms);
    return;
fail:
    wait_free(&w);
}

/* GET /v1/inbox/{agent_id}: direct messages only. */
static void hub_get_inbox(Hub *h, Req *q, Res *r) {
    static const char sql[] = "SELECT id FROM messages"
        " WHERE to_agent=?1 AND id>?2 ORDER BY id LIMIT ?3";
    static const char sql_tail[] = "SELECT id FROM (SELECT id"
        " FROM messages WHERE to_agent=?1 ORDER BY id DESC LIMIT ?3)"
        " ORDER BY id";
    int64_t since;
    int limit;
    if (hub_since_limit(q, r, &since, &limit)) return;
    int tail = hub_qbool(q, "tail") && since <= 0;
    sqlite3_stmt *st = store_stmt(&h->store, tail ? sql_tail : sql);
    if (!st) { hub_db_fail(h, r); return; }
    store_bind(st, 1, buf_str(&q->arg));
    sqlite3_bind_int64(st, 2, since);
    sqlite3_bind_int(st, 3, limit);
    hub_ok(r, 200);
    if (store_emit_rows(&h->store, &r->body, st, store_emit_message) < 0)
        hub_db_fail(h, r);
    else
        hub_ok_end(r);
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
    for (char *c = chans; c && *c;) {
        char *comma = strchr(c, ',');
        size_t n = comma ? (size_t)(comma - c) : strlen(c);
        Str t = str_trim((Str){ c, n });
        if (t.n) {
            w.channels = xrealloc(w.channels, (size_t)(w.n_channels + 1) * sizeof *w.channels);
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
    int has_thread = hub_str(q, r, "thread_id", 0, &thread) > 0 && thread.len;
    if (hub_ttl(q, r, &ttl)) goto done;
    long mo = hub_obj(q, r, "metadata");
    if (mo < 0) goto done;
    if (mo) json_write(&meta, &q->body, (uint32_t)mo);
    else buf_adds(&meta, "{}");
    if (!key.len) {
        if (!has_task) {
            hub_fail(r, 400, "claim_key or task_message_id is required");
            goto done;
        }
        buf_addf(&key, "task-%lld", (long long)task);
    }
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
    long mo = hub_obj(q, r, "metadata");
    if (mo < 0) goto done;
    if (mo) json_write(&meta, &q->body, (uint32_t)mo);
    else buf_adds(&meta, "{}");
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

/* GET /v1/tasks */
static void hub_list_tasks(Hub *h, Req *q, Res *r) {
    static const char sql[] = "SELECT " T_COLS " FROM tasks WHERE"
        " (?1 IS NULL OR parent_task_id=?1) AND (?2 IS NULL OR status=?2) AND"
        " (?3 IS NULL OR channel=?3) AND (?4 IS NULL OR thread_id=?4)"
        " ORDER BY task_id";
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
    sqlite3_stmt *st = store_stmt(&h->store, sql);
    if (!st) { hub_db_fail(h, r); goto done; }
    if (has_parent) sqlite3_bind_int64(st, 1, parent);
    store_bind_c(st, 2, status);
    store_bind_c(st, 3, chan);
    store_bind_c(st, 4, thread);
    hub_ok(r, 200);
    if (store_emit_rows(&h->store, &r->body, st, store_emit_task) < 0)
        hub_db_fail(h, r);
    else
        hub_ok_end(r);
done:
    free(status), free(chan), free(thread);
}

/* POST /v1/tasks/{id}/complete (PROTOCOL §7.26): completing the last open
 * child completes its parent (one level) and posts a notice. */
static void hub_complete_task(Hub *h, Req *q, Res *r) {
    static const char get[] = "SELECT " T_COLS " FROM tasks WHERE task_id=?";
    static const char siblings[] =
        "SELECT count(*),sum(status='done') FROM tasks WHERE parent_task_id=?";
    int64_t id, parent = -1;
    if (parse_int_text(buf_str(&q->arg), &id)) {
        hub_fail(r, 404, "task not found");
        return;
    }
    if (!hub_task_exists(h, id)) {
        hub_fail(r, 404, "task not found");
        return;
    }
    if (hub_tx(h, q, r) || hub_complete_task_row(h, id)) {
        hub_db_fail(h, r);
        return;
    }
    sqlite3_stmt *st = store_stmt(&h->store, get);
    if (!st) { hub_db_fail(h, r); return; }
    sqlite3_bind_int64(st, 1, id);
    Buf task = { 0 };
    if (sqlite3_step(st) == SQLITE_ROW) {
        store_emit_task(&h->store, &task, st);
        parent = hub_col_i64(st, 1);
    }
    sqlite3_reset(st);
    int rolled = 0;
    if (parent >= 0 && (st = store_stmt(&h->store, siblings))) {
        sqlite3_bind_int64(st, 1, parent);
        int64_t n = 0, done = 0;
        if (sqlite3_step(st) == SQLITE_ROW)
            n = sqlite3_column_int64(st, 0), done = sqlite3_column_int64(st, 1);
        sqlite3_reset(st);
        Buf chan = { 0 }, thread = { 0 };
        int has_thread = 0, open = 0;
        if (n > 0 && n == done && (st = store_stmt(&h->store, get))) {
            sqlite3_bind_int64(st, 1, parent);
            if (sqlite3_step(st) == SQLITE_ROW) {
                open = str_eq(store_col(st, 4), "open");
                buf_addstr(&chan, store_col(st, 2));
                has_thread = store_col(st, 3).p != NULL;
                buf_addstr(&thread, store_col(st, 3));
            }
            sqlite3_reset(st);
        }
        if (open) {
            char body[128], meta[128];
            snprintf(body, sizeof body,
                     "All %lld subtasks of task %lld are complete.",
                     (long long)n, (long long)parent);
            snprintf(meta, sizeof meta,
                     "{\"auto_rollup\":true,\"parent_task_id\":%lld}",
                     (long long)parent);
            if (hub_complete_task_row(h, parent) ||
                hub_post_system(h, q, r, buf_str(&chan), str_c(body), parent,
                                has_thread ? buf_str(&thread) : (Str){ NULL, 0 },
                                meta)) {
                buf_free(&chan), buf_free(&thread), buf_free(&task);
                hub_db_fail(h, r);
                return;
            }
            rolled = 1;
        }
        buf_free(&chan), buf_free(&thread);
    }
    hub_ok(r, 200);
    buf_addstr(&r->body, buf_str(&task));
    if (rolled) buf_adds(&r->body, ",\"parent_completed\":true");
    hub_ok_end(r);
    buf_free(&task);
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
    "\"arc:origin_check\"";

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
             "\"max_attachments\":%lld,\"features\":%s%s],\"message_kinds\":[",
             (long long)h->cfg.max_body_chars,
             (long long)h->cfg.max_attachment_chars,
             (long long)h->cfg.max_attachments, hub_features,
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
    sqlite3_stmt *st = store_stmt(s, "SELECT coalesce(max(id),0) FROM messages");
    if (st && sqlite3_step(st) == SQLITE_ROW)
        buf_addf(b, ",\"latest_message_id\":%lld",
                 (long long)sqlite3_column_int64(st, 0));
    if (st) sqlite3_reset(st);
    buf_addc(b, '}');
    hub_ok_end(r);
}

/* ---- the dashboard (data only; served by GET /) ---- */

/* The live dashboard (PROTOCOL §7.32). Generated from tests/dash.html by
 * tests/gen_dash.py (a test checks they agree): edit the HTML, then run
 * `python3 tests/gen_dash.py tests/dash.html --splice arc.c`. It uses only
 * the public /v1 API and one EventSource on /v1/stream, renders everything
 * agents wrote with textContent, and keeps at most 1,500 rows in the DOM. */
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
    ".soon{color:var(--warn)}\n"
    ".none{color:#6b7580;font-size:12px;font-style:italic;padding:2px 8px}\n"
    "#hubinfo{font-size:11px;color:#6b7580;padding:12px 12px 0;overflow-wrap:anywhere}\n"
    "@media (max-width:860px){\n"
    "#tabs{display:flex}\n"
    "#side{width:auto;flex:1;border-left:0}\n"
    "body:not([data-tab=feed]) #feedcol{display:none}\n"
    "body[data-tab=feed] #side{display:none}\n"
    "body:not([data-tab=agents]) .sec[data-sec=agents]{display:none}\n"
    "body:not([data-tab=inbox]) .sec[data-sec=inbox]{display:none}\n"
    "body:not([data-tab=work]) .sec[data-sec=work]{display:none}\n"
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
    "<section class='sec' data-sec='work'>\n"
    "<h2>Open tasks <span id='nTasks' class='n'>0</span></h2><div id='tasks' class='list'></div>\n"
    "</section>\n"
    "<section class='sec' data-sec='work'>\n"
    "<h2>Claims <span id='nClaims' class='n'>0</span></h2><div id='claims' class='list'></div>\n"
    "</section>\n"
    "<section class='sec' data-sec='work'>\n"
    "<h2>Locks <span id='nLocks' class='n'>0</span></h2><div id='locks' class='list'></div>\n"
    "<div id='hubinfo'></div>\n"
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
    "  live: false, wasDown: false, channels: [], chanSet: new Set(), unread: {},\n"
    "  threads: [], agents: [], agentSet: new Set(), taskBody: new Map(),\n"
    "  tasks: [], claims: [], locks: [], info: null, started: false,\n"
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
    "  return { ok: j.ok === true, status: r.status, result: j.result,\n"
    "           error: String(j.error || 'HTTP ' + r.status) };\n"
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
    "    F.hasOlder = r.result.length >= PAGE;\n"
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
    "      if (part.length < r.result.length || r.result.length < PAGE) break;\n"
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
    "  const label = n => '#' + n + (S.unread[n] ? '  (' + S.unread[n] + ')' : '');\n"
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
    "  S.channel = name; S.thread = ''; S.unread[name] = 0;\n"
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
    "  const r = await api('GET', '/v1/agents?as=' + enc(S.nick));\n"
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
    "const REFRESH = { agents: loadAgents, work: loadWork, threads: loadThreads,\n"
    "                  channels: loadChannels, shutdown: loadShutdown, chlist: renderChannels };\n"
    "const timers = {};\n"
    "function soon(key, ms) {\n"
    "  if (timers[key]) return;\n"
    "  timers[key] = setTimeout(() => { timers[key] = 0; REFRESH[key](); }, ms || 300);\n"
    "}\n"
    "function refreshAll() {\n"
    "  loadAgents(); loadWork(); loadChannels(); loadThreads(); loadShutdown();\n"
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
    "    S.unread[m.channel] = (S.unread[m.channel] || 0) + 1;\n"
    "    soon('chlist', 250);\n"
    "  }\n"
    "  if (m.from_agent === 'system') {\n"
    "    if (md.shutdown || md.shutdown_cancelled) shutdownNotice(m, md);\n"
    "    if (md.recovery) { soon('agents'); soon('work'); }\n"
    "    if (md.auto_rollup) soon('work');\n"
    "  } else if (!S.agentSet.has(m.from_agent)) soon('agents');\n"
    "  if (WORK_KINDS.includes(m.kind) || md.task_completed !== undefined) soon('work');\n"
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

static void hub_root(Hub *h, Req *q, Res *r) {
    (void)h, (void)q;
    r->status = 200;
    r->ctype = "text/html; charset=utf-8";
    r->extra = "Content-Security-Policy: default-src 'self'; "
               "style-src 'self' 'unsafe-inline'; script-src 'self' "
               "'unsafe-inline'\r\nX-Content-Type-Options: nosniff\r\n";
    buf_reset(&r->body);
    buf_add(&r->body, dash_html, sizeof dash_html - 1);
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
    if (hr->dup_host) {
        hub_fail(r, 400, "multiple Host headers");
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
                str_eq(q->method, "DELETE");
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
    if (str_eq(q->method, "POST")) {
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
    wait_free(&r->wait);
}

/* ==== relay: the file-spool binding for sandboxed agents ================== */

/* Agents that can write files in a shared workspace but cannot reach the
 * hub's socket talk through a spool (PROTOCOL §11):
 *   requests/<agent>/<id>.json   written by the client (atomically, by rename)
 *   requests/<agent>/<id>.work   the same file once the hub has claimed it
 *   responses/<agent>/<id>.json  the answer, written atomically by the hub
 * One thread watches the spool (inotify on Linux, plus a periodic scan that
 * also catches files written while no hub ran). It only moves bytes: it
 * claims and reads a request, hands it to the loop through a mutex-guarded
 * queue and one byte on the loop's wake pipe, and writes the answer file
 * when the loop hands the response back. The loop serves a relayed request
 * exactly like an HTTP one, parking it if it is a long-poll, so one agent's
 * long wait never delays another's request, and SQLite stays on the loop
 * thread. Nothing is read or written outside the spool: agent directories
 * that are symlinks are ignored, and files are opened with O_NOFOLLOW. */

#ifndef ARC_RELAY_SCAN_MS
#define ARC_RELAY_SCAN_MS 1000    /* full rescan interval (inotify backup) */
#endif
#define ARC_RELAY_MAX_FILE (16u << 20)  /* a request file larger is refused */

/* One relayed request, owned by whichever side's queue holds it. */
typedef struct RelayReq {
    struct RelayReq *next;
    char *agent;          /* owned: the agent's directory name */
    char *file_id;        /* owned: the file's stem, names the answer file */
    char *request_id;     /* owned: echoed in the answer */
    char *method, *path;  /* owned */
    char *body;           /* owned JSON text, or NULL */
    int status;           /* the answer, filled by the loop */
    Buf answer;           /* the hub's JSON envelope */
} RelayReq;

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
    char root[PATH_MAX];       /* the spool directory */
    int inotify_fd;            /* -1 without inotify */
    int req_wd;                /* watch on requests/ */
    struct { int wd; char name[256]; } *watches;   /* relay thread only */
    int n_watches;
    int64_t starved_until;     /* relay thread only: out of descriptors, so
                                  take nothing until then (the next scan) */
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

/* mkdir -p for the spool's own directories, mode 0700. */
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

/* Is `name` a real directory under `parent` (not a symlink)? */
static int relay_is_dir(const char *parent, const char *name) {
    Buf p = { 0 };
    struct stat sb;
    buf_addf(&p, "%s/%s", parent, name);
    int yes = lstat(p.p, &sb) == 0 && S_ISDIR(sb.st_mode);
    buf_free(&p);
    return yes;
}

/* Write `data` to dir/name atomically: a temporary file, then rename. */
static int relay_write_file(const char *dir, const char *name, Str data) {
    Buf tmp = { 0 }, dst = { 0 };
    unsigned char r[6];
    rand_bytes(r, sizeof r);
    buf_addf(&tmp, "%s/.%s.%02x%02x%02x%02x%02x%02x.tmp", dir, name, r[0], r[1],
             r[2], r[3], r[4], r[5]);
    buf_addf(&dst, "%s/%s", dir, name);
    int rc = -1;
    int fd = open(tmp.p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) goto done;
    size_t off = 0;
    while (off < data.n) {
        ssize_t w = write(fd, data.p + off, data.n - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    int ok = off == data.n && close(fd) == 0;
    if (ok && rename(tmp.p, dst.p) == 0) rc = 0;
    else unlink(tmp.p);
done:
    buf_free(&tmp);
    buf_free(&dst);
    return rc;
}

/* Write the answer file for r: the reference's response envelope. Returns
 * 0 (written, or refused for good), or ARC_AGAIN when the process is out
 * of descriptors: the caller keeps r and tries again later. */
static int relay_answer(Relay *rl, RelayReq *r, const char *error) {
    char dir[PATH_MAX + 300], now[ISO_LEN], name[300];
    snprintf(dir, sizeof dir, "%s/responses/%s", rl->root, r->agent);
    if (relay_mkdirs(dir) || !relay_is_dir(rl->root, "responses")) {
        log_warn("relay: cannot create %s", dir);
        return 0;
    }
    struct stat sb;
    if (lstat(dir, &sb) || !S_ISDIR(sb.st_mode)) return 0;   /* symlink: refuse */
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
    if (relay_write_file(dir, name, buf_str(&b))) {
        if (errno == EMFILE || errno == ENFILE) rc = ARC_AGAIN;
        else log_warn("relay: cannot write %s/%s: %s", dir, name, strerror(errno));
    }
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

/* Read a claimed request file and check it. Returns 0 with r filled, -1
 * with the reason in err, or ARC_AGAIN when the process is out of
 * descriptors or memory for now (the request is fine; try it later). */
static int relay_parse(const char *path, RelayReq *r, char err[ARC_ERRLEN]) {
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE || errno == ENOMEM) return ARC_AGAIN;
        snprintf(err, ARC_ERRLEN, "cannot read request: %s", strerror(errno));
        return -1;
    }
    /* One byte over the limit is enough to refuse the file. */
    Buf data = { .max = ARC_RELAY_MAX_FILE + 1 };
    char chunk[16384];
    ssize_t n = 0;
    while (!data.err) {
        n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        buf_add(&data, chunk, (size_t)n);
    }
    int rc;
    if (n < 0) {
        snprintf(err, ARC_ERRLEN, "cannot read request: %s", strerror(errno));
        rc = -1;
    } else if (data.err) {
        snprintf(err, ARC_ERRLEN, "request file larger than %u bytes",
                 ARC_RELAY_MAX_FILE);
        rc = -1;
    } else {
        rc = relay_parse_envelope(buf_str(&data), r, err);
    }
    close(fd);
    buf_free(&data);
    return rc;
}

/* Claim one request file (rename .json -> .work) and either queue it for
 * the loop or answer a malformed one with 400 at once. */
static void relay_take(Relay *rl, const char *agent, const char *file) {
    size_t n = strlen(file);
    if (n < 6 || strcmp(file + n - 5, ".json") != 0) return;
    char src[PATH_MAX + 600], dst[PATH_MAX + 600];
    snprintf(src, sizeof src, "%s/requests/%s/%s", rl->root, agent, file);
    snprintf(dst, sizeof dst, "%.*s.work", (int)strlen(src) - 5, src);
    struct stat sb;
    if (clock_ms() < rl->starved_until) return;
    if (lstat(src, &sb) || !S_ISREG(sb.st_mode)) return;
    if (rename(src, dst)) return;   /* another relay took it, or it is gone */
    RelayReq *r = xrealloc(NULL, sizeof *r);
    memset(r, 0, sizeof *r);
    r->agent = xstrndup(agent, strlen(agent));
    r->file_id = xstrndup(file, n - 5);
    char err[ARC_ERRLEN];
    int rc = relay_parse(dst, r, err);
    if (rc == ARC_AGAIN) {
        /* Unclaim it for a later scan. The rename back is itself an inotify
         * event: without the pause it would be taken again at once, for
         * as long as descriptors are short, spinning this thread. */
        rl->starved_until = clock_ms() + ARC_RELAY_SCAN_MS / 2;
        if (rename(dst, src)) log_warn("relay: cannot unclaim %s", dst);
        relay_req_free(r);
        return;
    }
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

static void relay_watch(Relay *rl, const char *agent) {
#ifdef __linux__
    if (rl->inotify_fd < 0) return;
    for (int i = 0; i < rl->n_watches; i++)
        if (!strcmp(rl->watches[i].name, agent)) return;
    char p[PATH_MAX + 300];
    snprintf(p, sizeof p, "%s/requests/%s", rl->root, agent);
    int wd = inotify_add_watch(rl->inotify_fd, p,
                               IN_MOVED_TO | IN_CLOSE_WRITE | IN_DONT_FOLLOW |
                               IN_ONLYDIR);
    if (wd < 0) return;
    rl->watches = xrealloc(rl->watches, (size_t)(rl->n_watches + 1) * sizeof *rl->watches);
    rl->watches[rl->n_watches].wd = wd;
    snprintf(rl->watches[rl->n_watches].name, 256, "%s", agent);
    rl->n_watches++;
#else
    (void)rl, (void)agent;
#endif
}

/* Scan every agent directory for waiting requests, oldest name first. */
static void relay_scan(Relay *rl) {
    char reqs[PATH_MAX + 16];
    snprintf(reqs, sizeof reqs, "%s/requests", rl->root);
    DIR *d = opendir(reqs);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (relay_dot_name(e->d_name) || strlen(e->d_name) > 255) continue;
        if (!relay_is_dir(reqs, e->d_name)) continue;
        relay_watch(rl, e->d_name);
        char dir[PATH_MAX + 300];
        snprintf(dir, sizeof dir, "%s/%s", reqs, e->d_name);
        DIR *ad = opendir(dir);
        if (!ad) continue;
        char **names = NULL;
        int n = 0;
        struct dirent *f;
        while ((f = readdir(ad))) {
            size_t len = strlen(f->d_name);
            if (len < 6 || strcmp(f->d_name + len - 5, ".json")) continue;
            names = xrealloc(names, (size_t)(n + 1) * sizeof *names);
            names[n++] = xstrndup(f->d_name, len);
        }
        closedir(ad);
        if (n) qsort(names, (size_t)n, sizeof *names, cstr_cmp);
        for (int i = 0; i < n; i++) {
            relay_take(rl, e->d_name, names[i]);
            free(names[i]);
        }
        free(names);
    }
    closedir(d);
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
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)(void *)p;
            p += sizeof *ev + ev->len;
            if (ev->mask & IN_Q_OVERFLOW) {
                relay_scan(rl);
                continue;
            }
            if (ev->mask & IN_IGNORED) {   /* the directory went away */
                for (int i = 0; i < rl->n_watches; i++)
                    if (rl->watches[i].wd == ev->wd)
                        rl->watches[i] = rl->watches[--rl->n_watches];
                continue;
            }
            if (!ev->len) continue;
            if (ev->wd == rl->req_wd) {
                if ((ev->mask & IN_ISDIR) && !relay_dot_name(ev->name)) relay_scan(rl);
                continue;
            }
            for (int i = 0; i < rl->n_watches; i++)
                if (rl->watches[i].wd == ev->wd) {
                    relay_take(rl, rl->watches[i].name, ev->name);
                    break;
                }
        }
    }
#else
    (void)rl;
#endif
}

static void *relay_main(void *arg) {
    Relay *rl = arg;
    int64_t next_scan = 0;
    for (;;) {
        pthread_mutex_lock(&rl->mu);
        int stop = rl->stop;
        pthread_mutex_unlock(&rl->mu);
        relay_flush(rl);
        if (stop) break;
        int64_t now = clock_ms();
        if (now >= next_scan) {
            relay_scan(rl);
            next_scan = now + ARC_RELAY_SCAN_MS;
        }
        struct pollfd p[2] = { { .fd = rl->wake_rd, .events = POLLIN },
                               { .fd = rl->inotify_fd, .events = POLLIN } };
        int np = rl->inotify_fd >= 0 ? 2 : 1;
        int64_t wait = next_scan - clock_ms();
        if (poll(p, (nfds_t)np, wait < 0 ? 0 : (int)wait) < 0 && errno != EINTR) break;
        if (p[0].revents) {
            char tmp[64];
            while (read(rl->wake_rd, tmp, sizeof tmp) > 0) {}
        }
        if (np == 2 && p[1].revents) relay_events(rl);
    }
    return NULL;
}

/* Create the spool directories and start the thread. */
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
    char reqs[PATH_MAX + 16], resp[PATH_MAX + 16];
    snprintf(reqs, sizeof reqs, "%s/requests", spool);
    snprintf(resp, sizeof resp, "%s/responses", spool);
    if (relay_mkdirs(reqs) || relay_mkdirs(resp) || !realpath(spool, rl->root)) {
        snprintf(err, ARC_ERRLEN, "cannot create relay spool %s: %s", spool,
                 strerror(errno));
        free(rl);
        return NULL;
    }
    int pfd[2];
    if (pipe(pfd)) die("pipe: %s", strerror(errno));
    rl->wake_rd = pfd[0], rl->wake_wr = pfd[1];
    fd_nonblock(rl->wake_rd);
    fd_nonblock(rl->wake_wr);
#ifdef __linux__
    snprintf(reqs, sizeof reqs, "%s/requests", rl->root);
    rl->inotify_fd = inotify_init();
    if (rl->inotify_fd >= 0) {
        fd_nonblock(rl->inotify_fd);
        fcntl(rl->inotify_fd, F_SETFD, FD_CLOEXEC);
        rl->req_wd = inotify_add_watch(rl->inotify_fd, reqs,
                                       IN_CREATE | IN_MOVED_TO | IN_ONLYDIR);
    }
#endif
    pthread_mutex_init(&rl->mu, NULL);
    if (pthread_create(&rl->thread, NULL, relay_main, rl)) die("pthread_create");
    rl->thread_live = 1;
    return rl;
}

/* Loop side: hand an answered request back to the thread. */
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

/* Stop the thread after it has written every pending answer. */
/* Stop the thread: no file is claimed after this returns, so whatever it
 * claimed is in the queue for the loop to serve before the hub exits. */
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
        log_warn("relay: no answer written for %s/%s", r->agent, r->file_id);
        relay_req_free(r);
        r = next;
    }
    if (rl->inotify_fd >= 0) close(rl->inotify_fd);
    close(rl->wake_rd), close(rl->wake_wr);
    pthread_mutex_destroy(&rl->mu);
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
 * (loop_retry_busy). */

typedef enum {
    CONN_READ,     /* serving requests (and writing their responses) */
    CONN_PARKED,   /* long-poll: waiting for a message or its deadline */
    CONN_STREAM,   /* SSE: writes whenever a matching message commits */
    CONN_DEAD      /* freed at the end of the turn, never earlier */
} ConnState;

/* The parked requests and streams that wait on one channel (Wait.channel),
 * or, in Hub.wb_any, on any channel. */
typedef struct WaitBucket {
    struct WaitBucket *next;   /* hash chain in Hub.wb */
    char *channel;             /* owned; NULL for Hub.wb_any */
    uint32_t hash;
    Conn *head;                /* linked through Conn.wprev/wnext */
    int64_t stamp;             /* fan-out pass that last visited it */
} WaitBucket;

struct Conn {
    Conn *prev, *next;       /* Hub.conns */
    int fd;
    int poll_slot;           /* poll() backend: index in its set, or -1 */
    unsigned ev;             /* events the poller watches for it now */
    ConnState state;
    Buf in, out;             /* in: unconsumed input; out: out_off sent */
    size_t out_off;
    int64_t deadline_ms;     /* next timer for this conn; 0 = none */
    int heap_idx;            /* position in Hub.heap, -1 if absent */
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
    size_t held_from;        /* out offset where uncommitted answers start */
    unsigned keep_alive : 1; /* the current request allows reuse */
    unsigned close_after : 1;/* close once out is drained */
    unsigned peer_closed : 1;/* read returned 0 */
    unsigned held : 1;       /* in Hub.held this turn */
    unsigned behind : 1;     /* STREAM: backlog not yet fully queued */
    unsigned touched : 1;    /* in Hub.touched */
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

/* ---- timer heap: every conn with a deadline, earliest on top ---- */

static void heap_swap(Hub *h, int a, int b) {
    Conn *t = h->heap[a];
    h->heap[a] = h->heap[b];
    h->heap[b] = t;
    h->heap[a]->heap_idx = a;
    h->heap[b]->heap_idx = b;
}

static void heap_up(Hub *h, int i) {
    while (i > 0) {
        int p = (i - 1) / 2;
        if (h->heap[p]->deadline_ms <= h->heap[i]->deadline_ms) break;
        heap_swap(h, p, i);
        i = p;
    }
}

static void heap_down(Hub *h, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n_heap && h->heap[l]->deadline_ms < h->heap[m]->deadline_ms) m = l;
        if (r < h->n_heap && h->heap[r]->deadline_ms < h->heap[m]->deadline_ms) m = r;
        if (m == i) break;
        heap_swap(h, i, m);
        i = m;
    }
}

static void heap_remove(Hub *h, Conn *c) {
    int i = c->heap_idx;
    if (i < 0) return;
    c->heap_idx = -1;
    if (--h->n_heap == i) return;
    h->heap[i] = h->heap[h->n_heap];
    h->heap[i]->heap_idx = i;
    heap_up(h, i);
    heap_down(h, h->heap[i]->heap_idx);
}

/* Set (or clear, with 0) a conn's deadline and restore the heap order. */
static void heap_set(Hub *h, Conn *c, int64_t deadline) {
    if (!deadline) {
        heap_remove(h, c);
        c->deadline_ms = 0;
        return;
    }
    c->deadline_ms = deadline;
    if (c->heap_idx < 0) {
        if (h->n_heap == h->cap_heap)
            h->heap = vec_grow(h->heap, &h->cap_heap, sizeof *h->heap);
        c->heap_idx = h->n_heap++;
        h->heap[c->heap_idx] = c;
    }
    heap_up(h, c->heap_idx);
    heap_down(h, c->heap_idx);
}

/* Where c's sendable output ends: answers that wait for this turn's
 * commit stay queued, and everything behind them waits too. */
static size_t conn_send_end(const Conn *c) {
    return c->held && c->held_from < c->out.len ? c->held_from : c->out.len;
}

/* Derive a conn's deadline from its state (PROTOCOL §4.3 timeouts). A head
 * or body deadline counts from when it started, not from the last byte, so
 * a client trickling bytes cannot stretch it. */
static void conn_schedule(Hub *h, Conn *c) {
    int64_t d;
    if (c->retry_ms && c->state == CONN_READ) {
        d = c->retry_ms;
        if (d != c->deadline_ms || c->heap_idx < 0) heap_set(h, c, d);
        return;
    }
    if (c->relay && c->state != CONN_PARKED) {
        heap_set(h, c, 0);   /* a relayed request has no socket to time out */
        return;
    }
    switch (c->state) {
    case CONN_DEAD: d = 0; break;
    case CONN_PARKED: d = c->park_until_ms; break;
    case CONN_STREAM:
        /* A stream with sendable output waits for the reader, up to the
         * idle timeout; one without gets its heartbeat. */
        d = c->active_ms + (c->out_off < conn_send_end(c) ? h->cfg.idle_ms
                                                          : ARC_HEARTBEAT_MS);
        break;
    default:
        if (c->out_off < c->out.len) d = c->active_ms + h->cfg.idle_ms;
        else if (c->body_ms) d = c->body_ms + h->cfg.body_ms;
        else if (c->req_ms) d = c->req_ms + h->cfg.head_ms;
        else d = c->active_ms + h->cfg.idle_ms;
    }
    if (d != c->deadline_ms || (d && c->heap_idx < 0)) heap_set(h, c, d);
}


/* ---- connections ---- */

/* Put c on this turn's list of conns to finish (write, reschedule, re-arm,
 * free) at its end. */
static void loop_touch(Hub *h, Conn *c) {
    if (c->touched) return;
    c->touched = 1;
    if (h->n_touched == h->cap_touched)
        h->touched = vec_grow(h->touched, &h->cap_touched, sizeof *h->touched);
    h->touched[h->n_touched++] = c;
}

/* FNV-1a: channel names to wait buckets. */
static uint32_t loop_hash(const char *s) {
    uint32_t x = 2166136261u;
    for (; *s; s++) x = (x ^ (unsigned char)*s) * 16777619u;
    return x;
}

/* The bucket for `channel`, or NULL; `make` creates it. */
static WaitBucket *loop_bucket(Hub *h, const char *channel, int make) {
    uint32_t x = loop_hash(channel);
    if (h->cap_wb) {
        for (WaitBucket *b = h->wb[x & (uint32_t)(h->cap_wb - 1)]; b; b = b->next)
            if (b->hash == x && !strcmp(b->channel, channel)) return b;
    }
    if (!make) return NULL;
    if (h->n_wb >= h->cap_wb) {   /* grow (and rehash) at load factor 1 */
        int cap = h->cap_wb ? h->cap_wb * 2 : 16;
        WaitBucket **t = xrealloc(NULL, (size_t)cap * sizeof *t);
        memset(t, 0, (size_t)cap * sizeof *t);
        for (int i = 0; i < h->cap_wb; i++)
            for (WaitBucket *b = h->wb[i], *next; b; b = next) {
                next = b->next;
                b->next = t[b->hash & (uint32_t)(cap - 1)];
                t[b->hash & (uint32_t)(cap - 1)] = b;
            }
        free(h->wb);
        h->wb = t;
        h->cap_wb = cap;
    }
    WaitBucket *b = xrealloc(NULL, sizeof *b);
    *b = (WaitBucket){ .channel = xstrndup(channel, strlen(channel)), .hash = x };
    b->next = h->wb[x & (uint32_t)(h->cap_wb - 1)];
    h->wb[x & (uint32_t)(h->cap_wb - 1)] = b;
    h->n_wb++;
    return b;
}

/* c starts waiting (PARKED or STREAM, its Wait set): file it by channel. */
static void loop_wait_add(Hub *h, Conn *c) {
    WaitBucket *b = c->wait.channel ? loop_bucket(h, c->wait.channel, 1) : h->wb_any;
    c->bucket = b;
    c->wprev = NULL;
    c->wnext = b->head;
    if (b->head) b->head->wprev = c;
    b->head = c;
    h->n_parked++;
}

/* c stops waiting: unfile it, freeing its bucket once empty. */
static void loop_wait_del(Hub *h, Conn *c) {
    WaitBucket *b = c->bucket;
    if (!b) return;
    if (c->wprev) c->wprev->wnext = c->wnext;
    else b->head = c->wnext;
    if (c->wnext) c->wnext->wprev = c->wprev;
    c->bucket = NULL;
    c->wprev = c->wnext = NULL;
    h->n_parked--;
    if (b->head || b == h->wb_any) return;
    WaitBucket **pp = &h->wb[b->hash & (uint32_t)(h->cap_wb - 1)];
    while (*pp != b) pp = &(*pp)->next;
    *pp = b->next;
    free(b->channel);
    free(b);
    h->n_wb--;
}

/* Every waiting conn, in a new array the caller frees (the waits may
 * change while it is worked through); *n gets the count. */
static Conn **loop_waiters(Hub *h, int *n) {
    Conn **all = xrealloc(NULL, (size_t)(h->n_parked + 1) * sizeof *all);
    int k = 0;
    for (Conn *c = h->wb_any->head; c; c = c->wnext) all[k++] = c;
    for (int i = 0; i < h->cap_wb; i++)
        for (WaitBucket *b = h->wb[i]; b; b = b->next)
            for (Conn *c = b->head; c; c = c->wnext) all[k++] = c;
    assert(k == h->n_parked);
    *n = k;
    return all;
}

static void conn_kill(Hub *h, Conn *c) {
    if (c->state == CONN_PARKED || c->state == CONN_STREAM) loop_wait_del(h, c);
    c->state = CONN_DEAD;
    heap_remove(h, c);
    loop_touch(h, c);
}

/* Queue a complete response. The connection closes after it unless the
 * request allowed keep-alive. */
static void conn_respond(Hub *h, Conn *c, int status, const char *ctype,
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
    p = stpcpy(p, h->store.instance_id);
    p = stpcpy(p, "\r\n");
    if (extra && strlen(extra) < sizeof hdr - (size_t)(p - hdr)) stpcpy(p, extra);
    http_head(&c->out, status, ctype ? ctype : "application/json",
              (long long)body.n, !c->close_after, hdr);
    buf_addstr(&c->out, body);
}

/* A framing error: answer with the JSON envelope and close (PROTOCOL §4). */
static void conn_error(Hub *h, Conn *c, int status, const char *msg) {
    Buf b = { 0 };
    buf_adds(&b, "{\"ok\":false,\"error\":");
    json_cstr(&b, msg);
    buf_addc(&b, '}');
    c->close_after = 1;
    c->keep_alive = 0;
    conn_respond(h, c, status, NULL, NULL, buf_str(&b));
    buf_free(&b);
    buf_reset(&c->in);
    c->req_ms = c->body_ms = 0;
}

/* Remember that c's output since `mark` depends on this turn's commit. */
static void loop_hold(Hub *h, Conn *c, size_t mark) {
    if (c->held) {
        if (mark < c->held_from) c->held_from = mark;
        return;
    }
    c->held = 1;
    c->held_from = mark;
    if (h->n_held == h->cap_held)
        h->held = vec_grow(h->held, &h->cap_held, sizeof *h->held);
    h->held[h->n_held++] = c;
}

/* c's output from `mark` on was made from the database: if this turn's
 * batch is open, it may show uncommitted writes and waits for the commit. */
static void loop_depend(Hub *h, Conn *c, size_t mark) {
    if (h->store.in_tx) loop_hold(h, c, mark);
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
static void loop_stream_fill(Hub *h, Conn *c) {
    sqlite3_stmt *st = hub_wait_stmt(h, &c->wait, 0);
    Buf msg = { 0 };
    int n = 0;
    loop_depend(h, c, c->out.len);
    c->behind = 0;
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        if (!n) store_cache_sync(&h->store);
        buf_reset(&msg);
        store_emit_message(&h->store, &msg, st);
        loop_sse_event(c, sqlite3_column_int64(st, 0), buf_str(&msg));
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
static void loop_finish(Hub *h, Conn *c, Res *r) {
    if (r->stream) {
        buf_adds(&c->out, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"
                 "X-Arc-Instance: ");
        buf_adds(&c->out, h->store.instance_id);
        buf_adds(&c->out, "\r\nConnection: close\r\n\r\nretry: 1000\n\n");
        c->state = CONN_STREAM;
        c->wait = r->wait;                 /* hand-off: the conn owns it */
        memset(&r->wait, 0, sizeof r->wait);
        c->close_after = 0;
        loop_wait_add(h, c);
        loop_stream_fill(h, c);
        return;
    }
    if (r->park) {
        c->state = CONN_PARKED;
        c->wait = r->wait;                 /* hand-off: the conn owns it */
        memset(&r->wait, 0, sizeof r->wait);
        c->park_until_ms = h->now_ms + r->wait_ms;
        loop_wait_add(h, c);
        return;
    }
    conn_respond(h, c, r->status, r->ctype, r->extra, buf_str(&r->body));
}

/* A request whose write found the storage locked by another process (a
 * second hub, a sqlite3 shell) is not answered 503 at once: its answer is
 * dropped and it is handled again ARC_BUSY_RETRY_MS later, for up to
 * ARC_BUSY_MS, without blocking the loop meanwhile (PROTOCOL §10.2). Only
 * a failed BEGIN sets q->busy, so the request wrote nothing. Returns 1
 * when c is to retry (conn_schedule sets its timer; loop_timers clears
 * retry_ms when it fires, and c is served again from the touched list). */
static int loop_retry_busy(Hub *h, Conn *c, const Req *q, const Res *r) {
    if (!q->busy || r->status != 503) {
        c->busy_since_ms = 0;
        return 0;
    }
    if (!c->busy_since_ms) c->busy_since_ms = h->now_ms;
    if (h->now_ms - c->busy_since_ms >= ARC_BUSY_MS) {
        c->busy_since_ms = 0;   /* waited long enough: answer the 503 */
        return 0;
    }
    c->retry_ms = h->now_ms + ARC_BUSY_RETRY_MS;
    return 1;
}

/* Parse and handle every complete request in c->in, in order, until one
 * parks, the input runs out, enough output is queued, or a write must
 * wait for another process's lock. */
static void loop_process(Hub *h, Conn *c) {
    /* An incomplete request with no new input is as incomplete as before:
     * re-parsing it every turn is what a thousand slow clients would cost. */
    if ((c->req_ms || c->body_ms) && !c->fed) return;
    c->fed = 0;
    while (c->state == CONN_READ && !c->close_after && c->in.len &&
           !c->retry_ms && c->out.len - c->out_off < ARC_MAX_OUT / 4) {
        HttpReq hr;
        int n = http_parse(c->in.p, c->in.len, &hr);
        if (n == ARC_AGAIN) {
            if (!c->req_ms) c->req_ms = h->now_ms;
            break;
        }
        if (n == ARC_BAD) {
            conn_error(h, c, hr.err_status, hr.err_msg);
            break;
        }
        int64_t cl = hr.content_length < 0 ? 0 : hr.content_length;
        if (cl > h->max_request_bytes) {
            conn_error(h, c, 400, "request body exceeds max size");
            break;
        }
        if ((int64_t)c->in.len < n + cl) {
            if (!c->body_ms) c->body_ms = h->now_ms;
            break;
        }
        c->keep_alive = hr.keep_alive;
        Req q = { .method = hr.method, .query = hr.query,
                  .last_event_id = hr.last_event_id };
        Res r = { 0 };
        size_t mark = c->out.len;
        int known = str_eq(hr.method, "GET") || str_eq(hr.method, "POST") ||
                    str_eq(hr.method, "DELETE");
        if (!known) c->keep_alive = 0;   /* its body, if any, is not ours */
        if (hub_admit(h, &hr, &r) == 0) {   /* PROTOCOL §2 */
            hub_handle(h, &q, hr.path, (Str){ c->in.p + n, (size_t)cl }, &r);
            if (loop_retry_busy(h, c, &q, &r)) {   /* keep the input, no answer */
                req_free(&q);
                res_free(&r);
                c->req_ms = c->body_ms = 0;
                break;
            }
        }
        loop_finish(h, c, &r);
        loop_depend(h, c, mark);
        req_free(&q);
        res_free(&r);
        buf_consume(&c->in, (size_t)(n + cl));
        c->req_ms = c->body_ms = 0;
    }
    /* A waiter with nothing pipelined keeps no input buffer: 10,000 parked
     * long-polls would otherwise hold 16 KiB each. */
    if (c->state != CONN_READ && !c->in.len) buf_free(&c->in);
}

/* Write c->out up to `end` as far as the socket takes it. Returns 1 if
 * anything was written, 0 if not, -1 if the connection failed. Touches
 * only c->fd, c->out and c->out_off, so a sender thread may run it
 * (see "parallel sends"). */
static int conn_send(Conn *c, size_t end) {
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

/* After conn_send() returned rc: close or recycle c's output. */
static void loop_sent(Hub *h, Conn *c, int rc) {
    if (rc < 0) {
        conn_kill(h, c);
        return;
    }
    if (rc) c->active_ms = h->now_ms;
    if (c->out_off == c->out.len) {
        buf_reset(&c->out);
        c->out_off = 0;
        c->held_from = 0;   /* all that follows is newer */
        if (c->close_after) {
            conn_kill(h, c);
            return;
        }
        if (c->state == CONN_STREAM && c->behind) loop_stream_fill(h, c);
    } else if (c->state == CONN_STREAM && c->out.len - c->out_off > ARC_MAX_OUT) {
        /* Only a stream grows without a request; a reader that stalls on
         * ordinary responses is bounded by loop_process and the idle
         * timeout (PROTOCOL §4.1). */
        log_info("dropping a client that stopped reading (%zu bytes queued)",
                 c->out.len - c->out_off);
        conn_kill(h, c);
    }
}

/* Write as much of c->out as the socket takes (and may be sent). */
static void loop_write(Hub *h, Conn *c) {
    size_t end = conn_send_end(c);
    if (c->relay) {   /* answered: hand the envelope to the relay thread */
        if (c->state == CONN_READ && c->close_after && end == c->out.len) {
            RelayReq *r = c->relay;
            c->relay = NULL;
            r->answer = c->out;        /* hand-off: the request owns it now */
            c->out = (Buf){ 0 };
            relay_done(h->relay, r);
            conn_kill(h, c);
        }
        return;
    }
    loop_sent(h, c, conn_send(c, end));
}

/* Send what c may send now (the answer is complete and releasable). */
static void loop_flush(Hub *h, Conn *c) {
    if (c->state != CONN_DEAD && (c->relay || c->out_off < conn_send_end(c)))
        loop_write(h, c);
}

/* Read everything available. Returns 0, or -1 if the conn died. */
static int loop_read(Hub *h, Conn *c) {
    size_t cap = (size_t)h->max_request_bytes + 2 * ARC_MAX_HEAD;
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
        c->active_ms = h->now_ms;
        c->fed = 1;
        /* A short read emptied the socket: the poller is level-triggered,
         * so more input (or the end) is reported again; no read to learn
         * EAGAIN (one syscall per request saved). */
        if ((size_t)n < room) break;
    }
    if (c->peer_closed && c->state != CONN_READ) {
        conn_kill(h, c);   /* a waiter that hung up is dropped at once */
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
static int sender_ready(Hub *h) {
    Sender *s = h->sender;
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
static int sender_begin(Hub *h) {
    Sender *s = h->sender;
    if (h->n_parked < ARC_SEND_MIN || !sender_ready(h)) return 0;
    if (s->cap < h->n_parked) {   /* every waiter at most; nothing reads it now */
        s->cap = h->n_parked;
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
static void sender_add(Hub *h, Conn *c, size_t end) {
    Sender *s = h->sender;
    assert(s->n < s->cap);
    s->job[s->n++] = (SendJob){ c, end, 0 };
    if (s->n - s->published >= ARC_SEND_CHUNK) sender_publish(s);
}

/* After the fan-out: write what is left alongside the threads, wait for
 * them, then settle every conn as loop_write() would have. */
static void sender_finish(Hub *h) {
    Sender *s = h->sender;
    if (!s->n) return;   /* woke nobody: leave the threads asleep */
    pthread_mutex_lock(&s->mu);
    /* What sender_add() has not published is less than a chunk: the loop
     * writes it itself (busy threads may take some). Waking a thread for
     * it, say a post that wakes one of 9,000 waiters, would only cost. */
    s->published = s->n;
    while (s->next < s->published) sender_take(s);
    while (s->busy) pthread_cond_wait(&s->idle, &s->mu);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n; i++) loop_sent(h, s->job[i].c, s->job[i].rc);
    s->n = s->published = s->next = 0;
}

static void sender_open(Hub *h) {
    h->sender = xrealloc(NULL, sizeof *h->sender);
    *h->sender = (Sender){ 0 };
    pthread_mutex_init(&h->sender->mu, NULL);
    pthread_cond_init(&h->sender->more, NULL);
    pthread_cond_init(&h->sender->idle, NULL);
}

static void sender_close(Hub *h) {
    Sender *s = h->sender;
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
    h->sender = NULL;
}

/* ---- parked requests and streams ---- */

/* c stops waiting and goes back to serving requests. */
static void loop_unparked(Hub *h, Conn *c) {
    loop_wait_del(h, c);
    wait_free(&c->wait);
    c->state = CONN_READ;
    c->active_ms = h->now_ms;   /* the idle clock restarts with the answer */
}

/* Answer a parked request with `result` (a JSON array) and resume reading
 * any requests it had pipelined behind it. */
static void loop_unpark(Hub *h, Conn *c, Str result) {
    Buf b = { 0 };
    buf_adds(&b, "{\"ok\":true,\"result\":");
    buf_addstr(&b, result);
    buf_addc(&b, '}');
    loop_unparked(h, c);
    conn_respond(h, c, 200, NULL, NULL, buf_str(&b));
    buf_free(&b);
}

/* Wake c from this turn's committed batch, without touching SQLite.
 * Parked requests that match the same messages get the same bytes, so the
 * answer is built once per distinct match (Hub.fan_*) and then copied: a
 * post that wakes 10,000 agents builds one response, not 10,000. */
static void loop_wake_batch(Hub *h, Conn *c) {
    if (c->state == CONN_STREAM) {
        if (c->behind) return;
        for (int i = 0; i < h->n_batch; i++) {
            NewMsg *m = &h->batch[i];
            if (hub_wait_match(&c->wait, m))
                loop_sse_event(c, m->id, (Str){ m->json, m->json_len });
        }
        return;
    }
    if (h->cap_fan < h->n_batch) {
        h->cap_fan = h->n_batch;
        h->fan_idx = xrealloc(h->fan_idx, (size_t)h->cap_fan * sizeof *h->fan_idx);
        h->fan_tmp = xrealloc(h->fan_tmp, (size_t)h->cap_fan * sizeof *h->fan_tmp);
    }
    int n = 0;
    for (int i = 0; i < h->n_batch && n < c->wait.limit; i++)
        if (hub_wait_match(&c->wait, &h->batch[i])) h->fan_tmp[n++] = i;
    if (!n) return;
    int shared = !c->relay;   /* a relayed answer has no head: not shared */
    if (shared && h->fan_n == n && h->fan_keep == c->keep_alive &&
        !memcmp(h->fan_idx, h->fan_tmp, (size_t)n * sizeof *h->fan_idx)) {
        loop_unparked(h, c);
        if (!c->keep_alive) c->close_after = 1;
        buf_addstr(&c->out, buf_str(&h->fan_resp));
        return;
    }
    Buf res = { 0 };
    for (int k = 0; k < n; k++) {
        NewMsg *m = &h->batch[h->fan_tmp[k]];
        buf_addc(&res, k ? ',' : '[');
        buf_add(&res, m->json, m->json_len);
    }
    buf_addc(&res, ']');
    size_t mark = c->out.len;
    loop_unpark(h, c, buf_str(&res));
    buf_free(&res);
    if (!shared) return;
    int *t = h->fan_idx;   /* remember this answer: its matches, its bytes */
    h->fan_idx = h->fan_tmp;
    h->fan_tmp = t;
    h->fan_n = n;
    h->fan_keep = c->keep_alive;
    buf_reset(&h->fan_resp);
    buf_add(&h->fan_resp, c->out.p + mark, c->out.len - mark);
}

/* Wake by asking SQLite again: after another process committed. */
static void loop_wake_query(Hub *h, Conn *c) {
    if (c->state == CONN_STREAM) {
        if (!c->behind) loop_stream_fill(h, c);
        return;
    }
    Buf res = { 0 };
    if (hub_wait_query(h, &c->wait, 0, &res) > 0) loop_unpark(h, c, buf_str(&res));
    buf_free(&res);
}

/* c may have new output from a wake-up (from `mark` on): hold it as its
 * data requires, and send it at once if it may go (by a sender thread in
 * a parallel fan-out). */
static void loop_woken(Hub *h, Conn *c, size_t mark) {
    if (c->out.len == mark) return;
    loop_depend(h, c, mark);
    loop_touch(h, c);
    if (h->sending && !c->relay && c->state != CONN_DEAD && c->out_off < conn_send_end(c))
        sender_add(h, c, conn_send_end(c));
    else
        loop_flush(h, c);
}

/* Wake every waiter in b that the batch may match. */
static void loop_wake_bucket(Hub *h, WaitBucket *b) {
    for (Conn *c = b->head, *next; c; c = next) {
        next = c->wnext;   /* c may leave the bucket */
        size_t mark = c->out.len;
        loop_wake_batch(h, c);
        loop_woken(h, c, mark);
    }
}

/* Every waiter asks SQLite again (after another process committed). */
static void loop_wake_all(Hub *h) {
    int n;
    Conn **all = loop_waiters(h, &n);
    for (int i = 0; i < n; i++) {
        Conn *c = all[i];
        if (c->state != CONN_PARKED && c->state != CONN_STREAM) continue;
        size_t mark = c->out.len;
        loop_wake_query(h, c);
        loop_woken(h, c, mark);
    }
    free(all);
}

/* The waiters of the channels this turn's batch wrote to, and those
 * waiting on any channel, from the batch. */
static void loop_wake_batches(Hub *h) {
    h->fan_stamp++;
    h->fan_n = 0;   /* no shared answer yet: batch indices are this turn's */
    for (int i = 0; i < h->n_batch; i++) {
        WaitBucket *b = loop_bucket(h, h->batch[i].channel, 0);
        if (b && b->stamp != h->fan_stamp) {
            b->stamp = h->fan_stamp;
            loop_wake_bucket(h, b);
        }
    }
    loop_wake_bucket(h, h->wb_any);
}

/* After the commit: answer every waiter that something new matches, each
 * as soon as its answer is built. If another process committed since we
 * last looked, rows may exist that are not in our batch, so every waiter
 * re-queries instead (PROTOCOL §8.2). */
static void loop_fanout(Hub *h, int check_foreign) {
    int foreign = 0;
    if (check_foreign && h->n_parked) {
        int64_t v = store_data_version(&h->store);
        foreign = v != h->store.data_version;
        h->store.data_version = v;
    }
    if (!foreign && (!h->n_batch || !h->n_parked)) return;
    h->sending = sender_begin(h);
    if (foreign) loop_wake_all(h);
    else loop_wake_batches(h);
    if (h->sending) sender_finish(h);
    h->sending = 0;
}

/* ---- timers ---- */

/* Run a hub action outside any request (prune tick, presence, shutdown),
 * in the turn's batch transaction under its own savepoint. */
typedef void (*HubTask)(Hub *, Req *, Res *);

static void loop_hub_task(Hub *h, HubTask fn) {
    Req q = { .method = STR_LIT("TIMER") };
    Res r = { .status = 200 };
    fn(h, &q, &r);
    hub_tx_end(h, &q, r.status < 400);
    req_free(&q);
    res_free(&r);
}

static void task_prune(Hub *h, Req *q, Res *r) { hub_expire_sessions(h, q, r); }

/* PROTOCOL §9: an agent waiting in a long-poll or stream stays present.
 * One UPDATE per distinct waiting agent per tick bounds the write load. */
static void task_touch_waiters(Hub *h, Req *q, Res *r) {
    int n, k = 0;
    Conn **all = loop_waiters(h, &n);
    const char **agents = xrealloc(NULL, (size_t)(n + 1) * sizeof *agents);
    for (int i = 0; i < n; i++)
        if (all[i]->wait.agent) agents[k++] = all[i]->wait.agent;
    free(all);
    if (k) qsort(agents, (size_t)k, sizeof *agents, cstr_cmp);
    for (int i = 0; i < k; i++)
        if (i == 0 || strcmp(agents[i], agents[i - 1]))
            hub_touch(h, q, r, str_c(agents[i]));
    free(agents);
}

static void task_shutdown(Hub *h, Req *q, Res *r) {
    hub_notice_general(h, q, r, "Hub is shutting down now.",
                       "{\"shutdown\":true,\"final\":true}");
    log_info("executing shutdown");
    h->shutdown_at_ms = 0;
    h->shutdown_now = 1;
}

static int64_t loop_tick_ms(Hub *h) {
    int64_t t = h->cfg.presence_ttl_s / 3;
    return (t < 1 ? 1 : t) * 1000;
}

/* Fire due conn deadlines and hub timers. */
static void loop_timers(Hub *h) {
    while (h->n_heap && h->heap[0]->deadline_ms <= h->now_ms) {
        Conn *c = h->heap[0];
        heap_remove(h, c);
        c->deadline_ms = 0;
        loop_touch(h, c);
        switch (c->state) {
        case CONN_PARKED:
            loop_unpark(h, c, STR_LIT("[]"));
            break;
        case CONN_STREAM:
            if (c->out_off == conn_send_end(c)) {
                buf_adds(&c->out, ": keepalive\n\n");
                c->active_ms = h->now_ms;
            } else if (h->now_ms - c->active_ms >= h->cfg.idle_ms) {
                /* A stream that is behind queues no more than about
                 * ARC_MAX_OUT / 4 (loop_stream_fill), so a reader that
                 * stopped is told by time, not by size (PROTOCOL §8.4). */
                log_info("dropping a stream that stopped reading (%zu bytes "
                         "queued)", c->out.len - c->out_off);
                conn_kill(h, c);
            }
            break;
        case CONN_READ:
            if (c->retry_ms)
                c->retry_ms = 0;   /* loop_serve retries it (loop_settle_touched) */
            else if (c->out_off < c->out.len || (!c->req_ms && !c->body_ms))
                conn_kill(h, c);   /* stalled reader, or idle keep-alive */
            else if (c->body_ms)
                conn_error(h, c, 408, "request body not received in time");
            else
                conn_error(h, c, 408, "request head not received in time");
            break;
        default: break;
        }
        if (c->state != CONN_DEAD) conn_schedule(h, c);
    }
    if (h->now_ms >= h->next_prune_ms) {
        loop_hub_task(h, task_prune);
        h->next_prune_ms = h->now_ms + loop_tick_ms(h);
    }
    if (h->now_ms >= h->next_touch_ms) {
        if (h->n_parked) loop_hub_task(h, task_touch_waiters);
        int64_t t = loop_tick_ms(h);
        h->next_touch_ms = h->now_ms + (t > 30000 ? 30000 : t);
    }
    if (h->shutdown_at_ms && clock_ms() >= h->shutdown_at_ms)
        loop_hub_task(h, task_shutdown);
}

/* ---- commit and durability ---- */

/* Take back c's answers from `from` on and answer 503 with `why` instead,
 * closing after it: what they reported did not happen, or may not last. */
static void loop_withdraw(Hub *h, Conn *c, size_t from, const char *why) {
    char msg[300];
    c->out.len = from;
    if (c->state == CONN_PARKED || c->state == CONN_STREAM) {
        loop_wait_del(h, c);
        wait_free(&c->wait);
        c->state = CONN_READ;
    }
    snprintf(msg, sizeof msg, "storage error: %s", why);
    conn_error(h, c, 503, msg);
    loop_touch(h, c);
}

/* Commit the turn's batch, then send its held answers at once, before any
 * fan-out: a poster hears back before the agents it woke. If the commit
 * fails, nothing of it happened: replace every held answer with a 503 and
 * forget the batch. */
static void loop_commit(Hub *h) {
    if (!h->store.in_tx) {
        assert(h->n_held == 0 && h->n_batch == 0);
    } else if (store_commit(&h->store) == 0) {
        for (int i = 0; i < h->n_batch; i++)   /* committed: now cacheable */
            store_cache_put(&h->store, h->batch[i].id, h->batch[i].json,
                            h->batch[i].json_len);
    } else {
        const char *why = h->store.err;
        log_warn("commit failed: %s", why);
        for (int i = 0; i < h->n_held; i++) {
            Conn *c = h->held[i];
            if (c->state != CONN_DEAD) loop_withdraw(h, c, c->held_from, why);
        }
        hub_batch_truncate(h, 0);
        store_cache_flush(&h->store);
    }
    for (int i = 0; i < h->n_held; i++) h->held[i]->held = 0;
    for (int i = 0; i < h->n_held; i++) loop_flush(h, h->held[i]);
    h->n_held = 0;
}

/* ---- accept, the poll set, freeing ---- */

/* Tags for the loop's own descriptors in the poller. */
static char loop_tag_wake, loop_tag_listen, loop_tag_wal;

/* Add c to Hub.conns. */
static void loop_link(Hub *h, Conn *c) {
    c->prev = NULL;
    c->next = h->conns;
    if (h->conns) h->conns->prev = c;
    h->conns = c;
    h->n_conns++;
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
static int loop_accept_emfile(Hub *h, int err) {
    if (h->now_ms - h->warned_ms >= 1000) {   /* at most 1 a second */
        log_warn("accept: %s (%d connections open); refusing new ones",
                 strerror(err), h->n_sockets);
        h->warned_ms = h->now_ms;
    }
    int taken = 0;
    if (h->spare_fd >= 0) {
        close(h->spare_fd);
        int fd = accept(h->listen_fd, NULL, NULL);
        if (fd >= 0) {
            loop_refuse(fd);
            taken = 1;
        }
        h->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    if (!taken) h->accept_pause_until = h->now_ms + 100;
    return taken;
}

static void loop_accept(Hub *h) {
    for (;;) {
        int fd = accept(h->listen_fd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EMFILE || errno == ENFILE) {
                if (loop_accept_emfile(h, errno)) continue;
            } else if (errno == ENOBUFS || errno == ENOMEM) {
                h->accept_pause_until = h->now_ms + 100;
            }
            return;   /* EAGAIN: the queue is empty */
        }
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        if (h->n_sockets >= h->cfg.max_conns) {
            loop_refuse(fd);
            continue;
        }
        /* The spare was lost (the relay thread took the descriptor while it
         * was free): take it back before anything else, even if that means
         * refusing this client, or the next EMFILE would find none. */
        if (h->spare_fd < 0 &&
            (h->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0) {
            loop_refuse(fd);
            h->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            continue;
        }
        fd_nonblock(fd);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        Conn *c = xrealloc(NULL, sizeof *c);
        *c = (Conn){ .fd = fd, .poll_slot = -1, .heap_idx = -1,
                     .state = CONN_READ, .active_ms = h->now_ms };
        loop_link(h, c);
        h->n_sockets++;
        c->ev = POLLIN;
        if (poller_watch(h->poller, fd, c, &c->poll_slot, c->ev))
            conn_kill(h, c);   /* cannot watch it: freed at the turn's end */
        else
            conn_schedule(h, c);
    }
}

/* The wait for readiness failed with something other than EINTR: only
 * ENOMEM can happen with a well-formed set. Nothing is lost by waiting;
 * the turn goes on with no events, which is harmless. */
static void loop_poll_failed(Hub *h) {
    if (h->now_ms - h->warned_ms >= 1000) {
        log_warn("poll: %s", strerror(errno));
        h->warned_ms = h->now_ms;
    }
    struct timespec ts = { 0, 10 * 1000000 };
    nanosleep(&ts, NULL);
}

/* Make the poller watch for what c can use now: input while there is room
 * for it, output while some may be sent. */
static void loop_watch(Hub *h, Conn *c) {
    if (c->fd < 0) return;
    size_t cap = (size_t)h->max_request_bytes + 2 * ARC_MAX_HEAD;
    unsigned ev = 0;
    if (c->in.len < cap && !c->peer_closed) ev |= POLLIN;
    if (c->out_off < conn_send_end(c)) ev |= POLLOUT;
    if (ev == c->ev) return;
    c->ev = ev;
    if (poller_watch(h->poller, c->fd, c, &c->poll_slot, ev))
        conn_kill(h, c);   /* ENOMEM: cannot watch it, so drop it */
}

static void loop_free(Hub *h, Conn *c) {
    if (c->prev) c->prev->next = c->next;
    else h->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    h->n_conns--;
    if (c->fd >= 0) {
        poller_forget(h->poller, &c->poll_slot);
        close(c->fd);
        h->n_sockets--;
    }
    if (c->relay) relay_req_free(c->relay);
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
static void loop_settle_touched(Hub *h) {
    int k = 0;
    for (int i = 0; i < h->n_touched; i++) {
        Conn *c = h->touched[i];
        loop_flush(h, c);
        if (c->state != CONN_DEAD) {
            conn_schedule(h, c);
            loop_watch(h, c);
        }
        if (c->state == CONN_DEAD) {
            loop_free(h, c);
            continue;
        }
        if (conn_pending(c)) h->touched[k++] = c;
        else c->touched = 0;
    }
    h->n_touched = k;
}

static int loop_timeout_ms(Hub *h) {
    if (h->n_touched || g_stop || h->shutdown_now) return 0;
    int64_t t = h->next_prune_ms;
    if (h->n_heap && h->heap[0]->deadline_ms < t) t = h->heap[0]->deadline_ms;
    if (h->n_parked && h->next_touch_ms < t) t = h->next_touch_ms;
    if (h->n_parked && (h->wal_watch < 0 || h->now_ms < h->dv_until_ms) &&
        h->next_dv_ms < t)
        t = h->next_dv_ms;
    if (h->shutdown_at_ms && h->shutdown_at_ms < t) t = h->shutdown_at_ms;
    if (h->accept_pause_until > h->now_ms && h->accept_pause_until < t)
        t = h->accept_pause_until;
    t -= h->now_ms;
    return t < 0 ? 0 : t > 60000 ? 60000 : (int)t;
}

/* Set up the poller over the wake pipe, the listener and the -wal watch. */
static void loop_open(Hub *h) {
    h->poller = xrealloc(NULL, sizeof *h->poller);
    if (poller_open(h->poller)) die("poller: %s", strerror(errno));
    h->wb_any = xrealloc(NULL, sizeof *h->wb_any);
    *h->wb_any = (WaitBucket){ 0 };
    sender_open(h);
    h->wake_slot = h->listen_slot = h->wal_slot = -1;
    h->listen_ev = POLLIN;
    h->wal_ev = 0;   /* until someone waits (loop_turn) */
    if (poller_watch(h->poller, h->wake_rd, &loop_tag_wake, &h->wake_slot, POLLIN) ||
        poller_watch(h->poller, h->listen_fd, &loop_tag_listen, &h->listen_slot,
                     POLLIN) ||
        (h->wal_watch >= 0 &&
         poller_watch(h->poller, h->wal_watch, &loop_tag_wal, &h->wal_slot, 0)))
        die("poller: %s", strerror(errno));
}

static void loop_close(Hub *h) {
    sender_close(h);
    poller_close(h->poller);
    free(h->poller);
    free(h->wb_any);
    free(h->touched);
    free(h->wb);   /* every bucket was freed with its last waiter */
    free(h->fan_idx);
    free(h->fan_tmp);
    buf_free(&h->fan_resp);
}

/* The signal handler's half of the self-pipe. */
static int g_wake_wr = -1;

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
static void loop_relay_serve(Hub *h, Conn *c) {
    RelayReq *r = c->relay;
    const char *qm = strchr(r->path, '?');
    Str path = { r->path, qm ? (size_t)(qm - r->path) : strlen(r->path) };
    Req q = { .method = str_c(r->method), .query = str_c(qm ? qm + 1 : "") };
    Res res = { 0 };
    if (r->body && (int64_t)strlen(r->body) > h->max_request_bytes)
        hub_fail(&res, 400, "request body exceeds max size");
    else
        hub_handle(h, &q, path, str_c(r->body ? r->body : ""), &res);
    if (res.stream) {
        wait_free(&res.wait);
        res.stream = 0;
        hub_fail(&res, 400, "GET /v1/stream is not available through the relay; "
                 "use /v1/events with a timeout");
    }
    if (!loop_retry_busy(h, c, &q, &res)) {
        loop_finish(h, c, &res);
        loop_depend(h, c, 0);
    }
    req_free(&q);
    res_free(&res);
}

/* Serve one request from the spool exactly as an HTTP request: through a
 * socketless Conn, so parking, group commit and fan-out all apply. */
static void loop_relay_request(Hub *h, RelayReq *r) {
    Conn *c = xrealloc(NULL, sizeof *c);
    *c = (Conn){ .fd = -1, .poll_slot = -1, .heap_idx = -1,
                 .state = CONN_READ, .active_ms = h->now_ms, .relay = r };
    loop_link(h, c);
    loop_touch(h, c);
    loop_relay_serve(h, c);
}

/* Take the requests the relay thread has queued. */
static void loop_intake(Hub *h) {
    if (!h->relay) return;
    for (RelayReq *r = relay_intake(h->relay), *next; r; r = next) {
        next = r->next;
        loop_relay_request(h, r);
    }
}

/* Handle what c has read: its complete requests, then its hang-up. A
 * relayed conn without an answer yet is one whose lock retry is due. */
static void loop_serve(Hub *h, Conn *c) {
    if (c->state != CONN_READ) return;
    if (c->relay) {
        if (!c->close_after && !c->retry_ms) loop_relay_serve(h, c);
        return;
    }
    loop_process(h, c);
    if (c->peer_closed && c->state == CONN_READ) {
        if (c->out_off < c->out.len) c->close_after = 1;
        else conn_kill(h, c);
    }
}

/* Act on n ready events: read and serve conns, write what they may send,
 * accept, drain the wake pipe and take relayed requests. Returns 1 if the
 * -wal watch fired. */
static int loop_events(Hub *h, int n) {
    int wal_touched = 0;
    for (int i = 0; i < n; i++) {
        PollEv *e = &h->poller->ev[i];
        if (e->tag == &loop_tag_wake) {
            char tmp[64];
            while (read(h->wake_rd, tmp, sizeof tmp) > 0) {}
            loop_intake(h);   /* the nudge may be the relay's */
        } else if (e->tag == &loop_tag_listen) {
            loop_accept(h);
        } else if (e->tag == &loop_tag_wal) {
            char tmp[4096];
            while (read(h->wal_watch, tmp, sizeof tmp) > 0) {}
            wal_touched = 1;
        } else {
            Conn *c = e->tag;
            if (c->state == CONN_DEAD) continue;
            loop_touch(h, c);
            if (e->revents & (POLLIN | POLLHUP | POLLERR)) {
                if (loop_read(h, c)) continue;
            }
            if (e->revents & POLLOUT) loop_write(h, c);
            if (c->state != CONN_DEAD) loop_serve(h, c);
        }
    }
    return wal_touched;
}

/* One turn of the loop. Returns 0 to go on, 1 when the hub should stop. */
static int loop_turn(Hub *h) {
    h->store.busy_until_ms = 0;   /* a new turn's budget for lock waits */
    for (int i = 0; i < h->n_touched; i++)   /* left over from the last turn */
        loop_serve(h, h->touched[i]);
    int n = poller_wait(h->poller, loop_timeout_ms(h));
    h->now_ms = clock_ms();
    if (n < 0) {
        loop_poll_failed(h);
        n = 0;
    }
    int wal_touched = loop_events(h, n);
    loop_intake(h);
    /* Requests that arrived while this turn's were handled join its commit
     * instead of waiting a whole commit for the next: clients answered by
     * one commit come back at about the same time, and each commit waits
     * for an fsync (group commit, PROTOCOL §10.2). */
    for (int pass = 0; pass < ARC_GATHER_PASSES && h->store.in_tx; pass++) {
        if ((n = poller_wait(h->poller, 0)) <= 0) break;
        wal_touched |= loop_events(h, n);
    }
    loop_timers(h);
    int had_batch = h->n_batch > 0;
    loop_commit(h);
    /* Foreign commits (PROTOCOL §8.2). Without inotify: one PRAGMA
     * data_version every ARC_DATA_VERSION_MS while anyone waits. With it: a
     * write to the -wal file starts a short watch, checking after
     * ARC_WAL_SETTLE_MS and then at doubling intervals for ARC_WAL_WATCH_MS,
     * because the writer's frames land (and notify us) before its commit
     * becomes visible after its fsync: a commit is seen at most about twice
     * its fsync time late, with ~10 checks per write. Idle, nothing runs. */
    if (wal_touched) {
        h->dv_until_ms = h->now_ms + ARC_WAL_WATCH_MS;
        h->dv_step_ms = ARC_WAL_SETTLE_MS;
    }
    int watching = h->wal_watch < 0 || h->now_ms < h->dv_until_ms;
    int dv_due = h->n_parked && watching && h->now_ms >= h->next_dv_ms;
    loop_fanout(h, had_batch || dv_due || wal_touched);
    if (h->wal_watch < 0) {
        if (dv_due || !h->n_parked) h->next_dv_ms = h->now_ms + ARC_DATA_VERSION_MS;
    } else if (wal_touched || dv_due) {
        h->next_dv_ms = h->now_ms + h->dv_step_ms;
        h->dv_step_ms *= 2;
    }
    hub_batch_truncate(h, 0);
    loop_settle_touched(h);
    /* Out of descriptors without a spare: leave the listener alone for a
     * moment (loop_accept_emfile), or it would report the same client as
     * readable on every wait. */
    unsigned lev = h->now_ms >= h->accept_pause_until ? POLLIN : 0;
    if (lev != h->listen_ev &&
        poller_watch(h->poller, h->listen_fd, &loop_tag_listen, &h->listen_slot, lev) == 0)
        h->listen_ev = lev;
    /* The -wal watch matters only to waiters; without any, our own commits
     * would wake the loop once more each (the queue keeps one event). */
    unsigned wev = h->n_parked ? POLLIN : 0;
    if (h->wal_watch >= 0 && wev != h->wal_ev &&
        poller_watch(h->poller, h->wal_watch, &loop_tag_wal, &h->wal_slot, wev) == 0)
        h->wal_ev = wev;
    return g_stop || h->shutdown_now;
}

/* Free the dead among the touched conns (shutdown only). */
static void loop_reap(Hub *h) {
    for (int i = 0; i < h->n_touched; i++) {
        Conn *c = h->touched[i];
        c->touched = 0;
        if (c->state == CONN_DEAD) loop_free(h, c);
    }
    h->n_touched = 0;
}

/* Stop serving: answer parked long-polls with what they have (nothing),
 * end streams, and give every client a short, bounded chance to receive
 * what is queued for it. */
static void loop_drain(Hub *h) {
    for (Conn *c = h->conns; c; c = c->next) {
        if (c->relay && c->state == CONN_READ && !c->close_after) {
            c->retry_ms = 0;   /* waiting for a lock: give up now */
            conn_respond(h, c, 503, NULL, NULL,
                         STR_LIT("{\"ok\":false,\"error\":\"storage error: "
                                 "database is locked\"}"));
        }
        if (c->state == CONN_PARKED) loop_unpark(h, c, STR_LIT("[]"));
        else if (c->state == CONN_STREAM) conn_kill(h, c);
        if (c->relay) loop_write(h, c);
        if (c->state != CONN_DEAD) c->close_after = 1;
        if (c->state != CONN_DEAD && c->out_off == c->out.len) conn_kill(h, c);
    }
    struct pollfd *pfd = NULL;
    Conn **cs = NULL;
    int64_t until = clock_ms() + 1000;
    while (h->n_conns && clock_ms() < until) {
        loop_reap(h);
        pfd = xrealloc(pfd, (size_t)(h->n_conns + 1) * sizeof *pfd);
        cs = xrealloc(cs, (size_t)(h->n_conns + 1) * sizeof *cs);
        int n = 0;
        for (Conn *c = h->conns; c; c = c->next) {
            cs[n] = c;
            pfd[n++] = (struct pollfd){ .fd = c->fd, .events = POLLOUT };
        }
        if (!n) break;
        if (poll(pfd, (nfds_t)n, 100) < 0) {
            if (errno == EINTR) continue;   /* a second SIGTERM, say */
            break;
        }
        h->now_ms = clock_ms();
        for (int i = 0; i < n; i++)
            if (pfd[i].revents) loop_write(h, cs[i]);
    }
    free(pfd);
    free(cs);
    for (Conn *c = h->conns; c; c = c->next) conn_kill(h, c);
    loop_reap(h);
}

/* ---- serve: options, the listening socket, pidfile, the hub's life ---- */

/* Match option `name` at argv[*i], as "--name value" or "--name=value".
 * Returns 1 and sets *val (advancing *i past a separate value), 0 if argv[*i]
 * is another option, or -1 when the value is missing. */
static int opt_val(int argc, char **argv, int *i, const char *name,
                   const char **val) {
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
        return 1;
    }
    if (a[n] != 0) return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "arc: %s needs a value\n", name);
        return -1;
    }
    *val = argv[++*i];
    return 1;
}

/* Parse a whole-number option value within [lo, hi]; exits 2 if invalid. */
static int64_t opt_int(const char *name, const char *v, int64_t lo, int64_t hi) {
    int64_t n;
    if (parse_int_text(str_c(v), &n) || n < lo || n > hi) {
        fprintf(stderr, "arc: %s must be a whole number from %lld to %lld\n",
                name, (long long)lo, (long long)hi);
        exit(2);
    }
    return n;
}

/* The bearer token a command uses (PROTOCOL §2.4): --token, else the first
 * line of --token-file, else $ARC_TOKEN; "" when none is set. Both flags at
 * once, an unreadable or empty file, or a token that is not 1 to
 * ARC_MAX_TOKEN visible ASCII characters is an error. Serve, the CLI and
 * any other client command resolve their token here. Returns 0 with out
 * filled and NUL-padded to its end (as token_eq() wants it), or -1 with
 * err. */
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

static const char serve_usage[] =
    "usage: arc [serve] [options]\n"
    "Run the hub in the foreground.\n"
    "  --host ADDR                 listen address (default 127.0.0.1)\n"
    "  --port N                    listen port (default 6969; 0 = any free)\n"
    "  --storage FILE              SQLite file (default arc.sqlite3)\n"
    "  --spool-dir DIR             file relay spool (default .arc-relay)\n"
    "  --token-file FILE           require this bearer token (its first line)\n"
    "                              on every request but GET /; or ARC_TOKEN\n"
    "  --token TOKEN               the same (visible in ps: prefer the others)\n"
    "  --allow-remote              allow a non-loopback --host; needs a token\n"
    "  --insecure-no-auth          ... or this, to serve the network without one\n"
    "  --allowed-host NAME         accept Host: NAME besides IP addresses and\n"
    "                              localhost (repeatable; DNS rebinding guard)\n"
    "  --quiet                     log only warnings\n"
    "  --max-body-chars N          message body limit (default 128000)\n"
    "  --max-attachment-chars N    per-attachment limit (default 256000)\n"
    "  --max-attachments N         attachments per message (default 32)\n"
    "  --presence-ttl SEC          idle session expiry (default 120, min 5)\n"
    "  --sync full|normal          full (default): a write is on disk before\n"
    "                              it is acknowledged; normal: faster, but the\n"
    "                              last commits can be lost on power failure\n"
    "connection limits (PROTOCOL.md 4.3):\n"
    "  --max-conns N               open client connections (default 16384, or\n"
    "                              the open-file limit less 64 if lower)\n"
    "  --idle-timeout-ms N         close an idle keep-alive connection, or one\n"
    "                              that stopped reading (default 60000)\n"
    "  --head-timeout-ms N         408 unless a request head is complete this\n"
    "                              long after its first byte (default 10000)\n"
    "  --body-timeout-ms N         408 unless a request body is complete this\n"
    "                              long after its head (default 30000)\n";

/* Parse the serve options into cfg. Returns 0, or exits 2 on bad usage. */
static void serve_options(int argc, char **argv, HubConfig *cfg) {
    *cfg = (HubConfig){ .host = "127.0.0.1", .port = 6969,
                        .storage = "arc.sqlite3", .spool_dir = ".arc-relay",
                        .max_body_chars = 128000, .max_attachment_chars = 256000,
                        .max_attachments = 32, .presence_ttl_s = 120,
                        .sync_full = 1, .max_conns = ARC_MAX_CONNS,
                        .idle_ms = ARC_IDLE_MS, .head_ms = ARC_HEAD_MS,
                        .body_ms = ARC_BODY_MS };
    const char *token = NULL, *token_file = NULL;
    char err[ARC_ERRLEN];
    for (int i = 0; i < argc; i++) {
        const char *v = NULL, *a = argv[i];
        int rc;
        if (!strcmp(a, "--allow-remote")) cfg->allow_remote = 1;
        else if (!strcmp(a, "--insecure-no-auth")) cfg->insecure_no_auth = 1;
        else if (!strcmp(a, "--quiet")) g_quiet = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(serve_usage, stdout);
            exit(0);
        } else if ((rc = opt_val(argc, argv, &i, "--host", &v))) {
            if (rc < 0) exit(2);
            cfg->host = v;
        } else if ((rc = opt_val(argc, argv, &i, "--port", &v))) {
            if (rc < 0) exit(2);
            cfg->port = (int)opt_int("--port", v, 0, 65535);
        } else if ((rc = opt_val(argc, argv, &i, "--storage", &v))) {
            if (rc < 0) exit(2);
            cfg->storage = v;
        } else if ((rc = opt_val(argc, argv, &i, "--spool-dir", &v))) {
            if (rc < 0) exit(2);
            cfg->spool_dir = v;
        } else if ((rc = opt_val(argc, argv, &i, "--max-body-chars", &v))) {
            if (rc < 0) exit(2);
            cfg->max_body_chars = opt_int("--max-body-chars", v, 1, 1 << 30);
        } else if ((rc = opt_val(argc, argv, &i, "--max-attachment-chars", &v))) {
            if (rc < 0) exit(2);
            cfg->max_attachment_chars =
                opt_int("--max-attachment-chars", v, 1, 1 << 30);
        } else if ((rc = opt_val(argc, argv, &i, "--max-attachments", &v))) {
            if (rc < 0) exit(2);
            cfg->max_attachments = opt_int("--max-attachments", v, 0, 1000);
        } else if ((rc = opt_val(argc, argv, &i, "--presence-ttl", &v))) {
            if (rc < 0) exit(2);
            cfg->presence_ttl_s = opt_int("--presence-ttl", v, 5, 86400 * 365);
        } else if ((rc = opt_val(argc, argv, &i, "--sync", &v))) {
            if (rc < 0) exit(2);
            if (strcmp(v, "full") && strcmp(v, "normal")) {
                fputs("arc: --sync must be full or normal\n", stderr);
                exit(2);
            }
            cfg->sync_full = !strcmp(v, "full");
        } else if ((rc = opt_val(argc, argv, &i, "--token", &v))) {
            if (rc < 0) exit(2);
            token = v;
        } else if ((rc = opt_val(argc, argv, &i, "--token-file", &v))) {
            if (rc < 0) exit(2);
            token_file = v;
        } else if ((rc = opt_val(argc, argv, &i, "--allowed-host", &v))) {
            if (rc < 0) exit(2);
            if (!*v || strpbrk(v, ":/[] \t") ||
                cfg->n_allowed_hosts == ARC_MAX_ALLOWED_HOSTS) {
                fprintf(stderr, "arc: --allowed-host takes a host name without a "
                        "port, at most %d times\n", ARC_MAX_ALLOWED_HOSTS);
                exit(2);
            }
            cfg->allowed_hosts[cfg->n_allowed_hosts++] = v;
        } else if ((rc = opt_val(argc, argv, &i, "--max-conns", &v))) {
            if (rc < 0) exit(2);
            cfg->max_conns = (int)opt_int("--max-conns", v, 1, 1000000);
        } else if ((rc = opt_val(argc, argv, &i, "--idle-timeout-ms", &v))) {
            if (rc < 0) exit(2);
            cfg->idle_ms = opt_int("--idle-timeout-ms", v, 100, 86400000);
        } else if ((rc = opt_val(argc, argv, &i, "--head-timeout-ms", &v))) {
            if (rc < 0) exit(2);
            cfg->head_ms = opt_int("--head-timeout-ms", v, 100, 86400000);
        } else if ((rc = opt_val(argc, argv, &i, "--body-timeout-ms", &v))) {
            if (rc < 0) exit(2);
            cfg->body_ms = opt_int("--body-timeout-ms", v, 100, 86400000);
        } else {
            fprintf(stderr, "arc: unknown option %s (see arc --help)\n", a);
            exit(2);
        }
    }
    if (opt_token(token, token_file, cfg->token, err)) {
        fprintf(stderr, "arc: %s\n", err);
        exit(2);
    }
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

static int cmd_serve(int argc, char **argv) {
    Hub *h = xrealloc(NULL, sizeof *h);
    memset(h, 0, sizeof *h);
    char err[ARC_ERRLEN];
    serve_options(argc, argv, &h->cfg);
    HubConfig *cfg = &h->cfg;
    if (!cfg->allow_remote && !hub_is_loopback(cfg->host)) {
        fprintf(stderr, "arc: refusing to listen on %s without --allow-remote "
                "(network mode; it needs a token too, see arc --help)\n", cfg->host);
        free(h);
        return 2;
    }
    if (!hub_is_loopback(cfg->host) && !cfg->token[0] && !cfg->insecure_no_auth) {
        fprintf(stderr,
                "arc: refusing to listen on %s without a token: everyone who can\n"
                "arc: reach it could read and write every agent's messages.\n"
                "arc: Set one with --token-file FILE or ARC_TOKEN (clients then\n"
                "arc: need the same), or add --insecure-no-auth to run without.\n",
                cfg->host);
        free(h);
        return 2;
    }
    h->token_n = strlen(cfg->token);   /* cfg->token is NUL-padded (opt_token) */
    if (cfg->token[0]) {
        if (strlen(cfg->token) < 16)
            log_warn("the token is only %zu characters long; use a long random "
                     "one (openssl rand -hex 32)", strlen(cfg->token));
    }
    h->max_request_bytes = cfg->max_body_chars +
                           cfg->max_attachment_chars * cfg->max_attachments + 65536;
    /* Every connection is a descriptor: take all the kernel allows. */
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
    if (store_open(&h->store, cfg->storage, ARC_BUSY_MS, cfg->sync_full, err)) {
        fprintf(stderr, "arc: %s\n", err);
        free(h);
        return 1;
    }
    h->store.busy_budget_ms = ARC_BUSY_TURN_MS;   /* see loop_retry_busy */
    int port = 0;
    h->listen_fd = serve_listen(cfg->host, cfg->port, &port, err);
    if (h->listen_fd < 0) {
        fprintf(stderr, "arc: %s\n", err);
        store_close(&h->store);
        free(h);
        return 1;
    }
    h->wal_watch = serve_watch_wal(&h->store);
    int pipefd[2];
    if (pipe(pipefd)) die("pipe: %s", strerror(errno));
    h->wake_rd = pipefd[0];
    h->wake_wr = g_wake_wr = pipefd[1];
    fd_nonblock(h->wake_rd);
    fd_nonblock(h->wake_wr);
    struct sigaction sa = { .sa_handler = loop_on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    char url[300];
    serve_url(cfg->host, port, url, sizeof url);
    int pid_dfd = fs_open_parent(h->store.path, err);   /* the pidfile's */
    if (pid_dfd < 0) log_warn("no pidfile: %s", err);
    else serve_pidfile_write(pid_dfd, port, url);
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
    h->relay = relay_start(cfg->spool_dir, h->wake_wr, NULL, NULL, NULL, err);
    if (!h->relay) {
        fprintf(stderr, "arc: %s\n", err);
        if (pid_dfd >= 0) serve_pidfile_remove(pid_dfd), close(pid_dfd);
        store_close(&h->store);
        free(h);
        return 1;
    }
    log_info("listening on %s (storage=%s, journal_mode=%s, instance=%s, "
             "relay=%s)", url, h->store.path, h->store.journal_mode,
             h->store.instance_id, h->relay->root);
    loop_open(h);
    hub_now(h->started_at);
    h->now_ms = clock_ms();
    h->next_prune_ms = h->now_ms + loop_tick_ms(h);
    h->next_touch_ms = h->now_ms + loop_tick_ms(h);
    h->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    while (!loop_turn(h)) {}
    log_info("shutting down");
    /* No request file is claimed from here on; one more turn serves those
     * already claimed, so none is left unanswered. */
    relay_halt(h->relay);
    loop_turn(h);
    loop_drain(h);
    relay_stop(h->relay);
    close(h->listen_fd);
    store_close(&h->store);
    if (pid_dfd >= 0) serve_pidfile_remove(pid_dfd), close(pid_dfd);
    close(h->wake_rd);
    close(h->wake_wr);
    if (h->wal_watch >= 0) close(h->wal_watch);
    if (h->spare_fd >= 0) close(h->spare_fd);
    g_wake_wr = -1;
    hub_batch_truncate(h, 0);
    free(h->batch);
    free(h->heap);
    loop_close(h);
    free(h->held);
    free(h);
    return 0;
}

/* ==== cli: HTTP client, lifecycle commands, post/poll/whoami ============= */

/* The client side of arc, shared by the lifecycle commands and the agent
 * commands (and, later, MCP and the smoke agents). One blocking HTTP/1.1
 * client with keep-alive and a deadline on every call: a one-shot command
 * has nothing else to do while it waits. Exit codes: 0 ok, 1 the hub said
 * no (its error is printed), 2 usage or no hub to talk to. */

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

static int cli_url(Client *c, const char *url, char err[ARC_ERRLEN]) {
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

static void cli_close(Client *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    buf_reset(&c->in);
}

static void cli_free(Client *c) {
    cli_close(c);
    buf_free(&c->in);
}

/* Wait until fd is ready for `events`. -1 when the deadline passes or
 * cancel_fd (if not -1) becomes readable first. */
static int cli_wait(int fd, short events, int cancel_fd, int64_t deadline_ms) {
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

static int cli_connect(Client *c, int64_t deadline_ms, char err[ARC_ERRLEN]) {
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
        if (!ok && errno == EINPROGRESS && cli_wait(fd, POLLOUT, c->cancel_fd, deadline_ms) == 0) {
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
static int cli_relay_call(Client *c, const char *method, const char *path,
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
            Buf data = { 0 };
            char chunk[16384];
            ssize_t n;
            while ((n = read(fd, chunk, sizeof chunk)) != 0) {
                if (n > 0) buf_add(&data, chunk, (size_t)n);
                else if (errno != EINTR) break;
            }
            close(fd);
            Json j = { 0 };
            uint32_t st, b;
            if (json_parse(&j, buf_cstr(&data), data.len) == 0 &&
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

/* Send one request and read its response. Returns 0 with the status and
 * body, or -1 with err (no response). Reuses the kept-alive connection and,
 * if the hub had closed it meanwhile, retries once on a fresh one. */
static int cli_call(Client *c, const char *method, const char *path, Str body,
                    int64_t timeout_ms, int *status, Buf *out,
                    char err[ARC_ERRLEN]) {
    if (c->relay_dir)
        return cli_relay_call(c, method, path, body, timeout_ms, status, out, err);
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
        if (!reused && cli_connect(c, deadline, err)) break;
        buf_reset(&c->in);
        size_t off = 0;
        while (off < req.len) {
            ssize_t w = write(c->fd, req.p + off, req.len - off);
            if (w > 0) { off += (size_t)w; continue; }
            if (w < 0 && errno == EINTR) continue;
            if (w < 0 && errno == EAGAIN && cli_wait(c->fd, POLLOUT, c->cancel_fd, deadline) == 0)
                continue;
            break;
        }
        if (off < req.len) {
            snprintf(err, ARC_ERRLEN, "cannot send to %s: %s", c->base, strerror(errno));
            cli_close(c);
            if (reused) continue;
            break;
        }
        /* Read the head, then Content-Length bytes (or to EOF). */
        long head = -1, clen = -1;
        int keep = 1, eof = 0;
        for (;;) {
            if (head < 0) {
                char *e = c->in.p ? strstr(c->in.p, "\r\n\r\n") : NULL;
                if (e) {
                    head = (long)(e - c->in.p) + 4;
                    int st = 0;
                    if (sscanf(c->in.p, "HTTP/1.%*d %d", &st) != 1) break;
                    *status = st;
                    for (char *l = strstr(c->in.p, "\r\n"); l && l < e; l = strstr(l + 2, "\r\n")) {
                        Str line = { l + 2, (size_t)(strcspn(l + 2, "\r")) };
                        if (line.n > 15 && str_ieq((Str){ line.p, 15 }, "content-length:"))
                            clen = strtol(line.p + 15, NULL, 10);
                        if (line.n > 11 && str_ieq((Str){ line.p, 11 }, "connection:") &&
                            http_has_token((Str){ line.p + 11, line.n - 11 }, "close"))
                            keep = 0;
                    }
                }
            }
            if (head >= 0 && clen >= 0 && (long)c->in.len >= head + clen) break;
            if (eof) break;
            if (cli_wait(c->fd, POLLIN, c->cancel_fd, deadline)) {
                if (clock_ms() < deadline)
                    snprintf(err, ARC_ERRLEN, "cancelled");
                else
                    snprintf(err, ARC_ERRLEN, "no answer from %s within %lld ms",
                             c->base, (long long)timeout_ms);
                break;
            }
            if (buf_reserve(&c->in, 65536)) break;
            ssize_t n = read(c->fd, c->in.p + c->in.len, 65536);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (n <= 0) {
                eof = 1;
                continue;
            }
            c->in.len += (size_t)n;
            c->in.p[c->in.len] = 0;
        }
        if (head >= 0 && (clen < 0 ? eof : (long)c->in.len >= head + clen)) {
            size_t blen = clen >= 0 ? (size_t)clen : c->in.len - (size_t)head;
            buf_reset(out);
            buf_add(out, c->in.p + head, blen);
            rc = 0;
            if (!keep || clen < 0) cli_close(c);
            else buf_consume(&c->in, (size_t)head + blen);
        } else {
            if (head < 0 && eof && c->in.len == 0 && reused) {
                cli_close(c);   /* the hub closed an idle connection: retry */
                continue;
            }
            if (!err[0] || eof)
                snprintf(err, ARC_ERRLEN, "connection to %s closed mid-response",
                         c->base);
            cli_close(c);
            break;
        }
    }
    buf_free(&req);
    return rc;
}

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
static int cli_probe(const char *url, const char *token, int pid,
                     int64_t timeout_ms) {
    Client c;
    char err[ARC_ERRLEN] = "";
    Buf body = { 0 };
    int status = 0, ok = 0;
    if (cli_url(&c, url, err) == 0) {
        c.token = token;
        if (cli_call(&c, "GET", "/v1/hub-info", (Str){ NULL, 0 }, timeout_ms,
                     &status, &body, err) == 0) {
            if (status == 200 && cli_probe_match(&body, pid)) ok = PROBE_OK;
            else if (status == 401 && strstr(buf_cstr(&body), "\"ok\":false"))
                ok = PROBE_REFUSED;
        }
    }
    cli_free(&c);
    buf_free(&body);
    return ok;
}

/* The message for a hub that refused our token. */
static void cli_refused_msg(const char *url, const char *token, char *out, size_t n) {
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
 * alive; the hub then has to confirm the pid over HTTP (cli_probe). A pid
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
static int cli_read_pidfile(const char *dir, HubRef *ref, char err[ARC_ERRLEN]) {
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
static void cli_storage_dir(const char *storage, char *out, size_t n) {
    char cwd[PATH_MAX] = ".";
    if (!getcwd(cwd, sizeof cwd)) snprintf(cwd, sizeof cwd, ".");
    const char *slash = strrchr(storage, '/');
    if (storage[0] == '/') snprintf(out, n, "%.*s", slash == storage ? 1 : (int)(slash - storage), storage);
    else if (slash) snprintf(out, n, "%s/%.*s", cwd, (int)(slash - storage), storage);
    else snprintf(out, n, "%s", cwd);
    char real[PATH_MAX];
    if (realpath(out, real)) snprintf(out, n, "%s", real);
}

/* Look for a live hub's pidfile in the current directory and its parents,
 * then beside the storage file and its parents (as the reference does). A
 * pidfile whose process is gone, or whose URL does not answer as an arc hub,
 * is stale and skipped. Returns 1 with ref filled, or 0. */
static int cli_discover(const char *storage, const char *token, HubRef *ref) {
    char roots[2][PATH_MAX];
    if (!getcwd(roots[0], sizeof roots[0])) snprintf(roots[0], PATH_MAX, "/");
    cli_storage_dir(storage, roots[1], sizeof roots[1]);
    for (int r = 0; r < 2; r++) {
        char dir[PATH_MAX];
        memcpy(dir, roots[r], sizeof dir);
        for (;;) {
            char why[ARC_ERRLEN];
            int probe;
            if (cli_read_pidfile(dir, ref, why) == 0 &&
                (probe = cli_probe(ref->url, token, ref->pid, 2000))) {
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

/* ---- lifecycle: ensure, stop, reset, status ---- */

typedef struct {
    HubConfig hub;          /* what a started hub gets */
    double timeout_s;       /* ensure: how long to wait for it */
    const char *argv0;
} LifeOpts;

static const char *g_argv0 = "arc";

static const char life_usage[] =
    "usage: arc %s [options]\n"
    "  --host ADDR --port N --storage FILE   which hub (defaults 127.0.0.1,\n"
    "                                        6969, arc.sqlite3)\n"
    "  --token-file FILE | --token TOKEN     the hub's token (or ARC_TOKEN)\n"
    "%s";

/* Parse lifecycle options; serve options pass through to the hub. */
static void life_options(const char *cmd, const char *extra_help, int argc,
                         char **argv, LifeOpts *o) {
    char **pass = xrealloc(NULL, (size_t)(argc + 1) * sizeof *pass);
    int n = 0;
    o->timeout_s = 60;
    for (int i = 0; i < argc; i++) {
        const char *v;
        int rc;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf(life_usage, cmd, extra_help);
            exit(0);
        }
        if ((rc = opt_val(argc, argv, &i, "--timeout", &v))) {
            if (rc < 0) exit(2);
            char *end;
            o->timeout_s = strtod(v, &end);
            if (*end || !(o->timeout_s > 0) || o->timeout_s > 86400) {
                fputs("arc: --timeout must be a number of seconds > 0\n", stderr);
                exit(2);
            }
            continue;
        }
        pass[n++] = argv[i];
    }
    serve_options(n, pass, &o->hub);
    free(pass);
}

static void life_base_url(const HubConfig *cfg, char *out, size_t n) {
    serve_url(cfg->host, cfg->port, out, n);
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
 * the user's choosing, or ours). Returns the descriptor or -1 with err. */
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
 * appended to `log`. Returns the child's pid, or -1 with why filled. */
static pid_t life_spawn(const LifeOpts *o, const char *log, char why[ARC_ERRLEN]) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) exe[n] = 0;
    else if (!realpath(o->argv0, exe)) snprintf(exe, sizeof exe, "%s", o->argv0);
    char port[16], mb[24], ma[24], mn[24], ttl[24], mc[24], idle[24], hd[24],
        bd[24];
    snprintf(port, sizeof port, "%d", o->hub.port);
    snprintf(mc, sizeof mc, "%d", o->hub.max_conns);
    snprintf(idle, sizeof idle, "%lld", (long long)o->hub.idle_ms);
    snprintf(hd, sizeof hd, "%lld", (long long)o->hub.head_ms);
    snprintf(bd, sizeof bd, "%lld", (long long)o->hub.body_ms);
    snprintf(mb, sizeof mb, "%lld", (long long)o->hub.max_body_chars);
    snprintf(ma, sizeof ma, "%lld", (long long)o->hub.max_attachment_chars);
    snprintf(mn, sizeof mn, "%lld", (long long)o->hub.max_attachments);
    snprintf(ttl, sizeof ttl, "%lld", (long long)o->hub.presence_ttl_s);
    const char *args[26 + 2 * ARC_MAX_ALLOWED_HOSTS] = {
                             exe, "serve", "--host", o->hub.host, "--port", port,
                             "--storage", o->hub.storage, "--spool-dir",
                             o->hub.spool_dir, "--max-body-chars", mb,
                             "--max-attachment-chars", ma, "--max-attachments",
                             mn, "--presence-ttl", ttl, "--sync",
                             o->hub.sync_full ? "full" : "normal",
                             "--max-conns", mc, "--idle-timeout-ms", idle,
                             "--head-timeout-ms", hd, "--body-timeout-ms", bd };
    int k = 28;
    if (o->hub.allow_remote) args[k++] = "--allow-remote";
    if (o->hub.insecure_no_auth) args[k++] = "--insecure-no-auth";
    for (int i = 0; i < o->hub.n_allowed_hosts; i++) {
        args[k++] = "--allowed-host";
        args[k++] = o->hub.allowed_hosts[i];
    }
    if (g_quiet) args[k++] = "--quiet";
    args[k] = NULL;
    int out = life_open_log(log, why);
    if (out < 0) return -1;
    pid_t pid = fork();
    if (pid < 0) snprintf(why, ARC_ERRLEN, "fork: %s", strerror(errno));
    if (pid != 0) {
        close(out);
        return pid;
    }
    setsid();
    /* The token goes by environment, not argv, where every local user
     * could read it (ps). The caller is single-threaded here. */
    if (o->hub.token[0]) setenv("ARC_TOKEN", o->hub.token, 1);
    int in = open("/dev/null", O_RDONLY);
    if (in >= 0) dup2(in, 0);
    dup2(out, 1), dup2(out, 2);
    execv(exe, (char *const *)args);
    fprintf(stderr, "arc: cannot run %s: %s\n", exe, strerror(errno));
    _exit(127);
}

/* Serialise concurrent `arc ensure`s for one storage file with a POSIX
 * record lock on .arc.lock beside it, so two at once start one hub.
 * Returns the locked descriptor; -1 when the directory does not exist yet
 * (nothing to serialise: ensure makes it); -2 with err when .arc.lock is
 * not a file of ours (fs_openat): a planted one is not used. */
static int life_lock(const char *storage, char err[ARC_ERRLEN]) {
    char dir[PATH_MAX];
    cli_storage_dir(storage, dir, sizeof dir);
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
static int life_find(const LifeOpts *o, HubRef *ref) {
    if (cli_discover(o->hub.storage, o->hub.token, ref)) return 1;
    memset(ref, 0, sizeof *ref);
    life_base_url(&o->hub, ref->url, sizeof ref->url);
    int probe = cli_probe(ref->url, o->hub.token, 0, 2000);
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
 * none could be started. why says what went wrong. Writes nothing to
 * stdout, so the MCP server can use it too. */
static int life_ensure(const LifeOpts *o, char url[320], int *started,
                       char why[600], char log[PATH_MAX + 16]) {
    char base[320];
    life_base_url(&o->hub, base, sizeof base);
    HubRef ref;
    int lock = -1;
    *started = 0;
    log[0] = 0;
    snprintf(url, 320, "%s", base);
    for (int pass = 0; pass < 2; pass++) {
        /* Whoever held the lock before our second look may have just
         * started it. */
        if (life_find(o, &ref)) {
            snprintf(url, 320, "%s", ref.url);
            if (ref.refused) cli_refused_msg(ref.url, o->hub.token, why, 600);
            if (lock >= 0) close(lock);
            return ref.refused ? 1 : 0;
        }
        if (!pass && (lock = life_lock(o->hub.storage, why)) == -2) {
            char e[ARC_ERRLEN];
            snprintf(e, sizeof e, "refusing %.400s", why);
            snprintf(why, 600, "%s", e);
            return -1;
        }
    }
    char dir[PATH_MAX];
    cli_storage_dir(o->hub.storage, dir, sizeof dir);
    mkdir(dir, 0700);
    snprintf(log, PATH_MAX + 16, "%s/arc.log", dir);
    char e[ARC_ERRLEN];
    pid_t pid = life_spawn(o, log, e);
    if (pid < 0) {
        snprintf(why, 600, "cannot start a hub: %s", e);
        if (lock >= 0) close(lock);
        return -1;
    }
    *started = 1;
    int64_t deadline = clock_ms() + (int64_t)(o->timeout_s * 1000);
    int rc = -1;
    snprintf(why, 600, "timeout");
    while (clock_ms() < deadline) {
        if (cli_probe(base, o->hub.token, 0, 1000) == PROBE_OK) {
            rc = 0;
            break;
        }
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            snprintf(why, 600, "hub exited with status %d before answering",
                     WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
            break;
        }
        struct timespec ts = { 0, 10 * 1000000 };
        nanosleep(&ts, NULL);
    }
    if (lock >= 0) close(lock);
    return rc;
}

static int cmd_ensure(int argc, char **argv) {
    LifeOpts o = { .argv0 = g_argv0 };
    life_options("ensure", "  --timeout SEC                         wait this long for a new hub (default 60)\n"
                 "  and every 'arc serve' option, passed to a started hub\n"
                 "Start a hub in the background unless one is already running.\n",
                 argc, argv, &o);
    char url[320], why[600], log[PATH_MAX + 16];
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

static int cmd_stop(int argc, char **argv) {
    LifeOpts o = { .argv0 = g_argv0 };
    life_options("stop", "Stop the running hub (SIGTERM) and wait for it to exit.\n",
                 argc, argv, &o);
    HubRef ref;
    int found = life_find(&o, &ref);
    char err[300];
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

static int cmd_reset(int argc, char **argv) {
    LifeOpts o = { .argv0 = g_argv0 };
    life_options("reset", "Stop the hub if it runs, then delete the storage file\n"
                 "with its -wal and -shm files. Everything stored is lost.\n",
                 argc, argv, &o);
    HubRef ref;
    int found = life_find(&o, &ref);
    char err[300];
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
        char p[PATH_MAX + 8];
        snprintf(p, sizeof p, "%s%s", o.hub.storage, suffix[i]);
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

static int cmd_status(int argc, char **argv) {
    LifeOpts o = { .argv0 = g_argv0 };
    life_options("status", "Print whether a hub runs for this storage/port, with its\n"
                 "url, pid, uptime and counts. Exit 0 if running, 1 if not.\n",
                 argc, argv, &o);
    HubRef ref;
    int found = life_find(&o, &ref);
    if (!found) {
        Buf u = { 0 };
        life_base_url(&o.hub, ref.url, sizeof ref.url);
        json_cstr(&u, ref.url);
        printf("{\n  \"running\": false,\n  \"url\": %s\n}\n", u.p);
        buf_free(&u);
        return 1;
    }
    Client c;
    char err[ARC_ERRLEN] = "";
    Buf info = { 0 }, agents = { 0 }, out = { 0 };
    int st = 0;
    cli_url(&c, ref.url, err);
    c.token = o.hub.token;
    if (!ref.refused) {
        cli_call(&c, "GET", "/v1/hub-info", (Str){ NULL, 0 }, 5000, &st, &info, err);
        cli_call(&c, "GET", "/v1/agents", (Str){ NULL, 0 }, 5000, &st, &agents, err);
    }
    cli_free(&c);
    Json ji = { 0 }, ja = { 0 };
    buf_adds(&out, "{\"running\":true,\"url\":");
    json_cstr(&out, ref.url);
    if (ref.pid) buf_addf(&out, ",\"pid\":%d", ref.pid);
    if (ref.refused) {   /* running, but we may not ask it anything */
        cli_refused_msg(ref.url, o.hub.token, err, sizeof err);
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
    double timeout_s;
    int64_t since_id;
    int include_self;
    char token[ARC_MAX_TOKEN + 1];   /* the hub's token, "" = none */
} AgentOpts;

static const char agent_usage[] =
    "usage:\n"
    "  arc post   --agent ID [--channel general] [--to AGENT] [--kind chat]\n"
    "             [--thread-id T] [--base-url URL] BODY   (BODY - reads stdin)\n"
    "  arc poll   --agent ID [--channel C] [--thread-id T] [--timeout 30]\n"
    "             [--since-id N] [--include-self] [--base-url URL]\n"
    "  arc whoami --agent ID [--base-url URL]\n"
    "Every command also takes --relay-dir DIR (or ARC_RELAY_DIR) to talk\n"
    "through a hub's file spool instead of HTTP, for sandboxed agents, and\n"
    "--token-file FILE or --token TOKEN (or ARC_TOKEN) for a hub that\n"
    "requires a token (not needed through the relay).\n"
    "Each registers the agent (replacing its session) and then acts as it.\n"
    "poll prints one JSON message per line; by default it skips the agent's\n"
    "own messages. Defaults: ARC_AGENT for --agent, ARC_URL for --base-url\n"
    "(else http://127.0.0.1:6969). Exit: 0 ok, 1 the hub refused, 2 usage or\n"
    "no hub.\n";

static void agent_options(const char *cmd, int argc, char **argv, AgentOpts *o) {
    *o = (AgentOpts){ .agent = getenv("ARC_AGENT"), .base_url = getenv("ARC_URL"),
                      .relay_dir = getenv("ARC_RELAY_DIR"),
                      .channel = NULL, .kind = "chat", .timeout_s = 30 };
    if (!o->base_url || !*o->base_url) o->base_url = "http://127.0.0.1:6969";
    int is_post = !strcmp(cmd, "post"), is_poll = !strcmp(cmd, "poll");
    const char *token = NULL, *token_file = NULL;
    for (int i = 0; i < argc; i++) {
        const char *v;
        int rc = 0;
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(agent_usage, stdout);
            exit(0);
        }
        if ((rc = opt_val(argc, argv, &i, "--agent", &v))) o->agent = v;
        else if ((rc = opt_val(argc, argv, &i, "--base-url", &v))) o->base_url = v;
        else if ((rc = opt_val(argc, argv, &i, "--relay-dir", &v))) o->relay_dir = v;
        else if ((rc = opt_val(argc, argv, &i, "--token", &v))) token = v;
        else if ((rc = opt_val(argc, argv, &i, "--token-file", &v))) token_file = v;
        else if ((is_post || is_poll) && (rc = opt_val(argc, argv, &i, "--channel", &v))) o->channel = v;
        else if ((is_post || is_poll) && (rc = opt_val(argc, argv, &i, "--thread-id", &v))) o->thread = v;
        else if (is_post && (rc = opt_val(argc, argv, &i, "--to", &v))) o->to = v;
        else if (is_post && (rc = opt_val(argc, argv, &i, "--kind", &v))) o->kind = v;
        else if (is_poll && (rc = opt_val(argc, argv, &i, "--timeout", &v))) {
            char *end;
            o->timeout_s = strtod(v, &end);
            if (*end || !(o->timeout_s >= 0) || o->timeout_s > 60) {
                fputs("arc: --timeout must be 0 to 60 seconds\n", stderr);
                exit(2);
            }
        } else if (is_poll && (rc = opt_val(argc, argv, &i, "--since-id", &v)))
            o->since_id = opt_int("--since-id", v, 0, ARC_MAX_ID);
        else if (is_poll && !strcmp(a, "--include-self")) o->include_self = 1;
        else if (is_post && !o->body && (a[0] != '-' || !strcmp(a, "-"))) o->body = a;
        else {
            fprintf(stderr, "arc %s: unexpected argument %s (see arc %s --help)\n",
                    cmd, a, cmd);
            exit(2);
        }
        if (rc < 0) exit(2);
    }
    if (o->relay_dir && !*o->relay_dir) o->relay_dir = NULL;
    char err[ARC_ERRLEN];
    if (opt_token(token, token_file, o->token, err)) {
        fprintf(stderr, "arc %s: %s\n", cmd, err);
        exit(2);
    }
    if (!o->agent || !*o->agent) {
        fprintf(stderr, "arc %s: --agent is required (or set ARC_AGENT)\n", cmd);
        exit(2);
    }
    if (is_post && !o->body) {
        fprintf(stderr, "arc post: BODY is required (use - to read stdin)\n");
        exit(2);
    }
}

/* Call the hub; on success leave the response body in out and return 0.
 * Otherwise print why and return the exit code (1 hub error, 2 no hub). */
static int agent_call(Client *c, const char *method, const char *path, Str body,
                      int64_t timeout_ms, Buf *out) {
    char err[ARC_ERRLEN] = "";
    int status = 0;
    if (cli_call(c, method, path, body, timeout_ms, &status, out, err)) {
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

/* Register (replace) and return the client ready for more calls. */
static int agent_start(const char *cmd, int argc, char **argv, AgentOpts *o,
                       Client *c) {
    agent_options(cmd, argc, argv, o);
    char err[ARC_ERRLEN];
    if (cli_url(c, o->base_url, err)) {
        fprintf(stderr, "arc: %s\n", err);
        return 2;
    }
    c->relay_dir = o->relay_dir;
    c->agent = o->agent;
    c->token = o->token;
    Buf body = { 0 }, out = { 0 };
    buf_adds(&body, "{\"agent_id\":");
    json_cstr(&body, o->agent);
    buf_adds(&body, ",\"replace\":true}");
    int rc = agent_call(c, "POST", "/v1/sessions", buf_str(&body), 15000, &out);
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
    buf_adds(&body, ",\"body\":");
    json_strs(&body, buf_str(&text));
    buf_addc(&body, '}');
    rc = agent_call(&c, "POST", "/v1/messages", buf_str(&body), 15000, &out);
    if (!rc) agent_print_result(&out, 0);
done:
    buf_free(&text), buf_free(&body), buf_free(&out);
    cli_free(&c);
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
    if (!o.include_self) buf_adds(&path, "&exclude_self=1");
    if (o.channel) agent_qparam(&path, "channel", o.channel);
    if (o.thread) agent_qparam(&path, "thread_id", o.thread);
    rc = agent_call(&c, "GET", path.p, (Str){ NULL, 0 },
                    (int64_t)(o.timeout_s * 1000) + 15000, &out);
    if (!rc) agent_print_result(&out, 1);
done:
    buf_free(&path), buf_free(&out);
    cli_free(&c);
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
    cli_free(&c);
    return rc;
}


/* ---- arc relay: the standalone spool relay, and relay-gc ---- */

#define ARC_RELAY_MAX_FORWARDS 256   /* concurrent forwards of `arc relay` */

/* One forward: its own thread and HTTP connection, so a long-poll waits
 * without holding up anyone else's request. */
static void *relay_forward_main(void *arg) {
    RelayReq *r = arg;
    Relay *rl = (Relay *)r->next;   /* smuggled in `next` until queued */
    r->next = NULL;
    Client c;
    char err[ARC_ERRLEN] = "";
    int status = 0;
    Buf out = { 0 };
    Json parsed = { 0 };   /* only to check that the answer is JSON */
    /* A long-poll may take 60 s; allow for it plus margin. */
    int bad_url = cli_url(&c, rl->forward_url, err);
    c.token = rl->forward_token;
    if (bad_url ||
        cli_call(&c, r->method, r->path, r->body ? str_c(r->body) : (Str){ NULL, 0 },
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
    cli_free(&c);
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
    r->next = (RelayReq *)(void *)rl;
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

static const char relay_usage[] =
    "usage: arc relay [--base-url http://127.0.0.1:6969] [--spool-dir .arc-relay]\n"
    "                 [--token-file FILE | --token TOKEN]\n"
    "Serve a file spool by forwarding each request to a hub over HTTP, each\n"
    "in its own thread (at most 256 at once). Only needed when the hub runs\n"
    "elsewhere: a hub already serves its own --spool-dir. Stop with SIGTERM.\n"
    "A hub that requires a token gets this one (or ARC_TOKEN) with every\n"
    "forwarded request: whoever can write the spool acts with it.\n"
    "(--poll-interval-sec and --request-timeout-sec are accepted for\n"
    "compatibility and ignored: arc watches the spool with inotify.)\n";

static int cmd_relay(int argc, char **argv) {
    const char *url = getenv("ARC_URL"), *spool = ".arc-relay";
    const char *token_flag = NULL, *token_file = NULL;
    char token[ARC_MAX_TOKEN + 1];
    if (!url || !*url) url = "http://127.0.0.1:6969";
    for (int i = 0; i < argc; i++) {
        const char *v;
        int rc;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(relay_usage, stdout);
            return 0;
        }
        if ((rc = opt_val(argc, argv, &i, "--base-url", &v))) url = v;
        else if ((rc = opt_val(argc, argv, &i, "--spool-dir", &v))) spool = v;
        else if ((rc = opt_val(argc, argv, &i, "--token", &v))) token_flag = v;
        else if ((rc = opt_val(argc, argv, &i, "--token-file", &v))) token_file = v;
        else if ((rc = opt_val(argc, argv, &i, "--poll-interval-sec", &v)) ||
                 (rc = opt_val(argc, argv, &i, "--request-timeout-sec", &v))) {}
        else {
            fprintf(stderr, "arc relay: unknown option %s\n", argv[i]);
            return 2;
        }
        if (rc < 0) return 2;
    }
    char err[ARC_ERRLEN];
    Client probe;
    if (cli_url(&probe, url, err) || opt_token(token_flag, token_file, token, err)) {
        fprintf(stderr, "arc: %s\n", err);
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

/* Remove files older than `cutoff` (epoch seconds) from each agent
 * directory under spool/sub whose names end in one of the suffixes. */
static int relay_gc_dir(const char *spool, const char *sub, const char *const *suffixes,
                        time_t cutoff) {
    Buf root = { 0 };
    buf_addf(&root, "%s/%s", spool, sub);
    int removed = 0;
    DIR *d = opendir(root.p);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (relay_dot_name(e->d_name) || !relay_is_dir(root.p, e->d_name)) continue;
        Buf dir = { 0 };
        buf_addf(&dir, "%s/%s", root.p, e->d_name);
        DIR *ad = opendir(dir.p);
        struct dirent *f;
        while (ad && (f = readdir(ad))) {
            size_t n = strlen(f->d_name);
            int match = 0;
            for (int i = 0; suffixes[i]; i++) {
                size_t k = strlen(suffixes[i]);
                match |= n > k && !strcmp(f->d_name + n - k, suffixes[i]);
            }
            if (!match) continue;
            Buf p = { 0 };
            struct stat sb;
            buf_addf(&p, "%s/%s", dir.p, f->d_name);
            if (lstat(p.p, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_mtime < cutoff &&
                unlink(p.p) == 0)
                removed++;
            buf_free(&p);
        }
        if (ad) closedir(ad);
        buf_free(&dir);
    }
    if (d) closedir(d);
    buf_free(&root);
    return removed;
}

static int cmd_relay_gc(int argc, char **argv) {
    const char *spool = ".arc-relay";
    int64_t age = -1;
    for (int i = 0; i < argc; i++) {
        const char *v;
        int rc;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            puts("usage: arc relay-gc --older-than DURATION [--spool-dir .arc-relay]\n"
                 "Delete claimed requests (.work), answers and stray temporary\n"
                 "files older than DURATION (e.g. 3600, 30m, 12h, 7d). Requests\n"
                 "not yet claimed (.json under requests/) are never deleted.");
            return 0;
        }
        if ((rc = opt_val(argc, argv, &i, "--spool-dir", &v))) spool = v;
        else if ((rc = opt_val(argc, argv, &i, "--older-than", &v))) {
            if ((age = parse_duration(v)) < 0) {
                fprintf(stderr, "arc relay-gc: bad duration %s (try 30m, 12h, 7d)\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "arc relay-gc: unknown option %s\n", argv[i]);
            return 2;
        }
        if (rc < 0) return 2;
    }
    if (age < 0) {
        fputs("arc relay-gc: --older-than is required\n", stderr);
        return 2;
    }
    time_t cutoff = time(NULL) - (time_t)age;
    static const char *const req_sfx[] = { ".work", ".tmp", NULL };
    static const char *const resp_sfx[] = { ".json", ".tmp", NULL };
    int n = relay_gc_dir(spool, "requests", req_sfx, cutoff) +
            relay_gc_dir(spool, "responses", resp_sfx, cutoff);
    printf("{\n  \"removed\": %d\n}\n", n);
    return 0;
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

/* One hub call; a hub error or transport failure fails the role. Returns
 * 0 and the parsed envelope in *j (its source is `out`), or -1. */
static int smoke_call(Smoke *s, const char *action, const char *method,
                      const char *path, Str body, int64_t timeout_ms, Buf *out,
                      Json *j) {
    int status = 0;
    char err[ARC_ERRLEN] = "";
    if (cli_call(&s->client, method, path, body, timeout_ms, &status, out, err)) {
        snprintf(s->err, sizeof s->err, "%s failed: connection error: %.400s", action, err);
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
        int rc = cli_call(&s->client, "GET", path.p, (Str){ NULL, 0 },
                          wait_s * 1000 + 15000, &status, &out, err);
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
            (void)cli_call(&s->client, "GET", path.p, (Str){ NULL, 0 },
                           s->poll_ms + 15000, &status, &out, err);
        } else if (rc) {
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

static const char smoke_agent_usage[] =
    "usage: arc smoke-agent --role smoke-a|smoke-b|smoke-c --transport http|relay\n"
    "       [--base-url URL] [--relay-dir .arc-relay] [--channel smoke-room]\n"
    "       [--thread-id smoke-relay-001] [--claim-key smoke-claim-001]\n"
    "       [--timeout-sec 120] [--poll-interval-sec 1]\n"
    "       [--token-file FILE | --token TOKEN]   (default: ARC_TOKEN)\n"
    "Run one deterministic smoke role (the reference's). Exit 0 on success;\n"
    "1 with 'Smoke test failed: ...' otherwise.\n";

/* Parse the options shared by smoke-agent and smoke into s. */
static int smoke_options(int argc, char **argv, Smoke *s, const char **transport,
                         double *timeout_s, const char *usage, HubConfig *hub) {
    const char *url = getenv("ARC_URL");
    s->channel = "smoke-room", s->thread = "smoke-relay-001";
    s->claim_key = "smoke-claim-001";
    s->poll_ms = 1000;
    const char *relay = ".arc-relay", *token = NULL, *token_file = NULL;
    char **pass = xrealloc(NULL, (size_t)(argc + 1) * sizeof *pass);
    int n = 0;
    for (int i = 0; i < argc; i++) {
        const char *v;
        int rc;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(usage, stdout);
            exit(0);
        }
        if ((rc = opt_val(argc, argv, &i, "--role", &v))) s->role = v;
        else if ((rc = opt_val(argc, argv, &i, "--transport", &v))) *transport = v;
        else if ((rc = opt_val(argc, argv, &i, "--base-url", &v))) url = v;
        else if ((rc = opt_val(argc, argv, &i, "--relay-dir", &v))) relay = v;
        else if ((rc = opt_val(argc, argv, &i, "--channel", &v))) s->channel = v;
        else if ((rc = opt_val(argc, argv, &i, "--thread-id", &v))) s->thread = v;
        else if ((rc = opt_val(argc, argv, &i, "--claim-key", &v))) s->claim_key = v;
        else if ((rc = opt_val(argc, argv, &i, "--timeout-sec", &v))) {
            char *end;
            *timeout_s = strtod(v, &end);
            if (*end || !(*timeout_s > 0) || *timeout_s > 86400) {
                fputs("arc: --timeout-sec must be a positive number\n", stderr);
                exit(2);
            }
        } else if ((rc = opt_val(argc, argv, &i, "--poll-interval-sec", &v))) {
            char *end;
            double p = strtod(v, &end);
            if (*end || !(p > 0) || p > 3600) {
                fputs("arc: --poll-interval-sec must be a positive number\n", stderr);
                exit(2);
            }
            s->poll_ms = (int64_t)(p * 1000);
        } else if (hub) {
            pass[n++] = argv[i];   /* `arc smoke`: hub options, --token too */
            continue;
        } else if ((rc = opt_val(argc, argv, &i, "--token", &v))) {
            token = v;
        } else if ((rc = opt_val(argc, argv, &i, "--token-file", &v))) {
            token_file = v;
        } else {
            fprintf(stderr, "arc: unknown option %s\n", argv[i]);
            exit(2);
        }
        if (rc < 0) exit(2);
    }
    if (hub) {
        serve_options(n, pass, hub);
        if (!url || !*url) url = NULL;
        relay = hub->spool_dir;
    }
    free(pass);
    char err[ARC_ERRLEN], base[320];
    if (!hub && opt_token(token, token_file, s->token, err)) {
        fprintf(stderr, "arc: %s\n", err);
        exit(2);
    }
    if (!url || !*url) {
        if (hub) serve_url(hub->host, hub->port, base, sizeof base);
        else snprintf(base, sizeof base, "http://127.0.0.1:6969");
        url = base;
    }
    if (cli_url(&s->client, url, err)) {
        fprintf(stderr, "arc: %s\n", err);
        exit(2);
    }
    s->client.relay_dir = relay;
    s->client.token = hub ? hub->token : s->token;
    return 0;
}

static int cmd_smoke_agent(int argc, char **argv) {
    Smoke s = { 0 };
    const char *transport = NULL;
    double timeout_s = 120;
    smoke_options(argc, argv, &s, &transport, &timeout_s, smoke_agent_usage, NULL);
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
    cli_free(&s.client);
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

static const char smoke_usage[] =
    "usage: arc smoke [--timeout-sec 60] [hub options: --port, --storage, ...]\n"
    "Check an installation end to end: start a hub if none runs (as arc\n"
    "ensure would), then run the three smoke roles at once -- smoke-a over\n"
    "HTTP, smoke-b through the hub's file relay, smoke-c over HTTP -- on a\n"
    "fresh thread. Prints one line per step and 'smoke: ok in N ms', or\n"
    "the failing step. Exit 0 ok, 1 failed. A hub that requires a token\n"
    "gets it from --token-file, --token or ARC_TOKEN, as with arc ensure.\n";

static int cmd_smoke(int argc, char **argv) {
    Smoke roles[3] = { { .role = "smoke-a" }, { .role = "smoke-b" },
                       { .role = "smoke-c" } };
    const char *transport = NULL;
    double timeout_s = 60;
    LifeOpts o = { .argv0 = g_argv0, .timeout_s = 30 };
    smoke_options(argc, argv, &roles[0], &transport, &timeout_s, smoke_usage, &o.hub);
    /* A fresh thread and claim per run, so an earlier run's messages
     * cannot satisfy this one. */
    char thread[64], claim[80];
    unsigned char r[6];
    rand_bytes(r, sizeof r);
    snprintf(thread, sizeof thread, "smoke-%02x%02x%02x%02x%02x%02x", r[0], r[1],
             r[2], r[3], r[4], r[5]);
    snprintf(claim, sizeof claim, "%s-claim", thread);
    if (!cli_probe(roles[0].client.base, o.hub.token, 0, 2000)) {
        printf("smoke: no hub at %s, starting one\n", roles[0].client.base);
        fflush(stdout);
        char dir[PATH_MAX], log[PATH_MAX + 16];
        cli_storage_dir(o.hub.storage, dir, sizeof dir);
        snprintf(log, sizeof log, "%s/arc.log", dir);
        g_quiet = 1;
        char e[ARC_ERRLEN];
        pid_t pid = life_spawn(&o, log, e);
        if (pid < 0) fprintf(stderr, "smoke: cannot start a hub: %s\n", e);
        int64_t until = clock_ms() + 10000;
        while (pid > 0 && clock_ms() < until &&
               !cli_probe(roles[0].client.base, o.hub.token, 0, 500)) {
            struct timespec ts = { 0, 10 * 1000000 };
            nanosleep(&ts, NULL);
        }
    }
    g_smoke_t0 = clock_ms();
    const char *spool = roles[0].client.relay_dir;
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
        s->deadline_ms = g_smoke_t0 + (int64_t)(timeout_s * 1000);
        s->step = smoke_print_step;
    }
    for (int i = 0; i < 3; i++)
        if (pthread_create(&th[i], NULL, smoke_thread, &roles[i])) die("pthread_create");
    int failed = 0;
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        failed |= roles[i].err[0] != 0;
        buf_free(&roles[i].msgs);
        cli_free(&roles[i].client);
    }
    if (failed) {
        printf("smoke: FAILED\n");
        return 1;
    }
    printf("smoke: ok in %lld ms\n", (long long)(clock_ms() - g_smoke_t0));
    return 0;
}

/* ==== mcp: the MCP stdio server (`arc mcp --agent NAME`) ================= */

/* An MCP client (Claude Code, Codex, Cursor, Gemini CLI, ...) runs
 * `arc mcp --agent NAME` and speaks JSON-RPC 2.0 over its stdin and stdout.
 * The server is one agent: it registers a session, keeps it present with a
 * heartbeat for as long as the process lives (so claims and locks survive
 * a model that thinks for minutes), and turns tool calls into hub requests
 * through the shared Client, over HTTP or the file relay.
 *
 * Threads: the main thread reads stdin, frames and parses messages and
 * answers the quick methods itself; every tools/call runs on a thread of
 * its own with its own hub connection, so a poll waiting 50 s never holds
 * up a ping, a tools/list or another call, and notifications/cancelled can
 * interrupt it (Client.cancel_fd); the heartbeat thread touches the
 * session. Every message goes to stdout as one line under g_mcp.out_mu;
 * nothing else is ever written there. Logs go to stderr.
 *
 * Both protocol eras are served from one dispatcher. The handshake era
 * (2024-11-05 .. 2025-11-25) negotiates a version with `initialize`; the
 * stateless era (2026-07-28) sends its version and capabilities in every
 * request's _meta, asks `server/discover` instead, and wants `resultType`
 * on results. Shapes that differ by version (annotations, outputSchema and
 * structuredContent, batches) follow the version of each request. */

#define MCP_MAX_MSG (4 << 20)        /* one JSON-RPC message on stdin */
#define MCP_MAX_CALLS 64             /* tool calls in flight at once */
#define MCP_MAX_WAIT_S 50            /* waiting tools; clients cut at 60 s */
#define MCP_SLICE_MS 5000            /* long-poll slice between progress notes */
#define MCP_RETRY_MS 2000            /* re-register attempts while the hub is away */
#define MCP_HUB_MS 15000             /* one ordinary hub request */

#define MCP_V_STATELESS "2026-07-28"
#define MCP_V_LEGACY "2025-11-25"    /* newest version with a handshake */
static const char *const mcp_versions[] = {
    MCP_V_STATELESS, MCP_V_LEGACY, "2025-06-18", "2025-03-26", "2024-11-05"
};

/* JSON-RPC and MCP error codes. */
enum {
    MCP_PARSE = -32700, MCP_INVALID = -32600, MCP_NO_METHOD = -32601,
    MCP_BAD_PARAMS = -32602, MCP_INTERNAL = -32603,
    MCP_BAD_VERSION = -32022          /* UnsupportedProtocolVersionError */
};

typedef struct McpBatch McpBatch;
typedef struct McpCall McpCall;
typedef struct McpCursor McpCursor;

/* The answers of one JSON-RPC batch, written as one array once the last of
 * them (tool calls finish on their own threads) is in. */
struct McpBatch {
    Buf out;
    int pending;      /* answers still to come, +1 while being dispatched */
};

/* A tools/call in flight. */
struct McpCall {
    McpCall *next;
    char *msg;            /* the request text (owned; parsed again by the worker) */
    Buf id;               /* its id, as JSON */
    Buf progress;         /* _meta.progressToken as JSON, empty if none */
    char version[16];     /* protocol version the answer is shaped for */
    int cancel[2];        /* pipe: written to cancel the call's waits */
    int cancelled;        /* no answer is sent (notifications/cancelled) */
    McpBatch *batch;
};

/* Where a filtered poll (channel and/or thread) has read up to. Polls with
 * different filters keep separate cursors: the reference moves one cursor
 * for all, so a poll of one thread silently skips the other channels'
 * messages up to that point. */
struct McpCursor {
    McpCursor *next;
    char *key;            /* channel \x1f thread */
    int64_t since;
};

typedef struct {
    /* Set once at start. */
    const char *agent, *display_name, *caps, *url, *relay_dir;
    char token[ARC_MAX_TOKEN + 1];   /* the hub's bearer token, "" = none */
    /* Guarded by mu. */
    pthread_mutex_t mu;
    pthread_cond_t cond;          /* a call ended; closing; wake the heartbeat */
    char session_id[128];
    int registered;               /* our session was active at last look */
    int warned_replaced;          /* logged that another process took the name */
    int64_t cursor;               /* since_id of unfiltered polls */
    McpCursor *cursors;
    char version[16];             /* from initialize; "" before */
    McpCall *calls;
    int ncalls;
    int closing;                  /* stdin reached EOF */
    int64_t beat_ms;              /* heartbeat interval */
    pthread_mutex_t reg_mu;       /* one registration at a time */
    pthread_mutex_t out_mu;       /* stdout */
} Mcp;

static Mcp g_mcp = { .mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER,
                     .reg_mu = PTHREAD_MUTEX_INITIALIZER,
                     .out_mu = PTHREAD_MUTEX_INITIALIZER, .beat_ms = 30000 };

ARC_PRINTF(1, 2) static void mcp_log(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("arc mcp: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- output: one message per line ---- */

static void mcp_write_line(Buf *b) {
    buf_addc(b, '\n');
    pthread_mutex_lock(&g_mcp.out_mu);
    for (size_t off = 0; off < b->len;) {
        ssize_t w = write(1, b->p + off, b->len - off);
        if (w > 0) off += (size_t)w;
        else if (w < 0 && errno == EINTR) continue;
        else if (w < 0 && errno == EAGAIN) {
            struct pollfd p = { .fd = 1, .events = POLLOUT };
            poll(&p, 1, 1000);
        } else break;   /* the client went away; EOF on stdin follows */
    }
    pthread_mutex_unlock(&g_mcp.out_mu);
}

/* Send one answer, or add it to its batch (and send the batch when it is
 * the last one). `msg` is consumed. */
static void mcp_emit(McpBatch *bt, Buf *msg) {
    if (!bt) {
        if (msg->len) mcp_write_line(msg);   /* a cancelled call says nothing */
        buf_free(msg);
        return;
    }
    pthread_mutex_lock(&g_mcp.mu);
    if (msg->len) {
        buf_addc(&bt->out, bt->out.len ? ',' : '[');
        buf_addstr(&bt->out, buf_str(msg));
    }
    int last = --bt->pending == 0;
    pthread_mutex_unlock(&g_mcp.mu);
    buf_free(msg);
    if (!last) return;
    if (bt->out.len) {
        buf_addc(&bt->out, ']');
        mcp_write_line(&bt->out);
    }
    buf_free(&bt->out);
    free(bt);
}

static void mcp_error(McpBatch *bt, Str id, int code, const char *msg,
                      const char *data_json) {
    Buf b = { 0 };
    /* An unknown id is left out rather than null: the SDKs reject null. */
    buf_adds(&b, "{\"jsonrpc\":\"2.0\",");
    if (id.n) buf_adds(&b, "\"id\":"), buf_addstr(&b, id), buf_addc(&b, ',');
    buf_addf(&b, "\"error\":{\"code\":%d,\"message\":", code);
    json_cstr(&b, msg);
    if (data_json) buf_adds(&b, ",\"data\":"), buf_adds(&b, data_json);
    buf_adds(&b, "}}");
    mcp_emit(bt, &b);
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

static void mcp_result_end(McpBatch *bt, Buf *b) {
    buf_adds(b, "}}");
    mcp_emit(bt, b);
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

static void mcp_notify_progress(const McpCall *call, double progress, double total,
                                const char *message) {
    if (!call->progress.len) return;
    Buf b = { 0 };
    buf_adds(&b, "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\","
                 "\"params\":{\"progressToken\":");
    buf_addstr(&b, buf_str(&call->progress));
    buf_addf(&b, ",\"progress\":%.0f,\"total\":%.0f,\"message\":", progress, total);
    json_cstr(&b, message);
    buf_adds(&b, "}}");
    mcp_write_line(&b);
    buf_free(&b);
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

/* ---- the agent's session: register, heartbeat, re-register ---- */

/* A hub connection for one thread. */
static int mcp_client(Client *c, int cancel_fd) {
    char err[ARC_ERRLEN];
    if (cli_url(c, g_mcp.url, err)) return -1;
    c->relay_dir = g_mcp.relay_dir;
    c->agent = g_mcp.agent;
    c->token = g_mcp.token;
    c->cancel_fd = cancel_fd;
    return 0;
}

/* One hub request; the envelope is parsed into *j over *out (which must
 * outlive it). Returns the HTTP status (the hub's refusals included), or -1
 * with err when no answer came. */
static int mcp_request(Client *c, const char *method, const char *path, Str body,
                       int64_t timeout_ms, Buf *out, Json *j, char err[ARC_ERRLEN]) {
    int status = 0;
    err[0] = 0;
    if (cli_call(c, method, path, body, timeout_ms, &status, out, err)) return -1;
    if (json_parse(j, buf_cstr(out), out->len) || j->t[0].type != JSON_OBJ) {
        snprintf(err, ARC_ERRLEN, "unexpected answer from the hub (HTTP %d)", status);
        return -1;
    }
    return status;
}

static void mcp_set_registered(int on) {
    pthread_mutex_lock(&g_mcp.mu);
    g_mcp.registered = on;
    pthread_mutex_unlock(&g_mcp.mu);
}

static int mcp_is_registered(void) {
    pthread_mutex_lock(&g_mcp.mu);
    int on = g_mcp.registered;
    pthread_mutex_unlock(&g_mcp.mu);
    return on;
}

/* Register (replacing any earlier session of the agent), learn the hub's
 * presence TTL, and start the unfiltered cursor at the newest message the
 * agent can see, as the reference's quickstart does: a fresh agent should
 * not replay history. On a re-registration the cursor only moves back (a
 * hub that came back on fresh storage has smaller ids). */
static int mcp_register(Client *c, char err[ARC_ERRLEN]) {
    pthread_mutex_lock(&g_mcp.reg_mu);
    if (mcp_is_registered()) {   /* another thread just did it */
        pthread_mutex_unlock(&g_mcp.reg_mu);
        return 0;
    }
    Buf body = { 0 }, out = { 0 }, path = { 0 };
    Json j = { 0 };
    int rc = -1;
    buf_adds(&body, "{\"agent_id\":");
    json_cstr(&body, g_mcp.agent);
    buf_adds(&body, ",\"replace\":true,\"display_name\":");
    json_cstr(&body, g_mcp.display_name ? g_mcp.display_name : g_mcp.agent);
    if (g_mcp.caps) {
        buf_adds(&body, ",\"capabilities\":[");
        const char *p = g_mcp.caps;
        for (int n = 0; *p; n++) {
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
    buf_addc(&body, '}');
    int st = mcp_request(c, "POST", "/v1/sessions", buf_str(&body), MCP_HUB_MS,
                         &out, &j, err);
    uint32_t r, sid;
    if (st != 201 && st != 200) {
        if (st > 0) snprintf(err, ARC_ERRLEN, "registration refused (HTTP %d)", st);
        goto done;
    }
    r = json_get(&j, 0, "result");
    sid = r ? json_get(&j, r, "session_id") : 0;
    Buf sidb = { 0 };
    if (sid) json_unescape(&j, sid, &sidb);
    json_free(&j);

    int64_t ttl = 120, latest = -1;
    if (mcp_request(c, "GET", "/v1/hub-info", (Str){ NULL, 0 }, MCP_HUB_MS, &out,
                    &j, err) == 200 && (r = json_get(&j, 0, "result"))) {
        uint32_t t = json_get(&j, r, "presence_ttl_sec");
        if (t) json_to_i64(&j, t, &ttl);
    }
    json_free(&j);
    buf_adds(&path, "/v1/bootstrap");
    agent_qparam(&path, "agent_id", g_mcp.agent);
    if (mcp_request(c, "GET", path.p, (Str){ NULL, 0 }, MCP_HUB_MS, &out, &j, err) == 200 &&
        (r = json_get(&j, 0, "result"))) {
        uint32_t t = json_get(&j, r, "latest_visible_id");
        if (t) json_to_i64(&j, t, &latest);
    }
    pthread_mutex_lock(&g_mcp.mu);
    snprintf(g_mcp.session_id, sizeof g_mcp.session_id, "%s", buf_cstr(&sidb));
    int first = !g_mcp.registered && g_mcp.cursor < 0;
    if (latest >= 0 && (first || latest < g_mcp.cursor)) {
        g_mcp.cursor = latest;
        for (McpCursor *k = g_mcp.cursors; k; k = k->next)
            if (k->since > latest) k->since = latest;
    }
    /* Touch well inside the TTL: a third of it, at most every 30 s. */
    g_mcp.beat_ms = ttl / 3 * 1000;
    if (g_mcp.beat_ms < 1000) g_mcp.beat_ms = 1000;
    if (g_mcp.beat_ms > 30000) g_mcp.beat_ms = 30000;
    g_mcp.registered = 1;
    g_mcp.warned_replaced = 0;
    pthread_mutex_unlock(&g_mcp.mu);
    buf_free(&sidb);
    rc = 0;
done:
    json_free(&j);
    buf_free(&body), buf_free(&out), buf_free(&path);
    pthread_mutex_unlock(&g_mcp.reg_mu);
    return rc;
}

/* One heartbeat: GET /v1/agents?as=AGENT touches the agent (PROTOCOL §9.1)
 * and lists who is live. If our session is gone (expired while the machine
 * slept, or the hub restarted on other storage), register again. If the
 * agent is live under another session, another process took the name:
 * say so once and do not fight over it. */
static void mcp_beat(Client *c) {
    char err[ARC_ERRLEN];
    if (!mcp_is_registered()) {
        static int said_down;   /* only this thread reads or writes it */
        if (mcp_register(c, err) == 0) {
            mcp_log("registered as %s at %s", g_mcp.agent,
                    g_mcp.relay_dir ? g_mcp.relay_dir : g_mcp.url);
            said_down = 0;
        } else if (!said_down) {
            mcp_log("cannot register at %s (%s); retrying every %d s",
                    g_mcp.relay_dir ? g_mcp.relay_dir : g_mcp.url, err, MCP_RETRY_MS / 1000);
            said_down = 1;
        }
        return;
    }
    Buf path = { 0 }, out = { 0 };
    Json j = { 0 };
    buf_adds(&path, "/v1/agents");
    agent_qparam(&path, "as", g_mcp.agent);
    int st = mcp_request(c, "GET", path.p, (Str){ NULL, 0 }, MCP_HUB_MS, &out, &j, err);
    uint32_t r = st == 200 ? json_get(&j, 0, "result") : 0;
    if (st < 0) {
        mcp_set_registered(0);   /* the next beat retries, and says so once */
    } else if (r && j.t[r].type == JSON_ARR) {
        int ours = 0, taken = 0;
        pthread_mutex_lock(&g_mcp.mu);
        uint32_t e = r + 1;
        for (uint32_t i = 0; i < j.t[r].n; i++, e = j.t[e].next) {
            uint32_t a = json_get(&j, e, "agent_id"), s = json_get(&j, e, "session_id");
            if (!a || !json_str_is(&j, a, str_c(g_mcp.agent))) continue;
            if (s && json_str_is(&j, s, str_c(g_mcp.session_id))) ours = 1;
            else taken = 1;
        }
        int warn = taken && !ours && !g_mcp.warned_replaced;
        if (warn) g_mcp.warned_replaced = 1;
        if (!ours && !taken) g_mcp.registered = 0;
        pthread_mutex_unlock(&g_mcp.mu);
        if (warn)
            mcp_log("another process registered agent %s; not taking it back",
                    g_mcp.agent);
        if (!ours && !taken && mcp_register(c, err) == 0)
            mcp_log("session had expired; registered %s again", g_mcp.agent);
    }
    json_free(&j);
    buf_free(&path), buf_free(&out);
}

static void *mcp_heartbeat_main(void *arg) {
    (void)arg;
    Client c;
    if (mcp_client(&c, -1)) return NULL;
    pthread_mutex_lock(&g_mcp.mu);
    while (!g_mcp.closing) {
        pthread_mutex_unlock(&g_mcp.mu);
        mcp_beat(&c);
        pthread_mutex_lock(&g_mcp.mu);
        int64_t wait = g_mcp.registered ? g_mcp.beat_ms : MCP_RETRY_MS;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += (time_t)(wait / 1000);
        ts.tv_nsec += (long)(wait % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        int rc = 0;
        while (!g_mcp.closing && rc != ETIMEDOUT)
            rc = pthread_cond_timedwait(&g_mcp.cond, &g_mcp.mu, &ts);
    }
    pthread_mutex_unlock(&g_mcp.mu);
    cli_free(&c);
    return NULL;
}

/* ---- tool calls: arguments, hub requests, readable results ---- */

typedef struct {
    McpCall *call;
    Json req;             /* the request, over call->msg */
    uint32_t args;        /* its params.arguments object, 0 if none */
    Client c;
    Buf out;              /* the last hub answer ... */
    Json j;               /* ... parsed */
    uint32_t res;         /* its "result" token */
    int status;           /* its HTTP status */
    Buf text;             /* the readable result (content[0].text) */
    Buf data;             /* structuredContent, an object */
    int failed;           /* isError */
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

/* One hub request for a tool: 0 with x->res (the hub said ok), else -1 and
 * the failure as the tool's error text. A hub that cannot be reached is
 * re-registered with first, so a call made just after it came back works. */
static int mcp_ready(McpCtx *x) {
    char err[ARC_ERRLEN];
    if (mcp_is_registered() || mcp_register(&x->c, err) == 0) return 0;
    return mcp_fail(x, "arc hub not reachable at %s: %s. Start it with `arc ensure`; "
                    "this server keeps retrying and re-registers when it is back.",
                    g_mcp.relay_dir ? g_mcp.relay_dir : g_mcp.url, err);
}

static int mcp_hub(McpCtx *x, const char *method, const char *path, Str body,
                   int64_t timeout_ms) {
    char err[ARC_ERRLEN];
    const char *where = g_mcp.relay_dir ? g_mcp.relay_dir : g_mcp.url;
    if (mcp_ready(x)) return -1;
    json_free(&x->j);
    x->res = 0;
    x->status = mcp_request(&x->c, method, path, body, timeout_ms, &x->out, &x->j, err);
    if (x->status < 0) {
        /* A cancel that lands while connecting fails the connect: that
         * says nothing about the hub. */
        pthread_mutex_lock(&g_mcp.mu);
        int cancelled = x->call->cancelled;
        pthread_mutex_unlock(&g_mcp.mu);
        if (cancelled || !strcmp(err, "cancelled")) return mcp_fail(x, "cancelled");
        mcp_set_registered(0);
        return mcp_fail(x, "arc hub not reachable at %s: %s", where, err);
    }
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

/* Members of a JSON object token, rendered readably for the model. */
static void mcp_text_field(Buf *t, const Json *j, uint32_t obj, const char *key) {
    uint32_t v = json_get_val(j, obj, key);
    if (v) json_as_text(t, j, v);
    else buf_adds(t, "-");
}

/* "#12 [general] alice -> bob (task_request, thread t1, reply to #10):"
 * then the body, every line indented. */
static void mcp_render_msg(Buf *t, const Json *j, uint32_t m) {
    uint32_t v;
    buf_adds(t, "#");
    mcp_text_field(t, j, m, "id");
    buf_adds(t, " [");
    mcp_text_field(t, j, m, "channel");
    buf_adds(t, "] ");
    mcp_text_field(t, j, m, "from_agent");
    if ((v = json_get_val(j, m, "to_agent"))) buf_adds(t, " -> "), json_as_text(t, j, v);
    buf_adds(t, " (");
    mcp_text_field(t, j, m, "kind");
    if ((v = json_get_val(j, m, "thread_id"))) buf_adds(t, ", thread "), json_as_text(t, j, v);
    if ((v = json_get_val(j, m, "reply_to"))) buf_adds(t, ", reply to #"), json_as_text(t, j, v);
    if ((v = json_get_val(j, m, "attachments")) && j->t[v].type == JSON_ARR && j->t[v].n)
        buf_addf(t, ", %u attachment%s", j->t[v].n, j->t[v].n == 1 ? "" : "s");
    buf_adds(t, ", ");
    mcp_text_field(t, j, m, "ts");
    buf_adds(t, "):");
    Buf body = { 0 };
    if ((v = json_get_val(j, m, "body"))) json_as_text(&body, j, v);
    for (const char *p = buf_cstr(&body); *p;) {
        size_t k = strcspn(p, "\n");
        buf_adds(t, "\n    ");
        buf_add(t, p, k);
        p += k + (p[k] == '\n');
    }
    buf_free(&body);
}

/* A list of messages (array token `arr`), newest last. */
static void mcp_render_msgs(Buf *t, const Json *j, uint32_t arr) {
    uint32_t m = arr + 1;
    for (uint32_t i = 0; i < j->t[arr].n; i++, m = j->t[m].next) {
        buf_addc(t, '\n');
        mcp_render_msg(t, j, m);
    }
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

/* Post a message built in body (an object missing its closing brace) and
 * report it. */
static int mcp_post(McpCtx *x, Buf *body, const char *what) {
    buf_addc(body, '}');
    if (mcp_hub(x, "POST", "/v1/messages", buf_str(body), MCP_HUB_MS)) return -1;
    buf_addf(&x->text, "%s:\n", what);
    mcp_render_msg(&x->text, &x->j, x->res);
    mcp_data_one(x, "message", x->res);
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

/* The cursor for a poll filter, created from the unfiltered one. */
static int64_t *mcp_cursor(const char *channel, const char *thread) {
    if (!*channel && !*thread) return &g_mcp.cursor;
    Buf key = { 0 };
    buf_addf(&key, "%s\x1f%s", channel, thread);
    McpCursor *k = g_mcp.cursors;
    while (k && strcmp(k->key, key.p)) k = k->next;
    if (!k) {
        k = xrealloc(NULL, sizeof *k);
        k->key = xstrndup(key.p, key.len);
        k->since = g_mcp.cursor;
        k->next = g_mcp.cursors;
        g_mcp.cursors = k;
    }
    buf_free(&key);
    return &k->since;
}

/* Long-poll GET /v1/events from `since` for up to wait_s seconds, in
 * slices of MCP_SLICE_MS with a progress notification between slices when
 * the client asked for them. `extra` is appended to the query (filters).
 * Returns 0 with the answer in x (possibly an empty array), or -1. */
static int mcp_wait_events(McpCtx *x, int64_t since, double wait_s, const char *extra,
                           int exclude_self, const char *what) {
    int64_t t0 = clock_ms(), deadline = t0 + (int64_t)(wait_s * 1000);
    for (;;) {
        int64_t left = deadline - clock_ms();
        if (left < 0) left = 0;
        if (x->call->progress.len && left > MCP_SLICE_MS) left = MCP_SLICE_MS;
        Buf path = { 0 };
        buf_adds(&path, "/v1/events");
        agent_qparam(&path, "agent_id", g_mcp.agent);
        buf_addf(&path, "&since_id=%lld&limit=100&timeout=%.3f%s%s", (long long)since,
                 (double)left / 1000.0, exclude_self ? "&exclude_self=1" : "", extra);
        int rc = mcp_hub(x, "GET", path.p, (Str){ NULL, 0 }, left + MCP_HUB_MS);
        buf_free(&path);
        if (rc) return -1;
        if (x->j.t[x->res].type != JSON_ARR) return mcp_fail(x, "arc hub sent no list");
        if (x->j.t[x->res].n || clock_ms() >= deadline) return 0;
        char note[128];
        snprintf(note, sizeof note, "%s (%.0f s of %.0f s)", what,
                 (double)(clock_ms() - t0) / 1000.0, wait_s);
        mcp_notify_progress(x->call, (double)(clock_ms() - t0) / 1000.0, wait_s, note);
    }
}

/* ---- the tools ---- */

/* The reference's six come first, with its names and arguments, so a
 * client configured for the reference keeps working; the rest cover what
 * else an agent does on arc. Few tools, each with a precise description:
 * every schema costs the model context on every turn. */

static int mcp_t_post(McpCtx *x) {
    Buf body = { 0 }, ch = { 0 };
    int rc = -1;
    if (mcp_arg_need(x, "channel", &ch) < 0) goto done;
    mcp_body_begin(&body, "from_agent");
    buf_adds(&body, ",\"channel\":");
    json_strs(&body, buf_str(&ch));
    if (mcp_body_str(x, &body, "body", NULL) || mcp_body_str(x, &body, "kind", NULL) ||
        mcp_body_str(x, &body, "thread_id", NULL) ||
        mcp_body_str(x, &body, "to_agent", NULL) || mcp_body_int(x, &body, "reply_to"))
        goto done;
    rc = mcp_post(x, &body, "Posted");
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
    rc = mcp_post(x, &body, "Sent");
done:
    buf_free(&body), buf_free(&to);
    return rc;
}

static int mcp_t_poll(McpCtx *x) {
    Buf ch = { 0 }, th = { 0 }, extra = { 0 };
    double wait_s;
    int rc = -1;
    if (mcp_arg_str(x, "channel", &ch) < 0 || mcp_arg_str(x, "thread_id", &th) < 0 ||
        mcp_arg_wait(x, 5, &wait_s) || mcp_ready(x))
        goto done;
    if (ch.len) buf_adds(&extra, "&channel="), cli_pct(&extra, ch.p);
    if (th.len) buf_adds(&extra, "&thread_id="), cli_pct(&extra, th.p);
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
    uint32_t n = x->j.t[x->res].n;
    if (n) buf_addf(&x->text, "%u new message%s:", n, n == 1 ? "" : "s");
    else buf_addf(&x->text, "No new messages (waited %.0f s).", wait_s);
    mcp_render_msgs(&x->text, &x->j, x->res);
    buf_adds(&x->data, "{\"messages\":");
    json_write(&x->data, &x->j, x->res);
    buf_addf(&x->data, ",\"cursor\":%lld}", (long long)next);
    rc = 0;
done:
    buf_free(&ch), buf_free(&th), buf_free(&extra);
    return rc;
}

static int mcp_t_agents(McpCtx *x) {
    if (mcp_hub(x, "GET", "/v1/agents", (Str){ NULL, 0 }, MCP_HUB_MS)) return -1;
    uint32_t arr = x->res, n = x->j.t[arr].n, e = arr + 1;
    buf_addf(&x->text, "%u live agent%s:", n, n == 1 ? "" : "s");
    for (uint32_t i = 0; i < n; i++, e = x->j.t[e].next) {
        uint32_t v;
        buf_adds(&x->text, "\n- ");
        mcp_text_field(&x->text, &x->j, e, "agent_id");
        if ((v = json_get_val(&x->j, e, "display_name"))) {
            buf_adds(&x->text, " (");
            json_as_text(&x->text, &x->j, v);
            buf_adds(&x->text, ")");
        }
        if ((v = json_get_val(&x->j, e, "capabilities")) && x->j.t[v].n) {
            buf_adds(&x->text, " capabilities ");
            json_write(&x->text, &x->j, v);
        }
        buf_adds(&x->text, ", last seen ");
        mcp_text_field(&x->text, &x->j, e, "last_seen");
    }
    mcp_data_one(x, "agents", arr);
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
    buf_adds(&x->text, "Channel ");
    mcp_text_field(&x->text, &x->j, x->res, "name");
    buf_adds(&x->text, " is ready (created by ");
    mcp_text_field(&x->text, &x->j, x->res, "created_by");
    buf_adds(&x->text, ").");
    mcp_data_one(x, "channel", x->res);
    rc = 0;
done:
    buf_free(&name), buf_free(&body);
    return rc;
}

/* Send a task_request and wait for the task_result that replies to it:
 * long-polls on our own feed (broadcasts and DMs to us), so the answer
 * arrives the moment it is posted; the reference re-queries once a second. */
static int mcp_t_rpc(McpCtx *x) {
    Buf to = { 0 }, body = { 0 }, req = { 0 };
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
    json_write(&req, &x->j, x->res);
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
                buf_addf(&x->text, "Result of task #%lld from %s:\n", (long long)req_id,
                         to.p);
                mcp_render_msg(&x->text, &x->j, m);
                buf_adds(&x->data, "{\"request\":");
                buf_addstr(&x->data, buf_str(&req));
                buf_adds(&x->data, ",\"result\":");
                json_write(&x->data, &x->j, m);
                buf_addc(&x->data, '}');
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
    buf_free(&to), buf_free(&body), buf_free(&req);
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
    uint32_t n = x->j.t[x->res].n;
    if (n) buf_addf(&x->text, "%u direct message%s to %s:", n, n == 1 ? "" : "s", g_mcp.agent);
    else buf_addf(&x->text, "No direct messages to %s.", g_mcp.agent);
    mcp_render_msgs(&x->text, &x->j, x->res);
    mcp_data_one(x, "messages", x->res);
    return 0;
}

static int mcp_t_thread(McpCtx *x) {
    Buf id = { 0 }, path = { 0 };
    int64_t limit = 50;
    int rc = -1;
    if (mcp_arg_need(x, "thread_id", &id) < 0 || mcp_arg_int(x, "limit", &limit) < 0)
        goto done;
    if (limit < 1) limit = 1;
    buf_adds(&path, "/v1/threads/");
    cli_pct(&path, id.p);
    if (mcp_hub(x, "GET", path.p, (Str){ NULL, 0 }, MCP_HUB_MS)) goto done;
    uint32_t th = json_get(&x->j, x->res, "thread"), msgs = json_get(&x->j, x->res, "messages");
    buf_addf(&x->text, "Thread %s: status ", id.p);
    if (th) {
        mcp_text_field(&x->text, &x->j, th, "status");
        buf_adds(&x->text, ", channel ");
        mcp_text_field(&x->text, &x->j, th, "channel");
        buf_adds(&x->text, ", open tasks ");
        mcp_text_field(&x->text, &x->j, th, "open_task_count");
        buf_adds(&x->text, ", active claims ");
        mcp_text_field(&x->text, &x->j, th, "active_claim_count");
        buf_adds(&x->text, ", active locks ");
        mcp_text_field(&x->text, &x->j, th, "active_lock_count");
    }
    if (msgs && x->j.t[msgs].type == JSON_ARR) {
        uint32_t n = x->j.t[msgs].n, m = msgs + 1;
        buf_addf(&x->text, ".\n%u message%s", n, n == 1 ? "" : "s");
        if (n > (uint32_t)limit) buf_addf(&x->text, " (the last %lld shown)", (long long)limit);
        buf_adds(&x->text, ":");
        for (uint32_t i = 0; i < n; i++, m = x->j.t[m].next) {
            if (n - i > (uint32_t)limit) continue;
            buf_addc(&x->text, '\n');
            mcp_render_msg(&x->text, &x->j, m);
        }
    }
    buf_reset(&x->data);
    json_write(&x->data, &x->j, x->res);
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
    const char *paths[3], *verbs[3];   /* acquire, refresh, release */
    const char *what, *key, *holder;   /* "Claim", its key and owner fields */
    const char *data;                  /* structuredContent member */
    int claim;                         /* claims name their owner differently
                                        * and take task fields on acquire */
} McpLease;

static const McpLease mcp_claims = {
    { "/v1/claims", "/v1/claims/refresh", "/v1/claims/release" },
    { "acquired", "refreshed", "released" },
    "Claim", "claim_key", "owner_agent_id", "claim", 1
};
static const McpLease mcp_locks = {
    { "/v1/locks", "/v1/locks/refresh", "/v1/locks/release" },
    { "locked", "refreshed", "released" },
    "Lock on", "file_path", "agent_id", "lock", 0
};

/* Report the answer: {"acquired": bool, "<data>": row}. A denial is not an
 * error: the row says who holds it and until when. */
static void mcp_lease_result(McpCtx *x, const McpLease *l, int act) {
    uint32_t acq = json_get(&x->j, 0, "acquired");   /* in the envelope */
    int granted = !acq || x->j.t[acq].type == JSON_TRUE;
    buf_addf(&x->text, "%s ", l->what);
    mcp_text_field(&x->text, &x->j, x->res, l->key);
    if (!granted) {
        buf_adds(&x->text, " is held by ");
        mcp_text_field(&x->text, &x->j, x->res, l->holder);
        buf_adds(&x->text, " until ");
        mcp_text_field(&x->text, &x->j, x->res, "expires_at");
        buf_adds(&x->text, "; not acquired.");
    } else {
        buf_addf(&x->text, " %s", l->verbs[act]);
        if (act != 2) {
            buf_adds(&x->text, " until ");
            mcp_text_field(&x->text, &x->j, x->res, "expires_at");
        }
        buf_addc(&x->text, '.');
    }
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
    mcp_lease_result(x, l, act);
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
        int parent = pc && x->j.t[pc].type == JSON_TRUE;
        buf_addf(&x->text, "Task #%lld is done%s.", (long long)id,
                 parent ? "; that was its parent's last open subtask, so the parent "
                          "is done too" : "");
        buf_adds(&x->data, "{\"tasks\":[");
        json_write(&x->data, &x->j, x->res);
        buf_addf(&x->data, "],\"parent_completed\":%s}", parent ? "true" : "false");
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
    uint32_t arr = x->res, n = x->j.t[arr].n, t = arr + 1;
    buf_addf(&x->text, "%u task%s:", n, n == 1 ? "" : "s");
    for (uint32_t i = 0; i < n; i++, t = x->j.t[t].next) {
        buf_adds(&x->text, "\n- #");
        mcp_text_field(&x->text, &x->j, t, "task_id");
        buf_adds(&x->text, " ");
        mcp_text_field(&x->text, &x->j, t, "status");
        buf_adds(&x->text, " in ");
        mcp_text_field(&x->text, &x->j, t, "channel");
        uint32_t f;
        if ((f = json_get_val(&x->j, t, "thread_id")))
            buf_adds(&x->text, ", thread "), json_as_text(&x->text, &x->j, f);
        if ((f = json_get_val(&x->j, t, "parent_task_id")))
            buf_adds(&x->text, ", subtask of #"), json_as_text(&x->text, &x->j, f);
    }
    mcp_data_one(x, "tasks", arr);
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
    rc = mcp_post(x, &body, "Answered");
done:
    buf_free(&body), buf_free(&to), buf_free(&ch), buf_free(&path), buf_free(&thread);
    return rc;
}

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
    uint32_t live = json_get(&x->j, x->res, "live_agents");
    buf_addf(&x->text, "You are %s (session %s) on the arc hub at %s. Messages up to #%lld "
             "have been read by arc_poll_messages; the newest you can see is #",
             g_mcp.agent, sid[0] ? sid : "-", g_mcp.relay_dir ? g_mcp.relay_dir : g_mcp.url,
             (long long)cursor);
    mcp_text_field(&x->text, &x->j, x->res, "latest_visible_id");
    buf_addf(&x->text, ". Live agents: %u.", live ? x->j.t[live].n : 0);
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

/* ---- the tool table ---- */

#define MCP_S(props, req) "{\"type\":\"object\",\"properties\":{" props "},\"required\":[" req "]}"
#define MCP_STR(name, desc) "\"" name "\":{\"type\":\"string\",\"description\":\"" desc "\"}"
#define MCP_INT(name, desc) "\"" name "\":{\"type\":\"integer\",\"description\":\"" desc "\"}"
#define MCP_OBJ(name) "\"" name "\":{\"type\":\"object\"}"
#define MCP_ARR(name) "\"" name "\":{\"type\":\"array\",\"items\":{\"type\":\"object\"}}"
#define MCP_ACTION "\"action\":{\"type\":\"string\",\"enum\":[\"acquire\",\"refresh\"," \
                   "\"release\"],\"default\":\"acquire\"}"
#define MCP_TTL MCP_INT("ttl_sec", "Lease length in seconds (default 300, at least 5).")

typedef struct {
    const char *name, *title, *description;
    const char *input, *output;        /* JSON Schemas */
    int read_only, idempotent;
    int (*run)(McpCtx *);
} McpTool;

static const McpTool mcp_tools[] = {
    { "arc_post_message", "Post a message",
      "Post a message to an arc channel (or, with to_agent, a direct message). Returns the "
      "stored message with its id.",
      MCP_S(MCP_STR("channel", "Channel name, e.g. general; must exist unless to_agent is set.") ","
            MCP_STR("body", "Message text.") ","
            "\"kind\":{\"type\":\"string\",\"default\":\"chat\",\"description\":\"chat, task, "
            "task_request, task_result, artifact, notice, claim or release.\"}" ","
            MCP_STR("thread_id", "Thread to post in; any string, a new one starts a thread.") ","
            MCP_STR("to_agent", "Make it a direct message to this agent.") ","
            MCP_INT("reply_to", "Id of the message this one answers."),
            "\"channel\",\"body\""),
      MCP_S(MCP_OBJ("message"), "\"message\""), 0, 0, mcp_t_post },
    { "arc_poll_messages", "Wait for new messages",
      "Return messages you have not seen yet (broadcasts and direct messages to you, not "
      "your own), waiting up to timeout seconds for the first one. Each channel/thread "
      "filter keeps its own read position.",
      MCP_S(MCP_STR("channel", "Only this channel.") ","
            "\"timeout\":{\"type\":\"number\",\"default\":5,\"description\":\"Seconds to wait "
            "when nothing is new (0 to 50).\"}" ","
            MCP_STR("thread_id", "Only this thread."), ""),
      MCP_S(MCP_ARR("messages") "," MCP_INT("cursor", "Highest id read."), "\"messages\""),
      1, 0, mcp_t_poll },
    { "arc_dm", "Direct message",
      "Send a direct message to another agent.",
      MCP_S(MCP_STR("to_agent", "Recipient agent id.") "," MCP_STR("body", "Message text."),
            "\"to_agent\",\"body\""),
      MCP_S(MCP_OBJ("message"), "\"message\""), 0, 0, mcp_t_dm },
    { "arc_list_agents", "List live agents",
      "List the agents currently live on the hub, with their capabilities.",
      MCP_S("", ""), MCP_S(MCP_ARR("agents"), "\"agents\""), 1, 1, mcp_t_agents },
    { "arc_create_channel", "Create a channel",
      "Create a channel (nothing changes if it exists).",
      MCP_S(MCP_STR("name", "Channel name."), "\"name\""),
      MCP_S(MCP_OBJ("channel"), "\"channel\""), 0, 1, mcp_t_channel },
    { "arc_rpc_call", "Ask another agent and wait",
      "Send a task_request to another agent and wait for its task_result (answered with "
      "arc_task_result on their side).",
      MCP_S(MCP_STR("to_agent", "Agent to ask.") "," MCP_STR("body", "The request.") ","
            "\"timeout\":{\"type\":\"number\",\"default\":30,\"description\":\"Seconds to "
            "wait for the answer (0 to 50).\"}",
            "\"to_agent\",\"body\""),
      MCP_S(MCP_OBJ("request") "," MCP_OBJ("result"), "\"request\",\"result\""),
      0, 0, mcp_t_rpc },
    { "arc_inbox", "Read direct messages",
      "Direct messages sent to you, read or not: the newest ones, or those after since_id.",
      MCP_S(MCP_INT("since_id", "Only messages with a larger id.") ","
            MCP_INT("limit", "At most this many (default 20, up to 500)."), ""),
      MCP_S(MCP_ARR("messages"), "\"messages\""), 1, 1, mcp_t_inbox },
    { "arc_read_thread", "Read a thread",
      "A thread's status, open tasks, claims and locks, and its messages.",
      MCP_S(MCP_STR("thread_id", "The thread.") ","
            MCP_INT("limit", "Show at most this many of the latest messages (default 50)."),
            "\"thread_id\""),
      MCP_S(MCP_OBJ("thread") "," MCP_ARR("messages"), "\"thread\""), 1, 1, mcp_t_thread },
    { "arc_claim", "Claim work",
      "Claim a piece of work so no one else takes it (acquire), extend your claim (refresh) "
      "or give it back (release). A claim held by someone else is reported, not taken.",
      MCP_S(MCP_STR("claim_key", "What you claim, e.g. a task key; default task-<task_message_id>.") ","
            MCP_ACTION "," MCP_INT("task_message_id", "The task message being claimed.") ","
            MCP_STR("thread_id", "Thread the work belongs to.") "," MCP_TTL, ""),
      MCP_S("\"acquired\":{\"type\":\"boolean\"}," MCP_OBJ("claim"), "\"acquired\",\"claim\""),
      0, 1, mcp_t_claim },
    { "arc_lock", "Lock a file",
      "Lock a file path before editing it (acquire), extend the lock (refresh) or unlock "
      "it (release). A lock held by someone else is reported, not taken.",
      MCP_S(MCP_STR("file_path", "The path, as the team names it.") "," MCP_ACTION ","
            MCP_TTL, "\"file_path\""),
      MCP_S("\"acquired\":{\"type\":\"boolean\"}," MCP_OBJ("lock"), "\"acquired\",\"lock\""),
      0, 1, mcp_t_lock },
    { "arc_tasks", "List or complete tasks",
      "List tasks (open ones unless status says done), or mark one done with "
      "complete_task_id.",
      MCP_S("\"status\":{\"type\":\"string\",\"enum\":[\"open\",\"done\"],\"default\":\"open\"}"
            "," MCP_STR("channel", "Only this channel.") ","
            MCP_STR("thread_id", "Only this thread.") ","
            MCP_INT("complete_task_id", "Mark this task done instead of listing."), ""),
      MCP_S(MCP_ARR("tasks") ",\"parent_completed\":{\"type\":\"boolean\"}", "\"tasks\""),
      0, 1, mcp_t_tasks },
    { "arc_task_result", "Answer a task request",
      "Answer a task_request (e.g. from arc_rpc_call) with a task_result; this completes "
      "the task and wakes the asker.",
      MCP_S(MCP_INT("task_id", "Id of the task_request message.") ","
            MCP_STR("body", "The answer.") ","
            MCP_STR("to_agent", "Who to send it to; default: whoever asked you directly.") ","
            MCP_STR("channel", "Channel; default that of the request."),
            "\"task_id\",\"body\""),
      MCP_S(MCP_OBJ("message"), "\"message\""), 0, 0, mcp_t_result },
    { "arc_whoami", "Who am I",
      "Your agent id and session, the hub, and how far you have read.",
      MCP_S("", ""),
      MCP_S(MCP_STR("agent_id", "") "," MCP_STR("session_id", "") "," MCP_STR("hub", "") ","
            MCP_INT("cursor", "") "," MCP_OBJ("bootstrap"), "\"agent_id\""),
      1, 1, mcp_t_whoami },
};

static const char mcp_instructions[] =
    "arc connects you with the other coding agents working on this project. You are "
    "registered as one agent and stay present while this server runs. Check for news with "
    "arc_poll_messages (it waits briefly when nothing is new), talk with arc_post_message "
    "and arc_dm, ask another agent and wait for the answer with arc_rpc_call, and answer "
    "requests sent to you with arc_task_result. Before working on a shared task, claim it "
    "with arc_claim; before editing a file others may edit, take arc_lock; release both "
    "when done.";

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
        if (mcp_has(version, "2025-03-26"))
            buf_addf(b, ",\"annotations\":{\"title\":\"%s\",\"readOnlyHint\":%s,"
                     "\"destructiveHint\":false,\"idempotentHint\":%s,"
                     "\"openWorldHint\":false}", t->title,
                     t->read_only ? "true" : "false", t->idempotent ? "true" : "false");
        buf_addc(b, '}');
    }
    buf_addc(b, ']');
}

/* ---- calls in flight ---- */

static void mcp_call_free(McpCall *call) {
    free(call->msg);
    buf_free(&call->id);
    buf_free(&call->progress);
    close(call->cancel[0]);
    close(call->cancel[1]);
    free(call);
}

/* Answer a finished call (unless it was cancelled) and forget it. */
static void mcp_call_done(McpCall *call, McpCtx *x) {
    Buf b = { 0 };
    pthread_mutex_lock(&g_mcp.mu);
    int cancelled = call->cancelled;
    pthread_mutex_unlock(&g_mcp.mu);
    if (!cancelled) {
        mcp_result_begin(&b, buf_str(&call->id), call->version);
        mcp_member(&b, "content");
        buf_adds(&b, "[{\"type\":\"text\",\"text\":");
        json_strs(&b, buf_str(&x->text));
        buf_adds(&b, "}]");
        if (x->failed) {
            mcp_member(&b, "isError");
            buf_adds(&b, "true");
        } else if (x->data.len && mcp_has(call->version, "2025-06-18")) {
            mcp_member(&b, "structuredContent");
            buf_addstr(&b, buf_str(&x->data));
        }
        buf_adds(&b, "}}");
    }
    mcp_emit(call->batch, &b);
    pthread_mutex_lock(&g_mcp.mu);
    McpCall **pp = &g_mcp.calls;
    while (*pp != call) pp = &(*pp)->next;
    *pp = call->next;
    g_mcp.ncalls--;
    pthread_cond_broadcast(&g_mcp.cond);
    pthread_mutex_unlock(&g_mcp.mu);
    mcp_call_free(call);
}

static void *mcp_call_main(void *arg) {
    McpCall *call = arg;
    McpCtx x = { .call = call };
    /* The dispatcher checked the shape: params.name names a tool and
     * params.arguments, if present, is an object. */
    json_parse(&x.req, call->msg, strlen(call->msg));
    uint32_t params = json_get(&x.req, 0, "params");
    Buf name = { 0 };
    json_unescape(&x.req, json_get(&x.req, params, "name"), &name);
    x.args = json_get_val(&x.req, params, "arguments");
    const McpTool *tool = mcp_tool(buf_str(&name));
    buf_free(&name);
    if (mcp_client(&x.c, call->cancel[0]))
        mcp_fail(&x, "invalid hub URL: %s", g_mcp.url);
    else if (tool->run(&x) && !x.failed)
        mcp_fail(&x, "%s failed", tool->name);
    mcp_call_done(call, &x);
    json_free(&x.req);
    json_free(&x.j);
    cli_free(&x.c);
    buf_free(&x.out), buf_free(&x.text), buf_free(&x.data);
    return NULL;
}

/* Start a tools/call on its own thread. The request was validated. */
static void mcp_call_start(McpBatch *bt, Str id, Str msg, const Json *j, uint32_t m,
                           const char *version) {
    pthread_mutex_lock(&g_mcp.mu);
    int busy = g_mcp.ncalls >= MCP_MAX_CALLS;
    pthread_mutex_unlock(&g_mcp.mu);
    if (busy) {
        mcp_error(bt, id, MCP_INTERNAL, "too many tool calls in flight (at most "
                  "64); retry when one has finished", NULL);
        return;
    }
    McpCall *call = xrealloc(NULL, sizeof *call);
    *call = (McpCall){ .msg = xstrndup(msg.p, msg.n), .batch = bt };
    buf_addstr(&call->id, id);
    snprintf(call->version, sizeof call->version, "%s", version);
    uint32_t params = json_get(j, m, "params"), meta = json_get(j, params, "_meta");
    uint32_t tok = meta ? json_get_val(j, meta, "progressToken") : 0;
    if (tok) json_write(&call->progress, j, tok);
    if (pipe(call->cancel)) {
        call->cancel[0] = call->cancel[1] = -1;
    } else {
        fcntl(call->cancel[0], F_SETFD, FD_CLOEXEC);
        fcntl(call->cancel[1], F_SETFD, FD_CLOEXEC);
    }
    pthread_mutex_lock(&g_mcp.mu);
    call->next = g_mcp.calls;
    g_mcp.calls = call;
    g_mcp.ncalls++;
    pthread_mutex_unlock(&g_mcp.mu);
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &at, mcp_call_main, call)) {
        McpCtx x = { .call = call };
        mcp_fail(&x, "cannot start a thread for the call: %s", strerror(errno));
        mcp_call_done(call, &x);
        buf_free(&x.text);
    }
    pthread_attr_destroy(&at);
}

/* Cancel calls: the one whose id is `id`, or all of them (id.p NULL). The
 * waiting thread wakes through its pipe; no answer is sent. */
static void mcp_cancel(Str id) {
    pthread_mutex_lock(&g_mcp.mu);
    for (McpCall *c = g_mcp.calls; c; c = c->next) {
        if (id.p && !str_eq(id, buf_cstr(&c->id))) continue;
        c->cancelled = 1;
        if (c->cancel[1] >= 0 && write(c->cancel[1], "x", 1) < 0) {}
    }
    pthread_mutex_unlock(&g_mcp.mu);
}

/* ---- dispatch ---- */

/* The protocol version a request is answered in: its _meta's (stateless
 * era), else the one initialize negotiated, else the newest handshake one.
 * 1: _meta is malformed (a version that is not a string, or no client
 * capabilities object beside it); -1: a version we do not speak (its JSON
 * in bad). */
static int mcp_request_version(const Json *j, uint32_t params, char out[16], Buf *bad) {
    pthread_mutex_lock(&g_mcp.mu);
    snprintf(out, 16, "%s", g_mcp.version[0] ? g_mcp.version : MCP_V_LEGACY);
    pthread_mutex_unlock(&g_mcp.mu);
    uint32_t meta = params ? json_get(j, params, "_meta") : 0;
    uint32_t v = meta ? json_get(j, meta, "io.modelcontextprotocol/protocolVersion") : 0;
    if (!v) return 0;
    uint32_t caps = json_get(j, meta, "io.modelcontextprotocol/clientCapabilities");
    if (!caps || j->t[caps].type != JSON_OBJ) return 1;
    if (j->t[v].type != JSON_STR) return 1;
    Buf s = { 0 };
    json_unescape(j, v, &s);
    int ok = mcp_known_version(buf_cstr(&s));
    if (ok) snprintf(out, 16, "%s", s.p);
    else json_write(bad, j, v);
    buf_free(&s);
    return ok ? 0 : -1;
}

static void mcp_server_info(Buf *b, const char *version) {
    mcp_member(b, "capabilities");
    buf_adds(b, "{\"tools\":{\"listChanged\":false}}");
    mcp_member(b, "serverInfo");
    buf_adds(b, "{\"name\":\"arc\",\"version\":\"" ARC_VERSION "\"");
    if (mcp_has(version, "2025-06-18")) buf_adds(b, ",\"title\":\"arc coordination hub\"");
    buf_addc(b, '}');
    mcp_member(b, "instructions");
    json_cstr(b, mcp_instructions);
}

static void mcp_initialize(McpBatch *bt, Str id, const Json *j, uint32_t params) {
    uint32_t pv = params ? json_get(j, params, "protocolVersion") : 0;
    Buf want = { 0 };
    if (pv && j->t[pv].type == JSON_STR) json_unescape(j, pv, &want);
    /* The stateless revision has no handshake; a client asking for it in
     * initialize gets the newest version that has one. */
    const char *v = mcp_known_version(buf_cstr(&want)) && strcmp(want.p, MCP_V_STATELESS)
                        ? want.p : MCP_V_LEGACY;
    pthread_mutex_lock(&g_mcp.mu);
    snprintf(g_mcp.version, sizeof g_mcp.version, "%s", v);
    pthread_mutex_unlock(&g_mcp.mu);
    Buf b = { 0 };
    mcp_result_begin(&b, id, v);
    mcp_member(&b, "protocolVersion");
    json_cstr(&b, v);
    mcp_server_info(&b, v);
    mcp_result_end(bt, &b);
    buf_free(&want);
}

/* A JSON-RPC message (object token m of j, whose text is msg). Requests get
 * exactly one answer through bt (or directly); notifications none. */
static void mcp_dispatch(McpBatch *bt, const Json *j, uint32_t m, Str msg) {
    uint32_t idt = j->t[m].type == JSON_OBJ ? json_get(j, m, "id") : 0;
    uint32_t method = j->t[m].type == JSON_OBJ ? json_get(j, m, "method") : 0;
    int notification = j->t[m].type == JSON_OBJ && !idt;
    /* A response (to a request we never send) or junk: nothing to answer. */
    if (j->t[m].type == JSON_OBJ && !method &&
        (notification || json_get(j, m, "result") || json_get(j, m, "error")))
        return;
    if (bt && !notification) {
        pthread_mutex_lock(&g_mcp.mu);
        bt->pending++;
        pthread_mutex_unlock(&g_mcp.mu);
    }
    Buf idb = { 0 }, name = { 0 }, bad = { 0 };
    if (idt && (j->t[idt].type == JSON_STR || j->t[idt].type == JSON_NUM))
        json_write(&idb, j, idt);
    Str id = buf_str(&idb);
    uint32_t jv = j->t[m].type == JSON_OBJ ? json_get(j, m, "jsonrpc") : 0;
    uint32_t params = j->t[m].type == JSON_OBJ ? json_get(j, m, "params") : 0;
    char version[16];
    if (j->t[m].type != JSON_OBJ || !jv || !json_str_is(j, jv, str_c("2.0")) ||
        (idt && !idb.len) || !method || j->t[method].type != JSON_STR) {
        if (!notification)
            mcp_error(bt, id, MCP_INVALID, "Invalid Request: want a JSON-RPC 2.0 object "
                      "with a string method and a string or number id", NULL);
        goto done;
    }
    json_unescape(j, method, &name);
    if (params && j->t[params].type != JSON_OBJ) {
        if (!notification)
            mcp_error(bt, id, MCP_BAD_PARAMS, "Invalid params: params must be an object", NULL);
        goto done;
    }
    if (notification) {
        uint32_t rid;
        if (!strcmp(name.p, "notifications/cancelled") && params &&
            (rid = json_get(j, params, "requestId"))) {
            Buf r = { 0 };
            json_write(&r, j, rid);
            mcp_cancel(buf_str(&r));
            buf_free(&r);
        }
        goto done;   /* initialized, progress, roots/list_changed ...: nothing to do */
    }
    int vrc = mcp_request_version(j, params, version, &bad);
    if (vrc > 0) {
        mcp_error(bt, id, MCP_BAD_PARAMS, "Invalid params: _meta needs a string "
                  "io.modelcontextprotocol/protocolVersion and an "
                  "io.modelcontextprotocol/clientCapabilities object", NULL);
        goto done;
    }
    if (vrc < 0) {
        Buf data = { 0 };
        buf_adds(&data, "{\"supported\":");
        mcp_versions_json(&data);
        buf_adds(&data, ",\"requested\":");
        buf_addstr(&data, buf_str(&bad));
        buf_addc(&data, '}');
        mcp_error(bt, id, MCP_BAD_VERSION, "Unsupported protocol version", data.p);
        buf_free(&data);
        goto done;
    }
    Buf b = { 0 };
    if (!strcmp(name.p, "initialize")) {
        mcp_initialize(bt, id, j, params);
    } else if (!strcmp(name.p, "ping")) {
        mcp_result_begin(&b, id, version);
        mcp_result_end(bt, &b);
    } else if (!strcmp(name.p, "server/discover")) {
        mcp_result_begin(&b, id, MCP_V_STATELESS);
        mcp_member(&b, "supportedVersions");
        mcp_versions_json(&b);
        mcp_server_info(&b, MCP_V_STATELESS);
        mcp_cache_hint(&b, MCP_V_STATELESS);
        mcp_result_end(bt, &b);
    } else if (!strcmp(name.p, "tools/list")) {
        mcp_result_begin(&b, id, version);
        mcp_member(&b, "tools");
        mcp_tools_json(&b, version);
        mcp_cache_hint(&b, version);
        mcp_result_end(bt, &b);
    } else if (!strcmp(name.p, "tools/call")) {
        uint32_t tn = params ? json_get(j, params, "name") : 0;
        uint32_t args = params ? json_get_val(j, params, "arguments") : 0;
        Buf tname = { 0 };
        if (tn && j->t[tn].type == JSON_STR) json_unescape(j, tn, &tname);
        if (!tn || j->t[tn].type != JSON_STR)
            mcp_error(bt, id, MCP_BAD_PARAMS, "Invalid params: name (a string) is required",
                      NULL);
        else if (!mcp_tool(buf_str(&tname)) || tname.len != strlen(tname.p)) {
            Buf e = { 0 };
            buf_adds(&e, "Unknown tool: ");
            buf_addstr(&e, buf_str(&tname));
            mcp_error(bt, id, MCP_BAD_PARAMS, e.p, NULL);
            buf_free(&e);
        } else if (args && j->t[args].type != JSON_OBJ)
            mcp_error(bt, id, MCP_BAD_PARAMS, "Invalid params: arguments must be an object",
                      NULL);
        else
            mcp_call_start(bt, id, msg, j, m, version);
        buf_free(&tname);
    } else {
        Buf e = { 0 };
        buf_adds(&e, "Method not found: ");
        buf_addstr(&e, buf_str(&name));
        mcp_error(bt, id, MCP_NO_METHOD, e.p, NULL);
        buf_free(&e);
    }
done:
    buf_free(&idb), buf_free(&name), buf_free(&bad);
}

/* One framed message: a request, a notification or (where the negotiated
 * version has them, 2025-03-26 only) a batch. */
static void mcp_handle(Str msg) {
    Json j = { 0 };
    if (json_parse(&j, msg.p, msg.n)) {
        char e[ARC_ERRLEN + 16];
        snprintf(e, sizeof e, "Parse error: %s", j.err);
        mcp_error(NULL, (Str){ NULL, 0 }, MCP_PARSE, e, NULL);
    } else if (j.t[0].type != JSON_ARR) {
        mcp_dispatch(NULL, &j, 0, msg);
    } else {
        pthread_mutex_lock(&g_mcp.mu);
        int batches = !strcmp(g_mcp.version, "2025-03-26");
        pthread_mutex_unlock(&g_mcp.mu);
        if (!batches || j.t[0].n == 0) {
            mcp_error(NULL, (Str){ NULL, 0 }, MCP_INVALID, j.t[0].n
                      ? "Invalid Request: batches exist only in protocol version 2025-03-26"
                      : "Invalid Request: empty batch", NULL);
        } else {
            McpBatch *bt = xrealloc(NULL, sizeof *bt);
            *bt = (McpBatch){ .pending = 1 };
            uint32_t e = 1;
            for (uint32_t i = 0; i < j.t[0].n; i++, e = j.t[e].next)
                mcp_dispatch(bt, &j, e, (Str){ msg.p + j.t[e].off, j.t[e].len });
            Buf none = { 0 };
            mcp_emit(bt, &none);   /* drop the dispatcher's hold */
        }
    }
    json_free(&j);
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

static void mcp_on_msg(Str msg, void *arg) {
    (void)arg;
    mcp_handle(msg);
}

static void mcp_on_frame_error(const char *why, void *arg) {
    char e[128];
    (void)arg;
    snprintf(e, sizeof e, "Parse error: %s", why);
    mcp_error(NULL, (Str){ NULL, 0 }, MCP_PARSE, e, NULL);
}

/* Read stdin until EOF, handling each message as it is framed. */
static void mcp_read_stdin(void) {
    Buf in = { 0 };
    int eof = 0, skipping = 0;
    while (!eof) {
        if (buf_reserve(&in, 65536)) break;
        ssize_t r = read(0, in.p + in.len, 65536);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && errno == EAGAIN) {   /* a client left stdin non-blocking */
            struct pollfd p = { .fd = 0, .events = POLLIN };
            poll(&p, 1, -1);
            continue;
        }
        if (r <= 0) eof = 1;
        else in.len += (size_t)r;
        mcp_drain(&in, eof, &skipping, mcp_on_msg, mcp_on_frame_error, NULL);
    }
    buf_free(&in);
}

/* ---- arc mcp ---- */

static const char mcp_usage[] =
    "usage: arc mcp --agent NAME [options]\n"
    "Serve MCP over stdin/stdout (JSON-RPC, one message per line) as agent NAME,\n"
    "for a client's .mcp.json: {\"command\": \"arc\", \"args\": [\"mcp\", \"--agent\", \"NAME\"]}.\n"
    "  --agent NAME          agent id (default ARC_AGENT, else mcp-client)\n"
    "  --base-url URL        hub (default ARC_URL, else http://127.0.0.1:6969)\n"
    "  --relay-dir DIR       talk through this file spool instead (ARC_RELAY_DIR)\n"
    "  --display-name TEXT   shown to other agents (default NAME)\n"
    "  --capabilities A,B    advertised capabilities\n"
    "  --no-autostart        do not start a hub when none answers at a local URL\n"
    "  --token-file FILE     bearer token for a hub that requires one (or\n"
    "  --token TOKEN         ARC_TOKEN); a started hub gets it too\n"
    "Registers on start (replacing an earlier session of NAME), stays present while\n"
    "it runs, re-registers when the hub comes back, and closes the session at EOF.\n"
    "Protocol versions: 2024-11-05, 2025-03-26, 2025-06-18, 2025-11-25, 2026-07-28.\n";

/* When the URL is local and nothing answers, start a hub as `arc ensure`
 * would (same storage default, relative to the client's working directory,
 * which is the project). Done before any thread exists: it forks. */
static void mcp_autostart(int explicit_url) {
    Client c;
    char err[ARC_ERRLEN];
    if (cli_url(&c, g_mcp.url, err)) return;
    int local = hub_is_loopback(c.host);
    cli_free(&c);
    if (!local || cli_probe(g_mcp.url, g_mcp.token, 0, 1000)) return;
    LifeOpts o = { .argv0 = g_argv0, .timeout_s = 15 };
    serve_options(0, NULL, &o.hub);
    o.hub.host = c.host;
    o.hub.port = c.port;
    memcpy(o.hub.token, g_mcp.token, sizeof o.hub.token);
    char url[320], why[600], log[PATH_MAX + 16];
    int started;
    if (life_ensure(&o, url, &started, why, log)) {
        mcp_log("could not start a hub at %s: %s%s%s", g_mcp.url, why,
                log[0] ? "; see " : "", log);
        return;
    }
    if (started) mcp_log("started a hub at %s (log: %s)", url, log);
    if (strcmp(url, g_mcp.url)) {
        if (explicit_url) mcp_log("a hub runs at %s, not at --base-url %s", url, g_mcp.url);
        else g_mcp.url = xstrndup(url, strlen(url));
    }
}

/* EOF: give calls just sent half a second to finish and answer, cancel
 * what still waits (clients kill the server 2 s after closing its stdin),
 * close the session. */
static void mcp_shutdown(pthread_t beat) {
    pthread_mutex_lock(&g_mcp.mu);
    g_mcp.closing = 1;
    pthread_cond_broadcast(&g_mcp.cond);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 500 * 1000000L;   /* quick calls just sent still get answers */
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    while (g_mcp.ncalls && pthread_cond_timedwait(&g_mcp.cond, &g_mcp.mu, &ts) != ETIMEDOUT) {}
    pthread_mutex_unlock(&g_mcp.mu);
    mcp_cancel((Str){ NULL, 0 });   /* then stop what waits */
    pthread_mutex_lock(&g_mcp.mu);
    ts.tv_sec += 1;
    while (g_mcp.ncalls && pthread_cond_timedwait(&g_mcp.cond, &g_mcp.mu, &ts) != ETIMEDOUT) {}
    char sid[sizeof g_mcp.session_id];
    memcpy(sid, g_mcp.session_id, sizeof sid);
    int registered = g_mcp.registered;
    pthread_mutex_unlock(&g_mcp.mu);
    pthread_join(beat, NULL);
    Client c;
    if (registered && sid[0] && mcp_client(&c, -1) == 0) {
        Buf path = { 0 }, out = { 0 };
        int status;
        char err[ARC_ERRLEN];
        buf_adds(&path, "/v1/sessions/");
        cli_pct(&path, sid);
        cli_call(&c, "DELETE", path.p, (Str){ NULL, 0 }, 800, &status, &out, err);
        buf_free(&path), buf_free(&out);
        cli_free(&c);
    }
}

static int cmd_mcp(int argc, char **argv) {
    const char *agent = getenv("ARC_AGENT"), *url = getenv("ARC_URL");
    const char *relay = getenv("ARC_RELAY_DIR");
    const char *token = NULL, *token_file = NULL;
    int autostart = 1, explicit_url = url && *url;
    for (int i = 0; i < argc; i++) {
        const char *v;
        int rc = 0;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs(mcp_usage, stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--no-autostart")) autostart = 0;
        else if ((rc = opt_val(argc, argv, &i, "--agent", &v))) agent = v;
        else if ((rc = opt_val(argc, argv, &i, "--base-url", &v))) url = v, explicit_url = 1;
        else if ((rc = opt_val(argc, argv, &i, "--relay-dir", &v))) relay = v;
        else if ((rc = opt_val(argc, argv, &i, "--display-name", &v))) g_mcp.display_name = v;
        else if ((rc = opt_val(argc, argv, &i, "--capabilities", &v))) g_mcp.caps = v;
        else if ((rc = opt_val(argc, argv, &i, "--token", &v))) token = v;
        else if ((rc = opt_val(argc, argv, &i, "--token-file", &v))) token_file = v;
        else {
            fprintf(stderr, "arc mcp: unexpected argument %s (see arc mcp --help)\n", argv[i]);
            return 2;
        }
        if (rc < 0) return 2;
    }
    g_mcp.agent = agent && *agent ? agent : "mcp-client";
    g_mcp.url = url && *url ? url : "http://127.0.0.1:6969";
    g_mcp.relay_dir = relay && *relay ? relay : NULL;
    g_mcp.cursor = -1;
    Client probe;
    char err[ARC_ERRLEN];
    if (cli_url(&probe, g_mcp.url, err) || opt_token(token, token_file, g_mcp.token, err)) {
        fprintf(stderr, "arc mcp: %s\n", err);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (autostart && !g_mcp.relay_dir) mcp_autostart(explicit_url);
    mcp_log("serving agent %s through %s", g_mcp.agent,
            g_mcp.relay_dir ? g_mcp.relay_dir : g_mcp.url);
    /* The heartbeat thread registers at once: stdin is served meanwhile,
     * so a client's initialize never waits for the hub. */
    g_mcp.beat_ms = 0;
    pthread_t beat;
    if (pthread_create(&beat, NULL, mcp_heartbeat_main, NULL)) {
        fprintf(stderr, "arc mcp: cannot start the heartbeat thread\n");
        return 1;
    }
    mcp_read_stdin();
    mcp_shutdown(beat);
    return 0;
}

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
    { "smoke", cmd_smoke, "check an installation: three agents, HTTP + relay" },
    { "smoke-agent", cmd_smoke_agent, "run one deterministic smoke role" },
    { "mcp", cmd_mcp, "serve MCP tools over stdio as one agent" },
    { "relay", cmd_relay, "forward a file spool to a hub over HTTP" },
    { "relay-gc", cmd_relay_gc, "delete old answered files from a spool" },
    { "version", cmd_version, "print the version" },
    { "help", cmd_help, "list the commands" },
};

static int cmd_help(int argc, char **argv) {
    (void)argc, (void)argv;
    printf("arc %s -- local-first coordination hub for AI coding agents\n\n"
           "usage: arc [COMMAND] [options]   (no command: serve)\n\n"
           "commands:\n", ARC_VERSION);
    for (size_t i = 0; i < sizeof cmds / sizeof *cmds; i++)
        printf("  %-10s %s\n", cmds[i].name, cmds[i].help);
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
            fputs(serve_usage, stdout);
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
