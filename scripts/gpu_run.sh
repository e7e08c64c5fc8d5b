#!/usr/bin/env bash
# Builds, tests and benchmarks kvtier's CUDA code on a GPU machine without internet access
# (Ubuntu 24.04 with CUDA, cmake, ninja, g++ and a python3; no apt, none of our -dev packages),
# from the Debian 12 packages that scripts/gpu_bundle.sh put in .gpu-bundle/debs. See docs/gpu.md.
#
# Usage (from anywhere; it works in the repository root):
#   bash scripts/gpu_run.sh [build|test|bench|all|configure]      (default: all)
#     configure  unpack the bundle and configure build/gpu
#     build      configure, then build kvtier, gpu_tests and the Python module _kvtier
#     test       build, then ctest -L gpu and the kernel tests under compute-sanitizer
#                (memcheck, racecheck)
#     bench      build, then `kvtier bench gpu --json` (skipped while there is no gpu suite)
#     all        build, test and bench (bench runs even when a test fails; the status is the
#                first failure's)
# Environment:
#   KVT_DEPS_PREFIX   where the .debs are unpacked (default /tmp/kvt-deps; never /)
#   KVT_CUDA_ARCH     CMAKE_CUDA_ARCHITECTURES (default 90: H100/H200)
#   KVT_PYTHON        interpreter to build kvtier._kvtier for and run the Python tests with
#                     (default: the first of /opt/torch/.venv/bin/python3 and python3 on PATH
#                     that has Python.h and pybind11; else one with Python.h)
#   KVT_JOBS          build parallelism (default nproc)
#   KVT_BUILD_DIR     build folder (default build/gpu)
#   KVT_GPU_TARGETS   targets to build instead of "kvtier gpu_tests _kvtier"
#   KVT_BUNDLE_DIR    the .debs (default .gpu-bundle/debs)
#   OUT               when set, logs and results go there (the GPU runner collects it);
#                     otherwise into <build>/logs
#   KVT_GPU_STRICT=1  verification on the Debian machine that made the bundle: CMake may find
#                     packages, headers and libraries only inside the prefix (and CUDA), libraries
#                     the machine already has are not pruned, and after the build every header
#                     and shared library used from outside the prefix is checked with dpkg -S
#                     against what Ubuntu 24.04 has. Use with KVT_BUILD_DIR=build/<yours>.
#
# How the Debian files are used from a prefix: CMAKE_PREFIX_PATH=<prefix>/usr (CMake configs in
# <prefix>/usr/lib/x86_64-linux-gnu/cmake and <prefix>/usr/share/cmake); the bundled pkgconf,
# through a wrapper that sets PKG_CONFIG_LIBDIR to the prefix's .pc folders and
# PKG_CONFIG_SYSROOT_DIR=<prefix> (Debian's .pc files say prefix=/usr); <prefix>/usr/include and
# its multiarch folder (OpenSSL's opensslconf.h) as standard include directories of every
# compile (header-only packages such as cppzmq are used without a target); and
# LD_LIBRARY_PATH=<prefix>/usr/lib/x86_64-linux-gnu:<prefix>/lib/x86_64-linux-gnu for running.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

CMD="${1:-all}"
case "$CMD" in
  build | test | bench | all | configure) ;;
  -h | --help | help) usage; exit 0 ;;
  *) echo "gpu_run: unknown command '$CMD' (build, test, bench, all, configure)" >&2; exit 2 ;;
esac

MULTIARCH=x86_64-linux-gnu
STRICT="${KVT_GPU_STRICT:-0}"
BUNDLE="${KVT_BUNDLE_DIR:-$ROOT/.gpu-bundle/debs}"
BUILD_DIR="${KVT_BUILD_DIR:-build/gpu}"
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$ROOT/$BUILD_DIR" ;; esac
JOBS="${KVT_JOBS:-$(nproc)}"
CUDA_ARCH="${KVT_CUDA_ARCH:-90}"
PREFIX="${KVT_DEPS_PREFIX:-/tmp/kvt-deps}"
if [ -n "${OUT:-}" ]; then LOG_DIR="$OUT"; else LOG_DIR="$BUILD_DIR/logs"; fi

