"""``python -m tests.fleet.serve_fleet_batch NAME``: serve ``fleet-batch`` as deployment NAME
(Prefect's runner: each run in its own process, cancellation watched), for the cancellation
test. Environment: PREFECT_API_URL, VAST_URL, VAST_API_KEY."""

from __future__ import annotations

import sys

from flows.fleet import fleet_batch

if __name__ == "__main__":
    fleet_batch.serve(name=sys.argv[1], pause_on_shutdown=False, print_starting_message=False)
