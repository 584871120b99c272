#!/usr/bin/env bash
# One-time set-up of a Debian/Ubuntu machine: a Vulkan driver (Mesa's software one, lavapipe,
# when no other is installed — real GPUs bring their own) and a Rust toolchain.
set -euo pipefail
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1 \
   || ! ldconfig -p | grep -q libvulkan.so.1; then
  echo "installing the Vulkan loader and Mesa's drivers (lavapipe)…" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q mesa-vulkan-drivers libvulkan1
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "installing Rust with rustup…" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
