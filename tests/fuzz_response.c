/* fuzz_response -- libFuzzer target for arc's response parser and for the
 * client that reads responses with it.
 *
 * The input is parsed whole with http_parse_response(), then again as a
 * prefix cut at two places derived from its first byte, each prefix in a
 * buffer of exactly its size. Every prefix of a complete head asks for more
 * (ARC_AGAIN); a prefix that fails means the whole input fails; a prefix
 * holding the whole head finds the same head. Heads that follow (interim
 * 1xx responses, or responses on a kept-alive connection) are parsed in
 * turn. Then the input is what a "hub" sends on one end of a socketpair
 * before closing it, and the real client (client_call) reads it: it must
 * agree with the parser and stay within ARC_CLIENT_MAX_BODY.
 *
 * Build: make fuzz (clang libFuzzer + ASan/UBSan); replay: make fuzz-replay
 * (any compiler, -DFUZZ_REPLAY, see tests/replay.h). */

#include "fuzz.h"

/* Does s lie inside p[0..n)? */
static int fuzz_inside(Str s, const char *p, size_t n) {
    return s.n == 0 || (s.p >= p && s.p + s.n <= p + n);
}

/* Check a parsed head of length len at p[0..n). */
static void fuzz_check_resp(const HttpResp *r, const char *p, size_t n, int len) {
    FUZZ_CHECK(len > 0 && (size_t)len <= n && len <= ARC_MAX_HEAD);
    FUZZ_CHECK(len >= 14 && memcmp(p, "HTTP/1.", 7) == 0 && p[len - 1] == '\n');
    FUZZ_CHECK(r->minor == 0 || r->minor == 1);
    FUZZ_CHECK(r->status >= 100 && r->status <= 599);
    FUZZ_CHECK(fuzz_inside(r->reason, p, (size_t)len) &&
               fuzz_inside(r->content_type, p, (size_t)len));
    FUZZ_CHECK(!memchr(r->reason.p, '\n', r->reason.n) &&
               !memchr(r->content_type.p, '\n', r->content_type.n));
    FUZZ_CHECK(r->n_headers >= 0 && r->n_headers <= ARC_MAX_HEADERS);
    switch (r->body) {
    case HTTP_BODY_LENGTH:
        FUZZ_CHECK(r->content_length >= 0 &&
                   r->content_length < 1000000000000000LL);
        break;
    case HTTP_BODY_CHUNKED:
        FUZZ_CHECK(r->content_length == -1);
        break;
    case HTTP_BODY_CLOSE:
        FUZZ_CHECK(r->content_length == -1 && r->close);
        break;
    default:
        FUZZ_CHECK(0);
    }
    if (r->status < 200 || r->status == 204 || r->status == 304)
        FUZZ_CHECK(r->body == HTTP_BODY_LENGTH && r->content_length == 0);
    FUZZ_CHECK(r->minor == 1 || r->close || r->n_headers > 0);
}

/* Parse the first k bytes, in a buffer of exactly k bytes, and compare
 * with the whole input's result n / r. */
static void fuzz_prefix(const char *s, size_t k, int n, const HttpResp *r) {
    char *c = xrealloc(NULL, k);
    if (k) memcpy(c, s, k);
    HttpResp pr;
    int m = http_parse_response(c, k, &pr);
    if (m == ARC_BAD) {
        FUZZ_CHECK(n == ARC_BAD && pr.err_msg && pr.err_msg[0]);
    } else if (m != ARC_AGAIN) {
        /* A complete head in the prefix is the whole input's head. */
        FUZZ_CHECK(m == n);
        FUZZ_CHECK(pr.status == r->status && pr.minor == r->minor &&
                   pr.body == r->body && pr.content_length == r->content_length &&
                   pr.close == r->close && pr.n_headers == r->n_headers &&
                   pr.reason.n == r->reason.n &&
                   pr.content_type.n == r->content_type.n);
    }
    if (n > 0 && k < (size_t)n) FUZZ_CHECK(m == ARC_AGAIN);
    if (n > 0 && k >= (size_t)n) FUZZ_CHECK(m == n);
    if (n == ARC_AGAIN) FUZZ_CHECK(m == ARC_AGAIN);
    free(c);
}

/* The input as a hub's answer on a socket that is then closed: the client
 * must give the body the parser frames, or an error, never more than
 * ARC_CLIENT_MAX_BODY bytes. Interim 1xx heads are skipped, as it does. */
static void fuzz_client(const char *s, size_t size) {
    int sv[2];
    if (size == 0) return;       /* nothing back: the client would reconnect */
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return;
    Client c;
    char err[ARC_ERRLEN] = "";
    client_url(&c, "http://127.0.0.1:1", err);
    c.fd = sv[0];
    fd_nonblock(sv[0]);
    int ok = write(sv[1], s, size) == (ssize_t)size;
    shutdown(sv[1], SHUT_WR);
    Buf out = { 0 };
    int status = 0;
    int rc = ok ? client_call(&c, "GET", "/", (Str){ NULL, 0 }, 5000, &status, &out,
                           err) : -2;
    close(sv[1]);
    /* What the parser says the client should have found. */
    size_t off = 0;
    HttpResp r;
    int n;
    while ((n = http_parse_response(s + off, size - off, &r)) > 0 && r.status < 200)
        off += (size_t)n;
    if (rc == 0) {
        FUZZ_CHECK(n > 0 && status == r.status && r.body != HTTP_BODY_CHUNKED);
        FUZZ_CHECK(out.len <= ARC_CLIENT_MAX_BODY);
        size_t body = off + (size_t)n;
        if (r.body == HTTP_BODY_LENGTH)
            FUZZ_CHECK(out.len == (size_t)r.content_length &&
                       size - body >= out.len);
        else
            FUZZ_CHECK(out.len == size - body);
        FUZZ_CHECK(!out.len || memcmp(out.p, s + body, out.len) == 0);
        FUZZ_CHECK(r.close ? c.fd < 0 : c.fd >= 0);
    } else if (rc == -1) {
        FUZZ_CHECK(err[0] && c.fd < 0);
        if (n > 0 && r.body == HTTP_BODY_LENGTH &&
            r.content_length <= (int64_t)ARC_CLIENT_MAX_BODY)
            FUZZ_CHECK(size - off - (size_t)n < (size_t)r.content_length);
    }
    client_free(&c);
    buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *s = (const char *)data;
    HttpResp r;
    int n = http_parse_response(s, size, &r);
    if (n == ARC_BAD) FUZZ_CHECK(r.err_msg && r.err_msg[0]);
    else if (n == ARC_AGAIN) FUZZ_CHECK(size <= ARC_MAX_HEAD);
    else fuzz_check_resp(&r, s, size, n);

    /* Two cuts: one anywhere in a short input, one proportional. */
    size_t b0 = size ? data[0] : 0;
    fuzz_prefix(s, b0 % (size + 1), n, &r);
    fuzz_prefix(s, size * b0 / 255, n, &r);

    /* Heads after the first, with their bodies skipped. */
    size_t off = 0;
    for (int round = 0; round < 8 && n > 0 && r.body == HTTP_BODY_LENGTH; round++) {
        if ((uint64_t)r.content_length > size - off - (size_t)n) break;
        off += (size_t)n + (size_t)r.content_length;
        n = http_parse_response(s + off, size - off, &r);
        if (n > 0) fuzz_check_resp(&r, s + off, size - off, n);
    }

    fuzz_client(s, size);
    return 0;
}

#include "replay.h"
