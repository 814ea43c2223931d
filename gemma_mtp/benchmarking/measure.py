"""Clocks, peak memory and a description of the machine, the same way for every method measured.

Peak memory is what the device's own allocator reports on CUDA (``torch.cuda.max_memory_allocated``).
On a CPU, Python-level tracers (tracemalloc) do not see torch's allocations, so the process's resident
set is used: on Linux its exact high-water mark (``VmHWM``, reset before each measurement through
``/proc/self/clear_refs``), elsewhere a background sampler.
"""

from __future__ import annotations

import os
import platform
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from gemma_mtp.benchmarking.tables import plural

__all__ = ["MachineInfo", "PeakMemory", "describe_machine", "elapsed_since", "synchronize"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a clock read afterwards includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _resident_hwm_bytes() -> int:
    match = re.search(r"VmHWM:\s+(\d+)\s+kB", _STATUS.read_text())
    if match is None:
        raise RuntimeError("/proc/self/status has no VmHWM line")
    return int(match.group(1)) * 1024


def _can_reset_hwm() -> bool:
    if not (_STATUS.exists() and _CLEAR_REFS.exists()):
        return False
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Context manager: ``peak_bytes`` is the highest memory use seen while it was open.

    ``kind`` names what was measured, for reports: ``"cuda allocated"``, ``"process RSS"`` (exact
    high-water mark) or ``"process RSS, sampled"`` (every ``interval_s``; short spikes may be missed).
    """

    def __init__(self, device: torch.device, *, interval_s: float = 0.005, force_sampling: bool = False):
        self.device = device
        self.interval_s = interval_s
        self.peak_bytes = 0
        if device.type == "cuda":
            self.kind = "cuda allocated"
        elif not force_sampling and _can_reset_hwm():
            self.kind = "process RSS"
        else:
            self.kind = "process RSS, sampled"
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.kind == "cuda allocated":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.kind == "process RSS":
            _CLEAR_REFS.write_text("5")
        else:
            self._sampler = threading.Thread(target=self._sample, name="gemma-mtp-rss", daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "cuda allocated":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self.kind == "process RSS":
            self.peak_bytes = _resident_hwm_bytes()
        else:
            self._stop.set()
            assert self._sampler is not None
            self._sampler.join()

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while True:
            self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
            if self._stop.wait(self.interval_s):
                return


@dataclass(frozen=True)
class MachineInfo:
    """Where a measurement was taken; printed next to every result."""

    system: str
    cpu: str
    cpu_cores: int
    torch_threads: int
    memory_gib: float
    accelerator: str
    python: str
    torch: str
    transformers: str
    date: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def lines(self) -> list[str]:
        return [
            f"system: {self.system}",
            f"CPU: {self.cpu}, {plural(self.cpu_cores, 'core')}, torch uses {plural(self.torch_threads, 'thread')}",
            f"memory: {self.memory_gib:.1f} GiB",
            f"accelerator: {self.accelerator}",
            f"software: Python {self.python}, torch {self.torch}, transformers {self.transformers}",
            f"date: {self.date}",
        ]


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def describe_machine(device: torch.device) -> MachineInfo:
    import psutil
    import transformers

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        accelerator = f"{props.name}, {props.total_memory / 2**30:.0f} GiB (CUDA {torch.version.cuda})"
    else:
        accelerator = "none (CPU)"
    return MachineInfo(
        system=f"{platform.system()} {platform.release()} ({platform.machine()})",
        cpu=_cpu_name(),
        cpu_cores=os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        memory_gib=psutil.virtual_memory().total / 2**30,
        accelerator=accelerator,
        python=platform.python_version(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def elapsed_since(start: float, device: torch.device) -> float:
    """Seconds since ``start`` (a ``time.perf_counter()`` value), after the device has finished."""
    synchronize(device)
    return time.perf_counter() - start
