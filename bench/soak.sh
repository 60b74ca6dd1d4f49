#!/usr/bin/env bash
# Soak test (not in CI): mixed load against one oauthd for MINUTES minutes, sampling its
# resident memory, open file descriptors and on-disk size once a minute. A healthy run
# stays flat after the first minute.
#
#   MINUTES=30 bench/soak.sh
#   MINUTES=10 bench/soak.sh --store redis
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${MINUTES:-10}
CONNS=${CONNS:-32}
STORE=sqlite
[ "${1:-}" = "--store" ] && STORE=${2:?--store needs sqlite or redis}
case $STORE in sqlite|redis) ;; *) echo "--store: sqlite or redis" >&2; exit 2 ;; esac

# shellcheck source=scripts/apt.sh
. scripts/apt.sh
need_commands wrk:wrk sqlite3:sqlite3 $([ "$STORE" = redis ] && echo redis-server:redis-server)
FEATURES=""; [ "$STORE" = redis ] && FEATURES="--features redis"
# shellcheck disable=SC2086
cargo build --release --locked $FEATURES --bin oauthd >&2

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

cat >"$tmp/oauthd.toml" <<TOML
api_key_cache_seconds = 1
[states]
sweep_interval_seconds = 5
expired_grace_seconds = 10
[limits]
failed_auth_per_minute = 0
TOML
db="$tmp/soak.db"
STORE_ARGS=()
if [ "$STORE" = redis ]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$port" --bind 127.0.0.1 --dir "$tmp" --save "" --appendonly yes \
    --appendfsync everysec --daemonize no >"$tmp/redis.log" 2>&1 &
  pids+=($!); REDIS_PID=$!
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  target/release/oauthd keygen >"$tmp/vault.key"; chmod 600 "$tmp/vault.key"
  export OAUTHD_KEY_FILE="$tmp/vault.key"
  STORE_ARGS=(--store "redis://127.0.0.1:$port/0")
fi
BENCH_API_KEY=$(RUST_LOG=warn target/release/oauthd keys create --db "$db" "${STORE_ARGS[@]}" --name soak 2>/dev/null | tail -1)
export BENCH_API_KEY
RUST_LOG=${OAUTHD_RUST_LOG:-info} target/release/oauthd --db "$db" "${STORE_ARGS[@]}" --config "$tmp/oauthd.toml" \
  --listen 127.0.0.1:0 >"$tmp/oauthd.out" 2>"$tmp/oauthd.err" &
pids+=($!); PID=$!
for _ in $(seq 100); do URL=$(sed -n 's/^oauthd listening on //p' "$tmp/oauthd.out"); [ -n "$URL" ] && break; sleep 0.1; done
[ -n "$URL" ] || { cat "$tmp/oauthd.err" >&2; exit 1; }

# sample: minute RSS_KiB FDS STORE_BYTES
sample() {
  local rss fds bytes
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")
  fds=$(ls "/proc/$PID/fd" | wc -l)
  if [ "$STORE" = redis ]; then
    bytes=$(redis-cli -p "$port" info memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
    bytes="$bytes (redis used_memory; aof $(du -sb "$tmp/appendonlydir" | cut -f1))"
  else
    bytes=$(cat "$db" "$db-wal" 2>/dev/null | wc -c)
  fi
  printf '%6s %10s %5s  %s\n' "$1" "$rss" "$fds" "$bytes"
}

echo "soak: $MINUTES min, $CONNS connections, store $STORE, $(nproc) cores"
printf '%6s %10s %5s  %s\n' minute "RSS KiB" fds "store bytes"
sample 0
wrk -t2 -c"$CONNS" -d"$((MINUTES * 60))s" -s bench/soak.lua "$URL" >"$tmp/wrk.txt" 2>&1 &
WRK=$!
pids+=($WRK)
for m in $(seq "$MINUTES"); do
  sleep 60
  kill -0 "$PID" || { echo "oauthd died" >&2; cat "$tmp/oauthd.err" >&2; exit 1; }
  sample "$m"
done
wait "$WRK" || true
sleep 15   # let the last states expire and be swept
sample end
grep -E "Requests/sec|Non-2xx|Socket errors" "$tmp/wrk.txt" || true
if [ "$STORE" = sqlite ]; then
  echo "live states at the end: $(sqlite3 "file:$db?mode=ro" 'SELECT count(*) FROM states')," \
       "tombstones: $(sqlite3 "file:$db?mode=ro" 'SELECT count(*) FROM expired_states')"
else
  echo "keys in Redis at the end: $(redis-cli -p "$port" dbsize)"
fi
echo "oauthd log lines at warn or above: $(wc -l <"$tmp/oauthd.err")"
# The distinct ones (timestamps cut), most frequent first.
sed 's/^\[[^]]*\] //' "$tmp/oauthd.err" | sort | uniq -c | sort -rn | head -5
