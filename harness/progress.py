"""The progress bar of a run: done/total, videos/s, ETA and failures, on stderr.

On a terminal it redraws as videos finish; in a log file (stderr not a terminal, e.g.
``ray job logs`` or ``nohup``) it writes one line every 10 s instead of a line per video.
"""

from __future__ import annotations

import sys


class Progress:
    """tqdm on stderr, or nothing when disabled."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.failed = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="video", file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.1,
                            mininterval=0.1 if sys.stderr.isatty() else 10.0)
            self.bar.set_postfix(failed=0)

    def update(self, result) -> None:
        """Count one recorded ``VideoResult``."""
        if result.status != "ok":
            self.failed += 1
        if self.bar is not None:
            if result.status != "ok":
                self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
