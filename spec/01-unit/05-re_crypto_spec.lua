-- moongate.re and moongate.crypto outside the gateway (they load libpcre2-8 and libcrypto
-- themselves): the same answers plugins get inside it.
local re = require "moongate.re"
local crypto = require "moongate.crypto"

describe("moongate.re", function()
  it("matches with captures, options and a start position", function()
    local m = re.match("Mozilla/5.0 (compatible; Googlebot/2.1)", "(google|bing)bot/([0-9.]+)", "i")
    assert.same({ [0] = "Googlebot/2.1", "Google", "2.1" }, m)
    assert.is_nil(re.match("Googlebot", "googlebot"))
    assert.same({ 7, 9 }, { re.find("hello world", "wor") })
    assert.is_nil(re.find("hello world", "hello", nil, 2))
    assert.same({ 1, 5 }, { re.find("hello world", "^hello", "a") })
  end)

  it("reports a bad pattern or option instead of raising", function()
    local m, err = re.match("abc", "(")
    assert.is_nil(m)
    assert.equal("missing closing parenthesis at offset 1", err)
    assert.equal('unknown regex option "q"', select(2, re.compile("a", "q")))
    assert.same({ false, "missing closing parenthesis at offset 1" }, { re.valid("(") })
    assert.is_true(re.valid("^a+$"))
  end)

  it("gives up on a catastrophic pattern with \"matchlimit\"", function()
    local m, err = re.match(string.rep("a", 40) .. "!", "^(a|a?)+$")
    assert.is_nil(m)
    assert.equal("matchlimit", err)
  end)

  it("runs patterns compiled once", function()
    local c = assert(re.compile("(\\w+)bot", "i"))
    assert.same({ 7, 15 }, { re.find_compiled(c, "hello GoogleBot") })
    assert.equal("Yandex", re.match_compiled(c, "xx Yandexbot")[1])
    assert.is_nil(re.find_compiled(c, "none"))
  end)
end)

describe("moongate.crypto", function()
  local hex = crypto.to_hex

  it("digests and HMACs (FIPS 180-4 and RFC 4231 vectors)", function()
    assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                 hex(crypto.digest("sha256", "abc")))
    assert.equal("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
                 hex(crypto.hmac("sha256", string.rep("\11", 20), "Hi There")))
    assert.has_error(function() crypto.digest("sha3-banana", "x") end)
  end)

  it("derives PBKDF2 keys (RFC 7914 §11 vector)", function()
    assert.equal("55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
                 .. "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783",
                 hex(crypto.pbkdf2("sha256", "passwd", "salt", 1, 64)))
  end)

  it("compares in constant time, lengths first", function()
    assert.is_true(crypto.equals("abc", "abc"))
    assert.is_false(crypto.equals("abc", "abd"))
    assert.is_false(crypto.equals("abc", "abcd"))
    assert.is_false(crypto.equals("abc", nil))
  end)

  it("codes base64 strictly, in each alphabet", function()
    assert.equal("Zm9vYg==", crypto.encode_base64("foob"))
    assert.equal("Zm9vYg", crypto.encode_base64("foob", true))
    assert.equal("foob", crypto.decode_base64("Zm9vYg=="))
    assert.equal("\251\255", crypto.decode_base64("-_8", true))
    assert.is_nil(crypto.decode_base64("+/8", true))
    assert.is_nil(crypto.decode_base64("-_8"))
    assert.is_nil(crypto.decode_base64("Zh=="))   -- non-zero trailing bits
    assert.is_nil(crypto.decode_base64("Zm9v\n"))
  end)

  it("reads public keys and refuses what is not one", function()
    assert.same({ nil, "not a PEM public key or certificate" }, { crypto.public_key("nope") })
    assert.same({ nil, "expected a PEM string" }, { crypto.public_key(42) })
  end)
end)
