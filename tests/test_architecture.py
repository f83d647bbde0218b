"""The layout holds what docs/ARCHITECTURE.md says: every module states its job, and no module of
edgevae.runtime or edgevae.training imports, even inside a function or only for type annotations
(``if TYPE_CHECKING:``), one that imports it back."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"edgevae.runtime": ROOT / "runtime", "edgevae.training": ROOT / "training"}

#: ``if TYPE_CHECKING:`` imports still allowed to close a cycle, as (importer, imported). Each is
#: a debt; remove the entry when the import goes. None is left (the list only shrinks).
TYPE_ONLY_BACK_IMPORTS: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    return {f"{package}.{path.stem}": path for package, folder in PACKAGES.items()
            for path in sorted(folder.glob("*.py")) if path.stem not in ("__init__", "__main__")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, known: set[str], typing_only: bool = False) -> set[str]:
    """Modules of ``known`` that ``path`` imports anywhere (top level, inside functions, under
    ``if TYPE_CHECKING:``); with ``typing_only``, just those under ``if TYPE_CHECKING:``."""
    found = set()
    package = name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    annotations = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if typing_only and id(node) not in annotations:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = package + ("." + base if base else "")
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {module for module in found if module in known and module != name}


def test_every_module_states_its_job() -> None:
    for name, path in _modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc.split()) >= 5, f"{name} has no docstring saying its job"


def _graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Importer -> imported, every import counted but the allowed TYPE_CHECKING back-imports."""
    return {name: {m for m in _imports(name, path, set(modules))
                   if (name, m) not in TYPE_ONLY_BACK_IMPORTS
                   or m not in _imports(name, path, set(modules), typing_only=True)}
            for name, path in modules.items()}


def test_the_allowed_typing_back_imports_still_exist() -> None:
    """An entry of TYPE_ONLY_BACK_IMPORTS whose import is gone must go too (the list only shrinks)."""
    modules = _modules()
    for importer, imported in TYPE_ONLY_BACK_IMPORTS:
        assert imported in _imports(importer, modules[importer], set(modules), typing_only=True), \
            f"{importer} no longer imports {imported} for annotations: remove it from TYPE_ONLY_BACK_IMPORTS"


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = _graph(modules)

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return trail + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    cycles = [c for c in (cycle_from(name) for name in graph) if c]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_runtime_never_imports_training() -> None:
    modules = _modules()
    for module, path in modules.items():
        if module.startswith("edgevae.runtime."):
            assert not {m for m in _imports(module, path, set(modules)) if m.startswith("edgevae.training.")}, module


def test_the_train_commands_defaults_are_the_model_configs() -> None:
    """``edgevae-train train`` and ``ModelConfig()`` build the same model when given nothing."""
    from edgevae.training.cli import train
    from edgevae.training.model import ModelConfig

    defaults = {p.name: p.default for p in train.params}
    config = ModelConfig()
    assert defaults["latent_dim"] == config.latent_dim
    assert tuple(int(w) for w in defaults["widths"].split(",")) == config.channels
    assert defaults["res_blocks"] == config.res_blocks
    assert defaults["components"] == config.mixture_components
    assert defaults["upsample"] == config.upsample
    assert tuple(int(v) for v in defaults["image_shape"].split(",")) == config.image_shape


def _section(text: str, heading: str) -> str:
    """The text of ARCHITECTURE.md's ``## heading`` section, up to the next ``## ``."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _shared_benchmark_modules() -> set[str]:
    """benchmarks/*.py that another benchmark imports (the scripts themselves are not modules)."""
    folder = ROOT / "benchmarks"
    names = {path.stem for path in folder.glob("*.py")}
    used = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                used |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                used.add(node.module.split(".")[0])
    return used & names


def test_architecture_md_names_every_module() -> None:
    """docs/ARCHITECTURE.md's picture of each package names every module of its folder (a new
    module without its place and job in the document fails here), and the benchmarks' shared ones."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    sections = {"runtime": _section(text, "The runtime"), "training": _section(text, "The training side")}
    missing = [f"{folder}/{path.name}" for folder, section in sections.items()
               for path in sorted((ROOT / folder).glob("*.py")) if not re.search(rf"\b{re.escape(path.name)}\b", section)]
    shared = _shared_benchmark_modules()
    assert shared, "no shared benchmark module found: the import scan is broken"
    bench = _section(text, "Benchmarks")
    missing += [f"benchmarks/{name}.py" for name in sorted(shared) if f"{name}.py" not in bench]
    assert missing == [], f"docs/ARCHITECTURE.md does not place: {', '.join(missing)}"
