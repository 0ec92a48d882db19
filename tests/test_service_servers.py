"""The service how-to's recipes (examples/service/) under real servers: a deploy's SIGTERM
right after the 202s loses nothing (uvicorn, FastAPI, gunicorn with the Uvicorn, sync and
gthread workers), and a fork-per-job RQ worker delivers every job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import urllib3

from antavo_braze.testing import FakeBraze, redis_server

from .servers import free_port

ROOT = Path(__file__).parents[1]
RECIPES = ROOT / "examples" / "service"
WEBHOOKS = 40


def recipe_dir(tmp_path: Path) -> Path:
    """A working directory holding the recipes and their mapping, as a deployment would."""
    for path in RECIPES.iterdir():
        if path.is_file():
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


def braze_env(fake: FakeBraze) -> dict[str, str]:
    """The environment the recipes read their Braze settings from."""
    return {**os.environ, "BRAZE_REST_ENDPOINT": fake.url, "BRAZE_API_KEY": fake.api_key}


def post_until_up(http: urllib3.PoolManager, url: str, body: bytes, deadline: float) -> int:
    """POST, retrying while the server is still starting; the status."""
    while True:
        try:
            response = http.request(
                "POST", url, body=body, headers={"Content-Type": "application/json"}
            )
            return int(response.status)
        except urllib3.exceptions.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def deliver_then_sigterm(fake: FakeBraze, command: list[str], cwd: Path) -> list[int]:
    """Start the server, post WEBHOOKS members, SIGTERM it at once after the last 202, and
    wait for it to exit; the statuses."""
    port = free_port()
    fake.latency = 0.2  # answers take a while: changes are queued when SIGTERM comes
    server = subprocess.Popen(
        [part.replace("{port}", str(port)) for part in command],
        cwd=cwd,
        env=braze_env(fake),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    statuses = []
    try:
        with urllib3.PoolManager(retries=False, timeout=30) as http:
            deadline = time.monotonic() + 60
            for n in range(WEBHOOKS):
                body = json.dumps({"id": f"m{n}", "score": n}).encode()
                url = f"http://127.0.0.1:{port}/antavo/members"
                statuses.append(post_until_up(http, url, body, deadline))
        server.send_signal(signal.SIGTERM)
        _, errors = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert statuses == [202] * WEBHOOKS, errors
    return statuses


def assert_all_delivered(fake: FakeBraze, cwd: Path) -> None:
    """Every webhook's member reached Braze; nothing was dead-lettered."""
    assert {f"m{n}" for n in range(WEBHOOKS)} <= set(fake.profiles)
    failed = cwd / "failed.jsonl"
    assert not failed.exists() or failed.read_text() == ""


def test_uvicorn_sigterm_right_after_202s_loses_nothing(fake: FakeBraze, tmp_path: Path) -> None:
    """uvicorn running the create_app recipe: 40 webhooks answered 202, SIGTERM at once —
    the lifespan shutdown sends all 40 before the process dies."""
    cwd = recipe_dir(tmp_path)
    command = [sys.executable, "-m", "uvicorn", "--port", "{port}", "asgi_app:app"]
    deliver_then_sigterm(fake, command, cwd)
    assert_all_delivered(fake, cwd)


@pytest.mark.slow
def test_fastapi_recipe_sigterm_loses_nothing(fake: FakeBraze, tmp_path: Path) -> None:
    """The FastAPI recipe under uvicorn: its lifespan closes the sender on SIGTERM."""
    pytest.importorskip("fastapi")
    cwd = recipe_dir(tmp_path)
    command = [sys.executable, "-m", "uvicorn", "--port", "{port}", "fastapi_app:app"]
    deliver_then_sigterm(fake, command, cwd)
    assert_all_delivered(fake, cwd)


@pytest.mark.slow
def test_gunicorn_uvicorn_workers_preload_sigterm_loses_nothing(
    fake: FakeBraze, tmp_path: Path
) -> None:
    """gunicorn --preload with two Uvicorn workers (the sender made in the master): SIGTERM
    to the master right after the 202s, every change is sent."""
    cwd = recipe_dir(tmp_path)
    command = [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2",
               "-k", "uvicorn.workers.UvicornWorker", "--bind", "127.0.0.1:{port}",
               "asgi_app:app"]  # fmt: skip
    deliver_then_sigterm(fake, command, cwd)
    assert_all_delivered(fake, cwd)


@pytest.mark.slow
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_gunicorn_wsgi_workers_sigterm_loses_nothing(
    fake: FakeBraze, tmp_path: Path, worker_class: str
) -> None:
    """The WSGI recipe under gunicorn --preload (sync and gthread workers): its worker_exit
    hook closes the sender, so SIGTERM right after the 202s loses nothing."""
    cwd = recipe_dir(tmp_path)
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--preload",
               "--workers", "2", "--threads", "4", "-k", worker_class,
               "--bind", "127.0.0.1:{port}", "wsgi_app:app"]  # fmt: skip
    deliver_then_sigterm(fake, command, cwd)
    assert_all_delivered(fake, cwd)


