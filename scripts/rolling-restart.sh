#!/usr/bin/env bash
# rolling-restart.sh: replicas of `fastdllm serve` behind HAProxy, restarted one by one under
# load; counts failed requests, streams that end without [DONE], and latency during the restarts
# (docs/DEPLOY.md, "Rolling restart behind HAProxy").
#
# Usage: scripts/rolling-restart.sh [options]
#   --bin PATH          fastdllm binary (default target/release/fastdllm, else target/debug/fastdllm)
#   --model DIR         model directory (default fixtures/llada-tiny, the bundled tiny LLaDA)
#   --replicas N        replicas on loopback (default 3)
#   --rounds N          full rolling restarts, one replica after the other (default 1)
#   --clients N         concurrent clients sending generations (default 8)
#   --light-clients N   concurrent clients sending GET /v1/models back to back (default 2)
#   --max-tokens N      max_tokens of every request (default 32)
#   --shutdown-delay S  the replicas' --shutdown-delay (default 2): longer than HAProxy's
#                       inter x fall below (500 ms x 2), so HAProxy marks a replica down from
#                       its /ready 503 before it stops accepting
#   --retries N         HAProxy's retries (default 3; 0 with --shutdown-delay 0 shows what the
#                       delay and the retries prevent: failed requests)
#   --balance ALGO      HAProxy's balance algorithm (default roundrobin: it sends a
#                       replica its share of requests whatever it has in flight; leastconn)
#   --warmup S          seconds of load before the first restart and after the last (default 2)
#   --out DIR           logs, HAProxy config and summary.json (default a fresh temporary folder)
#
# Sequence per replica: SIGTERM; wait for its exit (status 0 required); start it again on the
# same port; wait for its /ready 200 and for HAProxy to mark it UP (stats CSV); next replica.
# Exit status: 0 when every request succeeded and every stream ended with [DONE] (the load
# generator's verdict, scripts/rolling_restart_load.py), 1 otherwise, 2 on a setup error
# (HAProxy or python3 missing, a replica that does not start).
# Needs: haproxy (Debian: apt-get install haproxy), python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "rolling-restart.sh: $1" >&2; exit "${2:-2}"; }

bin="" model=fixtures/llada-tiny replicas=3 rounds=1 clients=8 light=2 max_tokens=32 delay=2 retries=3 balance=roundrobin warmup=2 out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --replicas) replicas=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --light-clients) light=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --shutdown-delay) delay=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --retries) retries=$2; shift 2 ;;
    --balance) balance=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
if [ -z "$bin" ]; then
  for b in target/release/fastdllm target/debug/fastdllm; do [ -x "$b" ] && { bin=$b; break; }; done
  [ -n "$bin" ] || die "no fastdllm binary: build one (cargo build -p fastdllm-cli) or pass --bin"
fi
[ -x "$bin" ] || die "--bin $bin: not an executable"
[ -d "$model" ] || die "--model $model: not a directory"
for tool in haproxy python3 curl; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install $tool)"
done
[ -n "$out" ] || out=$(mktemp -d /tmp/rolling-restart.XXXXXX)
mkdir -p "$out"

# Free loopback ports: replicas, the balancer, its stats page.
read -r -a ports <<<"$(python3 - "$replicas" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]) + 2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)"
lb_port=${ports[$replicas]} stats_port=${ports[$((replicas + 1))]}

declare -a pids
haproxy_pid="" load_pid=""
cleanup() {
  for p in "${pids[@]}" $haproxy_pid $load_pid; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

start_replica() { # index
  local i=$1
  "$bin" serve --model "$model" --host 127.0.0.1 --port "${ports[$i]}" \
    --shutdown-delay "$delay" --drain-timeout 60 >>"$out/replica-$i.log" 2>&1 &
  pids[$i]=$!
}

# Waits (guard: 120 s) for replica i's /ready to answer 200.
wait_ready() {
  local i=$1 t0=$SECONDS
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${ports[$i]}/ready")" = 200 ]; do
    kill -0 "${pids[$i]}" 2>/dev/null || die "replica $i exited at start; see $out/replica-$i.log"
    [ $((SECONDS - t0)) -lt 120 ] || die "replica $i not ready after 120 s"
    sleep 0.1
  done
}

