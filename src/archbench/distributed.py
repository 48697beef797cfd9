"""Evaluations across processes (torchrun / accelerate launch, one or more nodes): units, one writer, timeouts.

Design (issue 14; the failure list is lm-evaluation-harness's: aggregation hangs #3143, uneven shards #951,
rank-keyed caches #1372/#3715). Work is cut into *units* that need no communication: model x shots x trial x
a chunk of a breakdown group's items, the chunk a run of consecutive rows of the length-sorted group (a whole
number of batches), so the units, and therefore every generate call and its batches, are the same whatever
the process count: a 2-process run gives exactly the predictions of a 1-process run. Units are handed out
longest-first (LPT, Graham 1969) by estimated cost (parameters x tokens), a pure function of the unit list
and the world size, so every rank computes the same assignment without talking.

One writer. Rank 0 alone opens the SQLite store and writes run.json and predictions.jsonl. Every rank,
rank 0 included, appends each finished batch as one JSON line to a shard file named by the unit's content
(`<run_dir>/shards/<digest>.jsonl`, no rank in any name), flushed and fsynced. When all ranks are done
rank 0 merges the shards into the store in plan order (so rows land in the order a 1-process run writes
them) and deletes them; at the start of every run it first merges the leftovers of an interrupted run
(a torn last line is dropped, a batch already stored is skipped), which is how a run resumes under another
process count. The shards travel through the run directory, so on several nodes it must be on a shared
file system (checked at start: every rank must see rank 0's attempt file). Ranks other than 0 never open
the store: rank 0 broadcasts what is done.

Talking is only control: a gloo process group of its own (CPU sockets, also beside NCCL on GPU nodes)
carries the start broadcast, the end barrier and the per-rank timings; every call has `rank_timeout_s`,
and a timeout or a lost peer becomes one line (`RankError`) instead of a hang. A fault can be injected for
tests: ARCHBENCH_FAULT="die:RANK:N" exits rank RANK after its N-th batch, "hang:RANK:N" makes it sleep.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

SHARDS = "shards"
ATTEMPT = "attempt.log"  # rank 0's attempt id, read by the other ranks (the shared file system check)
_GROUP: dict = {}  # the control group of this process, created once (a study calls evaluate several times)


class RankError(ValueError):
    """Another process died or timed out; the message is one line (a ValueError: the CLI prints it as one)."""


@dataclass
class Ranks:
    """This process's place in the launch; world 1 is a plain single process (no process group)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    timeout_s: float = 1800.0
    group: object = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def ranks(timeout_s: float) -> Ranks:
    """This process's ranks from torchrun's / accelerate's environment; joins the control group if world > 1."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    r = Ranks(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")),
              int(env.get("LOCAL_WORLD_SIZE", "1")), timeout_s)
    if world == 1:
        return r
    import torch.distributed as dist

    wait = timedelta(seconds=timeout_s)
    if timeout_s not in _GROUP:
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=wait)
        _GROUP[timeout_s] = dist.new_group(backend="gloo", timeout=wait)
    r.group = _GROUP[timeout_s]
    return r


def is_main() -> bool:
    """Whether this process is rank 0 (or the only one): the one that writes the store, files and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def _guard(r: Ranks, what: str, fn):
    try:
        return fn()
    except (RuntimeError, ConnectionError) as err:  # gloo timeouts and lost peers (DistBackendError is one)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise RankError(f"rank {r.rank}/{r.world}: {what}: another process died or did not answer within "
                        f"--rank-timeout {r.timeout_s:g}s ({first}); rerun the same command to resume") from None


def broadcast(r: Ranks, obj, what: str):
    """Rank 0's `obj` on every rank."""
    if r.world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    _guard(r, what, lambda: dist.broadcast_object_list(box, src=0, group=r.group))
    return box[0]


