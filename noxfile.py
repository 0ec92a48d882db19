"""Sessions: tests (with an orjson leg and a compiled-hot-path leg), slow, lint, typing, docs,
floors, bench. Each installs what it needs into its own venv."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "slow", "lint", "typing", "docs"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

# Coverage floor for the I/O modules (client, transport, pacing, retries, FakeBraze), branches.
IO_MODULES = "*/_client.py,*/_http/*,*/testing/*"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (without the slow scenarios: see ``slow``) with branch coverage; then the
    JSON-sensitive tests again with orjson."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pip", "uninstall", "-y", "-q", "orjson", silent=True)
    session.run(
        "pytest",
        "-m",
        "not slow",
        "--cov=antavo_braze",
        "--cov-branch",
        "--cov-report=",
        *session.posargs,
        env={"COVERAGE_FILE": ".coverage"},
    )
    session.run("coverage", "report", "--fail-under=90")
    session.run("coverage", "report", f"--include={IO_MODULES}", "--fail-under=95")
    if not session.posargs:
        session.install("orjson")
        session.run(
            "pytest",
            "-q",
            "tests/test_client.py",
            "tests/test_transport.py",
            "tests/test_sync.py",
            "tests/test_json.py",
            "tests/test_fast_paths.py",
            "tests/test_input.py",
        )
        compiled_leg(session)


# The tests of the compiled modules' rules and of the runs through them, again on the build.
COMPILED_TESTS = (
    "tests/test_coerce.py",
    "tests/test_fast_paths.py",
    "tests/test_records.py",
    "tests/test_rules.py",
    "tests/test_mapper.py",
    "tests/test_plan.py",
    "tests/test_sync.py",
    "tests/test_accounting.py",
    "tests/test_guards.py",
    "tests/test_beyond_track.py",
)


@nox.session
def compiled(session: nox.Session) -> None:
    """The coercion tests on the compiled hot path alone (the last leg of ``tests``)."""
    compiled_leg(session)


def compiled_leg(session: nox.Session) -> None:
    """Install the wheel with the compiled hot path (mypyc, as HATCH_BUILD_HOOK_ENABLE_MYPYC
    builds it) and run the coercion tests on it: the same source must follow the same rules
    compiled. Skipped, saying so, on a machine without a C compiler."""
    import shutil
    import sysconfig
    import tempfile

    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        session.warn(f"no C compiler ({compiler}): the compiled hot path is not tested here")
        return
    # Built from a copy: the build leaves the compiled files beside the source it compiled,
    # where the editable install of the other legs would import them instead of the source.
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "antavo-braze"
        junk = (".git", ".nox", ".venv", "__pycache__", "*.so", "build", "dist", "site")
        shutil.copytree(".", copy, ignore=shutil.ignore_patterns(*junk))
        session.install(f"{copy}[test]", env={"HATCH_BUILD_HOOK_ENABLE_MYPYC": "true"})
    session.run(
        "python",
        "-c",
        "from antavo_braze._build import coerce; "
        "assert coerce.BUILD == 'compiled', coerce.__file__",
    )
    session.run("pytest", "-q", "-p", "no:cacheprovider", *COMPILED_TESTS)
    session.install("-e", ".[test]")  # a reused venv goes back to the editable source


# Extras whose floors are proven with the runtime dependencies' (the others are test tools).
FLOOR_EXTRAS = ("fast", "redis")


def lowest_allowed() -> list[str]:
    """``name==floor`` for every runtime dependency and FLOOR_EXTRAS, read from pyproject.toml
    (the one place the floors are written). The floor is the ``>=`` bound of each specifier set,
    whatever else it holds (``"requests>=2.31,<3"`` gives ``requests==2.31``)."""
    import tomllib

    # nox depends on packaging, so it is importable wherever this noxfile runs.
    from packaging.requirements import Requirement

    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in FLOOR_EXTRAS:
        specs += project["optional-dependencies"][extra]
    pins = []
    for spec in specs:
        requirement = Requirement(spec)
        floors = [s.version for s in requirement.specifier if s.operator == ">="]
        if len(floors) != 1:
            raise ValueError(f"{spec!r}: a dependency needs exactly one floor, name>=version")
        pins.append(f"{requirement.name}=={floors[0]}")
    return pins


@nox.session
def floors(session: nox.Session) -> None:
    """The suite against the lowest allowed version of every runtime dependency (and of orjson
    and redis-py): a floor in pyproject.toml is a promise that this passes."""
    session.install("-e", ".[test]")
    pins = lowest_allowed()
    session.install(*pins)
    session.run("python", "-m", "pip", "list", "--format=freeze", silent=False)
    session.run("pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """The slow end-to-end scenarios (real servers, outages, several processes)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "-m", "slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "examples", "noxfile.py")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict over the package and the user-facing typing examples."""
    session.install("-e", ".[typing]")
    session.run("mypy", "--strict", "src", "tests/typing")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs with warnings as errors, and run every snippet and example."""
    session.install("-e", ".[docs,test]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")
    session.run(
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--doctest-glob=*.md",
        "docs",
        "tests/test_examples.py",
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: print figures (never asserted). Pass names to run a subset."""
    # aiohttp: http_candidates; mypy (mypyc): pipeline's compiled hot path
    session.install("-e", ".[fast,test,redis]", "psutil", "aiohttp", "mypy")
    names = session.posargs or [
        "pipeline",
        "end_to_end",
        "memory",
        "rate_limit",
        "data_points",
        "coercion_worst_case",
        "http_candidates",
        "shared_budget",
        "per_change",
    ]
    for name in names:
        session.run("python", f"benchmarks/{name}.py")
