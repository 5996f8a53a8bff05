# Shared by the benchmark scripts: installs rclone, builds ferry (release),
# starts the S3 server (garage when on PATH, else ferry's s3s-fs test server)
# with bucket "bench", and exports AWS_* and rclone's BENCH remote.
# Expects WORK (scratch directory, on tmpfs) and PORT to be set; sets FERRY,
# SERVER, REGION, AK, SK and an EXIT trap that stops the server.
# BENCH_GARAGE_DB=lmdb runs garage on LMDB metadata instead of SQLite.
AK=benchak
SK=benchsecretkey0123456789
command -v rclone >/dev/null || { apt-get update -qq && apt-get install -y -qq rclone; }
if [[ "${BENCH_INSTALL_GARAGE:-0}" == 1 ]] && ! command -v garage >/dev/null; then
    cargo install garage --locked
fi
cargo build --release -q -p ferry -p ferry-testkit
FERRY=$CARGO_TARGET_DIR/release/ferry

# Data on tmpfs; the server's storage on disk (BENCH_SERVER_DIR) so that
# gigabytes of objects do not compete with the data for memory.
SERVER_DIR=${BENCH_SERVER_DIR:-/var/tmp/ferry-bench-server}
rm -rf "$WORK" "$SERVER_DIR"; mkdir -p "$WORK"/{data,out,state} "$SERVER_DIR"
ln -s "$SERVER_DIR" "$WORK/server"
SERVER_PID=
cleanup() { [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null || true; rm -rf "$WORK" "$SERVER_DIR"; }
trap cleanup EXIT

if command -v garage >/dev/null; then
    SERVER=garage
    secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    cat > "$WORK/server/garage.toml" <<TOML
metadata_dir = "$WORK/server/meta"
data_dir = "$WORK/server/data"
db_engine = "${BENCH_GARAGE_DB:-sqlite}"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$((PORT + 1))"
rpc_public_addr = "127.0.0.1:$((PORT + 1))"
rpc_secret = "$secret"
[s3_api]
api_bind_addr = "127.0.0.1:$PORT"
s3_region = "garage"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$((PORT + 3))"
TOML
    G="garage -c $WORK/server/garage.toml"
    $G server > "$WORK/server/log" 2>&1 & SERVER_PID=$!
    sleep 3
    for _ in $(seq 30); do $G status >/dev/null 2>&1 && break; sleep 1; done
    node=$($G node id -q 2>/dev/null | cut -d@ -f1)
    $G layout assign -z dc1 -c 10G "$node" >/dev/null
    $G layout apply --version 1 >/dev/null
    $G bucket create bench >/dev/null
    keyout=$($G key create bench)
    AK=$(echo "$keyout" | awk '/Key ID/{print $NF}')
    SK=$(echo "$keyout" | awk '/Secret key/{print $NF}')
    $G bucket allow --read --write --owner bench --key bench >/dev/null
    REGION=garage
else
    SERVER="s3s-fs (ferry-s3-test-server)"
    mkdir -p "$WORK/server/root/bench"
    "$CARGO_TARGET_DIR/release/ferry-s3-test-server" --root "$WORK/server/root" --port "$PORT" \
        --access-key "$AK" --secret-key "$SK" > "$WORK/server/log" 2>&1 & SERVER_PID=$!
    for _ in $(seq 50); do grep -q listening "$WORK/server/log" && break; sleep 0.1; done
    REGION=us-east-1
fi

export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_REGION=$REGION AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK
export RCLONE_CONFIG_BENCH_TYPE=s3 RCLONE_CONFIG_BENCH_PROVIDER=Other RCLONE_CONFIG_BENCH_ENDPOINT=$AWS_ENDPOINT_URL \
    RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=$AK RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=$SK \
    RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE=true RCLONE_CONFIG_BENCH_REGION=$REGION RCLONE_CONFIG_BENCH_LIST_VERSION=2

# Wait (at most 120 s) until the server has used under 5% of a core for a
# second: garage catches up on its Merkle trees and block resync queue after
# a run of writes (a few seconds of a full core after 10,000 PUTs), and a
# timed run started meanwhile would share the cores with that backlog.
settle_server() {
    local t0 t1 i
    for ((i = 0; i < 120; i++)); do
        t0=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat")
        sleep 1
        t1=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat")
        (( (t1 - t0) * 100 < 5 * $(getconf CLK_TCK) )) && return 0
    done
    echo "  the server stayed busy for ${i}s; measuring anyway" >&2
}
