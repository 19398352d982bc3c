"""API-format workflows built in code, and the registry the batch runner picks from.

Every builder is a pure function ``params -> dict`` whose node classes and input names are
exactly those of reference/comfyui-api.md §5-§7 (ComfyUI 0.3.64 and the VideoHelperSuite,
AnimateDiff-Evolved and CogVideoXWrapper custom nodes); tests check each one against a
table of allowed inputs and against the test server's ``/object_info`` validation.
``CLIPSetLastLayer`` (Pony's clip skip) is core ComfyUI: ``clip`` + ``stop_at_clip_layer``
(INT -24..-1).

Node ids follow ComfyUI's default graph (``4`` checkpoint, ``6``/``7`` prompts, ``5`` latent,
``3`` sampler, ``8`` decode, ``9`` save); LoRA nodes get ids from 100 up.

:func:`build_workflow` is what a batch job calls: a built-in name gets its builder with the
job's values, anything else is read as a user's API-format workflow file and rendered as a
template (``{{column}}``, see :mod:`comfyfleet.comfy.template`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyfleet.errors import ConfigError

from .template import is_missing, load_workflow_file, plain, render

Workflow = dict[str, Any]

PONY_SCORE_TAGS = "score_9, score_8_up, score_7_up, score_6_up, score_5_up, score_4_up"
PONY_NEGATIVE_TAGS = "score_6, score_5, score_4"


# ---------------------------------------------------------------- LoRAs


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file in ``models/loras`` and how strongly it applies to the model and CLIP."""

    name: str
    strength_model: float = 1.0
    strength_clip: float = 1.0


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_loras(value: Any) -> list[LoraSpec]:
    """LoRAs from a job cell.

    Accepts a list of :class:`LoraSpec`, dicts (``name``, ``strength_model``,
    ``strength_clip``; ``strength`` sets both) or strings; a JSON list; or a string of
    ``name[:model_strength[:clip_strength]]`` items separated by ``;`` or newlines
    (``a.safetensors:0.8;b.safetensors:0.6:0.4``). Names may be URLs (``:`` inside them is
    kept; only trailing numbers count as strengths).
    """
    if is_missing(value):
        return []
    if isinstance(value, LoraSpec):
        return [value]
    if isinstance(value, Mapping):
        return [_lora_from_mapping(value)]
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                return parse_loras(json.loads(text))
            except ValueError as exc:
                raise ConfigError(f"loras value {text[:60]!r} is not a valid JSON list") from exc
        items = [p.strip() for p in text.replace("\n", ";").split(";") if p.strip()]
        return [_lora_from_text(item) for item in items]
    if isinstance(value, Sequence) or hasattr(value, "tolist"):
        listed = value.tolist() if hasattr(value, "tolist") else list(value)
        return [spec for item in listed for spec in parse_loras(item)]
    raise ConfigError(f"loras value {value!r} is not a list of LoRAs")


def _lora_from_text(item: str) -> LoraSpec:
    parts = item.split(":")
    numbers: list[float] = []
    # Strengths are trailing numeric fields; at most two.
    while len(parts) > 1 and len(numbers) < 2 and _float(parts[-1]) is not None:
        numbers.insert(0, float(parts.pop()))
    name = ":".join(parts).strip()
    if not name:
        raise ConfigError(f"LoRA entry {item!r} has no name")
    if not numbers:
        return LoraSpec(name)
    model = numbers[0]
    return LoraSpec(name, model, numbers[1] if len(numbers) > 1 else model)


def _lora_from_mapping(item: Mapping[str, Any]) -> LoraSpec:
    name = item.get("name") or item.get("lora") or item.get("lora_name")
    if not name:
        raise ConfigError(f"LoRA entry {dict(item)!r} has no 'name'")
    both = item.get("strength")
    model = item.get("strength_model", both if both is not None else 1.0)
    clip = item.get("strength_clip", both if both is not None else model)
    try:
        return LoraSpec(str(name), float(model), float(clip))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"LoRA entry {dict(item)!r} has a strength that is not a number") from exc


def _is_link(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], str)


def _next_id(workflow: Mapping[str, Any], start: int = 100) -> int:
    numeric = [int(k) for k in workflow if str(k).isdigit()]
    return max([start - 1, *numeric]) + 1


