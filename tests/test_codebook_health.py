"""Codebook health: windowed and validation-set code usage, dead-code restart, codec hooks."""
from __future__ import annotations

import math

import pytest
import torch
import yaml
from torch import nn

from espnet_snac.model.quantizer import ResidualVectorQuantize
from espnet_snac.objective.codebook_health import CodebookHealth
from espnet_snac.objective.dead_codes import DeadCodeRestart
from speech_samples import CONF

K = 16


def _expected(batches, level):
    """Distinct codes and perplexity of level ``level`` over ``batches``, computed independently."""
    values = [v for codes in batches for v in codes[level].reshape(-1).tolist()]
    counts = {v: values.count(v) for v in set(values)}
    entropy = -sum(c / len(values) * math.log(c / len(values)) for c in counts.values())
    return len(counts), math.exp(entropy)


def _random_codes(generator, batch=2, frames=(2, 4, 8), high=K):
    return [torch.randint(0, high, (batch, t), generator=generator) for t in frames]


def test_window_usage_is_exact_over_several_steps():
    health = CodebookHealth(n_levels=3, codebook_size=K, window=3)
    books = [nn.Embedding(K, 2) for _ in range(3)]
    g = torch.Generator().manual_seed(0)
    # Level 0 uses only codes 0..3, level 1 a single code: known collapse shows as used 4 and 1.
    windows = []
    for _ in range(2):
        batches = []
        for step in range(3):
            codes = _random_codes(g)
            codes[0] = codes[0] % 4
            codes[1] = torch.full_like(codes[1], 7)
            batches.append(codes)
            health.observe(codes, [], training=True)
            stats = health.step_end(books)
            if step < 2:
                assert stats == {}
        windows.append((batches, stats))
    for batches, stats in windows:  # the second window does not include the first one's codes
        assert len(stats) == 6
        for level in range(3):
            used, perplexity = _expected(batches, level)
            assert stats[f"codes_used_window_{level}"] == used
            assert stats[f"perplexity_window_{level}"] == pytest.approx(perplexity, rel=1e-9)
        assert stats["codes_used_window_0"] <= 4 and stats["codes_used_window_1"] == 1
        assert stats["perplexity_window_1"] == pytest.approx(1.0)


def test_validation_set_statistics_are_separate_from_the_window():
    health = CodebookHealth(n_levels=3, codebook_size=K, window=2)
    books = [nn.Embedding(K, 2) for _ in range(3)]
    g = torch.Generator().manual_seed(1)
    train = [_random_codes(g, high=3) for _ in range(2)]
    health.observe(train[0], [], training=True)
    health.step_end(books)
    health.observe(_random_codes(g), [], training=False)  # eval outside validation: not counted

    health.validation_start()
    valid = [_random_codes(g, batch=b) for b in (1, 3, 2)]
    for codes in valid:
        health.observe(codes, [], training=False)
    stats = health.validation_end(torch.device("cpu"))
    for level in range(3):
        used, perplexity = _expected(valid, level)
        assert stats[f"codes_used_valid_{level}"] == used
        assert stats[f"perplexity_valid_{level}"] == pytest.approx(perplexity, rel=1e-9)

    health.observe(train[1], [], training=True)
    window = health.step_end(books)
    for level in range(3):
        assert window[f"codes_used_window_{level}"] == _expected(train, level)[0]
    health.validation_start()
    assert health.validation_end(torch.device("cpu")) == {}  # an empty validation pass reports nothing


def _collapsed_quantizer(codebook_size=64):
    """A 2-level quantiser whose codebooks hold one direction and its opposite: at most 2 codes used."""
    torch.manual_seed(0)
    rvq = ResidualVectorQuantize(input_dim=4, codebook_size=codebook_size, codebook_dim=2, vq_strides=[2, 1])
    with torch.no_grad():
        for q in rvq.quantizers:
            q.codebook.weight[0] = torch.tensor([1.0, 0.0])
            q.codebook.weight[1:] = torch.tensor([-1.0, 0.0])
    return rvq


def _codes_used(rvq, z):
    with torch.no_grad():
        return [int(c.unique().numel()) for c in rvq(z).codes]


def test_dead_code_restart_revives_dead_codes():
    rvq = _collapsed_quantizer()
    books = [q.codebook for q in rvq.quantizers]
    restart = DeadCodeRestart(n_levels=2, codebook_size=64, codebook_dim=2, after=3, buffer_size=256, noise=0.01)
    health = CodebookHealth(n_levels=2, codebook_size=64, window=3, restart=restart)
    z = torch.randn(8, 4, 32)
    before = _codes_used(rvq, z)
    assert all(n <= 2 for n in before)
    for _ in range(3):
        out = rvq(torch.randn(8, 4, 32))
        health.observe(out.codes, out.latents, training=True)
        stats = health.step_end(books)
    # Every code but the (at most) two in use is re-seeded at the check of step 3.
    for level in range(2):
        assert stats[f"codes_revived_{level}"] >= 62
        assert stats[f"codes_used_window_{level}"] <= 2
    after = _codes_used(rvq, z)
    assert all(n >= 20 for n in after), (before, after)
    # The revived codes are used in training and are not restarted again at the next check.
    for _ in range(3):
        out = rvq(torch.randn(8, 4, 32))
        health.observe(out.codes, out.latents, training=True)
        stats = health.step_end(books)
    for level in range(2):
        assert stats[f"codes_used_window_{level}"] >= 20
        assert stats[f"codes_revived_{level}"] < 64 - 20
    assert restart.revived_total[0] >= 62


