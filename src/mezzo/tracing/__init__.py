"""Tracing: an OTLP and Zipkin collector with a trace store and Jaeger- and Zipkin-compatible queries."""
