#!/usr/bin/env bash
# The test command (README, CI): every test on Vulkan, on the release profile that
# `cargo build --release` / `cargo run --release` already built (a debug build would compile
# every dependency a second time). WGPU_BACKEND=vulkan makes a missing Vulkan driver fail
# loudly instead of falling back to GL.
#
#   bash tools/test.sh [--full] [cargo test arguments…]
#
# --full (CI) also runs the kernel conformance table twice more: with the optional features
# off (the f32/workgroup-memory fallbacks on every shape), and on a device opened with the
# portable limits (256 invocations and 16 KiB of workgroup memory per workgroup, 8 storage
# buffers per stage, 128 MiB bindings: what every desktop GPU offers). A developer's run
# checks the fallbacks on the linear layers only, and the portable limits on one whole model
# (`infer` in tests/florence_vl.rs). FVL_TEST_FULL=1 does the same.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--full" ]; then
  export FVL_TEST_FULL=1
  shift
fi
export WGPU_BACKEND=vulkan
# Vulkan instances complain without a runtime dir; any private folder will do.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"
  export XDG_RUNTIME_DIR
  trap 'rm -rf "$XDG_RUNTIME_DIR"' EXIT
fi
cargo test --release --locked "$@"
