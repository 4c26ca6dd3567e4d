-- DNS (issue 6 item 4): service hosts and upstream targets given as names are resolved by each
-- worker without blocking its event loop, through the resolvers of `dns_resolver` — here a
-- real tiny DNS server (spec/fixtures/dns_server.lua) whose answers the spec changes while the
-- gateway runs. Answers are kept for their TTL and then re-resolved (traffic moves to the new
-- address without a restart), served stale while a refresh runs, and `dns_hostsfile` names
-- never reach the server. Several A records of a target are balanced over; a name that does
-- not exist answers Kong's 503 until it appears; a server that never answers holds up nothing
-- but the requests for that name, which get the 503 after the connect timeout. With main's
-- retries, upstream TLS and get_health: every address tried is in the access log, each
-- address of a named https target is spoken to and probed over TLS by the target's name, and
-- get_health lists a name's addresses. The echo upstreams listen on 127.0.0.2 and 127.0.0.3
-- on one port (A records carry no port: Linux routes all of 127/8 to lo).

local helpers = require "spec.helpers"
local pki = require "spec.pki"
local cjson = require "cjson.safe"
local socket = require "socket"

local fmt = string.format

local PWD = os.getenv("PWD")
local SERVER = PWD .. "/spec/fixtures/dns_server.lua"
local OWN_PID = tonumber((helpers.read_file("/proc/self/stat") or ""):match("^(%d+)"))
local NAME_FAILED = "name resolution failed"

-- The DNS server in a child process (it exits once this process is gone).
local function dns_server()
  local dir = helpers.tmpdir("dns")
  local srv = { zone = dir .. "/zone.json", log = dir .. "/queries.log", out = dir .. "/out" }
  helpers.write_file(srv.zone, "{}")
  helpers.write_file(srv.log, "")
  local cmd = fmt("exec %s %s --zone %s --log %s --port 0 --parent %d >%s 2>&1 </dev/null",
                  os.getenv("MOONGATE_LUAJIT") or "luajit", helpers.shell_quote(SERVER),
                  helpers.shell_quote(srv.zone), helpers.shell_quote(srv.log), OWN_PID,
                  helpers.shell_quote(srv.out))
  srv.pid = assert(tonumber(helpers.run("(" .. cmd .. ") & echo $!"):match("(%d+)")))
  helpers.eventually(function()
    srv.port = assert(tonumber((helpers.read_file(srv.out) or ""):match("listening on (%d+)")),
                      "dns_server did not start: " .. (helpers.read_file(srv.out) or ""))
  end, 5, 0.02)
  function srv.set(z)
    helpers.write_file(srv.zone .. ".tmp", assert(cjson.encode(z)))
    assert(os.rename(srv.zone .. ".tmp", srv.zone)) -- never half a file
  end
  -- how many queries named `name` (any type) the server received
  function srv.queries(name)
    local n = 0
    for line in (helpers.read_file(srv.log) or ""):gmatch("[^\n]+") do
      if line:match("^(%S+)") == name then n = n + 1 end
    end
    return n
  end
  function srv.stop()
    os.execute("kill " .. srv.pid .. " 2>/dev/null")
    os.execute("rm -rf " .. helpers.shell_quote(dir))
  end
  return srv
end

-- A records for name (ttl seconds).
local function a(ips, ttl)
  return { A = ips, ttl = ttl or 60 }
end