def apply_loras(workflow: Mapping[str, Any], loras: Sequence[LoraSpec]) -> Workflow:
    """A copy of ``workflow`` with a chain of LoRA loaders after its model loader.

    ``CheckpointLoaderSimple`` gets ``LoraLoader`` nodes (model and CLIP); a workflow whose
    model comes from ``UNETLoader`` (Wan, HunyuanVideo) gets ``LoraLoaderModelOnly``. Every
    node that used the loader's MODEL (and CLIP) output is rewired to the end of the chain,
    so the chain can be any length and sits before clip skip, samplers and AnimateDiff.
    """
    out: Workflow = copy.deepcopy(dict(workflow))
    if not loras:
        return out
    checkpoints = [k for k, n in out.items() if n.get("class_type") == "CheckpointLoaderSimple"]
    unets = [k for k, n in out.items() if n.get("class_type") == "UNETLoader"]
    candidates = checkpoints or unets
    if len(candidates) != 1:
        found = "no" if not candidates else f"{len(candidates)}"
        raise ConfigError(
            f"cannot chain LoRAs: the workflow has {found} CheckpointLoaderSimple/UNETLoader "
            "node(s), expected exactly one",
            hint="put the LoraLoader nodes into the workflow file yourself for this graph",
        )
    source = candidates[0]
    with_clip = bool(checkpoints)
    model_link: list[Any] = [source, 0]
    clip_link: list[Any] = [source, 1]
    next_id = _next_id(out)
    chain: set[str] = set()
    for spec in loras:
        node_id = str(next_id)
        next_id += 1
        chain.add(node_id)
        if with_clip:
            out[node_id] = _node(
                "LoraLoader",
                model=model_link,
                clip=clip_link,
                lora_name=spec.name,
                strength_model=float(spec.strength_model),
                strength_clip=float(spec.strength_clip),
            )
            clip_link = [node_id, 1]
        else:
            out[node_id] = _node(
                "LoraLoaderModelOnly",
                model=model_link,
                lora_name=spec.name,
                strength_model=float(spec.strength_model),
            )
        model_link = [node_id, 0]
    for node_id, node in out.items():
        if node_id in chain:
            continue
        inputs = node.get("inputs", {})
        for name, value in list(inputs.items()):
            if not _is_link(value) or str(value[0]) != source:
                continue
            if int(value[1]) == 0:
                inputs[name] = list(model_link)
            elif with_clip and int(value[1]) == 1:
                inputs[name] = list(clip_link)
    return out


# ---------------------------------------------------------------- parameters


@dataclass
class Txt2ImgParams:
    """SDXL text-to-image (CheckpointLoaderSimple -> KSampler -> SaveImage)."""

    prompt: str
    checkpoint: str = "sd_xl_base_1.0.safetensors"
    negative: str = ""
    seed: int = 0
    width: int = 1024
    height: int = 1024
    steps: int = 30
    cfg: float = 7.0
    sampler: str = "dpmpp_2m"
    scheduler: str = "karras"
    batch_size: int = 1
    vae: str | None = None
    loras: Sequence[LoraSpec] = ()
    filename_prefix: str = "comfyfleet/txt2img"


@dataclass
class PonyParams(Txt2ImgParams):
    """Pony Diffusion V6 XL: SDXL with clip skip 2 and (optionally) the score tags."""

    checkpoint: str = "ponyDiffusionV6XL_v6StartWithThisOne.safetensors"
    steps: int = 25
    cfg: float = 7.0
    sampler: str = "euler_ancestral"
    scheduler: str = "normal"
    clip_skip: int = 2
    score_tags: bool = True
    filename_prefix: str = "comfyfleet/pony"


@dataclass
class Img2ImgParams(Txt2ImgParams):
    """Image-to-image: LoadImage (an uploaded name) -> [ImageScale] -> VAEEncode -> KSampler.

    ``width``/``height`` 0 keep the input size (no ImageScale node).
    """

    image: str = ""
    denoise: float = 0.6
    width: int = 0
    height: int = 0
    filename_prefix: str = "comfyfleet/img2img"


