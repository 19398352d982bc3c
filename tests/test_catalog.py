"""The catalog library: the shipped catalog, profiles, merging and every bad-input message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from comfyfleet.catalog import (
    BUILTIN_CATALOG,
    SHA256_RE,
    CivitaiSource,
    HFSource,
    URLSource,
    builtin_catalog_path,
    catalog_warnings,
    load_catalog,
    parse_civitai_url,
    validate_catalog,
)
from comfyfleet.errors import CatalogError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "catalog" / "loras.example.yaml"
SHA_A = "a" * 64
SHA_B = "b" * 64


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def entry(
    mid: str = "my-model",
    folder: str = "loras",
    file: str = "my.safetensors",
    extra: str = "",
    source: str = "{type: hf, repo: someone/thing, revision: main, path: my.safetensors}",
) -> str:
    """One YAML list item (indented for a `models:` list)."""
    lines = [
        f"  - id: {mid}",
        f"    folder: {folder}",
        f"    file: {file}",
    ]
    if source:
        lines.append(f"    source: {source}")
    lines += [f"    {line}" for line in textwrap.dedent(extra).strip().splitlines()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the shipped catalog


def test_shipped_catalog_is_valid() -> None:
    catalog = load_catalog()
    assert catalog.load_problems == []
    assert validate_catalog(catalog) == []
    assert catalog.sources == [str(builtin_catalog_path())]


def test_packaged_copy_is_the_same_file() -> None:
    # comfyfleet/data/models.yaml is what an installed wheel ships.
    packaged = REPO / "comfyfleet" / "data" / "models.yaml"
    assert packaged.read_bytes() == (REPO / "catalog" / "models.yaml").read_bytes()


def test_every_file_is_pinned_by_hash_or_marked_unverified() -> None:
    catalog = load_catalog()
    for model in catalog.models.values():
        if model.sha256 is not None:
            assert SHA256_RE.match(model.sha256), model.id
            assert model.size is not None and model.size > 0, model.id
        else:
            assert model.verified == "unverified", model.id
            assert model.notes and "sha256" in model.notes.lower(), model.id
        if model.verified != "unverified":
            assert model.sha256 is not None and model.size is not None, model.id
        assert model.license, model.id
        assert model.name and model.kind, model.id


def test_unpinned_revisions_are_only_where_the_hash_pins_or_unverified() -> None:
    for model in load_catalog().models.values():
        src = model.source
        if isinstance(src, HFSource) and not src.pinned:
            assert model.sha256 is not None or model.verified == "unverified", model.id


def test_known_corrections_of_the_original_list() -> None:
    catalog = load_catalog()
    pony = catalog.get("pony-diffusion-v6-xl")
    assert isinstance(pony.source, CivitaiSource) and pony.source.version_id == 290640
    hf_alt = [a for a in pony.alternates if isinstance(a, HFSource)]
    assert hf_alt and hf_alt[0].repo == "AstraliteHeart/pony-diffusion-v6"
    assert hf_alt[0].path == "v6.safetensors"
    # The two upstream sdxl_vae.safetensors land on different targets.
    fix, stability = catalog.get("sdxl-vae-fp16-fix"), catalog.get("sdxl-vae")
    assert isinstance(fix.source, HFSource) and fix.source.path == "sdxl_vae.safetensors"
    assert fix.key != stability.key and stability.key == "models/vae/sdxl_vae.safetensors"
    assert catalog.get("realvisxl-v4.0").file == "RealVisXL_V4.0.safetensors"
    jug = catalog.get("juggernaut-xl-v9")
    assert jug.file == "Juggernaut-XL_v9_RunDiffusionPhoto_v2.safetensors"
    assert jug.license and "API" in jug.license
    for mid in ("hunyuanvideo-t2v-720p-bf16", "hunyuanvideo-vae-bf16"):
        src = catalog.get(mid).source
        assert isinstance(src, HFSource) and src.repo == "Comfy-Org/HunyuanVideo_repackaged"
    cog = [m for m in catalog.models.values() if m.folder == "CogVideo"]
    assert {m.file.split("/")[1] for m in cog} == {"transformer", "vae", "scheduler"}
    assert all(m.file.startswith(("CogVideoX-5b/", "CogVideoX-5b-I2V/")) for m in cog)
    assert catalog.get("animatediff-sdxl-v10-beta").folder == "animatediff_models"
    assert catalog.get("svd-xt").folder == "checkpoints"


def test_profiles_resolve() -> None:
    catalog = load_catalog()
    assert catalog.profile_ids("minimal") == ["sdxl-base-1.0", "sdxl-vae-fp16-fix"]
    image = catalog.profile_ids("image")
    assert set(catalog.profile_ids("minimal")) <= set(image)
    checkpoints = {m.id for m in catalog.models.values() if m.folder == "checkpoints"}
    assert checkpoints - set(image) == {"svd-xt"}  # the video checkpoint
    video = catalog.select(profile="video-24gb")
    assert set(catalog.profile_ids("minimal")) <= {m.id for m in video}
    assert all(m.min_vram_gb <= 22 for m in video)
    assert {m.folder for m in video} >= {"diffusion_models", "text_encoders", "clip_vision"}
    assert catalog.profile_ids("full") == list(catalog.models)
    assert catalog.profile_names() == ["full", "image", "minimal", "video-24gb"]
    assert catalog.profile_min_vram("minimal") == 8
    assert catalog.profile_min_vram("video-24gb") == 22


def test_profile_summaries_add_up() -> None:
    catalog = load_catalog()
    minimal = catalog.summary("minimal")
    assert minimal.exact and minimal.ids == ("sdxl-base-1.0", "sdxl-vae-fp16-fix")
    assert minimal.total_bytes == 6938078334 + 334641162 == catalog.total_size("minimal")
    full = catalog.summary("full")
    assert full.total_bytes == catalog.total_size()
    assert full.total_bytes == sum(
        m.size if m.size is not None else (m.size_estimate or 0) for m in catalog.models.values()
    )
    assert full.exact_bytes == sum(m.size or 0 for m in catalog.models.values())
    assert set(full.unknown_size_ids) == {
        m.id for m in catalog.models.values() if m.size is None and m.size_estimate is None
    }
    assert full.description


def test_unknown_and_auto_profiles_are_refused() -> None:
    catalog = load_catalog()
    with pytest.raises(CatalogError, match="unknown profile 'nope'") as info:
        catalog.select(profile="nope")
    assert info.value.hint and "minimal" in info.value.hint
    assert info.value.hint is not None and "auto" not in info.value.hint  # select takes no auto
    with pytest.raises(CatalogError, match="unknown profile 'nope'") as warmup:
        catalog.require_profile("nope", accept_auto=True)  # warmup --profile takes auto
    assert warmup.value.hint is not None and warmup.value.hint.endswith(", auto")
    catalog.require_profile("auto", accept_auto=True)
    catalog.require_profile("minimal")
    with pytest.raises(CatalogError, match="chosen on the instance"):
        catalog.profile_ids("auto")
    with pytest.raises(CatalogError, match="unknown model id 'nope'"):
        catalog.get("nope")


# ---------------------------------------------------------------- merging a user file


def test_user_file_adds_to_full_and_named_profiles(tmp_path: Path) -> None:
    user = write(
        tmp_path,
        "loras.yaml",
        "schema: 1\nmodels:\n"
        + entry("style-a", file="style_a.safetensors", extra="profiles: [image, mine]")
        + entry("style-b", file="style_b.safetensors", extra="profiles: [mine]"),
    )
    base = load_catalog()
    merged = load_catalog([BUILTIN_CATALOG, user])
    assert merged.profile_ids("full") == [*base.profile_ids("full"), "style-a", "style-b"]
    assert merged.profile_ids("image") == [*base.profile_ids("image"), "style-a"]
    assert merged.profile_ids("minimal") == base.profile_ids("minimal")
    assert merged.profile_ids("mine") == ["style-a", "style-b"]
    assert "mine" in merged.profile_names()
    assert merged.get("style-a").origin == str(user)
    assert merged.get("style-a").verified == "user"


def test_user_profile_extends_a_builtin_one(tmp_path: Path) -> None:
    user = write(
        tmp_path,
        "more.yaml",
        "models:\n"
        + entry("extra-vae", folder="vae", file="extra_vae.safetensors")
        + """
