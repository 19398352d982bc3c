"""``MirrorOptions``: what one mirror run does, with every default in one place.

``comfyfleet mirror`` builds it from argparse, the ``mirror-models`` flow from its
parameters; both hand it to :func:`comfyfleet.mirror.driver.mirror_models`, so a default
cannot differ between the two faces.

Which files (:func:`select_models`):

- ``ids`` when given (the profile is then ignored);
- else ``profile`` (``auto`` is refused: it is chosen per instance at warm-up);
- else, with user catalog files (``--catalog user.yaml``), **every entry of those files**
  (the built-in catalog, when also named, only resolves references);
- else the built-in catalog's ``minimal`` profile (:data:`DEFAULT_PROFILE`).

Tokens come from a :data:`TokenSource`, called only when a selected file's source may
need one (Hugging Face, CivitAI), so a missing tokens block never fails URL or s3 files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from comfyfleet.catalog import AUTO_PROFILE, BUILTIN_CATALOG, Catalog, ModelFile, load_catalog
from comfyfleet.errors import CatalogError, ConfigError
from comfyfleet.mirror.upload import TransferSettings
from comfyfleet.sources import Tokens
from comfyfleet.store import ObjectStore, open_store

DEFAULT_PROFILE = "minimal"
DEFAULT_PARALLEL = 3
DEFAULT_FILE_ATTEMPTS = TransferSettings.file_attempts

TokenSource = Callable[[], Tokens]
"""Returns the source tokens; may raise (a missing Prefect block, say)."""

# Sources that may need a token; url and s3 sources never do.
TOKEN_SOURCES = frozenset({"hf", "civitai"})

DEFAULT_SELECTION_HELP = (
    f"with --catalog, every entry of the given files; else the built-in "
    f"catalog's '{DEFAULT_PROFILE}' profile"
)


@dataclass(frozen=True)
class MirrorOptions:
    """One mirror run.

    Attributes:
        catalog_paths: catalog files (``builtin`` = the shipped one); empty = built-in only.
        profile: the profile to mirror; None = the default selection (module docstring).
        ids: only these model ids (wins over ``profile``).
        force: download again even when the store holds the file.
        parallel: files at once (memory per file is bounded, see ``TransferSettings``).
        store: store URI; None = ``$COMFYFLEET_STORE``, else ``~/.comfyfleet/store``.
        file_attempts: starts of one file after a transient failure (the CLI's library
            driver owns whole-file retries: 3; a flow passes ``FLOW_FILE_ATTEMPTS`` = 1
            because its task retries the file, see the retry rule in ``errors.py``).
        settings: part size, parts in flight, stream reopens (``file_attempts`` above wins).
        tokens: where source tokens come from; default the environment.
    """

    catalog_paths: tuple[str, ...] = ()
    profile: str | None = None
    ids: tuple[str, ...] = ()
    force: bool = False
    parallel: int = DEFAULT_PARALLEL
    store: str | None = None
    file_attempts: int = DEFAULT_FILE_ATTEMPTS
    settings: TransferSettings = field(default_factory=TransferSettings)
    tokens: TokenSource = Tokens.from_env

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise ConfigError(
                f"parallel must be at least 1, got {self.parallel}", hint="use e.g. parallel 3"
            )
        if self.file_attempts < 1:
            raise ConfigError(f"file_attempts must be at least 1, got {self.file_attempts}")
        if self.profile == AUTO_PROFILE:
            raise CatalogError(
                "mirror needs a concrete profile: 'auto' is chosen on each instance at warm-up",
                hint="name a profile (e.g. --profile full), or --only ID ...",
            )

    def transfer_settings(self) -> TransferSettings:
        """``settings`` with this run's ``file_attempts``."""
        return replace(self.settings, file_attempts=self.file_attempts)

    def open_store(self) -> ObjectStore:
        """The store ``store`` names (the default store when None)."""
        return open_store(self.store)


def _user_files(paths: Sequence[str]) -> list[str]:
    return [p for p in paths if p != BUILTIN_CATALOG]


def _check_profile(catalog: Catalog, profile: str) -> None:
    """Refuse an unknown profile with the names mirror accepts (never ``auto``)."""
    if profile not in catalog.profile_names():
        raise CatalogError(
            f"unknown profile {profile!r}",
            hint=f"known profiles: {', '.join(catalog.profile_names())}; "
            "or --only ID ... for single files",
        )


def select_models(options: MirrorOptions) -> list[ModelFile]:
    """The files ``options`` selects, in catalog order (see the module docstring)."""
    catalog = load_catalog(list(options.catalog_paths) or None)
    if options.ids:
        return catalog.select(ids=options.ids)
    if options.profile:
        _check_profile(catalog, options.profile)
        return catalog.select(profile=options.profile)
    user = _user_files(options.catalog_paths)
    if user:
        from comfyfleet.catalog import resolve_catalog_paths

        origins = {str(p) for p in resolve_catalog_paths(user)}
        return [m for m in catalog.models.values() if m.origin in origins]
    return catalog.select(profile=DEFAULT_PROFILE)


def needs_token(model: ModelFile) -> bool:
    """True when one of the model's sources may ask for a token (Hugging Face, CivitAI)."""
    return any(s.type in TOKEN_SOURCES for s in (model.source, *model.alternates))
