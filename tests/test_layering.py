"""The package's layering: what `import alignjax` loads, and who imports what.

* `import alignjax` must stay light: no converter dependency (torch, transformers,
  safetensors' torch backend) and no `alignjax.interop` module; `alignjax.load_pretrained`
  imports them on first use.
* In every module of the package (`OWNED`):
  no module imports another module's underscore-prefixed name (`from alignjax.x import _y`,
  or `x._y` on an imported alignjax module), and no alignjax module is imported inside a
  function (a deferred import hides a dependency, usually a cycle).

The import graph is read from the sources with `ast` (nothing is imported), so this is fast.
"""

import ast
import functools
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG_DIR = os.path.join(REPO, "alignjax")

# Modules whose imports are checked: the whole package.
OWNED = ("alignjax", "alignjax.*")

# (module, function, imported module): sanctioned deferred imports. `alignjax.__getattr__`
# loads the converter stack (`pretrained` -> `interop`) only when `load_pretrained` is used.
ALLOWED_DEFERRED = {("alignjax", "__getattr__", "alignjax.pretrained")}


def _modules() -> dict[str, str]:
    """{dotted module name: file path} for every .py file of the package."""
    out = {}
    for d, _, files in os.walk(PKG_DIR):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                name = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _owned(name: str) -> bool:
    return any(name == o or (o.endswith(".*") and name.startswith(o[:-1])) for o in OWNED)


def _absolute(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of `from X import ...` (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


class _Visitor(ast.NodeVisitor):
    """Collects the alignjax imports of one module: deferred ones and private names."""

    def __init__(self, module: str, is_pkg: bool):
        self.module, self.is_pkg = module, is_pkg
        self.functions: list[str] = []
        self.aliases: dict[str, str] = {}  # local name -> alignjax module it is bound to
        self.deferred: list[tuple[int, str, str]] = []  # (line, function, imported module)
        self.private: list[tuple[int, str]] = []  # (line, 'module._name')

    def _imported(self, line: int, target: str) -> None:
        if self.functions and target != self.module:
            self.deferred.append((line, self.functions[-1], target))

    def _function(self, node) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name == "alignjax" or a.name.startswith("alignjax."):
                self._imported(node.lineno, a.name)
                if a.asname:
                    self.aliases[a.asname] = a.name
                else:
                    self.aliases["alignjax"] = "alignjax"

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _absolute(self.module, self.is_pkg, node)
        if not (base == "alignjax" or base.startswith("alignjax.")):
            return
        for a in node.names:
            full = f"{base}.{a.name}"
            if full in MODULES:  # `from alignjax.data import decode as D`: a module.
                self._imported(node.lineno, full)
                self.aliases[a.asname or a.name] = full
                continue
            self._imported(node.lineno, base)
            if _is_private(a.name) and base != self.module:
                self.private.append((node.lineno, full))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        target = self._resolve(node.value)
        if target is not None and target != self.module and _is_private(node.attr):
            self.private.append((node.lineno, f"{target}.{node.attr}"))
        self.generic_visit(node)

    def _resolve(self, node: ast.expr) -> str | None:
        """The alignjax module an expression names (`D`, `alignjax.data.decode`), or None."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            parent = self._resolve(node.value)
            if parent is not None and f"{parent}.{node.attr}" in MODULES:
                return f"{parent}.{node.attr}"
        return None


@functools.cache
def _scan(module: str) -> _Visitor:
    path = MODULES[module]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    v = _Visitor(module, path.endswith("__init__.py"))
    v.visit(tree)
    return v


OWNED_MODULES = sorted(m for m in MODULES if _owned(m))


def test_owned_modules_exist():
    plain = [o for o in OWNED if not o.endswith(".*")]
    assert [o for o in plain if o not in MODULES] == []
    assert len(OWNED_MODULES) > len(plain)


@pytest.mark.parametrize("module", OWNED_MODULES)
def test_no_private_names_of_other_modules(module):
    assert _scan(module).private == []


@pytest.mark.parametrize("module", OWNED_MODULES)
def test_no_deferred_alignjax_imports(module):
    found = [
        (line, fn, target)
        for line, fn, target in _scan(module).deferred
        if (module, fn, target) not in ALLOWED_DEFERRED
    ]
    assert found == []


def test_checker_sees_violations():
    """The visitor itself: a deferred import and both kinds of private-name use."""
    src = (
        "from alignjax.data import decode as D\n"
        "from alignjax.data.pipeline import _skip_error\n"
        "import alignjax.export\n"
        "def f():\n"
        "    from alignjax import export\n"
        "    return D._private, alignjax.export._resolve_path, D.public\n"
    )
    v = _Visitor("alignjax.somewhere", False)
    v.visit(ast.parse(src))
    assert v.deferred == [(5, "f", "alignjax.export")]
    assert sorted(p for _, p in v.private) == [
        "alignjax.data.decode._private",
        "alignjax.data.pipeline._skip_error",
        "alignjax.export._resolve_path",
    ]


def test_import_alignjax_loads_no_converter_stack():
    code = "import sys, json, alignjax; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    heavy = [
        m
        for m in loaded
        if m.split(".")[0] in ("torch", "transformers")
        or m == "safetensors.torch"
        or m in ("alignjax.interop", "alignjax.pretrained")
        or m.startswith("alignjax.interop.")
    ]
    assert heavy == []


def test_load_pretrained_is_reachable_from_the_package():
    import alignjax
    from alignjax import load_pretrained, pretrained

    assert alignjax.load_pretrained is load_pretrained is pretrained.load_pretrained
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        alignjax.nope  # noqa: B018


def test_tensorflow_datasets_is_imported_only_where_used():
    """Importing any `alignjax.data` module works without tensorflow_datasets (optional):
    it is imported inside the functions that need it, never at module level."""
    for module in (m for m in MODULES if m.startswith("alignjax.data")):
        with open(MODULES[module], encoding="utf-8") as f:
            tree = ast.parse(f.read())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "tensorflow_datasets"], module
