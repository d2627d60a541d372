#!/usr/bin/env bash
# Checks the running server against its own OpenAPI document with schemathesis: every route,
# at least MIN_REQUESTS generated requests; no 5xx, every response as the document says, no
# request past its timeout. Exits non-zero on any failure.
#
#   bash scripts/schemathesis.sh
#
# It installs schemathesis (pinned, from PyPI) into .tools/schemathesis (once), builds the
# debug `tether` and `fake-claude`, starts tether on a free port with the fake CLI as its
# agent, a temp data folder and home (the project folder `~/code/app` of the document's
# examples exists there), the log push gateway and an admin token, starts one turn that waits
# on an approval, runs `schemathesis run` (configured by scripts/schemathesis.toml), counts
# the requests it sent, and stops the server. Needs python3, curl and cargo.
#
# Environment:
#   SCHEMATHESIS_VERSION  version to install (default: the one this was written against)
#   MIN_REQUESTS          fewest generated requests in all (default 1000)
#   MAX_EXAMPLES          test cases per operation and phase (default 60)
#   SEED                  schemathesis' random seed (default: a new one; printed)
set -euo pipefail

readonly VERSION="${SCHEMATHESIS_VERSION:-4.32.5}"
readonly MIN_REQUESTS="${MIN_REQUESTS:-1000}"
readonly MAX_EXAMPLES="${MAX_EXAMPLES:-60}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly VENV="$repo/.tools/schemathesis"

log() { printf 'schemathesis.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

install() {
  if [[ "$("$VENV/bin/schemathesis" --version 2>/dev/null)" == *" $VERSION" ]]; then
    return
  fi
  command -v python3 >/dev/null || die "python3 is needed to install schemathesis"
  log "installing schemathesis $VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$VERSION"
}

install
cd "$repo"
cargo build --quiet --features test-support --bin tether --bin fake-claude

work="$(mktemp -d "${TMPDIR:-/tmp}/tether-schemathesis.XXXXXX")"
server=""
cleanup() {
  if [[ -n "$server" ]] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  if [[ -n "${KEEP:-}" ]]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# The server's settings (config/default.toml says what each does). Its home is the temp
# folder: `projects.roots` is `["~"]`, and the document's example project is `~/code/app`.
mkdir -p "$work/home/code/app"
export HOME="$work/home"
export TETHER__SERVER__BIND=127.0.0.1:0
export TETHER__DATABASE__PATH="$work/data/tether.db"
export TETHER__AGENT__COMMAND="$repo/target/debug/fake-claude"
export TETHER__SESSIONS__KEEP_AWAKE=false
export TETHER__LOG__FILTER=warn
# A few thousand requests in two minutes from one token: the request rate and the new-session
# rate would answer most of them 429 (both have tests of their own).
export TETHER__SERVER__REQUESTS_PER_MINUTE=0
export TETHER__LIMITS__NEW_SESSIONS_PER_MINUTE=100000
# Short budgets, so that a request that waits (chat with `wait`, a recap) ends well within
# schemathesis' request timeout below.
export TETHER__SERVER__REQUEST_TIMEOUT=5s
export TETHER__SERVER__WAIT_TIMEOUT=5s
readonly REQUEST_TIMEOUT=20

"$repo/target/debug/tether" serve >"$work/stdout" 2>"$work/server.log" &
server=$!
base=""
for _ in $(seq 1 300); do
  base="$(sed -n 's/^tether listening on \(http[^ ]*\).*/\1/p' "$work/stdout" | head -n1)"
  [[ -n "$base" ]] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; die "tether did not start"; }
  sleep 0.1
done
[[ -n "$base" ]] || die "tether did not say where it listens"
admin="$("$repo/target/debug/tether" token --admin)"
log "tether at $base (log: the end of this output on failure)"

# Something real to find besides what schemathesis makes itself: a session whose turn waits
# on an approval (a Write the fake CLI asks about), so that the session and approval routes
# meet ids that exist (schemathesis reads them from the listings).
curl -fsS -o /dev/null -H "Authorization: Bearer $admin" -H 'Content-Type: application/json' \
  -d '{"projectPath": "~/code/app", "message": "[ask-write:notes.txt] take notes"}' \
  "$base/api/chat"

export HYPOTHESIS_STORAGE_DIRECTORY="$VENV/hypothesis"
seed="${SEED:-$RANDOM$RANDOM}"
log "seed $seed"
status=0
"$VENV/bin/schemathesis" --config-file "$repo/scripts/schemathesis.toml" run "$base/openapi.json" \
  --header "Authorization: Bearer $admin" \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$seed" \
  --request-timeout "$REQUEST_TIMEOUT" \
  --report har --report-har-path "$work/requests.har" \
  || status=$?

requests="$("$VENV/bin/python" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["log"]["entries"]))' "$work/requests.har" 2>/dev/null || echo 0)"
log "$requests requests sent"
if ! kill -0 "$server" 2>/dev/null; then
  log "tether is gone"
  status=1
fi
if [[ $status -ne 0 ]]; then
  log "the server's log:"
  tail -n 50 "$work/server.log" >&2
  exit "$status"
fi
[[ $requests -ge $MIN_REQUESTS ]] || die "only $requests requests (at least $MIN_REQUESTS wanted)"
