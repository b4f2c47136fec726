/* fuzz_json -- libFuzzer target for arc's JSON reader and writer.
 *
 * Arbitrary bytes go to json_parse(). When they parse, every token is run
 * through the coercions (json_to_i64, json_truthy, json_pylen, json_as_text,
 * json_unescape), the root is written with json_write(), the output must
 * parse again into the same tree (duplicate keys resolved as Python does),
 * and writing that must give the same bytes. Independently,
 * json_str() of the raw bytes must always be one valid JSON string that
 * decodes to the input when the input is valid UTF-8.
 *
 * Build: make fuzz (clang libFuzzer + ASan/UBSan); replay: make fuzz-replay
 * (any compiler, -DFUZZ_REPLAY, see tests/replay.h). */

#include "fuzz.h"

/* The text of token i, copied and NUL-terminated; owned by the caller. */
static char *fuzz_tok_text(const Json *j, uint32_t i) {
    return xstrndup(j->src + j->t[i].off, j->t[i].len);
}

/* Check one token and the coercions on it. */
static void fuzz_token(const Json *j, uint32_t i) {
    const JsonTok *t = &j->t[i];
    FUZZ_CHECK(t->type >= JSON_NULL && t->type <= JSON_OBJ);
    FUZZ_CHECK(t->next > i && t->next <= j->nt);
    FUZZ_CHECK((size_t)t->off + t->len <= j->srclen);
    int64_t v = 0;
    int rc = json_to_i64(j, i, &v);
    int truthy = json_truthy(j, i);
    size_t pylen = json_pylen(j, i);
    FUZZ_CHECK(truthy == 0 || truthy == 1);
    Buf b = { 0 };
    json_as_text(&b, j, i);
    FUZZ_CHECK(!b.err);
    buf_free(&b);
    switch (t->type) {
    case JSON_NULL:
        FUZZ_CHECK(rc == -1 && !truthy && pylen == 4 && t->next == i + 1);
        break;
    case JSON_TRUE:
        FUZZ_CHECK(rc == 0 && v == 1 && truthy && pylen == 4);
        break;
    case JSON_FALSE:
        FUZZ_CHECK(rc == 0 && v == 0 && !truthy && pylen == 5);
        break;
    case JSON_STR: {
        json_unescape(j, i, &b);
        FUZZ_CHECK(utf8_valid(buf_cstr(&b), b.len));
        FUZZ_CHECK(b.len <= t->len);
        FUZZ_CHECK(json_str_is(j, i, buf_str(&b)));
        FUZZ_CHECK(truthy == (t->len > 0));
        FUZZ_CHECK(pylen >= 2 + utf8_chars(buf_cstr(&b), b.len));
        FUZZ_CHECK(pylen <= 2 + 12 * b.len);
        if (!t->esc) FUZZ_CHECK(b.len == t->len);
        buf_free(&b);
        break;
    }
    case JSON_NUM: {
        FUZZ_CHECK(t->len > 0 && pylen == t->len && t->next == i + 1);
        char *s = fuzz_tok_text(j, i);
        /* truthy must be what the token alone means (bytes after the token
         * are none of its business). */
        FUZZ_CHECK(truthy == (strtod(s, NULL) != 0.0));
        if (!t->frac) {
            /* Integers: json_to_i64 agrees with strtoll on the same text. */
            errno = 0;
            long long ll = strtoll(s, NULL, 10);
            if (errno == ERANGE) FUZZ_CHECK(rc == -1);
            else FUZZ_CHECK(rc == 0 && v == ll);
        } else if (rc == 0) {
            double d = strtod(s, NULL);
            FUZZ_CHECK(isfinite(d) && (double)v == trunc(d));
        }
        free(s);
        break;
    }
    case JSON_ARR:
    case JSON_OBJ: {
        FUZZ_CHECK(rc == -1 && truthy == (t->n > 0));
        uint32_t c = i + 1, last = i + 1;
        for (uint32_t m = 0; m < t->n; m++) {
            if (t->type == JSON_OBJ) {
                FUZZ_CHECK(j->t[c].type == JSON_STR && j->t[c].next == c + 1);
                last = c;
                c++;
            }
            c = j->t[c].next;
        }
        FUZZ_CHECK(c == t->next);
        if (t->type == JSON_OBJ && t->n) {
            /* Looking up the last member's key finds that member. */
            json_unescape(j, last, &b);
            if (!memchr(buf_cstr(&b), 0, b.len))
                FUZZ_CHECK(json_get(j, i, buf_cstr(&b)) == last + 1);
            buf_free(&b);
        }
        break;
    }
    }
}

