"""The flow of one watcher's events: source, dispatch, retry, position, checkpointer."""
