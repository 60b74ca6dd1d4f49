#!/usr/bin/env bash
# Throughput and latency of the state API next to a bare actix-web handler measured in the
# same run (machines here are noisy: compare ratios, not absolute numbers).
#
#   bench/run.sh                      # 10 s per measurement
#   DURATION=30 bench/run.sh
#   DURABILITY=normal bench/run.sh    # synchronous=NORMAL (the default is full)
#   bench/run.sh --store redis        # the Redis backend (a local redis-server started here,
#                                     # append-only file on, appendfsync everysec)
#
# For each connection count (wrk, 2 threads) oauthd starts on a fresh database and runs,
# in this order:
#   pairs        create, then consume the returned state; a pair counts on the 200.
#                The table stays small, as it does when apps finish their flows.
#   create       POST /v1/states: leaves hundreds of thousands of unconsumed states
#   consume      POST /v1/states/consume over the states the create run got
#   pairs+flood  pairs again, on the table the create run filled
#   verify       POST /v1/states/verify of states picked at random from a pool of live ones
#                (a two-second create run stocks it first; VERIFY_STATES, default 40000,
#                of them are picked from, so that a faster machine does not verify a larger
#                set; 0 for all; the bare handler answers as for consume)
#   token        GET /v1/connections/bench/default/token: a connected account whose token
#                is fresh (the bare handler plays the provider for the connect)
#   token+deadhook  the same on an oauthd (started afresh) with a [[notify]] target that
#                never answers and 20 undeliverable events it retries every second: compare
#                its ratio with token's (interleave them: SCENARIOS="token token+deadhook
#                token token+deadhook")
#   proxy        GET /api/me of provider bench's API (the bare handler plays it): directly
#                for the baseline, through /v1/proxy/bench/default/api/me for oauthd
#   proxy+20ms   the same against an API that answers after 20 ms (one across the internet)
#   sweep        pairs for SWEEP_SECONDS (default 20) on an empty table and as long on a
#                table holding SWEEP_ROWS (default 1,000,000) expired states while the
#                sweeper removes them, in SLICES alternating slices (two oauthds, each
#                paused while the other is measured); prints both and what the sweep cost (SQLite only;
#                SWEEP_KEYS=random fills all-random keys, as versions before 2026-12-01 kept)
set -euo pipefail
cd "$(dirname "$0")/.."

STORE=sqlite
while [ $# -gt 0 ]; do
  case $1 in
    --store) STORE=${2:?--store needs sqlite or redis}; shift 2 ;;
    --store=*) STORE=${1#--store=}; shift ;;
    *) echo "usage: bench/run.sh [--store sqlite|redis]" >&2; exit 2 ;;
  esac
done
case $STORE in sqlite|redis) ;; *) echo "--store: sqlite or redis" >&2; exit 2 ;; esac

DURATION=${DURATION:-10}
SLICES=${SLICES:-5}
VERIFY_STATES=${VERIFY_STATES:-40000}
case $SLICES in ''|*[!0-9]*|0) echo "SLICES: a whole number of at least 1" >&2; exit 2 ;; esac
SLICE_SECONDS=$(( DURATION / SLICES > 1 ? DURATION / SLICES : 1 ))
DURABILITY=${DURABILITY:-full}
CONNS=${CONNS:-"16 64"}
SCENARIOS=${SCENARIOS:-"token verify pairs create consume pairs+flood token+deadhook"}
for scenario in $SCENARIOS; do
  case $scenario in
    sweep) [ "$STORE" = sqlite ] || { echo "the sweep scenario is SQLite's (Redis expires keys by itself)" >&2; exit 2; } ;;
    *) [ -f "bench/${scenario%%+*}.lua" ] || { echo "unknown scenario: $scenario" >&2; exit 2; } ;;
  esac
done

# shellcheck source=scripts/apt.sh
. scripts/apt.sh
need_commands wrk:wrk
FEATURES=""
if [ "$STORE" = redis ]; then
  FEATURES="--features redis"
  need_commands redis-server:redis-server
fi
# shellcheck disable=SC2086
cargo build --release --locked $FEATURES --bin oauthd --example bare_handler >&2

