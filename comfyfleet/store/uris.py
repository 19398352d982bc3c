"""Showing store URIs safely: credentials typed into a URI never reach a message or a log.

``s3://KEY:SECRET@bucket/p`` is not a form comfyfleet accepts (credentials come from the
AWS chain or a store block), but a user may type it, and an endpoint URL may carry
``user:password@`` too. Every place that shows a URI passes it through
:func:`redact_uri` first: the userinfo becomes ``***``, whatever the scheme and however
many slashes were typed.
"""

from __future__ import annotations

import re

# "scheme:" then up to three slashes, then userinfo ending in "@" before any "/", "?", "#".
_AT_START = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*:/{0,3})(?P<userinfo>[^/?#@\s]+)@")
# Anywhere later in a text (a message quoting an endpoint): "//userinfo@".
_ANYWHERE = re.compile(r"(?P<head>//)(?P<userinfo>[^/?#@\s]+)@")


def redact_uri(text: str) -> str:
    """``text`` with the userinfo of every URI in it replaced by ``***``."""
    text = _AT_START.sub(r"\g<head>***@", text)
    return _ANYWHERE.sub(r"\g<head>***@", text)


def has_userinfo(text: str) -> bool:
    """True when ``text`` starts with a URI that carries ``user[:password]@``."""
    return _AT_START.match(text) is not None
