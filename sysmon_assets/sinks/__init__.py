"""Where joined rows go besides the lake: the recipe's ``SYSMON_JOIN`` Kafka topic."""
