"""The PostgreSQL broker engine: partitioned logs and consumer groups in tables, claimed with SKIP LOCKED."""
