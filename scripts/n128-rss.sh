#!/usr/bin/env bash
# RSS of `fastdllm serve` on llada-tiny before, right after and 3 s after one n=128 completion
# (docs/RELIABILITY.md, "Memory after a large batch"). Run from the repository root.
set -u
BIN=${1:?usage: scripts/n128-rss.sh FASTDLLM_BINARY}
$BIN serve --model fixtures/llada-tiny --port 18777 --queue-capacity 256 --max-batch 128 > /tmp/n128.log 2>&1 &
PID=$!
for i in $(seq 1 120); do curl -sf localhost:18777/health >/dev/null && break; sleep 1; done
rss() { grep -E "VmRSS|VmHWM" /proc/$PID/status | tr -s ' ' | tr '\n' ' '; echo; }
echo "idle: $(rss)"
curl -s localhost:18777/v1/completions -H 'content-type: application/json' -d '{"prompt":"copy 3dbk......=","n":128,"max_tokens":32}' -o /tmp/n128.json -w "status %{http_code}\n"
echo "after n=128: $(rss)"
sleep 3
echo "3 s later: $(rss)"
python3 -c "import json;d=json.load(open('/tmp/n128.json'));print(len(d['choices']),'choices; first:',d['choices'][0]['text'][:20])"
kill $PID; wait $PID
