#!/usr/bin/env bash
# Bounded-memory check: one million local files (1,000 dirs x 1,000 empty files
# on tmpfs), listed, planned, synced and re-synced by ferry under GNU time.
#   bash bench/million.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"
cargo build --release -q -p ferry -p ferry-testkit   # same set as the other scripts: no feature-unification rebuilds
F=$CARGO_TARGET_DIR/release/ferry
W=${BENCH_DIR:-/dev/shm/ferry-million}
rm -rf "$W"; mkdir -p "$W/src"
trap 'rm -rf "$W"' EXIT
python3 - "$W/src" <<'PY'
import os, sys
for d in range(1000):
    p = os.path.join(sys.argv[1], f"d{d:04d}")
    os.makedirs(p)
    for i in range(1000):
        open(os.path.join(p, f"f{i:04d}"), "w").close()
PY
export FERRY_STATE_DIR=$W/state
/usr/bin/time -f "ls -R:   %e s, peak RSS %M KiB" "$F" ls -R "$W/src" --summary
/usr/bin/time -f "dry run: %e s, peak RSS %M KiB" "$F" sync "$W/src" "$W/dst" --dry-run --quiet
/usr/bin/time -f "sync:    %e s, peak RSS %M KiB" "$F" sync "$W/src" "$W/dst" --quiet
/usr/bin/time -f "no-op:   %e s, peak RSS %M KiB" "$F" sync "$W/src" "$W/dst" --quiet
