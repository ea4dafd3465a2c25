#!/usr/bin/env bash
# Bridged-call load benchmark on loopback: the cost of a second leg next to a plain call, in
# one run, bounded in calls and time.
#
#   benches/load/bridge.sh              # N=200 bridged calls: a few minutes
#   N=2500 benches/load/bridge.sh       # the target: 2,500 bridged calls (5,000 legs)
#
# Phases (release build, fresh gateways):
#   a. raw baseline: rtp-baseline with 2N sockets (a bridged call has two RTP legs), one
#      packet out and one in per socket per 20 ms.
#   b. plain: the gateway under `switchboard call`, N IVR calls (benches/load/ivr-load.json).
#   c. bridged: the same gateway runs benches/load/bridge-load.json (connect-call-to through a
#      trunk) towards a second gateway, the far end (benches/load/far-end.json: speaks ~25 s,
#      hangs up); `switchboard call` places N calls that send audio (menu.wav) and must hear
#      some. RTP flows both ways on both legs; the gateway relays it on its pacing workers.
#   d. bridged and transcoded: as c, with callers that offer only PCMA while the far end takes
#      PCMU, so every packet is transcoded both ways.
# CPU is utime+stime of the gateway under test over a steady window with all N calls up;
# memory is its VmRSS in the window minus before the first call, per call. The far end and the
# load generator are measured too but are not the gateway's cost.
# Output: a Markdown table on stdout and $OUT/bridge.json.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-200}
RAMP=${RAMP:-6}
# Bridged calls come up more slowly: the far end is a second gateway on the same two cores.
BRIDGE_RAMP=${BRIDGE_RAMP:-12}
WINDOW=${WINDOW:-6}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET_DIR/load}
GW_LOG=${GW_LOG:-warn}
PLAIN_SECS=18   # ivr-load.json: a digit after 2 s, then "one" ten times
BRIDGE_SECS=26  # far-end.json: "one" sixteen times, then BYE

for tool in python3; do
  command -v "$tool" >/dev/null || { echo "bridge.sh: $tool is required" >&2; exit 1; }
done
# shellcheck source=benches/load/lib.sh
. benches/load/lib.sh
need_fds bridge.sh $((4 * N + 512)) "$N bridged calls"
start_scratch bridge

echo "building (release)..." >&2
cargo build --release --quiet --bin switchboard --example rtp-baseline
mkdir -p "$work/bin"
cp "$TARGET_DIR/release/switchboard" "$TARGET_DIR/release/examples/rtp-baseline" "$work/bin/"
SB=$work/bin/switchboard
BASE=$work/bin/rtp-baseline

echo "a. raw baseline: $((2 * N)) sockets" >&2
"$BASE" $((2 * N)) $((WINDOW + 6)) > "$work/base.out" &
bpid=$!; pids+=("$bpid")
for _ in $(seq 50); do grep -q ready "$work/base.out" && break; sleep 0.1; done
measure "$bpid" 2 "$WINDOW" base
wait "$bpid" || true

echo "b. plain: $N IVR calls" >&2
gateway_start plain benches/load/ivr-load.json 20000 39999 $((N + 100))
plain=$GW
sb_call plain "sip:ivr@127.0.0.1:$GW_PORT" "$N" "$RAMP" "$PLAIN_SECS" \
  --dtmf 1 --dtmf-after 2s --require-audio &
cpid=$!; pids+=("$cpid")
measure "$plain" $((RAMP + 1)) "$WINDOW" gw-plain
wait "$cpid" || true
gateway_stop "$plain"

echo "c. bridged: $N calls, $((2 * N)) legs" >&2
gateway_start far benches/load/far-end.json 40000 49999 $((N + 100))
far=$GW; far_port=$GW_PORT
gateway_start bridge benches/load/bridge-load.json 20000 39999 $((N + 100)) "$(printf \
  '[[trunks]]\nname = "far"\nuri = "sip:127.0.0.1:%s"\ninbound_from = ["127.0.0.1/32"]\ndial_allow = ["*"]\nmax_outbound = %d\ncalls_per_second = 0\nkeepalive_secs = 0\n' \
  "$far_port" $((N + 100)))"
bridge=$GW
sb_call bridged "sip:ivr@127.0.0.1:$GW_PORT" "$N" "$BRIDGE_RAMP" "$BRIDGE_SECS" \
  --play benches/load/audio/menu.wav --require-audio &
cpid=$!; pids+=("$cpid")
measure "$far" $((BRIDGE_RAMP + 1)) "$WINDOW" far &
fm=$!
measure "$bridge" $((BRIDGE_RAMP + 1)) "$WINDOW" gw-bridge
wait "$fm" || true
wait "$cpid" || true
gateway_stop "$bridge"

echo "d. bridged and transcoded: $N calls, callers on PCMA, the far end on PCMU" >&2
gateway_start xbridge benches/load/bridge-load.json 20000 39999 $((N + 100)) "$(printf \
  '[[trunks]]\nname = "far"\nuri = "sip:127.0.0.1:%s"\ninbound_from = ["127.0.0.1/32"]\ndial_allow = ["*"]\nmax_outbound = %d\ncalls_per_second = 0\nkeepalive_secs = 0\n' \
  "$far_port" $((N + 100)))"
