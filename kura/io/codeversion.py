"""Derived code versions: what an asset's code version covers is computed from the source, never listed.

An asset's code version hashes
- the normalized AST of the asset function itself (its decorator, docstrings and comments left out),
- every definition of the project (`kura`, `assets`, `resources`, `pipelines`) that it reaches, transitively:
  functions, classes and module-level constants it names, through `import`s, `from … import`s (re-exports
  followed to where a name is defined), attribute chains (`filters.clean_documents`), closures of factories
  and annotations (a parameter typed `StorageResource` pulls in that class and what its methods call),
- the versions of the third-party distributions it reaches that can change an output (torch, sentencepiece,
  vllm, resiliparse, numpy, …); packages that only move bytes or draw the UI (dagster, pyarrow, pydantic,
  matplotlib, yaml, fsspec, …) are in NEUTRAL_PACKAGES and stay out.

Normalizing by AST means a comment, a docstring or a reformatting changes no version; editing a function body
changes the versions of exactly the assets that reach that function. The resolution is static and errs on the side
of covering too much (a local variable named like a module-level function pulls that function in): a spurious
rebuild is cheap, a missed one is a wrong lineage. Calls through values the source does not name (a registry
looked up by a string, a method on an object of unannotated type) are covered when the registry or the class is
named somewhere on the path, which kura's registries are.

Parsed modules and per-definition hashes are cached, so loading ~60 assets' definitions costs well under a second.
"""
from __future__ import annotations

import ast
import copy
import functools
import hashlib
import importlib.metadata
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

PROJECT_PACKAGES = ("kura", "assets", "resources", "pipelines")
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Third-party packages that cannot change what an asset writes: orchestration, configuration parsing, transport,
# serialization of rows whose values kura computes, plotting of metadata. Everything else that is reached counts.
NEUTRAL_PACKAGES = frozenset({
    "dagster", "dagster_k8s", "dagster_postgres", "dagster_webserver", "dagster_pipes", "pydantic",
    "pydantic_settings", "typing_extensions", "yaml", "fsspec", "s3fs", "boto3", "botocore", "aiobotocore",
    "pyarrow", "pandas", "matplotlib", "kubernetes", "kubernetes_validate", "requests", "httpx", "urllib3",
    "openai", "psutil", "filelock", "tqdm", "rich", "dvc", "great_expectations",
})


