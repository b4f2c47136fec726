/* fuzz_http -- libFuzzer target for arc's request parser, as the loop uses it.
 *
 * The input is parsed whole with http_parse(), then again as a prefix cut at
 * two places derived from its first byte, each prefix in a buffer of exactly
 * its size. A prefix may ask for more (ARC_AGAIN); otherwise it must agree
 * with the whole input: the same head, or an error the whole input has too.
 * Pipelined heads after the first are parsed in turn. Then the input is fed
 * as a connection's byte stream, whole, one byte at a time and in random
 * chunks, through http_frame(), the framing the loop runs (fuzz_stream):
 * all three must make the same requests. Query strings have their own
 * target (fuzz_query.c).
 *
 * Build: make fuzz (clang libFuzzer + ASan/UBSan); replay: make fuzz-replay
 * (any compiler, -DFUZZ_REPLAY, see tests/replay.h). */

#include "fuzz.h"

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

/* ---- the loop's framing, fed in chunks ---- */

/* The loop keeps no parser state between reads: after every read it frames
 * what is buffered with http_frame() and consumes a request once its head
 * and its declared body are all there (loop_process). fuzz_stream() does
 * the same with the input cut into chunks and writes what happens as a
 * transcript: one line per request (method, target, body length,
 * keep-alive, a hash of the body), then either "more" (waiting for input)
 * or the error that ended the connection. However the input is cut, the
 * transcript must be the same, except that a head too long for the limits
 * may be refused as 414 or 431 depending on where it was cut (both close
 * the connection). */
#define FUZZ_MAX_BODY 4096   /* stands in for max_request_bytes */

/* Check what http_frame() returned (n, r) for p[0..len). */
static void fuzz_check_frame(int64_t n, const HttpReq *r, const char *p, size_t len) {
    if (n == ARC_BAD) {
        FUZZ_CHECK(r->err_status >= 400 && r->err_msg && r->err_msg[0]);
        return;
    }
    if (n == ARC_AGAIN && !r->head_len) {
        FUZZ_CHECK(len <= ARC_MAX_HEAD);
        return;
    }
    fuzz_check_req(r, p, len, r->head_len);
    int64_t cl = r->content_length < 0 ? 0 : r->content_length;
    FUZZ_CHECK(cl <= FUZZ_MAX_BODY);
    if (n == ARC_AGAIN) {   /* the head is here, the body not yet */
        FUZZ_CHECK((uint64_t)r->head_len + (uint64_t)cl > len);
        return;
    }
    FUZZ_CHECK(n == r->head_len + cl && (uint64_t)n <= len);
    FUZZ_CHECK(r->body.p == p + r->head_len && r->body.n == (size_t)cl);
}

static uint32_t fuzz_hash(const char *p, size_t n) {
    uint32_t h = 2166136261u;                      /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 16777619u;
    return h;
}

/* xorshift32: chunk sizes from a seed, reproducible for a saved input. */
static uint32_t fuzz_rand(uint32_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

/* Feed s[0..size) in chunks: mode 0 whole, 1 one byte at a time (for the
 * first 512 bytes: every head boundary, while long inputs stay fast), 2
 * random sizes from seed. Appends the transcript to t; returns the status of the
 * error that ended it, or 0. */
static int fuzz_stream(const char *s, size_t size, int mode, uint32_t seed,
                       Buf *t) {
    Buf in = { 0 };
    size_t fed = 0;
    int err = 0;
    while (fed < size && !err) {
        size_t k = size - fed;
        if (mode == 1 && fed < 512) k = 1;
        else if (mode) k = 1 + fuzz_rand(&seed) % (k < 64 ? k : 64);
        buf_add(&in, s + fed, k);
        fed += k;
        /* The loop parses in place, in a buffer that has grown to hold
         * what has been read: copy to an exact-size allocation so that an
         * over-read is caught by ASan here too. */
        for (;;) {
            char *c = xrealloc(NULL, in.len);
            if (in.len) memcpy(c, in.p, in.len);
            HttpReq r;
            int64_t n = http_frame(c, in.len, FUZZ_MAX_BODY, &r);
            fuzz_check_frame(n, &r, c, in.len);
            if (n == ARC_AGAIN) {
                free(c);
                break;
            }
            if (n == ARC_BAD) {
                buf_addf(t, "error %d\n", r.err_status);
                err = r.err_status;
                free(c);
                break;
            }
            buf_addf(t, "%.*s %.*s %lld %d %08x\n", (int)r.method.n, r.method.p,
                     (int)r.target.n, r.target.p, (long long)r.body.n, r.keep_alive,
                     (unsigned)fuzz_hash(r.body.p, r.body.n));
            free(c);
            buf_consume(&in, (size_t)n);
        }
    }
    if (!err) buf_addf(t, "more %zu\n", in.len);
    buf_free(&in);
    return err;
}

/* Transcripts a and b (ended by statuses ea, eb) tell the same story. */
static void fuzz_same_story(const Buf *a, int ea, const Buf *b, int eb) {
    if (ea == eb) {
        FUZZ_CHECK(a->len == b->len && (!a->len || memcmp(a->p, b->p, a->len) == 0));
        return;
    }
    /* Only the limit errors may differ, and only in their last line. */
    FUZZ_CHECK((ea == 414 || ea == 431) && (eb == 414 || eb == 431));
    const char *la = strrchr(a->p, '\n'), *lb = strrchr(b->p, '\n');
    while (la > a->p && la[-1] != '\n') la--;
    while (lb > b->p && lb[-1] != '\n') lb--;
    FUZZ_CHECK(la - a->p == lb - b->p && memcmp(a->p, b->p, (size_t)(la - a->p)) == 0);
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

    /* Framing the whole input agrees with parsing its head. */
    HttpReq fr;
    int64_t fn = http_frame(s, size, FUZZ_MAX_BODY, &fr);
    fuzz_check_frame(fn, &fr, s, size);
    if (n == ARC_BAD || n == ARC_AGAIN) FUZZ_CHECK(fn == n && !fr.head_len);
    else FUZZ_CHECK(fr.head_len == n || (fn == ARC_BAD && fr.err_status == 400));

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

    /* The same bytes arriving whole, a byte at a time, and in random
     * chunks make the same requests. */
    Buf whole = { 0 }, bytes = { 0 }, chunks = { 0 };
    int ew = fuzz_stream(s, size, 0, 0, &whole);
    int eb = fuzz_stream(s, size, 1, (fuzz_hash(s, size) ^ 0x9e3779b9u) | 1, &bytes);
    int ec = fuzz_stream(s, size, 2, fuzz_hash(s, size) | 1, &chunks);
    fuzz_same_story(&whole, ew, &bytes, eb);
    fuzz_same_story(&whole, ew, &chunks, ec);
    buf_free(&whole);
    buf_free(&bytes);
    buf_free(&chunks);
    return 0;
}

#include "replay.h"
