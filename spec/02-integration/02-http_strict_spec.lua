-- Strict HTTP/1.1 (RFC 9112) at the client edge: every request smuggling / strictness vector
-- is sent as raw bytes and must be answered with the exact status and JSON error body, with
-- `Connection: close`, followed by the gateway closing the connection (a FIN after the
-- answer, not a reset and not a hang), and with nothing reaching the upstream.

local helpers = require "spec.helpers"

local fmt, rep = string.format, string.rep

-- Every wait in this file is bounded by this (seconds); the gateway answers these at once.
local TIMEOUT = 3

local gw, up
local seq = 0

-- A path nobody else uses, so the upstream's records can be searched for it.
local function unique_path(tag)
  seq = seq + 1
  return fmt("/strict/%s/%d", tag, seq)
end

-- The records of the requests the upstream received for `path` (aborted ones included,
-- with an `error` field).
local function records_for(path)
  local list = {}
  for _, rec in ipairs(up:requests()) do
    if rec.path == path or rec.path:sub(1, #path + 1) == path .. "?" then
      list[#list + 1] = rec
    end
  end
  return list
end

-- The records of requests that reached the upstream complete (not aborted).
local function complete_records(path)
  local list = {}
  for _, rec in ipairs(records_for(path)) do
    if rec.error == nil then
      list[#list + 1] = rec
    end
  end
  return list
end

local function header_has_token(v, token)
  for _, s in ipairs(type(v) == "table" and v or { v }) do
    for t in tostring(s):lower():gmatch("[^,%s]+") do
      if t == token then return true end
    end
  end
  return false
end

-- Asserts a single error response with the given status and message that closes the
-- connection. Returns the parsed response.
local function assert_error_response(res, status, message)
  assert.equal(status, res.status)
  assert.equal("1.1", res.version)
  assert.matches("^application/json", res.headers["content-type"] or "")
  assert.same({ message = message }, res:json())
  assert.is_true(header_has_token(res.headers.connection, "close"),
                 "expected Connection: close, got " .. tostring(res.headers.connection))
  return res
end

-- Sends `bytes` on a fresh connection and asserts that the gateway answers exactly one
-- `status` {"message": message} with Connection: close, closes the connection (FIN), and
-- that the upstream received nothing at all (not even an aborted request).
local function assert_refused(bytes, status, message, opts)
  opts = opts or {}
  local before = up:count()
  local raw, closed, how = helpers.raw(gw.port, bytes, { timeout = TIMEOUT })
  assert.is_string(raw, "could not connect: " .. tostring(how))
  assert.is_true(closed, "the gateway did not close the connection (" .. tostring(how)
                         .. "); received: " .. raw)
  assert.equal("closed", how, "expected an orderly close after the answer")
  local list, rest = helpers.parse_response(raw)
  assert.is_nil(rest, "unparsable bytes after the answer: " .. tostring(rest))
  assert.equal(1, #list, "expected exactly one response, got " .. #list .. ": " .. raw)
  assert_error_response(list[1], status, message)
  if opts.path then
    assert.same({}, records_for(opts.path))
  end
  if not opts.upstream_may_start then
    assert.equal(before, up:count(), "the upstream received a request")
  end
  return list[1]
end

describe("strict HTTP/1.1 at the client edge", function()
  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      _format_version = "3.0",
      services = { {
        name = "strict",
        url = up.url,
        routes = { { name = "all", paths = { "/" }, strip_path = false } },
      } },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  describe("framing", function()
    it("answers 400 to whitespace before the colon in Transfer-Encoding", function()
      local path = unique_path("te-space")
      assert_refused("POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to Transfer-Encoding in an HTTP/1.0 request", function()
      local path = unique_path("te-http10")
      assert_refused("POST " .. path .. " HTTP/1.0\r\nHost: example.com\r\n"
                     .. "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to chunked listed twice in one Transfer-Encoding", function()
      local path = unique_path("te-chunked-chunked")
      assert_refused("POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to two Transfer-Encoding: chunked headers", function()
      local path = unique_path("te-twice")
      assert_refused("POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                     .. "0\r\n\r\n",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to Content-Length together with Transfer-Encoding", function()
      local path = unique_path("cl-te")
      assert_refused("POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                     .. "0\r\n\r\n",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to two different Content-Length headers", function()
      local path = unique_path("cl-conflict")
      assert_refused("POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to a Content-Length list of different values (1, 2)", function()
      local path = unique_path("cl-list")
      assert_refused("POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "Content-Length: 1, 2\r\n\r\nab",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to a non-numeric Content-Length", function()
      local path = unique_path("cl-alpha")
      assert_refused("POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "Content-Length: abc\r\n\r\nabc",
                     400, "Bad request", { path = path })
    end)

    it("answers 501 to an unknown transfer coding (gzip, chunked)", function()
      local path = unique_path("te-gzip")
      assert_refused("POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                     501, "Not implemented", { path = path })
    end)

    it("answers 400 to an invalid chunk size and forwards no complete request", function()
      local path = unique_path("chunk-zz")
      -- The head is valid, so the gateway may already have started the upstream request;
      -- what matters is that the client gets a 400, the connection closes, and the
      -- upstream never sees a complete request.
      assert_refused("POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nxx\r\n0\r\n\r\n",
                     400, "Bad request", { upstream_may_start = true })
      -- give an aborted upstream request the time to be recorded, then check
      helpers.sleep(0.2)
      assert.same({}, complete_records(path))
    end)

    it("answers 400 to an overflowing chunk size", function()
      local path = unique_path("chunk-overflow")
      assert_refused("POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nhello\r\n"
                     .. "0\r\n\r\n",
                     400, "Bad request", { upstream_may_start = true })
      helpers.sleep(0.2)
      assert.same({}, complete_records(path))
    end)

    it("refuses a CL.TE smuggling attempt entirely: the hidden request never runs", function()
      local path = unique_path("clte")
      local hidden = unique_path("clte-hidden")
      local smuggled = "GET " .. hidden .. " HTTP/1.1\r\nHost: example.com\r\n\r\n"
      local body = "0\r\n\r\n" .. smuggled
      local before = up:count()
      assert_refused("POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "Content-Length: " .. #body .. "\r\n"
                     .. "Transfer-Encoding: chunked\r\n\r\n" .. body,
                     400, "Bad request", { path = path })
      helpers.sleep(0.1)
      assert.equal(before, up:count())
      assert.same({}, records_for(hidden))
    end)

    it("accepts an identical repeated Content-Length (5 twice) and forwards the body",
       function()
      local path = unique_path("cl-same")
      local raw, closed, how = helpers.raw(gw.port,
        "POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
        .. "Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        { timeout = TIMEOUT })
      assert.is_true(closed, "no close after Connection: close (" .. tostring(how) .. ")")
      local list = helpers.parse_response(raw)
      assert.equal(1, #list, raw)
      assert.equal(200, list[1].status, raw)
      local echo = list[1]:json()
      assert.equal(path, echo.path)
      assert.equal("hello", echo.body)
      assert.equal(5, echo.body_length)
      assert.equal(1, #complete_records(path))
    end)
  end)

  describe("head syntax", function()
    it("answers 400 to an obs-fold continuation line", function()
      local path = unique_path("obs-fold")
      assert_refused("GET " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "X-Folded: first\r\n  second\r\n\r\n",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to whitespace before the first header line", function()
      local path = unique_path("ws-first")
      assert_refused("GET " .. path .. " HTTP/1.1\r\n Host: example.com\r\n\r\n",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to a space inside a header name", function()
      local path = unique_path("name-space")
      assert_refused("GET " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "X Bad: value\r\n\r\n",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to a NUL byte in a header value", function()
      local path = unique_path("nul")
      assert_refused("GET " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "X-Nul: a\0b\r\n\r\n",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to a bare CR in a header value", function()
      local path = unique_path("bare-cr")
      assert_refused("GET " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "X-Cr: a\rb\r\n\r\n",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to bare LF line endings", function()
      local path = unique_path("bare-lf")
      assert_refused("GET " .. path .. " HTTP/1.1\nHost: example.com\nX-A: b\n\n",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to an HTTP/1.1 request without Host", function()
      local path = unique_path("no-host")
      assert_refused("GET " .. path .. " HTTP/1.1\r\nX-A: b\r\n\r\n",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to a duplicate Host", function()
      local path = unique_path("dup-host")
      assert_refused("GET " .. path .. " HTTP/1.1\r\nHost: a.example.com\r\n"
                     .. "Host: b.example.com\r\n\r\n",
                     400, "Bad request", { path = path })
    end)

    it("answers 400 to a fragment in the request target", function()
      local path = unique_path("fragment")
      assert_refused("GET " .. path .. "#frag HTTP/1.1\r\nHost: example.com\r\n\r\n",
                     400, "Bad request", { path = path })
    end)
  end)

  describe("versions and methods", function()
    it("answers 505 to an HTTP/2.0 request line", function()
      local path = unique_path("http20")
      assert_refused("GET " .. path .. " HTTP/2.0\r\nHost: example.com\r\n\r\n",
                     505, "HTTP version not supported", { path = path })
    end)

    it("answers 505 to an HTTP/1.2 request line", function()
      local path = unique_path("http12")
      assert_refused("GET " .. path .. " HTTP/1.2\r\nHost: example.com\r\n\r\n",
                     505, "HTTP version not supported", { path = path })
    end)

    it("answers 405 to CONNECT", function()
      assert_refused("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                     405, "Method not allowed")
    end)

    it("answers 417 to an Expect other than 100-continue", function()
      local path = unique_path("expect")
      assert_refused("POST " .. path .. " HTTP/1.1\r\nHost: example.com\r\n"
                     .. "Expect: the-moon\r\nContent-Length: 5\r\n\r\nhello",
                     417, "Expectation failed", { path = path })
    end)
  end)

  describe("pipelining", function()
    it("answers a valid request, then 400 to a pipelined smuggling vector, then closes",
       function()
      local ok_path = unique_path("pipe-ok")
      local bad_path = unique_path("pipe-bad")
      local before = up:count()
      local raw, closed, how = helpers.raw(gw.port,
        "GET " .. ok_path .. " HTTP/1.1\r\nHost: example.com\r\n\r\n"
        .. "POST " .. bad_path .. " HTTP/1.1\r\nHost: example.com\r\n"
        .. "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        { timeout = TIMEOUT })
      assert.is_true(closed, "the gateway did not close the connection (" .. tostring(how)
                             .. "); received: " .. tostring(raw))
      assert.equal("closed", how)
      local list, rest = helpers.parse_response(raw)
      assert.is_nil(rest)
      assert.equal(2, #list, raw)
      assert.equal(200, list[1].status)
      assert.equal(ok_path, list[1]:json().path)
      assert_error_response(list[2], 400, "Bad request")
      assert.equal(before + 1, up:count())
      assert.equal(1, #complete_records(ok_path))
      assert.same({}, records_for(bad_path))
    end)
  end)
end)
