#!/usr/bin/env bash
# Load benchmark of the gateway on loopback, in one go, bounded in calls and time.
#
#   benches/load/run.sh            # N=200 concurrent calls: a few minutes
#   N=5000 benches/load/run.sh     # the full target
#   N=1000 benches/load/run.sh 4000   # stepped run up to a cap of 4000 calls
#
# Phases (each against a fresh gateway, `switchboard serve` release build, flow
# benches/load/ivr-load.json: spoken menu, wait for one digit, branch, speak again, hang up):
#   a. raw baseline: rtp-baseline (benches/load/baseline.rs) with N sockets, one 172-byte packet
#      out and one in per socket per 20 ms: the physical floor of RTP on this machine.
#   b. the gateway under SIPp (tests/sipp/press-1-wait-for-bye.xml), N concurrent calls.
#   c. the gateway under `switchboard call`, N concurrent calls (RTP both ways, DTMF '1').
#   d. setup rate: N short calls offered at up to 1000 calls/s.
#   e. stepped run with `switchboard call`: CAP, CAP/2, ... from the smallest step up, until a
#      step has a failure or a call without audio.
# CPU is utime+stime from /proc/<pid>/stat over a steady-state window when all N calls are up;
# memory is VmRSS from /proc/<pid>/status (in the window minus before the first call) / N;
# pacing is the inter-packet interval of one RTP port from a tshark capture on lo.
# Output: a Markdown table on stdout and $OUT/results.json. Loopback only; every process is
# started with a time limit and the script cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-200}
CAP=${1:-${CAP:-$N}}
RAMP=${RAMP:-6}          # seconds to bring N calls up
WINDOW=${WINDOW:-6}      # steady-state measurement window (seconds)
SCENARIOS=${SCENARIOS:-tests/sipp}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET_DIR/load}
GW_LOG=${GW_LOG:-warn}   # gateway log level during the runs
FLOW=benches/load/ivr-load.json
# Each call of the flow lasts about 2 s (digit) + 10 × 1.57 s ("one", looped) ≈ 18 s, so
# every call started during the ramp is still up through the window.
CALL_SECS=18

for tool in sipp tshark python3; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is required" >&2; exit 1; }
done
[ -f "$SCENARIOS/press-1-wait-for-bye.xml" ] || { echo "run.sh: no $SCENARIOS/press-1-wait-for-bye.xml (set SCENARIOS=)" >&2; exit 1; }

# shellcheck source=benches/load/lib.sh
. benches/load/lib.sh
# File descriptors: one RTP socket per call in the gateway and in the load generator.
need_fds run.sh $((CAP + 512)) "$CAP calls"
start_scratch

echo "building (release)..." >&2
cargo build --release --quiet --bin switchboard --example rtp-baseline
# Private copies: a later build into the same target directory cannot swap them mid-run.
mkdir -p "$work/bin"
cp "$TARGET_DIR/release/switchboard" "$TARGET_DIR/release/examples/rtp-baseline" "$work/bin/"
SB=$work/bin/switchboard
BASE=$work/bin/rtp-baseline

# capture PORT SECONDS NAME: inter-packet intervals (ms) of packets sent from PORT on lo.
capture() {
  timeout $(($2 + 5)) tshark -i lo -q -f "udp src port $1" -a "duration:$2" \
    -T fields -e frame.time_relative > "$work/$3.pcap.txt" 2>/dev/null || true
}

start_gateway() { gateway_start "$1" "$FLOW" 20000 39999 $((CAP * 2 + 100)); }
stop_gateway() { gateway_stop "$GW"; }

echo "a. raw baseline: $N sockets" >&2
"$BASE" "$N" $((WINDOW + 6)) > "$work/base.out" &
bpid=$!; pids+=("$bpid")
for _ in $(seq 50); do grep -q ready "$work/base.out" && break; sleep 0.1; done
port=$(sed -n 's/.*first_port=\([0-9]*\).*/\1/p' "$work/base.out")
capture "$port" "$WINDOW" base & cap=$!
measure "$bpid" 2 "$WINDOW" base
wait "$cap" || true
wait "$bpid" || true

