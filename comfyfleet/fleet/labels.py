"""Fleet membership: an instance belongs to fleet ``NAME`` when its label is
``comfyfleet:NAME``. The label is set when the instance is rented (the create call's
``label``), so an instance that exists at all is already findable by its fleet."""

from __future__ import annotations

import re

from comfyfleet.errors import ConfigError

FLEET_LABEL_PREFIX = "comfyfleet:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def fleet_label(fleet: str) -> str:
    """The label of fleet ``fleet``; refuses names that would not round-trip."""
    if not _NAME.match(fleet):
        raise ConfigError(
            f"fleet name {fleet!r} cannot be used",
            hint="use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return FLEET_LABEL_PREFIX + fleet


def fleet_of(label: str | None) -> str | None:
    """The fleet a label names, or None for instances comfyfleet did not rent."""
    if not label or not label.startswith(FLEET_LABEL_PREFIX):
        return None
    return label[len(FLEET_LABEL_PREFIX) :] or None
