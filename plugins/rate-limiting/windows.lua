--- rate-limiting's windows: where the window of a period that contains a moment starts and
-- ends, and where the one before it started, in UTC as Kong counts them (second, minute,
-- hour and day aligned on the epoch; month and year on the calendar). Pure functions of the
-- time, so a request that waited on Redis still sees the windows of the moment it counted
-- in, whatever other requests did meanwhile.
local floor = math.floor
local tostring = tostring

local _M = {}

_M.NAMES = { "second", "minute", "hour", "day", "month", "year" }
_M.TITLES = { "Second", "Minute", "Hour", "Day", "Month", "Year" }
_M.LETTERS = { "s", "m", "h", "d", "M", "y" }

local FIXED = { 1, 60, 3600, 86400 }
local DAY = 86400

-- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = floor((153 * mp + 2) / 5) + d - 1
  return era * 146097 + yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy - 719468
end
_M.days_from_civil = days_from_civil

-- The year and month of a day number (the inverse of days_from_civil, day ignored).
local function civil_from_days(z)
  z = z + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  return yoe + era * 400 + (m <= 2 and 1 or 0), m
end

--- The window of period i (1 = second … 6 = year) that contains `now` (seconds since the
-- epoch): its start, its end (exclusive) and the start of the window before it, in seconds.
function _M.bounds(i, now)
  local sec = floor(now)
  if i <= 4 then
    local size = FIXED[i]
    local s = sec - sec % size
    return s, s + size, s - size
  end
  local y, m = civil_from_days(floor(sec / DAY))
  if i == 5 then
    local s = days_from_civil(y, m, 1)
    local e = m == 12 and days_from_civil(y + 1, 1, 1) or days_from_civil(y, m + 1, 1)
    local p = m == 1 and days_from_civil(y - 1, 12, 1) or days_from_civil(y, m - 1, 1)
    return s * DAY, e * DAY, p * DAY
  end
  return days_from_civil(y, 1, 1) * DAY, days_from_civil(y + 1, 1, 1) * DAY,
         days_from_civil(y - 1, 1, 1) * DAY
end

--- The longest a window of period i lasts (seconds): what its counters' TTL is based on.
_M.MAX_SIZE = { 1, 60, 3600, 86400, 31 * DAY, 366 * DAY }

-- A window start as a string, for keys: remembered per period, so that the string is made
-- once per window rather than once per request.
local memo_start, memo_str = { -1, -1, -1, -1, -1, -1 }, {}

--- tostring(start) of period i's current window, cached.
function _M.start_string(i, start)
  if memo_start[i] ~= start then
    memo_start[i], memo_str[i] = start, tostring(start)
  end
  return memo_str[i]
end

local memo_prev, memo_prev_str = { -1, -1, -1, -1, -1, -1 }, {}

--- tostring(start) of period i's previous window (sliding), cached apart.
function _M.prev_string(i, start)
  if memo_prev[i] ~= start then
    memo_prev[i], memo_prev_str[i] = start, tostring(start)
  end
  return memo_prev_str[i]
end

return _M
