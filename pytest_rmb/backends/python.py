"""``python:package.module:factory``: the user's own Python object as the model.

The factory may take the settings (device, dtype, seed, ``--rmb-model-arg`` values in
``settings.args``) or nothing at all, and returns anything :func:`pytest_rmb.models.as_model`
accepts: an object with ``score(batch)`` or ``compare(batch)``, or a model subclass.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

from pytest_rmb.backends import Backend, ModelLoadError, ModelSettings
from pytest_rmb.models import ModelTypeError, PairwiseModel, PointwiseModel, as_model

PREFIX = "python:"


def load_python_object(settings: ModelSettings) -> PointwiseModel | PairwiseModel:
    target = settings.target
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ModelLoadError(f"--rmb-model {PREFIX}{target}: expected {PREFIX}package.module:factory")
    # As `python -m` would: a module beside the user is importable (the my_rms.py example of the docs).
    here = str(Path.cwd())
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"--rmb-model {PREFIX}{target}: cannot import {module_name!r}: {exc}") from exc
    try:
        factory = getattr(module, attribute)
    except AttributeError:
        raise ModelLoadError(
            f"--rmb-model {PREFIX}{target}: module {module_name!r} has no attribute {attribute!r}"
        ) from None
    # A factory may take the settings (device, dtype, seed ...) or nothing at all.
    takes_settings = bool(inspect.signature(factory).parameters)
    obj = factory(settings) if takes_settings else factory()
    try:
        return as_model(obj)
    except ModelTypeError as exc:
        raise ModelLoadError(f"--rmb-model {PREFIX}{target}: {exc}") from None


BACKEND = Backend(
    "python", load_python_object, accepts_any_args=True,
    summary="python:package.module:factory, your own object with score(batch) or compare(batch)",
)
