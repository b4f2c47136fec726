#!/bin/sh
# Run every test stage and end with one "N passed, M failed" line.
# usage: tests/run.sh ARC_BINARY UNIT_BINARY [ASAN_ARC_BINARY ASAN_UNIT_BINARY]
# The optional pair runs the unit and integration stages once more against
# the sanitizer build. Environment: FUZZ_TARGETS (names whose corpus
# tests/fuzz/NAME is replayed), FUZZ_TEST_SECONDS (run each libFuzzer target
# that long; 0 or unset: no fuzzing), FUZZ_CC (the clang to build with).
arc=$1 unit=$2 asan_arc=$3 asan_unit=$4
cd "$(dirname "$0")/.." || exit 2
out=tests/out
mkdir -p "$out"
pass=0 fail=0 skip=0
san_env="ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1}"
san_env="$san_env UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

# count LINE: add the "N passed, M failed[, K skipped]" figures of a stage.
count() {
    p=$(printf '%s\n' "$1" | sed -n 's/.* \([0-9][0-9]*\) passed.*/\1/p')
    f=$(printf '%s\n' "$1" | sed -n 's/.* \([0-9][0-9]*\) failed.*/\1/p')
    s=$(printf '%s\n' "$1" | sed -n 's/.* \([0-9][0-9]*\) skipped.*/\1/p')
    pass=$((pass + ${p:-0})) fail=$((fail + ${f:-0})) skip=$((skip + ${s:-0}))
}

# unit_stage BINARY LOG [ENV...]: the C unit tests.
unit_stage() {
    bin=$1 log=$2
    shift 2
    echo "== unit tests ($bin)"
    if env "$@" "$bin" > "$log" 2>&1; then :; else
        grep -q "passed" "$log" || fail=$((fail + 1))
    fi
    tail -n 20 "$log"
    count "$(grep 'passed' "$log" | tail -n 1)"
}

# integration_run BINARY LOG [ENV...]: tests/test_*.py against BINARY.
integration_run() {
    bin=$1 log=$2
    shift 2
    env "$@" ARC="$(pwd)/$bin" python3 tests/pyrun.py > "$log" 2>&1
}

# integration_report BINARY LOG: print and count a finished run.
integration_report() {
    echo "== integration tests (ARC=$1)"
    tail -n 30 "$2"
    line=$(grep -E '^integration: [0-9]+ passed' "$2" | tail -n 1)
    [ -n "$line" ] || fail=$((fail + 1))
    count "$line"
}

# The section map at the top of arc.c names every `/* ==== tag:` banner,
# in order (STYLE.md section 1).
echo "== section map"
if python3 tests/check_map.py arc.c; then
    pass=$((pass + 1))
else
    fail=$((fail + 1))
fi

unit_stage "$unit" "$out/unit.log"
# shellcheck disable=SC2086
[ -n "$asan_unit" ] && unit_stage "$asan_unit" "$out/unit-asan.log" $san_env

echo "== fuzz corpus replay"
for t in $FUZZ_TARGETS; do
    if [ -x "tests/fuzz-replay-$t" ]; then
        if r=$("tests/fuzz-replay-$t" "tests/fuzz/$t" 2>&1); then
            echo "$r"
            pass=$((pass + 1))
        else
            echo "$r" | tail -n 20
            echo "fuzz replay $t: FAILED"
            fail=$((fail + 1))
        fi
    fi
done

# Each libFuzzer target for a short while, so that CI keeps them building
# and running; new inputs collect in tests/out/fuzz-NAME, a crash fails the
# stage and leaves tests/out/fuzz-NAME-crash-*. Without a usable clang the
# targets count as skipped. The stage runs in the background, beside the
# integration tests (it keeps one core busy; they mostly wait), and ends
# with a "fuzz: P passed, F failed, S skipped" line.
fuzz_stage() {
    if ! ${MAKE:-make} -s fuzz FUZZ_TARGETS="$FUZZ_TARGETS" \
            FUZZ_CC="${FUZZ_CC:-clang}" > "$out/fuzz-build.log" 2>&1; then
        tail -n 20 "$out/fuzz-build.log"
        echo "fuzz: build FAILED"
        echo "fuzz: 0 passed, 1 failed"
        return
    fi
    fp=0 ff=0
    for t in $FUZZ_TARGETS; do
        mkdir -p "$out/fuzz-$t"
        if "tests/fuzz_$t" -max_total_time="$secs" -print_final_stats=1 \
               -artifact_prefix="$out/fuzz-$t-" "$out/fuzz-$t" "tests/fuzz/$t" \
               > "$out/fuzz-$t.log" 2>&1; then
            runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/fuzz-$t.log")
            echo "fuzz $t: ${runs:-?} runs, no crash"
            fp=$((fp + 1))
        else
            tail -n 40 "$out/fuzz-$t.log"
            echo "fuzz $t: FAILED (input saved as $out/fuzz-$t-*)"
            ff=$((ff + 1))
        fi
    done
    echo "fuzz: $fp passed, $ff failed"
}

secs=${FUZZ_TEST_SECONDS:-0}
fuzz_pid=
if [ "$secs" -gt 0 ] && [ -n "$FUZZ_TARGETS" ]; then
    echo "== fuzzing, $secs s per target (in the background)"
    # Installing clang (apt-get) happens here, in the foreground: apt takes
    # a lock that setup-browser.sh needs too.
    if sh tests/setup-fuzz.sh "${FUZZ_CC:-clang}"; then
        fuzz_stage > "$out/fuzz-stage.log" 2>&1 &
        fuzz_pid=$!
    else
        n=$(echo $FUZZ_TARGETS | wc -w)
        echo "fuzz: $n targets skipped"
        skip=$((skip + n))
    fi
fi

echo "== browser for the dashboard test"
sh tests/setup-browser.sh
echo "== real MCP clients and the conformance suite"
sh tests/setup-clients.sh

# The two integration runs go side by side: the tests mostly wait (for
# answers, timeouts, processes), so this halves the stage's wall time. Every
# test uses its own free port and temporary directory.
if [ -n "$asan_arc" ]; then
    # shellcheck disable=SC2086
    integration_run "$asan_arc" "$out/integration-asan.log" $san_env &
    asan_pid=$!
fi
integration_run "$arc" "$out/integration.log"
integration_report "$arc" "$out/integration.log"
if [ -n "$asan_arc" ]; then
    wait "$asan_pid"
    integration_report "$asan_arc" "$out/integration-asan.log"
fi

if [ -n "$fuzz_pid" ]; then
    wait "$fuzz_pid"
    echo "== fuzzing, $secs s per target"
    cat "$out/fuzz-stage.log"
    line=$(grep -E '^fuzz: [0-9]+ passed' "$out/fuzz-stage.log" | tail -n 1)
    [ -n "$line" ] || fail=$((fail + 1))
    count "$line"
fi

echo
if [ "$skip" -gt 0 ]; then
    echo "$pass passed, $fail failed, $skip skipped"
else
    echo "$pass passed, $fail failed"
fi
[ "$fail" -eq 0 ]
