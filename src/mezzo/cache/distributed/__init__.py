"""Distributed mode of the cache: a ketama ring over Redis nodes, Redis Cluster, failure handling, rebalancing."""
