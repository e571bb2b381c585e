"""``flightlog sync``: send the spools that processes left behind, with a progress line.

A training process that ends (or is killed) while its collector is away leaves its
batches in a spool directory (``flightlog.agent.spool``). The next flightlog process
for the same collector on the node sends them on its own; ``flightlog sync`` does it
now, for instance after an offline run, on a machine that will not log again, or with
the collector's new address::

    flightlog sync                                  # every spool under the default base
    flightlog sync --tracking-uri http://host:5055  # that collector's spool
    flightlog sync --spool DIR [--tracking-uri URI] # a given spool, sent to URI

Spools of processes that are still running are left to them. Batches are sent oldest
first and each is deleted once the collector has stored it; sending one twice is
harmless (the collector stores a batch id once), so an interrupted sync can simply be
run again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from flightlog.agent.delivery import DeliveryLoop, send_claim
from flightlog.agent.progress import progress_bar
from flightlog.agent.sender import Ack
from flightlog.agent.spool import (
    LOCK_NAME,
    SEGMENT_SUFFIX,
    ClaimedSpool,
    RecordRef,
    agent_dirs,
    read_target,
    spool_roots,
)
from flightlog.agent.transport import CollectorClient, HttpSender
from flightlog.core import settings
from flightlog.core.spool_paths import default_spool_root, spool_base
from flightlog.core.uris import is_collector_uri, local_store

DEFAULT_TIMEOUT = 60.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``flightlog sync``."""
    p.add_argument(
        "--spool",
        default=None,
        help="a spool directory: one process's, one collector's, or a base holding several "
        "(default: the spool of --tracking-uri; without one, every spool under "
        "FLIGHTLOG_SPOOL_DIR or ~/.cache/flightlog/spool, and ./flightlog/spool)",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="where to send the batches (default: the destination the spool recorded)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"give up after this many seconds without progress (default {DEFAULT_TIMEOUT:.0f})",
    )


def _roots(spool: str | None, uri: str | None) -> list[tuple[Path, list[Path] | None]]:
    """Spool roots to send, each with the process directories to take (None: all)."""
    if spool is not None:
        p = Path(spool).expanduser().resolve()
        if (p / LOCK_NAME).exists() or any(p.glob(f"*{SEGMENT_SUFFIX}")):
            return [(p.parent, [p])]  # one process's directory
        roots = spool_roots(p)
        return [(r, None) for r in roots] or [(p, None)]
    if uri is not None:
        local = None if is_collector_uri(uri) else local_store(uri)
        return [(default_spool_root(uri, local), None)]
    roots = spool_roots(spool_base())
    here = Path("flightlog", "spool").resolve()
    if here.is_dir() and here not in roots:
        roots.append(here)
    return [(r, None) for r in roots]


def _client(uri: str) -> CollectorClient:
    if is_collector_uri(uri):
        return CollectorClient(uri)
    from flightlog.agent.embedded import ensure_collector

    store = local_store(uri)
    client = CollectorClient(ensure_collector(store))
    client.rediscover = lambda: ensure_collector(store)
    return client


class Progress:
    """Batches and points sent: a tqdm bar on a terminal, and a last line in any case."""

    def __init__(self, batches: int, points: int, out: TextIO | None = None) -> None:
        self.batches = batches
        self.points = points
        self.sent_batches = 0
        self.sent_points = 0
        self.out: TextIO = out or sys.stderr
        self.bar = progress_bar(batches, "flightlog sync", unit="batch", file=self.out)

    def update(self, batches: int, points: int) -> None:
        """Count ``batches`` more batches holding ``points`` points as sent."""
        self.sent_batches += batches
        self.sent_points += points
        self.bar.set_postfix_str(self._points(), refresh=False)
        self.bar.update(batches)

    def _points(self) -> str:
        return f"{self.sent_points:,}/{self.points:,} points"

    def close(self) -> None:
        """End the bar and say what was sent (also where no bar is drawn: logs, pipes)."""
        self.bar.close()
        print(
            f"flightlog sync: sent {self.sent_batches}/{self.batches} batches, {self._points()}",
            file=self.out,
            flush=True,
        )


def _send(claim: ClaimedSpool, client: CollectorClient, progress: Progress, timeout: float) -> int:
    """Send one claimed spool; return the number of batches left unsent."""
    errors: list[str] = []

    def sent(ref: RecordRef, ack: Ack | None) -> None:
        if ack is None:
            print(f"flightlog sync: a damaged record in {ref.path} was skipped", file=sys.stderr)
        else:
            errors.extend(str(e.get("message")) for e in ack.errors if isinstance(e, dict))
        progress.update(1, 0 if ack is None else ref.points)

    loop = DeliveryLoop(HttpSender(client), give_up_after=timeout)
    left = send_claim(claim, loop, sent)
    if left:
        why = loop.last.message if loop.last is not None else "no answer"
        print(
            f"\nflightlog sync: no progress for {timeout:.0f}s ({why}); "
            f"{left} batch(es) stay in {claim.directory}",
            file=sys.stderr,
        )
        return left
    if errors:
        print(
            f"flightlog sync: the collector reported {len(errors)} error(s), e.g.: "
            + "; ".join(errors[:3]),
            file=sys.stderr,
        )
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``flightlog sync``; returns the exit status."""
    uri_arg = args.tracking_uri
    if uri_arg is None and args.spool is None:
        uri_arg = settings.TRACKING_URI.get()
    if args.spool is not None and not Path(args.spool).expanduser().is_dir():
        print(f"flightlog sync: no spool directory {args.spool}", file=sys.stderr)
        return 2
    work: list[tuple[str, ClaimedSpool]] = []
    busy: list[Path] = []
    for root, dirs in _roots(args.spool, uri_arg):
        uri = args.tracking_uri or read_target(root) or uri_arg
        for d in dirs if dirs is not None else agent_dirs(root):
            claim = ClaimedSpool.claim(d)
            if claim is None:
                busy.append(d)
            elif not claim.records:
                claim.finish()
            elif uri is None:
                claim.finish()
                print(
                    f"flightlog sync: {d} does not say where it belongs; pass --tracking-uri",
                    file=sys.stderr,
                )
                return 2
            else:
                work.append((uri, claim))
    for d in busy:
        print(f"flightlog sync: {d} belongs to a running process; left to it", file=sys.stderr)
    if not work:
        print("flightlog sync: nothing to send", file=sys.stderr)
        return 0
    progress = Progress(sum(len(c.records) for _, c in work), sum(c.points for _, c in work))
    clients: dict[str, CollectorClient] = {}
    left = 0
    try:
        for uri, claim in work:
            client = clients.get(uri) or clients.setdefault(uri, _client(uri))
            left += _send(claim, client, progress, args.timeout)
    finally:
        for _, claim in work:
            claim.finish()
    progress.close()
    return 1 if left else 0
