-- acl behind key-auth against the real binary: allow and deny lists, the groups header
-- (and hiding it, and forged copies of it), unauthenticated and group-less callers, the
-- anonymous consumer's groups, and groups given by an external authentication plugin
-- (moongate.ctx.shared.authenticated_groups, with always_use_authenticated_groups).
local helpers = require "spec.helpers"

local PLUGIN_PATH = os.getenv("PWD") .. "/spec/fixtures/plugins/?.lua;;"

describe("acl", function()
  local up, gw

  lazy_setup(function()
    up = helpers.upstream()
    local function svc(name, acl, keyauth, extra)
      local plugins = { { name = "acl", config = acl } }
      if keyauth ~= false then
        plugins[#plugins + 1] = { name = "key-auth", config = keyauth }
      end
      for _, p in ipairs(extra or {}) do plugins[#plugins + 1] = p end
      return { name = name, url = up.url, routes = { { name = name, paths = { "/" .. name } } },
               plugins = plugins }
    end
    gw = helpers.start({
      lua_package_path = PLUGIN_PATH,
      plugins = { "bundled", "ext-groups" },
      services = {
        svc("allow", { allow = { "admins", "ops" } }),
        svc("deny", { deny = { "banned" } }),
        svc("hidden", { allow = { "admins" }, hide_groups_header = true }),
        svc("anon", { allow = { "guests" } }, { anonymous = "guest" }),
        svc("anondeny", { deny = { "guests" } }, { anonymous = "guest" }),
        svc("noauth", { allow = { "admins" } }, false),
        svc("ext", { allow = { "staff" } }, false, { { name = "ext-groups" } }),
        svc("extalways", { allow = { "staff" }, always_use_authenticated_groups = true }, nil,
            { { name = "ext-groups" } }),
      },
      consumers = {
        { username = "ann", keyauth_credentials = { { key = "ann-key" } },
          acls = { { group = "admins" }, { group = "devs" } } },
        { username = "otto", keyauth_credentials = { { key = "otto-key" } },
          acls = { { group = "ops" }, { group = "banned" } } },
        { username = "nogroup", keyauth_credentials = { { key = "nogroup-key" } } },
        { username = "guest", acls = { { group = "guests" } } },
      },
    })
  end)

  lazy_teardown(function()
    if gw then gw:stop() end
    if up then up:stop() end
  end)

  local function get(path, key, headers)
    headers = headers or {}
    headers.apikey = key
    return assert(gw:get(path, { headers = headers }))
  end

  describe("allow", function()
    it("lets a member of an allowed group through and names its groups upstream", function()
      local res = get("/allow", "ann-key")
      assert.equal(200, res.status)
      assert.equal("admins, devs", res:json().headers["x-consumer-groups"])
      assert.equal(200, get("/allow", "otto-key").status)
    end)

    it("refuses a consumer in none of the groups: 403 and Kong's message", function()
      local res = get("/allow", "nogroup-key")
      assert.equal(403, res.status)
      assert.same({ message = "You cannot consume this service" }, res:json())
    end)

    it("gives the same verdict on every request (the cached verdict is right)", function()
      for _ = 1, 3 do
        assert.equal(200, get("/allow", "ann-key").status)
        assert.equal(403, get("/allow", "nogroup-key").status)
      end
    end)

    it("overwrites an X-Consumer-Groups header the client forged", function()
      local res = get("/allow", "ann-key", { ["X-Consumer-Groups"] = "root" })
      assert.equal("admins, devs", res:json().headers["x-consumer-groups"])
    end)
  end)

  describe("deny", function()
    it("refuses a member of a denied group", function()
      local res = get("/deny", "otto-key")
      assert.equal(403, res.status)
      assert.same({ message = "You cannot consume this service" }, res:json())
    end)

    it("lets others through, a consumer without groups too", function()
      assert.equal(200, get("/deny", "ann-key").status)
      local res = get("/deny", "nogroup-key")
      assert.equal(200, res.status)
      assert.is_nil(res:json().headers["x-consumer-groups"])
    end)
  end)

  it("hide_groups_header keeps the groups (and any forged copy) from the upstream", function()
    local res = get("/hidden", "ann-key", { ["X-Consumer-Groups"] = "root" })
    assert.equal(200, res.status)
    assert.is_nil(res:json().headers["x-consumer-groups"])
  end)

  describe("unauthenticated requests", function()
    it("are refused 401 when no authentication plugin identified anyone", function()
      local res = assert(gw:get("/noauth"))
      assert.equal(401, res.status)
      assert.same({ message = "Unauthorized" }, res:json())
    end)

    it("never reach acl when key-auth already refused them", function()
      local res = assert(gw:get("/allow"))
      assert.equal(401, res.status)
      assert.same({ message = "No API key found in request" }, res:json())
    end)
  end)

  describe("with an anonymous consumer", function()
    it("judges the anonymous consumer by its own groups", function()
      local res = assert(gw:get("/anon"))
      assert.equal(200, res.status)
      assert.equal("guests", res:json().headers["x-consumer-groups"])
      assert.equal(403, assert(gw:get("/anondeny")).status)
      -- a real key takes precedence over the anonymous fallback
      assert.equal(200, get("/anondeny", "ann-key").status)
      assert.equal(403, get("/anon", "ann-key").status)
    end)
  end)

  describe("groups from an external authentication plugin", function()
    it("are used when no consumer credential identified the caller", function()
      local res = assert(gw:get("/ext", { headers = { ["X-Test-Groups"] = "staff,devs" } }))
      assert.equal(200, res.status)
      assert.equal("staff, devs", res:json().headers["x-authenticated-groups"])
      assert.equal(403, assert(gw:get("/ext", { headers = { ["X-Test-Groups"] = "devs" } })).status)
      assert.equal(401, assert(gw:get("/ext")).status)
    end)

    it("win over the consumer's groups with always_use_authenticated_groups", function()
      local res = get("/extalways", "nogroup-key", { ["X-Test-Groups"] = "staff" })
      assert.equal(200, res.status)
      assert.equal("staff", res:json().headers["x-authenticated-groups"])
      -- without them, the consumer's own groups decide
      assert.equal(403, get("/extalways", "ann-key").status)
    end)
  end)
end)
