#!/usr/bin/env python3
"""Slow clients against `fastdllm serve` (docs/RELIABILITY.md, "Slow clients"); stdlib only.

Starts the given binary on the bundled tiny LLaDA, then runs two loads and prints one line each:

* reading (baseline): the same 16 requests from clients that read their answers to the end,
  for the server's own peak (a batch of 32 rows of the tiny model);
* never-reading: 16 clients (receive buffer 4 KiB) each send a streaming completion with n = 4
  choices, the longest answer and the provisional blocks, and never read; the server's RSS
  (VmRSS) is sampled while they hang, /health is asked from another connection, and the RSS is
  read again once the stream timeout has dropped them;
* trickle: 256 connections from 127.0.0.1 send a request head and then one body byte every 2 s;
  /health is asked from 127.0.0.2 while they trickle.

Usage: scripts/slow_clients.py BIN [--stream-timeout S] [--body-timeout S]
Exit 1 when /health is not answered within 10 s or the server dies.
"""
import json
import socket
import subprocess
import sys
import threading
import time


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def health(port, source="127.0.0.2"):
    t = time.time()
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    ok = data.startswith(b"HTTP/1.1 200")
    return ok, time.time() - t


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    binary = args[0]
    stream_timeout = args[args.index("--stream-timeout") + 1] if "--stream-timeout" in args else "10"
    body_timeout = args[args.index("--body-timeout") + 1] if "--body-timeout" in args else "30"
    srv = subprocess.Popen(
        [binary, "serve", "--port", "0", "--stream-timeout", stream_timeout,
         "--body-timeout", body_timeout],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = None
    for line in srv.stdout:
        if "http://" in line:
            port = int(line.split("http://")[1].split("/")[0].split(":")[1].split()[0])
            break
    threading.Thread(target=lambda: [None for _ in srv.stdout], daemon=True).start()
    assert port, "the server printed no address"
    time.sleep(1)
    idle = rss_mib(srv.pid)
    failures = 0

    # Never-reading clients.
    body = json.dumps({"prompt": "copy abcdefgh", "n": 4, "stream": True, "provisional": True,
                       "max_tokens": 480}).encode()
    req = (b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\n\r\n" % len(body)) + body
    # Baseline: the same 16 requests from clients that read everything.
    def read_all():
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        s.sendall(req)
        while s.recv(65536):
            pass
        s.close()
    readers = [threading.Thread(target=read_all) for _ in range(16)]
    for t in readers:
        t.start()
    base_peak = idle
    while any(t.is_alive() for t in readers):
        base_peak = max(base_peak, rss_mib(srv.pid))
        time.sleep(0.05)
    time.sleep(1)
    base_after = rss_mib(srv.pid)
    print(f"reading (baseline): 16 clients x n=4 streams read to the end; RSS MiB idle {idle:.1f}, "
          f"peak {base_peak:.1f}, after {base_after:.1f}")

    clients = []
    for _ in range(16):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(req)
        clients.append(s)
    peak = idle
    answered = []
    t0 = time.time()
    while time.time() - t0 < float(stream_timeout) + 5:
        peak = max(peak, rss_mib(srv.pid))
        ok, took = health(port)
        answered.append((ok, took))
        time.sleep(0.05)
    after = rss_mib(srv.pid)
    for s in clients:
        s.close()
    time.sleep(2)
    closed = rss_mib(srv.pid)
    bad = sum(1 for ok, _ in answered if not ok)
    failures += bad
    print(f"never-reading: 16 clients x n=4 streams; RSS MiB idle {idle:.1f}, peak {peak:.1f}, "
          f"after the stream timeout {after:.1f}, after they closed {closed:.1f}; /health "
          f"{len(answered) - bad}/{len(answered)} answered, slowest {max(t for _, t in answered):.3f} s")

    # Trickling connections from one address.
    head = (b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n")
    trickle = []
    for _ in range(256):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(head)
            trickle.append(s)
        except OSError:
            s.close()
    stop = time.time() + 20
    answered = []
    while time.time() < stop:
        for s in trickle:
            try:
                s.send(b" ")
            except OSError:
                pass
        ok, took = health(port)
        answered.append((ok, took))
        time.sleep(2)
    held = 0
    for s in trickle:
        try:
            s.setblocking(False)
            if s.recv(1) == b"":
                pass
        except BlockingIOError:
            held += 1
        except OSError:
            pass
        s.close()
    bad = sum(1 for ok, _ in answered if not ok)
    failures += bad
    print(f"trickle: 256 connections from 127.0.0.1, one byte every 2 s; still open after 20 s: "
          f"{held}; /health from 127.0.0.2 {len(answered) - bad}/{len(answered)} answered, slowest "
          f"{max(t for _, t in answered):.3f} s; RSS MiB {rss_mib(srv.pid):.1f}")

    srv.terminate()
    rc = srv.wait(60)
    print(f"server exit after SIGTERM: {rc}")
    sys.exit(1 if failures or rc != 0 else 0)


if __name__ == "__main__":
    main()
