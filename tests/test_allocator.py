"""allocator.keep_freed_memory: freed large blocks are reused instead of faulted in again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHILD = """
import json, resource, sys
import torch
from kaggle_utils.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False

def step():  # a training step's activations: written, then all freed
    kept = [torch.ones(mb << 20, dtype=torch.uint8) for mb in (1, 8, 24, 64, 8, 1)]
    del kept

for _ in range(3):  # warm-up: the heap grows to the step's peak
    step()
per_step = []
for _ in range(7):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    per_step.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = sorted(per_step)[3]  # the median: now and then a block lands on new pages
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_blocks_are_reused_without_page_faults():
    default, kept = _faults("default"), _faults("keep")
    assert kept["applied"] is True
    assert default["faults"] > 10_000  # the 64 MB block on fresh 4 KB pages every step
    assert kept["faults"] < 100


def test_it_is_idempotent():
    from kaggle_utils.allocator import keep_freed_memory

    first = keep_freed_memory()
    assert keep_freed_memory() == first
