"""Every user-facing link form (sources-api.md B7, HF blob/resolve links) -> a source."""

from __future__ import annotations

import pytest

from comfyfleet.catalog import CivitaiSource, HFSource
from comfyfleet.errors import ConfigError
from comfyfleet.sources import parse_link
from comfyfleet.sources.links import parse_civitai_ref


@pytest.mark.parametrize(
    ("link", "model_id", "version_id", "params"),
    [
        ("https://civitai.com/models/827184", 827184, None, {}),
        ("https://civitai.com/models/827184/wai-illustrious-sdxl", 827184, None, {}),
        ("https://civitai.com/models/827184/wai-illustrious-sdxl/", 827184, None, {}),
        ("https://civitai.com/models/827184?modelVersionId=2514310", 827184, 2514310, {}),
        ("https://civitai.com/models/827184/wai?modelVersionId=2514310", 827184, 2514310, {}),
        (
            "https://www.civitai.com/models/827184/wai?modelVersionId=2514310&utm=x",
            827184,
            2514310,
            {},
        ),
        ("https://civitai.com/model-versions/2514310", None, 2514310, {}),
        ("https://civitai.com/api/download/models/2514310", None, 2514310, {}),
        (
            "https://civitai.com/api/download/models/2514310?type=Model&format=SafeTensor"
            "&size=pruned&fp=fp16",
            None,
            2514310,
            {"type": "Model", "format": "SafeTensor", "size": "pruned", "fp": "fp16"},
        ),
        (
            "https://civitai.com/api/download/models/2514310?fileId=2402203&token=SECRET",
            None,
            2514310,
            {"fileId": "2402203"},
        ),
        (
            "https://civitai.com/api/download/models/2514310?type=UNet&format=GGUF"
            "&quantType=Q4_K_M",
            None,
            2514310,
            {"type": "UNet", "format": "GGUF", "quantType": "Q4_K_M"},
        ),
        (
            "https://civitai.com/api/download/training-data/2514310",
            None,
            2514310,
            {"type": "Training Data"},
        ),
        ("https://civitai.com/api/v1/models/827184", 827184, None, {}),
        ("https://civitai.com/api/v1/model-versions/2514310", None, 2514310, {}),
        ("https://civitai.red/models/827184?modelVersionId=2514310", 827184, 2514310, {}),
        ("https://civitai.green/model-versions/2514310", None, 2514310, {}),
        ("https://civitai.blue/api/download/models/2514310", None, 2514310, {}),
        ("urn:air:sdxl:checkpoint:civitai:827184@2514310", 827184, 2514310, {}),
        ("urn:air:sdxl:lora:civitai:328553@368189.safetensors", 328553, 368189, {}),
        ("urn:air:flux1:lora:civitai:328553", 328553, None, {}),
    ],
)
def test_civitai_link_forms(
    link: str, model_id: int | None, version_id: int | None, params: dict[str, str]
) -> None:
    source = parse_link(link)
    assert isinstance(source, CivitaiSource)
    assert (source.model_id, source.version_id) == (model_id, version_id)
    assert "SECRET" not in (source.url or "")
    assert parse_civitai_ref(source.url or "").params == params


def test_civitai_by_hash_and_base_url_host(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = parse_civitai_ref("https://civitai.com/api/v1/model-versions/by-hash/a5f58eb1c3")
    assert ref.by_hash == "A5F58EB1C3" and ref.version_id is None
    monkeypatch.setenv("CIVITAI_BASE_URL", "http://127.0.0.1:8123")
    source = parse_link("http://127.0.0.1:8123/models/5?modelVersionId=6")
    assert isinstance(source, CivitaiSource) and source.version_id == 6


@pytest.mark.parametrize(
    ("link", "repo", "revision", "path"),
    [
        (
            "https://huggingface.co/stabilityai/sdxl-vae/blob/main/sdxl_vae.safetensors",
            "stabilityai/sdxl-vae",
            "main",
            "sdxl_vae.safetensors",
        ),
        (
            "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/"
            "split_files/vae/wan_2.1_vae.safetensors?download=true",
            "Comfy-Org/Wan_2.2_ComfyUI_Repackaged",
            "main",
            "split_files/vae/wan_2.1_vae.safetensors",
        ),
        (
            "https://huggingface.co/org/repo/blob/0123456789abcdef0123456789abcdef01234567/a%20b.bin",
            "org/repo",
            "0123456789abcdef0123456789abcdef01234567",
            "a b.bin",
        ),
        (
            "https://huggingface.co/org/repo/resolve/refs%2Fpr%2F12/model.safetensors",
            "org/repo",
            "refs/pr/12",
            "model.safetensors",
        ),
        (
            "https://huggingface.co/org/repo/blob/refs/pr/12/model.safetensors",
            "org/repo",
            "refs/pr/12",
            "model.safetensors",
        ),
        (
            "https://hf.co/org/repo/resolve/v1.0/model.safetensors",
            "org/repo",
            "v1.0",
            "model.safetensors",
        ),
        (
            "https://huggingface.co/gpt2/resolve/main/model.safetensors",
            "gpt2",
            "main",
            "model.safetensors",
        ),
        ("hf://org/repo@dev/unet/model.safetensors", "org/repo", "dev", "unet/model.safetensors"),
        ("hf://org/repo/model.safetensors", "org/repo", "main", "model.safetensors"),
    ],
)
def test_hf_link_forms(link: str, repo: str, revision: str, path: str) -> None:
    source = parse_link(link)
    assert isinstance(source, HFSource)
    assert (source.repo, source.revision, source.path) == (repo, revision, path)


def test_hf_endpoint_host_is_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9999/")
    source = parse_link("http://127.0.0.1:9999/org/repo/blob/main/x.safetensors")
    assert isinstance(source, HFSource) and source.repo == "org/repo"


@pytest.mark.parametrize(
    ("link", "needle"),
    [
        ("https://huggingface.co/org/repo", "without a file"),
        ("https://huggingface.co/org/repo/tree/main", "without a file"),
        ("https://huggingface.co/datasets/org/data/blob/main/x.parquet", "dataset"),
        ("https://civitai.com/user/someone", "not one that names a model"),
        ("https://civitai.com/models/abc", "not one that names a model"),
        ("https://civitai.com/models/5?modelVersionId=zz", "not a valid id"),
        ("https://civitai.com/api/v1/model-versions/by-hash/nothex!", "not a file hash"),
        ("https://civarchive.com/models/827184", "not a Hugging Face or CivitAI link"),
        ("https://example.com/model.safetensors", "not a Hugging Face or CivitAI link"),
        ("", "empty link"),
    ],
)
def test_bad_links_are_config_errors(link: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as info:
        parse_link(link)
    assert info.value.hint


@pytest.mark.parametrize(
    "link",
    [
        "https://example.com/lora.safetensors?token=SEKRIT123",
        "https://civitai.com/models/abc?token=SEKRIT123",
        "https://civitai.com/user/someone?token=SEKRIT123",
        "https://huggingface.co/datasets/org/repo/blob/main/x.safetensors?token=SEKRIT123",
        "https://huggingface.co/org/repo?token=SEKRIT123",
    ],
)
def test_a_pasted_token_never_reaches_the_error(link: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_link(link)
    assert "SEKRIT123" not in str(info.value)
    assert "token=***" in info.value.message  # the link is still recognisable
