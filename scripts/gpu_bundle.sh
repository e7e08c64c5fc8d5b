#!/usr/bin/env bash
# Downloads, into .gpu-bundle/debs/, the Debian 12 packages that kvtier's CUDA build needs on a
# GPU machine without internet access (Ubuntu 24.04, CUDA, cmake, ninja, g++ and a python3, but
# none of our -dev packages and no apt). scripts/gpu_run.sh unpacks them there with `dpkg -x`
# into a private prefix (never into /), configures build/gpu against it, builds, tests and
# benchmarks. Offline GPU nodes are common on clusters, so this is the supported way to build
# kvtier where apt cannot reach a mirror. See docs/gpu.md.
#
# Runs on a Debian 12 amd64 machine that can reach a Debian mirror (apt-get download needs no
# root; the packages are not installed here). Idempotent: a package whose .deb is already in
# the folder is not downloaded again; a .deb of a package no longer listed is removed.
# Usage: bash scripts/gpu_bundle.sh          (then carry .gpu-bundle/ to the GPU machine)
#        KVT_BUNDLE_DIR=DIR                  another folder (default .gpu-bundle/debs)
#
# The list was resolved by hand: the -dev packages that cmake/KvtierDependencies.cmake and
# python/CMakeLists.txt look for, the headers those headers include, and the shared libraries
# they link to, down to what Ubuntu 24.04 itself has. Checked by configuring with
# CMAKE_FIND_ROOT_PATH limited to the unpacked bundle (KVT_GPU_STRICT=1 bash
# scripts/gpu_run.sh configure, see gpu_run.sh) and building `kvtier` against it.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  # --- the -dev packages cmake/KvtierDependencies.cmake finds (headers, CMake configs, .pc) ---
  libexpected-dev                 # tl-expected (header-only)
  libfmt-dev libfmt9              # fmt 9
  libspdlog-dev libspdlog1.10     # spdlog 1.10 (built against external fmt)
  libcli11-dev                    # CLI11 (header-only)
  nlohmann-json3-dev              # nlohmann_json (header-only)
  libabsl-dev libabsl20220623     # absl 20220623
  libmsgpack-cxx-dev              # msgpack-cxx 4.1 (header-only); its CMake config
  libboost1.74-dev                #   does find_dependency(Boost) and includes Boost headers
  libyaml-cpp-dev libyaml-cpp0.7  # yaml-cpp 0.7
  libssl-dev                      # OpenSSL headers (libcrypto); the runtime libssl3 is Ubuntu's:
                                  #   gpu_run.sh points libcrypto.so at the machine's libcrypto.so.3
  libxxhash-dev libxxhash0        # pkg-config libxxhash
  liburing-dev liburing2          # pkg-config liburing
  libhiredis-dev libhiredis0.14   # pkg-config hiredis
  libzmq3-dev libzmq5             # pkg-config libzmq, and the libraries libzmq5 links to:
  libsodium23 libpgm-5.3-0 libnorm1 libbsd0
  libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1
  cppzmq-dev                      # zmq.hpp (header-only)
  libcpp-httplib-dev libcpp-httplib0.11  # pkg-config cpp-httplib; httplib.h includes the
  zlib1g-dev libbrotli-dev libbrotli1    #   zlib, brotli and OpenSSL headers (its .pc turns
                                         #   on CPPHTTPLIB_{OPENSSL,ZLIB,BROTLI}_SUPPORT)
  pkgconf pkgconf-bin libpkgconf3 # pkg-config itself (the GPU machine may not have one)
  # --- tests and benchmarks (KVT_BUILD_TESTS / KVT_BUILD_BENCHMARKS) ---
  libgtest-dev libgmock-dev       # static libgtest/libgmock + GTest CMake config
  libbenchmark-dev libbenchmark1debian
  # --- the Python extension: used only where the machine's python3 has no pip pybind11 ---
  pybind11-dev
)

dir="${KVT_BUNDLE_DIR:-.gpu-bundle/debs}"
mkdir -p "$dir"

arch=$(dpkg --print-architecture)
if [ "$arch" != amd64 ]; then
  echo "gpu_bundle: this machine is $arch; the GPU machine needs amd64 packages" >&2
  exit 1
fi
# shellcheck source=/dev/null
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ "$codename" != bookworm ]; then
  echo "gpu_bundle: warning: this is '$codename', not Debian 12 (bookworm); the list was made for bookworm" >&2
fi

have_deb() { compgen -G "$dir/${1}_*.deb" >/dev/null; }

missing=()
for p in "${PACKAGES[@]}"; do
  have_deb "$p" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "gpu_bundle: downloading ${#missing[@]} of ${#PACKAGES[@]} packages into $dir"
  # apt-get download writes into the current folder. A stale package list (a point release
  # replaced a version) makes it fail: refresh the lists once (root only) and try again.
  apt_opts=(-q)
  # As root, apt would warn that its sandbox user cannot write into the folder.
  if [ "$(id -u)" -eq 0 ]; then apt_opts+=(-o APT::Sandbox::User=root); fi
  if ! (cd "$dir" && apt-get download "${apt_opts[@]}" "${missing[@]}"); then
    if [ "$(id -u)" -eq 0 ]; then
      echo "gpu_bundle: apt-get download failed; running apt-get update and trying again"
      apt-get update -qq
      (cd "$dir" && apt-get download "${apt_opts[@]}" "${missing[@]}")
    else
      echo "gpu_bundle: apt-get download failed (stale package lists? run apt-get update as root)" >&2
      exit 1
    fi
  fi
else
  echo "gpu_bundle: all ${#PACKAGES[@]} packages already in $dir"
fi

# Remove what is no longer listed (gpu_run.sh unpacks every .deb in the folder), and check that
# every listed package is there.
shopt -s nullglob
for f in "$dir"/*.deb; do
  name=$(basename "$f")
  name=${name%%_*}
  keep=0
  for p in "${PACKAGES[@]}"; do
    if [ "$p" = "$name" ]; then keep=1; break; fi
  done
  if [ $keep = 0 ]; then
    echo "gpu_bundle: removing $(basename "$f") (not in the list)"
    rm -f -- "$f"
  fi
done
for p in "${PACKAGES[@]}"; do
  if ! have_deb "$p"; then
    echo "gpu_bundle: $p is missing from $dir" >&2
    exit 1
  fi
done

echo "gpu_bundle: ${#PACKAGES[@]} packages in $dir:"
total=0
for f in "$dir"/*.deb; do
  size=$(stat -c %s "$f")
  total=$((total + size))
  printf '  %8d KiB  %s\n' $((size / 1024)) "$(basename "$f")"
done
printf 'gpu_bundle: total %d.%d MiB (%d bytes)\n' $((total / 1048576)) \
  $(((total % 1048576) * 10 / 1048576)) "$total"
echo "gpu_bundle: on the GPU machine, from the repository root: bash scripts/gpu_run.sh all"
