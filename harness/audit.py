"""The precision audit (``--audit N``): does the deployed model agree with an fp32 reference,
video by video, while the run happens?

- :func:`audit_indices`: N videos spread evenly over the job's list (deterministic: a resumed
  run audits the same ones).
- :func:`reference_spec`: what the reference runs: onnxruntime on the artifact's ONNX for an
  .om (the same build directory), else the device's own model file or checkpoint, in fp32 on a
  CPU. None (with the reason) when there is nothing to compare against, or when the device is
  a CPU already running that very reference (the audit would compare the model with itself).
- :class:`Auditor`: pairs each audited video's device answer (its per-view logits) with the
  reference's, from the same decoded clip (the scheduler sends one ObjectRef to both), and
  writes the pair to ``audit.parquet`` in the work dir as it completes (resume keeps them).
- :func:`audit_summary`: summary.json's ``audit``: agreement, differences, disagreements, and
  whether the thresholds (config ``harness.run``) hold.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.scores import average_views, top_k
from harness.stats import wilson_interval

log = logging.getLogger(__name__)

AUDIT_DIR = "audit.parquet"
SCHEMA = pa.schema([
    ("index", pa.int64()), ("path", pa.string()), ("label", pa.int32()), ("views", pa.int32()),
    ("device", pa.string()),
    ("device_logits", pa.list_(pa.float32())), ("reference_logits", pa.list_(pa.float32())),
])
DEFAULT_VIDEOS = 16          # when the device runs reduced precision (an .om, a GPU)


def audit_indices(indices: Sequence[int], n: int) -> list[int]:
    """``n`` of ``indices`` (the job's list indices, in list order) spread evenly: the middle
    of each of n equal stretches of the list."""
    count = len(indices)
    if n <= 0 or count == 0:
        return []
    if n >= count:
        return list(indices)
    return [indices[int((k + 0.5) * count / n)] for k in range(n)]


def default_videos(backend: str, device_kind: str, precision: str = "fp32") -> int:
    """An .om (fp16 on a 310P3 by default), a GPU (TF32, fp16) or a torch session in reduced
    precision is audited; an fp32 CPU run is its own reference."""
    reduced = backend == "om" or device_kind == "gpu" or precision != "fp32"
    return DEFAULT_VIDEOS if reduced else 0


NOTHING_TO_AUDIT = ("nothing to audit: the device model is already the fp32 reference on a CPU"
                    " (an audit would compare it with itself)")


def reference_spec(spec, device_kind: str | None = None) -> tuple[object | None, str]:
    """(the reference's ModelSpec, what it is) or (None, why there is none); on CPU devices
    (``device_kind`` 'cpu') a reference equal to the device's model is none."""
    reference, what = _reference(spec)
    if device_kind == "cpu" and reference == spec:
        return None, NOTHING_TO_AUDIT
    return reference, what


def _reference(spec) -> tuple[object | None, str]:
    from harness.backends import ModelSpec

    if spec.backend == "om":
        if not spec.manifest_path:
            return None, ("the .om was given without its build's ONNX (no manifest.json next to"
                          " it), so there is nothing to compare against")
        directory = Path(spec.manifest_path).parent
        try:
            return ModelSpec.from_artifact(directory, "onnxruntime"), f"onnxruntime fp32 on {directory}'s ONNX"
        except Exception as exc:  # a build made without its ONNX kept
            return None, f"the artifact has no ONNX to compare against ({exc})"
    if spec.backend == "onnxruntime" and spec.precision != "fp32" and spec.manifest_path:
        directory = Path(spec.manifest_path).parent    # the build's float16 ONNX: its fp32 twin
        return (ModelSpec.from_artifact(directory, "onnxruntime", fp32=True),
                f"onnxruntime fp32 on {directory}'s fp32 ONNX")
    if spec.backend == "torch":   # the same checkpoint, plainly: fp32, eager, batch 1
        reference = dataclasses.replace(spec, precision="fp32", torch_compile=False, batch=1)
        return reference, f"torch fp32 on a CPU, {spec.checkpoint}"
    return spec, f"{spec.backend} fp32 on a CPU, {spec.path}"


def _read(work_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    directory = Path(work_dir) / AUDIT_DIR
    if not directory.is_dir() or not any(directory.glob("part-*.parquet")):
        return SCHEMA.empty_table()
    return pq.read_table(directory, schema=SCHEMA, columns=columns)


def recorded_indices(work_dir: str | Path) -> set[int]:
    """Indices whose audit pair is already in the work dir."""
    return set(_read(work_dir, ["index"]).column("index").to_pylist())


def read_pairs(work_dir: str | Path) -> list[dict]:
    """Every recorded pair, one per index (the latest)."""
    latest = {row["index"]: row for row in _read(work_dir).to_pylist()}
    return [latest[i] for i in sorted(latest)]


class Auditor:
    """Collects the two answers of each audited video and writes each pair once complete.

    ``device(result)`` takes a ``VideoResult`` (with ``logits`` for audited videos);
    ``reference(index, out, error)`` the reference actor's answer or why there is none, which
    also goes to ``cache`` (harness.reference_cache); :meth:`from_cache` takes the answers the
    cache already has, before the run (those videos are not sent to the reference).
    """

    def __init__(self, work_dir: str | Path, entries: Sequence, cache=None) -> None:
        self.directory = Path(work_dir) / AUDIT_DIR
        self.entries = {e.index: e for e in entries}
        self.cache = cache
        self.device_logits: dict[int, tuple[np.ndarray, str]] = {}
        self.reference_logits: dict[int, np.ndarray] = {}
        self.incomplete: dict[int, str] = {}       # index -> why it has no pair (this run)

    def device(self, result) -> None:
        if result.index not in self.entries:
            return
        if result.status != "ok" or result.logits is None:
            self.incomplete[result.index] = f"the device did not score it ({result.error})"
            return
        self.device_logits[result.index] = (np.asarray(result.logits, np.float32), result.device)
        self._pair(result.index)

    def reference(self, index: int, out: dict | None, error: str | None) -> None:
        if out is None:
            self.incomplete[index] = f"the reference did not score it ({error})"
            log.warning("audit: video %d: the reference did not score it: %s", index, error)
            return
        self.reference_logits[index] = np.asarray(out["logits"], np.float32)
        if self.cache is not None:
            self.cache.add(self.entries[index], self.reference_logits[index])
        self._pair(index)

    def from_cache(self, indices: Sequence[int]) -> set[int]:
        """Take the cache's answers for ``indices``; returns those it had."""
        if self.cache is None:
            return set()
        found = self.cache.lookup([self.entries[i] for i in indices if i in self.entries])
        for index, cached in found.items():
            self.reference_logits[index] = cached.logits
        return set(found)

    def _pair(self, index: int) -> None:
        if index not in self.device_logits or index not in self.reference_logits:
            return
        (dev, device), ref = self.device_logits.pop(index), self.reference_logits.pop(index)
        entry = self.entries[index]
        self.incomplete.pop(index, None)
        self._write({"index": index, "path": str(entry.path), "label": int(entry.label),
                     "views": int(dev.shape[0]), "device": device,
                     "device_logits": dev.ravel().tolist(), "reference_logits": ref.ravel().tolist()})

    def _write(self, row: dict) -> None:
        from harness.results import work_dir_error, write_part

        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise work_dir_error(self.directory.parent, exc) from exc
        write_part(self.directory / f"part-{row['index']:08d}-{time.time_ns()}.parquet",
                   pa.Table.from_pylist([row], schema=SCHEMA))


def audit_summary(work_dir: str | Path, requested: Sequence[int], reference: str,
                  min_top1_agreement: float, max_prob_diff: float,
                  class_names: Sequence[str] = (), incomplete: dict | None = None) -> dict:
    """summary.json's ``audit`` from the pairs recorded for the ``requested`` indices."""
    wanted = set(requested)
    pairs = [p for p in read_pairs(work_dir) if p["index"] in wanted]

    def name(label: int) -> str | int:
        return class_names[label] if 0 <= label < len(class_names) else int(label)

    out: dict = {"videos_requested": len(wanted), "videos_audited": len(pairs),
                 "reference": reference,
                 "thresholds": {"min_top1_agreement": min_top1_agreement,
                                "max_prob_diff": max_prob_diff}}
    done = {p["index"] for p in pairs}
    out["not_audited"] = [{"index": i, "why": (incomplete or {}).get(i, "not scored in this job yet")}
                          for i in sorted(wanted - done)]
    if not pairs:
        out.update(top1_agreement=None, passed=None, warnings=[])
        return out
    top1_same = top5_same = 0
    max_prob, mean_probs, max_logit, cosines, differ = 0.0, [], 0.0, [], []
    for p in pairs:
        views = int(p["views"])
        dev = np.asarray(p["device_logits"], np.float32).reshape(views, -1)
        ref = np.asarray(p["reference_logits"], np.float32).reshape(views, -1)
        dev_prob, ref_prob = average_views(dev, views, "prob")[0], average_views(ref, views, "prob")[0]
        dev_top, ref_top = top_k(dev_prob[None], 5)[0], top_k(ref_prob[None], 5)[0]
        top1_same += int(dev_top[0] == ref_top[0])
        top5_same += int(set(dev_top.tolist()) == set(ref_top.tolist()))
        diff = np.abs(dev_prob.astype(np.float64) - ref_prob)
        max_prob, mean_probs = max(max_prob, float(diff.max())), mean_probs + [float(diff.mean())]
        max_logit = max(max_logit, float(np.abs(dev.astype(np.float64) - ref).max()))
        a, b = dev.ravel().astype(np.float64), ref.ravel().astype(np.float64)
        cosines.append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30)))
        if dev_top[0] != ref_top[0]:
            differ.append({"index": p["index"], "path": p["path"], "label": name(p["label"]),
                           "device": name(int(dev_top[0])), "reference": name(int(ref_top[0]))})
    n = len(pairs)
    agreement = top1_same / n
    warnings = []
    if agreement < min_top1_agreement:
        warnings.append(f"top-1 agreement with the fp32 reference is {100 * agreement:.1f}%"
                        f" ({top1_same}/{n}), below {100 * min_top1_agreement:.1f}%")
    if max_prob > max_prob_diff:
        warnings.append(f"max |Δprob| against the fp32 reference is {max_prob:.3g},"
                        f" above {max_prob_diff:.3g}")
    out.update(top1_agreement=agreement, top1_agreement_ci95=wilson_interval(top1_same, n),
               top5_set_agreement=top5_same / n, max_abs_prob_diff=max_prob,
               mean_abs_prob_diff=float(np.mean(mean_probs)), max_abs_logit_diff=max_logit,
               cosine_similarity_min=min(cosines), cosine_similarity_mean=float(np.mean(cosines)),
               top1_differs=differ, passed=not warnings, warnings=warnings)
    return out
