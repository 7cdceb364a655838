"""The default process group ends before Python does.

`accelerate launch` starts every process with a torch.distributed group (gloo on CPUs, NCCL on GPUs) that nothing
destroys on a normal exit. Gloo's worker threads then outlive the interpreter: at finalisation one may still hold
a finished collective's tensors, and freeing them aborts the process ("terminate called without an active
exception", SIGABRT) after every step, checkpoint and log line was written, so the launcher reports a failed run.
PyTorch asks scripts to call `destroy_process_group()` themselves; every entry point that may run in a launched
group (the Trainer, `image prepare`, `image sample`) calls `destroy_at_exit()`, which does that from an atexit
hook: it runs once, after the script returns or raises, while the interpreter is still whole.
"""

from __future__ import annotations

import atexit

_registered = False


def destroy_at_exit() -> None:
    """Destroy the default process group (if one is still up) when this process exits; idempotent."""
    global _registered
    if not _registered:
        atexit.register(_destroy)
        _registered = True


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