echo "b. gateway + SIPp: $N concurrent calls" >&2
start_gateway sipp
sipp_rate=$(rate_for "$N" "$RAMP")
(cd "$work" && timeout $((RAMP + CALL_SECS + 90)) sipp -sf "$OLDPWD/$SCENARIOS/press-1-wait-for-bye.xml" \
   -s ivr "127.0.0.1:$GW_PORT" -m "$N" -l "$N" -r "$sipp_rate" -mp 16000 -nostdin \
   -timeout $((RAMP + CALL_SECS + 60)) -timeout_error -trace_screen -screen_file "$work/sipp.screen" \
   > /dev/null 2>&1; echo $? > "$work/sipp.rc") &
spid=$!; pids+=("$spid")
measure "$GW" $((RAMP + 1)) "$WINDOW" gw-sipp
wait "$spid" || true
stop_gateway

echo "c. gateway + switchboard call: $N concurrent calls" >&2
start_gateway call
sb_call call "sip:ivr@127.0.0.1:$GW_PORT" "$N" "$RAMP" "$CALL_SECS" --dtmf 1 --dtmf-after 2s --require-audio &
cpid=$!; pids+=("$cpid")
sleep 1
lg=$(cat "$work/call.pid" 2>/dev/null || echo "")
(sleep "$RAMP"; capture 20000 "$WINDOW" gw) &
cap=$!
if [ -n "$lg" ]; then
  measure "$lg" "$RAMP" "$WINDOW" loadgen &
  lgm=$!
fi
measure "$GW" "$RAMP" "$WINDOW" gw-call
[ -n "$lg" ] && wait "$lgm"
wait "$cap" || true
wait "$cpid" || true
stop_gateway

echo "d. setup rate: $N calls offered at up to 1000/s" >&2
start_gateway setup
timeout 120 "$SB" call "sip:ivr@127.0.0.1:$GW_PORT" --calls "$N" --concurrency "$N" --rate 1000 \
  --hangup-after 1s --max-duration 90s > "$work/setup.out" 2> "$work/setup.err" || true
tail -n 1 "$work/setup.out" > "$work/setup.json"
stop_gateway

steps=()
s=$CAP
while [ "$s" -ge 50 ] && [ "${#steps[@]}" -lt 8 ]; do steps=("$s" "${steps[@]}"); s=$((s / 2)); done
[ "${#steps[@]}" -gt 0 ] || steps=("$CAP")
echo "e. stepped run: ${steps[*]} calls" >&2
: > "$work/steps.txt"
for s in "${steps[@]}"; do
  start_gateway "step$s"
  sb_call "step$s" "sip:ivr@127.0.0.1:$GW_PORT" "$s" "$RAMP" "$CALL_SECS" --dtmf 1 --dtmf-after 2s --require-audio
  stop_gateway
  echo "$s $work/step$s.json" >> "$work/steps.txt"
  ok=$(python3 -c "import json,sys; s=json.load(open('$work/step$s.json'))['summary']; print(int(s['failed']==0 and s['completed']==$s and s['audio']['without']==0))" 2>/dev/null || echo 0)
  echo "   $s calls: $([ "$ok" = 1 ] && echo ok || echo FAILED)" >&2
  [ "$ok" = 1 ] || break
done

python3 - "$work" "$N" "$OUT/results.json" <<'PY'
import json, os, statistics, sys
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

def pacing(name):
    try:
        t = [float(x) for x in open(os.path.join(work, name)).read().split()]
    except Exception:
        return None
    d = sorted((b - a) * 1000 for a, b in zip(t, t[1:]))
    if len(d) < 10:
        return None
    q = lambda p: round(d[min(len(d) - 1, int(p / 100 * len(d)))], 2)
    return {"packets": len(t), "p50_ms": q(50), "p99_ms": q(99), "max_ms": round(d[-1], 2)}

def per_call(cpu):
    return None if cpu is None else round(cpu / n, 4)

base_cpu = read("base.cpu")
res = {"calls": n, "baseline": {"cpu_pct": base_cpu, "cpu_pct_per_call": per_call(base_cpu),
                                 "pacing": pacing("base.pcap.txt")}}