@dataclass
class WanI2VParams:
    """Wan 2.1 image-to-video 480P with native nodes (frames: 4n+1)."""

    prompt: str = ""
    image: str = ""
    negative: str = ""
    checkpoint: str = "wan2.1_i2v_480p_14B_fp8_scaled.safetensors"
    weight_dtype: str = "default"
    text_encoder: str = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    vae: str = "wan_2.1_vae.safetensors"
    clip_vision: str = "clip_vision_h.safetensors"
    seed: int = 0
    width: int = 832
    height: int = 480
    frames: int = 33
    steps: int = 20
    cfg: float = 6.0
    sampler: str = "uni_pc"
    scheduler: str = "simple"
    shift: float = 8.0
    fps: float = 16.0
    output: str = "mp4"
    loras: Sequence[LoraSpec] = ()
    filename_prefix: str = "comfyfleet/wan_i2v"


@dataclass
class HunyuanT2VParams:
    """HunyuanVideo text-to-video with native nodes (frames: 4n+1)."""

    prompt: str
    checkpoint: str = "hunyuan_video_t2v_720p_bf16.safetensors"
    weight_dtype: str = "default"
    clip_l: str = "clip_l.safetensors"
    llava: str = "llava_llama3_fp8_scaled.safetensors"
    vae: str = "hunyuan_video_vae_bf16.safetensors"
    seed: int = 0
    width: int = 848
    height: int = 480
    frames: int = 73
    steps: int = 20
    cfg: float = 1.0
    guidance: float = 6.0
    shift: float = 7.0
    sampler: str = "euler"
    scheduler: str = "simple"
    fps: float = 24.0
    output: str = "mp4"
    loras: Sequence[LoraSpec] = ()
    filename_prefix: str = "comfyfleet/hunyuan"


@dataclass
class SVDParams:
    """Stable Video Diffusion (XT) image-to-video with native nodes."""

    image: str = ""
    prompt: str = ""  # SVD has no text conditioning; kept so every job row fits
    checkpoint: str = "svd_xt.safetensors"
    seed: int = 0
    width: int = 1024
    height: int = 576
    frames: int = 25
    motion_bucket_id: int = 127
    fps: int = 6
    augmentation_level: float = 0.0
    min_cfg: float = 1.0
    steps: int = 20
    cfg: float = 2.5
    sampler: str = "euler"
    scheduler: str = "karras"
    output: str = "webp"
    filename_prefix: str = "comfyfleet/svd"


@dataclass
class AnimateDiffSDXLParams:
    """AnimateDiff-Evolved (Gen1 loader) on an SDXL checkpoint, VHS_VideoCombine output.

    The SDXL motion module was trained on 16 frames; keep ``frames`` at 16 (up to 32 works
    without context options).
    """

    prompt: str
    checkpoint: str = "sd_xl_base_1.0.safetensors"
    motion_model: str = "mm_sdxl_v10_beta.ckpt"
    beta_schedule: str = "linear (AnimateDiff-SDXL)"
    negative: str = ""
    seed: int = 0
    width: int = 1024
    height: int = 576
    frames: int = 16
    steps: int = 25
    cfg: float = 7.0
    sampler: str = "euler"
    scheduler: str = "normal"
    fps: float = 8.0
    format: str = "video/h264-mp4"
    loras: Sequence[LoraSpec] = ()
    filename_prefix: str = "comfyfleet/animatediff"


@dataclass
class CogVideoXParams:
    """CogVideoX through kijai's CogVideoXWrapper; image-to-video when ``image`` is set.

    ``checkpoint`` is the wrapper's model choice (a Hugging Face repo id it keeps under
    ``models/CogVideo``); empty picks CogVideoX-5b, or -5b-I2V with an image. The T5 text
    encoder is a ComfyUI ``text_encoders`` file loaded with ``CLIPLoader`` type ``sd3``.
    """

    prompt: str
    image: str = ""
    negative: str = ""
    checkpoint: str = ""
    text_encoder: str = "t5xxl_fp8_e4m3fn.safetensors"
    precision: str = "bf16"
    seed: int = 0
    width: int = 720
    height: int = 480
    frames: int = 49
    steps: int = 50
    cfg: float = 6.0
    scheduler: str = "CogVideoXDDIM"
    fps: float = 8.0
    format: str = "video/h264-mp4"
    filename_prefix: str = "comfyfleet/cogvideox"


# ---------------------------------------------------------------- builders


def _node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def _require_image(image: str, workflow: str) -> None:
    if not image:
        raise ConfigError(
            f"workflow {workflow} needs an input image",
            hint="set the job's 'image' column (a URL or path; it is uploaded first)",
        )


