#!/usr/bin/env bash
# Build the AFL++ fuzz targets (cargo-afl, stable toolchain) and run them one at a time.
#
#   fuzz/run.sh [TARGET|all] [EXECS]   each target until EXECS executions (default 10,000,000)
#                                      or FUZZ_SECS seconds (default 3600), whichever comes first
#   fuzz/run.sh --smoke                each target FUZZ_SMOKE_EXECS executions (default 100,000) from a
#                                      fixed random seed, for CI: the same inputs on every run, so a
#                                      smoke that passed here passes in CI (at most 120 s a target)
#
# Prints per target: executions, wall time, exec/s, crashes, hangs (from AFL's fuzzer_stats).
# Exits 1 when any target crashed (its inputs are in fuzz/out/TARGET/default/crashes/).
# The fuzzers run under SCHED_IDLE (chrt -i 0), so they only take CPU nothing else wants.
# Requires cargo-afl with AFL++ built: `cargo install --locked cargo-afl && cargo afl config --build`.
set -euo pipefail
cd "$(dirname "$0")"

TARGETS=(sip_parse sip_core sdp rtp rtcp srtp dtmf twiml flow liquid smpp webhook)
# Builds share one lock with everything else that runs cargo on this machine.
LOCK=${CARGO_BUILD_LOCK:-/tmp/cargo-build.lock}

smoke=0
if [ "${1:-}" = "--smoke" ]; then
  smoke=1
  shift
fi
which=${1:-all}
execs=${2:-10000000}
seed=()
if [ "$smoke" = 1 ]; then
  secs=${FUZZ_SMOKE_SECS:-120}
  execs=${FUZZ_SMOKE_EXECS:-100000}
  seed=(-s 1)
else
  secs=${FUZZ_SECS:-3600}
fi

if [ "$which" = all ]; then
  run=("${TARGETS[@]}")
elif [[ " ${TARGETS[*]} " == *" $which "* ]]; then
  run=("$which")
else
  echo "unknown target $which (one of: ${TARGETS[*]}, all)" >&2
  exit 2
fi

echo "building fuzz targets (cargo afl build --release)"
flock "$LOCK" cargo afl build --release --quiet

export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1
# A fresh run each time: the figures are for this run alone.
export AFL_AUTORESUME=0

stat() { # stat FILE KEY
  sed -n "s/^$2 *: *//p" "$1" | head -n1
}

failed=()
printf '%-10s %12s %8s %10s %8s %6s\n' target execs secs exec/s crashes hangs
for t in "${run[@]}"; do
  out=out/$t
  rm -rf "$out"
  mkdir -p out
  dict=()
  if [ -f "dict/$t.dict" ]; then
    dict=(-x "dict/$t.dict")
  fi
  # -t 1000: an input that takes over a second is a hang (Liquid must render quickly).
  if ! chrt -i 0 cargo afl fuzz -i "corpus/$t" -o "$out" -t 1000 -E "$execs" -V "$secs" \
    "${seed[@]}" "${dict[@]}" -- "target/release/$t" >"out/$t.log" 2>&1; then
    echo "afl-fuzz failed for $t; the end of out/$t.log:" >&2
    tail -n 20 "out/$t.log" >&2
    failed+=("$t")
    continue
  fi
  s=$out/default/fuzzer_stats
  e=$(stat "$s" execs_done)
  start=$(stat "$s" start_time)
  last=$(stat "$s" last_update)
  wall=$((last - start))
  rate=$(awk -v e="$e" -v w="$wall" 'BEGIN { printf "%.0f", (w > 0 ? e / w : e) }')
  crashes=$(stat "$s" saved_crashes)
  hangs=$(stat "$s" saved_hangs)
  printf '%-10s %12s %8s %10s %8s %6s\n' "$t" "$e" "$wall" "$rate" "$crashes" "$hangs"
  if [ "${crashes:-0}" != 0 ]; then
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing failed (crash or afl-fuzz error): ${failed[*]}; inputs in fuzz/out/<target>/default/crashes/" >&2
  exit 1
fi
