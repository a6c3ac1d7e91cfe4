"""Subcommands of the `realiz3d` console script, one module per group; each exposes `register()`."""
