#!/usr/bin/env bash
# The whole test suite, as the README gives it and CI runs it: system
# packages, formatting, lints, every test (unit, protocol, root network
# namespace tests), and a quick pass of the benchmarks so they keep working.
# Run as root; with CI=true a missing privilege fails the root tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "test-all.sh: run as root (the network tests build namespaces): sudo $0" >&2
  exit 1
fi
./scripts/install-deps.sh
before=$(ip netns list | sort)
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
# Benchmarks in their quick mode (numbers printed, nothing asserted).
cargo test --locked --benches
after=$(ip netns list | sort)
if [ "$before" != "$after" ]; then
  echo "test-all.sh: the tests left network namespaces behind:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
