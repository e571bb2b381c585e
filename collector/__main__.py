import sys

from flightlog.collector.main import main

sys.exit(main())
