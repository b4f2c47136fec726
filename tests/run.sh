#!/bin/sh
# Run every test stage and end with one "N passed, M failed" line.
# usage: tests/run.sh ARC_BINARY UNIT_BINARY
arc=$1 unit=$2
cd "$(dirname "$0")/.." || exit 2
out=tests/out
mkdir -p "$out"
pass=0 fail=0 skip=0

# count LINE: add the "N passed, M failed[, K skipped]" figures of a stage.
count() {
    p=$(printf '%s\n' "$1" | sed -n 's/.* \([0-9][0-9]*\) passed.*/\1/p')
    f=$(printf '%s\n' "$1" | sed -n 's/.* \([0-9][0-9]*\) failed.*/\1/p')
    s=$(printf '%s\n' "$1" | sed -n 's/.* \([0-9][0-9]*\) skipped.*/\1/p')
    pass=$((pass + ${p:-0})) fail=$((fail + ${f:-0})) skip=$((skip + ${s:-0}))
}

echo "== unit tests ($unit)"
if "$unit" > "$out/unit.log" 2>&1; then :; else
    grep -q "passed" "$out/unit.log" || fail=$((fail + 1))
fi
tail -n 20 "$out/unit.log"
count "$(grep 'passed' "$out/unit.log" | tail -n 1)"

echo "== fuzz corpus replay"
for t in json http; do
    if [ -x "tests/fuzz-replay-$t" ]; then
        if r=$("tests/fuzz-replay-$t" "tests/corpus/$t" 2>&1); then
            echo "$r"
            pass=$((pass + 1))
        else
            echo "$r" | tail -n 20
            echo "fuzz replay $t: FAILED"
            fail=$((fail + 1))
        fi
    fi
done

echo "== browser for the dashboard test"
sh tests/setup-browser.sh

echo "== integration tests (ARC=$arc)"
ARC="$(pwd)/$arc" python3 tests/pyrun.py > "$out/integration.log" 2>&1
tail -n 30 "$out/integration.log"
line=$(grep -E '^integration: [0-9]+ passed' "$out/integration.log" | tail -n 1)
[ -n "$line" ] || fail=$((fail + 1))
count "$line"

echo
if [ "$skip" -gt 0 ]; then
    echo "$pass passed, $fail failed, $skip skipped"
else
    echo "$pass passed, $fail failed"
fi
[ "$fail" -eq 0 ]
