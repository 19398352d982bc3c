"""Warm-up: a fresh GPU instance from the mirror to a ComfyUI that answers, timed per phase.

- ``driver``: ``warm_up`` runs the phases (preflight, pull, place, ComfyUI up, first prompt).
- ``gpu``: instance facts (GPUs, VRAM, disk, CPUs) from ``nvidia-smi`` through a ``Runner``.
- ``profiles``: which profile to pull (``auto`` from the facts, or the one asked for).
- ``lock``: one warm-up per ComfyUI root; ``baked``: the pre-baked image's manifest and check.
- ``timing``: the phase clock and the targets; ``reports``: history table, timeline, text.
"""