log() { echo "gpu_run: $*"; }
die() { echo "gpu_run: error: $*" >&2; exit 1; }

# The prefix is wiped and re-made whenever the bundle changes: make sure it is ours.
case "$PREFIX" in /*) ;; *) die "KVT_DEPS_PREFIX must be an absolute path (got '$PREFIX')" ;; esac
PREFIX=$(realpath -m "$PREFIX")
case "$PREFIX" in
  / | /usr | /usr/local | /opt | /tmp | /home | /root | /etc | /var | /lib | /lib64 | /bin)
    die "refusing to unpack the bundle into $PREFIX: give KVT_DEPS_PREFIX a folder of its own" ;;
esac
LIBDIR="$PREFIX/usr/lib/$MULTIARCH"
ROOTLIBDIR="$PREFIX/lib/$MULTIARCH"
KVT_DIR="$PREFIX/kvt"  # what this script adds: the pkg-config wrapper and stub .pc files
MARKER="$PREFIX/.kvt-deps-prefix"

mkdir -p "$LOG_DIR"
LOG_DIR=$(realpath "$LOG_DIR")

# run_logged <log file> <command...>: the command's output to the terminal and to the log.
run_logged() {
  local logfile="$1"
  shift
  echo "+ $*" >"$logfile"
  "$@" 2>&1 | tee -a "$logfile"
}

# The machine's copy of a library: system_lib libfoo.so -> /usr/lib/.../libfoo.so.N (or nothing).
system_lib() {
  local name="$1" ldconfig_bin path
  ldconfig_bin=$(command -v ldconfig || echo /sbin/ldconfig)
  if [ -x "$ldconfig_bin" ]; then
    path=$("$ldconfig_bin" -p 2>/dev/null |
      awk -v n="$name." '/x86-64/ && index($1, n) == 1 { print $NF; exit }')
    if [ -n "$path" ]; then echo "$path"; return 0; fi
  fi
  for d in /usr/lib/$MULTIARCH /lib/$MULTIARCH /usr/lib64 /usr/lib; do
    for f in "$d/$name".[0-9]*; do
      if [ -e "$f" ]; then echo "$f"; return 0; fi
    done
  done
  return 1
}

# Libraries of the bundle that are generic system libraries: where the machine has a library of
# the same SONAME (so the same ABI), the machine's copy is used and the bundled one removed, so
# that LD_LIBRARY_PATH never puts an older Debian copy in front of the machine's own for the
# machine's programs (ctest, python). Not done in strict mode (this Debian machine has them all).
PRUNE_IF_PRESENT=(
  libbsd.so.0 libgssapi_krb5.so.2 libkrb5.so.3 libk5crypto.so.3 libkrb5support.so.0
  libkeyutils.so.1 libbrotlicommon.so.1 libbrotlidec.so.1 libbrotlienc.so.1 libxxhash.so.0
)
# Modules that libzmq.pc names in Requires.private (needed only to link libzmq statically):
# pkg-config refuses libzmq without their .pc files, and their -dev packages would pull in
# krb5-multidev, libxml2-dev and more, so stub .pc files (no flags) stand in for them.
STUB_PC=("krb5-gssapi 1.20.1" "libsodium 1.0.18" "openpgm-5.3 5.3.128" "norm 1.5.9" "libbsd 0.11.7")

prepare_deps() {
  shopt -s nullglob
  local debs=("$BUNDLE"/*.deb)
  shopt -u nullglob
  [ ${#debs[@]} -gt 0 ] ||
    die "no .deb files in $BUNDLE: run 'bash scripts/gpu_bundle.sh' on the Debian machine and carry .gpu-bundle/ here"

  local stamp
  stamp="strict=$STRICT $(for d in "${debs[@]}"; do basename "$d"; done | sort | tr '\n' ' ')"
  if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$stamp" ]; then
    log "dependencies already unpacked in $PREFIX"
  else
    if [ -e "$PREFIX" ]; then
      if [ -f "$MARKER" ] || [ -z "$(ls -A "$PREFIX")" ]; then
        rm -rf -- "$PREFIX"
      else
        die "$PREFIX exists and was not made by gpu_run.sh: remove it or set KVT_DEPS_PREFIX"
      fi
    fi
    mkdir -p "$PREFIX"
    log "unpacking ${#debs[@]} packages into $PREFIX"
    local d
    for d in "${debs[@]}"; do
      if command -v dpkg >/dev/null 2>&1; then
        dpkg -x "$d" "$PREFIX"
      else  # no dpkg: a .deb is an ar archive holding data.tar.{xz,zst,gz}
        local member
        member=$(ar t "$d" | grep '^data\.tar')
        case "$member" in
          *.xz) ar p "$d" "$member" | tar -xJ -C "$PREFIX" -f - ;;
          *.zst) ar p "$d" "$member" | tar --zstd -x -C "$PREFIX" -f - ;;
          *.gz) ar p "$d" "$member" | tar -xz -C "$PREFIX" -f - ;;
          *) die "$d: unknown data member '$member'" ;;
        esac
      fi
    done

    if [ "$STRICT" != 1 ]; then
      local soname sys
      for soname in "${PRUNE_IF_PRESENT[@]}"; do
        sys=$(system_lib "${soname%.so.*}.so") || continue
        case "$sys" in "$PREFIX"/*) continue ;; esac
        log "using the machine's $sys instead of the bundled $soname"
        rm -f -- "$LIBDIR/$soname"* "$ROOTLIBDIR/$soname"*
      done
    fi

    # Debian's symbolic links: absolute ones (libz.so -> /lib/.../libz.so.1.2.13) are made to
    # point into the prefix; a development link to a library the bundle leaves to the machine
    # (libcrypto.so, libz.so, pruned ones) is pointed at the machine's library of that name.
    local link target name sys
    while IFS= read -r -d '' link; do
      target=$(readlink "$link")
      if [[ "$target" == /* ]] && { [ -e "$PREFIX$target" ] || [ -L "$PREFIX$target" ]; }; then
        ln -sfn "$PREFIX$target" "$link"
      fi
      if [ ! -e "$link" ] || [[ "$target" == /* && "$(readlink "$link")" != "$PREFIX"/* ]]; then
        name=$(basename "$link")
        case "$name" in
          lib*.so | lib*.so.*)
            if sys=$(system_lib "${name%%.so*}.so"); then
              ln -sfn "$sys" "$link"
            else
              log "warning: $link points to $target, which neither the bundle nor this machine has"
            fi
            ;;
        esac
      fi
    done < <(find "$PREFIX/usr/lib" "$PREFIX/lib" -type l -print0 2>/dev/null)

    mkdir -p "$KVT_DIR/pkgconfig"
    local entry module version
    for entry in "${STUB_PC[@]}"; do
      read -r module version <<<"$entry"
      if [ ! -e "$LIBDIR/pkgconfig/$module.pc" ]; then
        printf 'Name: %s\nDescription: stub for Requires.private of libzmq.pc (scripts/gpu_run.sh)\nVersion: %s\n' \
          "$module" "$version" >"$KVT_DIR/pkgconfig/$module.pc"
      fi
    done

    # pkg-config: the bundled pkgconf, seeing only the prefix's .pc files, through a wrapper so
    # that CMake's re-runs (ninja regenerating the build) get the same environment.
    cat >"$KVT_DIR/pkg-config" <<EOF
#!/bin/sh
# Written by scripts/gpu_run.sh: pkgconf over the Debian .pc files unpacked in $PREFIX.
export PKG_CONFIG_SYSROOT_DIR='$PREFIX'
export PKG_CONFIG_LIBDIR='$LIBDIR/pkgconfig:$PREFIX/usr/share/pkgconfig:$KVT_DIR/pkgconfig'
export PKG_CONFIG_PATH="\$PKG_CONFIG_LIBDIR\${PKG_CONFIG_PATH:+:\$PKG_CONFIG_PATH}"
LD_LIBRARY_PATH='$LIBDIR'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH} exec '$PREFIX/usr/bin/pkgconf' "\$@"
EOF
    chmod +x "$KVT_DIR/pkg-config"
    echo "$stamp" >"$MARKER"
    log "unpacked: $(du -sh "$PREFIX" | cut -f1) in $PREFIX"
  fi
  "$KVT_DIR/pkg-config" --exists libzmq cpp-httplib hiredis libxxhash liburing ||
    die "the bundled pkg-config cannot resolve the bundle's .pc files (see the message above)"
}

# The interpreter for kvtier._kvtier and the pybind11 CMake config to use with it.
PY=""
PYBIND11_DIR=""
BUILD_PYTHON=ON
choose_python() {
  local candidates=() c have_h
  if [ -n "${KVT_PYTHON:-}" ]; then
    candidates=("$KVT_PYTHON")
  else
    # The torch venv first: the gpu-labelled Python tests need torch (and pytest) in the
    # interpreter the module is built for.
    if [ -x /opt/torch/.venv/bin/python3 ]; then candidates+=(/opt/torch/.venv/bin/python3); fi
    c=$(command -v python3 || true)
    if [ -n "$c" ] && [ "$c" != /opt/torch/.venv/bin/python3 ]; then candidates+=("$c"); fi
  fi
  local with_headers=""
  for c in "${candidates[@]}"; do
    have_h=$("$c" -c 'import os, sysconfig; print(int(os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))))' 2>/dev/null || echo 0)
    [ "$have_h" = 1 ] || { log "$c: no Python.h (no development headers)"; continue; }
    [ -n "$with_headers" ] || with_headers="$c"
    if [ "$STRICT" != 1 ] && PYBIND11_DIR=$("$c" -m pybind11 --cmakedir 2>/dev/null) && [ -n "$PYBIND11_DIR" ]; then
      PY="$c"
      log "Python module for $PY ($("$PY" -V 2>&1)), pybind11 $("$PY" -m pybind11 --version 2>/dev/null) from $PYBIND11_DIR"
      return
    fi
  done
  if [ -n "$with_headers" ]; then
    # Debian 12's pybind11 2.10 predates Python 3.12: it may or may not build for a newer one.
    PY="$with_headers"
    PYBIND11_DIR="$PREFIX/usr/lib/cmake/pybind11"
    log "Python module for $PY ($("$PY" -V 2>&1)) with the bundled pybind11 2.10 ($PY has no pybind11 module)"
    if "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 12))'; then
      log "warning: pybind11 2.10 predates Python 3.12; if _kvtier fails to build, 'pip install pybind11' into $PY"
    fi
    return
  fi
  BUILD_PYTHON=OFF
  PY="${candidates[0]:-python3}"
  log "warning: no python3 with development headers (${candidates[*]:-none found}): kvtier._kvtier is NOT built"
}

PY_MODULES='import importlib.util as u; print(" ".join(m + ("" if u.find_spec(m) else ":MISSING") for m in ("torch", "pytest", "numpy")))'
check_python_test_modules() {
  local mods
  mods=$("$PY" -c "$PY_MODULES" 2>/dev/null || echo "torch:MISSING pytest:MISSING")
  case "$mods" in
    *MISSING*) log "warning: $PY lacks what python_gpu_tests (label gpu) imports: $mods; that test will fail" ;;
  esac
}

find_cuda() {
  local nvcc="${CUDACXX:-}"
  [ -n "$nvcc" ] || nvcc=$(command -v nvcc || true)
  [ -n "$nvcc" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc=/usr/local/cuda/bin/nvcc; }
  [ -n "$nvcc" ] || die "nvcc not found (PATH, CUDACXX, /usr/local/cuda/bin)"
  echo "$nvcc"
}

do_configure() {
  for tool in cmake ninja gcc g++; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found on PATH"
  done
  prepare_deps
  choose_python
  if [ "$BUILD_PYTHON" = ON ]; then check_python_test_modules; fi
  local nvcc
  nvcc=$(find_cuda)
  local incdirs="$PREFIX/usr/include/$MULTIARCH;$PREFIX/usr/include"
  local args=(
    -S "$ROOT" -B "$BUILD_DIR" -G Ninja
    -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++
    -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_HOST_COMPILER="$(command -v g++)"
    -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH"
    -DKVT_WITH_CUDA=ON -DKVT_BUILD_PYTHON="$BUILD_PYTHON" -DKVT_BUILD_TESTS=ON
    -DKVT_BUILD_BENCHMARKS=ON
    -DCMAKE_PREFIX_PATH="$PREFIX/usr;$LIBDIR/cmake;$PREFIX/usr/share/cmake"
    -DPKG_CONFIG_EXECUTABLE="$KVT_DIR/pkg-config"
    -DCMAKE_C_STANDARD_INCLUDE_DIRECTORIES="$incdirs"
    -DCMAKE_CXX_STANDARD_INCLUDE_DIRECTORIES="$incdirs"
    -DCMAKE_CUDA_STANDARD_INCLUDE_DIRECTORIES="$incdirs"
    # libzmq's own dependencies are found at link time without LD_LIBRARY_PATH.
    -DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$LIBDIR:$ROOTLIBDIR"
    -DCMAKE_SHARED_LINKER_FLAGS="-Wl,-rpath-link,$LIBDIR:$ROOTLIBDIR"
    -DCMAKE_MODULE_LINKER_FLAGS="-Wl,-rpath-link,$LIBDIR:$ROOTLIBDIR"
  )
  if [ "$BUILD_PYTHON" = ON ]; then
    # python/CMakeLists.txt would take /usr/bin/python3 otherwise; pybind11's FindPython mode
    # reads Python_EXECUTABLE.
    args+=(-DPYTHON_EXECUTABLE="$PY" -DPython_EXECUTABLE="$PY" -DPython3_EXECUTABLE="$PY"
           -Dpybind11_DIR="$PYBIND11_DIR")
  fi
  if [ "$STRICT" = 1 ]; then
    args+=(-DCMAKE_FIND_ROOT_PATH="$PREFIX;$(dirname "$(dirname "$(realpath "$nvcc")")")"
           -DCMAKE_FIND_ROOT_PATH_MODE_INCLUDE=ONLY -DCMAKE_FIND_ROOT_PATH_MODE_LIBRARY=ONLY
           -DCMAKE_FIND_ROOT_PATH_MODE_PACKAGE=ONLY)
  fi
  log "configuring $BUILD_DIR (CUDA arch $CUDA_ARCH, nvcc $nvcc$([ "$STRICT" = 1 ] && echo ', strict'))"
  run_logged "$LOG_DIR/configure.log" cmake "${args[@]}"

  # What was used, for whoever reads the logs.
  {
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(uname -a)"
    # shellcheck source=/dev/null
    echo "os: $(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-?}")"
    echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo '?') $(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo '(with local changes)')"
    echo "gpus: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | tr '\n' ';' || echo none)"
    echo "nvcc: $("$nvcc" --version | tail -1)"
    echo "g++: $(g++ --version | head -1)"
    echo "cmake: $(cmake --version | head -1)"
    echo "python: $PY ($("$PY" -V 2>&1 || true)); pybind11: ${PYBIND11_DIR:-none}; _kvtier: $BUILD_PYTHON"
    echo "python modules: $("$PY" -c "$PY_MODULES" 2>/dev/null || echo '?')"
    echo "prefix: $PREFIX; strict: $STRICT; cuda arch: $CUDA_ARCH"
  } >"$LOG_DIR/env.txt"
}

export_runtime_env() {
  export LD_LIBRARY_PATH="$LIBDIR:$ROOTLIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # For running the binaries by hand: source <build>/gpu-env.sh
  printf 'export LD_LIBRARY_PATH=%q\n' "$LD_LIBRARY_PATH" >"$BUILD_DIR/gpu-env.sh"
}

do_build() {
  do_configure
  local targets
  if [ -n "${KVT_GPU_TARGETS:-}" ]; then
    targets="$KVT_GPU_TARGETS"
  else
    # `kvtier bench` runs suites compiled into kvtier itself: no separate benchmark target.
    targets="kvtier gpu_tests"
    [ "$BUILD_PYTHON" = ON ] && targets+=" _kvtier"
  fi
  log "building $targets (-j$JOBS)"
  # shellcheck disable=SC2086  # a list of targets
  run_logged "$LOG_DIR/build.log" cmake --build "$BUILD_DIR" -j "$JOBS" --target $targets
  export_runtime_env
  if [ "$STRICT" = 1 ]; then strict_audit; fi
  log "build done: $BUILD_DIR (logs in $LOG_DIR)"
}

# Strict mode only (the Debian machine): the compiler and the loader still see this machine's
# /usr/include and /usr/lib, where every -dev package is installed, so CMake's find calls alone
# do not prove the bundle complete. List the headers the build read and the libraries kvtier
# loads from outside the prefix, and fail on any that a package other than the toolchain's (or
# one Ubuntu 24.04 has) owns.
# dpkg -S output ("pkg:arch: path", "a:arch, b:arch: path") -> the package names, once each.
owners() {
  awk -F': ' '!/^diversion/ { n = split($1, a, ", "); for (i = 1; i <= n; i++) { sub(/:.*/, "", a[i]); print a[i] } }' | sort -u
}

