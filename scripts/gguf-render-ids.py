#!/usr/bin/env python3
"""Prints every generated id of a `fastdllm generate --json` record as llama.cpp's
llama-diffusion-cli prints its output, with the GGUF file's own vocabulary: byte-level BPE pieces
(NORMAL tokens) decoded through GPT-2's byte table, USER_DEFINED tokens as their text, control
tokens (EOS among them) as nothing. fastdllm's own `text` stops at the first EOS; llama.cpp
prints all tokens, so agreement checks compare this rendering (scripts/llama-cpp-compare.sh,
scripts/llada-moe-7b-bench.sh).

Usage: PYTHONPATH=<llama.cpp>/gguf-py python scripts/gguf-render-ids.py GGUF RECORD.json
"""
import json
import sys

from gguf import GGUFReader


def main():
    r = GGUFReader(sys.argv[1])
    f = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(f.parts[i]).decode() for i in f.data]
    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    # GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for 256 + n.
    bs = [*range(33, 127), *range(161, 173), *range(174, 256)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_of = {chr(c): b for b, c in zip(bs, cs)}
    out = b""
    for i in json.load(open(sys.argv[2]))["generated_ids"]:
        if types[i] == 1:  # NORMAL: a byte-level BPE piece
            out += bytes(byte_of[ch] for ch in tokens[i])
        elif types[i] == 4:  # USER_DEFINED: its text
            out += tokens[i].encode()
    print(out.decode("utf-8", "replace"))


if __name__ == "__main__":
    main()