profiles:
  minimal: {models: [extra-vae]}
  mine: {description: mine, includes: [minimal]}
""",
    )
    merged = load_catalog([BUILTIN_CATALOG, user])
    assert merged.profile_ids("minimal") == ["sdxl-base-1.0", "sdxl-vae-fp16-fix", "extra-vae"]
    assert merged.profile_ids("mine") == merged.profile_ids("minimal")
    assert merged.profiles["minimal"].description.startswith("SDXL base")
    assert merged.profile_origins["minimal"] == [str(builtin_catalog_path()), str(user)]


def test_example_user_catalog_validates_with_the_builtin_one() -> None:
    merged = load_catalog([BUILTIN_CATALOG, EXAMPLE])
    lora = merged.get("example-style-lora")
    assert isinstance(lora.source, CivitaiSource)
    assert (lora.source.model_id, lora.source.version_id) == (123456, 234567)
    assert lora.sha256 is None and lora.size is None
    assert "example-style-lora" in merged.profile_ids("image")
    assert merged.profile_ids("my-loras")[:2] == ["sdxl-base-1.0", "sdxl-vae-fp16-fix"]


def test_example_alone_names_the_missing_builtin(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as info:
        load_catalog([EXAMPLE])
    assert info.value.problems == [
        f"{EXAMPLE}: profile my-loras: field 'includes': unknown profile 'minimal' "
        "(it is built in: add `--catalog builtin`)"
    ]


# ---------------------------------------------------------------- bad input


BAD_ENTRIES = [
    pytest.param(
        entry("bad", extra="sha256: abc123"),
        "entry bad: field 'sha256': must be 64 hex characters, got 6",
        id="sha256-length",
    ),
    pytest.param(
        entry("bad", extra=f"sha256: {'g' * 64}"),
        "entry bad: field 'sha256': must be 64 hex characters, got 64 with non-hex characters",
        id="sha256-not-hex",
    ),
    pytest.param(
        entry("bad", folder="checkpoint"),
        "entry bad: field 'folder': unknown ComfyUI folder 'checkpoint'",
        id="unknown-folder",
    ),
    pytest.param(
        entry("bad", source=""),
        "entry bad: field 'source': is required but missing",
        id="missing-source",
    ),
    pytest.param(
        entry("bad", source="{type: ftp, url: 'ftp://x'}"),
        "entry bad: field 'source': unknown source type 'ftp'; use one of hf, civitai, url, s3",
        id="unknown-source-type",
    ),
    pytest.param(
        entry("bad", source="{type: hf, repo: a/b}"),
        "entry bad: field 'source.path': is required but missing",
        id="hf-without-path",
    ),
    pytest.param(
        entry("bad", source="{type: hf, repo: just-a-name, path: x.safetensors}"),
        "entry bad: field 'source.repo': 'just-a-name' is not an 'owner/name' repo id",
        id="hf-repo-form",
    ),
    pytest.param(
        entry("bad", file="../../etc/evil.safetensors"),
        "entry bad: field 'file': '../../etc/evil.safetensors' must be a relative path",
        id="file-escapes-folder",
    ),
    pytest.param(
        entry("bad", extra="sha265: " + SHA_A),
        "entry bad: field 'sha265': unknown field",
        id="misspelt-field",
    ),
    pytest.param(
        entry("bad", extra="size: -5"),
        "entry bad: field 'size': must be a positive number of bytes",
        id="negative-size",
    ),
    pytest.param(
        entry("bad", extra="verified: verified-primary\nsize: 10"),
        "entry bad: field 'sha256': missing, but the entry is marked verified-primary",
        id="verified-without-hash",
    ),
    pytest.param(
        entry("bad", source="{type: civitai}"),
        "entry bad: field 'source': civitai source needs version_id or url",
        id="civitai-without-version",
    ),
    pytest.param(
        entry("bad", source="{type: civitai, url: 'https://example.com/models/1'}"),
        "entry bad: field 'source.url': 'https://example.com/models/1' is not a CivitAI link",
        id="civitai-url-elsewhere",
    ),
    pytest.param(
        entry(
            "bad",
            source="{type: civitai, version_id: 5, url: 'https://civitai.com/models/1?modelVersionId=6'}",
        ),
        "entry bad: field 'source.version_id': 5 disagrees with the url's version 6",
        id="civitai-version-conflict",
    ),
    pytest.param(
        entry("bad", source="{type: s3, url: 'https://bucket/key'}"),
        "entry bad: field 'source.url': must look like s3://bucket/key",
        id="s3-url",
    ),
    pytest.param(
        entry("bad", extra="profiles: [auto]"),
        "entry bad: field 'profiles': 'auto' is chosen, not listed",
        id="auto-listed",
    ),
    pytest.param(
        entry("bad", source="{type: hf, repo: a/b, revision: " + "1" * 40 + ", path: x}"),
        "entry bad: field 'source.revision': was read as a number: quote it in the YAML",
        id="unquoted-numeric-revision",
    ),
    pytest.param(
        entry("Bad_Id"),
        "entry Bad_Id: field 'id': must be lowercase letters",
        id="id-form",
    ),
    pytest.param(
        entry("bad", extra="tier: critical"),
        "entry bad: field 'tier': Input should be 'must', 'should' or 'optional'",
        id="tier",
    ),
]


@pytest.mark.parametrize(("yaml_entry", "expected"), BAD_ENTRIES)
def test_bad_entry_names_file_entry_and_field(
    tmp_path: Path, yaml_entry: str, expected: str
) -> None:
    path = write(tmp_path, "user.yaml", "schema: 1\nmodels:\n" + yaml_entry)
    with pytest.raises(CatalogError) as info:
        load_catalog([path])
    assert len(info.value.problems) == 1, info.value.problems
    assert info.value.problems[0].startswith(f"{path}: {expected}"), info.value.problems
    assert "catalog validate" in (info.value.hint or "")


def test_two_sdxl_vae_files_collide(tmp_path: Path) -> None:
    user = write(
        tmp_path,
        "user.yaml",
        "models:\n"
        + entry(
            "my-sdxl-vae",
            folder="vae",
            file="sdxl_vae.safetensors",
            source="{type: hf, repo: madebyollin/sdxl-vae-fp16-fix, path: sdxl_vae.safetensors}",
        ),
    )
    with pytest.raises(CatalogError) as info:
        load_catalog([BUILTIN_CATALOG, user])
    assert info.value.problems == [
        f"{user}: entry my-sdxl-vae: field 'file': writes models/vae/sdxl_vae.safetensors, "
        f"the same target as entry sdxl-vae ({builtin_catalog_path()}); rename one of them"
    ]


def test_targets_differing_only_in_case_collide(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "user.yaml",
        "models:\n" + entry("a", file="Style.safetensors") + entry("b", file="style.safetensors"),
    )
    with pytest.raises(CatalogError, match="entry b: field 'file': writes models/loras/style"):
        load_catalog([path])


def test_duplicate_id_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", "models:\n" + entry("same", file="a.safetensors"))
    second = write(tmp_path, "b.yaml", "models:\n" + entry("same", file="b.safetensors"))
    with pytest.raises(CatalogError) as info:
        load_catalog([first, second])
    assert info.value.problems == [
        f"{second}: entry same: field 'id': duplicate id, already defined in {first}"
    ]


def test_profile_problems_name_file_profile_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "user.yaml",
        "models:\n"
        + entry("a")
        + """
