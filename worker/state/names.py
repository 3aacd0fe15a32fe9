"""Every collection the worker keeps in its state database, named in one place."""

from __future__ import annotations

CHECKPOINTS = "checkpoints"  # one document per watcher (or partition): token, epoch, time
DEAD_LETTERS = "dead_letters"  # events whose handler gave up, with the reason
LEASES = "leases"  # one lease per watcher (or partition): owner, epoch, expiry
MEMBERS = "members"  # heartbeats of the running replicas, for fair shares of partitions
WATCHER_STATUS = "watcher_status"  # each watcher's last state and reason, for `status`
