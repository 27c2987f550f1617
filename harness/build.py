"""Config + checkpoint -> verified ONNX (-> Ascend .om), made once and cached by content hash.

    python -m harness.build --config configs/swin_small_k400.py --checkpoint swin_small.pth

Steps (docs/build.md has the full story):

1. Work out everything that determines the artifact (model section, input shape, dtype and
   normalization, build options, checkpoint bytes or "random-init", tool versions, whether an
   .om is made) and hash it.  ``build/<name>-<hash[:12]>/`` with a complete ``manifest.json`` is
   reused at once: no model is built, nothing is exported.
2. Otherwise, under a per-artifact lock: build the model, wrap it with the input stage
   (uint8 -> normalized float in the graph, or normalized float32 in), export with the dynamo
   exporter at a fixed shape, simplify with onnxsim, check the graph (max tensor rank of
   Transpose/Reshape <= 8 for CANN), verify onnxruntime against PyTorch on the same random input,
   run ATC when available, and write ``manifest.json`` last.  All of it happens in a temp dir
   that is renamed into place, so an interrupted build never leaves a directory that looks complete.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from harness import cli
from harness import config as hcfg
from harness.errors import BuildError, CheckpointError, ConfigError, HarnessError

log = logging.getLogger("harness.build")   # not __name__: "__main__" under -m

MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
ONNX_FP16_FILE = "model_fp16.onnx"
# The float16 ONNX may differ from the fp32 PyTorch model by this much in any class probability
# of any view (softmax of the logits), on the verification input; else the build fails.
FP16_PROB_TOLERANCE = 0.01
OM_FILE = "model.om"
ATC_LOG = "atc.log"
INPUT_NAME = "video"
OUTPUT_NAME = "logits"
TOLERANCE = 1e-3
GUIDE_OPSET = 11                  # the Ascend guide's export opset: the fallback when ATC fails
MAX_RANK = 8                      # CANN Transpose supports at most 8 dimensions (ascend.md)
_RANK_CHECKED_OPS = ("Transpose", "Reshape")
# --op-precision-mode presets: the Ascend guide's own op_precision.ini (Gelu = high_performance)
OP_PRECISION_PRESETS = {"guide": Path(__file__).resolve().parent / "presets" / "op_precision_guide.ini"}
_HASH_FORMAT = 2                  # bump when the build procedure or the key changes
_TOOLS = ("torch", "onnx", "onnxscript", "onnxsim", "onnxruntime")


@dataclass
class Artifact:
    """A built (or reused) artifact directory and its manifest."""

    directory: Path
    manifest: dict
    onnx_path: Path
    om_path: Path | None
    reused: bool


# ---------------------------------------------------------------- manifest

def load_manifest(directory_or_manifest_path: str | Path) -> dict:
    """Read ``manifest.json`` from an artifact directory (or the file itself)."""
    path = Path(directory_or_manifest_path)
    if path.is_dir():
        path = path / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BuildError(f"no build manifest at {path}: build the model with"
                         " `python -m harness.build --config CFG`") from None
    except (OSError, ValueError) as exc:
        raise BuildError(f"build manifest {path} is unreadable ({exc}); delete its directory"
                         " and build again") from exc


def _complete(directory: Path, digest: str) -> dict | None:
    """The manifest if ``directory`` holds a finished build of ``digest``, else None."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("hash") != digest or not (directory / str(manifest.get("onnx"))).is_file():
        return None
    if manifest.get("om") and not (directory / manifest["om"]).is_file():
        return None
    return manifest


# ---------------------------------------------------------------- what determines the artifact

@dataclass(frozen=True)
class _Plan:
    """Everything the build needs, derived from the config without touching torch."""

    name: str
    digest: str
    key: dict                     # the canonical content that was hashed
    model_cfg: dict
    options: hcfg.BuildOptions
    norm: hcfg.Normalization
    input_shape: tuple[int, ...]
    output_shape: tuple[int, int]
    views_per_video: int
    num_classes: int
    average_clips: str | None
    checkpoint: Path | None
    checkpoint_sha256: str | None
    atc: str | None
    atc_version: str | None
    config_path: str


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tool_versions() -> dict[str, str]:
    # importlib.metadata, not imports: the reuse path must not pay for importing torch.
    versions = {}
    for tool in _TOOLS:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            versions[tool] = "missing"
    return versions


