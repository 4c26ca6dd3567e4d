-- ip-restriction's schema as `moongate check` applies it: Kong's fields and entity check,
-- the errors a user sees with the path of the bad entry, and one table of addresses that
-- the Lua stand-in (plain LuaJIT here) and the C parser (inside `moongate check`) must judge
-- alike. The verdicts were cross-checked with libc's inet_pton (Python's socket.inet_pton)
-- when the table was written.
local helpers = require "spec.helpers"
local schema = require "moongate.schema"

local plugin_schema = dofile(os.getenv("PWD") .. "/plugins/ip-restriction/schema.lua")

local function validate(config)
  return schema.validate_plugin_config(plugin_schema, config, "config")
end

local function check_plugin(config)
  local rc, out = helpers.check({
    services = { { name = "s", url = "http://127.0.0.1:9", routes = { { paths = { "/" } } },
                   plugins = { { name = "ip-restriction", config = config } } } } })
  return rc, out
end

local VALID = {
  "1.2.3.4", "0.0.0.0/0", "255.255.255.255/32", "10.0.0.1/8", "192.168.1.0/24",
  "1.2.3.4/08", "::", "::1", "::/0", "::1/128", "2001:db8::/32", "2001:DB8::1",
  "fe80::1:2:3:4:5:6", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::1:2:3:4:5:6:7",
  "::ffff:1.2.3.4", "::ffff:1.2.3.4/128", "::ffff:0:0/96", "64:ff9b::192.0.2.33",
  "1:2:3:4:5:6:1.2.3.4", "0000:0000:0000:0000:0000:0000:255.255.255.255",
}

local INVALID = {
  " 1.2.3.4", "1.2.3.4 ", "1.2.3", "1.2.3.4.5", "256.0.0.1", "01.2.3.4", "1.2.3.04",
  "1.2.3.4/33", "1.2.3.4/", "/8", "1.2.3.4/-1", "1.2.3.4/8/8", "1.2.3.4/1000",
  "1.2.3.4/ 8", "::1/129", "1:2:3:4:5:6:7:8:9", "1::2::3", ":::", "1:2:3:4:5:6:7::8",
  "12345::", "fe80::1%eth0", "::ffff:1.2.3", "1.2.3.4::", "1:2:3:4:5:6:7:1.2.3.4",
  "1::2:3:4:5:6:7:1.2.3.4", ":1::", "1:", "localhost", "0x7f.0.0.1", "::ffff:01.2.3.4",
  "1.2.3.4\0",
}

