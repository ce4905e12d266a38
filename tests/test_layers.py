"""The house's rules, read from the source with ``ast`` (nothing is imported): no import circle in
``vmd/`` or ``vmd_cli/``, the library imports no CLI or terminal package, and the network reaches
neither up into the sampler, the tasks and the store nor out to files."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def modules() -> dict[str, Path]:
    found = {}
    for package in ("vmd", "vmd_cli"):
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported(name: str, path: Path) -> set[str]:
    """Every name ``path`` imports, at any depth of the file (lazy imports count: a circle through a
    function's import is still a circle), relative imports made absolute; ``from pkg import x`` gives
    ``pkg.x``, which :func:`graph` reads as the module ``pkg.x`` where there is one, else ``pkg``."""
    names = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def graph() -> dict[str, set[str]]:
    mods = modules()

    def own(name: str):  # the project module a name lands in, or None for a third-party one
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    return {m: {own(n) for n in imported(m, p)} - {None, m} for m, p in mods.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_walker_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    assert "vmd_cli.console" in graph()["vmd_cli.main"]  # the graph holds real edges


def test_no_import_circle():
    assert circles(graph()) == []


def test_the_library_imports_no_cli_and_the_network_stays_low():
    mods = modules()
    for name, path in mods.items():
        if not name.startswith("vmd."):
            continue
        names = imported(name, path)
        assert not {n for n in names if n.split(".")[0] in ("vmd_cli", "typer", "textual", "rich")}, name
        if name.startswith("vmd.model"):
            upward = {n for n in names if n.startswith(("vmd.sampling", "vmd.blockwise", "vmd.tasks", "vmd.sudoku",
                                                        "vmd.checkpoint", "vmd.train", "vmd.evaluate", "safetensors"))}
            assert not upward, f"{name} imports {upward}"
