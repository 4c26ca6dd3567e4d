-- request-termination against the real binary and a real echo upstream: the default status
-- and Kong's default message per status, a custom message, a raw body with and without
-- content_type, bodiless statuses, echo (the JSON copy of the request, in Kong's shape), the
-- trigger by header and by query argument, configuration on a consumer identified by
-- key-auth, what becomes of the connection, and the upstream never being called.
local helpers = require "spec.helpers"

local JSON = "application/json; charset=utf-8"
local HTML = "<html><body><h1>Service is down for maintenance</h1></body></html>"

describe("request-termination", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    local function svc(name, config, extra)
      local s = { name = name, url = up.url, routes = { { name = name, paths = { "/" .. name } } },
                  plugins = { { name = "request-termination", config = config } } }
      for k, v in pairs(extra or {}) do s[k] = v end
      return s
    end
    local services = {
      svc("default", nil),
      svc("custom", { status_code = 406, message = "Invalid" }),
      svc("html", { body = HTML }),
      svc("typed", { status_code = 451, content_type = "text/html; charset=utf-8",
                     body = HTML }),
      svc("jsonbody", { status_code = 200,
                        body = '{"code": 1, "message": "Service unavailable"}' }),
      svc("nocontent", { status_code = 204 }),
      svc("nocontentmsg", { status_code = 204, message = "not sent" }),
      svc("notmodified", { status_code = 304, message = "not sent" }),
      svc("echonocontent", { status_code = 204, echo = true }),
      svc("echo", { echo = true, status_code = 404 }),
      svc("echomsg", { echo = true, status_code = 418, message = "short and stout" }),
      svc("echotrig", { echo = true, status_code = 404, trigger = "gimme-an-echo" }),
      svc("trig", { status_code = 410, message = "Gone for good", trigger = "X-Kill_Switch" }),
      { name = "auth", url = up.url, routes = { { name = "auth", paths = { "/auth" } } },
        plugins = { { name = "key-auth" } } },
      { name = "unnamed", url = up.url, routes = { { paths = { "/unnamed" } } },
        plugins = { { name = "request-termination", config = { echo = true } } } },
    }
    -- Kong's table of default messages, and statuses it has none for
    for _, status in ipairs({ 401, 403, 404, 405, 418, 500, 502, 503 }) do
      services[#services + 1] = svc("s" .. status, { status_code = status })
    end
    gw = helpers.start({
      plugins = { "bundled", "request-termination" },
      services = services,
      consumers = {
        { username = "blocked", keyauth_credentials = { { key = "blocked-key" } },
          plugins = { { name = "request-termination",
                        config = { status_code = 403, message = "You are blocked" } } } },
        { username = "fine", keyauth_credentials = { { key = "fine-key" } } },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  before_each(function() up:clear() end)

  -- every test below that expects a termination also expects the upstream untouched
  local function terminated(res, status, body)
    assert.equal(status, res.status)
    if type(body) == "table" then
      assert.equal(JSON, res.headers["content-type"])
      assert.same(body, res:json())
    else
      assert.equal(body, res.body)
    end
    assert.equal(0, up:count())
  end

  describe("status and message", function()
    it("answers 503 {\"message\":\"Service unavailable\"} by default", function()
      terminated(assert(gw:get("/default")), 503, { message = "Service unavailable" })
    end)

    it("uses Kong's default message for each status it has one for", function()
      local defaults = {
        [401] = "Unauthorized", [404] = "Not found", [405] = "Method not allowed",
        [500] = "An unexpected error occurred", [502] = "Bad Gateway",
        [503] = "Service unavailable",
      }
      for status, message in pairs(defaults) do
        terminated(assert(gw:get("/s" .. status)), status, { message = message })
      end
    end)

    it("sends no body for a status without a default message", function()
      for _, status in ipairs({ 403, 418 }) do
        local res = assert(gw:get("/s" .. status))
        terminated(res, status, "")
        assert.equal("0", res.headers["content-length"])
        assert.is_nil(res.headers["content-type"])
      end
    end)

    it("sends the configured message with the configured status", function()
      terminated(assert(gw:post("/custom", "ignored")), 406, { message = "Invalid" })
    end)

    it("answers every method, HEAD without a body", function()
      for _, method in ipairs({ "GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH" }) do
        terminated(assert(gw:request({ method = method, path = "/default" })), 503,
                   { message = "Service unavailable" })
      end
      local res = assert(gw:request({ method = "HEAD", path = "/default" }))
      assert.equal(503, res.status)
      assert.equal(#'{"message":"Service unavailable"}', tonumber(res.headers["content-length"]))
      assert.equal(0, up:count())
    end)

    it("sends nothing after 204 and 304, whatever message is configured", function()
      local statuses = { ["/nocontent"] = 204, ["/nocontentmsg"] = 204, ["/notmodified"] = 304,
                         ["/echonocontent"] = 204 }
      for path, status in pairs(statuses) do
        local c = assert(helpers.connect(gw.port))
        assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
        local res = assert(c:read_response())
        assert.equal(status, res.status)
        assert.is_nil(res.headers["content-type"])
        assert.is_nil(res.headers["content-length"])   -- RFC 9110 8.6: never on a 204
        -- nothing follows the head: the next response on the connection is read cleanly
        assert(c:send("GET /default HTTP/1.1\r\nHost: x\r\n\r\n"))
        res = assert(c:read_response())
        assert.equal(503, res.status)
        assert.same({ message = "Service unavailable" }, res:json())
        c:close()
      end
      assert.equal(0, up:count())
    end)
  end)

  describe("body", function()
    it("sends the raw body, as JSON when no content_type is configured", function()
      local res = assert(gw:get("/html"))
      terminated(res, 503, HTML)
      assert.equal(JSON, res.headers["content-type"])
      res = assert(gw:get("/jsonbody"))
      assert.equal(200, res.status)
      assert.same({ code = 1, message = "Service unavailable" }, res:json())
    end)

    it("sends the raw body with the configured content_type", function()
      local res = assert(gw:get("/typed"))
      terminated(res, 451, HTML)
      assert.equal("text/html; charset=utf-8", res.headers["content-type"])
      assert.equal(tostring(#HTML), res.headers["content-length"])
    end)
  end)

  describe("echo", function()
    it("answers with a JSON copy of the request, in Kong's shape", function()
      local res = assert(gw:request({ method = "POST", path = "/echo",
        query = { hello = "there", multi = { "1", "2" } },
        headers = { ["X-Custom"] = { "a", "b" }, ["User-Agent"] = "spec" },
        body = "cool body" }))
      assert.equal(404, res.status)
      assert.equal(JSON, res.headers["content-type"])
      local json = res:json()
      assert.equal("Not found", json.message)
      assert.same({
        headers = {
          ["content-length"] = "9",
          connection = "close",
          host = "127.0.0.1:" .. gw.port,
          ["user-agent"] = "spec",
          ["x-custom"] = { "a", "b" },
        },
        host = "127.0.0.1",
        method = "POST",
        path = "/echo",
        port = gw.port,
        query = { hello = "there", multi = { "1", "2" } },
        raw_body = "cool body",
        scheme = "http",
      }, json.request)
      assert.same({ name = "echo" }, json.matched_route)
      assert.same({ name = "echo" }, json.matched_service)
      assert.matches("^%x+%-%x+%-%x+%-%x+%-%x+$", json.kong.node_id)
      assert.is_number(json.kong.worker_pid)
      assert.is_nil(json.kong.hostname)
      assert.equal(0, up:count())
    end)

    it("includes the parsed body for JSON and form bodies", function()
      local json = assert(gw:post("/echo", { a = 1, b = { "x" } })):json()
      assert.same({ a = 1, b = { "x" } }, json.request.body)
      assert.equal('{"a":1,"b":["x"]}', json.request.raw_body)
      json = assert(gw:post("/echo", "a=1&b=two", { headers = {
        ["Content-Type"] = "application/x-www-form-urlencoded" } })):json()
      assert.same({ a = "1", b = "two" }, json.request.body)
    end)

    it("shows an empty raw body and an empty query for a plain GET", function()
      local json = assert(gw:get("/echo")):json()
      assert.equal("", json.request.raw_body)
      assert.same({}, json.request.query)
      assert.is_nil(json.request.body)
    end)

    it("uses the configured message and status", function()
      local res = assert(gw:get("/echomsg"))
      assert.equal(418, res.status)
      assert.equal("short and stout", res:json().message)
      assert.equal("/echomsg", res:json().request.path)
    end)

    it("leaves out the matched route when it has no name", function()
      local res = assert(gw:get("/unnamed/x"))
      assert.equal(503, res.status)
      local json = res:json()
      assert.equal("Service unavailable", json.message)
      assert.equal("/unnamed/x", json.request.path)
      assert.is_nil(json.matched_route)
      assert.same({ name = "unnamed" }, json.matched_service)
    end)
  end)

  describe("trigger", function()
    it("lets requests without the trigger through to the upstream", function()
      local res = assert(gw:get("/trig"))
      assert.equal(200, res.status)
      assert.equal("/", res:json().path)   -- strip_path
      res = assert(gw:get("/echotrig?hello=there"))
      assert.equal(200, res.status)
      assert.equal(2, up:count())
    end)

    it("terminates when the trigger header is present, whatever its case and value", function()
      terminated(assert(gw:get("/trig", { headers = { ["X-Kill_Switch"] = "1" } })), 410,
                 { message = "Gone for good" })
      terminated(assert(gw:get("/trig", { headers = { ["x-kill_switch"] = "" } })), 410,
                 { message = "Gone for good" })
      local res = assert(gw:get("/echotrig", { headers = { ["Gimme-An-Echo"] = "please" } }))
      assert.equal(404, res.status)
      assert.equal("please", res:json().request.headers["gimme-an-echo"])
      assert.equal(0, up:count())
    end)

    it("terminates when the trigger is a query argument, with or without a value", function()
      terminated(assert(gw:get("/trig?X-Kill_Switch=yes")), 410, { message = "Gone for good" })
      terminated(assert(gw:get("/trig?a=1&X-Kill_Switch")), 410, { message = "Gone for good" })
      terminated(assert(gw:get("/trig?X-Kill_Switch=")), 410, { message = "Gone for good" })
      local res = assert(gw:get("/echotrig?hello=there&gimme-an-echo=1"))
      assert.equal(404, res.status)
      assert.same({ hello = "there", ["gimme-an-echo"] = "1" }, res:json().request.query)
      assert.equal(0, up:count())
    end)

    it("matches query argument names exactly (Kong does too)", function()
      assert.equal(200, assert(gw:get("/trig?x-kill_switch=1")).status)
      assert.equal(200, assert(gw:get("/trig?X-Kill-Switch=1")).status)
      assert.equal(200, assert(gw:get("/trig", { headers = { ["X-Kill-Switch"] = "1" } })).status)
      assert.equal(3, up:count())
    end)
  end)

  describe("on a consumer", function()
    it("terminates that consumer's requests once key-auth identified it", function()
      terminated(assert(gw:get("/auth", { headers = { apikey = "blocked-key" } })), 403,
                 { message = "You are blocked" })
      terminated(assert(gw:get("/auth?apikey=blocked-key")), 403,
                 { message = "You are blocked" })
    end)

    it("leaves other consumers and the authentication failures alone", function()
      local res = assert(gw:get("/auth", { headers = { apikey = "fine-key" } }))
      assert.equal(200, res.status)
      assert.equal("fine", res:json().headers["x-consumer-username"])
      assert.equal(401, assert(gw:get("/auth")).status)
      assert.equal(1, up:count())
    end)
  end)

  describe("the connection", function()
    it("stays usable after a termination of a request without a body", function()
      local c = assert(helpers.connect(gw.port))
      for _ = 1, 3 do
        assert(c:send("GET /default HTTP/1.1\r\nHost: x\r\n\r\n"))
        local res = assert(c:read_response())
        assert.equal(503, res.status)
        assert.is_nil(res.headers["connection"])
      end
      c:close()
    end)

    it("is closed after a termination that left a request body unread", function()
      local c = assert(helpers.connect(gw.port))
      assert(c:send("POST /default HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"))
      local res = assert(c:read_response())
      assert.equal(503, res.status)
      assert.equal("close", res.headers["connection"])
      local _, how = c:receive_all(3)
      assert.equal("closed", how)
      c:close()
    end)

    it("stays usable after an echo, which read the body", function()
      local c = assert(helpers.connect(gw.port))
      for i = 1, 2 do
        assert(c:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nb" .. i))
        local res = assert(c:read_response())
        assert.equal(404, res.status)
        assert.equal("b" .. i, res:json().request.raw_body)
      end
      c:close()
      assert.equal(0, up:count())
    end)
  end)
end)
