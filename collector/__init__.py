"""The collector daemon: ingest, stores, REST API and UI."""
