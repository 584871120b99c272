#!/usr/bin/env bash
# One-time set-up of a Debian/Ubuntu machine: a Vulkan driver (Mesa's software one, lavapipe,
# when no other is installed — real GPUs bring their own), the tools that build libjpeg-turbo
# (the JPEG decoder PIL uses, vendored by the turbojpeg crate: cmake, make, nasm, a C compiler),
# and a Rust toolchain. Installs only what is missing; a second run checks and does nothing.
# Everything it says goes to stderr, so `setup.sh && fvl-wgpu …` prints only the answer on stdout.
set -euo pipefail
exec 1>&2 # our chatter and apt's output go to stderr

has_vulkan_driver() {
  # A driver is an ICD manifest in any of the loader's search folders; a missing folder is fine.
  local d
  for d in /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d; do
    compgen -G "$d/*.json" >/dev/null && return 0
  done
  return 1
}
# Not `grep -q`: it stops reading at the first match, ldconfig then dies of SIGPIPE, and under
# pipefail a library that is there reads as missing (it did, at random, on an idle machine).
has_lib() { ldconfig -p 2>/dev/null | grep "$1" >/dev/null; }

missing=()
has_lib 'libvulkan\.so\.1 ' || missing+=(libvulkan1)
has_vulkan_driver || missing+=(mesa-vulkan-drivers)
# The JPEG binding builds libjpeg-turbo 3 from source (Debian's is 2.x, too old for its API);
# nasm brings its SIMD code, which decodes to the same bytes, faster.
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v nasm >/dev/null 2>&1 || missing+=(nasm)
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)

if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: missing ${missing[*]} (Debian names); install them with your package manager" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}…" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: installing Rust with rustup…" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  echo "setup: open a new shell (or run '. \$HOME/.cargo/env') so cargo is on PATH" >&2
fi
