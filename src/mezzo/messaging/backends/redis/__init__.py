"""The Redis Streams broker engine: a stream per topic partition, native consumer groups, Lua for atomicity."""
