"""The NATS JetStream broker engine: partitions as streams, consumer groups as durable pull consumers."""