def gather(r: Ranks, obj, what: str) -> list:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere); also the barrier before the merge."""
    if r.world == 1:
        return [obj]
    import torch.distributed as dist

    _guard(r, what, lambda: dist.monitored_barrier(group=r.group, timeout=timedelta(seconds=r.timeout_s)))
    out = [None] * r.world if r.main else None
    _guard(r, what, lambda: dist.gather_object(obj, out, dst=0, group=r.group))
    return out


# units and their assignment -----------------------------------------------------------------------------
@dataclass
class Unit:
    """A chunk of one model x shots x trial x group: (item, prompt) pairs in length-sorted order."""

    model: str
    shots: int
    trial: int
    pairs: list
    cost: float  # estimated work: parameters x (prompt + new tokens)
    index: int = 0  # place in the plan (merge order)
    key: str = field(init=False)

    def __post_init__(self):
        ids = [item.id for item, _ in self.pairs]
        text = json.dumps([self.model, self.shots, self.trial, ids])
        self.key = hashlib.sha1(text.encode()).hexdigest()[:20]


def chunks(pairs: list, batch_size: int, batches_per_unit: int) -> list[list]:
    """A group's (item, prompt) pairs sorted longest first (as the engine batches them) and cut into runs of
    whole batches; with batch size auto (0) the group stays one unit, its batches are the engine's to cut."""
    ordered = sorted(pairs, key=lambda p: -p[1].n_tokens)
    size = batch_size * batches_per_unit if batch_size > 0 else len(ordered)
    return [ordered[i:i + size] for i in range(0, len(ordered), max(size, 1))]


def assign(costs: list[float], world: int, loads: list[float] | None = None) -> list[int]:
    """Rank of every unit: longest first onto the least loaded rank (ties: lowest rank); `loads` carries the
    ranks' estimated work over from earlier models and is updated in place."""
    loads = loads if loads is not None else [0.0] * world
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        owner[i], loads[r] = r, loads[r] + costs[i]
    return owner


# shards: the batches of every rank on their way to the one writer -------------------------------------------
def shard_path(run_dir: Path, unit: Unit) -> Path:
    return run_dir / SHARDS / f"{unit.key}.jsonl"


def append(path: Path, line: dict) -> None:
    """One finished batch, durable before the next one starts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_shard(path: Path) -> list[dict]:
    """The batches of a shard; a torn last line (a process killed while writing it) is dropped."""
    out = []
    for text in path.read_text().splitlines():
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError:
            continue
    return out


def merge(store, run_id: str, paths: list[Path]) -> int:
    """Write the shards' batches to the store (skipping batches already stored) and delete the shards."""
    merged = 0
    for path in paths:
        if not path.exists():
            continue
        for b in read_shard(path):
            done = store.done_ids(run_id, b["model"], b["shots"], b["trial"])
            if all(row["id"] in done for row in b["rows"]):
                continue  # merged before a crash that left the shard behind
            store.add_batch(run_id, b["model"], b["shots"], b["trial"], b["rows"], b["batch"])
            merged += 1
        path.unlink()
    return merged


def tidy(run_dir: Path) -> None:
    """Remove the attempt file and the emptied shards folder after a completed merge."""
    folder = run_dir / SHARDS
    (folder / ATTEMPT).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def leftovers(run_dir: Path) -> list[Path]:
    return sorted((run_dir / SHARDS).glob("*.jsonl")) if (run_dir / SHARDS).is_dir() else []


# tests: a deterministic fault --------------------------------------------------------------------------------
def fault(r: Ranks, batches_done: int) -> None:
    """ARCHBENCH_FAULT="die:RANK:N" / "hang:RANK:N": after its N-th batch, rank RANK exits / stops answering."""
    spec = os.environ.get("ARCHBENCH_FAULT", "")
    if not spec:
        return
    kind, rank, after = spec.split(":")
    if int(rank) != r.rank or batches_done != int(after):
        return
    if kind == "die":
        os._exit(17)  # like a kill -9: no cleanup, no message
    time.sleep(10 ** 6)