def sdxl_txt2img(p: Txt2ImgParams) -> Workflow:
    """SDXL text-to-image."""
    wf = _sd_graph(p, clip=["4", 1], positive=p.prompt, negative=p.negative)
    wf["5"] = _node("EmptyLatentImage", width=p.width, height=p.height, batch_size=p.batch_size)
    wf["3"]["inputs"]["latent_image"] = ["5", 0]
    return apply_loras(wf, p.loras)


def pony_txt2img(p: PonyParams) -> Workflow:
    """Pony Diffusion V6 XL: CLIPSetLastLayer(-clip_skip) feeds both prompts."""
    positive, negative = p.prompt, p.negative
    if p.score_tags and not positive.lstrip().startswith("score_"):
        positive = f"{PONY_SCORE_TAGS}, {positive}" if positive else PONY_SCORE_TAGS
        negative = f"{PONY_NEGATIVE_TAGS}, {negative}" if negative else PONY_NEGATIVE_TAGS
    if not 1 <= p.clip_skip <= 24:
        raise ConfigError(f"pony clip_skip {p.clip_skip} is out of range", hint="use 1..24 (2)")
    wf = _sd_graph(p, clip=["11", 0], positive=positive, negative=negative)
    wf["11"] = _node("CLIPSetLastLayer", clip=["4", 1], stop_at_clip_layer=-p.clip_skip)
    wf["5"] = _node("EmptyLatentImage", width=p.width, height=p.height, batch_size=p.batch_size)
    wf["3"]["inputs"]["latent_image"] = ["5", 0]
    return apply_loras(wf, p.loras)


def img2img(p: Img2ImgParams) -> Workflow:
    """Image-to-image from an uploaded image (``p.image`` = the name ComfyUI returned)."""
    _require_image(p.image, "img2img")
    wf = _sd_graph(p, clip=["4", 1], positive=p.prompt, negative=p.negative)
    wf["1"] = _node("LoadImage", image=p.image)
    pixels: list[Any] = ["1", 0]
    if p.width or p.height:
        wf["2"] = _node(
            "ImageScale",
            image=["1", 0],
            upscale_method="lanczos",
            width=p.width,
            height=p.height,
            crop="center",
        )
        pixels = ["2", 0]
    vae = wf["8"]["inputs"]["vae"]
    wf["12"] = _node("VAEEncode", pixels=pixels, vae=list(vae))
    wf["3"]["inputs"]["latent_image"] = ["12", 0]
    wf["3"]["inputs"]["denoise"] = p.denoise
    return apply_loras(wf, p.loras)


def _sd_graph(p: Txt2ImgParams, *, clip: list[Any], positive: str, negative: str) -> Workflow:
    vae: list[Any] = ["4", 2]
    wf: Workflow = {"4": _node("CheckpointLoaderSimple", ckpt_name=p.checkpoint)}
    if p.vae:
        wf["10"] = _node("VAELoader", vae_name=p.vae)
        vae = ["10", 0]
    wf["6"] = _node("CLIPTextEncode", text=positive, clip=list(clip))
    wf["7"] = _node("CLIPTextEncode", text=negative, clip=list(clip))
    wf["3"] = _node(
        "KSampler",
        model=["4", 0],
        seed=p.seed,
        steps=p.steps,
        cfg=p.cfg,
        sampler_name=p.sampler,
        scheduler=p.scheduler,
        positive=["6", 0],
        negative=["7", 0],
        latent_image=None,
        denoise=1.0,
    )
    wf["8"] = _node("VAEDecode", samples=["3", 0], vae=vae)
    wf["9"] = _node("SaveImage", images=["8", 0], filename_prefix=p.filename_prefix)
    return wf


def _video_output(wf: Workflow, images: list[Any], output: str, fps: float, prefix: str) -> None:
    """Native video outputs: SaveAnimatedWEBP, SaveWEBM or CreateVideo + SaveVideo (mp4)."""
    if output == "webp":
        wf["60"] = _node(
            "SaveAnimatedWEBP",
            images=images,
            filename_prefix=prefix,
            fps=float(fps),
            lossless=False,
            quality=90,
            method="default",
        )
    elif output == "webm":
        wf["60"] = _node(
            "SaveWEBM", images=images, filename_prefix=prefix, codec="vp9", fps=float(fps),
            crf=32.0,
        )  # fmt: skip
    elif output == "mp4":
        wf["59"] = _node("CreateVideo", images=images, fps=float(fps))
        wf["60"] = _node(
            "SaveVideo", video=["59", 0], filename_prefix=prefix, format="mp4", codec="h264"
        )
    else:
        raise ConfigError(
            f"video output '{output}' is not supported", hint="use one of: mp4, webp, webm"
        )


