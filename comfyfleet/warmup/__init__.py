"""Warm-up: a fresh GPU instance from the mirror to a ComfyUI that answers, timed per phase.

- ``options``: ``WarmupOptions``, every warm-up option once (default, check, CLI flag).
- ``driver``: ``warm_up(options, ...)`` runs the phases (preflight, pull, place, ComfyUI up,
  first prompt) for the CLI and the flow alike; ``bake`` for image builds.
- ``plan``: which profile and files, from the store's manifest or the baked one.
- ``result``: the result document; ``events``: event names and payload keys.
- ``gpu``: instance facts (GPUs, VRAM, disk, CPUs) from ``nvidia-smi`` through a ``Runner``.
- ``profiles``: which profile to pull (``auto`` from the facts, or the one asked for).
- ``lock``: one warm-up per ComfyUI root; ``baked``: the pre-baked image's manifest and check.
- ``timing``: the phase clock and the targets; ``reports``: history table, timeline, text.

Starting and supervising the ComfyUI process is ``comfyfleet.comfy.process``.
"""
