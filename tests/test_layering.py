"""The library's layering: no domain imports another, no top-level module imports a domain, core
modules import no runs or paper module, and nothing in lib/ imports the notebooks."""
import ast

import pytest

from moebackdoor.paths import REPO_ROOT

LIB = REPO_ROOT / "lib"
DOMAINS = ("vision", "text", "llm")
CORE = ("data", "datasets", "triggers", "poisoning", "models", "training")


def imports(path) -> set[str]:
    """The ``moebackdoor`` modules a file imports, as dotted names below the package."""
    module = path.relative_to(LIB).with_suffix("").parts
    package = module[:-1] if module[-1] != "__init__" else module[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package[:len(package) - node.level + 1])
            names = [node.module] if node.module else [a.name for a in node.names]
            found |= {".".join(base + n.split(".")) for n in names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("moebackdoor"):
            found.add(node.module.removeprefix("moebackdoor").lstrip("."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("moebackdoor").lstrip(".") for a in node.names
                      if a.name.startswith("moebackdoor")}
    return found


FILES = sorted(p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(LIB).as_posix())
def test_layering(path):
    parts = path.relative_to(LIB).with_suffix("").parts
    domain = parts[0] if len(parts) > 1 else None
    for target in imports(path):
        top = target.split(".")[0]
        if domain is None:
            assert top not in DOMAINS, f"top-level {path.name} imports the domain module {target}"
        else:
            assert top not in DOMAINS or top == domain, f"{domain} imports another domain: {target}"
        if domain and parts[-1] in CORE:
            assert not (top == domain and (target.endswith((".runs", "_paper")) or ".runs" in target)), \
                f"core module {'.'.join(parts)} imports {target}"
    assert not any(t.split(".")[0] == "notebooks" for t in imports(path))


def test_the_import_reader_sees_relative_imports():
    assert {"text.config", "text.runs"} <= imports(LIB / "text" / "experiment.py")
    assert "runcache" in imports(LIB / "vision" / "attacks.py")