def _resolve_atc(atc: str | None) -> str | None:
    if atc is None:
        return shutil.which("atc")
    found = shutil.which(atc) if os.sep not in atc else (atc if os.access(atc, os.X_OK) else None)
    if found is None:
        raise BuildError(f"ATC executable not found or not executable: {atc} (on an Ascend host,"
                         " `source /usr/local/Ascend/ascend-toolkit/set_env.sh` puts atc on PATH)")
    return str(Path(found).resolve())


def _atc_version(atc: str) -> str:
    """Identify the ATC that compiles: the CANN version.info above it, else the file's sha256.

    Running ``atc --version`` is not used because its output differs between CANN releases.
    """
    real = Path(atc).resolve()
    for parent in list(real.parents)[:4]:
        for info in ("version.info", "ascend_toolkit_install.info"):
            candidate = parent / info
            if candidate.is_file():
                text = " ".join(line.strip() for line in candidate.read_text(errors="replace").splitlines()
                                if line.strip())
                return f"{candidate.parent.name}: {text[:500]}"
    return "sha256:" + sha256_file(real)


# ATC's precision options (harness.config.BuildOptions fields; docs/build.md, "Precision"), in
# the order they are passed; those naming a file are hashed by content.
_ATC_PRECISION = ("precision_mode", "precision_mode_v2", "op_precision_mode", "op_select_implmode",
                  "keep_dtype", "modify_mixlist")
_PRECISION_FILES = {"op_precision_mode": "an ATC op precision .ini",
                    "keep_dtype": "a file of op names kept at their original precision",
                    "modify_mixlist": "a .json adjusting ATC's mixed-precision lists"}

# What each mode computes in, in words (CANN ATC parameter reference), for the manifest.
_PRECISION_WORDS = {
    "force_fp16": "float16 wherever an op supports both float16 and float32",
    "force_fp32": "matrix ops float16 in / float32 out where supported, vector ops float32",
    "cube_fp16in_fp32out": "matrix ops float16 in / float32 out where supported, vector ops float32",
    "allow_fp32_to_fp16": "matrix ops float16, vector ops keep float32 where supported",
    "must_keep_origin_dtype": "the graph's own dtypes (float32 here) wherever supported",
    "allow_mix_precision": "mixed float16/float32 by ATC's built-in lists",
    "allow_mix_precision_fp16": "mixed float16/float32 by ATC's built-in lists",
    "allow_mix_precision_bf16": "mixed bfloat16/float32 by ATC's built-in lists",
    "allow_fp32_to_bf16": "matrix ops bfloat16, vector ops keep float32 where supported",
    "fp16": "float16 wherever an op supports it",
    "origin": "the graph's own dtypes (float32 here) wherever supported",
    "mixed_float16": "mixed float16/float32 by ATC's built-in lists",
    "mixed_bfloat16": "mixed bfloat16/float32 by ATC's built-in lists",
    "mixed_hif8": "mixed HiFloat8/float16/float32 by ATC's built-in lists",
}


def _precision_file(name: str, path: str | None) -> dict | None:
    """``{"sha256"}`` of a precision option's file: its content changes the .om, its path and name
    do not (the manifest adds the name). Checked even for ONNX-only builds."""
    if path is None:
        return None
    what = _PRECISION_FILES[name]
    if not Path(path).is_file():
        raise ConfigError(f"config key 'harness.build.{name}' names {path}, which is not a file"
                          f" (give the path of {what})")
    if name == "modify_mixlist":
        try:
            lists = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"config key 'harness.build.modify_mixlist' names {path}, which is not"
                              f" valid JSON ({exc}); ATC reads {what}") from exc
        if not isinstance(lists, dict):
            raise ConfigError(f"config key 'harness.build.modify_mixlist' names {path}, whose JSON is"
                              " not an object (ATC expects keys such as \"black-list\", \"white-list\")")
    return {"sha256": sha256_file(path)}


def _manifest_build_options(plan: _Plan) -> dict:
    """The hashed build options, with the name of each precision file next to its sha256."""
    options = dict(plan.key["build"])
    for name in _PRECISION_FILES:
        if isinstance(options.get(name), dict):
            options[name] = {"file": Path(getattr(plan.options, name)).name, **options[name]}
    return options


