"""SNACGANTrainer: per-network clipping, bf16, non-finite guard, rank-consistent discriminator skipping,
the generator-output cache, and a tiny run through ``espnet_snac.bin.gan_codec_train``."""
from __future__ import annotations

import math
import os

import pytest
import torch

import espnet_snac  # noqa: F401  (registers the codec when ESPnet's task loads)
from tiny_training import optimizers, speech_like, tiny_model, train_args, write_corpus


def _step(model, opts, **config):
    from espnet_snac.train.step import GANStep, StepConfig

    return GANStep(model, opts, [None, None], StepConfig(**config))


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in params])


# ---------------------------------------------------------------------------------------------- clipping
def test_clipping_is_per_network_and_norms_are_over_own_parameters():
    """Each turn's norm covers only its network: D's gradients (filled by the adversarial loss in the
    generator turn) change neither G's reported norm nor G's clipping; G moves by exactly the clip."""
    model = tiny_model()
    codec = model.codec
    audio = speech_like()
    g_params, d_params = list(codec.generator.parameters()), list(codec.discriminator.parameters())

    torch.manual_seed(1)  # decoder noise
    model(audio=audio, forward_generator=True)["loss"].sum().backward()
    g_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in g_params if p.grad is not None])).item()
    d_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in d_params if p.grad is not None])).item()
    assert d_norm > 0  # the adversarial loss did reach D: a joint norm would differ
    model.zero_grad(set_to_none=True)

    sgd = [torch.optim.SGD(g_params, lr=1.0), torch.optim.SGD(d_params, lr=1.0)]
    clip = g_norm / 10
    step = _step(model, sgd, grad_clip_generator=clip, grad_clip_discriminator=None)
    g0, d0 = _flat(g_params), _flat(d_params)
    torch.manual_seed(1)
    _, plain = step.turn("generator", audio)
    assert plain["grad_norm_generator"] == pytest.approx(g_norm, rel=1e-4)
    assert torch.linalg.vector_norm(_flat(g_params) - g0).item() == pytest.approx(clip, rel=1e-3)
    assert torch.equal(_flat(d_params), d0)  # D is not stepped in G's turn
    assert all(p.grad is None for p in g_params + d_params)  # both zeroed after the turn

    # The discriminator turn with clipping off moves D by its full gradient and leaves G alone.
    step = _step(model, sgd, grad_clip_generator=clip, grad_clip_discriminator=None)
    g1, d1 = _flat(g_params), _flat(d_params)
    _, plain = step.turn("discriminator", audio)
    assert torch.linalg.vector_norm(_flat(d_params) - d1).item() == pytest.approx(plain["grad_norm_discriminator"], rel=1e-3)
    assert torch.equal(_flat(g_params), g1)


def test_both_norms_logged_every_iteration_with_clipping_off():
    model = tiny_model()
    step = _step(model, optimizers(model))
    weighted, plain = step(speech_like())
    assert plain["grad_norm_generator"] > 0 and plain["grad_norm_discriminator"] > 0
    assert {"mel_loss", "discriminator_loss", "generator_loss"} <= set(weighted)
    assert plain["nonfinite_steps"] == 0 and step.applied_steps == 2


# --------------------------------------------------------------------------------------------- precision
def test_bf16_step_on_cpu_keeps_losses_and_quantizer_in_fp32():
    model = tiny_model()
    codec = model.codec
    audio = speech_like()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = codec.generator.forward_with_losses(audio.unsqueeze(1))
        assert out.codebook_loss.dtype == torch.float32  # quantizer ran in fp32
        mel = codec.mel_loss(out.audio_hat, audio.unsqueeze(1))
        assert mel.dtype == torch.float32
    step = _step(model, optimizers(model), precision="bf16")
    before = _flat(codec.generator.parameters())
    weighted, plain = step(audio)
    assert step.applied_steps == 2 and plain["nonfinite_steps"] == 0
    assert all(math.isfinite(v) for v in weighted.values())
    after = _flat(codec.generator.parameters())
    assert after.dtype == torch.float32 and torch.isfinite(after).all() and not torch.equal(before, after)


def test_fp16_one_scaler_per_network_overflow_is_not_a_fault():
    """An overflow of the generator's scaled gradients halves only the generator's scale; the
    discriminator's step goes through with its own scale."""
    model = tiny_model()
    step = _step(model, optimizers(model), precision="fp16", max_consecutive_nonfinite=1)
    step.scalers[0] = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # certain overflow
    step.scalers[1] = torch.amp.GradScaler("cpu", init_scale=1.0)
    _, plain = step(speech_like())
    assert step.overflow_steps == 1 and step.guard.total == 0  # no NonFiniteTrainingError either
    assert step.applied_steps == 1 and len(step.optimizers[0].state) == 0
    assert plain["loss_scale_generator"] == 2.0**39 and plain["loss_scale_discriminator"] == 1.0


