"""The non-finite policy: a step whose loss or gradients are non-finite is skipped (no update)
up to train.skip_nonfinite times in a run; the next one stops the run before its update."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from huginn_db.checkpoint import find_checkpoint
from huginn_db.errors import NonFinite

log = logging.getLogger("huginn_db")


class GradientHooks:
    """Flags non-finite gradients as the backward produces them: a hook per parameter runs
    before DeepSpeed reduces or partitions the gradient, so detection is the same at every
    ZeRO stage (a non-finite gradient makes the gradient norm non-finite)."""

    def __init__(self, module: torch.nn.Module):
        self.flags: list[torch.Tensor] = []
        self.handles = [p.register_hook(self._hook) for p in module.parameters() if p.requires_grad]

    def _hook(self, grad):
        self.flags.append(torch.isfinite(grad).all())

    def bad(self, device) -> torch.Tensor:
        """This rank's verdict since the last call: a bool tensor on the device (no host read)."""
        flags, self.flags = self.flags, []
        if not flags:
            return torch.zeros((), dtype=torch.bool, device=device)
        return ~torch.stack(flags).all()


class StepGuard:
    """One optimizer step's verdict. The check is a collective, so all ranks skip or stop
    together (a rank that stopped alone would leave the others hanging in the all-reduce), and
    it is the step's only host read: each micro-batch's loss verdict stays on the device until
    the gradients of the last one are in."""

    def __init__(self, module: torch.nn.Module, limit: int, checkpoints: Path, device, skipped: int = 0):
        self.hooks, self.limit, self.checkpoints, self.device = GradientHooks(module), limit, checkpoints, device
        self.skipped, self.step, self.bad_part = skipped, 0, None
        self.losses: list[torch.Tensor] = []  # this step's micro-batch losses are non-finite
        self.preempt = False  # some rank was signalled (agreed by `check`)

    def begin(self, step: int) -> None:
        self.step, self.bad_part, self.losses = step, None, []

    @property
    def veto(self) -> bool:
        """Whether this step's update must not be applied."""
        return self.bad_part is not None

    def watch_loss(self, loss: torch.Tensor) -> None:
        """Before a micro-batch's backward: its verdict, kept on the device."""
        self.losses.append(~torch.isfinite(loss.detach()))

    def check(self, preempt: bool = False) -> None:
        """After the step's last backward, before the update: every micro-batch's loss, the
        gradients and a preemption request, agreed by all ranks in one all-reduce and read in
        one transfer. A non-finite loss needs no earlier stop: its backward only makes
        non-finite gradients, and the update waits for this verdict."""
        flags = torch.stack([*self.losses, self.hooks.bad(self.device)]).double()
        flags = torch.cat([flags, torch.tensor([float(preempt)], dtype=torch.float64).to(self.device)])
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        *losses, grads, self.preempt = (v > 0 for v in flags.tolist())
        self.losses = []
        if any(losses):
            self._flag(f"loss (micro-batch {losses.index(True)})")
        if grads:
            self._flag("gradient norm")

    def deepspeed_skipped(self) -> None:
        """DeepSpeed's own overflow check skipped the update (ZeRO-1/2 test the gradient norm)."""
        self.bad_part = self.bad_part or "gradient norm"

    def end(self) -> None:
        """Count a skipped step, or stop where the budget is spent."""
        if self.bad_part is None:
            return
        if self.skipped >= self.limit:  # only where DeepSpeed skipped before we saw it
            raise self._stop()
        self.skipped += 1
        log.warning(
            "step %d: %s non-finite, update skipped (%d of train.skip_nonfinite=%d)",
            self.step,
            self.bad_part,
            self.skipped,
            self.limit,
        )

    def _flag(self, part: str) -> None:
        self.bad_part = self.bad_part or part
        if self.skipped >= self.limit:
            raise self._stop()

    def _stop(self) -> NonFinite:
        last, _ = find_checkpoint(self.checkpoints) if self.checkpoints.is_dir() else (None, [])
        policy = (
            f"after skipping {self.skipped} step(s), the train.skip_nonfinite={self.limit} allowed"
            if self.limit
            else "train.skip_nonfinite=0"
        )
        return NonFinite(
            f"{self.bad_part} became non-finite at step {self.step} ({policy}); the run stopped "
            f"before the update; last good checkpoint: {self.checkpoints / last if last else 'none'}"
        )
