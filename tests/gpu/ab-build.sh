#!/usr/bin/env bash
# Builds the kernels package's test binary of each build to compare on the GPU machine, into .gpu/ab (xz-packed),
# beside tests/gpu/ab.sh, which times them there taking turns. Each argument is NAME=REV: a git revision, or
# "tree" for the working tree as it is (uncommitted kernels and their regenerated PTX included).
#
#   tests/gpu/ab-build.sh base=HEAD new=tree
#   tests/gpu/ab-build.sh old=3e2480d new=HEAD
#
# Then carry .gpu/ab (with .gpu/pack for ab.sh's FULL part) and run tests/gpu/ab.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -gt 0 ] || { sed -n '2,9p' "$0"; exit 2; }
mkdir -p .gpu/ab
for arg in "$@"; do
  name=${arg%%=*} rev=${arg#*=}
  [ "$name" != "$arg" ] && [ -n "$name" ] && [ -n "$rev" ] || { echo "ab-build.sh: want NAME=REV, got $arg"; exit 2; }
  out=$PWD/.gpu/ab/kernels-$name.test
  if [ "$rev" = tree ]; then
    go test -c -ldflags='-s -w' -o "$out" ./kernels
  else
    wt=$(mktemp -d)
    git worktree add -q --detach "$wt" "$rev"
    (cd "$wt" && go test -c -ldflags='-s -w' -o "$out" ./kernels) || { git worktree remove --force "$wt"; exit 1; }
    git worktree remove --force "$wt"
  fi
  xz -T0 -6 -f "$out"
  echo "$name: $rev -> .gpu/ab/kernels-$name.test.xz"
done
