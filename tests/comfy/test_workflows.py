"""Workflow builders: node and input names exactly as in reference/comfyui-api.md §5-§7."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.comfy import BUILTIN_WORKFLOWS, ComfyClient, LoraSpec, apply_loras, build_workflow
from comfyfleet.comfy.workflows import (
    PONY_SCORE_TAGS,
    PonyParams,
    Txt2ImgParams,
    parse_loras,
    pony_txt2img,
    sdxl_txt2img,
)
from comfyfleet.errors import ConfigError
from tests.doubles.comfyui import FakeComfyUI, png_bytes

# class_type -> (required inputs, optional inputs, output types), transcribed from the
# reference tables (§5 core + video nodes, §6 custom nodes) -- not from the code under test.
# CLIPSetLastLayer is core ComfyUI (nodes.py): clip + stop_at_clip_layer (INT -24..-1).
REFERENCE: dict[str, tuple[set[str], set[str], list[str]]] = {
    "CheckpointLoaderSimple": ({"ckpt_name"}, set(), ["MODEL", "CLIP", "VAE"]),
    "VAELoader": ({"vae_name"}, set(), ["VAE"]),
    "LoraLoader": (
        {"model", "clip", "lora_name", "strength_model", "strength_clip"},
        set(),
        ["MODEL", "CLIP"],
    ),
    "LoraLoaderModelOnly": ({"model", "lora_name", "strength_model"}, set(), ["MODEL"]),
    "CLIPTextEncode": ({"text", "clip"}, set(), ["CONDITIONING"]),
    "CLIPSetLastLayer": ({"clip", "stop_at_clip_layer"}, set(), ["CLIP"]),
    "EmptyLatentImage": ({"width", "height", "batch_size"}, set(), ["LATENT"]),
    "KSampler": (
        {
            "model",
            "seed",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "positive",
            "negative",
            "latent_image",
            "denoise",
        },
        set(),
        ["LATENT"],
    ),  # fmt: skip
    "VAEDecode": ({"samples", "vae"}, set(), ["IMAGE"]),
    "VAEDecodeTiled": (
        {"samples", "vae", "tile_size", "overlap", "temporal_size", "temporal_overlap"},
        set(),
        ["IMAGE"],
    ),
    "VAEEncode": ({"pixels", "vae"}, set(), ["LATENT"]),
    "SaveImage": ({"images", "filename_prefix"}, set(), []),
    "LoadImage": ({"image"}, set(), ["IMAGE", "MASK"]),
    "ImageScale": ({"image", "upscale_method", "width", "height", "crop"}, set(), ["IMAGE"]),
    "UNETLoader": ({"unet_name", "weight_dtype"}, set(), ["MODEL"]),
    "CLIPLoader": ({"clip_name", "type"}, {"device"}, ["CLIP"]),
    "DualCLIPLoader": ({"clip_name1", "clip_name2", "type"}, {"device"}, ["CLIP"]),
    "CLIPVisionLoader": ({"clip_name"}, set(), ["CLIP_VISION"]),
    "CLIPVisionEncode": ({"clip_vision", "image", "crop"}, set(), ["CLIP_VISION_OUTPUT"]),
    "EmptyHunyuanLatentVideo": ({"width", "height", "length", "batch_size"}, set(), ["LATENT"]),
    "WanImageToVideo": (
        {"positive", "negative", "vae", "width", "height", "length", "batch_size"},
        {"clip_vision_output", "start_image"},
        ["CONDITIONING", "CONDITIONING", "LATENT"],
    ),
    "ImageOnlyCheckpointLoader": ({"ckpt_name"}, set(), ["MODEL", "CLIP_VISION", "VAE"]),
    "SVD_img2vid_Conditioning": (
        {
            "clip_vision",
            "init_image",
            "vae",
            "width",
            "height",
            "video_frames",
            "motion_bucket_id",
            "fps",
            "augmentation_level",
        },
        set(),
        ["CONDITIONING", "CONDITIONING", "LATENT"],
    ),  # fmt: skip
    "VideoLinearCFGGuidance": ({"model", "min_cfg"}, set(), ["MODEL"]),
    "ModelSamplingSD3": ({"model", "shift"}, set(), ["MODEL"]),
    "FluxGuidance": ({"conditioning", "guidance"}, set(), ["CONDITIONING"]),
    "SaveAnimatedWEBP": (
        {"images", "filename_prefix", "fps", "lossless", "quality", "method"},
        set(),
        [],
    ),  # fmt: skip
    "SaveWEBM": ({"images", "filename_prefix", "codec", "fps", "crf"}, set(), []),
    "CreateVideo": ({"images", "fps"}, {"audio"}, ["VIDEO"]),
    "SaveVideo": ({"video", "filename_prefix", "format", "codec"}, set(), []),
    "VHS_VideoCombine": (
        {
            "images",
            "frame_rate",
            "loop_count",
            "filename_prefix",
            "format",
            "pingpong",
            "save_output",
        },
        # optional inputs + the h264-mp4 format widgets (video_formats/h264-mp4.json)
        {"audio", "meta_batch", "vae", "pix_fmt", "crf", "save_metadata", "trim_to_audio"},
        ["VHS_FILENAMES"],
    ),  # fmt: skip
    "ADE_AnimateDiffLoaderGen1": (
        {"model", "model_name", "beta_schedule"},
        {
            "context_options",
            "motion_lora",
            "ad_settings",
            "ad_keyframes",
            "sample_settings",
            "scale_multival",
            "effect_multival",
            "per_block",
        },
        ["MODEL"],
    ),  # fmt: skip
    "DownloadAndLoadCogVideoModel": (
        {"model"},
        {"precision", "quantization", "attention_mode"},
        ["COGVIDEOMODEL", "VAE"],
    ),
    "CogVideoTextEncode": (
        {"clip", "prompt"},
        {"strength", "force_offload"},
        ["CONDITIONING", "CLIP"],
    ),  # noqa: E501
    "CogVideoImageEncode": ({"vae", "start_image"}, {"end_image"}, ["LATENT"]),
    "CogVideoSampler": (
        {"model", "positive", "negative", "num_frames", "steps", "cfg", "seed", "scheduler"},
        {"samples", "image_cond_latents", "denoise_strength", "context_options"},
        ["LATENT"],
    ),
    "CogVideoDecode": (
        {
            "vae",
            "samples",
            "enable_vae_tiling",
            "tile_sample_min_height",
            "tile_sample_min_width",
            "tile_overlap_factor_height",
            "tile_overlap_factor_width",
            "auto_tile_size",
        },
        set(),
        ["IMAGE"],
    ),  # fmt: skip
}

VALUES: dict[str, Any] = {"prompt": "a red fox in snow", "negative": "blurry", "seed": 7}


def values_for(name: str) -> dict[str, Any]:
    spec = BUILTIN_WORKFLOWS[name]
    return {**VALUES, "image": "input-1.png"} if spec.needs_image else dict(VALUES)


def check_against_reference(workflow: dict[str, Any]) -> None:
    for node_id, node in workflow.items():
        class_type = node["class_type"]
        assert class_type in REFERENCE, f"{class_type} is not in the reference tables"
        required, optional, _ = REFERENCE[class_type]
        inputs = set(node["inputs"])
        assert required <= inputs, f"node {node_id} {class_type} misses {required - inputs}"
        assert inputs <= required | optional, (
            f"node {node_id} {class_type} has unknown inputs {inputs - required - optional}"
        )
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                source, index = value
                assert source in workflow, f"node {node_id}.{name} links to missing {source}"
                outputs = REFERENCE[workflow[source]["class_type"]][2]
                assert 0 <= index < len(outputs), f"node {node_id}.{name} bad slot {index}"
            else:
                assert value is not None, f"node {node_id}.{name} is None"


@pytest.mark.parametrize("name", sorted(BUILTIN_WORKFLOWS))
def test_builtin_matches_reference_names(name: str) -> None:
    check_against_reference(build_workflow(name, values_for(name)))


@pytest.mark.parametrize("name", sorted(BUILTIN_WORKFLOWS))
def test_builtin_passes_the_servers_validation_and_runs(
    name: str, fake: FakeComfyUI, client: ComfyClient
) -> None:
    spec = BUILTIN_WORKFLOWS[name]
    values = dict(VALUES)
    if spec.needs_image or spec.optional_image:
        values["image"] = client.upload_image(png_bytes()).ref
    workflow = build_workflow(name, values)
    client.check_workflow(workflow)
    result = client.run(workflow, timeout=10)
    assert result.outputs[0].kind == spec.output_kind
    for folder, file in spec.required_models(values):
        assert file in fake.models[folder]


def test_link_types_match_reference_outputs() -> None:
    wf = build_workflow("wan_i2v", values_for("wan_i2v"))
    sampler = wf["3"]["inputs"]
    assert (sampler["positive"], sampler["negative"], sampler["latent_image"]) == (
        ["50", 0],
        ["50", 1],
        ["50", 2],
    )
    assert wf["38"]["inputs"]["type"] == "wan"
    assert wf["51"]["inputs"]["crop"] == "none"
    svd = build_workflow("svd_i2v", values_for("svd_i2v"))
    assert svd["12"]["inputs"]["clip_vision"] == ["15", 1]
    assert svd["12"]["inputs"]["vae"] == ["15", 2]
    assert svd["14"]["class_type"] == "VideoLinearCFGGuidance"
    ad = build_workflow("animatediff_sdxl", VALUES)
    assert ad["20"]["inputs"]["beta_schedule"] == "linear (AnimateDiff-SDXL)"
    assert ad["3"]["inputs"]["model"] == ["20", 0]
    assert ad["5"]["inputs"]["batch_size"] == 16
    hy = build_workflow("hunyuan_t2v", VALUES)
    assert hy["11"]["inputs"]["type"] == "hunyuan_video"
    assert hy["3"]["inputs"]["positive"] == ["26", 0]


def test_pony_clip_skip_and_score_tags() -> None:
    wf = pony_txt2img(PonyParams(prompt="a pony"))
    assert wf["11"] == {
        "class_type": "CLIPSetLastLayer",
        "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -2},
    }
    assert wf["6"]["inputs"]["clip"] == ["11", 0] and wf["7"]["inputs"]["clip"] == ["11", 0]
    assert wf["6"]["inputs"]["text"] == f"{PONY_SCORE_TAGS}, a pony"
    plain = pony_txt2img(PonyParams(prompt="a pony", score_tags=False, clip_skip=1))
    assert plain["6"]["inputs"]["text"] == "a pony"
    assert plain["11"]["inputs"]["stop_at_clip_layer"] == -1
    tagged = pony_txt2img(PonyParams(prompt="score_9, a pony"))
    assert tagged["6"]["inputs"]["text"] == "score_9, a pony"  # not doubled


def test_img2img_denoise_and_optional_scale() -> None:
    wf = build_workflow("img2img", {**VALUES, "image": "x.png", "denoise": 0.45})
    assert wf["1"]["inputs"] == {"image": "x.png"}
    assert wf["12"]["inputs"] == {"pixels": ["1", 0], "vae": ["4", 2]}
    assert wf["3"]["inputs"]["latent_image"] == ["12", 0]
    assert wf["3"]["inputs"]["denoise"] == 0.45
    assert "2" not in wf
    scaled = build_workflow("img2img", {**VALUES, "image": "x.png", "width": 768, "height": 512})
    assert scaled["12"]["inputs"]["pixels"] == ["2", 0]
    assert scaled["2"]["inputs"]["width"] == 768
    with pytest.raises(ConfigError, match="needs an input image"):
        build_workflow("img2img", VALUES)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_lora_chain_of_any_length(count: int) -> None:
    loras = [LoraSpec(f"l{i}.safetensors", 0.5 + i / 10, 0.25 + i / 10) for i in range(count)]
    wf = sdxl_txt2img(Txt2ImgParams(prompt="x", loras=loras))
    chain = sorted((k for k, n in wf.items() if n["class_type"] == "LoraLoader"), key=int)
    assert len(chain) == count
    model, clip = ["4", 0], ["4", 1]
    for node_id, spec in zip(chain, loras, strict=True):
        inputs = wf[node_id]["inputs"]
        assert inputs == {
            "model": model,
            "clip": clip,
            "lora_name": spec.name,
            "strength_model": spec.strength_model,
            "strength_clip": spec.strength_clip,
        }
        model, clip = [node_id, 0], [node_id, 1]
    assert wf["3"]["inputs"]["model"] == model
    assert wf["6"]["inputs"]["clip"] == clip and wf["7"]["inputs"]["clip"] == clip
    assert wf["8"]["inputs"]["vae"] == ["4", 2]  # VAE still from the checkpoint
    check_against_reference(wf)


def test_lora_chain_feeds_pony_clip_skip_and_unet_models() -> None:
    wf = pony_txt2img(PonyParams(prompt="x", loras=[LoraSpec("p.safetensors", 0.8, 0.7)]))
    assert wf["11"]["inputs"]["clip"] == ["100", 1]  # LoRA first, then clip skip
    wan = build_workflow(
        "wan_i2v", {**values_for("wan_i2v"), "loras": "wan-motion.safetensors:0.6"}
    )
    assert wan["100"] == {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["37", 0], "lora_name": "wan-motion.safetensors",
                   "strength_model": 0.6},
    }  # fmt: skip
    assert wan["54"]["inputs"]["model"] == ["100", 0]
    original = sdxl_txt2img(Txt2ImgParams(prompt="x"))
    apply_loras(original, [LoraSpec("a.safetensors")])
    assert "100" not in original  # pure: the input is not modified
    two = {**original, "40": {"class_type": "CheckpointLoaderSimple", "inputs": {}}}
    with pytest.raises(ConfigError, match="expected exactly one"):
        apply_loras(two, [LoraSpec("a.safetensors")])


def test_parse_loras_forms() -> None:
    assert parse_loras(None) == [] and parse_loras(float("nan")) == [] and parse_loras("") == []
    assert parse_loras("a.safetensors") == [LoraSpec("a.safetensors", 1.0, 1.0)]
    assert parse_loras("a.safetensors:0.8; b.safetensors:0.6:0.4") == [
        LoraSpec("a.safetensors", 0.8, 0.8),
        LoraSpec("b.safetensors", 0.6, 0.4),
    ]
    link = "https://civitai.com/api/download/models/12345?type=Model"
    assert parse_loras(f"{link}:0.7") == [LoraSpec(link, 0.7, 0.7)]
    assert parse_loras('[{"name": "c.safetensors", "strength": 0.5}]') == [
        LoraSpec("c.safetensors", 0.5, 0.5)
    ]
    assert parse_loras([{"name": "d", "strength_model": 0.9, "strength_clip": 0.1}]) == [
        LoraSpec("d", 0.9, 0.1)
    ]
    with pytest.raises(ConfigError):
        parse_loras([{"strength": 1}])


def test_values_are_coerced_and_checked() -> None:
    np = pytest.importorskip("numpy")
    wf = build_workflow(
        "sdxl_txt2img",
        {"prompt": "x", "seed": np.int64(5), "steps": 20.0, "cfg": "6.5", "width": "",
         "height": float("nan"), "id": "job-1", "video": None, "sampler_name": "euler"},
    )  # fmt: skip
    sampler = wf["3"]["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"]) == (5, 20, 6.5)
    assert type(sampler["seed"]) is int and sampler["sampler_name"] == "euler"
    assert wf["5"]["inputs"]["width"] == 1024  # empty cell -> default
    json.dumps(wf)  # plain Python values only
    with pytest.raises(ConfigError, match="steps = 2.5 is not a valid int"):
        build_workflow("sdxl_txt2img", {"prompt": "x", "steps": 2.5})
    with pytest.raises(ConfigError, match="needs a value for 'prompt'"):
        build_workflow("sdxl_txt2img", {"seed": 1})
    with pytest.raises(ConfigError, match="unknown workflow 'nope'"):
        build_workflow("nope", VALUES)


def test_build_workflow_from_a_user_file_with_loras(tmp_path: Path) -> None:
    user = sdxl_txt2img(Txt2ImgParams(prompt="{{prompt}}", seed=0))
    user["3"]["inputs"]["seed"] = "{{seed}}"
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(user))
    wf = build_workflow(str(path), {"prompt": "a cat", "seed": 9, "loras": "a.safetensors:0.5"})
    assert wf["6"]["inputs"]["text"] == "a cat"
    assert wf["3"]["inputs"]["seed"] == 9
    assert wf["100"]["class_type"] == "LoraLoader"
    assert wf["3"]["inputs"]["model"] == ["100", 0]


@pytest.mark.parametrize("name", sorted(BUILTIN_WORKFLOWS))
def test_builtin_defaults_are_catalog_files_of_their_profile(name: str) -> None:
    """Issue 9 item 2: every default model file of a built-in workflow is a file the built-in
    catalog mirrors, in the profile named for the workflow (README, Jobs table)."""
    from comfyfleet.catalog import load_catalog

    catalog = load_catalog()
    spec = BUILTIN_WORKFLOWS[name]
    in_profile = [catalog.models[mid] for mid in catalog.profile_ids(spec.profile)]
    held = {(m.folder, m.file) for m in in_profile}
    defaults = spec.default_models()
    assert defaults, name
    for folder, file in defaults:
        if file.endswith("/"):  # a repo folder a wrapper loads: some weights must be there
            inside = [f for d, f in held if d == folder and f.startswith(file)]
            assert any(f.endswith(".safetensors") for f in inside), (name, folder, file)
        else:
            assert (folder, file) in held, f"{name}: {folder}/{file} not in {spec.profile}"
