"""Turns bench/embeddings.sh's raw, served and memory figures into a markdown
table (stdout), the goals of the speed issue per ISA path, and a PNG chart of
throughput against concurrency."""

import os
import subprocess
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = sys.argv[1]
# The server's max_batch_size (config/embeddings.yaml).
max_batch = int(sys.argv[2]) if len(sys.argv) > 2 else 32
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 1


def median_round(runs):
    """The run with the median throughput (the first field) of a figure's
    rounds: its other fields (latencies) come from that same run."""
    ordered = sorted(runs, key=lambda run: run[0])
    return ordered[(len(ordered) - 1) // 2]


raw_runs = defaultdict(lambda: defaultdict(list))  # isa -> batch -> [(sentences/s, ms)]
for line in open(os.path.join(out, "raw.txt")):
    fields = dict(part.split("=") for part in line.split()[1:])
    raw_runs[fields.get("isa", "?")][int(fields["batch"])].append((float(fields["sentences_per_s"]), float(fields["ms_per_batch"])))
raw = {isa: {batch: median_round(runs)[::-1] for batch, runs in batches.items()} for isa, batches in raw_runs.items()}  # isa -> batch -> (ms, sentences/s)
served_runs = defaultdict(lambda: defaultdict(list))  # server name -> c -> [(rps, p50, p99)]
for line in open(os.path.join(out, "served.txt")):
    name, c, rps, p50, p99 = line.split()
    served_runs[name][int(c)].append((float(rps), float(p50), float(p99)))
served = {name: {c: median_round(runs) for c, runs in levels.items()} for name, levels in served_runs.items()}
memory = {line.split()[0]: int(line.split()[1]) for line in open(os.path.join(out, "memory.txt")) if line.strip()}

machine = subprocess.run([os.path.join(os.path.dirname(__file__), "machine.sh")], capture_output=True, text=True, check=True).stdout.strip()
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
simd = " ".join(sorted(f for f in flags if f.startswith(("avx", "fma", "sse4"))))
print(f"Machine: {machine}; {simd}. One ~10-word sentence per request, wrk -t1 on loopback. Each figure: the median of {rounds} interleaved rounds.\n")
print("| raw in-process (no server) | ISA | ms per batch | sentences/s |")
print("|---|---|---|---|")
for isa, batches in raw.items():
    for batch, (ms, sps) in sorted(batches.items()):
        print(f"| batch {batch} | {isa} | {ms:.1f} | {sps:.0f} |")
print()
print("| server | concurrency | requests/s | p50 ms | p99 ms | peak RSS MB |")
print("|---|---|---|---|---|---|")
for name, levels in served.items():
    for c, (rps, p50, p99) in sorted(levels.items()):
        print(f"| {name} | {c} | {rps:.0f} | {p50:.1f} | {p99:.1f} | {memory.get(name, 0) / 1024:.0f} |")
print()

goals = []
for isa in raw:
    ours = served.get(f"modalkit-rs-{isa}", {})
    batches = raw[isa]
    if isa == "avx2":
        # The peer on the same instruction set (capped at AVX2 when the CPU
        # has AVX-512), as on an AVX2-only CPU.
        peer_name = "python-peer-avx2" if "python-peer-avx2" in served else "python-peer"
        peer = served.get(peer_name, {})
        if 32 in ours and 32 in peer:
            ratio = ours[32][0] / peer[32][0]
            goals.append((isa, f"served c=32 >= 1.5x the Python peer ({peer_name}), same run", f"{ratio:.2f}x", ratio >= 1.5))
        native = served.get("python-peer", {})
        if peer_name != "python-peer" and 32 in ours and 32 in native:
            ratio = ours[32][0] / native[32][0]
            goals.append((isa, "served c=32 against the uncapped peer (AVX-512 kernels), for reference", f"{ratio:.2f}x", None))
        elif 32 in ours:
            goals.append((isa, "served c=32 >= 1.5x the Python peer, same run", "peer not run (--with-python-peer)", None))
        if 1 in ours:
            goals.append((isa, "c=1 p50 <= 4.2 ms", f"{ours[1][1]:.1f} ms", ours[1][1] <= 4.2))
        if 32 in batches:
            goals.append((isa, "raw batch 32 >= 350 sentences/s", f"{batches[32][1]:.0f}", batches[32][1] >= 350))
    if isa == "avx512":
        if 32 in ours:
            goals.append((isa, "c=32 >= 586 req/s (no regression)", f"{ours[32][0]:.0f}", ours[32][0] >= 586))
        if 1 in ours:
            goals.append((isa, "c=1 p50 <= 2.4 ms (no regression)", f"{ours[1][1]:.1f} ms", ours[1][1] <= 2.4))
    if 8 in ours and 8 in batches:
        share = ours[8][0] / batches[8][1]
        goals.append((isa, "served c=8 >= 90% of raw at batch 8", f"{100 * share:.0f}%", share >= 0.9))
    name = f"modalkit-rs-{isa}"
    if name in memory:
        goals.append((isa, "peak RSS <= 150 MB", f"{memory[name] / 1024:.0f} MB", memory[name] / 1024 <= 150))
print("| path | goal | measured | met |")
print("|---|---|---|---|")
for isa, goal, value, met in goals:
    print(f"| {isa} | {goal} | {value} | {'yes' if met else ('-' if met is None else 'no')} |")

fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
for name, levels in served.items():
    cs = sorted(levels)
    ax.plot(cs, [levels[c][0] for c in cs], marker="o", label=name)
for isa, batches in raw.items():
    if max_batch in batches:
        ax.axhline(batches[max_batch][1], linestyle="--", alpha=0.6, label=f"raw {isa}, batch {max_batch}")
ax.set_xscale("log", base=2)
ax.set_xticks([1, 8, 32], ["1", "8", "32"])
ax.set_xlabel("concurrent clients")
ax.set_ylabel("requests / s")
ax.set_title(f"all-MiniLM-L6-v2 embeddings, {os.cpu_count()}-core CPU")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(out, "embeddings.png"))
