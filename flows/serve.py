"""Serve the retraining flow's two deployments until stopped (Ctrl-C):

- `numclip-retrain/nightly`: on a cron schedule (default 02:00 every day);
- `numclip-retrain/on-demand`: no schedule; start it with
  `prefect deployment run 'numclip-retrain/on-demand' --param overrides='["train.epochs=3"]'`.

Run from the project root with the Prefect API configured (see the README):
    python -m flows.serve [--cron "0 2 * * *"] [--timezone UTC]

This is the one-process option: the schedule runs only while this process does (Prefect pauses the
served deployments when it stops). `prefect.yaml` registers the same deployments on a work pool, for
`prefect worker start --pool numclip --type process` (docs/orchestration.md).
"""

from __future__ import annotations

import argparse
import sys
import time

from prefect import serve
from prefect.client.orchestration import get_client
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL

from flows.retrain import retrain
from numclip.core.errors import NumclipError

NIGHTLY = "0 2 * * *"


def wait_for_api(timeout_s: float) -> None:
    """A server started a moment ago takes seconds to answer: wait for it rather than crash (NumclipError
    when it never does)."""
    if not PREFECT_API_URL.value():
        raise NumclipError("PREFECT_API_URL is not set: point it at the server, e.g. "
                           "export PREFECT_API_URL=http://127.0.0.1:4200/api (see the README)")
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while (error := client.api_healthcheck()) is not None:
            if time.monotonic() > deadline:
                raise NumclipError(f"the Prefect API at {client.api_url} did not answer in {timeout_s:.0f} s "
                                   f"({error}); start it with `prefect server start --host 127.0.0.1` and set "
                                   "PREFECT_API_URL (see the README)")
            time.sleep(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cron", default=NIGHTLY, help=f"schedule of the nightly deployment ({NIGHTLY})")
    parser.add_argument("--timezone", default="UTC", help="time zone of the cron schedule (UTC)")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for the Prefect API (120)")
    args = parser.parse_args(argv)
    try:
        wait_for_api(args.wait)
    except NumclipError as e:
        sys.exit(f"python -m flows.serve: error: {e}")
    nightly = retrain.to_deployment(
        name="nightly", schedule=Cron(args.cron, timezone=args.timezone),
        description="Scheduled retraining: picks up new data drops; trains only what is stale.")
    on_demand = retrain.to_deployment(
        name="on-demand", description="Retraining on request, with optional params overrides.")
    serve(nightly, on_demand, limit=1)  # one run at a time: runs share the workspace and its DVC lock


if __name__ == "__main__":
    main()
