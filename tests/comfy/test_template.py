"""User workflow files as templates: {{column}} values, types, image columns, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.comfy import image_columns, load_workflow_file, placeholders, render
from comfyfleet.errors import ConfigError

TEMPLATE: dict[str, Any] = {
    "3": {
        "class_type": "KSampler",
        "inputs": {"seed": "{{seed}}", "cfg": "{{ cfg }}", "steps": 20, "model": ["4", 0]},
    },
    "6": {
        "class_type": "CLIPTextEncode",
        "inputs": {"text": "a photo of {{subject}}, shot {{seed}}", "clip": ["4", 1]},
    },
    "10": {"class_type": "LoadImage", "inputs": {"image": "{{style_image}}"}},
    "11": {"class_type": "Custom", "inputs": {"list": {"__value__": ["{{subject}}", 1]}}},
    "_meta_only": {"class_type": "Note", "inputs": {}, "_meta": {"title": "{{not_rendered}}"}},
}


def test_whole_placeholders_keep_type_embedded_ones_are_formatted() -> None:
    values = {"seed": 42, "cfg": 6.5, "subject": "a fox", "style_image": "abc.png", "x": 1}
    out = render(TEMPLATE, values, source="mine.json")
    assert out["3"]["inputs"] == {"seed": 42, "cfg": 6.5, "steps": 20, "model": ["4", 0]}
    assert out["6"]["inputs"]["text"] == "a photo of a fox, shot 42"
    assert out["10"]["inputs"]["image"] == "abc.png"
    assert out["11"]["inputs"]["list"] == {"__value__": ["a fox", 1]}
    assert out["_meta_only"]["_meta"] == {"title": "{{not_rendered}}"}
    assert TEMPLATE["3"]["inputs"]["seed"] == "{{seed}}"  # the template itself is untouched
    assert placeholders(TEMPLATE) == {"seed", "cfg", "subject", "style_image"}


def test_pandas_and_numpy_values() -> None:
    np = pytest.importorskip("numpy")
    out = render(
        TEMPLATE,
        {"seed": np.float64(42.0), "cfg": np.float32(7.0), "subject": "x", "style_image": "i.png"},
    )
    assert out["6"]["inputs"]["text"] == "a photo of x, shot 42"  # 42.0 read from a CSV
    assert isinstance(out["3"]["inputs"]["seed"], float)
    json.dumps(out)


def test_unknown_placeholder_names_file_node_and_placeholder() -> None:
    with pytest.raises(ConfigError) as caught:
        render(TEMPLATE, {"seed": 1, "cfg": 2, "style_image": "a.png"}, source="flows/mine.json")
    message = str(caught.value)
    assert "flows/mine.json: node 6 (CLIPTextEncode) input 'text' uses {{subject}}" in message
    assert "not a column of this job" in message
    assert "cfg, seed, style_image" in message


def test_empty_value_for_a_used_column_is_an_error() -> None:
    values = {"seed": 1, "cfg": 2, "subject": float("nan"), "style_image": "a.png"}
    with pytest.raises(ConfigError, match="this job has no value for 'subject'"):
        render(TEMPLATE, values)


def test_image_columns() -> None:
    values = {
        "image": "https://example.invalid/a.png",
        "style_image": "/data/b.jpg",
        "imagery": "not an image column",
        "mask_image": None,
        "ref_image": float("nan"),
        "prompt": "x",
    }
    assert image_columns(values) == ["image", "style_image"]


def test_load_workflow_file_refuses_ui_format_and_bad_json(tmp_path: Path) -> None:
    api = tmp_path / "api.json"
    api.write_text(json.dumps({"1": {"class_type": "LoadImage", "inputs": {}}}))
    assert load_workflow_file(api)["1"]["class_type"] == "LoadImage"
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(ConfigError, match="is a UI workflow") as caught:
        load_workflow_file(ui)
    assert "API" in (caught.value.hint or "")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_workflow_file(bad)
    no_class = tmp_path / "noclass.json"
    no_class.write_text(json.dumps({"1": {"inputs": {}}}))
    with pytest.raises(ConfigError, match="node 1 has no class_type"):
        load_workflow_file(no_class)
    with pytest.raises(ConfigError, match="does not exist"):
        load_workflow_file(tmp_path / "missing.json")
