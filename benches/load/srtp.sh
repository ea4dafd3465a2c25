#!/usr/bin/env bash
# SRTP load benchmark on loopback: the cost of encrypting and authenticating every packet
# (RFC 3711, AES_CM_128_HMAC_SHA1_80 with SDES keys) next to the same calls in plain RTP, in one
# run, bounded in calls and time.
#
#   benches/load/srtp.sh             # N=500 calls: about a minute and a half
#   N=2000 benches/load/srtp.sh
#
# Phases (release build, fresh gateways, the caller sends audio and a digit in both):
#   a. plain: N calls of benches/load/ivr-load.json in RTP/AVP.
#   b. srtp: the same N calls offered RTP/SAVP (`switchboard call --srtp required`), which the
#      gateway's default `[sip] srtp = "optional"` answers encrypted.
# CPU is utime+stime of the gateway over a steady window with all N calls up; memory is its
# VmRSS in the window minus before the first call, per call. Every call must hear audio (the
# caller decrypts and checks it). Output: a Markdown table on stdout and $OUT/srtp.json.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-500}
RAMP=${RAMP:-6}
WINDOW=${WINDOW:-6}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET_DIR/load}
GW_LOG=${GW_LOG:-warn}
CALL_SECS=18   # ivr-load.json: a digit after 2 s, then "one" ten times

command -v python3 >/dev/null || { echo "srtp.sh: python3 is required" >&2; exit 1; }
# shellcheck source=benches/load/lib.sh
. benches/load/lib.sh
need_fds srtp.sh $((2 * N + 512)) "$N calls"
start_scratch srtp

echo "building (release)..." >&2
cargo build --release --quiet --bin switchboard
mkdir -p "$work/bin"
cp "$TARGET_DIR/release/switchboard" "$work/bin/"
SB=$work/bin/switchboard

for phase in plain srtp; do
  extra=()
  [ "$phase" = srtp ] && extra=(--srtp required)
  echo "$phase: $N calls" >&2
  gateway_start "$phase" benches/load/ivr-load.json 20000 39999 $((N + 100))
  gw=$GW
  sb_call "$phase" "sip:ivr@127.0.0.1:$GW_PORT" "$N" "$RAMP" "$CALL_SECS" \
    --dtmf 1 --dtmf-after 2s --play benches/load/audio/menu.wav --require-audio "${extra[@]}" &
  cpid=$!; pids+=("$cpid")
  measure "$gw" $((RAMP + 1)) "$WINDOW" "gw-$phase"
  wait "$cpid" || true
  gateway_stop "$gw"
  grep -c "WARN\|ERROR" "$work/gw-$phase/log" > "$work/$phase.warnings" || echo 0 > "$work/$phase.warnings"
done

python3 - "$work" "$N" "$OUT/srtp.json" <<'PY'
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
            "warnings": read(f"{name}.warnings", int), "summary": sm}

p, s = phase("plain"), phase("srtp")
res = {"calls": n, "plain": p, "srtp": s}
if p["cpu_pct"] and s["cpu_pct"]:
    res["srtp_vs_plain_cpu"] = round(s["cpu_pct"] / p["cpu_pct"], 2)
if p["rss_kib_per_call"] and s["rss_kib_per_call"]:
    res["srtp_vs_plain_rss"] = round(s["rss_kib_per_call"] / p["rss_kib_per_call"], 2)
json.dump(res, open(out, "w"), indent=2)

def f(v, unit=""):
    return "–" if v is None else f"{v}{unit}"
def ok(sm):
    return "–" if not sm else f"{sm['completed']}/{n} completed, {sm['failed']} failed, audio on {sm['audio']['with']}"
print(f"## SRTP calls: {n} next to {n} plain RTP calls\n")
print("| measure | plain RTP call | SRTP call | SRTP / plain |")
print("|---|---|---|---|")
print(f"| CPU, all calls (% of one core) | {f(p['cpu_pct'])} | {f(s['cpu_pct'])} | {f(res.get('srtp_vs_plain_cpu'))} |")
print(f"| CPU per call (% of one core) | {f(p['cpu_pct_per_call'])} | {f(s['cpu_pct_per_call'])} | |")
print(f"| resident memory per call (KiB) | {f(p['rss_kib_per_call'])} | {f(s['rss_kib_per_call'])} | {f(res.get('srtp_vs_plain_rss'))} |")
print(f"| calls | {ok(p['summary'])} | {ok(s['summary'])} | |")
print(f"| gateway warnings | {f(p['warnings'])} | {f(s['warnings'])} | |")
print(f"\nJSON: {out}")
PY
