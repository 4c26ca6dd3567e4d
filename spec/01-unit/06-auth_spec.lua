-- moongate.auth's challenge builder: what every authentication plugin puts in
-- WWW-Authenticate (RFC 9110 11.6.1), a realm always quoted and escaped.
local auth = require "moongate.auth"

describe("moongate.auth.challenge", function()
  it("is the bare scheme without a realm or parameters", function()
    assert.equal("Key", auth.challenge("Key"))
  end)

  it("quotes the realm, escaping quotes and backslashes", function()
    assert.equal('Basic realm="service"', auth.challenge("Basic", "service"))
    assert.equal('Basic realm="a \\"b\\" \\\\ c"', auth.challenge("Basic", 'a "b" \\ c'))
  end)

  it("separates further parameters with a comma (RFC 6750 for Bearer)", function()
    assert.equal('Bearer error="invalid_token"', auth.challenge("Bearer", nil,
                                                                'error="invalid_token"'))
    assert.equal('Bearer realm="api", error="invalid_token"',
                 auth.challenge("Bearer", "api", 'error="invalid_token"'))
  end)
end)
