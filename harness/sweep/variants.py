"""What a sweep varies: the keys, their values, and the variants they make.

A key is a ``harness.run`` option in the words of its flag (``--precision-mode`` is
``precision_mode``, ``--torch-compile`` is ``torch_compile``): a build option (harness.cli's
BUILD_FLAGS) or a torch option. A value is checked by the flag's own type and choices, so a
variant means exactly what the same flag on ``harness.run`` means, and its command line is
the base command plus those flags.

- :func:`cross_product`: ``--vary KEY=V1,V2`` (repeatable) as every combination.
- :func:`load_variants`: ``--variants FILE``: a JSON or YAML list of ``{name, options}``.
- :func:`check_variants`: refuse, before any build, a key the chosen backend ignores, a key
  given both fixed and varied, and values the config check refuses (harness.config).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import cli
from harness.errors import ConfigError

TORCH_KEYS = ("precision", "torch_compile", "uint8_input")
BUILD_KEYS = tuple(dest for dest, _ in cli.BUILD_FLAGS.values())
# soc_version names the chips' type (an .om runs only on its own): not a choice to compare
KNOWN_KEYS = tuple(k for k in BUILD_KEYS if k != "soc_version") + TORCH_KEYS
ATC_KEYS = ("precision_mode", "precision_mode_v2", "op_precision_mode", "op_select_implmode",
            "keep_dtype", "modify_mixlist")
# What each backend's session depends on. The .om is compiled from the fp32 ONNX (so
# onnx_precision changes nothing there); ATC options reach only the .om; torch loads the
# checkpoint, so of the build options only the batch reaches it.
BACKEND_KEYS = {
    "om": ("input_dtype", "batch", "views_per_call", "opset", *ATC_KEYS),
    "onnxruntime": ("input_dtype", "batch", "views_per_call", "opset", "onnx_precision"),
    "torch": ("batch", *TORCH_KEYS),
}
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class Variant:
    """One point of the sweep: a name, its folder name, and the options it sets."""

    name: str
    slug: str                                   # its run's folder under the sweep's work dir
    options: dict[str, Any] = field(default_factory=dict)   # key -> value (typed by the flag)

    def flags(self) -> list[str]:
        """The ``harness.run`` flags that set these options."""
        out: list[str] = []
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                out += [flag] if value else []
            else:
                out += [flag, str(value)]
        return out


def _actions() -> dict[str, argparse.Action]:
    from harness.run import _parser

    return {a.dest: a for a in _parser()._actions if a.dest in KNOWN_KEYS}


def coerce(key: str, text: Any) -> Any:
    """``text`` as the flag of ``key`` would read it; a ConfigError names the fix."""
    if key == "soc_version":
        raise ConfigError("soc_version names the chips' type, not a choice to compare (an .om"
                          " runs only on its chip type): give it once as --soc-version")
    if key not in KNOWN_KEYS:
        raise ConfigError(f"{key!r} is not an option a sweep can vary; the known keys are:"
                          f" {', '.join(KNOWN_KEYS)}")
    action = _actions()[key]
    if action.nargs == 0:                       # a switch (--torch-compile): on or off
        word = str(text).strip().lower()
        if word not in _TRUE + _FALSE:
            raise ConfigError(f"{key}={text!r}: {key} is a switch; give true or false")
        return word in _TRUE
    text = str(text).strip()
    try:
        value = action.type(text) if action.type else text
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{key}={text!r}: {exc}") from None
    if action.choices and value not in action.choices:
        raise ConfigError(f"{key}={text!r} is not one of: {', '.join(map(str, action.choices))}")
    return value


def slug_of(name: str) -> str:
    """A folder name for a variant: letters, digits and ``.-_`` only."""
    text = re.sub(r"\s+", "_", name.strip()).replace("=", "-").replace("/", "_")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "variant"


def _name(options: dict[str, Any]) -> str:
    def word(value: Any) -> str:
        if isinstance(value, bool):
            return "on" if value else "off"
        text = str(value)
        return Path(text).name if "/" in text else text   # files by their name

    return " ".join(f"{key}={word(value)}" for key, value in options.items())


def parse_vary(items: list[str]) -> dict[str, list[Any]]:
    """``["precision_mode=a,b", "batch=1,2"]`` -> ``{"precision_mode": [a, b], "batch": [1, 2]}``."""
    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ConfigError(f"--vary {item!r}: write KEY=V1,V2 (e.g. --vary"
                              " precision_mode=force_fp16,must_keep_origin_dtype)")
        if key in out:
            raise ConfigError(f"--vary names {key} twice: give its values in one --vary {key}=V1,V2")
        words = [v for v in values.split(",") if v.strip()]
        out[key] = list(dict.fromkeys(coerce(key, v) for v in words))
    return out


def cross_product(vary: dict[str, list[Any]]) -> list[Variant]:
    """Every combination of the values, in the order given (the first key varies slowest)."""
    keys = list(vary)
    variants = []
    for values in itertools.product(*(vary[k] for k in keys)):
        options = dict(zip(keys, values))
        variants.append(Variant(_name(options), slug_of(_name(options)), options))
    return variants


def load_variants(path: str | Path) -> list[Variant]:
    """A JSON or YAML list of ``{"name": ..., "options": {key: value}}`` (name optional)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the variants file {path}: {exc.strerror}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            items = yaml.safe_load(text)
        else:
            items = json.loads(text)
    except Exception as exc:   # (json's and yaml's errors share no base class)
        raise ConfigError(f"the variants file {path} is not valid {path.suffix[1:] or 'JSON'}:"
                          f" {str(exc).splitlines()[0]}") from None
    if not isinstance(items, list) or not items:
        raise ConfigError(f"the variants file {path} must hold a list of"
                          " {\"name\": ..., \"options\": {KEY: VALUE}}")
    variants = []
    for k, item in enumerate(items):
        options = item.get("options") if isinstance(item, dict) else None
        if not isinstance(options, dict):
            raise ConfigError(f"variant {k + 1} of {path} has no \"options\" object; write"
                              " {\"name\": ..., \"options\": {KEY: VALUE}}")
        typed = {key: coerce(key, value) for key, value in options.items()}
        name = str(item.get("name") or _name(typed) or "as given")
        variants.append(Variant(name, slug_of(name), typed))
    return variants


def check_variants(variants: list[Variant], backend: str, fixed: dict[str, Any]) -> None:
    """Refuse, before any build, what would not vary anything or could not build.

    ``fixed``: the options the base command sets (flag given); a key may not be both."""
    allowed = BACKEND_KEYS[backend]
    keys = list(dict.fromkeys(k for v in variants for k in v.options))
    for key in keys:
        if key not in allowed:
            where = ("an ATC option, only the om backend (--npus) uses it" if key in ATC_KEYS
                     else "a torch option, only --backend torch uses it" if key in TORCH_KEYS
                     else "the .om is compiled from the fp32 ONNX, so it changes nothing there"
                     if key == "onnx_precision" else f"the {backend} backend does not use it")
            raise ConfigError(f"{key} cannot vary with --backend {backend}: {where}; with"
                              f" {backend} vary: {', '.join(allowed)}")
        if fixed.get(key) not in (None, False):
            raise ConfigError(f"{key} is both given as --{key.replace('_', '-')} and varied:"
                              " drop one of them")
    slugs = [v.slug for v in variants]
    twice = sorted({s for s in slugs if slugs.count(s) > 1})
    if twice:
        raise ConfigError(f"two variants have the folder name {twice[0]!r}: give them distinct"
                          " names")