@pytest.mark.slow
def test_rq_fork_per_job_worker_delivers_every_job(fake: FakeBraze, tmp_path: Path) -> None:
    """50 jobs of the RQ recipe run by RQ's default worker (a forked work horse per job,
    which exits without exit hooks): all 50 members reach Braze."""
    rq = pytest.importorskip("rq")
    redis_py = pytest.importorskip("redis")
    cwd = recipe_dir(tmp_path)
    with redis_server() as url:
        queue = rq.Queue(connection=redis_py.Redis.from_url(url))
        for n in range(50):
            queue.enqueue("rq_jobs.member_changed", {"id": f"job-{n}", "score": n})
        worker = subprocess.run(
            [sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", url],
            cwd=cwd,
            env={**braze_env(fake), "PYTHONPATH": str(cwd)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert worker.returncode == 0, worker.stderr
        assert queue.failed_job_registry.count == 0, worker.stderr
    assert {f"job-{n}" for n in range(50)} <= set(fake.profiles)


@pytest.mark.parametrize(
    ("doc", "recipes"),
    [
        ("service.md", ["asgi_app.py", "fastapi_app.py", "wsgi_app.py", "gunicorn.conf.py",
                        "rq_jobs.py"]),
        ("scale-out.md", ["../scale_out/dask_sync.py"]),
    ],
)  # fmt: skip
def test_the_how_tos_show_the_tested_recipes_as_they_are(doc: str, recipes: list[str]) -> None:
    """Each recipe file the tests run is a code block of its how-to, character for character."""
    text = (ROOT / "docs" / "how-to" / doc).read_text()
    for recipe in recipes:
        code = (RECIPES / recipe).read_text()
        assert f"```python\n{code}```" in text, recipe


def test_dask_recipe_syncs_every_partition(
    fake: FakeBraze, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scale-out how-to's Dask recipe, as written: 200 members (some scores missing) in 4
    partitions, one Redis budget — 200 succeeded, 0 failed, missing values not sent."""
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    with redis_server() as url:
        for name, value in braze_env(fake).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("REDIS_URL", url)
        monkeypatch.chdir(ROOT / "examples" / "scale_out")
        monkeypatch.syspath_prepend(str(ROOT / "examples" / "scale_out"))
        import dask_sync  # type: ignore[import-not-found]

        scores = [n if n % 7 else None for n in range(200)]
        members = pd.DataFrame({"id": [f"m{n}" for n in range(200)], "score": scores})
        counts = dask_sync.sync_members(dd.from_pandas(members, npartitions=4))
    assert (int(counts["succeeded"]), int(counts["failed"])) == (200, 0)
    assert len(fake.profiles) == 200
    assert "points" not in fake.profiles["m7"]
    assert fake.profiles["m8"]["points"] == 8


def test_serve_kill_9_right_after_202s_loses_nothing(fake: FakeBraze, tmp_path: Path) -> None:
    """`antavo-braze serve --spool`: 40 webhooks posted from 8 clients at once (their submits
    share disk syncs), kill -9 right after the last 202 — a new serve on the same spool sends
    every one: a 202 is answered only once its change is in the spool file."""
    cwd = recipe_dir(tmp_path)
    fake.latency = 5.0  # nothing is sent before the kill: every change must be in the file
    command = [sys.executable, "-m", "antavo_braze.cli", "serve", "--mapping", "mapping.json",
               "--spool", "spool.db", "--port", "{port}"]  # fmt: skip

    def start() -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        server = subprocess.Popen(
            [part.replace("{port}", str(port)) for part in command],
            cwd=cwd,
            env=braze_env(fake),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return server, port

    server, port = start()
    try:
        with urllib3.PoolManager(maxsize=8, retries=False, timeout=30) as http:
            url = f"http://127.0.0.1:{port}/antavo/members"
            deadline = time.monotonic() + 60
            post_until_up(http, url, json.dumps({"id": "m0", "score": 0}).encode(), deadline)
            statuses: list[int] = []

            def post(n: int) -> None:
                body = json.dumps({"id": f"m{n}", "score": n}).encode()
                statuses.append(post_until_up(http, url, body, deadline))

            clients = [threading.Thread(target=post, args=(n,)) for n in range(1, WEBHOOKS)]
            for client in clients:
                client.start()
            for client in clients:
                client.join()
        server.kill()  # SIGKILL: no hook, no lifespan shutdown
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert statuses == [202] * (WEBHOOKS - 1)
    assert not {f"m{n}" for n in range(WEBHOOKS)} <= set(fake.profiles)  # not sent before
    fake.latency = 0.0
    server, _ = start()
    try:
        deadline = time.monotonic() + 60
        while not {f"m{n}" for n in range(WEBHOOKS)} <= set(fake.profiles):
            assert time.monotonic() < deadline, sorted(fake.profiles)
            time.sleep(0.1)
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert_all_delivered(fake, cwd)
