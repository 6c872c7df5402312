"""The config center: apps, environments, clusters and namespaces of configuration, released and pushed."""
