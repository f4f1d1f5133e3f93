#!/usr/bin/env bash
# Load test: vfgate against a bare-HTTP baseline measured in the same run, as a ratio.
#
#   scripts/loadtest.sh [ingest|forward|all]      (default: all)
#
# Builds the release binary, makes a corpus of unique signed 1 KiB events with
# ../shared/bench/gen_corpus.py, and drives each server with wrk and ../shared/bench/corpus.lua.
# The server under test is pinned to core 0, wrk to core 1 (taskset), one worker thread each.
#   ingest : vfgate, file sink to /dev/null        vs  nginx `return 200`
#   forward: vfgate, http sink batched to an nginx keep-alive stub  vs  nginx `return 200`
# Tunables (env): DURATION (10s), CONNS (32), COUNT (events in the corpus, 400000), SIZE (1024).
# Everything runs on 127.0.0.1 and stops by itself; only processes started here are stopped.
set -euo pipefail

SCENARIO=${1:-all}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
COUNT=${COUNT:-400000}
SIZE=${SIZE:-1024}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared}
WORK=$(mktemp -d /tmp/vfgate-load.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need taskset; then
  echo "installing wrk, nginx-light, util-linux from Debian..." >&2
  apt-get update -qq && apt-get install -y -qq wrk nginx-light util-linux >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
CORES=$(nproc)
SRV_CPU=0; LOAD_CPU=$(( CORES > 1 ? 1 : 0 ))

echo "== building release" >&2
(cd "$ROOT" && cargo build --release --quiet)
BIN=$ROOT/target/release/vfgate

export VF_SECRET=loadtest-secret-0123456789
START=$(date -u -d '-4 min' +%Y-%m-%dT%H:%M:%S.000Z)
echo "== corpus: $COUNT unique signed events of ~$SIZE bytes" >&2
python3 "$SHARED/bench/gen_corpus.py" --secret "$VF_SECRET" --count "$COUNT" --size "$SIZE" \
  --start "$START" > "$WORK/corpus.tsv"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }

start_nginx() { # name port body-of-location
  local name=$1 p=$2 loc=$3 dir=$WORK/nginx-$1
  mkdir -p "$dir/logs"
  cat > "$dir/nginx.conf" <<NG
worker_processes 1;
daemon off;
error_log $dir/logs/error.log warn;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_buffer_size 64k;
  server { listen 127.0.0.1:$p; location / { $loc } }
}
NG
  taskset -c "$SRV_CPU" "$NGINX" -p "$dir" -c "$dir/nginx.conf" >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port "$p"
}

start_vfgate() { # name sink-toml
  local name=$1 sink=$2 dir=$WORK/vfgate-$1
  mkdir -p "$dir"
  VPORT=$(port); APORT=$(port)
  cat > "$dir/vfgate.toml" <<TOML
[server]
listen = "127.0.0.1:$VPORT"
threads = 1
[admin]
listen = "127.0.0.1:$APORT"
[[source]]
name = "load"
path = "/v1/events"
secrets = [{ env = "VF_SECRET" }]
sinks = ["out"]
[sink.out]
$sink
TOML
  RUST_LOG=warn taskset -c "$SRV_CPU" "$BIN" serve --config "$dir/vfgate.toml" 2>"$dir/log" &
  VPID=$!
  PIDS+=($VPID)
  wait_port "$VPORT"
}

cpu_seconds() { # pid -> utime+stime in seconds
  awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$1/stat"
}

