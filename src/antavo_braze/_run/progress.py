"""A tqdm progress bar for a run (the ``progress=True`` of the Syncer; tqdm is optional)."""

from __future__ import annotations

from collections.abc import Callable

from .report import Progress, stderr_progress


class TqdmProgress:
    def __init__(self, total: int | None) -> None:
        from tqdm import tqdm

        self._bar = tqdm(unit="records", total=total)
        self._done = 0

    def __call__(self, progress: Progress) -> None:
        self._bar.update(progress.done - self._done)
        self._done = progress.done
        self._bar.set_postfix(failed=progress.failed, requests=progress.requests, refresh=False)


def progress_callback(
    spec: bool | Callable[[Progress], None] | None, total: int | None
) -> Callable[[Progress], None] | None:
    """The progress callback of one call (the Syncer's ``progress``): the caller's, or a tqdm
    bar of its own (a stderr line without tqdm)."""
    if spec is None or spec is False:
        return None
    if spec is True:
        try:
            return TqdmProgress(total)  # a bar of its own per call
        except ModuleNotFoundError:
            return stderr_progress
    return spec
