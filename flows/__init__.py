"""Prefect flows: thin wrappers over the comfyfleet library (mirror, warm-up, generate)."""