def _vhs_output(wf: Workflow, images: list[Any], fmt: str, fps: float, prefix: str) -> None:
    inputs: dict[str, Any] = {
        "images": images,
        "frame_rate": float(fps),
        "loop_count": 0,
        "filename_prefix": prefix,
        "format": fmt,
        "pingpong": False,
        "save_output": True,
    }
    if fmt in ("video/h264-mp4", "video/h265-mp4"):
        # Format-specific widgets from VHS's video_formats/*.json.
        inputs.update(pix_fmt="yuv420p", crf=19, save_metadata=True, trim_to_audio=False)
    wf["60"] = _node("VHS_VideoCombine", **inputs)


def wan_i2v(p: WanI2VParams) -> Workflow:
    """Wan 2.1 I2V 480P: UNETLoader, CLIPLoader(wan), CLIPVision, WanImageToVideo, KSampler."""
    _require_image(p.image, "wan_i2v")
    wf: Workflow = {
        "37": _node("UNETLoader", unet_name=p.checkpoint, weight_dtype=p.weight_dtype),
        "54": _node("ModelSamplingSD3", model=["37", 0], shift=float(p.shift)),
        "38": _node("CLIPLoader", clip_name=p.text_encoder, type="wan"),
        "39": _node("VAELoader", vae_name=p.vae),
        "49": _node("CLIPVisionLoader", clip_name=p.clip_vision),
        "52": _node("LoadImage", image=p.image),
        "51": _node("CLIPVisionEncode", clip_vision=["49", 0], image=["52", 0], crop="none"),
        "6": _node("CLIPTextEncode", text=p.prompt, clip=["38", 0]),
        "7": _node("CLIPTextEncode", text=p.negative, clip=["38", 0]),
        "50": _node(
            "WanImageToVideo",
            positive=["6", 0],
            negative=["7", 0],
            vae=["39", 0],
            clip_vision_output=["51", 0],
            start_image=["52", 0],
            width=p.width,
            height=p.height,
            length=p.frames,
            batch_size=1,
        ),
        "3": _node(
            "KSampler",
            model=["54", 0],
            seed=p.seed,
            steps=p.steps,
            cfg=p.cfg,
            sampler_name=p.sampler,
            scheduler=p.scheduler,
            positive=["50", 0],
            negative=["50", 1],
            latent_image=["50", 2],
            denoise=1.0,
        ),
        "8": _node("VAEDecode", samples=["3", 0], vae=["39", 0]),
    }
    _video_output(wf, ["8", 0], p.output, p.fps, p.filename_prefix)
    return apply_loras(wf, p.loras)


def hunyuan_t2v(p: HunyuanT2VParams) -> Workflow:
    """HunyuanVideo T2V: UNETLoader, DualCLIPLoader(hunyuan_video), FluxGuidance, tiled decode."""
    wf: Workflow = {
        "12": _node("UNETLoader", unet_name=p.checkpoint, weight_dtype=p.weight_dtype),
        "67": _node("ModelSamplingSD3", model=["12", 0], shift=float(p.shift)),
        "11": _node(
            "DualCLIPLoader", clip_name1=p.clip_l, clip_name2=p.llava, type="hunyuan_video"
        ),
        "10": _node("VAELoader", vae_name=p.vae),
        "44": _node("CLIPTextEncode", text=p.prompt, clip=["11", 0]),
        "26": _node("FluxGuidance", conditioning=["44", 0], guidance=float(p.guidance)),
        "45": _node(
            "EmptyHunyuanLatentVideo",
            width=p.width,
            height=p.height,
            length=p.frames,
            batch_size=1,
        ),  # fmt: skip
        "3": _node(
            "KSampler",
            model=["67", 0],
            seed=p.seed,
            steps=p.steps,
            cfg=p.cfg,
            sampler_name=p.sampler,
            scheduler=p.scheduler,
            positive=["26", 0],
            negative=["26", 0],  # guidance-distilled: cfg 1.0 ignores the negative
            latent_image=["45", 0],
            denoise=1.0,
        ),
        "73": _node(
            "VAEDecodeTiled",
            samples=["3", 0],
            vae=["10", 0],
            tile_size=256,
            overlap=64,
            temporal_size=64,
            temporal_overlap=8,
        ),
    }
    _video_output(wf, ["73", 0], p.output, p.fps, p.filename_prefix)
    return apply_loras(wf, p.loras)


