-- request-stamp: configuration. Validated by the gateway when it loads the config (`moongate
-- check` reports every problem as `PATH: message`); the handler gets it with the defaults
-- filled in.

-- An HTTP header name (RFC 9110 token) that the gateway does not manage itself.
local TOKEN = "^[%w!#$%%&'*+%-.^_`|~]+$"
local RESERVED = { host = true, connection = true, ["content-length"] = true,
                   ["transfer-encoding"] = true, upgrade = true, te = true }

local function header_name(name)
  if not name:find(TOKEN) then
    return nil, "must be a header name (letters, digits and !#$%&'*+-.^_`|~)"
  end
  if RESERVED[name:lower()] then
    return nil, "must not be " .. name .. ": the gateway sets that header itself"
  end
  return true
end

return {
  name = "request-stamp",
  fields = {
    { config = {
        type = "record",
        fields = {
          { header_name = { description = "The request header that carries the stamp to the "
                              .. "service (and back to the client when `echo` is on).",
                            type = "string", default = "X-Request-Stamp",
                            custom_validator = header_name } },
          { parts = { description = "What the stamp is made of, in order.",
                      type = "array", len_min = 1,
                      default = { "method", "path", "request_id", "client_ip" },
                      elements = { type = "string", one_of = { "method", "path", "query", "host",
                                                               "request_id", "client_ip",
                                                               "consumer" } } } },
          { separator = { description = "Put between the parts.",
                          type = "string", default = " ", len_max = 8,
                          not_match = "[\r\n]" } },
          { on_conflict = { description = "When the client sent the header already: "
                              .. "`override` replaces it, `append` sends both, `preserve` "
                              .. "keeps the client's.",
                            type = "string", default = "override",
                            one_of = { "override", "append", "preserve" } } },
          { echo = { description = "Also send the stamp back to the client in the response.",
                     type = "boolean", default = true } },
        },
    } },
  },
}
