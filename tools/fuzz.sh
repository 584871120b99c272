#!/usr/bin/env bash
# 10^6 mutated inputs per fuzz target (tests/fuzz.rs), each target in its own process so the
# peak memory it prints is that target's. Usage: tools/fuzz.sh [ITERS] [TARGET...]
# A panicking input is saved under tests/fuzz/crashes/; move it into the target's seed folder
# (tests/fuzz/corpus/TARGET/) once fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
iters="${1:-1000000}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors_header safetensors_index configs preprocessor_config image_decoding torch_pickle
           chat_request florence2_request data_uri mcp_message)
fi
cargo test --release --locked --test fuzz --no-run
for t in "${targets[@]}"; do
  FVL_FUZZ_ITERS="$iters" cargo test --release --locked --test fuzz -- --exact "fuzz_$t" --nocapture 2>&1 |
    grep -E '^fuzz |panicked|FAILED' || true
done