@dataclass(frozen=True)
class CodeVersion:
    """What one asset's code version covers: `modules` maps each project module to the hash of the definitions
    reached in it and `names` to their names; `packages` maps distributions to versions."""

    hash: str
    modules: dict[str, str] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)
    packages: dict[str, str] = field(default_factory=dict)
    extra: str = ""

    def describe(self) -> dict[str, Any]:
        """The components as plain data (for metadata and `pipelines.cli versions`)."""
        return {"hash": self.hash, "modules": dict(self.modules), "packages": dict(self.packages),
                **({"extra": self.extra} if self.extra else {})}


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PROJECT_PACKAGES


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """Bare string statements (docstrings, attribute docstrings of configs) have no effect on behaviour."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            kept = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                            and isinstance(s.value.value, str))]
            node.body = kept or [ast.Pass()]
    return tree


def _strip_orchestration_decorators(tree: ast.AST) -> None:
    """`@kura_asset(...)` / `@dg.…(...)` name and schedule a function; they do not change what it computes."""
    def root(d: ast.expr) -> str:
        d = d.func if isinstance(d, ast.Call) else d
        while isinstance(d, ast.Attribute):
            d = d.value
        return d.id if isinstance(d, ast.Name) else ""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.decorator_list = [d for d in node.decorator_list if root(d) not in ("kura_asset", "dg")]


def _dump(node: ast.AST) -> str:
    return ast.dump(node, annotate_fields=False, include_attributes=False)


@dataclass
class _Module:
    name: str
    tree: ast.Module
    defs: dict[str, list[ast.stmt]]          # name → top-level statements that bind it (def, class, assign)
    imports: dict[str, tuple[str, str | None]]  # name → (module, attribute or None for a module)
    package: str = ""


def _import_targets(node: ast.Import | ast.ImportFrom, package: str) -> dict[str, tuple[str, str | None]]:
    out: dict[str, tuple[str, str | None]] = {}
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.asname:
                out[a.asname] = (a.name, None)
            else:  # `import a.b` binds `a`; attribute chains resolve the rest
                out[a.name.split(".")[0]] = (a.name.split(".")[0], None)
        return out
    if node.module == "__future__":
        return out
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join([p for p in parts if p] + ([node.module] if node.module else []))
    for a in node.names:
        out[a.asname or a.name] = (base, a.name)
    return out


@functools.lru_cache(maxsize=None)
def _load(module: str) -> _Module | None:
    """Parsed, docstring-free top level of a project module (None for a module without Python source)."""
    path = _source_file(module)
    if path is None:
        return None
    tree = _strip_docstrings(ast.parse(path.read_text(encoding="utf-8")))
    _strip_orchestration_decorators(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    defs: dict[str, list[ast.stmt]] = {}
    imports: dict[str, tuple[str, str | None]] = {}
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs.setdefault(stmt.name, []).append(stmt)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        defs.setdefault(n.id, []).append(stmt)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            imports.update(_import_targets(stmt, package))
    # statements that bind nothing by name (registrations, `if TYPE_CHECKING:` blocks, ...) belong to the module
    rest = [s for s in tree.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                       ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Import,
                                                       ast.ImportFrom))]
    if rest:
        defs.setdefault("<module>", []).extend(rest)
    return _Module(module, tree, defs, imports, package)


@functools.lru_cache(maxsize=None)
def _source_file(module: str) -> Path | None:
    """The file of a project module, found on disk: nothing is imported (importing a package to look a name up
    would load torch & co. while definitions load)."""
    base = PROJECT_ROOT.joinpath(*module.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def _module_exists(name: str) -> bool:
    return _is_project(name) and _source_file(name) is not None


@functools.lru_cache(maxsize=1)
def _top_level_distributions() -> dict[str, str]:
    """Top-level module → distribution, from each installed distribution's top_level.txt (or its normalized
    name): reading that one small file per distribution is ~20× faster than packages_distributions()."""
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        out.setdefault(name.lower().replace("-", "_"), name)
        for line in (dist.read_text("top_level.txt") or "").split():
            out.setdefault(line.strip(), name)
    return out


@functools.lru_cache(maxsize=None)
def _distribution_of(top: str) -> tuple[str, str] | None:
    if top in sys.stdlib_module_names or top in NEUTRAL_PACKAGES or top.startswith("dagster") or _is_project(top):
        return None
    name = _top_level_distributions().get(top)
    if name is None:
        return None
    try:
        return name, importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# A target of a reference: ("def", module, name) a definition as seen from a module (followed through imports),
# ("mod", module) a whole module, ("ext", top_level) a third-party package.
Target = tuple


def _resolve_import(target: str, attr: str | None) -> Target:
    if attr is None:
        return ("mod", target) if _is_project(target) else ("ext", target)
    if _module_exists(f"{target}.{attr}"):
        return ("mod", f"{target}.{attr}")
    return ("def", target, attr) if _is_project(target) else ("ext", target)


def _refs(mod: _Module, node: ast.AST, scope: dict[str, ast.AST]) -> tuple[list[Target], list[str]]:
    """Direct targets of the names `node` uses, and the names of `scope` (sibling closures) it uses."""
    local_imports: dict[str, tuple[str, str | None]] = {}
    for n in ast.walk(node):
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            local_imports.update(_import_targets(n, mod.package))
    local = _local_names(node) - set(local_imports) - set(scope)
    targets: list[Target] = [_resolve_import(t, a) if _is_project(t) else ("ext", t)
                             for t, a in local_imports.values()]
    used_scope: list[str] = []
    handled: set[int] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute):
            chain, root = [], n
            while isinstance(root, ast.Attribute):
                chain.append(root.attr)
                root = root.value
            if not isinstance(root, ast.Name) or id(root) in handled:
                continue
            handled.add(id(root))
            name, chain = root.id, list(reversed(chain))
        elif isinstance(n, ast.Name) and id(n) not in handled:
            name, chain = n.id, []
        else:
            continue
        if name in local:
            continue
        if name in scope:
            used_scope.append(name)
            continue
        imp = local_imports.get(name) or mod.imports.get(name)
        if imp is None:
            if name in mod.defs:
                targets.append(("def", mod.name, name))
            continue
        t = _resolve_import(*imp)
        # a module: follow the attribute chain while it names submodules, then the definition it reaches
        while t[0] == "mod" and chain:
            part = chain.pop(0)
            t = ("mod", f"{t[1]}.{part}") if _module_exists(f"{t[1]}.{part}") else ("def", t[1], part)
        targets.append(t)
    return targets, used_scope


@functools.lru_cache(maxsize=None)
def _def_edges(module: str, name: str) -> tuple[str | None, tuple[Target, ...]]:
    """(hash of the definition of `name` in `module` or None where it is only imported there, its targets)."""
    mod = _load(module)
    if mod is None:
        return None, ()
    if name in mod.defs:
        nodes = mod.defs[name]
        digest = hashlib.sha256("\n".join(_dump(n) for n in nodes).encode()).hexdigest()
        targets: list[Target] = []
        for n in nodes:
            targets += _refs(mod, n, {})[0]
        return digest, tuple(dict.fromkeys(targets))
    if name in mod.imports:
        return None, (_resolve_import(*mod.imports[name]),)
    if _module_exists(f"{module}.{name}"):
        return None, (("mod", f"{module}.{name}"),)
    return None, ()


class _Walker:
    """Depth-first walk over cached definition edges, collecting node hashes per module and packages."""

    def __init__(self) -> None:
        self.seen: set[Target] = set()
        self.covered: dict[str, dict[str, str]] = {}
        self.packages: dict[str, str] = {}

    def visit(self, targets: list[Target] | tuple[Target, ...]) -> None:
        stack = list(targets)
        while stack:
            t = stack.pop()
            if t in self.seen:
                continue
            self.seen.add(t)
            if t[0] == "ext":
                dist = _distribution_of(t[1].split(".")[0])
                if dist:
                    self.packages[dist[0]] = dist[1]
            elif t[0] == "mod":
                mod = _load(t[1])
                if mod is not None:
                    stack += [("def", t[1], n) for n in mod.defs]
            else:
                digest, more = _def_edges(t[1], t[2])
                if digest is not None:
                    self.covered.setdefault(t[1], {})[t[2]] = digest
                stack += more


def _nested_scope(tree: ast.Module, target: ast.AST) -> dict[str, ast.AST]:
    """Functions and classes defined in the functions that enclose `target` (a factory's sibling closures)."""
    scope: dict[str, ast.AST] = {}

    def visit(node: ast.AST, path: list[ast.AST]) -> bool:
        if node is target:
            for enc in path:
                for stmt in ast.walk(enc):
                    if stmt is not enc and stmt is not target and isinstance(
                            stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        scope.setdefault(stmt.name, stmt)
            return True
        return any(visit(c, path + [node] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else path)
                   for c in ast.iter_child_nodes(node))

    visit(tree, [])
    return scope


def _function_node(mod: _Module, fn: Callable) -> ast.AST:
    """The (possibly nested) def of `fn` in its module's tree: the first def of that name at or after the line
    its code object starts on (the decorator's line for a decorated function)."""
    line = fn.__code__.co_firstlineno
    found = [n for n in ast.walk(mod.tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
             and n.name == fn.__name__ and n.lineno >= line]
    if not found:
        raise LookupError(f"cannot find the source of {fn.__module__}.{fn.__qualname__}")
    return min(found, key=lambda n: n.lineno)


def _local_names(node: ast.AST) -> set[str]:
    """Names bound inside the functions of `node` (parameters, assignments, loop and `with` targets): a use of
    one of them is a local value, not the module-level definition of the same name."""
    names: set[str] = set()
    declared_global: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = n.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, *([a.vararg] if a.vararg else []),
                        *([a.kwarg] if a.kwarg else [])]:
                names.add(arg.arg)
            for sub in ast.walk(n):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    names.add(sub.id)
                elif isinstance(sub, (ast.Global, ast.Nonlocal)):
                    declared_global.update(sub.names)
    return names - declared_global


def code_version(fn: Callable, extra: str = "") -> CodeVersion:
    """The derived code version of an asset function (see the module docstring). `extra` is data that belongs to
    the definition itself (a run spec that a factory bakes into the asset), hashed beside the code."""
    fn = inspect.unwrap(fn)
    mod = _load(fn.__module__)
    if mod is None:
        raise LookupError(f"{fn.__module__} has no Python source to derive a code version from")
    node = _function_node(mod, fn)
    root = copy.copy(node)
    root.decorator_list = []  # the decorator names the asset (key, group, description): not its behaviour
    w = _Walker()
    scope = _nested_scope(mod.tree, node)
    w.covered.setdefault(mod.name, {})[fn.__qualname__] = hashlib.sha256(_dump(root).encode()).hexdigest()
    pending, done = [root], set()
    while pending:  # the function itself and the sibling closures of its factory that it uses
        n = pending.pop()
        targets, used = _refs(mod, n, scope)
        w.visit(targets)
        for name in used:
            if name not in done:
                done.add(name)
                w.covered[mod.name][f"{fn.__qualname__}:{name}"] = hashlib.sha256(
                    _dump(scope[name]).encode()).hexdigest()
                pending.append(scope[name])
    modules = {m: hashlib.sha256("\n".join(f"{k}={v}" for k, v in sorted(parts.items())).encode()).hexdigest()[:12]
               for m, parts in sorted(w.covered.items())}
    names = {m: sorted(parts) for m, parts in sorted(w.covered.items())}
    packages = dict(sorted(w.packages.items()))
    total = hashlib.sha256(repr((sorted(modules.items()), sorted(packages.items()), extra)).encode()).hexdigest()
    return CodeVersion(total[:16], modules, names, packages, extra)


def clear_cache() -> None:
    """Forget parsed modules (tests that edit source in place)."""
    for f in (_load, _source_file, _def_edges):
        f.cache_clear()
