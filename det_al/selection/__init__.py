"""Picking a batch from a ranking: the strategy registry and the selection files."""
