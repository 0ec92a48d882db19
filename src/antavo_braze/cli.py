"""``antavo-braze``: a thin command-line shell over the public API.

Exit codes: 0 every record succeeded; 1 some record failed; 2 a usage, file or mapping error;
3 Braze refused the credentials or a permission.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import _demo
from ._accounting import Progress
from ._client import BrazeClient
from ._mapping import Mapping
from ._state import SqliteStateStore
from ._sync import Syncer
from ._version import __version__
from .exceptions import (
    AntavoBrazeError,
    AuthenticationError,
    ConfigurationError,
    MappingError,
    PermissionDeniedError,
)

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH = 0, 1, 2, 3


class _UserError(Exception):
    """A mistake in the command line or its files: one line, no traceback."""


def read_records(path: str) -> Iterator[dict[str, Any]]:
    """Stream records from a ``.jsonl`` (one JSON object per line) or ``.csv`` file.

    CSV cells that are empty are left out; a column ``data.x`` of an events file becomes
    ``data["x"]``.
    """
    file = Path(path)
    if not file.is_file():
        raise _UserError(f"input file not found: {file}")
    suffix = file.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _read_jsonl(file)
    if suffix == ".csv":
        return _read_csv(file)
    raise _UserError(f"unsupported input {file.name!r}: use .jsonl or .csv")


def _read_jsonl(file: Path) -> Iterator[dict[str, Any]]:
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise _UserError(f"{file}:{number}: not valid JSON ({exc})") from None


def _read_csv(file: Path) -> Iterator[dict[str, Any]]:
    with file.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            record: dict[str, Any] = {}
            for key, value in row.items():
                if key is None or value in (None, ""):
                    continue
                if key.startswith("data."):
                    record.setdefault("data", {})[key[5:]] = value
                else:
                    record[key] = value
            yield record


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


def _client_from_env(args: argparse.Namespace) -> BrazeClient:
    try:
        return BrazeClient.from_env(max_in_flight=args.max_in_flight)
    except ConfigurationError as exc:
        raise _UserError(str(exc)) from None


def _load_mapping(path: str) -> Mapping:
    try:
        return Mapping.from_file(path)
    except MappingError as exc:
        raise _UserError(str(exc)) from None


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
        print(f"{'ok     ' if granted else 'MISSING'} {name}")
    print(f"endpoint {client.endpoint}")
    return EXIT_OK if all(permissions.values()) else EXIT_FAILED


def cmd_validate(args: argparse.Namespace) -> int:
    mapping = _load_mapping(args.mapping)
    print(
        f"{args.mapping}: valid mapping ({len(mapping.fields)} fields, "
        f"{len(mapping.events)} events, {len(mapping.triggers)} triggers)"
    )
    return EXIT_OK


def cmd_sync(args: argparse.Namespace) -> int:
    mapping = _load_mapping(args.mapping)
    records = read_records(args.input)
    progress = _ProgressLine(sys.stderr) if not args.quiet else None
    if args.dry_run:
        # No credentials needed: nothing is sent.
        client = BrazeClient("http://127.0.0.1:1", "dry-run")
    else:
        client = _client_from_env(args)
    state = SqliteStateStore(args.state) if args.state else None
    with client:
        try:
            syncer = Syncer(
                client,
                mapping,
                dead_letter=args.dead_letter,
                state=state,
                send=args.send,
                progress=progress,
            )
        except ConfigurationError as exc:
            raise _UserError(str(exc)) from None
        try:
            if args.dry_run:
                report = syncer.dry_run(args.kind, records)
            elif args.kind == "members":
                report = syncer.sync_members(records)
            else:
                report = syncer.sync_events(records)
        finally:
            if progress is not None:
                progress.close()
    if args.dry_run:
        print(f"dry run: {report.requests} request bodies would be sent")
    print(report)
    if report.failures and args.dead_letter:
        print(f"failed records written to {args.dead_letter}")
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_replay(args: argparse.Namespace) -> int:
    if not Path(args.dead_letter).is_file():
        raise _UserError(f"dead-letter file not found: {args.dead_letter}")
    progress = _ProgressLine(sys.stderr) if not args.quiet else None
    with _client_from_env(args) as client:
        syncer = Syncer(client, Mapping(), dead_letter=args.output, progress=progress)
        try:
            report = syncer.replay(args.dead_letter)
        except ConfigurationError as exc:
            raise _UserError(str(exc)) from None
        finally:
            if progress is not None:
                progress.close()
    print(report)
    return EXIT_OK if report.ok else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="antavo-braze",
        description="Sync Antavo loyalty data into Braze. Credentials come from "
        "BRAZE_REST_ENDPOINT, BRAZE_API_KEY and BRAZE_APP_ID.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="sync sample data into an embedded fake Braze")
    demo.add_argument("--members", type=int, default=25, help="members to generate (25)")
    demo.add_argument("--events", type=int, default=20, help="events to generate (20)")
    demo.set_defaults(func=cmd_demo)

    check = commands.add_parser("check", help="check the API key's permissions")
    check.set_defaults(func=cmd_check, max_in_flight=1)

    validate = commands.add_parser("validate", help="validate a mapping file")
    validate.add_argument("mapping", metavar="MAPPING")
    validate.set_defaults(func=cmd_validate)

    sync = commands.add_parser("sync", help="sync members or events from a .jsonl/.csv file")
    sync.add_argument("kind", choices=["members", "events"])
    sync.add_argument("--mapping", required=True, help="mapping file (JSON or TOML)")
    sync.add_argument("--input", required=True, help="records (.jsonl or .csv)")
    sync.add_argument("--dry-run", action="store_true", help="validate and batch; send nothing")
    sync.add_argument("--dead-letter", help="write failed records here (JSON Lines)")
    sync.add_argument("--state", help="SQLite file for change detection")
    sync.add_argument(
        "--send",
        choices=["full", "changed"],
        default="full",
        help="with --state: send all mapped fields or only changed ones",
    )
    sync.add_argument("--max-in-flight", type=int, default=8, help="concurrent requests (8)")
    sync.add_argument("--quiet", action="store_true", help="no progress line")
    sync.set_defaults(func=cmd_sync)

    replay = commands.add_parser("replay", help="resend the retryable records of a dead letter")
    replay.add_argument("dead_letter", metavar="DEAD_LETTER")
    replay.add_argument("--output", help="dead letter for records that fail again")
    replay.add_argument("--max-in-flight", type=int, default=4)
    replay.add_argument("--quiet", action="store_true", help="no progress line")
    replay.set_defaults(func=cmd_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
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
    except KeyboardInterrupt:  # pragma: no cover - interactive
        print("antavo-braze: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
