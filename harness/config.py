"""Load mmengine-style configs: the harness's own and the reference repository's.

A config is read with mmengine's ``Config`` (so ``_base_`` inheritance works
unchanged) and then only *read* through the accessors below, which know where
each field lives in both layouts the harness accepts:

- mmaction2 0.x / Video-Swin-Transformer: ``data.test.{ann_file,data_prefix,pipeline}``,
  module-level ``test_pipeline`` and ``img_norm_cfg``, ``Normalize`` in the pipeline;
- mmaction2 1.x: ``test_dataloader.dataset.{ann_file,data_prefix.video,pipeline}``,
  normalization in ``model.data_preprocessor``.

A field the harness needs but cannot find raises :class:`ConfigError` naming the key.
The harness's own options live in an optional ``harness`` section (see
:class:`HarnessOptions`); reference configs have none and get the defaults.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.limits import Timeouts

REPO_DIR = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_DIR / "configs"
LABEL_MAP_K400 = CONFIG_DIR / "label_map_k400.txt"

_MISSING = object()
_MISSING_OPTION = object()
log = logging.getLogger(__name__)


def resolve_config_path(path: str | Path) -> Path:
    """The config file ``path`` names.

    A bare name (no folder in it: ``swin_small_k400`` or ``swin_small_k400.py``) that is not a
    file here resolves to the project's ``configs/``; anything with a folder in it is a path
    and must exist, so a mistyped path is never replaced by a packaged config of the same name.
    """
    path = Path(path)
    if path.is_file():
        return path
    hint = f"give a path to an mmengine-style .py config, or the name of one in {CONFIG_DIR}"
    if path.exists():
        raise ConfigError(f"config {path} is not a file ({hint})")
    if len(path.parts) == 1:
        candidate = CONFIG_DIR / (path.name if path.suffix else path.name + ".py")
        if candidate.is_file():
            return candidate
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.py")))
        raise ConfigError(f"config file not found: {path} (not a file here, nor a config in"
                          f" {CONFIG_DIR}: {known})")
    raise ConfigError(f"config file not found: {path} ({hint})")


def load_config(path: str | Path, cfg_options: dict | None = None):
    """Read a config file (with its ``_base_`` files) into an mmengine ``Config``.

    ``path``: see :func:`resolve_config_path`. ``cfg_options`` are ``--cfg-options`` pairs
    (dotted keys, list indices allowed, as mmaction2's tools take them), merged after reading.
    """
    from mmengine.config import Config  # imported here: decode workers never need it

    path = resolve_config_path(path)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as exc:  # mmengine raises many types for a bad file
        raise ConfigError(f"cannot read config {path}: {describe_error(exc)}") from exc
    if cfg_options:
        # mmengine adds unknown keys: a typo would change nothing, silently (the harness's own
        # section is checked key by key instead: harness_options)
        added = [key for key in cfg_options if not key.startswith("harness.")
                 and lookup(cfg, key, default=_MISSING_OPTION) is _MISSING_OPTION]
        if added:
            log.warning("--cfg-options %s: not in %s, added as new key(s) (a typo?)",
                        ", ".join(added), path.name)
        try:
            cfg.merge_from_dict(dict(cfg_options), allow_list_keys=True)
        except Exception as exc:
            raise ConfigError(f"cannot apply --cfg-options {_options_text(cfg_options)} to {path}:"
                              f" {describe_error(exc)}") from exc
    cfg["_harness_config_path"] = str(path.resolve())
    return cfg


def describe_error(exc: BaseException) -> str:
    """``Type: message`` and, for an exception without a message (``assert``), where it was
    raised: a config error must always name its cause."""
    text = str(exc).strip()
    name = type(exc).__name__
    if text:
        return f"{name}: {text}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{name} (no message){where}"


def _options_text(options: dict) -> str:
    return " ".join(f"{k}={v!r}" for k, v in options.items())


def config_name(cfg) -> str:
    """The config's file name without extension (used for default work dirs)."""
    return Path(cfg.get("_harness_config_path", "config")).stem


def lookup(cfg, dotted: str, default: Any = _MISSING) -> Any:
    """Return ``cfg[a][b][c]`` for ``dotted='a.b.c'`` (a number indexes a list); a missing key
    raises ConfigError, or returns ``default`` when given."""
    node: Any = cfg
    for i, part in enumerate(dotted.split(".")):
        if isinstance(node, dict) and part in node:
            node = node[part]
            continue
        if hasattr(node, "keys") and part in node.keys():
            node = node[part]
            continue
        if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        if default is not _MISSING:
            return default
        where = ".".join(dotted.split(".")[:i]) or "the top level"
        raise ConfigError(f"config key '{dotted}' is missing ('{part}' not found under {where})")
    return node


def _first_present(cfg, keys: list[str]) -> Any:
    for key in keys:
        value = lookup(cfg, key, default=None)
        if value is not None:
            return value
    raise ConfigError(f"config key '{keys[0]}' is missing (also looked for: {', '.join(keys[1:])})")


def _plain(value: Any) -> Any:
    """mmengine ConfigDict/list -> plain dict/list, so callers get ordinary Python data."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


# ---------------------------------------------------------------- model section

def model_section(cfg) -> dict:
    """The ``model`` dict (Recognizer3D with a SwinTransformer3D backbone and an I3DHead)."""
    model = _plain(lookup(cfg, "model"))
    for key, expected in (("type", "Recognizer3D"), ("backbone.type", "SwinTransformer3D"),
                          ("cls_head.type", "I3DHead")):
        value = lookup(model, key, default=expected)
        if value != expected:
            raise ConfigError(f"config key 'model.{key}' is {value!r}; the harness supports {expected!r}")
    for key in ("model.backbone", "model.cls_head.num_classes", "model.cls_head.in_channels"):
        lookup(cfg, key)
    return model


def average_clips(cfg) -> str | None:
    """``model.test_cfg.average_clips`` ('prob', 'score' or None); the reference uses 'prob'."""
    value = lookup(cfg, "model.test_cfg.average_clips", default="prob")
    if value not in ("prob", "score", None):
        raise ConfigError(
            f"config key 'model.test_cfg.average_clips' is {value!r}; use 'prob', 'score' or None"
        )
    return value


# ---------------------------------------------------------------- test data

def test_pipeline(cfg) -> list[dict]:
    """The test-time pipeline as a list of plain dicts."""
    pipeline = _first_present(
        cfg, ["data.test.pipeline", "test_dataloader.dataset.pipeline", "test_pipeline"]
    )
    if not isinstance(pipeline, (list, tuple)) or not all(isinstance(s, dict) for s in pipeline):
        raise ConfigError("config key 'data.test.pipeline' must be a list of dicts with a 'type'")
    return [_plain(step) for step in pipeline]


def test_annotations(cfg) -> tuple[str, str]:
    """``(ann_file, data_prefix)`` of the test split."""
    ann_file = _first_present(cfg, ["data.test.ann_file", "test_dataloader.dataset.ann_file"])
    prefix = lookup(cfg, "data.test.data_prefix", default=None)
    if prefix is None:
        prefix = lookup(cfg, "test_dataloader.dataset.data_prefix", default=None)
        if isinstance(prefix, dict):
            prefix = prefix.get("video")
    if prefix is None:
        raise ConfigError("config key 'data.test.data_prefix' is missing")
    return str(ann_file), str(prefix)


def pipeline_step(pipeline: list[dict], type_name: str) -> dict | None:
    """The first step of the given ``type`` in a pipeline, or None."""
    return next((step for step in pipeline if step.get("type") == type_name), None)


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - mean) / std`` on RGB uint8 values, as the reference applies it."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    to_bgr: bool = False

    def apply(self, x, channel_axis: int):
        """``x`` (uint8 or float; a NumPy array or a torch tensor) -> normalized float32.

        ``channel_axis`` is the RGB axis of ``x`` (negative counts from the end). The one
        place the reference's Normalize is computed: the build's graph, the inference actor
        (float32 sessions) and the demo's training all call this. As mmcv does, ``to_bgr``
        flips the channels before the (BGR-ordered) mean is subtracted.
        """
        shape = [1] * x.ndim
        shape[channel_axis] = 3
        if type(x).__module__.startswith("torch"):  # no torch import here: decode workers
            import torch

            x = x.to(torch.float32)
            if self.to_bgr:
                x = x.flip(channel_axis)
            mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape)
            std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape)
            return (x - mean) / std
        import numpy as np

        x = np.asarray(x, dtype=np.float32)
        if self.to_bgr:
            x = np.flip(x, channel_axis)
        mean = np.asarray(self.mean, np.float32).reshape(shape)
        std = np.asarray(self.std, np.float32).reshape(shape)
        return (x - mean) / std


def normalization(cfg) -> Normalization:
    """The test pipeline's Normalize step (0.x) or the model's data_preprocessor (1.x)."""
    step = pipeline_step(test_pipeline(cfg), "Normalize")
    source = "the test pipeline's Normalize step"
    if step is None:
        step = _plain(lookup(cfg, "model.data_preprocessor", default=None))
        source = "model.data_preprocessor"
    if step is None or "mean" not in step or "std" not in step:
        raise ConfigError(
            "config key 'Normalize.mean/std' is missing: put a Normalize step in the test pipeline"
            " or mean/std in model.data_preprocessor"
        )
    mean, std = tuple(float(v) for v in step["mean"]), tuple(float(v) for v in step["std"])
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"mean and std in {source} need 3 values (RGB)")
    return Normalization(mean, std, bool(step.get("to_bgr", step.get("bgr_to_rgb", False))))


@dataclass(frozen=True)
class ClipGeometry:
    """What one video becomes: ``views`` views of ``3 x clip_len x height x width``."""

    num_clips: int
    num_crops: int
    clip_len: int
    height: int
    width: int

    @property
    def views(self) -> int:
        return self.num_clips * self.num_crops

    def view_shape(self) -> tuple[int, int, int, int]:
        return (3, self.clip_len, self.height, self.width)


def clip_geometry(cfg) -> ClipGeometry:
    """Views per video and the clip shape, derived from the test pipeline."""
    pipeline = test_pipeline(cfg)
    sample = pipeline_step(pipeline, "SampleFrames")
    if sample is None:
        raise ConfigError("config key 'test_pipeline' has no SampleFrames step")
    for key in ("clip_len", "num_clips"):
        if key not in sample:
            raise ConfigError(f"config key 'SampleFrames.{key}' is missing")
    three, center = pipeline_step(pipeline, "ThreeCrop"), pipeline_step(pipeline, "CenterCrop")
    crop = three or center
    if crop is None or "crop_size" not in crop:
        raise ConfigError("config key 'test_pipeline' needs a ThreeCrop or CenterCrop step with crop_size")
    size = crop["crop_size"]
    width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return ClipGeometry(int(sample["num_clips"]), 3 if three else 1, int(sample["clip_len"]),
                        height, width)


# ---------------------------------------------------------------- harness options

# ATC's precision options (CANN ATC parameter reference; docs/build.md, "Precision").
# --precision_mode values, as the CANN docs list them (force_fp32 = cube_fp16in_fp32out).
PRECISION_MODES = ("force_fp32", "cube_fp16in_fp32out", "force_fp16", "allow_fp32_to_fp16",
                   "must_keep_origin_dtype", "allow_mix_precision", "allow_mix_precision_fp16",
                   "allow_mix_precision_bf16", "allow_fp32_to_bf16")
# --precision_mode_v2 (newer CANN; never together with --precision_mode). mixed_hif8 is
# documented for the newest chips only; ATC itself refuses a mode the chip lacks.
PRECISION_MODES_V2 = ("fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16",
                      "mixed_hif8")
# --modify_mixlist adjusts the lists of these (mixed-precision) modes only.
MIX_PRECISION_MODES = {"precision_mode": ("allow_mix_precision", "allow_mix_precision_fp16",
                                          "allow_mix_precision_bf16"),
                       "precision_mode_v2": ("mixed_float16", "mixed_bfloat16", "mixed_hif8")}
# --keep_dtype has no effect under these (the graph's dtypes are kept anyway).
KEEP_ORIGIN_MODES = {"precision_mode": ("must_keep_origin_dtype",), "precision_mode_v2": ("origin",)}
OP_SELECT_IMPLMODES = ("high_precision", "high_performance", "high_precision_for_all",
                       "high_performance_for_all")
# ATC's default when neither precision mode is given (for inference products such as the 310P3).
ATC_DEFAULT_PRECISION_MODE = "force_fp16"


@dataclass(frozen=True)
class BuildOptions:
    """How ``harness.build`` makes the deployable model (section ``harness.build``)."""

    input_dtype: str = "uint8"          # 'uint8': normalize in-graph; 'float32': the Ascend guide's contract
    batch: int = 1                      # videos per call
    views_per_call: int | None = None   # None: all of a video's views in one call
    opset: int = 17
    soc_version: str | None = None      # None: this host's chips (pyACL), else Ascend310P3 (harness.chips)
    onnx_precision: str = "fp32"        # 'fp16': also a float16 ONNX for onnxruntime (GPUs), verified
    precision_mode: str | None = None   # ATC --precision_mode (None: ATC's default, force_fp16)
    precision_mode_v2: str | None = None  # ATC --precision_mode_v2 (newer CANN; not with precision_mode)
    op_precision_mode: str | None = None  # ATC --op_precision_mode (path to an .ini, or a preset: guide)
    keep_dtype: str | None = None       # ATC --keep_dtype (path to a file of ops kept at their precision)
    modify_mixlist: str | None = None   # ATC --modify_mixlist (path to a .json; mixed modes only)
    op_select_implmode: str | None = None  # ATC --op_select_implmode (high_precision, high_performance)
    atc_extra_args: tuple[str, ...] = ()


def _check_precision_options(options: BuildOptions) -> None:
    """Values and combinations of ATC's precision options (files are checked by the build)."""
    def flag(name: str) -> str:
        return f"'harness.build.{name}' (--{name.replace('_', '-')})"

    for name, allowed, other in (("precision_mode", PRECISION_MODES, PRECISION_MODES_V2),
                                 ("precision_mode_v2", PRECISION_MODES_V2, PRECISION_MODES),
                                 ("op_select_implmode", OP_SELECT_IMPLMODES, ())):
        value = getattr(options, name)
        if value is not None and value not in allowed:
            hint = ""
            if value in other:
                twin = "precision_mode_v2" if name == "precision_mode" else "precision_mode"
                hint = f" ({value!r} is a value of {twin})"
            raise ConfigError(f"config key {flag(name)} is {value!r}{hint}; ATC accepts one of:"
                              f" {', '.join(allowed)} (docs/build.md, Precision)")
    if options.op_precision_mode is not None and options.op_select_implmode is not None:
        raise ConfigError(f"config keys {flag('op_precision_mode')} and {flag('op_select_implmode')}"
                          " cannot be combined: ATC takes only --op_precision_mode when both are given"
                          " (the other is silently ignored); give only one")
    if options.precision_mode is not None and options.precision_mode_v2 is not None:
        raise ConfigError(f"config keys {flag('precision_mode')} and {flag('precision_mode_v2')} cannot"
                          " be combined: ATC takes one or the other (precision_mode_v2 is the newer"
                          " CANN spelling); give only one")
    if options.precision_mode_v2 is not None:
        name, mode = "precision_mode_v2", options.precision_mode_v2
    elif options.precision_mode is not None:
        name, mode = "precision_mode", options.precision_mode
    else:
        name, mode = "precision_mode", None
    current = (f"{name} is {mode!r}" if mode else
               f"no precision mode is given, so ATC uses its default {ATC_DEFAULT_PRECISION_MODE}")
    if options.modify_mixlist is not None and mode not in MIX_PRECISION_MODES[name]:
        modes = " or ".join(f"{key} {', '.join(values)}" for key, values in MIX_PRECISION_MODES.items())
        raise ConfigError(f"config key {flag('modify_mixlist')} adjusts ATC's mixed-precision lists,"
                          f" which apply only with {modes}; here {current}")
    if options.keep_dtype is not None and mode in KEEP_ORIGIN_MODES[name]:
        raise ConfigError(f"config key {flag('keep_dtype')} has no effect with {name} {mode!r}: every"
                          " op keeps the graph's precision already; drop one of them")


@dataclass(frozen=True)
class TorchOptions:
    """The torch backend's session (section ``harness.torch``; flags override): what it computes
    in, whether it is compiled, whether uint8 views are normalized on the device. Videos per
    call come from ``harness.build.batch``."""

    precision: str = "fp32"             # fp32, tf32 (CUDA), fp16, bf16 (torch.autocast)
    compile: bool = False               # torch.compile
    uint8_input: bool = False           # uint8 views to the device (4x fewer bytes), normalized there


@dataclass(frozen=True)
class RunOptions:
    """How ``harness.run`` guards a long run (section ``harness.run``; flags override). The
    timeouts' defaults are harness.limits.Timeouts'."""

    decode_timeout: float = Timeouts.decode      # s per video in a decode worker
    infer_timeout: float | None = Timeouts.infer  # s per video on a device; None: adaptive
    startup_timeout: float = Timeouts.startup    # s for a session to load (also after a restart)
    max_failure_rate: float = 0.5          # stop when more than this fraction failed ...
    failure_window: int = 50               # ... once this many videos finished (all failed: stop)
    wait: float = 600.0                    # s to wait for devices other jobs hold
    # the precision audit (docs/running.md, "Precision audit")
    audit: int | None = None               # videos; None: 16 for an .om or a GPU, else 0
    audit_min_top1_agreement: float = 0.99  # below: a warning (exit 1 under --strict)
    audit_max_prob_diff: float = 0.01      # max |Δprob| above: a warning (exit 1 under --strict)
    audit_timeout: float = Timeouts.reference     # s per video on the reference actor (one CPU)


@dataclass(frozen=True)
class HarnessOptions:
    """The config's optional ``harness`` section; reference configs get these defaults."""

    build: BuildOptions = field(default_factory=BuildOptions)
    run: RunOptions = field(default_factory=RunOptions)
    sampling: str = "reference"         # 'reference' (mmaction2 0.x) or 'mmaction2-1.x'
    label_map: str | None = None        # class names file; default: configs/label_map_k400.txt
    torch: TorchOptions = field(default_factory=TorchOptions)
    seek: str = "in-order"              # open-GOP files: 'in-order' (right frames) or 'reference'
    # harness.data.storage.StorageOptions: object storage for lists and videos
    storage: Any = field(default_factory=lambda: _storage_options())


def _storage_options(section: dict | None = None):
    from harness.data.storage import StorageOptions   # (harness.data imports this module)

    options = _options(StorageOptions, section or {}, "storage", {})
    options.check()
    return options


def _options(kind, section: dict, name: str, overrides: dict):
    """A dataclass of ``kind`` from a config section plus overrides; unknown keys are named."""
    values = dict(section or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"config key 'harness.{name}.{unknown[0]}' is not a {name} option"
                          f" (known: {', '.join(sorted(known))})")
    return kind(**values)


def harness_options(cfg, run: dict | None = None, torch: dict | None = None,
                    **overrides: Any) -> HarnessOptions:
    """The ``harness`` section as dataclasses; ``overrides`` replace build options, ``run`` run
    options and ``torch`` torch options (command-line flags; None values are ignored)."""
    section = _plain(lookup(cfg, "harness", default={})) or {}
    unknown = sorted(set(section) - {f.name for f in dataclasses.fields(HarnessOptions)})
    if unknown:
        raise ConfigError(f"config key 'harness.{unknown[0]}' is not a harness option"
                          f" (known: build, run, torch, sampling, seek, storage, label_map)")
    build = dict(section.get("build") or {})
    if "atc_extra_args" in build:
        build["atc_extra_args"] = tuple(build["atc_extra_args"])
    options = _options(BuildOptions, build, "build", overrides)
    if options.input_dtype not in ("uint8", "float32"):
        raise ConfigError(f"config key 'harness.build.input_dtype' is {options.input_dtype!r};"
                          " use 'uint8' or 'float32'")
    _check_precision_options(options)
    if options.onnx_precision not in ("fp32", "fp16"):
        raise ConfigError(f"config key 'harness.build.onnx_precision' is {options.onnx_precision!r};"
                          " use 'fp32' or 'fp16'")
    run_options = _options(RunOptions, section.get("run") or {}, "run", run or {})
    for key in ("decode_timeout", "infer_timeout", "startup_timeout", "wait", "audit_timeout"):
        value = getattr(run_options, key)
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise ConfigError(f"config key 'harness.run.{key}' is {value!r}; use a positive number of"
                              " seconds")
    if run_options.audit is not None and not (isinstance(run_options.audit, int) and run_options.audit >= 0):
        raise ConfigError(f"config key 'harness.run.audit' is {run_options.audit!r}; use a number of"
                          " videos (0: no audit)")
    for key in ("audit_min_top1_agreement", "audit_max_prob_diff"):
        if not 0 <= getattr(run_options, key) <= 1:
            raise ConfigError(f"config key 'harness.run.{key}' is {getattr(run_options, key)!r};"
                              " use a fraction in [0, 1]")
    if not 0 < run_options.max_failure_rate <= 1:
        raise ConfigError(f"config key 'harness.run.max_failure_rate' is"
                          f" {run_options.max_failure_rate!r}; use a fraction in (0, 1] (1: never stop)")
    sampling = section.get("sampling", "reference")
    if sampling not in ("reference", "mmaction2-1.x"):
        raise ConfigError(f"config key 'harness.sampling' is {sampling!r};"
                          " use 'reference' or 'mmaction2-1.x'")
    torch_options = _options(TorchOptions, section.get("torch") or {}, "torch", torch or {})
    if torch_options.precision not in ("fp32", "tf32", "fp16", "bf16"):
        raise ConfigError(f"config key 'harness.torch.precision' is {torch_options.precision!r};"
                          " use fp32, tf32, fp16 or bf16")
    seek = section.get("seek", "in-order")
    if seek not in ("in-order", "reference"):
        raise ConfigError(f"config key 'harness.seek' is {seek!r}; use 'in-order' or 'reference'"
                          " (docs/decoding.md, \"Open GOP\")")
    return HarnessOptions(build=options, run=run_options, sampling=sampling,
                          label_map=section.get("label_map"), torch=torch_options, seek=seek,
                          storage=_storage_options(section.get("storage")))


def evaluation_digest(cfg) -> str:
    """sha256 of what in the config determines a video's scores: the model section, the test
    pipeline, the sampling formula, the normalization and the averaging of views. Not the
    file's path, so an edited file (or ``--cfg-options``) is a different job for resume."""
    import hashlib
    import json

    options = harness_options(cfg)
    content = {"model": model_section(cfg), "pipeline": test_pipeline(cfg),
               "sampling": options.sampling,
               "normalization": dataclasses.asdict(normalization(cfg)),
               "average_clips": average_clips(cfg), "seek": options.seek}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
