"""The architecture rules of DESIGN.md, checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import antavo_braze as ab

SRC = Path(ab.__file__).parent
PURE = [
    "_types.py",
    "_coerce.py",
    "models.py",
    "_mapping.py",
    "_mapper.py",
    "_converter.py",
    "_batching.py",
    "_retry.py",
    "_json.py",
    "_limits.py",
    "_wire.py",
    "_profile.py",
    "exceptions.py",
]
NETWORK = {"requests", "urllib3", "http", "socket", "h11", "aiohttp", "redis"}
# The I/O layer: the transport the client composes (the client itself holds no socket).
IO_LAYER = {"_http/_connection.py", "_http/_loop.py", "_http/_pool.py"}


def imports_of(path: Path) -> set[str]:
    """Every module name imported by a file (relative imports as '.name')."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_pure_modules_do_no_io() -> None:
    """Types, coercion, models, mapping and mapper never import the client or the network."""
    for name in PURE:
        found = imports_of(SRC / name)
        assert not {n.split(".")[0] for n in found} & NETWORK, (name, found)
        assert "._client" not in found, name


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
        elif name == "_redis.py":
            # The shared budget and state talk to Redis (never to Braze), and import the
            # optional client only to open a URL.
            assert found == {"redis"}, (name, found)
        elif name == "_endpoint.py":
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
    """The client imports neither the mapping nor the mapper."""
    found = imports_of(SRC / "_client.py")
    assert not found & {"._mapping", "._mapper", "._sync"}


def test_library_never_imports_the_test_double() -> None:
    """Only the CLI's demo imports antavo_braze.testing; importing the package does not."""
    for path in SRC.glob("*.py"):
        if path.name != "cli.py":
            assert not any("testing" in n for n in imports_of(path)), path.name
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
    """pyproject lists attrs, cattrs, urllib3, the HTTP framing library (h11), and escherauth
    with the requests it signs with, at runtime."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the 3.10 run skips this one

    project = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["project"]
    names = sorted(d.split(">")[0].split("=")[0] for d in project["dependencies"])
    assert names == ["attrs", "cattrs", "escherauth", "h11", "requests", "urllib3"]
