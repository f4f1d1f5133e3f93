#!/usr/bin/env bash
# Load test: vfgate against baselines measured in the same run, reported as ratios.
#
#   scripts/loadtest.sh [ingest|forward|splunk|spool|dupes|sender|scale|cpu|all]   (default: all)
#
# Builds the release binary, makes corpora of signed 1 KiB events with
# ../shared/bench/gen_corpus.py (unique events, large enough that none repeats in a run; the
# dupes corpus repeats 30 %), and drives each server with wrk and ../shared/bench/corpus.lua.
# The server under test is pinned to core 0; wrk and the upstream stubs to core 1 (taskset).
#   ingest : vfgate, file sink to /dev/null                 vs nginx `return 200`, and vs
#            examples/pingora_floor.rs (Pingora reading the body and answering 200: the
#            ceiling of any server built on Pingora here)
#   forward: vfgate, http sink batched to a keep-alive stub vs nginx `proxy_pass` to the stub
#   splunk : vfgate, splunk_hec sink batched to a HEC stub  (ratio vs proxy_pass)
#   spool  : vfgate, ack = "spool", fsync = "batch", http sink to the stub  vs forward
#   dupes  : vfgate forward with 30 % duplicate requests     (ratio vs forward)
#   sender : `vfgate send --generate` (the load generator) vs wrk, each against a fresh
#            vfgate ingest server, closed loop with as many connections as wrk
#   scale  : vfgate ingest with server.threads = 1, then 2, server and wrk sharing both
#            cores: requests/s and requests per CPU-second of the server
#   cpu    : `cargo bench --bench per_event` (criterion, --quick), the 1 KiB path (of this
#            tree's source, whatever VFGATE_BIN says)
# Before the spool: this disk's fdatasync latency (16 KiB appends, as a group commit writes),
# so that the spool's latency can be read as a multiple of it.
# Each row: requests/s, events/s delivered upstream, p50/p99 at full load, p50/p99 at half
# load (paced wrk at half the measured rate, fresh process), for vfgate also the half-load p99
# of its own request histogram (headers read to response ready, without the client's and the
# kernel's share), CPU seconds per 100k requests (server process and children), peak RSS.
# Then a summary table of ratios against the targets.
# Tunables (env): DURATION (10s), CONNS (32), COUNT (events per corpus, 1000000: more than 10 s at the fastest vfgate rate seen here, 84k req/s, so none repeats; nginx may wrap, which costs it nothing), SIZE (1024),
# LINGER_MS (batch linger of the forwarding sinks, 0: batches grow while delivery slots are busy),
# VFGATE_BIN (the vfgate binary to measure; default the release build of this tree).
# Everything runs on 127.0.0.1 and stops by itself; only processes started here are stopped.
set -euo pipefail

SCENARIO=${1:-all}
DURATION=${DURATION:-10s}
CONNS=${CONNS:-32}
COUNT=${COUNT:-1000000}
SIZE=${SIZE:-1024}
LINGER_MS=${LINGER_MS:-0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared}
# On the project's disk (not a tmpfs), so that the spool's fsyncs are real.
WORK=$(mktemp -d "$ROOT/target/loadtest.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
want() { [ "$SCENARIO" = all ] || [ "$SCENARIO" = "$1" ]; }
case "$SCENARIO" in ingest|forward|splunk|spool|dupes|sender|scale|cpu|all) ;; *) echo "unknown scenario $SCENARIO" >&2; exit 2;; esac

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need taskset || ! need curl; then
  echo "installing wrk, nginx-light, util-linux, curl from Debian..." >&2
  apt-get update -qq && apt-get install -y -qq wrk nginx-light util-linux curl >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
CORES=$(nproc)
SRV_CPU=0; LOAD_CPU=$(( CORES > 1 ? 1 : 0 ))
SECS=${DURATION%s}

