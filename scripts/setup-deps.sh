#!/bin/sh
# Installs the system packages the workspace needs, only when missing:
#   protoc          (protobuf-compiler): containerd-client's build script
#   busybox-static  the containerd runtime's test and benchmark image
#   iproute2        `ip`, for the containerd runtime's task networking
#   iptables        the containerd runtime's host-mode published ports
#   openssl         the containerd runtime's HTTPS pull test (a test CA)
#   conntrack       the kernel mesh ends a drained endpoint's connections
#   golang-cfssl    `cfssl serve`: the external CA of swarm-cli's tests
# Idempotent and non-interactive; needs root (or sudo) only when something
# is missing. Debian/Ubuntu (apt-get).
set -eu

missing=""
command -v protoc >/dev/null 2>&1 || missing="$missing protobuf-compiler"
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 && \
    ! ldd /bin/busybox >/dev/null 2>&1 || missing="$missing busybox-static"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
command -v iptables >/dev/null 2>&1 || missing="$missing iptables"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v conntrack >/dev/null 2>&1 || missing="$missing conntrack"
command -v cfssl >/dev/null 2>&1 || missing="$missing golang-cfssl"

if [ -z "$missing" ]; then
    echo "setup-deps: nothing to install"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-deps: missing:$missing, and apt-get is not available: install them by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup-deps: missing:$missing; run as root (or install sudo)" >&2
        exit 1
    fi
fi

echo "setup-deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
