"""Imports point one way: kernels and data at the bottom, then eval, tokenizer and
generator, launch (the entry points) at the top; nothing below imports what is above.

Every import statement counts, those inside function bodies too (they are the ones a
reader of a file's top misses). The one exception is an alias module for an entry point
that moved to launch/ (``python -m tokenizer.train``): its whole body is a docstring and
an ``if __name__ == "__main__"`` block that runs the entry point by name, so importing
it imports nothing and no library code can depend on it.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> the project packages it may import (besides itself)
ALLOWED = {
    "kernels": set(),
    "data": set(),
    "eval": {"data"},
    "tokenizer": {"kernels", "data", "eval"},
    "generator": {"kernels", "data", "eval", "tokenizer"},
    "launch": {"kernels", "data", "eval", "tokenizer", "generator"},
}
ALIASES = {"tokenizer/train.py": "launch.train_tokenizer",
           "tokenizer/compare.py": "launch.compare_tokenizers",
           "tokenizer/bench.py": "launch.bench_tokenizer",
           "generator/train.py": "launch.train_gpt",
           "generator/bench.py": "launch.bench_gpt"}


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for every absolute import anywhere in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, "." * node.level))  # relative: refused below
            elif node.module:
                found.append((node.lineno, node.module))
    return found


def is_alias(tree: ast.Module) -> str | None:
    """The module an alias runs, if ``tree`` is only a docstring + a __main__ block that
    calls runpy.run_module("<name>", ...); else None."""
    body = [n for n in tree.body if not (isinstance(n, ast.Expr)
                                         and isinstance(n.value, ast.Constant))]
    if len(body) != 1 or not isinstance(body[0], ast.If):
        return None
    test = body[0].test
    if not (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__"):
        return None
    calls = [n for n in ast.walk(body[0]) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "run_module"]
    imports = [m for _, m in imported_modules(body[0])]
    if len(calls) != 1 or imports != ["runpy"] or not isinstance(calls[0].args[0],
                                                                ast.Constant):
        return None
    return calls[0].args[0].value


def violations(root: Path, allowed=ALLOWED, aliases=ALIASES) -> list[str]:
    out = []
    for package, may in allowed.items():
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            tree = ast.parse(path.read_text(), rel)
            if rel in aliases:
                if is_alias(tree) != aliases[rel]:
                    out.append(f"{rel}: not a plain alias of {aliases[rel]}")
                continue
            for line, module in imported_modules(tree):
                top = module.split(".")[0]
                if module.startswith("."):
                    out.append(f"{rel}:{line}: relative import (write the package's name)")
                elif top in allowed and top != package and top not in may:
                    out.append(f"{rel}:{line}: {package} imports {module}")
    return out


def test_imports_point_one_way():
    assert violations(ROOT) == []


def test_aliases_run_their_entry_point():
    for rel, target in ALIASES.items():
        assert (ROOT / target.replace(".", "/")).with_suffix(".py").is_file(), target
        assert is_alias(ast.parse((ROOT / rel).read_text())) == target, rel


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize("text", [
    "from launch import config\n",                        # at the top
    "def f():\n    import launch.train_tokenizer\n",        # inside a function body
    "class A:\n    def f(self):\n        from launch.pipeline import run\n",
])
def test_a_model_module_importing_launch_is_found(tmp_path, text):
    root = _tree(tmp_path, {"tokenizer/model.py": text, "launch/x.py": "import tokenizer\n"})
    found = violations(root, aliases={})
    assert len(found) == 1 and "tokenizer imports launch" in found[0], found


def test_a_lower_package_importing_a_higher_one_is_found(tmp_path):
    root = _tree(tmp_path, {"data/x.py": "import eval.fid\n", "eval/y.py": "import data.x\n",
                            "generator/z.py": "from tokenizer import base\n"})
    assert violations(root, aliases={}) == ["data/x.py:1: data imports eval.fid"]


def test_an_alias_that_does_more_is_not_an_alias(tmp_path):
    text = ('"""alias"""\nimport launch.train_tokenizer\nif __name__ == "__main__":\n'
            '    import runpy\n    runpy.run_module("launch.train_tokenizer")\n')
    root = _tree(tmp_path, {"tokenizer/train.py": text})
    assert violations(root, aliases={"tokenizer/train.py": "launch.train_tokenizer"}) == [
        "tokenizer/train.py: not a plain alias of launch.train_tokenizer"]


def test_each_package_says_what_it_may_import():
    for package, may in ALLOWED.items():
        doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
        line = next((t for t in (doc or "").splitlines() if t.startswith("May import:")), "")
        said = {w.strip(" .") for w in line.removeprefix("May import:").split(",")}
        assert said == (may or {"nothing of the project"}), (package, line)