# The package owning a library path as ldd prints it (/lib/x86_64-linux-gnu/libc.so.6): dpkg
# knows each file under one name only (/lib or /usr/lib, the link or the file it points to).
lib_owner() {
  local p="$1" real c
  real="$(dirname "$p")/$(basename "$(readlink -f "$p")")"
  for c in "$p" "$real" "/usr$p" "/usr$real" "${p#/usr}" "${real#/usr}"; do
    if dpkg -S "$c" 2>/dev/null | owners; then return 0; fi
  done
  echo "?$p"  # owned by no package: a foreign file
}

strict_audit() {
  command -v dpkg >/dev/null || die "strict mode needs dpkg (run it on the Debian machine)"
  local allowed='^(libc6-dev|linux-libc-dev|libcrypt-dev|libstdc\+\+-[0-9]+-dev|libgcc-[0-9]+-dev|gcc-[0-9]+|g\+\+-[0-9]+|cpp-[0-9]+|libpython3[.0-9]*-dev|python3[.0-9]*-dev)$'
  local headers bad=0
  headers=$(ninja -C "$BUILD_DIR" -t deps 2>/dev/null | awk '$1 ~ "^/usr/(include|lib)/" { print $1 }' | sort -u)
  local pkg_of
  pkg_of=$(echo "$headers" | xargs -r dpkg -S 2>/dev/null | owners || true)
  local foreign
  foreign=$(echo "$pkg_of" | grep -Ev "$allowed" | grep . || true)
  if [ -n "$foreign" ]; then
    log "strict: headers read from this machine's packages outside the bundle: $(echo "$foreign" | tr '\n' ' ')"
    bad=1
  else
    log "strict: $(echo "$headers" | grep -c . || true) headers read from outside the prefix, all from: $(echo "$pkg_of" | tr '\n' ' ')"
  fi
  # Libraries: what ldd resolves outside the prefix and CUDA must be ones Ubuntu 24.04 has.
  local ubuntu_has='^(libc6|libstdc\+\+6|libgcc-s1|libssl3|zlib1g|libcom-err2|libmd0|libgnutls30|libzstd1|liblzma5)$'
  local bin libs_out pkgs l
  for bin in "$BUILD_DIR/apps/kvtier/kvtier" "$BUILD_DIR"/python/kvtier/_kvtier*.so; do
    [ -x "$bin" ] || continue
    if ldd "$bin" | grep -q 'not found'; then
      log "strict: $bin: $(ldd "$bin" | grep 'not found' | tr '\n' ' ')"
      bad=1
    fi
    libs_out=$(ldd "$bin" | awk '$3 ~ "^/" { print $3 }' | grep -v "^$PREFIX/" | grep -v '/cuda' || true)
    pkgs=$(for l in $libs_out; do lib_owner "$l"; done | sort -u)
    foreign=$(echo "$pkgs" | grep -Ev "$ubuntu_has" | grep . || true)
    if [ -n "$foreign" ]; then
      log "strict: $bin loads libraries of packages Ubuntu 24.04 may lack: $(echo "$foreign" | tr '\n' ' ')"
      bad=1
    else
      log "strict: $bin loads from outside the prefix only: $(echo "$pkgs" | tr '\n' ' ')"
    fi
  done
  [ $bad = 0 ] || die "strict: the bundle is incomplete (see above)"
}

