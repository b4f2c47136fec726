/* fuzz.h -- what every tests/fuzz_*.c target shares: arc.c itself, the
 * libFuzzer entry point's prototype, and FUZZ_CHECK.
 *
 * A target defines LLVMFuzzerTestOneInput() and ends with
 * #include "replay.h", which adds the -DFUZZ_REPLAY main(). Its seed corpus
 * lives in tests/fuzz/NAME/; adding NAME to FUZZ_TARGETS in the Makefile is
 * all the build, `make fuzz-run`, `make fuzz-replay` and `make test` need. */

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
