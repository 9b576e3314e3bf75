#!/bin/sh
# SPDX-License-Identifier: MPL-2.0
# Helper for meson.build; not meant to be run by hand.
#
#   meson-cargo-build.sh CARGO MANIFEST TARGET_DIR PROFILE BUILT_LIB OUTPUT [FEATURES]
#       Runs `cargo build --lib` (with `--features FEATURES` when given and not
#       empty) and copies the built plugin to OUTPUT (inside meson's build
#       directory, where meson installs it from).
#   meson-cargo-build.sh --print-version MANIFEST
#       Prints the [package] version from Cargo.toml.
set -eu

if [ "${1:-}" = "--print-version" ]; then
    # The first `version = "..."` line of Cargo.toml is the package's own.
    sed -n 's/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$2" | head -n 1
    exit 0
fi

if [ "$#" -ne 6 ] && [ "$#" -ne 7 ]; then
    echo "usage: $0 CARGO MANIFEST TARGET_DIR PROFILE BUILT_LIB OUTPUT [FEATURES]" >&2
    exit 2
fi
cargo=$1 manifest=$2 target_dir=$3 profile=$4 built=$5 output=$6 features=${7:-}

if [ -n "$features" ]; then
    set -- --features "$features"
else
    set --
fi
"$cargo" build --lib --manifest-path "$manifest" --target-dir "$target_dir" --profile "$profile" "$@"

# Copy through a temporary file so OUTPUT is never half written, and keep the
# old file (and its timestamp) when cargo produced nothing new.
if ! cmp -s "$built" "$output"; then
    cp "$built" "$output.tmp"
    mv -f "$output.tmp" "$output"
fi
