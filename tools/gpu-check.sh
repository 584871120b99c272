#!/usr/bin/env bash
# Every number docs/perf.md needs, in one run on a real GPU (under 8 minutes): the conformance
# table, bench kernels, bench decode (Llama 1B and 8B shapes, q4/q8/f16), bench vision (large,
# 768), bench e2e. Writes one JSON object (OUT, default gpu-check.json) whose keys name the
# runs; each value is that bench's own --json object.
#   tools/gpu-check.sh [--quick] [--device NAME|INDEX] [OUT]
# --quick: small shapes end to end, for CI on lavapipe (about 2 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
device=()
out=gpu-check.json
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --device) device=(--device "$2"); shift ;;
    *) out="$1" ;;
  esac
  shift
done
export WGPU_BACKEND="${WGPU_BACKEND:-vulkan,metal,dx12}"
# FVL_BIN: an already built binary (the CI test passes its own).
bin="${FVL_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --locked -q
  bin="${CARGO_TARGET_DIR:-target}/release/fvl-wgpu"
fi
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
sep=""
echo "{" > "$tmp"
# run KEY ARGS...: one bench, its JSON under KEY; a failing bench stops the script.
run() {
  local key=$1
  shift
  echo "gpu-check: $key" >&2
  local json
  if [ "$key" = devices ]; then
    json=$("$bin" devices --json)
  else
    json=$("$bin" "$@" "${device[@]}" --json)
  fi
  printf '%s"%s": %s\n' "$sep" "$key" "$json" >> "$tmp"
  sep=","
}
run devices devices
if [ $quick = 1 ]; then
  run kernels bench kernels --quick --only matvec
  run decode_llama-1b_q4 bench decode --config llama-1b --quant q4 --prompt 4 --tokens 2
  run vision_base_64 bench vision --config base --size 64
  run e2e_base_llama-1b_q4 bench e2e --vision base --llm llama-1b --quant q4 --size 64 --tokens 2
else
  cargo test --release --locked --test conformance -q >&2
  printf '%s"conformance": "passed"\n' "$sep" >> "$tmp"
  run kernels bench kernels --full
  for cfg in llama-1b llama-8b; do
    for q in q4 q8 f16; do
      run "decode_${cfg}_$q" bench decode --config "$cfg" --quant "$q" --prompt 64 --tokens 16
    done
  done
  run vision_large_768 bench vision --config large --size 768
  run e2e_large_llama-8b_q4 bench e2e --vision large --llm llama-8b --size 768 --tokens 8
fi
echo "}" >> "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "gpu-check: wrote $out" >&2
