"""run_batch against the ComfyUI test server, with a local directory store and SeaweedFS."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from comfyfleet.comfy.client import ComfyClient
from comfyfleet.generate.batch import BatchEvent, BatchOptions, read_results, run_batch
from comfyfleet.store.base import ObjectStore
from tests.doubles.comfyui import FakeComfyUI, png_bytes
from tests.generate.conftest import ImageServer, JobsFactory, make_client


def stored(store: ObjectStore, prefix: str) -> list[str]:
    return sorted(info.key for info in store.list(prefix))


def prompts_of(fake: FakeComfyUI) -> list[dict[str, Any]]:
    return [item[2] for item in fake.accepted]


def test_fifty_mixed_jobs(
    fake: FakeComfyUI,
    client: ComfyClient,
    store: ObjectStore,
    make_jobs: JobsFactory,
    tmp_path: Path,
) -> None:
    (tmp_path / "in.png").write_bytes(png_bytes(rgb=(10, 200, 30)))
    (tmp_path / "mine.json").write_text(
        json.dumps(
            {
                "1": {
                    "class_type": "CheckpointLoaderSimple",
                    "inputs": {"ckpt_name": "{{checkpoint}}"},
                },
                "2": {
                    "class_type": "CLIPTextEncode",
                    "inputs": {"text": "{{prompt}}, {{style}}", "clip": ["1", 1]},
                },
                "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
                "4": {
                    "class_type": "EmptyLatentImage",
                    "inputs": {"width": 512, "height": 512, "batch_size": 1},
                },
                "5": {
                    "class_type": "KSampler",
                    "inputs": {
                        "model": ["1", 0],
                        "seed": "{{seed}}",
                        "steps": 4,
                        "cfg": 5.0,
                        "sampler_name": "euler",
                        "scheduler": "normal",
                        "positive": ["2", 0],
                        "negative": ["3", 0],
                        "latent_image": ["4", 0],
                        "denoise": 1.0,
                    },
                },
                "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
                "7": {
                    "class_type": "SaveImage",
                    "inputs": {"images": ["6", 0], "filename_prefix": "mine"},
                },
            }
        )
    )
    rows: list[dict[str, Any]] = []
    for n in range(50):
        kind = n % 5
        row: dict[str, Any] = {"id": f"job-{n:02d}", "prompt": f"a fox number {n}", "seed": n}
        if kind == 0:
            row |= {"workflow": "sdxl_txt2img", "width": 512, "height": 512, "steps": 4}
        elif kind == 1:
            row |= {"workflow": "pony_txt2img", "loras": "pony-style.safetensors:0.7"}
        elif kind == 2:
            row |= {"workflow": "img2img", "image": "in.png"}
        elif kind == 3:
            row |= {
                "workflow": "mine.json",
                "checkpoint": "RealVisXL_V4.0.safetensors",
                "style": "noir",
            }
        else:
            row |= {
                "workflow": "sdxl_txt2img",
                "loras": "add-detail-xl.safetensors:0.5;pony-style.safetensors:0.3:0.2",
            }
        rows.append(row)
    jobs = make_jobs(rows)
    events: list[BatchEvent] = []
    report = run_batch(jobs, client=client, store=store, batch_id="mixed", on_event=events.append)

    assert report.counts == {"ok": 50, "failed": 0, "skipped": 0}, report.markdown()
    assert [r.id for r in report.results] == [j.id for j in jobs]
    for result in report.results:
        assert len(result.outputs) == 1
        assert result.outputs[0].startswith(f"outputs/mixed/{result.id}/")
        assert store.get_bytes(result.outputs[0]).startswith(b"\x89PNG")
        assert result.seconds >= 0 and result.attempt == 1 and result.prompt_id
    # One image file per job, plus the results table and the summary.
    keys = stored(store, "outputs/mixed/")
    assert len(keys) == 52
    assert "outputs/mixed/results.parquet" in keys and "outputs/mixed/summary.md" in keys
    # The same input image went up once; every img2img prompt loads the uploaded name.
    uploads = [r for r in fake.requests if r == ("POST", "/upload/image")]
    assert len(uploads) == 1
    loads = [
        n["inputs"]["image"]
        for p in prompts_of(fake)
        for n in p.values()
        if n["class_type"] == "LoadImage"
    ]
    assert len(loads) == 10 and len(set(loads)) == 1 and ("input", "", loads[0]) in fake.files
    # LoRA chains: 1 LoraLoader per pony job, 2 per kind-4 job, with the asked strengths.
    chains = [
        sorted(
            (n["inputs"]["lora_name"], n["inputs"]["strength_model"], n["inputs"]["strength_clip"])
            for n in p.values()
            if n["class_type"] == "LoraLoader"
        )
        for p in prompts_of(fake)
    ]
    assert chains.count([("pony-style.safetensors", 0.7, 0.7)]) == 10
    assert (
        chains.count(
            [("add-detail-xl.safetensors", 0.5, 0.5), ("pony-style.safetensors", 0.3, 0.2)]
        )
        == 10
    )
    # The user's file had its placeholders filled.
    texts = [
        n["inputs"]["text"]
        for p in prompts_of(fake)
        for n in p.values()
        if n["class_type"] == "CLIPTextEncode" and "noir" in str(n["inputs"]["text"])
    ]
    assert texts[0] == "a fox number 3, noir"
    # Events: a start, 50 submissions, 50 finished with a growing count.
    finished = [e for e in events if e.kind == "finished"]
    assert [e.done for e in finished] == list(range(1, 51))
    assert all(e.total == 50 for e in events)


def test_results_table_contents(
    client: ComfyClient, local_store: ObjectStore, make_jobs: JobsFactory
) -> None:
    jobs = make_jobs([
        {"id": "a", "workflow": "sdxl_txt2img", "prompt": "x", "steps": 2},
        {"id": "b", "workflow": "sdxl_txt2img", "prompt": "y", "checkpoint": "nope.safetensors"},
    ])  # fmt: skip
    report = run_batch(jobs, client=client, store=local_store, batch_id="table")
    frame = pd.read_parquet(io.BytesIO(local_store.get_bytes("outputs/table/results.parquet")))
    assert list(frame.columns) == [
        "id", "status", "workflow", "seconds", "queue_wait", "wall_seconds", "outputs",
        "video_path", "video_seconds", "error", "prompt_id", "attempt", "fingerprint",
        "finished_at", "loras", "endpoint",
    ]  # fmt: skip
    rows = {r["id"]: r for r in frame.to_dict(orient="records")}
    assert rows["a"]["status"] == "ok" and list(rows["a"]["outputs"]) == report.results[0].outputs
    assert rows["a"]["error"] == "" and rows["a"]["video_path"] == ""
    assert rows["a"]["fingerprint"] == jobs[0].fingerprint()
    assert rows["b"]["status"] == "failed" and list(rows["b"]["outputs"]) == []
    assert "ckpt_name" in rows["b"]["error"] and "nope.safetensors" in rows["b"]["error"]
    assert str(frame["seconds"].dtype) == "float64" and str(frame["attempt"].dtype) == "int64"
    summary = local_store.get_bytes("outputs/table/summary.md").decode()
    assert "ok 1, failed 1" in summary and "| b | 1 |" in summary


def test_validation_and_execution_errors_fail_one_job_only(
    fake: FakeComfyUI, client: ComfyClient, local_store: ObjectStore, make_jobs: JobsFactory
) -> None:
    fake.fail_class = "VAEDecode"
    fake.fail_times = 1
    jobs = make_jobs([
        {"id": "boom", "workflow": "sdxl_txt2img", "prompt": "first runs and fails"},
        {"id": "bad", "workflow": "sdxl_txt2img", "prompt": "x", "checkpoint": "missing.ckpt"},
        *({"id": f"ok{n}", "workflow": "sdxl_txt2img", "prompt": f"p{n}"} for n in range(4)),
    ])  # fmt: skip
    # One feeder: the first prompt ComfyUI runs (the one the double fails) is boom's. With two,
    # ok0 (taken right after bad fails its check) may reach ComfyUI first under load.
    options = BatchOptions(retries=3, queue_depth=1)
    report = run_batch(jobs, client=client, store=local_store, batch_id="errs", options=options)
    by_id = {r.id: r for r in report.results}
    bad = by_id["bad"]
    assert bad.status == "failed" and bad.attempt == 1
    assert "node 4 (CheckpointLoaderSimple) input 'ckpt_name'" in bad.error
    assert "missing.ckpt" in bad.error
    boom = by_id["boom"]
    # An execution error is not transient: one attempt, the node and exception named.
    assert boom.status == "failed" and boom.attempt == 1
    assert "VAEDecode" in boom.error and "header too small" in boom.error
    assert all(by_id[f"ok{n}"].status == "ok" for n in range(4))
    assert stored(local_store, "outputs/errs/boom/") == []
    # The invalid job never reached ComfyUI's queue.
    assert len(fake.accepted) == 5


def test_loadimage_fed_by_an_image_url(
    fake: FakeComfyUI,
    client: ComfyClient,
    local_store: ObjectStore,
    images: ImageServer,
    make_jobs: JobsFactory,
) -> None:
    url = images.url("/cat.png")
    jobs = make_jobs([
        {"id": "u1", "workflow": "img2img", "prompt": "a cat", "image": url},
        {"id": "u2", "workflow": "img2img", "prompt": "a dog", "image": url, "seed": 5},
        {"id": "gone", "workflow": "img2img", "prompt": "x", "image": images.url("/nope.png")},
    ])  # fmt: skip
    report = run_batch(jobs, client=client, store=local_store, batch_id="urls")
    by_id = {r.id: r for r in report.results}
    assert by_id["u1"].status == "ok" and by_id["u2"].status == "ok"
    assert images.hits.count("/cat.png") == 1  # downloaded and uploaded once for both jobs
    uploaded = [k for k in fake.files if k[0] == "input"]
    assert len(uploaded) == 1 and fake.files[uploaded[0]] == images.files["/cat.png"]
    loads = {
        n["inputs"]["image"]
        for p in prompts_of(fake)
        for n in p.values()
        if n["class_type"] == "LoadImage"
    }
    assert loads == {uploaded[0][2]}
    assert by_id["gone"].status == "failed" and "404" in by_id["gone"].error


def test_comfyui_dies_midway_and_rerun_resumes(store: ObjectStore, make_jobs: JobsFactory) -> None:
    jobs = make_jobs(
        [
            {"id": f"j{n:02d}", "workflow": "sdxl_txt2img", "prompt": f"p{n}", "seed": n}
            for n in range(12)
        ]
    )
    # Each prompt takes long enough for the previous one's outputs to be fetched.
    with FakeComfyUI(execution_time=0.1) as first, make_client(first.url) as client:
        first.die_after_prompts = 5
        report = run_batch(
            jobs,
            client=client,
            store=store,
            batch_id="crash",
            # A ComfyUI that stays unreachable for a second is given up (default 30 s).
            options=BatchOptions(retries=1, retry_backoff_s=0.05, endpoint_timeout_s=1.0),
        )
    done_first = {r.id for r in report.results if r.status == "ok"}
    failed_first = {r.id for r in report.results if r.status == "failed"}
    assert 3 <= len(done_first) <= 5 and failed_first, report.markdown()
    assert len(done_first | failed_first) == 12
    assert "stopped answering" in report.stopped
    assert any("not run" in r.error for r in report.results if r.status == "failed")
    recorded = {row["id"]: row["status"] for row in read_results(store, "crash")}
    assert {k for k, v in recorded.items() if v == "ok"} == done_first
    # An interrupted job can leave files behind; the rerun must not mix them in.
    victim = sorted(failed_first)[0]
    store.put_bytes(f"outputs/crash/{victim}/stale_00007_.png", b"half written")

    with FakeComfyUI() as second, make_client(second.url) as client:
        again = run_batch(jobs, client=client, store=store, batch_id="crash")
        executed = len(second.accepted)
    assert {r.id for r in again.results if r.status == "skipped"} == done_first
    assert all(r.status in ("ok", "skipped") for r in again.results)
    assert executed == 12 - len(done_first)  # finished jobs were not run again
    for job in jobs:
        files = stored(store, f"outputs/crash/{job.id}/")
        assert len(files) == 1 and "stale" not in files[0], files
    final = {row["id"]: row for row in read_results(store, "crash")}
    assert len(final) == 12 and all(row["status"] == "ok" for row in final.values())

    # A third run finds everything done and runs nothing.
    with FakeComfyUI() as third, make_client(third.url) as client:
        last = run_batch(jobs, client=client, store=store, batch_id="crash")
        assert third.accepted == []
    assert last.counts["skipped"] == 12


def test_changed_job_or_lost_output_is_rerun(
    fake: FakeComfyUI, client: ComfyClient, local_store: ObjectStore, make_jobs: JobsFactory
) -> None:
    rows = [
        {"id": "a", "workflow": "sdxl_txt2img", "prompt": "x"},
        {"id": "b", "workflow": "sdxl_txt2img", "prompt": "y"},
    ]
    first = run_batch(make_jobs(rows), client=client, store=local_store, batch_id="chg")
    assert first.counts["ok"] == 2
    rows[0]["prompt"] = "x, but different"
    local_store.delete(first.results[1].outputs[0])
    again = run_batch(make_jobs(rows), client=client, store=local_store, batch_id="chg")
    assert [r.status for r in again.results] == ["ok", "ok"]
    assert len(fake.accepted) == 4


def test_files_an_interrupted_run_left_are_cleared_and_only_there(
    fake: FakeComfyUI, client: ComfyClient, store: ObjectStore, make_jobs: JobsFactory
) -> None:
    # A run killed between storing a job's image and recording its row leaves the image
    # and no row: the rerun clears that folder before its own file lands (one file per
    # job), and lists no other job's folder (a listing per job was one request per output).
    rows = [{"id": j, "workflow": "sdxl_txt2img", "prompt": j} for j in ("a", "b", "c")]
    store.put_bytes("outputs/left/b/old_00001_.png", b"stale")
    listed: list[str] = []
    real_list = store.list

    def counting_list(prefix: str = "") -> Any:
        listed.append(prefix)
        return real_list(prefix)

    store.list = counting_list  # type: ignore[method-assign]
    report = run_batch(make_jobs(rows), client=client, store=store, batch_id="left")
    del store.list
    assert report.counts["ok"] == 3, report.markdown()
    for result in report.results:
        assert stored(store, f"outputs/left/{result.id}/") == result.outputs
    assert "outputs/left/b/old_00001_.png" not in stored(store, "outputs/left/")
    assert "outputs/left/b/" in listed
    assert "outputs/left/a/" not in listed and "outputs/left/c/" not in listed


def test_transient_submit_failure_is_retried(
    fake: FakeComfyUI, local_store: ObjectStore, make_jobs: JobsFactory
) -> None:
    jobs = make_jobs([{"id": "r", "workflow": "sdxl_txt2img", "prompt": "x"}])
    with make_client(fake.url) as client:
        fake.stop()  # not there yet for the first attempt
        restarted = []

        def on_event(event: BatchEvent) -> None:
            if event.kind == "retry" and not restarted:
                restarted.append(event.message)
                fake.start()

        report = run_batch(
            jobs,
            client=client,
            store=local_store,
            batch_id="tr",
            on_event=on_event,
            options=BatchOptions(retries=2, retry_backoff_s=0.05),
        )
    assert report.results[0].status == "ok" and report.results[0].attempt == 2
    assert "cannot reach ComfyUI" in restarted[0]


def test_bad_arguments(
    client: ComfyClient, local_store: ObjectStore, make_jobs: JobsFactory
) -> None:
    from comfyfleet.errors import ConfigError

    jobs = make_jobs([{"id": "a", "workflow": "sdxl_txt2img", "prompt": "x"}])
    with pytest.raises(ConfigError, match="batch id"):
        run_batch(jobs, client=client, store=local_store, batch_id="../up")
    with pytest.raises(ConfigError, match="queue depth"):
        run_batch(
            jobs,
            client=client,
            store=local_store,
            batch_id="b",
            options=BatchOptions(queue_depth=0),
        )
    with pytest.raises(ConfigError, match="duplicate job ids"):
        run_batch(jobs + jobs, client=client, store=local_store, batch_id="b")


def test_prompt_timeout_cancels_then_retries(
    fake: FakeComfyUI, client: ComfyClient, local_store: ObjectStore, make_jobs: JobsFactory
) -> None:
    fake.execution_time = 2.0
    jobs = make_jobs([{"id": "slow", "workflow": "sdxl_txt2img", "prompt": "x"}])
    report = run_batch(
        jobs,
        client=client,
        store=local_store,
        batch_id="slow",
        options=BatchOptions(retries=1, retry_backoff_s=0.01, prompt_timeout_s=0.3),
    )
    result = report.results[0]
    assert result.status == "failed" and result.attempt == 2
    assert "did not finish within 0.3 s" in result.error
    # Each abandoned prompt was interrupted, so ComfyUI did not keep working on it.
    assert [c.get("prompt_id") for c in fake.interrupt_calls] == [item[1] for item in fake.accepted]
    assert fake.wait_idle(timeout=5)


def test_each_job_gets_its_own_check_verdict(
    fake: FakeComfyUI, client: ComfyClient, local_store: ObjectStore, make_jobs: JobsFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Issue 9 item 1: jobs that differ only in a choice value never share a cached failure."""
    jobs = make_jobs([
        {"id": "s1", "workflow": "sdxl_txt2img", "prompt": "a cat", "sampler": "bogus_sampler"},
        {"id": "s2", "workflow": "sdxl_txt2img", "prompt": "a dog", "sampler": "euler"},
    ])  # fmt: skip
    report = run_batch(jobs, client=client, store=local_store, batch_id="choices")
    s1, s2 = report.results
    assert s1.status == "failed" and "'bogus_sampler' is not a valid choice" in s1.error
    assert s2.status == "ok", s2.error
    assert [item[2]["3"]["inputs"]["sampler_name"] for item in fake.accepted] == ["euler"]

    # The same with a user workflow's {{method}} placeholder, and a width ComfyUI refuses.
    scale = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
        "2": {"class_type": "ImageScale", "inputs": {
            "image": ["1", 0], "upscale_method": "{{method}}", "width": "{{w}}",
            "height": 64, "crop": "disabled"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "s"}},
    }  # fmt: skip
    (tmp_path / "scale.json").write_text(json.dumps(scale))
    (tmp_path / "in.png").write_bytes(png_bytes(rgb=(1, 2, 3)))
    common = {"workflow": str(tmp_path / "scale.json"), "image": str(tmp_path / "in.png")}
    jobs = make_jobs([
        {"id": "m1", **common, "method": "bogus", "w": 64},
        {"id": "m2", **common, "method": "bilinear", "w": 64},
        {"id": "m3", **common, "method": "bilinear", "w": 99999},
    ])  # fmt: skip
    by_id = {
        r.id: r for r in run_batch(jobs, client=client, store=local_store, batch_id="m").results
    }
    assert by_id["m1"].status == "failed" and "'bogus' is not a valid choice" in by_id["m1"].error
    assert by_id["m2"].status == "ok", by_id["m2"].error
    assert by_id["m3"].status == "failed" and "bogus" not in by_id["m3"].error
    assert "width" in by_id["m3"].error


