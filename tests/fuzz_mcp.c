/* fuzz_mcp -- libFuzzer target for the MCP stdio framer (mcp_frame) and
 * the dispatcher (mcp_handle).
 *
 * The input is a byte stream as `arc mcp` reads it from stdin. It is framed
 * twice: all at once, and fed in pieces whose sizes come from the input's
 * first byte, as short reads would deliver it. Both must yield the same
 * messages and the same errors in the same order, every message must lie
 * inside the buffer, and every call must either frame something or ask for
 * more (mcp_drain() would spin otherwise). Each message is parsed as JSON
 * and dispatched as `arc mcp` does while no hub answers (every tool
 * failing), in the version the input's first byte picks; every answer must
 * be JSON, and nothing may park.
 *
 * Build: make fuzz (clang libFuzzer + ASan/UBSan); replay: make fuzz-replay
 * (any compiler, -DFUZZ_REPLAY, see tests/replay.h). */

#include "fuzz.h"

static const char *fuzz_version;   /* the dispatcher's, per input */

static void fuzz_on_msg(Str msg, void *arg) {
    Buf *log = arg;
    FUZZ_CHECK(msg.n <= MCP_MAX_MSG);
    buf_addf(log, "M%zu:", msg.n);
    buf_addstr(log, msg);
    Json j = { 0 };
    json_parse(&j, msg.p, msg.n);
    json_free(&j);
    McpIo io = { .offline = "fuzz: no hub" };
    snprintf(io.version, sizeof io.version, "%s", fuzz_version);
    mcp_handle(&io, msg);
    FUZZ_CHECK(!io.parked && !io.notes.len);
    if (io.out.len) {
        Json a = { 0 };
        FUZZ_CHECK(json_parse(&a, io.out.p, io.out.len) == 0);
        json_free(&a);
    }
    buf_free(&io.out);
}

static void fuzz_on_err(const char *why, void *arg) {
    FUZZ_CHECK(why != NULL);
    buf_adds(arg, "E");
}

/* Frame a stream delivered in chunks of `step` bytes (0: all at once)
 * through mcp_drain(), as the stdin loop does, recording "M<len>:<bytes>"
 * per message and "E" per error into log. */
static void fuzz_frame(const char *p, size_t n, size_t step, Buf *log) {
    Buf in = { 0 };
    size_t fed = 0;
    int skipping = 0;
    for (;;) {
        size_t chunk = step ? step : n;
        if (chunk > n - fed) chunk = n - fed;
        buf_add(&in, p + fed, chunk);
        fed += chunk;
        mcp_drain(&in, fed == n, &skipping, fuzz_on_msg, fuzz_on_err, log);
        if (fed == n) break;
    }
    /* At EOF everything but whitespace has been consumed. */
    for (size_t i = 0; i < in.len; i++)
        FUZZ_CHECK(skipping || strchr(" \t\r\n", in.p[i]));
    buf_free(&in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    size_t step = 1 + data[0] % 7;
    static const char *const versions[] = { "", "2025-03-26", "2024-11-05", "2026-07-28" };
    fuzz_version = versions[(data[0] >> 3) & 3];
    g_mcp.agent = "fuzz";
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    Buf whole = { 0 }, pieces = { 0 };
    fuzz_frame(p, n, 0, &whole);
    fuzz_frame(p, n, step, &pieces);
    /* Pieces may split an over-long line's error differently only when a
     * line exceeds MCP_MAX_MSG or a header block 8 KiB, which inputs of the
     * default -max_len (4096) never reach. */
    FUZZ_CHECK(whole.len == pieces.len && !memcmp(buf_cstr(&whole), buf_cstr(&pieces), whole.len));
    buf_free(&whole);
    buf_free(&pieces);
    return 0;
}

#include "replay.h"
