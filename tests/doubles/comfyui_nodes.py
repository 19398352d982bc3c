"""The node classes FakeComfyUI knows: a realistic subset of ComfyUI 0.3.64's /object_info.

Input names, types, defaults and ranges follow reference/comfyui-api.md §5-§6 (ComfyUI
a125cd84 + VideoHelperSuite, AnimateDiff-Evolved, CogVideoXWrapper); tooltips are kept where
the recorded answers show them (comfyui-recorded.md §4-§5), because 400 bodies echo them in
``input_config``. Model-file combos are filled at request time from the server's ``models``.
V3 nodes (``io.ComfyNode``) use the ``["COMBO", {"options": ...}]`` encoding and carry
``deprecated``/``experimental``/``api_node``, as the real server shows them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_RESOLUTION = 16384
SEED_MAX = 0xFFFFFFFFFFFFFFFF

SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis",
    "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
    "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc",
    "uni_pc_bh2",
]  # fmt: skip
SCHEDULERS = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
    "linear_quadratic", "kl_optimal",
]  # fmt: skip
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CLIP_TYPES = [
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart",
    "cosmos", "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image",
    "hunyuan_image",
]  # fmt: skip
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]
BETA_SCHEDULES = [
    "autoselect", "use existing", "sqrt_linear (AnimateDiff)", "linear (AnimateDiff-SDXL)",
    "linear (HotshotXL/default)", "avg(sqrt_linear,linear)", "lcm avg(sqrt_linear,linear)",
    "lcm", "lcm[100_ots]", "lcm >> sqrt_linear", "sqrt", "cosine", "squaredcos_cap_v2",
]  # fmt: skip
VHS_FORMATS = [
    "image/gif", "image/webp", "video/16bit-png", "video/8bit-png", "video/av1-webm",
    "video/ffmpeg-gif", "video/ffv1-mkv", "video/h264-mp4", "video/h265-mp4",
    "video/nvenc_av1-mp4", "video/nvenc_h264-mp4", "video/nvenc_hevc-mp4", "video/ProRes",
    "video/webm",
]  # fmt: skip
COGVIDEO_MODELS = [
    "THUDM/CogVideoX-2b", "THUDM/CogVideoX-5b", "THUDM/CogVideoX-5b-I2V",
    "kijai/CogVideoX-5b-1.5-T2V", "kijai/CogVideoX-5b-1.5-I2V", "bertjiazheng/KoolCogVideoX-5b",
    "kijai/CogVideoX-Fun-2b", "kijai/CogVideoX-Fun-5b", "kijai/CogVideoX-5b-Tora",
]  # fmt: skip
COGVIDEO_SCHEDULERS = [
    "DPM++", "Euler", "Euler A", "PNDM", "DDIM", "CogVideoXDDIM", "CogVideoXDPMScheduler",
    "SASolverScheduler", "UniPCMultistepScheduler", "HeunDiscreteScheduler",
    "DEISMultistepScheduler", "LCMScheduler",
]  # fmt: skip

# The folder keys GET /models lists (recorded), plus the ones the custom nodes register.
MODEL_FOLDERS = [
    "checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
    "model_patches", "audio_encoders", "animatediff_models", "animatediff_motion_lora",
    "VHS_video_formats", "CogVideo",
]  # fmt: skip


# ---------------------------------------------------------------- spec helpers


def INT(default: int, lo: int, hi: int, step: int = 1, **extra: Any) -> list[Any]:
    return ["INT", {"default": default, "min": lo, "max": hi, "step": step, **extra}]


def FLOAT(default: float, lo: float, hi: float, step: float = 0.01, **extra: Any) -> list[Any]:
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step, **extra}]


def STRING(default: str = "", *, multiline: bool = False, **extra: Any) -> list[Any]:
    opts: dict[str, Any] = {"default": default} if default or not multiline else {}
    if multiline:
        opts["multiline"] = True
    return ["STRING", {**opts, **extra}]


def BOOLEAN(default: bool, **extra: Any) -> list[Any]:
    return ["BOOLEAN", {"default": default, **extra}]


def LINK(type_name: str, **extra: Any) -> list[Any]:
    return [type_name, extra] if extra else [type_name]


def COMBO(options: list[str], **extra: Any) -> list[Any]:
    return [list(options), extra] if extra else [list(options)]


def COMBO3(options: list[str], **extra: Any) -> list[Any]:
    return ["COMBO", {"multiselect": False, "options": list(options), **extra}]


@dataclass(frozen=True)
class Files:
    """A combo whose choices are the files present in a model folder (read per request)."""

    folder: str
    extra_choices: tuple[str, ...] = ()
    opts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InputImages:
    """LoadImage's combo: the image files in the input directory, ``image_upload: true``."""


