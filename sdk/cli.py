"""The ``flightlog`` command line.

flightlog collector [--store URI] [--host H] [--port P] ...   run a collector
flightlog ui [--store URI] [--host H] [--port 5000] ...         a collector, for its web UI
flightlog artifacts list --run-id ID [--path DIR]             list a run's artifacts
flightlog artifacts download --run-id ID [--path P] [--dst DIR]
flightlog sync [--spool DIR] [--tracking-uri URI]              send spools left behind
flightlog --version; python -m flightlog works as ``flightlog``
"""

from __future__ import annotations

import argparse
import sys


def _collector(args: argparse.Namespace) -> int:
    if getattr(args, "upstream", None):
        from flightlog.agent import forward  # the node sidecar

        return forward.run(args)
    from flightlog.collector import main as collector_main

    return collector_main.run(args)


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless its text already gives it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.option_strings
            and action.default not in (None, False, argparse.SUPPRESS)
            and "default" not in text
        ):
            text += " (default: %(default)s)"
        return text


def _ui(args: argparse.Namespace) -> int:
    # The same collector; it prints the page's URL on stdout once it listens.
    args.announce_ui = True
    return _collector(args)


def _client(args: argparse.Namespace) -> object:
    from flightlog.client import MlflowClient

    return MlflowClient(args.tracking_uri)


def _artifacts_list(args: argparse.Namespace) -> int:
    from flightlog.client import MlflowClient

    client = _client(args)
    assert isinstance(client, MlflowClient)
    for f in client.list_artifacts(args.run_id, args.path):
        size = "-" if f.is_dir else str(f.file_size)
        print(f"{'dir ' if f.is_dir else 'file'} {size:>12}  {f.path}{'/' if f.is_dir else ''}")
    return 0


def _artifacts_download(args: argparse.Namespace) -> int:
    from flightlog import artifacts
    from flightlog.client import MlflowClient

    client = _client(args)
    assert isinstance(client, MlflowClient)
    client._reading.agent.flush()
    bar = artifacts.ProgressBar() if not args.quiet else None
    path = artifacts.download(client.ctx.client, args.run_id, args.path, args.dst, bar)
    print(path)
    return 0


def _sync(args: argparse.Namespace) -> int:
    from flightlog.agent import sync

    return sync.run(args)


def build_parser() -> argparse.ArgumentParser:
    """The parser for every subcommand."""
    from flightlog.collector import main as collector_main
    from flightlog.core.version import __version__

    parser = argparse.ArgumentParser(
        prog="flightlog", description="flightlog experiment tracker", formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"flightlog {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "collector",
        help="run a collector (sidecar, embedded or central server)",
        formatter_class=HelpFormatter,
    )
    collector_main.add_arguments(p)
    p.set_defaults(func=_collector)

    srv = sub.add_parser(
        "server",
        help="run a tracking server with mlflow server's flags "
        "(--backend-store-uri, --default-artifact-root, --host, --port)",
        formatter_class=HelpFormatter,
    )
    collector_main.add_arguments(srv, mlflow_names=True)
    srv.set_defaults(func=_collector)

    p = sub.add_parser(
        "ui",
        help="serve a local store's web UI (a collector on port 5000), as `mlflow ui` does",
        formatter_class=HelpFormatter,
    )
    collector_main.add_arguments(p, port=5000)
    p.set_defaults(func=_ui)

    art = sub.add_parser("artifacts", help="list and download a run's artifacts")
    art_sub = art.add_subparsers(dest="artifacts_command", required=True)
    for name, func, helptext in (
        ("list", _artifacts_list, "list the direct children of a directory"),
        ("download", _artifacts_download, "download a file or directory"),
    ):
        a = art_sub.add_parser(name, help=helptext, formatter_class=HelpFormatter)
        a.add_argument("--run-id", required=True)
        a.add_argument(
            "--path",
            default="" if name == "download" else None,
            help="artifact path (default: the run's artifact root)",
        )
        a.add_argument(
            "--tracking-uri",
            default=None,
            help="collector URL or local store (default: the tracking URI in force)",
        )
        if name == "download":
            a.add_argument("--dst", default=".", help="local directory (default: .)")
            a.add_argument("--quiet", action="store_true", help="no progress bar")
        a.set_defaults(func=func)

    from flightlog.agent import sync

    s = sub.add_parser(
        "sync",
        help="send batches that processes left in a spool (offline or killed runs)",
        formatter_class=HelpFormatter,
    )
    sync.add_arguments(s)
    s.set_defaults(func=_sync)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; errors print one line and exit 1."""
    from flightlog.core.exceptions import MlflowException

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MlflowException as e:
        print(f"flightlog: error: {e.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
