"""Import mmaction2 1.2.0, the reference the parity tests compare against.

Its PyPI wheel lacks ``mmaction/models/localizers/drn``, so ``import mmaction.models``
fails as shipped. We register an empty stand-in for that one module in ``sys.modules``
before importing (site-packages stays untouched); nothing the tests use comes from it.

Locally the reference may be absent: tests then skip with the install command.
With ``HARNESS_REQUIRE_REFERENCE=1`` (set by .ci/run) a missing reference fails instead,
so CI can never pass by skipping the parity tests.
"""

from __future__ import annotations

import os
import sys
import types

import pytest

INSTALL_HINT = "pip install --no-deps -r tests/reference-requirements.txt"


def _stub_missing_drn() -> None:
    name = "mmaction.models.localizers.drn"
    if name in sys.modules:
        return
    drn = types.ModuleType(name)
    drn_inner = types.ModuleType(name + ".drn")

    class DRN:  # placeholder for the model the wheel forgot to ship
        def __init__(self, *args, **kwargs):
            raise RuntimeError("mmaction2 1.2.0's DRN is missing from its wheel")

    drn_inner.DRN = DRN
    drn.drn = drn_inner
    sys.modules[name] = drn
    sys.modules[name + ".drn"] = drn_inner


def require_mmaction():
    """Return the ``mmaction`` package (models importable), or skip/fail as documented above."""
    try:
        import mmaction  # noqa: F401
    except ImportError:
        if os.environ.get("HARNESS_REQUIRE_REFERENCE") == "1":
            pytest.fail(f"mmaction2 1.2.0 (the parity reference) is not installed: {INSTALL_HINT}")
        pytest.skip(f"mmaction2 1.2.0 reference not installed ({INSTALL_HINT})")
    _stub_missing_drn()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mmaction.models  # noqa: F401
    import mmaction

    return mmaction


def reference_swin3d():
    """mmaction2 1.2.0's ``SwinTransformer3D`` class."""
    require_mmaction()
    from mmaction.models.backbones.swin import SwinTransformer3D

    return SwinTransformer3D
