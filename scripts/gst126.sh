#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# The GStreamer 1.26 lane: builds the plugin with `--features analytics` and with
# `--features analytics-oriented` (GStreamer 1.26's oriented boxes) and runs the analytics
# tests against the GStreamer 1.26 of Debian 13 (trixie), in a Debian root kept in the build
# tree.
#
#   scripts/gst126.sh              # run the lane (scripts/test.sh runs it as step gst126)
#   scripts/gst126.sh shell        # an interactive shell in the root, mounts as below
#   scripts/gst126.sh run CMD...   # one command in the root, in the source tree
#
# The root is ${CARGO_TARGET_DIR:-target}/trixie-root (or GST126_ROOT). It is made with
# `debootstrap --variant=minbase trixie` from the Debian mirror the machine's apt uses (or
# GST126_MIRROR), then gets the packages in ROOT_PACKAGES. Each stage writes a marker file
# when it has finished; a root without its markers is removed and made again, so an
# interrupted run never leaves a half-made root behind that later runs would trust.
#
# Every command in the root runs inside a private mount namespace (`unshare --mount
# --propagation private`): /proc, /dev, the machine's rustup toolchains (RUSTUP_HOME and
# ~/.cargo/bin, both READ-ONLY) and the source tree (READ-ONLY) are mounted there and
# vanish with the namespace. Nothing of the machine stays mounted under the build tree, so
# `rm -rf target` can never reach the machine's files. The root has a CARGO_HOME of its own
# and builds into its own /build/target; Cargo.lock is used as it is (--locked).
#
# The lane needs root (debootstrap, chroot, mounts) and the Debian mirror; without either
# it FAILS with the reason: it never passes by skipping.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUITE=trixie
ROOT=${GST126_ROOT:-${CARGO_TARGET_DIR:-$REPO_DIR/target}/trixie-root}
# chroot and the mounts below need an absolute path (CARGO_TARGET_DIR may be relative).
ROOT=$(realpath -m "$ROOT")

# What the root needs: GStreamer 1.26 development files (the analytics library is in
# plugins-bad), the plugins the tests use, the broker and its clients, the encoder, a C
# toolchain for the -sys crates, and GI bindings for the Python producer.
ROOT_PACKAGES=(
    libgstreamer1.0-dev
    libgstreamer-plugins-base1.0-dev
    libgstreamer-plugins-bad1.0-dev
    gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad
    gstreamer1.0-tools
    mosquitto
    mosquitto-clients
    libturbojpeg0-dev
    pkg-config
    gcc
    libc6-dev
    python3-gst-1.0
    gir1.2-gst-plugins-bad-1.0
    openssl
    # meson's `analytics` option finds gstreamer-analytics-1.0 here
    meson
    ninja-build
)

DEBOOTSTRAP_MARKER=.gst126-debootstrap-done
PACKAGES_MARKER=.gst126-packages-done

log() { printf 'gst126: %s\n' "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}

# The Debian mirror of the machine's own apt sources: the first entry for the machine's
# release (not its -security or -updates suites), deb822 or one-line format.
host_mirror() {
    local codename
    # shellcheck source=/dev/null
    codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || return 1
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        awk -v c="$codename" 'BEGIN { RS = ""; FS = "\n" }
            {
                uri = ""; ok = 0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uri = a[2] }
                    if ($i ~ /^Suites:/) {
                        n = split($i, s, /[ \t]+/)
                        for (j = 2; j <= n; j++) if (s[j] == c) ok = 1
                    }
                }
                if (ok && uri != "") { print uri; exit }
            }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        # deb [options] URI SUITE COMPONENTS...
        sed -e 's/\[[^]]*\]//' "$f" | awk -v c="$codename" '$1 == "deb" && $3 == c { print $2; exit }'
    done
}