def _precision_summary(options: hcfg.BuildOptions, om: str | None) -> dict:
    """What the artifact computes in, for the manifest's reader."""
    if om is None:
        return {"mode": None, "atc_default": None,
                "words": "float32: ONNX only, no ATC ran (the ATC precision options do not apply)"}
    if options.precision_mode_v2 is not None:
        option, mode, default = "precision_mode_v2", options.precision_mode_v2, False
    elif options.precision_mode is not None:
        option, mode, default = "precision_mode", options.precision_mode, False
    else:
        option, mode, default = "precision_mode", hcfg.ATC_DEFAULT_PRECISION_MODE, True
    words = f"--{option}={mode}"
    words += (" (ATC's default: no precision option was given; the CANN docs' default for inference"
              " products such as the 310P3)" if default else "")
    words += f": {_PRECISION_WORDS.get(mode, mode)}"
    extras = []
    if options.modify_mixlist:
        extras.append(f"mixed-precision lists adjusted by {Path(options.modify_mixlist).name}")
    if options.keep_dtype:
        extras.append(f"ops named in {Path(options.keep_dtype).name} keep their original precision")
    if options.op_precision_mode:
        extras.append(f"per-op implementations from {Path(options.op_precision_mode).name}")
    if options.op_select_implmode:
        extras.append(f"op implementations: {options.op_select_implmode}")
    if extras:
        words += "; " + "; ".join(extras)
    return {"mode": f"{option}={mode}", "atc_default": default, "words": words}


def model_name(model_cfg: dict) -> str:
    """A readable artifact name from the architecture, e.g. ``swin-e96-d2-2-18-2-c400``."""
    backbone = model_cfg.get("backbone", {})
    depths = "-".join(str(d) for d in backbone.get("depths", []))
    classes = model_cfg.get("cls_head", {}).get("num_classes")
    return f"swin-e{backbone.get('embed_dim', 'x')}-d{depths}-c{classes}"


def _plan(cfg, checkpoint, atc, overrides) -> _Plan:
    from harness.chips import DEFAULT_SOC, host_soc

    options = hcfg.harness_options(cfg, **overrides).build
    # the target chip: as given, else this host's (pyACL), else the guide's 310P3
    options = dataclasses.replace(options, soc_version=options.soc_version or host_soc() or DEFAULT_SOC)
    if options.op_precision_mode in OP_PRECISION_PRESETS:   # a shipped .ini, hashed by content
        options = dataclasses.replace(options,
                                      op_precision_mode=str(OP_PRECISION_PRESETS[options.op_precision_mode]))
    geometry = hcfg.clip_geometry(cfg)
    norm = hcfg.normalization(cfg)
    model_cfg = hcfg.model_section(cfg)
    views = geometry.views
    if not isinstance(options.opset, int) or options.opset < 11:
        raise ConfigError(f"config key 'harness.build.opset' is {options.opset!r}; the build supports"
                          " opsets 11 and above (17 is the default)")
    per_call = options.views_per_call if options.views_per_call is not None else views
    if not isinstance(per_call, int) or per_call < 1 or views % per_call:
        divisors = ", ".join(str(d) for d in range(1, views + 1) if views % d == 0)
        raise ConfigError(f"config key 'harness.build.views_per_call' is {per_call!r}; it must divide"
                          f" the {views} views per video (one of {divisors})")
    if not isinstance(options.batch, int) or options.batch < 1:
        raise ConfigError(f"config key 'harness.build.batch' is {options.batch!r}; use a positive integer")
    num_classes = int(model_cfg["cls_head"]["num_classes"])
    input_shape = (options.batch, per_call, *geometry.view_shape())
    output_shape = (options.batch * per_call, num_classes)

    ckpt_hash = None
    ckpt_path = None
    if checkpoint is not None:
        ckpt_path = Path(checkpoint)
        if not ckpt_path.is_file():
            raise CheckpointError(f"checkpoint file not found: {ckpt_path} (give the .pth path with"
                                  " --checkpoint, or leave it out for random weights)")
        ckpt_hash = sha256_file(ckpt_path)

    atc_path = _resolve_atc(atc)
    atc_version = _atc_version(atc_path) if atc_path else None
    build_opts = dataclasses.asdict(options)
    build_opts["views_per_call"] = per_call
    build_opts["atc_extra_args"] = list(options.atc_extra_args)
    precision_files = {name: _precision_file(name, getattr(options, name)) for name in _PRECISION_FILES}
    given = [name for name in _ATC_PRECISION if getattr(options, name) is not None]
    for name in _ATC_PRECISION:
        value = build_opts.pop(name)
        if atc_path is None or value is None:
            # An ONNX-only build runs no ATC: its precision options change nothing, so they are
            # not in its hash (the same words with and without them reuse one ONNX).
            build_opts[name] = None
            continue
        # a file counts by content: its path and name do not change the .om
        build_opts[name] = precision_files[name] if name in precision_files else value
    if atc_path is None and given:
        log.info("ATC not found: %s apply only to the .om and are not used for an ONNX-only build",
                 ", ".join(given))
    key = {
        "format": _HASH_FORMAT,
        "model": model_cfg,
        # Normalization and views per video are in the key even when not in the graph: the
        # manifest tells the pipeline how to normalize on the host and how to group views.
        "input": {"shape": list(input_shape), "dtype": options.input_dtype,
                  "normalization": dataclasses.asdict(norm), "views_per_video": views},
        "build": build_opts,
        "checkpoint": ckpt_hash or "random-init",
        "tools": _tool_versions(),
        # An ONNX-only build and an ONNX+.om build are different artifacts: once ATC is
        # available, the next build makes the .om instead of reusing the ONNX-only directory.
        "om": atc_version,
    }
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return _Plan(
        name=model_name(model_cfg), digest=digest, key=key, model_cfg=model_cfg, options=options,
        norm=norm, input_shape=input_shape, output_shape=output_shape, views_per_video=views,
        num_classes=num_classes, average_clips=hcfg.average_clips(cfg), checkpoint=ckpt_path,
        checkpoint_sha256=ckpt_hash, atc=atc_path, atc_version=atc_version,
        config_path=str(cfg.get("_harness_config_path", "")),
    )


