# Shared by bench/run.sh and bench/callgrind.sh (sourced, not run): a temporary directory
# cleaned up on exit, processes started and stopped by PID, the bare handler (which also
# plays provider "bench"), oauthd's config, and a fresh oauthd with bench/default
# connected. Expects STORE and DURABILITY; BARE_WRAP and OAUTHD_WRAP prefix the commands
# (callgrind.sh runs both under valgrind); OAUTHD_BIN runs another oauthd binary (an
# earlier commit's, for a before/after in one sitting).

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

# start NAME CMD...: runs CMD, waits for its "listening on URL" line (START_TRIES tenths of
# a second), sets $URL.
start() {
  local name=$1; shift
  "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  pids+=($!)
  for _ in $(seq "${START_TRIES:-100}"); do
    URL=$(sed -n 's/.* listening on //p' "$tmp/$name.out" | head -1)
    [ -n "$URL" ] && return 0
    sleep 0.1
  done
  echo "$name did not start:" >&2; cat "$tmp/$name.err" >&2; exit 1
}

export BENCH_API_KEY
# shellcheck disable=SC2086
start bare ${BARE_WRAP:-} target/release/examples/bare_handler 127.0.0.1:0; BARE=$URL
# The flood scenarios create far more than the default per-namespace cap (100,000 live
# states): lift it so they measure storage, not the cap. Provider "bench" is the bare
# handler's stand-in token endpoint.
cat >"$tmp/oauthd.toml" <<TOML
durability = "$DURABILITY"
${TOKEN_CACHE_SECONDS:+token_cache_seconds = $TOKEN_CACHE_SECONDS}
[states]
max_states = 100000000
[providers.bench]
authorization_url = "$BARE/provider/authorize"
token_url = "$BARE/provider/token"
api_base_url = "$BARE/"
client_id = "bench"
client_secret = "bench"
TOML
# The same with a notification target nobody answers (a closed loopback port), retried
# every second: what a dead webhook costs the token API (scenario token+deadhook).
cp "$tmp/oauthd.toml" "$tmp/deadhook.toml"
cat >>"$tmp/deadhook.toml" <<TOML
[[notify]]
name = "dead"
url = "http://127.0.0.1:9/hook"
[events]
retry_min_seconds = 1
retry_max_seconds = 1
TOML
STORE_ARGS=()
if [ "$STORE" = redis ]; then
  REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$tmp" --save "" \
    --appendonly yes --appendfsync everysec --daemonize no >"$tmp/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  ${OAUTHD_BIN:-target/release/oauthd} keygen >"$tmp/vault.key"; chmod 600 "$tmp/vault.key"
  export OAUTHD_KEY_FILE="$tmp/vault.key"
  STORE_ARGS=(--store "redis://127.0.0.1:$REDIS_PORT/0")
fi

# fresh_oauthd N: stops the previous oauthd, starts one on a new database, sets $OAUTHD.
fresh_oauthd() {
  [ -n "${OAUTHD_PID:-}" ] && { kill "$OAUTHD_PID"; wait "$OAUTHD_PID" 2>/dev/null || true; }
  local db="$tmp/bench-$1.db"
  [ "$STORE" = redis ] && redis-cli -p "$REDIS_PORT" flushdb >/dev/null
  BENCH_API_KEY=$(RUST_LOG=warn ${OAUTHD_BIN:-target/release/oauthd} keys create --create --db "$db" "${STORE_ARGS[@]}" --name bench 2>/dev/null | tail -1)
  # At oauthd's own log level (info, as it runs unless told otherwise): what users run is
  # what is measured, access lines included.
  # shellcheck disable=SC2086
  RUST_LOG=${OAUTHD_RUST_LOG:-info} start oauthd ${OAUTHD_WRAP:-} ${OAUTHD_BIN:-target/release/oauthd} --db "$db" "${STORE_ARGS[@]}" --config "${OAUTHD_TOML:-$tmp/oauthd.toml}" --listen 127.0.0.1:0
  OAUTHD=$URL OAUTHD_PID=${pids[-1]} OAUTHD_DB=$db
  connect_bench
}

# connect_bench: connects account bench/default through the browser flow's callback, the
# bare handler answering as the provider's token endpoint. Where the flow's address is
# oauthd's confirmation page (an app's flow), it is confirmed first, the callback carries
# the cookie that gives, and the page it answers with is pressed (older binaries send the
# browser to the provider at once, and connect at the callback).
connect_bench() {
  local started address state page jar="$tmp/flow-cookies"
  started=$(curl -sf -X POST -H "Authorization: Bearer $BENCH_API_KEY" \
    -H 'Content-Type: application/json' -d '{}' "$OAUTHD/v1/connect/bench")
  address=$(echo "$started" | sed -n 's/.*"authorize_url":"\([^"]*\)".*/\1/p')
  state=$(echo "$address" | sed -n 's/.*[?&]state=\([^&]*\).*/\1/p')
  case "$address" in
    */connect/bench/confirm\?*)
      curl -sf -o /dev/null -c "$jar" -X POST -H 'Sec-Fetch-Site: same-origin' "$address" \
        || { echo "could not confirm bench/default at $address" >&2; exit 1; } ;;
  esac
  page=$(curl -s -b "$jar" "$OAUTHD/callback/bench?state=$state&code=bench")
  # Back from the provider, an app's flow asks the person to press "Connect" (older
  # binaries connect at the callback): pressed as from that page.
  local held
  held=$(echo "$page" | sed -n 's/.*name="held" value="\([^"]*\)".*/\1/p')
  if [ -n "$held" ]; then
    page=$(curl -s -X POST -H 'Sec-Fetch-Site: same-origin' --data-urlencode "held=$held" \
      "$OAUTHD/callback/bench/finish")
  fi
  echo "$page" | grep -q "is connected" || { echo "could not connect bench/default: $page" >&2; exit 1; }
}


# stock_verify TARGET URL KEY CONNS: the live states verify picks from, in
# $tmp/states.TARGET.<wrk thread>: VERIFY_STATES (default 40,000) of them on any machine,
# made by two-second create runs (more of them on a slower machine, at most five), so that
# the share the verify cache can hold (100,000 states) is the same everywhere.
# VERIFY_STATES=0 keeps all that one run leaves (more than the cache holds on a fast
# machine: the verify cache then thrashes).
stock_verify() {
  local target=$1 url=$2 key=$3 conns=$4 want=${VERIFY_STATES:-40000} f append=()
  for _ in 1 2 3 4 5; do
    env "${append[@]}" BENCH_API_KEY="$key" TARGET="$target" STATES_OUT="$tmp/states.$target" \
      wrk -t2 -c"$conns" -d2s -s bench/create.lua "$url" >/dev/null 2>&1
    append=(STATES_APPEND=1)  # create.lua appends when the variable is set at all
    [ "$want" -gt 0 ] || return 0
    [ "$(cat "$tmp/states.$target".* | wc -l)" -lt "$want" ] || break
  done
  for f in "$tmp/states.$target".*; do
    head -n $((want / 2)) "$f" >"$f.kept" && mv "$f.kept" "$f"
  done
}
