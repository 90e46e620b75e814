"""The backend registry: how ``--rmb-model SPEC`` turns into a model.

A spec is ``scheme:rest``. A bare name is a built-in baseline (``length``, ``random``) when it is
one, else a Hugging Face model id or local checkpoint (``hf:`` says so explicitly). Schemes come
from three places, in this order: pytest-rmb's own, the ``pytest_rmb.backends`` entry-point group
(so an installed package adds a backend with an entry point alone), and the
``pytest_rmb_add_backends`` hook (so a ``conftest.py`` can). Each backend declares the
``--rmb-model-arg KEY=VALUE`` settings it accepts; they are validated before anything loads.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pytest_rmb.models import PairwiseModel, PointwiseModel

# The parsers a ModelArg takes, importable from here too: a backend package then needs this module
# alone (Backend, ModelArg and the parsers of its settings), as docs/how-to/backend-package.md shows.
from pytest_rmb.parsers import (  # noqa: F401
    boolean,
    choice,
    closest_names,
    env_var_name,
    integer,
    looks_like_key,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    text_value,
    type_name,
)

ENTRY_POINT_GROUP = "pytest_rmb.backends"
# pytest-rmb's own backends, imported only when used (the HF one imports torch).
BUILTIN = {
    "baseline": "pytest_rmb.backends.baselines:BACKEND",
    "dpo": "pytest_rmb.backends.dpo:BACKEND",
    "hf": "pytest_rmb.backends.hf:BACKEND",
    "hf-judge": "pytest_rmb.backends.hf_judge:BACKEND",
    "openai": "pytest_rmb.backends.openai:BACKEND",
    "panel": "pytest_rmb.backends.panel:BACKEND",
    "python": "pytest_rmb.backends.python:BACKEND",
    "sglang": "pytest_rmb.backends.served:SGLANG_BACKEND",
    "vllm": "pytest_rmb.backends.served:VLLM_BACKEND",
}
# The last word of a setting's or an environment variable's name that says it holds a credential
# (api_key, HF_TOKEN, OPENAI_API_KEY; not max_tokens or api_key_env, which hold a number or a name).
CREDENTIAL_WORDS = ("key", "token", "secret", "password", "credentials")
# How a backend behind a server spreads requests over several base URLs (``routing=``): by the
# conversation (pytest_rmb.http.replica_for), so a replica's prefix cache serves it, or in turn.
ROUTINGS = ("affinity", "round-robin")
# Bare names that are not Hugging Face ids: the baselines.
BASELINE_NAMES = ("length", "random")


class ModelLoadError(Exception):
    """``--rmb-model`` names something that cannot be turned into a model."""


class RMBWarning(UserWarning):
    """Something about the model the user should know, shown once per run."""


class BackendError(ValueError):
    """A spec or a ``--rmb-model-arg`` that no backend accepts; the message says what would be."""


@dataclass(frozen=True)
class ModelArg:
    """One ``--rmb-model-arg KEY=VALUE`` setting a backend accepts."""

    name: str
    parse: Callable[[str], Any]
    default: Any = None
    help: str = ""

    @property
    def type_name(self) -> str:
        return type_name(self.parse)


@dataclass(frozen=True)
class ModelSettings:
    """Everything a backend may need from the command line, in one immutable bundle."""

    model: str
    seed: int = 0
    revision: str | None = None
    trust_remote_code: bool = False
    device: str = "auto"
    dtype: str = "auto"
    max_length: int | None = None
    attn_implementation: str | None = None
    chat_template: str | None = None
    reward_index: int | None = None
    device_map: str | None = None
    # The pytest-xdist worker number (gw3 -> 3), None in a single process: picks the GPU.
    worker_index: int | None = None
    # The validated --rmb-model-arg settings, defaults filled in.
    args: Mapping[str, Any] = field(default_factory=dict)
    # --rmb-prefix-sharing: auto|on|off (decoder models score each conversation prefix once).
    prefix_sharing: str = "auto"

    @property
    def target(self) -> str:
        """The spec without its scheme: what the backend loads."""
        return split_spec(self.model)[1]


@dataclass(frozen=True)
class Backend:
    """A scheme and how to load a model for it.

    ``load(settings)`` returns a :class:`PointwiseModel` or :class:`PairwiseModel`.
    ``accepts_any_args`` lets a backend take keys it cannot know in advance (``python:`` hands
    them to the user's factory).
    """

    scheme: str
    load: Callable[[ModelSettings], PointwiseModel | PairwiseModel]
    args: tuple[ModelArg, ...] = ()
    summary: str = ""
    accepts_any_args: bool = False
    source: str = "pytest-rmb"
    # Builds the model without its weights or a server's answer, which its ``load()`` fetches on
    # first need: what a run uses, so that a rerun the score cache answers in full loads nothing.
    # None: ``load`` is all the backend has.
    prepare: Callable[[ModelSettings], PointwiseModel | PairwiseModel] | None = None
    # The spec may end at the scheme (``panel:``): the model is named by its settings instead.
    name_optional: bool = False

    def parse_args(self, given: Sequence[tuple[str, str]]) -> dict[str, Any]:
        """Validate ``KEY=VALUE`` pairs against the declared args; defaults fill the rest."""
        declared = {arg.name: arg for arg in self.args}
        values: dict[str, Any] = {arg.name: arg.default for arg in self.args}
        for key, text in given:
            arg = declared.get(key)
            if arg is None:
                if self.accepts_any_args:
                    values[key] = text
                    continue
                accepted = ", ".join(declared) or "none"
                close = closest_names(key, declared, count=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise BackendError(f"--rmb-model-arg {key}: the {self.scheme} backend has no setting {key!r}{hint}; "
                                   f"accepted: {accepted}")
            try:
                values[key] = arg.parse(text)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise BackendError(f"--rmb-model-arg {key}: {without_credentials(str(exc), key, text)}") from None
        return values


def is_credential_name(name: str) -> bool:
    return name.lower().rsplit("_", 1)[-1] in CREDENTIAL_WORDS


def without_credentials(message: str, key: str, text: str) -> str:
    """A parser's message about the value ``text`` of setting ``key`` with every credential in it
    masked, and the rest of the user's own text left to read (``got 'localhost:8000'``).

    A credential is: the whole value of a credential setting (``api_key=...``) or of one shaped like
    a key (one pasted into the wrong setting, ``n=sk-...``), the password of a URL in it, and a key
    that an environment variable holds (``$OPENAI_API_KEY`` pasted in), in each form http.py scrubs.
    """
    from pytest_rmb.http import SCRUBBED, secret_forms

    if is_credential_name(key) or looks_like_key(text):
        return message.replace(text, SCRUBBED).replace(text.strip() or text, SCRUBBED)
    keys = [value for name, value in os.environ.items() if is_credential_name(name) and value.strip()]
    forms = {form for held in keys for form in secret_forms((), held.strip())}
    forms.update(secret_forms(text.split(","), None))
    for form in sorted((f for f in forms if f in text), key=len, reverse=True):
        message = message.replace(form, SCRUBBED)
    return message


def split_spec(spec: str) -> tuple[str, str]:
    """``openai:gpt-4o`` -> (``openai``, ``gpt-4o``); a bare spec -> (``hf`` or ``baseline``, spec)."""
    if spec in BASELINE_NAMES:
        return "baseline", spec
    scheme, sep, rest = spec.partition(":")
    if sep and _looks_like_scheme(scheme) and not Path(spec).exists():
        return scheme, rest
    return "hf", spec


def _looks_like_scheme(text: str) -> bool:
    return bool(text) and text[0].isalpha() and all(c.isalnum() or c in "-_" for c in text)


def model_args(pairs: Iterable[str]) -> list[tuple[str, str]]:
    """``KEY=VALUE`` strings -> pairs; a string without ``=`` is an error naming it."""
    parsed = []
    for text in pairs:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise BackendError(f"--rmb-model-arg {text!r}: expected KEY=VALUE")
        parsed.append((key.strip(), value))
    return parsed


def _as_backend(found: object, where: str) -> Backend:
    backend = found() if callable(found) and not isinstance(found, Backend) else found
    if not isinstance(backend, Backend):
        raise BackendError(f"{where} is not a pytest_rmb.backends.Backend")
    return backend


class BackendRegistry:
    """Every installed scheme; a backend's module is imported only when its scheme is used."""

    def __init__(self, extra: Iterable[Backend] = ()):
        self._targets: dict[str, tuple[str, str]] = {
            scheme: (target, "pytest-rmb") for scheme, target in BUILTIN.items()
        }
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            # pytest-rmb's own schemes are declared in its pyproject.toml too.
            self._targets.setdefault(entry.name, (entry.value, f"entry point {entry.value}"))
        self._loaded: dict[str, Backend] = {}
        for backend in extra:
            if backend.scheme in self._targets or backend.scheme in self._loaded:
                raise BackendError(f"backend {backend.scheme!r} from {backend.source} is already installed")
            self._loaded[backend.scheme] = backend

    def schemes(self) -> list[str]:
        return sorted({*self._targets, *self._loaded})

    def get(self, scheme: str) -> Backend | None:
        if scheme not in self._loaded and scheme in self._targets:
            target, source = self._targets[scheme]
            module_name, _, attribute = target.partition(":")
            where = f"{target} ({source})"
            backend = _as_backend(getattr(importlib.import_module(module_name), attribute), where)
            self._loaded[scheme] = backend if source == "pytest-rmb" else _with_source(backend, source)
        return self._loaded.get(scheme)

    def all(self) -> dict[str, Backend]:
        return {scheme: backend for scheme in self.schemes() if (backend := self.get(scheme)) is not None}


def installed_backends(extra: Iterable[Backend] = ()) -> BackendRegistry:
    """pytest-rmb's own backends, then entry points, then the hook's ``extra`` ones."""
    return BackendRegistry(extra)


def _with_source(backend: Backend, source: str) -> Backend:
    if backend.source != "pytest-rmb":
        return backend
    return Backend(backend.scheme, backend.load, backend.args, backend.summary, backend.accepts_any_args, source)


def backend_for(spec: str, backends: BackendRegistry) -> Backend:
    """The backend of a spec; an unknown scheme is an error that lists the installed ones."""
    scheme, rest = split_spec(spec)
    backend = backends.get(scheme)
    if backend is None:
        raise BackendError(f"--rmb-model {spec}: unknown backend scheme {scheme!r}; installed: "
                           f"{', '.join(backends.schemes())} (and the baselines {', '.join(BASELINE_NAMES)})")
    if not rest and not backend.name_optional:
        raise BackendError(f"--rmb-model {spec}: nothing after '{scheme}:'; expected {scheme}:NAME")
    return backend


def prepared_then_loaded(prepare: Callable[[ModelSettings], Any]) -> Callable[[ModelSettings], Any]:
    """The ``load`` of a backend that can ``prepare``: prepare, then load at once, so that every
    load error shows here."""
    def load(settings: ModelSettings) -> Any:
        model = prepare(settings)
        model.load()
        return model

    return load


def load_model(settings: ModelSettings, backend: Backend, lazy: bool = False) -> PointwiseModel | PairwiseModel:
    """Load the spec's model with its backend; whatever it returns must be a model of one kind.
    ``lazy``: only prepare it where the backend can (the model's ``load()`` does the rest)."""
    model = backend.prepare(settings) if lazy and backend.prepare is not None else backend.load(settings)
    if not isinstance(model, (PointwiseModel, PairwiseModel)):
        raise ModelLoadError(f"--rmb-model {settings.model}: the {backend.scheme} backend returned "
                             f"{type(model).__name__}, not a PointwiseModel or PairwiseModel")
    return model


def load_spec(settings: ModelSettings) -> PointwiseModel | PairwiseModel:
    """Resolve ``settings.model`` and load it, outside pytest (scripts, benches, tests)."""
    backend = backend_for(settings.model, installed_backends())
    return load_model(settings, backend)


def main(argv: list[str] | None = None) -> int:
    """``pytest-rmb backends``: every installed scheme and its --rmb-model-arg keys."""
    if argv:
        print("usage: pytest-rmb backends", file=sys.stderr)
        return 2
    registry = installed_backends()
    backends: dict[str, Backend] = {}
    for scheme in registry.schemes():
        try:
            found = registry.get(scheme)
        except Exception as exc:  # noqa: BLE001 - a broken third-party backend must not hide the others
            print(f"{scheme}:  cannot be loaded: {type(exc).__name__}: {exc}")
            continue
        if found is not None:
            backends[scheme] = found
    print(describe_backends(backends))
    return 0


def describe_backends(backends: Mapping[str, Backend]) -> str:
    """The ``pytest-rmb backends`` listing: schemes, what they load, their settings."""
    lines = []
    for scheme in sorted(backends):
        backend = backends[scheme]
        source = f"  [{backend.source}]" if backend.source != "pytest-rmb" else ""
        lines.append(f"{scheme}:  {backend.summary}{source}")
        for arg in backend.args:
            default = "" if arg.default is None else f" (default {arg.default})"
            lines.append(f"    {arg.name}={arg.type_name.upper()}{default}  {arg.help}")
        if backend.accepts_any_args:
            lines.append("    KEY=VALUE  any other setting is passed on as a string")
    return "\n".join(lines)
