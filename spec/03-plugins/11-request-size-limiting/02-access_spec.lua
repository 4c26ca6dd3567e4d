-- request-size-limiting against the real binary and a real echo upstream: the exact limit in
-- each unit (at the limit passes, one byte more is refused), refusals decided from
-- Content-Length before a byte of the body is read, chunked bodies cut off mid-stream without
-- the upstream ever getting a whole one, 417 for a client waiting for 100 Continue,
-- require_content_length, zero sizes, configuration on a consumer and at each level, and
-- what becomes of the connection after each refusal.
local helpers = require "spec.helpers"

local MiB, KiB = 1048576, 1024
local TOO_LARGE = { message = "Request size limit exceeded" }
local NEED_LENGTH = { message = "A valid Content-Length header is required" }
local JSON = "application/json; charset=utf-8"

describe("request-size-limiting", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    local function svc(name, config, extra)
      local s = { name = name, url = up.url, routes = { { name = name, paths = { "/" .. name } } },
                  plugins = { { name = "request-size-limiting", config = config } } }
      for k, v in pairs(extra or {}) do s[k] = v end
      return s
    end
    gw = helpers.start({
      plugins = { "bundled", "request-size-limiting",
                  -- global: applies where nothing more specific is configured
                  { name = "request-size-limiting",
                    config = { allowed_payload_size = 20, size_unit = "bytes" } } },
      -- the gateway's own ceiling is lifted, so that every refusal below is the plugin's
      limits = { client_max_body_size = 0 },
      services = {
        svc("default", nil),
        svc("mb", { allowed_payload_size = 1 }),
        svc("kb", { allowed_payload_size = 3, size_unit = "kilobytes" }),
        svc("bytes", { allowed_payload_size = 10, size_unit = "bytes" }),
        svc("chunk", { allowed_payload_size = 1000, size_unit = "bytes" }),
        svc("required", { allowed_payload_size = 10, size_unit = "bytes",
                          require_content_length = true }),
        svc("zero", { allowed_payload_size = 0 }),
        svc("negative", { allowed_payload_size = -1, size_unit = "bytes" }),
        { name = "global", url = up.url, routes = { { name = "global", paths = { "/global" } } } },
        { name = "auth", url = up.url,
          routes = { { name = "auth", paths = { "/auth" } } },
          plugins = { { name = "key-auth" },
                      { name = "request-size-limiting",
                        config = { allowed_payload_size = 1, size_unit = "kilobytes" } } } },
      },
      consumers = {
        { username = "small", keyauth_credentials = { { key = "small-key" } },
          plugins = { { name = "request-size-limiting",
                        config = { allowed_payload_size = 5, size_unit = "bytes" } } } },
        { username = "big", keyauth_credentials = { { key = "big-key" } } },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  before_each(function() up:clear() end)

  local function refused(res, status)
    assert.equal(status or 413, res.status)
    assert.equal(JSON, res.headers["content-type"])
    assert.same(status == 411 and NEED_LENGTH or TOO_LARGE, res:json())
  end

  -- A body sent as the given chunks (chunked framing).
  local function chunks(...)
    local list, i = { ... }, 0
    return function()
      i = i + 1
      return list[i]
    end
  end

  -- No upstream request was ever complete: each one it saw (if any) was cut off.
  local function upstream_saw_no_whole_body(limit)
    for _, rec in ipairs(up:requests()) do
      assert.is_not_nil(rec.error, "the upstream received a complete request")
      assert.is_true(rec.body_length <= limit)
    end
  end

  describe("with Content-Length", function()
    it("takes exactly the limit in megabytes (2^20 bytes) and refuses one byte more", function()
      local res = assert(gw:post("/mb", ("m"):rep(MiB)))
      assert.equal(200, res.status)
      assert.equal(MiB, res:json().body_length)
      assert.equal(1, up:count())
      refused(assert(gw:post("/mb", ("m"):rep(MiB + 1))))
      assert.equal(1, up:count())
    end)

    it("takes exactly the limit in kilobytes (2^10 bytes) and refuses one byte more", function()
      local res = assert(gw:post("/kb", ("k"):rep(3 * KiB)))
      assert.equal(200, res.status)
      assert.equal(3 * KiB, res:json().body_length)
      refused(assert(gw:post("/kb", ("k"):rep(3 * KiB + 1))))
      assert.equal(1, up:count())
    end)

    it("takes exactly the limit in bytes and refuses one byte more", function()
      local res = assert(gw:post("/bytes", "0123456789"))
      assert.equal(200, res.status)
      assert.equal("0123456789", res:json().body)
      refused(assert(gw:post("/bytes", "0123456789a")))
      assert.equal(1, up:count())
    end)

    it("defaults to 128 megabytes", function()
      assert.equal(200, assert(gw:post("/default", ("d"):rep(2 * MiB))).status)
      -- one byte over 128 MiB is refused from the header alone: nothing needs to be sent
      local c = assert(helpers.connect(gw.port))
      assert(c:send("POST /default HTTP/1.1\r\nHost: x\r\nContent-Length: "
                    .. (128 * MiB + 1) .. "\r\n\r\n"))
      local res = assert(c:read_response())
      c:close()
      refused(res)
      assert.equal(1, up:count())
    end)

    it("refuses before a byte of the body is read, without calling the upstream", function()
      local c = assert(helpers.connect(gw.port))
      assert(c:send("POST /bytes HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n"))
      local res = assert(c:read_response({ timeout = 3 }))   -- the body was never sent
      refused(res)
      assert.equal("close", res.headers["connection"])
      local rest, how = c:receive_all(3)
      assert.equal("", rest)
      assert.equal("closed", how)
      c:close()
      assert.equal(0, up:count())
    end)

    it("answers 417 instead when the client waits for 100 Continue, and sends no 100", function()
      local res = assert(gw:post("/bytes", "0123456789a",
                                 { headers = { Expect = "100-continue" } }))
      refused(res, 417)
      assert.same({}, res.interim)
      res = assert(gw:post("/bytes", "0123456789a",
                           { headers = { Expect = " 100-Continue " } }))
      refused(res, 417)
      assert.equal(0, up:count())
    end)

    it("lets a client waiting for 100 Continue send a body within the limit", function()
      local res = assert(gw:post("/bytes", "0123456789",
                                 { headers = { Expect = "100-continue" } }))
      assert.equal(200, res.status)
      assert.equal("0123456789", res:json().body)
    end)

    it("closes the connection after a 413 even when the body had been sent", function()
      local c = assert(helpers.connect(gw.port))
      assert(c:send("POST /bytes HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n"
                    .. "0123456789a"))
      local res = assert(c:read_response())
      refused(res)
      assert.equal("close", res.headers["connection"])
      local _, how = c:receive_all(3)
      assert.equal("closed", how)
      c:close()
    end)

    it("keeps the connection after a request within the limit", function()
      local c = assert(helpers.connect(gw.port))
      for i = 1, 2 do
        assert(c:send("POST /bytes HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nab" .. i))
        local res = assert(c:read_response())
        assert.equal(200, res.status)
        assert.equal("ab" .. i, res:json().body)
        assert.is_nil(res.headers["connection"])
      end
      c:close()
    end)
  end)

  describe("with a chunked body", function()
    it("takes exactly the limit and refuses one byte more", function()
      local res = assert(gw:post("/chunk", chunks(("a"):rep(500), ("b"):rep(500))))
      assert.equal(200, res.status)
      local echo = res:json()
      assert.equal("chunked", echo.received_framing)
      assert.equal(1000, echo.body_length)
      up:clear()
      refused(assert(gw:post("/chunk", chunks(("a"):rep(500), ("b"):rep(501)))))
      upstream_saw_no_whole_body(1000)
    end)

    it("answers 413 mid-stream, before the client has finished sending", function()
      local c = assert(helpers.connect(gw.port))
      assert(c:send("POST /chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"))
      assert(c:send("258\r\n" .. ("x"):rep(600) .. "\r\n"))
      assert(c:send("258\r\n" .. ("y"):rep(600) .. "\r\n"))
      -- no last chunk: the body is not over, yet the answer comes
      local res = assert(c:read_response({ timeout = 3 }))
      refused(res)
      assert.equal("close", res.headers["connection"])
      local _, how = c:receive_all(3)
      assert.is_true(how == "closed" or how == "reset")
      c:close()
      upstream_saw_no_whole_body(1000)
    end)

    it("refuses an 8 MiB chunked upload, the upstream never getting it whole", function()
      local sent, piece = 0, ("z"):rep(64 * KiB)
      local res = assert(gw:post("/chunk", function()
        if sent >= 8 * MiB then return nil end
        sent = sent + #piece
        return piece
      end))
      refused(res)
      upstream_saw_no_whole_body(1000)
    end)

    it("passes a small chunked body to the upstream unchanged", function()
      local res = assert(gw:post("/chunk", chunks("hello ", "world")))
      assert.equal(200, res.status)
      assert.equal("hello world", res:json().body)
    end)
  end)

  describe("require_content_length", function()
    it("refuses a request with neither Content-Length nor chunked framing with 411", function()
      refused(assert(gw:get("/required")), 411)
      refused(assert(gw:request({ method = "DELETE", path = "/required" })), 411)
      assert.equal(0, up:count())
    end)

    it("still checks the size of a request with Content-Length", function()
      assert.equal(200, assert(gw:post("/required", "0123456789")).status)
      assert.equal(200, assert(gw:post("/required", "")).status)
      refused(assert(gw:post("/required", "0123456789a")))
      assert.equal(2, up:count())
    end)

    it("lets chunked bodies through to the size check, as Kong does", function()
      assert.equal(200, assert(gw:post("/required", chunks("01234", "56789"))).status)
      up:clear()
      refused(assert(gw:post("/required", chunks("01234", "56789a"))))
      upstream_saw_no_whole_body(10)
    end)

    it("keeps the connection usable after a 411 (no body was left unread)", function()
      local c = assert(helpers.connect(gw.port))
      assert(c:send("GET /required HTTP/1.1\r\nHost: x\r\n\r\n"))
      local res = assert(c:read_response())
      refused(res, 411)
      assert.is_nil(res.headers["connection"])
      assert(c:send("POST /required HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok"))
      res = assert(c:read_response())
      assert.equal(200, res.status)
      assert.equal("ok", res:json().body)
      c:close()
    end)

    it("is off by default: a request without a body passes", function()
      assert.equal(200, assert(gw:get("/bytes")).status)
      assert.equal(200, assert(gw:get("/default")).status)
    end)
  end)

  describe("sizes of zero and below", function()
    it("with 0 takes requests without a body and refuses any body", function()
      assert.equal(200, assert(gw:get("/zero")).status)
      assert.equal(200, assert(gw:post("/zero", "")).status)
      refused(assert(gw:post("/zero", "x")))
      refused(assert(gw:post("/zero", chunks("x"))))
      assert.equal(2, up:count())
    end)

    it("with a negative size refuses everything, as Kong does", function()
      refused(assert(gw:get("/negative")))
      refused(assert(gw:post("/negative", "")))
      assert.equal(0, up:count())
    end)
  end)

  describe("scopes", function()
    it("applies a global configuration where nothing more specific is set", function()
      assert.equal(200, assert(gw:post("/global", ("g"):rep(20))).status)
      refused(assert(gw:post("/global", ("g"):rep(21))))
      -- a service's own configuration wins over the global one
      assert.equal(200, assert(gw:post("/kb", ("k"):rep(21))).status)
    end)

    it("applies a consumer's own limit once key-auth identified the consumer", function()
      local small = { headers = { apikey = "small-key" } }
      local big = { headers = { apikey = "big-key" } }
      assert.equal(200, assert(gw:post("/auth", "12345", small)).status)
      refused(assert(gw:post("/auth", "123456", small)))
      assert.equal(200, assert(gw:post("/auth", ("b"):rep(KiB), big)).status)
      refused(assert(gw:post("/auth", ("b"):rep(KiB + 1), big)))
      -- the credential check comes first (key-auth's priority is higher)
      assert.equal(401, assert(gw:post("/auth", ("b"):rep(KiB + 1))).status)
      assert.equal(2, up:count())
    end)
  end)
end)