# Nothing of the machine may be mounted under the root when it is removed.
check_no_mounts() {
    if awk -v r="$ROOT" '$5 == r || index($5, r "/") == 1 { found = 1 } END { exit !found }' \
        /proc/self/mountinfo; then
        die "something is mounted under $ROOT in this mount namespace; not touching it (findmnt -R $ROOT)"
    fi
}

# Runs "$@" in the root, in a private mount namespace with the mounts described above.
in_root() {
    local rustup_home=${RUSTUP_HOME:-${HOME:-/root}/.rustup}
    local cargo_bin=${CARGO_HOME:-${HOME:-/root}/.cargo}/bin
    [[ -d $rustup_home/toolchains ]] || die "no rustup toolchains in $rustup_home (set RUSTUP_HOME)"
    [[ -x $cargo_bin/cargo ]] || die "no cargo in $cargo_bin (set CARGO_HOME)"
    # shellcheck disable=SC2016 # the script runs in the namespace, with its own arguments
    unshare --mount --propagation private -- /bin/bash -euo pipefail -c '
        root=$1 rustup_home=$2 cargo_bin=$3 src=$4
        shift 4
        bind_ro() { # SOURCE TARGET: a read-only bind mount
            mkdir -p "$2"
            mount --bind "$1" "$2"
            mount -o remount,bind,ro "$2"
        }
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        bind_ro "$rustup_home" "$root/opt/rustup"
        bind_ro "$cargo_bin" "$root/opt/cargo-bin"
        bind_ro "$src" "$root/src"
        mkdir -p "$root/build"
        cd /
        exec chroot "$root" /usr/bin/env -i \
            HOME=/build \
            PATH=/opt/cargo-bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
            RUSTUP_HOME=/opt/rustup \
            CARGO_HOME=/build/cargo-home \
            CARGO_TARGET_DIR=/build/target \
            CARGO_TERM_COLOR=never \
            TERM="${TERM:-dumb}" \
            LANG=C.UTF-8 \
            /bin/sh -c "cd /src && exec \"\$@\"" sh "$@"
    ' in_root "$ROOT" "$rustup_home" "$cargo_bin" "$REPO_DIR" "$@"
}

# Runs "$@" chrooted without any bind mount (package installation).
chroot_plain() {
    # shellcheck disable=SC2016 # the script runs in the namespace, with its own arguments
    unshare --mount --propagation private -- /bin/bash -euo pipefail -c '
        root=$1
        shift
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" /usr/bin/env -i \
            PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
            DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"
    ' chroot_plain "$ROOT" "$@"
}

# The machine's files the root needs each run: DNS, and the CA bundle for crates.io.
refresh_host_files() {
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
    mkdir -p "$ROOT/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt" ||
        die "the machine has no /etc/ssl/certs/ca-certificates.crt to give the root"
}

