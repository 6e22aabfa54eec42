"""Freed CPU memory is kept for reuse: tensors allocated again, as every training step does, do not page-fault again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the setting is for glibc's malloc"
)

SIZES_MIB = (64, 48, 32, 16, 8)
PAGES = sum(SIZES_MIB) * 2**20 // 4096

#: Allocates and touches tensors of several sizes, frees them, six times over, like the activations
#: of repeated training steps; prints whether the setting took effect and each round's minor page faults.
PROBE = f"""
import resource, sys
import torch
from mtseg.training.callbacks import KeepFreedMemory
from mtseg.runtime.cpu_allocator import reuse_freed_memory
if sys.argv[1] == "callback":
    KeepFreedMemory().on_train_start(None, None)  # what training does when its steps start
took = reuse_freed_memory()
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = [torch.empty(mib * 2**20, dtype=torch.uint8).fill_(1) for mib in {SIZES_MIB}]
    del held
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(took, *faults)
"""


def probe(switch: str | None, how: str = "direct") -> tuple[bool, list[int]]:
    env = {k: v for k, v in os.environ.items() if k != "MTSEG_KEEP_FREED_MEMORY"}
    if switch is not None:
        env["MTSEG_KEEP_FREED_MEMORY"] = switch
    out = subprocess.run([sys.executable, "-c", PROBE, how], env=env, capture_output=True, text=True, check=True).stdout
    took, *faults = out.split()
    return took == "True", [int(f) for f in faults]


def test_freed_memory_is_reused_without_page_faults():
    took, faults = probe(None)
    assert took
    assert faults[0] > PAGES // 2  # the first round faults its pages in
    assert min(faults[1:]) < PAGES // 10  # later rounds reuse them


def test_training_keeps_freed_memory_once_its_steps_start():
    took, faults = probe(None, how="callback")
    assert took
    assert min(faults[1:]) < PAGES // 10


def test_switched_off_leaves_glibc_returning_memory():
    took, faults = probe("0")
    assert not took
    assert min(faults[1:]) > PAGES // 2  # glibc unmaps freed large blocks: every round faults in again
