-- Configuration: `moongate check` reports every problem as `PATH: message` and exits 1,
-- `run` refuses the same configs, MOONGATE_<SETTING> variables override the file, and
-- `declarative_config` loads entities from a separate Kong-style file (DESIGN.md §2–3).

local helpers = require "spec.helpers"

local fmt, match, find = string.format, string.match, string.find

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- A valid service with one route; `extra` fields are merged into the service.
local function service(name, extra)
  local s = { name = name, url = "http://127.0.0.1:9001",
              routes = { { name = name .. "-r", paths = { "/" .. name } } } }
  for k, v in pairs(extra or {}) do
    s[k] = v
  end
  return s
end

local function has_line(lines, want)
  for _, l in ipairs(lines) do
    if l == want then
      return true
    end
  end
  return false
end

-- Asserts that `check` exits 1 and prints `want` as one of its lines.
local function assert_problem(conf, want, opts)
  local code, lines = helpers.check(conf, opts)
  assert.equal(1, code, table.concat(lines, "\n"))
  assert.is_true(has_line(lines, want),
                 fmt("expected the line\n  %s\nin\n  %s", want, table.concat(lines, "\n  ")))
  return lines
end

describe("config", function()
  local dir

  lazy_setup(function()
    local p = assert(io.popen("mktemp -d /tmp/moongate-spec.config.XXXXXX"))
    dir = assert(match(p:read("*a"), "^(%S+)"))
    p:close()
  end)

  lazy_teardown(function()
    if dir and not os.getenv("MOONGATE_SPEC_KEEP") then
      os.execute("rm -rf '" .. dir .. "'")
    end
  end)

  describe("check", function()
    it("accepts a valid YAML config with exit 0", function()
      local code, lines = helpers.check([[
proxy_listen: ["127.0.0.1:8000"]
worker_processes: 2
limits: { client_max_body_size: 8m, client_header_timeout: 10s }
_format_version: "3.0"
services:
  - name: orders
    url: http://127.0.0.1:9001/v1
    retries: 3
    routes:
      - name: orders-api
        paths: ["/orders", "~/orders/\\d+$"]
        methods: [GET, POST]
]])
      assert.equal(0, code, table.concat(lines, "\n"))
      assert.matches("is valid", lines[#lines])
    end)

    it("accepts the demo config `make run` uses (conf/moongate.yaml)", function()
      local demo = helpers.read_file(os.getenv("PWD") .. "/conf/moongate.yaml")
      local code, lines = helpers.check(demo)
      assert.equal(0, code, table.concat(lines, "\n"))
    end)

    it("accepts a JSON config with exit 0", function()
      local code, lines = helpers.check({ proxy_listen = { "127.0.0.1:8000" },
                                          services = { service("a"), service("b") } })
      assert.equal(0, code, table.concat(lines, "\n"))
      assert.matches("is valid", lines[#lines])
    end)

    it("reports an unknown top-level key", function()
      assert_problem({ services = { service("a") }, bogus = 1 }, "bogus: unknown field")
    end)

    it("reports an unknown nested key with its full path", function()
      local s = service("a")
      s.routes[2] = { pathz = { "/x" } }
      assert_problem({ services = { s } }, "services[0].routes[1].pathz: unknown field")
    end)

    it("reports a path that starts with neither \"/\" nor \"~\"", function()
      local b = service("b")
      b.routes[1].paths = { "/ok", "~/fine", "nope" }
      assert_problem({ services = { service("a"), b } },
                     'services[1].routes[0].paths[2]: must start with "/" or "~"')
    end)

    it("reports a regex path that does not compile", function()
      local a = service("a")
      a.routes[1].paths = { "~/(unclosed" }
      local _, lines = helpers.check({ services = { a } })
      local found = false
      for _, l in ipairs(lines) do
        found = found or find(l, "services[0].routes[0].paths[0]: invalid regex", 1, true) == 1
      end
      assert.is_true(found, table.concat(lines, "\n"))
    end)

    it("reports retries that is not an integer", function()
      assert_problem({ services = { service("a", { retries = "three" }) } },
                     "services[0].retries: expected an integer")
      assert_problem({ services = { service("a", { retries = 2.5 }) } },
                     "services[0].retries: expected an integer")
    end)

    it("reports a bad duration in limits", function()
      assert_problem({ services = { service("a") },
                       limits = { client_header_timeout = "10 parsecs" } },
                     'limits.client_header_timeout: expected a duration such as "10s"')
    end)

    it("reports a bad listen address", function()
      assert_problem({ proxy_listen = { "127.0.0.1:8000", "localhost:80" } },
                     'proxy_listen[1]: invalid listen address "localhost:80": ' ..
                     'expected "ip:port [ssl] [backlog=N]"')
    end)

    it("reports a route without any matching field", function()
      local a = service("a")
      a.routes[1] = { name = "nothing", strip_path = false }
      assert_problem({ services = { a } },
                     "services[0].routes[0]: must set one of 'methods', 'hosts', 'headers', " ..
                     "'paths', 'snis'")
    end)

    it("reports a top-level route that references a missing service", function()
      assert_problem({ services = { service("a") },
                       routes = { { name = "top", service = "nope", paths = { "/t" } } } },
                     'routes[0].service: no service named "nope"')
    end)

    it("accepts a top-level route that references an existing service", function()
      local code, lines = helpers.check({
        services = { service("a") },
        routes = { { name = "top", service = { name = "a" }, paths = { "/t" } } } })
      assert.equal(0, code, table.concat(lines, "\n"))
    end)

    it("reports duplicate service names", function()
      assert_problem({ services = { service("a"), service("b"), service("a") } },
                     'services[2].name: duplicate name "a"')
    end)

    it("leaves a service host name to the workers' resolver (not a config error)", function()
      local code, lines = helpers.check(
        { services = { service("a", { url = "http://no-such-host.invalid:8080" }) } })
      assert.equal(0, code, table.concat(lines, "\n"))
    end)

    it("prints every problem of a config at once", function()
      local a = service("a", { retries = "x" })
      a.routes[1].paths = { "bad" }
      local code, lines = helpers.check({
        bogus = true,
        limits = { keepalive_timeout = "soon" },
        services = { a, service("a") },
        routes = { { service = "nope", paths = { "/t" } } },
      })
      assert.equal(1, code)
      for _, want in ipairs({
        "bogus: unknown field",
        'limits.keepalive_timeout: expected a duration such as "10s"',
        "services[0].retries: expected an integer",
        'services[0].routes[0].paths[0]: must start with "/" or "~"',
        'services[1].name: duplicate name "a"',
        'routes[0].service: no service named "nope"',
      }) do
        assert.is_true(has_line(lines, want), want .. " missing in:\n" ..
                                              table.concat(lines, "\n"))
      end
    end)

    it("reports a YAML syntax error as file:line:col", function()
      local code, lines = helpers.check("services:\n  - name: a\n    url: [unclosed\n")
      assert.equal(1, code)
      assert.equal(1, #lines, table.concat(lines, "\n"))
      assert.matches("^/%S+/moongate%.yaml:[34]:%d+: %S", lines[1])
    end)

    it("reports a plugin configured on a service as not enabled", function()
      assert_problem({ services = { service("a", { plugins = { { name = "acme-policy" } } }) } },
                     'services[0].plugins[0].name: plugin "acme-policy" is not enabled')
    end)

    it("reports a top-level plugin that references a missing service, route or consumer",
       function()
      local lines = assert_problem({
        services = { service("a") },
        plugins = { { name = "cors", service = "nope", route = { name = "gone" },
                      consumer = { username = "nobody" } } },
      }, 'plugins[0].service: no service named "nope"')
      assert.is_true(has_line(lines, 'plugins[0].route: no route named "gone"'),
                     table.concat(lines, "\n"))
      assert.is_true(has_line(lines, 'plugins[0].consumer: no consumer named "nobody"'),
                     table.concat(lines, "\n"))
    end)

    it("reports a plugin without a name and a config that is not a mapping", function()
      local lines = assert_problem({
        services = { service("a", { plugins = { { config = { minute = 1 } },
                                                { name = "cors", config = { 1, 2 } } } }) },
      }, "services[0].plugins[0].name: required")
      assert.is_true(has_line(lines, "services[0].plugins[1].config: expected a mapping"),
                     table.concat(lines, "\n"))
    end)

    it("reports duplicate consumer usernames and custom_ids", function()
      local lines = assert_problem({
        consumers = { { username = "alice", custom_id = "1" }, { username = "bob" },
                      { username = "alice" }, { custom_id = "1" } },
      }, 'consumers[2].username: duplicate username "alice"')
      assert.is_true(has_line(lines, 'consumers[3].custom_id: duplicate custom_id "1"'),
                     table.concat(lines, "\n"))
    end)

    it("reports shared_dicts smaller than 32k and invalid names", function()
      local lines = assert_problem({ shared_dicts = { cache = "16k", ["bad-name"] = "1m" } },
                                   "shared_dicts.cache: must be at least 32k")
      assert.is_true(has_line(lines, "shared_dicts.bad-name: invalid dictionary name: use " ..
                                     "letters, digits and '_'"), table.concat(lines, "\n"))
    end)

    it("reports an invalid name in the plugins setting", function()
      assert_problem({ plugins = { "bundled", "my.policy" } },
                     "plugins[1]: invalid plugin name \"my.policy\": use letters, digits, " ..
                     "'-' or '_'")
      assert_problem({ services = { service("a") } },
                     "env MOONGATE_PLUGINS[0]: invalid plugin name \"a/b\": use letters, " ..
                     "digits, '-' or '_'", { env = { MOONGATE_PLUGINS = "a/b" } })
    end)

    it("reports an invalid environment value with the path `env MOONGATE_X`", function()
      local conf = { services = { service("a") } }
      assert_problem(conf, 'env MOONGATE_WORKER_PROCESSES: expected "auto" or an integer',
                     { env = { MOONGATE_WORKER_PROCESSES = "lots" } })
      assert_problem(conf, 'env MOONGATE_LIMITS_CLIENT_MAX_BODY_SIZE: expected a size such ' ..
                           'as "8m"', { env = { MOONGATE_LIMITS_CLIENT_MAX_BODY_SIZE = "big" } })
      assert_problem(conf, 'env MOONGATE_PROXY_LISTEN[0]: invalid listen address "nowhere": ' ..
                           'expected "ip:port [ssl] [backlog=N]"',
                     { env = { MOONGATE_PROXY_LISTEN = "nowhere" } })
    end)
  end)

  describe("run", function()
    local up

    lazy_setup(function()
      up = helpers.upstream()
    end)

    lazy_teardown(function()
      up:stop()
    end)

    it("refuses to start on an invalid config with the messages on stderr, exit 1", function()
      local a = service("a", { url = up.url, retries = "three" })
      a.routes[1].paths = { "nope" }
      local gw = helpers.start({ services = { a }, bogus = 1 }, { wait = false })
      finally(function() gw:stop(2) end)
      assert.equal(1, gw:wait_exit(5))
      local err = gw:stderr()
      for _, want in ipairs({
        "bogus: unknown field",
        "services[0].retries: expected an integer",
        'services[0].routes[0].paths[0]: must start with "/" or "~"',
      }) do
        assert.is_truthy(find(err, want, 1, true), want .. " missing in:\n" .. err)
      end
      assert.is_nil(helpers.connect(gw.port, { timeout = 1 }))
    end)

    it("MOONGATE_PROXY_LISTEN moves the listener", function()
      local port = helpers.get_free_port()
      local gw = helpers.start({ services = { service("a", { url = up.url }) } },
                               { wait = false,
                                 env = { MOONGATE_PROXY_LISTEN = "127.0.0.1:" .. port } })
      finally(function() gw:stop() end)
      local res = helpers.eventually(function()
        assert.is_true(gw:running(), gw:stderr())
        return assert(helpers.request(port, { path = "/a" }))
      end, 5)
      assert.equal(200, res.status)
      assert.is_nil(helpers.connect(gw.port, { timeout = 1 }))
    end)

    it("MOONGATE_LIMITS_CLIENT_MAX_BODY_SIZE=10 answers 413 to an 11-byte body", function()
      local gw = helpers.start({ services = { service("a", { url = up.url }) } },
                               { env = { MOONGATE_LIMITS_CLIENT_MAX_BODY_SIZE = "10" } })
      finally(function() gw:stop() end)
      assert.equal(413, assert(gw:post("/a", "12345678901")).status)
      local res = assert(gw:post("/a", "1234567890"))
      assert.equal(200, res.status)
      assert.equal("1234567890", res:json().body)
    end)

    it("declarative_config loads services and routes from a Kong-style file", function()
      local kong = dir .. "/kong.yml"
      write_file(kong, fmt([[
_format_version: "3.0"
services:
  - name: from-kong
    url: %s/base
    routes:
      - name: kong-route
        paths: ["/kong"]
]], up.url))
      local code, lines = helpers.check({ declarative_config = kong })
      assert.equal(0, code, table.concat(lines, "\n"))

      local gw = helpers.start({ declarative_config = kong })
      finally(function() gw:stop() end)
      local res = assert(gw:get("/kong/x"))
      assert.equal(200, res.status)
      assert.equal("/base/x", res:json().path)
      assert.equal(404, assert(gw:get("/other")).status)
    end)

    it("declarative_config refuses entities in the main file and settings in its own", function()
      local kong = dir .. "/kong-bad.yml"
      write_file(kong, 'worker_processes: 2\nservices: []\n')
      assert_problem({ declarative_config = kong, services = { service("a") } },
                     "services: not allowed together with declarative_config")
      assert_problem({ declarative_config = kong },
                     "worker_processes: only allowed in the main configuration file")
    end)
  end)
end)
