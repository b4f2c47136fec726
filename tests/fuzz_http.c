/* fuzz_http -- libFuzzer target for arc's request parser and query decoding.
 *
 * The input is parsed whole with http_parse(), then again as a prefix cut at
 * two places derived from its first byte, each prefix in a buffer of exactly
 * its size. A prefix may ask for more (ARC_AGAIN); otherwise it must agree
 * with the whole input: the same head, or an error the whole input has too.
 * Pipelined heads after the first are parsed in turn. The input is also used
 * as a query string for http_query_get() and http_unquote().
 *
 * Build: make fuzz (clang libFuzzer + ASan/UBSan); replay: make fuzz-replay
 * (any compiler, -DFUZZ_REPLAY, see tests/replay.h). */

#include "../arc.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property that does not hold: say which, then crash so the fuzzer keeps
 * the input. Not assert(): it must survive -DNDEBUG. */
#define FUZZ_CHECK(c)                                                       \
    do {                                                                    \
        if (!(c)) {                                                         \
            fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed\n", __FILE__,     \
                    __LINE__, #c);                                          \
            abort();                                                        \
        }                                                                   \
    } while (0)

/* Does s lie inside p[0..n)? */
static int fuzz_inside(Str s, const char *p, size_t n) {
    return s.n == 0 || (s.p >= p && s.p + s.n <= p + n);
}

/* Offset of s in p, or -1 when s is empty (its pointer is unspecified). */
static long fuzz_off(Str s, const char *p) {
    return s.n ? (long)(s.p - p) : -1;
}

/* Check a parsed head of length len at p[0..n). */
static void fuzz_check_req(const HttpReq *r, const char *p, size_t n, int len) {
    FUZZ_CHECK(len > 0 && (size_t)len <= n && len <= ARC_MAX_HEAD);
    FUZZ_CHECK(p[len - 1] == '\n');
    FUZZ_CHECK(r->method.n > 0 && fuzz_inside(r->method, p, (size_t)len));
    FUZZ_CHECK(fuzz_inside(r->target, p, (size_t)len));
    FUZZ_CHECK(r->path.n > 0 && r->path.p[0] == '/' &&
               fuzz_inside(r->path, p, (size_t)len));
    FUZZ_CHECK(r->path.n <= ARC_MAX_URL && !memchr(r->path.p, '?', r->path.n));
    FUZZ_CHECK(fuzz_inside(r->query, p, (size_t)len));
    FUZZ_CHECK(r->path.n + (r->query.n || r->target.n > r->path.n ? 1 : 0) +
               r->query.n == r->target.n);
    FUZZ_CHECK(r->minor == 0 || r->minor == 1);
    FUZZ_CHECK(r->content_length >= -1 && r->content_length < 1000000000000000LL);
    FUZZ_CHECK(r->n_headers >= 0 && r->n_headers <= ARC_MAX_HEADERS);
    FUZZ_CHECK(!r->transfer_encoding);
    FUZZ_CHECK(fuzz_inside(r->host, p, (size_t)len) &&
               fuzz_inside(r->origin, p, (size_t)len) &&
               fuzz_inside(r->last_event_id, p, (size_t)len) &&
               fuzz_inside(r->sec_fetch_site, p, (size_t)len) &&
               fuzz_inside(r->authorization, p, (size_t)len));
    /* What the router does next: decode the path, read the query. */
    Buf b = { 0 };
    int rc = http_unquote(r->path, 0, &b);
    FUZZ_CHECK(rc == 0 || rc == -1);
    buf_reset(&b);
    rc = http_query_get(r->query, "agent_id", &b);
    FUZZ_CHECK(rc >= -1 && rc <= 1);
    buf_free(&b);
}

/* Parse the first k bytes, in a buffer of exactly k bytes, and compare
 * with the whole input's result n / r. */
static void fuzz_prefix(const char *s, size_t k, int n, const HttpReq *r) {
    char *c = xrealloc(NULL, k);
    if (k) memcpy(c, s, k);
    HttpReq pr;
    int m = http_parse(c, k, &pr);
    if (m == ARC_BAD) {
        /* An error in a prefix is an error in the whole. Only the limit
         * errors can come before the head is complete; every other error
         * is judged on a complete head, which the whole input shares. */
        FUZZ_CHECK(n == ARC_BAD);
        if (pr.err_status == 414) FUZZ_CHECK(r->err_status == 414);
        else if (pr.err_status == 431)
            FUZZ_CHECK(r->err_status == 431 || r->err_status == 414);
        else
            FUZZ_CHECK(r->err_status == pr.err_status &&
                       strcmp(r->err_msg, pr.err_msg) == 0);
    } else if (m != ARC_AGAIN) {
        /* A complete head in the prefix is the whole input's head. */
        FUZZ_CHECK(m == n);
        FUZZ_CHECK(fuzz_off(pr.method, c) == fuzz_off(r->method, s) &&
                   pr.method.n == r->method.n);
        FUZZ_CHECK(fuzz_off(pr.target, c) == fuzz_off(r->target, s) &&
                   pr.target.n == r->target.n);
        FUZZ_CHECK(pr.query.n == r->query.n && pr.host.n == r->host.n);
        FUZZ_CHECK(pr.content_length == r->content_length &&
                   pr.keep_alive == r->keep_alive && pr.minor == r->minor &&
                   pr.n_headers == r->n_headers);
    }
    if (n > 0 && k >= (size_t)n) FUZZ_CHECK(m == n);
    if (n == ARC_AGAIN) FUZZ_CHECK(m == ARC_AGAIN);
    free(c);
}

/* The input as a query string. */
static void fuzz_query(const char *s, size_t size) {
    Str q = { s, size };
    Buf a = { 0 }, b = { 0 };
    int ra = http_unquote(q, 1, &a);
    int rb = http_unquote(q, 0, &b);
    FUZZ_CHECK(ra == rb && a.len == b.len && !a.err && !b.err);
    FUZZ_CHECK(a.len <= size && a.len * 3 >= size);
    if (ra == 0) FUZZ_CHECK(utf8_valid(buf_cstr(&a), a.len));
    if (!memchr(s, '%', size) && !memchr(s, '+', size))
        FUZZ_CHECK(a.len == size && (size == 0 || memcmp(a.p, s, size) == 0));

    static const char *const names[] = { "a", "", "agent_id", "since_id" };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        buf_reset(&a);
        int rc = http_query_get(q, names[i], &a);
        FUZZ_CHECK(rc >= -1 && rc <= 1);
        if (rc == 1) FUZZ_CHECK(a.len > 0 && utf8_valid(a.p, a.len));
    }

    /* The first parameter, if it has a value, is found under its own
     * (decoded) name, with that value. */
    const char *amp = memchr(s, '&', size);
    Str part = { s, amp ? (size_t)(amp - s) : size };
    const char *eq = memchr(part.p, '=', part.n);
    if (eq && eq < part.p + part.n - 1) {
        Buf key = { 0 }, want = { 0 };
        Str kv = { part.p, (size_t)(eq - part.p) };
        Str vv = { eq + 1, part.n - kv.n - 1 };
        if (http_unquote(kv, 1, &key) == 0 &&
            !memchr(buf_cstr(&key), 0, key.len)) {
            int wrc = http_unquote(vv, 1, &want);
            buf_reset(&a);
            int rc = http_query_get(q, buf_cstr(&key), &a);
            if (wrc == 0)
                FUZZ_CHECK(rc == 1 && a.len == want.len &&
                           memcmp(a.p, want.p, a.len) == 0);
            else
                FUZZ_CHECK(rc == -1);
        }
        buf_free(&key);
        buf_free(&want);
    }
    buf_free(&a);
    buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *s = (const char *)data;
    HttpReq r;
    int n = http_parse(s, size, &r);
    if (n == ARC_BAD) {
        FUZZ_CHECK(r.err_status == 400 || r.err_status == 411 ||
                   r.err_status == 414 || r.err_status == 431 ||
                   r.err_status == 505);
        FUZZ_CHECK(r.err_msg && r.err_msg[0]);
    } else if (n == ARC_AGAIN) {
        FUZZ_CHECK(size <= ARC_MAX_HEAD);
    } else {
        fuzz_check_req(&r, s, size, n);
    }

    /* Two cuts: one anywhere in a short input, one proportional. */
    size_t b0 = size ? data[0] : 0;
    fuzz_prefix(s, b0 % (size + 1), n, &r);
    fuzz_prefix(s, size * b0 / 255, n, &r);

    /* Pipelined requests after the first, with their bodies skipped. */
    size_t off = 0;
    for (int round = 0; round < 8 && n > 0; round++) {
        int64_t cl = r.content_length < 0 ? 0 : r.content_length;
        if ((uint64_t)cl > size - off - (size_t)n) break;
        off += (size_t)n + (size_t)cl;
        n = http_parse(s + off, size - off, &r);
        if (n > 0) fuzz_check_req(&r, s + off, size - off, n);
    }

    fuzz_query(s, size);
    return 0;
}

#include "replay.h"
