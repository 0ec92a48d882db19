"""What change detection saves: attribute values (Braze data points) sent on a realistic re-sync.

10,000 members with the demo mapping (12 fields) are synced once; then a day later 10% of them
earned points (score and spendable change) and 1% changed tier. The re-sync is measured without
state (Antavo's rule: every mapped field of every member), with state in "full" mode (unchanged
members skipped) and in "changed" mode (only changed fields). Prints figures; asserts nothing.
"""

from __future__ import annotations

import copy
import random
import tempfile
from pathlib import Path

import antavo_braze as ab
from antavo_braze._demo import DEMO_MAPPING, sample_members
from antavo_braze.testing import FakeBraze

N = 10_000


def next_day(members: list[dict[str, object]]) -> list[dict[str, object]]:
    rng = random.Random(1)
    changed = copy.deepcopy(members)
    for member in rng.sample(changed, N // 10):
        member["score"] = int(member["score"]) + 100  # type: ignore[call-overload]
        member["spendable"] = str(int(member["spendable"]) + 100)  # type: ignore[call-overload]
    for member in rng.sample(changed, N // 100):
        member["tiers"][0]["name"] = "Platinum"  # type: ignore[index]
    return changed


def main() -> None:
    day1 = list(sample_members(N))
    day2 = next_day(day1)
    print(
        f"data points on a re-sync: N={N:,} members, 12 mapped fields, 10% earned points, "
        "1% changed tier"
    )
    with FakeBraze(record=False) as fake, tempfile.TemporaryDirectory() as folder:
        for label, send, use_state in (
            ("no state (send everything)", "full", False),
            ("state, send='full'", "full", True),
            ("state, send='changed'", "changed", True),
        ):
            state = (
                ab.SqliteStateStore(Path(folder) / f"{send}{use_state}.db") if use_state else None
            )
            with fake.client(max_in_flight=4) as client:
                syncer = ab.Syncer(client, DEMO_MAPPING, state=state, send=send)  # type: ignore[arg-type]
                syncer.sync_members(day1)
                report = syncer.sync_members(day2)
            print(
                f"  {label:28} values sent {report.attribute_values:>7,}  "
                f"saved {report.attribute_values_saved:>7,}  members sent "
                f"{report.succeeded:>6,}  skipped {report.skipped:>6,}  requests {report.requests}"
            )


if __name__ == "__main__":
    main()
