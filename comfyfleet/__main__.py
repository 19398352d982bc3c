"""``python -m comfyfleet`` is the ``comfyfleet`` command."""

from __future__ import annotations

from comfyfleet.cli import main

raise SystemExit(main())
