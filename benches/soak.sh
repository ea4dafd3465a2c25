#!/usr/bin/env bash
# Soak test: CALLS calls (default 100,000) through the real flow path — SIP, RTP both ways,
# a DTMF digit, a stored execution with its steps per call — CONC at a time (default 200),
# in batches of BATCH (default 10,000). After every batch it prints the gateway's RSS; a leak
# shows as a line that keeps rising, and the last line is the growth per finished call.
#
#   benches/soak.sh                    # 100,000 calls: about 10 minutes on 2 cores
#   CALLS=20000 BATCH=5000 benches/soak.sh
#
# Loopback only; every process has a time limit; the script cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."

CALLS=${CALLS:-100000}
BATCH=${BATCH:-10000}
CONC=${CONC:-200}
RATE=${RATE:-250}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET_DIR/soak}
command -v python3 >/dev/null || { echo "soak.sh: python3 is required" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mkdir -p "$OUT"
work=$(mktemp -d)
gw=""
cleanup() {
  [ -n "$gw" ] && kill "$gw" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "building (release)..." >&2
cargo build --release --quiet --bin switchboard
cp "$TARGET_DIR/release/switchboard" "$work/switchboard"
SB=$work/switchboard

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

mkdir -p "$work/data"
printf '[sip]\nmax_calls = %d\n' $((CONC * 2 + 100)) > "$work/config.toml"
RUST_LOG=${GW_LOG:-warn} "$SB" serve --config "$work/config.toml" --sip-bind 127.0.0.1:0 \
  --http-bind 127.0.0.1:0 --data-dir "$work/data" --flow benches/load/soak.json \
  > "$work/stdout" 2> "$work/log" &
gw=$!
for _ in $(seq 100); do grep -q 'switchboard ready' "$work/stdout" 2>/dev/null && break; sleep 0.1; done
port=$(sed -n 's/.*sip_udp=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/stdout")
[ -n "$port" ] || { echo "soak.sh: gateway did not start" >&2; cat "$work/log" >&2; exit 1; }
sleep 1

: > "$OUT/rss.csv"
echo "calls,rss_kb,failed,without_audio" >> "$OUT/rss.csv"
echo "$(printf '%8s' 0) calls: rss $(rss_kb "$gw") KB (idle)"
echo "0,$(rss_kb "$gw"),0,0" >> "$OUT/rss.csv"
done_calls=0
failed_total=0
while [ "$done_calls" -lt "$CALLS" ]; do
  n=$((CALLS - done_calls < BATCH ? CALLS - done_calls : BATCH))
  timeout $((n / 50 + 300)) "$SB" call "sip:ivr@127.0.0.1:$port" --calls "$n" --concurrency "$CONC" \
    --rate "$RATE" --dtmf 1 --dtmf-after 300ms --require-audio --max-duration $((n / 50 + 240))s \
    > "$work/batch.out" 2> "$work/batch.err" || true
  done_calls=$((done_calls + n))
  # Let the last calls' BYEs and stored steps settle before reading the RSS.
  sleep 2
  read -r failed noaudio < <(python3 -c "
import json,sys
s=json.loads(open('$work/batch.out').read().strip().splitlines()[-1])['summary']
print(s['failed'], s['audio']['without'])" 2>/dev/null || echo "? ?")
  rss=$(rss_kb "$gw")
  printf '%8d calls: rss %s KB, failed %s, without audio %s\n' "$done_calls" "$rss" "$failed" "$noaudio"
  echo "$done_calls,$rss,$failed,$noaudio" >> "$OUT/rss.csv"
  [ "$failed" = 0 ] || failed_total=$((failed_total + 1))
done

python3 - "$OUT/rss.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
# Growth is measured from the end of the first batch (caches, pools and allocator arenas are
# warm by then) to the end of the last.
first, last = rows[1], rows[-1]
calls = int(last["calls"]) - int(first["calls"])
growth = (int(last["rss_kb"]) - int(first["rss_kb"])) * 1024 / max(calls, 1)
print(f"growth per finished call after the first batch: {growth:.1f} bytes over {calls} calls "
      f"({'within' if growth <= 1024 else 'OVER'} the 1 KB budget)")
PY
cp "$work/log" "$OUT/gateway.log"
[ "$failed_total" = 0 ] || { echo "soak.sh: some batches had failed calls" >&2; exit 1; }
