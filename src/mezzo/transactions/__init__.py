"""Distributed transactions: saga, TCC, XA and two-phase messages, coordinated over the KV store."""
