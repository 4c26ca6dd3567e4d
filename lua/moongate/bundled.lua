--- moongate.bundled: the plugins shipped in plugins/<name>/, enabled by `plugins: [bundled]`.
-- Each is loaded as moongate.plugins.<name>.handler and .schema.
return {
  "key-auth",
  "basic-auth",
  "mtls-auth",
  "jwt",
  "hmac-auth",
  "acl",
  "ip-restriction",
  "cors",
  "bot-detection",
  "request-size-limiting",
  "request-termination",
  "rate-limiting",
}
