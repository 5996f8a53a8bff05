#!/usr/bin/env bash
# One directory (one flat prefix) of LIST_N empty files (default 1,000,000):
# up with ferry, the no-op re-sync, then down with ferry and with rclone, each
# under GNU time: what one listing level of a million entries costs in memory
# (ferry bounds it with --level-in-memory; rclone holds the level whole).
#   BENCH_GARAGE_DB=lmdb bash bench/flat-million.sh     # ~12 min on garage
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"
LIST_N=${LIST_N:-1000000}
WORK=${BENCH_DIR:-/dev/shm/ferry-bench-flat}
PORT=${BENCH_PORT:-39500}
source bench/server.sh
export FERRY_STATE_DIR=$WORK/state
python3 - "$WORK/data/flat" "$LIST_N" <<'PY'
import os, sys
os.makedirs(sys.argv[1])
for i in range(int(sys.argv[2])):
    open(os.path.join(sys.argv[1], f"o{i:07d}"), "w").close()
PY
T() { local label=$1; shift; /usr/bin/time -f "$label: %e s, peak RSS %M KiB" "$@"; }
T "ferry up" "$FERRY" sync "$WORK/data" s3://bench/x --quiet --threads 128 --no-checkpoint
T "ferry no-op up (--no-checkpoint: a HEAD per object)" "$FERRY" sync "$WORK/data" s3://bench/x --quiet --threads 128 --no-checkpoint
rm -rf "$WORK/data"
T "ferry down --dry-run" "$FERRY" sync s3://bench/x/flat "$WORK/out" --quiet --dry-run --no-checkpoint
T "ferry down" "$FERRY" sync s3://bench/x/flat "$WORK/out" --quiet --threads 128 --no-checkpoint
rm -rf "$WORK/out"
T "rclone down" env -u AWS_CA_BUNDLE rclone copy bench:bench/x/flat "$WORK/rout" --transfers 64 --checkers 64
