"""A tqdm progress bar for a run (the ``progress=True`` of the Syncer; tqdm is optional)."""

from __future__ import annotations

from .report import Progress


class TqdmProgress:
    def __init__(self, total: int | None) -> None:
        from tqdm import tqdm

        self._bar = tqdm(unit="records", total=total)
        self._done = 0

    def __call__(self, progress: Progress) -> None:
        self._bar.update(progress.done - self._done)
        self._done = progress.done
        self._bar.set_postfix(failed=progress.failed, requests=progress.requests, refresh=False)
