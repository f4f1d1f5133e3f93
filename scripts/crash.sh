#!/usr/bin/env bash
# Long crash test for release checks: runs the kill -9 crash test (tests/it/crash.rs) again
# and again with a fresh seed and more kills per round, for --minutes N (default 10), then
# stops by itself. The first failure stops it and prints the seed that replays it:
#   VFGATE_CRASH_SEED=<seed> VFGATE_CRASH_KILLS=<k> cargo test --release --test it crash::
# Everything runs on 127.0.0.1 (the gateway, the load generator and the mock SIEM).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=10
kills=40
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --kills) kills="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "usage: scripts/crash.sh [--minutes N] [--kills K]" >&2; exit 2 ;;
  esac
done
cargo test --locked --release --test it --no-run >/dev/null 2>&1
end=$((SECONDS + minutes * 60))
round=0
while [ "$SECONDS" -lt "$end" ]; do
  round=$((round + 1))
  seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
  echo "== round $round: VFGATE_CRASH_SEED=$seed VFGATE_CRASH_KILLS=$kills"
  if ! VFGATE_CRASH_SEED="$seed" VFGATE_CRASH_KILLS="$kills" \
      cargo test --locked --release --test it crash:: -- --nocapture 2>&1 | grep -E "crash test seed|panicked|test result"; then
    echo "FAILED: replay with VFGATE_CRASH_SEED=$seed VFGATE_CRASH_KILLS=$kills" >&2
    exit 1
  fi
done
echo "$round rounds passed in $minutes min"
