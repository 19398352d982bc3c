"""Pure pieces: tokens, plan repr, file-name sanitising, header parsing."""

from __future__ import annotations

import email.utils

import pytest

from comfyfleet.errors import RateLimited, SourceUnavailable
from comfyfleet.sources import DownloadPlan, Tokens, parse_content_disposition, sanitize_file_name
from comfyfleet.sources.base import redact_url
from comfyfleet.sources.http import parse_retry_after, transient_status_error


def test_tokens_from_env_and_fallbacks() -> None:
    assert Tokens.from_env({}) == Tokens()
    env = {"HUGGING_FACE_HUB_TOKEN": "hf_legacy", "CIVITAI_API_TOKEN": "civ_api"}
    assert Tokens.from_env(env) == Tokens(hf="hf_legacy", civitai="civ_api")
    env.update({"HF_TOKEN": " hf_new ", "CIVITAI_TOKEN": "civ_new"})
    assert Tokens.from_env(env) == Tokens(hf="hf_new", civitai="civ_new")
    assert Tokens.from_env({"HF_TOKEN": "  "}) == Tokens()


def test_token_values_never_in_repr() -> None:
    tokens = Tokens(hf="hf_topsecret", civitai="civ_topsecret")
    assert repr(tokens) == "Tokens(hf=set, civitai=set)" == str(tokens)
    assert repr(Tokens()) == "Tokens(hf=unset, civitai=unset)"
    plan = DownloadPlan(
        url="https://x.example/f?token=civ_topsecret&X-Amz-Signature=abc&fileId=3",
        file_name="f",
        size=None,
        sha256=None,
        revision=None,
        source="civitai:version/1/file/3",
        headers={"Authorization": "Bearer civ_topsecret"},
    )
    for text in (repr(plan), str(plan), f"{plan}"):
        assert "civ_topsecret" not in text and "abc" not in text
        assert "auth=set" in text and "fileId=3" in text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("model.safetensors", "model.safetensors"),
        ("../../x", "x"),
        ("..", None),
        ("../", None),
        ("/etc/passwd", "passwd"),
        ("..\\..\\evil.dll", "evil.dll"),
        (".bashrc", "bashrc"),
        ("...hidden.bin", "hidden.bin"),
        ("a\x00b\x1fc\x7f.bin", "abc.bin"),
        ('we"ird<>|?*:name.ckpt', "weirdname.ckpt"),
        ("name. ", "name"),
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("Détail v2.safetensors", "Détail v2.safetensors"),
        ("", None),
        (None, None),
        ("a" * 300 + ".safetensors", "a" * (255 - len(".safetensors")) + ".safetensors"),
    ],
)
def test_sanitize_file_name(raw: str | None, clean: str | None) -> None:
    assert sanitize_file_name(raw) == clean


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ('attachment; filename="model.safetensors"', "model.safetensors"),
        ("attachment; filename=model.safetensors", "model.safetensors"),
        ('attachment; filename="with \\"quotes\\".bin"', 'with "quotes".bin'),
        ("attachment; filename*=UTF-8''D%C3%A9tail.safetensors", "Détail.safetensors"),
        ("inline; filename*=UTF-8''a%20b.bin; filename=\"a b.bin\";", "a b.bin"),
        ("attachment; filename=\"fallback.bin\"; filename*=utf-8''%E2%82%AC.bin", "€.bin"),
        ("attachment; filename*=iso-8859-1'en'%A3%20rates.bin", "£ rates.bin"),
        ('attachment; filename="../../x"', "../../x"),  # parsing keeps it; sanitising drops
        ("attachment", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_content_disposition(header: str | None, name: str | None) -> None:
    assert parse_content_disposition(header) == name


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(90)
    past = email.utils.formatdate(now - 90, usegmt=True)
    assert parse_retry_after(past, now=now) == 0


def test_redact_url_keeps_non_secret_params() -> None:
    url = "https://h/p?response-content-disposition=a&X-Amz-Credential=k/1&Signature=s&a=1"
    out = redact_url(url)
    assert "k/1" not in out and "Signature=***" in out and "a=1" in out
    assert redact_url("https://h/p") == "https://h/p"


def test_transient_status_errors_are_the_same_for_every_source() -> None:
    """429 and 408/5xx map to the retried errors whether the Hub or a plain URL answered."""
    limited = transient_status_error(429, "30", "hf:org/r", "HTTP 429", server="the Hub")
    assert isinstance(limited, RateLimited) and limited.retry_after == 30
    assert limited.message == "hf:org/r: rate limited by the Hub, retry after 30 s (HTTP 429)"
    for status in (408, 500, 503):
        down = transient_status_error(status, None, "url:x", f"HTTP {status}")
        assert isinstance(down, SourceUnavailable) and not isinstance(down, RateLimited)
        assert down.message == f"url:x: server error (HTTP {status})"
    assert transient_status_error(404, None, "url:x", "HTTP 404") is None
    assert transient_status_error(403, "5", "url:x", "HTTP 403") is None
