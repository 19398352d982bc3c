"""Read back what a flow run published: its artifacts, grouped by type."""

from __future__ import annotations

from typing import Any
from uuid import UUID


def artifacts_of(flow_run_id: UUID) -> dict[str, list[Any]]:
    """The flow run's artifacts by type (``table``, ``markdown``, ``progress``...)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    by_type: dict[str, list[Any]] = {}
    for artifact in found:
        by_type.setdefault(artifact.type, []).append(artifact)
    return by_type
