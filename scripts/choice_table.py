#!/usr/bin/env python3
"""Formats `fastdllm eval --json` lines (tasks/tiny-choice.jsonl) as the tables of
docs/BENCHMARKS.md: `fig5` = RESULTS.md's layout (valid all / valid choice / mean NFE per cache
mode), `policies` = accuracy, NFE, processed positions, ms and drift per cache policy."""
import json
import sys

DETERMINISTIC = {"copy", "inc", "rot", "add"}


def load(path):
    return [json.loads(l) for l in open(path) if l.strip()]


def choice_valid(r):
    ks = [k for k in r["per_kind"] if k["kind"] not in DETERMINISTIC]
    return sum(k["correct"] for k in ks), sum(k["tasks"] for k in ks)


def rule_name(r):
    rule, steps = r["rule"], r["steps"]
    if rule == "fixed":
        return f"fixed {r['gen_length'] // steps} tok/step (steps {steps})"
    return rule.replace("=", " ")


def fig5(rows):
    caches = []
    for r in rows:
        if r["cache"] not in caches:
            caches.append(r["cache"])
    rules = []
    for r in rows:
        if rule_name(r) not in rules:
            rules.append(rule_name(r))
    head = "| rule | " + " | ".join(f"{c}: valid all | {c}: valid choice | {c}: NFE | {c}: tok/fwd" for c in caches) + " |"
    print(head)
    print("|---" * (1 + 4 * len(caches)) + "|")
    for rule in rules:
        cells = []
        for c in caches:
            r = next(x for x in rows if x["cache"] == c and rule_name(x) == rule)
            cv, ct = choice_valid(r)
            cells += [f"{100 * r['accuracy']:.1f}% ({r['correct']})", f"{100 * cv / ct:.1f}% ({cv})",
                      f"{r['mean_nfe']:.2f}", f"{r['tokens_per_forward']:.2f}"]
        print(f"| {rule} | " + " | ".join(cells) + " |")


def policies(rows):
    base = next((r for r in rows if r["cache"] == "dual"), None)
    print("| cache policy | accuracy | hole | word | mean NFE | positions/answer | x dual | ms/answer | x dual | in-block refreshes/answer | drift mean / max |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kind = {k["kind"]: k for k in r["per_kind"]}
        d = "-" if r["drift_mean"] is None else f"{r['drift_mean']:.3f} / {r['drift_max']:.3f}"
        xp = f"{r['positions_per_prompt'] / base['positions_per_prompt']:.2f}" if base else "-"
        xm = f"{r['ms_per_prompt'] / base['ms_per_prompt']:.2f}" if base else "-"
        print(f"| {r['cache']} | {100 * r['accuracy']:.1f}% ({r['correct']}/{r['tasks']}) | "
              f"{kind['hole']['correct']}/{kind['hole']['tasks']} | {kind['word']['correct']}/{kind['word']['tasks']} | "
              f"{r['mean_nfe']:.2f} | {r['positions_per_prompt']:.1f} | {xp} | {r['ms_per_prompt']:.2f} | {xm} | "
              f"{r['inblock_refreshes_per_prompt']:.2f} | {d} |")


if __name__ == "__main__":
    {"fig5": fig5, "policies": policies}[sys.argv[1]](load(sys.argv[2]))
