"""The architecture rules of DESIGN.md, checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import antavo_braze as ab

SRC = Path(ab.__file__).parent
NETWORK = {"requests", "urllib3", "http", "socket", "h11", "aiohttp", "redis"}
# The I/O layer: the transport the client composes (the client itself holds no socket).
IO_LAYER = {"_http/connection.py", "_http/loop.py", "_http/pool.py"}

# The layers, lowest first. A module may import (at run time; type-only imports under
# TYPE_CHECKING are free) the leaves and the layers its package lists, nothing above.
LEAVES = {"exceptions", "_fork", "_json", "_version", "_telemetry"}  # import only one another
ALLOWED: dict[str, set[str]] = {
    "_braze": set(),
    "models": {"_braze"},
    "_build": {"_braze", "models"},
    "_http": {"_braze"},
    "_antavo": {"_braze", "_http"},
    "_run": {"_braze", "models", "_build", "_http"},
    "_service": {"_braze", "models", "_build", "_http", "_antavo", "_run"},
    "_scale": {"_braze", "models", "_build", "_http", "_antavo", "_run", "_service"},
}
# The composition roots: they may import any layer; only they, the CLI, serve/ and testing/
# import them.
ROOTS = {"_client", "_users", "_identity", "_sync", "_sender", "_demo", "__init__"}
PURE_PACKAGES = ("_braze", "_build")
PACKAGE = "antavo_braze"


def imports_of(path: Path) -> set[str]:
    """Every module name imported by a file (relative imports as '.name')."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def runtime_imports_of(path: Path) -> set[str]:
    """The modules of ours a file imports when it runs, as absolute dotted names (imports
    inside ``if TYPE_CHECKING:`` left out; imports inside functions counted)."""
    package = [PACKAGE, *path.parent.relative_to(SRC).parts]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            if isinstance(child, ast.ImportFrom) and child.level:
                base = package[: len(package) - child.level + 1]
                module = ".".join(base + ([child.module] if child.module else []))
                if child.module:
                    found.add(module)
                else:  # from . import name: a module of the package
                    found.update(f"{module}.{alias.name}" for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith(PACKAGE):
                found.add(child.module or "")
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith(PACKAGE))
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def unit_of(module: str) -> str:
    """The top-level unit a dotted module belongs to: its sub-package, or its root module."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def library_files() -> list[Path]:
    return [p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] not in ("testing",)]


def test_layout_has_layers_in_folders() -> None:
    """At least five private sub-packages, and at most 12 private modules at the root."""
    packages = [p.name for p in SRC.iterdir() if p.is_dir() and p.name.startswith("_")]
    packages = [p for p in packages if p != "__pycache__"]
    root_private = [p.name for p in SRC.glob("_*.py") if p.name != "__init__.py"]
    assert len(packages) >= 5, packages
    assert len(root_private) <= 12, root_private
    assert set(ALLOWED) - {"models"} == set(packages), packages


def test_leaves_import_nothing_of_ours() -> None:
    """exceptions, _fork, _json, _version and _telemetry import nothing of ours at run time but
    one another."""
    for name in LEAVES:
        units = {unit_of(m) for m in runtime_imports_of(SRC / f"{name}.py")}
        assert units <= LEAVES - {name}, (name, units)


def test_each_layer_imports_only_the_layers_below() -> None:
    """Each sub-package imports the leaves and the layers listed for it, nothing above: the
    import graph reads bottom-up from the folders."""
    for path in library_files():
        unit = path.relative_to(SRC).parts[0].removesuffix(".py")
        if unit not in ALLOWED:
            continue
        for module in runtime_imports_of(path):
            target = unit_of(module)
            if target == unit or target in LEAVES:
                continue
            assert target in ALLOWED[unit], f"{path.relative_to(SRC)} imports {module}"


def test_only_the_top_imports_the_composition_roots() -> None:
    """The client, the Syncer and the sender are imported by one another, the CLI, serve/ and
    testing/ only: no layer reaches up into them."""
    for path in library_files():
        unit = path.relative_to(SRC).parts[0].removesuffix(".py")
        if unit in ROOTS or unit in ("cli", "serve"):
            continue
        reached = {unit_of(m) for m in runtime_imports_of(path)} & ROOTS
        assert not reached, f"{path.relative_to(SRC)} imports {reached}"


def test_the_rules_see_sub_packages() -> None:
    """The import reader resolves relative imports inside sub-packages (a rule that cannot see
    them would pass on anything)."""
    found = runtime_imports_of(SRC / "_run" / "tally.py")
    assert "antavo_braze._build.batching" in found, found
    assert unit_of("antavo_braze._build.batching") == "_build"


def test_pure_modules_do_no_io() -> None:
    """What Braze is and how records are built (_braze, _build) and models never import the
    client or the network."""
    files = [p for pkg in PURE_PACKAGES for p in (SRC / pkg).glob("*.py")]
    files += [SRC / "models.py", SRC / "exceptions.py"]
    assert len(files) > 10
    for path in files:
        found = imports_of(path)
        assert not {n.split(".")[0] for n in found} & NETWORK, (path.name, found)
        assert not any(n.endswith("_client") for n in found), path.name


def test_the_sender_window_planner_is_pure() -> None:
    """The background sender's window decisions (_service/window.py) use no thread, file,
    network or log, and of ours only the outcome values."""
    path = SRC / "_service" / "window.py"
    found = {n.split(".")[0] for n in imports_of(path)}
    effects = NETWORK | {"threading", "sqlite3", "concurrent", "asyncio", "logging", "os"}
    assert not found & effects, found
    assert runtime_imports_of(path) <= {f"{PACKAGE}._run.report"}, runtime_imports_of(path)


def test_only_the_client_touches_the_network() -> None:
    """Network modules are imported by the client and its transport only (and testing/)."""
    network = NETWORK | {"ssl", "selectors"}
    for path in SRC.rglob("*.py"):
        name = path.relative_to(SRC).as_posix()
        if name.startswith("testing/"):
            continue
        imported = imports_of(path)
        found = {n.split(".")[0] for n in imported} & network
        if name in IO_LAYER:
            assert found, name  # the check would notice them
        elif name == "_scale/redis.py":
            # The shared budget and state talk to Redis (never to Braze), and import the
            # optional client only to open a URL.
            assert found == {"redis"}, (name, found)
        elif name == "_antavo/client.py":
            # The Antavo client: requests (with escherauth's signing) is its transport.
            assert found == {"requests"}, (name, found)
        elif name == "_http/endpoint.py":
            # urllib3's URL parser only: the second opinion on what an endpoint URL means.
            assert {n for n in imported if n.startswith("urllib3")} == {
                "urllib3.exceptions",
                "urllib3.util",
            }
        else:
            assert not found, (name, found)


def test_no_module_of_ours_parses_http() -> None:
    """HTTP framing is h11's: no module of ours splits status lines, headers or chunks."""
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).as_posix().startswith("testing/"):
            continue  # the test double is a server, with http.server doing its parsing
        text = path.read_text()
        markers = ('find(b"\\r\\n', ", 16)", 'startswith("HTTP/', '"transfer-encoding"')
        for marker in markers:
            assert marker not in text, (path.name, marker)


