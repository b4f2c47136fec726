/* unit -- C unit tests for arc's base, json, http, store and hub sections
 * and the loop's timer heap and wait buckets.
 *
 * The test compiles arc.c in (every function there is static) and is built
 * with -DARC_NO_MAIN -DARC_BUF_MIN=1, so buffers start at one byte and every
 * growth path runs. Parsers read their input from the end of a mapping whose
 * next page is PROT_NONE (picohttpparser's test.c does the same), so reading
 * one byte too far crashes instead of passing silently.
 *
 * Output: one line per failed check (file:line: condition), then exactly
 * "unit: N passed, M failed". The exit status is 1 when M > 0. */

/* Assert the loop's invariants (heap order, wait buckets) after every
 * change: see "invariants, checked in test builds" in arc.c. */
#define ARC_CHECK_INVARIANTS 1

/* Small enough that a test can pass it (test_client_read). */
#define ARC_CLIENT_MAX_BODY 4096
#include "../arc.c"

#include <sys/mman.h>

static int ut_pass, ut_fail;

/* One check: count it, and on failure print where and what. */
#define CHECK(cond)                                                         \
    do {                                                                    \
        if (cond) {                                                         \
            ut_pass++;                                                      \
        } else {                                                            \
            ut_fail++;                                                      \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__,          \
                    __LINE__, #cond);                                       \
        }                                                                   \
    } while (0)

/* Like CHECK, with a note (the input under test) printed on failure. */
#define CHECKM(cond, note)                                                  \
    do {                                                                    \
        if (cond) {                                                         \
            ut_pass++;                                                      \
        } else {                                                            \
            ut_fail++;                                                      \
            fprintf(stderr, "%s:%d: CHECK(%s) failed for %s\n", __FILE__,   \
                    __LINE__, #cond, note);                                 \
        }                                                                   \
    } while (0)

/* ---- guard page: input placed so that its last byte touches PROT_NONE -- */

static char *ut_map;          /* owned: the current mapping, or NULL */
static size_t ut_map_len;

/* Copy s[0..n) to the end of a fresh mapping followed by an inaccessible
 * page and return the copy. It stays valid until the next ut_guard() or
 * ut_guard_free(). /dev/zero keeps this to plain POSIX (no MAP_ANONYMOUS). */
static const char *ut_guard(const void *s, size_t n) {
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t data = n ? (n + pg - 1) / pg * pg : pg;
    if (ut_map) munmap(ut_map, ut_map_len);
    ut_map_len = data + pg;
    int fd = open("/dev/zero", O_RDWR);
    if (fd < 0) die("open /dev/zero: %s", strerror(errno));
    void *m = mmap(NULL, ut_map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) die("mmap: %s", strerror(errno));
    ut_map = m;
    if (mprotect(ut_map + data, pg, PROT_NONE)) die("mprotect: %s", strerror(errno));
    char *p = ut_map + data - n;
    if (n) memcpy(p, s, n);
    return p;
}

static void ut_guard_free(void) {
    if (ut_map) munmap(ut_map, ut_map_len);
    ut_map = NULL;
}

/* A string of n copies of c followed by nothing; owned by the caller. */
static char *ut_rep(char c, size_t n) {
    char *s = xrealloc(NULL, n + 1);
    memset(s, c, n);
    s[n] = 0;
    return s;
}

static int ut_buf_is(const Buf *b, const char *s, size_t n) {
    return b->len == n && memcmp(buf_cstr(b), s, n) == 0 &&
           buf_cstr(b)[n] == 0;
}
#define BUF_IS(b, lit) ut_buf_is((b), (lit), sizeof(lit) - 1)

static int ut_str_is(Str s, const char *c) { return str_eq(s, c); }

/* ==== base ============================================================== */

static void test_buf(void) {
    Buf b = { 0 };
    CHECK(b.p == NULL && strcmp(buf_cstr(&b), "") == 0);
    CHECK(buf_str(&b).n == 0 && buf_str(&b).p != NULL);
    buf_add(&b, "", 0);                      /* empty append still allocates */
    CHECK(b.p != NULL && b.len == 0 && b.p[0] == 0 && b.cap >= 1);
    buf_addc(&b, 'a');
    CHECK(BUF_IS(&b, "a") && b.cap >= 2);
    /* Growth from one byte, one byte at a time, stays NUL-terminated. */
    for (int i = 1; i < 1000; i++) buf_addc(&b, (char)('a' + i % 26));
    CHECK(b.len == 1000 && b.cap >= 1001 && b.p[1000] == 0);
    int ok = 1;
    for (int i = 0; i < 1000; i++) ok &= b.p[i] == (char)('a' + i % 26);
    CHECK(ok);
    CHECK(b.cap == 1024);                    /* doubling from ARC_BUF_MIN=1 */
    buf_free(&b);
    CHECK(b.p == NULL && b.len == 0 && b.cap == 0);

    buf_adds(&b, "hello");
    buf_addstr(&b, STR_LIT(", "));
    buf_addstr(&b, str_c("world"));
    CHECK(BUF_IS(&b, "hello, world"));
    buf_add(&b, "\0x", 2);                   /* embedded NUL is just a byte */
    CHECK(b.len == 14 && b.p[12] == 0 && b.p[13] == 'x' && b.p[14] == 0);
    buf_reset(&b);
    CHECK(b.len == 0 && b.p && b.p[0] == 0 && !b.err);

    /* buf_addf: short output, exactly 255 and 256 bytes (the stack buffer
     * boundary), and long output appended after existing content. */
    buf_addf(&b, "%d-%s", 42, "x");
    CHECK(BUF_IS(&b, "42-x"));
    char *s255 = ut_rep('q', 255), *s256 = ut_rep('r', 256);
    char *s1000 = ut_rep('z', 1000);
    buf_reset(&b);
    buf_addf(&b, "%s", s255);
    CHECK(b.len == 255 && memcmp(b.p, s255, 255) == 0 && b.p[255] == 0);
    buf_reset(&b);
    buf_addf(&b, "%s", s256);
    CHECK(b.len == 256 && memcmp(b.p, s256, 256) == 0 && b.p[256] == 0);
    buf_reset(&b);
    buf_adds(&b, "<");
    buf_addf(&b, "[%s|%d]", s1000, -7);
    CHECK(b.len == 1 + 1 + 1000 + 4 && b.p[0] == '<' && b.p[1] == '[' &&
          memcmp(b.p + 2, s1000, 1000) == 0 &&
          memcmp(b.p + 1002, "|-7]", 4) == 0 && b.p[1006] == 0);
    buf_free(&b);
    buf_addf(&b, "%s%s", s1000, s1000);      /* long output into a NULL Buf */
    CHECK(b.len == 2000 && b.p[1999] == 'z' && b.p[2000] == 0);
    buf_free(&b);

    /* max: appends that would pass it are dropped whole, err is sticky,
     * reaching max exactly is allowed; buf_free keeps max. */
    Buf m = { .max = 10 };
    buf_adds(&m, "12345");
    buf_adds(&m, "12345");
    CHECK(BUF_IS(&m, "1234512345") && !m.err);
    buf_addc(&m, 'x');
    CHECK(m.len == 10 && m.err);
    buf_reset(&m);
    CHECK(m.len == 0 && !m.err && m.max == 10);
    buf_adds(&m, "123456");
    buf_adds(&m, "abcde");                   /* 11 > 10: dropped */
    CHECK(BUF_IS(&m, "123456") && m.err == 1);
    buf_adds(&m, "ab");                      /* fits, but err stays set */
    CHECK(BUF_IS(&m, "123456ab") && m.err == 1);
    buf_reset(&m);
    buf_addf(&m, "%s", s1000);               /* long path over max */
    CHECK(m.len == 0 && m.err);
    buf_reset(&m);
    buf_addf(&m, "%s", "0123456789A");       /* short path over max */
    CHECK(m.len == 0 && m.err);
    buf_free(&m);
    CHECK(m.max == 10 && m.p == NULL && !m.err);
    free(s255);
    free(s256);
    free(s1000);

    /* buf_consume */
    buf_consume(&b, 3);                      /* on a NULL Buf: no-op */
    CHECK(b.len == 0);
    buf_adds(&b, "hello world");
    buf_consume(&b, 0);
    CHECK(BUF_IS(&b, "hello world"));
    buf_consume(&b, 6);
    CHECK(BUF_IS(&b, "world"));
    buf_consume(&b, 5);
    CHECK(b.len == 0 && b.p[0] == 0);
    buf_adds(&b, "abc");
    buf_consume(&b, 100);
    CHECK(b.len == 0 && b.p[0] == 0);
    buf_adds(&b, "xy");
    CHECK(BUF_IS(&b, "xy"));
    buf_free(&b);

    char *dup = xstrndup("abcdef", 3);
    CHECK(strcmp(dup, "abc") == 0);
    free(dup);
}

static void test_str(void) {
    CHECK(str_eq(STR_LIT("abc"), "abc") && !str_eq(STR_LIT("abc"), "ab"));
    CHECK(str_ieq(STR_LIT("Content-LENGTH"), "content-length"));
    CHECK(!str_ieq(STR_LIT("Content-Lengt"), "content-length"));
    CHECK(str_c(NULL).n == 0);
    Str t = str_trim(STR_LIT(" \t\r\n\v\fa b \n"));
    CHECK(ut_str_is(t, "a b"));
    CHECK(str_trim(STR_LIT("   ")).n == 0);
    CHECK(str_trim((Str){ "", 0 }).n == 0);
}

static void test_iso(void) {
    char out[ISO_LEN];
    int64_t us = -1;
    iso_format(0, out);
    CHECK(strcmp(out, "1970-01-01T00:00:00.000000Z") == 0);
    iso_format(1776186000LL * 1000000 + 123456, out);
    CHECK(strcmp(out, "2026-04-14T17:00:00.123456Z") == 0);

    /* Whole seconds: parse, format (now with .000000), parse again. */
    CHECK(iso_parse(str_c("2026-04-14T17:00:00Z"), &us) == 0);
    CHECK(us == 1776186000LL * 1000000);
    iso_format(us, out);
    CHECK(strcmp(out, "2026-04-14T17:00:00.000000Z") == 0);
    int64_t us2 = -1;
    CHECK(iso_parse(str_c(out), &us2) == 0 && us2 == us);

    /* Microseconds round trip, and the other accepted spellings. */
    static const char *const rt[] = {
        "2026-04-14T17:00:00.123456Z", "2024-02-29T23:59:59.999999Z",
        "2000-03-01T00:00:00.000001Z", "1970-01-01T00:00:00.000000Z",
        "2099-12-31T23:59:59.500000Z",
    };
    for (size_t i = 0; i < sizeof rt / sizeof *rt; i++) {
        CHECKM(iso_parse(str_c(rt[i]), &us) == 0, rt[i]);
        iso_format(us, out);
        CHECKM(strcmp(out, rt[i]) == 0, rt[i]);
    }
    CHECK(iso_parse(str_c("2024-02-29T23:59:59Z"), &us) == 0 &&
          us == 1709251199LL * 1000000);
    CHECK(iso_parse(str_c("2000-03-01T00:00:00+00:00"), &us) == 0 &&
          us == 951868800LL * 1000000);
    CHECK(iso_parse(str_c("2000-03-01 00:00:00"), &us) == 0 &&
          us == 951868800LL * 1000000);
    CHECK(iso_parse(str_c("2026-04-14T17:00:00.5Z"), &us) == 0 &&
          us == 1776186000LL * 1000000 + 500000);
    CHECK(iso_parse(str_c("2026-04-14T17:00:00.1234567Z"), &us) == 0 &&
          us == 1776186000LL * 1000000 + 123456);
    /* The parser must not read past s.n: give it a guarded copy. */
    const char *g = ut_guard("2026-04-14T17:00:00.12", 22);
    CHECK(iso_parse((Str){ g, 22 }, &us) == 0 &&
          us == 1776186000LL * 1000000 + 120000);
    g = ut_guard("2026-04-14T17:00:00", 19);
    CHECK(iso_parse((Str){ g, 19 }, &us) == 0 && us == 1776186000LL * 1000000);
    CHECK(iso_parse(str_c(""), &us) == -1);
    CHECK(iso_parse(str_c("2026-04-14"), &us) == -1);
    CHECK(iso_parse(str_c("2026/04/14T17:00:00Z"), &us) == -1);
    CHECK(iso_parse(str_c("2026-04-14X17:00:00Z"), &us) == -1);
    CHECK(iso_parse(str_c("2026-04-14T17-00-00Z"), &us) == -1);
    CHECK(iso_parse(str_c("abcd-ef-ghTij:kl:mnZ"), &us) == -1);
}

static void test_parse_int_text(void) {
    static const struct { const char *s; int rc; int64_t v; } cases[] = {
        { "0", 0, 0 }, { "42", 0, 42 }, { "+42", 0, 42 }, { "-42", 0, -42 },
        { "-0", 0, 0 }, { "007", 0, 7 }, { "  12 ", 0, 12 },
        { "\t\n\r\v\f12\n", 0, 12 }, { "1_000", 0, 1000 },
        { "1_2_3", 0, 123 }, { "9223372036854775807", 0, INT64_MAX },
        { "-9223372036854775808", 0, INT64_MIN },
        { "9223372036854775808", -1, 0 }, { "-9223372036854775809", -1, 0 },
        { "18446744073709551616", -1, 0 }, { "99999999999999999999", -1, 0 },
        { "", -1, 0 }, { "   ", -1, 0 }, { "+", -1, 0 }, { "-", -1, 0 },
        { "1__0", -1, 0 }, { "_1", -1, 0 }, { "1_", -1, 0 }, { "+_1", -1, 0 },
        { "1 2", -1, 0 }, { "0x10", -1, 0 }, { "1.0", -1, 0 }, { "1e3", -1, 0 },
        { "--1", -1, 0 }, { "+-1", -1, 0 }, { "12a", -1, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        size_t n = strlen(cases[i].s);
        const char *g = ut_guard(cases[i].s, n);
        int64_t v = 12345;
        int rc = parse_int_text((Str){ g, n }, &v);
        CHECKM(rc == cases[i].rc, cases[i].s);
        if (rc == 0 && cases[i].rc == 0) CHECKM(v == cases[i].v, cases[i].s);
    }
}

static void test_sha256(void) {
    static const struct { const char *in; const char *hex; } v[] = {
        { "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
        { "abc",
          "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
        { "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
        { "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
          "hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
          "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1" },
    };
    char out[65];
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        Sha256 s;
        sha256_init(&s);
        sha256_add(&s, v[i].in, strlen(v[i].in));
        sha256_hex(&s, out);
        CHECKM(strcmp(out, v[i].hex) == 0, v[i].in);
        /* The same input fed one byte at a time. */
        sha256_init(&s);
        for (size_t k = 0; v[i].in[k]; k++) sha256_add(&s, v[i].in + k, 1);
        sha256_hex(&s, out);
        CHECKM(strcmp(out, v[i].hex) == 0, v[i].in);
    }
    /* One million 'a' (FIPS 180-2 appendix B.3), in uneven chunks. */
    char *a = ut_rep('a', 1000);
    Sha256 s;
    sha256_init(&s);
    for (int i = 0; i < 1000; i++) sha256_add(&s, a, 1000);
    sha256_hex(&s, out);
    CHECK(strcmp(out, "cdc76e5c9914fb9281a1c7e284d73e67"
                      "f1809a48a497200e046d39ccc7112cd0") == 0);
    free(a);
}

/* The token compare: right answers for equal, unequal, prefix, longer,
 * empty, NUL-extended and maximal inputs (its timing is not asserted). */
static void test_token_compare(void) {
    char want[ARC_MAX_TOKEN + 1] = "s3cret-token";   /* NUL-padded */
    size_t n = strlen(want);
    CHECK(token_eq(STR_LIT("s3cret-token"), want, n));
    CHECK(!token_eq(STR_LIT("s3cret-tokeN"), want, n));
    CHECK(!token_eq(STR_LIT("S3cret-token"), want, n));
    CHECK(!token_eq(STR_LIT("s3cret-toke"), want, n));      /* a prefix */
    CHECK(!token_eq(STR_LIT("s3cret-token2"), want, n));    /* longer */
    CHECK(!token_eq(STR_LIT("s3cret-token\0"), want, n));   /* NUL-extended */
    CHECK(!token_eq(STR_LIT(""), want, n));
    char *big = ut_rep('x', ARC_MAX_TOKEN + 10);
    CHECK(!token_eq((Str){ big, ARC_MAX_TOKEN + 10 }, want, n));
    char full[ARC_MAX_TOKEN + 1];
    memcpy(full, big, ARC_MAX_TOKEN);
    full[ARC_MAX_TOKEN] = 0;
    CHECK(token_eq((Str){ big, ARC_MAX_TOKEN }, full, ARC_MAX_TOKEN));
    CHECK(!token_eq((Str){ big, ARC_MAX_TOKEN + 1 }, full, ARC_MAX_TOKEN));
    CHECK(!token_eq((Str){ big, ARC_MAX_TOKEN - 1 }, full, ARC_MAX_TOKEN));
    free(big);
    char none[ARC_MAX_TOKEN + 1] = "";
    CHECK(token_eq(STR_LIT(""), none, 0));
    CHECK(!token_eq(STR_LIT("a"), none, 0));
    /* opt_token pads what it returns, so token_eq() may read it to its end. */
    char out[ARC_MAX_TOKEN + 1], err[ARC_ERRLEN];
    memset(out, 'z', sizeof out);
    CHECK(opt_token("  abc  ", NULL, out, err) == 0 && strcmp(out, "abc") == 0);
    int padded = 1;
    for (size_t i = 3; i < sizeof out; i++) padded &= out[i] == 0;
    CHECK(padded);
    CHECK(token_eq(STR_LIT("abc"), out, 3));
    CHECK(opt_token("a b", NULL, out, err) == -1);
    CHECK(opt_token("a", "/nonexistent", out, err) == -1);
}

/* Found by tests/test_hostile.py: a hub out of descriptors died in
 * rand_bytes() ("cannot read /dev/urandom") making a relay file name or a
 * session id. Ids must still come with no descriptor left. */
static void test_rand_without_descriptors(void) {
    char a[37], b[37];
    uuid4(a);                             /* opens /dev/urandom (once) */
    struct rlimit old, low;
    CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0);
    int fds[64], n = 0;
    low = old;
    low.rlim_cur = 64;
    if (old.rlim_cur > 64 && setrlimit(RLIMIT_NOFILE, &low) == 0) {
        while (n < 64 && (fds[n] = open("/dev/null", O_RDONLY)) >= 0) n++;
        CHECK(open("/dev/null", O_RDONLY) < 0 && errno == EMFILE);
        uuid4(b);                         /* died here before the fix */
        CHECK(strlen(b) == 36 && strcmp(a, b) != 0);
        while (n) close(fds[--n]);
        CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0);
    }
}

static void test_uuid(void) {
    char u[37], w[37];
    uuid4(u);
    uuid4(w);
    CHECK(strlen(u) == 36);
    int ok = 1;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) ok &= u[i] == '-';
        else ok &= strchr("0123456789abcdef", u[i]) != NULL && u[i] != 0;
    }
    CHECK(ok);
    CHECK(u[14] == '4');
    CHECK(strchr("89ab", u[19]) != NULL && u[19] != 0);
    CHECK(strcmp(u, w) != 0);
    unsigned char r[64] = { 0 };
    rand_bytes(r, sizeof r);
    int nz = 0;
    for (size_t i = 0; i < sizeof r; i++) nz += r[i] != 0;
    CHECK(nz > 0);
    CHECK(clock_ms() > 0 && clock_wall_us() > 1700000000LL * 1000000);
}

