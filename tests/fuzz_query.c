/* fuzz_query -- libFuzzer target for query strings and path parameters.
 *
 * The input is a query string: percent-decoding (http_unquote, with and
 * without '+' as space) must agree with itself and keep its UTF-8 verdict,
 * http_query_get() must find the first parameter under its own decoded
 * name, and the handlers' readers (hub_qint, hub_qbool, hub_timeout,
 * hub_since_limit) must either give a value in range or fail with a JSON
 * 400 envelope. The input is also matched, as a path, against every route
 * pattern; a captured segment is non-empty decoded UTF-8 (digits for '#').
 *
 * Build: make fuzz (clang libFuzzer + ASan/UBSan); replay: make fuzz-replay
 * (any compiler, -DFUZZ_REPLAY, see tests/replay.h). */

#include "fuzz.h"

/* r holds a 400 failure envelope that parses as JSON. */
static void fuzz_check_fail(const Res *r) {
    Json j = { 0 };
    FUZZ_CHECK(r->status == 400);
    FUZZ_CHECK(json_parse(&j, r->body.p, r->body.len) == 0);
    uint32_t ok = json_get(&j, 0, "ok"), err = json_get(&j, 0, "error");
    FUZZ_CHECK(ok && j.t[ok].type == JSON_FALSE);
    FUZZ_CHECK(err && j.t[err].type == JSON_STR && j.t[err].len > 0);
    json_free(&j);
}

/* Percent-decoding and parameter lookup on the raw input. */
static void fuzz_decode(const char *s, size_t size) {
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

/* The readers the handlers use, on the input as a query string. */
static void fuzz_readers(const char *s, size_t size) {
    Req q = { .method = STR_LIT("GET"), .query = { s, size } };
    Res r = { 0 };
    int64_t since = -1, ms = -1, v = 0;
    int limit = 0;
    if (hub_since_limit(&q, &r, &since, &limit) == 0)
        FUZZ_CHECK(since >= 0 && limit >= 1 && limit <= ARC_MAX_LIMIT);
    else
        fuzz_check_fail(&r);
    res_free(&r);
    r = (Res){ 0 };
    if (hub_timeout(&q, &r, &ms) == 0) {
        FUZZ_CHECK(ms >= 0 && ms <= ARC_MAX_WAIT_S * 1000);
        /* Accepted text is a number all the way to its end. */
        if (http_query_get(q.query, "timeout", &q.tmp) == 1) {
            char *end;
            strtod(q.tmp.p, &end);
            while (*end && isspace((unsigned char)*end)) end++;
            FUZZ_CHECK(end == q.tmp.p + q.tmp.len);
        }
    } else {
        fuzz_check_fail(&r);
    }
    res_free(&r);
    r = (Res){ 0 };
    if (hub_qint(&q, &r, "a", 7, &v) == 0) {
        if (http_query_get(q.query, "a", &q.tmp) != 1) FUZZ_CHECK(v == 7);
    } else {
        fuzz_check_fail(&r);
    }
    int b = hub_qbool(&q, "a");
    FUZZ_CHECK(b == 0 || b == 1);
    res_free(&r);
    req_free(&q);
}

/* The input as a request path, against every route. */
static void fuzz_routes(const char *s, size_t size) {
    Str path = { s, size };
    Buf arg = { 0 };
    for (size_t i = 0; i < sizeof hub_routes / sizeof *hub_routes; i++) {
        const char *pat = hub_routes[i].pattern;
        buf_reset(&arg);
        if (!hub_route_match(pat, path, &arg)) continue;
        FUZZ_CHECK(size > 0 && s[0] == '/');
        if (strpbrk(pat, "*#")) {
            FUZZ_CHECK(arg.len > 0 && utf8_valid(arg.p, arg.len));
            if (strchr(pat, '#'))
                for (size_t k = 0; k < arg.len; k++)
                    FUZZ_CHECK(isdigit((unsigned char)arg.p[k]));
        } else {
            FUZZ_CHECK(size == strlen(pat) && memcmp(s, pat, size) == 0);
        }
    }
    buf_free(&arg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *s = (const char *)data;
    fuzz_decode(s, size);
    fuzz_readers(s, size);
    fuzz_routes(s, size);
    return 0;
}

#include "replay.h"
