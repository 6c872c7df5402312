"""The API gateway: a reverse proxy on the gateway port, driven by Route, Upstream, Consumer,
GlobalRule and Certificate resources."""
