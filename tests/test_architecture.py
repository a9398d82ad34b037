"""The package's layers hold: read from the source, every import included.

    core      pure rules and formats: imports only core
    adapters  one boundary per outside thing (files, libvirt, guestfs, tools): core
    engine    runs, methods, data path, stores: core and adapters
    cli       the commands: everything

No cycle, no import inside a function to dodge one, and the bindings of libvirt and
libguestfs, click and rich are each imported only where their boundary is. The raw
libvirt handles stay inside the hypervisor adapter: the rest of the package reaches
libvirt through its Hypervisor and Domain only.
"""

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "virtbackup"
LAYERS = {"core": 0, "adapters": 1, "engine": 2, "cli": 3}
# Outside packages and the only modules that may import them.
BOUNDARIES = {
    "libvirt": {"virtbackup.adapters.hypervisor.bindings"},
    "libvirt_qemu": {"virtbackup.adapters.hypervisor.bindings"},
    "guestfs": {"virtbackup.adapters.guestfs_ops"},
    "nbd": {"virtbackup.adapters.nbd_export"},
    # the plugin nbdkit loads: the module `nbdkit` exists only inside nbdkit's process
    "nbdkit": {"virtbackup.engine.datapath.nbdkit_plugin"},
    "click": "virtbackup.cli",  # a whole layer
    # rich draws on the consoles of cli.console; the views draw bars, tables and prompts.
    "rich": {
        "virtbackup.cli.console",
        "virtbackup.cli.progress_view",
        "virtbackup.cli.summary_view",
        "virtbackup.cli.list_view",
        "virtbackup.cli.backups_view",
        "virtbackup.cli.prune_view",
        "virtbackup.cli.doctor_view",
        "virtbackup.cli.shrink_view",
    },
}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a virtbackup module, or the top-level name of an outside package
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(name, _resolve(alias.name, known), child.lineno, inner))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    target = full if full in known else _resolve(base, known)
                    found.append(Import(name, target, child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return found


def _resolve(dotted: str, known: set[str]) -> str:
    return dotted if dotted.startswith("virtbackup") and dotted in known else dotted.split(".")[0]


def all_imports() -> list[Import]:
    found = modules()
    known = set(found)
    return [i for name, path in sorted(found.items()) for i in imports_of(name, path, known)]


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
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

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return found


def ours(found: list[Import]) -> list[Import]:
    return [i for i in found if i.target.startswith("virtbackup.")]


def test_the_source_is_read_whole() -> None:
    # Guards the reader below: the graph has the edges every test relies on.
    found = all_imports()
    pairs = {(i.importer, i.target) for i in found}
    assert ("virtbackup.cli.main", "virtbackup.cli.console") in pairs
    assert ("virtbackup.adapters.hypervisor.bindings", "libvirt") in pairs
    assert len(ours(found)) > 200


def test_no_layer_imports_one_above_it() -> None:
    wrong = [
        f"{i.importer}:{i.line} imports {i.target}"
        for i in ours(all_imports())
        if (mine := layer(i.importer)) is not None
        and (theirs := layer(i.target)) is not None
        and theirs > mine
    ]
    assert wrong == []


def test_no_import_inside_a_function_for_our_own_modules() -> None:
    inner = [
        f"{i.importer}:{i.line} imports {i.target}" for i in ours(all_imports()) if i.in_function
    ]
    assert inner == []


def test_the_import_graph_has_no_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for i in ours(all_imports()):
        edges.setdefault(i.importer, set()).add(i.target)
    assert cycles(edges) == []


@pytest.mark.parametrize("outside", sorted(BOUNDARIES))
def test_outside_packages_are_imported_only_at_their_boundary(outside: str) -> None:
    allowed = BOUNDARIES[outside]
    wrong = [
        f"{i.importer}:{i.line}"
        for i in all_imports()
        if i.target == outside
        and (
            i.importer not in allowed
            if isinstance(allowed, set)
            else not i.importer.startswith(allowed)
        )
    ]
    assert wrong == []


HYPERVISOR = "virtbackup.adapters.hypervisor"
# What the rest of the package may import of the hypervisor adapter.
HYPERVISOR_FACES = {f"{HYPERVISOR}.connection", f"{HYPERVISOR}.domain"}


def test_libvirt_is_reached_through_the_hypervisor_objects_only() -> None:
    wrong = [
        f"{i.importer}:{i.line} imports {i.target}"
        for i in ours(all_imports())
        if i.target.startswith(HYPERVISOR + ".")
        and not i.importer.startswith(HYPERVISOR + ".")
        and i.target not in HYPERVISOR_FACES
    ]
    assert wrong == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