# ---------------------------------------------------------------- locking and atomic placement

@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    import fcntl

    try:
        fh = open(lock_path, "a+")
    except OSError as exc:   # a read-only cache can serve finished builds, not make one
        raise ConfigError(f"cannot build in --build-dir {lock_path.parent}:"
                          f" {exc.strerror or exc}; make it writable or give another --build-dir"
                          " (the artifact cache; default: build)") from None
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # released when the file closes, or the process dies
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _remove_stale(build_dir: Path, short: str) -> None:
    """Temp dirs of this artifact: their builders are gone, since we hold the lock."""
    for stale in build_dir.glob(f".tmp-{short}-*"):
        log.info("removing the leftover of an interrupted build: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------- public entry

def usable_build_dir(build_dir: str | Path) -> Path:
    """``build_dir``, created if needed; a ConfigError naming the fix when it cannot be (a file
    in the way, no permission), before any of the build's minutes are spent."""
    path = Path(build_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except FileExistsError:
        why = "it is a file, not a folder"
    except NotADirectoryError:
        why = "a file is in the way on its path"
    except OSError as exc:
        why = exc.strerror or str(exc)
    raise ConfigError(f"cannot use --build-dir {path}: {why}; give another --build-dir (a folder"
                      " you can create and write; default: build)")


def build_artifact(cfg, checkpoint: str | Path | None = None, *, build_dir: str | Path = "build",
                   atc: str | None = None, require_om: bool = False,
                   unsafe_load_checkpoint: bool = False, **build_overrides: Any) -> Artifact:
    """Build (or reuse) the verified ONNX / .om for ``cfg`` (a Config or a config path).

    ``build_overrides`` are :class:`harness.config.BuildOptions` fields (``input_dtype``,
    ``batch``, ``views_per_call``, ``opset``, ``soc_version``, ...); None values are ignored.
    Raises BuildError (export, verification, ATC), CheckpointError, ConfigError.
    """
    if isinstance(cfg, (str, Path)):
        cfg = hcfg.load_config(cfg)
    build_dir = usable_build_dir(build_dir)
    plan = _plan(cfg, checkpoint, atc, {k: v for k, v in build_overrides.items() if v is not None})
    if plan.atc is None and require_om:
        raise BuildError("an .om was required (--require-om) but ATC was not found: on an Ascend"
                         " host run `source /usr/local/Ascend/ascend-toolkit/set_env.sh` or pass --atc PATH")
    build_dir = Path(build_dir)
    short = plan.digest[:12]
    directory = build_dir / f"{plan.name}-{short}"

    manifest = _complete(directory, plan.digest)
    if manifest is None:
        build_dir.mkdir(parents=True, exist_ok=True)
        with _locked(build_dir / f"{plan.name}-{short}.lock"):
            manifest = _complete(directory, plan.digest)   # another process may have just built it
            if manifest is None:
                _remove_stale(build_dir, short)
                if directory.exists():                     # incomplete or foreign: never trusted
                    shutil.rmtree(directory)
                tmp = build_dir / f".tmp-{short}-{os.getpid()}"
                tmp.mkdir()
                try:
                    manifest = _build_into(tmp, plan, unsafe_load_checkpoint)
                except BuildError:
                    failed = build_dir / f".failed-{plan.name}-{short}"
                    shutil.rmtree(failed, ignore_errors=True)
                    os.rename(tmp, failed)                 # keep the log and ONNX for diagnosis
                    raise
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                os.rename(tmp, directory)
                shutil.rmtree(build_dir / f".failed-{plan.name}-{short}", ignore_errors=True)
                return _artifact(directory, manifest, reused=False)
    log.info("reusing %s", directory)
    return _artifact(directory, manifest, reused=True)


def _artifact(directory: Path, manifest: dict, reused: bool) -> Artifact:
    om = directory / manifest["om"] if manifest.get("om") else None
    return Artifact(directory=directory, manifest=manifest, onnx_path=directory / manifest["onnx"],
                    om_path=om, reused=reused)


# ---------------------------------------------------------------- the build itself

def _model_api():
    """``(build, load_checkpoint)`` of harness.model, imported only when a build happens."""
    from harness import model as hmodel

    return hmodel.build, hmodel.load_checkpoint


def _input_stage(model, norm: hcfg.Normalization, input_dtype: str):
    """Wrap ``model`` so the graph takes the pipeline's tensor: uint8 (normalized inside) or float32."""
    import torch

    class InputStage(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):   # x: [batch, views, 3, T, H, W]
            if input_dtype == "uint8":
                x = norm.apply(x, channel_axis=2)
            return self.model(x)

    return InputStage().eval()


def _verification_input(plan: _Plan):
    """A fixed random input in the graph's dtype (uint8 pixels, or their normalized floats)."""
    import numpy as np

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=plan.input_shape, dtype=np.uint8)
    if plan.options.input_dtype == "uint8":
        return pixels
    return np.ascontiguousarray(plan.norm.apply(pixels, channel_axis=2), dtype=np.float32)


def _torch_reference(wrapped, x_np):
    """PyTorch logits, one view at a time (views are independent; keeps full-size memory low)."""
    import numpy as np
    import torch

    outs = []
    with torch.inference_mode():
        for b in range(x_np.shape[0]):
            for v in range(x_np.shape[1]):
                outs.append(wrapped(torch.from_numpy(x_np[b:b + 1, v:v + 1].copy())).numpy())
    return np.concatenate(outs, axis=0)


def _export(wrapped, plan: _Plan, path: Path) -> None:
    import torch

    from harness.onnx_passes import EXPORT_OPSET

    # Below 18 the exporter's own down-conversion fails on this model: export at 18 and let
    # harness.onnx_passes convert after simplification (docs/build.md, "Opsets").
    opset = max(plan.options.opset, EXPORT_OPSET)
    example = torch.zeros(plan.input_shape, dtype=torch.uint8 if plan.options.input_dtype == "uint8"
                          else torch.float32)
    try:
        with warnings.catch_warnings(), _quiet_logger("torch.onnx._internal.exporter._registration"):
            warnings.simplefilter("ignore", FutureWarning)   # torch-internal deprecations, not ours
            torch.onnx.export(wrapped, (example,), str(path), dynamo=True, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              external_data=False, verbose=False)
    except Exception as exc:
        raise BuildError(f"ONNX export at opset {opset} failed: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''} (opsets 11 to 18 are known"
                         " to work; see docs/build.md)") from exc


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Silence one chatty logger (the exporter lists torchvision ops it cannot find: we use none)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _simplify(path: Path, target_opset: int) -> list[str]:
    """onnxsim, then the conversion to a lower opset if asked; returns the passes applied."""
    import onnx
    import onnxsim

    from harness.onnx_passes import convert_opset

    model = onnx.load(str(path))
    try:
        simplified, _ = onnxsim.simplify(model)   # our own verification follows
    except Exception as exc:
        raise BuildError(f"onnxsim failed on {path.name}: {type(exc).__name__}: {exc}") from exc
    del model
    try:
        simplified, passes = convert_opset(simplified, target_opset)
    except Exception as exc:
        raise BuildError(f"cannot convert the graph to opset {target_opset}: {exc} (opsets 11 to 18"
                         " are supported; see docs/build.md)") from exc
    onnx.save(simplified, str(path))
    return passes


def _check_graph(path: Path, plan: _Plan, wanted_opset: int) -> dict:
    """Opset, node count and the max rank of Transpose/Reshape outputs (CANN allows <= 8)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != wanted_opset:
        raise BuildError(f"the exporter produced opset {opset}, not the requested {wanted_opset};"
                         " choose an opset the exporter supports (see docs/build.md)")
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    max_rank = 0
    for node in model.graph.node:
        if node.op_type in _RANK_CHECKED_OPS:
            for name in list(node.output) + list(node.input[:1]):
                if name not in ranks:
                    raise BuildError(f"cannot infer the rank of {node.op_type} tensor {name!r};"
                                     " the CANN rank limit cannot be checked")
                max_rank = max(max_rank, ranks[name])
    if max_rank > MAX_RANK:
        raise BuildError(f"the graph has a Transpose/Reshape of rank {max_rank}; CANN accepts at"
                         f" most {MAX_RANK} dimensions")
    inputs = [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input]
    if inputs != [(INPUT_NAME, list(plan.input_shape))]:
        raise BuildError(f"exported graph inputs are {inputs}, expected {INPUT_NAME} {list(plan.input_shape)}")
    return {"opset": opset, "nodes": len(model.graph.node), "max_transpose_reshape_rank": max_rank}


def _onnxruntime_logits(path: Path, x_np):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # No arena and no memory pattern: the full-size graph's peak drops (docs/build.md has figures).
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    options.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x_np})[0]


def _verify(path: Path, reference, x_np) -> float:
    import numpy as np

    got = _onnxruntime_logits(path, x_np)
    if got.shape != reference.shape:
        raise BuildError(f"ONNX output shape {got.shape} differs from PyTorch's {reference.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - reference.astype(np.float64))))
    if not diff <= TOLERANCE:     # also catches NaN
        raise BuildError(f"verification failed: ONNX logits differ from PyTorch by {diff:.3g}"
                         f" (tolerance {TOLERANCE}); the exported graph does not compute the model")
    return diff


def _float16_onnx(onnx_path: Path, out: Path, reference, x_np) -> dict:
    """The float16 ONNX (onnx_passes.to_float16) next to the fp32 one, verified against the fp32
    PyTorch logits on class probabilities (per view): BuildError above FP16_PROB_TOLERANCE."""
    import numpy as np

    from harness import onnx_passes

    kept = onnx_passes.to_float16(onnx_path, out)
    got = _onnxruntime_logits(out, x_np)

    def probabilities(logits):
        z = logits.astype(np.float64)
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)

    diff = float(np.max(np.abs(probabilities(got) - probabilities(reference))))
    if not diff <= FP16_PROB_TOLERANCE:     # also catches NaN (float16 overflow)
        raise BuildError(f"verification failed: the float16 ONNX's class probabilities differ from"
                         f" PyTorch's fp32 by {diff:.3g} (tolerance {FP16_PROB_TOLERANCE}); build with"
                         " onnx_precision fp32 for this model")
    log.info("float16 ONNX verified: max |Δprob| %.2g vs fp32 PyTorch (tolerance %g)", diff,
             FP16_PROB_TOLERANCE)
    return {"max_prob_diff": diff, "tolerance": FP16_PROB_TOLERANCE, "kept_fp32": kept}


def _atc_argv(plan: _Plan, onnx_path: Path, out_stem: Path) -> list[str]:
    o = plan.options
    argv = [plan.atc, "--framework=5", f"--model={onnx_path}", f"--output={out_stem}",
            f"--soc_version={o.soc_version}",
            f"--input_shape={INPUT_NAME}:{','.join(str(d) for d in plan.input_shape)}"]
    for name in _ATC_PRECISION:
        value = getattr(o, name)
        if value is not None:
            argv.append(f"--{name}={Path(value).resolve() if name in _PRECISION_FILES else value}")
    argv.append("--log=error")
    argv.extend(str(a) for a in o.atc_extra_args)
    return argv


class AtcFailed(BuildError):
    """ATC ran and exited with an error (its log says why)."""


def _run_atc(plan: _Plan, directory: Path) -> str:
    argv = _atc_argv(plan, (directory / ONNX_FILE).resolve(), (directory / "model").resolve())
    log_path = directory / ATC_LOG
    log.info("running ATC: %s", " ".join(argv))
    with open(log_path, "wb") as fh:
        fh.write(("$ " + " ".join(argv) + "\n").encode())
        fh.flush()
        try:
            rc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=directory).returncode
        except OSError as exc:
            raise BuildError(f"cannot run ATC {plan.atc}: {exc}") from exc
    final_log = f"{directory.parent / ('.failed-' + plan.name + '-' + plan.digest[:12])}/{ATC_LOG}"
    if rc != 0:
        raise AtcFailed(f"ATC exited with status {rc}; its log: {final_log}")
    produced = sorted(directory.glob("model*.om"))
    if len(produced) != 1:
        raise BuildError(f"ATC succeeded but produced {len(produced)} .om files"
                         f" ({[p.name for p in produced]}); its log: {final_log}")
    if produced[0].name != OM_FILE:
        log.info("ATC wrote %s; renamed to %s", produced[0].name, OM_FILE)
        os.rename(produced[0], directory / OM_FILE)
    return OM_FILE


def _atc_error_line(log_path: Path) -> str:
    """The first error line of an ATC log (for the manifest and the message)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()[1:]
    except OSError:
        return ""
    errors = [ln.strip() for ln in lines if "error" in ln.lower() or ln.strip().startswith("E")]
    return (errors or [ln.strip() for ln in lines if ln.strip()] or [""])[0][:300]


def _om_with_opset_fallback(tmp: Path, plan: _Plan, make_onnx, run_atc) -> tuple[str, dict | None, Any]:
    """``run_atc()`` on the ONNX ``make_onnx(opset)`` wrote; when ATC fails on an export above the
    Ascend guide's opset 11 (no public page gives ATC's opset range), export again at 11 once,
    verified as usual. Returns ``(om file, the fallback's record or None, the ONNX facts)``."""
    requested = plan.options.opset
    onnx_facts = make_onnx(requested)
    try:
        return run_atc(), None, onnx_facts
    except AtcFailed as exc:
        if requested <= GUIDE_OPSET:
            raise
        first_log = tmp / f"atc-opset{requested}.log"
        os.replace(tmp / ATC_LOG, first_log)
        why = _atc_error_line(first_log)
        log.warning("ATC failed on the opset %d export (%s); exporting again at opset %d, the Ascend"
                    " guide's, verified as usual", requested, why or exc, GUIDE_OPSET)
        onnx_facts = make_onnx(GUIDE_OPSET)
        try:
            om = run_atc()
        except AtcFailed as again:
            raise AtcFailed(f"ATC failed at opset {requested} and again at the guide's opset"
                            f" {GUIDE_OPSET} (the first attempt's log is {first_log.name} next to"
                            f" the second's): {again}") from again
        log.warning("built the .om from the opset %d export: ATC rejected opset %d (its log: %s)",
                    GUIDE_OPSET, requested, first_log.name)
        return om, {"requested": requested, "used": GUIDE_OPSET, "atc_error": why,
                    "atc_log": first_log.name}, onnx_facts


def _build_into(tmp: Path, plan: _Plan, unsafe_load_checkpoint: bool) -> dict:
    import torch

    timings: dict[str, float] = {}
    build_model, load_checkpoint = _model_api()
    t0 = time.perf_counter()
    torch.manual_seed(0)          # random-init artifacts are reproducible
    model = build_model(plan.model_cfg)
    if plan.checkpoint is not None:   # (else random weights: the command line warns)
        load_checkpoint(model, plan.checkpoint, unsafe=unsafe_load_checkpoint)
    timings["model"] = time.perf_counter() - t0
    wrapped = _input_stage(model.eval(), plan.norm, plan.options.input_dtype)

    x_np = _verification_input(plan)
    t0 = time.perf_counter()
    reference = _torch_reference(wrapped, x_np)
    timings["reference"] = time.perf_counter() - t0

    @contextlib.contextmanager
    def timed(step: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - t0   # summed over retries

    def make_onnx(opset: int) -> tuple[dict, float, dict | None]:
        """Export, simplify to ``opset``, check and verify: (graph facts, max |diff|, fp16)."""
        onnx_path = tmp / ONNX_FILE
        with timed("export"):
            _export(wrapped, plan, onnx_path)
        gc.collect()
        with timed("simplify"):
            passes = _simplify(onnx_path, opset)
        graph = _check_graph(onnx_path, plan, opset)
        graph["passes"] = passes
        size = onnx_path.stat().st_size
        if size >= 2 ** 31:
            raise BuildError(f"the ONNX file is {size / 2**30:.1f} GiB; single-file ONNX is limited to 2 GiB")
        with timed("verify"):
            diff = _verify(onnx_path, reference, x_np)
        fp16 = None
        if plan.options.onnx_precision == "fp16":
            with timed("fp16"):
                fp16 = _float16_onnx(onnx_path, tmp / ONNX_FP16_FILE, reference, x_np)
        return graph, diff, fp16

    om, opset_fallback = None, None
    if plan.atc:
        def run_atc() -> str:
            with timed("atc"):
                return _run_atc(plan, tmp)

        om, opset_fallback, (graph, diff, fp16) = _om_with_opset_fallback(tmp, plan, make_onnx, run_atc)
    else:
        graph, diff, fp16 = make_onnx(plan.options.opset)
        log.info("ATC not found: built ONNX only (on an Ascend host, source set_env.sh or pass --atc)")

    manifest = {
        "name": plan.name,
        "hash": plan.digest,
        "config": plan.config_path,
        "input": {"name": INPUT_NAME, "shape": list(plan.input_shape), "dtype": plan.options.input_dtype},
        "output": {"name": OUTPUT_NAME, "shape": list(plan.output_shape)},
        "normalization": {"mean": list(plan.norm.mean), "std": list(plan.norm.std),
                          "to_bgr": plan.norm.to_bgr, "in_graph": plan.options.input_dtype == "uint8"},
        "views_per_video": plan.views_per_video,
        "num_classes": plan.num_classes,
        "average_clips": plan.average_clips,
        "onnx": ONNX_FILE,
        "onnx_fp16": ONNX_FP16_FILE if fp16 else None,
        "om": om,
        "soc_version": plan.options.soc_version if om else None,
        "precision": _precision_summary(plan.options, om),
        "checkpoint": ({"path": str(plan.checkpoint), "sha256": plan.checkpoint_sha256}
                       if plan.checkpoint else "random-init"),
        "tool_versions": {**plan.key["tools"], **({"atc": plan.atc_version} if om else {})},
        "build_options": _manifest_build_options(plan),
        "graph": graph,                  # graph["opset"]: the opset of the files, as used
        "opset_fallback": opset_fallback,
        "verification": {"max_abs_diff": diff, "tolerance": TOLERANCE,
                         **({"fp16": fp16} if fp16 else {})},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "torch_threads": torch.get_num_threads(),
    }
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    (tmp / (MANIFEST + ".part")).write_text(text)
    os.replace(tmp / (MANIFEST + ".part"), tmp / MANIFEST)   # written last: marks the build complete
    return manifest


# ---------------------------------------------------------------- command line

_EPILOG = """\
examples:
  python -m harness.build configs/swin_small_k400.py swin_small.pth
  python -m harness.build --config configs/swin_small_k400.py --checkpoint swin_small.pth \\
      --views-per-call 4 --require-om
  It prints the artifact's folder; harness.run given the same build options reuses it.
  Every option, in detail: docs/build.md.

exit status:
  0    built, or reused from the cache
  2    a user error (one line on stderr says what to fix), a failed verification or ATC run
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.build",
                                usage="python -m harness.build CONFIG [CHECKPOINT] [options]\n"
                                "       python -m harness.build --config CFG [--checkpoint PTH] [options]",
                                description="Build (once) the verified ONNX / Ascend .om for a config.",
                                epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_version_argument(p)
    cli.add_verbosity_arguments(p)
    weights = p.add_argument_group("model and weights")
    cli.add_positional_model(weights)
    cli.add_config_arguments(weights, required=False)
    weights.add_argument("--checkpoint", metavar="PTH",
                         help="the .pth to load (default: random weights, with a warning)")
    weights.add_argument("--require-om", action="store_true", help="fail unless an .om is produced")
    cli.add_build_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    cli.merge_positional_model(p, args)
    if not args.config:
        p.error("--config is required (or CONFIG first)")
    cli.setup_logging(args)
    try:
        artifact = build_artifact(
            hcfg.load_config(args.config, args.cfg_options), args.checkpoint,
            build_dir=args.build_dir, atc=args.atc, require_om=args.require_om,
            unsafe_load_checkpoint=args.unsafe_load_checkpoint, **cli.build_overrides(args))
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.checkpoint:   # here, not in the build: harness.run --random-weights says it once
        log.warning("no checkpoint given: the artifact has random weights (its predictions are"
                    " meaningless; pass --checkpoint for real ones)")
    if artifact.om_path is None:
        print("note: ATC not found, built ONNX only (an .om needs the CANN toolkit: see docs/build.md)",
              file=sys.stderr)
    print(artifact.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
