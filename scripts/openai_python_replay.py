#!/usr/bin/env python3
"""Replays, through the official OpenAI Python SDK (and raw bodies where a client sends them
as-is), each client behaviour docs/CLIENTS.md lists ("Replayed with the Python SDK"), against a
running `fastdllm serve` of the bundled tiny LLaDA, and prints one line per call: `ok`, or the
4xx it got (its `param`), or `FAIL` with what differed. Exits 1 if any call fails.

Usage (from the repository root):
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install openai==3.63.0
    fastdllm serve --model fixtures/llada-tiny --model-id llada-tiny --port 18431 \
        --gen-length 32 --block-length 8 --cors-allow-origin http://app.example &
    /tmp/venv/bin/python scripts/openai_python_replay.py http://127.0.0.1:18431
"""

import json
import math
import sys
import urllib.request

import openai

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:18431"
MODEL = "llada-tiny"
PROMPT = "copy 3dbk......="
client = openai.OpenAI(base_url=BASE + "/v1", api_key="unused", max_retries=0)
results = []


def check(name, f):
    try:
        out = f()
        results.append((name, "ok" if out is None else out))
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        results.append((name, f"{e.status_code} param={body.get('param')}"))
    except AssertionError as e:
        results.append((name, f"FAIL {e}"))


def raw(method, path, body=None, headers=None):
    req = urllib.request.Request(BASE + path, method=method, headers=headers or {})
    if body is not None:
        req.data = json.dumps(body).encode()
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def stream_null():
    s, _, b = raw("POST", "/v1/chat/completions",
                  {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
                   "stream": None, "provisional": None})
    assert s == 200, (s, b)


def include_usage_null():
    s, _, b = raw("POST", "/v1/chat/completions",
                  {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
                   "stream": True, "stream_options": {"include_usage": None}})
    assert s == 200, (s, b)


def preflight():
    s, h, _ = raw("OPTIONS", "/v1/chat/completions", headers={
        "origin": "http://app.example", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type,x-stainless-os,x-stainless-retry-count"})
    allowed = {x.strip().lower() for x in h.get("access-control-allow-headers", "").split(",")}
    assert {"x-stainless-os", "x-stainless-retry-count"} <= allowed, (s, h)


def retrieve():
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL, m


def empty_prompt():
    r = client.completions.create(model=MODEL, prompt="", max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length"), r


def many_stops(n):
    def f():
        r = client.completions.create(model=MODEL, prompt=PROMPT,
                                      stop=["zz%d" % i for i in range(n - 1)] + ["b"])
        assert r.choices[0].text == "3d", r
    return f


def several_unsupported():
    try:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}],
            tools=[{"type": "function", "function": {"name": "f"}}], parallel_tool_calls=False)
    except openai.BadRequestError as e:
        msg = e.body["message"]
        assert "tools" in msg and "parallel_tool_calls" in msg, msg
        return "400 naming tools and parallel_tool_calls"
    raise AssertionError("accepted")


def retry_after():
    # Needs a full queue to see; the header is checked by `overload_is_429` (serve.rs).
    return "not replayed here (tests/serve.rs overload_is_429)"


def include_obfuscation_false():
    s, _, b = raw("POST", "/v1/chat/completions",
                  {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
                   "stream": True, "stream_options": {"include_obfuscation": False}})
    assert s == 200, (s, b)


def message_name():
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT, "name": "alice"}])
    assert r.choices[0].message.content, r


def tool_calls_turn(content):
    def f():
        client.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": content, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "user", "content": PROMPT}])
    return f


def no_max_tokens_long_prompt():
    # 500 prompt tokens of the 512-token context: the room left is 12, one block of 8.
    p = "copy 3dbk" + "." * (512 - 12 - 11) + "="
    r = client.completions.create(model=MODEL, prompt=p)
    assert r.usage.prompt_tokens == 500, r.usage
    assert r.usage.completion_tokens <= 8, r.usage


def chat_logprobs():
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 5 and t.top_logprobs[0].token == t.token, t
        assert sum(math.exp(x.logprob) for x in t.top_logprobs) <= 1 + 1e-9, t
        assert bytes(t.bytes).decode() == t.token


def chat_logprobs_stream():
    got = []
    for chunk in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], logprobs=True,
            top_logprobs=2, stream=True):
        for c in chunk.choices:
            if c.logprobs and c.logprobs.content:
                got.extend(c.logprobs.content)
    assert "".join(t.token for t in got) == "3dbk", got


def completion_logprobs():
    r = client.completions.create(model=MODEL, prompt=PROMPT, logprobs=5)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.text_offset) == len(lp.top_logprobs)
    assert all(len(d) <= 5 for d in lp.top_logprobs)


def lm_eval_body():
    # lm-eval 0.4.13 local-completions' generate_until body: token-id prompts, 4-entry until
    # plus the tokenizer's EOS text, max_tokens, temperature 0, seed.
    s, _, b = raw("POST", "/v1/completions", {
        "model": MODEL, "prompt": [[51, 12, 24, 25, 34, 36, 3, 13, 11, 20, 41, 41, 41, 41, 41, 41, 40]],
        "max_tokens": 30, "temperature": 0, "stop": ["\n\n", "Question:", "</s>", "<|im_end|>", "<|endoftext|>"],
        "seed": 1234})
    assert s == 200 and json.loads(b)["choices"][0]["text"] == "3dbk", (s, b)


def echo_refused():
    client.completions.create(model=MODEL, prompt=PROMPT, logprobs=1, echo=True)


check("stream: null", stream_null)
check("stream_options.include_usage: null", include_usage_null)
check("CORS preflight with x-stainless-*", preflight)
check("models.retrieve", retrieve)
check("empty completion prompt", empty_prompt)
check("5 stop strings", many_stops(5))
check("16 stop strings", many_stops(16))
check("17 stop strings", many_stops(17))
check("tools + parallel_tool_calls", several_unsupported)
check("429 Retry-After", retry_after)
check("include_obfuscation: false", include_obfuscation_false)
check("message name", message_name)
check("assistant tool_calls, content ''", tool_calls_turn(""))
check("assistant tool_calls, content null", tool_calls_turn(None))
check("no max_tokens, long prompt", no_max_tokens_long_prompt)
check("chat logprobs + top_logprobs", chat_logprobs)
check("chat logprobs streamed", chat_logprobs_stream)
check("completions logprobs 5", completion_logprobs)
check("lm-eval local-completions body (5 stops)", lm_eval_body)
check("echo", echo_refused)

failed = 0
for name, out in results:
    print(f"{name}: {out}")
    failed += out.startswith("FAIL")
print(f"{len(results)} calls, {failed} failed")
sys.exit(1 if failed else 0)
