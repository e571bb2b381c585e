"""flightlog: the MLflow Tracking API on an asynchronous logging agent."""
