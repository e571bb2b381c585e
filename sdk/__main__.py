"""``python -m flightlog``: the ``flightlog`` command line."""

import sys

from flightlog.cli import main

sys.exit(main())
