"""Where events come from: the landing folder's files (NDJSON, gzip, EVTX) and the Kafka topic, both handed
to the ingest step as Arrow chunks of landed lines."""