# shellcheck source=bench/lib.sh
. bench/lib.sh

# measure TARGET URL SCRIPT CONNS [SECONDS] -> "ok_per_s p50 p99" (latencies as wrk prints them)
measure() {
  local target=$1 url=$2 script=${3%%+*} conns=$4 out secs=${5:-$DURATION}
  # Consume runs half as long as the create run that stocked it, so it rarely runs dry.
  [ "$script" = consume ] && secs=$(( DURATION / 2 > 1 ? DURATION / 2 : 1 ))
  out=$(STATES_OUT="$tmp/states.$target" STATES_IN="$tmp/states.$target" TARGET="$target" SCENARIO="$3" \
        wrk -t2 -c"$conns" -d"${secs}s" --latency -s "bench/$script.lua" "$url" 2>&1)
  echo "$out" >>"$tmp/wrk.log"
  local ok p50 p99
  ok=$(echo "$out" | awk '/^OK_RESPONSES/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  local rate=$(( ok / secs ))
  # Ran out of states: the rate is a lower bound.
  [ "$script" = consume ] && echo "$out" | grep -q "Non-2xx" && rate=">$rate"
  echo "$rate $p50 $p99"
}

# verify_reads -> "hits misses": oauthd's verify cache counters so far
verify_reads() {
  curl -s "$OAUTHD/metrics" | awk '
    /^oauthd_cache_reads_total\{cache="verify",result="hit"\}/ {h = $2}
    /^oauthd_cache_reads_total\{cache="verify",result="miss"\}/ {m = $2}
    END {printf "%d %d\n", h, m}'
}

# ms LATENCY -> milliseconds (wrk prints us, ms or s)
ms() { awk -v l="$1" 'BEGIN { v = l + 0; if (l ~ /us$/) v /= 1000; else if (l ~ /[^m]s$/) v *= 1000; printf "%.2f", v }'; }

# cell SCENARIO CONNS -> "bare_ok_per_s p50 p99 oauthd_ok_per_s p50 p99 ratio spread": the
# two sides in SLICES alternating slices (bare, oauthd, bare, ...) that add up to DURATION
# each, so a drift of the machine during the cell (the bare handler alone measured 19k to
# 32k verifies a second minutes apart) weighs on both alike. Rates are over all slices;
# p50 is the slices' median, p99 their worst; spread is the lowest and highest slice ratio.
# Create and consume, which stock each other, run in one piece.
cell() {
  local scenario=$1 conns=$2 slices=$SLICES script=${1%%+*}
  case $script in create|consume) slices=1 ;; esac
  local secs=$SLICE_SECONDS
  [ "$slices" = 1 ] && secs=$DURATION
  # Verify picks from VERIFY_STATES live states on any machine (bench/lib.sh).
  if [ "$script" = verify ]; then
    stock_verify bare "$BARE" "" "$conns"
    stock_verify oauthd "$OAUTHD" "$BENCH_API_KEY" "$conns"
  fi
  local i b o rows=()
  for i in $(seq "$slices"); do
    b=$(measure bare "$BARE" "$scenario" "$conns" "$secs")
    o=$(measure oauthd "$OAUTHD" "$scenario" "$conns" "$secs")
    rows+=("$b $o")
  done
  printf '%s\n' "${rows[@]}" | while read -r b_ok b_50 b_99 o_ok o_50 o_99; do
    echo "$b_ok $(ms "$b_50") $(ms "$b_99") $o_ok $(ms "$o_50") $(ms "$o_99")"
  done | awk '
    function median(a, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { n++; if ($1 ~ /^>/) bl = ">"; if ($4 ~ /^>/) ol = ">"
      b = $1; sub(/^>/, "", b); o = $4; sub(/^>/, "", o)
      bs += b; os += o; b50[n] = $2; o50[n] = $5
      if ($3 > b99) b99 = $3; if ($6 > o99) o99 = $6
      r = b > 0 ? o / b : 0; if (n == 1 || r < lo) lo = r; if (n == 1 || r > hi) hi = r }
    END {
      printf "%s%d %.2fms %.2fms %s%d %.2fms %.2fms ", bl, bs / n, median(b50, n), b99, ol, os / n, median(o50, n), o99
      printf "%s ", (bs > 0 ? sprintf("%.2f", os / bs) : "n/a")
      printf "%s\n", (n > 1 ? sprintf("%.2f-%.2f", lo, hi) : "-")
    }'
}

if [ "$STORE" = redis ]; then
  echo "oauthd state API on Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') (appendfsync everysec) vs bare actix-web handler, $SLICES alternating slices of ${SLICE_SECONDS}s a side per cell, $(nproc) cores"
else
  echo "oauthd state API vs bare actix-web handler, $SLICES alternating slices of ${SLICE_SECONDS}s a side per cell, durability=$DURABILITY, $(nproc) cores"
fi
printf '%-11s %5s | %10s %8s %8s | %10s %8s %8s | %6s %9s\n' scenario conns "bare ok/s" p50 p99 "oauthd/s" p50 p99 ratio spread
# sweep_run CONNS: the sweep scenario (see the top of this file). Two oauthds run side by
# side, one on an empty table and one on a table of expired states its sweeper works
# through; their pairs slices alternate (SLICES each), and each is stopped (SIGSTOP) while
# the other is measured, so the sweep runs only during its own slices and a drift of the
# machine (the same pairs load measured 8k and 14k a second 20 s apart here) weighs on both.
sweep_run() {
  local conns=$1 secs=${SWEEP_SECONDS:-20} rows=${SWEEP_ROWS:-1000000}
  local slice_secs=$(( secs / SLICES > 1 ? secs / SLICES : 1 ))
  fresh_oauthd "sweep-empty-$conns"
  local e_url=$OAUTHD e_pid=$OAUTHD_PID e_key=$BENCH_API_KEY
  OAUTHD_PID=
  # A database holding $rows expired states, filled directly, then oauthd on it: its
  # sweeper starts at once.
  local db="$tmp/bench-sweep-$conns.db"
  # Keys as oauthd makes them: creation time first (these were made long ago, so they sort
  # before every new state), then 26 bytes of hash. SWEEP_KEYS=random: all-random keys,
  # as versions before time-ordered keys stored them.
  local keys="CAST(x'000000000001' || randomblob(26) AS BLOB)"
  [ "${SWEEP_KEYS:-time}" = random ] && keys="randomblob(32)"
  RUST_LOG=warn "${OAUTHD_BIN:-target/release/oauthd}" keys create --create --db "$db" --name sweep >/dev/null 2>&1
  sqlite3 "$db" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $rows)
    INSERT INTO states (key_hash, namespace, data, created_at, expires_at)
    SELECT $keys, 'oauth:expired', '{\"verifier\":\"abcdefghijklmnopqrstuvwxyz0123456789\"}', 0, ${SWEEP_EXPIRES_AT:-1} FROM n;"
  # SWEEP_SETTINGS: more [states] lines, e.g. "sweep_batch = 1000" to compare pacing.
  sed "s/^\[states\]\$/[states]\nsweep_interval_seconds = 1\n${SWEEP_SETTINGS:-}/" "$tmp/oauthd.toml" >"$tmp/sweep.toml"
  local f_key
  f_key=$(RUST_LOG=warn "${OAUTHD_BIN:-target/release/oauthd}" keys create --db "$db" --name bench 2>/dev/null | tail -1)
  RUST_LOG=${OAUTHD_RUST_LOG:-info} start sweeping "${OAUTHD_BIN:-target/release/oauthd}" --db "$db" --config "$tmp/sweep.toml" --listen 127.0.0.1:0
  local f_url=$URL f_pid=${pids[-1]}
  kill -STOP "$f_pid"
  local i e f rows_out=()
  for i in $(seq "$SLICES"); do
    kill -CONT "$e_pid"; e=$(BENCH_API_KEY=$e_key measure oauthd "$e_url" pairs "$conns" "$slice_secs"); kill -STOP "$e_pid"
    kill -CONT "$f_pid"; f=$(BENCH_API_KEY=$f_key measure oauthd "$f_url" pairs "$conns" "$slice_secs"); kill -STOP "$f_pid"
    rows_out+=("$e $f")
  done
  kill -CONT "$e_pid" "$f_pid"
  kill "$e_pid"; wait "$e_pid" 2>/dev/null || true
  local left
  left=$(sqlite3 "file:$db?mode=ro" "SELECT count(*) FROM states" 2>/dev/null || echo "?")
  kill "$f_pid"; wait "$f_pid" 2>/dev/null || true
  printf '%s\n' "${rows_out[@]}" | while read -r e_ok e_50 e_99 f_ok f_50 f_99; do
    echo "$e_ok $(ms "$e_50") $(ms "$e_99") $f_ok $(ms "$f_50") $(ms "$f_99")"
  done | awk -v conns="$conns" '
    function median(a, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { n++; es += $1; fs += $4; e50[n] = $2; f50[n] = $5; e99[n] = $3; f99[n] = $6
      if ($3 > ew) ew = $3; if ($6 > fw) fw = $6
      r = $1 > 0 ? $4 / $1 : 0; if (n == 1 || r < lo) lo = r; if (n == 1 || r > hi) hi = r }
    END {
      printf "%-11s %5s | %10d %6.2fms %6.2fms | %10d %6.2fms %6.2fms | %6s %4.2f-%4.2f\n", "sweep", conns,
        es / n, median(e50, n), ew, fs / n, median(f50, n), fw, (es > 0 ? sprintf("%.2f", fs / es) : "n/a"), lo, hi
      printf "  (p99 median of the slices: %.2fms empty, %.2fms sweeping)\n", median(e99, n), median(f99, n)
    }'
  echo "  (sweep: left, pairs on an empty table; right, the same while sweeping $rows expired states, $left still in the table after $SLICES slices of ${slice_secs}s; ratio = rate while sweeping / rate on the empty table; p99 is the worst slice's)"
  grep -h "sweeper:" "$tmp/sweeping.err" | tail -1 | sed 's/^/  /' || true
}

restarts=0
for conns in $CONNS; do
  fresh_oauthd "$conns"
  for scenario in $SCENARIOS; do
    if [ "$scenario" = sweep ]; then
      # Runs on databases of its own; what follows gets a fresh oauthd again.
      sweep_run "$conns"
      fresh_oauthd "$conns-$((++restarts))"
      continue
    fi
    if [ "$scenario" = token+deadhook ]; then
      OAUTHD_TOML="$tmp/deadhook.toml" fresh_oauthd "deadhook-$conns-$((++restarts))"
      for _ in $(seq 19); do connect_bench; done
    fi
    [ "$scenario" = verify ] && read -r hits0 misses0 < <(verify_reads)
    read -r b_ok b_50 b_99 o_ok o_50 o_99 ratio spread < <(cell "$scenario" "$conns")
    printf '%-11s %5s | %10s %8s %8s | %10s %8s %8s | %6s %9s\n' \
      "$scenario" "$conns" "$b_ok" "$b_50" "$b_99" "$o_ok" "$o_50" "$o_99" "$ratio" "$spread"
    if [ "$scenario" = verify ]; then
      # How many verifies the cache answered depends on how many states the short create
      # run left to pick from (more on a faster machine) against the cache's 100,000.
      read -r hits misses < <(verify_reads)
      awk -v h=$((hits - hits0)) -v m=$((misses - misses0)) -v n="$(cat "$tmp"/states.oauthd.* 2>/dev/null | wc -l)" \
        'BEGIN { if (h + m > 0) printf "  (verify: %d live states to pick from; %.0f %% of %d verifies answered from memory)\n", n, 100 * h / (h + m), h + m }'
    fi
    # Back to an oauthd without the dead target for what follows.
    if [ "$scenario" = token+deadhook ]; then fresh_oauthd "$conns-$((++restarts))"; fi
  done
  if [ "$STORE" = redis ]; then
    rows=$(redis-cli -p "$REDIS_PORT" dbsize)
    echo "  (at $conns connections Redis ended with $rows keys: two per live state)"
  else
    rows=$(sqlite3 "file:$OAUTHD_DB?mode=ro" "SELECT count(*) FROM states" 2>/dev/null || echo "?")
    echo "  (at $conns connections the database ended with $rows live states)"
  fi
done
echo "(>N: the consume run used up the states its create run stocked; the rate is a lower bound)"
