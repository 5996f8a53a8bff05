#!/usr/bin/env bash
# Benchmarks of `ferry serve` (issue targets), each beside its reference on
# the same S3 server and data:
#   import_metadata of LIST_N objects   vs  rclone lsf -R of the same bucket
#   preload / export of SMALL_N files   vs  ferry sync of the same data
#   export of LIST_N unchanged files    vs  find -printf (a plain stat walk)
#   list tasks of a share with 10,000 tasks (HTTP, limit 1000, with filters)
#
#   bash bench/serve.sh
#   LIST_N=20000 SMALL_N=2000 bash bench/serve.sh      # quicker
#   BENCH_SKIP_IMPORT=1 ...                           # without the import_metadata case
#   BENCH_SERVE_THREADS=64 ...                       # items in flight per task, and for the ferry sync reference (default 256)
#   BENCH_REPS=5 ...                                  # repetitions of the preload/export cases (median; default 3)
#   BENCH_POLL=0.01 ...                               # poll task status every 10 ms (default 50 ms: on 2 cores,
#                                                     # 100 polls/s slowed the export case by ~4%)
#   BENCH_SERVE_WRAP="perf record -g --" ...          # run ferry serve under a profiler
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"
SMALL_N=${SMALL_N:-10000}
SMALL_KB=${SMALL_KB:-4}
LIST_N=${LIST_N:-100000}
TASKS_N=${TASKS_N:-10000}
WORK=${BENCH_DIR:-/dev/shm/ferry-bench-serve}
PORT=${BENCH_PORT:-39100}
API_PORT=$((PORT + 10))
source bench/server.sh
export FERRY_STATE_DIR=$WORK/state
R=(env -u AWS_CA_BUNDLE rclone)
API=http://127.0.0.1:$API_PORT/v1/bench/sfs-turbo

echo "making data ..." >&2
python3 - "$WORK/data" "$SMALL_N" "$SMALL_KB" "$LIST_N" <<'PY'
import os, sys
root, small_n, small_kb, list_n = sys.argv[1], *map(int, sys.argv[2:])
for i in range(small_n):
    d = os.path.join(root, "small", f"d{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
        f.write(os.urandom(small_kb * 1024))
for i in range(list_n):
    d = os.path.join(root, "list", f"d{i % 1000:03d}")
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, f"o{i:07d}"), "wb").close()
PY
echo "uploading $LIST_N + $SMALL_N objects ..." >&2
"$FERRY" sync "$WORK/data/list" s3://bench/list --quiet --no-checkpoint
"$FERRY" sync "$WORK/data/small" s3://bench/small --quiet --no-checkpoint

cat > "$WORK/ferry.toml" <<TOML
[workers]
threads = ${BENCH_SERVE_THREADS:-256}
[[object_stores]]
endpoint = "$AWS_ENDPOINT_URL"
provider = "s3"
region = "$REGION"
access_key_id = "$AK"
secret_access_key = "$SK"
TOML
SERVE=("$FERRY" serve --listen 127.0.0.1:$API_PORT --data-dir "$WORK/serve" --config "$WORK/ferry.toml")
FERRY_LOG=${FERRY_LOG:-info,ferry_engine=debug} ${BENCH_SERVE_WRAP:-} "${SERVE[@]}" > "$WORK/serve.log" 2>&1 & SERVE_PID=$!
trap 'kill $SERVE_PID 2>/dev/null; cp "$WORK/serve.log" /tmp/ferry-bench-serve.log 2>/dev/null; cleanup' EXIT
for _ in $(seq 50); do grep -q listening "$WORK/serve.log" && break; sleep 0.1; done
TOKEN=$("$FERRY" token create --project bench --data-dir "$WORK/serve" --config "$WORK/ferry.toml")