def svd_i2v(p: SVDParams) -> Workflow:
    """SVD: ImageOnlyCheckpointLoader -> SVD_img2vid_Conditioning + VideoLinearCFGGuidance."""
    _require_image(p.image, "svd_i2v")
    wf: Workflow = {
        "15": _node("ImageOnlyCheckpointLoader", ckpt_name=p.checkpoint),
        "23": _node("LoadImage", image=p.image),
        "14": _node("VideoLinearCFGGuidance", model=["15", 0], min_cfg=float(p.min_cfg)),
        "12": _node(
            "SVD_img2vid_Conditioning",
            clip_vision=["15", 1],
            init_image=["23", 0],
            vae=["15", 2],
            width=p.width,
            height=p.height,
            video_frames=p.frames,
            motion_bucket_id=p.motion_bucket_id,
            fps=int(p.fps),
            augmentation_level=float(p.augmentation_level),
        ),
        "3": _node(
            "KSampler",
            model=["14", 0],
            seed=p.seed,
            steps=p.steps,
            cfg=p.cfg,
            sampler_name=p.sampler,
            scheduler=p.scheduler,
            positive=["12", 0],
            negative=["12", 1],
            latent_image=["12", 2],
            denoise=1.0,
        ),
        "8": _node("VAEDecode", samples=["3", 0], vae=["15", 2]),
    }
    _video_output(wf, ["8", 0], p.output, float(p.fps), p.filename_prefix)
    return wf


def animatediff_sdxl(p: AnimateDiffSDXLParams) -> Workflow:
    """AnimateDiff-SDXL: ADE_AnimateDiffLoaderGen1 over a batch latent, VHS_VideoCombine."""
    wf: Workflow = {
        "4": _node("CheckpointLoaderSimple", ckpt_name=p.checkpoint),
        "20": _node(
            "ADE_AnimateDiffLoaderGen1",
            model=["4", 0],
            model_name=p.motion_model,
            beta_schedule=p.beta_schedule,
        ),
        "6": _node("CLIPTextEncode", text=p.prompt, clip=["4", 1]),
        "7": _node("CLIPTextEncode", text=p.negative, clip=["4", 1]),
        "5": _node("EmptyLatentImage", width=p.width, height=p.height, batch_size=p.frames),
        "3": _node(
            "KSampler",
            model=["20", 0],
            seed=p.seed,
            steps=p.steps,
            cfg=p.cfg,
            sampler_name=p.sampler,
            scheduler=p.scheduler,
            positive=["6", 0],
            negative=["7", 0],
            latent_image=["5", 0],
            denoise=1.0,
        ),
        "8": _node("VAEDecode", samples=["3", 0], vae=["4", 2]),
    }
    _vhs_output(wf, ["8", 0], p.format, p.fps, p.filename_prefix)
    return apply_loras(wf, p.loras)


def cogvideox(p: CogVideoXParams) -> Workflow:
    """CogVideoX (text- or image-to-video) with the CogVideoXWrapper nodes, VHS output."""
    model = p.checkpoint or ("THUDM/CogVideoX-5b-I2V" if p.image else "THUDM/CogVideoX-5b")
    wf: Workflow = {
        "1": _node("DownloadAndLoadCogVideoModel", model=model, precision=p.precision),
        "20": _node("CLIPLoader", clip_name=p.text_encoder, type="sd3"),
        "30": _node("CogVideoTextEncode", clip=["20", 0], prompt=p.prompt),
        "31": _node("CogVideoTextEncode", clip=["30", 1], prompt=p.negative),
        "34": _node(
            "CogVideoSampler",
            model=["1", 0],
            positive=["30", 0],
            negative=["31", 0],
            num_frames=p.frames,
            steps=p.steps,
            cfg=float(p.cfg),
            seed=p.seed,
            scheduler=p.scheduler,
        ),
        "11": _node(
            "CogVideoDecode",
            vae=["1", 1],
            samples=["34", 0],
            enable_vae_tiling=True,
            tile_sample_min_height=240,
            tile_sample_min_width=360,
            tile_overlap_factor_height=0.2,
            tile_overlap_factor_width=0.2,
            auto_tile_size=True,
        ),
    }
    if p.image:
        wf["36"] = _node("LoadImage", image=p.image)
        wf["37"] = _node(
            "ImageScale",
            image=["36", 0],
            upscale_method="lanczos",
            width=p.width,
            height=p.height,
            crop="center",
        )
        wf["38"] = _node("CogVideoImageEncode", vae=["1", 1], start_image=["37", 0])
        wf["34"]["inputs"]["image_cond_latents"] = ["38", 0]
    _vhs_output(wf, ["11", 0], p.format, p.fps, p.filename_prefix)
    return wf


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class ModelRef:
    """A model a workflow needs: the params field that names it and its ComfyUI folder.

    ``listed`` is False for models ComfyUI does not list as files (CogVideoX's wrapper
    downloads a Hugging Face repo into ``models/CogVideo`` itself).
    """

    folder: str
    param: str
    listed: bool = True


