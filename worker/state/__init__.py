"""The only code that names the worker's state collections."""
