"""Injected NaN batches and NaN gradients, with clipping on and off: the step is skipped and logged,
weights and optimizer states stay finite; repeated faults stop the run with a clear message and the
last good checkpoint intact."""
from __future__ import annotations

import hashlib
import logging

import pytest
import torch

import espnet_snac  # noqa: F401
from tiny_training import optimizers, speech_like, tiny_model, train_args, write_corpus

CLIPPING = {"off": {}, "on": {"grad_clip_generator": 1000.0, "grad_clip_discriminator": 10.0}}


def _step(model, opts, **config):
    from espnet_snac.train.step import GANStep, StepConfig

    return GANStep(model, opts, [None, None], StepConfig(**config))


def _all_finite(model, opts) -> bool:
    tensors = [p.detach() for p in model.parameters()]
    tensors += [v for o in opts for s in o.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return all(torch.isfinite(t).all() for t in tensors)


@pytest.mark.parametrize("clipping", sorted(CLIPPING))
def test_nan_batch_is_skipped_and_logged(clipping, caplog):
    model = tiny_model()
    opts = optimizers(model)
    step = _step(model, opts, **CLIPPING[clipping])
    step(speech_like())  # optimizer states exist
    before = [p.detach().clone() for p in model.parameters()]
    states = [{k: v.clone() for k, v in s.items()} for o in opts for s in o.state.values()]
    bad = speech_like()
    bad[0, 100] = float("nan")
    with caplog.at_level(logging.WARNING):
        _, plain = step(bad)
    assert plain["nonfinite_steps"] == 2  # discriminator and generator turns
    assert sum("Non-finite" in r.getMessage() for r in caplog.records) == 2
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    after = [s for o in opts for s in o.state.values()]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(states, after) for k in a)
    step(speech_like(seed=5))
    assert step.applied_steps == 4 and _all_finite(model, opts)


@pytest.mark.parametrize("clipping", sorted(CLIPPING))
def test_nan_gradient_with_finite_loss_is_skipped(clipping):
    model = tiny_model()
    opts = optimizers(model)
    step = _step(model, opts, **CLIPPING[clipping])
    param = next(model.codec.generator.parameters())
    hook = param.register_hook(lambda g: torch.full_like(g, float("nan")))
    before = [p.detach().clone() for p in model.codec.generator.parameters()]
    weighted, plain = step(speech_like())
    hook.remove()
    assert torch.isfinite(torch.tensor(weighted["generator_loss"]))  # the loss was fine, the gradient not
    assert plain["nonfinite_steps"] == 1 and step.applied_steps == 1  # only the generator step skipped
    assert all(torch.equal(a, p) for a, p in zip(before, model.codec.generator.parameters()))
    assert len(opts[0].state) == 0 and len(opts[1].state) > 0
    assert _all_finite(model, opts)


def test_repeated_nonfinite_stops_with_last_good_checkpoint_intact(tmp_path, caplog):
    from espnet_snac.bin.gan_codec_train import main
    from espnet_snac.train.nonfinite import NonFiniteTrainingError

    good = write_corpus(tmp_path / "good", n_train=2, chunks_per_utt=2)
    bad = write_corpus(tmp_path / "bad", n_train=2, chunks_per_utt=2, nan_train=True)
    exp = tmp_path / "exp"
    extra = ["--checkpoint_interval_iters", "1", "--max_consecutive_nonfinite", "2"]
    main(train_args(good, exp, max_epoch=1, extra=extra))
    checkpoint = exp / "checkpoint.pth"
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()

    with caplog.at_level(logging.WARNING), pytest.raises(NonFiniteTrainingError) as err:
        main(train_args(bad, exp, max_epoch=2, extra=extra))  # resumes, then every step is NaN
    message = str(err.value)
    assert "2 consecutive non-finite discriminator steps" in message and "epoch 2" in message
    assert any("Last good checkpoint" in r.getMessage() and str(checkpoint) in r.getMessage()
               for r in caplog.records)
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == digest
    state = torch.load(checkpoint, weights_only=True)
    assert state["trainer"]["epoch"] == 2 and state["trainer"]["batches"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
