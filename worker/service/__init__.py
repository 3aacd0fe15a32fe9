"""The running service: supervisor, coordination between replicas, HTTP endpoints."""
