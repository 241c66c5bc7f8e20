"""Build DeepSpeed's CPU shared-memory collective op (`deepspeed_shm_comm`) once, at install.

DeepSpeed JIT-compiles it (2-3 min on a small CPU; cached in ~/.cache/torch_extensions, or
$TORCH_EXTENSIONS_DIR) the first time a CPU process creates its torch.distributed backend —
otherwise inside whichever test first starts an engine. This makes the same call that backend
does, so the cache entry is the one the trainer loads. CPU only: with a GPU the op is not used.
Never fails the install: a failed build only means the first run builds it (or falls back to gloo).
"""

import sys
import time
from pathlib import Path

STALE_S = 15 * 60  # a build takes 2-3 min; a lock this old was left by a killed build


def clear_stale_lock() -> None:
    """torch's extension builder waits forever on the `lock` file a killed build leaves behind
    (every later DeepSpeed init on CPU then hangs silently): remove one that is clearly stale."""
    try:  # a private torch helper: where it is gone, leave the lock to torch
        from torch.utils.cpp_extension import _get_build_directory

        lock = Path(_get_build_directory("deepspeed_shm_comm", verbose=False)) / "lock"
    except (ImportError, TypeError):
        return
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_S:
        print(f"deepspeed_shm_comm: removing a stale build lock ({lock})")
        lock.unlink(missing_ok=True)


def main() -> int:
    try:
        import torch

        if torch.cuda.is_available():
            print("deepspeed_shm_comm: GPU present, not needed (skipped)")
            return 0
        from deepspeed.accelerator import get_accelerator

        if get_accelerator().device_name() != "cpu":
            print(f"deepspeed_shm_comm: accelerator is {get_accelerator().device_name()}, not needed (skipped)")
            return 0
        try:
            from deepspeed.comm.torch import build_shm_op  # what TorchBackend.__init__ calls
        except ImportError:  # another DeepSpeed layout: load the builder directly

            def build_shm_op():
                builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
                return builder.load() if builder is not None else None

        clear_stale_lock()
        print(
            "deepspeed_shm_comm: building/loading DeepSpeed's CPU collective op (a few minutes the first time)",
            flush=True,
        )
        if build_shm_op() is None:
            print("deepspeed_shm_comm: not compatible with this machine (skipped; DeepSpeed uses gloo alone)")
    except Exception as err:
        print(f"deepspeed_shm_comm: build failed, the first DeepSpeed run will retry it: {err}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
