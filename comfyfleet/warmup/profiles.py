"""Which profile a warm-up pulls: ``auto`` from the instance's facts, or the one asked for.

Rules (each one tested):

* ``auto`` looks at the profiles the catalog declares (its ``profiles:`` section; the
  implicit ``full``, every model, only when the catalog declares none, because ``full``
  also holds every optional extra and user LoRA: ask for it by name). It picks the
  largest (most bytes) whose VRAM floor fits the GPU and whose files fit the free disk
  with the margin. With the built-in catalog that is image-only below 24 GB and the
  video profile from 24 GB up.
* With no GPU (``--gpu none``, or no NVIDIA GPU found) there is no VRAM to size by:
  ``auto`` takes the smallest profile, the one a laptop or CI can hold.
* A profile asked for by name is checked against VRAM: too little is refused with the
  numbers, unless ``force`` (then it is a warning). Without a GPU the floor is not
  checked (ComfyUI runs on the CPU from RAM) and a warning says so.
* The disk must hold what is still to be written plus the margin, whatever ``force``
  says: refused with ``InsufficientDiskError`` naming how much is missing.
* When the store's manifest is known, a profile with models that are not mirrored (or
  mirrored with other bytes than the catalog pins) cannot be pulled: ``auto`` passes it
  over and says so; a named profile is refused with the command that fixes it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from comfyfleet.catalog import AUTO_PROFILE, Catalog, ModelFile
from comfyfleet.errors import ConfigError, InsufficientDiskError
from comfyfleet.pull.disk import DEFAULT_MARGIN_BYTES, DEFAULT_MARGIN_RATIO, required_bytes
from comfyfleet.units import format_bytes
from comfyfleet.warmup.gpu import InstanceFacts

NeededFn = Callable[[Sequence[ModelFile]], int]


@dataclass(frozen=True)
class ProfileFit:
    """How one profile measures up against this instance."""

    name: str
    models: tuple[ModelFile, ...]
    total_bytes: int
    needed_bytes: int  # still to be written (files already in place left out)
    min_vram_gb: float
    vram_ok: bool
    disk_ok: bool
    unmirrored: tuple[str, ...] = ()

    @property
    def mirrored(self) -> bool:
        return not self.unmirrored


@dataclass(frozen=True)
class ProfileChoice:
    """The profile a warm-up pulls, its models and why it was chosen."""

    name: str
    models: tuple[ModelFile, ...]
    total_bytes: int
    reason: str
    requested: str = AUTO_PROFILE
    min_vram_gb: float = 0.0
    needed_bytes: int = 0
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requested": self.requested,
            "reason": self.reason,
            "models": [m.id for m in self.models],
            "total_bytes": self.total_bytes,
            "needed_bytes": self.needed_bytes,
            "min_vram_gb": self.min_vram_gb,
            "warnings": list(self.warnings),
        }


def model_size(model: ModelFile, sizes: Mapping[str, int] | None = None) -> int:
    """The model's size: from the store's manifest when known, else the catalog's, else 0."""
    if sizes and model.key in sizes:
        return sizes[model.key]
    return model.size or 0


def candidate_names(catalog: Catalog) -> list[str]:
    """Profiles ``auto`` may pick: the declared ones, or ``full`` when none is declared."""
    return sorted(catalog.profiles) or ["full"]


def _has_gpu(facts: InstanceFacts) -> bool:
    return facts.vram_source != "none" or facts.vram_gb > 0


def _vram_text(facts: InstanceFacts) -> str:
    how = {"override": "--vram-gb", "nvidia-smi": facts.gpu_name}.get(facts.vram_source, "")
    return f"{facts.vram_gb:g} GB VRAM" + (f" ({how})" if how else "")


