"""The charts of the HTML outputs (``--rmb-html``, ``leaderboard --html``, ``validity --plot``):
matplotlib figures as SVG text, drawn without pyplot or a display.

matplotlib is optional (``pip install 'pytest-rmb[report]'``): without it, the option that needs a
chart fails with one message naming the pip command, before any work.
"""

from __future__ import annotations

import io
from typing import Any

REPORT_EXTRA = "pip install 'pytest-rmb[report]' (or: pip install matplotlib)"


class ChartsUnavailable(RuntimeError):
    """matplotlib is not installed; the message names the option that needs it and the pip command."""


def require_matplotlib(option: str) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ChartsUnavailable(f"{option} draws its charts with matplotlib, which is not installed: "
                                f"{REPORT_EXTRA}") from None


def new_figure(option: str, **kwargs: Any) -> Any:
    """A matplotlib figure; :class:`ChartsUnavailable` naming ``option`` without matplotlib."""
    require_matplotlib(option)
    import matplotlib
    from matplotlib.figure import Figure

    # Text stays text (searchable, smaller) and ids are stable from run to run.
    matplotlib.rcParams["svg.fonttype"] = "none"
    matplotlib.rcParams["svg.hashsalt"] = "pytest-rmb"
    return Figure(**kwargs)


def figure_svg(figure: Any, *, inline: bool, tight: bool = False) -> str:
    """The figure as SVG text; ``inline`` drops what an SVG inside HTML does not need (the XML
    declaration, the doctype and the namespace URLs), so that the page names no address at all;
    ``tight`` crops the figure to what is drawn."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight" if tight else None,
                   metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    if inline:
        text = text[text.index("<svg"):]
        for attribute in (' xmlns="http://www.w3.org/2000/svg"', ' xmlns:xlink="http://www.w3.org/1999/xlink"'):
            text = text.replace(attribute, "")
    return text
