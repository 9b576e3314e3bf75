#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# Installs what building, testing and running this project needs on Debian 12.
#
# Idempotent: only the Debian packages that are missing get installed (and
# `apt-get update` runs only then), so with everything present it does
# nothing and takes well under a second. Rust itself is not installed here:
# it must come from rustup (Debian's rustc is too old); the script only
# checks that cargo can be found.
#
# Scripts that `source` this file also get cargo on PATH.
set -euo pipefail

# The one list of Debian packages the project needs.
APT_PACKAGES=(
    # building the plugin (gstreamer-rs -sys crates) and its meson wrapper
    libgstreamer1.0-dev
    libgstreamer-plugins-base1.0-dev
    pkg-config
    meson
    ninja-build
    libturbojpeg0-dev
    # running pipelines: gst-launch-1.0, gst-inspect-1.0, videotestsrc, jpegenc
    gstreamer1.0-tools
    gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good
    # MQTT broker and clients used by the tests and scripts/run.sh
    mosquitto
    mosquitto-clients
    # the other real brokers of the broker matrix (tests/brokers.rs): RabbitMQ with its
    # MQTT plugin (shipped in the package) and NATS (JetStream + MQTT)
    rabbitmq-server
    nats-server
    # the subscriber's virtualenv, test certificates
    python3-venv
    openssl
    # the DLSPS-style application of the tests (paho, as DLSPS consumers use)
    python3-paho-mqtt
    # counting the plugin's writes to the broker's socket (tests/process.rs)
    strace
    # the viewer's browser test (headless) and the fonts its screenshots show
    chromium
    fonts-dejavu-core
)

deps_log() { printf 'deps: %s\n' "$*" >&2; }

deps_missing_packages() {
    local pkg status
    for pkg in "${APT_PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        if [[ "$status" != installed ]]; then
            printf '%s\n' "$pkg"
        fi
    done
}

deps_install_packages() {
    local missing=()
    mapfile -t missing < <(deps_missing_packages)
    if ((${#missing[@]} == 0)); then
        deps_log "all ${#APT_PACKAGES[@]} Debian packages present"
        return 0
    fi

    local sudo=()
    if ((EUID != 0)); then
        if ! command -v sudo >/dev/null 2>&1; then
            deps_log "missing packages: ${missing[*]}; not root and no sudo, install them by hand"
            return 1
        fi
        sudo=(sudo)
    fi

    deps_log "installing: ${missing[*]}"

    # Keep the packaged mosquitto service (and any other) from being started
    # by the install: the tests and scripts/run.sh start their own broker.
    # Only done when the machine has no policy-rc.d of its own.
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        created_policy=1
    fi

    local rc=0
    {
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -q --no-install-recommends "${missing[@]}"
    } || rc=$?

    if ((created_policy)); then
        "${sudo[@]}" rm -f "$policy"
    fi
    if ((rc != 0)); then
        deps_log "apt-get failed (exit $rc)"
        return "$rc"
    fi

    mapfile -t missing < <(deps_missing_packages)
    if ((${#missing[@]} != 0)); then
        deps_log "still missing after install: ${missing[*]}"
        return 1
    fi
}

# Puts rustup's cargo on PATH if it is not there yet; fails if there is none.
deps_find_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        local cargo_home=${CARGO_HOME:-${HOME:-/root}/.cargo}
        if [[ -f "$cargo_home/env" ]]; then
            # shellcheck source=/dev/null
            . "$cargo_home/env"
        elif [[ -x "$cargo_home/bin/cargo" ]]; then
            PATH="$cargo_home/bin:$PATH"
            export PATH
        fi
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        deps_log "cargo not found (looked on PATH and in ${CARGO_HOME:-~/.cargo}/bin)."
        deps_log "Install Rust with rustup; Debian's rustc/cargo are too old for this crate."
        return 1
    fi
    if ! cargo --version >/dev/null 2>&1; then
        deps_log "$(command -v cargo) does not run; check the rustup installation"
        return 1
    fi
}

deps_main() {
    deps_install_packages
    deps_find_cargo
    deps_log "using $(command -v cargo) ($(cargo --version))"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    deps_main "$@"
fi
