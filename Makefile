# arc: one C file plus the vendored SQLite amalgamation. No configure step.
CC ?= cc
CFLAGS ?= -O2 -g
PREFIX ?= /usr/local
WARN = -std=c11 -pedantic -Wall -Wextra -Werror -Wshadow -Wvla \
       -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wundef \
       -Wwrite-strings -Wno-overlength-strings
# SQLite: multi-thread mode (each connection used by one thread at a time),
# FTS5 for later search, no double-quoted string literals, no extensions.
SQLDEFS = -DSQLITE_THREADSAFE=2 -DSQLITE_ENABLE_FTS5 -DSQLITE_DQS=0 \
          -DSQLITE_DEFAULT_MEMSTATUS=0 -DSQLITE_OMIT_LOAD_EXTENSION \
          -DSQLITE_OMIT_DEPRECATED -DSQLITE_DEFAULT_WAL_SYNCHRONOUS=2
SAN = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
      -fno-sanitize-recover=all

.PHONY: all test test-poll asan clean install uninstall

all: arc

arc: arc.c sqlite3.o
	$(CC) $(WARN) $(CFLAGS) -o $@ arc.c sqlite3.o $(LDFLAGS) -pthread -lm

sqlite3.o: sqlite3.c sqlite3.h
	$(CC) $(CFLAGS) $(SQLDEFS) -c sqlite3.c -o $@

# The sanitizer build links the same sqlite3.o: SQLite is not under test.
arc-asan: arc.c sqlite3.o
	$(CC) $(WARN) $(SAN) -o $@ arc.c sqlite3.o $(LDFLAGS) -pthread -lm

tests/unit: tests/unit.c arc.c sqlite3.o
	$(CC) $(WARN) -Wno-missing-prototypes $(CFLAGS) -DARC_NO_MAIN \
	    -DARC_BUF_MIN=1 -o $@ tests/unit.c sqlite3.o -pthread -lm

tests/unit-asan: tests/unit.c arc.c sqlite3.o
	$(CC) $(WARN) -Wno-missing-prototypes $(SAN) -DARC_NO_MAIN \
	    -DARC_BUF_MIN=1 -o $@ tests/unit.c sqlite3.o -pthread -lm

# make test: unit tests, then the integration suite against ./arc.
test: arc tests/unit tests/fuzz-replay-json tests/fuzz-replay-http
	@sh tests/run.sh ./arc tests/unit

# make test-poll: the same suite against the poll() backend of the event
# loop, which Linux builds otherwise replace with epoll.
arc-poll: arc.c sqlite3.o
	$(CC) $(WARN) $(CFLAGS) -DARC_POLL -o $@ arc.c sqlite3.o $(LDFLAGS) -pthread -lm

test-poll: arc-poll tests/unit tests/fuzz-replay-json tests/fuzz-replay-http
	@sh tests/run.sh ./arc-poll tests/unit

# make asan: the same suite against the sanitizer build.
asan: arc-asan tests/unit-asan
	@ASAN_OPTIONS=halt_on_error=1:detect_leaks=1 \
	 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	 sh tests/run.sh ./arc-asan tests/unit-asan

# libFuzzer targets (clang; `make fuzz FUZZ_CC=clang-15` to pick one). The
# limits are shrunk so short inputs reach the overflow paths; the replay
# build uses the same ones, so a saved input means the same thing to both.
FUZZ_CC = clang
FUZZ_SECONDS = 20
FUZZ_LIMITS = -DARC_MAX_URL=256 -DARC_MAX_HEAD=1024 -DARC_MAX_HEADERS=16 \
              -DARC_JSON_DEPTH=16
FUZZ_FLAGS = -g -O1 -fno-omit-frame-pointer \
             -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_BINS = tests/fuzz_json tests/fuzz_http tests/fuzz-replay-json \
            tests/fuzz-replay-http

.PHONY: fuzz fuzz-run fuzz-replay

fuzz: tests/fuzz_json tests/fuzz_http

tests/fuzz_json: tests/fuzz_json.c tests/replay.h arc.c sqlite3.o
	$(FUZZ_CC) $(FUZZ_FLAGS) -DARC_NO_MAIN $(FUZZ_LIMITS) -o $@ \
	    tests/fuzz_json.c sqlite3.o -pthread -lm

tests/fuzz_http: tests/fuzz_http.c tests/replay.h arc.c sqlite3.o
	$(FUZZ_CC) $(FUZZ_FLAGS) -DARC_NO_MAIN $(FUZZ_LIMITS) -o $@ \
	    tests/fuzz_http.c sqlite3.o -pthread -lm

# make fuzz-run: each target for FUZZ_SECONDS seconds. New inputs go to
# tests/out/fuzz-NAME (the checked-in corpus is only read), crashes to
# tests/out/fuzz-NAME-crash-*; any crash fails the target.
fuzz-run: fuzz
	@for t in json http; do \
	    mkdir -p tests/out/fuzz-$$t || exit 1; \
	    echo "fuzz-run: $$t for $(FUZZ_SECONDS) s"; \
	    ./tests/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	        -artifact_prefix=tests/out/fuzz-$$t- \
	        tests/out/fuzz-$$t tests/corpus/$$t || exit 1; \
	done

# Replay: the same targets as plain programs, any compiler, no libFuzzer.
tests/fuzz-replay-json: tests/fuzz_json.c tests/replay.h arc.c sqlite3.o
	$(CC) $(WARN) $(CFLAGS) -DFUZZ_REPLAY -DARC_NO_MAIN $(FUZZ_LIMITS) -o $@ \
	    tests/fuzz_json.c sqlite3.o -pthread -lm

tests/fuzz-replay-http: tests/fuzz_http.c tests/replay.h arc.c sqlite3.o
	$(CC) $(WARN) $(CFLAGS) -DFUZZ_REPLAY -DARC_NO_MAIN $(FUZZ_LIMITS) -o $@ \
	    tests/fuzz_http.c sqlite3.o -pthread -lm

fuzz-replay: tests/fuzz-replay-json tests/fuzz-replay-http
	./tests/fuzz-replay-json tests/corpus/json
	./tests/fuzz-replay-http tests/corpus/http

# make bench: the load generator against a fresh ./arc per run; REF="python3
# path/to/arc.py" adds the same measurements against another hub. Prints one
# table; raw figures go to tests/out/bench.json.
.PHONY: bench
REF ?=

tests/bench: tests/bench.c arc.c sqlite3.o
	$(CC) $(WARN) -Wno-missing-prototypes $(CFLAGS) -DARC_NO_MAIN -o $@ \
	    tests/bench.c sqlite3.o -pthread -lm

bench: arc tests/bench
	@ARC=./arc BENCH=tests/bench REF="$(REF)" python3 tests/bench.py

install: arc
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 arc $(DESTDIR)$(PREFIX)/bin/arc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/arc

clean:
	rm -f arc arc-asan arc-poll sqlite3.o tests/unit tests/unit-asan tests/bench
	rm -rf tests/__pycache__ tests/out
	rm -f $(FUZZ_BINS)
