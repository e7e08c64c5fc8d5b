#!/usr/bin/env bash
# Style checks: clang-format on every C++/CUDA source, clang-tidy (.clang-tidy) on the sources
# changed since a base revision (default: origin/main or the first commit), using the dev
# preset's compile_commands.json. clang-tidy is slow (seconds per file), so it only looks at
# what changed; pass --all to check everything.
# Usage: scripts/lint.sh [--all] [--base REV] [--fix]
set -euo pipefail
cd "$(dirname "$0")/.."

all=0; fix=0; base=""
while [ $# -gt 0 ]; do
  case "$1" in
    --all) all=1 ;;
    --fix) fix=1 ;;
    --base) base="$2"; shift ;;
    *) echo "usage: $0 [--all] [--base REV] [--fix]" >&2; exit 2 ;;
  esac
  shift
done

mapfile -t sources < <(git ls-files '*.h' '*.cc' '*.cu' '*.cuh')
status=0
echo "== clang-format (${#sources[@]} files)"
if [ "$fix" = 1 ]; then
  clang-format -i "${sources[@]}"
elif ! clang-format --dry-run -Werror "${sources[@]}"; then
  status=1
fi

if [ -z "$base" ]; then
  base=$(git rev-parse -q --verify origin/main || git rev-list --max-parents=0 HEAD | tail -n 1)
fi
if [ "$all" = 1 ]; then
  mapfile -t tidy < <(git ls-files 'src/*.cc' 'apps/*.cc' 'bench/*.cc')
else
  mapfile -t tidy < <(git diff --name-only --diff-filter=AM "$base" -- 'src/*.cc' 'apps/*.cc' 'bench/*.cc')
fi
[ -f build/dev/compile_commands.json ] || cmake --preset dev >/dev/null
echo "== clang-tidy (${#tidy[@]} files)"
tidy_args=(-p build/dev --quiet)
[ "$fix" = 1 ] && tidy_args+=(--fix)
if [ ${#tidy[@]} -gt 0 ] && clang-tidy "${tidy_args[@]}" "${tidy[@]}" 2>/dev/null | grep -E "warning:|error:"; then
  status=1
fi
exit $status
