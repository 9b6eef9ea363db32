#!/usr/bin/env bash
# RaftStore against etcd on the same load, in one run (issue #17).
#
#   scripts/etcd-bench.sh [--clients C] [--seconds S] [--keys K] [--runs N]
#                         [--dir DIR] [--no-build]
#
# Installs the distribution's etcd if it is missing (Debian: etcd-server,
# etcd-client), then for each of N runs (default 3):
#   1. raft_bench: 3 managers in one process, logs under DIR;
#   2. three etcd members on loopback (client ports 23791-23793, peer ports
#      23801-23803), data directories under DIR (the same disk), default
#      settings otherwise (snapshot every 100,000 entries, no automatic
#      compaction), driven by etcd_bench with the same clients, seconds and
#      key space, and values of the size of raft_bench's replicated
#      transaction (`entry_bytes` of the run just before); then stopped and
#      their data removed.
# The RSS samples are in each JSON (`rss_samples_mib`, [seconds, MiB]); each
# run prints the two JSON objects (prefixed `raft ` and `etcd `) and a
# line of ratios. Defaults: 64 clients, 10 s, 10,000 keys, DIR = $TMPDIR or
# /tmp. RSS: raft_bench measures its own process (all three managers and
# the clients); etcd_bench sums the three etcd processes.
set -euo pipefail

clients=64 seconds=10 keys=10000 runs=3 build=1
dir=${TMPDIR:-/tmp}
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --keys) keys=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v etcd >/dev/null; then
  echo "installing etcd (etcd-server, etcd-client)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
if [ "$build" = 1 ]; then
  (cd "$root" && cargo build -q --release --features raft --example raft_bench --example etcd_bench)
fi
target=${CARGO_TARGET_DIR:-$root/target}
raft_bench=$target/release/examples/raft_bench
etcd_bench=$target/release/examples/etcd_bench

work=$(mktemp -d "$dir/etcd-bench.XXXXXX")
pids=()
stop_etcd() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap 'stop_etcd; rm -rf "$work"' EXIT

echo "etcd: $(etcd --version | head -1); machine: $(nproc) cores; $(uptime)"
cluster=""
for i in 1 2 3; do cluster="${cluster:+$cluster,}e$i=http://127.0.0.1:2380$i"; done

# RSS samples: ten per run (every 10 s in a 100 s run or longer).
every=$(( seconds >= 100 ? 10 : (seconds >= 10 ? seconds / 10 : 1) ))
for run in $(seq 1 "$runs"); do
  raft=$("$raft_bench" --managers 3 --clients "$clients" --seconds "$seconds" --keys "$keys" --dir "$work" \
    --sample-every "$every" 2>"$work/raft.err" | tail -1)
  echo "raft $raft"
  value=$(sed -n 's/.*"entry_bytes":\([0-9]*\).*/\1/p' <<<"$raft")
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$work/e$i" \
      --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
      --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "bench-$$-$run" \
      --logger zap --log-level warn >"$work/e$i.log" 2>&1 &
    pids+=($!)
  done
  etcd=$("$etcd_bench" --endpoints 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793 --clients "$clients" \
    --seconds "$seconds" --keys "$keys" --value-size "${value:-472}" --sample-every "$every" \
    --pids "$(IFS=,; echo "${pids[*]}")" 2>"$work/etcd.err" | tail -1)
  echo "etcd $etcd"
  stop_etcd
  rm -rf "$work"/e1 "$work"/e2 "$work"/e3
  field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<<"$2"; }
  awk -v rt="$(field tx_per_sec "$raft")" -v et="$(field tx_per_sec "$etcd")" \
      -v rp="$(field p99_ms "$raft")" -v ep="$(field p99_ms "$etcd")" \
      -v rm="$(field max_ms "$raft")" -v em="$(field max_ms "$etcd")" \
      -v rr="$(field peak_rss_mib "$raft")" -v er="$(field peak_rss_mib "$etcd")" -v run="$run" \
      'BEGIN { printf "run %d raft/etcd: tx/s %.2f  p99 %.2f  max %.2f  peak RSS %.2f\n", run, rt/et, rp/ep, rm/em, rr/er }'
done
