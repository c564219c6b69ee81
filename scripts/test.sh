#!/usr/bin/env bash
# The test command of the README and of CI. From a fresh machine it installs what is missing,
# fetches the test data, computes llama.cpp's reference outputs for this CPU (cached outside the
# clone), then runs formatting, lints, a short fuzz run of the GGUF reader, every test binary
# (all of them, even after a failure; the failures are listed at the end) and the bindings' tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

echo "== machine"
scripts/machine_info.sh
echo "== set-up"
scripts/install_deps.sh
scripts/machine_info.sh | sed -n '/^cmake/p'
scripts/setup_test_data.sh
scripts/references.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== fuzz smoke"
scripts/fuzz_smoke.sh "${GRAFT_FUZZ_SECONDS:-60}"
echo "== cargo test"
cargo test --workspace --no-fail-fast
echo "== bindings"
scripts/test_bindings.sh
echo "== aarch64 (cross-built, run under qemu-user)"
if [[ "${GRAFT_SKIP_AARCH64:-0}" == 1 ]]; then
    echo "skipped (GRAFT_SKIP_AARCH64=1)"
else
    scripts/test_aarch64.sh
fi
