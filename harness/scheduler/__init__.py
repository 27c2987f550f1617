"""The driver's streaming scheduler: list entries -> decode workers -> inference actors -> records.

The scheduler owns no data: a decode worker returns a small status and the views as a
separate object; the scheduler passes the views' reference (never the views) to an
inference actor and records what comes back. Where things are:

- :mod:`.members`: a :class:`Member` per Ray actor (handle, process incarnation, state, its
  calls in submission order, deaths) and :class:`Call`, one task in flight with its own clock;
- :mod:`.stage_states`: one state object per stage (:class:`DecodeStage`, :class:`InferStage`,
  :class:`ReferenceStage`) with its budget and its handling of answered / raised / lost / hung
  calls;
- :mod:`.core`: the :class:`Scheduler` loop (named phases: probe again, start decodes, route
  clips, wait, expire, report stalls, handle what finished) and what stages share (deaths,
  restarts, probes, retirement);
- :mod:`.calls`: :class:`RayCalls`, the Ray calls and Ray's errors in the kinds told apart.

Its rules, each unit-tested with fake workers in tests/test_scheduler.py (tests named
``test_rule_<n>_...``):

1. **Pull, never split.** Entries are taken from the iterator one at a time, only when a
   decode worker is idle and the decoded-clip buffer has room; retried videos go first.
2. **Bounded memory.** At most ``buffer`` videos are decoding or decoded and waiting for an
   actor (``max(videos per call summed over the actors, decoders x their depth)``, and at most
   ``buffer_bytes`` of clips), and at most ``depth`` x its videos per call are queued at each
   inference actor (an actor that batches B videos per call gets 2B: one batch running, the
   next one gathering): the object store's working set is bounded whatever the list's length.
3. **Least busy first.** A decoded clip goes to the ready actor with the fewest queued videos
   (the lowest number on ties); a decode goes to the least busy ready worker below its depth
   (1, or stages.READ_AHEAD for videos in object storage: the next read overlaps a decode).
4. **A broken video is recorded, not retried.** A decode worker's failure record keeps its
   reason (harness.reasons: ``missing``, ``read error`` after the storage's own tries,
   ``timeout`` when the worker gave up on a read, ...); an exception inside a decode is
   ``decode failed``. A device call that raised is not the video's fault for sure (a
   transient device error; the actor already retried a failed batch one video at a time):
   it is charged an attempt like a death and recorded ``inference failed`` once they are spent
   (as a resume would retry it: ``Reason.transient``).
5. **A death is retried.** When a worker or actor dies, each of its calls that was running
   (the first ``concurrency`` of its calls, whatever order they finish in) is charged an
   attempt (``max_retries`` each, then it is recorded ``worker died``); those queued behind
   are requeued free. A decoded clip lost with its node is charged to the decode worker that
   made it (a death of that worker's process), not to the actor.
6. **Restarts are not deaths.** However many calls a member held when it died, that is one
   death of that process. Ray restarts it: the member is *starting* until it answers a probe;
   a probe that fails because Ray is still restarting it is sent again every
   ``PROBE_INTERVAL_S``, not counted. The member is retired only when Ray reports the actor
   dead for good (its restart budget spent; where Ray's state API cannot say, after
   ``max_restarts`` deaths) or the startup budget passes (rule 7), and the log says which.
   A pool with no usable member while work remains stops the run with an error naming it.
7. **Every wait is bounded.** The driver never blocks on one task: it wakes at least every
   ``TICK_S`` and checks every running call's budget that often. Each call is timed from when
   it started running on its member (when the one ahead of it finished, on a full member),
   never reset by a neighbour's answer. A decode that outlives ``decode_timeout`` (x the
   worker's concurrent calls, plus a grace: the worker enforces the timeout itself and
   answers ``timeout``) is recorded ``timeout``, and its worker is killed and replaced (a
   reader stuck in the kernel may never die: it is abandoned, not waited for). An inference
   call that outlives its budget gets its actor killed and restarted: its running calls are
   charged (recorded ``timeout`` when a video hung on every attempt), its queued ones
   requeued free at once (one kill, one death, whenever the killed calls report). A call
   whose clip's decoder process has died since is not the actor's fault: it most likely waits
   for the clip from a lost node, so the video is decoded again and the actor kept (rule 5).
   A new or restarted member that does not answer within ``startup`` seconds is set aside.
8. **A member that cannot serve is set aside.** An actor whose session cannot open (after a
   restart) is retired with its error; its videos go elsewhere, and a pool left with nobody
   stops the run with that error.
9. **Once.** Each list index is recorded at most once; a second result is dropped with a warning.
10. **Decoders follow demand.** With ``max_decoders`` above the pool's size, the scheduler adds
    decode workers while the measured decode time x the devices' measured rate says the
    devices would wait for clips.
11. **Stop.** After :meth:`Scheduler.stop` no new video starts; what is in flight finishes
    (the reference's calls of rule 12 are dropped: a resume audits those videos).
12. **Audit on the side.** With an :class:`Audit`, each audited video's decoded clip (the same
    reference) also goes to the reference actor once, and its device call returns per-view
    logits. The reference has its own queue, counts in no buffer or depth, and its failures
    (or its not being ready) are reported to the audit, never charged to a video; the run
    waits for it only at the end.
13. **Nothing held once settled.** When a call is answered, or given up on after a death or a
    timeout, the scheduler drops every reference to it and to its views: nothing lost stays
    pinned in the object store, also across benchmark loops on the same scheduler.
"""

from harness.limits import Timeouts
from harness.scheduler.calls import (TICK_S, Fate, RayCalls, TaskFailed, Unavailable, ViewsLost,
                                     WorkerLost)
from harness.scheduler.core import (PROBE_INTERVAL_S, Audit, Entry, Policy, RunStats, Scheduler,
                                    SetAside)
from harness.scheduler.members import Call, Member, MemberState, Work
from harness.scheduler.stage_states import (DECODE_GRACE_S, STALL_REPORT_S, DecodeStage,
                                            InferStage, ReferenceStage)

__all__ = ["DECODE_GRACE_S", "PROBE_INTERVAL_S", "STALL_REPORT_S", "TICK_S", "Audit", "Call",
           "DecodeStage", "Entry", "Fate", "InferStage", "Member", "MemberState", "Policy",
           "RayCalls", "ReferenceStage", "RunStats", "Scheduler", "SetAside", "TaskFailed",
           "Timeouts", "Unavailable", "ViewsLost", "WorkerLost", "Work"]
