"""Results on disk: predictions.parquet (a dataset of part files), run.json, summary.json.

predictions.parquet is a directory of part files, each written under a hidden temporary
name and renamed when complete: ``pyarrow.parquet.read_table(<work>/predictions.parquet)``
reads every completed batch at any moment, also after a crash (pyarrow skips names
starting with '.'). A video can have several rows (a transient failure retried by a later
run, or a crash between writing a part and the bookkeeping): readers here keep its latest.

One driver at a time owns a work dir (:func:`lock_work_dir`: a lock that dies with its holder).
An unwritable work dir is a :class:`WorkDirError` with the fix, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.errors import ConfigError, HarnessError
from harness.reasons import Reason
from harness.scores import mean_class_accuracy, top_k_accuracy

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.parquet"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
# What a corrected --data-prefix or list changes in a run's identity (see prepare_work_dir).
LOCATION_FIELDS = frozenset({"data_prefix", "list_sha256", "list_length"})


class WorkDirError(HarnessError):
    """The work dir cannot be written (read-only, full, a file in the way) or is in use."""


def work_dir_error(work_dir: str | Path, exc: OSError) -> WorkDirError:
    reason = exc.strerror or str(exc)
    return WorkDirError(f"cannot write results in {work_dir}: {reason} ({exc.filename or work_dir})."
                        " Fix: free space, make it writable, or use another --work-dir; what was"
                        " written stays, and the same command resumes")


def lock_work_dir(work_dir: str | Path):
    """Hold ``<work_dir>/.lock`` for this process's life: a second driver is refused. The
    lock is the kernel's (flock): it goes away with its holder, also on kill -9."""
    import fcntl

    path = Path(work_dir) / LOCK_FILE
    try:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError as exc:
        raise work_dir_error(work_dir, exc) from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise WorkDirError(f"{work_dir} is in use by another harness.run ({holder}); wait for it,"
                           " or use another --work-dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle

SCHEMA = pa.schema([
    ("index", pa.int64()), ("path", pa.string()), ("label", pa.int32()),
    ("status", pa.string()), ("error", pa.string()), ("message", pa.string()),
    ("scores", pa.list_(pa.float32())), ("top5", pa.list_(pa.int32())),
    ("device", pa.string()), ("node", pa.string()),
    ("finished_at", pa.float64()),  # unix time the driver recorded it (report: throughput over time)
])


# ------------------------------------------------------------------ identity and resume

@dataclass(frozen=True)
class RunIdentity:
    """What makes two runs the same job: a rerun with an equal identity resumes."""

    artifact_hash: str
    list_sha256: str
    list_length: int
    data_prefix: str
    backend: str
    config_digest: str      # harness.config.evaluation_digest: the content, not the path


def prepare_work_dir(work_dir: str | Path, identity: RunIdentity, overwrite: bool = False) -> bool:
    """Create or check ``work_dir`` for this job; True when it resumes earlier results.

    A work dir holding another job (different artifact, list, data, backend or config
    content) is refused unless ``overwrite``, which deletes its results first. One exception:
    when only the videos' location changed (``--data-prefix``, the list) and no recorded video
    was scored (every one failed, whatever the reason: rows about files at the old location
    mean nothing at the new one), the corrected command is the same run, and those rows are
    replaced. The circuit breaker's advice (harness.breaker) follows this rule.
    """
    work = Path(work_dir)
    try:
        return _prepare_work_dir(work, identity, overwrite)
    except OSError as exc:
        raise work_dir_error(work, exc) from exc


def _prepare_work_dir(work: Path, identity: RunIdentity, overwrite: bool) -> bool:
    work.mkdir(parents=True, exist_ok=True)
    run_file = work / RUN_FILE
    mine = asdict(identity)
    if run_file.exists():
        theirs = json.loads(run_file.read_text())
        if theirs == mine:
            return (work / PREDICTIONS).exists()
        changed = sorted(k for k in mine if theirs.get(k) != mine[k])
        moved = set(changed) <= LOCATION_FIELDS
        scored, failed = _recorded(work) if moved else (0, None)
        example = f" (e.g. {failed})" if failed else ""
        if not overwrite and moved and not scored:
            log.warning("%s: the earlier run scored none of its videos%s; this run, with the"
                        " corrected %s, replaces it", work, example, " and ".join(changed))
        elif not overwrite:
            why = (f"; {scored} of its videos were scored at the old location, so the corrected"
                   f" one would discard them{example}" if moved else "")
            raise ConfigError(
                f"{work} holds results of another run (differs in: {', '.join(changed)}){why};"
                " use another --work-dir, or --overwrite to delete those results")
    elif (work / PREDICTIONS).exists() and not overwrite:
        raise ConfigError(f"{work} holds predictions without {RUN_FILE}; use another --work-dir"
                          " or --overwrite")
    for name in (PREDICTIONS, SUMMARY_FILE):
        target = work / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    _atomic_write_text(run_file, json.dumps(mine, indent=2) + "\n")
    return False


def _recorded(work: Path) -> tuple[int, str | None]:
    """(videos scored, ``'<full path>: <reason>'`` of one failed video, preferring one not
    found or not read where the run looked (``Reason.location``), or None)."""
    if not (work / PREDICTIONS).exists():
        return 0, None
    rows = read_predictions(work).select(["path", "status", "error"]).to_pylist()
    failed = [r for r in rows if r["status"] != "ok"]
    located = [r for r in failed if (Reason.parse(r["error"]) or Reason.DECODE_FAILED).location]
    example = next((f"{r['path']}: {r['error']}" for r in located + failed), None)
    return len(rows) - len(failed), example


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------ writing

def write_part(final: Path, table: pa.Table) -> None:
    """Write one part file of a Parquet dataset in the work dir under a hidden temporary name,
    then rename it (atomic: readers, which skip names starting with '.', see whole parts only)."""
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise work_dir_error(final.parent.parent, exc) from exc


class ResultWriter:
    """Appends result rows in batches of part files (at most ``batch_size`` rows or
    ``flush_s`` seconds unwritten)."""

    def __init__(self, work_dir: str | Path, batch_size: int = 32, flush_s: float = 5.0) -> None:
        self.directory = Path(work_dir) / PREDICTIONS
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise work_dir_error(work_dir, exc) from exc
        self.batch_size, self.flush_s = batch_size, flush_s
        self._rows: list[dict] = []
        self._last = time.monotonic()
        existing = sorted(self.directory.glob("part-*.parquet"))
        self._next = 1 + max((int(p.stem.split("-")[1]) for p in existing), default=-1)

    def add(self, result) -> None:
        """Queue one ``stages.VideoResult``; writes a part when the batch is full or old."""
        scores = None if result.scores is None else np.asarray(result.scores, np.float32).tolist()
        self._rows.append({
            "index": int(result.index), "path": str(result.path), "label": int(result.label),
            "status": result.status, "error": result.error, "message": result.message,
            "scores": scores, "top5": result.top5, "device": result.device, "node": result.node,
            "finished_at": time.time(),
        })
        if len(self._rows) >= self.batch_size or time.monotonic() - self._last >= self.flush_s:
            self.flush()

    def flush_if_due(self) -> None:
        """Write what waits if it is older than ``flush_s`` (called while nothing arrives)."""
        if self._rows and time.monotonic() - self._last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        if not self._rows:
            return
        write_part(self.directory / f"part-{self._next:05d}.parquet",
                   pa.Table.from_pylist(self._rows, schema=SCHEMA))
        self._next += 1
        self._rows = []

    def close(self) -> None:
        self.flush()


# ------------------------------------------------------------------ reading

def read_predictions(work_dir: str | Path) -> pa.Table:
    """All recorded rows, one per index (the latest recorded), sorted by index."""
    directory = Path(work_dir) / PREDICTIONS
    parts = (sorted(directory.glob("part-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))
             if directory.is_dir() else [])
    if not parts:
        return SCHEMA.empty_table()
    table = pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in parts])
    indices = table.column("index").to_numpy()[::-1]             # latest first
    _, latest = np.unique(indices, return_index=True)            # sorted by index
    return table.take(pa.array(len(indices) - 1 - latest))


def job_table(work_dir: str | Path, limit: int | None = None,
              indices: list[int] | None = None) -> pa.Table:
    """The rows of this job: one per index; with ``--limit K`` only the first K list entries,
    with ``indices`` (a ``--subset``) only those (an earlier, longer run of the same job may
    have recorded more). Summary and report are both made from this table."""
    import pyarrow.compute as pc

    table = read_predictions(work_dir)
    if limit is not None:
        table = table.filter(pc.less(table.column("index"), limit))
    if indices is not None:
        table = table.filter(pc.is_in(table.column("index"), pa.array(indices, pa.int64())))
    return table


def ok_indices(work_dir: str | Path) -> set[int]:
    """Indices recorded with scores."""
    rows = read_predictions(work_dir).select(["index", "status"]).to_pylist()
    return {r["index"] for r in rows if r["status"] == "ok"}


def done_indices(work_dir: str | Path, retry_failed: bool = False) -> set[int]:
    """Indices a rerun skips: scored videos, and failures of the file's own (``missing``,
    ``empty``, ``decode failed``, ...); transient failures (``Reason.transient``: read error,
    timeout, worker died, inference failed; and any reason this version does not know) are
    retried, and with ``retry_failed`` every failure is."""
    rows = read_predictions(work_dir).select(["index", "status", "error"]).to_pylist()
    return {r["index"] for r in rows
            if r["status"] == "ok" or not (retry_failed or _retried(r["error"]))}


def _retried(error: str | None) -> bool:
    reason = Reason.parse(error)
    return reason is None or reason.transient


# ------------------------------------------------------------------ summary

def summarize(table: pa.Table, *, wall_s: float, processed: int, backend: str,
              artifact: dict, bench: dict | None = None, extra: dict | None = None,
              videos_total: int | None = None) -> dict:
    """summary.json's content from the recorded rows (metrics over the ok videos).

    ``processed`` is the number of videos this invocation handled (for throughput);
    the metrics cover every recorded row, so a resumed run reports the whole job.
    ``videos_total`` is the job's length (the list, after --limit or --subset; default: the
    rows): ``videos_recorded`` below it means the job is not ``complete`` (interrupted or
    stopped), and every output says so.
    """
    import pyarrow.compute as pc

    total = table.num_rows if videos_total is None else videos_total
    is_ok = pc.equal(table.column("status"), "ok")
    ok_table = table.filter(is_ok)
    failed = table.filter(pc.invert(is_ok)).select(["index", "path", "error", "message"]).to_pylist()
    if ok_table.num_rows:   # columnar: 20,000 x 400 scores never become Python floats
        flat = ok_table.column("scores").combine_chunks().flatten().to_numpy()
        scores = flat.astype(np.float32, copy=False).reshape(ok_table.num_rows, -1)
        labels = ok_table.column("label").to_numpy()
        top1, top5 = top_k_accuracy(scores, labels, 1), top_k_accuracy(scores, labels, 5)
        mca = mean_class_accuracy(scores, labels)
        ci95 = intervals(scores, labels)
    else:
        top1 = top5 = mca = ci95 = None
    per_device = Counter(zip(ok_table.column("device").to_pylist(), ok_table.column("node").to_pylist()))
    devices = [{"kind": dev.split(":")[0], "id": dev.split(":", 1)[-1], "node": node, "videos": n}
               for (dev, node), n in sorted(per_device.items())]
    summary = {
        "top1": top1, "top5": top5, "mean_class_accuracy": mca, "ci95": ci95,
        "videos_total": total, "videos_recorded": table.num_rows, "complete": table.num_rows >= total,
        "videos_ok": ok_table.num_rows, "videos_failed": len(failed),
        "failures": dict(sorted(Counter(r["error"] for r in failed).items())),
        "failed": [{"index": r["index"], "path": r["path"], "reason": r["error"],
                    "message": r["message"]} for r in failed],
        "wall_s": round(wall_s, 3),
        "throughput_videos_per_s": (processed / wall_s) if wall_s > 0 and processed else 0.0,
        "videos_this_run": processed,
        "devices": devices, "backend": backend, "artifact": artifact,
        "bench": bench,
    }
    if extra:
        summary.update(extra)
    return summary


def intervals(scores: np.ndarray, labels: np.ndarray) -> dict:
    """95% intervals of top-1, top-5 (Wilson score) and mean class accuracy (normal, over the
    per-class proportions): harness.stats."""
    from harness.scores import top_k
    from harness.stats import mean_class_interval, wilson_interval

    ranked = top_k(scores, 5)
    hits1, hits5 = ranked[:, 0] == labels, (ranked == labels[:, None]).any(axis=1)
    classes = np.unique(labels)
    return {"method": "Wilson score interval for top-1 and top-5; for mean class accuracy a"
                      " normal interval over the per-class proportions (Agresti-Coull variances)",
            "top1": wilson_interval(int(hits1.sum()), len(labels)),
            "top5": wilson_interval(int(hits5.sum()), len(labels)),
            "mean_class_accuracy": mean_class_interval(
                [int(hits1[labels == c].sum()) for c in classes],
                [int((labels == c).sum()) for c in classes])}


def write_summary(work_dir: str | Path, summary: dict) -> Path:
    path = Path(work_dir) / SUMMARY_FILE
    try:
        _atomic_write_text(path, json.dumps(summary, indent=2, default=_json_default) + "\n")
    except OSError as exc:
        raise work_dir_error(work_dir, exc) from exc
    return path


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
