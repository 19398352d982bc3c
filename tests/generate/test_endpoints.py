"""One batch over many ComfyUIs: work stealing from one queue, an endpoint lost midway,
every job exactly once with the endpoint that ran it, resume, tokens per endpoint."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from pydantic import SecretStr

from comfyfleet.comfy.client import ComfyClient
from comfyfleet.errors import ConfigError
from comfyfleet.generate.batch import (
    BatchEndpoint,
    BatchEvent,
    BatchOptions,
    ComfyEndpoint,
    generate_from_file,
    read_results,
    run_batch,
)
from comfyfleet.generate.endpoints import endpoint_refs, resolve_endpoints
from comfyfleet.store.base import ObjectStore
from tests.doubles.comfyui import FakeComfyUI
from tests.generate.conftest import JobsFactory, make_client

TOKEN = "fleet-gateway-token-0123456789abcdef"


@pytest.fixture
def three() -> Iterator[list[FakeComfyUI]]:
    """Three ComfyUIs of different speeds (0.05, 0.1, 0.2 s a prompt)."""
    with ExitStack() as stack:
        fakes = [stack.enter_context(FakeComfyUI(execution_time=t)) for t in (0.05, 0.1, 0.2)]
        for fake in fakes:
            fake.cache_enabled = False
        yield fakes


def _jobs(make_jobs: JobsFactory, n: int) -> list:  # type: ignore[type-arg]
    return make_jobs(
        [
            {"id": f"j{k:03d}", "workflow": "sdxl_txt2img", "prompt": f"p{k}", "seed": k}
            for k in range(n)
        ]
    )


def _accepted_ids(fake: FakeComfyUI) -> set[str]:
    return {str(item[1]) for item in fake.accepted}


def test_work_stealing_survives_a_lost_endpoint_exactly_once(
    three: list[FakeComfyUI], local_store: ObjectStore, make_jobs: JobsFactory
) -> None:
    fast, medium, slow = three
    slow.die_after_prompts = 3  # stops serving mid-batch: its queued prompts are lost
    jobs = _jobs(make_jobs, 120)
    names = ["fast", "medium", "slow"]
    handed_on: list[str] = []
    with ExitStack() as stack:
        clients = [stack.enter_context(make_client(f.url)) for f in three]
        report = run_batch(
            jobs,
            endpoints=[BatchEndpoint(c, name=n) for c, n in zip(clients, names, strict=True)],
            store=local_store,
            batch_id="fleet",
            options=BatchOptions(retry_backoff_s=0.05, endpoint_timeout_s=0.5),
            on_event=lambda e: handed_on.append(e.job_id) if e.kind == "retry" else None,
        )
    assert report.ok and report.counts["ok"] == 120, report.markdown()
    # Exactly once in results.parquet, each row naming the ComfyUI that ran the prompt.
    rows = read_results(local_store, "fleet")
    assert sorted(r["id"] for r in rows) == [j.id for j in jobs]
    by_name = dict(zip(names, three, strict=True))
    for row in rows:
        assert row["status"] == "ok"
        assert row["prompt_id"] in _accepted_ids(by_name[row["endpoint"]]), row
    ran = Counter(r["endpoint"] for r in rows)
    # Work stealing, not a fixed split: the fast ComfyUI took the most, the lost one few.
    assert ran["fast"] > ran["medium"] > ran["slow"], ran
    assert ran["slow"] <= 3
    # The prompts lost with it ran again elsewhere, and left no second copy anywhere.
    assert handed_on and all(
        j in {r["id"] for r in rows if r["endpoint"] != "slow"} for j in handed_on
    )
    for job in jobs:
        files = [i.key for i in local_store.list(f"outputs/fleet/{job.id}/")]
        assert len(files) == 1, files
    assert report.endpoints["slow"] and not report.endpoints["fast"], report.endpoints
    assert "dropped" in report.markdown()

    # Rerunning the batch id resumes: nothing runs again.
    with FakeComfyUI() as again, make_client(again.url) as client:
        second = run_batch(
            jobs, endpoints=[BatchEndpoint(client, name="new")], store=local_store, batch_id="fleet"
        )
        assert again.accepted == []
    assert second.counts["skipped"] == 120
    assert {r["endpoint"] for r in read_results(local_store, "fleet")} <= set(names)


def test_resume_after_every_endpoint_was_lost(
    three: list[FakeComfyUI], local_store: ObjectStore, make_jobs: JobsFactory
) -> None:
    for fake in three:
        fake.die_after_prompts = 2
    jobs = _jobs(make_jobs, 30)
    with ExitStack() as stack:
        clients = [stack.enter_context(make_client(f.url)) for f in three]
        first = run_batch(
            jobs,
            endpoints=[BatchEndpoint(c) for c in clients],
            store=local_store,
            batch_id="lost",
            options=BatchOptions(retry_backoff_s=0.05, endpoint_timeout_s=0.3),
        )
    assert "every ComfyUI stopped answering" in first.stopped
    done = {r.id for r in first.results if r.status == "ok"}
    assert 0 < len(done) <= 6 and first.counts["failed"] == 30 - len(done)
    with FakeComfyUI() as a, FakeComfyUI() as b, make_client(a.url) as ca, make_client(b.url) as cb:
        second = run_batch(
            jobs,
            endpoints=[BatchEndpoint(ca, name="a"), BatchEndpoint(cb, name="b")],
            store=local_store,
            batch_id="lost",
        )
        assert len(a.accepted) + len(b.accepted) == 30 - len(done)
    assert second.ok and {r.id for r in second.results if r.status == "skipped"} == done
    assert Counter(r["id"] for r in read_results(local_store, "lost")).most_common(1)[0][1] == 1


def test_tokens_per_endpoint_and_a_refused_token_drops_only_that_endpoint(
    three: list[FakeComfyUI],
    local_store: ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    gated, open_, wrong = three
    gated.gateway_token = TOKEN
    wrong.gateway_token = "another-token-abcdefghijklmnop"
    monkeypatch.setenv("COMFYFLEET_COMFY_TOKEN", TOKEN)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    endpoints_file = tmp_path / "endpoints.json"
    endpoints_file.write_text(
        json.dumps(
            [
                {"url": gated.url, "name": "gated", "token_env": "COMFYFLEET_COMFY_TOKEN"},
                {"url": open_.url, "name": "open"},
                {"url": wrong.url, "name": "wrong", "token_file": str(token_file)},
            ]
        )
    )
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text(
        "\n".join(
            json.dumps({"id": f"t{k}", "workflow": "sdxl_txt2img", "prompt": "x", "seed": k})
            for k in range(12)
        )
    )
    endpoints = resolve_endpoints(endpoint_refs(endpoints_file=str(endpoints_file)))
    assert all(TOKEN not in repr(e) for e in endpoints)
    report = generate_from_file(
        jobs_file,
        BatchOptions(batch_id="tok", endpoint_timeout_s=1.0),
        endpoints=endpoints,
        store=local_store,
    )
    assert report.ok, report.markdown()
    ran = Counter(r.endpoint for r in report.results)
    assert set(ran) <= {"gated", "open"} and ran["gated"] > 0, ran
    assert gated.refused == [] and wrong.accepted == []
    assert "refused the bearer token" in report.endpoints["wrong"]  # left out when ready-checked
    out, err = capfd.readouterr()
    for text in (out, err, report.markdown(), json.dumps([r.row() for r in report.results])):
        assert TOKEN not in text


def test_endpoint_references_carry_no_tokens(tmp_path: Path) -> None:
    refs = endpoint_refs(["http://a:8188", "http://b:8188"], token_env="COMFYFLEET_COMFY_TOKEN")
    assert refs == [
        {"url": "http://a:8188", "token_env": "COMFYFLEET_COMFY_TOKEN"},
        {"url": "http://b:8188", "token_env": "COMFYFLEET_COMFY_TOKEN"},
    ]
    bad = tmp_path / "e.json"
    bad.write_text(json.dumps([{"url": "http://a", "token": "inline-secret"}]))
    with pytest.raises(ConfigError, match="holds a token itself"):
        endpoint_refs(endpoints_file=str(bad))
    with pytest.raises(ConfigError, match="not a comfyfleet secret variable"):
        resolve_endpoints([{"url": "http://a", "token_env": "PATH"}])
    with pytest.raises(ConfigError, match="named twice"):
        resolve_endpoints([{"url": "http://a:1"}, {"url": "http://a:1/"}])
    assert ComfyEndpoint("http://user:pw@h:1/x?token=s").label == "http://h:1/x"
    with pytest.raises(ConfigError, match="either client= .* or endpoints="):
        run_batch([], store=None, batch_id="x")  # type: ignore[arg-type]
    with ComfyClient("http://127.0.0.1:9") as c:
        assert "token" not in repr(c)
    assert SecretStr(TOKEN).__repr__() != TOKEN


def test_a_token_rotated_midway_drops_that_endpoint_and_its_job_runs_elsewhere(
    local_store: ObjectStore, make_jobs: JobsFactory
) -> None:
    jobs = _jobs(make_jobs, 20)
    with (
        FakeComfyUI(execution_time=0.05) as gated,
        FakeComfyUI(execution_time=0.05) as other,
        ComfyClient(
            gated.url, timeout=5.0, poll_interval=0.05, reconnect_timeout=1.0, token=TOKEN
        ) as first,
        make_client(other.url) as second,
    ):
        gated.gateway_token = TOKEN
        finished_on_gated: list[str] = []

        def rotate(event: BatchEvent) -> None:
            if event.kind == "finished" and event.endpoint == "gated":
                finished_on_gated.append(event.job_id)
                if len(finished_on_gated) == 3:
                    gated.gateway_token = "rotated-token-abcdefghijklmnopq"

        report = run_batch(
            jobs,
            endpoints=[BatchEndpoint(first, name="gated"), BatchEndpoint(second, name="other")],
            store=local_store,
            batch_id="rot",
            options=BatchOptions(retry_backoff_s=0.05),
            on_event=rotate,
        )
    assert report.ok and report.counts["ok"] == 20, report.markdown()
    assert report.endpoints["gated"] == "refused the token"
    assert gated.refused  # the refusal really came from the gateway check
    rows = read_results(local_store, "rot")
    assert sorted(r["id"] for r in rows) == [j.id for j in jobs]
    for job in jobs:
        assert len(list(local_store.list(f"outputs/rot/{job.id}/"))) == 1
