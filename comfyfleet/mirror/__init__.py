"""Mirror: sources (Hugging Face, CivitAI, URL, s3://) -> the object store, sha256-verified.

- ``driver``: ``mirror_model`` (one file) and ``mirror_models`` (a set of them, manifest updated).
- ``upload``: stream one source into the store with bounded memory, hashing on the fly, resumable.
- ``refresh``: ask each source what it holds now and report what changed; never replaces a file.
"""