/* Is token i of a the same value as token k of b? b was written from a, so
 * its objects hold only the members of a's that survive duplicate-key
 * resolution, in the same order. Strings compare decoded, numbers as
 * written (json_write copies them verbatim). */
static int fuzz_same(const Json *a, uint32_t i, const Json *b, uint32_t k) {
    const JsonTok *x = &a->t[i], *y = &b->t[k];
    if (x->type != y->type) return 0;
    switch (x->type) {
    case JSON_STR: {
        Buf u = { 0 }, v = { 0 };
        json_unescape(a, i, &u);
        json_unescape(b, k, &v);
        int same = u.len == v.len && (!u.len || memcmp(u.p, v.p, u.len) == 0);
        buf_free(&u);
        buf_free(&v);
        return same;
    }
    case JSON_NUM:
        return x->len == y->len &&
               memcmp(a->src + x->off, b->src + y->off, x->len) == 0;
    case JSON_ARR: {
        if (x->n != y->n) return 0;
        uint32_t c = i + 1, d = k + 1;
        for (uint32_t m = 0; m < x->n; m++) {
            if (!fuzz_same(a, c, b, d)) return 0;
            c = a->t[c].next;
            d = b->t[d].next;
        }
        return 1;
    }
    case JSON_OBJ: {
        unsigned char *keep = json_obj_keep(a, i);
        unsigned char *kept = json_obj_keep(b, k);
        uint32_t c = i + 1, d = k + 1, m2 = 0;
        int same = 1;
        for (uint32_t m = 0; m < x->n && same; m++) {
            if (keep[m]) {
                same = m2 < y->n && kept[m2] && fuzz_same(a, c, b, d) &&
                       fuzz_same(a, c + 1, b, d + 1);
                d = b->t[d + 1].next;
                m2++;
            }
            c = a->t[c + 1].next;
        }
        same = same && m2 == y->n;
        free(keep);
        free(kept);
        return same;
    }
    default:
        return 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *s = (const char *)data;
    Json j = { 0 }, k = { 0 };
    Buf w1 = { 0 }, w2 = { 0 }, dec = { 0 };

    /* json_str() of anything is one valid JSON string. */
    json_str(&w1, s, size);
    FUZZ_CHECK(json_parse(&k, w1.p, w1.len) == 0 && k.nt == 1 &&
               k.t[0].type == JSON_STR);
    json_unescape(&k, 0, &dec);
    FUZZ_CHECK(utf8_valid(buf_cstr(&dec), dec.len));
    if (utf8_valid(s, size))
        FUZZ_CHECK(dec.len == size && (size == 0 || memcmp(dec.p, s, size) == 0));
    FUZZ_CHECK(utf8_chars(s, size) <= size);
    buf_reset(&w1);

    if (json_parse(&j, s, size) == 0) {
        FUZZ_CHECK(j.nt >= 1 && j.t[0].next == j.nt && j.err[0] == 0);
        for (uint32_t i = 0; i < j.nt; i++) fuzz_token(&j, i);
        /* Write, re-parse, re-write: a fixed point after one write. */
        json_write(&w1, &j, 0);
        FUZZ_CHECK(!w1.err && utf8_valid(w1.p, w1.len));
        if (json_parse(&k, w1.p, w1.len) != 0) {
            fprintf(stderr, "re-parse failed: %s\n", k.err);
            FUZZ_CHECK(0);
        }
        FUZZ_CHECK(fuzz_same(&j, 0, &k, 0));
        json_write(&w2, &k, 0);
        FUZZ_CHECK(w1.len == w2.len && memcmp(w1.p, w2.p, w1.len) == 0);
        FUZZ_CHECK(k.t[0].type == j.t[0].type && k.nt <= j.nt);
        /* Deduplication only removes members, so the size only shrinks. */
        FUZZ_CHECK(json_pylen(&k, 0) <= json_pylen(&j, 0));
        if (k.nt == j.nt) FUZZ_CHECK(json_pylen(&k, 0) == json_pylen(&j, 0));
    } else {
        FUZZ_CHECK(j.err[0] != 0);
    }
    json_free(&j);
    json_free(&k);
    buf_free(&w1);
    buf_free(&w2);
    buf_free(&dec);
    return 0;
}

#include "replay.h"
