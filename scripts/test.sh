#!/usr/bin/env bash
# The test command of the README and of CI: install what is missing, fetch the test data,
# then formatting, lints, the whole test suite and a short fuzz run of the GGUF reader.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/install_deps.sh
scripts/setup_test_data.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== fuzz smoke"
scripts/fuzz_smoke.sh "${GRAFT_FUZZ_SECONDS:-60}"
echo "== cargo test"
cargo test --workspace