def test_client_knows_no_antavo_or_mapping() -> None:
    """The client imports neither the mapping nor the mapper nor the Syncer."""
    found = runtime_imports_of(SRC / "_client.py")
    assert not found & {
        "antavo_braze._build.mapping",
        "antavo_braze._build.mapper",
        "antavo_braze._sync",
    }, found


def test_antavo_side_knows_no_braze() -> None:
    """The Antavo client knows Antavo's API, never Braze's client, the mapping or the sync."""
    for path in (SRC / "_antavo").glob("*.py"):
        units = {unit_of(m) for m in runtime_imports_of(path)}
        assert not units & {"_client", "_sync", "_sender", "_build", "_run"}, (path.name, units)
    shapes = imports_of(SRC / "_antavo" / "shapes.py")
    assert not {n.split(".")[0] for n in shapes} & NETWORK, shapes


def test_library_never_imports_the_test_double() -> None:
    """Only the CLI's demo imports antavo_braze.testing (checked in every sub-package);
    importing the package does not."""
    for path in SRC.rglob("*.py"):
        name = path.relative_to(SRC).as_posix()
        if name == "cli.py" or name.startswith("testing/"):
            continue
        assert not any("testing" in n for n in imports_of(path)), name
    code = "import sys, antavo_braze; print('antavo_braze.testing' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_names_are_sorted_and_importable() -> None:
    """__all__ is sorted, complete and each name resolves."""
    assert ab.__all__ == sorted(ab.__all__)
    for name in ab.__all__:
        assert getattr(ab, name) is not None
    assert ab.testing.FakeBraze is not None
    assert (SRC / "py.typed").is_file()


