#!/usr/bin/env python3
"""The engine's early finish, measured against the reference's whole canvas.

Starts `fastdllm serve` twice on the bundled tiny LLaDA (fixtures/llada-tiny): once with the
default `--finish answer` (a row leaves the batch once its answer is final) and once with
`--finish canvas` (every block decoded, as the reference). For the same prompt and a short
answer it sends completions with `max_tokens` 16 / 64 / 256 / 480 and reports, per request, the
wall time, the forwards the server made (`fastdllm_forwards_total` of GET /metrics, before and
after) and the answer; then one streamed request per server, timing its last content chunk and
its `data: [DONE]`. Sides alternate (answer, canvas, answer, canvas, ...) and each figure is the
median of --repeats runs.

Usage: python3 scripts/early-finish.py [--bin target/release/fastdllm] [--repeats 3]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request

PROMPT = "copy 3dbk......="


def metric(url, name):
    with urllib.request.urlopen(url + "/metrics") as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def settled_forwards(url):
    """`fastdllm_forwards_total` once the engine is idle: the worker adds a round's forwards
    when the round ends, which can be after the answer was sent (the row left mid-round)."""
    last = None
    while True:
        now = metric(url, "fastdllm_forwards_total")
        if now == last and metric(url, "fastdllm_running_rows") == 0:
            return now
        last = now
        time.sleep(0.1)


def post(url, body):
    req = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def stream(url, body):
    """Seconds to the last content chunk and to `[DONE]`."""
    req = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps({**body, "stream": True}).encode(),
        headers={"content-type": "application/json"},
    )
    start = time.perf_counter()
    last_content = None
    with urllib.request.urlopen(req) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return last_content, time.perf_counter() - start
            chunk = json.loads(data)
            if any(c.get("text") for c in chunk.get("choices", [])):
                last_content = time.perf_counter() - start
    return last_content, None


def start_server(binary, finish, port):
    p = subprocess.Popen(
        [binary, "serve", "--port", str(port), "--finish", finish],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/health")
            return p, url
        except Exception:
            time.sleep(0.1)
    p.kill()
    sys.exit(f"fastdllm serve --finish {finish} did not come up")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/fastdllm")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    servers = {f: start_server(a.bin, f, port) for f, port in (("answer", 18431), ("canvas", 18432))}
    try:
        rows = []
        for max_tokens in (16, 64, 256, 480):
            body = {"prompt": PROMPT, "max_tokens": max_tokens, "seed": 0}
            seen = {f: {"s": [], "forwards": [], "text": None} for f in servers}
            for _ in range(a.repeats):
                for f, (_, url) in servers.items():
                    before = settled_forwards(url)
                    t = time.perf_counter()
                    v = post(url, body)
                    seen[f]["s"].append(time.perf_counter() - t)
                    seen[f]["forwards"].append(settled_forwards(url) - before)
                    seen[f]["text"] = (v["choices"][0]["text"], v["usage"]["completion_tokens"])
            rows.append((max_tokens, seen))
        print("| max_tokens | answer (tokens) | forwards: answer / canvas | wall s: answer / canvas | canvas / answer |")
        print("|---:|---|---|---|---:|")
        for max_tokens, seen in rows:
            sa, sc = statistics.median(seen["answer"]["s"]), statistics.median(seen["canvas"]["s"])
            fa, fc = statistics.median(seen["answer"]["forwards"]), statistics.median(seen["canvas"]["forwards"])
            text, n = seen["answer"]["text"]
            assert seen["canvas"]["text"] == seen["answer"]["text"], seen
            print(f"| {max_tokens} | {text!r} ({n}) | {fa:.0f} / {fc:.0f} | {sa:.3f} / {sc:.3f} | {sc / sa:.1f}x |")
        print()
        print("| server | max_tokens | last content s | [DONE] s | gap s |")
        print("|---|---:|---:|---:|---:|")
        for f, (_, url) in servers.items():
            runs = [stream(url, {"prompt": PROMPT, "max_tokens": 480, "seed": 0}) for _ in range(a.repeats)]
            content = statistics.median(r[0] for r in runs)
            done = statistics.median(r[1] for r in runs)
            print(f"| --finish {f} | 480 | {content:.3f} | {done:.3f} | {done - content:.3f} |")
    finally:
        for p, _ in servers.values():
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
