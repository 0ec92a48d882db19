"""``antavo-braze``: a thin command-line shell over the public API.

Exit codes: 0 every record succeeded; 1 some record failed; 2 a usage, file or mapping error;
3 Braze refused the credentials or a permission; 130 / 143 interrupted by SIGINT / SIGTERM
(the partial report is printed, and with ``--dead-letter`` the run can be resumed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import _demo
from ._accounting import Progress
from ._batching import BatchLimits
from ._checkpoint import Checkpoint, Resumed, checkpoint_path
from ._client import BrazeClient
from ._deadletter import JsonlDeadLetter, entry_to_json, read_dead_letters
from ._endpoint import is_loopback
from ._files import ensure_private_file, replace_private
from ._input import RecordSource, read_records
from ._limits import REQUIRED_PERMISSIONS, TRACK_RATE_REQUESTS, TRACK_RATE_SECONDS
from ._mapping import Mapping
from ._profile import profile_fields
from ._ratelimit import InProcessPacer
from ._redis import RedisPacer, RedisStateStore
from ._retry import RetryPolicy
from ._shard import Sharded, parse_shard
from ._state import SqliteStateStore, StateStore
from ._sync import Syncer
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

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH = 0, 1, 2, 3
DEFAULT_MAX_IN_FLIGHT = 8  # one default for every command that sends


class _UserError(Exception):
    """A mistake in the command line or its files: one line, no traceback."""


class _ProgressLine:
    """Progress on stderr: an updating line on a terminal, a line every few seconds otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = 0.0
        self.shown = False

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if not self._tty and now - self._last < 2.0:
            return
        self._last = now
        self.shown = True
        end = "" if self._tty else "\n"
        self._stream.write(("\r" if self._tty else "") + progress.line() + end)
        self._stream.flush()

    def close(self) -> None:
        if self.shown and self._tty:
            self._stream.write("\n")
        self.shown = False


def _client_from_env(args: argparse.Namespace) -> BrazeClient:
    options: dict[str, Any] = {"max_in_flight": args.max_in_flight}
    try:
        if getattr(args, "batch_size", None):
            options["limits"] = BatchLimits(max_objects=args.batch_size)
        pacer_url = getattr(args, "pacer", None)
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


def _state_store(location: str | None) -> StateStore | None:
    """``--state``: an SQLite file, or a ``redis://`` URL shared by every worker."""
    if not location:
        return None
    try:
        if location.startswith(("redis://", "rediss://", "unix://")):
            return RedisStateStore(location)
        return SqliteStateStore(location)
    except ConfigurationError as exc:
        raise _UserError(str(exc)) from None


def _load_mapping(path: str) -> Mapping:
    try:
        return Mapping.from_file(path)
    except MappingError as exc:
        raise _UserError(str(exc)) from None


def _setup_logging(args: argparse.Namespace) -> None:
    """``-v`` shows retries and the run summary on stderr; ``--log-file`` keeps them (never
    with the API key: the library does not log it)."""
    level = logging.DEBUG if args.verbose > 1 else logging.INFO
    handlers: list[logging.Handler] = []
    if args.verbose and not args.quiet:
        handlers.append(logging.StreamHandler(sys.stderr))
    if args.log_file:
        # Owner-only like every file the SDK writes: a warning may quote a member's id.
        try:
            ensure_private_file(args.log_file)
        except ConfigurationError as exc:
            raise _UserError(str(exc)) from None
        handlers.append(logging.FileHandler(args.log_file, encoding="utf-8"))
    logger = logging.getLogger("antavo_braze")
    if not handlers:
        # Without -v, only what needs a person's attention reaches stderr.
        logger.setLevel(logging.ERROR if args.quiet else logging.WARNING)
        return
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def _add_reading(parser: argparse.ArgumentParser) -> None:
    """How --input is read (sync and validate read files alike)."""
    parser.add_argument("--format", choices=["jsonl", "json", "csv"], help="override the suffix")
    parser.add_argument("--encoding", default="utf-8", help="input encoding (utf-8)")
    parser.add_argument("--delimiter", help="CSV separator (sniffed: , ; tab |)")


def _add_state(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        help="members: change detection in an SQLite file, or a redis:// URL shared by workers",
    )