profiles:
  p1: {models: [a, nope]}
  p2: {includes: [missing]}
  p3: {modles: [a]}
  full: {models: [a]}
""",
    )
    with pytest.raises(CatalogError) as info:
        load_catalog([path])
    assert sorted(info.value.problems) == sorted(
        [
            f"{path}: profile p3: field 'modles': unknown field (check the spelling; "
            "see catalog/loras.example.yaml)",
            f"{path}: profile full: 'full' is reserved (it is every model of the loaded "
            "catalog files)",
            f"{path}: profile p1: field 'models': unknown model id 'nope'",
            f"{path}: profile p2: field 'includes': unknown profile 'missing'",
        ]
    )


def test_file_level_problems(tmp_path: Path) -> None:
    path = write(tmp_path, "user.yaml", "schema: 2\nmodel:\n" + entry("a"))
    with pytest.raises(CatalogError) as info:
        load_catalog([path])
    assert info.value.problems == [
        f"{path}: field 'model': unknown top-level key (expected schema, models, profiles)",
        f"{path}: field 'schema': unsupported schema 2; this comfyfleet reads schema 1",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping with 'models'"),
        ("models: {a: 1}\n", "'models' must be a list"),
    ],
)
def test_unreadable_files_raise_one_error(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "user.yaml", text)
    with pytest.raises(CatalogError, match=message) as info:
        load_catalog([path])
    assert str(path) in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist") as info:
        load_catalog([tmp_path / "nope.yaml"])
    assert "--catalog" in (info.value.hint or "")


def test_check_false_keeps_parse_problems_for_validate(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "user.yaml",
        "models:\n" + entry("ok-one") + entry("broken", folder="nowhere", extra="size: x"),
    )
    catalog = load_catalog([path], check=False)
    assert list(catalog.models) == ["ok-one"]  # the one that failed to parse is skipped
    assert catalog.load_problems == [
        f"{path}: entry broken: field 'size': Input should be a valid integer, "
        "unable to parse string as an integer"
    ]


# ---------------------------------------------------------------- sources and warnings


@pytest.mark.parametrize(
    ("url", "ids"),
    [
        ("https://civitai.com/models/257749?modelVersionId=290640", (257749, 290640)),
        ("https://civitai.com/models/257749/pony-diffusion-v6-xl", (257749, None)),
        ("https://civitai.com/models/1/slug?modelVersionId=2&type=Model", (1, 2)),
        ("https://civitai.com/model-versions/290640", (None, 290640)),
        ("https://civitai.com/api/download/models/290640?type=Model", (None, 290640)),
        ("https://civitai.com/api/v1/model-versions/290640", (None, 290640)),
        ("urn:air:sdxl:lora:civitai:827184@2514310", (827184, 2514310)),
        ("https://example.com/models/1?modelVersionId=2", None),
        ("https://civitai.com/images/123", None),
        ("ftp://civitai.com/models/1", None),
    ],
)
def test_parse_civitai_url(url: str, ids: tuple[int | None, int | None] | None) -> None:
    assert parse_civitai_url(url) == ids


def test_warnings_say_what_is_unpinned(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "user.yaml",
        "models:\n"
        + entry("pinned", file="p.safetensors", extra=f"sha256: {SHA_A}\nprofiles: [image]")
        + entry("loose", file="l.safetensors")
        + entry(
            "latest",
            file="c.safetensors",
            source="{type: civitai, url: 'https://civitai.com/models/42/x'}",
        )
        + entry("te", folder="text_encoders", file="clip_l.safetensors")
        + entry("clip-old", folder="clip", file="clip_l.safetensors"),
    )
    warnings = catalog_warnings(load_catalog([path]))
    assert f"{path}: entry pinned: field 'source.revision': 'main' is a branch" in warnings[0]
    assert "(the sha256 pin catches that)" in warnings[0]
    assert any(
        w.startswith(f"{path}: entry pinned: field 'profiles': 'image' here holds only")
        for w in warnings
    )
    assert f"{path}: entry loose: field 'sha256': unknown; the mirror takes it from the source" in (
        warnings
    )
    assert any("entry latest: field 'source.url': names no model version" in w for w in warnings)
    assert any(
        w.startswith(f"{path}: entry clip-old: field 'folder': ComfyUI lists clip/clip_l")
        for w in warnings
    )
    pinned = write(
        tmp_path,
        "pinned.yaml",
        "models:\n"
        + entry(
            "pinned",
            extra=f"sha256: {SHA_B}",
            source="{type: hf, repo: a/b, revision: '" + "0" * 40 + "', path: my.safetensors}",
        ),
    )
    assert catalog_warnings(load_catalog([pinned])) == []


def test_uppercase_civitai_hash_is_accepted_lowercased(tmp_path: Path) -> None:
    path = write(tmp_path, "user.yaml", "models:\n" + entry("a", extra=f"sha256: {'AB' * 32}"))
    assert load_catalog([path]).get("a").sha256 == "ab" * 32


def test_a_profile_written_as_a_list_says_how_to_write_it(tmp_path: Path) -> None:
    path = write(tmp_path, "user.yaml", "models:\n" + entry("a") + "\nprofiles:\n  mine: [a]\n")
    with pytest.raises(CatalogError) as info:
        load_catalog([path])
    assert info.value.problems == [
        f"{path}: profile mine: must be a mapping, got a list; "
        "write it as `mine: {models: [id, ...]}`"
    ]


def test_validation_is_carved_into_short_checks() -> None:
    """Issue 8 item 7: no function of catalog.py over ~80 lines (validate_catalog was 31
    branches in one body; each concern is its own check now)."""
    import ast
    import inspect

    import comfyfleet.catalog as catalog_module

    tree = ast.parse(inspect.getsource(catalog_module))
    long = {
        node.name: node.end_lineno - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > 80
    }
    assert long == {}


def test_url_source_describe_hides_userinfo_and_query() -> None:
    source = URLSource(type="url", url="https://user:s3cret@example.com/m.safetensors?token=t0k")
    assert source.describe() == "https://***@example.com/m.safetensors"
