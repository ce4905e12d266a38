"""Data-parallel training under ``torchrun``: one process per device, torch's own collectives.

``torchrun --nproc_per_node N -m vmd_cli train ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment;
:func:`join` reads them and joins the process group (NCCL between GPUs, gloo between CPU
processes). Without them the run is one process and nothing here talks to anyone.

Each step's global batch (``train.batch_size``) is cut into ``world size x train.accumulate``
shards of equal size; shard k is drawn from its own data and noise streams (shard 0's are the
single-process run's), by rank k // accumulate. So one process accumulating two shards
computes the same step as two processes of one shard each, up to the order of float sums,
and a run can resume under another world size with the same number of shards exactly.

Besides the device backend, a gloo group carries the small host-side messages: the stop flag
every rank reads at every step boundary (a SIGTERM that reached some ranks first still stops
all of them after the same step), errors found by rank 0 alone, random states to save.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vmd.runtime.errors import ConfigError, VmdError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DATA_TIMEOUT = datetime.timedelta(hours=6)  # a first download or puzzle pool may take long; device.timeout is for steps


class RankError(VmdError):
    """An error of this process alone (the CLI prints it on every rank, naming the rank)."""


class RendezvousError(RankError):
    """The processes of a distributed run could not all meet (an address not reached, a timeout)."""


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    host_group: object = None  # the gloo group of host-side messages (None: one process)
    data_group: object = None  # gloo, waiting up to DATA_TIMEOUT: while one process per node fills a data cache

    @property
    def main(self) -> bool:
        """Whether this process writes the run (checkpoints, metrics, progress): rank 0."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, kind: str) -> torch.device:
        """This rank's device of ``kind``: cuda:LOCAL_RANK for CUDA, the CPU otherwise."""
        return torch.device("cuda", self.local_rank) if kind == "cuda" else torch.device(kind)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.host_group)
        return bool(t.item())

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of ``t`` over ranks (a new tensor on ``t``'s device)."""
        if not self.distributed:
            return t
        t = t.clone()
        dist.all_reduce(t, group=None if t.device.type == "cuda" else self.host_group)
        return t

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` (a picklable value this process made: never data from a file), on rank 0."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size if self.main else None
        dist.gather_object(obj, out, dst=0, group=self.host_group)
        return out

    def on_main(self, work):
        """``work()`` on rank 0 alone (None elsewhere): making the run directory, writing a
        checkpoint. What it raises, every rank raises (the same class and line), so that all of
        them stop or none."""
        if not self.distributed:
            return work()
        result, msg = None, [None]
        if self.main:
            try:
                result = work()
            except Exception as e:  # noqa: BLE001 - sent to the other ranks, then raised here too
                msg = [f"{type(e).__name__}\n{e}"]
                error = e
        dist.broadcast_object_list(msg, src=0, group=self.host_group)
        if msg[0] is not None:
            if self.main:
                raise error
            kind, text = msg[0].split("\n", 1)
            raise _ERRORS.get(kind, VmdError)(text)
        return result

    @contextlib.contextmanager
    def first_on_each_node(self):
        """Local rank 0 of each node runs the block first (e.g. downloads text8 or makes a puzzle pool
        into the data cache), the others after, waiting up to DATA_TIMEOUT for it."""
        if self.local_rank != 0:
            self._data_barrier()
        yield
        if self.local_rank == 0:
            self._data_barrier()

    def _data_barrier(self) -> None:
        if not self.distributed:
            return
        try:
            dist.barrier(group=self.data_group)
        except RuntimeError as e:
            raise RankError(f"waited {DATA_TIMEOUT.total_seconds() / 3600:g} h for the data to be prepared by local "
                            f"rank 0: {_first_line(e)}") from None


def _errors() -> dict[str, type]:
    from vmd.runtime import errors
    return {name: cls for name, cls in vars(errors).items() if isinstance(cls, type) and issubclass(cls, VmdError)}


_ERRORS = _errors()
_WORLD: World | None = None


def _first_line(e: BaseException) -> str:
    """A torch.distributed error in one line (its messages run on with native details)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def launched() -> bool:
    """Whether this process was started by torchrun (or its environment) as one of several."""
    try:
        return int(os.environ.get("WORLD_SIZE") or 1) > 1
    except ValueError:
        return True  # join says what is wrong with it


def env_rank() -> int:
    """This process's rank as torchrun's environment gives it (0 when it is not one of several)."""
    try:
        return int(os.environ.get("RANK") or 0) if launched() else 0
    except ValueError:
        return 0


@contextlib.contextmanager
def _native_stderr_held():
    """c10d's C++ logger prints each failed connection attempt of the rendezvous with a native stack
    trace; held here and dropped: the one-line RendezvousError says what failed. (The rest of the
    run keeps torch's C++ log, e.g. NCCL's watchdog.)"""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def join(device_kind: str, timeout_s: float) -> World:
    """This process's place in the run: joins the process group the first time (NCCL for CUDA,
    gloo otherwise) and returns the same ``World`` after. One process: ``World()``. A rank that
    cannot reach the others within ``timeout_s`` raises ``RendezvousError`` (one line)."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if not launched():
        _WORLD = World()
        return _WORLD
    missing = [k for k in ENV if k not in os.environ]
    if missing:
        raise RendezvousError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} "
                              "is not set; start the processes with torchrun")
    try:
        rank, size, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise RendezvousError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; start the processes with torchrun") from None
    if device_kind == "cuda":
        if local >= torch.cuda.device_count():
            raise RankError(f"LOCAL_RANK {local} has no GPU: this node has {torch.cuda.device_count()}; "
                            "start at most that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(local)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        with _native_stderr_held():
            dist.init_process_group(backend, timeout=timeout)
            host = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
            data = dist.new_group(backend="gloo", timeout=DATA_TIMEOUT)
            dist.barrier(group=host)  # every rank is here, or a timeout
    except (RuntimeError, ValueError, OSError) as e:  # DistStoreError and the backends' errors are RuntimeErrors
        raise RendezvousError(f"could not meet the other {size - 1} process(es) at {where} within {timeout_s:g} s "
                              f"(device.timeout): {_first_line(e)}") from None
    _WORLD = World(rank, size, local, host, data)
    return _WORLD


def leave() -> None:
    """Leave the process group (at the end of a run; harmless when there is none)."""
    global _WORLD
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = None


def check_batch(batch_size: int, w: World, accumulate: int) -> int:
    """The size of one shard of the global batch, or a one-line error if it does not divide."""
    shards = w.size * accumulate
    if batch_size % shards:
        raise ConfigError(f"train.batch_size ({batch_size}) is the global batch and must divide into {w.size} "
                          f"process(es) x {accumulate} accumulation step(s) (train.accumulate); "
                          f"use a multiple of {shards}")
    return batch_size // shards


def _stream_name(kind: str, shard: int) -> str:
    return kind if shard == 0 else f"{kind}.{shard}"


def shard_seeds(seed: int, shard: int, step: int = 0) -> tuple[int, int]:
    """The data and noise seeds of ``shard``: shard 0's are a single-process run's (seed, seed + 1).
    ``step`` > 0: a fresh stream for a shard that a resumed run has and its checkpoint had not."""
    base = seed if shard == 0 and step == 0 else (seed * 1_000_003 + 7_919 * shard + 104_729 * step) % 2**62
    return base, base + 1


class Streams:
    """The data (CPU) and noise (on the training device) random generators of this process's shards."""

    def __init__(self, seed: int, shards: range, noise_device: torch.device):
        self.seed, self.shards = seed, shards
        seeds = [shard_seeds(seed, k) for k in shards]
        self.data = [torch.Generator().manual_seed(d) for d, _ in seeds]
        self.noise = [torch.Generator(device=noise_device).manual_seed(n) for _, n in seeds]

    def state(self) -> dict[str, torch.Tensor]:
        """The generators' states by stream name: ``data`` and ``noise`` for shard 0, ``data.K`` ..."""
        out = {}
        for k, d, n in zip(self.shards, self.data, self.noise):
            out[_stream_name("data", k)], out[_stream_name("noise", k)] = d.get_state(), n.get_state()
        return out

    def restore(self, saved: dict[str, torch.Tensor], step: int, set_state) -> None:
        """Each shard's saved states through ``set_state(generator, state, name)``; a shard the
        checkpoint has no stream for (it was saved by fewer processes) starts a fresh stream."""
        for k, d, n in zip(self.shards, self.data, self.noise):
            names = _stream_name("data", k), _stream_name("noise", k)
            if all(name in saved for name in names):
                set_state(d, saved[names[0]], names[0])
                set_state(n, saved[names[1]].to(torch.uint8), names[1])
            else:
                ds, ns = shard_seeds(self.seed, k, step)
                d.manual_seed(ds)
                n.manual_seed(ns)
