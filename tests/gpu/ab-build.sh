#!/usr/bin/env bash
# Builds the kernels package's test binary of each build to compare on the GPU machine, into .gpu/ab (xz-packed),
# beside tests/gpu/ab.sh, which times them there taking turns. Each argument is NAME=REV[+PATCH...][%nostore]:
# - REV: a git revision, or "tree" for the working tree as it is (uncommitted kernels and their regenerated PTX
#   included);
# - +PATCH: a kernel variant kept as a patch (tests/gpu/variants/PATCH.patch, or a path), applied over REV in
#   order, its PTX rebuilt with build/nvcc (`make -C kernels nvcc`);
# - %nostore: REV's high-ratio kernels with the stores of a bf16 frame's payload predicated off
#   (tests/gpu/nostore.py; the PTX rebuilt too), for a compute ceiling; name such a build *-nostore (ab.sh
#   decodes the CPU encoder's frames for it).
#
#   tests/gpu/ab-build.sh base=HEAD new=tree
#   tests/gpu/ab-build.sh old=3e2480d new=HEAD
#   tests/gpu/ab-build.sh base=HEAD enc7=HEAD+hr-encode-7-blocks
#   tests/gpu/ab-build.sh main=HEAD main-nostore=HEAD%nostore
#
# Then carry .gpu/ab (with .gpu/pack for ab.sh's FULL part) and run tests/gpu/ab.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -gt 0 ] || { sed -n '2,18p' "$0"; exit 2; }
mkdir -p .gpu/ab
for arg in "$@"; do
  name=${arg%%=*} rev=${arg#*=}
  [ "$name" != "$arg" ] && [ -n "$name" ] && [ -n "$rev" ] || { echo "ab-build.sh: want NAME=REV, got $arg"; exit 2; }
  out=$PWD/.gpu/ab/kernels-$name.test
  nostore=
  case $rev in *%nostore) nostore=1 rev=${rev%\%nostore} ;; esac
  patches=()
  IFS=+ read -r rev patchnames <<<"$rev"
  if [ -n "$patchnames" ]; then
    IFS=+ read -ra names <<<"$patchnames"
    for pn in "${names[@]}"; do
      pf=$pn
      [ -f "$pf" ] || pf=tests/gpu/variants/$pn.patch
      [ -f "$pf" ] || { echo "ab-build.sh: no patch $pn (neither a file nor tests/gpu/variants/$pn.patch)"; exit 2; }
      patches+=("$(realpath "$pf")")
    done
  fi
  if [ "$rev" = tree ] && [ -z "$nostore" ] && [ ${#patches[@]} -eq 0 ]; then
    go test -c -ldflags='-s -w' -o "$out" ./kernels
  else
    wt=$(mktemp -d)
    if [ "$rev" = tree ]; then  # the working tree's kernels, copied over HEAD
      git worktree add -q --detach "$wt" HEAD && cp kernels/*.cu kernels/*.cuh "$wt/kernels/"
    else
      git worktree add -q --detach "$wt" "$rev"
    fi
    root=$PWD
    (
      cd "$wt" || exit 1
      for pf in "${patches[@]}"; do
        git apply "$pf" || { echo "ab-build.sh: $pf does not apply over $rev"; exit 1; }
      done
      [ -z "$nostore" ] || python3 "$root/tests/gpu/nostore.py" . || exit 1
      if [ -n "$nostore" ] || [ ${#patches[@]} -gt 0 ]; then  # rebuild the PTX with the checkout's nvcc (build/nvcc)
        mkdir -p "$root/build" && ln -s "$root/build" build && make -s -C kernels ptx || exit 1
      fi
      go test -c -ldflags='-s -w' -o "$out" ./kernels
    ) || { git worktree remove --force "$wt"; exit 1; }
    git worktree remove --force "$wt"
  fi
  xz -T0 -6 -f "$out"
  echo "$name: ${arg#*=} -> .gpu/ab/kernels-$name.test.xz"
done
