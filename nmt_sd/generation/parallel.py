"""Decode batches in several processes at once: inter-op parallelism for CPU decoding
(CTranslate2's ``inter_threads``). One process with T threads spends much of a beam
search step in work too small to split across threads (per-step vocabulary passes,
top-k, Python); P processes with T/P threads each decode P batches at once instead.

The model's tensors are shared with the worker processes (torch.multiprocessing puts
them in shared memory, no copy); the batches go to every worker and each takes the next
undecoded batch from a shared counter, so a slow batch does not hold the others up. The
calling process decodes too. Results come back in batch order, each batch decoded
exactly as a single process would (only the thread count differs).
"""

import logging
import pickle
import queue
import time
from typing import Any, Callable, Iterator

import torch

from nmt_sd.errors import NmtSdError

logger = logging.getLogger(__name__)

# (model, batch) -> hypotheses; picklable
Decode = Callable[[torch.nn.Module, dict], Any]


def decode_batches(
    model: torch.nn.Module,
    batches: list,
    decode: Decode,
    procs: int = 1,
    threads: int | None = None,
    stats: dict | None = None,
) -> Iterator[tuple[dict, Any]]:
    """Yield (batch, decode(model, batch)) for every batch, in order.

    procs: processes decoding at once (the caller is one of them), each with ``threads``
    intra-op threads (default: torch's current count divided by procs, at least 1).
    stats: if given, receives ``search_s``, the wall time of decoding alone (worker
    start-up excluded, like fairseq's "Translated ..." timer).
    """
    stats = {} if stats is None else stats
    procs = max(1, min(procs, len(batches)))
    if procs == 1:
        yield from _decode_here(model, batches, decode, stats)
        return
    threads = threads or max(1, torch.get_num_threads() // procs)
    logger.info(
        f"decoding {procs} batches at once in {procs} processes, {threads} threads each"
    )
    yield from _decode_in_processes(model, batches, decode, procs, threads, stats)


def _decode_here(model, batches, decode, stats) -> Iterator[tuple[dict, Any]]:
    stats["search_s"] = 0.0
    for batch in batches:
        t = time.perf_counter()
        hyps = decode(model, batch)
        stats["search_s"] += time.perf_counter() - t
        yield batch, hyps


def _decode_in_processes(
    model, batches, decode, procs, threads, stats
) -> Iterator[tuple[dict, Any]]:
    # fork is unsafe once OpenMP threads exist
    ctx = torch.multiprocessing.get_context("spawn")
    counter, go, results = ctx.Value("i", 0), ctx.Event(), ctx.Queue()
    payload = pickle.dumps(batches)  # plain bytes: no file descriptor per batch tensor
    workers = [
        ctx.Process(
            target=_worker,
            args=(model, payload, decode, threads, counter, go, results),
            daemon=True,
        )
        for _ in range(procs - 1)
    ]
    for w in workers:
        w.start()
    prev_threads = torch.get_num_threads()
    done: dict[int, Any] = {}
    try:
        for _ in workers:
            _receive(results, workers, done)  # every worker's "ready"
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        go.set()
        next_out = 0
        while (i := _claim(counter)) < len(batches):  # this process decodes too
            done[i] = decode(model, batches[i])
            while _receive(results, workers, done, block=False):
                pass
            while next_out in done:  # stream what is complete, in order
                yield batches[next_out], done.pop(next_out)
                next_out += 1
        while next_out < len(batches):
            while next_out not in done:
                _receive(results, workers, done)
            yield batches[next_out], done.pop(next_out)
            next_out += 1
        stats["search_s"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(prev_threads)
        go.set()
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.terminate()


def _claim(counter) -> int:
    with counter.get_lock():
        i = counter.value
        counter.value += 1
    return i


def _receive(results, workers, done: dict, block: bool = True) -> bool:
    """Take one message from the workers into ``done``; False if none was waiting (block=False)."""
    while True:
        try:
            kind, payload = results.get(timeout=1.0) if block else results.get_nowait()
        except queue.Empty:
            if not block:
                return False
            codes = [w.exitcode for w in workers]
            if (
                any(c not in (None, 0) for c in codes) or None not in codes
            ):  # died, or all gone quietly
                raise NmtSdError(
                    f"a decoding worker process ended early (exit codes {codes})"
                )
            continue
        if kind == "error":
            raise NmtSdError(f"a decoding worker failed: {payload}")
        if kind != "ready":
            done[kind] = pickle.loads(payload)
        return True


def _worker(
    model, payload: bytes, decode: Decode, threads: int, counter, go, results
) -> None:
    try:
        torch.set_num_threads(threads)
        batches = pickle.loads(payload)
        results.put(("ready", None))
        go.wait()
        while (i := _claim(counter)) < len(batches):
            results.put((i, pickle.dumps(decode(model, batches[i]))))
    except BaseException as e:  # reported by the caller as a one-line error
        results.put(("error", f"{type(e).__name__}: {e}"))
