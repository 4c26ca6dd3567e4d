--- moongate.bundled: the plugins shipped in plugins/<name>/, enabled by `plugins: [bundled]`.
-- Each is loaded as moongate.plugins.<name>.handler and .schema.
return {}
