"""Readable random run names, like MLflow's ("bright-fox-417").

The SDK names runs it creates; the collector names runs created over the REST API
without a name. Both draw from these words.
"""

from __future__ import annotations

import random

_ADJECTIVES = (
    "able",
    "bold",
    "brave",
    "bright",
    "calm",
    "clever",
    "crisp",
    "eager",
    "fair",
    "gentle",
    "glad",
    "grand",
    "keen",
    "kind",
    "lively",
    "loud",
    "merry",
    "neat",
    "proud",
    "quick",
    "quiet",
    "rare",
    "sharp",
    "shy",
    "smart",
    "swift",
    "tidy",
    "vast",
    "warm",
    "wise",
)
_NOUNS = (
    "ant",
    "bass",
    "bat",
    "bear",
    "bee",
    "carp",
    "cat",
    "colt",
    "crab",
    "crow",
    "deer",
    "doe",
    "dove",
    "duck",
    "eel",
    "elk",
    "finch",
    "fox",
    "frog",
    "goat",
    "gull",
    "hare",
    "hawk",
    "lark",
    "lynx",
    "mole",
    "moth",
    "owl",
    "ram",
    "seal",
    "snail",
    "swan",
    "toad",
    "wolf",
    "wren",
    "yak",
)


def generate_run_name() -> str:
    """A readable random run name, like MLflow's ("bright-fox-417")."""
    return f"{random.choice(_ADJECTIVES)}-{random.choice(_NOUNS)}-{random.randrange(1000)}"
