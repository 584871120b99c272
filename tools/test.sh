#!/usr/bin/env bash
# The test command (README, CI): every test on Vulkan. WGPU_BACKEND=vulkan makes a missing
# Vulkan driver fail loudly instead of falling back to GL.
set -euo pipefail
cd "$(dirname "$0")/.."
export WGPU_BACKEND=vulkan
# Vulkan instances complain without a runtime dir; any writable folder will do.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
cargo test --locked "$@"
