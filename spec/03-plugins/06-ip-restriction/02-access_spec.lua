-- ip-restriction against the real binary and a real echo upstream. The gateway under test
-- trusts 127.0.0.1 (where the spec connects from), so X-Real-IP stands for any client of
-- either family; a second gateway takes X-Forwarded-For as real_ip_header, a third trusts
-- no one. Covered: allow, deny, deny winning over allow, Kong's default 403 body and the
-- configured status and message, CIDR edges of both families, IPv4-mapped IPv6 on both
-- sides, a client address that does not parse, and 10,000 CIDRs loading and matching.
local helpers = require "spec.helpers"

describe("ip-restriction", function()
  local up, gw, gw_xff, gw_untrusted

  local function svc(name, config)
    return { name = name, url = up.url, routes = { { name = name, paths = { "/" .. name } } },
             plugins = { { name = "ip-restriction", config = config } } }
  end

  -- 5,000 IPv4 /25s and 5,000 IPv6 /48s with a gap after each, so that none merge
  local LARGE = {}
  for i = 0, 4999 do
    LARGE[#LARGE + 1] = ("10.%d.%d.0/25"):format(math.floor(i / 256), i % 256)
    LARGE[#LARGE + 1] = ("2001:db8:%x::/48"):format(i * 2)
  end

  lazy_setup(function()
    up = helpers.upstream()
    gw = helpers.start({
      trusted_ips = { "127.0.0.1" },
      services = {
        svc("allow4", { allow = { "10.0.0.0/8", "192.168.1.1" } }),
        svc("deny4", { deny = { "10.0.0.0/8" } }),
        svc("both", { allow = { "10.0.0.0/8" }, deny = { "10.1.0.0/16" } }),
        svc("custom", { deny = { "10.0.0.0/8" }, status = 418, message = "Go away" }),
        svc("status", { allow = { "10.0.0.0/8" }, status = 401 }),
        svc("v6", { allow = { "2001:db8::/32", "::1" } }),
        svc("edges", { deny = { "203.0.113.7/32", "198.51.100.0/31", "172.16.5.9/12",
                                "2001:db8::7/128", "2001:db8:1::/127", "2001:db8:2::/64" } }),
        svc("halves", { allow = { "0.0.0.0/1" } }),
        svc("everyone", { allow = { "0.0.0.0/0" } }),
        svc("v6all", { allow = { "::/0" } }),
        svc("mapped", { deny = { "::ffff:192.0.2.0/120" } }),
        svc("emptyallow", { allow = helpers.empty_array, deny = { "10.0.0.0/8" } }),
        svc("local", { allow = { "127.0.0.1" } }),
        svc("large", { deny = LARGE }),
      },
    })
    gw_xff = helpers.start({
      trusted_ips = { "127.0.0.0/8" },
      real_ip_header = "X-Forwarded-For",
      services = { svc("allow4", { allow = { "10.0.0.0/8" } }) },
    })
    gw_untrusted = helpers.start({
      services = { svc("allow4", { allow = { "10.0.0.0/8" } }),
                   svc("local", { allow = { "127.0.0.1" } }) },
    })
  end)

  lazy_teardown(function()
    for _, g in ipairs({ gw, gw_xff, gw_untrusted }) do g:stop() end
    if up then up:stop() end
  end)

  local function from(ip, path, g)
    return assert((g or gw):get(path, { headers = ip and { ["X-Real-IP"] = ip } or nil }))
  end

  local function allowed(ip, path, g)
    local res = from(ip, path, g)
    assert.equal(200, res.status, tostring(ip) .. " on " .. path .. ": " .. res.body)
    return res
  end

  local function refused(ip, path, g, status, message)
    local res = from(ip, path, g)
    assert.equal(status or 403, res.status, tostring(ip) .. " on " .. path)
    assert.same({ message = message or ("IP address not allowed: " .. ip) }, res:json())
    assert.matches("^application/json", res.headers["content-type"])
    return res
  end

  describe("allow", function()
    it("lets listed addresses and blocks through, edges included", function()
      for _, ip in ipairs({ "10.0.0.0", "10.1.2.3", "10.255.255.255", "192.168.1.1" }) do
        allowed(ip, "/allow4")
      end
    end)

    it("refuses everyone else with Kong's 403 and message, the upstream never called",
       function()
      local before = up:count()
      for _, ip in ipairs({ "9.255.255.255", "11.0.0.0", "192.168.1.2", "192.168.1.0",
                            "2001:db8::1" }) do
        refused(ip, "/allow4")
      end
      assert.equal(before, up:count())
    end)

    it("judges the peer's own address when no proxy speaks for it", function()
      refused(nil, "/allow4", gw, 403, "IP address not allowed: 127.0.0.1")
      allowed(nil, "/local")
    end)

    it("with 0.0.0.0/1 splits the IPv4 space in two, and /0 takes it all", function()
      allowed("0.0.0.0", "/halves")
      allowed("127.255.255.255", "/halves")
      refused("128.0.0.0", "/halves")
      refused("255.255.255.255", "/halves")
      for _, ip in ipairs({ "0.0.0.0", "128.0.0.1", "255.255.255.255" }) do
        allowed(ip, "/everyone")
      end
    end)

    it("empty next to a deny list is not consulted (Kong's isempty)", function()
      allowed("11.0.0.1", "/emptyallow")
      refused("10.0.0.1", "/emptyallow")
    end)
  end)

  describe("deny", function()
    it("refuses listed addresses and lets everyone else through", function()
      refused("10.0.0.1", "/deny4")
      refused("10.255.255.255", "/deny4")
      allowed("11.0.0.1", "/deny4")
      allowed("9.255.255.255", "/deny4")
      allowed(nil, "/deny4")
    end)

    it("wins over allow", function()
      refused("10.1.2.3", "/both")
      refused("10.1.255.255", "/both")
      allowed("10.2.0.1", "/both")
      allowed("10.0.255.255", "/both")
      refused("11.0.0.1", "/both")
    end)

    it("matches exact /32 and /128, the two of a /31 and /127, and whole /12 and /64 blocks",
       function()
      refused("203.0.113.7", "/edges")
      allowed("203.0.113.6", "/edges")
      allowed("203.0.113.8", "/edges")
      refused("198.51.100.0", "/edges")
      refused("198.51.100.1", "/edges")
      allowed("198.51.100.2", "/edges")
      allowed("198.51.99.255", "/edges")
      -- 172.16.5.9/12 is 172.16.0.0/12: host bits are ignored, as Kong's matcher does
      refused("172.16.0.0", "/edges")
      refused("172.31.255.255", "/edges")
      allowed("172.32.0.0", "/edges")
      allowed("172.15.255.255", "/edges")
      refused("2001:db8::7", "/edges")
      refused("2001:0DB8:0000:0000:0000:0000:0000:0007", "/edges")
      allowed("2001:db8::6", "/edges")
      allowed("2001:db8::8", "/edges")
      refused("2001:db8:1::", "/edges")
      refused("2001:db8:1::1", "/edges")
      allowed("2001:db8:1::2", "/edges")
      refused("2001:db8:2::ffff:ffff:ffff:ffff", "/edges")
      allowed("2001:db8:2:1::", "/edges")
      allowed("2001:db8:1:ffff:ffff:ffff:ffff:ffff", "/edges")
    end)
  end)

  describe("IPv6", function()
    it("matches blocks and single addresses, and refuses IPv4 clients outside them", function()
      allowed("2001:db8::1", "/v6")
      allowed("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", "/v6")
      allowed("::1", "/v6")
      allowed("0:0:0:0:0:0:0:1", "/v6")
      refused("2001:db9::", "/v6")
      refused("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "/v6")
      refused("::2", "/v6")
      refused("10.0.0.1", "/v6")
    end)

    it("keeps the families apart: ::/0 is every IPv6 address and no IPv4 one", function()
      allowed("2001:db8::1", "/v6all")
      allowed("::", "/v6all")
      refused("10.0.0.1", "/v6all")
      refused("::ffff:10.0.0.1", "/v6all")
      allowed("::ffff:10.0.0.1", "/everyone")
      refused("::1", "/everyone")
    end)

    it("folds IPv4-mapped clients to IPv4 and IPv4-mapped blocks too", function()
      allowed("::ffff:10.1.2.3", "/allow4")
      refused("::ffff:11.0.0.1", "/allow4")
      refused("::FFFF:10.1.2.3", "/deny4")
      refused("192.0.2.5", "/mapped")
      refused("::ffff:192.0.2.255", "/mapped")
      allowed("192.0.3.0", "/mapped")
    end)
  end)

  describe("the answer", function()
    it("uses the configured status and message", function()
      refused("10.0.0.1", "/custom", gw, 418, "Go away")
      allowed("11.0.0.1", "/custom")
      refused("11.0.0.1", "/status", gw, 401)
      allowed("10.0.0.1", "/status")
    end)

    it("refuses a client address that does not parse instead of guessing", function()
      for _, path in ipairs({ "/deny4", "/allow4", "/both" }) do
        for _, ip in ipairs({ "not-an-ip", "10.0.0.1:8080", "[::1]", "10.0.0.1/8" }) do
          refused(ip, path, gw, 403, "Cannot identify the client IP address")
        end
      end
    end)
  end)

  describe("the client address", function()
    it("comes from the rightmost X-Forwarded-For hop when that is real_ip_header", function()
      local function xff(v)
        return assert(gw_xff:get("/allow4", { headers = { ["X-Forwarded-For"] = v,
                                                          ["X-Real-IP"] = "10.0.0.1" } }))
      end
      assert.equal(200, xff("11.0.0.1, 10.0.0.5").status)
      local res = xff("10.0.0.5, 11.0.0.1")
      assert.equal(403, res.status)
      assert.same({ message = "IP address not allowed: 11.0.0.1" }, res:json())
      res = assert(gw_xff:get("/allow4", { headers = { ["X-Real-IP"] = "10.0.0.1" } }))
      assert.same({ message = "IP address not allowed: 127.0.0.1" }, res:json())
    end)

    it("ignores forwarding headers from a peer that is not trusted", function()
      local res = assert(gw_untrusted:get("/allow4", { headers = {
        ["X-Real-IP"] = "10.0.0.1", ["X-Forwarded-For"] = "10.0.0.1" } }))
      assert.equal(403, res.status)
      assert.same({ message = "IP address not allowed: 127.0.0.1" }, res:json())
      allowed("11.0.0.1", "/local", gw_untrusted)
    end)
  end)

  describe("10,000 CIDRs", function()
    it("load, and match in both families at the first, last and middle entries", function()
      refused("10.0.0.0", "/large")
      refused("10.0.0.127", "/large")
      allowed("10.0.0.128", "/large")
      refused("10.19.135.77", "/large")      -- entry 4999: 10.19.135.0/25
      allowed("10.19.135.128", "/large")
      allowed("10.19.136.0", "/large")
      refused("10.9.200.1", "/large")
      refused("2001:db8::1", "/large")
      allowed("2001:db8:1::", "/large")
      refused("2001:db8:270e:ffff::1", "/large")   -- entry 4999: 2001:db8:270e::/48
      allowed("2001:db8:270f::", "/large")
      allowed("2001:db8:2710::", "/large")
      allowed("11.0.0.0", "/large")
    end)
  end)
end)
