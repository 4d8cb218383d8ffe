"""The whole training step as one CUDA graph (``train.cuda_graphs``): captured once, replayed.

At the paper's batch (B = 32, T = 10) a step is ≈ 1,300 small kernels, and launching them
from Python, not computing them, sets the GPU's rate (docs/PERFORMANCE.md). A CUDA graph
records the launches of one step (forward, backward, clipping, the masked Adam update) and
replays them with one call. The rules it imposes, and how the step meets them:

* **Static inputs.** The step reads only from buffers that outlive it: each step copies its
  frames (B, T, C, H, W), its reparameterisation noise (B, T, K, d) and its KL weight into
  them. The noise is drawn outside the graph, from the run's own generator, so a graphed run
  draws exactly the noise an eager one draws.
* **No host round-trip.** The update is decided on the device (:mod:`~indpred.train.update`)
  and Adam is ``capturable`` on a GPU (:mod:`~indpred.train.setup`).
* **Warm-up first.** The first :data:`WARMUP` steps at a shape run eagerly on a side stream
  (cuDNN picks its algorithms, Adam makes its state, the allocator settles); the next is
  captured and replayed, and every later one only replayed.
* **Re-capture** when the inputs' shapes change, or the graph's key: what a graph bakes in
  as a number, here the learning rate (a Python float to Adam, so it changes only every
  ``train.lr_decay_every`` steps). Evaluation never goes through the graph (its last batch
  is shorter).

``CudaCapture`` records on the device; ``EagerCapture`` is its stand-in for tests on a CPU,
"replaying" by running the step again, so that everything but the recording itself is tested.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import Tensor

from indpred.distributed import Ranks
from indpred.errors import UserError

WARMUP = 3  # eager steps before the capture (torch's advice for a whole-network capture)

Body = Callable[[dict[str, Tensor]], Tensor]  # the step, reading its static inputs; returns its figures


class Capture(Protocol):
    """One recorded step: ``replay()`` runs it on the static inputs and returns its output."""

    def __init__(self, step: Callable[[], Tensor], device: torch.device) -> None: ...

    def replay(self) -> Tensor: ...


class CudaCapture:
    """``step`` recorded as a CUDA graph; its output lives in the graph's memory, rewritten by each replay."""

    def __init__(self, step: Callable[[], Tensor], device: torch.device) -> None:
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a DataLoader's pin-memory thread allocating pinned memory meanwhile
        # (train.data_workers with data prepared on the CPU) does not spoil the capture
        with torch.cuda.device(device), torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.output = step()

    def replay(self) -> Tensor:
        self.graph.replay()
        return self.output


class EagerCapture:
    """A stand-in for :class:`CudaCapture` on a CPU: records nothing; a replay runs ``step``."""

    def __init__(self, step: Callable[[], Tensor], device: torch.device) -> None:
        self.step = step

    def replay(self) -> Tensor:
        return self.step()


def capture_for(device: torch.device, ranks: Ranks) -> type[Capture]:
    """How a run on ``device`` records its step, or one line saying why it cannot."""
    if device.type != "cuda":
        raise UserError(f"train.cuda_graphs needs a CUDA GPU, and this run is on {device.type}; "
                        "use --device cuda or drop train.cuda_graphs")
    if ranks.active:
        raise UserError("train.cuda_graphs runs in one process, not under torchrun "
                        f"({ranks.world} ranks); drop train.cuda_graphs there")
    return CudaCapture


@contextmanager
def side_stream(device: torch.device) -> Iterator[None]:
    """Run the block on a fresh CUDA stream ordered after, and before, the current one (no-op on a CPU)."""
    if device.type != "cuda":
        yield
        return
    current = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        yield
    current.wait_stream(stream)


class StepGraph:
    """A training step run through a CUDA graph: ``graph(key, frames=..., noise=..., ...)``.

    Each input (a tensor, or a number that becomes a 0-d float32 tensor) is copied into a
    static buffer of its shape; ``body`` reads those buffers and returns the step's figures,
    which come back as a fresh tensor (the graph's own output is overwritten by the next
    replay). ``key`` is what the capture bakes in beside the shapes (the learning rate).
    """

    def __init__(self, body: Body, device: torch.device, capture: type[Capture] = CudaCapture,
                 warmup: int = WARMUP) -> None:
        self.body, self.device, self.capture, self.warmup = body, device, capture, warmup
        self.static: dict[str, Tensor] = {}
        self.shapes: tuple | None = None
        self.key: Hashable = None
        self.graph: Capture | None = None
        self.warm = 0  # eager steps run at the current shapes
        self.captures = 0  # how many times the step was recorded (the tests read it)

    def __call__(self, key: Hashable, **inputs: Tensor | float) -> Tensor:
        shapes = tuple((name, tuple(v.shape), v.dtype) if torch.is_tensor(v) else (name, (), torch.float32)
                       for name, v in inputs.items())
        if shapes != self.shapes:  # new buffers, and warm up again before recording
            self.static = {name: torch.empty(shape, dtype=dtype, device=self.device)
                           for name, shape, dtype in shapes}
            self.shapes, self.graph, self.warm = shapes, None, 0
        if key != self.key:
            self.key, self.graph = key, None
        for name, v in inputs.items():  # a number is a fill, a kernel argument: no copy from the host
            if torch.is_tensor(v):
                self.static[name].copy_(v)
            else:
                self.static[name].fill_(v)
        if self.graph is None and self.warm < self.warmup:
            self.warm += 1
            with side_stream(self.device):
                return self.body(self.static)
        if self.graph is None:
            self.graph = self.capture(lambda: self.body(self.static), self.device)
            self.captures += 1
        return self.graph.replay().clone()
