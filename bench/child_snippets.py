"""Code that the benchmarks' child processes run: prepended to their scripts, which run as `python -c`."""

VOLUNTARY_SWITCHES = r"""
import os

def switches():
    # The process's voluntary context switches so far, all threads: OpenMP barrier sleeps among them.
    total = 0
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/status") as status:
            total += sum(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches"))
    return total
"""

PEAK_RSS = r"""
def peak_rss_mb():
    # The process's peak resident memory (VmHWM), MB.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""
