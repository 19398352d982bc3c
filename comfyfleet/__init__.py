"""comfyfleet: mirror models to your bucket, warm up GPU instances, batch-drive ComfyUI."""

from __future__ import annotations

__version__ = "0.1.0"
