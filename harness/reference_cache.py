"""The audit's fp32 reference logits, kept for the next run that has the same reference.

A sweep's variants differ in how the device runs the model (ATC precision modes, torch
precisions, batch), not in the fp32 reference they are audited against: every .om variant's
reference is onnxruntime on the same fp32 ONNX, every torch variant's is the checkpoint in
fp32. The reference takes a minute or more per full-size video on a CPU, the chip a second,
so a sweep scores each audited video by the reference once and the later variants read it.

The cache is a folder ``<root>/<key>/`` of Parquet part files (one a video, written
atomically as the reference answers: a killed sweep keeps what was scored). The key is what
determines the reference's logits: the reference model's content (:func:`model_identity`)
and the config's evaluation digest (decoding, sampling, normalization:
harness.config.evaluation_digest). A row is used only for the same list index, path and
label. Logits only: decoded views never touch the disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

KEY_FILE = "key.json"
SCHEMA = pa.schema([("index", pa.int64()), ("path", pa.string()), ("label", pa.int32()),
                    ("views", pa.int32()), ("logits", pa.list_(pa.float32()))])


@dataclass(frozen=True)
class CachedReference:
    """One video's reference answer: its per-view logits ``[views, classes]``."""

    index: int
    path: str
    label: int
    logits: np.ndarray


def model_identity(reference) -> str:
    """What the reference computes with, by content: the sha256 of the .onnx it loads (not the
    artifact's hash, which also covers ATC's options), or for torch the checkpoint's sha256 with
    the model section in plain fp32 (the spec's own identity names the variant's precision)."""
    from harness.build import sha256_file

    geometry = {"views": reference.views_per_video, "norm": repr(reference.norm),
                "classes": reference.num_classes}
    if reference.backend == "torch":
        content = {"torch fp32": sha256_file(reference.checkpoint), "model": reference.model_cfg,
                   "view_shape": reference.view_shape, "uint8_input": reference.uint8_input,
                   **geometry}
    else:
        content = {reference.backend: sha256_file(reference.path), **geometry}
    text = json.dumps(content, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(model: str, decoding_digest: str) -> str:
    """The folder name: the reference model's identity and the evaluation digest."""
    text = json.dumps({"model": model, "decoding": decoding_digest}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class ReferenceCache:
    """The reference answers under ``root`` for one reference model and one decoding."""

    def __init__(self, root: str | Path, model: str, decoding_digest: str) -> None:
        self.directory = Path(root) / cache_key(model, decoding_digest)
        self.model, self.decoding = model, decoding_digest

    @classmethod
    def for_reference(cls, root: str | Path, reference, decoding_digest: str) -> "ReferenceCache":
        return cls(root, model_identity(reference), decoding_digest)

    def lookup(self, entries: Iterable) -> dict[int, CachedReference]:
        """The cached answers of ``entries`` (list entries: index, path, label), by index."""
        wanted = {e.index: (str(e.path), int(e.label)) for e in entries}
        parts = list(self.directory.glob("part-*.parquet")) if self.directory.is_dir() else []
        if not wanted or not parts:
            return {}
        found = {}
        table = pa.concat_tables(pq.read_table(part, schema=SCHEMA) for part in sorted(parts))
        for row in table.to_pylist():
            if wanted.get(row["index"]) == (row["path"], row["label"]):   # same list, same video
                found[row["index"]] = CachedReference(
                    row["index"], row["path"], row["label"],
                    np.asarray(row["logits"], np.float32).reshape(row["views"], -1))
        return found

    def add(self, entry, logits: np.ndarray) -> None:
        """Keep one video's reference logits (a failed write costs only a later recompute)."""
        from harness.results import write_part

        logits = np.asarray(logits, np.float32)
        logits = logits.reshape(logits.shape[0] if logits.ndim > 1 else 1, -1)
        table = pa.Table.from_pylist([{"index": int(entry.index), "path": str(entry.path),
                                       "label": int(entry.label), "views": logits.shape[0],
                                       "logits": logits.ravel().tolist()}], schema=SCHEMA)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            key = self.directory / KEY_FILE      # for a reader: what the folder's name stands for
            if not key.exists():
                key.write_text(json.dumps({"model": self.model, "decoding": self.decoding}) + "\n")
            write_part(self.directory / f"part-{int(entry.index):08d}-{time.time_ns()}.parquet",
                       table)
        except Exception as exc:   # (write_part's WorkDirError included) the audit goes on
            log.warning("reference cache: video %d not kept in %s: %s", entry.index,
                        self.directory, exc)
