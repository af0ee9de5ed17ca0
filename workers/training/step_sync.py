"""What the training processes of a multi-GPU job agree on once per optimizer step: the real tokens they trained
on together, and whether to stop (a cancel seen by rank 0 stops every rank at the same step, or the ranks that
went on would wait forever in their next gradient reduction).

One process (the usual case) syncs nothing: the counts stay local and the stop is its own.
"""

from __future__ import annotations

from typing import Any


def world_size() -> int:
    """How many training processes this run has (1 outside torchrun)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank among the run's training processes (0 outside torchrun)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class StepSync:
    """Collects this process's real-token count between optimizer steps, and sums it (and the stop votes) over the
    ranks at each step's end: one small all-reduce a step, none with one process."""

    def __init__(self) -> None:
        self.pending_tokens = 0

    def step_end(self, stop: bool) -> tuple[int, bool]:
        """(real tokens all ranks trained on since the last step, whether any rank asked to stop)."""
        tokens, self.pending_tokens = self.pending_tokens, 0
        if world_size() == 1:
            return tokens, stop
        summed = sum_over_ranks([float(tokens), float(stop)])
        return int(summed[0]), summed[1] > 0

    @staticmethod
    def device() -> Any:
        """Where the collective's tensor must live: the rank's GPU under NCCL, the CPU under gloo."""
        import torch
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def sum_over_ranks(values: list[float]) -> list[float]:
    """Each value summed over every rank (a collective: every rank must call it at the same point)."""
    if world_size() == 1:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=StepSync.device())
    dist.all_reduce(tensor)
    return tensor.tolist()
