-- wrk script: posts rerank requests in turn to /rerank (TEI's shape), each
-- a query of the corpus (bench/corpus/mixed.jsonl; CORPUS overrides) with
-- DOCS passages (default 10), taken in turn from the corpus' passages.
local path = os.getenv("CORPUS") or "bench/corpus/mixed.jsonl"
local docs = tonumber(os.getenv("DOCS") or "10")
local queries, passages = {}, {}
for line in io.lines(path) do
  local kind = line:match('"kind": "(%a+)"')
  local text = line:match('"text": (".*")}%s*$')
  if kind == "query" then table.insert(queries, text) end
  if kind == "passage" then table.insert(passages, text) end
end
assert(#queries > 0 and #passages >= docs, "too few queries or passages in " .. path)
local bodies = {}
for i, query in ipairs(queries) do
  local texts = {}
  for j = 1, docs do
    table.insert(texts, passages[((i - 1) * docs + j - 1) % #passages + 1])
  end
  table.insert(bodies, '{"query": ' .. query .. ', "texts": [' .. table.concat(texts, ", ") .. ']}')
end
local headers = { ["Content-Type"] = "application/json" }
local next_body = 0
request = function()
  next_body = (next_body % #bodies) + 1
  return wrk.format("POST", "/rerank", headers, bodies[next_body])
end
