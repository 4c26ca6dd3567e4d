return { name = "bench-auth", fields = { { config = { type = "record", fields = {
  { consumers = { type = "integer", default = 1000, description = "keys key-1 .. key-N" } },
  { dict = { type = "string", default = "bench_counters", description = "shared dict" } },
  { limit = { type = "integer", default = 1000000000, description = "requests per minute" } },
} } } } }