python3 - "$API" "$TOKEN" "$AWS_ENDPOINT_URL" "$WORK" "$FERRY" "$LIST_N" "$SMALL_N" "$TASKS_N" "$SERVE_PID" <<'PY'
import json, os, sqlite3, subprocess, sys, time, urllib.request, uuid
api, token, endpoint, work, ferry, list_n, small_n, tasks_n, serve_pid = sys.argv[1:]
list_n, small_n, tasks_n = int(list_n), int(small_n), int(tasks_n)
rclone = ["env", "-u", "AWS_CA_BUNDLE", "rclone"]

def call(method, path, body=None):
    req = urllib.request.Request(api + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"X-Auth-Token": token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        text = r.read()
        return json.loads(text) if text else {}

def poll(path, done, every=None):
    while True:
        b = call("GET", path)
        if done(b):
            return b
        time.sleep(every or float(os.environ.get("BENCH_POLL", "0.05")))

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

def timed(cmd):
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t

share = call("POST", "/shares", {"share": {"name": "bench", "share_proto": "NFS", "share_type": "STANDARD", "size": 1000}})["id"]
poll(f"/shares/{share}", lambda b: b["status"] == "200")
reps = int(os.environ.get("BENCH_REPS", "3"))
# One target per repetition of the small cases: each preload fills a new directory.
for name in ["list"] + [f"small{k}" for k in range(reps)]:
    t = call("POST", f"/shares/{share}/targets", {"file_system_path": name, "obs": {"bucket": "bench", "endpoint": endpoint}})
    poll(f"/shares/{share}/targets/{t['target_id']}", lambda b: b["lifecycle"] == "AVAILABLE")
share_dir = os.path.join(work, "serve", "shares", share)

def task(kind, target, prefix, poll_every=None):
    t0 = time.monotonic()
    tid = call("POST", f"/{share}/hpc-cache/task", {"type": kind, "src_target": target, "dest_target": target,
                                                    "src_prefix": prefix, "dest_prefix": prefix})["task_id"]
    b = poll(f"/{share}/hpc-cache/task/{tid}", lambda b: b["status"] != "DOING", poll_every)
    assert b["status"] == "SUCCESS", b
    return time.monotonic() - t0, b

rows = []
def row(case, a_name, a, b_name, b, target):
    rows.append(f"| {case} | {a_name} {a:.2f} s | {b_name} {b:.2f} s | {b / a:.2f}x | {target} |")

# BENCH_SKIP_IMPORT=1 leaves this case out (the s3s-fs test server lists a
# whole bucket in time quadratic in its size: only garage's figure means much).
if os.environ.get("BENCH_SKIP_IMPORT") != "1":
    t_ls = timed(rclone + ["lsf", "-R", "bench:bench/list/", "--checkers", "64"])
    t_imp, _ = task("import_metadata", "list", "list/")
    row(f"import_metadata of {list_n:,} objects", "ferry", t_imp, "rclone lsf -R", t_ls, "≤ 1.5× rclone's listing time")

# Preload and export of SMALL_N files against ferry sync of the same data,
# run BENCH_REPS times, interleaved, in a rotating order, after an untimed
# warm-up read: no tool gains from the server's caches by running second.
# Two references: ferry sync as run by default (resumable, like a task) and
# with --no-checkpoint (nothing recorded: the bare transfer). Medians reported.
def median(xs):
    return sorted(xs)[len(xs) // 2]

def interleaved(runs):
    times = {name: [] for name in runs}
    for k in range(reps):
        names = list(runs)
        names = names[k % len(names):] + names[:k % len(names)]
        for name in names:
            times[name].append(runs[name](k))
    print({n: [round(t, 2) for t in ts] for n, ts in times.items()}, file=sys.stderr)
    return {n: median(ts) for n, ts in times.items()}

sync = [ferry, "sync", "--quiet", "--threads", os.environ.get("BENCH_SERVE_THREADS", "256")]
timed(sync + ["--no-checkpoint", "s3://bench/small", os.path.join(work, "out", "warm-up")])
t = interleaved({
    "preload": lambda k: task("preload", f"small{k}", "small/")[0],
    "sync": lambda k: timed(sync + ["s3://bench/small", os.path.join(work, "out", f"down-cp{k}")]),
    "bare": lambda k: timed(sync + ["--no-checkpoint", "s3://bench/small", os.path.join(work, "out", f"down-bare{k}")]),
})
row(f"preload of {small_n:,} × 4 KiB", "ferry preload", t["preload"], "ferry sync", t["sync"], "≥ ferry sync's speed")
row(f"preload of {small_n:,} × 4 KiB", "ferry preload", t["preload"], "ferry sync --no-checkpoint", t["bare"], "(bare transfer)")

# Export of new files: a copy of the data in each repetition's target, under
# a prefix of its own (the targets share the bucket: an export into a prefix
# that already holds identical objects would rightly upload nothing).
data = os.path.join(work, "data", "small")
for k in range(reps):
    subprocess.run(["cp", "-a", data, os.path.join(share_dir, f"small{k}", f"new{k}")], check=True)
t = interleaved({
    "export": lambda k: task("export", f"small{k}", f"new{k}/")[0],
    "sync": lambda k: timed(sync + [data, f"s3://bench/up-cp{k}"]),
    "bare": lambda k: timed(sync + ["--no-checkpoint", data, f"s3://bench/up-bare{k}"]),
})
row(f"export of {small_n:,} new × 4 KiB", "ferry export", t["export"], "ferry sync", t["sync"], "≥ ferry sync's speed")
row(f"export of {small_n:,} new × 4 KiB", "ferry export", t["export"], "ferry sync --no-checkpoint", t["bare"], "(bare transfer)")

# Export of an unchanged tree of LIST_N files (materialized by a preload first).
# An unchanged export changes nothing, so both sides simply repeat (5 times,
# interleaved, medians; find's output goes to /dev/null). A task this short
# is polled every 10 ms: at 50 ms the polling would be a quarter of it.
task("preload", "list", "list/")
reps, reps_small = 5, reps
t = interleaved({
    "export": lambda k: task("export", "list", "list/", 0.01)[0],
    "find": lambda k: timed(["find", os.path.join(share_dir, "list"), "-printf", "%s %T@ %p\n"]),
})
reps = reps_small
row(f"export of {list_n:,} unchanged files", "ferry export", t["export"], "find -printf", t["find"], "≤ 2× the find walk")

# 10,000 tasks in one share, inserted straight into the database.
db = sqlite3.connect(os.path.join(work, "serve", "ferry.db"))
now = int(time.time())
kinds = ["import", "import_metadata", "preload", "export"]
db.executemany(
    "INSERT INTO hpc_tasks (id, share_id, project_id, task_type, status, src_target, dest_target, start_time, end_time)"
    " VALUES (?, ?, 'bench', ?, 'SUCCESS', 'small', 'small', ?, ?)",
    [(str(uuid.uuid4()), share, kinds[i % 4], now - tasks_n + i, now - tasks_n + i + 5) for i in range(tasks_n)])
db.commit()
for query in ["?limit=1000", "?type=export&status=SUCCESS&limit=1000&offset=500"]:
    times = []
    for _ in range(20):
        t = time.monotonic()
        b = call("GET", f"/{share}/hpc-cache/tasks{query}")
        times.append(time.monotonic() - t)
    times.sort()
    rows.append(f"| list tasks `{query}` ({b['count']:,} match) | median {times[10] * 1000:.1f} ms, p95 {times[18] * 1000:.1f} ms | | | < 50 ms |")

print("\n| case | ferry | reference | ratio (reference time / ferry time) | target |")
print("|---|---|---|---|---|")
print("\n".join(rows))
print(f"\nferry serve peak RSS: {rss_kib(int(serve_pid)) / 1024:.0f} MiB")
PY
# Time spent inside the worker, per task (the table's times include HTTP and polling).
grep -E "task finished|change detection|transfer done|files indexed" "$WORK/serve.log" >&2 || true