# -------------------------------------------------------------------------------------------- non-finite
def test_consecutive_nonfinite_steps_stop_training():
    """The streak: a good step resets it, the limit stops training. (That a non-finite step is skipped,
    weights and optimizer states untouched, with clipping on and off: tests/reliability/test_numeric_faults.py.)"""
    from espnet_snac.train.nonfinite import NonFiniteTrainingError

    model = tiny_model()
    opts = optimizers(model)
    step = _step(model, opts, max_consecutive_nonfinite=2)
    nan = torch.full((1, 2048), float("nan"))
    _, plain = step(nan)
    assert plain["nonfinite_steps"] == 2 and step.applied_steps == 0  # D and G skipped
    assert all(p.grad is None for p in model.parameters())  # no gradient left for the next step
    step(speech_like())  # a good step resets the streaks
    assert step.applied_steps == 2
    step(nan)
    with pytest.raises(NonFiniteTrainingError, match="2 consecutive non-finite discriminator steps"):
        step(nan)
    assert torch.isfinite(_flat(model.parameters())).all()


# ------------------------------------------------------------------------------- discriminator skipping
def _rank_decisions(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    from espnet_snac.train.step import skip_discriminator

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(1000 + rank)  # the global RNG differs per rank, as it may in DDP
    torch.rand(rank + 1)
    mine = torch.tensor([skip_discriminator(777, it, 0.5) for it in range(200)], dtype=torch.int64)
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    dist.destroy_process_group()
    queue.put((rank, [g.tolist() for g in gathered]))


def _rank_training(rank: int, world: int, port: int, queue) -> None:
    """Two DDP ranks (gloo) train the tiny model on different batches with skip probability 0.5."""
    import torch.distributed as dist

    from espnet_snac.train.step import GANStep, StepConfig

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = tiny_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    torch.manual_seed(rank)  # per-rank global RNG, as in DDP
    step = GANStep(ddp, optimizers(model), [None, None], StepConfig(skip_discriminator_prob=0.5, seed=3),
                   distributed=True)
    skipped = []
    for it in range(3):
        _, plain = step(speech_like(seed=10 * rank + it))
        skipped.append(plain["discriminator_skipped"])
    checksum = float(sum(p.double().sum() for p in model.parameters()))
    dist.destroy_process_group()
    queue.put((rank, skipped, checksum, plain["grad_norm_generator"]))


def _run_ranks(target, world: int = 2):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, world, port, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        item = queue.get(timeout=120)
        results[item[0]] = item[1:]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return results


def test_skip_discriminator_identical_on_two_gloo_ranks():
    results = _run_ranks(_rank_decisions)
    a, b = results[0][0]
    assert a == b == results[1][0][0]
    assert 60 < sum(a) < 140  # about half skipped


def test_ddp_training_on_two_gloo_ranks_stays_in_lockstep():
    """Same skip decisions, same weights and the same all-reduced stats on both ranks (no hang)."""
    results = _run_ranks(_rank_training)
    assert results[0] == results[1]


def test_trainer_skips_by_shared_decision():
    from espnet_snac.train.step import skip_discriminator

    model = tiny_model()
    step = _step(model, optimizers(model), skip_discriminator_prob=0.5, seed=777)
    expected = [skip_discriminator(777, it, 0.5) for it in range(4)]
    got = []
    for _ in range(4):
        torch.manual_seed(torch.randint(0, 10**6, ()).item())  # the global RNG does not matter
        _, plain = step(speech_like())
        got.append(bool(plain["discriminator_skipped"]))
    assert got == expected


# ------------------------------------------------------------------------------------------------ hooks
def test_training_hook_and_batch_augmentation_are_called(monkeypatch):
    seen = []

    class BatchAugment:
        def __init__(self, keep: int):
            self.keep = keep

        def __call__(self, audio):
            seen.append(audio.shape)
            return audio[: self.keep], {"augment_kept": float(self.keep)}

    monkeypatch.setattr("espnet_snac.train.step.BatchAugment", BatchAugment)
    model = tiny_model()
    model.codec.training_step_end = lambda: {"health_metric": 0.5}
    step = _step(model, optimizers(model), augment_conf={"keep": 1})
    weighted, plain = step(speech_like(batch=2))
    assert seen == [(2, 2048)] and plain["augment_kept"] == 1.0 and plain["health_metric"] == 0.5
    empty = _step(model, optimizers(model), augment_conf={"keep": 0})
    assert empty(speech_like(batch=2)) is None  # nothing left: the iteration is skipped and counted
    assert empty.empty_batches == 1 and empty.applied_steps == 0


def test_validation_hooks_and_fixed_samples(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from espnet2.train.distributed_utils import DistributedOption
    from espnet2.train.reporter import Reporter

    from espnet_snac.train.trainer import SNACGANTrainer

    written = []
    monkeypatch.setattr("espnet_snac.train.trainer.write_validation_samples",
                        lambda codec, audio, out, epoch, writer: written.append((audio, out, epoch)))
    model = tiny_model()
    calls = []
    model.codec.validation_start = lambda: calls.append("start")
    model.codec.validation_end = lambda: {"valid_codes_used_0": 3.0}
    options = SimpleNamespace(ngpu=0, generator_first=False, no_forward_run=False)
    reporter, holder = Reporter(), [None]
    for epoch in (1, 2):
        batches = [(["a"], {"audio": speech_like(batch=6, seed=epoch)})]
        reporter.set_epoch(epoch)
        with reporter.observe("valid") as sub:
            SNACGANTrainer.validate_one_epoch(model, batches, sub, options, DistributedOption(),
                                              sample_audio=holder, output_dir=tmp_path, epoch=epoch)
        assert reporter.get_value("valid", "valid_codes_used_0") == 3.0
        assert reporter.get_value("valid", "mel_loss") > 0
    assert calls == ["start", "start"]
    assert [(out, e) for _, out, e in written] == [(tmp_path / "samples" / f"epoch_{e}", e) for e in (1, 2)]
    first = speech_like(batch=6, seed=1)[:4]
    assert all(torch.equal(audio, first) for audio, _, _ in written)  # fixed: epoch 1's first batch


# ------------------------------------------------------------------------------------------------ cache
class _Counting:
    """Wraps ``generator.forward_with_losses`` and records the batches it computed."""

    def __init__(self, codec):
        self.inner = codec.generator.forward_with_losses
        self.inputs = []
        codec.generator.forward_with_losses = self

    def __call__(self, audio):
        self.inputs.append(audio.detach().clone())
        return self.inner(audio)


def _turn(codec, audio, generator: bool):
    out = codec(audio, forward_generator=generator)
    out["loss"].sum().backward()
    codec.zero_grad(set_to_none=True)
    return out


def test_cache_serves_the_other_turn_of_the_same_batch_once():
    codec = tiny_model().codec
    calls = _Counting(codec)
    batch = speech_like(seed=1)
    _turn(codec, batch, generator=False)
    _turn(codec, batch, generator=True)
    assert len(calls.inputs) == 1  # DAC's order: one generator forward per iteration
    _turn(codec, batch, generator=False)  # the entry was consumed: recompute
    assert len(calls.inputs) == 2


def test_cache_after_skipped_discriminator_turn_recomputes():
    """D(b1) G(b1) | D skipped, G(b2) | D(b3) G(b3): every turn sees its own batch's output."""
    codec = tiny_model().codec
    calls = _Counting(codec)
    b1, b2, b3 = (speech_like(seed=s) for s in (1, 2, 3))
    _turn(codec, b1, generator=False)
    _turn(codec, b1, generator=True)
    _turn(codec, b2, generator=True)
    _turn(codec, b3, generator=False)
    _turn(codec, b3, generator=True)
    assert len(calls.inputs) == 3
    assert all(torch.equal(c.squeeze(1), b) for c, b in zip(calls.inputs, (b1, b2, b3)))


def test_cache_generator_first_then_skipped_discriminator_does_not_leak_into_next_batch():
    codec = tiny_model().codec
    calls = _Counting(codec)
    b1, b2 = speech_like(seed=1), speech_like(seed=2)
    _turn(codec, b1, generator=True)  # caches b1's output; the D turn is then skipped
    _turn(codec, b2, generator=False)  # must not train D on b1's output
    assert len(calls.inputs) == 2 and torch.equal(calls.inputs[1].squeeze(1), b2)


def test_two_generator_turns_in_a_row_both_backpropagate():
    codec = tiny_model().codec
    calls = _Counting(codec)
    batch = speech_like(seed=1)
    _turn(codec, batch, generator=True)
    _turn(codec, batch, generator=True)  # would fail with "backward through the graph a second time"
    assert len(calls.inputs) == 2


def test_cache_refuses_same_memory_with_new_content_or_other_mode():
    codec = tiny_model().codec
    calls = _Counting(codec)
    batch = speech_like(seed=1)
    _turn(codec, batch, generator=False)
    batch.mul_(0.5)  # same tensor, same address, new content (version counter moves)
    _turn(codec, batch, generator=True)
    assert len(calls.inputs) == 2
    codec.clear_cache()
    codec(batch, forward_generator=False)  # training-mode output, cached for the generator turn
    assert len(calls.inputs) == 3
    codec.eval()
    with torch.no_grad():
        codec(batch, forward_generator=True)  # validation must not reuse a training-mode output
    assert len(calls.inputs) == 4


# ------------------------------------------------------------------------------------- through the CLI
def test_tiny_training_through_entry_point_steps_once_per_iteration(tmp_path):
    from espnet_snac.bin.gan_codec_train import main

    data = write_corpus(tmp_path / "data", n_train=2, chunks_per_utt=3)
    exp = tmp_path / "exp"
    main(train_args(data, exp, max_epoch=1, batch_size=2, n_train=2))
    num_iters = 2 * 3 // 2  # utterances x chunks per utterance / batch size
    state = torch.load(exp / "checkpoint.pth", weights_only=True)
    for opt in state["optimizers"]:
        assert {int(s["step"]) for s in opt["state"].values()} == {num_iters}
    assert [s["last_epoch"] for s in state["schedulers"]] == [num_iters, num_iters]
    assert state["trainer"]["iteration"] == num_iters
    assert (exp / "1epoch.pth").is_file() and os.readlink(exp / "latest.pth") == "1epoch.pth"
