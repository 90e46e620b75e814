"""mkdocs hook: the reference pages that are generated from the package at build time.

A page's Markdown source holds a marker such as ``<!-- generated: options -->``; ``on_page_markdown``
replaces it with what the package says today, so the options, backends and run-summary reference
cannot drift from the code. tests/test_readme.py calls the three ``*_markdown`` functions too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Document the checkout these docs belong to, whatever else is installed.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCHEMA_PATH = ROOT / "pytest_rmb" / "summary.schema.json"

def options_markdown() -> str:
    """Every ``--rmb-*`` option and ini setting, from ``pytest_rmb.options.options_reference()``."""
    from pytest_rmb.options import options_reference

    return options_reference()


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def backends_markdown() -> str:
    """pytest-rmb's own backends and their ``--rmb-model-arg`` settings (what ``pytest-rmb
    backends`` lists), leaving out any third-party backend installed where the docs are built."""
    from pytest_rmb.backends import installed_backends

    own = {scheme: backend for scheme, backend in installed_backends().all().items()
           if backend.source == "pytest-rmb"}
    out = []
    for scheme in sorted(own):
        backend = own[scheme]
        out += [f"### `{scheme}:`", "", _cell(backend.summary), ""]
        if backend.args:
            out += ["| setting | type | default | meaning |", "| --- | --- | --- | --- |"]
            for arg in backend.args:
                default = "" if arg.default is None else f"`{arg.default}`"
                out.append(f"| `{arg.name}` | {_cell(arg.type_name)} | {default} | {_cell(arg.help)} |")
            out.append("")
        if backend.accepts_any_args:
            out += ["Any other `KEY=VALUE` is passed on as a string.", ""]
        if not backend.args and not backend.accepts_any_args:
            out += ["No `--rmb-model-arg` settings.", ""]
    return "\n".join(out)


def _type_of(spec: dict[str, Any]) -> str:
    if "$ref" in spec:
        return f"`{spec['$ref'].rsplit('/', 1)[-1]}`"
    for combinator in ("anyOf", "oneOf"):
        if combinator in spec:
            return " or ".join(_type_of(option) for option in spec[combinator])
    if "const" in spec:
        return f"`{json.dumps(spec['const'])}`"
    if "enum" in spec:
        return " or ".join(f"`{json.dumps(value)}`" for value in spec["enum"])
    kind = spec.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    if "array" in kinds and isinstance(spec.get("items"), dict):
        kinds = [f"array of {_type_of(spec['items'])}" if k == "array" else k for k in kinds]
    return " or ".join(kinds)


def _properties_table(schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", ()))
    out = ["| property | type | required | description |", "| --- | --- | --- | --- |"]
    for name, spec in schema.get("properties", {}).items():
        out.append(f"| `{name}` | {_cell(_type_of(spec))} | {'yes' if name in required else ''} | "
                   f"{_cell(spec.get('description', ''))} |")
    return out


def summary_markdown() -> str:
    """The run summary's properties as tables, top level then each named part, then the whole schema."""
    text = SCHEMA_PATH.read_text(encoding="utf-8")
    schema = json.loads(text)
    out = _properties_table(schema)
    for condition in schema.get("allOf", ()):
        status = condition["if"]["properties"]["status"]
        which = " or ".join(f"`{value}`" for value in status.get("enum", [status.get("const")]))
        keys = ", ".join(f"`{key}`" for key in condition["then"]["required"])
        out += ["", f"With `status` {which}, also required: {keys}."]
    for name, part in schema.get("$defs", {}).items():
        out += ["", f"### `{name}`", ""]
        if part.get("description"):
            out += [_cell(part["description"]), ""]
        out += _properties_table(part)
    out += ["", "The whole schema (`pytest_rmb/summary.schema.json`, also printed by `pytest-rmb schema`):", "",
            "```json", text.rstrip(), "```", ""]
    return "\n".join(out)


GENERATED = {
    "options": options_markdown,
    "backends": backends_markdown,
    "summary-schema": summary_markdown,
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    for name, render in GENERATED.items():
        marker = f"<!-- generated: {name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown
