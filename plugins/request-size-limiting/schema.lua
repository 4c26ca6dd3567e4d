--- request-size-limiting's configuration: Kong 3.x's fields, defaults and units
-- (megabytes = 2^20 bytes, kilobytes = 2^10). Like Kong, allowed_payload_size has no bounds;
-- the handler gives zero and negative sizes Kong's meaning (see handler.lua).
return {
  name = "request-size-limiting",
  fields = {
    { config = {
        type = "record",
        fields = {
          { allowed_payload_size = {
              description = "Allowed request payload size, in size_unit (default 128 "
                .. "megabytes, i.e. 128 * 2^20 bytes).",
              type = "integer", default = 128 } },
          { size_unit = {
              description = "Unit of allowed_payload_size: megabytes (2^20 bytes, the "
                .. "default), kilobytes (2^10 bytes) or bytes.",
              type = "string", required = true, default = "megabytes",
              one_of = { "megabytes", "kilobytes", "bytes" } } },
          { require_content_length = {
              description = "Refuse (411) a request that has no Content-Length header and "
                .. "is not chunked.",
              type = "boolean", required = true, default = false } },
        },
    } },
  },
}
