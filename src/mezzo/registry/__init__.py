"""The service registry: instances of services, their health, and changes pushed to watchers."""
