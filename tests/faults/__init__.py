"""Fault tests: the real proxy and a real PostgreSQL under database restarts, proxy kills,
two replicas, a hanging database and duplicated events."""
