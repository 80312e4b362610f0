"""Tables of bench/mixed.sh's figures: python3 bench/mixed_report.py OUT MACHINE DURATION."""

import collections
import sys

out, machine, duration = sys.argv[1], sys.argv[2], sys.argv[3]


def rows(name):
    with open(f"{out}/{name}") as f:
        return [line.split() for line in f if line.strip()]


raw = rows("mixed-raw.txt")
print(f"Raw, in process (tokens/s; texts/s in brackets), {machine}:\n")
print("| server | kind | batch 1 | batch 8 | batch 32 |")
print("|---|---|---|---|---|")
by_name = collections.OrderedDict()
for name, kind, batch, _ms, texts, tokens in raw:
    by_name.setdefault((name, kind), {})[batch.split("=")[1]] = (tokens.split("=")[1], texts.split("=")[1])
for (name, kind), cells in by_name.items():
    line = " | ".join(f"{cells[b][0]} ({float(cells[b][1]):.0f})" if b in cells else "" for b in ("1", "8", "32"))
    print(f"| {name} | {kind} | {line} |")

served = rows("mixed-served.txt")
names = list(collections.OrderedDict.fromkeys(r[0] for r in served))
print(f"\nServed (wrk, {duration} s per run): requests/s, p50 / p99 ms:\n")
print("| kind | c | " + " | ".join(names) + " |")
print("|---|---|" + "---|" * len(names))
table = {(r[0], r[1], r[2]): r[3:] for r in served}
for kind in ("query", "passage", "mixed"):
    for c in ("1", "8", "32", "64"):
        cells = []
        for name in names:
            rps, p50, p99 = table.get((name, kind, c), ("-", "-", "-"))
            cells.append(f"{float(rps):.0f}, {p50} / {p99}" if rps != "-" else "-")
        print(f"| {kind} | {c} | " + " | ".join(cells) + " |")

beside = {r[0]: r[3:] for r in rows("mixed-beside.txt")}
print("\nOne client posting queries, alone and beside 32 clients posting passages (p50 / p99 ms):\n")
print("| server | alone | beside passages | p99 ratio |")
print("|---|---|---|---|")
for name in names:
    alone = table.get((name, "query", "1"))
    near = beside.get(name)
    if alone and near:
        ratio = float(near[2]) / float(alone[2])
        print(f"| {name} | {alone[1]} / {alone[2]} | {near[1]} / {near[2]} | {ratio:.1f}x |")

print("\nPeak resident memory (MB): " + ", ".join(f"{n} {m}" for n, m in rows("mixed-memory.txt")))
