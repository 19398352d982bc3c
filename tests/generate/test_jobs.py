"""Jobs table: CSV / JSONL / Parquet into validated jobs, with errors naming file, row, column."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from comfyfleet.comfy.workflows import LoraSpec
from comfyfleet.errors import ConfigError
from comfyfleet.generate.jobs import read_jobs

BUILTINS = {"sdxl_t2i", "sdxl_i2i", "wan_i2v", "svd_i2v"}
VIDEOS = {"wan_i2v", "svd_i2v"}
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da63fccf5003000403018198a3ad520000000049454e44ae426082"
)


# The smallest API-format workflow file (jobs are read only with readable workflow files).
WF = '{"1": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}'


def read(path: Path) -> list:  # type: ignore[type-arg]
    return read_jobs(path, builtin_workflows=BUILTINS, video_workflows=VIDEOS)


def test_csv_keeps_text_ids_and_converts_numbers(tmp_path: Path) -> None:
    (tmp_path / "in.png").write_bytes(PNG)
    (tmp_path / "wf.json").write_text(WF)
    path = tmp_path / "jobs.csv"
    path.write_text(
        "id,workflow,prompt,seed,width,height,steps,cfg,image,video,loras,style,mask_image\n"
        "007,sdxl_t2i,a fox,42,1024,1024,20,6.5,,,,noir,\n"
        'b,wf.json,a cat,,,,,,in.png,wan_i2v,"my-lora:0.8;https://civitai.com/models/1?'
        'modelVersionId=2:0.6:0.4",,in.png\n'
    )
    first, second = read(path)
    assert first.id == "007" and first.seed == 42 and first.width == 1024 and first.cfg == 6.5
    assert first.extra == {"style": "noir"} and first.image is None and first.video is None
    assert first.values()["prompt"] == "a fox" and "negative" not in first.values()
    assert second.workflow == str((tmp_path / "wf.json").resolve())
    assert second.image == str((tmp_path / "in.png").resolve())
    assert second.extra["mask_image"] == str((tmp_path / "in.png").resolve())
    assert set(second.image_inputs()) == {"image", "mask_image"}
    assert second.video == "wan_i2v"
    assert second.loras == (
        LoraSpec("my-lora", 0.8, 0.8),
        LoraSpec("https://civitai.com/models/1?modelVersionId=2", 0.6, 0.4),
    )
    assert first.fingerprint() != second.fingerprint()


def test_jsonl_and_parquet(tmp_path: Path) -> None:
    rows = [
        {
            "id": 1,
            "workflow": "sdxl_t2i",
            "prompt": "x",
            "seed": 3,
            "loras": [{"name": "a.safetensors", "strength": 0.5}],
        },
        {"id": "two", "workflow": "sdxl_t2i", "prompt": "y"},
    ]
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    jobs = read(jsonl)
    assert [j.id for j in jobs] == ["1", "two"]
    assert jobs[0].loras == (LoraSpec("a.safetensors", 0.5, 0.5),)
    parquet = tmp_path / "jobs.parquet"
    pd.DataFrame(
        [
            {"id": "p1", "workflow": "sdxl_t2i", "seed": 7, "steps": 4},
            {"id": "p2", "workflow": "sdxl_t2i", "seed": None, "steps": None},
        ]
    ).to_parquet(parquet)
    p1, p2 = read(parquet)
    assert (p1.seed, p1.steps, p2.seed, p2.steps) == (7, 4, None, None)


def test_every_problem_is_named(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(
        "id,workflow,seed,width,cfg,video,image,loras\n"
        "a,sdxl_t2i,-1,1004,abc,,,\n"
        "a,nope,,,,,missing.png,\n"
        ",sdxl_t2i,,,,,,\n"
        'c,sdxl_t2i,,,,mochi,ftp://x/y.png,"[1,"\n'
    )
    with pytest.raises(ConfigError) as info:
        read(path)
    text = str(info.value)
    for expected in (
        "jobs.csv row 1 (id 'a'): column 'seed': -1 is outside",
        "row 1 (id 'a'): column 'width': 1004 is not a multiple of 8",
        "column 'cfg': 'abc' is not a number",
        "row 2 (id 'a'): column 'workflow': 'nope' is neither a built-in workflow",
        "column 'image': image file 'missing.png' does not exist",
        "jobs.csv row 3: column 'id': empty",
        "column 'video': unknown video workflow 'mochi'",
        "column 'image': 'ftp://x/y.png': only http(s) URLs",
        "column 'loras': loras value '[1,' is not a valid JSON list",
    ):
        assert expected in text, expected


def test_duplicate_ids_name_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("id,workflow\na,sdxl_t2i\nb,sdxl_t2i\na,sdxl_t2i\n")
    with pytest.raises(ConfigError, match=r"rows 1, 3: column 'id': duplicate id 'a'"):
        read(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("prompt\nx\n", "column 'id' is missing"),
        ("id\nx\n", "column 'workflow' is missing"),
        ("id,workflow\n", "no jobs"),
    ],
)
def test_missing_columns(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read(path)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown format '.txt'"):
        read(tmp_path / "jobs.txt")
    with pytest.raises(ConfigError, match="does not exist"):
        read(tmp_path / "jobs.csv")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(ConfigError, match="cannot be read as JSONL"):
        read(bad)


def test_lora_cells_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    rows = [
        {"id": "a", "workflow": "sdxl_t2i", "loras": ":0.5"},
        {"id": "b", "workflow": "sdxl_t2i", "loras": "x.safetensors:250"},
        {"id": "c", "workflow": "sdxl_t2i", "loras": [{"name": "y", "strength": 0.5}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ConfigError) as info:
        read(path)
    text = str(info.value)
    assert "row 1 (id 'a'): column 'loras': LoRA entry ':0.5' has no name" in text
    assert "row 2 (id 'b'): column 'loras': strength 250 of 'x.safetensors' is outside" in text
    assert "row 3" not in text


def test_default_workflow_names_come_from_the_builtin_set(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("id,workflow,video\na,sdxl_txt2img,wan_i2v\nb,pony_txt2img,hunyuan_t2v\n")
    with pytest.raises(ConfigError) as info:
        read_jobs(path)
    text = str(info.value)
    assert "row 2 (id 'b'): column 'video': unknown video workflow 'hunyuan_t2v'" in text
    assert "cogvideox, svd_i2v, wan_i2v" in text
    assert "row 1" not in text


def test_duplicate_id_of_an_invalid_row_is_reported_with_its_other_problem(tmp_path: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text("id,workflow\na,sdxl_t2i\na,nope\n")
    with pytest.raises(ConfigError) as info:
        read(path)
    text = str(info.value)
    assert "row 2 (id 'a'): column 'workflow': 'nope'" in text
    assert "rows 1, 2: column 'id': duplicate id 'a'" in text


def test_multiple_of_8_only_for_builtin_latent_sizes(tmp_path: Path) -> None:
    """Issue 9 item 4: a user workflow may take any width/height (ImageScale does)."""
    (tmp_path / "scale.json").write_text(WF)
    path = tmp_path / "jobs.csv"
    path.write_text("id,workflow,width,height\nu,scale.json,100,75\n")
    (job,) = read(path)
    assert (job.width, job.height) == (100, 75)
    path.write_text("id,workflow,width,height\nb,sdxl_t2i,100,72\n")
    with pytest.raises(ConfigError, match="column 'width': 100 is not a multiple of 8"):
        read(path)


def test_every_workflow_file_is_parsed_before_the_batch(tmp_path: Path) -> None:
    """Issue 9 item 15: a workflow file that is not JSON (or not the API format) is a
    problem of the jobs file, found before anything runs."""
    (tmp_path / "good.json").write_text(WF)
    (tmp_path / "broken.json").write_text('{"1": {"class_type": ')
    (tmp_path / "ui.json").write_text('{"nodes": [], "links": []}')
    path = tmp_path / "jobs.csv"
    path.write_text("id,workflow\na,good.json\nb,broken.json\nc,ui.json\nd,broken.json\n")
    with pytest.raises(ConfigError) as info:
        read(path)
    text = str(info.value)
    assert "2 problem(s)" in text
    assert "jobs.csv rows 2, 4: column 'workflow': workflow file" in text
    assert "broken.json is not valid JSON" in text
    assert "jobs.csv row 3: column 'workflow':" in text and "is a UI workflow" in text
