#!/usr/bin/env bash
# Side-by-side benchmark of `ferry` and rclone on the same S3 server and data.
#
#   bash bench/run.sh                 # full size (as in the issue)
#   SMALL_N=2000 LARGE_N=2 LARGE_MB=256 LIST_N=20000 bash bench/run.sh   # quicker
#   BENCH_REPS=3 BENCH_CASES=large bash bench/run.sh   # repetitions per tool (default 2), a subset of cases
#
# Server: garage when `garage` is on PATH (or BENCH_INSTALL_GARAGE=1 to
# `cargo install garage --locked` it, ~10 min), else ferry's s3s-fs test server.
# Data lives on tmpfs (/dev/shm). Each timed run starts once the server has
# been idle for a second, after one untimed warm-up upload. Prints a Markdown table: seconds, files/s,
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
REPS=${BENCH_REPS:-2}
# measure NAME TOOL FILES BYTES -- command...
measure() {
    local name=$1 tool=$2 files=$3 bytes=$4 t; shift 5
    sync; settle_server; echo "  $name / $tool" >&2
    if /usr/bin/time -f "%e %M" "$@" > "$WORK/cmd.out" 2> "$WORK/cmd.err"; then
        t=$(tail -n1 "$WORK/cmd.err")
    else
        echo "FAILED: $*" >&2; tail -5 "$WORK/cmd.err" >&2; t="nan 0"
    fi
    echo -e "$name\t$tool\t$files\t$bytes\t$t" >> "$RESULTS"
}
# pair NAME FILES BYTES FERRY_CMD RCLONE_CMD: both commands REPS times, the
# order alternating between repetitions, so that neither tool always runs
# first (the first reader after a large upload pays for the kernel's page
# cache reclaim and the server's background work). @K@ in a command is the
# repetition's number (a fresh destination each time). Commands are split on
# spaces: the paths here have none. The output directory is emptied first.
pair() {
    local name=$1 files=$2 bytes=$3 k tool cmd
    [[ "$name" =~ ${BENCH_CASES:-.} ]] || return 0
    for ((k = 0; k < REPS; k++)); do
        for tool in $( ((k % 2 == 0)) && echo ferry rclone || echo rclone ferry); do
            [[ $tool == ferry ]] && cmd=$4 || cmd=$5
            rm -rf "${O:?}"/*
            # shellcheck disable=SC2086
            measure "$name" "$tool" "$files" "$bytes" -- ${cmd//@K@/$k}
        done
    done
}
R="env -u AWS_CA_BUNDLE rclone"
RC="--transfers 64 --checkers 64 --s3-upload-concurrency 8 --s3-chunk-size 16M"

SB=$((SMALL_N * SMALL_KB * 1024)); LB=$((LARGE_N * LARGE_MB * 1024 * 1024))
D=$WORK/data; O=$WORK/out
echo "running cases against $SERVER, $REPS repetitions each ..." >&2
# A fresh garage takes 3-4 s longer over its first 10,000 PUTs than over any
# later ones (by hand: rclone first 20.2 s, then 16.9 s; ferry first 16.6 s,
# then 12.3 s), and the first timed run would pay for it. One untimed write
# of the small files first, under a prefix no case reads.
if [[ "small up" =~ ${BENCH_CASES:-.} ]]; then
    echo "  warming the server up with one untimed upload" >&2
    "$FERRY" sync "$D/small" s3://bench/warmup --quiet --no-checkpoint
fi
pair "small up ($SMALL_N x ${SMALL_KB} KiB)" "$SMALL_N" "$SB" \
    "$FERRY sync $D/small s3://bench/ferry/small-@K@ --quiet" \
    "$R copy $D/small bench:bench/rclone/small-@K@/ $RC -M"
pair "small down" "$SMALL_N" "$SB" \
    "$FERRY sync s3://bench/ferry/small-0 $O/ferry-small --quiet" \
    "$R copy bench:bench/rclone/small-0/ $O/rclone-small $RC -M"
pair "no-op re-sync ($SMALL_N unchanged)" "$SMALL_N" 0 \
    "$FERRY sync $D/small s3://bench/ferry/small-0 --quiet" \
    "$R sync $D/small bench:bench/rclone/small-0/ $RC -M"
pair "large up ($LARGE_N x $LARGE_MB MiB)" "$LARGE_N" "$LB" \
    "$FERRY sync $D/large s3://bench/ferry/large-@K@ --quiet" \
    "$R copy $D/large bench:bench/rclone/large-@K@/ $RC -M"
# The large uploads above wrote 4 × LARGE_N × LARGE_MB MiB: the objects to
# read may have left the server's page cache, and the first reader would then
# measure the disk. One untimed read of both tools' objects first.
if [[ "large down" =~ ${BENCH_CASES:-.} ]]; then
    echo "  warming the server's cache for large down" >&2
    for tool in ferry rclone; do
        "$FERRY" sync "s3://bench/$tool/large-0" "$O/warm" --quiet --no-checkpoint; rm -rf "$O/warm"
    done
fi
pair "large down" "$LARGE_N" "$LB" \
    "$FERRY sync s3://bench/ferry/large-0 $O/ferry-large --quiet" \
    "$R copy bench:bench/rclone/large-0/ $O/rclone-large $RC -M"
# Bucket to bucket within the store: both tools have the store copy the
# objects (ferry CopyObject, rclone its server-side copy), from the same
# sources (ferry's uploads above, made now if their cases did not run).
if [[ "bucket to bucket" =~ ${BENCH_CASES:-.} ]]; then
    echo "  making sure the sources of the bucket-to-bucket cases are there" >&2
    "$FERRY" sync "$D/small" s3://bench/ferry/small-0 --quiet --no-checkpoint
    "$FERRY" sync "$D/large" s3://bench/ferry/large-0 --quiet --no-checkpoint
fi
pair "bucket to bucket ($SMALL_N x ${SMALL_KB} KiB)" "$SMALL_N" "$SB" \
    "$FERRY sync s3://bench/ferry/small-0 s3://bench/b2b/ferry-small-@K@ --quiet" \
    "$R copy bench:bench/ferry/small-0/ bench:bench/b2b/rclone-small-@K@/ $RC -M"
pair "bucket to bucket ($LARGE_N x $LARGE_MB MiB)" "$LARGE_N" "$LB" \
    "$FERRY sync s3://bench/ferry/large-0 s3://bench/b2b/ferry-large-@K@ --quiet" \
    "$R copy bench:bench/ferry/large-0/ bench:bench/b2b/rclone-large-@K@/ $RC -M"
if [[ "list" =~ ${BENCH_CASES:-.} ]]; then
    echo "  uploading $LIST_N objects for the listing case" >&2
    "$FERRY" sync "$D/list" s3://bench/list --quiet --threads 64 --no-checkpoint
fi
pair "list ($LIST_N objects)" "$LIST_N" 0 \
    "$FERRY ls -R s3://bench/list --summary" \
    "$R lsf -R bench:bench/list/ --checkers 64"

python3 - "$RESULTS" "$SERVER" <<'PY'
import sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
by = collections.OrderedDict()
for name, tool, files, nbytes, t in rows:
    secs, rss = t.split()
    prev = by.setdefault(name, {}).get(tool)
    secs, rss = float(secs), int(rss) / 1024
    runs = (prev[4] if prev else []) + [f"{secs:.2f} ({rss:.0f})"]
    if prev:
        secs, rss = min(secs, prev[0]), max(rss, prev[3])
    by[name][tool] = (secs, int(files), int(nbytes), rss, runs)
print(f"server: {sys.argv[2]}\n")
print("Best time of each tool over its repetitions, highest peak RSS; the last column has every run in order, seconds (peak RSS MiB).\n")
print("| case | tool | seconds | files/s | MiB/s | peak RSS MiB | ferry/rclone (speed) | all runs: s (MiB) |")
print("|---|---|---|---|---|---|---|---|")
for name, tools in by.items():
    speed = {}
    for tool in ("ferry", "rclone"):
        if tool not in tools: continue
        secs, files, nbytes, rss, runs = tools[tool]
        fps = files / secs if secs > 0 else float("nan")
        mbs = nbytes / secs / 2**20 if secs > 0 else float("nan")
        speed[tool] = 1 / secs if secs > 0 else float("nan")
        ratio = ""
        if tool == "rclone" and "ferry" in speed:
            ratio = f"{speed['ferry'] / speed['rclone']:.2f}x"
        print(f"| {name} | {tool} | {secs:.2f} | {fps:,.0f} | {mbs:,.1f} | {rss:,.0f} | {ratio} | {', '.join(runs)} |")
PY
