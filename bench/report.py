"""Turns bench/embeddings.sh's raw, served and memory figures into a markdown
table (stdout) and a PNG chart of throughput against concurrency."""

import os
import platform
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = sys.argv[1]
# The server's max_batch_size (config/embeddings.yaml): the raw figure the
# served one is held against.
max_batch = int(sys.argv[2]) if len(sys.argv) > 2 else 32
raw = {}
for line in open(os.path.join(out, "raw.txt")):
    fields = dict(part.split("=") for part in line.split()[1:])
    raw[int(fields["batch"])] = (float(fields["ms_per_batch"]), float(fields["sentences_per_s"]))
served = defaultdict(dict)
for line in open(os.path.join(out, "served.txt")):
    name, c, rps, p50, p99 = line.split()
    served[name][int(c)] = (float(rps), float(p50), float(p99))
memory = {line.split()[0]: int(line.split()[1]) for line in open(os.path.join(out, "memory.txt")) if line.strip()}

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(f"Machine: {os.cpu_count()} cores, {cpu}. One ~10-word sentence per request, wrk -t1 on loopback.\n")
print("| raw in-process (no server) | ms per batch | sentences/s |")
print("|---|---|---|")
for batch, (ms, sps) in sorted(raw.items()):
    print(f"| batch {batch} | {ms:.1f} | {sps:.0f} |")
print()
print("| server | concurrency | requests/s | p50 ms | p99 ms | peak RSS MB |")
print("|---|---|---|---|---|---|")
for name, levels in served.items():
    for c, (rps, p50, p99) in sorted(levels.items()):
        print(f"| {name} | {c} | {rps:.0f} | {p50:.1f} | {p99:.1f} | {memory.get(name, 0) / 1024:.0f} |")
print()
ours = served.get("modalkit-rs", {})
peer = served.get("python-peer", {})
goals = []
if 32 in ours:
    goals.append(("c=32 >= 560 req/s (1.1x TEI on ONNX Runtime)", f"{ours[32][0]:.0f}", ours[32][0] >= 560))
    if 32 in peer:
        ratio = ours[32][0] / peer[32][0]
        goals.append(("c=32 >= 1.3x the Python peer, same run", f"{ratio:.2f}x", ratio >= 1.3))
    else:
        goals.append(("c=32 >= 1.3x the Python peer, same run", "not run (--with-python-peer)", None))
    if max_batch in raw:
        share = ours[32][0] / raw[max_batch][1]
        goals.append((f"served c=32 >= 95% of raw at the server's batch size ({max_batch})", f"{100 * share:.0f}%", share >= 0.95))
if 1 in ours:
    goals.append(("c=1 p50 <= 3.4 ms", f"{ours[1][1]:.1f} ms", ours[1][1] <= 3.4))
if "modalkit-rs" in memory:
    goals.append(("peak RSS <= 150 MB", f"{memory['modalkit-rs'] / 1024:.0f} MB", memory["modalkit-rs"] / 1024 <= 150))
print("| goal | measured | met |")
print("|---|---|---|")
for goal, value, met in goals:
    print(f"| {goal} | {value} | {'yes' if met else ('-' if met is None else 'no')} |")

fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
for name, levels in served.items():
    cs = sorted(levels)
    ax.plot(cs, [levels[c][0] for c in cs], marker="o", label=name)
if max_batch in raw:
    ax.axhline(raw[max_batch][1], linestyle="--", color="grey", label=f"raw in-process, batch {max_batch}")
ax.axhline(510, linestyle=":", color="tab:red", label="TEI + ONNX Runtime, c=32 (notes)")
ax.set_xscale("log", base=2)
ax.set_xticks([1, 8, 32], ["1", "8", "32"])
ax.set_xlabel("concurrent clients")
ax.set_ylabel("requests / s")
ax.set_title("all-MiniLM-L6-v2 embeddings, 2-core CPU")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(out, "embeddings.png"))
