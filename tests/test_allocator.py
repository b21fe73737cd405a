"""allocator.keep_freed_memory: large freed blocks are reused instead of faulted in afresh."""

import json
import os
import platform
import subprocess
import sys

import pytest
from imageclf.training import allocator

# Allocate, touch and free a 64 MB tensor (above glibc's 32 MB mmap ceiling) again and again, and
# count each round's minor page faults: every round faults its pages in afresh when
# the block went back to the kernel, none once the heap holds it (the first few rounds grow the
# heap, as small allocations in between split freed blocks: a training step settles the same way).
PROBE = """
import json, resource, torch
from imageclf.training import allocator
kept = allocator.keep_freed_memory()
faults = []
for _ in range(24):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults}))
"""

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")


def probe(**env) -> dict:
    inherited = {key: value for key, value in os.environ.items() if key != allocator.OPT_OUT}
    env = {**inherited, **env}
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@glibc_only
def test_freed_blocks_are_reused_without_page_faults():
    default = probe(**{allocator.OPT_OUT: "default"})
    kept = probe()
    assert default["kept"] is False and kept["kept"] is True
    pages_per_round = 64 * 2**20 // 4096
    # the default faults every round's 64 MB in; kept, the heap holds the block after a few rounds
    # (now and then a small allocation splits it and one more round grows the heap: allow two)
    assert all(faults >= 0.9 * pages_per_round for faults in default["faults"][-8:])
    assert sum(kept["faults"][-8:]) <= 2 * pages_per_round


@glibc_only
def test_opt_out_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv(allocator.OPT_OUT, "default")
    assert allocator.keep_freed_memory() is False
