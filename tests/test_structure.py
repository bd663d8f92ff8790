"""The shape of the code, checked statically: no import loops between the package's modules, no module
importing another's private names, argparse only in cli.py, mpi4py only in comm.py."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "qwen3_mpi"


def _modules() -> dict[str, ast.Module]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = (ast.parse(path.read_text()), path.name == "__init__.py")
    return modules


def _imports(name: str, tree: ast.Module, is_package: bool):
    """(imported module, names) of every import statement in the module, anywhere in it."""
    here = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            base = here
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = ".".join(p for p in (base if node.level else "", node.module or "") if p)
            yield module, [alias.name for alias in node.names]


def _graph():
    modules = _modules()
    graph = {}
    for name, (tree, is_package) in modules.items():
        edges = set()
        for module, names in _imports(name, tree, is_package):
            for target in [module] + [f"{module}.{n}" for n in names]:
                if target in modules and target != name:
                    edges.add(target)
        graph[name] = edges
    return modules, graph


def test_no_import_loops():
    _, graph = _graph()
    done, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import loop: " + " -> ".join(stack[stack.index(node) :] + [node]))
        if node in done:
            return
        stack.append(node)
        for target in sorted(graph[node]):
            if target != "qwen3_mpi" and not node.startswith(target + "."):  # a package's __init__ is its parent
                visit(target)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


def test_no_private_names_imported_from_other_modules():
    modules = _modules()
    for name, (tree, is_package) in modules.items():
        for module, names in _imports(name, tree, is_package):
            if module.startswith("qwen3_mpi"):
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                assert not private, f"{name} imports {private} from {module}"


def test_argparse_only_in_cli_and_mpi4py_only_in_comm():
    modules = _modules()
    for name, (tree, is_package) in modules.items():
        imported = {module.split(".")[0] for module, _ in _imports(name, tree, is_package)}
        if name != "qwen3_mpi.cli":
            assert "argparse" not in imported, name
        if name != "qwen3_mpi.comm":
            assert "mpi4py" not in imported, name
