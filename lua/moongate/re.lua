--- moongate.re: Perl-compatible regular expressions for plugins (PCRE2, JIT-compiled, the
-- library the router uses), in the shape of OpenResty's ngx.re so Kong plugin code ports:
-- `re.match(subject, regex, options)` → captures or nil, `re.find(subject, regex, options)` →
-- from, to. Compiled patterns are cached per (regex, options). Each match runs under a match
-- limit, so a pathological pattern against a hostile header fails that match ("matchlimit")
-- instead of spinning the worker. Options: i (caseless), m (multiline), s (dotall),
-- x (extended), u (UTF-8), a (anchored); j and o are accepted and implied.
local ffi = require "ffi"

ffi.cdef [[
typedef struct pcre2_real_code_8 pcre2_code_8;
typedef struct pcre2_real_match_data_8 pcre2_match_data_8;
typedef struct pcre2_real_match_context_8 pcre2_match_context_8;
pcre2_code_8 *pcre2_compile_8(const unsigned char *pattern, size_t length, uint32_t options,
                              int *errorcode, size_t *erroroffset, void *ccontext);
int pcre2_jit_compile_8(pcre2_code_8 *code, uint32_t options);
void pcre2_code_free_8(pcre2_code_8 *code);
pcre2_match_data_8 *pcre2_match_data_create_from_pattern_8(const pcre2_code_8 *code,
                                                           void *gcontext);
void pcre2_match_data_free_8(pcre2_match_data_8 *match_data);
int pcre2_match_8(const pcre2_code_8 *code, const unsigned char *subject, size_t length,
                  size_t startoffset, uint32_t options, pcre2_match_data_8 *match_data,
                  pcre2_match_context_8 *mcontext);
size_t *pcre2_get_ovector_pointer_8(pcre2_match_data_8 *match_data);
int pcre2_get_error_message_8(int errorcode, unsigned char *buffer, size_t bufflen);
pcre2_match_context_8 *pcre2_match_context_create_8(void *gcontext);
void pcre2_match_context_free_8(pcre2_match_context_8 *mcontext);
int pcre2_set_match_limit_8(pcre2_match_context_8 *mcontext, uint32_t value);
int pcre2_set_depth_limit_8(pcre2_match_context_8 *mcontext, uint32_t value);
]]

local lib
do
  local ok = pcall(function() return ffi.C.pcre2_compile_8 end)
  lib = ok and ffi.C or ffi.load("libpcre2-8.so.0")
end

local ffi_gc, ffi_new, ffi_string = ffi.gc, ffi.new, ffi.string
local band, bor = require("bit").band, require("bit").bor
local type, tostring, error = type, tostring, error

local FLAGS = {
  i = 0x00000008, s = 0x00000020, x = 0x00000080, m = 0x00000400, u = 0x00080000,
  a = 0x80000000, j = 0, o = 0, D = 0,
}
local ERROR_NOMATCH, ERROR_MATCHLIMIT, ERROR_DEPTHLIMIT = -1, -47, -53
local MATCH_LIMIT, DEPTH_LIMIT = 100000, 10000

local _M = {}

local mctx = ffi_gc(lib.pcre2_match_context_create_8(nil), lib.pcre2_match_context_free_8)
lib.pcre2_set_match_limit_8(mctx, MATCH_LIMIT)
lib.pcre2_set_depth_limit_8(mctx, DEPTH_LIMIT)

local errcode, erroff = ffi_new("int[1]"), ffi_new("size_t[1]")
local msgbuf = ffi_new("unsigned char[256]")

local function message(code)
  local n = lib.pcre2_get_error_message_8(code, msgbuf, 256)
  return n > 0 and ffi_string(msgbuf, n) or ("error " .. code)
end

local cache, cached = {}, 0
local CACHE_MAX = 1024

