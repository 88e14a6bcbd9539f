#!/usr/bin/env python3
"""The import graph of src/birdclef (every import, also inside functions): its circles and the imports that run
back up a layer.

Layers (STYLE.md: audio -> data -> models -> zoo/train/infer -> archive/selftrain/review -> cli), lowest first:
  0 errors, config, registry, utils
  1 audio, features
  2 data
  3 models
  4 zoo, train, infer, eval, export, birdnet (BirdNET: its model, predictors and head trainer)
  5 archive, selftrain, review, demo
  6 cli, cli_common, cli_* (and metrics.py, a re-export shim, and __main__)

Usage: python scripts/import_layers.py [SRC]   (default src) prints the circles, each back-up import and the
counts; tests/unit/test_import_layers.py keeps both from growing.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LAYERS = {"errors": 0, "config": 0, "registry": 0, "utils": 0, "audio": 1, "features": 1, "data": 2, "models": 3,
          "birdnet": 4, "zoo": 4, "train": 4, "infer": 4, "eval": 4, "export": 4, "archive": 5, "selftrain": 5,
          "review": 5, "demo": 5, "metrics": 6, "__main__": 6}


def layer(module: str) -> int:
    """The layer of a module of the package (``birdclef.x.y``).

    Raises:
        KeyError: a top-level module or package that has no layer yet (give it one in LAYERS).
    """
    top = module.split(".")[1]
    return 6 if top.startswith("cli") else LAYERS[top]


def import_graph(src: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (a package's ``__init__`` is not an edge target)."""
    files = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (src / "birdclef").rglob("*.py")}

    def target(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name if name and files[name].name != "__init__.py" else None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            for name in names:
                found = target(name) if name.startswith("birdclef") else None
                if found is not None and found != module:
                    graph[module].add(found)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def back_up_imports(graph: dict[str, set[str]]) -> list[str]:
    """``importer (layer a) -> imported (layer b)`` for every import with b > a, sorted."""
    return sorted(f"{m} (layer {layer(m)}) -> {t} (layer {layer(t)})" for m, targets in graph.items()
                  if m != "birdclef" for t in targets if layer(t) > layer(m))


if __name__ == "__main__":
    graph = import_graph(Path(sys.argv[1] if len(sys.argv) > 1 else "src"))
    for component in circles(graph):
        print("circle: " + " <-> ".join(component))
    rows = back_up_imports(graph)
    print("\n".join(rows))
    print(f"{len(circles(graph))} import circles; {len(rows)} imports back up a layer")
