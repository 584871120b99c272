#!/usr/bin/env bash
# The README's two commands, as a newcomer runs them (issue 15). They are read out of README.md,
# so the README cannot drift from what is checked.
#
#   bash tests/readme_commands.sh [--in-place] [--first-only]
#
# Default: `git clone` this repository's HEAD into a temporary folder and run there, building
# from nothing (its own target/): the times printed are the README's. --in-place (CI, which is
# a clean clone already) runs in this checkout instead, so command 2 reuses command 1's release
# build exactly as a newcomer's does, and CI pays for one build, not two. --first-only skips
# command 2 (the whole test suite). FVL_TEST_FULL=1 in the environment reaches tools/test.sh.
#
# Asserts:
# - command 1 prints nothing but the answer on stdout: one line, equal to `infer --json`'s
#   "answer" for the same arguments;
# - no "error:" line on stderr from either command;
# - set-up is idempotent: a second tools/setup.sh prints nothing, calls no installer
#   (apt-get, sudo, curl are replaced by tripwires) and takes under 5 s.
set -euo pipefail
in_place=0
first_only=0
for a in "$@"; do
  case "$a" in
  --in-place) in_place=1 ;;
  --first-only) first_only=1 ;;
  *)
    echo "usage: bash tests/readme_commands.sh [--in-place] [--first-only]" >&2
    exit 2
    ;;
  esac
done

fail() {
  echo "readme_commands: FAIL: $*" >&2
  exit 1
}
say() { echo "readme_commands: $*" >&2; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ "$in_place" = 1 ]; then
  dir="$repo"
  [ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] ||
    fail "--in-place needs a checkout without local changes (CI's clean clone)"
else
  git clone -q "$repo" "$work/clone"
  dir="$work/clone"
  unset CARGO_TARGET_DIR # a clean clone builds into its own target/
fi
cd "$dir"
# A headless machine as CI and servers have it: the CLI must keep the Vulkan stack quiet itself.
unset XDG_RUNTIME_DIR

# The README's first shell block holds the two commands, each a line of its own.
block=$(awk '/^```sh$/{n++; next} /^```$/{if (n == 1) exit} n == 1' README.md)
cmd1=$(grep -E '^bash tools/setup\.sh && cargo run --release -- infer ' <<<"$block" || true)
cmd2=$(grep -E '^bash tools/setup\.sh && bash tools/test\.sh' <<<"$block" || true)
[ "$(grep -c '' <<<"$cmd1")" = 1 ] && [ -n "$cmd1" ] ||
  fail "README's first sh block has no single 'bash tools/setup.sh && cargo run --release -- infer …' line"
[ "$(grep -c '' <<<"$cmd2")" = 1 ] && [ -n "$cmd2" ] ||
  fail "README's first sh block has no single 'bash tools/setup.sh && bash tools/test.sh' line"

load() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?"; }
no_error_lines() { # $1: stderr file, $2: what
  if grep -nE '^(error|ERROR)\b' "$1" | head -3 >"$work/errs" && [ -s "$work/errs" ]; then
    fail "$2 printed an error line on stderr: $(cat "$work/errs")"
  fi
}

# Command 1, as written: set-up, clean release build, the answer.
say "command 1 (load $(load)): $cmd1"
start=$(date +%s)
bash -c "$cmd1" >"$work/cmd1.out" 2>"$work/cmd1.err" ||
  fail "command 1 failed: $(tail -5 "$work/cmd1.err")"
t1=$(($(date +%s) - start))
say "command 1 took ${t1} s (load now $(load))"
no_error_lines "$work/cmd1.err" "command 1"
lines=$(grep -c '' "$work/cmd1.out" || true)
[ "$lines" = 1 ] || fail "command 1 printed $lines lines on stdout, expected only the answer: $(head -5 "$work/cmd1.out")"
# The same run with --json: its "answer" must be exactly what stdout held (JSON-escaped).
answer=$(cat "$work/cmd1.out")
answer=${answer//\\/\\\\}
answer=${answer//\"/\\\"}
bin="${CARGO_TARGET_DIR:-target}/release/fvl-wgpu"
args=${cmd1#*cargo run --release -- }
bash -c "\"$bin\" $args --json" >"$work/json.out" 2>"$work/json.err" ||
  fail "command 1 with --json failed: $(tail -3 "$work/json.err")"
grep -qF "{\"answer\":\"$answer\"," "$work/json.out" ||
  fail "stdout is not just the answer: stdout '$(cat "$work/cmd1.out")', --json $(cut -c1-200 "$work/json.out")"

# Set-up again: nothing to install, nothing said, quick. Installers are tripwires here.
mkdir -p "$work/trip"
for tool in apt-get apt sudo curl rustup; do
  printf '#!/bin/sh\necho "%s $*" >>"%s"\nexit 1\n' "$tool" "$work/trip.log" >"$work/trip/$tool"
  chmod +x "$work/trip/$tool"
done
start=$(date +%s)
PATH="$work/trip:$PATH" bash tools/setup.sh >"$work/setup2.out" 2>"$work/setup2.err" ||
  fail "second tools/setup.sh run failed: $(tail -3 "$work/setup2.err")"
[ ! -s "$work/trip.log" ] || fail "second tools/setup.sh run tried to install: $(cat "$work/trip.log")"
[ ! -s "$work/setup2.out" ] && [ ! -s "$work/setup2.err" ] ||
  fail "second tools/setup.sh run was not silent: $(cat "$work/setup2.out" "$work/setup2.err")"
[ $(($(date +%s) - start)) -le 5 ] || fail "second tools/setup.sh run took over 5 s"
say "setup.sh again: silent, installed nothing"

if [ "$first_only" = 0 ]; then
  say "command 2 (load $(load)): $cmd2"
  start=$(date +%s)
  bash -c "$cmd2" >"$work/cmd2.out" 2>"$work/cmd2.err" || {
    grep -E '^(test .* FAILED|failures:|---- )' "$work/cmd2.out" | head -20 >&2 || true
    fail "command 2 failed: $(tail -5 "$work/cmd2.err")"
  }
  say "command 2 took $(($(date +%s) - start)) s (load now $(load))"
  no_error_lines "$work/cmd2.err" "command 2"
fi
say "ok (answer: $(cut -c1-60 "$work/cmd1.out"))"