# VFGATE_BIN=path measures another build (an A/B against an older commit) with the same harness.
if [ -z "${VFGATE_BIN:-}" ]; then
  echo "== building release" >&2
  (cd "$ROOT" && cargo build --release --quiet && cargo build --release --quiet --example pingora_floor)
fi
BIN=${VFGATE_BIN:-$ROOT/target/release/vfgate}

export VF_SECRET=loadtest-secret-0123456789
START=$(date -u -d '-4 min' +%Y-%m-%dT%H:%M:%S.000Z)
echo "== corpora: $COUNT signed events of ~$SIZE bytes" >&2
python3 "$SHARED/bench/gen_corpus.py" --secret "$VF_SECRET" --count "$COUNT" --size "$SIZE" \
  --start "$START" --seed 1 > "$WORK/corpus.tsv"
if want dupes; then
  python3 "$SHARED/bench/gen_corpus.py" --secret "$VF_SECRET" --count "$COUNT" --size "$SIZE" \
    --start "$START" --seed 2 --dup-rate 0.3 > "$WORK/dupes.tsv"
fi
# wrk with think time (half-load runs): each connection waits a uniformly random 0..2*PACE_MS
# between requests. A fixed pace keeps connections that started together in lockstep, so
# the "half load" arrives as bursts of every connection at once on wrk's millisecond timer.
cat > "$WORK/paced.lua" <<LUA
dofile("$SHARED/bench/corpus.lua")
local pace = tonumber(os.getenv("PACE_MS") or "0")
function delay() return math.random(0, 2 * pace) end
LUA

cat > "$WORK/p99.py" <<'PY'
import re, sys
pat = re.compile(r'vfgate_request_duration_seconds_bucket\{source="load",le="([^"]+)"\} (\S+)')
buckets = [(float(m[1]), float(m[2])) for m in map(pat.match, sys.stdin) if m]
total = buckets[-1][1] if buckets else 0
rank, lo, below = 0.99 * total, 0.0, 0.0
for le, n in buckets:
    if n >= rank and total > 0:
        if le == float("inf"):
            print(round(lo * 1e6)); break
        print(round((lo + (le - lo) * (rank - below) / max(n - below, 1)) * 1e6)); break
    lo, below = le, n
else:
    print(0)
PY

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }

start_nginx() { # name cpu port server-block-body [http-extra]
  local name=$1 cpu=$2 p=$3 loc=$4 extra=${5:-} dir=$WORK/nginx-$1
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
  $extra
  server { listen 127.0.0.1:$p; location / { $loc } }
}
NG
  taskset -c "$cpu" "$NGINX" -p "$dir" -c "$dir/nginx.conf" >/dev/null 2>&1 &
  NPID=$!
  PIDS+=($NPID)
  wait_port "$p"
}

