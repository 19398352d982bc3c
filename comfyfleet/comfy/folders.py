"""ComfyUI's model folders, their extensions and legacy names: the one list.

Facts from ComfyUI's ``folder_paths.py`` (``supported_pt_extensions``, line 12; the folder
table, lines 23-51; ``map_legacy``, lines 95-98) and from the custom nodes the built-in video
workflows use. The catalog validates against it, the warm-up checks placed files against it,
``extra_model_paths.yaml`` is written from it, and the ComfyUI client and the batch engine use
it to recognise model inputs. Change a fact here, nowhere else.
"""

from __future__ import annotations

# folder_paths.supported_pt_extensions: a standard folder lists only files with these.
PT_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})

# Files that look like model weights in a workflow input. ``.gguf`` is not in ComfyUI's own
# set, but the GGUF loader nodes take such files from the standard folders.
MODEL_EXTENSIONS = frozenset(PT_EXTENSIONS | {".gguf"})

# Standard folders, filtered by PT_EXTENSIONS when ComfyUI lists them.
PT_FOLDERS = frozenset(
    {
        "checkpoints",
        "loras",
        "vae",
        "text_encoders",
        "diffusion_models",
        "clip_vision",
        "style_models",
        "embeddings",
        "vae_approx",
        "controlnet",
        "gligen",
        "upscale_models",
        "hypernetworks",
        "photomaker",
        "model_patches",
        "audio_encoders",
    }
)

# On-disk legacy names: ComfyUI scans them under the new key (map_legacy), but HTTP
# /models/unet and /models/clip answer 404, and a file in both folders of a pair collides.
LEGACY_FOLDERS = {"unet": "diffusion_models", "clip": "text_encoders"}

# Folders the video custom nodes register; they list every file, whatever its extension.
CUSTOM_NODE_FOLDERS = frozenset(
    {"animatediff_models", "animatediff_motion_lora", "CogVideo", "LLM"}
)

# Every folder a catalog entry may name.
KNOWN_FOLDERS = frozenset(PT_FOLDERS | set(LEGACY_FOLDERS) | CUSTOM_NODE_FOLDERS | {"diffusers"})

# Where a model folder shows up in /object_info when /models/<folder> does not list it
# (custom-node folders on older servers): (node class, input name).
FOLDER_LOADERS: dict[str, tuple[str, str]] = {
    "checkpoints": ("CheckpointLoaderSimple", "ckpt_name"),
    "loras": ("LoraLoader", "lora_name"),
    "vae": ("VAELoader", "vae_name"),
    "diffusion_models": ("UNETLoader", "unet_name"),
    "text_encoders": ("CLIPLoader", "clip_name"),
    "clip_vision": ("CLIPVisionLoader", "clip_name"),
    "animatediff_models": ("ADE_AnimateDiffLoaderGen1", "model_name"),
    "upscale_models": ("UpscaleModelLoader", "model_name"),
    "controlnet": ("ControlNetLoader", "control_net_name"),
}

# (node class, input name) -> the model folder that input chooses from.
MODEL_INPUT_FOLDERS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("VAELoader", "vae_name"): "vae",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("ADE_AnimateDiffLoaderGen1", "model_name"): "animatediff_models",
}

# Output files the batch treats as images (everything else it stores as video or data).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def http_folder(folder: str) -> str:
    """The key ComfyUI's ``/models/<key>`` answers for a folder on disk."""
    return LEGACY_FOLDERS.get(folder, folder)


def looks_like_model(name: str) -> bool:
    """True when ``name`` ends like a weights file (case-insensitive)."""
    lowered = name.lower()
    return any(lowered.endswith(ext) for ext in MODEL_EXTENSIONS)


def listed_by_comfyui(folder: str, file: str) -> bool:
    """Whether ComfyUI would list ``file`` in ``folder`` (standard folders filter extensions)."""
    if http_folder(folder) not in PT_FOLDERS:
        return True
    dot = file.rfind(".")
    return dot >= 0 and file[dot:].lower() in PT_EXTENSIONS
