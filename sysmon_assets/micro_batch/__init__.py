"""One micro-batch, plain Python with no Dagster in it: the recipe's SQL project, the ingest step, the
steps in order, and how shards divide the input."""
