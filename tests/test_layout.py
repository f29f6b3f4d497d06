"""The shape of the package, checked from its source: no import cycle (lazy imports inside functions count too), the
Gaudi module reached only through the stack seam, no module importing a script, and the stage scripts kept short."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "rlhf"
SCRIPTS = ("sft.py", "reward_modeling.py", "rl_training.py", "evaluate.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every rlhf module ``path`` imports, at module level or inside a function, as full module names (imports for
    annotations only, under ``if TYPE_CHECKING:``, never run and are left out)."""
    out = set()
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []  # what an annotation-only block imports does not count
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m == "rlhf" or m.startswith("rlhf.")}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if state.get(nxt) is None and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if state.get(node) is None and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle():
    edges = graph()
    assert len(edges) > 30  # the walk found the package
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_only_the_stack_seam_reaches_the_gaudi_module():
    """Scripts, the PPO engine and the rest of the library ask rlhf.runtime.stack; it alone imports
    rlhf.runtime.gaudi (which imports optimum-habana only when the Gaudi stack is used)."""
    importers = {m for m, deps in graph().items() if "rlhf.runtime.gaudi" in deps}
    assert importers == {"rlhf.runtime.stack"}
    for script in SCRIPTS:
        assert "rlhf.runtime.gaudi" not in imports(ROOT / script)


def test_no_module_imports_a_script():
    names = {Path(s).stem for s in SCRIPTS} | {"gaudi_spawn"}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & names, (path, imported & names)


def test_trainer_stage_recipes_read_like_recipes():
    """sft and reward_modeling say only what makes them themselves (the shared steps live in
    rlhf/stages/trainer_stage.py): about a hundred lines each, and the top-level files are thin entry points."""
    for name in ("sft", "reward_modeling"):
        recipe = (PACKAGE / "scripts" / f"{name}.py").read_text(encoding="utf-8").splitlines()
        assert len(recipe) <= 150, (name, len(recipe))
        assert "TrainerStage(" in "\n".join(recipe)
    for script in SCRIPTS:
        assert len((ROOT / script).read_text(encoding="utf-8").splitlines()) <= 15, script
