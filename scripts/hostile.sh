#!/usr/bin/env bash
# Hostile load against the release binary on 127.0.0.1: a bounded mix of tampered bodies and
# signatures, truncated digests, random bytes, header garbage, slowloris connections,
# over-size bodies, hostile JSON and a TE+CL smuggling attempt (scripts/hostile.py), then
# valid traffic. Passes when the process is still up, no forged event reached the sink, every
# acknowledged valid event did, and peak RSS stayed under RSS_LIMIT_MB (default 200).
#   scripts/hostile.sh [--rounds N] [--valid N] [--slow N] [--seed N]
# VFGATE_BIN=path tests another build. Stops by itself; ends only the gateway it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ARGS=("$@")
RSS_LIMIT_MB=${RSS_LIMIT_MB:-200}
if [ -z "${VFGATE_BIN:-}" ]; then
  cargo build --release --locked --quiet
fi
BIN=${VFGATE_BIN:-$ROOT/target/release/vfgate}
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P=$(port); A=$(port)
export HOSTILE_SECRET=hostile-secret-0123456789abcdef
cat > "$WORK/vfgate.toml" <<TOML
[server]
listen = "127.0.0.1:$P"
threads = 1
body_timeout = "2s"
[admin]
listen = "127.0.0.1:$A"
[dedupe]
dir = "$WORK/dedupe"
[[source]]
name = "hostile"
path = "/v1/events"
secrets = [{ env = "HOSTILE_SECRET" }]
sinks = ["out"]
[sink.out]
type = "file"
path = "$WORK/events.ndjson"
TOML
RUST_LOG=warn "$BIN" serve --config "$WORK/vfgate.toml" 2>"$WORK/log" &
PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$A/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
python3 scripts/hostile.py --port "$P" --secret "$HOSTILE_SECRET" --valid-out "$WORK/valid.txt" "${ARGS[@]}"
sleep 0.5
fail=0
if ! kill -0 "$PID" 2>/dev/null; then echo "FAIL: the gateway died"; tail -20 "$WORK/log"; exit 1; fi
python3 - "$WORK/events.ndjson" "$WORK/valid.txt" <<'PY' || fail=1
import json, sys
got = [json.loads(l)["event_id"] for l in open(sys.argv[1]) if l.strip()]
valid = {l.strip() for l in open(sys.argv[2]) if l.strip()}
forged = [g for g in got if not g.startswith("valid-")]
missing = valid - set(got)
print(f"sink received {len(got)} events: {len(forged)} forged, {len(missing)} acknowledged valid ones missing")
sys.exit(1 if forged or missing or not valid else 0)
PY
hwm=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$PID/status")
echo "peak RSS ${hwm} MiB (limit ${RSS_LIMIT_MB} MiB)"
[ "$hwm" -le "$RSS_LIMIT_MB" ] || { echo "FAIL: RSS"; fail=1; }
[ "$fail" = 0 ] && echo "hostile: PASS" || { echo "hostile: FAIL"; exit 1; }