/* ==== json ============================================================== */

static void test_utf8(void) {
    static const struct { const char *s; size_t n, len; } v[] = {
        { "A", 1, 1 }, { "\x7f", 1, 1 },
        { "\xc2\x80", 2, 2 }, { "\xdf\xbf", 2, 2 }, { "\xc3\xa9", 2, 2 },
        { "\xc0\x80", 2, 0 }, { "\xc1\xbf", 2, 0 },          /* overlong */
        { "\xe0\xa0\x80", 3, 3 }, { "\xe0\x9f\xbf", 3, 0 },  /* overlong */
        { "\xed\x9f\xbf", 3, 3 }, { "\xed\xa0\x80", 3, 0 },  /* surrogate */
        { "\xed\xbf\xbf", 3, 0 }, { "\xef\xbf\xbf", 3, 3 },
        { "\xf0\x90\x80\x80", 4, 4 }, { "\xf0\x8f\xbf\xbf", 4, 0 },
        { "\xf4\x8f\xbf\xbf", 4, 4 }, { "\xf4\x90\x80\x80", 4, 0 },
        { "\xf5\x80\x80\x80", 4, 0 }, { "\xff", 1, 0 }, { "\x80", 1, 0 },
        { "\xe2\x82", 2, 0 }, { "\xf0\x9f\x98", 3, 0 },      /* truncated */
        { "\xe2\x28\xa1", 3, 0 }, { "\xc3\x28", 2, 0 },      /* bad cont. */
    };
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        const char *g = ut_guard(v[i].s, v[i].n);
        char note[32];
        snprintf(note, sizeof note, "utf8 case %zu", i);
        CHECKM(utf8_len((const unsigned char *)g, v[i].n) == v[i].len, note);
        CHECKM(utf8_valid(g, v[i].n) == (v[i].len == v[i].n), note);
    }
    CHECK(utf8_valid("", 0));
    CHECK(utf8_valid("h\xc3\xa9llo \xf0\x9f\x98\x80", 11));
    CHECK(!utf8_valid("\xc3\xa9\xc3", 3));
    CHECK(!utf8_valid("a\0\xff", 3));
    CHECK(utf8_valid("a\0b", 3));
    CHECK(utf8_chars("", 0) == 0);
    CHECK(utf8_chars("abc", 3) == 3);
    CHECK(utf8_chars("h\xc3\xa9llo\xf0\x9f\x98\x80", 10) == 6);
    CHECK(utf8_chars("\xe2\x82\xac\xe2\x82\xac", 6) == 2);
}

/* The RFC 8259 §13 examples, and more. Every one must parse, and write,
 * re-parse and re-write to the same bytes. */
static const char *const json_valid[] = {
    "{\n  \"Image\": {\n    \"Width\":  800,\n    \"Height\": 600,\n"
    "    \"Title\":  \"View from 15th Floor\",\n    \"Thumbnail\": {\n"
    "      \"Url\":    \"http://www.example.com/image/481989943\",\n"
    "      \"Height\": 125,\n      \"Width\":  100\n    },\n"
    "    \"Animated\" : false,\n    \"IDs\": [116, 943, 234, 38793]\n  }\n}",
    "[\n  {\n    \"precision\": \"zip\",\n    \"Latitude\":  37.7668,\n"
    "    \"Longitude\": -122.3959,\n    \"Address\":   \"\",\n"
    "    \"City\":      \"SAN FRANCISCO\",\n    \"State\":     \"CA\",\n"
    "    \"Zip\":       \"94107\",\n    \"Country\":   \"US\"\n  },\n"
    "  {\n    \"precision\": \"zip\",\n    \"Latitude\":  37.371991,\n"
    "    \"Longitude\": -122.026020,\n    \"Address\":   \"\",\n"
    "    \"City\":      \"SUNNYVALE\",\n    \"State\":     \"CA\",\n"
    "    \"Zip\":       \"94085\",\n    \"Country\":   \"US\"\n  }\n]",
    "\"Hello world!\"", "42", "true", "false", "null",
    "0", "-0", "1", "-1", "123", "1.5", "-1.5", "0.5", "1e5", "1E5", "1e+5",
    "1e-5", "1.5e10", "-0.0e-0", "1234567890123456789012345", "0E0",
    "\"\"", "[]", "{}", "{\"\":\"\"}", "[[[]]]", "[{}]",
    "{\"a\":{\"b\":{\"c\":[1,{\"d\":null}]}}}",
    " \t\r\n[ 1 , 2 ]\n ", "[1,\"two\",[3],{\"four\":4},true,false,null]",
    "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\\u0000\"",
    "\"\\u00E9\\uD83D\\uDE00\\uffff\\u007f\\u0001\"",
    "\"\xc3\xa9\xf0\x9f\x98\x80\xef\xbf\xbf\xf4\x8f\xbf\xbf\x7f\"",
    "{\"a\":1,\"b\":2,\"a\":3}",
    "{\"\\u0061\":1,\"a\":2,\"\\u0062\":[{\"x\":1,\"x\":2}]}",
};

/* Each must fail to parse. */
static const struct { const char *s; size_t n; } json_invalid[] = {
#define J(s) { s, sizeof(s) - 1 }
    J(""), J("   "), J("[1,]"), J("{\"a\":1,}"), J("[,1]"), J("[1,,2]"),
    J("{,}"), J("{\"a\" 1}"), J("{\"a\":}"), J("{1:2}"), J("{'a':1}"),
    J("'a'"), J("01"), J("-01"), J("[01]"), J("1."), J("1.e5"), J(".5"),
    J("-"), J("+1"), J("1e"), J("1e+"), J("1E-"), J("--1"), J("0x10"),
    J("NaN"), J("Infinity"), J("-Infinity"), J("[NaN]"),
    J("\"\\x41\""), J("\"\\u12\""), J("\"\\u12"), J("\"\\u00g0\""),
    J("\"\\ud800\""), J("\"\\udc00\""), J("\"\\ud800\\u0041\""),
    J("\"\\ud800\\ud800\""), J("\"\\ud800x\""), J("\"\\udbff\\\""),
    J("\"abc"), J("\"\t\""), J("\"\x01\""), J("\"\x1f\""), J("\"\n\""),
    J("\"\xc0\x80\""), J("\"\xed\xa0\x80\""), J("\"\xf4\x90\x80\x80\""),
    J("\"\xff\""), J("\"\x80\""), J("\"\xe2\x82\""), J("\"\xf0\x9f\x98\""),
    J("\"\xc3\""), J("\xc3\xa9"), J("\xef\xbb\xbf{}"),
    J("[1] x"), J("[1]]"), J("{}{}"), J("1 2"), J("[1 2]"), J("tru"),
    J("nul"), J("True"), J("nulll"), J("[truee]"), J("["), J("{"),
    J("{\"a\""), J("{\"a\":"), J("{\"a\":1"), J("[1"), J("\"\\"),
    J("\"\\\""), J("\"\\u"), J("\0"), J("[\0]"), J("\"a\"\0"), J("\x0b 1"),
    J("\f1"),
#undef J
};

static void test_json_corpus(void) {
    Json j = { 0 }, k = { 0 };
    Buf w1 = { 0 }, w2 = { 0 };
    for (size_t i = 0; i < sizeof json_valid / sizeof *json_valid; i++) {
        const char *s = json_valid[i];
        size_t n = strlen(s);
        const char *g = ut_guard(s, n);
        int rc = json_parse(&j, g, n);
        CHECKM(rc == 0, s);
        if (rc) {
            fprintf(stderr, "  error: %s\n", j.err);
            continue;
        }
        CHECKM(j.t[0].next == j.nt, s);
        buf_reset(&w1);
        buf_reset(&w2);
        json_write(&w1, &j, 0);
        CHECKM(utf8_valid(w1.p, w1.len), s);
        CHECKM(json_parse(&k, w1.p, w1.len) == 0, s);
        json_write(&w2, &k, 0);
        CHECKM(w1.len == w2.len && memcmp(w1.p, w2.p, w1.len) == 0, s);
        CHECKM(k.t[0].type == j.t[0].type, s);
        for (uint32_t t = 0; t < j.nt; t++) {
            int64_t v;
            (void)json_to_i64(&j, t, &v);
            (void)json_truthy(&j, t);
            (void)json_pylen(&j, t);
            CHECKM(j.t[t].next > t && j.t[t].next <= j.nt, s);
        }
    }
    for (size_t i = 0; i < sizeof json_invalid / sizeof *json_invalid; i++) {
        const char *g = ut_guard(json_invalid[i].s, json_invalid[i].n);
        char note[96];
        snprintf(note, sizeof note, "invalid JSON #%zu", i);
        int rc = json_parse(&j, g, json_invalid[i].n);
        CHECKM(rc == -1 && j.err[0], note);
    }
    json_free(&j);
    json_free(&k);
    buf_free(&w1);
    buf_free(&w2);
}

/* Parse NUL-terminated s (guarded) into j; 0 on success. */
static int ut_json(Json *j, const char *s) {
    size_t n = strlen(s);
    const char *g = ut_guard(s, n);
    return json_parse(j, g, n);
}

/* Write token i of j compactly and compare with want. */
static int ut_write_is(const Json *j, uint32_t i, const char *want) {
    Buf b = { 0 };
    json_write(&b, j, i);
    int ok = strcmp(buf_cstr(&b), want) == 0 && b.len == strlen(want);
    if (!ok) fprintf(stderr, "  wrote: %s\n  want:  %s\n", buf_cstr(&b), want);
    buf_free(&b);
    return ok;
}

static int ut_tok_is(const Json *j, uint32_t i, const char *text) {
    return i && j->t[i].len == strlen(text) &&
           memcmp(j->src + j->t[i].off, text, j->t[i].len) == 0;
}

static void test_json_reader(void) {
    Json j = { 0 };
    Buf b = { 0 };

    /* The RFC 8259 image example: lookups and coercions. */
    CHECK(ut_json(&j, json_valid[0]) == 0);
    uint32_t img = json_get(&j, 0, "Image");
    CHECK(img && j.t[img].type == JSON_OBJ && j.t[img].n == 6);
    int64_t v = 0;
    uint32_t w = json_get(&j, img, "Width");
    CHECK(w && json_to_i64(&j, w, &v) == 0 && v == 800);
    uint32_t th = json_get(&j, img, "Thumbnail");
    CHECK(th && json_get(&j, th, "Width") &&
          json_to_i64(&j, json_get(&j, th, "Width"), &v) == 0 && v == 100);
    uint32_t ids = json_get(&j, img, "IDs");
    CHECK(ids && j.t[ids].type == JSON_ARR && j.t[ids].n == 4);
    CHECK(ut_tok_is(&j, ids + 4, "38793"));
    uint32_t an = json_get(&j, img, "Animated");
    CHECK(an && j.t[an].type == JSON_FALSE && !json_truthy(&j, an));
    uint32_t ti = json_get(&j, img, "Title");
    CHECK(ti && json_str_is(&j, ti, str_c("View from 15th Floor")));
    CHECK(json_get(&j, img, "width") == 0);          /* case-sensitive */
    CHECK(json_get(&j, 0, "Width") == 0);            /* not recursive */
    CHECK(json_get(&j, ids, "0") == 0);              /* not an object */
    CHECK(json_get(&j, w, "x") == 0);

    /* Duplicate keys: the last one wins, also when spelled with escapes. */
    CHECK(ut_json(&j, "{\"a\":1,\"b\":2,\"a\":3}") == 0);
    CHECK(ut_tok_is(&j, json_get(&j, 0, "a"), "3"));
    CHECK(ut_tok_is(&j, json_get(&j, 0, "b"), "2"));
    CHECK(ut_write_is(&j, 0, "{\"b\":2,\"a\":3}"));
    CHECK(ut_json(&j, "{\"a\":1,\"\\u0061\":2}") == 0);
    CHECK(ut_tok_is(&j, json_get(&j, 0, "a"), "2"));
    CHECK(ut_write_is(&j, 0, "{\"a\":2}"));
    CHECK(ut_json(&j, "{\"\\u0061\":[1],\"b\":{\"c\":1,\"c\":{\"d\":1,"
                      "\"d\":2}},\"a\":null}") == 0);
    CHECK(ut_write_is(&j, 0, "{\"b\":{\"c\":{\"d\":2}},\"a\":null}"));
    /* json_get_val: null counts as absent. */
    CHECK(json_get(&j, 0, "a") != 0 && json_get_val(&j, 0, "a") == 0);
    CHECK(json_get_val(&j, 0, "b") != 0);
    CHECK(json_get_val(&j, 0, "zz") == 0);
    /* Many members: still the last duplicate, in member order. */
    buf_reset(&b);
    buf_adds(&b, "{");
    for (int i = 0; i < 300; i++) buf_addf(&b, "%s\"k%d\":%d", i ? "," : "", i % 7, i);
    buf_adds(&b, "}");
    CHECK(json_parse(&j, b.p, b.len) == 0);
    CHECK(ut_tok_is(&j, json_get(&j, 0, "k0"), "294"));
    CHECK(ut_write_is(&j, 0, "{\"k6\":293,\"k0\":294,\"k1\":295,\"k2\":296,"
                             "\"k3\":297,\"k4\":298,\"k5\":299}"));

    /* Escapes: json_unescape and re-escaping in json_write. */
    CHECK(ut_json(&j, "[\"\\u00e9\",\"\\ud83d\\ude00\",\"a\\u0000b\","
                      "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\",\"plain\","
                      "\"\\u20AC\\u0041\"]") == 0);
    buf_reset(&b);
    json_unescape(&j, 1, &b);
    CHECK(BUF_IS(&b, "\xc3\xa9"));
    buf_reset(&b);
    json_unescape(&j, 2, &b);
    CHECK(BUF_IS(&b, "\xf0\x9f\x98\x80"));
    buf_reset(&b);
    json_unescape(&j, 3, &b);
    CHECK(BUF_IS(&b, "a\0b"));
    buf_reset(&b);
    json_unescape(&j, 4, &b);
    CHECK(BUF_IS(&b, "\"\\/\b\f\n\r\t"));
    buf_reset(&b);
    json_unescape(&j, 5, &b);
    CHECK(BUF_IS(&b, "plain"));
    buf_reset(&b);
    json_unescape(&j, 6, &b);
    CHECK(BUF_IS(&b, "\xe2\x82\xac" "A"));
    CHECK(j.t[1].esc && !j.t[5].esc);
    CHECK(json_str_is(&j, 1, str_c("\xc3\xa9")));
    CHECK(!json_str_is(&j, 1, str_c("e")));
    CHECK(json_str_is(&j, 5, str_c("plain")) && !json_str_is(&j, 0, str_c("")));
    CHECK(ut_write_is(&j, 0, "[\"\xc3\xa9\",\"\xf0\x9f\x98\x80\",\"a\\u0000b\","
                             "\"\\\"\\\\/\\u0008\\u000c\\n\\r\\t\",\"plain\","
                             "\"\xe2\x82\xac" "A\"]"));
    CHECK(ut_json(&j, " { \"a\" : [ 1 , true , -0.5e3 ] , \"b\" : { } } ") == 0);
    CHECK(ut_write_is(&j, 0, "{\"a\":[1,true,-0.5e3],\"b\":{}}"));
    CHECK(ut_write_is(&j, 2, "[1,true,-0.5e3]"));
    /* json_write_skip leaves out one top-level key. */
    buf_reset(&b);
    json_write_skip(&b, &j, 0, "a");
    CHECK(BUF_IS(&b, "{\"b\":{}}"));

    /* json_as_text: Python's str() of the value. */
    CHECK(ut_json(&j, "[\"a\\nb\",true,false,null,1.50,{\"k\" : [ ]}]") == 0);
    static const char *const as_text[] = { "a\nb", "True", "False", "None",
                                            "1.50", "{\"k\":[]}" };
    uint32_t c = 1;
    for (int i = 0; i < 6; i++, c = j.t[c].next) {
        buf_reset(&b);
        json_as_text(&b, &j, c);
        CHECKM(strcmp(buf_cstr(&b), as_text[i]) == 0, as_text[i]);
    }

    /* Depth: ARC_JSON_DEPTH levels parse, one more does not. */
    for (int obj = 0; obj < 2; obj++) {
        for (int extra = 0; extra < 2; extra++) {
            int d = ARC_JSON_DEPTH + extra;
            buf_reset(&b);
            for (int i = 0; i < d; i++) buf_adds(&b, obj ? "{\"a\":" : "[");
            buf_adds(&b, "1");
            for (int i = 0; i < d; i++) buf_adds(&b, obj ? "}" : "]");
            const char *g = ut_guard(b.p, b.len);
            int rc = json_parse(&j, g, b.len);
            CHECK(extra ? rc == -1 : rc == 0);
            if (extra) CHECK(strstr(j.err, "deeper") != NULL);
            if (!extra) CHECK(json_depth(&j, 0) == ARC_JSON_DEPTH);
        }
    }
    /* json_depth: what the hub bounds stored values by. */
    CHECK(ut_json(&j, "7") == 0 && json_depth(&j, 0) == 0);
    CHECK(ut_json(&j, "{}") == 0 && json_depth(&j, 0) == 1);
    CHECK(ut_json(&j, "[[1],{\"a\":[{}]},[]]") == 0 && json_depth(&j, 0) == 4);
    CHECK(json_depth(&j, 1) == 1 && json_depth(&j, j.t[1].next) == 3);
    CHECK(ut_json(&j, "[{\"a\":{}},{\"b\":[]}]") == 0 && json_depth(&j, 0) == 3);
    /* A deep array with no closing brackets fails on depth or on the end. */
    buf_reset(&b);
    for (int i = 0; i < 100000; i++) buf_addc(&b, '[');
    CHECK(json_parse(&j, b.p, b.len) == -1);

    /* A reused Json forgets the previous text. */
    CHECK(ut_json(&j, "[1,2,3]") == 0 && j.nt == 4);
    CHECK(ut_json(&j, "7") == 0 && j.nt == 1 && j.t[0].type == JSON_NUM);
    CHECK(ut_json(&j, "[1,") == -1);
    CHECK(ut_json(&j, "{}") == 0 && j.nt == 1 && j.t[0].type == JSON_OBJ);

    json_free(&j);
    CHECK(j.t == NULL && j.nt == 0);
    buf_free(&b);
}

