"""Which Ascend chips a run meets, and which .om each one loads.

An .om is compiled for one chip type (its soc, e.g. Ascend310P3) and loads on no other
(reference/ascend.md). The harness finds the soc where the chips are:

- this host: pyACL's ``acl.get_soc_name()`` (:func:`host_soc`);
- the nodes of a Ray cluster: the ``accelerator_type:<soc>`` resource Ray adds to a node
  whose pyACL it could read (:func:`node_socs`);
- an .om file: the build manifest next to it, else the ``soc_version`` its model
  definition names (:func:`om_soc`; None when neither says).

:class:`ChipModels` gives each chip type its model: one artifact per soc, each built (and
cached by hash) the first time a node of that type asks, or a refusal in one sentence when
the model cannot be rebuilt (an .om given with ``--om``, a pinned ``--soc-version``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.errors import ConfigError

ModelSpec = Any   # harness.backends.ModelSpec (not imported: harness.build imports this module)

log = logging.getLogger(__name__)

DEFAULT_SOC = "Ascend310P3"          # the build's target when no chip says otherwise
ACCELERATOR_TYPE = "accelerator_type:"
_OM_SOC = re.compile(rb"soc_version[^A-Za-z0-9]{1,16}(Ascend[0-9A-Za-z]+)")
_OM_HEAD_BYTES = 4 << 20             # the model definition comes first in an .om


def host_soc() -> str | None:
    """This host's chip type from pyACL (``acl.get_soc_name()``), None without pyACL/chips."""
    try:
        import acl
        name = acl.get_soc_name()
    except Exception:   # no CANN here (ImportError), or no chip answered
        return None
    return str(name) if name else None


def node_socs() -> dict[str, str]:
    """``{node id: soc}`` of the alive Ray nodes whose chip type Ray knows."""
    import ray

    socs = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for key in node.get("Resources", {}):
            if key.startswith(ACCELERATOR_TYPE + "Ascend"):
                socs[node["NodeID"]] = key[len(ACCELERATOR_TYPE):]
    return socs


def om_soc(path: str | Path) -> str | None:
    """The soc an .om was built for: its harness manifest's ``soc_version``, else the
    ``soc_version`` attribute ATC writes into the model definition; None when neither says."""
    path = Path(path)
    manifest = path.parent / "manifest.json"
    try:
        if manifest.is_file():
            files = json.loads(manifest.read_text())
            if files.get("om") == path.name and files.get("soc_version"):
                return str(files["soc_version"])
        with open(path, "rb") as fh:
            found = _OM_SOC.search(fh.read(_OM_HEAD_BYTES))
    except (OSError, ValueError):
        return None
    return found.group(1).decode() if found else None


@dataclass
class ChipModels:
    """The model each chip type loads: ``first`` is for ``soc`` (None: not known); ``build``
    makes the artifact for another soc (None when the model cannot be rebuilt, and
    ``pinned`` says why, e.g. "--om x.om was built for Ascend310P3")."""

    first: ModelSpec
    soc: str | None
    build: Callable[[str], ModelSpec] | None = None
    pinned: str = ""
    _specs: dict[str, ModelSpec] = field(default_factory=dict, repr=False)

    def spec_for(self, soc: str | None, where: str = "this host") -> ModelSpec:
        """The spec for chips of type ``soc`` (None: unknown, the first one is used)."""
        if soc is None or self.soc is None or soc == self.soc:
            return self.first
        if soc not in self._specs:
            if self.build is None:
                raise ConfigError(f"{self.pinned}, but the chips of {where} are {soc}: an .om loads"
                                  f" only on the chip type it was built for; {self._fix(soc)}")
            log.info("the chips of %s are %s: building the model for them too", where, soc)
            self._specs[soc] = self.build(soc)
        return self._specs[soc]

    def _fix(self, soc: str) -> str:
        if self.pinned.startswith("--om"):
            return f"build one for {soc} (python -m harness.build --soc-version {soc}) or leave --om out"
        return "leave --soc-version out to build for the chips found"

    @property
    def socs(self) -> list[str]:
        """The chip types this run built or was given a model for."""
        return sorted({*([self.soc] if self.soc else []), *self._specs})

    def specs(self) -> dict[str, ModelSpec]:
        """``{soc: spec}`` of every model made so far (summaries)."""
        return {**({self.soc: self.first} if self.soc else {}), **self._specs}
