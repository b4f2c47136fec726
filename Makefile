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

.PHONY: all test asan clean install uninstall

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
test: arc tests/unit
	@sh tests/run.sh ./arc tests/unit

# make asan: the same suite against the sanitizer build.
asan: arc-asan tests/unit-asan
	@ASAN_OPTIONS=halt_on_error=1:detect_leaks=1 \
	 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	 sh tests/run.sh ./arc-asan tests/unit-asan

install: arc
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 arc $(DESTDIR)$(PREFIX)/bin/arc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/arc

clean:
	rm -f arc arc-asan sqlite3.o tests/unit tests/unit-asan
	rm -rf tests/__pycache__ tests/out
