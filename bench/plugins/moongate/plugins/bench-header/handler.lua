-- bench/run.sh, scenario "plugin": the cheapest useful access plugin. It reads one request
-- header and sets one header on the upstream request. The nginx+lua side does the same with
-- access_by_lua_block { ngx.req.set_header("X-Bench", ngx.var.http_x_in or "none") }.
local get_header = moongate.request.get_header
local set_header = moongate.service.request.set_header

local P = { PRIORITY = 1000, VERSION = "1.0.0" }

function P:access(conf)
  set_header("X-Bench", get_header("X-In") or "none")
end

return P
