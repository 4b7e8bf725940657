"""The knowledge-base assets, one module per stage, with their pure helpers beside them.
Assets are collected in `kb_assets.defs`; the pure modules import without Dagster."""
