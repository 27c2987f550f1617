"""Command-line pieces shared by ``harness.build`` and ``harness.run``.

One definition of each flag both commands take (the config and ``--cfg-options``, the build
options, verbosity), so the same words mean the same artifact: ``harness.build --soc-version X
--views-per-call 4`` and ``harness.run ... --soc-version X --views-per-call 4`` hash to the
same build and the run reuses it. Also the range-checked number types both use.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (argparse turns the error into exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is too small: use {minimum} or more")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in its message
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--config`` and ``--cfg-options``."""
    parser.add_argument("--config", required=required, metavar="CFG",
                        help="mmengine-style config (.py): a path (must exist), or the bare name of"
                        " one in the project's configs/ (e.g. swin_small_k400). The reference"
                        " repository's own config files load unchanged")
    from mmengine.config import DictAction

    parser.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                        help="override config keys, mmengine style (as mmaction2's tools):"
                        " e.g. harness.build.views_per_call=4 harness.sampling=mmaction2-1.x"
                        " 'model.test_cfg.average_clips=score'; lists as [a,b]")


def add_positional_model(group) -> None:
    """``CONFIG [CHECKPOINT]`` in the order of mmaction2's ``tools/test.py``: the same as
    ``--config`` / ``--checkpoint`` (:func:`merge_positional_model` checks they are given once)."""
    group.add_argument("config_path", nargs="?", metavar="CONFIG",
                       help="the same as --config (mmaction2's `tools/test.py CONFIG CHECKPOINT` order)")
    group.add_argument("checkpoint_path", nargs="?", metavar="CHECKPOINT",
                       help="the same as --checkpoint")


def merge_positional_model(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Move ``CONFIG`` / ``CHECKPOINT`` into ``args.config`` / ``args.checkpoint``; the same thing
    given both ways is argparse's one-line error (exit 2)."""
    for positional, name in (("config_path", "config"), ("checkpoint_path", "checkpoint")):
        value = getattr(args, positional)
        if value is None:
            continue
        if getattr(args, name):
            parser.error(f"the {name} is given twice ({name.upper()} {value} and --{name}"
                         f" {getattr(args, name)}): give it once, either way")
        setattr(args, name, value)


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's), for ``--version``."""
    from importlib import metadata

    try:
        return metadata.version("swin-k400-harness")
    except metadata.PackageNotFoundError:   # a checkout used without `pip install -e .`
        from harness import __version__

        return __version__


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"swin-k400-harness {package_version()}")


# The build options both commands take: flag -> (harness.config.BuildOptions field, kwargs).
BUILD_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "--input-dtype": ("input_dtype", dict(choices=("uint8", "float32"),
                      help="what the graph takes: uint8 pixels normalized inside (default), or"
                      " normalized float32 (the Ascend guide's contract)")),
    "--batch": ("batch", dict(type=int_at_least(1), metavar="B", help="videos per device call (default 1)")),
    "--views-per-call": ("views_per_call", dict(type=int_at_least(1), metavar="V",
                         help="views per call; must divide the views per video (12 for Swin-S);"
                         " 4 builds full-size Swin-S in about 5 GB instead of 12 (default: all)")),
    "--opset": ("opset", dict(type=int_at_least(11), metavar="N", help="ONNX opset, 11 to 20 (default 17)")),
    "--onnx-precision": ("onnx_precision", dict(choices=("fp32", "fp16"), help="fp16: also a float16"
                         " ONNX (LayerNorm, Softmax and reductions kept float32) for onnxruntime,"
                         " verified on class probabilities; the .om is made from the fp32 ONNX"
                         " (default fp32)")),
    "--soc-version": ("soc_version", dict(metavar="SOC", help="the chip the .om is compiled for, as `npu-smi"
                      " info` names it with the Ascend prefix (default: the chips found, by pyACL on"
                      " this host and Ray on the cluster's nodes; Ascend310P3 where none is found)")),
    "--precision-mode": ("precision_mode", dict(metavar="MODE", help="ATC --precision_mode: force_fp32,"
                         " cube_fp16in_fp32out, force_fp16, allow_fp32_to_fp16, must_keep_origin_dtype,"
                         " allow_mix_precision[_fp16|_bf16], allow_fp32_to_bf16 (default: none passed,"
                         " ATC's own: force_fp16 on inference chips); see docs/build.md, Precision")),
    "--precision-mode-v2": ("precision_mode_v2", dict(metavar="MODE", help="ATC --precision_mode_v2"
                            " (newer CANN; not with --precision-mode): fp16, origin, cube_fp16in_fp32out,"
                            " mixed_float16, mixed_bfloat16, mixed_hif8")),
    "--op-precision-mode": ("op_precision_mode", dict(metavar="INI", help="ATC --op_precision_mode:"
                            " an .ini file (hashed by content), or 'guide' for the Ascend guide's"
                            " own (Gelu = high_performance); not with --op-select-implmode")),
    "--op-select-implmode": ("op_select_implmode", dict(metavar="MODE", help="ATC --op_select_implmode:"
                             " high_precision, high_performance (ATC's default), high_precision_for_all,"
                             " high_performance_for_all; not with --op-precision-mode")),
    "--keep-dtype": ("keep_dtype", dict(metavar="FILE", help="ATC --keep_dtype: a file of op names"
                     " kept at their original precision (hashed by content)")),
    "--modify-mixlist": ("modify_mixlist", dict(metavar="JSON", help="ATC --modify_mixlist: a .json"
                         " adjusting the mixed-precision lists; only with an allow_mix_precision* or"
                         " mixed_* mode (hashed by content)")),
}


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """The build options (override the config's ``harness.build``), the ATC path, the cache."""
    group = parser.add_argument_group("build options (the same words reuse the same artifact)")
    for flag, (_, kwargs) in BUILD_FLAGS.items():
        group.add_argument(flag, **kwargs)
    group.add_argument("--atc", metavar="PATH", help="the ATC executable (default: atc on PATH, if any)")
    group.add_argument("--build-dir", default="build", metavar="DIR", help="the artifact cache (default: build)")
    group.add_argument("--unsafe-load-checkpoint", action="store_true",
                       help="allow a checkpoint that needs full unpickling (only files you trust:"
                       " unpickling can run code)")


def build_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The build-option flags given on the command line, as BuildOptions fields."""
    values = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _) in BUILD_FLAGS.items()}
    return {k: v for k, v in values.items() if v is not None}


def add_verbosity_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true",
                       help="more detail (debug messages of the harness)")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="only warnings and errors (and the results)")


def setup_logging(args: argparse.Namespace) -> None:
    """Harness messages at INFO (-v: DEBUG, -q: WARNING) on stderr; libraries at WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.getLogger("harness").setLevel(level)


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} is too small: give a positive number of seconds")
    return value


def fraction(text: str) -> float:
    """An argparse type: a fraction in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not a fraction in (0, 1]")
    return value
