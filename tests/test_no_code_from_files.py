"""Loading a checkpoint, a config or a cached file never runs code from it, and nothing runs a
shell: the project's sources hold no unpickling, no unsafe YAML loader, no eval/exec and no
shell=True (the audit's standing row, docs/robustness.md). Read with ast, so a comment or a
docstring that names them does not count and a call spelled differently does."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for folder in ("vmd", "vmd_cli", "bench") for p in (ROOT / folder).rglob("*.py"))

MODULES = {"pickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"}
CALLS = {("torch", "load"), ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"),
         ("yaml", "load_all"), ("yaml", "unsafe_load_all"), ("yaml", "full_load_all"), ("os", "system"),
         ("os", "popen"), ("np", "load"), ("numpy", "load")}
NAMES = {"eval", "exec", "compile", "__import__"}
ATTRS = {"UnsafeLoader", "FullLoader", "Loader"}  # yaml.Loader builds Python objects from tags


def findings(tree: ast.AST, where: str) -> list[str]:
    out = []
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            out += [f"{line} imports {a.name}" for a in node.names if a.name.split(".")[0] in MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in MODULES:
            out.append(f"{line} imports from {node.module}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in CALLS:
                out.append(f"{line} uses {node.value.id}.{node.attr}")
            elif node.value.id == "yaml" and node.attr in ATTRS:
                out.append(f"{line} uses yaml.{node.attr}")
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in NAMES:
                out.append(f"{line} calls {node.func.id}()")
            out += [f"{line} passes shell=True" for k in node.keywords
                    if k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)]
    return out


def test_the_sources_never_load_code_from_a_file_or_run_a_shell():
    assert len(SOURCES) > 50  # the walk found the project
    found = [f for p in SOURCES for f in findings(ast.parse(p.read_text(), str(p)), str(p.relative_to(ROOT)))]
    assert not found, "\n".join(found)


def test_the_walker_sees_each_kind_of_risk():
    risky = """
import pickle
from yaml import load
import torch, yaml, subprocess
torch.load("m.pt")
yaml.load(text, Loader=yaml.Loader)
subprocess.run("ls", shell=True)
eval("1 + 1")
model.eval()
subprocess.run(["ls"], shell=False)
"""
    found = findings(ast.parse(risky), "x.py")
    assert sorted(f.split(" ", 1)[1] for f in found) == sorted([
        "imports pickle", "uses torch.load", "uses yaml.load", "uses yaml.Loader", "passes shell=True", "calls eval()"])
