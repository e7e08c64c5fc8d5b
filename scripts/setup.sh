#!/usr/bin/env bash
# Installs every Debian 12 package that kvtier's build, tests and demo need.
# Idempotent: when everything is already installed it only checks and exits.
# Usage: scripts/setup.sh            (as root, or with sudo available)
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config git
  clang clang-format clang-tidy libclang-rt-14-dev
  # libraries
  libexpected-dev libspdlog-dev libfmt-dev libcli11-dev libyaml-cpp-dev nlohmann-json3-dev
  libssl-dev libxxhash-dev liburing-dev libzmq3-dev cppzmq-dev libmsgpack-cxx-dev
  libhiredis-dev libcpp-httplib-dev libabsl-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev googletest libbenchmark-dev redis-server
  # python package and integration tests
  python3 python3-dev python3-pytest python3-numpy pybind11-dev python3-pybind11
  python3-venv python3-setuptools python3-pip python3-wheel python3-zmq python3-msgpack
  # the controller dashboard's browser test (headless)
  chromium
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup: installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
