#!/usr/bin/env bash
# Side-by-side benchmark of `ferry` and rclone on the same S3 server and data.
#
#   bash bench/run.sh                 # full size (as in the issue)
#   SMALL_N=2000 LARGE_N=2 LARGE_MB=256 LIST_N=20000 bash bench/run.sh   # quicker
#
# Server: garage when `garage` is on PATH (or BENCH_INSTALL_GARAGE=1 to
# `cargo install garage --locked` it, ~10 min), else ferry's s3s-fs test server.
# Data lives on tmpfs (/dev/shm). Prints a Markdown table: seconds, files/s,
# MiB/s, peak RSS, and the ferry/rclone ratio per case.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"

SMALL_N=${SMALL_N:-10000}
SMALL_KB=${SMALL_KB:-4}
LARGE_N=${LARGE_N:-4}
LARGE_MB=${LARGE_MB:-1024}
LIST_N=${LIST_N:-100000}
WORK=${BENCH_DIR:-/dev/shm/ferry-bench}
PORT=${BENCH_PORT:-39000}

source bench/server.sh
export FERRY_STATE_DIR=$WORK/state
RCLONE_FLAGS=(--transfers 64 --checkers 64 --s3-upload-concurrency 8 --s3-chunk-size 16M)

echo "making data in $WORK/data ..." >&2
python3 - "$WORK/data" "$SMALL_N" "$SMALL_KB" "$LARGE_N" "$LARGE_MB" "$LIST_N" <<'PY'
import os, sys
root, small_n, small_kb, large_n, large_mb, list_n = sys.argv[1], *map(int, sys.argv[2:])
for i in range(small_n):
    d = os.path.join(root, "small", f"d{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
        f.write(os.urandom(small_kb * 1024))
os.makedirs(os.path.join(root, "large"), exist_ok=True)
chunk = os.urandom(1 << 20)
for i in range(large_n):
    with open(os.path.join(root, "large", f"big{i}"), "wb") as f:
        for _ in range(large_mb):
            f.write(chunk)
for i in range(list_n):
    d = os.path.join(root, "list", f"d{i % 1000:03d}")
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, f"o{i:07d}"), "wb").close()
PY

RESULTS=$WORK/results.tsv
: > "$RESULTS"
# measure NAME TOOL FILES BYTES -- command...
measure() {
    local name=$1 tool=$2 files=$3 bytes=$4 t; shift 5
    [[ "$name" =~ ${BENCH_CASES:-.} ]] || return 0
    sync; echo "  $name / $tool" >&2
    if /usr/bin/time -f "%e %M" "$@" > "$WORK/cmd.out" 2> "$WORK/cmd.err"; then
        t=$(tail -n1 "$WORK/cmd.err")
    else
        echo "FAILED: $*" >&2; tail -5 "$WORK/cmd.err" >&2; t="nan 0"
    fi
    echo -e "$name\t$tool\t$files\t$bytes\t$t" >> "$RESULTS"
}
R=(env -u AWS_CA_BUNDLE rclone)

SB=$((SMALL_N * SMALL_KB * 1024)); LB=$((LARGE_N * LARGE_MB * 1024 * 1024))
D=$WORK/data; O=$WORK/out
echo "running cases against $SERVER ..." >&2
measure "small up ($SMALL_N x ${SMALL_KB} KiB)" ferry "$SMALL_N" "$SB" -- "$FERRY" sync "$D/small" s3://bench/ferry/small --quiet --threads 64
measure "small up ($SMALL_N x ${SMALL_KB} KiB)" rclone "$SMALL_N" "$SB" -- "${R[@]}" copy "$D/small" bench:bench/rclone/small/ "${RCLONE_FLAGS[@]}" -M
measure "small down" ferry "$SMALL_N" "$SB" -- "$FERRY" sync s3://bench/ferry/small "$O/ferry-small" --quiet --threads 64
measure "small down" rclone "$SMALL_N" "$SB" -- "${R[@]}" copy bench:bench/rclone/small/ "$O/rclone-small" "${RCLONE_FLAGS[@]}" -M
measure "no-op re-sync ($SMALL_N unchanged)" ferry "$SMALL_N" 0 -- "$FERRY" sync "$D/small" s3://bench/ferry/small --quiet --threads 64
measure "no-op re-sync ($SMALL_N unchanged)" rclone "$SMALL_N" 0 -- "${R[@]}" sync "$D/small" bench:bench/rclone/small/ "${RCLONE_FLAGS[@]}" -M
measure "large up ($LARGE_N x $LARGE_MB MiB)" ferry "$LARGE_N" "$LB" -- "$FERRY" sync "$D/large" s3://bench/ferry/large --quiet
measure "large up ($LARGE_N x $LARGE_MB MiB)" rclone "$LARGE_N" "$LB" -- "${R[@]}" copy "$D/large" bench:bench/rclone/large/ "${RCLONE_FLAGS[@]}" -M
rm -rf "$O"/*; 
measure "large down" ferry "$LARGE_N" "$LB" -- "$FERRY" sync s3://bench/ferry/large "$O/ferry-large" --quiet
rm -rf "$O"/*
measure "large down" rclone "$LARGE_N" "$LB" -- "${R[@]}" copy bench:bench/rclone/large/ "$O/rclone-large" "${RCLONE_FLAGS[@]}" -M
rm -rf "$O"/*
if [[ "list" =~ ${BENCH_CASES:-.} ]]; then
    echo "  uploading $LIST_N objects for the listing case" >&2
    "$FERRY" sync "$D/list" s3://bench/list --quiet --threads 64 --no-checkpoint
fi
measure "list ($LIST_N objects)" ferry "$LIST_N" 0 -- "$FERRY" ls -R s3://bench/list --summary
measure "list ($LIST_N objects)" rclone "$LIST_N" 0 -- "${R[@]}" lsf -R bench:bench/list/ --checkers 64

python3 - "$RESULTS" "$SERVER" <<'PY'
import sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = collections.OrderedDict()
for name, tool, files, nbytes, t in rows:
    secs, rss = t.split()
    by.setdefault(name, {})[tool] = (float(secs), int(files), int(nbytes), int(rss) / 1024)
print(f"server: {sys.argv[2]}\n")
print("| case | tool | seconds | files/s | MiB/s | peak RSS MiB | ferry/rclone (speed) |")
print("|---|---|---|---|---|---|---|")
for name, tools in by.items():
    speed = {}
    for tool in ("ferry", "rclone"):
        if tool not in tools: continue
        secs, files, nbytes, rss = tools[tool]
        fps = files / secs if secs > 0 else float("nan")
        mbs = nbytes / secs / 2**20 if secs > 0 else float("nan")
        speed[tool] = 1 / secs if secs > 0 else float("nan")
        ratio = ""
        if tool == "rclone" and "ferry" in speed:
            ratio = f"{speed['ferry'] / speed['rclone']:.2f}x"
        print(f"| {name} | {tool} | {secs:.2f} | {fps:,.0f} | {mbs:,.1f} | {rss:,.0f} | {ratio} |")
PY
