/* fuzz_relay -- libFuzzer target for the relay's request envelope reader.
 *
 * The input is the content of a request file (PROTOCOL §11). The reader,
 * relay_parse_envelope(), either refuses it with a reason or fills a
 * RelayReq whose method is upper case, whose path starts with '/', neither
 * holding a NUL, and whose body, if any, is a JSON object as compact JSON.
 * An envelope written back from those fields must read as the same fields.
 * The input, cut at its first NUL, is also an agent name for
 * relay_safe_name(), which must give a safe directory name.
 *
 * Build: make fuzz (clang libFuzzer + ASan/UBSan); replay: make fuzz-replay
 * (any compiler, -DFUZZ_REPLAY, see tests/replay.h). */

#include "fuzz.h"

/* Two optional C strings are equal. */
static int fuzz_same_cstr(const char *a, const char *b) {
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* Check the fields of an accepted envelope. */
static void fuzz_check_fields(const RelayReq *r) {
    FUZZ_CHECK(r->method && r->method[0]);
    for (const char *p = r->method; *p; p++)
        FUZZ_CHECK(!islower((unsigned char)*p));
    FUZZ_CHECK(r->path && r->path[0] == '/');
    FUZZ_CHECK(utf8_valid(r->method, strlen(r->method)) &&
               utf8_valid(r->path, strlen(r->path)));
    if (r->request_id) {
        Str id = str_c(r->request_id);
        FUZZ_CHECK(id.n > 0 && str_trim(id).n == id.n);
    }
    if (r->body) {
        Json j = { 0 };
        FUZZ_CHECK(json_parse(&j, r->body, strlen(r->body)) == 0);
        FUZZ_CHECK(j.t[0].type == JSON_OBJ);
        json_free(&j);
    }
}

/* Write r's fields as a new envelope and read it back. */
static void fuzz_round_trip(const RelayReq *r) {
    Buf env = { 0 };
    char err[ARC_ERRLEN];
    buf_adds(&env, "{\"method\":");
    json_cstr(&env, r->method);
    buf_adds(&env, ",\"path\":");
    json_cstr(&env, r->path);
    if (r->request_id) {
        buf_adds(&env, ",\"request_id\":");
        json_cstr(&env, r->request_id);
    }
    if (r->body) {
        buf_adds(&env, ",\"body\":");
        buf_adds(&env, r->body);
    }
    buf_addc(&env, '}');
    RelayReq *back = xrealloc(NULL, sizeof *back);
    memset(back, 0, sizeof *back);
    err[0] = 0;
    int rc = relay_parse_envelope(buf_str(&env), back, err);
    if (rc) fprintf(stderr, "round trip refused: %s\n", err);
    FUZZ_CHECK(rc == 0);
    FUZZ_CHECK(fuzz_same_cstr(back->method, r->method) &&
               fuzz_same_cstr(back->path, r->path) &&
               fuzz_same_cstr(back->request_id, r->request_id) &&
               fuzz_same_cstr(back->body, r->body));
    relay_req_free(back);
    buf_free(&env);
}

/* relay_safe_name: only [A-Za-z0-9._-], never empty, never a dot first. */
static void fuzz_safe_name(const char *s, size_t size) {
    char *name = xstrndup(s, size);     /* cut at the first NUL */
    Buf out = { 0 };
    relay_safe_name(name, &out);
    FUZZ_CHECK(out.len > 0 && out.p[0] != '.');
    for (size_t i = 0; i < out.len; i++) {
        unsigned char c = (unsigned char)out.p[i];
        FUZZ_CHECK(isalnum(c) || c == '.' || c == '_' || c == '-');
    }
    buf_free(&out);
    free(name);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *s = (const char *)data;
    RelayReq *r = xrealloc(NULL, sizeof *r);
    memset(r, 0, sizeof *r);
    char err[ARC_ERRLEN];
    err[0] = 0;
    if (relay_parse_envelope((Str){ s, size }, r, err) == 0) {
        FUZZ_CHECK(err[0] == 0);
        fuzz_check_fields(r);
        fuzz_round_trip(r);
    } else {
        FUZZ_CHECK(err[0] != 0);
    }
    relay_req_free(r);
    fuzz_safe_name(s, size);
    return 0;
}

#include "replay.h"
