"""Start-up assets: the vast.ai on-start script and the Dockerfile that bakes a profile.

Both are text produced from a few settings; tests parse what comes out (``bash -n`` for
the script; stages, pins and secret mounts for the Dockerfile).

The on-start script (``render_onstart``) is the plan's ``download_models.sh`` done right:
it installs comfyfleet into its own venv, reads the store settings from the environment
(``COMFYFLEET_STORE``, ``AWS_*``; they are never printed), finds the ComfyUI root, runs
``comfyfleet warmup --json``, keeps the report and prints one line. Reboots re-run it:
the venv is reused, files already in place are skipped, and a lock keeps two runs apart.

The Dockerfile (``render_dockerfile``) has three stages:

* ``models``: installs comfyfleet and runs ``comfyfleet bake``, which pulls the profile
  from the mirror with full verification and writes the baked manifest. The store
  settings arrive as a BuildKit secret (``RUN --mount=type=secret``), never as ARG/ENV, so
  they are in no layer and no image history.
* ``nodes``: the video custom nodes, each fetched at a pinned commit (``CUSTOM_NODES``)
  and checked against it.
* the final stage: the ComfyUI base image plus the nodes (and their requirements), the
  models, the baked manifest at ``/opt/comfyfleet/baked-manifest.json`` and comfyfleet
  itself, so ``comfyfleet warmup --mode baked`` can check the files at start.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from comfyfleet import __version__
from comfyfleet.errors import ConfigError


@dataclass(frozen=True)
class CustomNode:
    """A ComfyUI custom node repository pinned to one commit."""

    name: str
    repo: str
    commit: str
    purpose: str


# The video custom nodes, each pinned to a full commit SHA (check them all in one place).
# VHS, AnimateDiff-Evolved and CogVideoXWrapper are the commits the ComfyUI reference was
# read at (comfyui-api.md §6); HunyuanVideoWrapper is a commit of kijai's repository as
# stored in the public index (nodes.py at that commit).
CUSTOM_NODES: tuple[CustomNode, ...] = (
    CustomNode(
        "ComfyUI-VideoHelperSuite",
        "https://github.com/Kosinkadink/ComfyUI-VideoHelperSuite",
        "4ee72c065db22c9d96c2427954dc69e7b908444b",
        "VHS_VideoCombine: frames -> mp4/webm/gif",
    ),
    CustomNode(
        "ComfyUI-AnimateDiff-Evolved",
        "https://github.com/Kosinkadink/ComfyUI-AnimateDiff-Evolved",
        "d8d163cd90b1111f6227495e3467633676fbb346",
        "AnimateDiff loaders and samplers (ADE_*)",
    ),
    CustomNode(
        "ComfyUI-CogVideoXWrapper",
        "https://github.com/kijai/ComfyUI-CogVideoXWrapper",
        "fdb8abd2790b5459ddc7066c31861bb0b62e988b",
        "CogVideoX loaders and sampler (CogVideo*)",
    ),
    CustomNode(
        "ComfyUI-HunyuanVideoWrapper",
        "https://github.com/kijai/ComfyUI-HunyuanVideoWrapper",
        "7aeb82499c8c9985cb710abb2cc5db49d49ff0e5",
        "HunyuanVideo wrapper nodes (HyVideo*)",
    ),
)

# vast.ai's ComfyUI image: ComfyUI lives in /opt/workspace-internal/ComfyUI in the image
# (synced to /workspace/ComfyUI at boot), Python in /venv/main, ComfyUI on port 18188.
DEFAULT_BASE_IMAGE = "vastai/comfy:v0.19.3-cuda-12.9-py312"
DEFAULT_BUILD_PYTHON_IMAGE = "python:3.12-slim"
DEFAULT_IMAGE_COMFY_ROOT = "/opt/workspace-internal/ComfyUI"
DEFAULT_IMAGE_PYTHON = "/venv/main/bin/python"
DEFAULT_COMFY_URL = "http://127.0.0.1:18188"
DEFAULT_PACKAGE = "comfyfleet"
BAKED_DIR = "/opt/comfyfleet"
BAKED_MANIFEST_PATH = f"{BAKED_DIR}/baked-manifest.json"
BAKED_MODELS_DIR = f"{BAKED_DIR}/models"
SECRET_ID = "comfyfleet_env"
# Where vast.ai images and common ComfyUI images keep ComfyUI (first hit wins).
COMFY_ROOT_CANDIDATES = (
    "/workspace/ComfyUI",
    "/opt/workspace-internal/ComfyUI",
    "/opt/ComfyUI",
    "/ComfyUI",
    "/root/ComfyUI",
    "/comfyui",
)
# Event the on-start script emits when PREFECT_API_URL is set (see flows/warmup.py).
EVENT_STARTED = "comfyfleet.instance.started"
EVENT_FINISHED = "comfyfleet.warmup.finished"
VIA = ("cli", "flow", "worker")


def _q(value: str) -> str:
    return shlex.quote(value)


def _check_profile(profile: str) -> None:
    if not profile or any(c in profile for c in " /\\'\"$`"):
        raise ConfigError(
            f"profile name {profile!r} cannot be used here",
            hint="use a catalog profile name such as image or video-24gb (or auto)",
        )


@dataclass(frozen=True)
class OnstartSettings:
    """What the on-start script does; every value can still be overridden by env at boot."""

    profile: str = "auto"
    mode: str = "script"
    verify: str = "fast"
    store: str = ""  # default for COMFYFLEET_STORE; empty = must come from the environment
    package: str = DEFAULT_PACKAGE
    comfy_root: str = ""  # empty = search COMFY_ROOT_CANDIDATES
    comfy_url: str = DEFAULT_COMFY_URL
    start_comfy: str = ""
    warmup_workflow: str = ""
    catalogs: tuple[str, ...] = ()
    home: str = BAKED_DIR
    via: str = "cli"
    work_pool: str = "comfyfleet-gpu"
    fail_on_target: bool = False


def render_onstart(settings: OnstartSettings | None = None) -> str:
    """The vast.ai on-start script (bash) for ``settings``."""
    s = settings or OnstartSettings()
    _check_profile(s.profile)
    if s.mode not in ("script", "baked"):
        raise ConfigError(f"unknown mode {s.mode!r}", hint="use --mode script or --mode baked")
    if s.verify not in ("fast", "full"):
        raise ConfigError(f"unknown verify {s.verify!r}", hint="use --verify fast or full")
    if s.via not in VIA:
        raise ConfigError(f"unknown --via {s.via!r}", hint="use --via cli, flow or worker")
    catalogs = " ".join(_q(c) for c in s.catalogs)
    candidates = " ".join(_q(c) for c in COMFY_ROOT_CANDIDATES)
    lines = [
        "#!/usr/bin/env bash",
        f"# comfyfleet on-start script (rendered by comfyfleet {__version__}: "
        "comfyfleet render onstart)",
        "#",
        "# Paste into the vast.ai template's on-start field, or run it from there. Set in the",
        "# instance environment (never in this file):",
        "#   COMFYFLEET_STORE        s3://bucket/prefix of the mirror",
        "#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   credentials of that bucket",
        "#   AWS_ENDPOINT_URL        for R2/B2/MinIO/SeaweedFS (leave unset for AWS S3)",
        "#   AWS_DEFAULT_REGION      when the service needs one",
        "# Optional: COMFY_ROOT, COMFY_URL, COMFYFLEET_PROFILE, COMFYFLEET_MODE,",
        "#   COMFYFLEET_VERIFY, COMFYFLEET_PACKAGE, COMFYFLEET_HOME, PREFECT_API_URL.",
        "# Safe to run again (reboots): the venv is reused, files already in place are",
        "# skipped, and a lock keeps two runs apart. Secrets are never printed.",
        "set -euo pipefail",
        "umask 022",
        "",
        f'COMFYFLEET_HOME="${{COMFYFLEET_HOME:-{s.home}}}"',
        f'COMFYFLEET_PACKAGE="${{COMFYFLEET_PACKAGE:-{s.package}}}"',
        f'COMFYFLEET_PROFILE="${{COMFYFLEET_PROFILE:-{s.profile}}}"',
        f'COMFYFLEET_MODE="${{COMFYFLEET_MODE:-{s.mode}}}"',
        f'COMFYFLEET_VERIFY="${{COMFYFLEET_VERIFY:-{s.verify}}}"',
        'COMFYFLEET_STORE="${COMFYFLEET_STORE:-}"',
        f"DEFAULT_STORE={_q(s.store)}",
        f'COMFY_URL="${{COMFY_URL:-{s.comfy_url}}}"',
        'START_COMFY="${START_COMFY:-}"',
        f"DEFAULT_START_COMFY={_q(s.start_comfy)}",
        'WARMUP_WORKFLOW="${WARMUP_WORKFLOW:-}"',
        f"DEFAULT_WARMUP_WORKFLOW={_q(s.warmup_workflow)}",
        f"COMFYFLEET_VIA={_q(s.via)}",
        f'COMFYFLEET_WORK_POOL="${{COMFYFLEET_WORK_POOL:-{s.work_pool}}}"',
        f"CATALOGS=({catalogs})",
        f"FAIL_ON_TARGET={'1' if s.fail_on_target else '0'}",
        f"ROOT_CANDIDATES=({candidates})",
        'PYTHON="${COMFYFLEET_PYTHON:-python3}"',
        'VENV="$COMFYFLEET_HOME/venv"',
        'REPORT="$COMFYFLEET_HOME/warmup-report.json"',
        'LOG="$COMFYFLEET_HOME/warmup.log"',
        'INSTANCE_ID="${VAST_CONTAINERLABEL:-${CONTAINER_ID:-$(hostname)}}"',
        "",
        "log() { printf '[comfyfleet] %s\\n' \"$*\" >&2; }",
        'die() { log "error: $*"; exit 2; }',
        "",
        '[[ -n "$COMFYFLEET_STORE" ]] || COMFYFLEET_STORE="$DEFAULT_STORE"',
        '[[ -n "$START_COMFY" ]] || START_COMFY="$DEFAULT_START_COMFY"',
        '[[ -n "$WARMUP_WORKFLOW" ]] || WARMUP_WORKFLOW="$DEFAULT_WARMUP_WORKFLOW"',
        'if [[ -z "$COMFYFLEET_STORE" && "$COMFYFLEET_MODE" != "baked" ]]; then',
        '  die "COMFYFLEET_STORE is not set: add COMFYFLEET_STORE=s3://bucket/prefix to the '
        'instance environment"',
        "fi",
        "export COMFYFLEET_STORE AWS_EC2_METADATA_DISABLED=true",
        'mkdir -p "$COMFYFLEET_HOME"',
        "",
        "# One run at a time (a reboot can start this while an earlier run still works).",
        'exec 9>"$COMFYFLEET_HOME/onstart.lock"',
        'if ! flock -n 9; then log "another on-start run holds $COMFYFLEET_HOME/onstart.lock; '
        'leaving it to finish"; exit 0; fi',
        "",
        "# Find ComfyUI: COMFY_ROOT if set, else the first known location with main.py.",
        'if [[ -z "${COMFY_ROOT:-}" ]]; then',
    ]
    if s.comfy_root:
        lines.append(f"  COMFY_ROOT={_q(s.comfy_root)}")
    else:
        lines += [
            '  for candidate in "${ROOT_CANDIDATES[@]}"; do',
            '    if [[ -f "$candidate/main.py" ]]; then COMFY_ROOT="$candidate"; break; fi',
            "  done",
        ]
    lines += [
        "fi",
        '[[ -n "${COMFY_ROOT:-}" && -d "$COMFY_ROOT" ]] || die "no ComfyUI root found '
        '(looked in ${ROOT_CANDIDATES[*]}); set COMFY_ROOT"',
        'log "ComfyUI root: $COMFY_ROOT"',
        "",
        "# comfyfleet in its own venv; reinstalled only when the package spec changes.",
        'STAMP="$VENV/.comfyfleet-package"',
        'if [[ ! -x "$VENV/bin/comfyfleet" || "$(cat "$STAMP" 2>/dev/null || true)" != '
        '"$COMFYFLEET_PACKAGE" ]]; then',
        '  log "installing $COMFYFLEET_PACKAGE into $VENV"',
        '  "$PYTHON" -m venv "$VENV"',
        '  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check '
        '--upgrade "$COMFYFLEET_PACKAGE"',
        '  printf \'%s\' "$COMFYFLEET_PACKAGE" > "$STAMP"',
        "fi",
        '"$VENV/bin/comfyfleet" --version >&2',
        "",
        "emit_event() {  # emit_event NAME PAYLOAD_JSON_FILE (only with a Prefect server)",
        '  [[ -n "${PREFECT_API_URL:-}" ]] || return 0',
        '  "$VENV/bin/python" - "$1" "$INSTANCE_ID" "$2" <<\'PY\' || log "event $1 not sent"',
        "import json, sys",
        "from prefect.events import emit_event",
        "name, instance, path = sys.argv[1:4]",
        "with open(path, encoding='utf-8') as f:",
        "    payload = json.load(f)",
        "resource = {'prefect.resource.id': f'comfyfleet.instance.{instance}',",
        "            'prefect.resource.name': instance}",
        "emit_event(event=name, resource=resource, payload=payload)",
        "PY",
        "}",
        "",
        'if [[ "$COMFYFLEET_VIA" == "worker" ]]; then',
        "  # Hand the warm-up to the event-triggered `warmup` deployment: start this",
        "  # instance's worker, then emit the event the trigger waits for. The work pool must",
        "  # serve this instance alone, or another instance's worker may take the run.",
        '  [[ -n "${PREFECT_API_URL:-}" ]] || die "--via worker needs PREFECT_API_URL"',
        "  # prefect.yaml's pull step enters $COMFYFLEET_SRC: where flows/warmup.py is installed.",
        '  COMFYFLEET_SRC="${COMFYFLEET_SRC:-$("$VENV/bin/python" -c '
        "'import flows, os; print(os.path.dirname(list(flows.__path__)[0]))')}\"",
        "  export COMFYFLEET_SRC",
        '  if ! pgrep -f "prefect worker start --pool $COMFYFLEET_WORK_POOL" >/dev/null; then',
        '    nohup "$VENV/bin/prefect" worker start --pool "$COMFYFLEET_WORK_POOL" '
        '--name "$INSTANCE_ID" --limit 1 >>"$COMFYFLEET_HOME/worker.log" 2>&1 &',
        "  fi",
        '  "$VENV/bin/python" - "$COMFY_ROOT" "$COMFYFLEET_PROFILE" "$COMFYFLEET_MODE" '
        '"$COMFYFLEET_VERIFY" "$COMFY_URL" "$INSTANCE_ID" "$COMFYFLEET_WORK_POOL" '
        ">\"$COMFYFLEET_HOME/started.json\" <<'PY'",
        "import json, sys",
        "keys = ['comfy_root', 'profile', 'mode', 'verify', 'comfy_url', 'instance_id', "
        "'work_pool']",
        "print(json.dumps(dict(zip(keys, sys.argv[1:]))))",
        "PY",
        f'  emit_event {EVENT_STARTED} "$COMFYFLEET_HOME/started.json"',
        f'  log "emitted {EVENT_STARTED} for $INSTANCE_ID (pool $COMFYFLEET_WORK_POOL)"',
        "  exit 0",
        "fi",
        "",
        'args=(warmup --comfy-root "$COMFY_ROOT" --profile "$COMFYFLEET_PROFILE" '
        '--mode "$COMFYFLEET_MODE" --verify "$COMFYFLEET_VERIFY" --json '
        '--instance-id "$INSTANCE_ID" --timeline "$COMFYFLEET_HOME/warmup-timeline.png")',
        '[[ -n "$COMFYFLEET_STORE" ]] && args+=(--store "$COMFYFLEET_STORE")',
        'for c in "${CATALOGS[@]}"; do args+=(--catalog "$c"); done',
        'if [[ -n "$START_COMFY" ]]; then args+=(--start-comfy "$START_COMFY"); '
        'else args+=(--comfy-url "$COMFY_URL"); fi',
        '[[ -n "$WARMUP_WORKFLOW" ]] && args+=(--warmup-workflow "$WARMUP_WORKFLOW")',
        '[[ "$FAIL_ON_TARGET" == 1 ]] && args+=(--fail-on-target)',
        "",
        'log "warm-up: profile $COMFYFLEET_PROFILE, mode $COMFYFLEET_MODE (log: $LOG)"',
        "rc=0",
        'if [[ "$COMFYFLEET_VIA" == "flow" ]]; then',
        "  # The same warm-up as the `warmup` flow, run here and recorded by the Prefect",
        "  # server (tasks per phase, artifacts).",
        '  [[ -n "${PREFECT_API_URL:-}" ]] || die "--via flow needs PREFECT_API_URL"',
        '  "$VENV/bin/python" -m flows.warmup "${args[@]:1}" >"$REPORT.tmp" 2>>"$LOG" || rc=$?',
        "else",
        '  "$VENV/bin/comfyfleet" "${args[@]}" >"$REPORT.tmp" 2>>"$LOG" || rc=$?',
        "fi",
        'if [[ -s "$REPORT.tmp" ]]; then mv -f "$REPORT.tmp" "$REPORT"; '
        'else rm -f "$REPORT.tmp"; fi',
        "",
        "# One line for the instance log; the full report stays in $REPORT.",
        'if [[ -s "$REPORT" ]]; then',
        '  "$VENV/bin/python" - "$REPORT" "$rc" <<\'PY\' >&2 || true',
        "import json, sys",
        "r = json.load(open(sys.argv[1], encoding='utf-8'))",
        "rec = r.get('record', {})",
        "gib = rec.get('bytes_downloaded', 0) / 2**30",
        "msg = (f\"[comfyfleet] warm-up {rec.get('verdict', '?')}: \"",
        "       f\"{rec.get('total_s', 0):.1f} s of {rec.get('target_s', 0):.0f} s \"",
        "       f\"({rec.get('mode', '?')}), profile {rec.get('profile', '?')}, \"",
        "       f\"{gib:.1f} GiB pulled, dominant {rec.get('dominant_phase') or '-'}, \"",
        '       f"exit {sys.argv[2]}")',
        "if r.get('error'):",
        "    msg += f\" - {r['error'].get('message', '')}\"",
        "print(msg)",
        "PY",
        f'  emit_event {EVENT_FINISHED} "$REPORT"',
        "else",
        '  log "warm-up failed before it could report (exit $rc); see $LOG"',
        "fi",
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class DockerfileSettings:
    """What the Dockerfile bakes and on top of which image."""

    profile: str
    base_image: str = DEFAULT_BASE_IMAGE
    build_python_image: str = DEFAULT_BUILD_PYTHON_IMAGE
    package: str = DEFAULT_PACKAGE
    comfy_root: str = DEFAULT_IMAGE_COMFY_ROOT
    comfy_python: str = DEFAULT_IMAGE_PYTHON
    catalogs: tuple[str, ...] = ()  # files next to the Dockerfile (build context)
    nodes: tuple[CustomNode, ...] = CUSTOM_NODES


def _node_fetch_lines(nodes: Sequence[CustomNode]) -> list[str]:
    lines = []
    for node in nodes:
        lines.append(f"    fetch_node {_q(node.name)} {_q(node.repo)} {node.commit} && \\")
    return lines


def render_dockerfile(settings: DockerfileSettings) -> str:
    """A multi-stage Dockerfile that bakes ``settings.profile`` into a ComfyUI image."""
    s = settings
    _check_profile(s.profile)
    if s.profile == "auto":
        raise ConfigError(
            "a baked image needs a concrete profile, not auto (there is no GPU at build time)",
            hint="pass --profile image or --profile video-24gb",
        )
    for node in s.nodes:
        if len(node.commit) != 40 or any(c not in "0123456789abcdef" for c in node.commit):
            raise ConfigError(
                f"custom node {node.name} is pinned to {node.commit!r}, not a 40-hex commit",
                hint="pin every custom node to a full commit SHA",
            )
    catalog_copy: list[str] = []
    catalog_args = ""
    for i, path in enumerate(s.catalogs):
        if path == "builtin":  # the catalog shipped inside the comfyfleet package
            catalog_args += " --catalog builtin"
            continue
        target = f"{BAKED_DIR}/catalog/{i:02d}-{path.rsplit('/', 1)[-1]}"
        catalog_copy.append(f"COPY {_q(path)} {target}")
        catalog_args += f" --catalog {target}"
    node_names = " ".join(n.name for n in s.nodes)
    pins = "\n".join(f"#   {n.name:<30} {n.commit}  {n.purpose}" for n in s.nodes)
    lines = [
        "# syntax=docker/dockerfile:1",
        f"# Rendered by comfyfleet {__version__}: comfyfleet render dockerfile "
        f"--profile {s.profile}",
        "#",
        f"# Bakes profile {s.profile!r} into {s.base_image}. Build with the store settings as a",
        "# BuildKit secret (a dotenv file; it never enters a layer or the image history):",
        "#",
        f"#   docker build --secret id={SECRET_ID},src=store.env -t comfyfleet-{s.profile} .",
        "#",
        "# store.env: COMFYFLEET_STORE=s3://bucket/prefix, AWS_ACCESS_KEY_ID=...,",
        "#            AWS_SECRET_ACCESS_KEY=..., and AWS_ENDPOINT_URL / AWS_DEFAULT_REGION",
        "#            if the service needs them.",
        "# At start: comfyfleet warmup --mode baked --comfy-root /workspace/ComfyUI checks the",
        f"# files against {BAKED_MANIFEST_PATH} and reports (target 120 s).",
        "#",
        "# Custom nodes, pinned:",
        pins,
        "",
        f"ARG BASE_IMAGE={s.base_image}",
        f"ARG BUILD_PYTHON_IMAGE={s.build_python_image}",
        "",
        "# ---- models: pull the profile from the mirror, sha256-verified, at build time",
        "FROM ${BUILD_PYTHON_IMAGE} AS models",
        f"ARG COMFYFLEET_PACKAGE={s.package}",
        "ENV PIP_DISABLE_PIP_VERSION_CHECK=1 AWS_EC2_METADATA_DISABLED=true",
        f"RUN python -m venv {BAKED_DIR}/venv && \\",
        f'    {BAKED_DIR}/venv/bin/pip install --no-cache-dir "${{COMFYFLEET_PACKAGE}}"',
        *catalog_copy,
        f"RUN --mount=type=secret,id={SECRET_ID},required=true \\",
        "    set -eu && set -a && . /run/secrets/" + SECRET_ID + " && set +a && \\",
        f"    {BAKED_DIR}/venv/bin/comfyfleet bake --profile {s.profile}{catalog_args} \\",
        f"        --models-dir {BAKED_MODELS_DIR} --manifest-out {BAKED_MANIFEST_PATH}",
        "",
        "# ---- nodes: video custom nodes at pinned commits (fetched by SHA, then checked)",
        "FROM ${BASE_IMAGE} AS nodes",
        "RUN set -eu && mkdir -p /nodes && \\",
        "    fetch_node() { \\",
        '        git init -q "/nodes/$1" && \\',
        '        git -C "/nodes/$1" fetch -q --depth 1 "$2" "$3" && \\',
        '        git -C "/nodes/$1" checkout -q FETCH_HEAD && \\',
        '        test "$(git -C "/nodes/$1" rev-parse HEAD)" = "$3" && \\',
        '        rm -rf "/nodes/$1/.git"; \\',
        "    } && \\",
        *_node_fetch_lines(s.nodes),
        "    ls /nodes",
        "",
        "# ---- the image: ComfyUI base + nodes + baked models + manifest + comfyfleet",
        "FROM ${BASE_IMAGE}",
        f"ARG COMFYFLEET_PACKAGE={s.package}",
        f"ARG COMFY_ROOT={s.comfy_root}",
        f"ARG COMFY_PYTHON={s.comfy_python}",
        "COPY --from=nodes /nodes/ ${COMFY_ROOT}/custom_nodes/",
        "# The base image's torch stays the single source of truth: strip torch pins first.",
        f"RUN set -eu && for node in {node_names}; do \\",
        '        req="${COMFY_ROOT}/custom_nodes/$node/requirements.txt"; \\',
        '        if [ -f "$req" ]; then \\',
        "            sed -i -E '/^(torch|torchvision|torchaudio)([[:space:]]|[<>=!~]|$)/d' "
        '"$req" && \\',
        '            "${COMFY_PYTHON}" -m pip install --no-cache-dir -r "$req"; \\',
        "        fi; \\",
        "    done",
        f"COPY --from=models {BAKED_MODELS_DIR}/ {BAKED_MODELS_DIR}/",
        f"COPY --from=models {BAKED_MANIFEST_PATH} {BAKED_MANIFEST_PATH}",
        f'RUN "${{COMFY_PYTHON}}" -m venv {BAKED_DIR}/venv && \\',
        f'    {BAKED_DIR}/venv/bin/pip install --no-cache-dir "${{COMFYFLEET_PACKAGE}}" && \\',
        f"    ln -sf {BAKED_DIR}/venv/bin/comfyfleet /usr/local/bin/comfyfleet",
        "# Check the baked files against the manifest once, and point ComfyUI at them",
        "# (extra_model_paths.yaml in its root) before it ever starts.",
        f"RUN comfyfleet warmup --mode baked --gpu none --no-history --comfy-root "
        f'"${{COMFY_ROOT}}" --baked-manifest {BAKED_MANIFEST_PATH} --json '
        f"> {BAKED_DIR}/build-check.json",
        f"ENV COMFYFLEET_BAKED_MANIFEST={BAKED_MANIFEST_PATH} COMFYFLEET_MODE=baked",
        f'LABEL org.comfyfleet.profile="{s.profile}" org.comfyfleet.version="{__version__}"',
    ]
    return "\n".join(lines) + "\n"