# run_wrk label port -> prints "rps p50_us p99_us non2xx"
run_wrk() {
  local out
  out=$(cd "$SHARED/bench" && CORPUS="$WORK/corpus.tsv" VF_PATH=/v1/events VF_VERSION=1 \
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" -s corpus.lua "http://127.0.0.1:$2" 2>&1)
  local reqs p50 p99 errs rps
  reqs=$(echo "$out" | sed -n 's/.*requests=\([0-9]*\).*/\1/p')
  errs=$(echo "$out" | sed -n 's/.*errors_status=\([0-9]*\).*/\1/p')
  p50=$(echo "$out" | sed -n 's/.*p50_us=\([0-9]*\).*/\1/p')
  p99=$(echo "$out" | sed -n 's/.*p99_us=\([0-9]*\).*/\1/p')
  rps=$(echo "$out" | sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p')
  echo "$rps $p50 $p99 $errs $reqs"
}

ROWS=()
row() { ROWS+=("$(printf '%-34s %10s %9s %9s %8s %10s' "$@")"); }

BASE_PORT=$(port)
start_nginx base "$BASE_PORT" "return 200 '{\"status\":\"accepted\"}';"
echo "== baseline: nginx return 200" >&2
read -r B_RPS B_P50 B_P99 B_ERR _ < <(run_wrk base "$BASE_PORT")
row "nginx return 200 (baseline)" "$B_RPS" "$B_P50" "$B_P99" "$B_ERR" "1.00"

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

if [ "$SCENARIO" = ingest ] || [ "$SCENARIO" = all ]; then
  echo "== ingest: vfgate, file sink to /dev/null" >&2
  start_vfgate ingest 'type = "file"
path = "/dev/null"
batch = { max_events = 256, linger = "0ms" }'
  C0=$(cpu_seconds "$VPID")
  read -r RPS P50 P99 ERR REQS < <(run_wrk ingest "$VPORT")
  C1=$(cpu_seconds "$VPID")
  ACC=$(curl -s "127.0.0.1:$APORT/metrics" | sed -n 's/^vfgate_requests_total{outcome="accepted",source="load"} //p')
  RSS=$(awk '/VmHWM/{print $2}' "/proc/$VPID/status")
  row "vfgate ingest (file /dev/null)" "$RPS" "$P50" "$P99" "$ERR" "$(ratio "$RPS" "$B_RPS")"
  echo "   accepted=$ACC of $REQS requests, cpu=$(python3 -c "print(f'{($C1-$C0)/max($REQS,1)*1e5:.2f}')") s/100k events, peak RSS ${RSS} KiB" >&2
  INFO_INGEST="accepted=$ACC cpu_s_per_100k=$(python3 -c "print(f'{($C1-$C0)/max($REQS,1)*1e5:.2f}')") peak_rss_kib=$RSS"
  kill "$VPID"; wait "$VPID" 2>/dev/null || true
fi

if [ "$SCENARIO" = forward ] || [ "$SCENARIO" = all ]; then
  STUB_PORT=$(port)
  # The stub runs on the load core, so that vfgate's core measures vfgate alone.
  SRV_CPU_SAVE=$SRV_CPU; SRV_CPU=$LOAD_CPU
  start_nginx stub "$STUB_PORT" "return 200 '{}';"
  SRV_CPU=$SRV_CPU_SAVE
  echo "== forward: vfgate, http sink batched to a keep-alive stub" >&2
  start_vfgate forward "type = \"http\"
url = \"http://127.0.0.1:$STUB_PORT/ingest\"
batch = { max_events = 500, max_bytes = \"4MiB\", linger = \"2ms\" }
concurrency = 4"
  C0=$(cpu_seconds "$VPID")
  read -r RPS P50 P99 ERR REQS < <(run_wrk forward "$VPORT")
  C1=$(cpu_seconds "$VPID")
  M=$(curl -s "127.0.0.1:$APORT/metrics")
  FWD=$(echo "$M" | sed -n 's/^vfgate_events_forwarded_total{sink="out"} //p')
  UPR=$(echo "$M" | sed -n 's/^vfgate_sink_requests_total{sink="out",status="200"} //p')
  RSS=$(awk '/VmHWM/{print $2}' "/proc/$VPID/status")
  row "vfgate forward (http, batched)" "$RPS" "$P50" "$P99" "$ERR" "$(ratio "$RPS" "$B_RPS")"
  echo "   forwarded=$FWD events in $UPR upstream requests, cpu=$(python3 -c "print(f'{($C1-$C0)/max($REQS,1)*1e5:.2f}')") s/100k events, peak RSS ${RSS} KiB" >&2
  kill "$VPID"; wait "$VPID" 2>/dev/null || true
fi

echo
echo "loadtest $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)"
echo "1 KiB events, wrk -t1 -c$CONNS -d$DURATION, server on cpu $SRV_CPU, wrk on cpu $LOAD_CPU"
printf '%-34s %10s %9s %9s %8s %10s\n' "server" "req/s" "p50 us" "p99 us" "non-2xx" "ratio"
for r in "${ROWS[@]}"; do echo "$r"; done