def test_missing_model_files_are_refused_naming_the_catalog_id(
    fake: FakeComfyUI, client: ComfyClient, local_store: ObjectStore, make_jobs: JobsFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Issue 9 item 3: a job whose model files ComfyUI does not have is refused before it is
    submitted, naming the catalog id to mirror; CogVideoX's repo folder included (its wrapper
    would otherwise download it from Hugging Face behind the mirror's back)."""
    from comfyfleet.catalog import load_catalog
    from comfyfleet.generate.preflight import catalog_files

    ids = catalog_files(load_catalog().models.values())
    fake.models["CogVideo"] = [f for f in fake.models["CogVideo"] if "-I2V/" not in f]
    (tmp_path / "in.png").write_bytes(png_bytes(rgb=(9, 9, 9)))
    jobs = make_jobs([
        {"id": "jug", "workflow": "sdxl_txt2img", "prompt": "x",
         "checkpoint": "Juggernaut-XL_v9_RunDiffusionPhoto_v2.safetensors"},
        {"id": "cog", "workflow": "cogvideox", "prompt": "waves", "image": "in.png"},
        {"id": "t2v", "workflow": "cogvideox", "prompt": "waves"},
    ])  # fmt: skip
    report = run_batch(jobs, client=client, store=local_store, batch_id="models", catalog_files=ids)
    by_id = {r.id: r for r in report.results}
    jug, cog = by_id["jug"], by_id["cog"]
    assert jug.status == "failed" and "comfyfleet mirror --only juggernaut-xl-v9" in jug.error
    assert (
        "'Juggernaut-XL_v9_RunDiffusionPhoto_v2.safetensors' is not in ComfyUI's models/checkpoints"
        in jug.error
    )
    assert cog.status == "failed" and "model folder 'CogVideoX-5b-I2V/'" in cog.error
    assert "--only cogvideox-5b-i2v-transformer-00001" in cog.error
    assert "cogvideox-5b-i2v-scheduler-config" in cog.error
    assert by_id["t2v"].status == "ok", by_id["t2v"].error
    submitted = [n["inputs"].get("model") for _, _, wf, *_ in fake.accepted for n in wf.values()
                 if n["class_type"] == "DownloadAndLoadCogVideoModel"]  # fmt: skip
    assert submitted == ["THUDM/CogVideoX-5b"]
    assert len(fake.accepted) == 1

    # Once the file is there (pulled meanwhile), the same batch runs it: no stale listing.
    fake.models["checkpoints"].append("Juggernaut-XL_v9_RunDiffusionPhoto_v2.safetensors")
    again = run_batch(jobs[:1], client=client, store=local_store, batch_id="models2")
    assert again.results[0].status == "ok", again.results[0].error


def test_id_is_a_placeholder_like_any_column(
    fake: FakeComfyUI, client: ComfyClient, local_store: ObjectStore, make_jobs: JobsFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Issue 9 item 5: ``{{id}}`` is filled with the job's id."""
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
        "2": {"class_type": "SaveImage",
              "inputs": {"images": ["1", 0], "filename_prefix": "named/{{id}}"}},
    }  # fmt: skip
    (tmp_path / "wf.json").write_text(json.dumps(graph))
    (tmp_path / "in.png").write_bytes(png_bytes(rgb=(4, 5, 6)))
    jobs = make_jobs([{"id": "job-7", "workflow": str(tmp_path / "wf.json"), "image": "in.png"}])
    report = run_batch(jobs, client=client, store=local_store, batch_id="ids")
    assert report.results[0].status == "ok", report.results[0].error
    (item,) = fake.accepted
    assert item[2]["2"]["inputs"]["filename_prefix"] == "named/job-7"


def test_partially_queued_prompt_keeps_its_id_and_leaves_no_orphans(
    fake: FakeComfyUI, client: ComfyClient, local_store: ObjectStore, make_jobs: JobsFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Issue 9 item 6: when ComfyUI still answers 200 with ``node_errors`` (an input the
    preflight leaves to ComfyUI: an input image that is not there), it runs the valid branch.
    The row keeps the prompt id, and what that branch wrote is collected into the job's folder
    instead of staying behind in ComfyUI's output folder unaccounted for."""
    fake.add_input_image("ok.png", png_bytes(rgb=(7, 7, 7)))
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "ok.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "not-uploaded.png"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "b"}},
    }  # fmt: skip
    (tmp_path / "two.json").write_text(json.dumps(graph))
    jobs = make_jobs([{"id": "half", "workflow": str(tmp_path / "two.json")}])
    report = run_batch(jobs, client=client, store=local_store, batch_id="half")
    (row,) = read_results(local_store, "half")
    (accepted,) = fake.accepted
    assert row["status"] == "failed" and "dropped the outputs" in row["error"]
    assert "not-uploaded.png" in row["error"]
    assert row["prompt_id"] == accepted[1] == report.results[0].prompt_id
    written = [
        f["filename"]
        for out in fake.history().get(accepted[1], {}).get("outputs", {}).values()
        for f in out.get("images", [])
    ]
    stored_names = [k.rsplit("/", 1)[-1] for k in row["outputs"]]
    assert stored_names == written  # every file it wrote is accounted for (or none ran)
    assert stored(local_store, "outputs/half/half/") == sorted(row["outputs"])
