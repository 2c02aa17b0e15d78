"""A small, real DDP training on gloo (CPU) that runs unchanged under torchrun and corral.

    torchrun --standalone --nproc-per-node 2 examples/train_ddp.py --ckpt-dir /tmp/ck --out /tmp/p.pt
    corral   --standalone --nproc-per-node 2 examples/train_ddp.py --ckpt-dir /tmp/ck --out /tmp/p.pt

Everything is deterministic: the model is initialised from ``--seed`` and the batch
of step ``s`` on rank ``r`` is drawn from a generator seeded with (seed, s, r), so
a run that crashes and resumes from its last checkpoint ends with exactly the
same parameters as a run that never stopped.

Rank 0 writes a checkpoint (model, optimizer, step) atomically every
``--ckpt-every`` steps; every rank resumes from it at start. With
``--crash-at-step S --crash-once-marker PATH`` rank 1 raises at step S the first
time only (the marker file remembers it), through torch's ``record``, so the
launcher gets an error file. ``--hang-at-step S --hang-rank R --hang-once-marker
PATH`` makes rank R hang at step S the first time only: it sleeps forever in
``hang_here`` (or freezes itself with SIGSTOP, ``--hang-how sigstop``). Rank 0 writes the final parameters to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel as DDP

IN, HIDDEN, OUT, BATCH = 64, 256, 8, 64


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--ckpt-every", type=int, default=25)
    p.add_argument("--ckpt-dir", default=None, help="checkpoint directory (resume from it)")
    p.add_argument("--out", default=None, help="rank 0 writes the final parameters here")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--crash-at-step", type=int, default=None)
    p.add_argument("--crash-once-marker", default=None)
    p.add_argument("--crash-rank", type=int, default=1)
    p.add_argument("--hang-at-step", type=int, default=None, help="hang once (marker) at step S")
    p.add_argument("--hang-rank", type=int, default=1)
    p.add_argument("--hang-how", choices=("sleep", "sigstop"), default="sleep")
    p.add_argument("--hang-once-marker", default=None)
    p.add_argument("--log-every", type=int, default=0, help="rank 0 prints 'step N' every N steps")
    return p.parse_args(argv)


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(IN, HIDDEN),
        nn.Tanh(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.Tanh(),
        nn.Linear(HIDDEN, OUT),
    )


def batch(seed: int, step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of ``step`` on ``rank``: a function of (seed, step, rank) only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)
    x = torch.randn(BATCH, IN, generator=g)
    # a fixed nonlinear target, so the loss actually goes down
    w = torch.Generator().manual_seed(seed)
    target_w = torch.randn(IN, OUT, generator=w)
    y = torch.sin(x @ target_w)
    return x, y


def checksum(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        # bytes without numpy: torch's CPU wheel does not bring it
        h.update(bytes(t.detach().contiguous().view(-1).view(torch.uint8).tolist()))
    return h.hexdigest()[:16]


def save_checkpoint(path: str, model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    """Write atomically: a temporary file in the same directory, fsync, then rename."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def hang_here(how: str) -> None:
    """Stop making progress for good: sleep forever, or freeze (SIGSTOP to itself)."""
    if how == "sigstop":
        os.kill(os.getpid(), signal.SIGSTOP)
    while True:
        time.sleep(3600)


def ordered_mean_hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks the annotation at run time
    """DDP's gradient average, summed in rank order.

    gloo's all-reduce sums in an order that depends on where a gradient sits in
    its bucket, and DDP lays the buckets out anew after the first iteration: a
    run resumed from a checkpoint would then differ in the last bits from one
    that never stopped (with more than two ranks). Gathering every rank's bucket
    and summing in rank order gives the same bits in every iteration.
    """
    t = bucket.buffer()
    world = dist.get_world_size()
    parts = [torch.empty_like(t) for _ in range(world)]
    fut = dist.all_gather(parts, t, async_op=True).get_future()

    def mean(f: torch.futures.Future[object]) -> torch.Tensor:
        f.wait()  # raises if the gather failed; parts are filled in
        total = parts[0].clone()
        for p in parts[1:]:
            total.add_(p)
        return total.div_(world)

    return fut.then(mean)


@record
def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)  # same arithmetic on every run, whatever the launcher sets
    dist.init_process_group("gloo")  # env:// from MASTER_ADDR/PORT, RANK, WORLD_SIZE
    rank, world = dist.get_rank(), dist.get_world_size()
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    model = make_model(args.seed)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    ddp: DDP | None = None
    try:
        start = 0
        ckpt = os.path.join(args.ckpt_dir, "ckpt.pt") if args.ckpt_dir else None
        if ckpt and os.path.exists(ckpt):
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optim"])
            start = int(state["step"]) + 1
        print(f"rank {rank}/{world} restart {restart}: starting at step {start}", flush=True)
        ddp = DDP(model)
        ddp.register_comm_hook(None, ordered_mean_hook)
        dist.barrier()  # everyone has read the checkpoint before rank 0 may write the next
        loss_fn = nn.MSELoss()
        loss = torch.tensor(0.0)
        t0 = time.monotonic()
        for step in range(start, args.steps):
            if (
                args.crash_at_step is not None
                and step == args.crash_at_step
                and rank == args.crash_rank
                and args.crash_once_marker
                and not os.path.exists(args.crash_once_marker)
            ):
                with open(args.crash_once_marker, "w") as f:
                    f.write(f"{time.time()}\n")
                raise RuntimeError(f"injected crash at step {step} on rank {rank}")
            if (
                args.hang_at_step is not None
                and step == args.hang_at_step
                and rank == args.hang_rank
                and args.hang_once_marker
                and not os.path.exists(args.hang_once_marker)
            ):
                with open(args.hang_once_marker, "w") as f:
                    f.write(f"{time.time()}\n")
                hang_here(args.hang_how)
            x, y = batch(args.seed, step, rank)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(ddp(x), y)
            loss.backward()  # DDP all-reduces (averages) the gradients over gloo
            opt.step()
            if ckpt and rank == 0 and (step + 1) % args.ckpt_every == 0:
                os.makedirs(args.ckpt_dir, exist_ok=True)
                save_checkpoint(ckpt, model, opt, step)
            if args.log_every and rank == 0 and (step + 1) % args.log_every == 0:
                print(f"step {step + 1}", flush=True)
        took = time.monotonic() - t0
        digest = checksum(model)
        print(
            f"rank {rank}: done {args.steps} steps ({args.steps - start} here in {took:.2f}s), "
            f"loss {loss.item():.6f}, params sha256 {digest}",
            flush=True,
        )
        if rank == 0 and args.out:
            tmp = f"{args.out}.tmp.{os.getpid()}"
            torch.save({k: v.clone() for k, v in model.state_dict().items()}, tmp)
            os.replace(tmp, args.out)
        dist.barrier()
    finally:
        # Drop DDP (its reducer holds the process group) before destroying the group;
        # otherwise gloo may abort at interpreter exit.
        del ddp
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # The work is done and saved, and the process group destroyed. gloo can still abort
    # in the interpreter's teardown ("terminate called without an active exception":
    # its threads outliving Python), which would turn a finished training into exit 134
    # (SIGABRT). Leave without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