def test_exception_tree() -> None:
    """The exception hierarchy matches the contract."""
    assert issubclass(ab.MappingError, ab.ConfigurationError)
    for error in (
        ab.AuthenticationError,
        ab.PermissionDeniedError,
        ab.BadRequestError,
        ab.RateLimitError,
        ab.ServerError,
    ):
        assert issubclass(error, ab.BrazeAPIError)
    for error in (ab.ConfigurationError, ab.CoercionError, ab.BrazeAPIError, ab.TransportError):
        assert issubclass(error, ab.AntavoBrazeError)
    assert "AntavoBrazeError" in (ab.exceptions.__doc__ or "")


def test_runtime_dependencies() -> None:
    """pyproject lists attrs, cattrs, urllib3, the HTTP framing library (h11), and requests
    with escherauth (the Antavo side) at runtime."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the 3.10 run skips this one

    project = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["project"]
    names = sorted(d.split(">")[0].split("=")[0] for d in project["dependencies"])
    assert names == ["attrs", "cattrs", "escherauth", "h11", "requests", "urllib3"]


def test_public_classes_report_the_package_as_their_module() -> None:
    """Every public class and function defined in a private layer says ``antavo_braze`` is its
    module (as httpx's do), and still pickles by that name."""
    import pickle

    checked = 0
    for name in ab.__all__:
        value = getattr(ab, name)
        if isinstance(value, type) and not value.__module__.startswith("antavo_braze."):
            assert value.__module__ == "antavo_braze", name
            checked += 1
    assert checked > 30
    assert ab.Syncer.__module__ == ab.SyncReport.__module__ == "antavo_braze"
    assert repr(ab.BatchLimits()).startswith("BatchLimits(")
    assert pickle.loads(pickle.dumps(ab.BatchLimits())) == ab.BatchLimits()


def test_public_annotations_resolve_after_the_module_rename() -> None:
    """typing.get_type_hints works on every public class and function (it reads annotations
    through ``__module__``, which now names the package)."""
    import typing

    for name in ab.__all__:
        value = getattr(ab, name)
        if isinstance(value, type) or callable(value):
            typing.get_type_hints(value)


HOT_MARK = "HOT"


def test_fast_tricks_stay_in_the_few_files_marked_hot() -> None:
    """``tuple.__new__`` (the hot path's no-``__new__`` trick) appears only in the few modules
    whose docstring starts with HOT; the rest of the code reads plainly (``Item(...)``). Exact
    types are tested with ``type(x) is T`` everywhere, never ``x.__class__`` (slower from
    Python 3.11, whose interpreter specializes ``type(x)``, and fooled by a proxy)."""
    hot = []
    for path in SRC.rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        text = path.read_text()
        assert ".__class__" not in text, f"{path.relative_to(SRC)}: use type(x), not x.__class__"
        if doc.startswith(HOT_MARK):
            hot.append(path.relative_to(SRC).as_posix())
        elif "tuple.__new__" in text:
            raise AssertionError(f"{path.relative_to(SRC)} uses a hot-path trick but is not HOT")
    assert set(hot) <= {f"_build/{n}.py" for n in ("coerce", "mapper", "plan", "records", "wire")}
    assert len(hot) >= 3, hot


def test_the_syncer_reaches_the_client_through_its_seam() -> None:
    """The Syncer and the layers below the roots use the client's package-level seam
    (``send_batches``, ``telemetry_of``), never a private attribute of a client."""
    files = [
        SRC / "_sync.py",
        *[p for pkg in ("_run", "_service", "_scale") for p in (SRC / pkg).glob("*.py")],
    ]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "client"
                and node.attr.startswith("_")
            ):
                raise AssertionError(f"{path.relative_to(SRC)} reads client.{node.attr}")