for key, name in (("gateway_sipp", "gw-sipp"), ("gateway_call", "gw-call")):
    cpu, rss = read(name + ".cpu"), read(name + ".rss")
    rss0 = read("gw-%s.rss0" % name.split("-")[1])
    r = {"cpu_pct": cpu, "cpu_pct_per_call": per_call(cpu),
         "rss_kib_per_call": None if rss is None or rss0 is None else round((rss - rss0) / n, 1)}
    if cpu is not None and base_cpu:
        r["cpu_vs_baseline"] = round(cpu / base_cpu, 2)
    res[key] = r
res["gateway_sipp"]["sipp_exit"] = read("sipp.rc", int)
res["gateway_call"]["pacing"] = pacing("gw.pcap.txt")
res["gateway_call"]["summary"] = summary("call.json")
lg = read("loadgen.cpu")
res["load_generator"] = {"cpu_pct": lg, "cpu_pct_per_call": per_call(lg)}
res["setup"] = summary("setup.json")
steps, best = [], 0
for line in open(os.path.join(work, "steps.txt")):
    s, path = line.split()
    sm = summary(os.path.basename(path))
    ok = bool(sm and sm["failed"] == 0 and sm["completed"] == int(s) and sm["audio"]["without"] == 0)
    steps.append({"calls": int(s), "ok": ok, "summary": sm})
    if ok:
        best = int(s)
res["steps"] = steps
res["max_concurrent_ok"] = best
json.dump(res, open(out, "w"), indent=2)

def f(v, unit=""):
    return "–" if v is None else f"{v}{unit}"
def ratio(v):
    return "" if v is None or not base_cpu else f" ({round(v / base_cpu, 2)}× baseline)"
def pct(sm, key):
    p = sm and sm.get(key)
    return "–" if not p else f"{p['p50']} / {p['p99']} / {p['max']}"
def pace(p):
    return "–" if not p else f"{p['p50_ms']} / {p['p99_ms']} / {p['max_ms']}"
g1, g2, call = res["gateway_sipp"], res["gateway_call"], res["gateway_call"]["summary"]
print(f"## Load run: {n} concurrent calls\n")
print("| measure | raw UDP baseline | gateway + SIPp | gateway + switchboard call |")
print("|---|---|---|---|")
print(f"| CPU, all calls (% of one core) | {f(base_cpu)} | {f(g1['cpu_pct'])}{ratio(g1['cpu_pct'])} | {f(g2['cpu_pct'])}{ratio(g2['cpu_pct'])} |")
print(f"| CPU per active call (% of one core) | {f(res['baseline']['cpu_pct_per_call'])} | {f(g1['cpu_pct_per_call'])} | {f(g2['cpu_pct_per_call'])} |")
print(f"| resident memory per call (KiB) | – | {f(g1['rss_kib_per_call'])} | {f(g2['rss_kib_per_call'])} |")
print(f"| outbound RTP interval p50 / p99 / max (ms) | {pace(res['baseline']['pacing'])} | – | {pace(g2['pacing'])} |")
print(f"| calls ok | – | SIPp exit {f(g1['sipp_exit'])} | {f(call and call['completed'])}/{n}, audio on {f(call and call['audio']['with'])}, max {f(call and call['max_concurrent'])} up at once |")
print(f"| setup INVITE→200 p50 / p99 / max (ms) | – | – | {pct(call, 'setup_ms')} |")
print(f"| DTMF→prompt p50 / p99 / max (ms) | – | – | {pct(call, 'dtmf_to_prompt_ms')} |")
print(f"\nLoad generator (`switchboard call`) CPU: {f(lg)} % of one core ({f(res['load_generator']['cpu_pct_per_call'])} % per call).")
st = res["setup"]
if st:
    print(f"Setup rate: {f(st.get('setup_rate_cps'))} answered calls/s ({st['completed']}/{st['attempted']} completed; setup p50 / p99 / max {pct(st, 'setup_ms')} ms).")
print("Stepped run: " + ", ".join(f"{s['calls']} {'ok' if s['ok'] else 'FAILED'}" for s in steps)
      + f"; max concurrent calls with 0 failures and audio on every call: {best}.")
print(f"\nJSON: {out}")
PY
