#!/usr/bin/env bash
# Small uploads by hand, where the time goes: for each run, wall time, the
# tool's user and system CPU and peak RSS, the server's CPU, and the
# core-seconds left idle on the machine.
#
#   bash bench/by-hand.sh                          # 10,000 x 4 KiB, ferry then rclone, 3 alternations
#   N=4000 REPS_LIST="0 1" RCLONE_ARGS=--s3-no-head bash bench/by-hand.sh
#   N=4000 THREADS_LIST="256 512 1024" bash bench/by-hand.sh   # ferry only, one run per --threads
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"
WORK=${BENCH_DIR:-/dev/shm/ferry-by-hand}
PORT=${BENCH_PORT:-39100}
source bench/server.sh
export FERRY_STATE_DIR=$WORK/state
N=${N:-10000}
python3 - "$WORK/data" "$N" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "small", f"d{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
        f.write(os.urandom(4096))
PY
R="env -u AWS_CA_BUNDLE rclone"
RC="--transfers 64 --checkers 64 --s3-upload-concurrency 8 --s3-chunk-size 16M"
# A fresh garage is slower over its first 10,000 PUTs (see run.sh).
"$FERRY" sync "$WORK/data/small" s3://bench/warmup --quiet --no-checkpoint
server_cpu() { awk '{print ($14 + $15) / 100}' "/proc/$SERVER_PID/stat"; }
idle() { awk '/^cpu /{print ($5 + $6) / 100}' /proc/stat; }
run() {
    local label=$1 g0 i0 g1 i1; shift
    sync; settle_server
    g0=$(server_cpu); i0=$(idle)
    /usr/bin/time -f "%e %U %S %M" "$@" > /dev/null 2> "$WORK/time.err"
    g1=$(server_cpu); i1=$(idle)
    read -r wall user sys rss < <(tail -n1 "$WORK/time.err")
    printf '%-14s wall %6.2f s  user %5.2f s  sys %5.2f s  peak RSS %4d MiB  server CPU %6.2f s  idle %5.2f core-s\n' \
        "$label" "$wall" "$user" "$sys" $((rss / 1024)) "$(echo "$g1 - $g0" | bc)" "$(echo "$i1 - $i0" | bc)"
}
if [[ -n "${THREADS_LIST:-}" ]]; then
    k=0
    for t in $THREADS_LIST; do
        run "ferry -t $t" "$FERRY" sync "$WORK/data/small" "s3://bench/ferry/t$k" --quiet --threads "$t"
        k=$((k + 1))
    done
    exit 0
fi
for k in ${REPS_LIST:-0 1 2}; do
    # shellcheck disable=SC2086
    run "ferry $k" "$FERRY" sync "$WORK/data/small" "s3://bench/ferry/s$k" --quiet ${FERRY_ARGS:-}
    # shellcheck disable=SC2086
    run "rclone $k" $R copy "$WORK/data/small" "bench:bench/rclone/s$k/" $RC -M ${RCLONE_ARGS:-}
done
