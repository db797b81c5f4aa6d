"""Peak-memory measurement shared by the benchmark scripts.

On CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated at the start. On CPU (Linux):
the process's peak resident set (VmHWM), reset through ``/proc/self/clear_refs`` at the start,
minus the resident set at that moment — so the figure belongs to the measured code alone, not to
imports or set-up. Run each method in its own process so one method's peak never hides another's.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.bytes`` (at least 1)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self._base = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            peak = _status_kib("VmHWM") * 1024 - self._base
        self.bytes = max(int(peak), 1)
