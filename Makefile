# arc: one C file plus the vendored SQLite amalgamation. No configure step.
CC ?= cc
CFLAGS ?= -O2 -g
PREFIX ?= /usr/local
WARN = -std=c11 -pedantic -Wall -Wextra -Werror -Wshadow -Wvla \
       -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 -Wundef \
       -Wwrite-strings -Wno-overlength-strings -Wconversion -Wsign-conversion
# SQLite: multi-thread mode (each connection used by one thread at a time),
# FTS5 for later search, no double-quoted string literals, no extensions.
SQLDEFS = -DSQLITE_THREADSAFE=2 -DSQLITE_ENABLE_FTS5 -DSQLITE_DQS=0 \
          -DSQLITE_DEFAULT_MEMSTATUS=0 -DSQLITE_OMIT_LOAD_EXTENSION \
          -DSQLITE_OMIT_DEPRECATED -DSQLITE_DEFAULT_WAL_SYNCHRONOUS=2
SAN = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
      -fno-sanitize-recover=all
# libFuzzer targets, tests/fuzz_NAME.c with seeds in tests/fuzz/NAME/:
# JSON, HTTP framing, query strings, relay envelopes, the MCP stdio framer,
# the client's response reader.
FUZZ_TARGETS = json http query relay mcp response

.PHONY: all test test-poll asan tsan clean install uninstall dash check-map

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

# make dash: regenerate the dashboard page's array in arc.c (the dash
# section) from its source, dash/dash.html. arc.c holds the result, so a
# build needs no Python; make test checks that the two agree.
dash:
	python3 dash/gen_dash.py dash/dash.html --splice arc.c

# make check-map: the section map at the top of arc.c names every
# `/* ==== tag:` banner, in order (make test runs it too).
check-map:
	python3 tests/check_map.py arc.c

# make test: the section map check, the unit tests, the fuzz corpus replay,
# each libFuzzer target for FUZZ_TEST_SECONDS (tests/setup-fuzz.sh installs
# clang if it can; the targets are skipped if not), then the integration
# suite against ./arc (test_dashboard.py checks arc.c's page against
# dash/dash.html) and, unit tests included, once more against the sanitizer
# build (what `make asan` runs alone). TEST_ASAN= leaves the sanitizer half
# out.
FUZZ_TEST_SECONDS = 20
TEST_ASAN = arc-asan tests/unit-asan
test: arc tests/unit $(TEST_ASAN) $(FUZZ_TARGETS:%=tests/fuzz-replay-%)
	@FUZZ_TARGETS="$(FUZZ_TARGETS)" FUZZ_CC="$(FUZZ_CC)" \
	 FUZZ_TEST_SECONDS=$(FUZZ_TEST_SECONDS) \
	 sh tests/run.sh ./arc tests/unit $(TEST_ASAN:%=./%)

# make test-poll: the unit tests, the corpus replay and the integration
# suite against the poll() backend of the event loop (-DARC_POLL), which
# Linux builds otherwise replace with epoll.
arc-poll: arc.c sqlite3.o
	$(CC) $(WARN) $(CFLAGS) -DARC_POLL -o $@ arc.c sqlite3.o $(LDFLAGS) -pthread -lm

test-poll: arc-poll tests/unit $(FUZZ_TARGETS:%=tests/fuzz-replay-%)
	@FUZZ_TARGETS="$(FUZZ_TARGETS)" sh tests/run.sh ./arc-poll tests/unit

# make tsan: the integration suite against a ThreadSanitizer build (the
# relay thread, the fan-out sender threads, arc mcp's call threads, arc
# smoke's roles). Not part of make test, to keep that under 10 minutes.
arc-tsan: arc.c sqlite3.o
	$(CC) $(WARN) -O1 -g -fsanitize=thread -o $@ arc.c sqlite3.o $(LDFLAGS) -pthread -lm

tsan: arc-tsan
	@TSAN_OPTIONS=halt_on_error=1 ARC=$(CURDIR)/arc-tsan python3 tests/pyrun.py

# make asan: the unit and integration suites against the sanitizer build.
asan: arc-asan tests/unit-asan $(FUZZ_TARGETS:%=tests/fuzz-replay-%)
	@ASAN_OPTIONS=halt_on_error=1:detect_leaks=1 \
	 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	 FUZZ_TARGETS="$(FUZZ_TARGETS)" sh tests/run.sh ./arc-asan tests/unit-asan

# libFuzzer targets (clang; `make fuzz FUZZ_CC=clang-15` to pick one): one
# tests/fuzz_NAME.c and one seed corpus tests/fuzz/NAME/ per name in
# FUZZ_TARGETS (at the top); adding a name is all the rules below need.
# The limits are shrunk so short inputs reach the overflow paths; the
# replay build uses the same ones, so a saved input means the same thing
# to both.
FUZZ_CC = clang
FUZZ_SECONDS = 20
FUZZ_LIMITS = -DARC_MAX_URL=256 -DARC_MAX_HEAD=1024 -DARC_MAX_HEADERS=16 \
              -DARC_JSON_DEPTH=16 -DARC_CLIENT_MAX_BODY=2048
FUZZ_FLAGS = -g -O1 -fno-omit-frame-pointer \
             -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_BINS = $(FUZZ_TARGETS:%=tests/fuzz_%) $(FUZZ_TARGETS:%=tests/fuzz-replay-%)
FUZZ_DEPS = tests/fuzz.h tests/replay.h arc.c sqlite3.o

.PHONY: fuzz fuzz-run fuzz-replay

fuzz: $(FUZZ_TARGETS:%=tests/fuzz_%)

tests/fuzz_%: tests/fuzz_%.c $(FUZZ_DEPS)
	$(FUZZ_CC) $(FUZZ_FLAGS) -DARC_NO_MAIN $(FUZZ_LIMITS) -o $@ \
	    tests/fuzz_$*.c sqlite3.o -pthread -lm

# make fuzz-run: each target for FUZZ_SECONDS seconds (FUZZ_TARGETS=http
# for one). New inputs go to tests/out/fuzz-NAME (the checked-in corpus is
# only read), crashes to tests/out/fuzz-NAME-crash-*; any crash fails it.
fuzz-run: fuzz
	@for t in $(FUZZ_TARGETS); do \
	    mkdir -p tests/out/fuzz-$$t || exit 1; \
	    echo "fuzz-run: $$t for $(FUZZ_SECONDS) s"; \
	    ./tests/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	        -artifact_prefix=tests/out/fuzz-$$t- \
	        tests/out/fuzz-$$t tests/fuzz/$$t || exit 1; \
	done

# Replay: the same targets as plain programs, any compiler, no libFuzzer.
tests/fuzz-replay-%: tests/fuzz_%.c $(FUZZ_DEPS)
	$(CC) $(WARN) $(CFLAGS) -DFUZZ_REPLAY -DARC_NO_MAIN $(FUZZ_LIMITS) -o $@ \
	    tests/fuzz_$*.c sqlite3.o -pthread -lm

fuzz-replay: $(FUZZ_TARGETS:%=tests/fuzz-replay-%)
	@for t in $(FUZZ_TARGETS); do \
	    ./tests/fuzz-replay-$$t tests/fuzz/$$t || exit 1; \
	done

# make bench: the load generator against a fresh ./arc per run (and on a large
# generated store: BENCH_STORE=200000 for a quicker run); REF="python3
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
	rm -f arc arc-asan arc-poll arc-tsan sqlite3.o tests/unit tests/unit-asan tests/bench
	rm -rf tests/__pycache__ tests/out
	rm -f $(FUZZ_BINS)
