"""`make install` picks PyTorch's CUDA build where nvidia-smi lists a GPU, the CPU build elsewhere."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def torch_spec(path: str, *args: str) -> str:
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "torch-spec", *args], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PATH": path}, check=True,
    )
    return result.stdout.strip()


def fake_nvidia_smi(folder: Path, output: str, status: int = 0) -> str:
    folder.mkdir()
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\necho '{output}'\nexit {status}\n")
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_torch_build_follows_nvidia_smi_and_torch_spec_overrides(tmp_path):
    without = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "nvidia-smi").exists())
    assert torch_spec(without) == "torch==2.13.0"  # no nvidia-smi: the CPU build
    gpu = fake_nvidia_smi(tmp_path / "gpu", "GPU 0: NVIDIA H200 (UUID: GPU-0)")
    assert torch_spec(gpu) == "torch==2.13.0+cu128 --extra-index-url https://download.pytorch.org/whl/cu128"
    assert torch_spec(gpu, "TORCH_CUDA=cu126").startswith("torch==2.13.0+cu126 ")
    assert torch_spec(gpu, "TORCH_SPEC=torch==2.12.0") == "torch==2.12.0"
    # nvidia-smi present but no GPU (no driver loaded): the CPU build
    broken = fake_nvidia_smi(tmp_path / "nodriver", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver", 9)
    assert torch_spec(broken) == "torch==2.13.0"
