"""HTTP framing candidates side by side: h11 inside the SDK's one-thread loop (what ships) and
aiohttp (asyncio), on the conformance cases of tests/test_conformance.py and on throughput.

Conformance: each raw-socket case once per candidate (5 s budget each). A case passes when an
answered case yields Braze's JSON (its errors[] rejecting the second object) and a refused case
yields no success. Throughput: the same prebuilt /users/track bodies (75 members each) sent to
FakeBraze in its own process, at 0 and 100 ms latency, with 8 and 64 requests in flight;
requests/s and client CPU per request. Prints figures; asserts nothing.

Needs aiohttp (`nox -s bench` installs it); without it only the SDK is measured.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _common import machine, members, reference_bodies
from _server import fake_braze_process
from tests.servers import RawServer
from tests.test_conformance import ANSWERED, OBJECTS, POLICY, REFUSED

import antavo_braze as ab
from antavo_braze._build.batching import Batch
from antavo_braze._client import send_batches

try:
    import aiohttp
except ModuleNotFoundError:  # pragma: no cover - reported below
    aiohttp = None

BUDGET = 5.0
BODIES = int(os.environ.get("BENCH_BODIES", "4000"))
MAX_BODY = 8 * 1024 * 1024  # what the SDK accepts


def sdk_case(url: str) -> bool | None:
    """True: Braze's rejection seen; False: no success claimed; None: a success was claimed."""
    try:
        with ab.BrazeClient(
            url, "test-key", max_in_flight=4, retry=POLICY, timeout=BUDGET
        ) as client:
            result = client.track(attributes=OBJECTS)
    except ab.AntavoBrazeError:
        return False
    if result.accepted == 1 and [r.index for r in result.rejected] == [1]:
        return True
    return False if result.accepted == 0 else None


async def aiohttp_post(url: str) -> Any:
    timeout = aiohttp.ClientTimeout(total=BUDGET)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        response = await session.post(
            url + "/users/track",
            data=json.dumps({"attributes": OBJECTS}),
            headers={"Authorization": "Bearer test-key", "Content-Type": "application/json"},
        )
        body = await bounded_body(response)
        if body is None or not 200 <= response.status < 300:
            return None
        return json.loads(body)


async def bounded_body(response: Any) -> bytes | None:
    """The whole body, or None past MAX_BODY (aiohttp's read(n) returns what has arrived)."""
    body = b""
    async for chunk in response.content.iter_chunked(65536):
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return body


def aiohttp_case(url: str) -> bool | None:
    """As sdk_case, for one aiohttp POST with a total timeout and a bounded read."""
    try:
        payload = asyncio.run(aiohttp_post(url))
    except Exception:
        return False
    if not isinstance(payload, dict):
        return False
    errors = payload.get("errors") or []
    if payload.get("message") == "success" and [e.get("index") for e in errors] == [1]:
        return True
    return None if payload.get("message") == "success" else False


def conformance() -> None:
    candidates = {"h11 (sdk)": sdk_case}
    if aiohttp is not None:
        candidates["aiohttp"] = aiohttp_case
    print(" conformance (pass = right outcome within the budget):")
    print(f"  {'case':34}" + "".join(f"{name:>14}" for name in candidates))
    totals = dict.fromkeys(candidates, 0)
    cases = [(name, script, True) for name, script in ANSWERED.items()]
    cases += [(name, script, False) for name, script in REFUSED.items()]
    for name, script, answered in cases:
        cells = ""
        for candidate, run in candidates.items():
            with RawServer(script) as server:
                started = time.perf_counter()
                outcome = run(server.url)
                took = time.perf_counter() - started
            ok = outcome is True if answered else outcome is False
            totals[candidate] += ok
            mark = "pass" if ok else ("WRONG" if outcome is None else "fail")
            cells += f"{mark:>8} {took:4.1f}s"
        print(f"  {name:34}{cells}")
    print(
        "  " + "passed".ljust(34) + "".join(f"{f'{n}/{len(cases)}':>14}" for n in totals.values())
    )


def sdk_send(url: str, bodies: list[bytes], in_flight: int) -> tuple[float, float]:
    batches = [Batch((), body, frozenset([f"b{i}"])) for i, body in enumerate(bodies)]
    with ab.BrazeClient(url, "test-key", max_in_flight=in_flight) as client:
        wall, cpu = time.perf_counter(), time.process_time()
        done = sum(1 for outcome in send_batches(client, batches) if outcome.error is None)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert done == len(bodies)
    return wall, cpu


async def aiohttp_all(url: str, bodies: list[bytes], in_flight: int) -> int:
    connector = aiohttp.TCPConnector(limit=in_flight)
    headers = {"Authorization": "Bearer test-key", "Content-Type": "application/json"}
    done = 0
    queue = iter(bodies)

    async def worker(session: Any) -> None:
        nonlocal done
        for body in queue:
            async with session.post(url + "/users/track", data=body, headers=headers) as r:
                payload = json.loads(await bounded_body(r) or b"{}")
                done += r.status == 201 and payload.get("message") == "success"

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(in_flight)))
    return done


def aiohttp_send(url: str, bodies: list[bytes], in_flight: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    done = asyncio.run(aiohttp_all(url, bodies, in_flight))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert done == len(bodies)
    return wall, cpu


def throughput() -> None:
    bodies = list(reference_bodies(members(BODIES * 75)))
    senders = {"h11 (sdk)": sdk_send}
    if aiohttp is not None:
        senders["aiohttp"] = aiohttp_send
    print(f" throughput: {len(bodies):,} prebuilt bodies of 75 members (sending only):")
    for latency in (0.0, 0.1):
        with fake_braze_process(latency=latency, record=False, validate=False) as (url, _):
            for in_flight in (8, 64):
                count = len(bodies) if latency == 0 else min(len(bodies), in_flight * 100)
                for name, send in senders.items():
                    wall, cpu = send(url, bodies[:count], in_flight)
                    print(
                        f"  latency {latency * 1000:3.0f} ms, {in_flight:>3} in flight, "
                        f"{name:10} {count / wall:>7,.0f} requests/s, "
                        f"{cpu / count * 1e6:>6,.0f} µs CPU/request"
                    )


def main() -> None:
    logging.disable(logging.WARNING)  # the SDK logs each retry; the table says what happened
    print(f"http candidates: {machine()}")
    if aiohttp is None:
        print(" aiohttp not installed: measuring the SDK only")
    conformance()
    throughput()


if __name__ == "__main__":
    main()
