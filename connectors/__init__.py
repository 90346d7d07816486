"""The connector daemons hospitals run: read a feed (MLLP, folders, database views, Kafka), spool
it durably, map it and deliver it to the hub (HTTP or Kafka)."""
