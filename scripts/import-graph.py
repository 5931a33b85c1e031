#!/usr/bin/env python3
"""The module import graph of each crate, and its circles: a module that, through its imports,
ends up importing itself. keybound keeps none (docs/ARCHITECTURE.md); `make lint` runs this.

    scripts/import-graph.py              # every crate of the workspace; exit 1 on a circle
    scripts/import-graph.py --print src  # one crate's graph, a line per module

A module is a file (`foo.rs`, `foo/mod.rs`). An edge is any `crate::` path naming a module, a
`super::` path (to the parent, or to a sibling through it), and a parent's use of a child's
items (`child::Item`). Re-exports (`pub use`) and documentation-only imports
(`#[cfg(doc)]`) are not imports. Tests (`#[cfg(test)] mod tests`) are left out.
"""

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = ["src", "teleport/src", "devcluster/src", "proto/src"] + [
    f"backends/{b}/src" for b in ("core", "soft", "pkcs11", "tpm")]
IDENT = r"[a-z_][a-z0-9_]*"


def modules(root):
    """module path ('crate', 'join', 'join::v1') -> source text without tests and comments."""
    found = {}
    for path in sorted(root.rglob("*.rs")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if "gen" in parts or "tests" in parts:
            continue
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        text = path.read_text()
        cut = text.find("#[cfg(test)]\nmod tests")
        if cut >= 0:
            text = text[:cut]
        text = re.sub(r"#\[cfg\(doc\)\]\s*use [^;]*;", "", text)
        text = re.sub(r"//[^\n]*", "", text)
        found["::".join(parts) or "crate"] = text
    return found


def graph(mods):
    names = set(mods)

    def resolve(path):
        parts = path.split("::")
        for i in range(len(parts), 0, -1):
            candidate = "::".join(parts[:i])
            if candidate in names:
                return candidate
        return None

    edges = {m: set() for m in mods}
    for m, text in mods.items():
        body = re.sub(r"pub(\([a-z]+\))? use [^;]*;", "", text)
        for ref in re.findall(rf"crate::({IDENT}(?:::{IDENT})*)", body):
            target = resolve(ref)
            if target and target != m and not m.startswith(target + "::"):
                edges[m].add(target)
        for group in re.findall(r"use crate::\{([^;]*)\};", body, re.S):
            for ref in re.findall(rf"(?:^|[{{,\s])({IDENT}(?:::{IDENT})*)", group):
                target = resolve(ref)
                if target and target != m and not m.startswith(target + "::"):
                    edges[m].add(target)
        for child in names:
            direct = ("::" not in child) if m == "crate" else child.rsplit("::", 1)[0] == m
            if child == m or child == "crate" or not direct:
                continue
            short = child.rsplit("::", 1)[-1]
            if re.search(rf"(?<![a-z_:]){short}::[A-Za-z_]", body) or \
                    re.search(rf"(?<!pub )use {short}::", body):
                edges[m].add(child)
        if m != "crate":
            parent = m.rsplit("::", 1)[0] if "::" in m else "crate"
            for ref in re.findall(r"super::(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)", body):
                first = ref.strip("{}").split(",")[0].strip().split("::")[0]
                prefix = "" if parent == "crate" else parent + "::"
                target = resolve(prefix + first) if first[:1].islower() else None
                target = target or parent
                if target != m:
                    edges[m].add(target)
    return edges


def circles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--print", metavar="CRATE_SRC", help="print this crate's graph")
    opts = parser.parse_args()
    if opts.print:
        edges = graph(modules(ROOT / opts.print))
        for m in sorted(edges):
            print(f"{m:28} -> {', '.join(sorted(edges[m]))}")
        return 1 if circles(edges) else 0
    bad = False
    for crate in CRATES:
        found = circles(graph(modules(ROOT / crate)))
        for circle in found:
            bad = True
            print(f"{crate}: import circle: {' -> '.join(circle)}", file=sys.stderr)
    if not bad:
        print(f"import graph: no circles in {len(CRATES)} crates")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
