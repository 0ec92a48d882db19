"""``antavo-braze``: a thin command-line shell over the public API.

Exit codes (:func:`exit_code`): 0 every record succeeded or was legitimately skipped; 1 some
record failed, values were dropped (``drop_field``) or a guard stopped (mass clear); 2 a usage,
file, mapping or infrastructure error (Redis, the state store: one line, no traceback); 3 Braze
refused the credentials or a permission; 4 nothing was sent because every record was skipped for
a reason that needs a look (no mapped field present, an unmatched action); 130 / 143 interrupted
by SIGINT / SIGTERM (the partial report is printed; with ``--dead-letter`` a run can be resumed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, TextIO

import attrs

from . import _demo
from ._antavo.client import AntavoClient
from ._braze.limits import (
    PERMISSION_USES,
    REQUIRED_PERMISSIONS,
    TRACK_RATE_REQUESTS,
    TRACK_RATE_SECONDS,
)
from ._build.batching import BatchLimits
from ._build.mapping import Mapping
from ._build.schema import SchemaProblem
from ._client import BrazeClient
from ._http.endpoint import is_loopback
from ._http.pacing import InProcessPacer
from ._http.retry import RetryPolicy
from ._run.checkpoint import Checkpoint, Resumed, checkpoint_path
from ._run.deadletter import JsonlDeadLetter, entry_to_json, read_dead_letters
from ._run.filecheck import FileCheck, check_file
from ._run.files import check_private, ensure_private_file, replace_private
from ._run.input import RecordSource, is_wide, read_records
from ._run.report import Progress, SyncReport, counted
from ._run.state import MemoryStateStore, SqliteStateStore, StateStore
from ._scale.redis import RedisOrder, RedisPacer, RedisStateStore, redis_failures
from ._scale.shard import Sharded, parse_shard
from ._sync import Syncer, needs_a_look
from ._version import __version__
from .exceptions import (
    AntavoBrazeError,
    AuthenticationError,
    ConfigurationError,
    MappingError,
    PermissionDeniedError,
    SyncInterrupted,
)

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_NOTHING_SENT = 0, 1, 2, 3, 4
DEFAULT_MAX_IN_FLIGHT = 8  # one default for every command that sends
_REFRESH_RETRY = RetryPolicy(attempts=2, wait_initial=0.5, wait_max=2.0, wait_jitter=0.5)


class _UserError(Exception):
    """A mistake in the command line or its files: one line, no traceback."""


def _is_infrastructure_error(exc: BaseException) -> bool:
    """Redis or a state store that cannot be reached (the library raises the driver's own
    errors: redis-py's, or OS errors such as a refused connection)."""
    return type(exc).__module__.split(".")[0] == "redis" or isinstance(exc, OSError)


def exit_code(report: SyncReport) -> int:
    """The exit code a sync's report calls for (the module docstring lists them)."""
    if report.failed or report.dropped or report.guard_stopped:
        return EXIT_FAILED
    if (
        report.total
        and not report.succeeded
        and report.skipped_by_reason
        and all(needs_a_look(reason) for reason in report.skipped_by_reason)
    ):
        return EXIT_NOTHING_SENT
    return EXIT_OK


class _ProgressLine:
    """Progress on stderr: an updating line on a terminal, a line every few seconds otherwise.

    ``total``: the input's size when the reader cannot tell (a file's records counted
    beforehand), for the percentage and the ETA. While a line is shown, log records clear it
    first (:class:`_TerminalHandler`): a log line never runs into it.
    """

    current: ClassVar[_ProgressLine | None] = None  # the line on the terminal now
    _lock = threading.Lock()

    def __init__(self, stream: TextIO, total: int | None = None) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._total = total
        self._last = 0.0
        self.shown = False
        self._on_line = False  # our text is on the terminal's current line

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if not self._tty and now - self._last < 2.0:
            return
        self._last = now
        if progress.total is None and self._total is not None:
            progress = attrs.evolve(progress, total=self._total)
        with self._lock:
            self.shown = True
            if self._tty:
                self._stream.write("\r" + progress.line() + _CLEAR_TO_END)
                self._on_line = True
                _ProgressLine.current = self
            else:
                self._stream.write(progress.line() + "\n")
            self._stream.flush()

    def clear(self) -> None:
        """Take the line off the terminal (before a log line; the next update redraws it)."""
        with self._lock:
            if self._on_line:
                self._stream.write("\r" + _CLEAR_TO_END)
                self._stream.flush()
                self._on_line = False

    def close(self) -> None:
        with self._lock:
            if self._on_line:
                self._stream.write("\n")
            self._on_line = False
            self.shown = False
            if _ProgressLine.current is self:
                _ProgressLine.current = None


_CLEAR_TO_END = "\x1b[K"  # ANSI: erase to the end of the line


class _TerminalHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines on stderr (the current ``sys.stderr``, looked up per record), the progress
    line cleared first."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass  # always the current sys.stderr

    def emit(self, record: logging.LogRecord) -> None:
        line = _ProgressLine.current
        if line is not None:
            line.clear()
        super().emit(record)


def _build() -> str:
    """What this installation runs: the hot path compiled (the wheel built with mypyc) or as
    Python, and the JSON library."""
    from . import _json
    from ._build import coerce

    return f"hot path: {coerce.BUILD}, JSON: {_json.BACKEND}"


def _input_size(args: argparse.Namespace) -> int | None:
    """How many records ``--input`` holds, when that is cheap to know: a plain (not
    compressed) JSON Lines or CSV file, one record per line (a CSV header is not one)."""
    if args.input == "-":
        return None
    path = Path(args.input)
    suffixes = [s.lower() for s in path.suffixes]
    kind = args.format or {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv"}.get(
        suffixes[-1] if suffixes else ""
    )
    if kind not in ("jsonl", "csv") or not path.is_file() or is_wide(args.encoding):
        return None
    lines, last = 0, b"\n"
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError:
        return None
    lines += last != b"\n"  # a last line without its newline
    return max(0, lines - (kind == "csv"))


def _dead_letter_size(path: Path) -> int | None:
    """A dead letter's entries: one per line."""
    try:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return None


def _report_error(
    args: argparse.Namespace, exc: AntavoBrazeError, command: str, started: datetime
) -> None:
    """``--report-json`` for a run a fatal error stopped: the partial report it carries."""
    report = getattr(exc, "report", None)
    if report is not None:
        code = (
            EXIT_AUTH
            if isinstance(exc, (AuthenticationError, PermissionDeniedError))
            else EXIT_USAGE
        )
        _write_report_json(
            args.report_json, report, command=command, started_at=started, exit_code=code
        )


def _add_report_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--report-json",
        metavar="FILE",
        help="also write the run's outcome as JSON (counts, failures grouped by stage, field "
        "and reason, requests, timings) for schedulers and monitoring",
    )