@dataclass
class NodeDef:
    name: str
    required: dict[str, Any]
    output: list[str]
    output_name: list[str] | None = None
    optional: dict[str, Any] = field(default_factory=dict)
    hidden: dict[str, str] = field(default_factory=dict)
    output_node: bool = False
    category: str = ""
    display_name: str = ""
    description: str = ""
    python_module: str = "nodes"
    v3: bool = False
    output_tooltips: list[str] | None = None
    experimental: bool = False


_SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
_ADE = "custom_nodes.ComfyUI-AnimateDiff-Evolved"
_VHS = "custom_nodes.ComfyUI-VideoHelperSuite"
_COG = "custom_nodes.ComfyUI-CogVideoXWrapper"

NODES: list[NodeDef] = [
    # ---------------------------------------------------------- loaders
    NodeDef(
        "CheckpointLoaderSimple",
        {
            "ckpt_name": Files(
                "checkpoints", opts={"tooltip": "The name of the checkpoint (model) to load."}
            )
        },
        ["MODEL", "CLIP", "VAE"],
        category="loaders",
        display_name="Load Checkpoint",
        description="Loads a diffusion model checkpoint, diffusion models are used to denoise "
        "latents.",
        output_tooltips=[
            "The model used for denoising latents.",
            "The CLIP model used for encoding text prompts.",
            "The VAE model used for encoding and decoding images to and from latent space.",
        ],
    ),
    NodeDef(
        "ImageOnlyCheckpointLoader",
        {"ckpt_name": Files("checkpoints")},
        ["MODEL", "CLIP_VISION", "VAE"],
        category="loaders/video_models",
        display_name="Image Only Checkpoint Loader (img2vid model)",
        python_module="comfy_extras.nodes_video_model",
    ),
    NodeDef(
        "VAELoader",
        {"vae_name": Files("vae", extra_choices=("pixel_space",))},
        ["VAE"],
        category="loaders",
        display_name="Load VAE",
    ),
    NodeDef(
        "LoraLoader",
        {
            "model": LINK("MODEL", tooltip="The diffusion model the LoRA will be applied to."),
            "clip": LINK("CLIP", tooltip="The CLIP model the LoRA will be applied to."),
            "lora_name": Files("loras", opts={"tooltip": "The name of the LoRA."}),
            "strength_model": FLOAT(1.0, -100.0, 100.0, 0.01),
            "strength_clip": FLOAT(1.0, -100.0, 100.0, 0.01),
        },
        ["MODEL", "CLIP"],
        category="loaders",
        display_name="Load LoRA",
    ),
    NodeDef(
        "LoraLoaderModelOnly",
        {
            "model": LINK("MODEL"),
            "lora_name": Files("loras"),
            "strength_model": FLOAT(1.0, -100.0, 100.0, 0.01),
        },
        ["MODEL"],
        category="loaders",
        display_name="LoraLoaderModelOnly",
    ),
    NodeDef(
        "UNETLoader",
        {
            "unet_name": Files("diffusion_models"),
            "weight_dtype": COMBO(["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]),
        },
        ["MODEL"],
        category="advanced/loaders",
        display_name="Load Diffusion Model",
    ),
    NodeDef(
        "CLIPLoader",
        {"clip_name": Files("text_encoders"), "type": COMBO(CLIP_TYPES)},
        ["CLIP"],
        optional={"device": COMBO(["default", "cpu"], advanced=True)},
        category="advanced/loaders",
        display_name="Load CLIP",
    ),
    NodeDef(
        "DualCLIPLoader",
        {
            "clip_name1": Files("text_encoders"),
            "clip_name2": Files("text_encoders"),
            "type": COMBO(DUAL_CLIP_TYPES),
        },
        ["CLIP"],
        optional={"device": COMBO(["default", "cpu"], advanced=True)},
        category="advanced/loaders",
        display_name="DualCLIPLoader",
    ),
    NodeDef(
        "CLIPVisionLoader",
        {"clip_name": Files("clip_vision")},
        ["CLIP_VISION"],
        category="loaders",
        display_name="Load CLIP Vision",
    ),
    # ---------------------------------------------------------- conditioning / sampling
    NodeDef(
        "CLIPTextEncode",
        {
            "text": STRING(multiline=True, dynamicPrompts=True),
            "clip": LINK("CLIP", tooltip="The CLIP model used for encoding the text."),
        },
        ["CONDITIONING"],
        category="conditioning",
        display_name="CLIP Text Encode (Prompt)",
    ),
    NodeDef(
        "CLIPSetLastLayer",
        {"clip": LINK("CLIP"), "stop_at_clip_layer": INT(-1, -24, -1, 1)},
        ["CLIP"],
        category="conditioning",
        display_name="CLIP Set Last Layer",
    ),
    NodeDef(
        "CLIPVisionEncode",
        {
            "clip_vision": LINK("CLIP_VISION"),
            "image": LINK("IMAGE"),
            "crop": COMBO(["center", "none"]),
        },
        ["CLIP_VISION_OUTPUT"],
        category="conditioning",
        display_name="CLIP Vision Encode",
    ),
    NodeDef(
        "FluxGuidance",
        {"conditioning": LINK("CONDITIONING"), "guidance": FLOAT(3.5, 0.0, 100.0, 0.1)},
        ["CONDITIONING"],
        category="advanced/conditioning/flux",
        python_module="comfy_extras.nodes_flux",
    ),
    NodeDef(
        "EmptyLatentImage",
        {
            "width": INT(512, 16, MAX_RESOLUTION, 8),
            "height": INT(512, 16, MAX_RESOLUTION, 8),
            "batch_size": INT(1, 1, 4096),
        },
        ["LATENT"],
        category="latent",
        display_name="Empty Latent Image",
    ),
    NodeDef(
        "KSampler",
        {
            "model": LINK("MODEL"),
            "seed": INT(0, 0, SEED_MAX, control_after_generate=True),
            "steps": INT(20, 1, 10000),
            "cfg": FLOAT(8.0, 0.0, 100.0, 0.1, round=0.01),
            "sampler_name": COMBO(SAMPLERS),
            "scheduler": COMBO(SCHEDULERS),
            "positive": LINK("CONDITIONING"),
            "negative": LINK("CONDITIONING"),
            "latent_image": LINK("LATENT"),
            "denoise": FLOAT(1.0, 0.0, 1.0, 0.01),
        },
        ["LATENT"],
        category="sampling",
        display_name="KSampler",
    ),
    NodeDef(
        "ModelSamplingSD3",
        {"model": LINK("MODEL"), "shift": FLOAT(3.0, 0.0, 100.0, 0.01)},
        ["MODEL"],
        category="advanced/model",
        python_module="comfy_extras.nodes_model_advanced",
    ),
    NodeDef(
        "VideoLinearCFGGuidance",
        {"model": LINK("MODEL"), "min_cfg": FLOAT(1.0, 0.0, 100.0, 0.5, round=0.01)},
        ["MODEL"],
        category="sampling/video_models",
        python_module="comfy_extras.nodes_video_model",
    ),
    # ---------------------------------------------------------- latent / image
    NodeDef(
        "VAEDecode",
        {"samples": LINK("LATENT"), "vae": LINK("VAE")},
        ["IMAGE"],
        category="latent",
        display_name="VAE Decode",
    ),
    NodeDef(
        "VAEDecodeTiled",
        {
            "samples": LINK("LATENT"),
            "vae": LINK("VAE"),
            "tile_size": INT(512, 64, 4096, 32),
            "overlap": INT(64, 0, 4096, 32),
            "temporal_size": INT(64, 8, 4096, 4),
            "temporal_overlap": INT(8, 4, 4096, 4),
        },
        ["IMAGE"],
        category="_for_testing",
        display_name="VAE Decode (Tiled)",
    ),
    NodeDef(
        "VAEEncode",
        {"pixels": LINK("IMAGE"), "vae": LINK("VAE")},
        ["LATENT"],
        category="latent",
        display_name="VAE Encode",
    ),
    NodeDef(
        "LoadImage",
        {"image": InputImages()},
        ["IMAGE", "MASK"],
        category="image",
        display_name="Load Image",
    ),
    NodeDef(
        "ImageScale",
        {
            "image": LINK("IMAGE"),
            "upscale_method": COMBO(UPSCALE_METHODS),
            "width": INT(512, 0, MAX_RESOLUTION, 1),
            "height": INT(512, 0, MAX_RESOLUTION, 1),
            "crop": COMBO(["disabled", "center"]),
        },
        ["IMAGE"],
        category="image/upscaling",
        display_name="Upscale Image",
    ),
    NodeDef(
        "ImageScaleBy",
        {
            "image": LINK("IMAGE"),
            "upscale_method": COMBO(UPSCALE_METHODS),
            "scale_by": FLOAT(1.0, 0.01, 8.0, 0.01),
        },
        ["IMAGE"],
        category="image/upscaling",
        display_name="Upscale Image By",
    ),
    NodeDef("ImageInvert", {"image": LINK("IMAGE")}, ["IMAGE"], category="image"),
    NodeDef(
        "SaveImage",
        {
            "images": LINK("IMAGE", tooltip="The images to save."),
            "filename_prefix": STRING(
                "ComfyUI",
                tooltip="The prefix for the file to save. This may include formatting "
                "information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to "
                "include values from nodes.",
            ),
        },
        [],
        hidden=_SAVE_HIDDEN,
        output_node=True,
        category="image",
        display_name="Save Image",
        description="Saves the input images to your ComfyUI output directory.",
    ),
    NodeDef(
        "PreviewImage",
        {"images": LINK("IMAGE")},
        [],
        hidden=_SAVE_HIDDEN,
        output_node=True,
        category="image",
        display_name="Preview Image",
        description="Saves the input images to your ComfyUI output directory.",
    ),
    # ---------------------------------------------------------- native video
    NodeDef(
        "EmptyHunyuanLatentVideo",
        {
            "width": INT(848, 16, MAX_RESOLUTION, 16),
            "height": INT(480, 16, MAX_RESOLUTION, 16),
            "length": INT(25, 1, MAX_RESOLUTION, 4),
            "batch_size": INT(1, 1, 4096),
        },
        ["LATENT"],
        category="latent/video",
        python_module="comfy_extras.nodes_hunyuan",
    ),
    NodeDef(
        "TextEncodeHunyuanVideo_ImageToVideo",
        {
            "clip": LINK("CLIP"),
            "clip_vision_output": LINK("CLIP_VISION_OUTPUT"),
            "prompt": STRING(multiline=True, dynamicPrompts=True),
            "image_interleave": INT(2, 1, 512),
        },
        ["CONDITIONING"],
        category="advanced/conditioning",
        python_module="comfy_extras.nodes_hunyuan",
    ),
    NodeDef(
        "HunyuanImageToVideo",
        {
            "positive": LINK("CONDITIONING"),
            "vae": LINK("VAE"),
            "width": INT(848, 16, MAX_RESOLUTION, 16),
            "height": INT(480, 16, MAX_RESOLUTION, 16),
            "length": INT(53, 1, MAX_RESOLUTION, 4),
            "batch_size": INT(1, 1, 4096),
            "guidance_type": COMBO(["v1 (concat)", "v2 (replace)", "custom"]),
        },
        ["CONDITIONING", "LATENT"],
        output_name=["positive", "latent"],
        optional={"start_image": LINK("IMAGE")},
        category="conditioning/video_models",
        python_module="comfy_extras.nodes_hunyuan",
    ),
    NodeDef(
        "WanImageToVideo",
        {
            "positive": LINK("CONDITIONING"),
            "negative": LINK("CONDITIONING"),
            "vae": LINK("VAE"),
            "width": INT(832, 16, MAX_RESOLUTION, 16),
            "height": INT(480, 16, MAX_RESOLUTION, 16),
            "length": INT(81, 1, MAX_RESOLUTION, 4),
            "batch_size": INT(1, 1, 4096),
        },
        ["CONDITIONING", "CONDITIONING", "LATENT"],
        output_name=["positive", "negative", "latent"],
        optional={
            "clip_vision_output": LINK("CLIP_VISION_OUTPUT"),
            "start_image": LINK("IMAGE"),
        },
        category="conditioning/video_models",
        python_module="comfy_extras.nodes_wan",
        v3=True,
    ),
    NodeDef(
        "SVD_img2vid_Conditioning",
        {
            "clip_vision": LINK("CLIP_VISION"),
            "init_image": LINK("IMAGE"),
            "vae": LINK("VAE"),
            "width": INT(1024, 16, MAX_RESOLUTION, 8),
            "height": INT(576, 16, MAX_RESOLUTION, 8),
            "video_frames": INT(14, 1, 4096),
            "motion_bucket_id": INT(127, 1, 1023),
            "fps": INT(6, 1, 1024),
            "augmentation_level": FLOAT(0.0, 0.0, 10.0, 0.01),
        },
        ["CONDITIONING", "CONDITIONING", "LATENT"],
        output_name=["positive", "negative", "latent"],
        category="conditioning/video_models",
        python_module="comfy_extras.nodes_video_model",
    ),
    NodeDef(
        "SaveAnimatedWEBP",
        {
            "images": LINK("IMAGE"),
            "filename_prefix": STRING("ComfyUI"),
            "fps": FLOAT(6.0, 0.01, 1000.0, 0.01),
            "lossless": BOOLEAN(True),
            "quality": INT(80, 0, 100),
            "method": COMBO(["default", "fastest", "slowest"]),
        },
        [],
        hidden=_SAVE_HIDDEN,
        output_node=True,
        category="image/animation",
        python_module="comfy_extras.nodes_images",
    ),
    NodeDef(
        "SaveAnimatedPNG",
        {
            "images": LINK("IMAGE"),
            "filename_prefix": STRING("ComfyUI"),
            "fps": FLOAT(6.0, 0.01, 1000.0, 0.01),
            "compress_level": INT(4, 0, 9),
        },
        [],
        hidden=_SAVE_HIDDEN,
        output_node=True,
        category="image/animation",
        python_module="comfy_extras.nodes_images",
    ),
    NodeDef(
        "SaveWEBM",
        {
            "images": LINK("IMAGE"),
            "filename_prefix": STRING("ComfyUI"),
            "codec": COMBO3(["vp9", "av1"]),
            "fps": FLOAT(24.0, 0.01, 1000.0, 0.01),
            "crf": FLOAT(
                32.0,
                0.0,
                63.0,
                1.0,
                tooltip="Higher crf means lower quality with a "
                "smaller file size, lower crf means higher quality higher filesize.",
            ),
        },
        [],
        hidden=_SAVE_HIDDEN,
        output_node=True,
        category="image/video",
        python_module="comfy_extras.nodes_video",
        v3=True,
        experimental=True,
    ),
    NodeDef(
        "CreateVideo",
        {"images": LINK("IMAGE"), "fps": FLOAT(30.0, 1.0, 120.0, 1.0)},
        ["VIDEO"],
        optional={"audio": LINK("AUDIO")},
        category="image/video",
        python_module="comfy_extras.nodes_video",
        v3=True,
    ),
    NodeDef(
        "SaveVideo",
        {
            "video": LINK("VIDEO"),
            "filename_prefix": STRING("video/ComfyUI"),
            "format": COMBO3(["auto", "mp4"], default="auto"),
            "codec": COMBO3(["auto", "h264"], default="auto"),
        },
        [],
        hidden=_SAVE_HIDDEN,
        output_node=True,
        category="image/video",
        python_module="comfy_extras.nodes_video",
        v3=True,
    ),
    # ---------------------------------------------------------- custom: AnimateDiff-Evolved
    NodeDef(
        "ADE_AnimateDiffLoaderGen1",
        {
            "model": LINK("MODEL"),
            "model_name": Files("animatediff_models"),
            "beta_schedule": COMBO(BETA_SCHEDULES, default="autoselect"),
        },
        ["MODEL"],
        optional={
            "context_options": LINK("CONTEXT_OPTIONS"),
            "motion_lora": LINK("MOTION_LORA"),
            "ad_settings": LINK("AD_SETTINGS"),
            "ad_keyframes": LINK("AD_KEYFRAMES"),
            "sample_settings": LINK("SAMPLE_SETTINGS"),
            "scale_multival": LINK("MULTIVAL"),
            "effect_multival": LINK("MULTIVAL"),
            "per_block": LINK("PER_BLOCK"),
        },
        category="Animate Diff 🎭🅐🅓/① Gen1 nodes ①",
        display_name="AnimateDiff Loader 🎭🅐🅓①",
        python_module=_ADE,
    ),
    # ---------------------------------------------------------- custom: VideoHelperSuite
    NodeDef(
        "VHS_VideoCombine",
        {
            "images": LINK("IMAGE"),
            "frame_rate": ["FLOAT", {"default": 8, "min": 1, "step": 1}],
            "loop_count": INT(0, 0, 100),
            "filename_prefix": STRING("AnimateDiff"),
            "format": COMBO(VHS_FORMATS),
            "pingpong": BOOLEAN(False),
            "save_output": BOOLEAN(True),
        },
        ["VHS_FILENAMES"],
        output_name=["Filenames"],
        optional={
            "audio": LINK("AUDIO"),
            "meta_batch": LINK("VHS_BatchManager"),
            "vae": LINK("VAE"),
        },
        hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
        output_node=True,
        category="Video Helper Suite 🎥🅥🅗🅢",
        display_name="Video Combine 🎥🅥🅗🅢",
        python_module=_VHS,
    ),
    # ---------------------------------------------------------- custom: CogVideoXWrapper
    NodeDef(
        "DownloadAndLoadCogVideoModel",
        {"model": COMBO(COGVIDEO_MODELS)},
        ["COGVIDEOMODEL", "VAE"],
        output_name=["model", "vae"],
        optional={
            "precision": COMBO(["fp16", "fp32", "bf16"], default="bf16"),
            "quantization": COMBO(
                ["disabled", "fp8_e4m3fn", "fp8_e4m3fn_fastmode"], default="disabled"
            ),
            "enable_sequential_cpu_offload": BOOLEAN(False),
            "attention_mode": COMBO(["sdpa", "sageattn"], default="sdpa"),
        },
        category="CogVideoWrapper",
        python_module=_COG,
    ),
    NodeDef(
        "CogVideoTextEncode",
        {"clip": LINK("CLIP"), "prompt": STRING("", multiline=True)},
        ["CONDITIONING", "CLIP"],
        output_name=["conditioning", "clip"],
        optional={
            "strength": FLOAT(1.0, 0.0, 10.0, 0.01),
            "force_offload": BOOLEAN(True),
        },
        category="CogVideoWrapper",
        python_module=_COG,
    ),
    NodeDef(
        "CogVideoImageEncode",
        {"vae": LINK("VAE"), "start_image": LINK("IMAGE")},
        ["LATENT"],
        output_name=["samples"],
        optional={
            "end_image": LINK("IMAGE"),
            "enable_tiling": BOOLEAN(False),
            "noise_aug_strength": FLOAT(0.0, 0.0, 1.0, 0.001),
            "strength": FLOAT(1.0, 0.0, 10.0, 0.01),
            "start_percent": FLOAT(0.0, 0.0, 1.0, 0.01),
            "end_percent": FLOAT(1.0, 0.0, 1.0, 0.01),
        },
        category="CogVideoWrapper",
        python_module=_COG,
    ),
    NodeDef(
        "CogVideoSampler",
        {
            "model": LINK("COGVIDEOMODEL"),
            "positive": LINK("CONDITIONING"),
            "negative": LINK("CONDITIONING"),
            "num_frames": INT(49, 1, 1024),
            "steps": ["INT", {"default": 50, "min": 1}],
            "cfg": FLOAT(6.0, 0.0, 30.0, 0.01),
            "seed": INT(0, 0, SEED_MAX),
            "scheduler": COMBO(COGVIDEO_SCHEDULERS, default="CogVideoXDDIM"),
        },
        ["LATENT"],
        output_name=["samples"],
        optional={
            "samples": LINK("LATENT"),
            "image_cond_latents": LINK("LATENT"),
            "denoise_strength": FLOAT(1.0, 0.0, 1.0, 0.01),
            "context_options": LINK("COGCONTEXT"),
        },
        category="CogVideoWrapper",
        python_module=_COG,
    ),
    NodeDef(
        "CogVideoDecode",
        {
            "vae": LINK("VAE"),
            "samples": LINK("LATENT"),
            "enable_vae_tiling": BOOLEAN(True),
            "tile_sample_min_height": INT(240, 16, 2048, 8),
            "tile_sample_min_width": INT(360, 16, 2048, 8),
            "tile_overlap_factor_height": FLOAT(0.2, 0.0, 1.0, 0.001),
            "tile_overlap_factor_width": FLOAT(0.2, 0.0, 1.0, 0.001),
            "auto_tile_size": BOOLEAN(True),
        },
        ["IMAGE"],
        output_name=["images"],
        category="CogVideoWrapper",
        python_module=_COG,
    ),
]

NODES_BY_NAME: dict[str, NodeDef] = {n.name: n for n in NODES}

# Classes whose execution reports sampler steps (``progress``) and takes the prompt's time.
SAMPLER_CLASSES = frozenset(
    {"KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced", "CogVideoSampler"}
)


def render_spec(
    spec: Any,
    *,
    v3: bool,
    files: Callable[[str], list[str]],
    input_images: Callable[[], list[str]],
) -> list[Any]:
    """One input spec as /object_info shows it right now."""
    if isinstance(spec, Files):
        choices = [*files(spec.folder), *spec.extra_choices]
        if v3:
            return ["COMBO", {"multiselect": False, "options": choices, **spec.opts}]
        return [choices, dict(spec.opts)]
    if isinstance(spec, InputImages):
        return [input_images(), {"image_upload": True}]
    return list(spec)


def render_node(
    node: NodeDef,
    *,
    files: Callable[[str], list[str]],
    input_images: Callable[[], list[str]],
) -> dict[str, Any]:
    """The /object_info entry of one class."""

    def section(specs: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: render_spec(v, v3=node.v3, files=files, input_images=input_images)
            for k, v in specs.items()
        }

    inputs: dict[str, Any] = {"required": section(node.required)}
    order: dict[str, list[str]] = {"required": list(node.required)}
    if node.optional:
        inputs["optional"] = section(node.optional)
        order["optional"] = list(node.optional)
    if node.hidden:
        inputs["hidden"] = (
            {k: [v] for k, v in node.hidden.items()} if node.v3 else dict(node.hidden)
        )
        order["hidden"] = list(node.hidden)
    info: dict[str, Any] = {
        "input": inputs,
        "input_order": order,
        "output": list(node.output),
        "output_is_list": [False] * len(node.output),
        "output_name": list(node.output_name or node.output),
        "name": node.name,
        "display_name": (node.display_name or node.name)
        if not node.v3
        else (node.display_name or None),
        "description": node.description,
        "python_module": node.python_module,
        "category": node.category,
        "output_node": node.output_node,
    }
    if node.output_tooltips:
        info["output_tooltips"] = list(node.output_tooltips)
    if node.v3:
        info.update({"deprecated": False, "experimental": node.experimental, "api_node": False})
    return info
