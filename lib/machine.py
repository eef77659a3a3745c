"""What a process runs on: for the landing page and the benchmarks."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


def describe() -> dict:
    """What this process runs on, for the landing page and the benchmarks."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version()}


def text(m: dict | None = None) -> str:
    m = m or describe()
    return f"{m['cores']}-core CPU ({m['cpu']})" + (f", {m['gpu']}" if m["gpu"] else ", no GPU")