--- Compiles (and caches) a pattern. @return the compiled object, or nil, "reason"
function _M.compile(regex, options)
  if type(regex) ~= "string" then return nil, "regex must be a string" end
  options = options or ""
  local key = options .. "/" .. regex
  local c = cache[key]
  if c then return c end
  local flags = 0
  for i = 1, #options do
    local f = FLAGS[options:sub(i, i)]
    if not f then return nil, "unknown regex option \"" .. options:sub(i, i) .. "\"" end
    flags = bor(flags, f)
  end
  local code = lib.pcre2_compile_8(regex, #regex, flags, errcode, erroff, nil)
  if code == nil then
    return nil, message(errcode[0]) .. " at offset " .. tostring(tonumber(erroff[0]))
  end
  code = ffi_gc(code, lib.pcre2_code_free_8)
  lib.pcre2_jit_compile_8(code, 1)   -- without JIT support it still matches, interpreted
  local md = ffi_gc(lib.pcre2_match_data_create_from_pattern_8(code, nil),
                    lib.pcre2_match_data_free_8)
  c = { code = code, md = md, ovector = lib.pcre2_get_ovector_pointer_8(md) }
  if cached >= CACHE_MAX then cache, cached = {}, 0 end   -- config-driven: rarely reached
  cache[key] = c
  cached = cached + 1
  return c
end

-- rc > 0: matched with rc pairs; nil, err on errors
local function exec_compiled(c, subject, init)
  if type(subject) ~= "string" then subject = tostring(subject) end
  init = init and init - 1 or 0
  if init < 0 or init > #subject then return nil, "init out of range" end
  local rc = lib.pcre2_match_8(c.code, subject, #subject, init, 0, c.md, mctx)
  if rc == ERROR_NOMATCH then return 0 end
  if rc == ERROR_MATCHLIMIT or rc == ERROR_DEPTHLIMIT then return nil, "matchlimit" end
  if rc < 0 then return nil, message(rc) end
  return rc, c
end

local function exec(subject, regex, options, init)
  local c, err = _M.compile(regex, options)
  if not c then return nil, err end
  return exec_compiled(c, subject, init)
end

local function captures(rc, c, subject)
  if rc == 0 then return nil end
  local ov = c.ovector
  local caps = {}
  for i = 0, rc - 1 do
    local s, e = ov[2 * i], ov[2 * i + 1]
    if s == e and s == -1ULL then
      caps[i] = false
    else
      caps[i] = subject:sub(tonumber(s) + 1, tonumber(e))
    end
  end
  return caps
end

local function position(rc, c)
  if rc == 0 then return nil end
  local ov = c.ovector
  return tonumber(ov[0]) + 1, tonumber(ov[1])
end

--- The first match: { [0] = whole, [1] = capture 1, ... } (captures past the last one that
-- matched are absent), or nil when there is none; nil, err on a bad pattern or when the
-- match limit was hit.
function _M.match(subject, regex, options, init)
  local rc, c = exec(subject, regex, options, init)
  if not rc then return nil, c end
  return captures(rc, c, subject)
end

--- Where the first match is: from, to (1-based, inclusive), or nil; nil, err on errors.
function _M.find(subject, regex, options, init)
  local rc, c = exec(subject, regex, options, init)
  if not rc then return nil, c end
  return position(rc, c)
end

--- re.find with a pattern compiled once by re.compile (no cache lookup per call: what a
-- plugin uses for patterns from its config).
function _M.find_compiled(c, subject, init)
  local rc, err = exec_compiled(c, subject, init)
  if not rc then return nil, err end
  return position(rc, c)
end

--- re.match with a pattern compiled by re.compile.
function _M.match_compiled(c, subject, init)
  local rc, err = exec_compiled(c, subject, init)
  if not rc then return nil, err end
  return captures(rc, c, subject)
end

--- True when the pattern compiles (for schema validators); else false, "reason".
function _M.valid(regex, options)
  local c, err = _M.compile(regex, options)
  if not c then return false, err end
  return true
end

return _M