def measure(
    catalog: Catalog,
    facts: InstanceFacts,
    name: str,
    *,
    sizes: Mapping[str, int] | None = None,
    needed_bytes: NeededFn | None = None,
    mirrored: Collection[str] | None = None,
    margin_bytes: int = DEFAULT_MARGIN_BYTES,
    margin_ratio: float = DEFAULT_MARGIN_RATIO,
) -> ProfileFit:
    """Size profile ``name`` against ``facts`` (``mirrored``: model keys the store holds)."""
    models = tuple(catalog.select(profile=name))
    total = sum(model_size(m, sizes) for m in models)
    needed = needed_bytes(models) if needed_bytes else total
    floor = catalog.profile_min_vram(name)
    unmirrored = tuple(m.id for m in models if mirrored is not None and m.key not in mirrored)
    required = required_bytes(needed, margin_bytes=margin_bytes, margin_ratio=margin_ratio)
    return ProfileFit(
        name=name,
        models=models,
        total_bytes=total,
        needed_bytes=needed,
        min_vram_gb=floor,
        vram_ok=not _has_gpu(facts) or floor <= facts.vram_gb,
        disk_ok=required <= facts.free_disk_bytes,
        unmirrored=unmirrored,
    )


def _not_mirrored(fit: ProfileFit, store: str) -> ConfigError:
    where = f" in {store}" if store else ""
    return ConfigError(
        f"profile {fit.name}: {len(fit.unmirrored)} model(s) not mirrored{where}: "
        f"{', '.join(fit.unmirrored)}",
        hint=f"run `comfyfleet mirror --profile {fit.name}` first (same --catalog and store)",
    )


def _disk_error(
    fit: ProfileFit, facts: InstanceFacts, margin_bytes: int, ratio: float
) -> Exception:
    required = required_bytes(fit.needed_bytes, margin_bytes=margin_bytes, margin_ratio=ratio)
    return InsufficientDiskError(
        str(facts.target),
        needed=required,
        free=facts.free_disk_bytes,
        hint=f"profile {fit.name} needs {format_bytes(fit.needed_bytes)} of models plus a "
        f"{format_bytes(required - fit.needed_bytes)} margin; free space, attach a bigger "
        "disk, or pick a smaller profile",
    )


def choose_profile(
    catalog: Catalog,
    facts: InstanceFacts,
    *,
    requested: str = AUTO_PROFILE,
    margin_bytes: int = DEFAULT_MARGIN_BYTES,
    margin_ratio: float = DEFAULT_MARGIN_RATIO,
    sizes: Mapping[str, int] | None = None,
    needed_bytes: NeededFn | None = None,
    mirrored: Collection[str] | None = None,
    store: str = "",
    force: bool = False,
) -> ProfileChoice:
    """Pick the profile to pull (see the module docstring for the rules).

    ``sizes`` maps model keys to sizes (the manifest's, which are exact), ``needed_bytes``
    says how many bytes a set of models still needs on disk (default: all of them), and
    ``mirrored`` is the set of model keys the store holds with the catalog's bytes.

    (Just over 80 lines: most of it is the three refusals' messages, each naming the facts.)
    """
    kwargs: dict[str, Any] = {
        "sizes": sizes,
        "needed_bytes": needed_bytes,
        "mirrored": mirrored,
        "margin_bytes": margin_bytes,
        "margin_ratio": margin_ratio,
    }
    if requested and requested != AUTO_PROFILE:
        return _choose_named(catalog, facts, requested, force=force, store=store, **kwargs)

    fits = [measure(catalog, facts, n, **kwargs) for n in candidate_names(catalog)]
    fits = [f for f in fits if f.models]
    if not fits:
        raise ConfigError(
            "the catalog has no profile with models to choose from",
            hint="add profiles to the catalog, or pass --profile full",
        )
    passed_over: list[str] = []
    usable = []
    for fit in fits:
        if not fit.mirrored:
            passed_over.append(f"{fit.name} not fully mirrored")
        else:
            usable.append(fit)
    if not usable:
        smallest = min(fits, key=lambda f: (f.total_bytes, f.name))
        raise _not_mirrored(smallest, store)

    if not _has_gpu(facts):
        disk_fits = [f for f in usable if f.disk_ok]
        if not disk_fits:
            smallest = min(usable, key=lambda f: (f.needed_bytes, f.name))
            raise _disk_error(smallest, facts, margin_bytes, margin_ratio)
        pick = min(disk_fits, key=lambda f: (f.total_bytes, f.min_vram_gb, f.name))
        reason = "no GPU: the smallest profile"
        warnings = ("no GPU: ComfyUI will run on the CPU",)
        return _choice(pick, requested or AUTO_PROFILE, reason, passed_over, warnings)

    vram_fits = [f for f in usable if f.vram_ok]
    if not vram_fits:
        lowest = min(usable, key=lambda f: (f.min_vram_gb, f.total_bytes))
        raise ConfigError(
            f"no profile fits {_vram_text(facts)}: the smallest floor is {lowest.name} "
            f"({lowest.min_vram_gb:g} GB)",
            hint=f"pass --profile {lowest.name} --force to pull it anyway, or --vram-gb N "
            "if the GPU was misread",
        )
    for fit in usable:
        if not fit.vram_ok:
            passed_over.append(f"{fit.name} needs {fit.min_vram_gb:g} GB")
    fitting = [f for f in vram_fits if f.disk_ok]
    for fit in vram_fits:
        if not fit.disk_ok:
            missing = (
                required_bytes(
                    fit.needed_bytes, margin_bytes=margin_bytes, margin_ratio=margin_ratio
                )
                - facts.free_disk_bytes
            )
            passed_over.append(f"{fit.name} lacks {format_bytes(missing)} of disk")
    if not fitting:
        smallest = min(vram_fits, key=lambda f: (f.needed_bytes, f.name))
        raise _disk_error(smallest, facts, margin_bytes, margin_ratio)
    pick = max(fitting, key=lambda f: (f.total_bytes, f.min_vram_gb, f.name))
    reason = (
        f"largest profile that fits {_vram_text(facts)} and "
        f"{format_bytes(facts.free_disk_bytes)} free disk"
    )
    return _choice(pick, AUTO_PROFILE, reason, passed_over, ())