def _write_report_json(
    path: str | None, report: Any, *, command: str, started_at: datetime, exit_code: int
) -> None:
    """``--report-json``: the report's ``to_dict()`` with the command, its exit code and
    when it ran (owner-only, written whole: a scheduler never reads half a file)."""
    if not path:
        return
    data = {"command": command, "exit_code": exit_code, **report.to_dict()}
    data["timings"] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **data.get("timings", {}),
    }
    try:
        replace_private(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
    except (OSError, ConfigurationError) as exc:
        print(f"antavo-braze: error: --report-json {path}: {exc}", file=sys.stderr)


def _client_from_env(args: argparse.Namespace) -> BrazeClient:
    options: dict[str, Any] = {"max_in_flight": args.max_in_flight}
    if getattr(args, "ca_bundle", None):
        options["ca_bundle"] = args.ca_bundle
    try:
        if getattr(args, "batch_size", None):
            options["limits"] = BatchLimits(max_objects=args.batch_size)
        pacer_url = _redis_url(getattr(args, "pacer", None), args, "--pacer")
        rate = getattr(args, "rate", None)
        hourly = getattr(args, "hourly", None)
        requests, per = _rate(rate)
        if pacer_url:
            options["pacer"] = RedisPacer(
                pacer_url, key=args.pacer_key, requests=requests, per=per, hourly=hourly
            )
        elif rate or hourly:
            options["pacer"] = InProcessPacer(
                requests=requests,
                per=per,
                hourly=hourly,
                max_wait=RetryPolicy().max_rate_limit_wait,
            )
        return BrazeClient.from_env(**options)
    except (ConfigurationError, ValueError) as exc:
        raise _UserError(str(exc)) from None


def _rate(text: str | None) -> tuple[int, float]:
    """``--rate N/SECONDS`` as ``(N, SECONDS)``; no ``--rate``: Braze's burst default."""
    if not text:
        return TRACK_RATE_REQUESTS, TRACK_RATE_SECONDS
    count, _, seconds = text.partition("/")
    try:
        return int(count), float(seconds or 1)
    except ValueError:
        raise _UserError(f"--rate {text!r}: expected REQUESTS/SECONDS, e.g. 3000/3") from None


def _close_state(state: StateStore | None) -> None:
    close = getattr(state, "close", None)
    if callable(close):
        close()


REDIS_URL_ENV = "ANTAVO_BRAZE_REDIS_URL"


def _redis_url(value: str | None, args: argparse.Namespace, option: str) -> str | None:
    """A Redis location from the command line, where ``redis`` means the URL in
    ``--redis-url-file`` or ``ANTAVO_BRAZE_REDIS_URL``; a password written on the command line
    itself (visible to every user in the process list) is refused."""
    if value != "redis":
        if value and value.startswith(("redis://", "rediss://", "unix://")):
            parts = urllib.parse.urlsplit(value)
            password = parts.password or urllib.parse.parse_qs(parts.query).get("password")
            if password:
                raise _UserError(
                    f"{option}: a Redis password on the command line is visible to every user "
                    f"of this machine: put the URL in --redis-url-file FILE (owner-only) or "
                    f"{REDIS_URL_ENV}, and give {option} redis"
                )
        return value
    path = getattr(args, "redis_url_file", None)
    if path:
        try:
            check_private(path)
            url = Path(path).read_text(encoding="utf-8")[:4096].strip()
        except ConfigurationError as exc:
            raise _UserError(f"--redis-url-file: {exc}") from None
        except OSError as exc:
            raise _UserError(f"--redis-url-file: cannot read {path}: {exc.strerror}") from None
    else:
        url = os.environ.get(REDIS_URL_ENV, "").strip()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise _UserError(
            f"{option} redis: expected a redis:// URL in --redis-url-file or {REDIS_URL_ENV}"
        )
    return url


def _state_store(location: str | None, args: argparse.Namespace) -> StateStore | None:
    """``--state``: an SQLite file, or a ``redis://`` URL shared by every worker."""
    location = _redis_url(location, args, "--state")
    if not location:
        return None
    try:
        if location.startswith(("redis://", "rediss://", "unix://")):
            return RedisStateStore(location)
        return SqliteStateStore(location)
    except ConfigurationError as exc:
        raise _UserError(str(exc)) from None
    except Exception as exc:
        if _is_infrastructure_error(exc):
            redis = " (Redis unreachable)" if "://" in location else ""
            raise _UserError(
                f"cannot reach the state store {_redacted(location)}{redis}: {exc}"
            ) from None
        raise


def _redacted(url: str) -> str:
    """A URL without its password (Redis URLs may carry one)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


def _load_mapping(path: str) -> Mapping:
    try:
        return Mapping.from_file(path)
    except MappingError as exc:
        raise _UserError(str(exc)) from None


def _setup_logging(args: argparse.Namespace) -> None:
    """``-v`` shows retries and the run summary on stderr; ``--log-file`` keeps them (never
    with the API key: the library does not log it)."""
    level = logging.DEBUG if args.verbose > 1 else logging.INFO
    detailed = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger = logging.getLogger("antavo_braze")
    for old in [h for h in logger.handlers if getattr(h, "_from_cli", False)]:
        logger.removeHandler(old)  # main() called again in one process
        old.close()
    # Without -v, only what needs a person's attention reaches stderr.
    terminal = _TerminalHandler()
    if args.verbose and not args.quiet:
        terminal.setLevel(level)
        terminal.setFormatter(detailed)
    else:
        terminal.setLevel(logging.ERROR if args.quiet else logging.WARNING)
    handlers: list[logging.Handler] = [terminal]
    if args.log_file:
        # Owner-only like every file the SDK writes.
        try:
            ensure_private_file(args.log_file, refuse_shared=False)  # no member data at INFO
        except ConfigurationError as exc:
            raise _UserError(str(exc)) from None
        file = logging.FileHandler(args.log_file, encoding="utf-8")
        file.setLevel(level)
        file.setFormatter(detailed)
        handlers.append(file)
    for handler in handlers:
        handler._from_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(min(h.level for h in handlers))
    logger.propagate = False


def _add_reading(parser: argparse.ArgumentParser) -> None:
    """How --input is read (sync and validate read files alike)."""
    parser.add_argument("--format", choices=["jsonl", "json", "csv"], help="override the suffix")
    parser.add_argument("--encoding", default="utf-8", help="input encoding (utf-8)")
    parser.add_argument("--delimiter", help="CSV separator (sniffed: , ; tab |)")


def _add_state(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        help="change detection (members), the event ledger and pull watermarks in an SQLite "
        "file, or a redis:// URL shared by workers ('redis': the URL in --redis-url-file or "
        "ANTAVO_BRAZE_REDIS_URL)",
    )
    parser.add_argument(
        "--redis-url-file",
        metavar="FILE",
        help="an owner-only file holding the Redis URL (with its password) that --state redis, "
        "--pacer redis and (serve) --order redis use; or set ANTAVO_BRAZE_REDIS_URL",
    )


def _add_budget(parser: argparse.ArgumentParser) -> None:
    """Braze's request budget: your contract's limits, and one budget shared in Redis."""
    parser.add_argument(
        "--pacer",
        metavar="REDIS_URL",
        help="share one Braze request budget with every worker using this Redis "
        "('redis': the URL in --redis-url-file or ANTAVO_BRAZE_REDIS_URL)",
    )
    parser.add_argument(
        "--pacer-key",
        default="antavo_braze:default",
        help="the shared budget's Redis key: one per Braze workspace (antavo_braze:default)",
    )
    parser.add_argument(
        "--rate",
        metavar="N/SECONDS",
        help="your contract's /users/track burst budget (3000/3, Braze's default)",
    )
    parser.add_argument("--hourly", type=int, help="your contract's hourly request budget, if any")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="objects per request (75; 50 where your contract says so)",
    )


def _add_budget_max_in_flight(parser: argparse.ArgumentParser) -> None:
    # Commands that only read Braze a little: one request at a time is plenty.
    parser.set_defaults(max_in_flight=1)


def _add_mass_clear(parser: argparse.ArgumentParser) -> None:
    """The mass-clear guard's way out (sync, pull)."""
    parser.add_argument(
        "--allow-mass-clear",
        action="store_true",
        help="clear (when_missing: clear) even when most members would lose a field",
    )


def _add_deletes(parser: argparse.ArgumentParser) -> None:
    """Guards of ``"as": "delete"`` events (sync events, pull events)."""
    parser.add_argument(
        "--allow-deletes",
        action="store_true",
        help='let events mapped "as": "delete" delete Braze profiles (off: they fail)',
    )
    parser.add_argument(
        "--max-delete-ratio",
        type=float,
        default=0.05,
        help="a run of 100+ records that would delete more than this share deletes nothing (0.05)",
    )


def _workers(text: str) -> int | str:
    """``--workers N|auto``."""
    if text == "auto":
        return text
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 or 'auto', not {text!r}")
    return count


def _add_workers(parser: argparse.ArgumentParser) -> None:
    """One sync in N processes on this machine (one budget, one report, one dead letter)."""
    parser.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N|auto",
        help="sync in N processes on this machine (auto: one per core), split by member, "
        "sharing one request budget; --max-in-flight is per worker (default 1)",
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        help=f"requests in flight at once ({DEFAULT_MAX_IN_FLIGHT})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line, errors only")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log retries and the summary"
    )
    parser.add_argument("--log-file", help="also write the log to this file")
    parser.add_argument(
        "--ca-bundle",
        metavar="PEM",
        help="trust this CA file for Braze's TLS (a TLS-inspecting proxy; or BRAZE_CA_BUNDLE)",
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from .testing import FakeBraze

    out = sys.stdout
    with FakeBraze(api_key="demo-key") as fake, fake.client(max_in_flight=4) as client:
        syncer = Syncer(client, _demo.DEMO_MAPPING)
        print(f"antavo-braze {__version__} demo: a fake Braze is listening on {fake.url}", file=out)
        members = list(_demo.sample_members(args.members))
        members.append({"id": "member-broken", "score": "lots", "first_name": "Bad"})
        report = syncer.sync_members(members)
        print("\nMembers:", file=out)
        print(report, file=out)
        events = syncer.sync_events(_demo.sample_events(args.events))
        print("\nEvents:", file=out)
        print(events, file=out)
        member_id = members[0]["id"]
        print(f"\nWhat Braze now holds for {member_id}:", file=out)
        print(json.dumps(fake.profiles.get(member_id, {}), indent=2, sort_keys=True), file=out)
        mine = [e for e in fake.events if e["external_id"] == member_id][:3]
        if mine:
            print(f"\nIts events ({len(mine)} shown):", file=out)
            for event in mine:
                print("  " + json.dumps(event, sort_keys=True), file=out)
        print(
            "\n(the member 'member-broken' fails on purpose: its score is not a number)", file=out
        )
        _demo_pull(client, out)
    return EXIT_OK


def cmd_fake(args: argparse.Namespace) -> int:
    """A FakeBraze in the foreground, to try the CLI on: prints what to export; with
    ``--dump FILE`` writes what it holds after each request (before answering it) and on
    Ctrl-C."""
    from .testing import FakeBraze

    dumping = threading.Lock()

    class DumpingFake(FakeBraze):
        """Writes the dump before the answer leaves, so that once a sync has returned the
        file already holds what it sent (a command run right after it reads it)."""

        def _record(self, ex: Any, status: int, recorded: Any = None) -> None:
            super()._record(ex, status, recorded)
            with dumping:  # handler threads, one file
                _dump_fake(self, args.dump)

    stopped: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopped.append(signum)

    previous = {name: signal.signal(name, stop) for name in (signal.SIGINT, signal.SIGTERM)}
    try:
        factory = DumpingFake if args.dump else FakeBraze
        with factory(api_key=args.api_key, port=args.port) as fake:
            print(
                f"antavo-braze {__version__}: a fake Braze is listening on {fake.url} "
                "(nothing leaves this machine). In another shell:\n"
                f"  export BRAZE_REST_ENDPOINT={fake.url}\n"
                f"  export BRAZE_API_KEY={fake.api_key}\n"
                "Ctrl-C stops it"
                + (f"; what it holds is kept in {args.dump}" if args.dump else ""),
                flush=True,
            )
            if args.dump:
                _dump_fake(fake, args.dump)  # there from the start, empty
            while not stopped:
                time.sleep(0.2)
            held = _fake_holdings(fake)
    finally:
        for name, handler in previous.items():
            signal.signal(name, handler)
    counts = ", ".join(counted(len(value), name.removesuffix("s")) for name, value in held.items())
    print(f"stopped: it holds {counts}" + (f" (written to {args.dump})" if args.dump else ""))
    if not args.dump:
        print(json.dumps(held, indent=2, sort_keys=True, default=str))
    return EXIT_OK


def _fake_holdings(fake: Any) -> dict[str, Any]:
    """A copy of what the fake holds, taken under its lock (its threads keep writing)."""
    with fake._lock:
        text = json.dumps(
            {"profiles": fake.profiles, "events": fake.events, "purchases": fake.purchases},
            default=str,
        )
    held: dict[str, Any] = json.loads(text)
    return held


def _dump_fake(fake: Any, path: str) -> None:
    """What the fake holds, as JSON, owner-only (it is member data)."""
    try:
        replace_private(path, json.dumps(_fake_holdings(fake), indent=2, default=str) + "\n")
    except (ConfigurationError, OSError) as exc:
        raise _UserError(f"--dump {path}: {exc}") from None


def _demo_pull(client: BrazeClient, out: TextIO) -> None:
    """The demo's second half: pulls from an embedded fake Antavo (signed reads)."""
    from .testing import FakeAntavo

    with FakeAntavo() as antavo, antavo.client() as reader:
        for member in _demo.sample_members(5, seed=1):
            antavo.add_customer(member)
        for event in _demo.sample_events(8, seed=1):
            moment = event.get("timestamp", event["data"].get("effective_timestamp"))
            antavo.add_event({**event, "timestamp": moment})
        print(f"\nPulling from a fake Antavo on {antavo.url} (Escher-signed reads):", file=out)
        syncer = Syncer(client, _demo.DEMO_MAPPING, state=MemoryStateStore())
        since = "2020-01-01T00:00:00Z"
        print("pull members:", syncer.pull_members(reader, since=since).summary(), file=out)
        print("pull events: ", syncer.pull_events(reader, since=since).summary(), file=out)
        again = syncer.pull_events(reader, since=since)
        print("pull events again (the same window):", again.summary(), file=out)
        print(
            f"  {again.skipped_by_reason.get('already sent', 0)} skipped as already sent: "
            "the state store's ledger sends each event once",
            file=out,
        )


def cmd_check(args: argparse.Namespace) -> int:
    with _client_from_env(args) as client:
        permissions = client.check_permissions()
    for name, granted in permissions.items():
        need = "required"
        if name not in REQUIRED_PERMISSIONS:
            need = f"optional ({PERMISSION_USES.get(name, 'read endpoints')})"
        print(f"{'ok     ' if granted else 'MISSING'} {name:<22} {need}")
    print(f"endpoint {client.endpoint}")
    missing = [name for name in REQUIRED_PERMISSIONS if not permissions.get(name)]
    if missing:
        print(f"this key cannot sync: it lacks {', '.join(missing)}")
        return EXIT_FAILED
    print("this key can sync")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    mapping = _load_mapping(args.mapping)
    print(
        f"{args.mapping}: valid mapping ({len(mapping.fields)} fields, "
        f"{len(mapping.events)} events, {len(mapping.triggers)} triggers)"
    )
    if getattr(args, "against_braze", False) and _validate_against_braze(args, mapping):
        return EXIT_FAILED
    if args.input is None:
        return EXIT_OK
    source = _open_input(args)
    check = check_file(mapping, source, limit=args.sample, line_of=source.line_of)
    _print_file_check(check, args)
    return EXIT_OK if check.ok else EXIT_FAILED


def _print_file_check(check: FileCheck, args: argparse.Namespace) -> None:
    """What a sync of the file would do, field by field (``validate --input``)."""
    size = (
        f"all {check.records} records"
        if check.complete
        else f"the first {check.records} records (the file has more; --sample N reads more)"
    )
    print(f"sample: {size} of {args.input}, mapped and coerced as a sync would")
    if check.unreadable:
        print(f"  {check.unreadable} rows could not be read, e.g. {check.unreadable_examples[0]}")
    for item in (check.ids, *check.fields):
        declared = item.declared or "inferred"
        counts = f"{item.valid} valid, {item.invalid} invalid"
        if item.unreadable:
            counts += f", {item.unreadable} unreadable"
        print(
            f"  {item.loyalty_field} -> {item.remote_field} ({declared}): "
            f"found in {item.found} of {check.records}: {counts}"
        )
        for example in item.examples:
            print(f"      e.g. {example}")
        for hint in item.hints:
            print(f"      hint: {hint}")
        if item.advice:
            print(f"      {'advice: ' if not item.never_found else ''}{item.advice}")
    failing = [
        f"{f.loyalty_field} ("
        + ", ".join(
            part
            for part in (
                f"{f.invalid} invalid" if f.invalid else "",
                f"{f.unreadable} unreadable" if f.unreadable else "",
                "wrong type" if f.wrong_type else "",
                "never found" if f.never_found else "",
            )
            if part
        )
        + ")"
        for f in (check.ids, *check.fields)
        if f.failing
    ]
    if check.unreadable:
        failing.append(f"{check.unreadable} unreadable rows")
    if failing:
        print(f"a sync would fail or store wrong types: {'; '.join(failing)}")
    elif check.records:
        print("a sync of this sample would succeed")
    else:
        print("no records in the file")


def schema_problems(client: BrazeClient, mapping: Mapping) -> list[SchemaProblem]:
    """The mapping against Braze's attribute types (one ``GET /custom_attributes`` per page)."""
    return mapping.check_schema(client.custom_attributes())


def _print_schema_problems(problems: Sequence[SchemaProblem], out: TextIO) -> None:
    for problem in problems:
        print(
            f"  {problem.remote_field}: mapping {problem.expected}, Braze {problem.found}: "
            f"{problem.reason}",
            file=out,
        )


def _validate_against_braze(args: argparse.Namespace, mapping: Mapping) -> bool:
    """``validate --against-braze``: print the problems; True when there are any."""
    with _client_from_env(args) as client:
        problems = schema_problems(client, mapping)
    if not problems:
        print("against Braze: every mapped attribute fits the type Braze holds")
        return False
    print(f"against Braze: {len(problems)} problem(s); Braze would ignore these values:")
    _print_schema_problems(problems, sys.stdout)
    return True


def check_schema_before_run(client: BrazeClient, mapping: Mapping) -> None:
    """``--check-schema`` (sync, pull): refuse to start when the mapping does not fit the
    attribute types Braze holds (raises the CLI's one-line usage error, exit 2). Give it a
    client of its own, not the one that then syncs (see ``cmd_sync``)."""
    problems = schema_problems(client, mapping)
    if problems:
        _print_schema_problems(problems, sys.stderr)
        raise _UserError(
            f"--check-schema: {len(problems)} mapped attribute(s) do not fit the type Braze "
            "holds (listed above); nothing was sent. Fix the mapping, or run without "
            "--check-schema"
        )


def add_check_schema(parser: argparse.ArgumentParser) -> None:
    """The ``--check-schema`` option (sync, pull)."""
    parser.add_argument(
        "--check-schema",
        action="store_true",
        help="first check the mapping against the attribute types Braze holds "
        "(GET /custom_attributes) and refuse to start on a problem",
    )


def _open_input(args: argparse.Namespace) -> RecordSource:
    try:
        return read_records(
            args.input, format=args.format, encoding=args.encoding, delimiter=args.delimiter
        )
    except ConfigurationError as exc:
        raise _UserError(str(exc)) from None


def _prepare_resume(args: argparse.Namespace) -> Checkpoint:
    """Check the checkpoint against the input, and keep in the dead letter only what the
    interrupted run settled (what it cut off is sent again and, if it fails, written anew)."""
    if not args.dead_letter:
        raise _UserError("--resume needs the --dead-letter of the interrupted run")
    try:
        now = Checkpoint.for_input(args.kind, args.input)
        saved = Checkpoint.load(checkpoint_path(args.dead_letter))
    except (ConfigurationError, OSError) as exc:
        raise _UserError(str(exc)) from None
    problem = saved.matches(now)
    if problem is not None:
        raise _UserError(f"cannot resume: {problem}")
    kept = [
        entry_to_json(entry) + "\n"
        for entry in read_dead_letters(args.dead_letter)
        if entry.index is None or saved.is_settled(entry.index)
    ]
    replace_private(args.dead_letter, "".join(kept))
    return saved


def cmd_sync(args: argparse.Namespace) -> int:
    mapping = _load_mapping(args.mapping)
    checkpoint = _prepare_resume(args) if args.resume else None
    source = _open_input(args)
    records: Iterable[Any] = source
    if checkpoint is not None:
        records = Resumed(source, checkpoint)
    elif args.dead_letter and not args.dry_run:
        checkpoint_path(args.dead_letter).unlink(missing_ok=True)  # a fresh run: nothing to resume
    if args.shard:
        try:
            records = Sharded(records, *parse_shard(args.shard), kind=args.kind)
        except ConfigurationError as exc:
            raise _UserError(str(exc)) from None
    started_at = datetime.now(timezone.utc)
    progress: Any = _ProgressLine(sys.stderr, _input_size(args)) if not args.quiet else None
    state = _state_store(args.state, args)
    client = None if args.dry_run else _client_from_env(args)  # a dry run needs no credentials
    append = args.append or checkpoint is not None
    # Taken before reading: what an interrupt saves describes the input this run read.
    base = checkpoint
    if base is None and args.dead_letter and args.input != "-" and not args.dry_run:
        base = Checkpoint.for_input(args.kind, args.input)
    if client is not None and args.check_schema:
        try:
            # A client of its own: the pacer learns from every answer's rate-limit headers,
            # and /custom_attributes' hourly budget must not hold back /users/track.
            with _client_from_env(args) as schema_client:
                check_schema_before_run(schema_client, mapping)
        except BaseException:
            client.close()
            _close_state(state)
            raise
    sink: Any = JsonlDeadLetter(args.dead_letter, append=append) if args.dead_letter else None
    early_stop = None
    if args.max_failures:
        early_stop = _EarlyStop(args.max_failures, sink, progress)
        sink, progress, records = early_stop, early_stop, early_stop.records(records)
    try:
        syncer = Syncer(
            client,
            mapping,
            dead_letter=None if args.dry_run else sink,  # a dry run hands it to dry_run()
            state=state,
            send=args.send,
            progress=progress,
            on_invalid_field=args.on_invalid_field,
            max_clear_ratio=None if args.allow_mass_clear else 0.5,
            allow_deletes=args.allow_deletes,
            max_delete_ratio=args.max_delete_ratio,
        )
    except ConfigurationError as exc:
        raise _UserError(str(exc)) from None
    try:
        if args.dry_run:
            report = syncer.dry_run(
                args.kind, records, dead_letter=sink, on_body=_Shown(args.show, sys.stdout)
            )
        elif args.kind == "members":
            report = syncer.sync_members(records, workers=args.workers)
        else:
            report = syncer.sync_events(records, workers=args.workers)
    except SyncInterrupted as stop:
        if progress is not None:
            progress.close()
        print(stop.report)
        if base is not None and args.dead_letter:
            base.after(stop.report).save(checkpoint_path(args.dead_letter))
            print(
                f"interrupted: failed and unsent records are in {args.dead_letter}; "
                "run the same command with --resume to continue",
                file=sys.stderr,
            )
        else:
            print("interrupted (with --dead-letter a run can be resumed)", file=sys.stderr)
        code = 128 + stop.signal
        _write_report_json(
            args.report_json, stop.report, command="sync", started_at=started_at, exit_code=code
        )
        return code
    except AntavoBrazeError as exc:
        if exc.report is None:
            raise
        _report_error(args, exc, "sync", started_at)
        # A fatal error mid-run (key revoked, TLS refused, Braze unreachable): the partial
        # report, then how to continue; main() names the error and sets the exit code.
        if progress is not None:
            progress.close()
        print(exc.report)
        if base is not None and args.dead_letter:
            base.after(exc.report).save(checkpoint_path(args.dead_letter))
            print(
                f"stopped by the error below after {exc.report.total} records: failed and "
                f"unsent records are in {args.dead_letter}; fix the cause and run the same "
                "command with --resume to continue (what the error itself refused stays "
                "there for `antavo-braze replay`)",
                file=sys.stderr,
            )
        else:
            print(
                f"stopped by the error below after {exc.report.total} records (with "
                "--dead-letter the run could be resumed)",
                file=sys.stderr,
            )
        raise
    finally:
        if progress is not None:
            progress.close()
        if client is not None:
            client.close()
        _close_state(state)
        syncer.close()
    _print_sync_report(report, args)
    if early_stop is not None and early_stop.stopped:
        print(
            f"stopped early: the first {args.max_failures} records all failed (--max-failures); "
            "the rest of the input was not read"
        )
    if args.dead_letter and not args.dry_run:
        checkpoint_path(args.dead_letter).unlink(missing_ok=True)  # the run completed
    code = exit_code(report)
    _write_report_json(
        args.report_json, report, command="sync", started_at=started_at, exit_code=code
    )
    return code


def _print_sync_report(report: SyncReport, args: argparse.Namespace) -> None:
    """The report, worded for what happened: a dry run sent nothing, so nothing succeeded."""
    text = str(report)
    if args.dry_run:
        rest = text.partition("\n")[2]
        text = (
            f"dry run, nothing sent: {counted(report.total, 'record')}: {report.succeeded} would "
            f"be sent in {counted(report.requests, 'request')}, {report.failed} would fail, "
            f"{report.skipped} skipped" + (f"\n{rest}" if rest else "")
        )
    print(text)
    if report.failed:
        if args.dead_letter:
            print(f"failed records written to {args.dead_letter}")
        elif not args.dry_run:
            print(
                "keep the failed records with --dead-letter FILE: fix the cause, then "
                "`antavo-braze replay FILE` resends them"
            )
    if report.dropped:
        print(
            f"{len(report.dropped)} invalid value(s) were left out (--on-invalid-field "
            "drop_field): exit 1 so that it is seen"
        )


class _Shown:
    """``--dry-run --show N``: prints the first N request bodies that would be sent."""

    def __init__(self, count: int, stream: TextIO) -> None:
        self.left = count
        self.stream = stream

    def __call__(self, body: dict[str, Any]) -> None:
        if self.left > 0:
            self.left -= 1
            self.stream.write("request body: " + json.dumps(body, indent=2) + "\n")


class _EarlyStop:
    """``--max-failures N``: the input ends once its first N records all failed (a fault that
    hits every record stops the run instead of failing the whole file). It counts failures
    as the dead-letter sink (passing entries on) and successes from the progress callback."""

    def __init__(self, limit: int, sink: Any, progress: Any) -> None:
        self.limit = limit
        self.sink = sink
        self.inner_progress = progress
        self.failed = 0
        self.succeeded = 0
        self.stopped = False

    def start(self) -> None:
        start = getattr(self.sink, "start", None)
        if callable(start):
            start()

    def write(self, entry: Any) -> None:
        self.failed += 1
        if self.sink is not None:
            self.sink.write(entry)

    def __call__(self, progress: Progress) -> None:
        self.succeeded = max(self.succeeded, progress.succeeded)
        if self.inner_progress is not None:
            self.inner_progress(progress)

    def close(self) -> None:
        close = getattr(self.inner_progress, "close", None)
        if callable(close):
            close()

    def records(self, records: Iterable[Any]) -> Iterator[Any]:
        for record in records:
            if self.failed >= self.limit and not self.succeeded:
                self.stopped = True
                return
            yield record


# An audit is not a pull window: it compares every customer Antavo holds, in the state it
# is read in. No safety lag (a customer changed in the last minute is audited too) and no
# end (one changed while a long audit reads is compared in its newest state, not dropped).
_AUDIT_SINCE = datetime(1970, 1, 1, tzinfo=timezone.utc)
_AUDIT_UNTIL = datetime(9999, 1, 1, tzinfo=timezone.utc)


def cmd_audit(args: argparse.Namespace) -> int:
    mapping = _load_mapping(args.mapping)
    if (args.input is None) == (not args.from_antavo):
        raise _UserError("give the members to compare: --input FILE or --from-antavo")
    if args.report_json:
        try:
            ensure_private_file(args.report_json)  # member ids: owner-only, checked up front
        except ConfigurationError as exc:
            raise _UserError(str(exc)) from None
    with contextlib.ExitStack() as resources:
        if args.from_antavo:
            antavo = resources.enter_context(_antavo_from_env())
            records: Iterable[Any] = antavo.changed_customers(_AUDIT_SINCE, _AUDIT_UNTIL)
        else:
            records = _open_input(args)
        client = resources.enter_context(_client_from_env(args))
        try:
            syncer = Syncer(client, mapping, dead_letter=args.dead_letter)
        except ConfigurationError as exc:
            raise _UserError(str(exc)) from None
        try:
            report = syncer.audit(records, fix=args.fix)
        except SyncInterrupted as stop:
            print(stop.report)
            return 128 + stop.signal
        finally:
            syncer.close()
    print(report)
    if args.report_json:
        replace_private(args.report_json, json.dumps(report.to_dict(), indent=2, default=str))
    if not report.ok and not args.fix:
        print("drift found: run again with --fix to send only the drifted fields")
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_replay(args: argparse.Namespace) -> int:
    source = Path(args.input)
    if not source.is_file():
        raise _UserError(f"dead-letter file not found: {args.input}")
    fresh = replayed = 0
    try:  # a file that is not a dead letter is a usage error before anything is sent
        for entry in read_dead_letters(source):
            fresh += entry.replayed_at is None
            replayed += entry.replayed_at is not None
    except ConfigurationError as exc:
        raise _UserError(str(exc)) from None
    if replayed and not fresh and not args.again:
        raise _UserError(
            f"{args.input} was replayed before (its {replayed} entries are marked replayed_at): "
            "replaying it again could double events and purchases; --again resends them"
        )
    output = args.dead_letter or str(source.with_name(source.stem + ".replay.jsonl"))
    # After an earlier replay its output holds what still failed: add to it, never empty it.
    sink = JsonlDeadLetter(output, append=bool(replayed))
    started_at = datetime.now(timezone.utc)
    progress = _ProgressLine(sys.stderr, _dead_letter_size(source)) if not args.quiet else None
    state = _state_store(args.state, args)  # its event ledger: events Braze accepted are skipped
    with _client_from_env(args) as client:
        try:
            syncer = Syncer(client, Mapping(), dead_letter=sink, state=state, progress=progress)
            report = syncer.replay(source, allow_duplicates=args.include_unknown, again=args.again)
        except ConfigurationError as exc:
            raise _UserError(str(exc)) from None
        except SyncInterrupted as stop:
            if progress is not None:
                progress.close()
            print(stop.report)
            code = 128 + stop.signal
            _write_report_json(
                args.report_json,
                stop.report,
                command="replay",
                started_at=started_at,
                exit_code=code,
            )
            return code
        except AntavoBrazeError as exc:
            _report_error(args, exc, "replay", started_at)
            raise
        finally:
            if progress is not None:
                progress.close()
            _close_state(state)
    print(report)
    print(
        f"resent {report.total - report.skipped}: "
        f"{report.succeeded} succeeded, {report.failed} still failing; "
        f"{report.skipped} not resent; what remains is in {output}"
    )
    code = EXIT_OK if report.ok else EXIT_FAILED
    _write_report_json(
        args.report_json, report, command="replay", started_at=started_at, exit_code=code
    )
    return code


def _ensure_descriptors(connections: int) -> None:
    """Room for ``connections`` client sockets plus the service's own files and Braze
    connections: the soft open-file limit is raised towards the hard one if need be."""
    import resource

    needed = connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY and soft < needed:
            raise _UserError(
                f"--max-connections {connections} needs {needed} open files and the limit is "
                f"{soft} (ulimit -n): lower --max-connections or raise the limit"
            )


def cmd_serve(args: argparse.Namespace) -> int:
    from ._sender import BackgroundSender
    from .serve import auth_from_env, create_app
    from .serve._auth import AUTH_ENVS

    mapping = _load_mapping(args.mapping)
    for option, value, least in (
        ("--max-connections", args.max_connections, 1),
        ("--jwt-max-age", args.jwt_max_age, 1),
        ("--dedupe-window", args.dedupe_window, 0),
    ):
        if not value >= least or value == float("inf"):
            raise _UserError(f"{option} {value:g}: expected a number of at least {least}")
    _ensure_descriptors(args.max_connections)
    try:
        auth = auth_from_env(jwt_max_age=args.jwt_max_age)
    except ConfigurationError as exc:
        raise _UserError(str(exc)) from None
    if auth is None:
        if not is_loopback(args.host):
            raise _UserError(
                f"refusing to listen on {args.host} without authentication: set "
                f"{', '.join(AUTH_ENVS[:-1])} or {AUTH_ENVS[-1]} (and ..._SECRET, ..._SCOPE)"
            )
        print(
            "antavo-braze: warning: webhook requests are not authenticated (loopback only)",
            file=sys.stderr,
        )
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise _UserError(
            "serve needs an ASGI server: pip install uvicorn (the package's 'serve' extra)"
        ) from None
    # --antavo: Antavo's rule, each event's member read from Antavo and sent with it. Two
    # tries at most: a window never waits long on Antavo (a failed refresh is dead-lettered).
    antavo = _antavo_from_env(retry=_REFRESH_RETRY) if args.antavo else None
    client = _client_from_env(args)
    sink = JsonlDeadLetter(args.dead_letter, append=True) if args.dead_letter else None
    state = _state_store(args.state, args)
    try:
        syncer = Syncer(client, mapping, dead_letter=sink, state=state, handle_signals=False)
        order_url = _redis_url(args.order, args, "--order")
        order = RedisOrder(order_url) if order_url else None
        sender = BackgroundSender(
            syncer,
            spool=args.spool,
            flush_at=client.limits.max_objects,
            antavo=antavo,
            order=order,
        )
    except ConfigurationError as exc:
        client.close()
        raise _UserError(str(exc)) from None
    app = create_app(
        sender,
        auth=auth,
        allow_unauthenticated=False,
        public_metrics=args.public_metrics,
        dedupe_window=args.dedupe_window,
        shutdown_timeout=args.shutdown_timeout,
    )
    from .serve._guard import HEADER_TIMEOUT, ConnectionGuard, guarded_protocol

    guard = ConnectionGuard(args.max_connections, HEADER_TIMEOUT)
    spool = f", spool {args.spool}" if args.spool else " (no spool: queued changes live in memory)"
    print(
        f"antavo-braze {__version__}: receiving Antavo webhooks on "
        f"http://{args.host}:{args.port}/antavo/events and /antavo/members{spool}",
        file=sys.stderr,
        flush=True,
    )
    stopped_by: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopped_by.append(signum)

    # uvicorn handles SIGINT/SIGTERM while it runs, then restores these handlers and raises
    # the signal again: ours note it, so that the sender is closed (its queue flushed, the
    # rest kept in the spool or dead-lettered) instead of the process dying with it.
    previous = {name: signal.signal(name, stop) for name in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            access_log=False,
            http=guarded_protocol(guard),
            timeout_keep_alive=int(HEADER_TIMEOUT),
            # asyncio accepts up to `backlog` connections per wake-up before any reaches the
            # guard: a larger burst than the descriptors left stalls accept (EMFILE) for all.
            backlog=args.max_connections,
        )
    finally:
        for name, handler in previous.items():
            signal.signal(name, handler)
        sender.close(timeout=args.shutdown_timeout)
        client.close()
        if antavo is not None:
            antavo.close()
        syncer.close()
        _close_state(state)
        if order is not None:
            order.close()
    stats = sender.stats()
    why = f" ({signal.Signals(stopped_by[0]).name})" if stopped_by else ""
    if args.spool:
        kept = " (kept in the spool)"
    elif args.dead_letter:
        kept = " (in the dead letter)"
    else:  # no dead letter to point at
        kept = " (no --spool or --dead-letter kept them)" if stats.queued else ""
    print(
        f"stopped{why}: {stats.received} changes received, {stats.succeeded} succeeded, "
        f"{stats.failed} failed, {stats.skipped} skipped, {stats.queued} unsent{kept}",
        file=sys.stderr,
    )
    return EXIT_OK


# --- pull: read Antavo and sync ----------------------------------------------------------------


def _antavo_from_env(**options: Any) -> AntavoClient:
    try:
        return AntavoClient.from_env(**options)
    except ConfigurationError as exc:
        raise _UserError(str(exc)) from None


def _wait_or_stop(seconds: float) -> int | None:
    """Wait ``seconds`` between two pulls; SIGINT/SIGTERM end the wait at once: the signal
    number, else ``None``."""
    woken = threading.Event()
    caught: list[int] = []

    def handler(signum: int, frame: object) -> None:
        caught.append(signum)
        woken.set()

    previous = {name: signal.signal(name, handler) for name in (signal.SIGINT, signal.SIGTERM)}
    try:
        woken.wait(seconds)
    finally:
        for name, old in previous.items():
            signal.signal(name, old)
    return caught[0] if caught else None


def _antavo_refused(exc: AntavoBrazeError) -> int:
    print(f"antavo-braze: Antavo refused the credentials: {exc}", file=sys.stderr)
    return EXIT_AUTH


def cmd_pull(args: argparse.Namespace) -> int:
    mapping = _load_mapping(args.mapping)
    if not args.state and not args.since:
        raise _UserError(
            "pull needs --since, or --state (its watermark says where the last pull ended)"
        )
    if args.follow and not args.state:
        raise _UserError("--follow needs --state: each pull starts where the last one ended")
    if args.every <= 0:
        raise _UserError("--every must be a positive number of seconds")
    if args.lag < 0:
        raise _UserError("--lag must not be negative")
    antavo = _antavo_from_env(lag=args.lag)
    state = _state_store(args.state, args)
    client = _client_from_env(args)
    if args.check_schema:
        try:
            # A client of its own, as for sync: /custom_attributes' hourly budget must not
            # hold back /users/track.
            with _client_from_env(args) as schema_client:
                check_schema_before_run(schema_client, mapping)
        except BaseException:
            client.close()
            antavo.close()
            _close_state(state)
            raise
    sink = JsonlDeadLetter(args.dead_letter, append=True) if args.dead_letter else None
    progress = _ProgressLine(sys.stderr) if not (args.quiet or args.follow) else None
    try:
        syncer = Syncer(
            client,
            mapping,
            dead_letter=sink,
            state=state,
            progress=progress,
            max_clear_ratio=None if args.allow_mass_clear else 0.5,
            allow_deletes=args.allow_deletes,
            max_delete_ratio=args.max_delete_ratio,
        )
    except ConfigurationError as exc:
        client.close()
        raise _UserError(str(exc)) from None
    pull = syncer.pull_members if args.kind == "members" else syncer.pull_events
    since, until = args.since, args.until
    command = f"pull {args.kind}"
    try:
        while True:
            started_at = datetime.now(timezone.utc)
            try:
                report = pull(antavo, since=since, until=until)
            except SyncInterrupted as stop:
                if progress is not None:
                    progress.close()
                print(stop.report)
                print("interrupted: the watermark did not move", file=sys.stderr)
                code = 128 + stop.signal
                _write_report_json(
                    args.report_json,
                    stop.report,
                    command=command,
                    started_at=started_at,
                    exit_code=code,
                )
                return code
            except (AuthenticationError, PermissionDeniedError) as exc:
                if getattr(exc, "service", None) == "antavo":
                    return _antavo_refused(exc)
                raise
            except ConfigurationError as exc:
                raise _UserError(str(exc)) from None
            except AntavoBrazeError as exc:
                partial = getattr(exc, "report", None)
                if not args.follow:
                    if partial is not None:
                        print(partial)
                    _report_error(args, exc, command, started_at)
                    raise
                print(f"{_now()} pull failed ({exc}); the watermark did not move", flush=True)
            else:
                if progress is not None:
                    progress.close()
                code = exit_code(report)
                # With --follow, the file holds the last cycle's outcome.
                _write_report_json(
                    args.report_json, report, command=command, started_at=started_at, exit_code=code
                )
                if not args.follow:
                    print(report)
                    if args.dead_letter and report.failed:
                        print(f"failed records written to {args.dead_letter}")
                    return code
                print(f"{_now()} {report.summary()}; next from {report.watermark}", flush=True)
            since, until = None, None  # from the watermark on
            signum = _wait_or_stop(args.every)
            if signum is not None:
                print(f"stopped ({signal.Signals(signum).name})", file=sys.stderr)
                return 128 + signum
    finally:
        client.close()
        antavo.close()
        syncer.close()
        _close_state(state)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _add_pull(commands: Any) -> None:
    pull = commands.add_parser(
        "pull",
        help="read members or events from Antavo and sync them",
        description="Read the customers Antavo changed, or its events, over a window and "
        "sync them. With --state the pull starts where the last one ended (its watermark) "
        "and events Braze accepted are never sent again. Credentials from ANTAVO_API_URL "
        "(or ANTAVO_STACK), ANTAVO_API_KEY, ANTAVO_API_SECRET and the BRAZE_* variables.",
    )
    pull.add_argument("kind", choices=["members", "events"], metavar="{members,events}")
    pull.add_argument("--mapping", required=True, help="mapping file (JSON or TOML)")
    _add_state(pull)
    pull.add_argument("--since", help="window start (ISO 8601, e.g. 2026-12-01T00:00:00Z)")
    pull.add_argument("--until", help="window end (ISO 8601; default: now minus 60 seconds)")
    pull.add_argument(
        "--lag",
        type=float,
        default=60.0,
        help="seconds a window's default end stays behind now, for events Antavo makes "
        "visible late (60)",
    )
    pull.add_argument("--dead-letter", help="append failed records to this JSON Lines file")
    pull.add_argument(
        "--follow", action="store_true", help="pull again every --every seconds until stopped"
    )
    pull.add_argument(
        "--every", type=float, default=60.0, help="seconds between pulls with --follow (60)"
    )
    _add_mass_clear(pull)
    _add_deletes(pull)
    add_check_schema(pull)
    _add_report_json(pull)
    _add_budget(pull)
    _add_common(pull)
    pull.set_defaults(func=cmd_pull)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="antavo-braze",
        description="Sync Antavo loyalty data into Braze.",
        epilog="Environment: BRAZE_REST_ENDPOINT (your instance's REST endpoint, e.g. "
        "https://rest.iad-01.braze.com, or an instance name like US-01), BRAZE_API_KEY (a REST "
        "API key with users.track), BRAZE_APP_ID (optional: the app the data belongs to), "
        "HTTPS_PROXY / NO_PROXY (an egress proxy), BRAZE_CA_BUNDLE (a TLS-inspecting proxy's "
        "CA file). Exit codes: 0 all records succeeded (or "
        "were skipped as unchanged, already sent or another worker's), 1 some failed, values "
        "were dropped or a guard stopped (mass clear), 2 usage, file, mapping or "
        "infrastructure error (Redis, state store), 3 credentials or permission refused, "
        "4 nothing sent: every record was skipped for a reason that needs a look (no mapped "
        "field present, unmatched action), 130/143 interrupted by SIGINT/SIGTERM.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__} ({_build()})"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="sync sample data into an embedded fake Braze",
        description="Sync generated members and events into a fake Braze in this process "
        "and show the reports and what the fake now holds. Needs no credentials.",
    )
    demo.add_argument("--members", type=int, default=25, help="members to generate (25)")
    demo.add_argument("--events", type=int, default=20, help="events to generate (20)")
    demo.set_defaults(func=cmd_demo, verbose=0, quiet=False, log_file=None)

    fake = commands.add_parser(
        "fake",
        help="run a fake Braze to try the CLI on",
        description="Run a fake Braze (the test double the SDK's own tests use) on 127.0.0.1 "
        "until Ctrl-C, and print the BRAZE_REST_ENDPOINT and BRAZE_API_KEY to export. It "
        "validates requests as Braze does and keeps profiles, events and purchases; on Ctrl-C "
        "it prints what it holds (or writes it to --dump FILE, kept current while it runs).",
    )
    fake.add_argument("--port", type=int, default=0, help="port (a free one)")
    fake.add_argument("--api-key", default="fake-key", help="the key it accepts (fake-key)")
    fake.add_argument("--dump", metavar="FILE", help="keep what it holds in FILE (JSON)")
    fake.set_defaults(func=cmd_fake, verbose=0, quiet=False, log_file=None)

    check = commands.add_parser(
        "check",
        help="check the API key's permissions",
        description="Probe each permission the SDK uses (changing no data). Exit 0 when the "
        "key has users.track, all a sync needs; the others are optional, each marked with "
        "the feature that needs it (read endpoints, schema check, audit, merges, deletes).",
    )
    check.add_argument("--ca-bundle", metavar="PEM", help="trust this CA file (BRAZE_CA_BUNDLE)")
    check.set_defaults(func=cmd_check, max_in_flight=1, verbose=0, quiet=False, log_file=None)

    validate = commands.add_parser(
        "validate",
        help="validate a mapping file",
        description="Check a mapping file (JSON or TOML) and list every problem in it; with "
        "--input, show for each mapped field how often it is found in sample records, the "
        "types seen, and what to fix (a misspelled path, a type to declare).",
    )
    validate.add_argument("mapping", metavar="MAPPING")
    validate.add_argument(
        "--input",
        help="also map and coerce a sample of member records as a sync would: per field, "
        "valid / invalid / unreadable values with examples and hints (exit 1 when anything "
        "would fail, a type is wrong or a field is never found)",
    )
    validate.add_argument("--sample", type=int, default=1000, help="records to check (1000)")
    validate.add_argument(
        "--against-braze",
        action="store_true",
        help="also check each mapped attribute against the type Braze holds for it "
        "(GET /custom_attributes; credentials from the environment; exit 1 on a problem)",
    )
    _add_budget_max_in_flight(validate)
    _add_reading(validate)
    validate.set_defaults(func=cmd_validate, verbose=0, quiet=False, log_file=None)

    sync = commands.add_parser(
        "sync",
        help="sync members or events from a file",
        description="Map and send members (attributes) or events from a .jsonl, .json or "
        ".csv file (also .gz, or - for stdin). A bad line fails alone; the report is printed "
        "on stdout, progress on stderr.",
    )
    sync.add_argument("kind", choices=["members", "events"], metavar="{members,events}")
    sync.add_argument("--mapping", required=True, help="mapping file (JSON or TOML)")
    sync.add_argument("--input", required=True, help="records: .jsonl/.json/.csv[.gz] or -")
    _add_reading(sync)
    sync.add_argument("--dry-run", action="store_true", help="validate and batch; send nothing")
    sync.add_argument(
        "--show",
        type=int,
        default=0,
        metavar="N",
        help="with --dry-run: print the first N request bodies that would be sent",
    )
    _add_mass_clear(sync)
    sync.add_argument(
        "--max-failures",
        type=int,
        metavar="N",
        help="stop early when the first N records all failed (a fault hitting every record)",
    )
    sync.add_argument(
        "--dead-letter", help="write failed records here (JSON Lines, a new file per run)"
    )
    sync.add_argument("--append", action="store_true", help="append to the dead letter")
    sync.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run (same --input and --dead-letter): what it settled "
        "is skipped, what it cut off is sent",
    )
    _add_state(sync)
    add_check_schema(sync)
    _add_deletes(sync)
    sync.add_argument(
        "--shard",
        metavar="I/N",
        help="process only shard I (0-based) of N, stable by member id: N workers split one "
        "input (others' records are skipped)",
    )
    _add_budget(sync)
    _add_workers(sync)
    sync.add_argument(
        "--send",
        choices=["full", "changed"],
        default="full",
        help="with --state: send all mapped fields or only changed ones",
    )
    sync.add_argument(
        "--on-invalid-field",
        choices=["fail_record", "drop_field"],
        default="fail_record",
        help="a field that cannot be coerced fails its member, or is left out",
    )
    _add_report_json(sync)
    _add_common(sync)
    sync.set_defaults(func=cmd_sync)

    audit = commands.add_parser(
        "audit",
        help="compare what Braze holds with Antavo's members (and fix the drift)",
        description="Compare each member's mapped values, as the mapping would send them, "
        "with what Braze holds (POST /users/export/ids, only the mapped fields, paced at that "
        "endpoint's 40 requests/s); print per field how many are equal, different or missing "
        "in Braze, with examples. Exit 0 when Braze holds everything, 1 on drift (or when a "
        "fix failed).",
    )
    audit.add_argument("--mapping", required=True, help="mapping file (JSON or TOML)")
    audit.add_argument("--input", help="members: .jsonl/.json/.csv[.gz] or -")
    audit.add_argument(
        "--from-antavo",
        action="store_true",
        help="read every member from Antavo's API (ANTAVO_API_URL, ANTAVO_API_KEY, "
        "ANTAVO_API_SECRET) instead of --input",
    )
    _add_reading(audit)
    audit.add_argument("--fix", action="store_true", help="send only the drifted fields again")
    audit.add_argument(
        "--report-json", help="write the audit as JSON to this file (owner-only: member ids)"
    )
    audit.add_argument("--dead-letter", help="with --fix: write fixes that fail here")
    _add_common(audit)
    audit.set_defaults(func=cmd_audit)

    replay = commands.add_parser(
        "replay",
        help="resend the retryable records of a dead letter",
        description="Resend what a dead letter holds that may succeed now. What fails again, "
        "and what is not resent, goes to the output dead letter.",
    )
    replay.add_argument("input", metavar="DEAD_LETTER")
    replay.add_argument(
        "--dead-letter",
        "--output",
        dest="dead_letter",
        help="where what still fails goes (DEAD_LETTER's name with .replay.jsonl)",
    )
    replay.add_argument(
        "--include-unknown",
        action="store_true",
        help="also resend events and purchases whose outcome is unknown (may double-count)",
    )
    replay.add_argument(
        "--again",
        action="store_true",
        help="resend entries an earlier replay already resent (marked replayed_at)",
    )
    _add_report_json(replay)
    _add_state(replay)
    _add_common(replay)
    replay.set_defaults(func=cmd_replay)

    serve = commands.add_parser(
        "serve",
        help="receive Antavo webhooks and send them on in batches",
        description="An HTTP receiver for Antavo's 'Webhook message' workflow node: POST "
        "/antavo/events and /antavo/members, answered 202 once queued (on disk with --spool); "
        "GET /healthz and /metrics. Authentication from the environment: "
        "ANTAVO_BRAZE_WEBHOOK_BASIC (user:password), ANTAVO_BRAZE_WEBHOOK_JWT_SECRET (HS256), "
        "ANTAVO_BRAZE_WEBHOOK_JWT_PUBLIC_KEY (RS256, a PEM file), or "
        "ANTAVO_BRAZE_WEBHOOK_ESCHER_KEY/_SECRET/_SCOPE (an AWS4/Escher request signature); "
        "without any, loopback only. Needs the serve extra (pip install '.[serve]' in a checkout).",
    )
    serve.add_argument("--mapping", required=True, help="mapping file (JSON or TOML)")
    serve.add_argument("--spool", help="SQLite file: accepted changes survive a crash")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (8080)")
    serve.add_argument("--dead-letter", help="append failed changes to this JSON Lines file")
    serve.add_argument(
        "--antavo",
        action="store_true",
        help="Antavo's rule: read each event's member from Antavo (ANTAVO_* credentials) "
        "once per window and send its mapped fields with the events",
    )
    _add_state(serve)
    _add_budget(serve)
    serve.add_argument(
        "--order",
        metavar="REDIS_URL",
        help="keep per-member order with every other receiver using this Redis ('redis': "
        "the URL in --redis-url-file or ANTAVO_BRAZE_REDIS_URL)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="seconds to send what is queued when stopping (10)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="connections held at most; the oldest idle one makes room for a new one (256)",
    )
    serve.add_argument(
        "--jwt-max-age",
        type=float,
        default=300.0,
        help="seconds a JWT may be valid for at most, from iat and from now (300)",
    )
    serve.add_argument(
        "--dedupe-window",
        type=float,
        default=600.0,
        help="seconds a webhook without Idempotency-Key or event ids is remembered by the "
        "hash of its body, to recognise a redelivery (600)",
    )
    serve.add_argument(
        "--public-metrics",
        action="store_true",
        help="serve /metrics without authentication",
    )
    _add_common(serve)
    serve.set_defaults(func=cmd_serve)
    _add_pull(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _setup_logging(args)
        return int(args.func(args))
    except _UserError as exc:
        print(f"antavo-braze: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (AuthenticationError, PermissionDeniedError) as exc:
        print(f"antavo-braze: Braze refused the credentials: {exc}", file=sys.stderr)
        return EXIT_AUTH
    except AntavoBrazeError as exc:
        print(f"antavo-braze: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except redis_failures() as exc:  # infrastructure, not "some records failed"
        print(f"antavo-braze: error: Redis unreachable: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # stdout went away (piped into head): say nothing more, like other tools.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("antavo-braze: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as exc:
        if not _is_infrastructure_error(exc):
            raise
        # Redis or a state store went away mid-run: one line, the infrastructure's code.
        print(
            f"antavo-braze: error: Redis or the state store became unreachable: "
            f"{type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