static void test_json_coerce(void) {
    Json j = { 0 };
    static const struct { const char *s; int rc; int64_t v; } ints[] = {
        { "42", 0, 42 }, { "-42", 0, -42 }, { "-0", 0, 0 }, { "4.7", 0, 4 },
        { "-4.7", 0, -4 }, { "0.999", 0, 0 }, { "-0.999", 0, 0 },
        { "1e2", 0, 100 }, { "1E2", 0, 100 }, { "2.5e1", 0, 25 },
        { "1e18", 0, 1000000000000000000LL },
        { "1e400", -1, 0 }, { "-1e400", -1, 0 }, { "1e19", -1, 0 },
        { "1e-400", 0, 0 },
        { "9223372036854775807", 0, INT64_MAX },
        { "-9223372036854775808", 0, INT64_MIN },
        { "9223372036854775808", -1, 0 }, { "-9223372036854775809", -1, 0 },
        { "\"42\"", 0, 42 }, { "\"  12 \"", 0, 12 }, { "\"1_000\"", 0, 1000 },
        { "\"1__0\"", -1, 0 }, { "\"\\u0031\\u0032\"", 0, 12 },
        { "\"4.7\"", -1, 0 }, { "\"\"", -1, 0 }, { "\"x\"", -1, 0 },
        { "\"-7\"", 0, -7 }, { "\"+7\"", 0, 7 },
        { "true", 0, 1 }, { "false", 0, 0 }, { "null", -1, 0 },
        { "[]", -1, 0 }, { "{}", -1, 0 }, { "[1]", -1, 0 },
        /* A fraction longer than the 64-byte stack copy. */
        { "1.00000000000000000000000000000000000000000000000000000000000000000001",
          0, 1 },
        { "-12345.000000000000000000000000000000000000000000000000000000000000009",
          0, -12345 },
    };
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        CHECKM(ut_json(&j, ints[i].s) == 0, ints[i].s);
        int64_t v = 999;
        int rc = json_to_i64(&j, 0, &v);
        CHECKM(rc == ints[i].rc, ints[i].s);
        if (rc == 0 && ints[i].rc == 0) CHECKM(v == ints[i].v, ints[i].s);
    }

    /* Truthiness as Python's bool(). Members are followed by more text. */
    static const struct { const char *s; int t; } tru[] = {
        { "[null]", 0 }, { "[false]", 0 }, { "[true]", 1 }, { "[0]", 0 },
        { "[0.0]", 0 }, { "[-0]", 0 }, { "[0e5]", 0 }, { "[1]", 1 },
        { "[0.1]", 1 }, { "[-1]", 1 }, { "[1e-400]", 0 }, { "[\"\"]", 0 },
        { "[\"0\"]", 1 }, { "[\"a\"]", 1 }, { "[[]]", 0 }, { "[{}]", 0 },
        { "[[0]]", 1 }, { "[{\"a\":0}]", 1 }, { "[\"\\u0000\"]", 1 },
    };
    for (size_t i = 0; i < sizeof tru / sizeof *tru; i++) {
        CHECKM(ut_json(&j, tru[i].s) == 0, tru[i].s);
        CHECKM(json_truthy(&j, 1) == tru[i].t, tru[i].s);
    }
    /* Regression: a number's truthiness once came from strtod() on the
     * source, which is not NUL-terminated, so the bytes after the token
     * counted too. Parse only the first byte of "05" and of "1e-999": the
     * values are 0 and 1, so falsy and truthy. A root number that ends
     * the buffer is also read from a guarded page below. */
    CHECK(json_parse(&j, "05", 1) == 0 && json_truthy(&j, 0) == 0);
    CHECK(json_parse(&j, "1e-999", 1) == 0 && json_truthy(&j, 0) == 1);
    CHECK(ut_json(&j, "0") == 0 && json_truthy(&j, 0) == 0);
    CHECK(ut_json(&j, "-1.5e3") == 0 && json_truthy(&j, 0) == 1);
    json_free(&j);
}

static void test_json_pylen(void) {
    /* Expected: len(json.dumps(json.loads(s))) in Python 3, for inputs
     * whose numbers Python would print as written. */
    static const struct { const char *s; size_t len; } v[] = {
        { "{\"a\":[1,\"\xc3\xa9\"]}", 20 },   /* {"a": [1, "\u00e9"]} */
        { "{\"a\":[1,\"\\u00e9\"]}", 20 },
        { "\"\xf0\x9f\x98\x80\"", 14 },        /* "\ud83d\ude00" */
        { "\"\\ud83d\\ude00\"", 14 },
        { "{\"k\":\"\\u007f\\u0001\\n\"}", 23 },
        { "[]", 2 }, { "{}", 2 }, { "[true,false,null]", 19 },
        { "\"a\\\"b\\\\c/\"", 10 },            /* "a\"b\\c/" */
        { "\"\\b\\f\\n\\r\\t\"", 12 },
        { "\"\\u0000\\u001f\"", 14 },
        { "\"\xe2\x82\xac\"", 8 },             /* "\u20ac" */
        { "[1,[2,[3]],{}]", 17 },              /* [1, [2, [3]], {}] */
        { "{\"a\":1,\"b\":{\"c\":[]}}", 24 },  /* {"a": 1, "b": {"c": []}} */
        { "-12", 3 }, { "\"\"", 2 },
        /* Duplicate keys: Python keeps only the last, so json.dumps
         * gives '{"a": 2}' (8), not the length of both members. */
        { "{\"a\":1,\"a\":2}", 8 },
        { "{\"x\":\"yyyyyyyyyy\",\"x\":1}", 8 },
        { "[{\"a\":1,\"b\":2,\"a\":3}]", 18 },  /* [{"b": 2, "a": 3}] */
    };
    Json j = { 0 };
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        CHECKM(ut_json(&j, v[i].s) == 0, v[i].s);
        size_t n = json_pylen(&j, 0);
        CHECKM(n == v[i].len, v[i].s);
        if (n != v[i].len)
            fprintf(stderr, "  json_pylen = %zu, want %zu\n", n, v[i].len);
    }
    /* PROTOCOL §6: a 1000-character string of U+00E9 measures 6002. */
    Buf b = { 0 };
    buf_addc(&b, '"');
    for (int i = 0; i < 1000; i++) buf_adds(&b, "\xc3\xa9");
    buf_addc(&b, '"');
    CHECK(json_parse(&j, b.p, b.len) == 0 && json_pylen(&j, 0) == 6002);
    buf_free(&b);
    json_free(&j);
}

static void test_json_str(void) {
    Buf b = { 0 };
    Json j = { 0 };
    static const struct { const char *in; size_t n; const char *out; } v[] = {
#define S(in, out) { in, sizeof(in) - 1, out }
        S("", "\"\""),
        S("plain text", "\"plain text\""),
        S("a\"b\\c/d", "\"a\\\"b\\\\c/d\""),
        S("\n\r\t\b\f", "\"\\n\\r\\t\\u0008\\u000c\""),
        S("\x01\x1f\x7f", "\"\\u0001\\u001f\x7f\""),
        S("a\0b", "\"a\\u0000b\""),
        S("\xc3\xa9\xf0\x9f\x98\x80\xef\xbf\xbf", "\"\xc3\xa9\xf0\x9f\x98\x80\xef\xbf\xbf\""),
        /* Invalid UTF-8: every offending byte becomes U+FFFD. */
        S("a\xff" "b", "\"a\xef\xbf\xbd" "b\""),
        S("\xc0\x80", "\"\xef\xbf\xbd\xef\xbf\xbd\""),
        S("\xed\xa0\x80", "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\""),
        S("\xf4\x90\x80\x80", "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\""),
        S("x\xe2\x82", "\"x\xef\xbf\xbd\xef\xbf\xbd\""),
        S("\x80\"", "\"\xef\xbf\xbd\\\"\""),
        S("\xc3\xa9\xc3", "\"\xc3\xa9\xef\xbf\xbd\""),
#undef S
    };
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        buf_reset(&b);
        const char *g = ut_guard(v[i].in, v[i].n);
        json_str(&b, g, v[i].n);
        CHECKM(strcmp(buf_cstr(&b), v[i].out) == 0 && b.len == strlen(v[i].out),
               v[i].out);
        /* The output is always one valid JSON string. */
        CHECKM(json_parse(&j, b.p, b.len) == 0 && j.t[0].type == JSON_STR,
               v[i].out);
    }
    /* Every control character is escaped and decodes back to itself. */
    char ctl[32];
    for (int i = 0; i < 32; i++) ctl[i] = (char)i;
    buf_reset(&b);
    json_str(&b, ctl, 32);
    CHECK(json_parse(&j, b.p, b.len) == 0);
    Buf d = { 0 };
    json_unescape(&j, 0, &d);
    CHECK(d.len == 32 && memcmp(d.p, ctl, 32) == 0);
    buf_free(&d);
    /* The eight-at-a-time scan: every byte value at every position of a
     * plain string stops it exactly where a byte-wise scan stops. */
    char line[24];
    for (int c = 0; c < 256; c++)
        for (int at = 0; at < (int)sizeof line; at++) {
            memset(line, 'a', sizeof line);
            line[at] = (char)c;
            size_t want = (c >= 0x20 && c < 0x80 && c != '"' && c != '\\')
                              ? sizeof line : (size_t)at;
            CHECKM(json_plain_len(ut_guard(line, sizeof line), sizeof line) == want,
                   "json_plain_len");
        }
    buf_reset(&b);
    json_cstr(&b, "x");
    json_strs(&b, STR_LIT("y"));
    CHECK(BUF_IS(&b, "\"x\"\"y\""));
    buf_free(&b);
    json_free(&j);
}

/* ==== http ============================================================== */

static int ut_http(const char *s, size_t n, HttpReq *r) {
    const char *g = ut_guard(s, n);
    return http_parse(g, n, r);
}
#define HTTP(lit, r) ut_http((lit), sizeof(lit) - 1, (r))