describe("dns", function()
  local dns, up2, up3, up4, port

  lazy_setup(function()
    dns = dns_server()
    up2 = helpers.upstream({ host = "127.0.0.2" })
    port = up2.port
    up3 = helpers.upstream({ host = "127.0.0.3", port = port })
    up4 = helpers.upstream({ host = "127.0.0.4", port = port })
  end)

  lazy_teardown(function()
    if up2 then up2:stop() end
    if up3 then up3:stop() end
    if up4 then up4:stop() end
    if dns then dns.stop() end
  end)

  before_each(function()
    up2:clear()
    up3:clear()
  end)

  -- A gateway with the DNS settings pointing at the spec's server, and these services.
  local function start(services, extra)
    local conf = {
      dns_resolver = { "127.0.0.1:" .. dns.port },
      worker_processes = 1,
      services = services,
    }
    for k, v in pairs(extra or {}) do conf[k] = v end
    return helpers.start(conf)
  end

  local function service(name, host, path, more)
    local s = { name = name, host = host, port = port, routes = { { paths = { path } } } }
    for k, v in pairs(more or {}) do s[k] = v end
    return s
  end

  it("resolves a service host through dns_resolver", function()
    dns.set({ names = { ["svc.test"] = a({ "127.0.0.2" }) } })
    local gw = start({ service("s", "svc.test", "/s") })
    local res = assert(gw:get("/s"))
    assert.equal(200, res.status, res.body)
    assert.equal(1, up2:count())
    assert.equal(0, up3:count())
    assert.is_true(dns.queries("svc.test") >= 1)
    gw:stop()
  end)

  it("moves traffic to the new address once the TTL expires, without a restart", function()
    dns.set({ names = { ["move.test"] = a({ "127.0.0.2" }, 1) } })
    local gw = start({ service("s", "move.test", "/m") })
    local c = assert(helpers.connect(gw.port)) -- one keep-alive client all along
    local function get()
      assert(c:send("GET /m HTTP/1.1\r\nHost: x\r\n\r\n"))
      local res = assert(c:read_response())
      assert.equal(200, res.status, res.body)
    end
    get()
    assert.equal(1, up2:count())
    dns.set({ names = { ["move.test"] = a({ "127.0.0.3" }, 1) } })
    helpers.eventually(function()
      get()
      assert.is_true(up3:count() > 0)
    end, 8, 0.2)
    -- and it stays there: the pooled connection to the old address was not reused
    local before = up2:count()
    for _ = 1, 5 do get() end
    assert.equal(before, up2:count())
    c:close()
    gw:stop()
  end)

  it("keeps an answer for dns_valid_ttl rather than the record's TTL", function()
    dns.set({ names = { ["valid.test"] = a({ "127.0.0.2" }, 3600) } })
    local gw = start({ service("s", "valid.test", "/v") }, { dns_valid_ttl = 1 })
    assert.equal(200, assert(gw:get("/v")).status)
    dns.set({ names = { ["valid.test"] = a({ "127.0.0.3" }, 3600) } })
    helpers.eventually(function()
      assert.equal(200, assert(gw:get("/v")).status)
      assert.is_true(up3:count() > 0)
    end, 8, 0.2)
    gw:stop()
  end)

  it("asks for the record types of dns_order in turn (AAAA, then A)", function()
    local up6 = helpers.upstream({ host = "::1", port = port })
    dns.set({ names = { ["six.test"] = { AAAA = { "::1" }, ttl = 60 },
                        ["four.test"] = a({ "127.0.0.2" }) } })
    local gw = start({ service("s6", "six.test", "/six"), service("s4", "four.test", "/four") },
                     { dns_order = { "LAST", "AAAA", "A" } })
    assert.equal(200, assert(gw:get("/six")).status)
    assert.equal(1, up6:count())
    -- four.test has no AAAA record (NODATA): its A record is used
    assert.equal(200, assert(gw:get("/four")).status)
    assert.equal(1, up2:count())
    up6:stop()
    gw:stop()
  end)

  it("honours dns_hostsfile without asking the server", function()
    local hosts = os.tmpname()
    helpers.write_file(hosts, "# spec\n127.0.0.3   hosts.test  other.test\n")
    dns.set({ names = { ["hosts.test"] = a({ "127.0.0.2" }) } }) -- never asked
    local gw = start({ service("s", "hosts.test", "/h") }, { dns_hostsfile = hosts })
    local res = assert(gw:get("/h"))
    assert.equal(200, res.status, res.body)
    assert.equal(1, up3:count())
    assert.equal(0, up2:count())
    assert.equal(0, dns.queries("hosts.test"))
    gw:stop()
    os.remove(hosts)
  end)

  it("balances a target over each of its A records, with the target's weight", function()
    dns.set({ names = { ["multi.test"] = a({ "127.0.0.2", "127.0.0.3" }) } })
    local gw = start({ service("s", "pool", "/lb") }, {
      upstreams = { { name = "pool", targets = { { target = "multi.test:" .. port } } } },
    })
    helpers.eventually(function() -- the first answer builds the balancer
      assert.equal(200, assert(gw:get("/lb")).status)
    end, 5, 0.1)
    up2:clear()
    up3:clear()
    for _ = 1, 20 do
      assert.equal(200, assert(gw:get("/lb")).status)
    end
    -- round-robin over two entries of equal weight: an even split
    assert.equal(10, up2:count())
    assert.equal(10, up3:count())
    gw:stop()
  end)

  it("rebuilds the balancer when a target's answer changes, moving only the keys it must",
     function()
    dns.set({ names = { ["grow.test"] = a({ "127.0.0.2", "127.0.0.3", "127.0.0.4" }, 1) } })
    local gw = start({ service("s", "pool", "/lb") }, {
      upstreams = { { name = "pool", algorithm = "consistent-hashing", hash_on = "header",
                      hash_on_header = "x-key",
                      targets = { { target = "grow.test:" .. port } } } },
    })
    helpers.eventually(function()
      assert.equal(200, assert(gw:get("/lb", { headers = { ["x-key"] = "k" } })).status)
    end, 5, 0.1)
    -- which address each key goes to, from the access log's upstream_addr
    local function placement(round)
      local where = {}
      for i = 1, 40 do
        local res = assert(gw:get(fmt("/lb/r%d/k%d", round, i),
                                  { headers = { ["x-key"] = "key" .. i } }))
        assert.equal(200, res.status)
      end
      helpers.eventually(function()
        local n = 0
        for _, l in ipairs(gw:access_log_lines()) do
          local r, k = l.path:match("^/lb/r(%d+)/k(%d+)")
          if tonumber(r) == round then
            where[tonumber(k)] = l.upstream_addr:match("^(.-):%d+$")
            n = n + 1
          end
        end
        assert.equal(40, n)
      end, 3, 0.1)
      return where
    end
    local before = placement(1)
    local on = {}
    for _, ip in pairs(before) do on[ip] = true end
    assert.is_true(on["127.0.0.2"] and on["127.0.0.3"] and on["127.0.0.4"] or false)
    dns.set({ names = { ["grow.test"] = a({ "127.0.0.2", "127.0.0.3" }, 1) } })
    helpers.eventually(function() -- built at the first answer, then rebuilt for the second
      local _, n = gw:error_log():gsub("balancer rebuilt for the new addresses of grow.test", "")
      assert.equal(2, n)
    end, 8, 0.2)
    local after = placement(2)
    for k = 1, 40 do
      if before[k] == "127.0.0.4" then
        assert.is_true(after[k] == "127.0.0.2" or after[k] == "127.0.0.3", tostring(after[k]))
      else
        assert.equal(before[k], after[k]) -- the keys of the addresses that stayed do not move
      end
    end
    gw:stop()
  end)

  it("keeps health per address: a failing address of a name is taken out, not the target",
     function()
    dns.set({ names = { ["health.test"] = a({ "127.0.0.2", "127.0.0.3" }) } })
    local gw = start({ service("s", "pool", "/lb", { retries = 0 }) }, {
      upstreams = { { name = "pool", targets = { { target = "health.test:" .. port } },
                      healthchecks = { passive = { unhealthy = { http_failures = 2 } } } } },
    })
    helpers.eventually(function()
      assert.equal(200, assert(gw:get("/lb")).status)
    end, 5, 0.1)
    up3:set_mode("status:500")
    helpers.eventually(function()
      assert(gw:get("/lb"))
      assert.matches("target health.test:" .. port .. " (127.0.0.3) is now unhealthy",
                     gw:error_log(), 1, true)
    end, 5, 0.05)
    for _ = 1, 6 do
      assert(gw:get("/lb"))
    end
    up2:clear()
    up3:clear()
    for _ = 1, 6 do
      assert.equal(200, assert(gw:get("/lb")).status)
    end
    assert.equal(6, up2:count()) -- the other address of the same target takes it all
    assert.equal(0, up3:count())
    up3:set_mode(nil)
    gw:stop()
  end)

  it("names each address tried in the access log, a retry going to the name's other address",
     function()
    -- nothing listens on 127.0.0.5: its connect is refused (on the loop); 224.0.0.1 is
    -- multicast: TCP's connect(2) fails at once (ENETUNREACH). Retries end on 127.0.0.2.
    dns.set({ names = { ["retry.test"] = a({ "127.0.0.2", "127.0.0.5", "224.0.0.1" }) } })
    local gw = start({ service("s", "pool", "/lb", { retries = 2 }) }, {
      upstreams = { { name = "pool", targets = { { target = "retry.test:" .. port } } } },
    })
    helpers.eventually(function()
      assert.equal(200, assert(gw:get("/lb/first")).status)
    end, 5, 0.1)
    for i = 1, 6 do
      assert.equal(200, assert(gw:get("/lb/" .. i)).status)
    end
    local a2 = "127.0.0.2:" .. port
    local failed = { ["127.0.0.5:" .. port] = 0, ["224.0.0.1:" .. port] = 0 }
    for i = 1, 6 do
      local line = gw:access_log_entry("/lb/" .. i)
      local tried = {}
      for addr in line.upstream_addr:gmatch("[^, ]+") do tried[#tried + 1] = addr end
      assert.equal(line.tries, #tried, line.upstream_addr)
      assert.equal(a2, tried[#tried], line.upstream_addr) -- the one that answered, last
      for k = 1, #tried - 1 do
        assert.is_number(failed[tried[k]], line.upstream_addr)
        failed[tried[k]] = failed[tried[k]] + 1
      end
    end
    -- round-robin: each failing address was tried first by some request
    assert.is_true(failed["127.0.0.5:" .. port] > 0)
    assert.is_true(failed["224.0.0.1:" .. port] > 0)
    local log = gw:error_log()
    assert.matches("target retry.test:" .. port .. ", 127.0.0.5:" .. port .. ", try ", log, 1,
                   true)
    assert.matches("target retry.test:" .. port .. " (224.0.0.1:" .. port .. ", try ", log, 1,
                   true)
    gw:stop()
  end)

  it("reports each address of a named target through moongate.upstream.get_health",
     function()
    dns.set({ names = { ["hc.test"] = a({ "127.0.0.2", "127.0.0.3" }, 1) } })
    up3:set_mode("status:500")
    local gw = start({ { name = "s", host = "pool", routes = { { paths = { "/health" },
                         plugins = { { name = "upstream-health",
                                       config = { upstream = "pool" } } } } } } }, {
      lua_package_path = PWD .. "/spec/fixtures/plugins/?.lua;;",
      plugins = { "bundled", "upstream-health" },
      upstreams = { { name = "pool",
                      targets = { { target = "hc.test:" .. port, weight = 7 },
                                  { target = "missing.test:" .. port } },
                      healthchecks = { active = { type = "http", http_path = "/",
                                                  healthy = { interval = 0.1 },
                                                  unhealthy = { interval = 0.1,
                                                                http_failures = 1 } } } } },
    })
    local function addr_of(entry, ip)
      for _, ad in ipairs(entry.data.addresses) do
        if ad.ip == ip then return ad end
      end
    end
    helpers.eventually(function()
      local res = assert(gw:get("/health"))
      assert.equal(200, res.status, res.body)
      local report = cjson.decode(res.body)
      assert.equal(2, report.total)
      local named, missing = report.data[1], report.data[2]
      assert.equal("hc.test:" .. port, named.target)
      assert.equal(2, #named.data.addresses)
      assert.same({ ip = "127.0.0.2", port = port, health = "HEALTHY", weight = 7 },
                  addr_of(named, "127.0.0.2"))
      assert.same({ ip = "127.0.0.3", port = port, health = "UNHEALTHY", weight = 7 },
                  addr_of(named, "127.0.0.3"))
      assert.equal("HEALTHY", named.health) -- one of its addresses takes traffic
      -- a name that does not resolve has no address: Kong's DNS_ERROR
      assert.equal("missing.test:" .. port, missing.target)
      assert.equal("DNS_ERROR", missing.health)
      assert.same({}, missing.data.addresses)
    end, 5, 0.1)
    -- every address down: the target is UNHEALTHY
    up2:set_mode("status:500")
    helpers.eventually(function()
      local report = cjson.decode(assert(gw:get("/health")).body)
      assert.equal("UNHEALTHY", report.data[1].health)
      assert.equal("UNHEALTHY", addr_of(report.data[1], "127.0.0.2").health)
    end, 5, 0.1)
    up2:set_mode(nil)
    up3:set_mode(nil)
    -- an address gone from the answer is no longer listed
    dns.set({ names = { ["hc.test"] = a({ "127.0.0.2" }, 1) } })
    helpers.eventually(function()
      local report = cjson.decode(assert(gw:get("/health")).body)
      assert.equal(1, #report.data[1].data.addresses)
      assert.equal("127.0.0.2", report.data[1].data.addresses[1].ip)
    end, 8, 0.2)
    gw:stop()
  end)

  it("probes each address of a named target (active checks)", function()
    dns.set({ names = { ["probe.test"] = a({ "127.0.0.2", "127.0.0.3" }) } })
    up3:set_mode("status:500")
    local gw = start({ service("s", "pool", "/lb", { retries = 0 }) }, {
      upstreams = { { name = "pool", targets = { { target = "probe.test:" .. port } },
                      healthchecks = { active = { type = "http", http_path = "/",
                                                  healthy = { interval = 0.1 },
                                                  unhealthy = { http_failures = 1 } } } } },
    })
    helpers.eventually(function()
      assert.matches("target probe.test:" .. port .. " (127.0.0.3) is now unhealthy " ..
                     "(1 http failures, last status 500) by active checks", gw:error_log(), 1,
                     true)
    end, 5, 0.1)
    assert.is_nil(gw:error_log():find("(127.0.0.2) is now unhealthy", 1, true))
    up3:set_mode(nil)
    up3:clear()
    for _ = 1, 4 do
      assert.equal(200, assert(gw:get("/lb")).status)
    end
    -- the address that failed its probe gets nothing (nor probes: no unhealthy interval)
    assert.equal(0, up3:count())
    gw:stop()
  end)

  it("speaks TLS to each address of a named https target, probing each over https",
     function()
    -- one nginx on 127.0.0.2 and 127.0.0.3 (same port), its certificate naming tls.test only:
    -- SNI and verification use the target's name whatever the address; the health path
    -- fails on 127.0.0.3
    local ca = pki.ca()
    local leaf = ca:leaf("srv", { names = { "tls.test" } })
    local ng = helpers.nginx(fmt([[
  server {
    listen 127.0.0.1:%%PORT%% ssl; # what helpers.nginx waits for
    listen 127.0.0.2:%%PORT%% ssl;
    listen 127.0.0.3:%%PORT%% ssl;
    ssl_certificate %s;
    ssl_certificate_key %s;
    keepalive_requests 1000;
    location /hc {
      if ($server_addr = "127.0.0.3") { return 500; }
      return 200;
    }
    location / {
      return 200 "addr=$server_addr sni=$ssl_server_name conn=$connection\n";
    }
  }
]], leaf.crt, leaf.key))
    dns.set({ names = { ["tls.test"] = a({ "127.0.0.2", "127.0.0.3" }) } })
    local gw = start({ { name = "s", host = "pool", protocol = "https", port = 443,
                         ca_certificates = { "test-ca" }, retries = 0,
                         routes = { { paths = { "/tls" } } } } }, {
      log_level = "info",
      ca_certificates = { { id = "test-ca", cert = ca:read(ca.crt) } },
      upstreams = { { name = "pool", targets = { { target = "tls.test:" .. ng.port } },
                      healthchecks = { active = { type = "https", http_path = "/hc",
                                                  healthy = { interval = 0.1 },
                                                  unhealthy = { http_failures = 1 } } } } },
    })
    helpers.eventually(function()
      assert.matches("target tls.test:" .. ng.port .. " (127.0.0.3) is now unhealthy " ..
                     "(1 http failures, last status 500) by active checks", gw:error_log(), 1,
                     true)
    end, 5, 0.1)
    assert.is_nil(gw:error_log():find("(127.0.0.2) is now unhealthy", 1, true))
    local c = assert(helpers.connect(gw.port))
    local conns = {}
    for _ = 1, 4 do
      assert(c:send("GET /tls HTTP/1.1\r\nHost: x\r\n\r\n"))
      local res = assert(c:read_response())
      assert.equal(200, res.status, res.body)
      assert.equal("127.0.0.2", res.body:match("addr=(%S+)"))
      assert.equal("tls.test", res.body:match("sni=(%S+)"))
      conns[res.body:match("conn=(%d+)")] = true
    end
    c:close()
    local n = 0
    for _ in pairs(conns) do n = n + 1 end
    assert.equal(1, n) -- one kept-alive TLS connection to the address served them all
    gw:stop()
    ng.stop()
  end)

  it("sends one query for requests waiting on a name, or one each with dns_no_sync", function()
    for _, no_sync in ipairs({ false, true }) do
      local name = no_sync and "nosync.test" or "sync.test"
      dns.set({ names = { [name] = a({ "127.0.0.2" }) }, delay = { [name] = 800 } })
      local gw = start({ service("s", name, "/q") }, { dns_no_sync = no_sync })
      local conns = {}
      for i = 1, 4 do
        conns[i] = assert(helpers.connect(gw.port))
        assert(conns[i]:send("GET /q HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
      end
      for i = 1, 4 do
        assert.equal(200, assert(conns[i]:read_response()).status)
        conns[i]:close()
      end
      -- the worker's first query at start, and with dns_no_sync one per waiting request
      if no_sync then
        assert.is_true(dns.queries(name) >= 3, "queries: " .. dns.queries(name))
      else
        assert.equal(1, dns.queries(name))
      end
      gw:stop()
    end
  end)

  it("answers 503 while a name does not exist, and serves it once it appears", function()
    dns.set({ names = {} })
    local gw = start({ service("s", "late.test", "/n"), service("ip", "127.0.0.2", "/ip") },
                     { dns_not_found_ttl = 1 })
    local res = assert(gw:get("/n"))
    assert.equal(503, res.status)
    assert.same({ message = NAME_FAILED }, cjson.decode(res.body))
    assert.matches("name resolution failed for late.test", gw:error_log(), 1, true)
    -- nothing was connected to: no try, no address in the access log
    local line = gw:access_log_entry("/n")
    assert.equal("", line.upstream_addr)
    assert.is_nil(line.tries)
    -- one backend's missing name takes nothing else down
    assert.equal(200, assert(gw:get("/ip")).status)
    dns.set({ names = { ["late.test"] = a({ "127.0.0.3" }) } })
    helpers.eventually(function()
      assert.equal(200, assert(gw:get("/n")).status)
    end, 6, 0.2)
    assert.is_true(up3:count() >= 1)
    gw:stop()
  end)

  it("keeps serving other routes while a DNS server does not answer, then answers 503",
     function()
    dns.set({ names = {}, hang = { "hang.test" } })
    local gw = start({ service("s", "hang.test", "/hang", { connect_timeout = 3000 }),
                       service("ip", "127.0.0.2", "/ip") })
    local c = assert(helpers.connect(gw.port))
    assert(c:send("GET /hang HTTP/1.1\r\nHost: x\r\n\r\n"))
    local t0 = helpers.now()
    -- the request above is parked on its query: the worker keeps serving (one worker)
    for _ = 1, 5 do
      assert.equal(200, assert(gw:get("/ip")).status)
    end
    -- ... while the parked one is still waiting
    assert.equal(0, c:buffered())
    assert.is_nil(socket.select({ c.sock }, nil, 0)[1], "the parked request was answered")
    local res = assert(c:read_response())
    assert.equal(503, res.status)
    assert.same({ message = NAME_FAILED }, cjson.decode(res.body))
    assert.is_true(helpers.now() - t0 >= 2.0) -- after the connect timeout, not at once
    assert.matches("name resolution failed for hang.test: no answer within the connect timeout",
                   gw:error_log(), 1, true)
    c:close()
    gw:stop()
  end)

  it("ends a parked request the client stops sending the body of, and only once", function()
    dns.set({ names = {}, hang = { "stall.test" } })
    local gw = start({ service("s", "stall.test", "/stall", { connect_timeout = 2500 }),
                       service("ip", "127.0.0.2", "/ip") },
                     { limits = { client_body_timeout = "1s" } })
    local c = assert(helpers.connect(gw.port))
    assert(c:send("POST /stall HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"))
    local res = assert(c:read_response())
    assert.equal(408, res.status)
    c:close()
    helpers.sleep(2) -- past the connect timeout: the parked wait must not answer again
    assert.equal(200, assert(gw:get("/ip")).status)
    assert.is_nil(gw:error_log():find("stall.test: no answer within", 1, true))
    assert.is_true(gw:running())
    gw:stop()
  end)

  it("makes a request that arrives before the first answer wait for it", function()
    dns.set({ names = { ["slow.test"] = a({ "127.0.0.2" }), ["slowt.test"] = a({ "127.0.0.3" }) },
              delay = { ["slow.test"] = 800, ["slowt.test"] = 800 } })
    local gw = start({ service("s", "slow.test", "/w"), service("b", "pool", "/lb") }, {
      upstreams = { { name = "pool", targets = { { target = "slowt.test:" .. port } } } },
    })
    local res = assert(gw:get("/w"))
    assert.equal(200, res.status, res.body)
    assert.equal(1, up2:count())
    -- a balanced service whose targets have no answer yet waits the same way
    res = assert(gw:get("/lb"))
    assert.equal(200, res.status, res.body)
    assert.equal(1, up3:count())
    gw:stop()
  end)

  it("remembers a failed look-up for dns_error_ttl, then asks again", function()
    dns.set({ names = {}, servfail = { "broken.test" } })
    local gw = start({ service("s", "broken.test", "/b") }, { dns_error_ttl = 3 })
    local res = assert(gw:get("/b"))
    assert.equal(503, res.status)
    assert.same({ message = NAME_FAILED }, cjson.decode(res.body))
    local asked = dns.queries("broken.test")
    assert.equal(503, assert(gw:get("/b")).status) -- cached: no new query
    assert.equal(asked, dns.queries("broken.test"))
    assert.matches("DNS: looking up broken.test failed", gw:error_log(), 1, true)
    dns.set({ names = { ["broken.test"] = a({ "127.0.0.2" }) } })
    helpers.eventually(function()
      assert.equal(200, assert(gw:get("/b")).status)
    end, 8, 0.2)
    gw:stop()
  end)

  it("serves an expired answer while its refresh is pending (dns_stale_ttl)", function()
    dns.set({ names = { ["stale.test"] = a({ "127.0.0.2" }, 1) } })
    local gw = start({ service("s", "stale.test", "/st", { connect_timeout = 3000 }) },
                     { dns_stale_ttl = 30 })
    assert.equal(200, assert(gw:get("/st")).status)
    local asked = dns.queries("stale.test")
    dns.set({ names = {}, hang = { "stale.test" } }) -- refreshes will never be answered
    helpers.sleep(1.5)                                 -- the TTL is over
    -- served from the stale answer: waiting for the refresh, which is never answered,
    -- would have given 503 after the connect timeout
    local res = assert(gw:get("/st"))
    assert.equal(200, res.status, res.body)
    helpers.eventually(function() -- and a refresh was sent
      assert.is_true(dns.queries("stale.test") > asked)
    end, 3, 0.1)
    assert.equal(2, up2:count())
    gw:stop()
  end)

  it("without a stale window, waits for the refresh and fails when it is not answered",
     function()
    dns.set({ names = { ["fresh.test"] = a({ "127.0.0.2" }, 1) } })
    local gw = start({ service("s", "fresh.test", "/f", { connect_timeout = 1000 }) },
                     { dns_stale_ttl = 0 })
    assert.equal(200, assert(gw:get("/f")).status)
    dns.set({ names = {}, hang = { "fresh.test" } })
    helpers.sleep(1.5)
    local res = assert(gw:get("/f"))
    assert.equal(503, res.status)
    assert.same({ message = NAME_FAILED }, cjson.decode(res.body))
    gw:stop()
  end)

  it("refuses bad DNS settings in moongate check, with their paths", function()
    local code, lines = helpers.check({
      dns_resolver = { "127.0.0.1:99999", "dns.example" },
      dns_order = { "LAST", "SRV", "A" },
      dns_not_found_ttl = -3,
      dns_no_sync = "maybe",
      services = { { name = "s", host = "bad host" } },
    })
    assert.equal(1, code)
    local out = table.concat(lines, "\n")
    assert.matches('dns_resolver[0]: invalid resolver "127.0.0.1:99999": expected ip[:port]',
                   out, 1, true)
    assert.matches('dns_resolver[1]: invalid resolver "dns.example"', out, 1, true)
    assert.matches("dns_order[1]: SRV records are not supported", out, 1, true)
    assert.matches("dns_not_found_ttl: must be at least 0", out, 1, true)
    assert.matches("dns_no_sync: ", out, 1, true)
    assert.matches('services[0].host: invalid host "bad host"', out, 1, true) -- still refused
    -- an unresolvable name is not a config error: the workers resolve it
    code, lines = helpers.check({ services = { { name = "s", host = "no-such-host.invalid" } } })
    assert.equal(0, code, table.concat(lines, "\n"))
  end)
  describe("cosockets", function()
    local PLUGIN_PATH = PWD .. "/spec/fixtures/plugins/?.lua;;"

    -- A gateway whose /c route runs the cosock-dns plugin (it connects to X-Host:X-Port).
    local function start_c(extra, opts)
      local conf = {
        dns_resolver = { "127.0.0.1:" .. dns.port },
        worker_processes = 1,
        lua_package_path = PLUGIN_PATH,
        plugins = { "bundled", "cosock-dns" },
        services = { service("c", "127.0.0.2", "/c", { plugins = { { name = "cosock-dns" } } }) },
      }
      for k, v in pairs(extra or {}) do conf[k] = v end
      return helpers.start(conf, opts)
    end

    local function via(gw, host, more)
      local headers = { ["X-Host"] = host, ["X-Port"] = tostring(port) }
      for k, v in pairs(more or {}) do headers[k] = v end
      local res = assert(gw:get("/c", { headers = headers }))
      return res.status, cjson.decode(res.body) or {}
    end

    it("connects to a name through dns_resolver, kept for its TTL, then follows the new answer",
       function()
      dns.set({ names = { ["cos.test"] = a({ "127.0.0.2" }, 1),
                          ["kept.test"] = a({ "127.0.0.2" }, 60) } })
      local gw = start_c()
      local status, body = via(gw, "cos.test")
      assert.equal(200, status)
      assert.matches("^HTTP/1%.1 200", body.status)
      assert.equal(1, up2:count())
      assert.is_true(dns.queries("cos.test") >= 1)
      -- an answer is cached: a second connect asks nothing
      assert.equal(200, (via(gw, "kept.test")))
      assert.equal(200, (via(gw, "kept.test")))
      assert.equal(1, dns.queries("kept.test"))
      -- an IP literal never reaches the resolver
      assert.equal(200, (via(gw, "127.0.0.3")))
      assert.equal(0, dns.queries("127.0.0.3"))
      -- after the TTL the next connect follows the new answer
      dns.set({ names = { ["cos.test"] = a({ "127.0.0.3" }, 1) } })
      up3:clear()
      helpers.eventually(function()
        assert.equal(200, (via(gw, "cos.test")))
        assert.is_true(up3:count() > 0)
      end, 8, 0.2)
      gw:stop()
    end)

    it("returns nil and '<name> could not be resolved' for a name that does not exist, "
       .. "remembered for dns_not_found_ttl", function()
      dns.set({ names = {} })
      local gw = start_c()
      local status, body = via(gw, "cmissing.test")
      assert.equal(502, status)
      assert.equal("cmissing.test could not be resolved (Domain name not found)", body.message)
      assert.equal(1, dns.queries("cmissing.test"))
      status = via(gw, "cmissing.test")
      assert.equal(502, status)
      assert.equal(1, dns.queries("cmissing.test")) -- the negative answer is cached
      -- a server failure is reported in the same style
      dns.set({ servfail = { "cbroken.test" } })
      status, body = via(gw, "cbroken.test")
      assert.equal(502, status)
      assert.matches("^cbroken%.test could not be resolved %(.+%)$", body.message)
      assert.equal(0, up2:count())
      gw:stop()
    end)

    it("honours dns_hostsfile for a cosocket's name without a query", function()
      local hosts = os.tmpname()
      helpers.write_file(hosts, "127.0.0.3   chost.test\n")
      dns.set({ names = { ["chost.test"] = a({ "127.0.0.2" }) } }) -- never asked
      local gw = start_c({ dns_hostsfile = hosts })
      assert.equal(200, (via(gw, "chost.test")))
      assert.equal(200, (via(gw, "CHost.test")))
      assert.equal(2, up3:count())
      assert.equal(0, up2:count())
      assert.equal(0, dns.queries("chost.test"))
      gw:stop()
      os.remove(hosts)
    end)

    it("sends one query for cosockets waiting on a name, or one each with dns_no_sync",
       function()
      for _, no_sync in ipairs({ false, true }) do
        local name = no_sync and "cnosync.test" or "csync.test"
        dns.set({ names = { [name] = a({ "127.0.0.2" }) }, delay = { [name] = 800 } })
        local gw = start_c({ dns_no_sync = no_sync })
        local conns = {}
        for i = 1, 4 do
          conns[i] = assert(helpers.connect(gw.port))
          assert(conns[i]:send(fmt("GET /c HTTP/1.1\r\nHost: x\r\nX-Host: %s\r\nX-Port: %d\r\n"
                                   .. "Connection: close\r\n\r\n", name, port)))
        end
        for i = 1, 4 do
          local res = assert(conns[i]:read_response())
          assert.equal(200, res.status, res.body)
          conns[i]:close()
        end
        if no_sync then
          assert.is_true(dns.queries(name) >= 3, "queries: " .. dns.queries(name))
        else
          assert.equal(1, dns.queries(name))
        end
        gw:stop()
      end
    end)

    it("times out a connect whose name is not answered in time; the late answer touches no "
       .. "freed socket, and serves the next connect", function()
      dns.set({ names = { ["clate.test"] = a({ "127.0.0.2" }) }, delay = { ["clate.test"] = 1200 },
                hang = { "never.test" } })
      local gw = start_c()
      -- the plugin collects the failed socket at once: the answer comes after it is freed
      local status, body = via(gw, "clate.test", { ["X-Timeout"] = "300" })
      assert.equal(502, status)
      assert.equal("timeout", body.message)
      -- a client that leaves while its cosocket waits for a name
      local c = assert(helpers.connect(gw.port))
      assert(c:send(fmt("GET /c HTTP/1.1\r\nHost: x\r\nX-Host: never.test\r\nX-Port: %d\r\n\r\n",
                        port)))
      socket.sleep(0.3)
      c:close()
      helpers.eventually(function()
        assert.equal(200, (via(gw, "clate.test")))
      end, 5, 0.2)
      assert.equal(1, dns.queries("clate.test"))
      assert.equal(200, assert(gw:get("/c", { headers = { ["X-Host"] = "127.0.0.2",
                                                          ["X-Port"] = tostring(port) } })).status)
      gw:stop()
    end)

    it("resolves names in a timer started by init_worker", function()
      dns.set({ names = { ["initw.test"] = a({ "127.0.0.2" }) } })
      local gw = start_c(nil, { env = { MG_SPEC_INITW_HOST = "initw.test",
                                        MG_SPEC_INITW_PORT = tostring(port) } })
      helpers.eventually(function()
        local status, body = via(gw, "127.0.0.2", { ["X-Action"] = "initw" })
        assert.equal(200, status)
        assert.is_true(body.done)
        assert.matches("^HTTP/1%.1 200", body.line, 1, false)
      end, 5, 0.1)
      assert.equal(1, dns.queries("initw.test"))
      gw:stop()
    end)
  end)
end)