xbridge=$GW
sb_call transcoded "sip:ivr@127.0.0.1:$GW_PORT" "$N" "$BRIDGE_RAMP" "$BRIDGE_SECS" \
  --play benches/load/audio/menu.wav --require-audio --codecs pcma &
cpid=$!; pids+=("$cpid")
measure "$xbridge" $((BRIDGE_RAMP + 1)) "$WINDOW" gw-xbridge
wait "$cpid" || true
gateway_stop "$xbridge"
gateway_stop "$far"
# Calls the far end could not keep (its own store, on the same busy cores): their bridge ended
# at once, which the caller's summary does not show.
grep -c "could not be stored" "$work/gw-far/log" > "$work/far.lost" || echo 0 > "$work/far.lost"
grep -c "WARN\|ERROR" "$work/gw-bridge/log" > "$work/bridge.warnings" || echo 0 > "$work/bridge.warnings"

python3 - "$work" "$N" "$OUT/bridge.json" <<'PY'
import json, os, sys
work, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def read(name, conv=float):
    try:
        return conv(open(os.path.join(work, name)).read().strip())
    except Exception:
        return None

def summary(name):
    try:
        return json.load(open(os.path.join(work, name)))["summary"]
    except Exception:
        return None

def gw(name):
    cpu, rss, rss0 = read(f"gw-{name}.cpu"), read(f"gw-{name}.rss"), read(f"gw-{name}.rss0")
    return {"cpu_pct": cpu, "cpu_pct_per_call": None if cpu is None else round(cpu / n, 4),
            "rss_kib_per_call": None if rss is None or rss0 is None else round((rss - rss0) / n, 1)}

base = read("base.cpu")
res = {"calls": n, "baseline_2n_sockets": {"cpu_pct": base,
       "cpu_pct_per_call": None if base is None else round(base / n, 4)},
       "plain": gw("plain"), "bridged": gw("bridge"), "transcoded": gw("xbridge"),
       "far_end_cpu_pct": read("far.cpu"),
       "far_end_lost": read("far.lost", int), "gateway_warnings": read("bridge.warnings", int)}
res["plain"]["summary"] = summary("plain.json")
res["bridged"]["summary"] = summary("bridged.json")
res["transcoded"]["summary"] = summary("transcoded.json")
p, b, x = res["plain"], res["bridged"], res["transcoded"]
if p["cpu_pct"] and x["cpu_pct"]:
    res["transcoded_vs_plain_cpu"] = round(x["cpu_pct"] / p["cpu_pct"], 2)
if p["cpu_pct"] and b["cpu_pct"]:
    res["bridged_vs_plain_cpu"] = round(b["cpu_pct"] / p["cpu_pct"], 2)
if base and b["cpu_pct"]:
    res["bridged_vs_baseline_cpu"] = round(b["cpu_pct"] / base, 2)
if p["rss_kib_per_call"] and b["rss_kib_per_call"]:
    res["bridged_vs_plain_rss"] = round(b["rss_kib_per_call"] / p["rss_kib_per_call"], 2)
json.dump(res, open(out, "w"), indent=2)

def f(v, unit=""):
    return "–" if v is None else f"{v}{unit}"
def ok(sm):
    return "–" if not sm else f"{sm['completed']}/{n} completed, {sm['failed']} failed, audio on {sm['audio']['with']}"
print(f"## Bridged calls: {n} (two legs each) next to {n} plain calls\n")
print("| measure | raw UDP, 2N sockets | plain IVR call | bridged call | bridged / plain | bridged, transcoded | transcoded / plain |")
print("|---|---|---|---|---|---|---|")
print(f"| CPU, all calls (% of one core) | {f(base)} | {f(p['cpu_pct'])} | {f(b['cpu_pct'])} | {f(res.get('bridged_vs_plain_cpu'))} | {f(x['cpu_pct'])} | {f(res.get('transcoded_vs_plain_cpu'))} |")
print(f"| CPU per call (% of one core) | {f(res['baseline_2n_sockets']['cpu_pct_per_call'])} | {f(p['cpu_pct_per_call'])} | {f(b['cpu_pct_per_call'])} | | {f(x['cpu_pct_per_call'])} | |")
print(f"| resident memory per call (KiB) | – | {f(p['rss_kib_per_call'])} | {f(b['rss_kib_per_call'])} | {f(res.get('bridged_vs_plain_rss'))} | {f(x['rss_kib_per_call'])} | |")
print(f"| calls | – | {ok(p['summary'])} | {ok(b['summary'])} | | {ok(x['summary'])} | |")
print(f"\nBridged CPU is {f(res.get('bridged_vs_baseline_cpu'))}× the raw baseline of 2N sockets. "
      f"The far end (a second gateway) used {f(res['far_end_cpu_pct'])} % of one core and lost "
      f"{f(res['far_end_lost'])} calls to its own store; the gateway under test logged "
      f"{f(res['gateway_warnings'])} warnings.")
print(f"\nJSON: {out}")
PY
