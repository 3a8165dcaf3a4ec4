#!/usr/bin/env bash
# The crate must build and run without a CUDA compiler (docs/BUILD.md). Builds the `llama4` binary with
# NVCC=/nonexistent into its own target directory (so the main build's kernels and cfg stay as they
# are), then checks:
#   - the build succeeds with exactly one warning, build.rs's "CUDA kernels not built: NVCC=... does
#     not exist ... Fix: run tools/cuda-toolchain.sh";
#   - `llama4 generate` runs the embedded model on the CPU backend;
#   - a GPU request, where the binary has one (`--device cuda`), fails with one clear error line
#     (kernels not built, or no device), never a panic.
# Usage: tools/check-cpu-only.sh [target-dir]   (default target/cpu-only; a re-run only relinks)
# Exit status: 0 ok, 1 a check failed. Cost: one debug build of the crate and its dependencies.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${1:-$repo/target/cpu-only}"
cd "$repo"
fail() { echo "check-cpu-only: FAIL: $*" >&2; exit 1; }

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# L4C_REQUIRE_KERNELS is cleared: here a missing nvcc is the point, not an error. Removing this target's
# build-script state makes cargo rerun build.rs there (and only there), so a re-run prints the warning
# again.
rm -rf "$target"/debug/build/llama4-cuda-*
if ! env -u L4C_REQUIRE_KERNELS NVCC=/nonexistent CARGO_TARGET_DIR="$target" \
    cargo build --bin llama4 --color never >"$log" 2>&1; then
  cat "$log" >&2
  fail "the build without nvcc failed"
fi
warnings="$(grep -E '^warning' "$log" | grep -v 'generated [0-9]+ warning' || true)"
n="$(grep -c . <<<"$warnings" || true)"
[[ "$n" == 1 ]] || { cat "$log" >&2; fail "expected exactly one warning, got $n"; }
grep -q 'CUDA kernels not built: NVCC=/nonexistent does not exist' <<<"$warnings" ||
  fail "the warning does not name NVCC=/nonexistent: $warnings"
grep -q 'Fix: run tools/cuda-toolchain.sh' <<<"$warnings" || fail "the warning gives no fix: $warnings"
echo "check-cpu-only: built with one warning: ${warnings#warning: }"

bin="$target/debug/llama4"
out="$("$bin" generate --max-new-tokens 4 2>&1)" || { echo "$out" >&2; fail "llama4 generate failed"; }
grep -q '^generated tokens: ' <<<"$out" || fail "llama4 generate printed no tokens: $out"
grep -q 'tokens/s (cpu)' <<<"$out" || fail "llama4 generate did not run on the CPU backend: $out"
echo "check-cpu-only: llama4 generate ran on the CPU"

help="$("$bin" generate --help)"
if grep -q -- '--device' <<<"$help"; then
  if out="$("$bin" generate --device cuda --max-new-tokens 1 2>&1)"; then
    fail "llama4 generate --device cuda succeeded in a build without kernels: $out"
  fi
  grep -qi 'panicked' <<<"$out" && fail "llama4 generate --device cuda panicked: $out"
  grep -qiE 'kernels were not built|no CUDA device' <<<"$out" ||
    fail "llama4 generate --device cuda: the error does not say why: $out"
  echo "check-cpu-only: llama4 generate --device cuda: $(grep -iE 'error' <<<"$out" | head -n 1)"
fi
echo "check-cpu-only: ok"
