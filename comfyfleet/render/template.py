"""A tiny, strict template renderer for the start-up assets shipped as package data.

The templates (``comfyfleet/render/templates/*.tmpl``) are bash and Dockerfile text, where
``$`` and ``{}`` already mean something, so placeholders are spelled ``@@name@@``. Rendering
is strict both ways: a placeholder without a value and a value without a placeholder are
errors (a renamed placeholder cannot silently leave a hole or drop a setting). Values are
inserted as given: the caller quotes them for the target language.

Templates are read through :mod:`importlib.resources`, so they render the same from a
checkout, an installed wheel or a zip.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources

PLACEHOLDER = re.compile(r"@@([a-z_][a-z0-9_]*)@@")
TEMPLATE_PACKAGE = "comfyfleet.render"
TEMPLATE_DIR = "templates"


def template_text(name: str) -> str:
    """The text of the packaged template ``name`` (e.g. ``onstart.sh.tmpl``)."""
    return resources.files(TEMPLATE_PACKAGE).joinpath(TEMPLATE_DIR, name).read_text("utf-8")


def placeholders(text: str) -> set[str]:
    """Every placeholder name ``text`` uses."""
    return set(PLACEHOLDER.findall(text))


def render_text(text: str, values: Mapping[str, str]) -> str:
    """``text`` with every ``@@name@@`` replaced by ``values[name]``.

    Raises ``ValueError`` when a placeholder has no value or a value has no placeholder:
    both are bugs in the caller, never user input.
    """
    wanted = placeholders(text)
    missing = wanted - set(values)
    unused = set(values) - wanted
    if missing or unused:
        raise ValueError(
            f"template values do not match: missing {sorted(missing)}, unused {sorted(unused)}"
        )
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def render_template(name: str, values: Mapping[str, str]) -> str:
    """The packaged template ``name`` rendered with ``values`` (see :func:`render_text`)."""
    return render_text(template_text(name), values)
