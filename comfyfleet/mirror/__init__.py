"""Mirror: sources (Hugging Face, CivitAI, URL, s3://) -> the object store, sha256-verified.

- ``options``: ``MirrorOptions`` (what one run does, every default in one place) and the
  file selection rule.
- ``driver``: ``mirror_models(options)`` (the driver the CLI and the flow share),
  ``mirror_files`` (a list of files, manifest updated) and ``mirror_file`` (one file).
- ``upload``: stream one source into the store with bounded memory, hashing on the fly, resumable.
- ``refresh``: ask each source what it holds now and report what changed; never replaces a file.
"""