start_vfgate() { # name source-extra sink-toml [top-extra]
  local name=$1 src=$2 sink=$3 top=${4:-} dir=$WORK/vfgate-$1
  mkdir -p "$dir"
  VPORT=$(port); APORT=$(port)
  cat > "$dir/vfgate.toml" <<TOML
[server]
listen = "127.0.0.1:$VPORT"
threads = ${VTHREADS:-1}
[admin]
listen = "127.0.0.1:$APORT"
${top//@DIR@/$dir}
[[source]]
name = "load"
path = "/v1/events"
secrets = [{ env = "VF_SECRET" }]
sinks = ["out"]
$src
[sink.out]
$sink
TOML
  # A fresh process forgets what an earlier run delivered: its dedupe journal (data/dedupe
  # under the working directory, the default without a spool) starts empty.
  rm -rf "$dir/data"
  (cd "$dir" && RUST_LOG=warn exec taskset -c "${VCPUS:-$SRV_CPU}" "$BIN" serve --config "$dir/vfgate.toml" 2>"$dir/log") &
  VPID=$!
  PIDS+=($VPID)
  wait_port "$VPORT"
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

cpu_seconds() { # pid -> utime+stime in seconds of it and its children (nginx's worker)
  local p t=0
  for p in "$1" $(pgrep -P "$1" || true); do
    t=$(awk -v hz="$(getconf CLK_TCK)" -v t="$t" '{print t + ($14+$15)/hz}' "/proc/$p/stat")
  done
  echo "$t"
}

# run_wrk port corpus [conns pace_ms] -> "rps p50_us p99_us non2xx requests"
run_wrk() {
  local out conns=${3:-$CONNS} pace=${4:-0} script=corpus.lua
  [ "$pace" != 0 ] && script=$WORK/paced.lua
  out=$(cd "$SHARED/bench" && CORPUS="$2" VF_PATH=/v1/events VF_VERSION=1 PACE_MS=$pace \
    taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"$DURATION" -s "$script" "http://127.0.0.1:$1" 2>&1)
  local reqs p50 p99 errs rps
  reqs=$(echo "$out" | sed -n 's/.*requests=\([0-9]*\).*/\1/p')
  errs=$(echo "$out" | sed -n 's/.*errors_status=\([0-9]*\).*/\1/p')
  p50=$(echo "$out" | sed -n 's/.*p50_us=\([0-9]*\).*/\1/p')
  p99=$(echo "$out" | sed -n 's/.*p99_us=\([0-9]*\).*/\1/p')
  rps=$(echo "$out" | sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p')
  echo "${rps:-0} ${p50:-0} ${p99:-0} ${errs:-0} ${reqs:-0}"
}

# Half load: PACE_MS think time per connection, enough connections for half of rate $1.
half_args() { python3 -c "r=$1/2; pace=5; print(max(1, round(r*pace/1000)), pace)"; }

py() { python3 -c "print($1)"; }
# p99 in µs of vfgate_request_duration_seconds{source="load"} read from an admin port,
# interpolated inside its bucket as Prometheus's histogram_quantile does.
server_p99() { curl -s "127.0.0.1:$1/metrics" | python3 "$WORK/p99.py"; }
metric() { # admin-port series -> value (0 when absent)
  curl -s "127.0.0.1:$1/metrics" | awk -v s="$2" 'index($0, s" ") == 1 { print $2; f=1 } END { if (!f) print 0 }'
}

ROWS=()
SUMMARY=()
declare -A RATE
row() { ROWS+=("$(printf '%-32s %9s %9s %7s %7s %7s %7s %9s %8s %8s' "$@")"); }
us_ms() { py "f'{$1/1000:.2f}'"; }

# measure name port-getter: runs full load on the current vfgate (VPID/VPORT/APORT),
# then a fresh process ($RESTART command) at half load. Sets RPS, EVS, P50.., CPU, RSS.
measure_vfgate() { # label corpus restart-fn
  local label=$1 corpus=$2 restart=$3
  local c0 c1
  c0=$(cpu_seconds "$VPID")
  read -r RPS P50 P99 ERR REQS < <(run_wrk "$VPORT" "$corpus")
  c1=$(cpu_seconds "$VPID")
  FWD=$(metric "$APORT" 'vfgate_events_forwarded_total{sink="out"}')
  EVS=$(py "f'{$FWD/$SECS:.0f}'")
  CPU=$(py "f'{($c1-$c0)/max($REQS,1)*1e5:.2f}'")
  RSS=$(awk '/VmHWM/{print int($2/1024)}' "/proc/$VPID/status")
  stop "$VPID"
  $restart
  read -r HC HP < <(half_args "$RPS")
  read -r _ H50 H99 _ _ < <(run_wrk "$VPORT" "$corpus" "$HC" "$HP")
  S99=$(server_p99 "$APORT")
  stop "$VPID"
  row "$label" "$RPS" "$EVS" "$(us_ms "$P50")" "$(us_ms "$P99")" "$(us_ms "$H50")" "$(us_ms "$H99")" "$(us_ms "$S99")" "$CPU" "$RSS"
  echo "   $label: non-2xx=$ERR requests=$REQS forwarded=$FWD" >&2
  RATE[$label]=$RPS
}

measure_nginx() { # label port
  local c0 c1
  c0=$(cpu_seconds "$NPID")
  read -r RPS P50 P99 ERR REQS < <(run_wrk "$2" "$WORK/corpus.tsv")
  c1=$(cpu_seconds "$NPID")
  CPU=$(py "f'{($c1-$c0)/max($REQS,1)*1e5:.2f}'")
  RSS=$(for p in "$NPID" $(pgrep -P "$NPID" || true); do awk '/VmHWM/{print int($2/1024)}' "/proc/$p/status"; done | sort -n | tail -1)
  read -r HC HP < <(half_args "$RPS")
  read -r _ H50 H99 _ _ < <(run_wrk "$2" "$WORK/corpus.tsv" "$HC" "$HP")
  row "$1" "$RPS" "$RPS" "$(us_ms "$P50")" "$(us_ms "$P99")" "$(us_ms "$H50")" "$(us_ms "$H99")" "-" "$CPU" "$RSS"
  RATE[$1]=$RPS
}

# Upstream stubs on the load core, so that core 0 measures the server alone.
STUB_PORT=$(port)
start_nginx stub "$LOAD_CPU" "$STUB_PORT" "return 200 '{\"text\":\"Success\",\"code\":0}';"

HTTP_SINK="type = \"http\"
url = \"http://127.0.0.1:$STUB_PORT/ingest\"
batch = { max_events = 500, max_bytes = \"4MiB\", linger = \"${LINGER_MS}ms\" }
concurrency = 4"

if want ingest; then
  echo "== ingest: nginx return 200, then vfgate file sink to /dev/null" >&2
  BASE_PORT=$(port)
  start_nginx base "$SRV_CPU" "$BASE_PORT" "return 200 '{\"status\":\"accepted\"}';"
  measure_nginx "nginx return 200" "$BASE_PORT"
  stop "$NPID"
  FLOOR_PORT=$(port)
  taskset -c "$SRV_CPU" "$ROOT/target/release/examples/pingora_floor" "127.0.0.1:$FLOOR_PORT" >/dev/null 2>&1 &
  NPID=$!
  PIDS+=($NPID)
  wait_port "$FLOOR_PORT"
  measure_nginx "pingora floor (no vfgate work)" "$FLOOR_PORT"
  # SIGINT: Pingora's fast shutdown (SIGTERM is graceful, and waits up to its 5 min grace
  # period for a client's lingering keep-alive connection).
  kill -INT "$NPID" 2>/dev/null || true
  stop "$NPID"
  ingest_up() { start_vfgate ingest "" 'type = "file"
path = "/dev/null"
batch = { max_events = 256, linger = "0ms" }'; }
  ingest_up
  measure_vfgate "vfgate ingest" "$WORK/corpus.tsv" ingest_up
  SUMMARY+=("$(printf '%-44s %8s %8s' "ingest / nginx return 200" "$(py "f'{${RATE[vfgate ingest]}/${RATE[nginx return 200]}:.2f}'")" ">= 0.8")")
  SUMMARY+=("$(printf '%-44s %8s %8s' "(pingora floor / nginx return 200)" "$(py "f'{${RATE[pingora floor (no vfgate work)]}/${RATE[nginx return 200]}:.2f}'")" "-")")
  SUMMARY+=("$(printf '%-44s %8s %8s' "(ingest / pingora floor)" "$(py "f'{${RATE[vfgate ingest]}/${RATE[pingora floor (no vfgate work)]}:.2f}'")" "-")")
fi

if want forward || want splunk || want spool || want dupes; then
  echo "== forward: nginx proxy_pass to the stub, then vfgate http sink (batched)" >&2
  PROXY_PORT=$(port)
  start_nginx proxy "$SRV_CPU" "$PROXY_PORT" "proxy_pass http://stub; proxy_http_version 1.1; proxy_set_header Connection \"\";" \
    "upstream stub { server 127.0.0.1:$STUB_PORT; keepalive 64; }"
  measure_nginx "nginx proxy_pass" "$PROXY_PORT"
  NH99=$H99
  stop "$NPID"
  forward_up() { start_vfgate forward "" "$HTTP_SINK"; }
  forward_up
  measure_vfgate "vfgate forward" "$WORK/corpus.tsv" forward_up
  SUMMARY+=("$(printf '%-44s %8s %8s' "forward / nginx proxy_pass" "$(py "f'{${RATE[vfgate forward]}/${RATE[nginx proxy_pass]}:.2f}'")" ">= 1.5")")
  SUMMARY+=("$(printf '%-44s %8s %8s' "forward p99 at half load (ms)" "$(us_ms "$H99")" "<= $((LINGER_MS + 2))")")
  SUMMARY+=("$(printf '%-44s %8s %8s' "(same, vfgate's own histogram) (ms)" "$(us_ms "$S99")" "-")")
  SUMMARY+=("$(printf '%-44s %8s %8s' "(nginx proxy_pass p99 at half load) (ms)" "$(us_ms "$NH99")" "-")")
fi

if want splunk; then
  echo "== splunk: vfgate splunk_hec sink to a HEC stub" >&2
  splunk_up() { start_vfgate splunk "" "type = \"splunk_hec\"
url = \"http://127.0.0.1:$STUB_PORT\"
token = { env = \"VF_SECRET\" }
index = \"security\"
batch = { max_events = 500, max_bytes = \"4MiB\", linger = \"${LINGER_MS}ms\" }
concurrency = 4"; }
  splunk_up
  measure_vfgate "vfgate splunk_hec" "$WORK/corpus.tsv" splunk_up
  SUMMARY+=("$(printf '%-44s %8s %8s' "splunk / nginx proxy_pass" "$(py "f'{${RATE[vfgate splunk_hec]}/${RATE[nginx proxy_pass]}:.2f}'")" "-")")
fi

if want spool; then
  echo "== disk: fdatasync latency of 16 KiB appends in $WORK" >&2
  read -r FS50 FS99 < <(python3 - "$WORK/fsync-probe" <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
buf, lat = b"x" * 16384, []
for _ in range(2000):
    t = time.perf_counter(); os.write(fd, buf); os.fdatasync(fd); lat.append(time.perf_counter() - t)
os.close(fd); os.unlink(sys.argv[1]); lat.sort()
print(round(lat[1000] * 1e6), round(lat[1980] * 1e6))
PY
)
  echo "== spool: vfgate ack = \"spool\", fsync = \"batch\", http sink" >&2
  spool_up() { rm -rf "$WORK/vfgate-spool/spool"; start_vfgate spool 'ack = "spool"' "$HTTP_SINK" '[spool]
dir = "@DIR@/spool"
fsync = "batch"'; }
  spool_up
  measure_vfgate "vfgate spool (fsync batch)" "$WORK/corpus.tsv" spool_up
  SUMMARY+=("$(printf '%-44s %8s %8s' "spool / forward" "$(py "f'{${RATE[vfgate spool (fsync batch)]}/${RATE[vfgate forward]}:.2f}'")" ">= 0.9")")
  SUMMARY+=("$(printf '%-44s %8s %8s' "spool p99 at full load (ms)" "$(us_ms "$P99")" "<= 10")")
  SUMMARY+=("$(printf '%-44s %8s %8s' "spool p99 at half load (ms)" "$(us_ms "$H99")" "<= 2")")
  SUMMARY+=("$(printf '%-44s %8s %8s' "(same, vfgate's own histogram) (ms)" "$(us_ms "$S99")" "-")")
  SUMMARY+=("$(printf '%-44s %8s %8s' "(disk fdatasync p50 / p99, 16 KiB) (ms)" "$(us_ms "$FS50")/$(us_ms "$FS99")" "-")")
  SUMMARY+=("$(printf '%-44s %8s %8s' "(spool ½ p99 / fdatasync p99)" "$(py "f'{$H99/max($FS99,1):.1f}'")" "-")")
fi

if want dupes; then
  echo "== dupes: vfgate forward, 30 % duplicates" >&2
  dupes_up() { start_vfgate dupes "" "$HTTP_SINK"; }
  dupes_up
  measure_vfgate "vfgate forward, 30% dupes" "$WORK/dupes.tsv" dupes_up
  SUMMARY+=("$(printf '%-44s %8s %8s' "dupes / forward" "$(py "f'{${RATE[vfgate forward, 30% dupes]}/${RATE[vfgate forward]}:.2f}'")" "-")")
fi

# The load generator against the same server as wrk: a fresh ingest process for each, wrk
# first (its rate sets how many events the generator sends: about DURATION's worth).
if want sender; then
  echo "== sender: vfgate send --generate vs wrk, fresh vfgate ingest each" >&2
  ingest_up() { start_vfgate ingest "" 'type = "file"
path = "/dev/null"
batch = { max_events = 256, linger = "0ms" }'; }
  ingest_up
  read -r WRPS _ _ _ _ < <(run_wrk "$VPORT" "$WORK/corpus.tsv")
  stop "$VPID"
  ingest_up
  N=$(py "max(10000, round(${WRPS:-0} * $SECS))")
  c0=$(cpu_seconds "$VPID")
  # (send exits 1 when an event failed: the row still prints, with the failures counted)
  SOUT=$(taskset -c "$LOAD_CPU" "$BIN" send --target "http://127.0.0.1:$VPORT/v1/events" --secret-env VF_SECRET \
    --generate "$N" --concurrency "$CONNS" --orgs 1000 --size "$SIZE" --failed-dir "$WORK/failed" 2>&1 \
    | grep -E '^(sent |latency )' || true)
  c1=$(cpu_seconds "$VPID")
  SRPS=$(echo "$SOUT" | sed -n 's/.*; \([0-9.]*\) events\/s over.*/\1/p')
  SP50=$(echo "$SOUT" | sed -n 's/.*latency p50 \([0-9.]*\)ms.*/\1/p')
  SP99=$(echo "$SOUT" | sed -n 's/.* p99 \([0-9.]*\)ms.*/\1/p')
  FWD=$(metric "$APORT" 'vfgate_events_forwarded_total{sink="out"}')
  RSS=$(awk '/VmHWM/{print int($2/1024)}' "/proc/$VPID/status")
  stop "$VPID"
  echo "   send: $(echo "$SOUT" | head -1)" >&2
  row "vfgate ingest, driven by wrk" "$WRPS" "-" "-" "-" "-" "-" "-" "-" "-"
  row "vfgate ingest, by send --generate" "${SRPS:-0}" "$(py "round($FWD / max($N / max(${SRPS:-0}, 1), 0.001))")" "${SP50:-0}" "${SP99:-0}" "-" "-" "-" "$(py "f'{($c1-$c0)/max($N,1)*1e5:.2f}'")" "$RSS"
  SUMMARY+=("$(printf '%-44s %8s %8s' "send --generate / wrk, same server" "$(py "f'{${SRPS:-0}/max(${WRPS:-0}, 1):.2f}'")" ">= 0.8")")
fi

# Multi-core: the same ingest server with one and with two worker threads, server and wrk
# on both cores (one wrk thread: two would send overlapping parts of the corpus, repeats). Requests per CPU-second of the server is what a
# bigger box multiplies; req/s on two shared cores is only what these two cores allow.
if want scale; then
  declare -A PERCPU
  for T in 1 2; do
    echo "== scale: vfgate ingest, server.threads = $T, server and wrk on cores 0-$LOAD_CPU" >&2
    VTHREADS=$T VCPUS="0-$LOAD_CPU" start_vfgate "scale$T" "" 'type = "file"
path = "/dev/null"
batch = { max_events = 256, linger = "0ms" }'
    c0=$(cpu_seconds "$VPID")
    out=$(cd "$SHARED/bench" && CORPUS="$WORK/corpus.tsv" VF_PATH=/v1/events VF_VERSION=1 \
      taskset -c "0-$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" -s corpus.lua "http://127.0.0.1:$VPORT" 2>&1)
    c1=$(cpu_seconds "$VPID")
    TRPS=$(echo "$out" | sed -n 's/^Requests\/sec: *\([0-9.]*\).*/\1/p')
    TREQ=$(echo "$out" | sed -n 's/.*requests=\([0-9]*\).*/\1/p')
    stop "$VPID"
    PERCPU[$T]=$(py "f'{${TREQ:-0}/max($c1-$c0,0.01):.0f}'")
    RATE[scale$T]=${TRPS:-0}
    row "vfgate ingest, threads=$T (2 cores)" "$TRPS" "-" "-" "-" "-" "-" "-" "$(py "f'{($c1-$c0)/max(${TREQ:-1},1)*1e5:.2f}'")" "-"
    SUMMARY+=("$(printf '%-44s %8s %8s' "(threads=$T: requests per server CPU-second)" "${PERCPU[$T]}" "-")")
  done
  SUMMARY+=("$(printf '%-44s %8s %8s' "threads=2 / threads=1, req/s" "$(py "f'{${RATE[scale2]}/max(${RATE[scale1]}, 1):.2f}'")" "-")")
  SUMMARY+=("$(printf '%-44s %8s %8s' "threads=2 / threads=1, req per CPU-second" "$(py "f'{${PERCPU[2]}/max(${PERCPU[1]}, 1):.2f}'")" "-")")
fi

# Per-event CPU path (criterion): verify, parse, dedupe against 10 M ids, encode; 1 KiB.
if want cpu; then
  echo "== cpu: cargo bench --bench per_event (1 KiB, --quick)" >&2
  BOUT=$(cd "$ROOT" && cargo bench --locked --quiet --bench per_event -- 'per_event_1KiB/verify_parse_dedupe_encode' --quick 2>&1 || true)
  PE=$(echo "$BOUT" | sed -n 's/.*time: *\[[^ ]* [^ ]* \([0-9.]*\) \([^ ]*s\) .*/\1 \2/p' | tail -1)
  case "$PE" in
    *" ns") PE=$(py "f'{${PE% *}/1000:.2f}'") ;;
    *" µs"|*" us") PE=$(py "f'{${PE% *}:.2f}'") ;;
    *" ms") PE=$(py "f'{${PE% *}*1000:.2f}'") ;;
    *" s") PE=$(py "f'{${PE% *}*1e6:.2f}'") ;;
    *) PE=? ;;
  esac
  SUMMARY+=("$(printf '%-44s %8s %8s' "per-event CPU path, 1 KiB (µs, criterion)" "$PE" "<= 2")")
fi

echo
echo "loadtest $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1)"
echo "1 KiB events, wrk -t1 -c$CONNS -d$DURATION, server on cpu $SRV_CPU, wrk and stubs on cpu $LOAD_CPU (scale: both on cpus 0-$LOAD_CPU); half load = paced wrk at half the full-load rate"
printf '%-32s %9s %9s %7s %7s %7s %7s %9s %8s %8s\n' "server" "req/s" "ev/s up" "p50 ms" "p99 ms" "½ p50" "½ p99" "½ p99 srv" "cpu/100k" "RSS MiB"
for r in "${ROWS[@]}"; do echo "$r"; done
echo
printf '%-44s %8s %8s\n' "ratio" "measured" "target"
for r in "${SUMMARY[@]}"; do echo "$r"; done
