"""Observing what was written: Prometheus metrics, the monitoring routes, low-balance alerts."""
