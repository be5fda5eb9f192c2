"""The package layout keeps its promises (docs/ARCHITECTURE.md): no import circles, and no
module imports a package above its own layer. Checked on the source with ``ast``, so
imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "axlab"
# lower number = lower layer; a module may import its own layer and the ones below
LAYERS = {"core": 0, "store": 1, "analysis": 2, "compress": 3, "deploy": 4, "sweep": 5, "cli": 6}


def module_name(path: Path) -> str:
    parts = ("axlab",) + path.relative_to(LIB).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)


MODULES = {module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def imports_of(path: Path) -> list[tuple[str, int, list[str]]]:
    """(imported axlab module, line, names) for every import statement in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, []) for a in node.names if a.name.split(".")[0] == "axlab"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; use absolute axlab.* imports")
            if node.module and node.module.split(".")[0] == "axlab":
                names = [a.name for a in node.names]
                subs = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in MODULES]
                if subs and len(subs) == len(names):      # "from axlab.compress import prune": the submodule
                    out += [(s, node.lineno, []) for s in subs]
                else:
                    out.append((node.module, node.lineno, names))
    return out


def graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports_of(p) if t != m} for m, p in MODULES.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for t in sorted(g.get(n, ())):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (c := visit(t)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_every_module_is_in_a_layer():
    for m in MODULES:
        assert m == "axlab" or layer(m) is not None, f"{m} is outside the layers {list(LAYERS)}"


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_a_higher_layer():
    bad = []
    for m, p in MODULES.items():
        if m == "axlab":
            continue
        for target, line, names in imports_of(p):
            if target == "axlab":
                if set(names) - {"__version__"}:
                    bad.append(f"{p.name}:{line} imports {names} from the top-level package")
                continue
            if target not in MODULES:
                bad.append(f"{p.relative_to(LIB)}:{line} imports {target}, which does not exist")
            elif layer(target) > layer(m):
                bad.append(f"{p.relative_to(LIB)}:{line} ({m.split('.')[1]}) imports {target} (a higher layer)")
    assert not bad, "\n".join(bad)


def test_the_library_never_imports_streamlit_or_hides_imports():
    for m, p in MODULES.items():
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n and n.split(".")[0] == "streamlit" for n in names), f"{m} imports streamlit"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                raise AssertionError(f"{m}:{node.lineno} prints; the library logs and returns values")
            if m != "axlab" and isinstance(node, ast.Attribute) and node.attr == "import_module":
                raise AssertionError(f"{m}:{node.lineno} imports by name at run time; import it directly")


def test_the_checker_finds_a_cycle_and_an_upward_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer("axlab.core.loading") < layer("axlab.deploy.export")


@pytest.mark.parametrize("name", ["load_model", "load_dataset", "measure", "head_importance", "prune_heads",
                                  "apply_recipe", "gpfq", "export_variant", "load_variant", "VariantStore"])
def test_the_whole_loop_is_public_at_the_top(name):
    import axlab
    assert callable(getattr(axlab, name)) and name in axlab.__all__
