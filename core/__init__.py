"""What the SDK, the agent and the collector share, and nothing else of flightlog.

Imports run one way: ``flightlog`` (sdk) -> ``flightlog.agent`` -> ``flightlog.core``, and
``flightlog.collector`` -> ``flightlog.core``. Modules here import only the standard
library, the core dependencies (msgpack, orjson) and each other, and importing them has
no side effects.
"""
