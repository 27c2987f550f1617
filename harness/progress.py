"""The progress bar of a run: done/total, videos/s, ETA, failures and the running top-1 with
its 95% Wilson interval (of this invocation's videos: a run going wrong shows early), on stderr.

On a terminal it redraws as videos finish; in a log file (stderr not a terminal, e.g.
``ray job logs`` or ``nohup``) it writes one line every 10 s instead of a line per video.
"""

from __future__ import annotations

import sys


class Progress:
    """tqdm on stderr, or nothing when disabled."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.failed = self.scored = self.correct = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="video", file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.1,
                            mininterval=0.1 if sys.stderr.isatty() else 10.0)
            self.bar.set_postfix_str(self.postfix())

    def update(self, result) -> None:
        """Count one recorded ``VideoResult``."""
        if result.status != "ok":
            self.failed += 1
        else:
            self.scored += 1
            self.correct += int(int(result.scores.argmax()) == int(result.label))
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(), refresh=False)
            self.bar.update(1)

    def postfix(self) -> str:
        """``failed=F top1=P% [lo, hi]`` (the interval: Wilson, 95%)."""
        from harness.stats import wilson_interval

        text = f"failed={self.failed}"
        if self.scored:
            low, high = wilson_interval(self.correct, self.scored)
            text += (f" top1={100 * self.correct / self.scored:.1f}%"
                     f" [{100 * low:.1f}, {100 * high:.1f}]")
        return text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