do_test() {
  log "running the GPU tests (ctest -L gpu)"
  local rc=0
  run_logged "$LOG_DIR/ctest-gpu.log" ctest --test-dir "$BUILD_DIR" -L gpu --output-on-failure \
    --output-junit "$LOG_DIR/ctest-gpu.xml" || rc=$?
  # The kernel tests again under compute-sanitizer: memcheck (out-of-bounds and misaligned
  # accesses, leaks) and racecheck (shared-memory hazards), failing on any report.
  local sanitizer test_bin="$BUILD_DIR/src/kvtier/gpu/gpu_backend_test"
  sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
  if [ -z "$sanitizer" ]; then
    log "compute-sanitizer not found: skipping the sanitizer runs"
  elif [ -x "$test_bin" ]; then
    local tool
    for tool in memcheck racecheck; do
      log "compute-sanitizer --tool $tool gpu_backend_test"
      run_logged "$LOG_DIR/sanitizer-$tool.log" "$sanitizer" --tool "$tool" --error-exitcode 99 \
        --report-api-errors no \
        "$test_bin" || rc=$?
    done
  fi
  return $rc
}

do_bench() {
  local kvtier="$BUILD_DIR/apps/kvtier/kvtier"
  [ -x "$kvtier" ] || die "$kvtier is not built"
  local list
  list=$("$kvtier" bench --list) || die "kvtier bench --list failed"
  if ! echo "$list" | awk '$1 == "gpu" { found = 1 } END { exit !found }'; then
    log "kvtier bench has no 'gpu' suite yet (kvtier bench --list: $(echo "$list" | awk '{ print $1 }' | tr '\n' ' ')): skipping the benchmark"
    return 0
  fi
  log "running kvtier bench gpu --json"
  # stdout and stderr apart: the --json contract is one JSON object as stdout's last line.
  "$kvtier" bench gpu --json 2> >(tee "$LOG_DIR/bench-gpu.stderr" >&2) | tee "$LOG_DIR/bench-gpu.stdout"
  tail -n 1 "$LOG_DIR/bench-gpu.stdout" >"$LOG_DIR/bench-gpu.json"
  case "$(head -c 1 "$LOG_DIR/bench-gpu.json")" in
    "{") log "results: $LOG_DIR/bench-gpu.json" ;;
    *) die "kvtier bench gpu --json: the last line of its output is not a JSON object" ;;
  esac
}

case "$CMD" in
  configure) do_configure ;;
  build) do_build ;;
  test) do_build; do_test ;;
  bench) do_build; do_bench ;;
  all)
    do_build
    set +e
    (set -e; do_test)
    test_rc=$?
    (set -e; do_bench)
    bench_rc=$?
    set -e
    [ $test_rc = 0 ] || log "the GPU tests FAILED (see $LOG_DIR/ctest-gpu.log)"
    [ $bench_rc = 0 ] || log "the GPU benchmark FAILED (see $LOG_DIR/bench-gpu.stderr)"
    if [ $test_rc != 0 ]; then exit $test_rc; fi
    exit $bench_rc
    ;;
esac
