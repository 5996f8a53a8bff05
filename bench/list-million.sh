#!/usr/bin/env bash
# Listing a bucket of LIST_N objects (default 1,000,000) with ferry and with
# rclone, under GNU time: the bounded-memory target of `ferry ls -R`.
#   bash bench/list-million.sh                      # ~15 min on garage (most of it the upload)
#   LIST_N=200000 bash bench/list-million.sh
#   BENCH_GARAGE_DB=lmdb ...                        # garage on LMDB metadata (faster uploads)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"
LIST_N=${LIST_N:-1000000}
WORK=${BENCH_DIR:-/dev/shm/ferry-bench-million}
PORT=${BENCH_PORT:-39400}
source bench/server.sh
export FERRY_STATE_DIR=$WORK/state
echo "making $LIST_N empty files ..." >&2
python3 - "$WORK/data" "$LIST_N" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 1000:03d}")
    if i < 1000:
        os.makedirs(d, exist_ok=True)
    open(os.path.join(d, f"o{i:07d}"), "w").close()
PY
echo "uploading to $SERVER ..." >&2
/usr/bin/time -f "upload (ferry sync): %e s, peak RSS %M KiB" \
    "$FERRY" sync "$WORK/data" s3://bench/m --quiet --threads 128 --no-checkpoint
rm -rf "$WORK/data"
for k in 1 2; do
    /usr/bin/time -f "ferry ls -R --summary: %e s, peak RSS %M KiB" "$FERRY" ls -R s3://bench/m --summary
    /usr/bin/time -f "rclone lsf -R: %e s, peak RSS %M KiB" env -u AWS_CA_BUNDLE rclone lsf -R bench:bench/m/ --checkers 64 > "$WORK/rclone.out"
    echo "rclone listed $(wc -l < "$WORK/rclone.out") lines"
done
