"""Results of a scoring run: the streamed results file and its resume key, shards, the assembled outputs."""