describe("ip-restriction schema", function()
  it("takes Kong's fields, with no defaults for status and message", function()
    local conf = assert(validate({ allow = { "10.0.0.0/8" } }))
    assert.same({ "10.0.0.0/8" }, conf.allow)
    assert.is_nil(conf.deny)
    assert.is_nil(conf.status)
    assert.is_nil(conf.message)
    conf = assert(validate({ deny = { "::1" }, status = 401, message = "go away" }))
    assert.same({ "::1" }, conf.deny)
    assert.equal(401, conf.status)
    assert.equal("go away", conf.message)
  end)

  it("needs at least one non-empty list (Kong's entity check)", function()
    local msg = "config: at least one of these fields must be non-empty: "
                .. "'config.allow', 'config.deny'"
    for _, config in ipairs({ {}, { allow = {} }, { allow = {}, deny = {} },
                               { status = 403 } }) do
      local _, errs = validate(config)
      assert.same({ msg }, errs)
    end
    assert.truthy(validate({ allow = {}, deny = { "1.2.3.4" } }))
  end)

  it("accepts addresses and blocks of both families", function()
    for _, s in ipairs(VALID) do
      local conf, errs = validate({ allow = { s }, deny = { s } })
      assert(conf, s .. ": " .. table.concat(errs or {}, "; "))
    end
  end)

  it("refuses anything else with Kong's message and the entry's path", function()
    for _, s in ipairs(INVALID) do
      local _, errs = validate({ deny = { "1.2.3.4", s } })
      assert.same({ "config.deny[1]: invalid ip or cidr range: '" .. s .. "'" }, errs)
    end
    local _, errs = validate({ allow = { "" } })
    assert.same({ "config.allow[0]: length must be at least 1" }, errs)
    _, errs = validate({ allow = { 10 }, deny = "10.0.0.0/8" })
    assert.same({ "config.allow[0]: expected a string", "config.deny: expected an array" },
                errs)
  end)

  it("takes a status between 400 and 599 (all kong.response.error accepts) and a message",
     function()
    local cases = {
      { 399, "config.status: value should be between 400 and 599" },
      { 600, "config.status: value should be between 400 and 599" },
      { 200, "config.status: value should be between 400 and 599" },
      { 403.5, "config.status: expected an integer" },
      { "403", "config.status: expected an integer" },
    }
    for _, case in ipairs(cases) do
      local _, errs = validate({ deny = { "1.2.3.4" }, status = case[1] })
      assert.same({ case[2] }, errs)
    end
    assert.truthy(validate({ deny = { "1.2.3.4" }, status = 400 }))
    assert.truthy(validate({ deny = { "1.2.3.4" }, status = 599 }))
    local _, errs = validate({ deny = { "1.2.3.4" }, message = "" })
    assert.same({ "config.message: length must be at least 1" }, errs)
    _, errs = validate({ deny = { "1.2.3.4" }, message = 1, whitelist = { "1.2.3.4" } })
    assert.same({ "config.message: expected a string", "config.whitelist: unknown field" },
                errs)
  end)

  describe("`moongate check` (the C parser)", function()
    it("judges every address of the table as the Lua stand-in does", function()
      local list = {}
      for _, s in ipairs(VALID) do list[#list + 1] = s end
      local first_invalid = #list
      for _, s in ipairs(INVALID) do list[#list + 1] = s end
      local rc, out = check_plugin({ allow = list })
      assert.equal(1, rc)
      local reported = {}
      for _, line in ipairs(out) do
        local i = line:match("^services%[0%]%.plugins%[0%]%.config%.allow%[(%d+)%]: ")
        if i then reported[tonumber(i) + 1] = line end
      end
      for i, s in ipairs(list) do
        if i <= first_invalid then
          assert.is_nil(reported[i], "C refused " .. s)
        else
          local expected = "services[0].plugins[0].config.allow[" .. (i - 1)
                           .. "]: invalid ip or cidr range: '" .. s .. "'"
          -- the check prints C strings: a message stops at a NUL
          assert.equal((expected:gsub("%z.*", "")), reported[i])
        end
      end
    end)

    it("passes a valid config and reports the entity check with its path", function()
      local rc, out = check_plugin({ allow = { "10.0.0.0/8" }, deny = { "2001:db8::/32" } })
      assert.equal(0, rc, table.concat(out, "\n"))
      rc, out = check_plugin({ status = 403 })
      assert.equal(1, rc)
      assert.matches("services%[0%]%.plugins%[0%]%.config: at least one of these fields must "
                     .. "be non%-empty: 'config%.allow', 'config%.deny'", table.concat(out, "\n"))
    end)

    it("loads 10,000 entries of both families, and still finds the one bad entry", function()
      local deny = {}
      for i = 0, 4999 do
        deny[#deny + 1] = ("10.%d.%d.0/25"):format(math.floor(i / 256), i % 256)
        deny[#deny + 1] = ("2001:db8:%x::/48"):format(i * 2)
      end
      local rc, out = check_plugin({ deny = deny })
      assert.equal(0, rc, table.concat(out, "\n"))
      deny[7777] = "10.0.0.0/64"
      rc, out = check_plugin({ deny = deny })
      assert.equal(1, rc)
      assert.same({ "services[0].plugins[0].config.deny[7776]: invalid ip or cidr range: "
                    .. "'10.0.0.0/64'" }, (function()
        local lines = {}
        for _, line in ipairs(out) do
          if line:find("config.deny", 1, true) then lines[#lines + 1] = line end
        end
        return lines
      end)())
    end)
  end)
end)
