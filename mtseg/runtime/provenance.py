"""Where a result came from: ``provenance.json`` beside the files of every results command.

:func:`write_provenance` records the git commit (and whether the working tree had uncommitted
changes), the command line, the machine (CPU model and the flags that decide its speed, core
counts, GPUs), the versions of Python, torch and mtseg, the UTC date and the command's wall
seconds, plus whatever the command adds (``note``, settings). ``mtseg.bench``,
``mtseg.figures`` and ``mtseg.gpu_check`` write it into their ``--out`` folder, ``mtseg.evaluate``
into its output folder.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

#: The /proc/cpuinfo flags recorded: the vector and matrix units that decide how fast training runs on a CPU.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")

#: The repository (or installed tree) that holds the ``mtseg`` package.
REPOSITORY = Path(__file__).resolve().parents[2]


def command_line(module: str, argv: list[str] | None = None) -> str:
    """``python -m <module> <arguments>`` as typed (``argv``: the arguments; default ``sys.argv[1:]``)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", module, *arguments])


def git_state(repository: Path = REPOSITORY) -> dict | None:
    """``{"commit": <hash>, "dirty": <uncommitted changes to tracked files>}``; None without git or a repository."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], cwd=repository, capture_output=True, text=True, check=True, timeout=30).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):  # no git, not a repository, no commit yet
        return None
    return {"commit": commit, "dirty": dirty}


def cpu() -> dict:
    """The CPU's model name, which of :data:`CPU_FLAGS` it has (None where unknown) and the core counts."""
    model, flags = None, None
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model is None:
                    model = value.strip()
                elif key.strip() == "flags" and flags is None:
                    flags = set(value.split())
    except OSError:  # not Linux
        pass
    import torch

    return {
        "model": model or platform.processor() or None,
        "flags": None if flags is None else {flag: flag in flags for flag in CPU_FLAGS},
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def gpus() -> list[str]:
    """The names of the GPUs torch sees (none without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def versions() -> dict:
    import torch

    try:
        mtseg = metadata.version("mtseg")
    except metadata.PackageNotFoundError:
        mtseg = None
    return {"mtseg": mtseg, "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "platform": platform.platform()}


def provenance(command: list[str] | str, started: float, **extra) -> dict:
    """The record :func:`write_provenance` writes (``started``: ``time.time()`` when the command began)."""
    return {
        "command": command if isinstance(command, str) else shlex.join(command),
        "git": git_state(),
        "cpu": cpu(),
        "gpus": gpus(),
        "versions": versions(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(time.time() - started, 1),
        **extra,
    }


def write_provenance(out: Path, command: list[str] | str, started: float, **extra) -> Path:
    """Write ``out/provenance.json`` atomically (see :func:`provenance`); returns its path."""
    from mtseg.nifti import atomic_write_bytes

    path = Path(out) / "provenance.json"
    text = json.dumps(provenance(command, started, **extra), indent=2) + "\n"
    atomic_write_bytes(path, lambda temporary: Path(temporary).write_text(text))
    return path
