"""The shape of the package, checked from its files: module and class sizes, no import cycle, the core free of
streamlit, one exception root, a short docstring on every module (docs/ARCHITECTURE.md states these limits)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import lora_spectrum
from lora_spectrum.errors import LoraSpectrumError

PACKAGE = Path(lora_spectrum.__file__).parent
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 320
MAX_DOCSTRING_LINES = 12  # a module's boundary in a few lines; manuals live in docs/
LONG_DOCSTRINGS = {"lora_spectrum.errors"}  # draws the exception tree, as httpx's _exceptions.py does


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imported(name: str, path: Path) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (lazy imports inside functions too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    known = modules()
    return {m for m in found if m in known and m != name}


def test_no_module_is_over_the_line_limit():
    over = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_no_class_is_over_the_line_limit():
    over = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                over[f"{name}.{node.name}"] = node.end_lineno - node.lineno + 1
    assert not over, f"classes over {MAX_CLASS_LINES} lines: {over}"


def test_there_is_no_import_cycle():
    graph = {name: imported(name, path) for name, path in modules().items()}
    # A package's __init__ that re-exports its modules is not a cycle with them: drop edges into one's own parent.
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_core_never_imports_streamlit():
    offenders = []
    for name, path in modules().items():
        if name.startswith("lora_spectrum.ui"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "streamlit" or n.startswith("streamlit.") for n in names):
                offenders.append(name)
    assert not offenders, f"core modules importing streamlit: {offenders}"


def test_every_module_states_its_boundary_in_a_short_docstring():
    problems = {}
    for name, path in modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if not doc:
            problems[name] = "no docstring"
        elif name not in LONG_DOCSTRINGS and len(doc.splitlines()) > MAX_DOCSTRING_LINES:
            problems[name] = f"{len(doc.splitlines())} lines"
    assert not problems, problems


def test_every_exception_class_is_under_the_one_root():
    strays = []
    for info in pkgutil.walk_packages(lora_spectrum.__path__, "lora_spectrum."):
        if info.name.startswith("lora_spectrum.ui") or info.name.endswith("__main__"):
            continue  # views import streamlit and define no exceptions; __main__ runs the CLI
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and issubclass(cls, BaseException) \
                    and not issubclass(cls, LoraSpectrumError):
                strays.append(f"{info.name}.{cls.__name__}")
    assert not strays, f"exceptions outside LoraSpectrumError: {strays}"


def test_setuptools_finds_every_subpackage_by_itself():
    text = (PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert "[tool.setuptools.packages.find]" in text and 'packages = ["' not in text
    for init in PACKAGE.rglob("__init__.py"):
        assert init.parent == PACKAGE or (init.parent.parent / "__init__.py").is_file(), init


def test_the_architecture_document_names_every_module_and_the_product_never_imports_the_demo_trainer():
    """docs/ARCHITECTURE.md is where a newcomer finds the room for a change: every module of the package is named
    there by its path (``render/engine.py``), and no module it names is gone. The demo's trainer lives outside the
    package (``tools/demo_trainer/``) and nothing in the package imports it."""
    text = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    paths = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
             if p.name != "__init__.py" or p.parent.name == "execution"}
    missing = sorted(p for p in paths if f"`{p}`" not in text)
    assert not missing, "modules docs/ARCHITECTURE.md does not name:\n" + "\n".join(missing)
    named = set(re.findall(r"`([a-z_]+/(?:[a-z_]+/)*[a-z_]+\.py)`", text))
    gone = sorted(n for n in named if not (PACKAGE / n).is_file() and not (PACKAGE.parent / n).is_file()
                  and not n.startswith(("tests/", "scripts/", "tools/")))
    assert not gone, "docs/ARCHITECTURE.md names modules that do not exist:\n" + "\n".join(gone)
    for name, path in modules().items():
        assert not any(m.startswith("tools") for m in _all_imports(path)), f"{name} imports the demo trainer"


def _all_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.add(node.module or "")
    return out
