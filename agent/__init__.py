"""The in-process background side: queue, shipping thread, spool, system sampler."""
