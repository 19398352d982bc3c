"""``comfyfleet generate`` in-process, and the ``generate-batch`` flow on Prefect's engine."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet.cli import main
from comfyfleet.generate.batch import default_batch_id, read_results
from comfyfleet.store.local import LocalStore
from tests.doubles.comfyui import FakeComfyUI
from tests.doubles.fal import TEST_KEY, FalDouble
from tests.support.artifacts import artifacts_of


def write_jobs(tmp_path: Path, rows: list[dict[str, Any]]) -> Path:
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_runs_a_batch_and_resumes(
    fake: FakeComfyUI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, [
        {"id": "one", "workflow": "sdxl_txt2img", "prompt": "a fox", "steps": 4},
        {"id": "two", "workflow": "pony_txt2img", "prompt": "a cat"},
    ])  # fmt: skip
    store = tmp_path / "store"
    argv = ["generate", str(jobs), "--comfy-url", fake.url, "--store", str(store), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    batch = default_batch_id(jobs)
    assert out["batch_id"] == batch and out["counts"] == {"ok": 2, "failed": 0, "skipped": 0}
    assert [j["status"] for j in out["jobs"]] == ["ok", "ok"]
    assert out["results"] == f"outputs/{batch}/results.parquet"
    assert len(read_results(LocalStore(store), batch)) == 2
    # Again: nothing to do, everything skipped, the human-readable table this time.
    assert main(argv[:-1]) == 0
    text = capsys.readouterr().out
    assert "0 ok, 0 failed, 2 skipped" in text and "skipped" in text
    assert len(fake.accepted) == 2


def test_cli_exit_code_and_errors(
    fake: FakeComfyUI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, [
        {"id": "good", "workflow": "sdxl_txt2img", "prompt": "x"},
        {"id": "bad", "workflow": "sdxl_txt2img", "prompt": "x", "checkpoint": "nope.ckpt"},
    ])  # fmt: skip
    store = str(tmp_path / "store")
    code = main(["generate", str(jobs), "--comfy-url", fake.url, "--store", store,
                 "--batch-id", "b1", "--no-fal"])  # fmt: skip
    assert code == 1
    out = capsys.readouterr().out
    assert "1 ok, 1 failed" in out and "ckpt_name" in out
    # A bad jobs file is a usage error (exit 2) naming row and column.
    broken = write_jobs(tmp_path, [{"id": "x", "workflow": "sdxl_txt2img", "seed": "many"}])
    assert main(["generate", str(broken), "--comfy-url", fake.url, "--store", store]) == 2
    err = capsys.readouterr().err
    assert "jobs.jsonl row 1 (id 'x'): column 'seed'" in err
    assert main(["generate", str(jobs), "--comfy-url", fake.url, "--store", store,
                 "--queue-depth", "0"]) == 2  # fmt: skip


@pytest.mark.flow
def test_flow_runs_batch_and_creates_artifacts(
    prefect_harness: None,
    fake: FakeComfyUI,
    fal: FalDouble,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.generate import generate_batch

    monkeypatch.setenv("FAL_KEY", TEST_KEY)
    fake.models["diffusion_models"] = []
    jobs = write_jobs(tmp_path, [
        {"id": "still", "workflow": "sdxl_txt2img", "prompt": "a fox"},
        {"id": "moving", "workflow": "sdxl_txt2img", "prompt": "a fox", "video": "wan_i2v"},
    ])  # fmt: skip
    store = tmp_path / "store"
    state = generate_batch(
        jobs_file=str(jobs), comfy_url=fake.url, store=str(store), batch_id="Flow_1",
        fal_url=fal.url, return_state=True,
    )  # fmt: skip
    assert state.is_completed(), state
    summary = state.result()
    assert summary["counts"] == {"ok": 2, "failed": 0, "skipped": 0}
    rows = {r["id"]: r for r in read_results(LocalStore(store), "Flow_1")}
    assert rows["moving"]["video_path"] == "fal"
    arts = artifacts_of(state.state_details.flow_run_id)
    (table,) = arts["table"]
    assert table.key == "generate-jobs-flow-1"
    data = table.data if isinstance(table.data, list) else yaml.safe_load(table.data)
    assert [(r["id"], r["status"], r["video"]) for r in data] == [
        ("still", "ok", ""),
        ("moving", "ok", "fal"),
    ]
    (markdown,) = arts["markdown"]
    assert "ok 2, failed 0" in str(markdown.data) and "1 on fal.ai" in str(markdown.data)
    (progress,) = arts["progress"]
    assert float(progress.data) == 100.0
    # The key never reached logs or artifacts.
    assert TEST_KEY not in json.dumps([str(a.data) for a in arts["table"] + arts["markdown"]])


@pytest.mark.flow
def test_flow_fails_when_a_job_fails(
    prefect_harness: None, fake: FakeComfyUI, tmp_path: Path
) -> None:
    from flows.generate import generate_batch

    jobs = write_jobs(tmp_path, [
        {"id": "bad", "workflow": "sdxl_txt2img", "prompt": "x", "checkpoint": "nope.ckpt"},
    ])  # fmt: skip
    state = generate_batch(
        jobs_file=str(jobs), comfy_url=fake.url, store=str(tmp_path / "s"), fal_fallback=False,
        return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    assert "1 job(s) failed (bad)" in str(state.message), state.message


def _outcome(store: Path, batch: str) -> dict[str, tuple[str, list[str], str]]:
    """Per job id: status, output file names (batch folder and ComfyUI's counter left out),
    the error's first part."""
    return {
        str(row["id"]): (
            str(row["status"]),
            sorted(re.sub(r"_\d{5}_", "_N_", str(k).split("/", 2)[-1]) for k in row["outputs"]),
            str(row["error"]).split(":", 1)[0],
        )
        for row in read_results(LocalStore(store), batch)
    }


@pytest.mark.flow
def test_cli_and_flow_run_the_same_driver(
    prefect_harness: None, fake: FakeComfyUI, tmp_path: Path
) -> None:
    """Issue 8 item 2: the same jobs through the CLI and through the flow give the same rows."""
    from flows.generate import generate_batch

    jobs = write_jobs(tmp_path, [
        {"id": "fox", "workflow": "sdxl_txt2img", "prompt": "a fox", "seed": 1},
        {"id": "cat", "workflow": "pony_txt2img", "prompt": "a cat", "seed": 2},
        {"id": "bad", "workflow": "sdxl_txt2img", "prompt": "x", "checkpoint": "nope.ckpt"},
    ])  # fmt: skip
    cli_store, flow_store = tmp_path / "cli", tmp_path / "flow"
    code = main(["generate", str(jobs), "--comfy-url", fake.url, "--store", str(cli_store),
                 "--batch-id", "same", "--no-fal", "--json"])  # fmt: skip
    assert code == 1
    state = generate_batch(
        jobs_file=str(jobs), comfy_url=fake.url, store=str(flow_store), batch_id="same",
        fal_fallback=False, return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    by_cli, by_flow = _outcome(cli_store, "same"), _outcome(flow_store, "same")
    assert by_cli == by_flow
    assert {k: v[0] for k, v in by_cli.items()} == {"fox": "ok", "cat": "ok", "bad": "failed"}
    assert all(v[1] for k, v in by_cli.items() if k != "bad")


@pytest.mark.flow
def test_flow_task_does_not_retry_the_batch(prefect_harness: None, tmp_path: Path) -> None:
    """One retry owner: a ComfyUI that never answers fails the flow after one task run
    (before, the task's own retries ran the batch three times, 30 s apart)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.generate import generate_batch

    jobs = write_jobs(tmp_path, [{"id": "a", "workflow": "sdxl_txt2img", "prompt": "x"}])
    with FakeComfyUI() as gone:
        url = gone.url
    state = generate_batch(
        jobs_file=str(jobs), comfy_url=url, store=str(tmp_path / "s"), ready_timeout_s=0.5,
        return_state=True,
    )  # fmt: skip
    assert state.is_failed() and "was not ready" in str(state.message)
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    assert [r.run_count for r in runs] == [1]


def test_cli_checks_every_workflow_file_first(
    fake: FakeComfyUI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 9 item 15: a workflow file that is not JSON stops the batch before it starts:
    exit 2, nothing submitted (before: the good jobs ran, the bad one failed, exit 1)."""
    (tmp_path / "broken.json").write_text("{not json")
    jobs = write_jobs(tmp_path, [
        {"id": "fine", "workflow": "sdxl_txt2img", "prompt": "x"},
        {"id": "bad", "workflow": "broken.json"},
    ])  # fmt: skip
    code = main(["generate", str(jobs), "--comfy-url", fake.url,
                 "--store", str(tmp_path / "s"), "--no-fal"])  # fmt: skip
    assert code == 2
    assert "broken.json is not valid JSON" in capsys.readouterr().err
    assert fake.accepted == [] and not any(p == "/prompt" for _, p in fake.requests)


def test_cli_spreads_a_batch_over_many_comfyuis_with_a_token_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "cli-gateway-token-0123456789abcdef"
    monkeypatch.setenv("COMFYFLEET_COMFY_TOKEN", token)
    jobs = write_jobs(tmp_path, [
        {"id": f"m{k}", "workflow": "sdxl_txt2img", "prompt": "x", "seed": k} for k in range(8)
    ])  # fmt: skip
    with FakeComfyUI(execution_time=0.02) as a, FakeComfyUI(execution_time=0.02) as b:
        a.gateway_token = b.gateway_token = token
        argv = ["generate", str(jobs), "--comfy-url", a.url, "--comfy-url", b.url,
                "--comfy-token-env", "COMFYFLEET_COMFY_TOKEN", "--store",
                str(tmp_path / "store"), "--json"]  # fmt: skip
        assert main(argv) == 0
        assert a.refused == [] and b.refused == []
        assert a.accepted and b.accepted  # both took jobs
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert set(out["endpoints"]) == {a.url, b.url}
    assert {j["endpoint"] for j in out["jobs"]} == {a.url, b.url}
    assert token not in captured.out + captured.err
    # Without the token the gateway refuses, and the error says how to pass one.
    monkeypatch.delenv("COMFYFLEET_COMFY_TOKEN")
    with FakeComfyUI() as gated:
        gated.gateway_token = token
        code = main(["generate", str(jobs), "--comfy-url", gated.url, "--store",
                     str(tmp_path / "store2")])  # fmt: skip
    assert code != 0
    assert "no token was given" in capsys.readouterr().err


def test_flow_endpoint_references_take_one_url_or_many() -> None:
    from flows.generate import _endpoint_refs

    assert _endpoint_refs("http://a:1", None, None, None) == [{"url": "http://a:1"}]
    assert _endpoint_refs(["http://a:1", "http://b:2"], None, "COMFYFLEET_COMFY_TOKEN", None) == [
        {"url": "http://a:1", "token_env": "COMFYFLEET_COMFY_TOKEN"},
        {"url": "http://b:2", "token_env": "COMFYFLEET_COMFY_TOKEN"},
    ]
