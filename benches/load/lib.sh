# Helpers shared by the load scripts (sourced; bash). Callers call start_scratch (it makes
# $work, a scratch directory, and the array pids, processes to clean up), then set $SB (the
# switchboard binary) and $GW_LOG.

# need_fds SCRIPT N WHAT: raise the soft limit on open files to the hard one; stop unless N fit.
need_fds() {
  local hard
  hard=$(ulimit -Hn)
  ulimit -n "$hard" 2>/dev/null || true
  if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$2" ]; then
    echo "$1: ulimit -n is $(ulimit -n), below the $2 that $3 need" >&2
    exit 1
  fi
}

# start_scratch [LOG_PREFIX]: $work and pids, removed (processes killed) on exit; with a
# prefix, each gateway's log is kept as $OUT/PREFIX-gw-NAME.log for a look at any failure.
start_scratch() {
  LOG_PREFIX=${1:-}
  mkdir -p "$OUT"
  work=$(mktemp -d)
  pids=()
  trap cleanup EXIT
}

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$LOG_PREFIX" ]; then
    for d in "$work"/gw-*; do
      [ -f "$d/log" ] && cp "$d/log" "$OUT/$LOG_PREFIX-$(basename "$d").log"
    done
  fi
  rm -rf "$work"
}

TICK=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# measure PID DELAY WINDOW NAME: CPU (% of one core) and RSS of PID over the window, into
# $work/NAME.cpu and $work/NAME.rss.
measure() {
  local pid=$1 delay=$2 window=$3 name=$4 t0 t1 c0 c1
  sleep "$delay"
  c0=$(cpu_ticks "$pid"); t0=$(date +%s.%N)
  sleep "$window"
  rss_kb "$pid" > "$work/$name.rss"
  c1=$(cpu_ticks "$pid"); t1=$(date +%s.%N)
  # A process that ended inside the window gives no figure rather than a wrong one.
  if [ -e "/proc/$pid/stat" ]; then
    python3 -c "print(round(100 * ($c1 - $c0) / $TICK / ($t1 - $t0), 2))" > "$work/$name.cpu"
  else
    echo "$name ended inside the measurement window" >&2
  fi
}

# gateway_start NAME FLOW PORT_MIN PORT_MAX MAX_CALLS [EXTRA_TOML]: a release gateway on
# loopback (SIP and HTTP on ephemeral ports) running FLOW; sets GW (its pid) and GW_PORT, and
# records its RSS before the first call in $work/gw-NAME.rss0.
gateway_start() {
  local name=$1 flow=$2 lo=$3 hi=$4 max=$5 extra=${6:-} dir=$work/gw-$1
  mkdir -p "$dir"
  printf '[sip]\nmax_calls = %d\n[media]\nrtp_port_min = %d\nrtp_port_max = %d\n%s\n' \
    "$max" "$lo" "$hi" "$extra" > "$dir/config.toml"
  RUST_LOG=$GW_LOG "$SB" serve --config "$dir/config.toml" --sip-bind 127.0.0.1:0 \
    --http-bind 127.0.0.1:0 --data-dir "$dir" --flow "$flow" > "$dir/stdout" 2> "$dir/log" &
  GW=$!
  pids+=("$GW")
  for _ in $(seq 100); do
    grep -q 'switchboard ready' "$dir/stdout" 2>/dev/null && break
    sleep 0.1
  done
  GW_PORT=$(sed -n 's/.*sip_udp=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir/stdout")
  [ -n "$GW_PORT" ] || { echo "gateway $name did not start:" >&2; cat "$dir/log" >&2; exit 1; }
  sleep 1
  rss_kb "$GW" > "$work/gw-$name.rss0"
}

gateway_stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# rate_for CALLS RAMP: new calls per second to bring CALLS up in RAMP seconds.
rate_for() { python3 -c "print(max(1.0, round($1 / $2, 1)))"; }

# sb_call NAME TARGET CALLS RAMP SECS [extra args]: a `switchboard call` run (bounded by its
# --max-duration); its pid goes to $work/NAME.pid, its summary line to $work/NAME.json.
sb_call() {
  local name=$1 target=$2 calls=$3 ramp=$4 secs=$5 p; shift 5
  "$SB" call "$target" \
    --calls "$calls" --concurrency "$calls" --rate "$(rate_for "$calls" "$ramp")" \
    --max-duration "$((ramp + secs + 60))s" "$@" \
    > "$work/$name.out" 2> "$work/$name.err" &
  p=$!
  echo "$p" > "$work/$name.pid"
  wait "$p" || true
  tail -n 1 "$work/$name.out" > "$work/$name.json"
}
