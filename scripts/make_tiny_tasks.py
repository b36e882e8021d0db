#!/usr/bin/env python3
"""Writes tasks/tiny-arith.jsonl: prompt/answer pairs for the bundled tiny models.

The four task kinds of conformance/goldens/FORMAT.md section 5, in the same prompt format:

* copy: `copy <s>=` -> s, s of digits and letters;
* inc:  `inc <s>=`  -> every digit + 1 mod 10, s of digits;
* rot:  `rot <s>=`  -> every letter + 1 (z -> a), s of letters;
* add:  `a+b=`      -> a + b, single digits.

The string field of copy / inc / rot is right-padded with '.' to width 10 (strings of length 1 to
10, as in the goldens' in-distribution prompts). Prompts that occur in conformance/goldens are
skipped, so this file is disjoint from the golden cases. Fixed seed: the output is reproducible.

Usage: python3 scripts/make_tiny_tasks.py [--per-kind 40] [--seed 4242] [--out tasks/tiny-arith.jsonl]
"""

import argparse
import json
import random
import string
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 10
DIGITS = string.digits
LETTERS = string.ascii_lowercase


def golden_prompts():
    """Prompt texts of the golden cases (to be excluded)."""
    seen = set()
    for path in sorted((ROOT / "conformance" / "goldens").glob("*.jsonl")):
        with open(path) as f:
            for line in f:
                if line.strip():
                    seen.add(json.loads(line)["prompt_text"])
    return seen


def padded(s):
    return s + "." * (WIDTH - len(s))


def make(kind, rng, max_len):
    if kind == "add":
        a, b = rng.randrange(10), rng.randrange(10)
        return f"{a}+{b}=", str(a + b)
    n = rng.randint(1, max_len)
    if kind == "copy":
        s = "".join(rng.choice(DIGITS + LETTERS) for _ in range(n))
        return f"copy {padded(s)}=", s
    if kind == "inc":
        s = "".join(rng.choice(DIGITS) for _ in range(n))
        return f"inc {padded(s)}=", "".join(str((int(c) + 1) % 10) for c in s)
    if kind == "rot":
        s = "".join(rng.choice(LETTERS) for _ in range(n))
        return f"rot {padded(s)}=", "".join(LETTERS[(LETTERS.index(c) + 1) % 26] for c in s)
    raise ValueError(kind)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-kind", type=int, default=40)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--max-len", type=int, default=WIDTH)
    ap.add_argument("--out", type=Path, default=ROOT / "tasks" / "tiny-arith.jsonl")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    excluded = golden_prompts()
    rows, seen = [], set(excluded)
    for kind in ("copy", "inc", "rot", "add"):
        count = 0
        while count < args.per_kind:
            prompt, answer = make(kind, rng, args.max_len)
            if prompt in seen:  # golden prompt or duplicate (add has only 100 prompts)
                continue
            seen.add(prompt)
            rows.append({"prompt": prompt, "answer": answer, "kind": kind})
            count += 1
    rng.shuffle(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {len(rows)} tasks to {args.out}")


if __name__ == "__main__":
    main()
