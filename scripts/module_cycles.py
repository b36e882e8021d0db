#!/usr/bin/env python3
"""Lists import cycles between the top-level modules of a crate's src/ (modules should depend
on each other in one direction only, so that each can be read and changed on its own).

Usage: scripts/module_cycles.py fastdllm-models/src
A module's edges are the `crate::X` paths its files name (in `use` lines and inline paths);
`super::` inside a folder module stays inside it. Exit 1 when a cycle exists.
"""
import os, re, sys

src = sys.argv[1] if len(sys.argv) > 1 else "fastdllm-models/src"
mods = {}
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(root, f), src)
        top = rel.split(os.sep)[0].removesuffix(".rs")
        if top in ("lib", "main"):
            continue
        text = open(os.path.join(root, f)).read()
        # strip comments
        text = re.sub(r"//[^\n]*", "", text)
        deps = set()
        for m in re.finditer(r"crate::\{([^}]*)\}", text):
            deps |= {p.strip().split("::")[0] for p in m.group(1).split(",") if p.strip()}
        deps |= set(re.findall(r"crate::(\w+)", text))
        mods.setdefault(top, set()).update(d for d in deps if d != top)
names = set(mods)
graph = {m: sorted(d for d in deps if d in names) for m, deps in mods.items()}
for m in sorted(graph):
    print(f"{m:15} -> {', '.join(graph[m]) or '-'}")
cycles, state = [], {}
def visit(n, stack):
    state[n] = 1
    for d in graph[n]:
        if state.get(d) == 1:
            cycles.append(stack[stack.index(d):] + [d])
        elif d not in state:
            visit(d, stack + [d])
    state[n] = 2
for m in sorted(graph):
    if m not in state:
        visit(m, [m])
for c in cycles:
    print("cycle:", " -> ".join(c))
print(f"{len(cycles)} cycle(s)")
sys.exit(1 if cycles else 0)
