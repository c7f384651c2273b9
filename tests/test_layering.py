"""The import graph runs one way: every package imports only from packages of lower layers."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Bottom to top; a package may import from its own layer's packages only when listed earlier in it.
#: ``wsss.viz`` sits under ``wsss.data`` (the synthetic-data generator draws with it) only because it
#: is a pure leaf: it imports nothing from the project (test_viz_is_a_pure_leaf).
LAYERS: list[list[str]] = [
    ["wsss", "wsss.fileio", "wsss.precision", "wsss.dist"],
    ["wsss.masks"],
    ["wsss.viz"],
    ["wsss.data"],
    ["wsss.schema", "wsss.tables", "wsss.config", "wsss.losses", "wsss.models"],
    ["wsss.submission"],
    ["wsss.metrics"],
    ["wsss.train", "wsss.watershed", "hpa_seg"],
    ["wsss.infer"],
    ["wsss.ensemble", "wsss.postprocess", "wsss.pseudo"],
    ["wsss.cli"],
]
RANK: dict[str, int] = {name: i for i, layer in enumerate(LAYERS) for name in layer}
#: Packages (or single files) that must not import each other although the layer order would allow it.
INDEPENDENT: list[tuple[str, str]] = [
    ("wsss.infer", "wsss.train"),  # inference loads models through wsss.models, never through training
    ("wsss/cli/infer.py", "wsss.train"),
]
#: The only names that scoring and ensembling take from the Kaggle-format module: reading submissions.
SUBMISSION_READERS: frozenset[str] = frozenset({"Submission", "read_submission"})


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


def _module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Node -> the nodes it imports (self edges left out)."""
    graph: dict[str, set[str]] = {}
    for top in ("wsss", "hpa_seg"):
        for path in sorted((ROOT / top).rglob("*.py")):
            module = _module_of(path)
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


def test_viz_is_a_pure_leaf() -> None:
    """viz may sit below data only while it draws with numpy/OpenCV/scikit-image and imports nothing of ours."""
    assert import_graph().get("wsss.viz", set()) == set()


def test_independent_parts_do_not_import_each_other() -> None:
    graph = import_graph()
    found = []
    for src, dst in INDEPENDENT:
        if src.endswith(".py"):
            path = ROOT / src
            targets = {_node(m) for m in _imports(path, _module_of(path))}
        else:
            targets = graph.get(src, set())
        if dst in targets:
            found.append((src, dst))
    assert not found, f"imports between parts that must stay independent: {found}"


def test_metrics_and_ensemble_take_only_submission_readers() -> None:
    """Per-cell tables come from wsss.tables; wsss.submission is used only to read Kaggle submission CSVs."""
    paths = [*sorted((ROOT / "wsss" / "metrics").rglob("*.py")), ROOT / "wsss" / "ensemble.py"]
    taken: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "wsss.submission":
                taken.setdefault(path.name, set()).update(a.name for a in node.names)
            elif isinstance(node, ast.Import) and any(a.name == "wsss.submission" for a in node.names):
                taken.setdefault(path.name, set()).add("*module*")
    extra = {name: sorted(names - SUBMISSION_READERS) for name, names in taken.items() if names - SUBMISSION_READERS}
    assert not extra, f"metrics/ensemble take more than the submission readers from wsss.submission: {extra}"
