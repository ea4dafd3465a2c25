#!/usr/bin/env bash
# Recorded-call load benchmark on loopback: the cost of a whole-call recording (record-call:
# both directions mixed to mono, written to disk) next to the same call unrecorded, in one run,
# bounded in calls and time.
#
#   benches/load/record.sh             # N=200 calls: about two minutes
#   N=2000 benches/load/record.sh
#
# Phases (release build, fresh gateways, the caller sends audio in both):
#   a. plain: N calls of benches/load/ivr-load.json (menu, a digit, "one" ten times).
#   b. recorded: the same N calls of benches/load/ivr-record-load.json (record-call first).
# CPU is utime+stime of the gateway over a steady window with all N calls up; memory is its
# VmRSS in the window minus before the first call, per call; disk is what the recordings
# directory holds afterwards. Output: a Markdown table on stdout and $OUT/record.json.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-200}
RAMP=${RAMP:-6}
WINDOW=${WINDOW:-6}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET_DIR/load}
GW_LOG=${GW_LOG:-warn}
CALL_SECS=18   # ivr-load.json: a digit after 2 s, then "one" ten times

command -v python3 >/dev/null || { echo "record.sh: python3 is required" >&2; exit 1; }
# shellcheck source=benches/load/lib.sh
. benches/load/lib.sh
need_fds record.sh $((2 * N + 512)) "$N calls"
start_scratch record

echo "building (release)..." >&2
cargo build --release --quiet --bin switchboard
mkdir -p "$work/bin"
cp "$TARGET_DIR/release/switchboard" "$work/bin/"
SB=$work/bin/switchboard

for phase in plain recorded; do
  flow=benches/load/ivr-load.json
  [ "$phase" = recorded ] && flow=benches/load/ivr-record-load.json
  echo "$phase: $N calls" >&2
  gateway_start "$phase" "$flow" 20000 39999 $((N + 100))
  gw=$GW
  sb_call "$phase" "sip:ivr@127.0.0.1:$GW_PORT" "$N" "$RAMP" "$CALL_SECS" \
    --dtmf 1 --dtmf-after 2s --play benches/load/audio/menu.wav --require-audio &
  cpid=$!; pids+=("$cpid")
  measure "$gw" $((RAMP + 1)) "$WINDOW" "gw-$phase"
  wait "$cpid" || true
  # Recordings are saved as their calls end: give the last ones a moment.
  sleep 2
  gateway_stop "$gw"
  { du -sk "$work/gw-$phase/recordings" 2>/dev/null || echo 0; } | cut -f1 > "$work/$phase.disk"
  { find "$work/gw-$phase/recordings" -name 'RE*.wav' 2>/dev/null || true; } | wc -l > "$work/$phase.files"
  grep -c "WARN\|ERROR" "$work/gw-$phase/log" > "$work/$phase.warnings" || echo 0 > "$work/$phase.warnings"
done

python3 - "$work" "$N" "$OUT/record.json" <<'PY'
import json, os, sys
work, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def read(name, conv=float):
    try:
        return conv(open(os.path.join(work, name)).read().strip() or 0)
    except Exception:
        return None

def phase(name):
    cpu, rss, rss0 = read(f"gw-{name}.cpu"), read(f"gw-{name}.rss"), read(f"gw-{name}.rss0")
    try:
        sm = json.load(open(os.path.join(work, f"{name}.json")))["summary"]
    except Exception:
        sm = None
    return {"cpu_pct": cpu, "cpu_pct_per_call": None if cpu is None else round(cpu / n, 4),
            "rss_kib_per_call": None if rss is None or rss0 is None else round((rss - rss0) / n, 1),
            "recordings": read(f"{name}.files", int), "disk_kib": read(f"{name}.disk", int),
            "warnings": read(f"{name}.warnings", int), "summary": sm}

p, r = phase("plain"), phase("recorded")
res = {"calls": n, "plain": p, "recorded": r}
if p["cpu_pct"] and r["cpu_pct"]:
    res["recorded_vs_plain_cpu"] = round(r["cpu_pct"] / p["cpu_pct"], 2)
if p["rss_kib_per_call"] and r["rss_kib_per_call"]:
    res["recorded_vs_plain_rss"] = round(r["rss_kib_per_call"] / p["rss_kib_per_call"], 2)
json.dump(res, open(out, "w"), indent=2)

def f(v, unit=""):
    return "–" if v is None else f"{v}{unit}"
def ok(sm):
    return "–" if not sm else f"{sm['completed']}/{n} completed, {sm['failed']} failed, audio on {sm['audio']['with']}"
print(f"## Recorded calls: {n} next to {n} unrecorded\n")
print("| measure | plain IVR call | recorded call | recorded / plain |")
print("|---|---|---|---|")
print(f"| CPU, all calls (% of one core) | {f(p['cpu_pct'])} | {f(r['cpu_pct'])} | {f(res.get('recorded_vs_plain_cpu'))} |")
print(f"| CPU per call (% of one core) | {f(p['cpu_pct_per_call'])} | {f(r['cpu_pct_per_call'])} | |")
print(f"| resident memory per call (KiB) | {f(p['rss_kib_per_call'])} | {f(r['rss_kib_per_call'])} | {f(res.get('recorded_vs_plain_rss'))} |")
print(f"| recordings saved, disk (KiB) | {f(p['recordings'])}, {f(p['disk_kib'])} | {f(r['recordings'])}, {f(r['disk_kib'])} | |")
print(f"| calls | {ok(p['summary'])} | {ok(r['summary'])} | |")
print(f"| gateway warnings | {f(p['warnings'])} | {f(r['warnings'])} | |")
print(f"\nJSON: {out}")
PY
