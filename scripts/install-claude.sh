#!/usr/bin/env bash
# Installs the real Claude Code CLI into a project-local folder, for the tests that drive it.
#
#   export TETHER_TEST_CLAUDE_BIN="$(bash scripts/install-claude.sh | tail -n1)"
#
# The CLI goes to <repo>/.tools/claude (npm package @anthropic-ai/claude-code, pinned version).
# The script is idempotent: when the binary is already there at the right version it only
# reports it. Progress goes to stderr; the last stdout line is the absolute path of the binary.
#
# Environment:
#   CLAUDE_CLI_VERSION  version to install (default: the one the tests were written against)
set -euo pipefail

readonly VERSION="${CLAUDE_CLI_VERSION:-2.1.329}"
readonly PACKAGE="@anthropic-ai/claude-code"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly INSTALL_DIR="$repo_root/.tools/claude"

log() { printf 'install-claude: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Names of the npm packages that may hold the native binary on this machine, best first.
platform_packages() {
  local os arch
  case "$(uname -s)" in
    Linux) os=linux ;;
    Darwin) os=darwin ;;
    *) return 0 ;;
  esac
  case "$(uname -m)" in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) return 0 ;;
  esac
  if [[ $os == linux ]] && is_musl; then
    echo "claude-code-$os-$arch-musl"
  fi
  echo "claude-code-$os-$arch"
}

is_musl() {
  compgen -G '/lib/ld-musl-*' >/dev/null 2>&1 || { ldd --version 2>&1 | grep -qi musl; }
}

# Prints the path of the first candidate binary that exists, or fails.
find_binary() {
  local modules="$INSTALL_DIR/node_modules" pkg
  for pkg in $(platform_packages); do
    if [[ -x "$modules/@anthropic-ai/$pkg/claude" ]]; then
      echo "$modules/@anthropic-ai/$pkg/claude"
      return 0
    fi
  done
  if [[ -x "$modules/.bin/claude" ]]; then
    echo "$modules/.bin/claude"
    return 0
  fi
  return 1
}

# Prints the version the binary reports, e.g. "2.1.329 (Claude Code)"; fails if it does not run.
binary_version() {
  "$1" --version 2>/dev/null | head -n1
}

has_wanted_version() {
  local bin version
  bin="$(find_binary)" || return 1
  version="$(binary_version "$bin")" || return 1
  [[ $version == "$VERSION"* ]]
}

install_cli() {
  command -v npm >/dev/null || die "npm is needed to install $PACKAGE"
  mkdir -p "$INSTALL_DIR"
  # A package.json of its own keeps npm from walking up to some enclosing project.
  [[ -f "$INSTALL_DIR/package.json" ]] || echo '{ "private": true }' >"$INSTALL_DIR/package.json"
  log "installing $PACKAGE@$VERSION into $INSTALL_DIR"
  (cd "$INSTALL_DIR" && npm install --no-audit --no-fund --loglevel=error "$PACKAGE@$VERSION") >&2
}

main() {
  if has_wanted_version; then
    log "already installed"
  else
    install_cli
  fi

  local bin version
  bin="$(find_binary)" || die "no claude binary found under $INSTALL_DIR/node_modules"
  version="$(binary_version "$bin")" || die "$bin does not run"
  [[ -n $version ]] || die "$bin --version printed nothing"
  log "$bin: $version"
  [[ $version == "$VERSION"* ]] || log "warning: wanted $VERSION, got $version"

  echo "$(cd "$(dirname "$bin")" && pwd -P)/$(basename "$bin")"
}

main "$@"
