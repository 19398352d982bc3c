"""Create the work pools that ``prefect.yaml`` names, if they are missing.

``comfyfleet-cpu`` runs the mirror (any host near the bucket); ``comfyfleet-gpu`` runs
warm-up and generation, one process worker per GPU instance::

    PREFECT_API_URL=http://<server>:4200/api python -m deployments.pools
    prefect worker start --pool comfyfleet-gpu --name "$(hostname)" --limit 1
"""

from __future__ import annotations

import asyncio

POOLS = {
    "comfyfleet-cpu": "mirror and refresh runs: network and S3 bound, no GPU",
    "comfyfleet-gpu": "warm-up and batch generation: one worker per GPU instance",
}


async def ensure_pools(pools: dict[str, str] = POOLS) -> list[str]:
    """Create each missing process work pool; return the names created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    created = []
    async with get_client() as client:
        for name, description in pools.items():
            try:
                await client.read_work_pool(name)
            except ObjectNotFound:
                await client.create_work_pool(
                    WorkPoolCreate(name=name, type="process", description=description)
                )
                created.append(name)
    return created


def main() -> None:
    created = asyncio.run(ensure_pools())
    for name in POOLS:
        print(f"{name}: {'created' if name in created else 'exists'}")


if __name__ == "__main__":
    main()
