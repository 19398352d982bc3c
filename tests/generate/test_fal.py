"""fal.ai queue client against the fal test server (tests/doubles/fal.py)."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from comfyfleet.errors import FalError, FalUnavailable
from comfyfleet.generate.fal import FalClient, FalFile, FalSettings, data_uri, result_files
from tests.doubles.fal import MP4_BYTES, TEST_KEY, FalAppBehaviour, FalDouble

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


@pytest.fixture
def fal() -> Iterator[FalDouble]:
    with FalDouble() as double:
        yield double


def client(fal: FalDouble, key: str | None = TEST_KEY, **kw: float) -> FalClient:
    settings = FalSettings(key=key, base_url=fal.url, poll_interval_s=0.0, backoff_s=0.0, **kw)
    return FalClient(settings, sleep=lambda s: None)


def test_submit_poll_result_download(fal: FalDouble) -> None:
    seen: list[str] = []
    with client(fal) as c:
        request, result = c.run(
            "fal-ai/wan-i2v",
            {"prompt": "a fox", "image_url": data_uri(PNG, "image/png")},
            on_status=lambda s: seen.append(s.status),
        )
        files = result_files(result)
        assert len(files) == 1 and files[0].content_type == "video/mp4"
        assert c.download(files[0]) == MP4_BYTES
    assert seen == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    assert fal.records[request.request_id].image_bytes == PNG
    # Status/result URLs came from the submit answer (owner/app only) and carried the key;
    # the file CDN never saw it.
    assert all(auth == f"Key {TEST_KEY}" for _, _, auth in fal.log)
    assert any(path.endswith("/status") for _, path, _ in fal.log)
    assert fal.file_log and all(auth is None for _, auth in fal.file_log)
    assert TEST_KEY not in repr(c)


def test_missing_key_fails_before_any_request(
    fal: FalDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAL_KEY", raising=False)
    with client(fal, key=None) as c, pytest.raises(FalError, match="no API key") as info:
        c.submit("fal-ai/wan-i2v", {"prompt": "x"})
    assert "FAL_KEY" in str(info.value)
    assert fal.log == []


def test_wrong_key_is_not_retried_and_not_leaked(fal: FalDouble) -> None:
    with client(fal, key="wrong-secret-key") as c, pytest.raises(FalError) as info:
        c.submit("fal-ai/wan-i2v", {"prompt": "x"})
    assert not isinstance(info.value, FalUnavailable)
    assert "401" in str(info.value) and "FAL_KEY" in str(info.value)
    assert "wrong-secret-key" not in str(info.value)
    assert len(fal.log) == 1


def test_429_and_503_are_retried_then_succeed(fal: FalDouble) -> None:
    fal.submit_failures.extend([429, 503])
    with client(fal) as c:
        request = c.submit("fal-ai/stable-video", {"image_url": data_uri(PNG, "image/png")})
    assert request.request_id in fal.records
    assert [p for m, p, _ in fal.log if m == "POST"] == ["/fal-ai/stable-video"] * 3


def test_persistent_5xx_becomes_fal_unavailable(fal: FalDouble) -> None:
    fal.submit_failures.extend([503] * 10)
    with client(fal, max_retries=2) as c, pytest.raises(FalUnavailable) as info:
        c.submit("fal-ai/wan-i2v", {"prompt": "x"})
    assert "after 3 attempts" in str(info.value)
    assert "runner_scheduling_failure" in str(info.value)


def test_validation_error_names_the_field(fal: FalDouble) -> None:
    with client(fal) as c, pytest.raises(FalError, match="422") as info:
        c.run("fal-ai/wan-i2v", {"prompt": "no image"})
    assert "image_url: Field required" in str(info.value)


def test_unreachable_image_url_is_reported(fal: FalDouble) -> None:
    with client(fal) as c, pytest.raises(FalError) as info:
        c.run("fal-ai/wan-i2v", {"prompt": "x", "image_url": "http://127.0.0.1:9/nothing.png"})
    assert "file_download_error" in str(info.value)


def test_model_error_from_result(fal: FalDouble) -> None:
    fal.apps["fal-ai/wan-i2v"] = FalAppBehaviour(
        model_error=(
            422,
            {
                "detail": [
                    {
                        "loc": ["body", "prompt"],
                        "msg": "Content policy",
                        "type": "content_policy_violation",
                    }
                ]
            },
        )
    )
    with client(fal) as c, pytest.raises(FalError, match="content_policy_violation"):
        c.run("fal-ai/wan-i2v", {"prompt": "x", "image_url": data_uri(PNG, "image/png")})


def test_unknown_app(fal: FalDouble) -> None:
    with client(fal) as c, pytest.raises(FalError, match="404"):
        c.submit("fal-ai/no-such-app", {"prompt": "x"})


def test_timeout_cancels(fal: FalDouble) -> None:
    fal.apps["fal-ai/wan-i2v"] = FalAppBehaviour(queue_polls=1000)
    with client(fal, timeout_s=0.0) as c, pytest.raises(FalUnavailable) as info:
        c.run("fal-ai/wan-i2v", {"prompt": "x", "image_url": data_uri(PNG, "image/png")})
    assert "CANCELLATION_REQUESTED" in str(info.value)
    assert any(m == "PUT" and p.endswith("/cancel") for m, p, _ in fal.log)


def test_cancel_after_completion(fal: FalDouble) -> None:
    with client(fal) as c:
        request, _ = c.run(
            "fal-ai/wan-i2v", {"prompt": "x", "image_url": data_uri(PNG, "image/png")}
        )
        assert c.cancel(request) == "ALREADY_COMPLETED"


def test_download_size_cap(fal: FalDouble) -> None:
    url = fal.serve_file("big.mp4", b"\0" * 5000)
    with client(fal) as c:
        with pytest.raises(FalError, match="cap"):
            c.download(FalFile(url=url), max_bytes=4096)
        with pytest.raises(FalError, match="cap"):
            c.download(FalFile(url=url, file_size=5000), max_bytes=4096)
        assert c.download(FalFile(url=url), max_bytes=5000) == b"\0" * 5000
