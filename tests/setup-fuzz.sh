#!/bin/sh
# Make sure the libFuzzer targets can be built: a clang that links
# -fsanitize=fuzzer,address,undefined. When it cannot, install Debian's
# clang and then the runtime package of its version (libclang-rt-N-dev holds
# libFuzzer and the sanitizer runtimes) with apt-get (needs root).
# Exit 0 when a fuzzer links, 1 (with the reason on stdout) when not; the
# caller then skips the fuzz stage.
# usage: sh tests/setup-fuzz.sh [CLANG]
cc=${1:-clang}
cd "$(dirname "$0")" || exit 1
mkdir -p out
probe=out/setup-fuzz-probe

# can_link: does $cc build a trivial libFuzzer target?
can_link() {
    printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
        'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);' \
        'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {' \
        '    (void)d; (void)n; return 0; }' > "$probe.c"
    "$cc" -fsanitize=fuzzer,address,undefined -o "$probe" "$probe.c" \
        > "$probe.log" 2>&1
}

# apt_install PKG...: install quietly; the log goes to tests/out.
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
        echo "setup-fuzz: cannot install $* (need apt-get as root)"
        return 1
    fi
    echo "setup-fuzz: installing $* (apt-get)"
    if [ ! -f out/setup-fuzz-apt-updated ]; then
        apt-get update > out/setup-fuzz-apt.log 2>&1 &&
            touch out/setup-fuzz-apt-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y \
        --no-install-recommends "$@" >> out/setup-fuzz-apt.log 2>&1 || {
        echo "setup-fuzz: apt-get failed (see tests/out/setup-fuzz-apt.log)"
        return 1
    }
}

can_link && exit 0
if ! command -v "$cc" >/dev/null 2>&1; then
    [ "$cc" = clang ] || { echo "setup-fuzz: $cc not found"; exit 1; }
    apt_install clang || exit 1
    can_link && exit 0
fi
# clang is there but libFuzzer is not: add its version's runtime package.
ver=$("$cc" -dumpversion 2>/dev/null | cut -d. -f1)
[ -n "$ver" ] && apt_install "libclang-rt-$ver-dev" && can_link && exit 0
echo "setup-fuzz: $cc cannot link a libFuzzer target (see tests/out/setup-fuzz-probe.log)"
exit 1
