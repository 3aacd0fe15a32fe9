"""Configuration: the YAML models, loading with ${ENV}, durations, handler types."""
