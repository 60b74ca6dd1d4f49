#!/usr/bin/env bash
# Two oauthd builds (or two settings of one) against the bare handler in one sitting:
# ROUNDS rounds of a bare slice, an A slice and a B slice, SLICE seconds each, so the
# machine's drift (the bare handler alone has measured 18k to 29k pairs a second minutes
# apart here) weighs on all three alike. For a change too small for bench/run.sh's
# before-then-after sittings to resolve.
#
#   A=/tmp/oauthd-before bench/ab.sh          # A: another binary (e.g. the last commit's);
#                                             # B: this tree's release build
#   B_DURABILITY=normal bench/ab.sh           # one binary, durability full (A) and normal (B)
#   A=bare-writes bench/ab.sh                 # A: the bare handler with a writer thread that
#                                             # syncs each group of creates and consumes
#                                             # (BARE_WRITES): the floor under oauthd's design
#   SCENARIO=token ROUNDS=8 SLICE=4 bench/ab.sh
#
# Each slice prints its rate (wrk's requests/s: a pair counts as two), the server's CPU per
# request (every thread of the process, the writer's included, from
# /proc/PID/task/*/schedstat) and wrk's p99; then each side's median rate and CPU, and A's
# and B's median ratio to the bare slice of their round. SCENARIO: pairs, token or verify
# (each side first stocked with VERIFY_STATES live states, 40,000 unless told, as
# bench/run.sh does: until 2026-12-03 all that one 2 s create run left, past the verify
# cache's 100,000 on a fast machine). Each oauthd runs on its own fresh database with its own key.
set -euo pipefail
cd "$(dirname "$0")/.."

STORE=sqlite
DURABILITY=${DURABILITY:-full}
SCENARIO=${SCENARIO:-pairs}
ROUNDS=${ROUNDS:-6}
SLICE=${SLICE:-5}
CONNS=${CONNS:-64}
case $SCENARIO in pairs|token|verify) ;; *) echo "SCENARIO: pairs, token or verify" >&2; exit 2 ;; esac
for n in "$ROUNDS" "$SLICE" "$CONNS"; do
  case $n in ''|*[!0-9]*|0) echo "ROUNDS, SLICE and CONNS: whole numbers of at least 1" >&2; exit 2 ;; esac
done
# shellcheck source=scripts/apt.sh
. scripts/apt.sh
need_commands wrk:wrk
cargo build --release --locked --bin oauthd --example bare_handler >&2
A=${A:-target/release/oauthd} B=${B:-target/release/oauthd}
for bin in "$A" "$B"; do
  [ "$bin" = bare-writes ] || [ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 2; }
done

# shellcheck source=bench/lib.sh
. bench/lib.sh
BARE_PID=${pids[0]}
if [ "$A" = bare-writes ]; then
  # The bare handler again, on its own file in the same directory as oauthd's database.
  BARE_WRITES=$tmp/bare-writes start bare-writes target/release/examples/bare_handler 127.0.0.1:0
  A_URL=$URL A_PID=${pids[-1]} A_KEY=""
else
  OAUTHD_BIN=$A fresh_oauthd a
  A_URL=$OAUTHD A_PID=$OAUTHD_PID A_KEY=$BENCH_API_KEY
  unset OAUTHD_PID  # fresh_oauthd would stop A
fi
sed "s/^durability = .*/durability = \"${B_DURABILITY:-$DURABILITY}\"/" "$tmp/oauthd.toml" >"$tmp/b.toml"
OAUTHD_TOML=$tmp/b.toml OAUTHD_BIN=$B fresh_oauthd b
B_URL=$OAUTHD B_PID=$OAUTHD_PID B_KEY=$BENCH_API_KEY

# cpu_ns PID -> nanoseconds every thread of PID has run
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }

# slice NAME PID URL KEY SIDE -> "rate cpu_us_per_request p99_ms"
slice() {
  local before after out n
  before=$(cpu_ns "$2")
  out=$(BENCH_API_KEY=$4 TARGET=$1 STATES_IN="$tmp/states.$5" wrk -t2 -c"$CONNS" -d"${SLICE}s" --latency -s "bench/$SCENARIO.lua" "$3" 2>&1)
  after=$(cpu_ns "$2")
  echo "$out" | grep -q "Non-2xx" && { echo "$1 answered non-2xx: $out" >&2; exit 1; }
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "$out" | awk -v n="$n" -v c=$((after - before)) '
    /Requests\/sec/ {rate = $2}
    $1 == "99%" {p = $2 + 0; if ($2 ~ /us$/) p /= 1000; else if ($2 ~ /[^m]s$/) p *= 1000}
    END {printf "%d %.1f %.2f\n", rate, c / 1000 / n, p}'
}

# The live states verify picks from: VERIFY_STATES (40,000) on any machine, as bench/run.sh.
if [ "$SCENARIO" = verify ]; then
  for side in bare a b; do
    case $side in bare) url=$BARE key="" ;; a) url=$A_URL key=$A_KEY ;; b) url=$B_URL key=$B_KEY ;; esac
    stock_verify "$side" "$url" "$key" "$CONNS"
    echo "$side: $(cat "$tmp/states.$side".* | wc -l) live states to verify"
  done
fi

echo "$SCENARIO at $CONNS connections, $ROUNDS rounds of ${SLICE}s slices, $(nproc) cores"
echo "A: $A (durability $DURABILITY)"
echo "B: $B (durability ${B_DURABILITY:-$DURABILITY})"
printf '%-5s | %8s %8s | %8s %8s %8s %6s | %8s %8s %8s %6s\n' round "bare/s" "cpu_us" "A/s" "cpu_us" "p99ms" ratio "B/s" "cpu_us" "p99ms" ratio
for round in $(seq "$ROUNDS"); do
  read -r br bc _ < <(slice bare "$BARE_PID" "$BARE" "" bare)
  read -r ar ac ap < <(slice oauthd "$A_PID" "$A_URL" "$A_KEY" a)
  read -r xr xc xp < <(slice oauthd "$B_PID" "$B_URL" "$B_KEY" b)
  [ -n "$br" ] && [ -n "$ar" ] && [ -n "$xr" ] || exit 1
  echo "$round $br $bc $ar $ac $ap $xr $xc $xp"
done | awk '
  function median(a, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { n++; br[n] = $2; bc[n] = $3; ar[n] = $4; ac[n] = $5; xr[n] = $7; xc[n] = $8
    ra[n] = $2 > 0 ? $4 / $2 : 0; rb[n] = $2 > 0 ? $7 / $2 : 0
    printf "%-5s | %8d %8.1f | %8d %8.1f %8.2f %6.2f | %8d %8.1f %8.2f %6.2f\n", $1, $2, $3, $4, $5, $6, ra[n], $7, $8, $9, rb[n] }
  END {
    printf "%-5s | %8d %8.1f | %8d %8.1f %8s %6.2f | %8d %8.1f %8s %6.2f\n", "median", median(br, n), median(bc, n), median(ar, n), median(ac, n), "", median(ra, n), median(xr, n), median(xc, n), "", median(rb, n)
  }'
