"""The one place for the budgets of a run: how long each task may take, and how often Ray
restarts a member that died.

Everything else (the config's ``harness.run`` section, the command lines' help, the scheduler,
the Ray actors' options) reads its defaults from here, so a default changes in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

# Ray restarts a decode worker, an inference actor or the audit's reference this many times
# (``max_restarts``); once that budget is spent Ray reports the actor dead for good and the
# scheduler stops using it.
MAX_RESTARTS = 3


@dataclass(frozen=True)
class Timeouts:
    """Seconds a task may take before the driver acts (docs/running.md, "Timeouts").

    Defaults are generous but finite: a K400 video decodes in about a second on one core and
    takes ~1.65 s on a 310P3, so only a stalled read or a hung device passes them.
    """

    decode: float = 300.0            # one video in a decode worker
    reference: float = 3600.0        # one audited video on the reference actor (a CPU)
    infer: float | None = None       # one video on a device; None: adaptive (see below)
    startup: float = 900.0           # a new or restarted member's first answer (model load)
    infer_first: float = 900.0       # adaptive: before 3 calls have finished (warm-up)
    infer_min: float = 120.0         # adaptive: the floor ...
    infer_factor: float = 20.0       # ... and the multiple of the median call
