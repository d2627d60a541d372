#!/usr/bin/env bash
# Installs the Python tools the tests drive (the official `openai` SDK, pinned in
# tests/python/requirements.txt) into a project-local virtual environment.
#
#   export TETHER_TEST_PYTHON="$(bash scripts/install-python-tools.sh | tail -n1)"
#
# The venv is <repo>/.tools/python, made with `python3 -m venv`; the packages come from PyPI
# with pip. The script is idempotent: when the venv already holds exactly what the
# requirements pin, it only reports it. Progress goes to stderr; the last stdout line is the
# absolute path of the venv's python.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly VENV="$repo_root/.tools/python"
readonly REQUIREMENTS="$repo_root/tests/python/requirements.txt"
# Written after a successful install: the requirements it installed.
readonly STAMP="$VENV/.installed-requirements"

log() { printf 'install-python-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

up_to_date() {
  [[ -x "$VENV/bin/python" ]] && [[ -f "$STAMP" ]] && cmp -s "$STAMP" "$REQUIREMENTS" &&
    "$VENV/bin/python" -c 'import openai' >/dev/null 2>&1
}

main() {
  if up_to_date; then
    log "already installed"
  else
    command -v python3 >/dev/null || die "python3 is needed"
    if [[ ! -x "$VENV/bin/python" ]]; then
      log "creating $VENV"
      mkdir -p "$(dirname "$VENV")"
      python3 -m venv "$VENV" >&2 || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    fi
    log "installing $(grep -v '^#' "$REQUIREMENTS" | xargs) into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
      -r "$REQUIREMENTS" >&2
    cp "$REQUIREMENTS" "$STAMP"
  fi
  log "$("$VENV/bin/python" -c 'import openai, sys; print("openai", openai.__version__, "on python", sys.version.split()[0])')"
  echo "$VENV/bin/python"
}

main "$@"