# HAProxy's view of server r<i>: UP, DOWN, ... (the stats CSV's status column).
lb_status() {
  curl -s "http://127.0.0.1:$stats_port/stats;csv" | awk -F, -v s="r$1" '$1=="fastdllm" && $2==s {print $18}'
}

wait_lb_up() {
  local i=$1 t0=$SECONDS
  until [ "$(lb_status "$i")" = UP ]; do
    [ $((SECONDS - t0)) -lt 120 ] || die "HAProxy did not mark replica $i UP after 120 s"
    sleep 0.1
  done
}

{
  cat <<EOF
global
  maxconn 1024
  log stdout format raw local0

defaults
  mode http
  log global
  # status, retries (+ = redispatched), server, total time, request line
  log-format "%ST %rc %s %Tt %{+Q}r"
  timeout connect 2s
  timeout client 300s
  timeout server 300s
  timeout http-request 10s
  # A request that reaches a replica after it stopped accepting, or whose connection it closed
  # unanswered, is sent again, to another replica (redispatch). No 'on-marked-down
  # shutdown-sessions': that would cut the streams a draining replica is finishing.
  retries $retries
  option redispatch 1
  retry-on conn-failure empty-response

frontend api
  bind 127.0.0.1:$lb_port
  default_backend fastdllm

backend fastdllm
  balance $balance
  option httpchk GET /ready
  http-check expect status 200
  default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2
EOF
  for ((i = 0; i < replicas; i++)); do echo "  server r$i 127.0.0.1:${ports[$i]} check"; done
  cat <<EOF

listen stats
  bind 127.0.0.1:$stats_port
  no log
  stats enable
  stats uri /stats
EOF
} >"$out/haproxy.cfg"
haproxy -c -q -f "$out/haproxy.cfg" || die "HAProxy refused $out/haproxy.cfg"

for ((i = 0; i < replicas; i++)); do start_replica "$i"; done
for ((i = 0; i < replicas; i++)); do wait_ready "$i"; done
haproxy -db -f "$out/haproxy.cfg" >"$out/haproxy.log" 2>&1 &
haproxy_pid=$!
for ((i = 0; i < replicas; i++)); do wait_lb_up "$i"; done
echo "replicas on ports ${ports[*]:0:$replicas}, HAProxy on $lb_port; logs in $out"

: >"$out/windows.txt"
rm -f "$out/stop"
python3 scripts/rolling_restart_load.py --url "http://127.0.0.1:$lb_port" --clients "$clients" \
  --light-clients "$light" --max-tokens "$max_tokens" --stop-file "$out/stop" --windows "$out/windows.txt" \
  --out "$out/summary.json" --min-requests 1 >"$out/load.log" 2>&1 &
load_pid=$!
sleep "$warmup"

restarts=0
for ((r = 0; r < rounds; r++)); do
  for ((i = 0; i < replicas; i++)); do
    t0=$(date +%s.%N)
    kill -TERM "${pids[$i]}"
    status=0
    wait "${pids[$i]}" || status=$?
    [ "$status" = 0 ] || die "replica $i exited with status $status after SIGTERM; see $out/replica-$i.log" 1
    t_exit=$(date +%s.%N)
    start_replica "$i"
    wait_ready "$i"
    wait_lb_up "$i"
    t1=$(date +%s.%N)
    echo "$t0 $t1" >>"$out/windows.txt"
    restarts=$((restarts + 1))
    awk -v i="$i" -v a="$t0" -v e="$t_exit" -v b="$t1" 'BEGIN {
      printf "restarted replica %d: exited %.1f s after SIGTERM, back in HAProxy %.1f s after SIGTERM\n", i, e - a, b - a }'
  done
done

sleep "$warmup"
touch "$out/stop"
status=0
wait "$load_pid" || status=$?
load_pid=""
cat "$out/load.log"
# HAProxy's own account: statuses it answered and requests it retried (%rc > 0).
awk '$1 ~ /^[0-9]+$/ {st[$1]++; if ($2 != "0") retried++}
     END {printf "haproxy log: statuses"; for (s in st) printf " %s x %d", s, st[s];
          printf "; retried %d\n", retried}' "$out/haproxy.log"
echo "rolling restarts: $restarts replica restarts in $rounds round(s) of $replicas replicas"
if [ "$status" = 0 ]; then
  echo "rolling-restart: PASS (0 failed requests, 0 broken streams)"
else
  echo "rolling-restart: FAIL (see $out/summary.json)"
fi
exit "$status"
