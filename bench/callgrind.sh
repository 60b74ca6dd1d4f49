#!/usr/bin/env bash
# CPU instructions per request, counted by valgrind's callgrind: a cost figure that does
# not move with the machine (wrk's ratios do). A fixed sequential run per scenario, on
# oauthd and on the bare handler, both under callgrind; counters are zeroed after a
# warm-up, so start-up is not counted. Background work during the run (the writer, the
# sweeper's ticks) is, as it is part of what a request costs.
#
#   bench/callgrind.sh                 # 2,000 token calls, 2,000 create+consume pairs,
#                                      # 2,000 verifies, each of another live state, and
#                                      # 2,000 proxied API calls (oauthd's own work for each,
#                                      # against the bare handler answering the API directly)
#   COUNT=500 SCENARIOS=token bench/callgrind.sh
#   SCENARIOS=verify-hot bench/callgrind.sh   # 2,000 verifies of states verified once before
#                                      # (answered from memory)
#   DEADHOOK=1 SCENARIOS=token bench/callgrind.sh   # oauthd with a [[notify]] target that
#                                      # never answers and 20 events it retries every second
#   KEEP=dir bench/callgrind.sh        # keep the callgrind dumps in dir (callgrind_annotate)
#   ZEROING=vector bench/callgrind.sh  # glibc's memset without `rep stosb`, whose every byte
#                                      # callgrind counts as an instruction (bench/README.md,
#                                      # "What the count weighs wrong")
set -euo pipefail
cd "$(dirname "$0")/.."

STORE=sqlite
case "${ZEROING:-}" in
  '') ;;
  # Both servers (and everything else this script starts) zero with vector stores.
  vector) export GLIBC_TUNABLES=glibc.cpu.x86_rep_stosb_threshold=0x7fffffff ;;
  *) echo "ZEROING is 'vector' or unset, not '$ZEROING'" >&2; exit 2 ;;
esac
DURABILITY=${DURABILITY:-full}
COUNT=${COUNT:-2000}
SCENARIOS=${SCENARIOS:-"token pairs verify proxy"}

# shellcheck source=scripts/apt.sh
. scripts/apt.sh
need_commands valgrind:valgrind callgrind_control:valgrind curl:curl python3:python3
cargo build --release --locked --bin oauthd --example bare_handler >&2

cgdir=$(mktemp -d) pooldir=$(mktemp -d)
START_TRIES=1200  # two minutes: everything starts slowly under valgrind
BARE_WRAP="valgrind --tool=callgrind --callgrind-out-file=$cgdir/bare.%p"
OAUTHD_WRAP="valgrind --tool=callgrind --callgrind-out-file=$cgdir/oauthd.%p"
# shellcheck source=bench/lib.sh
. bench/lib.sh
trap 'cleanup; [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP" && cp "$cgdir"/* "$KEEP"/; }; rm -rf "$cgdir" "$pooldir"' EXIT
BARE_PID=${pids[0]}
if [ -n "${DEADHOOK:-}" ]; then
  OAUTHD_TOML="$tmp/deadhook.toml" fresh_oauthd callgrind
  for _ in $(seq 19); do connect_bench; done
else
  fresh_oauthd callgrind
fi

# count NAME PID URL SCENARIO -> instructions per request (a pair counts as one)
count() {
  local name=$1 pid=$2 url=$3 scenario=$4 before dump ir
  export POOL_FILE="$pooldir/$name" TARGET=$name
  local run=$scenario
  if [ "$scenario" = verify ] || [ "$scenario" = verify-hot ]; then
    # Warm up on states of their own; then the live states to verify, made before the
    # counters are zeroed. verify: each verified once, so every verify reads the store;
    # verify-hot: each verified once before the counters are zeroed, so every counted
    # verify answers from memory (a session verified on each of its user's requests).
    POOL_FILE="$pooldir/$name.warm" python3 bench/sequential.py "$url" pool 50
    POOL_FILE="$pooldir/$name.warm" python3 bench/sequential.py "$url" verify 50
    python3 bench/sequential.py "$url" pool "$COUNT"
    run=verify
    [ "$scenario" = verify ] || python3 bench/sequential.py "$url" verify "$COUNT"
  else
    python3 bench/sequential.py "$url" "$scenario" 50
  fi
  callgrind_control -z "$pid" >/dev/null
  python3 bench/sequential.py "$url" "$run" "$COUNT"
  before=$(ls "$cgdir" | wc -l)
  callgrind_control -d "$pid" >/dev/null
  for _ in $(seq 100); do [ "$(ls "$cgdir" | wc -l)" -gt "$before" ] && break; sleep 0.1; done
  dump=$(ls -t "$cgdir"/"$name".* | head -1)
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  echo $(( ir / COUNT ))
}

echo "instructions per request under callgrind, $COUNT sequential requests per cell (a pair is one create and one consume), durability=$DURABILITY${ZEROING:+, zeroing=$ZEROING}"
printf '%-8s | %14s | %14s | %6s\n' scenario "bare Ir/req" "oauthd Ir/req" ratio
for scenario in $SCENARIOS; do
  b=$(count bare "$BARE_PID" "$BARE" "$scenario")
  o=$(count oauthd "$OAUTHD_PID" "$OAUTHD" "$scenario")
  printf '%-8s | %14s | %14s | %6s\n' "$scenario" "$b" "$o" "$(awk -v o="$o" -v b="$b" 'BEGIN { printf "%.2f", o / b }')"
done
