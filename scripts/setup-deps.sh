#!/usr/bin/env bash
# Installs what the build and the tests need beyond cargo, only when it is
# missing: protoc (containerd-client's build script needs it).
# Idempotent and non-interactive; needs root (or sudo) for apt-get.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup-deps: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