@dataclass(frozen=True)
class WorkflowSpec:
    """A built-in workflow: its builder, parameters, needed models and what it produces."""

    name: str
    builder: Callable[[Any], Workflow]
    params: type
    models: tuple[ModelRef, ...]
    needs_image: bool
    output_kind: str  # OutputFile.kind of its main output: images | animated | gifs
    description: str
    optional_image: bool = False
    profile: str = "minimal"  # the catalog profile that holds its default model files
    # Model folders a wrapper loads by default instead of listed files (folder, "<dir>/").
    repo_folders: tuple[tuple[str, str], ...] = ()

    def default_models(self) -> list[tuple[str, str]]:
        """(folder, file) of every model file the workflow loads with default parameters.

        A model ComfyUI does not list (CogVideoX's wrapper loads a Hugging Face repo folder)
        gives ``(folder, "<repo name>/")``: the folder under ``models/<folder>``.
        """
        fields = {f.name: f for f in dataclasses.fields(self.params)}
        found: list[tuple[str, str]] = []
        for ref in self.models:
            default = fields[ref.param].default
            if isinstance(default, str) and default:
                found.append((ref.folder, default if ref.listed else default + "/"))
        return found + list(self.repo_folders)

    def make_params(self, values: Mapping[str, Any]) -> Any:
        return params_from_values(self.params, values, workflow=self.name)

    def build(self, values: Mapping[str, Any]) -> Workflow:
        return self.builder(self.make_params(values))

    def required_models(self, values: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(folder, file) of every listed model file this job needs, LoRAs included."""
        params = self.make_params(values)
        needed = [
            (ref.folder, str(getattr(params, ref.param)))
            for ref in self.models
            if ref.listed and getattr(params, ref.param, None)
        ]
        needed += [("loras", spec.name) for spec in getattr(params, "loras", ())]
        return needed


_SD_MODELS = (ModelRef("checkpoints", "checkpoint"), ModelRef("vae", "vae"))

BUILTIN_WORKFLOWS: dict[str, WorkflowSpec] = {
    spec.name: spec
    for spec in [
        WorkflowSpec(
            "sdxl_txt2img", sdxl_txt2img, Txt2ImgParams, _SD_MODELS, False, "images",
            "SDXL text-to-image", profile="minimal",
        ),
        WorkflowSpec(
            "pony_txt2img", pony_txt2img, PonyParams, _SD_MODELS, False, "images",
            "Pony Diffusion V6 XL text-to-image, clip skip 2, score tags", profile="image",
        ),
        WorkflowSpec(
            "img2img", img2img, Img2ImgParams, _SD_MODELS, True, "images",
            "SD/SDXL image-to-image from an uploaded image (denoise)", profile="minimal",
        ),
        WorkflowSpec(
            "wan_i2v",
            wan_i2v,
            WanI2VParams,
            (
                ModelRef("diffusion_models", "checkpoint"),
                ModelRef("text_encoders", "text_encoder"),
                ModelRef("vae", "vae"),
                ModelRef("clip_vision", "clip_vision"),
            ),
            True,
            "animated",
            "Wan 2.1 image-to-video 480P (native nodes)",
            profile="video-24gb",
        ),
        WorkflowSpec(
            "hunyuan_t2v",
            hunyuan_t2v,
            HunyuanT2VParams,
            (
                ModelRef("diffusion_models", "checkpoint"),
                ModelRef("text_encoders", "clip_l"),
                ModelRef("text_encoders", "llava"),
                ModelRef("vae", "vae"),
            ),
            False,
            "animated",
            "HunyuanVideo text-to-video (native nodes)",
            profile="video-24gb",
        ),
        WorkflowSpec(
            "svd_i2v", svd_i2v, SVDParams, (ModelRef("checkpoints", "checkpoint"),), True,
            "animated", "Stable Video Diffusion image-to-video (native nodes)",
            profile="video-24gb",
        ),
        WorkflowSpec(
            "animatediff_sdxl",
            animatediff_sdxl,
            AnimateDiffSDXLParams,
            (ModelRef("checkpoints", "checkpoint"), ModelRef("animatediff_models", "motion_model")),
            False,
            "gifs",
            "AnimateDiff-SDXL text-to-video (AnimateDiff-Evolved + VideoHelperSuite)",
            profile="video-24gb",
        ),
        WorkflowSpec(
            "cogvideox",
            cogvideox,
            CogVideoXParams,
            (
                ModelRef("CogVideo", "checkpoint", listed=False),
                ModelRef("text_encoders", "text_encoder"),
            ),
            False,
            "gifs",
            "CogVideoX text/image-to-video (CogVideoXWrapper + VideoHelperSuite)",
            optional_image=True,
            profile="video-24gb",
            repo_folders=(("CogVideo", "CogVideoX-5b/"), ("CogVideo", "CogVideoX-5b-I2V/")),
        ),
    ]
}  # fmt: skip


# ---------------------------------------------------------------- values -> params

# Other names a jobs table may use for a parameter.
ALIASES = {
    "sampler_name": "sampler",
    "negative_prompt": "negative",
    "num_frames": "frames",
    "length": "frames",
    "video_frames": "frames",
    "model": "checkpoint",
}


def _coerce(value: Any, hint: Any, *, workflow: str, name: str) -> Any:
    value = plain(value)
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(value, options[0], workflow=workflow, name=name)
    if origin is not None and issubclass(origin, Sequence) and hint is not str:
        return tuple(parse_loras(value))
    try:
        if hint is bool:
            if isinstance(value, str):
                text = value.strip().lower()
                if text in ("1", "true", "yes", "y", "on"):
                    return True
                if text in ("0", "false", "no", "n", "off", ""):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float):
                if not number.is_integer():
                    raise ValueError(value)
                return int(number)
            return int(number)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"workflow {workflow}: {name} = {value!r} is not a valid "
            f"{getattr(hint, '__name__', hint)}",
            hint=f"fix the '{name}' column of this job",
        ) from None
    return value


def params_from_values(cls: type, values: Mapping[str, Any], *, workflow: str) -> Any:
    """Build a params dataclass from a job's values (unknown keys are ignored)."""
    hints = typing.get_type_hints(cls)
    given: dict[str, Any] = {}
    for key, value in values.items():
        name = ALIASES.get(str(key), str(key))
        if name not in hints or is_missing(value):
            continue
        if hints[name] is not str and isinstance(value, str) and not value.strip():
            continue  # an empty cell in a number column means "use the default"
        given[name] = _coerce(value, hints[name], workflow=workflow, name=name)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in given
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(
            f"workflow {workflow} needs a value for {', '.join(repr(m) for m in missing)}",
            hint=f"add the column(s) {', '.join(missing)} to the jobs file",
        )
    return cls(**given)


def build_workflow(name_or_path: str, values: Mapping[str, Any]) -> Workflow:
    """The API-format workflow for one job.

    A built-in name (``BUILTIN_WORKFLOWS``) is built from the job's values; anything else is
    a path to a user's API-format JSON file whose ``{{column}}`` placeholders are filled
    from the values. A ``loras`` value is chained into either kind.
    """
    spec = BUILTIN_WORKFLOWS.get(name_or_path)
    if spec is not None:
        return spec.build(values)
    path = Path(name_or_path).expanduser()
    if not path.exists() and path.suffix.lower() != ".json":
        raise ConfigError(
            f"unknown workflow '{name_or_path}': not a built-in and no such file",
            hint=f"use one of {', '.join(BUILTIN_WORKFLOWS)} or the path of an API-format "
            "JSON file",
        )
    workflow = render(load_workflow_file(path), values, source=str(path))
    loras = parse_loras(values.get("loras"))
    return apply_loras(workflow, loras) if loras else workflow
