#!/usr/bin/env bash
# Runs every tier of the tests. `cargo test` alone is the quick tier (unit tests and the
# integration tests against the fake CLI); this script adds the full tier
# (TETHER_TEST_FULL=1): the load and kill runs, the listener floods, the tests that drive the
# real Claude Code CLI (installed here with npm into .tools/, offline against a stand-in API
# the test serves itself), and the official openai Python SDK's check of /v1 (installed here
# with pip into the venv .tools/python). Under CI (CI set) a tier whose tool is missing fails
# the run; elsewhere its tests say on stderr that they were skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export TETHER_TEST_FULL=1

# Fails under CI, warns elsewhere.
missing() {
  if [ -n "${CI:-}" ]; then
    echo "test.sh: $1" >&2
    exit 1
  fi
  echo "test.sh: $1; those tests will be skipped" >&2
}

if [ -z "${TETHER_TEST_CLAUDE_BIN:-}" ]; then
  if command -v npm >/dev/null 2>&1; then
    TETHER_TEST_CLAUDE_BIN="$(bash scripts/install-claude.sh | tail -n1)"
    export TETHER_TEST_CLAUDE_BIN
  else
    missing "npm is needed to install the Claude Code CLI for the real-CLI tests"
  fi
fi
if [ -n "${TETHER_TEST_CLAUDE_BIN:-}" ] && [ ! -x "$TETHER_TEST_CLAUDE_BIN" ]; then
  missing "TETHER_TEST_CLAUDE_BIN ($TETHER_TEST_CLAUDE_BIN) is not an executable file"
fi
if [ -z "${TETHER_TEST_PYTHON:-}" ]; then
  if command -v python3 >/dev/null 2>&1; then
    TETHER_TEST_PYTHON="$(bash scripts/install-python-tools.sh | tail -n1)"
    export TETHER_TEST_PYTHON
  else
    missing "python3 is needed to install the openai SDK for its tests"
  fi
fi
if [ -n "${TETHER_TEST_PYTHON:-}" ] && [ ! -x "$TETHER_TEST_PYTHON" ]; then
  missing "TETHER_TEST_PYTHON ($TETHER_TEST_PYTHON) is not an executable file"
fi
# The benchmark's one-turn smoke run first, then unit and integration tests (their counts
# close the output).
cargo test --bench tether "$@"
exec cargo test --lib --bins --tests "$@"
