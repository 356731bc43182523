"""The package's layers, read from the imports of its source (ast), so that a breach fails here naming the file
and the import: the three release files import only the standard library, torch, transformers, numpy, PIL and
each other; library code never imports conversion/, a command-line script, benchmarks/ or tests/; no module of
the library imports itself back through others (function-level imports included)."""

import ast
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "modeling_cliptt5"
RELEASE_FILES = ("configuration_cliptt5", "modeling_cliptt5", "processing_cliptt5")
RELEASE_MODULES = {f"{PACKAGE}.{name}" for name in RELEASE_FILES}
COMMANDS = f"{PACKAGE}.cli"  # the command-line layer inside the package
RELEASE_MAY_IMPORT = {"torch", "transformers", "numpy", "PIL"}
SCRIPTS = {path.stem for path in REPO_ROOT.glob("*.py")}  # train, generate, app, demo, ...
NOT_FOR_THE_LIBRARY = {"conversion", "benchmarks", "tests", *SCRIPTS}


def module_name(path, root):
    """Dotted name of a package file: modeling_cliptt5/training/loop.py -> modeling_cliptt5.training.loop."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path, module):
    """[(line, absolute module name)] of every import in the file of `module` (relative ones resolved)."""
    found = []
    package_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y / from ..x import y / from . import y
                base = ".".join(package_parts[:len(package_parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
                names = [base] if node.module else [f"{base}.{alias.name}" for alias in node.names]
                found += [(node.lineno, name) for name in names]
            else:
                found.append((node.lineno, node.module))
                # from package import submodule: the submodule is what is imported
                found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                          if node.module.startswith(PACKAGE)]
    return found


def package_imports(root):
    """{module: (file, [(line, imported module)])} for every module of the package under `root`."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        module = module_name(path, root)
        modules[module] = (path.relative_to(root).as_posix(), imports_of(path, module))
    return modules


def breaches(root):
    """Every breach of the layers, one line each: "file:line: what"."""
    modules = package_imports(root)
    problems = []
    for module, (file, imports) in modules.items():
        is_cli = module == COMMANDS or module.startswith(COMMANDS + ".")
        for line, name in imports:
            top = name.split(".")[0]
            if module in RELEASE_MODULES:
                inside = name in RELEASE_MODULES or any(name.startswith(f"{release}.") for release in RELEASE_MODULES)
                if not (inside or top in RELEASE_MAY_IMPORT or top in sys.stdlib_module_names):
                    problems.append(f"{file}:{line}: release file imports {name}")
            if top in NOT_FOR_THE_LIBRARY or (not is_cli and (name == COMMANDS or name.startswith(COMMANDS + "."))):
                problems.append(f"{file}:{line}: library imports {name}")
    # circles: a depth-first search over the package's own imports
    graph = {module: sorted({name for _, name in imports if name in modules and name != module})
             for module, (_, imports) in modules.items()}
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in graph[module]:
            if state.get(target) == "open":
                circle = stack[stack.index(target):] + [target]
                problems.append("import circle: " + " -> ".join(circle))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module)
    return problems


def test_the_package_keeps_its_layers():
    problems = breaches(REPO_ROOT)
    assert not problems, "layer breaches:\n" + "\n".join(problems)


def test_the_check_finds_each_kind_of_breach(tmp_path):
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "configuration_cliptt5.py").write_text("import os\nfrom transformers import T5Config\n")
    (package / "modeling_cliptt5.py").write_text("import torch\nfrom .configuration_cliptt5 import X\n"
                                                  "from .helpers import y\n")
    (package / "processing_cliptt5.py").write_text("import numpy\nimport datasets\n")
    (package / "helpers.py").write_text("def f():\n    from conversion.common import z\n    from .loop_b import b\n")
    (package / "loop_b.py").write_text("from . import helpers\nimport train\n")
    for folder in ("inner", "cli"):
        (package / folder).mkdir()
        (package / folder / "__init__.py").write_text("")
    (package / "cli" / "train.py").write_text("from ..helpers import f\n")  # commands may use the library
    (package / "inner" / "deep.py").write_text("from ..cli.train import main\nfrom .. import modeling_cliptt5\n"
                                               "from modeling_cliptt5.inner import back\n")
    (package / "inner" / "back.py").write_text("from .deep import x\n")
    assert sorted(breaches(tmp_path)) == sorted([
        f"{PACKAGE}/modeling_cliptt5.py:3: release file imports {PACKAGE}.helpers",
        f"{PACKAGE}/processing_cliptt5.py:2: release file imports datasets",
        f"{PACKAGE}/helpers.py:2: library imports conversion.common",
        f"{PACKAGE}/loop_b.py:2: library imports train",
        f"import circle: {PACKAGE}.helpers -> {PACKAGE}.loop_b -> {PACKAGE}.helpers",
        f"{PACKAGE}/inner/deep.py:1: library imports {PACKAGE}.cli.train",
        f"import circle: {PACKAGE}.inner.back -> {PACKAGE}.inner.deep -> {PACKAGE}.inner.back",
    ])
