#!/usr/bin/env bash
# Runs every test: unit tests, the integration tests against the fake CLI, the tests that
# drive the real Claude Code CLI (installed here with npm into .tools/, offline against a
# stand-in API the test serves itself), and the official openai Python SDK's check of /v1
# (installed here with pip into the venv .tools/python).
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
if [ -z "${TETHER_TEST_PYTHON:-}" ]; then
  if command -v python3 >/dev/null 2>&1; then
    TETHER_TEST_PYTHON="$(bash scripts/install-python-tools.sh | tail -n1)"
    export TETHER_TEST_PYTHON
  elif [ -n "${CI:-}" ]; then
    echo "test.sh: python3 is needed to install the openai SDK for the tests" >&2
    exit 1
  else
    echo "test.sh: python3 not found; the openai SDK tests will be skipped" >&2
  fi
fi
# The benchmark's one-turn smoke run first, then unit and integration tests (their counts
# close the output).
cargo test --bench tether "$@"
exec cargo test --lib --bins --tests "$@"
