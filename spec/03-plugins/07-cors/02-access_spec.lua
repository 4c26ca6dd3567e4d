-- cors against the real binary and a real echo upstream. Each response's CORS headers are
-- compared whole (every Access-Control-* header and Vary), so a header that should be absent
-- is checked as surely as one that should be there: preflights answered by the gateway and
-- proxied with preflight_continue, simple requests, exact / wildcard / regex origins, the
-- regex anchoring (suffix and alternation attacks), credentials, max_age, exposed and
-- allowed headers, methods, private network, allow_origin_absent, and responses made by the
-- upstream, by another plugin and by the gateway itself. Expectations follow Kong 3.x's own
-- spec (spec/03-plugins/13-cors/01-access_spec.lua) except where the handler's header says
-- moongate does better.
local helpers = require "spec.helpers"
local cjson = require "cjson"

local DEFAULT_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"

-- Kong's regex table, adapted: for each origins config, request Origin -> expected
-- Access-Control-Allow-Origin (true: the Origin itself; a string: that value; false: none).
local REGEX_CASES = {
  { -- a single plain host is sent as is, whatever the Origin
    origins = { "foo.test" },
    tests = { ["http://evil.test"] = "foo.test", ["http://foo.test"] = "foo.test",
              ["https://bar.test:1234"] = "foo.test" } },
  { -- a single plain origin likewise
    origins = { "https://bar.test:1234" },
    tests = { ["http://evil.test"] = "https://bar.test:1234",
              ["https://bar.test:1234"] = "https://bar.test:1234" } },
  { -- a regex without ":" matches the host alone, anchored at both ends
    origins = { "foo\\.test" },
    tests = { ["http://evil.test"] = false, ["http://foo.test"] = true,
              ["http://foo.test.evil.test"] = false, ["http://something.foo.test"] = false,
              ["http://evilfoo.test"] = false, ["http://foo.test:80"] = "http://foo.test",
              ["http://foo.test:8000"] = true, ["https://foo.test:8000"] = true,
              ["http://foobtest"] = false } },
  { -- subdomains by regex
    origins = { "(.*[./])?foo\\.test" },
    tests = { ["http://foo.test"] = true, ["http://something.foo.test"] = true,
              ["http://foo.test.evil.test"] = false, ["http://evilfoo.test"] = false,
              ["http://foo.test:80"] = "http://foo.test", ["http://foo.test:90"] = true } },
  { -- with ":" the regex meets the whole normalised origin (scheme, host, port)
    origins = { "(.*[./])?foo\\.test:8000" },
    tests = { ["http://foo.test"] = false, ["http://foo.test:8000"] = true,
              ["https://foo.test:8000"] = true, ["http://foo.test:80"] = false,
              ["http://foo.test:90"] = false } },
  { origins = { "https://(.*[.])?foo\\.test:8000" },
    tests = { ["http://foo.test:8000"] = false, ["https://foo.test:8000"] = true,
              ["https://a.foo.test:8000"] = true, ["https://foo.test:80001"] = false } },
  { -- a user's own ^...$ is fine; the default port is dropped before matching
    origins = { "^http://(.*[.])?foo\\.test(:(80|90))?$" },
    tests = { ["http://foo.test"] = true, ["http://something.foo.test"] = true,
              ["http://foo.test:80"] = "http://foo.test", ["http://foo.test:90"] = true,
              ["http://foo.test:8000"] = false, ["https://foo.test:8000"] = false,
              ["http://foo.test.evil.test"] = false } },
  { -- several plain hosts: compared with the whole normalised Origin (so a URL never equals)
    origins = { "foo.test", "bar.test" },
    tests = { ["http://foo.test"] = false, ["foo.test"] = true, ["bar.test"] = true,
              ["https://bar.test:1234"] = false } },
  { -- several plain origins: exact, after normalisation
    origins = { "http://foo.test", "https://bar.test:1234" },
    tests = { ["http://foo.test"] = true, ["http://foo.test:80"] = "http://foo.test",
              ["http://foo.test:8000"] = false, ["https://foo.test"] = false,
              ["https://bar.test:1234"] = true, ["http://foo.test.evil.test"] = false,
              ["http://user@foo.test"] = "http://foo.test",
              ["HTTP://FOO.Test"] = "http://foo.test" } },
  { origins = { "bar.test", "(.*\\.)?foo\\.test" },
    tests = { ["http://foo.test"] = true, ["http://something.foo.test"] = true,
              ["http://foo.test.evil.test"] = false, ["http://foo.test:8000"] = true } },
  { origins = { "bar.test", "https://(.*\\.)?foo\\.test:8000" },
    tests = { ["https://foo.test:8000"] = true, ["http://foo.test:8000"] = false,
              ["https://x.foo.test:8000"] = true } },
  { -- the suffix attack the brief names
    origins = { "https://.*\\.example\\.com" },
    tests = { ["https://a.example.com"] = true, ["https://a.b.example.com"] = true,
              ["https://example.com.evil.io"] = false,
              ["https://a.example.com.evil.io"] = false, ["http://a.example.com"] = false,
              ["https://a.example.com:8443"] = false, ["https://evilexample.com"] = false,
              ["https://a.example.com:443"] = "https://a.example.com" } },
  { -- an alternation cannot slip out of the end anchor (Kong's "…$" lets it)
    origins = { "a\\.test|b\\.test" },
    tests = { ["http://a.test"] = true, ["http://b.test"] = true,
              ["http://a.test.evil.io"] = false, ["http://evil.b.test"] = false } },
  { -- nor out of the start anchor
    origins = { "^a\\.test|b\\.test$" },
    tests = { ["http://a.test"] = true, ["http://xb.test"] = false,
              ["http://a.testx"] = false } },
  { -- IPv6: "[" makes an entry a regex (Kong's rule), so the brackets are escaped; the
    -- echoed origin keeps them, as the browser sent it (Kong's parser dropped them)
    origins = { "http://\\[::1\\]:8080", "https://\\[2001:db8::1\\]" },
    tests = { ["http://[::1]:8080"] = true, ["http://[::1]:8081"] = false,
              ["https://[2001:db8::1]:443"] = "https://[2001:db8::1]",
              ["https://[2001:DB8::1]"] = "https://[2001:db8::1]" } },
  { -- an entry's case does not matter for a plain origin (RFC 6454)
    origins = { "https://Example.TEST", "other.test" },
    tests = { ["https://example.test"] = true, ["https://example.test.evil"] = false } },
}

-- Every CORS header of a response (and Vary), lower-cased names; repeated ones as a list.
local function cors_of(res)
  local out = {}
  for name, value in pairs(res.headers) do
    if name:find("^access%-control%-") or name == "vary" then out[name] = value end
  end
  return out
end

describe("cors origin parsing", function()
  -- Kong's normalize_origin (kong/plugins/cors/handler.lua), on luasocket's url.parse: an
  -- independent parser to hold the handler's own against
  local url = require "socket.url"
  local function kong_normalize(domain)
    local parsed = assert(url.parse(domain))
    if not parsed.host then return { domain = domain, host = domain } end
    local port = parsed.port
    if (parsed.scheme == "http" and port == "80")
       or (parsed.scheme == "https" and port == "443") then
      port = nil
    end
    return { domain = (parsed.scheme and parsed.scheme .. "://" or "") .. parsed.host
                      .. (port and ":" .. port or ""),
             host = parsed.host }
  end
  local normalize = dofile(os.getenv("PWD") .. "/plugins/cors/handler.lua")._normalize

  it("agrees with Kong's on the origins browsers send and on the odd ones", function()
    for _, origin in ipairs({
      "http://foo.test", "http://foo.test:80", "https://foo.test:443", "http://foo.test:443",
      "https://foo.test:80", "https://foo.test:8443", "http://127.0.0.1:3000", "foo.test",
      "foo.test:8000", "null", "file://", "chrome-extension://abcdef", "http://user@foo.test",
      "http://foo.test/path", "http://foo.test:", "ws://a.test:80",
      "https://", "x", "http://a-b.c.test:65535" }) do
      assert.same(kong_normalize(origin), normalize(origin), origin)
    end
  end)

  it("differs on purpose: case, IPv6 brackets, a query or fragment glued to the host",
     function()
    assert.same({ domain = "http://foo.test", host = "foo.test" }, normalize("HTTP://Foo.TEST:80"))
    assert.same({ domain = "HTTP://Foo.TEST:80", host = "Foo.TEST" },
                kong_normalize("HTTP://Foo.TEST:80"))
    assert.same({ domain = "http://foo.test", host = "foo.test" }, normalize("http://foo.test#f"))
    assert.same({ domain = "http://[::1]:8080", host = "::1" }, normalize("http://[::1]:8080"))
    assert.same({ domain = "http://::1:8080", host = "::1" }, kong_normalize("http://[::1]:8080"))
    assert.same({ domain = "https://[2001:db8::1]", host = "2001:db8::1" },
                normalize("https://[2001:DB8::1]:443"))
    assert.same({ domain = "http://h.test", host = "h.test" }, normalize("http://h.test?x"))
  end)
end)

describe("cors", function()
  local up, gw, closed_port

  local routes = {}
  local function route(name, config, extra)
    local s = { name = name, url = up.url,
                routes = { { name = name, paths = { "/" .. name } } },
                plugins = { { name = "cors", config = config } } }
    for k, v in pairs(extra or {}) do s[k] = v end
    routes[#routes + 1] = s
  end

  lazy_setup(function()
    up = helpers.upstream()
    closed_port = helpers.get_free_port()     -- nothing listens there
    route("default", nil)
    route("full", { origins = { "example.test" }, methods = { "GET" },
                    headers = { "origin", "type", "accepts" },
                    exposed_headers = { "x-auth-token", "x-other" },
                    max_age = 23, credentials = true })
    route("continue", { origins = { "example.test" }, methods = { "GET" },
                        headers = { "origin", "type", "accepts" },
                        exposed_headers = { "x-auth-token" }, max_age = 23,
                        preflight_continue = true })
    route("starcred", { origins = { "*" }, credentials = true })
    route("star", { origins = { "*" }, credentials = false })
    route("emptyorigins", { origins = helpers.array({}) })
    route("hosts", { origins = { "example.test", "example.org" }, exposed_headers = { "x-a" } })
    route("regex9", { origins = { [[.*\.?example(?:-foo)?.test]] } })
    route("flat", { origins = { "http://my-site.test", "http://my-other-site.test" } })
    route("strict", { credentials = true, max_age = 1728000,
                      headers = { "DNT", "X-CustomHeader", "Content-Type", "Authorization" },
                      methods = cjson.null,
                      origins = { "a.xxx.test", "allowed-domain.test" } })
    route("pna", { private_network = true, origins = { "allowed-domain.test" } })
    route("starlist", { origins = { "foo.bar", "*" } })
    route("starlistcred", { origins = { "foo.bar", "*" }, credentials = true })
    route("absentoff", { allow_origin_absent = false, origins = { "foo.bar" },
                         exposed_headers = { "x-auth-token" }, credentials = true })
    route("absenton", { allow_origin_absent = true, origins = { "foo.bar" },
                        exposed_headers = { "x-auth-token" }, credentials = true })
    route("fraction", { max_age = 1.5, methods = { "PUT", "DELETE" } })
    route("nomethods", { methods = helpers.array({}) })
    route("down", { origins = { "example.test" }, exposed_headers = { "x-auth-token" } },
          { url = "http://127.0.0.1:" .. closed_port })
    routes[#routes + 1] = {
      name = "keyauth", url = up.url, routes = { { name = "keyauth", paths = { "/keyauth" } } },
      plugins = { { name = "cors" }, { name = "key-auth" } } }
    for i, case in ipairs(REGEX_CASES) do route("regex-" .. i, { origins = case.origins }) end

    gw = helpers.start({ plugins = { "bundled" }, services = routes })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  local function preflight(path, origin, extra)
    local headers = { Origin = origin, ["Access-Control-Request-Method"] = "GET" }
    for k, v in pairs(extra or {}) do headers[k] = v end
    return assert(gw:request({ method = "OPTIONS", path = path, headers = headers }))
  end

  describe("preflight answered by the gateway", function()
    for i, case in ipairs(REGEX_CASES) do
      local keys = {}
      for origin in pairs(case.tests) do keys[#keys + 1] = origin end
      table.sort(keys)
      for _, origin in ipairs(keys) do
        local want = case.tests[origin]
        it(("%s against %s: %s"):format(origin, table.concat(case.origins, " "),
                                       want and "allowed" or "refused"), function()
          local res = preflight("/regex-" .. i, origin)
          assert.equal(200, res.status)
          local expect = { ["access-control-allow-methods"] = DEFAULT_METHODS }
          -- Vary: Origin whenever the answer depends on the origin (not for "*")
          expect.vary = "Origin"
          if want then
            expect["access-control-allow-origin"] = want == true and origin or want
          end
          assert.same(expect, cors_of(res))
        end)
      end
    end

    it("gives Kong's defaults: *, every method, nothing else, an empty body", function()
      local before = up:count()
      local res = preflight("/default", "http://origin1.test")
      assert.equal(200, res.status)
      assert.equal("0", res.headers["content-length"])
      assert.equal("", res.body)
      assert.same({ ["access-control-allow-origin"] = "*",
                    ["access-control-allow-methods"] = DEFAULT_METHODS }, cors_of(res))
      assert.equal(before, up:count())        -- answered here: the upstream never saw it
    end)

    it("gives * when origins is an empty list", function()
      local res = preflight("/emptyorigins", "http://empty-origin.test")
      assert.equal(200, res.status)
      assert.same({ ["access-control-allow-origin"] = "*",
                    ["access-control-allow-methods"] = DEFAULT_METHODS }, cors_of(res))
    end)

    it("with origins * and credentials echoes the Origin, with Vary", function()
      local res = preflight("/starcred", "http://origin5.test")
      assert.equal(200, res.status)
      assert.same({ ["access-control-allow-origin"] = "http://origin5.test",
                    ["access-control-allow-credentials"] = "true",
                    ["access-control-allow-methods"] = DEFAULT_METHODS,
                    vary = "Origin" }, cors_of(res))
    end)

    it("sends every configured field", function()
      local res = preflight("/full", "http://origin5.test")
      assert.equal(200, res.status)
      assert.equal("0", res.headers["content-length"])
      assert.same({ ["access-control-allow-origin"] = "example.test",
                    ["access-control-allow-credentials"] = "true",
                    ["access-control-allow-methods"] = "GET",
                    ["access-control-allow-headers"] = "origin,type,accepts",
                    ["access-control-max-age"] = "23",
                    vary = "Origin" }, cors_of(res))
    end)

    it("configured headers win over Access-Control-Request-Headers", function()
      local res = preflight("/full", "http://origin5.test",
                            { ["Access-Control-Request-Headers"] = "x-wanted" })
      assert.equal("origin,type,accepts", res.headers["access-control-allow-headers"])
    end)

    it("echoes Access-Control-Request-Headers when no headers are configured", function()
      local res = preflight("/starcred", "http://origin5.test",
                            { ["Access-Control-Request-Headers"] = "origin,accepts" })
      assert.equal(200, res.status)
      assert.equal("origin,accepts", res.headers["access-control-allow-headers"])
    end)

    it("sends a fractional max_age as is, and only the configured methods", function()
      local res = preflight("/fraction", "http://x.test")
      assert.same({ ["access-control-allow-origin"] = "*",
                    ["access-control-allow-methods"] = "PUT,DELETE",
                    ["access-control-max-age"] = "1.5" }, cors_of(res))
    end)

    it("sends every method when methods is null, and a large max_age whole", function()
      local res = preflight("/strict", "allowed-domain.test")
      assert.same({ ["access-control-allow-origin"] = "allowed-domain.test",
                    ["access-control-allow-credentials"] = "true",
                    ["access-control-allow-methods"] = DEFAULT_METHODS,
                    ["access-control-allow-headers"] =
                      "DNT,X-CustomHeader,Content-Type,Authorization",
                    ["access-control-max-age"] = "1728000",
                    vary = "Origin" }, cors_of(res))
    end)

    it("sends an empty method list as an empty header, as Kong does", function()
      local res = preflight("/nomethods", "http://x.test")
      assert.equal(200, res.status)
      assert.equal("", res.headers["access-control-allow-methods"])
    end)

    it("refuses an unknown origin: no Allow-Origin, but the rest as Kong sends it", function()
      local res = preflight("/strict", "http://evil.test")
      assert.equal(200, res.status)
      assert.same({ ["access-control-allow-credentials"] = "true",
                    ["access-control-allow-methods"] = DEFAULT_METHODS,
                    ["access-control-allow-headers"] =
                      "DNT,X-CustomHeader,Content-Type,Authorization",
                    ["access-control-max-age"] = "1728000",
                    vary = "Origin" }, cors_of(res))
    end)

    it("gives * when origins lists several entries, one of them *", function()
      local res = preflight("/starlist", "http://www.example.net")
      assert.same({ ["access-control-allow-origin"] = "*",
                    ["access-control-allow-methods"] = DEFAULT_METHODS,
                    vary = "Origin" }, cors_of(res))
      res = preflight("/starlistcred", "http://www.example.net")
      assert.same({ ["access-control-allow-origin"] = "http://www.example.net",
                    ["access-control-allow-credentials"] = "true",
                    ["access-control-allow-methods"] = DEFAULT_METHODS,
                    vary = "Origin" }, cors_of(res))
    end)

    it("allows the private network when asked and configured, only then", function()
      local res = preflight("/pna", "allowed-domain.test",
                            { ["Access-Control-Request-Private-Network"] = "true",
                              ["Access-Control-Request-Method"] = "PUT" })
      assert.equal(200, res.status)
      assert.same({ ["access-control-allow-origin"] = "allowed-domain.test",
                    ["access-control-allow-methods"] = DEFAULT_METHODS,
                    ["access-control-allow-private-network"] = "true",
                    vary = "Origin" }, cors_of(res))
      res = preflight("/pna", "allowed-domain.test")
      assert.is_nil(res.headers["access-control-allow-private-network"])
      res = preflight("/pna", "allowed-domain.test",
                      { ["Access-Control-Request-Private-Network"] = "false" })
      assert.is_nil(res.headers["access-control-allow-private-network"])
      res = preflight("/default", "allowed-domain.test",
                      { ["Access-Control-Request-Private-Network"] = "true" })
      assert.is_nil(res.headers["access-control-allow-private-network"])
    end)
  end)

  describe("preflight_continue", function()
    it("proxies the preflight: the upstream sees the OPTIONS, the gateway adds nothing", function()
      up:clear()
      local res = preflight("/continue", "http://example.test",
                            { ["Access-Control-Request-Headers"] = "x-a",
                              ["X-Upstream-Mode"] = "status:201" })
      assert.equal(201, res.status)
      local seen = res:json()
      assert.equal("OPTIONS", seen.method)
      assert.equal("http://example.test", seen.headers["origin"])
      assert.equal("GET", seen.headers["access-control-request-method"])
      assert.same({}, cors_of(res))
      assert.equal(1, up:count())
    end)

    it("leaves the upstream's own CORS answer alone", function()
      local res = preflight("/continue", "http://example.test", { ["X-Upstream-Headers"] =
        "Access-Control-Allow-Origin: http://up.test; Access-Control-Max-Age: 5" })
      assert.equal(200, res.status)
      assert.same({ ["access-control-allow-origin"] = "http://up.test",
                    ["access-control-max-age"] = "5" }, cors_of(res))
    end)
  end)

  describe("requests that are not preflights", function()
    it("get * by default, and nothing else", function()
      local res = assert(gw:get("/default", { headers = { Origin = "http://a.test" } }))
      assert.equal(200, res.status)
      assert.same({ ["access-control-allow-origin"] = "*" }, cors_of(res))
    end)

    it("an OPTIONS without Access-Control-Request-Method is proxied, not answered", function()
      local res = assert(gw:request({ method = "OPTIONS", path = "/default",
                                      headers = { Origin = "http://a.test" } }))
      assert.equal(200, res.status)
      assert.equal("OPTIONS", res:json().method)
      assert.same({ ["access-control-allow-origin"] = "*" }, cors_of(res))
    end)

    it("an OPTIONS with Access-Control-Request-Method but no Origin is proxied too", function()
      local res = assert(gw:request({ method = "OPTIONS", path = "/full",
        headers = { ["Access-Control-Request-Method"] = "GET" } }))
      assert.equal(200, res.status)
      assert.equal("OPTIONS", res:json().method)
      assert.same({ ["access-control-allow-origin"] = "example.test",
                    ["access-control-allow-credentials"] = "true",
                    ["access-control-expose-headers"] = "x-auth-token,x-other",
                    vary = "Origin" }, cors_of(res))
    end)

    it("get the configured origin, credentials and exposed headers (no preflight-only ones)",
       function()
      local res = assert(gw:get("/full", { headers = { Origin = "http://example.test" } }))
      assert.equal(200, res.status)
      assert.same({ ["access-control-allow-origin"] = "example.test",
                    ["access-control-allow-credentials"] = "true",
                    ["access-control-expose-headers"] = "x-auth-token,x-other",
                    vary = "Origin" }, cors_of(res))
      -- the request reaches the upstream unchanged
      assert.equal("http://example.test", res:json().headers["origin"])
    end)

    it("match a listed host exactly, and echo it", function()
      local res = assert(gw:get("/hosts", { headers = { Origin = "example.test" } }))
      assert.same({ ["access-control-allow-origin"] = "example.test",
                    ["access-control-expose-headers"] = "x-a", vary = "Origin" }, cors_of(res))
      -- a URL is not a bare host: no automatic parsing
      res = assert(gw:get("/hosts", { headers = { Origin = "http://example.test" } }))
      assert.same({ ["access-control-expose-headers"] = "x-a", vary = "Origin" }, cors_of(res))
      res = assert(gw:get("/hosts", { headers = { Origin = "http://www.example.net" } }))
      assert.is_nil(res.headers["access-control-allow-origin"])
    end)

    it("match a regex (Kong's example-foo case)", function()
      local domains = { ["example.test"] = true, ["www.example.test"] = true,
                        ["example-foo.test"] = true, ["www.example-foo.test"] = true,
                        ["www.example-fo0.test"] = false }
      for domain, ok in pairs(domains) do
        local res = assert(gw:get("/regex9", { headers = { Origin = domain } }))
        assert.equal(200, res.status)
        assert.equal(ok and domain or nil, res.headers["access-control-allow-origin"], domain)
        assert.equal("Origin", res.headers["vary"])
      end
    end)

    it("validate flat strings: tricky suffixes are refused", function()
      local function acao(origin)
        local res = assert(gw:get("/flat", { headers = { Origin = origin } }))
        assert.equal(200, res.status)
        return res.headers["access-control-allow-origin"]
      end
      assert.equal("http://my-site.test", acao("http://my-site.test"))
      assert.equal("http://my-other-site.test", acao("http://my-other-site.test"))
      assert.is_nil(acao("http://bad-guys.test"))
      assert.is_nil(acao("http://my-site.test.bad-guys.test"))
      assert.is_nil(acao("https://my-site.test"))
      assert.is_nil(acao("http://my-site.test:8000"))
    end)

    it("with origins * and credentials echo the request's Origin as sent", function()
      local res = assert(gw:get("/starcred",
                                { headers = { Origin = "http://www.example.net:3000" } }))
      assert.same({ ["access-control-allow-origin"] = "http://www.example.net:3000",
                    ["access-control-allow-credentials"] = "true",
                    vary = "Origin" }, cors_of(res))
      res = assert(gw:get("/star", { headers = { Origin = "http://www.example.net" } }))
      assert.same({ ["access-control-allow-origin"] = "*" }, cors_of(res))
    end)

    it("with * among several origins give * (echo and one Vary with credentials)", function()
      local res = assert(gw:get("/starlist", { headers = { Origin = "http://x.test" } }))
      assert.same({ ["access-control-allow-origin"] = "*", vary = "Origin" }, cors_of(res))
      res = assert(gw:get("/starlistcred", { headers = { Origin = "http://x.test" } }))
      assert.same({ ["access-control-allow-origin"] = "http://x.test",
                    ["access-control-allow-credentials"] = "true",
                    vary = "Origin" }, cors_of(res))
    end)

    it("remove the upstream's Access-Control-Allow-Origin when the origin is refused", function()
      local up_acao = { ["X-Upstream-Headers"] = "Access-Control-Allow-Origin: *; Y: is-added" }
      local h = { Origin = "allowed-domain.test" }
      for k, v in pairs(up_acao) do h[k] = v end
      local res = assert(gw:get("/strict", { headers = h }))
      assert.equal(200, res.status)
      assert.equal("is-added", res.headers["y"])
      assert.same({ ["access-control-allow-origin"] = "allowed-domain.test",
                    ["access-control-allow-credentials"] = "true",
                    vary = "Origin" }, cors_of(res))
      h.Origin = "disallowed-domain.test"
      res = assert(gw:get("/strict", { headers = h }))
      assert.equal("is-added", res.headers["y"])
      assert.same({ ["access-control-allow-credentials"] = "true", vary = "Origin" },
                  cors_of(res))
    end)

    it("add Vary: Origin after the upstream's own Vary", function()
      local res = assert(gw:get("/full", { headers = { Origin = "http://example.test",
        ["X-Upstream-Headers"] = "Vary: Accept-Encoding" } }))
      assert.same({ "Accept-Encoding", "Origin" }, res.headers["vary"])
    end)

    it("get the headers on a 401 made by another plugin", function()
      local res = assert(gw:get("/keyauth", { headers = { Origin = "http://a.test" } }))
      assert.equal(401, res.status)
      assert.same({ ["access-control-allow-origin"] = "*" }, cors_of(res))
    end)

    it("a preflight is answered before authentication runs", function()
      local res = preflight("/keyauth", "http://a.test")
      assert.equal(200, res.status)
      assert.same({ ["access-control-allow-origin"] = "*",
                    ["access-control-allow-methods"] = DEFAULT_METHODS }, cors_of(res))
    end)

    it("get the headers on the gateway's own 502 when the upstream is down", function()
      -- cors sets its headers in access; the runtime's own error pages carry the response
      -- headers plugins set, as exits do
      local res = assert(gw:get("/down", { headers = { Origin = "http://example.test" } }))
      assert.equal(502, res.status)
      assert.same({ ["access-control-allow-origin"] = "example.test",
                    ["access-control-expose-headers"] = "x-auth-token",
                    vary = "Origin" }, cors_of(res))
    end)
  end)

  describe("allow_origin_absent", function()
    for _, origin in ipairs({ "none", "" }) do
      local label = origin == "none" and "no Origin" or "an empty Origin"
      local headers = origin ~= "none" and { Origin = origin } or nil

      it("off: a request with " .. label .. " gets no CORS header", function()
        local res = assert(gw:get("/absentoff", { headers = headers }))
        assert.equal(200, res.status)
        assert.same({}, cors_of(res))
      end)

      it("on (the default): a request with " .. label .. " gets them", function()
        local res = assert(gw:get("/absenton", { headers = headers }))
        assert.equal(200, res.status)
        assert.same({ ["access-control-allow-origin"] = "foo.bar",
                      ["access-control-allow-credentials"] = "true",
                      ["access-control-expose-headers"] = "x-auth-token",
                      vary = "Origin" }, cors_of(res))
      end)
    end

    it("off still answers requests that carry an Origin", function()
      local res = assert(gw:get("/absentoff", { headers = { Origin = "http://x.test" } }))
      assert.equal("foo.bar", res.headers["access-control-allow-origin"])
    end)

    it("an empty Origin on an OPTIONS is no preflight: proxied", function()
      local res = assert(gw:request({ method = "OPTIONS", path = "/default",
        headers = { Origin = "", ["Access-Control-Request-Method"] = "GET" } }))
      assert.equal(200, res.status)
      assert.equal("OPTIONS", res:json().method)
    end)
  end)

  it("logs nothing of its own for all of the above", function()
    local log = gw:error_log()
    assert.not_matches("%[cors%]", log)
    for line in log:gmatch("[^\n]+") do
      if line:find("[error]", 1, true) then
        assert.matches("upstream connect failed %(127%.0%.0%.1:" .. closed_port, line)
      end
    end
  end)
end)
