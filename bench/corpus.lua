-- wrk script: posts the texts of a corpus (bench/corpus/mixed.jsonl by
-- default; CORPUS overrides) to /predict_sync in turn, one per request,
-- those of kind KIND (query, passage, long) or all of them (mixed).
local kind = os.getenv("KIND") or "mixed"
local path = os.getenv("CORPUS") or "bench/corpus/mixed.jsonl"
local bodies = {}
for line in io.lines(path) do
  local this_kind = line:match('"kind": "(%a+)"')
  if kind == "mixed" or this_kind == kind then
    local text = line:match('"text": (".*")}%s*$')
    table.insert(bodies, '{"text": ' .. text .. '}')
  end
end
assert(#bodies > 0, "no texts of kind " .. kind .. " in " .. path)
local headers = { ["Content-Type"] = "application/json" }
local next_body = 0
request = function()
  next_body = (next_body % #bodies) + 1
  return wrk.format("POST", "/predict_sync", headers, bodies[next_body])
end
