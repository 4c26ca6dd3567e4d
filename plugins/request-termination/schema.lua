--- request-termination's configuration: Kong 3.x's fields, defaults and checks (message and
-- body are exclusive, content_type needs a body, echo excludes body and content_type,
-- trigger is a header name as Kong's typedefs.header_name accepts it).
local find = string.find

local function is_present(v)
  return type(v) == "string" and #v > 0
end

-- Kong's utils.validate_header_name, message included
local function header_name(name)
  if find(name, "^[%w_%-]+$") then return true end
  return nil, "bad header name '" .. name .. "', allowed characters are A-Z, a-z, 0-9, '_', "
              .. "and '-'"
end

return {
  name = "request-termination",
  fields = {
    { config = {
        type = "record",
        fields = {
          { status_code = {
              -- Kong takes 100..599; a 1xx is an interim answer (the client keeps reading for
              -- the final one), so moongate.response.exit refuses it and so does this
              description = "The response code to send. Must be an integer between 200 and "
                .. "599.",
              type = "integer", required = true, default = 503, between = { 200, 599 } } },
          { message = {
              description = "The message to send, if using the default response generator.",
              type = "string" } },
          { content_type = {
              description = "Content type of the raw response configured with `config.body` "
                .. "(application/json; charset=utf-8 when unset).",
              type = "string" } },
          { body = {
              description = "The raw response body to send. This is mutually exclusive with "
                .. "the `config.message` field.",
              type = "string" } },
          { echo = {
              description = "When set, the plugin echoes a copy of the request back to the "
                .. "client (for debugging; combine it with `trigger`).",
              type = "boolean", required = true, default = false } },
          { trigger = {
              description = "When set, the plugin only terminates requests that carry this "
                .. "header or query argument; the others go on as if it were not there.",
              type = "string", custom_validator = header_name } },
        },
        custom_validator = function(config)
          if is_present(config.message)
             and (is_present(config.content_type) or is_present(config.body)) then
            return nil, "message cannot be used with content_type or body"
          end
          if is_present(config.content_type) and not is_present(config.body) then
            return nil, "content_type requires a body"
          end
          if config.echo and (is_present(config.content_type) or is_present(config.body)) then
            return nil, "echo cannot be used with content_type and body"
          end
          return true
        end,
    } },
  },
}
