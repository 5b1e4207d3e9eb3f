-- wrk script for the memory scenario: spreads requests round-robin over
-- the routes /r0 ... /r(N-1). Usage: wrk -s bench/spread_routes.lua URL -- N
local n, i = 100, 0

function init(args)
  if args[1] then n = tonumber(args[1]) end
end

function request()
  i = (i + 1) % n
  return wrk.format("GET", "/r" .. i .. "/bench")
end
