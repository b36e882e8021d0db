#!/usr/bin/env python3
"""Closed-loop load for scripts/rolling-restart.sh (docs/DEPLOY.md, "Rolling restart").

`--clients` threads send requests through the load balancer at `--url` until the file
`--stop-file` exists: completions and chat completions, half of them streamed
(`"stream": true`), one new connection per request; `--light-clients` threads send
`GET /v1/models` back to back (many requests per second: they find any moment at which the
balancer routes to a replica that no longer accepts). Every request is judged:

- ok: status 200 and a JSON body with `choices` (`data` for the model list), or, streamed, server-sent events whose last
  `data:` line is `data: [DONE]` and none of which carries an `error`;
- failed: any other status, a connection error or a timeout (`--timeout` seconds, a hang guard);
- broken stream: a 200 stream that ended without `data: [DONE]` or carried an `error` event
  (counted apart from the failures).

Each request's start, end and verdict are kept; requests that overlap a restart window (lines
`START END` of seconds since the epoch in `--windows`, written by the script) are "during a
restart"; latency is given for the generations and, apart, for the light requests. Prints a summary and writes it as JSON to `--out`; exits 1 if any request failed or
any stream broke, or if fewer than `--min-requests` requests were sent.

Standard library only (Python 3.8+).
"""

import argparse
import os
import http.client
import json
import sys
import threading
import time
import urllib.parse

PROMPTS = ["copy 3dbk......=", "4+9=", "inc 370230....=", "copy xq7......=", "7+5=", "inc 19....="]


def light_request(host, port, timeout):
    """`GET /v1/models`: answered at once, so these clients send many requests per second and
    find any moment at which the balancer routes to a replica that no longer accepts."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        data = resp.read().decode("utf-8", "replace")
        if resp.status != 200 or '"data"' not in data:
            return "models", "failed", f"status {resp.status}: {data[:200]}"
        return "models", "ok", ""
    except (OSError, http.client.HTTPException) as e:
        return "models", "failed", f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def one_request(host, port, i, max_tokens, timeout):
    """Sends generation request `i` (its kind rotates); returns (kind, verdict, detail)."""
    chat = i % 4 >= 2
    stream = i % 2 == 1
    prompt = PROMPTS[i % len(PROMPTS)]
    if chat:
        path = "/v1/chat/completions"
        body = {"messages": [{"role": "user", "content": prompt}]}
    else:
        path = "/v1/completions"
        body = {"prompt": prompt}
    body.update({"max_tokens": max_tokens, "stream": stream})
    kind = ("chat" if chat else "completion") + ("-stream" if stream else "")
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        resp = conn.getresponse()
        data = resp.read().decode("utf-8", "replace")
        if resp.status != 200:
            return kind, "failed", f"status {resp.status}: {data[:200]}"
        if not stream:
            obj = json.loads(data)
            if not obj.get("choices"):
                return kind, "failed", f"no choices: {data[:200]}"
            return kind, "ok", ""
        events = [l[6:] for l in data.splitlines() if l.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            return kind, "broken", f"{len(events)} events, last {events[-1:]!r}"
        if any('"error"' in e for e in events):
            return kind, "broken", "an error event"
        return kind, "ok", ""
    except (OSError, http.client.HTTPException, ValueError) as e:
        return kind, "failed", f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--clients", type=int, default=8, help="clients sending generations")
    ap.add_argument("--light-clients", type=int, default=2, help="clients sending GET /v1/models")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=300.0, help="hang guard per request (s)")
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--windows", required=True, help="restart windows: lines 'START END' (epoch s)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--min-requests", type=int, default=1)
    a = ap.parse_args()
    u = urllib.parse.urlsplit(a.url)
    if u.scheme != "http" or not u.hostname or not u.port:
        sys.exit(f"error: --url {a.url!r}: want http://HOST:PORT")

    records = []
    lock = threading.Lock()
    counter = iter(range(10**12))

    def client(light):
        while not os.path.exists(a.stop_file):
            with lock:
                i = next(counter)
            t0 = time.time()
            if light:
                kind, verdict, detail = light_request(u.hostname, u.port, a.timeout)
            else:
                kind, verdict, detail = one_request(u.hostname, u.port, i, a.max_tokens, a.timeout)
            with lock:
                records.append((t0, time.time(), kind, verdict, detail))

    threads = [threading.Thread(target=client, args=(False,)) for _ in range(a.clients)]
    threads += [threading.Thread(target=client, args=(True,)) for _ in range(a.light_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    windows = []
    with open(a.windows) as f:
        for line in f:
            if line.strip():
                s, e = line.split()
                windows.append((float(s), float(e)))

    def during(r):
        return any(r[0] < e and r[1] > s for s, e in windows)

    def lat(rs, light=False):
        rs = [r for r in rs if (r[2] == "models") == light]
        xs = [r[1] - r[0] for r in rs if r[3] == "ok"]
        return {
            "n": len(xs),
            "p50_ms": None if not xs else round(1000 * percentile(xs, 50), 1),
            "p99_ms": None if not xs else round(1000 * percentile(xs, 99), 1),
            "max_ms": None if not xs else round(1000 * max(xs), 1),
        }

    by_kind = {}
    for r in records:
        k = by_kind.setdefault(r[2], {"ok": 0, "failed": 0, "broken": 0})
        k[r[3]] += 1
    streams = [r for r in records if r[2].endswith("-stream")]
    summary = {
        "requests": len(records),
        "ok": sum(r[3] == "ok" for r in records),
        "failed": sum(r[3] == "failed" for r in records),
        "streams": len(streams),
        "streams_with_done": sum(r[3] == "ok" for r in streams),
        "broken_streams": sum(r[3] == "broken" for r in records),
        "during_restart": sum(during(r) for r in records),
        "latency_during_restart": lat([r for r in records if during(r)]),
        "latency_outside_restart": lat([r for r in records if not during(r)]),
        "light_latency_during_restart": lat([r for r in records if during(r)], light=True),
        "light_latency_outside_restart": lat([r for r in records if not during(r)], light=True),
        "by_kind": by_kind,
        "problems": [f"{r[2]} {r[3]}: {r[4]}" for r in records if r[3] != "ok"][:20],
    }
    with open(a.out, "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    bad = summary["failed"] or summary["broken_streams"] or len(records) < a.min_requests
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