def test_latents_do_not_change_inference_outputs():
    rvq = _collapsed_quantizer(16)
    z = torch.randn(2, 4, 8)
    out = rvq(z)
    assert [tuple(x.shape) for x in out.latents] == [(2, 2, 4), (2, 2, 8)]
    assert all(not x.requires_grad for x in out.latents)
    for q, codes, z_e in zip(rvq.quantizers, out.codes, out.latents):
        assert torch.equal(q.nearest_codes(z_e), codes)


@pytest.fixture(scope="module")
def tiny_conf():
    return yaml.safe_load((CONF / "tuning" / "train_snac24k_tiny.yaml").read_text())["codec_conf"]


def test_codec_hooks_report_window_validation_and_restart(tiny_conf):
    from espnet_snac.objective.codec import SNACCodec

    torch.manual_seed(0)
    conf = dict(tiny_conf, health_window=2, dead_code_restart=True, dead_code_after=2,
                dead_code_buffer_size=512)
    conf["generator_params"] = dict(conf["generator_params"], codebook_size=256)
    codec = SNACCodec(**conf)
    assert set(codec.state_dict()) == set(SNACCodec(**tiny_conf).state_dict())  # nothing added to checkpoints
    audio = torch.randn(2, 8192) * 0.1
    with torch.no_grad():  # what both steps' generator turns quantize (no optimizer: the weights stay)
        codes = codec.generator.encode(audio[:, None])
    codec.train()
    stats = []
    for _ in range(2):
        with torch.no_grad():
            codec(audio, forward_generator=True)
        stats.append(codec.training_step_end())
    assert stats[0] == {}
    for level, frames in enumerate((8, 16, 32)):  # per step: 2 clips x 8192 / (512 * stride); both steps alike
        assert codes[level].numel() == frames
        counts = torch.bincount(codes[level].reshape(-1), minlength=256).double()
        p = counts[counts > 0] / counts.sum()
        assert stats[1][f"codes_used_window_{level}"] == int((counts > 0).sum())
        assert stats[1][f"perplexity_window_{level}"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-5)
        # A random init uses few of 256 codes on so little audio; the rest are re-seeded.
        assert stats[1][f"codes_revived_{level}"] == 256 - stats[1][f"codes_used_window_{level}"]

    codec.eval()
    codec.validation_start()
    with torch.no_grad():
        codec(audio[:1], forward_generator=False)
        codec(audio[:1], forward_generator=True)
    valid = codec.validation_end()
    assert set(valid) == {f"{name}_valid_{level}" for name in ("codes_used", "perplexity") for level in range(3)}
    assert valid["codes_used_valid_0"] >= 1


def _distributed_worker(rank: int, world: int, tmp: str) -> None:
    """One gloo rank: different data per rank, window and restart checks at step 2."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        rvq = _collapsed_quantizer()  # identical initial weights on every rank
        torch.manual_seed(100 + rank)  # then different data and noise per rank
        restart = DeadCodeRestart(n_levels=2, codebook_size=64, codebook_dim=2, after=2, buffer_size=128)
        health = CodebookHealth(n_levels=2, codebook_size=64, window=2, restart=restart)
        seen = []
        for _ in range(2):
            out = rvq(torch.randn(4, 4, 16))
            health.observe(out.codes, out.latents, training=True)
            seen.append(out.codes)
            stats = health.step_end([q.codebook for q in rvq.quantizers])
        health.validation_start()
        health.observe(rvq(torch.randn(1 + rank, 4, 16)).codes, [], training=False)
        stats.update(health.validation_end(torch.device("cpu")))
        torch.save({"stats": stats, "codes": seen, "books": [q.codebook.weight.detach() for q in rvq.quantizers]},
                   f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_counts_are_global_and_codebooks_stay_identical(tmp_path):
    import torch.multiprocessing as mp

    # fork: the workers reuse the loaded torch instead of importing it again (seconds on 2 cores)
    mp.start_processes(_distributed_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["stats"] == ranks[1]["stats"]
    stats = ranks[0]["stats"]
    for level in range(2):
        union = {v for r in ranks for step in r["codes"] for v in step[level].reshape(-1).tolist()}
        assert stats[f"codes_used_window_{level}"] == len(union)  # summed over both ranks
        assert stats[f"codes_revived_{level}"] == 64 - len(union)
        assert stats[f"codes_used_valid_{level}"] >= 1
        assert torch.equal(ranks[0]["books"][level], ranks[1]["books"][level])