def _add_budget(parser: argparse.ArgumentParser) -> None:
    """Braze's request budget: your contract's limits, and one budget shared in Redis."""
    parser.add_argument(
        "--pacer",
        metavar="REDIS_URL",
        help="share one Braze request budget with every worker using this Redis",
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
        "sharing one request budget; --max-in-flight is per worker (1)",
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
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    with _client_from_env(args) as client:
        permissions = client.check_permissions()
    for name, granted in permissions.items():
        need = "required" if name in REQUIRED_PERMISSIONS else "optional (read endpoints only)"
        print(f"{'ok     ' if granted else 'MISSING'} {name:<20} {need}")
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
    if args.input is None:
        return EXIT_OK
    profiles = profile_fields(mapping, _open_input(args), limit=args.sample)
    records = profiles[0].records if profiles else 0
    print(f"sample: {records} records of {args.input}")
    width = max((len(f"{p.loyalty_field} -> {p.remote_field}") for p in profiles), default=0)
    for profile in profiles:
        pair = f"{profile.loyalty_field} -> {profile.remote_field}"
        types = ", ".join(f"{name} {count}" for name, count in profile.types) or "-"
        line = f"  {pair:<{width}}  found in {profile.found} of {profile.records} ({types})"
        print(line + (f"  {profile.advice}" if profile.advice else ""))
    missing = [p.loyalty_field for p in profiles if p.never_found]
    if missing:
        print(f"never found in the sample: {', '.join(missing)} (a sync would not send them)")
        return EXIT_FAILED
    return EXIT_OK


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
    if args.kind == "events" and args.state:
        raise _UserError("--state applies to members only (events are always sent)")
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
    progress = _ProgressLine(sys.stderr) if not args.quiet else None
    state = _state_store(args.state)
    client = None if args.dry_run else _client_from_env(args)  # a dry run needs no credentials
    append = args.append or checkpoint is not None
    # Taken before reading: what an interrupt saves describes the input this run read.
    base = checkpoint
    if base is None and args.dead_letter and args.input != "-" and not args.dry_run:
        base = Checkpoint.for_input(args.kind, args.input)
    sink = JsonlDeadLetter(args.dead_letter, append=append) if args.dead_letter else None
    try:
        syncer = Syncer(
            client,
            mapping,
            dead_letter=None if args.dry_run else sink,  # a dry run hands it to dry_run()
            state=state,
            send=args.send,
            progress=progress,
            on_invalid_field=args.on_invalid_field,
        )
    except ConfigurationError as exc:
        raise _UserError(str(exc)) from None
    try:
        if args.dry_run:
            report = syncer.dry_run(args.kind, records, dead_letter=sink)
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
        return 128 + stop.signal
    finally:
        if progress is not None:
            progress.close()
        if client is not None:
            client.close()
        _close_state(state)
        syncer.close()
    if args.dry_run:
        print(f"dry run: {report.requests} request bodies would be sent")
    print(report)
    if args.dead_letter:
        if report.failed:
            print(f"failed records written to {args.dead_letter}")
        if not args.dry_run:
            checkpoint_path(args.dead_letter).unlink(missing_ok=True)  # the run completed
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_replay(args: argparse.Namespace) -> int:
    source = Path(args.input)
    if not source.is_file():
        raise _UserError(f"dead-letter file not found: {args.input}")
    try:  # a file that is not a dead letter is a usage error before anything is sent
        for _ in read_dead_letters(source):
            pass
    except ConfigurationError as exc:
        raise _UserError(str(exc)) from None
    output = args.dead_letter or str(source.with_name(source.stem + ".replay.jsonl"))
    progress = _ProgressLine(sys.stderr) if not args.quiet else None
    with _client_from_env(args) as client:
        try:
            syncer = Syncer(client, Mapping(), dead_letter=output, progress=progress)
            report = syncer.replay(source, allow_duplicates=args.include_unknown)
        except ConfigurationError as exc:
            raise _UserError(str(exc)) from None
        except SyncInterrupted as stop:
            print(stop.report)
            return 128 + stop.signal
        finally:
            if progress is not None:
                progress.close()
    print(report)
    print(
        f"resent {report.total - report.skipped}: "
        f"{report.succeeded} succeeded, {report.failed} still failing; "
        f"{report.skipped} not resent; what remains is in {output}"
    )
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_serve(args: argparse.Namespace) -> int:
    from ._sender import BackgroundSender
    from .serve import auth_from_env, create_app
    from .serve._auth import BASIC_ENV, JWT_ENV

    mapping = _load_mapping(args.mapping)
    try:
        auth = auth_from_env()
    except ConfigurationError as exc:
        raise _UserError(str(exc)) from None
    if auth is None:
        if not is_loopback(args.host):
            raise _UserError(
                f"refusing to listen on {args.host} without authentication: set "
                f"{BASIC_ENV} (user:password) or {JWT_ENV}"
            )
        print(
            "antavo-braze: warning: webhook requests are not authenticated (loopback only)",
            file=sys.stderr,
        )
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise _UserError(
            "serve needs an ASGI server: pip install 'antavo-braze[serve]' (uvicorn)"
        ) from None
    client = _client_from_env(args)
    sink = JsonlDeadLetter(args.dead_letter, append=True) if args.dead_letter else None
    state = _state_store(args.state)
    try:
        syncer = Syncer(client, mapping, dead_letter=sink, state=state, handle_signals=False)
        sender = BackgroundSender(syncer, spool=args.spool, flush_at=client.limits.max_objects)
    except ConfigurationError as exc:
        client.close()
        raise _UserError(str(exc)) from None
    app = create_app(sender, auth=auth)
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
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    finally:
        for name, handler in previous.items():
            signal.signal(name, handler)
        sender.close(timeout=args.shutdown_timeout)
        client.close()
        syncer.close()
        _close_state(state)
    stats = sender.stats()
    why = f" ({signal.Signals(stopped_by[0]).name})" if stopped_by else ""
    print(
        f"stopped{why}: {stats.received} changes received, {stats.succeeded} succeeded, "
        f"{stats.failed} failed, {stats.skipped} skipped, {stats.queued} unsent "
        f"({'kept in the spool' if args.spool else 'in the dead letter'})",
        file=sys.stderr,
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="antavo-braze",
        description="Sync Antavo loyalty data into Braze.",
        epilog="Environment: BRAZE_REST_ENDPOINT (your instance's REST endpoint, e.g. "
        "https://rest.iad-01.braze.com, or an instance name like US-01), BRAZE_API_KEY (a REST "
        "API key with users.track), BRAZE_APP_ID (optional: the app the data belongs to), "
        "HTTPS_PROXY / NO_PROXY (an egress proxy). Exit codes: 0 all records succeeded, 1 some "
        "failed, 2 usage, file or mapping error, 3 credentials or permission refused, "
        "130/143 interrupted by SIGINT/SIGTERM.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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

    check = commands.add_parser(
        "check",
        help="check the API key's permissions",
        description="Probe each permission the SDK uses (changing no data). Exit 0 when the "
        "key has users.track, all a sync needs; the read permissions are optional.",
    )
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
        help="also profile the mapped fields over sample member records (exit 1 when a "
        "mapped field is never found)",
    )
    validate.add_argument("--sample", type=int, default=1000, help="records to profile (1000)")
    _add_reading(validate)
    validate.set_defaults(func=cmd_validate, verbose=0, quiet=False, log_file=None)

    sync = commands.add_parser(
        "sync",
        help="sync members or events from a file",
        description="Map and send members (attributes) or events from a .jsonl, .json or "
        ".csv file (also .gz, or - for stdin). A bad line fails alone; the report is printed "
        "on stdout, progress on stderr.",
    )
    sync.add_argument("kind", choices=["members", "events"])
    sync.add_argument("--mapping", required=True, help="mapping file (JSON or TOML)")
    sync.add_argument("--input", required=True, help="records: .jsonl/.json/.csv[.gz] or -")
    _add_reading(sync)
    sync.add_argument("--dry-run", action="store_true", help="validate and batch; send nothing")
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
    _add_common(sync)
    sync.set_defaults(func=cmd_sync)

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
    _add_common(replay)
    replay.set_defaults(func=cmd_replay)

    serve = commands.add_parser(
        "serve",
        help="receive Antavo webhooks and send them on in batches",
        description="An HTTP receiver for Antavo's 'Webhook message' workflow node: POST "
        "/antavo/events and /antavo/members, answered 202 once queued (on disk with --spool); "
        "GET /healthz and /metrics. Authentication from ANTAVO_BRAZE_WEBHOOK_BASIC "
        "(user:password) or ANTAVO_BRAZE_WEBHOOK_JWT_SECRET; without either, loopback only. "
        "Needs pip install 'antavo-braze[serve]'.",
    )
    serve.add_argument("--mapping", required=True, help="mapping file (JSON or TOML)")
    serve.add_argument("--spool", help="SQLite file: accepted changes survive a crash")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (8080)")
    serve.add_argument("--dead-letter", help="append failed changes to this JSON Lines file")
    _add_state(serve)
    _add_budget(serve)
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="seconds to send what is queued when stopping (10)",
    )
    _add_common(serve)
    serve.set_defaults(func=cmd_serve)
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
    except BrokenPipeError:
        # stdout went away (piped into head): say nothing more, like other tools.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("antavo-braze: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
