"""The static HTML report of a scored pool."""
