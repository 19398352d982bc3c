"""A pull in a child process, for the kill-and-resume tests.

``python -m tests.pull.pull_child CONFIG.json``: pulls the items named in the config and
prints the running byte count after every range (so the parent knows when to SIGKILL it).
Each range is slowed down a little so the kill lands in the middle of a file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from comfyfleet.pull.transfer import PullItem, PullSettings, pull
from comfyfleet.store.base import ObjectStore


def open_store(spec: dict[str, Any]) -> ObjectStore:
    if spec["type"] == "local":
        from comfyfleet.store.local import LocalStore

        return LocalStore(spec["root"])
    from comfyfleet.store.s3 import S3Store

    return S3Store(
        spec["bucket"],
        spec["prefix"],
        endpoint_url=spec["endpoint_url"],
        access_key_id=spec["access_key"],
        secret_access_key=spec["secret_key"],
        region=spec["region"],
    )


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    items = [
        PullItem(i["key"], Path(i["dest"]), i["size"], i["sha256"], Path(i["marker"]))
        for i in config["items"]
    ]
    settings = PullSettings(**config["settings"])
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        print(done, flush=True)
        time.sleep(config.get("delay_s", 0.0))

    report = pull(items, open_store(config["store"]), settings=settings, progress=progress)
    print("done", report.ok, flush=True)


if __name__ == "__main__":
    main()