static void test_http_valid(void) {
    static const char req[] =
        "POST /v1/messages?channel=general&limit=5 HTTP/1.1\r\n"
        "Host: localhost:6969\r\n"
        "Content-Type: application/json\r\n"
        "content-length:   13  \r\n"
        "Origin: http://localhost:6969\r\n"
        "Last-Event-ID: 7\r\n"
        "AUTHORIZATION: Bearer t0k\r\n"
        "Sec-Fetch-Site: same-origin\r\n"
        "X-Empty:\r\n"
        "\r\n"
        "{\"body\":\"hi\"}";
    size_t total = sizeof req - 1, head = total - 13;
    HttpReq r;
    int n = ut_http(req, total, &r);
    CHECK(n == (int)head);
    CHECK(ut_str_is(r.method, "POST"));
    CHECK(ut_str_is(r.target, "/v1/messages?channel=general&limit=5"));
    CHECK(ut_str_is(r.path, "/v1/messages"));
    CHECK(ut_str_is(r.query, "channel=general&limit=5"));
    CHECK(r.minor == 1 && r.keep_alive == 1 && !r.transfer_encoding);
    CHECK(r.content_length == 13);
    CHECK(ut_str_is(r.host, "localhost:6969"));
    CHECK(ut_str_is(r.origin, "http://localhost:6969"));
    CHECK(ut_str_is(r.last_event_id, "7"));
    CHECK(ut_str_is(r.authorization, "Bearer t0k"));
    CHECK(ut_str_is(r.sec_fetch_site, "same-origin"));
    CHECK(r.n_headers == 8);

    /* Every strict prefix of the head asks for more; the head and every
     * longer prefix give the head's length. */
    int again = 1, same = 1;
    for (size_t k = 0; k < head; k++) again &= ut_http(req, k, &r) == ARC_AGAIN;
    for (size_t k = head; k <= total; k++) same &= ut_http(req, k, &r) == (int)head;
    CHECK(again);
    CHECK(same);

    /* The same with bare LF line ends. */
    static const char lf[] = "GET /a/b?x=1 HTTP/1.1\nHost: h\nConnection: close\n\n";
    n = HTTP(lf, &r);
    CHECK(n == (int)sizeof lf - 1);
    CHECK(ut_str_is(r.path, "/a/b") && ut_str_is(r.query, "x=1"));
    CHECK(ut_str_is(r.host, "h") && r.keep_alive == 0 && r.n_headers == 2);
    again = 1;
    for (size_t k = 0; k < sizeof lf - 1; k++) again &= ut_http(lf, k, &r) == ARC_AGAIN;
    CHECK(again);
    /* Mixed line ends. */
    n = HTTP("GET / HTTP/1.1\r\nHost: m\n\r\n", &r);
    CHECK(n == 16 + 8 + 2 && ut_str_is(r.host, "m"));

    /* No headers, no query, no body. */
    n = HTTP("GET / HTTP/1.1\r\n\r\n", &r);
    CHECK(n == 18 && ut_str_is(r.path, "/") && r.query.n == 0 &&
          r.query.p != NULL && r.content_length == -1 && r.host.n == 0 &&
          r.n_headers == 0 && r.keep_alive == 1);
    n = HTTP("DELETE /v1/x? HTTP/1.1\r\n\r\n", &r);
    CHECK(n > 0 && ut_str_is(r.path, "/v1/x") && r.query.n == 0);

    /* Leading empty lines are skipped and counted in the head. */
    n = HTTP("\r\n\n\r\nGET /z HTTP/1.1\r\n\r\n", &r);
    CHECK(n == 5 + 19 && ut_str_is(r.path, "/z"));
    CHECK(HTTP("\r\n\r\n", &r) == ARC_AGAIN);

    /* Two pipelined requests: the first parse returns the first head. */
    static const char two[] = "GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
                              "GET /second HTTP/1.1\r\nHost: b\r\n\r\n";
    n = HTTP(two, &r);
    CHECK(n == 32 && ut_str_is(r.path, "/first") && ut_str_is(r.host, "a"));
    if (n == 32) {
        int m = ut_http(two + n, sizeof two - 1 - (size_t)n, &r);
        CHECK(m == 33 && ut_str_is(r.path, "/second") && ut_str_is(r.host, "b"));
    }
    /* With a body in between: the head length excludes the body. */
    static const char body2[] = "POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\n"
                                "abcGET /q HTTP/1.1\r\n\r\n";
    n = HTTP(body2, &r);
    CHECK(n == 39 && r.content_length == 3);
    if (n == 39) {
        CHECK(ut_http(body2 + 42, sizeof body2 - 1 - 42, &r) == 19 &&
              ut_str_is(r.path, "/q"));
    }

    /* Keep-alive defaults and the Connection header. */
    CHECK(HTTP("GET / HTTP/1.0\r\n\r\n", &r) > 0 && r.minor == 0 &&
          r.keep_alive == 0);
    CHECK(HTTP("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r) > 0 &&
          r.keep_alive == 1);
    CHECK(HTTP("GET / HTTP/1.0\r\nConnection: Keep-Alive, TE\r\n\r\n", &r) > 0 &&
          r.keep_alive == 1);
    CHECK(HTTP("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", &r) > 0 &&
          r.minor == 1 && r.keep_alive == 0);
    CHECK(HTTP("GET / HTTP/1.1\r\nconnection: TE, CLOSE\r\n\r\n", &r) > 0 &&
          r.keep_alive == 0);
    CHECK(HTTP("GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n", &r) > 0 &&
          r.keep_alive == 1);
    CHECK(HTTP("GET / HTTP/1.1\r\nConnection: closed\r\n\r\n", &r) > 0 &&
          r.keep_alive == 1);

    /* Content-Length: repeated with the same value, leading zeros, zero. */
    CHECK(HTTP("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
               &r) > 0 && r.content_length == 5);
    CHECK(HTTP("POST / HTTP/1.1\r\nContent-Length: 007\r\n\r\n", &r) > 0 &&
          r.content_length == 7);
    CHECK(HTTP("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &r) > 0 &&
          r.content_length == 0);
    CHECK(HTTP("POST / HTTP/1.1\r\nContent-Length: 999999999999999\r\n\r\n",
               &r) > 0 && r.content_length == 999999999999999LL);
    /* Tabs inside and around a value are fine; methods are tokens. */
    CHECK(HTTP("GET / HTTP/1.1\r\nX-A:\ta\tb\t\r\n\r\n", &r) > 0);
    CHECK(HTTP("M-SEARCH / HTTP/1.1\r\n\r\n", &r) > 0 &&
          ut_str_is(r.method, "M-SEARCH"));
}

static void test_http_errors(void) {
    HttpReq r;
    /* PROTOCOL §4.2: the status and the exact error text. */
    static const char m_line[] = "malformed request line",
                      m_method[] = "malformed request method",
                      m_ver[] = "HTTP version not supported",
                      m_slash[] = "request target must start with '/'",
                      m_tchars[] = "request target has invalid characters",
                      m_hline[] = "malformed header line",
                      m_hname[] = "malformed header name",
                      m_ctl[] = "control character in header value",
                      m_fold[] = "obsolete header line folding",
                      m_te[] = "Transfer-Encoding (chunked) request bodies "
                               "are not supported; send Content-Length",
                      m_cl[] = "invalid Content-Length",
                      m_cl2[] = "conflicting Content-Length headers";
    static const struct {
        const char *s;
        size_t n;
        int status;
        const char *msg;
    } bad[] = {
#define B(s, st, m) { s, sizeof(s) - 1, st, m }
        B("GARBAGE\r\n\r\n", 400, m_line),
        B("GET\r\n\r\n", 400, m_line),
        B("GET /\r\n\r\n", 400, m_line),
        B(" / HTTP/1.1\r\n\r\n", 400, m_line),
        B("GET  / HTTP/1.1\r\n\r\n", 400, m_line),
        B("GET / HTTP/1.1 \r\n\r\n", 400, m_line),
        B("GET /a b HTTP/1.1\r\n\r\n", 400, m_line),
        B("GET / HTTP/1.10\r\n\r\n", 400, m_line),
        B("GET / http/1.1\r\n\r\n", 400, m_line),
        B("GET / HTTP/1.1\r\r\n\r\n", 400, m_line),
        B("G(T / HTTP/1.1\r\n\r\n", 400, m_method),
        B("G\xc3\xa9T / HTTP/1.1\r\n\r\n", 400, m_method),
        B("GET / HTTP/2.0\r\n\r\n", 505, m_ver),
        B("GET / HTTP/1.2\r\n\r\n", 505, m_ver),
        B("GET / HTTP/0.9\r\n\r\n", 505, m_ver),
        B("GET x HTTP/1.1\r\n\r\n", 400, m_slash),
        B("GET * HTTP/1.1\r\n\r\n", 400, m_slash),
        B("GET http://a/ HTTP/1.1\r\n\r\n", 400, m_slash),
        B("GET /\x7f HTTP/1.1\r\n\r\n", 400, m_tchars),
        B("GET /\xc3\xa9 HTTP/1.1\r\n\r\n", 400, m_tchars),
        B("GET /\t HTTP/1.1\r\n\r\n", 400, m_tchars),
        B("GET /\0 HTTP/1.1\r\n\r\n", 400, m_tchars),
        B("POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400, m_cl),
        B("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, m_cl),
        B("POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n", 400, m_cl),
        B("POST / HTTP/1.1\r\nContent-Length: 1.0\r\n\r\n", 400, m_cl),
        B("POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", 400, m_cl),
        B("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n", 400, m_cl),
        B("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", 400, m_cl),
        B("POST / HTTP/1.1\r\nContent-Length: 1234567890123456\r\n\r\n", 400, m_cl),
        B("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
          400, m_cl2),
        B("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411, m_te),
        B("POST / HTTP/1.1\r\ntransfer-encoding: identity\r\n\r\n", 411, m_te),
        B("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
          "Content-Length: 5\r\n\r\n", 411, m_te),
        B("GET / HTTP/1.1\r\nHost x\r\n\r\n", 400, m_hline),
        B("GET / HTTP/1.1\r\n: x\r\n\r\n", 400, m_hline),
        B("GET / HTTP/1.1\r\nHo st: x\r\n\r\n", 400, m_hname),
        B("GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400, m_hname),
        B("GET / HTTP/1.1\r\nH\xc3\xa9: x\r\n\r\n", 400, m_hname),
        B("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400, m_fold),
        B("GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", 400, m_fold),
        B("GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400, m_fold),
        B("GET / HTTP/1.1\r\nX: a\x01" "b\r\n\r\n", 400, m_ctl),
        B("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400, m_ctl),
        B("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", 400, m_ctl),
#undef B
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char note[64];
        snprintf(note, sizeof note, "bad request #%zu", i);
        r.err_status = 0;
        int n = ut_http(bad[i].s, bad[i].n, &r);
        CHECKM(n == ARC_BAD, note);
        CHECKM(r.err_status == bad[i].status, note);
        CHECKM(r.err_msg && strcmp(r.err_msg, bad[i].msg) == 0, note);
        /* An invalid head is judged only once it is complete. */
        int again = 1;
        for (size_t k = 0; k + 2 < bad[i].n; k++)
            again &= ut_http(bad[i].s, k, &r) == ARC_AGAIN;
        CHECKM(again, note);
    }
    CHECK(HTTP("GARBAGE", &r) == ARC_AGAIN);

    /* 414: the request line is limited to ARC_MAX_URL bytes (LF counted
     * as the end; with CRLF the CR counts as part of the line). */
    Buf b = { 0 };
    size_t fixed = strlen("GET / HTTP/1.1");
    char *pad = ut_rep('a', ARC_MAX_URL + 10);
    buf_adds(&b, "GET /");
    buf_add(&b, pad, ARC_MAX_URL - fixed);            /* line = MAX_URL */
    buf_adds(&b, " HTTP/1.1\n\n");
    int n = ut_http(b.p, b.len, &r);
    CHECK(n == (int)b.len && r.path.n == ARC_MAX_URL - fixed + 1);
    buf_reset(&b);
    buf_adds(&b, "GET /");
    buf_add(&b, pad, ARC_MAX_URL - fixed - 1);        /* line + CR = MAX_URL */
    buf_adds(&b, " HTTP/1.1\r\n\r\n");
    CHECK(ut_http(b.p, b.len, &r) == (int)b.len);
    buf_reset(&b);
    buf_adds(&b, "GET /");
    buf_add(&b, pad, ARC_MAX_URL - fixed + 1);        /* line = MAX_URL + 1 */
    buf_adds(&b, " HTTP/1.1\n\n");
    CHECK(ut_http(b.p, b.len, &r) == ARC_BAD && r.err_status == 414 &&
          strcmp(r.err_msg, "request line too long") == 0);
    buf_reset(&b);
    buf_adds(&b, "GET /");
    buf_add(&b, pad, ARC_MAX_URL);                    /* no line end yet */
    CHECK(ut_http(b.p, b.len, &r) == ARC_BAD && r.err_status == 414);
    CHECK(ut_http(b.p, ARC_MAX_URL, &r) == ARC_AGAIN);
    CHECK(ut_http(b.p, ARC_MAX_URL + 1, &r) == ARC_BAD && r.err_status == 414);
    free(pad);

    /* 431: the head (request line + headers + blank line) is limited to
     * ARC_MAX_HEAD bytes. One long header fills it exactly, then by one
     * byte more. */
    static const char line[] = "GET / HTTP/1.1\r\n";
    size_t hfix = strlen(line) + strlen("X: \r\n\r\n");
    pad = ut_rep('b', ARC_MAX_HEAD);
    buf_reset(&b);
    buf_adds(&b, line);
    buf_adds(&b, "X: ");
    buf_add(&b, pad, ARC_MAX_HEAD - hfix);
    buf_adds(&b, "\r\n\r\n");
    CHECK(b.len == ARC_MAX_HEAD && ut_http(b.p, b.len, &r) == ARC_MAX_HEAD);
    buf_reset(&b);
    buf_adds(&b, line);
    buf_adds(&b, "X: ");
    buf_add(&b, pad, ARC_MAX_HEAD - hfix + 1);
    buf_adds(&b, "\r\n\r\n");
    CHECK(ut_http(b.p, b.len, &r) == ARC_BAD && r.err_status == 431 &&
          strcmp(r.err_msg, "request head too large") == 0);
    /* Many medium headers. */
    buf_reset(&b);
    buf_adds(&b, line);
    for (int i = 0; i < 40; i++) buf_addf(&b, "X-Pad-%d: %.*s\r\n", i, 500, pad);
    buf_adds(&b, "\r\n");
    CHECK(ut_http(b.p, b.len, &r) == ARC_BAD && r.err_status == 431);
    /* A head that never ends: 431 as soon as it passes the limit. */
    buf_reset(&b);
    buf_adds(&b, line);
    for (int i = 0; i < 30; i++) buf_addf(&b, "X-%d: %.*s\r\n", i, 600, pad);
    CHECK(b.len > ARC_MAX_HEAD + 1);
    CHECK(ut_http(b.p, ARC_MAX_HEAD + 1, &r) == ARC_BAD && r.err_status == 431);
    CHECK(ut_http(b.p, ARC_MAX_HEAD, &r) == ARC_AGAIN);
    CHECK(ut_http(b.p, b.len, &r) == ARC_BAD && r.err_status == 431);
    /* A header line that never ends. */
    buf_reset(&b);
    buf_adds(&b, line);
    buf_adds(&b, "X: ");
    buf_add(&b, pad, ARC_MAX_HEAD);
    CHECK(ut_http(b.p, b.len, &r) == ARC_BAD && r.err_status == 431);
    CHECK(ut_http(b.p, ARC_MAX_HEAD, &r) == ARC_AGAIN);
    /* Only empty lines, more than the head allows. */
    buf_reset(&b);
    for (int i = 0; i <= ARC_MAX_HEAD / 2; i++) buf_adds(&b, "\r\n");
    CHECK(ut_http(b.p, b.len, &r) == ARC_BAD && r.err_status == 431);
    free(pad);

    /* 431: at most ARC_MAX_HEADERS header lines. */
    for (int extra = 0; extra < 2; extra++) {
        buf_reset(&b);
        buf_adds(&b, line);
        for (int i = 0; i < ARC_MAX_HEADERS + extra; i++)
            buf_addf(&b, "X-%d: y\r\n", i);
        buf_adds(&b, "\r\n");
        n = ut_http(b.p, b.len, &r);
        if (extra) CHECK(n == ARC_BAD && r.err_status == 431 &&
                         strcmp(r.err_msg, "too many header lines") == 0);
        else CHECK(n == (int)b.len && r.n_headers == ARC_MAX_HEADERS);
    }
    buf_free(&b);
}

/* ---- responses (the client side) ---- */

static int ut_resp(const char *s, size_t n, HttpResp *r) {
    const char *g = ut_guard(s, n);
    return http_parse_response(g, n, r);
}
#define RESP(lit, r) ut_resp((lit), sizeof(lit) - 1, (r))

/* Every strict prefix of s[0..n) is ARC_AGAIN, and every longer input
 * gives the head's length. */
static int ut_resp_prefixes(const char *s, size_t n, int head) {
    HttpResp r;
    int ok = 1;
    for (size_t k = 0; k < (size_t)head; k++) ok &= ut_resp(s, k, &r) == ARC_AGAIN;
    for (size_t k = (size_t)head; k <= n; k++) ok &= ut_resp(s, k, &r) == head;
    return ok;
}

static void test_http_response_valid(void) {
    /* What the hub sends (http_head), with a body. */
    static const char ok[] =
        "HTTP/1.1 200 OK\r\n"
        "Content-Type: application/json\r\n"
        "Content-Length: 11\r\n"
        "Connection: keep-alive\r\n"
        "\r\n"
        "{\"ok\":true}";
    size_t total = sizeof ok - 1, head = total - 11;
    HttpResp r;
    int n = ut_resp(ok, total, &r);
    CHECK(n == (int)head);
    CHECK(r.minor == 1 && r.status == 200 && ut_str_is(r.reason, "OK"));
    CHECK(ut_str_is(r.content_type, "application/json"));
    CHECK(r.body == HTTP_BODY_LENGTH && r.content_length == 11 && !r.close);
    CHECK(r.n_headers == 3);
    CHECK(ut_resp_prefixes(ok, total, n));

    /* Bare LF, HTTP/1.0 (closes unless kept alive), no reason phrase. */
    static const char lf[] = "HTTP/1.0 404\nContent-Length: 0\n\n";
    n = RESP(lf, &r);
    CHECK(n == (int)sizeof lf - 1 && r.minor == 0 && r.status == 404 &&
          r.reason.n == 0 && r.close && r.content_length == 0);
    CHECK(ut_resp_prefixes(lf, sizeof lf - 1, n));
    CHECK(RESP("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\n"
               "Content-Length: 2\r\n\r\n", &r) > 0 && !r.close);
    CHECK(RESP("HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\n", &r) > 0 &&
          r.reason.n == 0 && r.status == 200);
    CHECK(RESP("HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
               "Content-Length: 2\r\n\r\n", &r) > 0 && r.close &&
          r.status == 503 && ut_str_is(r.reason, "Service Unavailable"));
    /* Connection: close is not undone by a later keep-alive. */
    CHECK(RESP("HTTP/1.1 200 OK\r\nConnection: close\r\nConnection: keep-alive\r\n"
               "Content-Length: 0\r\n\r\n", &r) > 0 && r.close);
    CHECK(RESP("HTTP/1.1 200 OK\r\nConnection: TE, Close\r\n"
               "Content-Length: 0\r\n\r\n", &r) > 0 && r.close);

    /* An SSE stream (the hub's /v1/stream head): read until the close,
     * as it would be without Connection: close too. */
    static const char sse[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                              "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n"
                              "X-Arc-Instance: 0f1e\r\nConnection: close\r\n"
                              "\r\nretry: 1000\n\n";
    n = RESP(sse, &r);
    CHECK(n == (int)sizeof sse - 1 - 13 && r.body == HTTP_BODY_CLOSE &&
          r.close && r.content_length == -1 &&
          ut_str_is(r.content_type, "text/event-stream"));
    CHECK(ut_resp_prefixes(sse, sizeof sse - 1, n));
    CHECK(RESP("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n", &r) > 0 &&
          r.body == HTTP_BODY_CLOSE && r.close);

    /* Transfer-Encoding: chunked only when it comes last. */
    CHECK(RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &r) > 0 &&
          r.body == HTTP_BODY_CHUNKED && !r.close && r.content_length == -1);
    CHECK(RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n", &r) > 0 &&
          r.body == HTTP_BODY_CHUNKED);
    CHECK(RESP("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", &r) > 0 &&
          r.body == HTTP_BODY_CLOSE && r.close);

    /* Heads that never have a body, whatever they say. */
    CHECK(RESP("HTTP/1.1 204 No Content\r\n\r\n", &r) > 0 &&
          r.body == HTTP_BODY_LENGTH && r.content_length == 0 && !r.close);
    CHECK(RESP("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", &r) > 0 &&
          r.content_length == 0);
    CHECK(RESP("HTTP/1.1 100 Continue\r\n\r\n", &r) == 25 && r.status == 100 &&
          r.content_length == 0);
    CHECK(RESP("HTTP/1.1 599 x\r\n\r\n", &r) > 0 && r.status == 599);

    /* Content-Length: repeated with the same value, leading zeros. */
    CHECK(RESP("HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 005\r\n\r\n",
               &r) > 0 && r.content_length == 5);
    CHECK(RESP("HTTP/1.1 200 OK\r\nContent-Length: 999999999999999\r\n\r\n", &r) > 0 &&
          r.content_length == 999999999999999LL);
    /* obs-text in the reason and in values; tabs; empty values. */
    CHECK(RESP("HTTP/1.1 200 \xc3\x89t\tat\r\nX: \xff\t\r\nY:\r\n\r\n", &r) > 0 &&
          r.n_headers == 2);
    /* The head ends at the first blank line; what follows is body. */
    CHECK(RESP("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\r\n\r\n", &r) == 38);
}

static void test_http_response_errors(void) {
    static const struct {
        const char *s;
        size_t n;
        const char *msg;
    } bad[] = {
#define B(s, m) { s, sizeof(s) - 1, m }
        B("HTTP/2 200 OK\r\n\r\n", "not an HTTP/1.x response"),
        B("http/1.1 200 OK\r\n\r\n", "not an HTTP/1.x response"),
        B("\r\nHTTP/1.1 200 OK\r\n\r\n", "not an HTTP/1.x response"),
        B("<html>", "not an HTTP/1.x response"),
        B("HTTP/1.1 200OK\r\n\r\n", "malformed status line"),
        B("HTTP/1.1  200 OK\r\n\r\n", "malformed status line"),
        B("HTTP/1.1 20\r\n\r\n", "malformed status line"),
        B("HTTP/1.11 200 OK\r\n\r\n", "malformed status line"),
        B("HTTP/1.\r\n\r\n", "malformed status line"),
        B("HTTP/1.2 200 OK\r\n\r\n", "HTTP version not supported"),
        B("HTTP/1.1 2x0 OK\r\n\r\n", "malformed status code"),
        B("HTTP/1.1 099 OK\r\n\r\n", "malformed status code"),
        B("HTTP/1.1 600 OK\r\n\r\n", "malformed status code"),
        B("HTTP/1.1 -20 OK\r\n\r\n", "malformed status code"),
        B("HTTP/1.1 200 O\x01K\r\n\r\n", "control character in reason phrase"),
        B("HTTP/1.1 200 O\rK\r\n\r\n", "control character in reason phrase"),
        B("HTTP/1.1 200 OK\r\nX\r\n\r\n", "malformed header line"),
        B("HTTP/1.1 200 OK\r\n: v\r\n\r\n", "malformed header line"),
        B("HTTP/1.1 200 OK\r\nX Y: v\r\n\r\n", "malformed header name"),
        B("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "obsolete header line folding"),
        B("HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n", "control character in header value"),
        B("HTTP/1.1 200 OK\r\nX: a\x7f\r\n\r\n", "control character in header value"),
        B("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
        B("HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n", "invalid Content-Length"),
        B("HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", "invalid Content-Length"),
        B("HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456\r\n\r\n",
          "invalid Content-Length"),
        B("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
          "conflicting Content-Length headers"),
        B("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
          "both Transfer-Encoding and Content-Length"),
#undef B
    };
    HttpResp r;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char note[64];
        snprintf(note, sizeof note, "bad response #%zu", i);
        r.err_msg = NULL;
        CHECKM(ut_resp(bad[i].s, bad[i].n, &r) == ARC_BAD, note);
        CHECKM(r.err_msg && strcmp(r.err_msg, bad[i].msg) == 0, note);
        /* A prefix may ask for more or fail, never succeed. */
        int never = 1;
        for (size_t k = 0; k < bad[i].n; k++) never &= ut_resp(bad[i].s, k, &r) < 0;
        CHECKM(never, note);
    }
    /* What cannot begin a status line fails at once. */
    CHECK(RESP("X", &r) == ARC_BAD);
    CHECK(RESP("HTTP/1.", &r) == ARC_AGAIN);
    CHECK(ut_resp(NULL, 0, &r) == ARC_AGAIN);
    /* A complete status line is judged only with the whole head. */
    CHECK(RESP("HTTP/1.1 2x0 OK\r\n", &r) == ARC_AGAIN);

    /* The head is limited to ARC_MAX_HEAD bytes: exactly that is fine. */
    static const char line[] = "HTTP/1.1 200 OK\r\n";
    size_t fix = strlen(line) + strlen("X: \r\n\r\n");
    char *pad = ut_rep('b', ARC_MAX_HEAD);
    Buf b = { 0 };
    buf_adds(&b, line);
    buf_adds(&b, "X: ");
    buf_add(&b, pad, ARC_MAX_HEAD - fix);
    buf_adds(&b, "\r\n\r\n");
    CHECK(b.len == ARC_MAX_HEAD && ut_resp(b.p, b.len, &r) == ARC_MAX_HEAD);
    buf_reset(&b);
    buf_adds(&b, line);
    buf_adds(&b, "X: ");
    buf_add(&b, pad, ARC_MAX_HEAD - fix + 1);
    buf_adds(&b, "\r\n\r\n");
    CHECK(ut_resp(b.p, b.len, &r) == ARC_BAD &&
          strcmp(r.err_msg, "response head too large") == 0);
    /* A head that never ends fails once it passes the limit. */
    buf_reset(&b);
    buf_adds(&b, line);
    buf_adds(&b, "X: ");
    buf_add(&b, pad, ARC_MAX_HEAD);
    CHECK(ut_resp(b.p, ARC_MAX_HEAD, &r) == ARC_AGAIN);
    CHECK(ut_resp(b.p, ARC_MAX_HEAD + 1, &r) == ARC_BAD);
    buf_reset(&b);
    buf_add(&b, "HTTP/1.1 ", 9);
    buf_add(&b, pad, ARC_MAX_HEAD);
    CHECK(ut_resp(b.p, b.len, &r) == ARC_BAD &&
          strcmp(r.err_msg, "response head too large") == 0);
    free(pad);
    /* At most ARC_MAX_HEADERS header lines. */
    for (int extra = 0; extra < 2; extra++) {
        buf_reset(&b);
        buf_adds(&b, line);
        for (int i = 0; i < ARC_MAX_HEADERS + extra; i++) buf_addf(&b, "X-%d: y\r\n", i);
        buf_adds(&b, "\r\n");
        int n = ut_resp(b.p, b.len, &r);
        if (extra) CHECK(n == ARC_BAD && strcmp(r.err_msg, "too many header lines") == 0);
        else CHECK(n == (int)b.len && r.n_headers == ARC_MAX_HEADERS);
    }
    buf_free(&b);
}

/* ---- the client's reader, over a socketpair ---- */

/* Call GET / on a Client whose connection is one end of a socketpair,
 * after the "hub" wrote `resp` (then shut its side when `shut`). Returns
 * client_call's result; *c is left for the caller to look at and free. */
static int ut_client(Client *c, const char *resp, size_t n, int shut,
                     int *status, Buf *out, char err[ARC_ERRLEN]) {
    int sv[2];
    char e[ARC_ERRLEN];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) die("socketpair: %s", strerror(errno));
    client_url(c, "http://127.0.0.1:1", e);   /* port 1: a retry is refused */
    c->fd = sv[0];
    fd_nonblock(sv[0]);
    if (n && write(sv[1], resp, n) != (ssize_t)n) die("write: %s", strerror(errno));
    if (shut) shutdown(sv[1], SHUT_WR);
    err[0] = 0;
    *status = 0;
    int rc = client_call(c, "GET", "/", (Str){ NULL, 0 }, 200, status, out, err);
    close(sv[1]);
    return rc;
}
#define UT_CLIENT(c, lit, shut, st, out, err) \
    ut_client((c), (lit), sizeof(lit) - 1, (shut), (st), (out), (err))

static void test_client_read(void) {
    Client c;
    Buf out = { 0 };
    char err[ARC_ERRLEN];
    int st;
    /* Content-Length, kept alive: the connection stays open. */
    int rc = UT_CLIENT(&c, "HTTP/1.1 201 Created\r\nContent-Length: 11\r\n\r\n"
                       "{\"ok\":true}", 0, &st, &out, err);
    CHECK(rc == 0 && st == 201 && BUF_IS(&out, "{\"ok\":true}") && c.fd >= 0);
    client_free(&c);
    /* An interim 100 first; Connection: close closes after the body. */
    rc = UT_CLIENT(&c, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
                   "Connection: close\r\nContent-Length: 2\r\n\r\n{}", 0, &st, &out, err);
    CHECK(rc == 0 && st == 200 && BUF_IS(&out, "{}") && c.fd < 0);
    client_free(&c);
    /* No framing: the body is everything until the close. */
    rc = UT_CLIENT(&c, "HTTP/1.0 200 OK\r\n\r\nuntil the end", 1, &st, &out, err);
    CHECK(rc == 0 && st == 200 && BUF_IS(&out, "until the end") && c.fd < 0);
    client_free(&c);
    /* Bodies past ARC_CLIENT_MAX_BODY (4096 here), declared or not. */
    rc = UT_CLIENT(&c, "HTTP/1.1 200 OK\r\nContent-Length: 4097\r\n\r\n{", 0,
                   &st, &out, err);
    CHECK(rc == -1 && strstr(err, "larger than ARC_CLIENT_MAX_BODY") && c.fd < 0);
    client_free(&c);
    Buf big = { 0 };
    buf_adds(&big, "HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n");
    char *pad = ut_rep('x', 4097);
    buf_add(&big, pad, 4096);
    rc = ut_client(&c, big.p, big.len, 0, &st, &out, err);
    CHECK(rc == 0 && out.len == 4096);
    client_free(&c);
    /* Bytes beyond a complete body do not count against the limit. */
    buf_reset(&big);
    buf_adds(&big, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    buf_add(&big, pad, 4097);
    rc = ut_client(&c, big.p, big.len, 0, &st, &out, err);
    CHECK(rc == 0 && BUF_IS(&out, "{}"));
    client_free(&c);
    buf_reset(&big);
    buf_adds(&big, "HTTP/1.1 200 OK\r\n\r\n");
    buf_add(&big, pad, 4097);
    rc = ut_client(&c, big.p, big.len, 1, &st, &out, err);
    CHECK(rc == -1 && strstr(err, "larger than ARC_CLIENT_MAX_BODY"));
    client_free(&c);
    free(pad);
    buf_free(&big);
    /* Chunked bodies and malformed heads are refused with a reason. */
    rc = UT_CLIENT(&c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "2\r\n{}\r\n0\r\n\r\n", 0, &st, &out, err);
    CHECK(rc == -1 && strstr(err, "chunked") && c.fd < 0);
    client_free(&c);
    rc = UT_CLIENT(&c, "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", 0, &st, &out, err);
    CHECK(rc == -1 && strstr(err, "invalid Content-Length"));
    client_free(&c);
    rc = UT_CLIENT(&c, "SSH-2.0-OpenSSH\r\n", 0, &st, &out, err);
    CHECK(rc == -1 && strstr(err, "not an HTTP/1.x response"));
    client_free(&c);
    /* Cut short: mid-head, mid-body. */
    rc = UT_CLIENT(&c, "HTTP/1.1 200 OK\r\nContent-", 1, &st, &out, err);
    CHECK(rc == -1 && strstr(err, "closed mid-response"));
    client_free(&c);
    rc = UT_CLIENT(&c, "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}", 1, &st, &out, err);
    CHECK(rc == -1 && strstr(err, "closed mid-response"));
    client_free(&c);
    /* Nothing back on a kept-alive connection: retried on a new one. */
    rc = UT_CLIENT(&c, "", 1, &st, &out, err);
    CHECK(rc == -1 && strstr(err, "cannot connect"));
    client_free(&c);
    /* Nothing at all: the deadline. */
    rc = UT_CLIENT(&c, "", 0, &st, &out, err);
    CHECK(rc == -1 && strstr(err, "no answer from"));
    client_free(&c);
    buf_free(&out);
}

static void test_http_query(void) {
    Buf o = { 0 };
    CHECK(http_unquote(str_c("%41%zz+%2"), 1, &o) == 0 && BUF_IS(&o, "A%zz %2"));
    buf_reset(&o);
    CHECK(http_unquote(str_c("%41%zz+%2"), 0, &o) == 0 && BUF_IS(&o, "A%zz+%2"));
    buf_reset(&o);
    CHECK(http_unquote(str_c("%ff"), 1, &o) == -1);
    buf_reset(&o);
    CHECK(http_unquote(str_c("%C3%A9%c3%a9"), 0, &o) == 0 &&
          BUF_IS(&o, "\xc3\xa9\xc3\xa9"));
    buf_reset(&o);
    CHECK(http_unquote(str_c("%c3"), 0, &o) == -1);
    buf_reset(&o);
    CHECK(http_unquote(str_c("%ed%a0%80"), 0, &o) == -1);   /* surrogate */
    buf_reset(&o);
    CHECK(http_unquote(str_c("%"), 0, &o) == 0 && BUF_IS(&o, "%"));
    buf_reset(&o);
    CHECK(http_unquote(str_c("%4"), 0, &o) == 0 && BUF_IS(&o, "%4"));
    buf_reset(&o);
    CHECK(http_unquote(str_c("%%41"), 0, &o) == 0 && BUF_IS(&o, "%A"));
    buf_reset(&o);
    CHECK(http_unquote(str_c("a%00b"), 0, &o) == 0 && BUF_IS(&o, "a\0b"));
    buf_reset(&o);
    CHECK(http_unquote(str_c("%2B+"), 1, &o) == 0 && BUF_IS(&o, "+ "));
    /* Appends; only the appended part is judged. */
    buf_reset(&o);
    buf_adds(&o, "x\xff");
    CHECK(http_unquote(str_c("y"), 0, &o) == 0 && BUF_IS(&o, "x\xffy"));
    buf_free(&o);
    /* Guarded: a trailing '%' or '%4' must not read past the end. */
    const char *g = ut_guard("a%4", 3);
    CHECK(http_unquote((Str){ g, 3 }, 0, &o) == 0 && BUF_IS(&o, "a%4"));
    buf_reset(&o);
    g = ut_guard("%41", 3);
    CHECK(http_unquote((Str){ g, 3 }, 0, &o) == 0 && BUF_IS(&o, "A"));
    buf_free(&o);
    /* Empty input into a fresh Buf. */
    CHECK(http_unquote((Str){ "", 0 }, 1, &o) == 0 && o.len == 0);
    buf_free(&o);

    static const struct { const char *q, *name; int rc; const char *v; } qs[] = {
        { "a=&a=x&a=y", "a", 1, "x" },
        { "a%20b=1", "a b", 1, "1" },
        { "a+b=2", "a b", 1, "2" },
        { "b=1", "a", 0, NULL },
        { "", "a", 0, NULL },
        { "flag", "flag", 0, NULL },
        { "flag&flag=1", "flag", 1, "1" },
        { "a=%ff", "a", -1, NULL },
        { "%ff=1&a=2", "a", 1, "2" },
        { "a=1&a=%ff", "a", 1, "1" },
        { "a=b=c", "a", 1, "b=c" },
        { "&&a=1&", "a", 1, "1" },
        { "a=x+y%21", "a", 1, "x y!" },
        { "A=1", "a", 0, NULL },
        { "aa=1&a=2", "a", 1, "2" },
        { "a=", "a", 0, NULL },
        { "x=1&agent_id=me%40host&y=2", "agent_id", 1, "me@host" },
        { "=x", "a", 0, NULL },
        { "a=%", "a", 1, "%" },
    };
    for (size_t i = 0; i < sizeof qs / sizeof *qs; i++) {
        Buf out = { 0 };
        size_t n = strlen(qs[i].q);
        g = ut_guard(qs[i].q, n);
        int rc = http_query_get((Str){ g, n }, qs[i].name, &out);
        CHECKM(rc == qs[i].rc, qs[i].q);
        if (rc == 1 && qs[i].v) CHECKM(strcmp(buf_cstr(&out), qs[i].v) == 0, qs[i].q);
        buf_free(&out);
    }
    /* The output Buf is reset before the value is written. */
    Buf out = { 0 };
    buf_adds(&out, "junk");
    CHECK(http_query_get(str_c("k=v"), "k", &out) == 1 && BUF_IS(&out, "v"));
    buf_free(&out);

    /* Response heads. */
    buf_adds(&out, "");
    http_head(&out, 200, "text/plain", 2, 1, NULL);
    CHECK(strcmp(buf_cstr(&out), "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                 "Content-Length: 2\r\nConnection: keep-alive\r\n\r\n") == 0);
    buf_reset(&out);
    http_head(&out, 431, "application/json", -1, 0, "X-A: b\r\n");
    CHECK(strcmp(buf_cstr(&out), "HTTP/1.1 431 Request Header Fields Too Large"
                 "\r\nContent-Type: application/json\r\nConnection: close\r\n"
                 "X-A: b\r\n\r\n") == 0);
    CHECK(strcmp(http_reason(299), "Unknown") == 0);
    buf_free(&out);
}

/* The MCP stdio framer: newline-delimited messages and Content-Length
 * headers, fed whole and byte by byte. */
typedef struct {
    const char *in;
    int eof, rc;
    const char *msg;    /* the framed message when rc == 1 */
    size_t used;
    int skip;
} FrameCase;

static void test_mcp_frame(void) {
    static const FrameCase cases[] = {
        { "{\"a\":1}\n", 0, 1, "{\"a\":1}", 8, 0 },
        { "{\"a\":1}\r\n", 0, 1, "{\"a\":1}", 9, 0 },
        { "\n\r\n  {}\nrest", 0, 1, "{}", 8, 0 },
        { "{\"a\":", 0, 0, NULL, 0, 0 },
        { "{\"a\":1}", 1, 1, "{\"a\":1}", 7, 0 },
        { "   ", 0, 0, NULL, 3, 0 },
        { "Content-Length: 2\r\n\r\n{}x", 0, 1, "{}", 23, 0 },
        { "content-length:2\n\n{}", 0, 1, "{}", 20, 0 },
        /* Only a first line naming Content-Length opens a header block;
         * anything else is a line (which will not parse as JSON). */
        { "Content-Type: x\r\nContent-Length: 3\r\n\r\n[1]", 0, 1, "Content-Type: x", 17, 0 },
        { "Content-Len", 0, 0, NULL, 0, 0 },
        { "Content-Len", 1, -1, NULL, 11, 0 },
        { "Content-Length: 5\r\n\r\n{}", 0, 0, NULL, 0, 0 },
        { "Content-Length: 5\r\n\r\n{}", 1, -1, NULL, 23, 0 },
        { "Content-Length: x\r\n\r\n{}\n", 0, -1, NULL, 21, 0 },
        { "Content-Length: 99999999999999999999\r\n\r\n", 0, -1, NULL, 40, 0 },
        { "Content-Length: \r\n\r\n", 0, -1, NULL, 20, 0 },
        { "Content-Length: 2\r\n", 0, 0, NULL, 0, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const FrameCase *c = &cases[i];
        size_t n = strlen(c->in), off = 0, len = 0, used = 0;
        int skip = 0;
        const char *err = NULL;
        const char *g = ut_guard(c->in, n);
        int rc = mcp_frame(g, n, c->eof, &off, &len, &used, &skip, &err);
        CHECKM(rc == c->rc, c->in);
        if (rc == 1) CHECKM(len == strlen(c->msg) && !memcmp(g + off, c->msg, len), c->in);
        if (rc != 0) CHECKM(used == c->used, c->in);
        if (rc < 0) CHECKM(err != NULL, c->in);
        CHECKM(skip == c->skip, c->in);
    }
    /* The two framings mixed in one stream. */
    size_t off, len, used;
    int skip;
    const char *err;
    const char *two = "{\"a\":1}\nContent-Length: 2\r\n\r\n{}";
    size_t n = strlen(two);
    CHECK(mcp_frame(two, n, 0, &off, &len, &used, &skip, &err) == 1 && used == 8);
    CHECK(mcp_frame(two + used, n - used, 0, &off, &len, &used, &skip, &err) == 1 &&
          len == 2 && used == n - 8);
    /* A line longer than MCP_MAX_MSG without a newline yet: drop and skip. */
    size_t big = (size_t)MCP_MAX_MSG + 10;
    char *huge = malloc(big);
    memset(huge, 'x', big);
    CHECK(mcp_frame(huge, big, 0, &off, &len, &used, &skip, &err) == -1 && skip == 1 &&
          used == big);
    free(huge);
}

/* Every tool's schemas are JSON objects of type object; tools/list. */
static void test_mcp_tools(void) {
    for (size_t i = 0; i < sizeof mcp_tools / sizeof *mcp_tools; i++) {
        const char *s[2] = { mcp_tools[i].input, mcp_tools[i].output };
        for (int k = 0; k < 2; k++) {
            Json j = { 0 };
            CHECKM(json_parse(&j, s[k], strlen(s[k])) == 0, mcp_tools[i].name);
            uint32_t t = json_get(&j, 0, "type");
            CHECKM(t && json_str_is(&j, t, str_c("object")), mcp_tools[i].name);
            json_free(&j);
        }
        CHECK(mcp_tool(str_c(mcp_tools[i].name)) == &mcp_tools[i]);
    }
    CHECK(mcp_tool(str_c("arc_nope")) == NULL);
    CHECK(mcp_has("2025-11-25", "2025-06-18") && !mcp_has("2025-03-26", "2025-06-18"));
    /* tools/list is JSON in every version, and stays within a budget: all
     * of it goes to the model on every turn (make bench: "MCP tools/list
     * chars"). Raise the budget on purpose, not by accident. */
    for (size_t v = 0; v < sizeof mcp_versions / sizeof *mcp_versions; v++) {
        Buf b = { 0 };
        Json j = { 0 };
        mcp_tools_json(&b, mcp_versions[v]);
        CHECKM(json_parse(&j, b.p, b.len) == 0 && j.t[0].type == JSON_ARR, mcp_versions[v]);
        CHECKM(b.len < 12500, mcp_versions[v]);   /* 18 tools: 12,269 */
        json_free(&j);
        buf_free(&b);
    }
}

/* The cursor table's invariants: the recency list runs both ways over
 * exactly n entries, each in the chain its hash names, and the chains
 * hold nothing else. */
static int ut_cursors_ok(const McpCursors *t) {
    int fwd = 0, back = 0, chained = 0;
    for (const McpCursor *k = t->newest; k; k = k->older, fwd++) {
        if (k->older && k->older->newer != k) return 0;
        if (!k->older && t->oldest != k) return 0;
        const McpCursor *c = t->bucket[k->hash & (MCP_CURSOR_BUCKETS - 1)];
        while (c && c != k) c = c->hnext;
        if (!c || k->hash != loop_hash(k->key)) return 0;
    }
    for (const McpCursor *k = t->oldest; k; k = k->newer) back++;
    for (int b = 0; b < MCP_CURSOR_BUCKETS; b++)
        for (const McpCursor *c = t->bucket[b]; c; c = c->hnext) chained++;
    return fwd == t->n && back == t->n && chained == t->n && t->n <= MCP_MAX_CURSORS;
}

/* arc mcp's read positions per poll filter: bounded, least recently used
 * dropped first, a dropped filter starting over from the given start. */
static void test_mcp_cursors(void) {
    McpCursors t = { 0 };
    char key[32];
    const int64_t fresh = -7;   /* the start a new entry gets */
    for (int i = 0; i < MCP_MAX_CURSORS; i++) {
        snprintf(key, sizeof key, "c%d\x1f", i);
        int64_t *p = mcp_cursor_get(&t, key, fresh);
        CHECK(*p == fresh);
        *p = i;
    }
    CHECK(t.n == MCP_MAX_CURSORS && ut_cursors_ok(&t));
    for (int i = 0; i < MCP_MAX_CURSORS; i++) {   /* all kept, with their values */
        snprintf(key, sizeof key, "c%d\x1f", i);
        CHECK(*mcp_cursor_get(&t, key, fresh) == i);
    }
    /* c0 was used longest ago; touch it, and c1 is the one to go. */
    CHECK(*mcp_cursor_get(&t, "c0\x1f", fresh) == 0);
    CHECK(*mcp_cursor_get(&t, "new\x1f", fresh) == fresh);
    CHECK(t.n == MCP_MAX_CURSORS && ut_cursors_ok(&t));
    CHECK(*mcp_cursor_get(&t, "c0\x1f", fresh) == 0);
    CHECK(*mcp_cursor_get(&t, "c1\x1f", 99) == 99);   /* dropped: starts over */
    CHECK(*mcp_cursor_get(&t, "c3\x1f", fresh) == 3);  /* c2 went for c1 */
    CHECK(*mcp_cursor_get(&t, "c2\x1f", fresh) == fresh);
    /* Ten times as many filters: the table stays full, never larger, and
     * keeps exactly the newest. */
    for (int i = 0; i < 10 * MCP_MAX_CURSORS; i++) {
        snprintf(key, sizeof key, "x%d\x1fth", i);
        *mcp_cursor_get(&t, key, fresh) = i;
        if (t.n > MCP_MAX_CURSORS) break;
    }
    CHECK(t.n == MCP_MAX_CURSORS && ut_cursors_ok(&t));
    for (int i = 10 * MCP_MAX_CURSORS - 1; i >= 9 * MCP_MAX_CURSORS; i--) {
        snprintf(key, sizeof key, "x%d\x1fth", i);   /* newest first: no evictions */
        CHECK(*mcp_cursor_get(&t, key, fresh) == i);
    }
    CHECK(*mcp_cursor_get(&t, "c0\x1f", fresh) == fresh);
    mcp_cursors_free(&t);
    CHECK(t.n == 0 && !t.newest && !t.oldest && ut_cursors_ok(&t));
    CHECK(*mcp_cursor_get(&t, "again\x1f", 5) == 5 && t.n == 1);
    mcp_cursors_free(&t);
}

/* ==== hub: access checks (PROTOCOL §2) ================================= */

/* Parse raw request text and run hub_admit() on it; returns the status it
 * refused with, or 0 when admitted. */
static int ut_admit(Hub *h, const char *req) {
    HttpReq hr;
    size_t n = strlen(req);
    const char *p = ut_guard(req, n);
    if (http_parse(p, n, &hr) <= 0) return -1;
    Res r = { 0 };
    int status = hub_admit(h, &hr, &r) ? r.status : 0;
    if (status == 401)
        CHECK(r.extra && strstr(r.extra, "WWW-Authenticate: Bearer") != NULL);
    res_free(&r);
    return status;
}

static void test_admit(void) {
    Hub *h = xrealloc(NULL, sizeof *h);
    memset(h, 0, sizeof *h);
    h->cfg.allowed_hosts[0] = "arc.lan";
    h->cfg.n_allowed_hosts = 1;
    static const struct { const char *host; int status; } hosts[] = {
        { "127.0.0.1", 0 }, { "127.0.0.1:6969", 0 }, { "10.1.2.3:80", 0 },
        { "localhost", 0 }, { "LocalHost:6969", 0 }, { "[::1]:6969", 0 },
        { "[::1]", 0 }, { "[fe80::1]:1", 0 }, { "arc.lan", 0 }, { "ARC.LAN:9", 0 },
        { "127.0.0.1:", 0 },
        { "evil.com", 403 }, { "evil.com:6969", 403 }, { "127.0.0.1.nip.io", 403 },
        { "localhost.evil.com", 403 }, { "localhost.", 403 }, { "arc.lan.evil", 403 },
        { "127.1", 403 }, { "0x7f000001", 403 },
        { "", 400 }, { ":6969", 400 }, { "a b", 400 }, { "[::1", 400 },
        { "[::1]x", 400 }, { "::1", 400 }, { "[evil.com]", 400 }, { "h:1:2", 400 },
        { "h:abc", 400 }, { "h:123456", 400 }, { "a/b", 400 }, { "u@h", 400 },
    };
    char req[512];
    for (size_t i = 0; i < sizeof hosts / sizeof *hosts; i++) {
        snprintf(req, sizeof req, "GET /v1/channels HTTP/1.1\r\nHost: %s\r\n\r\n",
                 hosts[i].host);
        CHECKM(ut_admit(h, req) == hosts[i].status, hosts[i].host);
    }
    /* Host is required by HTTP/1.1 only, and only once. */
    CHECK(ut_admit(h, "GET / HTTP/1.1\r\n\r\n") == 400);
    CHECK(ut_admit(h, "GET /v1/channels HTTP/1.0\r\n\r\n") == 0);
    CHECK(ut_admit(h, "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == 400);
    CHECK(ut_admit(h, "GET / HTTP/1.1\r\nHost: evil.com\r\n\r\n") == 403);
    /* Other origins: refused everywhere but GET /. */
    static const struct { const char *hdr; int status; } origin[] = {
        { "Origin: http://127.0.0.1:6969", 0 }, { "Origin: HTTP://127.0.0.1:6969", 0 },
        { "Origin: https://127.0.0.1:6969", 0 },
        { "Origin: http://127.0.0.1:6970", 403 }, { "Origin: http://127.0.0.1", 403 },
        { "Origin: http://localhost:6969", 403 }, { "Origin: null", 403 },
        { "Origin: http://evil.com", 403 }, { "Origin: http://127.0.0.1:6969/", 403 },
        { "Origin: ", 403 },
        { "Sec-Fetch-Site: same-origin", 0 }, { "Sec-Fetch-Site: none", 0 },
        { "Sec-Fetch-Site: same-site", 403 }, { "Sec-Fetch-Site: cross-site", 403 },
        { "Sec-Fetch-Site: bogus", 403 },
    };
    static const char *const methods[] = { "POST /v1/messages", "DELETE /v1/sessions/x",
                                            "GET /v1/messages", "GET /v1/stream" };
    for (size_t i = 0; i < sizeof origin / sizeof *origin; i++) {
        for (size_t m = 0; m < 4; m++) {
            snprintf(req, sizeof req, "%s HTTP/1.1\r\nHost: 127.0.0.1:6969\r\n%s\r\n\r\n",
                     methods[m], origin[i].hdr);
            CHECKM(ut_admit(h, req) == origin[i].status, req);
        }
        snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: 127.0.0.1:6969\r\n%s\r\n\r\n",
                 origin[i].hdr);
        CHECKM(ut_admit(h, req) == 0, req);
    }
    CHECK(ut_admit(h, "POST /v1/messages HTTP/1.0\r\nOrigin: http://127.0.0.1\r\n\r\n")
          == 403);
    /* The token: every request but GET /; the query parameter only on the
     * stream; other schemes and near misses are wrong tokens. */
    CHECK(ut_admit(h, "GET /v1/channels HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n") == 0);
    snprintf(h->cfg.token, sizeof h->cfg.token, "%s", "tok-123456789abcdef");
    h->token_n = strlen(h->cfg.token);   /* the rest of cfg.token is NUL */
    static const struct { const char *req; int status; } tok[] = {
        { "GET /v1/channels HTTP/1.1\r\nHost: localhost\r\n\r\n", 401 },
        { "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", 0 },
        { "GET /?access_token=x HTTP/1.1\r\nHost: localhost\r\n\r\n", 0 },
        { "GET /v1/channels HTTP/1.1\r\nHost: localhost\r\n"
          "Authorization: Bearer tok-123456789abcdef\r\n\r\n", 0 },
        { "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\n"
          "authorization: bearer   tok-123456789abcdef\r\n\r\n", 0 },
        { "GET /v1/channels HTTP/1.1\r\nHost: localhost\r\n"
          "Authorization: Bearer tok-123456789abcdeF\r\n\r\n", 401 },
        { "GET /v1/channels HTTP/1.1\r\nHost: localhost\r\n"
          "Authorization: Bearer tok-123456789abcde\r\n\r\n", 401 },
        { "GET /v1/channels HTTP/1.1\r\nHost: localhost\r\n"
          "Authorization: Bearer\r\n\r\n", 401 },
        { "GET /v1/channels HTTP/1.1\r\nHost: localhost\r\n"
          "Authorization: Basic dG9rLTEyMzQ1Njc4OWFiY2RlZg==\r\n\r\n", 401 },
        { "GET /v1/channels HTTP/1.1\r\nHost: localhost\r\n"
          "Authorization: Bearertok-123456789abcdef\r\n\r\n", 401 },
        { "GET /v1/stream?agent_id=a&access_token=tok-123456789abcdef HTTP/1.1\r\n"
          "Host: localhost\r\n\r\n", 0 },
        { "GET /v1/stream?access_token=tok-123456789abcde%66 HTTP/1.1\r\n"
          "Host: localhost\r\n\r\n", 0 },
        { "GET /v1/stream?access_token=nope HTTP/1.1\r\nHost: localhost\r\n\r\n", 401 },
        { "GET /v1/events?access_token=tok-123456789abcdef HTTP/1.1\r\n"
          "Host: localhost\r\n\r\n", 401 },
        { "POST /v1/stream?access_token=tok-123456789abcdef HTTP/1.1\r\n"
          "Host: localhost\r\n\r\n", 401 },
        /* Host and origin are judged before the token. */
        { "GET /v1/channels HTTP/1.1\r\nHost: evil.com\r\n"
          "Authorization: Bearer tok-123456789abcdef\r\n\r\n", 403 },
        { "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nOrigin: http://x\r\n"
          "Authorization: Bearer tok-123456789abcdef\r\n\r\n", 403 },
    };
    for (size_t i = 0; i < sizeof tok / sizeof *tok; i++)
        CHECKM(ut_admit(h, tok[i].req) == tok[i].status, tok[i].req);
    free(h);
}

/* The handlers' query readers, without a hub (fuzz_query drives them too). */
static void test_query_readers(void) {
    static const struct { const char *q; int rc; int64_t ms; } ts[] = {
        { "timeout=2.5", 0, 2500 },
        { "timeout=+2.5+", 0, 2500 },     /* '+' is a space; spaces trimmed */
        { "timeout=-1", 0, 0 },
        { "timeout=1e9", 0, 60000 },
        { "timeout=", 0, 0 },             /* empty counts as absent */
        { "timeout=x", -1, 0 },
        { "timeout=0x10", -1, 0 },
        { "timeout=nan", -1, 0 },
        { "timeout=5%00x", -1, 0 },       /* seen writing fuzz_query: a decoded */
        { "timeout=5%00", -1, 0 },        /* NUL ended the number early */
    };
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) {
        Req q = { .query = str_c(ts[i].q) };
        Res r = { 0 };
        int64_t ms = -1;
        int rc = hub_timeout(&q, &r, &ms);
        CHECKM(rc == ts[i].rc, ts[i].q);
        if (rc == 0) CHECKM(ms == ts[i].ms, ts[i].q);
        else CHECKM(r.status == 400 && strstr(buf_cstr(&r.body), "timeout"), ts[i].q);
        req_free(&q);
        res_free(&r);
    }
    Req q = { .query = str_c("since_id=5&limit=9999") };
    Res r = { 0 };
    int64_t since;
    int limit;
    CHECK(hub_since_limit(&q, &r, &since, &limit) == 0 && since == 5 &&
          limit == ARC_MAX_LIMIT);
    q.query = str_c("since_id=1%002");
    CHECK(hub_since_limit(&q, &r, &since, &limit) == -1 && r.status == 400);
    req_free(&q);
    res_free(&r);
}

/* The relay's envelope reader, on bytes (no file). */
static void test_relay_envelope(void) {
    static const struct { const char *env; const char *err; } bad[] = {
        { "", "not valid JSON" },
        { "[]", "must be a JSON object" },
        { "{\"path\":\"/\"}", "missing method" },
        { "{\"method\":\"GET\",\"path\":\"x\"}", "must start with '/'" },
        { "{\"method\":\"GET\",\"path\":\"/\",\"body\":[]}", "must be a JSON object" },
        /* A NUL would cut the C strings the loop reads them as. */
        { "{\"method\":\"GET\\u0000X\",\"path\":\"/\"}", "method contains NUL" },
        { "{\"method\":\"GET\",\"path\":\"/\\u0000\"}", "path contains NUL" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        RelayReq *r = xrealloc(NULL, sizeof *r);
        memset(r, 0, sizeof *r);
        char err[ARC_ERRLEN] = "";
        Str env = str_c(bad[i].env);
        const char *g = ut_guard(env.p, env.n);
        CHECKM(relay_parse_envelope((Str){ g, env.n }, r, err) == -1, bad[i].env);
        CHECKM(strstr(err, bad[i].err) != NULL, bad[i].env);
        relay_req_free(r);
    }
    RelayReq *r = xrealloc(NULL, sizeof *r);
    memset(r, 0, sizeof *r);
    char err[ARC_ERRLEN] = "";
    Str env = str_c("{\"request_id\":\" 7 \",\"method\":\"post\",\"path\":\"/v1/x\","
                    "\"body\":{\"a\":1,\"a\":2}}");
    const char *g = ut_guard(env.p, env.n);
    CHECK(relay_parse_envelope((Str){ g, env.n }, r, err) == 0);
    CHECK(!strcmp(r->request_id, "7") && !strcmp(r->method, "POST") &&
          !strcmp(r->path, "/v1/x") && !strcmp(r->body, "{\"a\":2}"));
    relay_req_free(r);
}

/* ---- http_frame: a request's head and body, as the loop reads them ---- */

/* http_frame() on a guarded copy of s[0..n) with body cap max. */
static int64_t ut_frame(const char *s, size_t n, int64_t max, HttpReq *r) {
    return http_frame(ut_guard(s, n), n, max, r);
}

static void test_http_frame(void) {
    static const char two[] =
        "POST /v1/messages HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
        "GET /v1/hub-info HTTP/1.1\r\nHost: h\r\n\r\n";
    size_t head = strlen("POST /v1/messages HTTP/1.1\r\nHost: h\r\n"
                         "Content-Length: 5\r\n\r\n");
    size_t first = head + 5, total = sizeof two - 1;
    HttpReq r;

    /* Every prefix: the head incomplete (head_len 0), then the body, then
     * the whole first request, whatever follows it. */
    int head_again = 1, body_again = 1, whole = 1;
    for (size_t k = 0; k < head; k++)
        head_again &= ut_frame(two, k, 100, &r) == ARC_AGAIN && r.head_len == 0;
    for (size_t k = head; k < first; k++)
        body_again &= ut_frame(two, k, 100, &r) == ARC_AGAIN &&
                      r.head_len == (int)head && ut_str_is(r.method, "POST");
    for (size_t k = first; k <= total; k++) {
        const char *g = ut_guard(two, k);
        int64_t n = http_frame(g, k, 100, &r);
        whole &= n == (int64_t)first && r.head_len == (int)head &&
                 r.body.p == g + head && r.body.n == 5 &&
                 memcmp(r.body.p, "hello", 5) == 0;
    }
    CHECK(head_again);
    CHECK(body_again);
    CHECK(whole);

    /* The pipelined second request, without a body. */
    int64_t n = ut_frame(two + first, total - first, 100, &r);
    CHECK(n == (int64_t)(total - first) && ut_str_is(r.method, "GET") && r.body.n == 0);

    /* The body cap: exactly max is fine; one over is refused as soon as
     * the head is complete, before the body arrives. */
    CHECK(ut_frame(two, first, 5, &r) == (int64_t)first);
    CHECK(ut_frame(two, head, 4, &r) == ARC_BAD && r.err_status == 400 &&
          !strcmp(r.err_msg, "request body exceeds max size"));
    CHECK(ut_frame(two, head - 1, 4, &r) == ARC_AGAIN && r.head_len == 0);

    /* Head errors come from the parser, with its status. */
    static const char te[] =
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    CHECK(ut_frame(te, sizeof te - 1, 100, &r) == ARC_BAD && r.err_status == 411);
    static const char v2[] = "GET / HTTP/2.0\r\n\r\n";
    CHECK(ut_frame(v2, sizeof v2 - 1, 100, &r) == ARC_BAD && r.err_status == 505);
}

/* ---- the loop's timer heap and wait buckets ---- */

/* xorshift32, for reproducible orders. */
static uint32_t ut_rand(uint32_t *x) {
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

/* n conns, as the loop makes them, not in any heap or bucket. */
static Conn *ut_conns(int n) {
    Conn *cs = xrealloc(NULL, (size_t)n * sizeof *cs);
    for (int i = 0; i < n; i++)
        cs[i] = (Conn){ .fd = -1, .poll_slot = -1, .heap_idx = -1,
                        .state = CONN_READ };
    return cs;
}

/* Insert, reorder and remove with heap_set() (every call asserts
 * heap_valid in this build), then pop everything: deadlines come out in
 * order, and the conns that were cleared do not come out at all. */
static void test_timer_heap(void) {
    enum { N = 300 };
    Loop l;
    loop_init(&l, NULL);
    Conn *cs = ut_conns(N);
    uint32_t x = 12345;
    for (int i = 0; i < N; i++) heap_set(&l, &cs[i], 1 + ut_rand(&x) % 1000);
    CHECK(l.n_heap == N && heap_valid(&l));
    for (int i = 0; i < N; i += 3)   /* reorder: later, earlier, the same */
        heap_set(&l, &cs[i], i % 2 ? 1 + (int64_t)(ut_rand(&x) % 50) : 2000 + i);
    heap_set(&l, &cs[7], cs[7].deadline_ms);
    int cleared = 0;
    for (int i = 1; i < N; i += 5) {   /* remove, some twice */
        heap_set(&l, &cs[i], 0);
        heap_remove(&l, &cs[i]);
        cleared++;
    }
    CHECK(l.n_heap == N - cleared && heap_valid(&l));
    int64_t top = l.heap[0]->deadline_ms;   /* the check sees a broken order */
    l.heap[0]->deadline_ms = INT64_MAX;
    CHECK(!heap_valid(&l));
    l.heap[0]->deadline_ms = top;
    int ordered = 1, popped = 0;
    int64_t last = 0;
    while (l.n_heap) {
        Conn *c = l.heap[0];
        ordered &= c->deadline_ms >= last && (c - cs) % 5 != 1;
        last = c->deadline_ms;
        heap_remove(&l, c);
        ordered &= c->heap_idx == -1;
        popped++;
    }
    CHECK(ordered);
    CHECK(popped == N - cleared);
    for (int i = 1; i < N; i += 5) CHECK(cs[i].heap_idx == -1 && cs[i].deadline_ms == 0);
    free(cs);
    free(l.heap);
}

/* File waiters by channel (enough channels to grow and rehash the table),
 * check where each is, then unfile them in a shuffled order: buckets go
 * with their last waiter. loop_wait_add/del assert loop_buckets_valid in
 * this build. */
static void test_wait_buckets(void) {
    enum { N = 400, CH = 40 };
    Loop l;
    loop_init(&l, NULL);
    l.wb_any = xrealloc(NULL, sizeof *l.wb_any);
    *l.wb_any = (WaitBucket){ 0 };
    Conn *cs = ut_conns(N);
    char name[32];
    for (int i = 0; i < N; i++) {
        cs[i].state = i % 2 ? CONN_PARKED : CONN_STREAM;
        if (i % CH) {   /* every CH-th waits on any channel */
            snprintf(name, sizeof name, "ch-%d", i % CH);
            cs[i].wait.channel = xstrndup(name, strlen(name));
        }
        loop_wait_add(&l, &cs[i]);
    }
    CHECK(l.n_parked == N && l.n_wb == CH - 1 && l.cap_wb >= CH - 1);
    CHECK(loop_buckets_valid(&l));
    int placed = 1;
    for (int i = 0; i < N; i++) {
        WaitBucket *b = cs[i].wait.channel ? loop_bucket(&l, cs[i].wait.channel, 0)
                                           : l.wb_any;
        placed &= b && cs[i].bucket == b;
    }
    CHECK(placed);
    WaitBucket *b1 = cs[1].bucket;   /* the check sees a misfiled waiter */
    cs[1].bucket = l.wb_any;
    CHECK(!loop_buckets_valid(&l));
    cs[1].bucket = b1;
    CHECK(loop_bucket(&l, "no-such-channel", 0) == NULL);
    int n;
    Conn **all = loop_waiters(&l, &n);
    CHECK(n == N);
    free(all);

    int order[N];
    for (int i = 0; i < N; i++) order[i] = i;
    uint32_t x = 777;
    for (int i = N - 1; i > 0; i--) {
        int j = (int)(ut_rand(&x) % (uint32_t)(i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    int emptied = 1;
    for (int k = 0; k < N; k++) {
        Conn *c = &cs[order[k]];
        loop_wait_del(&l, c);
        emptied &= !c->bucket && !c->wprev && !c->wnext;
        if (k == N / 2) CHECK(l.n_parked == N - N / 2 - 1 && loop_buckets_valid(&l));
    }
    CHECK(emptied);
    CHECK(l.n_parked == 0 && l.n_wb == 0 && !l.wb_any->head);
    snprintf(name, sizeof name, "ch-%d", 1);
    CHECK(loop_bucket(&l, name, 0) == NULL);
    for (int i = 0; i < N; i++) wait_free(&cs[i].wait);
    free(cs);
    free(l.wb);
    free(l.wb_any);
}

/* ==== store and hub: the message renderer, its cache, the wait filters == */

/* A hub with only its store open, on a fresh file in a fresh directory. */
static Hub *ut_hub_open(char dir[64]) {
    snprintf(dir, 64, "/tmp/arc-unit-XXXXXX");
    if (!mkdtemp(dir)) die("mkdtemp: %s", strerror(errno));
    Hub *h = xrealloc(NULL, sizeof *h);
    memset(h, 0, sizeof *h);
    char path[96], err[ARC_ERRLEN];
    snprintf(path, sizeof path, "%s/arc.db", dir);
    if (store_open(&h->store, path, 1000, 0, err)) die("%s", err);
    return h;
}

static void ut_hub_close(Hub *h, const char *dir) {
    hub_batch_truncate(h, 0);
    free(h->batch);
    store_close(&h->store);
    free(h);
    static const char *const files[] = { "arc.db", "arc.db-wal", "arc.db-shm" };
    char path[96];
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* Insert one message in its own request, as a handler would. Returns 0 or
 * -1; the message stays in h->batch with its insert-time JSON. */
static int ut_insert(Hub *h, const StoreMsg *m, int64_t *id) {
    Req q = { 0 };
    Res r = { 0 };
    int rc = hub_insert_message(h, &q, &r, m, NULL, id);
    hub_tx_end(h, &q, rc == 0);
    req_free(&q);
    res_free(&r);
    return rc;
}

/* Message id's JSON as a GET renders it: a list's id-only row, or a full
 * row of M_COLS. */
static void ut_render_row(Hub *h, int64_t id, int full, Buf *out) {
    static const char by_id[] = "SELECT id FROM messages WHERE id=?";
    static const char by_row[] = "SELECT " M_COLS " FROM messages WHERE id=?";
    sqlite3_stmt *st = store_stmt(&h->store, full ? by_row : by_id);
    buf_reset(out);
    if (!st) return;
    sqlite3_bind_int64(st, 1, id);
    CHECK(store_emit_one(&h->store, out, st, store_emit_message) == 1);
}

/* The insert-time JSON (a POST's answer, the fan-out, then the cache) and
 * the JSON rendered from the stored row must agree byte for byte, for every
 * combination of optional fields and awkward text. */
static void test_message_render(void) {
    char dir[64];
    Hub *h = ut_hub_open(dir);
    static const char *const bodies[] = {
        NULL, "", "plain", "tab\there \"quoted\" back\\slash \x01\x1f\x7f",
        "caf\xc3\xa9 \xe2\x98\x83 \xf0\x9f\x98\x80 \xe2\x80\xa8 </script>",
        "line\nbreak\r\n",
    };
    static const char *const tos[] = { NULL, "bob", "b\xc3\xb6\"b" };
    static const char *const threads[] = { NULL, "t-1", "th\xc3\xa9" "ad \"x\"" };
    static const int64_t replies[] = { ARC_NO_ID, 1, ARC_MAX_ID };
    static const char *const atts[] = {
        "[]", "[{\"type\":\"json\",\"content\":{\"a\":[1,2.5,null,true]}}]",
        "[{\"type\":\"text\",\"content\":\"\\u00e9\\n\\\"\"}]",
    };
    static const char *const metas[] = {
        "{}", "{\"k\":\"v\",\"n\":-1.5e3,\"u\":\"caf\xc3\xa9\",\"z\":{}}",
    };
    static const char *const kinds[] = { "chat", "task_request" };
    int n = 0, bad = 0;
    Buf row = { 0 };
    for (size_t b = 0; b < sizeof bodies / sizeof *bodies; b++)
    for (size_t t = 0; t < sizeof tos / sizeof *tos; t++)
    for (size_t th = 0; th < sizeof threads / sizeof *threads; th++)
    for (size_t rp = 0; rp < sizeof replies / sizeof *replies; rp++)
    for (size_t a = 0; a < sizeof atts / sizeof *atts; a++)
    for (size_t mt = 0; mt < sizeof metas / sizeof *metas; mt++) {
        StoreMsg m = { .from = str_c(n % 2 ? "alice" : "\xc3\xa5sa"),
                    .to = { tos[t], tos[t] ? strlen(tos[t]) : 0 },
                    .channel = str_c(t ? "direct" : "general"),
                    .kind = str_c(kinds[(size_t)n % 2]),
                    .body = { bodies[b], bodies[b] ? strlen(bodies[b]) : 0 },
                    .thread = { threads[th], threads[th] ? strlen(threads[th]) : 0 },
                    .attachments = str_c(atts[a]), .metadata = str_c(metas[mt]),
                    .reply_to = replies[rp] };
        int64_t id;
        CHECK(ut_insert(h, &m, &id) == 0);
        n++;
    }
    CHECK(h->n_batch == n && h->store.in_tx);
    /* Inside the transaction a row renders the same but is not cached: it
     * is not committed yet. */
    ut_render_row(h, h->batch[0].id, 0, &row);
    CHECK(ut_buf_is(&row, h->batch[0].json, h->batch[0].json_len));
    CHECK(store_cache_get(&h->store, h->batch[0].id) == NULL);
    CHECK(store_commit(&h->store) == 0);
    for (int i = 0; i < h->n_batch; i++) {
        const NewMsg *nm = &h->batch[i];
        for (int full = 0; full < 2; full++) {
            store_cache_flush(&h->store);
            ut_render_row(h, nm->id, full, &row);
            if (!ut_buf_is(&row, nm->json, nm->json_len) && bad++ < 3)
                fprintf(stderr, "insert: %s\nrow:    %s\n", nm->json, buf_cstr(&row));
        }
        /* The row went into the cache; the cached copy is the same. */
        CHECK(store_cache_get(&h->store, nm->id) != NULL);
        ut_render_row(h, nm->id, 0, &row);
        CHECK(ut_buf_is(&row, nm->json, nm->json_len));
    }
    CHECK(bad == 0);
    /* And the JSON is what a client parses back: the fields in order. */
    Json j = { 0 };
    CHECK(json_parse(&j, h->batch[n - 1].json, h->batch[n - 1].json_len) == 0);
    CHECK(j.t[0].type == JSON_OBJ && j.t[0].n == 11);
    json_free(&j);
    buf_free(&row);
    ut_hub_close(h, dir);
}

/* The cache of rendered messages: direct-mapped by id, bounded in bytes,
 * flushed when another connection commits. */
static void test_message_cache(void) {
    char dir[64];
    Hub *h = ut_hub_open(dir);
    Store *s = &h->store;
    CHECK(store_cache_get(s, 1) == NULL && s->cache == NULL);  /* lazy */
    store_cache_put(s, 1, "{\"id\":1}", 8);
    const StoreCached *c = store_cache_get(s, 1);
    CHECK(c && c->len == 8 && !memcmp(c->json, "{\"id\":1}", 8) && s->cache_bytes == 8);
    CHECK(store_cache_get(s, 2) == NULL);                        /* miss */
    CHECK(store_cache_get(s, 1 + ARC_MSG_CACHE_SLOTS) == NULL);  /* same slot */
    store_cache_put(s, 1, "{\"id\":1,\"x\":0}", 14);             /* kept */
    CHECK(store_cache_get(s, 1)->len == 8 && s->cache_bytes == 8);
    /* A different id in the slot replaces the entry. */
    store_cache_put(s, 1 + ARC_MSG_CACHE_SLOTS, "{\"id\":4097}", 11);
    CHECK(store_cache_get(s, 1) == NULL);
    c = store_cache_get(s, 1 + ARC_MSG_CACHE_SLOTS);
    CHECK(c && c->len == 11 && s->cache_bytes == 11);
    /* Too large for an entry: not cached, nothing evicted. */
    char *big = ut_rep('x', ARC_MSG_CACHE_ENTRY + 1);
    store_cache_put(s, 2, big, ARC_MSG_CACHE_ENTRY + 1);
    CHECK(store_cache_get(s, 2) == NULL && s->cache_bytes == 11);
    /* Full: the next put flushes everything, then goes in. */
    size_t per = ARC_MSG_CACHE_ENTRY, fit = ARC_MSG_CACHE_BYTES / per;
    store_cache_flush(s);
    for (size_t i = 0; i < fit; i++) store_cache_put(s, (int64_t)(100 + i), big, per);
    CHECK(s->cache_bytes == fit * per && store_cache_get(s, 100) != NULL);
    store_cache_put(s, 99, big, per);
    CHECK(s->cache_bytes == per && store_cache_get(s, 99) != NULL);
    CHECK(store_cache_get(s, 100) == NULL);
    free(big);
    store_cache_flush(s);
    CHECK(s->cache_bytes == 0 && store_cache_get(s, 99) == NULL);
    /* A commit by this connection leaves the cache valid; one by another
     * connection (a second hub, the reference) flushes it at the next sync. */
    StoreMsg m = { .from = STR_LIT("a"), .channel = STR_LIT("general"),
                .kind = STR_LIT("chat"), .body = STR_LIT("hi"),
                .attachments = STR_LIT("[]"), .metadata = STR_LIT("{}"),
                .reply_to = ARC_NO_ID };
    int64_t id;
    CHECK(ut_insert(h, &m, &id) == 0 && store_commit(s) == 0);
    store_cache_sync(s);
    Buf row = { 0 };
    ut_render_row(h, id, 0, &row);
    store_cache_sync(s);
    CHECK(store_cache_get(s, id) != NULL);
    sqlite3 *other = NULL;
    CHECK(sqlite3_open(s->path, &other) == SQLITE_OK);
    CHECK(sqlite3_exec(other, "UPDATE messages SET body='changed'", NULL, NULL, NULL)
          == SQLITE_OK);
    sqlite3_close(other);
    store_cache_sync(s);
    CHECK(store_cache_get(s, id) == NULL && s->cache_bytes == 0);
    ut_render_row(h, id, 0, &row);
    CHECK(strstr(buf_cstr(&row), "\"body\":\"changed\"") != NULL);
    buf_free(&row);
    ut_hub_close(h, dir);
}

/* The ids w's query returns, in order, into ids[]; returns the count. */
static int ut_wait_sql(Hub *h, const Wait *w, int64_t *ids, int max) {
    sqlite3_stmt *st = hub_wait_stmt(h, w, 0);
    int n = 0;
    while (st && sqlite3_step(st) == SQLITE_ROW && n < max)
        ids[n++] = sqlite3_column_int64(st, 0);
    if (st) sqlite3_reset(st);
    return n;
}

/* hub_wait_match decides which new messages wake a parked request or a
 * stream; the query decides what it then reads. Each filter by hand, then
 * the two compared over every filter combination. */
static void test_wait_match(void) {
    char alice[] = "alice", bob[] = "bob", carol[] = "carol", t1[] = "t1",
         t2[] = "t2", general[] = "general", direct[] = "direct", dev[] = "dev";
    NewMsg bc = { .id = 10, .from = alice, .channel = general };
    NewMsg dm = { .id = 11, .from = alice, .to = bob, .channel = direct };
    NewMsg tm = { .id = 12, .from = bob, .channel = dev, .thread = t1 };
    Wait w = { .kind = WAIT_MESSAGES, .channel = general };
    CHECK(hub_wait_match(&w, &bc) && !hub_wait_match(&w, &tm));
    w.since_id = 10;                                          /* since_id */
    CHECK(!hub_wait_match(&w, &bc));
    w = (Wait){ .kind = WAIT_MESSAGES, .channel = direct };   /* no DMs */
    CHECK(!hub_wait_match(&w, &dm));
    w = (Wait){ .kind = WAIT_MESSAGES, .thread = t1 };        /* thread */
    CHECK(hub_wait_match(&w, &tm) && !hub_wait_match(&w, &bc));
    w.thread = t2;
    CHECK(!hub_wait_match(&w, &tm));
    w = (Wait){ .kind = WAIT_EVENTS, .agent = bob };          /* to/DM */
    CHECK(hub_wait_match(&w, &dm) && hub_wait_match(&w, &bc) && hub_wait_match(&w, &tm));
    w.agent = carol;
    CHECK(!hub_wait_match(&w, &dm) && hub_wait_match(&w, &bc));
    w = (Wait){ .kind = WAIT_EVENTS, .agent = bob, .exclude_self = 1 };
    CHECK(!hub_wait_match(&w, &tm) && hub_wait_match(&w, &dm));
    char *set[] = { dev, general };                           /* channel set */
    w = (Wait){ .kind = WAIT_STREAM, .agent = bob, .channels = set, .n_channels = 2 };
    CHECK(hub_wait_match(&w, &bc) && hub_wait_match(&w, &tm) && !hub_wait_match(&w, &dm));
    w = (Wait){ .kind = WAIT_STREAM, .agent = bob, .channel = dev };
    CHECK(hub_wait_match(&w, &tm) && !hub_wait_match(&w, &bc));

    /* Agreement with the queries, over messages of every shape. */
    char dir[64];
    Hub *h = ut_hub_open(dir);
    static const char *const chans[] = { "general", "dev", "direct" };
    static const char *const agents[] = { "alice", "bob", "carol" };
    static const char *const tos[] = { NULL, "alice", "bob" };
    static const char *const threads[] = { NULL, "t1", "t2" };
    for (size_t c = 0; c < 3; c++)
    for (size_t f = 0; f < 3; f++)
    for (size_t t = 0; t < 3; t++)
    for (size_t th = 0; th < 3; th++) {
        StoreMsg m = { .from = str_c(agents[f]), .to = { tos[t], tos[t] ? strlen(tos[t]) : 0 },
                    .channel = str_c(chans[c]), .kind = STR_LIT("chat"),
                    .body = STR_LIT("x"),
                    .thread = { threads[th], threads[th] ? strlen(threads[th]) : 0 },
                    .attachments = STR_LIT("[]"), .metadata = STR_LIT("{}"),
                    .reply_to = ARC_NO_ID };
        int64_t id;
        CHECK(ut_insert(h, &m, &id) == 0);
    }
    CHECK(store_commit(&h->store) == 0);
    int64_t sql[128], hit[128], mid = h->batch[h->n_batch / 2].id;
    static const char *const wchan[] = { NULL, "general", "dev", "direct" };
    char set_json[] = "[\"dev\",\"direct\"]";
    char *wset[] = { dev, direct };
    int cases = 0, agree = 0;
    for (int kind = WAIT_EVENTS; kind <= WAIT_STREAM; kind++)
    for (size_t ch = 0; ch < 5; ch++)          /* 4: the channel set */
    for (size_t th = 0; th < 3; th++)
    for (size_t a = 0; a < 3; a++)
    for (int ex = 0; ex < 2; ex++)
    for (int since = 0; since < 2; since++) {
        if (kind == WAIT_MESSAGES && (a || ex || ch == 4 || (!th && !ch))) continue;
        if (kind == WAIT_EVENTS && ch == 4) continue;
        Wait x = { .kind = (WaitKind)kind, .limit = 500,
                   .agent = kind == WAIT_MESSAGES ? NULL : (char *)agents[a],
                   .channel = ch < 4 ? (char *)wchan[ch] : NULL,
                   .thread = (char *)threads[th], .exclude_self = ex,
                   .since_id = since ? mid : 0 };
        if (ch == 4) x.channels = wset, x.n_channels = 2, x.channel_set = set_json;
        int n = ut_wait_sql(h, &x, sql, 128), k = 0;
        for (int i = 0; i < h->n_batch && k < 128; i++)
            if (hub_wait_match(&x, &h->batch[i])) hit[k++] = h->batch[i].id;
        cases++;
        if (n == k && !memcmp(sql, hit, (size_t)n * sizeof *sql)) agree++;
        else fprintf(stderr, "wait kind %d ch %zu th %zu agent %zu ex %d since %d: "
                     "query %d rows, match %d\n", kind, ch, th, a, ex, since, n, k);
    }
    CHECK(cases > 100 && agree == cases);
    ut_hub_close(h, dir);
}

/* ---- options: tables, parser, help, serialiser ---- */

/* Do two parsed serve configurations agree, field by field? */
static int ut_cfg_eq(const HubConfig *a, const HubConfig *b) {
    if (strcmp(a->host, b->host) || a->port != b->port ||
        strcmp(a->storage, b->storage) || strcmp(a->spool_dir, b->spool_dir) ||
        a->allow_remote != b->allow_remote ||
        a->insecure_no_auth != b->insecure_no_auth ||
        memcmp(a->token, b->token, sizeof a->token) ||
        a->n_allowed_hosts != b->n_allowed_hosts ||
        a->max_body_chars != b->max_body_chars ||
        a->max_attachment_chars != b->max_attachment_chars ||
        a->max_attachments != b->max_attachments ||
        a->presence_ttl_s != b->presence_ttl_s || a->sync_full != b->sync_full ||
        a->max_conns != b->max_conns || a->idle_ms != b->idle_ms ||
        a->head_ms != b->head_ms || a->body_ms != b->body_ms)
        return 0;
    for (int i = 0; i < a->n_allowed_hosts; i++)
        if (strcmp(a->allowed_hosts[i], b->allowed_hosts[i])) return 0;
    return 1;
}

/* Parse argv (n strings) as the serve options; returns opt_parse_args(). */
static int ut_serve_parse(HubConfig *cfg, int n, const char **argv,
                          char err[ARC_ERRLEN]) {
    serve_defaults(cfg);
    OptGroup g[] = { { serve_opts, cfg, NULL, 0 } };
    return opt_parse_args(&serve_help, g, 1, n, (char **)argv, err);
}

/* Does opt_argv()'s output keep its invariants: NULL-terminated, and made
 * of known option names, each followed by a value unless a flag? */
static int ut_argv_ok(const OptArgv *a, const Opt *t) {
    if (a->n && a->v[a->n] != NULL) return 0;
    for (int i = 0; i < a->n; i++) {
        const Opt *o = t;
        while (o->kind != OPT_END && !(o->name && !strcmp(o->name, a->v[i]))) o++;
        if (o->kind == OPT_END || !(o->flags & OPT_PASS)) return 0;
        if (o->kind != OPT_FLAG && ++i >= a->n) return 0;   /* its value */
    }
    return 1;
}

/* The option tables, the one parser and the serialiser arc ensure uses. */
static void test_options(void) {
    const Opt *const tables[] = { serve_opts, life_opts, agent_opts,
        agent_where_opts, agent_post_opts, agent_poll_opts, relay_opts,
        relay_gc_opts, smoke_opts, smoke_role_opts, smoke_token_opts, mcp_opts,
        search_opts };
    for (size_t i = 0; i < sizeof tables / sizeof *tables; i++)
        CHECK(opt_table_ok(tables[i]));
    static const Opt dup[] = { { "--a", OPT_FLAG, .help = "x" },
                               { "--a", OPT_FLAG, .help = "y" }, { 0 } };
    static const Opt range[] = { { "--n", OPT_INT, .lo = 2, .hi = 1, .arg = "N",
                                   .help = "x" }, { 0 } };
    static const Opt noarg[] = { { "--s", OPT_STR, .help = "x" }, { 0 } };
    static const Opt passtok[] = { { "--t", OPT_TOKEN, .arg = "T", .help = "x",
                                     .flags = OPT_PASS }, { 0 } };
    CHECK(!opt_table_ok(dup));
    CHECK(!opt_table_ok(range));
    CHECK(!opt_table_ok(noarg));
    CHECK(!opt_table_ok(passtok));

    /* Round trip: parse -> serialise -> parse gives the same struct (the
     * token aside: it goes by environment), and serialising that again
     * gives the same argv. */
    unsetenv("ARC_TOKEN");
    int quiet = g_quiet;
    char names[ARC_MAX_ALLOWED_HOSTS][24];
    const char *in[64 + 2 * ARC_MAX_ALLOWED_HOSTS];
    int n = 0;
    static const char *const fixed[] = { "--host", "::1", "--port=0",
        "--storage", "dir/s.db", "--spool-dir=sp ace", "--sync", "normal",
        "--allow-remote", "--insecure-no-auth", "--max-body-chars=7",
        "--max-attachment-chars", "9", "--max-attachments", "0",
        "--presence-ttl", "5", "--max-conns", "3", "--idle-timeout-ms", "100",
        "--head-timeout-ms", "86400000", "--body-timeout-ms", "2_000",
        "--token", "secret", "--quiet" };
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) in[n++] = fixed[i];
    for (int i = 0; i < ARC_MAX_ALLOWED_HOSTS; i++) {
        snprintf(names[i], sizeof names[i], "h%d.lan", i + 1);
        in[n++] = i % 2 ? "--allowed-host" : "--allowed-host=";
        if (i % 2) in[n++] = names[i];
        else {   /* the --name=value form: its own string */
            static char eqs[ARC_MAX_ALLOWED_HOSTS][40];
            snprintf(eqs[i], sizeof eqs[i], "--allowed-host=h%d.lan", i + 1);
            in[n - 1] = eqs[i];
        }
    }
    HubConfig a, b;
    char err[ARC_ERRLEN] = "";
    g_quiet = 0;
    CHECKM(ut_serve_parse(&a, n, in, err) == 0, err);
    CHECK(a.port == 0 && !strcmp(a.host, "::1") && a.sync_full == 0);
    CHECK(a.n_allowed_hosts == ARC_MAX_ALLOWED_HOSTS);
    CHECK(!strcmp(a.allowed_hosts[ARC_MAX_ALLOWED_HOSTS - 1],
                  names[ARC_MAX_ALLOWED_HOSTS - 1]));
    CHECK(a.body_ms == 2000 && a.head_ms == 86400000 && a.max_attachments == 0);
    CHECK(!strcmp(a.token, "secret") && g_quiet == 1);
    OptArgv av = { 0 }, av2 = { 0 };
    opt_argv(&av, serve_opts, &a, OPT_PASS);
    CHECK(ut_argv_ok(&av, serve_opts));
    g_quiet = 0;
    CHECKM(ut_serve_parse(&b, av.n, (const char **)av.v, err) == 0, err);
    CHECK(b.token[0] == 0);   /* never in argv */
    memcpy(b.token, a.token, sizeof b.token);
    CHECK(ut_cfg_eq(&a, &b));
    CHECK(g_quiet == 1);
    opt_argv(&av2, serve_opts, &b, OPT_PASS);
    CHECK(av.n == av2.n);
    for (int i = 0; i < av.n && i < av2.n; i++) CHECK(!strcmp(av.v[i], av2.v[i]));
    opt_argv_free(&av2);
    opt_argv_free(&av);
    /* The defaults round-trip too (nothing given, nothing lost). */
    g_quiet = 0;
    CHECK(ut_serve_parse(&a, 0, NULL, err) == 0);
    opt_argv(&av, serve_opts, &a, OPT_PASS);
    CHECK(ut_argv_ok(&av, serve_opts) && av.n > 0);
    CHECK(ut_serve_parse(&b, av.n, (const char **)av.v, err) == 0);
    CHECK(ut_cfg_eq(&a, &b));
    opt_argv_free(&av);

    /* Bad input: each is a usage error with a message; --help is 1. */
    static const char *const bad[][3] = {
        { "--port" }, { "--port=" }, { "--port", "65536" }, { "--port", "x" },
        { "--portx", "1" }, { "--bogus" }, { "stray" }, { "-" }, { "--quiet=1" },
        { "--sync", "fast" }, { "--allowed-host", "a:1" }, { "--allowed-host", "" },
        { "--host", "" }, { "--max-attachments", "-1" },
        { "--token", "a", "--token-file" }, { "--token", "has space" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int k = 0;
        while (k < 3 && bad[i][k]) k++;
        err[0] = 0;
        CHECKM(ut_serve_parse(&a, k, (const char **)bad[i], err) == -1 && err[0],
               bad[i][0]);
    }
    const char *both[] = { "--token", "a", "--token-file", "/nonexistent" };
    CHECK(ut_serve_parse(&a, 4, both, err) == -1 && strstr(err, "not both"));
    in[n++] = "--allowed-host";
    in[n++] = "one-too-many.lan";
    CHECK(ut_serve_parse(&a, n, in, err) == -1 && strstr(err, "at most"));
    const char *help[] = { "--port", "1", "-h" };
    CHECK(ut_serve_parse(&a, 3, help, err) == 1);
    g_quiet = quiet;

    /* post: one operand ("-" is one), a second is an error; poll's and
     * ensure's seconds. */
    AgentOpts ao = { 0 };
    OptGroup pg[] = { { agent_opts, &ao, NULL, 0 }, { agent_where_opts, &ao, NULL, 0 },
                      { agent_post_opts, &ao, NULL, 0 } };
    const char *post1[] = { "--agent=x", "-", "--to", "y" };
    CHECK(opt_parse_args(&agent_help[0], pg, 3, 4, (char **)post1, err) == 0);
    CHECK(ao.body && !strcmp(ao.body, "-") && !strcmp(ao.to, "y"));
    const char *post2[] = { "body", "again" };
    ao = (AgentOpts){ 0 };
    CHECK(opt_parse_args(&agent_help[0], pg, 3, 2, (char **)post2, err) == -1 &&
          strstr(err, "unexpected argument again"));
    OptGroup qg[] = { { agent_opts, &ao, NULL, 0 }, { agent_poll_opts, &ao, NULL, 0 } };
    static const char *const secs[][2] = { { "0", "1" }, { "60", "1" }, { "60.5", "0" },
                                           { "", "0" }, { "nan", "0" }, { "-1", "0" } };
    for (size_t i = 0; i < sizeof secs / sizeof *secs; i++) {
        const char *t[] = { "--timeout", secs[i][0] };
        CHECKM((opt_parse_args(&agent_help[1], qg, 2, 2, (char **)t, err) == 0) ==
               (secs[i][1][0] == '1'), secs[i][0]);
    }
    LifeOpts lo = { 0 };
    OptGroup lg[] = { { life_opts, &lo, NULL, 0 } };
    const char *t0[] = { "--timeout", "0" }, *t1[] = { "--timeout=0.5" };
    CHECK(opt_parse_args(&ensure_help, lg, 1, 2, (char **)t0, err) == -1);
    CHECK(opt_parse_args(&ensure_help, lg, 1, 1, (char **)t1, err) == 0 &&
          lo.timeout_s == 0.5);

    /* --help is printed from the table: every option is in it. */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    serve_defaults(&a);
    OptGroup sg[] = { { serve_opts, &a, NULL, 0 } };
    opt_help(&serve_help, sg, 1, f);
    fclose(f);
    for (const Opt *o = serve_opts; o->kind != OPT_END; o++)
        if (o->name) CHECKM(strstr(text, o->name) != NULL, o->name);
    free(text);
}

/* log_esc: names from outside can neither break a log line nor send
 * terminal escapes; printable UTF-8 passes through. */
static void test_log_esc(void) {
    static const struct { const char *in, *out; } cases[] = {
        { "plain name.json", "plain name.json" },
        { "\ntouch PWNED #.json", "\\x0atouch PWNED #.json" },
        { "a\rb\tc\x1b[31md\x7f", "a\\x0db\\x09c\\x1b[31md\\x7f" },
        { "back\\slash", "back\\x5cslash" },
        { "\xc3\xbcn\xc3\xaf" "code \xe2\x82\xac \xf0\x9f\x98\x80",
          "\xc3\xbcn\xc3\xaf" "code \xe2\x82\xac \xf0\x9f\x98\x80" },
        { "c1 \xc2\x9b csi", "c1 \\xc2\\x9b csi" },          /* U+009B */
        { "bad \xff \xc3( \xe2\x82", "bad \\xff \\xc3( \\xe2\\x82" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        Buf b = { 0 };
        CHECKM(!strcmp(log_esc(&b, cases[i].in), cases[i].out), cases[i].out);
        buf_free(&b);
    }
}

/* The search query builder (PROTOCOL §13): every word quoted, so nothing
 * the user types is an FTS5 operator; "word*" a prefix. */
static void test_search_expr(void) {
    static const struct { const char *in, *out; int n; } cases[] = {
        { "fox", "\"fox\"", 1 },
        { "  quick\tbrown\nfox ", "\"quick\" \"brown\" \"fox\"", 3 },
        { "a\"b", "\"a\"\"b\"", 1 },
        { "\"", "\"\"\"\"", 1 },
        { "fo*", "\"fo\"*", 1 },
        { "*", "\"*\"", 1 },
        { "NEAR(a b)", "\"NEAR(a\" \"b)\"", 2 },
        { "body:x OR y", "\"body:x\" \"OR\" \"y\"", 3 },
        { " \t\n", "", 0 },
        { "", "", 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        Buf b = { 0 };
        CHECK(hub_search_expr(str_c(cases[i].in), &b) == cases[i].n);
        CHECK(!strcmp(b.p ? b.p : "", cases[i].out));
        buf_free(&b);
    }
}

int main(void) {
    test_buf();
    test_str();
    test_iso();
    test_parse_int_text();
    test_sha256();
    test_token_compare();
    test_uuid();
    test_rand_without_descriptors();
    test_utf8();
    test_json_corpus();
    test_json_reader();
    test_json_coerce();
    test_json_pylen();
    test_json_str();
    test_http_valid();
    test_http_errors();
    test_http_response_valid();
    test_http_response_errors();
    test_client_read();
    test_http_query();
    test_mcp_frame();
    test_mcp_tools();
    test_mcp_cursors();
    test_admit();
    test_query_readers();
    test_relay_envelope();
    test_http_frame();
    test_timer_heap();
    test_wait_buckets();
    test_message_render();
    test_message_cache();
    test_wait_match();
    test_options();
    test_log_esc();
    test_search_expr();
    ut_guard_free();
    printf("unit: %d passed, %d failed\n", ut_pass, ut_fail);
    return ut_fail > 0;
}
