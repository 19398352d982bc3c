"""Generate: a jobs table driven through ComfyUI with its queue kept full, outputs in the store.

- ``batch``: ``BatchOptions`` (every option, one default each), ``run_batch`` (the engine) and
  ``generate_from_file`` (the one driver the CLI and the flow both call).
- ``api``: ``ComfyBatchAPI``, the part of ComfyUI a batch uses.
- ``preflight``: the pre-submit check (a prompt reaches ComfyUI only once it fits).
- ``results``: one row per job (``results.parquet``), the report, where outputs are stored.
- ``video``: the video stage policy (this ComfyUI when it can, else fal.ai).
- ``jobs``: the jobs table (CSV, JSONL, Parquet) read and validated.
- ``loras``: make a job's LoRAs loadable before its prompt is queued.
- ``fal``: fal.ai's queue API for video stages run off the instance.
"""