def _choice(
    fit: ProfileFit,
    requested: str,
    reason: str,
    passed_over: Sequence[str],
    warnings: Sequence[str],
) -> ProfileChoice:
    if passed_over:
        reason += f" (passed over: {'; '.join(passed_over)})"
    return ProfileChoice(
        name=fit.name,
        models=fit.models,
        total_bytes=fit.total_bytes,
        reason=reason,
        requested=requested,
        min_vram_gb=fit.min_vram_gb,
        needed_bytes=fit.needed_bytes,
        warnings=tuple(warnings),
    )


def _choose_named(
    catalog: Catalog,
    facts: InstanceFacts,
    name: str,
    *,
    force: bool,
    store: str,
    **kwargs: Any,
) -> ProfileChoice:
    catalog.require_profile(name, accept_auto=True)  # unknown: the hint may offer auto here
    fit = measure(catalog, facts, name, **kwargs)
    if not fit.models:
        raise ConfigError(f"profile {name} has no models", hint="add models to it in the catalog")
    if not fit.mirrored:
        raise _not_mirrored(fit, store)
    warnings: list[str] = []
    if not _has_gpu(facts):
        warnings.append(
            f"no GPU: the {fit.min_vram_gb:g} GB VRAM floor of {name} is not checked; "
            "ComfyUI will run on the CPU"
        )
    elif not fit.vram_ok:
        if not force:
            raise ConfigError(
                f"profile {name} needs {fit.min_vram_gb:g} GB VRAM, this instance has "
                f"{_vram_text(facts)}",
                hint="pick a smaller profile (or --profile auto), or pass --force to pull "
                "it anyway",
            )
        warnings.append(
            f"--force: profile {name} needs {fit.min_vram_gb:g} GB VRAM, "
            f"this instance has {facts.vram_gb:g} GB"
        )
    if not fit.disk_ok:
        raise _disk_error(fit, facts, kwargs["margin_bytes"], kwargs["margin_ratio"])
    return _choice(fit, name, "asked for by name", (), warnings)
