"""The paged engine's host-to-device upload of each step's int64 inputs without a host sync (a ring
of pinned buffers on CUDA)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class _Uploader:
    """Host-to-device copies of each step's int64 inputs without a host sync: on CUDA through a
    ring of pinned buffers (a buffer is rewritten only once its previous copy has run, by its
    event) into one device buffer (its readers are on the same stream, so the next copy waits for
    them); on the CPU the array itself."""

    def __init__(self, device: torch.device, depth: int):
        self.device = device
        self.cuda = device.type == "cuda"
        self.ring: list[Tensor | None] = [None] * depth
        self.events: list[torch.cuda.Event | None] = [None] * depth
        self.k = 0
        self.dev: Tensor | None = None

    def __call__(self, array: np.ndarray) -> Tensor:
        if not self.cuda:
            return torch.from_numpy(array)
        n = len(array)
        k = self.k = (self.k + 1) % len(self.ring)
        if self.events[k] is not None:
            self.events[k].synchronize()
        if self.ring[k] is None or len(self.ring[k]) < n:
            self.ring[k] = torch.empty(max(n, 1 << 16), dtype=torch.long, pin_memory=True)
        if self.dev is None or len(self.dev) < n:
            self.dev = torch.empty(max(n, 1 << 16), dtype=torch.long, device=self.device)
        self.ring[k][:n].copy_(torch.from_numpy(array))
        self.dev[:n].copy_(self.ring[k][:n], non_blocking=True)
        event = self.events[k] = torch.cuda.Event()
        event.record()
        return self.dev[:n]
