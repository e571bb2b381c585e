"""The ``flightlog`` command line: ``flightlog collector ...`` and friends."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch a subcommand."""
    parser = argparse.ArgumentParser(prog="flightlog", description="flightlog experiment tracker")
    sub = parser.add_subparsers(dest="command", required=True)
    from flightlog.collector import main as collector_main

    p = sub.add_parser("collector", help="run a collector (sidecar, embedded or central server)")
    collector_main.add_arguments(p)
    args = parser.parse_args(argv)
    if args.command == "collector":
        import asyncio
        import logging
        import os

        logging.basicConfig(
            level=os.environ.get("FLIGHTLOG_LOG_LEVEL", "INFO"),
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
        asyncio.run(collector_main.serve(collector_main.config_from_args(args)))
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
