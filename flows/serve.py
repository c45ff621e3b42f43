"""Serve the retraining flow's two deployments until stopped (Ctrl-C):

- `numclip-retrain/nightly`: on a cron schedule (default 02:00 every day);
- `numclip-retrain/on-demand`: no schedule; start it with
  `prefect deployment run 'numclip-retrain/on-demand' --param overrides='["train.epochs=3"]'`.

Run from the project root with the Prefect API configured (see the README):
    python -m flows.serve [--cron "0 2 * * *"] [--timezone UTC]
"""

from __future__ import annotations

import argparse

from prefect import serve
from prefect.schedules import Cron

from flows.retrain import retrain

NIGHTLY = "0 2 * * *"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cron", default=NIGHTLY, help=f"schedule of the nightly deployment ({NIGHTLY})")
    parser.add_argument("--timezone", default="UTC", help="time zone of the cron schedule (UTC)")
    args = parser.parse_args(argv)
    nightly = retrain.to_deployment(
        name="nightly", schedule=Cron(args.cron, timezone=args.timezone),
        description="Scheduled retraining: picks up new data drops; trains only what is stale.")
    on_demand = retrain.to_deployment(
        name="on-demand", description="Retraining on request, with optional params overrides.")
    serve(nightly, on_demand, limit=1)  # one run at a time: runs share the workspace and its DVC lock


if __name__ == "__main__":
    main()
