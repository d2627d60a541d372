#!/usr/bin/env bash
# Runs every test: unit tests, the integration tests against the fake CLI, and the test
# that drives the real Claude Code CLI (installed here with npm into .tools/, offline
# against a stand-in API the test serves itself).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${TETHER_TEST_CLAUDE_BIN:-}" ]; then
  if command -v npm >/dev/null 2>&1; then
    TETHER_TEST_CLAUDE_BIN="$(bash scripts/install-claude.sh | tail -n1)"
    export TETHER_TEST_CLAUDE_BIN
  elif [ -n "${CI:-}" ]; then
    echo "test.sh: npm is needed to install the Claude Code CLI for the tests" >&2
    exit 1
  else
    echo "test.sh: npm not found; the real-CLI test will be skipped" >&2
  fi
fi
# The benchmark's one-turn smoke run first, then unit and integration tests (their counts
# close the output).
cargo test --bench tether "$@"
exec cargo test --lib --bins --tests "$@"
