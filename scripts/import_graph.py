"""The import graph of huginn_db, checked against its layers.

    python scripts/import_graph.py            # the graph, layer by layer, and any violation
    python scripts/import_graph.py --check    # exit 1 on an upward import, a cycle or a module over the size limit

Every `import huginn_db...` counts, including those inside functions (a lazy import is still a
dependency). A module may import its own layer or lower ones, never a higher one, and the
graph has no cycles. `tests/test_structure.py` runs the check.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "huginn_db"
MAX_LINES = 420

# lowest first; a module matches the longest prefix listed
LAYERS = [
    [
        "huginn_db.errors",
        "huginn_db.machine",
        "huginn_db.configdoc",
        "huginn_db.configparse",
        "huginn_db.gpus",
        "huginn_db.diffusion",
        "huginn_db.model_config",
        "huginn_db.kv_cache",
        "huginn_db.attention",
    ],
    ["huginn_db.model", "huginn_db.db_passes", "huginn_db.tokenizer", "huginn_db.data.documents"],
    [
        "huginn_db.objectives",
        "huginn_db.data.families",
        "huginn_db.data.reasoning",
        "huginn_db.data.prepared",
        "huginn_db.data.mixture",
        "huginn_db.data.text",
    ],
    ["huginn_db.config"],
    [
        "huginn_db.checkpoint",
        "huginn_db.interop",
        "huginn_db.compute",
        "huginn_db.measure",
        "huginn_db.data",
        "huginn_db.data.audit",
        "huginn_db.evaluate",
    ],
    ["huginn_db.components", "huginn_db.flops", "huginn_db.judge"],
    ["huginn_db.train", "huginn_db.lm_eval", "huginn_db.textgen"],
    [
        "huginn_db.report.run_data",
        "huginn_db.report.samples",
        "huginn_db.report.exit",
        "huginn_db.report.target",
        "huginn_db.report",
        "huginn_db.compare",
    ],
    ["huginn_db.cli", "huginn_db"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The huginn_db modules `path` imports (`from huginn_db.x import y` is x.y when y is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def layer(name: str) -> int:
    best, rank = -1, None
    for i, group in enumerate(LAYERS):
        for prefix in group:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank is None:
        raise KeyError(f"{name} is in no layer of scripts/import_graph.py")
    return rank


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def problems(g: dict[str, set[str]]) -> list[str]:
    out = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})" for a in g for b in sorted(g[a]) if layer(b) > layer(a)
    ]
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(g[m]):
            if state.get(n) == 1:
                out.append("cycle: " + " -> ".join(stack[stack.index(n) :] + [n]) if n in stack else n)
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    for m, p in modules().items():
        n = len(p.read_text().splitlines())
        if n > MAX_LINES:
            out.append(f"{m}: {n} lines (limit {MAX_LINES})")
    return out


def main(argv: list[str]) -> int:
    g = graph()
    if "--check" not in argv:
        mods = modules()
        for i, group in enumerate(LAYERS):
            print(f"layer {i}")
            for m in sorted(x for x in g if layer(x) == i):
                lines = len(mods[m].read_text().splitlines())
                deps = ", ".join(d.removeprefix("huginn_db.") for d in sorted(g[m])) or "-"
                print(f"  {m.removeprefix('huginn_db.') or 'huginn_db':<28} {lines:>4}  -> {deps}")
    bad = problems(g)
    for line in bad:
        print("violation:", line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
