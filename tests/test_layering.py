"""The import graph runs one way: every package imports only from packages of lower layers."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Bottom to top; a package may import from its own layer's packages only when listed earlier in it.
LAYERS: list[list[str]] = [
    ["wsss", "wsss.fileio", "wsss.precision"],
    ["wsss.masks"],
    ["wsss.viz"],
    ["wsss.data"],
    ["wsss.schema", "wsss.config", "wsss.losses", "wsss.models"],
    ["wsss.submission"],
    ["wsss.metrics"],
    ["wsss.train", "wsss.watershed", "hpa_seg"],
    ["wsss.infer"],
    ["wsss.ensemble"],
    ["wsss.cli"],
]
RANK: dict[str, int] = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _node(module: str) -> str:
    """The layer node of a dotted module name: ``hpa_seg``, or ``wsss.X`` (``wsss`` for the root)."""
    parts = module.split(".")
    if parts[0] == "hpa_seg":
        return "hpa_seg"
    return ".".join(parts[:2]) if len(parts) > 1 else "wsss"


def _imports(path: Path, package: str) -> set[str]:
    """Project modules imported anywhere in a file (lazy imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names if node.module in ("wsss",))
    return {m for m in out if m.split(".")[0] in ("wsss", "hpa_seg")}


def import_graph() -> dict[str, set[str]]:
    """Node -> the nodes it imports (self edges left out)."""
    graph: dict[str, set[str]] = {}
    for top in ("wsss", "hpa_seg"):
        for path in sorted((ROOT / top).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            src = _node(module)
            targets = {_node(m) for m in _imports(path, module)} - {src}
            graph.setdefault(src, set()).update(targets)
    return graph


def test_every_package_has_a_layer() -> None:
    unknown = sorted(set(import_graph()) - set(RANK))
    assert not unknown, f"packages without a layer in tests/test_layering.py: {unknown}"


def test_imports_only_go_down() -> None:
    graph = import_graph()
    upward = sorted((src, dst) for src, dsts in graph.items() for dst in dsts
                    if dst in RANK and src in RANK and RANK[dst] >= RANK[src]
                    and not (RANK[dst] == RANK[src] and LAYERS[RANK[src]].index(dst) < LAYERS[RANK[src]].index(src)))
    assert not upward, f"imports against the layer order: {upward}"


def test_masks_is_a_leaf_and_wsss_does_not_import_hpa_seg() -> None:
    graph = import_graph()
    assert graph.get("wsss.masks", set()) <= {"wsss.fileio"}
    users = sorted(src for src, dsts in graph.items() if "hpa_seg" in dsts and src != "wsss.cli")
    assert not users, f"only the CLI may import hpa_seg: {users}"
