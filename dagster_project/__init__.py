"""Dagster wiring (one root Definitions), settings and the `kb` CLI."""