make_root() {
    local start=$SECONDS
    ((EUID == 0)) || die "needs root (debootstrap, chroot and mounts); run it as root"
    command -v unshare >/dev/null || die "unshare (util-linux) not found"
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2 ||
            { apt-get update -q >&2 &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2; } ||
            die "debootstrap is not installed and apt-get could not install it"
    fi

    local want_packages="$SUITE ${ROOT_PACKAGES[*]}"
    if [[ -f $ROOT/$DEBOOTSTRAP_MARKER && -f $ROOT/$PACKAGES_MARKER &&
        $(<"$ROOT/$PACKAGES_MARKER") == "$want_packages" ]]; then
        refresh_host_files
        log "root $ROOT is complete (markers present)"
        return 0
    fi

    if [[ ! -f $ROOT/$DEBOOTSTRAP_MARKER ]]; then
        local mirror=${GST126_MIRROR:-}
        [[ -n $mirror ]] || mirror=$(host_mirror | head -n 1)
        [[ -n $mirror ]] || die "no Debian mirror found in /etc/apt/sources.list*; set GST126_MIRROR"
        if [[ -e $ROOT ]]; then
            log "removing the incomplete root $ROOT"
            check_no_mounts
            rm -rf --one-file-system "$ROOT"
        fi
        mkdir -p "$ROOT"
        log "debootstrap --variant=minbase $SUITE $ROOT $mirror"
        local keyring=()
        [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] &&
            keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
        # In a namespace of its own: debootstrap mounts /proc and /sys in the target and
        # leaves them mounted when it fails.
        unshare --mount --propagation private -- \
            debootstrap --variant=minbase "${keyring[@]}" "$SUITE" "$ROOT" "$mirror" \
            >"$ROOT.debootstrap.log" 2>&1 ||
            die "debootstrap of $SUITE from $mirror failed (is the Debian mirror reachable?); last lines of $ROOT.debootstrap.log:
$(tail -n 15 "$ROOT.debootstrap.log")"
        touch "$ROOT/$DEBOOTSTRAP_MARKER"
        log "debootstrap took $((SECONDS - start))s"
    fi

    refresh_host_files
    # No service starts inside the root: the tests start their own broker.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    rm -f "$ROOT/$PACKAGES_MARKER"
    local t=$SECONDS
    log "installing ${#ROOT_PACKAGES[@]} packages in the root"
    chroot_plain apt-get update -q >&2 || die "apt-get update in the root failed (Debian mirror unreachable?)"
    chroot_plain apt-get install -y -q --no-install-recommends "${ROOT_PACKAGES[@]}" >&2 ||
        die "apt-get install in the root failed"
    chroot_plain apt-get clean >&2 || true
    printf '%s' "$want_packages" >"$ROOT/$PACKAGES_MARKER"
    log "packages took $((SECONDS - t))s"
}

# The lane itself: what is built and tested on GStreamer 1.26.
run_lane() {
    local t
    in_root pkg-config --modversion gstreamer-1.0 gstreamer-analytics-1.0 >&2 ||
        die "gstreamer-analytics-1.0 not found by pkg-config in the root"

    log "meson setup: -Danalytics=auto and -Danalytics_oriented=auto find gstreamer-analytics-1.0 1.26"
    # shellcheck disable=SC2016 # runs in the root
    in_root /bin/sh -c 'rm -rf /build/meson && meson setup /build/meson >/build/meson-setup.log 2>&1 &&
        grep -qi "analytics relation meta *: *true" /build/meson-setup.log &&
        grep -qi "oriented boxes *: *true" /build/meson-setup.log' ||
        die "meson setup in the root did not enable the analytics and analytics-oriented features (see $ROOT/build/meson-setup.log)"

    local features
    for features in analytics analytics-oriented; do
        t=$SECONDS
        log "clippy --features $features"
        in_root cargo clippy --locked --all-targets --features "$features" -- -D warnings ||
            die "cargo clippy --features $features failed in the root"
        log "clippy took $((SECONDS - t))s"
    done

    t=$SECONDS
    log "tests --features analytics-oriented (and the analytics tests with --features analytics)"
    # The metadata model and the filter; the rest of the unit tests run on the machine.
    in_root cargo test --locked --features analytics-oriented --lib -- meta:: filter:: ||
        die "unit tests with --features analytics-oriented failed in the root"
    for features in analytics analytics-oriented; do
        in_root cargo test --locked --features "$features" --test analytics ||
            die "the analytics tests failed in the root with --features $features"
    done
    # Buffers with ROI meta only behave as in the default build (metareplay's ROI ids
    # excepted: they become the ODMtd ids, see tests/metareplay.rs).
    in_root cargo test --locked --features analytics-oriented --test harness --test metafilter \
        --test metareplay ||
        die "the ROI meta element tests failed with --features analytics-oriented in the root"
    log "tests took $((SECONDS - t))s"
}

main() {
    local start=$SECONDS
    case ${1:-} in
    shell)
        make_root
        in_root /bin/bash
        ;;
    run)
        shift
        make_root
        in_root "$@"
        ;;
    "")
        make_root
        run_lane
        log "lane passed in $((SECONDS - start))s"
        ;;
    *)
        die "unknown command $1 (none, shell or run)"
        ;;
    esac
}

main "$@"
