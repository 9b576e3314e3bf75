#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# The project's test command: formatting, lints, builds and all tests.
#
#   scripts/test.sh
#
# Steps (all run even when one fails; the summary at the end lists them):
#   deps          scripts/deps.sh (installs missing Debian packages; a failure here stops)
#   fmt           cargo fmt --check
#   clippy        cargo clippy --all-targets -- -D warnings
#   build         cargo build
#   fuzz-build    only if fuzz/ exists: cargo fmt --check on the fuzz crate,
#                 a build of its targets with the stable toolchain, and a run of
#                 each target (fuzz/fuzz_targets/*.rs) over its committed seeds
#                 (fuzz/seeds/<target>/)
#                 (cargo build --manifest-path fuzz/Cargo.toml, sharing target/
#                 so the dependencies are not built twice). That checks they
#                 compile and link; fuzzing itself: see fuzz/README.md
#   test          cargo test --no-fail-fast (unit, integration incl. tests/meson_install.rs,
#                 doc tests); its output is also kept in target/test-logs/cargo-test.log
#                 and, when a test fails, the summary names it and quotes its panic
#   gst126        scripts/gst126.sh: the `analytics` feature built, linted and tested
#                 against GStreamer 1.26 in a Debian 13 root under the target directory
#                 (made on the first run, a few minutes; needs root and the Debian
#                 mirror, and fails saying so when it cannot run)
#   viewer        the viewer crate (viewer/, its own Cargo.lock, sharing target/):
#                 cargo fmt --check, clippy -D warnings, and cargo test: unit tests
#                 and tests/browser.rs (real mosquitto, gst-launch-1.0 with the
#                 plugin built by the build step, the viewer, headless chromium)
#
# Exits non-zero when any step failed.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

# shellcheck source=scripts/deps.sh
. scripts/deps.sh
if ! deps_main; then
    echo "test.sh: dependencies could not be installed; nothing was tested" >&2
    exit 1
fi

summary=()
failed=0
# Lines quoted after the summary: what failed, so that the end of the output says it.
failures=()

step() {
    local name=$1 start=$SECONDS rc=0
    shift
    printf '\n==> %s: %s\n' "$name" "$*"
    "$@" || rc=$?
    local took=$((SECONDS - start))
    if ((rc == 0)); then
        summary+=("PASS  $name (${took}s)")
    else
        summary+=("FAIL  $name (exit $rc, ${took}s)")
        failed=$((failed + 1))
    fi
}

fuzz_build() {
    local target_dir=${CARGO_TARGET_DIR:-$REPO_DIR/target} t
    cargo fmt --check --manifest-path fuzz/Cargo.toml &&
        cargo build --manifest-path fuzz/Cargo.toml --bins --target-dir "$target_dir" ||
        return 1
    # The committed seeds, through the targets' own checks (regressions included), for
    # every target in fuzz/fuzz_targets/ (cargo-fuzz names the binary after the file).
    local targets=(fuzz/fuzz_targets/*.rs)
    if [[ ! -e ${targets[0]} ]]; then
        echo "no fuzz targets in fuzz/fuzz_targets/" >&2
        return 1
    fi
    targets=("${targets[@]##*/}")
    for t in "${targets[@]%.rs}"; do
        if [[ ! -d fuzz/seeds/$t ]]; then
            echo "fuzz target $t has no seeds: add some to fuzz/seeds/$t/" >&2
            return 1
        fi
        "$target_dir/debug/$t" fuzz/seeds/"$t"/* >/dev/null 2>&1 || {
            echo "fuzz target $t fails on its seeds: run $target_dir/debug/$t fuzz/seeds/$t/*" >&2
            return 1
        }
    done
}

# cargo test over every test binary (not stopping at the first that fails), its output
# kept in a log; the failing tests and their panic messages go to `failures`.
cargo_tests() {
    local log_dir=${CARGO_TARGET_DIR:-$REPO_DIR/target}/test-logs rc=0
    mkdir -p "$log_dir"
    cargo test --no-fail-fast 2>&1 | tee "$log_dir/cargo-test.log" || rc=$?
    if ((rc != 0)); then
        local line
        while IFS= read -r line; do
            failures+=("cargo test: $line")
        done < <(awk '/^test .* \.\.\. FAILED$/ || /^error: / { print; next }
                      /panicked at/ { print; if ((getline next_line) > 0) print "  " next_line }' \
            "$log_dir/cargo-test.log" | head -n 60)
        failures+=("cargo test: the whole output is in $log_dir/cargo-test.log")
    fi
    return "$rc"
}

viewer_tests() {
    local target_dir=${CARGO_TARGET_DIR:-$REPO_DIR/target}
    cargo fmt --check --manifest-path viewer/Cargo.toml &&
        cargo clippy --manifest-path viewer/Cargo.toml --all-targets \
            --target-dir "$target_dir" -- -D warnings &&
        ANALYTICSMQTT_PLUGIN_DIR="$target_dir/debug" \
            cargo test --manifest-path viewer/Cargo.toml --target-dir "$target_dir"
}

step fmt cargo fmt --check
step clippy cargo clippy --all-targets -- -D warnings
step build cargo build
if [[ -d fuzz ]]; then
    # Stable on purpose: cargo-fuzz needs nightly, which a fresh machine does
    # not have; a plain build still compiles and links every fuzz target.
    step fuzz-build fuzz_build
else
    summary+=("SKIP  fuzz-build (no fuzz/ directory)")
fi
step test cargo_tests
step gst126 scripts/gst126.sh
step viewer viewer_tests

printf '\n==> summary\n'
printf '%s\n' "${summary[@]}"
if ((${#failures[@]} > 0)); then
    printf '\n==> what failed\n'
    printf '%s\n' "${failures[@]}"
fi
if ((failed > 0)); then
    echo "test.sh: $failed step(s) failed"
    exit 1
fi
echo "test.sh: all steps passed"
