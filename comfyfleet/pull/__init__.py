"""Pull: store -> ComfyUI's model folders, parallel ranged reads verified while written.

- ``transfer``: the pull engine (plan, check, download, verify, place atomically, resume).
- ``httprange``: ranged GETs of presigned URLs received straight into the caller's buffer.
- ``disk``: free space and the preflight that refuses a pull before its first byte.
"""
