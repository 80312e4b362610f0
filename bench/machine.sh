#!/usr/bin/env bash
# Prints this machine's CPU for the benchmarks' reports, e.g.
# "2 cores, AMD EPYC (family 25, model 17)": a virtual machine's model name
# often leaves out the generation (Zen 2, 3 and 4 all read "AMD EPYC"), and
# the family and model numbers tell it.
set -euo pipefail
field() { grep -m1 "^$1[[:space:]]*:" /proc/cpuinfo | cut -d: -f2 | xargs; }
echo "$(nproc) cores, $(field 'model name') (family $(field 'cpu family'), model $(field model))"
