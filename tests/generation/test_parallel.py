"""--inter-threads: batches decoded in several processes give what one process gives, in order."""

import functools
import multiprocessing
import time

import pytest
import torch

from nmt_sd.errors import NmtSdError
from nmt_sd.generation.parallel import decode_batches
from nmt_sd.generation.search import beam_search, special_ids
from nmt_sd.models import TransformerModel
from tests.conftest import ragged_batch, tiny_args, tiny_dict


def beam_decode(model, batch, ids):  # top level: picklable for the worker processes
    net = batch["net_input"]
    return beam_search(
        model,
        net["src_tokens"],
        net["src_lengths"],
        beam=3,
        nbest=2,
        max_len_b=8,
        **ids,
    )


def fail_in_worker(model, batch):
    if multiprocessing.current_process().name == "MainProcess":
        time.sleep(0.5)  # leave the other batches to the worker
        return []
    raise ValueError("boom in the worker")


def test_two_processes_decode_every_batch_in_order_as_one_process_does():
    d = tiny_dict()
    torch.manual_seed(0)
    model = TransformerModel.build_model(tiny_args(), d, d).eval().requires_grad_(False)
    lengths = [
        ((5, 4), (3, 6)),
        ((7, 2), (2, 3), (4, 4)),
        ((6, 5),),
        ((3, 3), (2, 2)),
        ((8, 6), (5, 5)),
    ]
    batches = [ragged_batch(d, lengths=ls, seed=i) for i, ls in enumerate(lengths)]
    decode = functools.partial(beam_decode, ids=special_ids(d))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = [h for _, h in decode_batches(model, batches, decode, procs=1)]
    finally:
        torch.set_num_threads(threads)
    stats = {}
    together = list(
        decode_batches(model, batches, decode, procs=2, threads=1, stats=stats)
    )
    assert [b is batches[i] for i, (b, _) in enumerate(together)] == [True] * len(
        batches
    )
    # the caller's count is restored
    assert stats["search_s"] > 0 and torch.get_num_threads() == threads
    for hyps_a, (_, hyps_b) in zip(alone, together):
        assert [len(h) for h in hyps_a] == [len(h) for h in hyps_b] == [2] * len(hyps_a)
        for sent_a, sent_b in zip(hyps_a, hyps_b):
            for a, b in zip(sent_a, sent_b):
                assert torch.equal(a["tokens"], b["tokens"])
                assert a["score"] == pytest.approx(b["score"], abs=1e-5)
                assert torch.allclose(
                    a["positional_scores"], b["positional_scores"], atol=1e-5
                )


def test_a_failing_worker_ends_in_one_error_naming_its_cause():
    d = tiny_dict()
    model = TransformerModel.build_model(tiny_args(), d, d).eval().requires_grad_(False)
    batches = [ragged_batch(d, seed=i) for i in range(4)]
    with pytest.raises(
        NmtSdError, match="a decoding worker failed: ValueError: boom in the worker"
    ):
        list(decode_batches(model, batches, fail_in_worker, procs=2, threads=1))


def test_inter_threads_is_refused_on_a_gpu_and_below_one(monkeypatch):
    import argparse

    from nmt_sd.generation.inference import setup_inference_device

    args = argparse.Namespace(
        cpu=False, fp16=False, bf16=False, num_threads=None, inter_threads=2
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(NmtSdError, match="--inter-threads is for CPU decoding"):
        setup_inference_device(args)
    args.cpu = True  # --cpu on a GPU machine: allowed
    assert setup_inference_device(args).type == "cpu"
    args.inter_threads = 0
    with pytest.raises(NmtSdError, match="--inter-threads must be >= 1"):
        setup_inference_device(args)
