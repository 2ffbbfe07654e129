"""The trainable ESPnet codec: objective, gradients, code layout and registration."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import espnet_snac  # noqa: F401  (registers snac)
from espnet_snac.model.frames import FRAME_ORDER, codes_to_frames, frame_order, frames_to_codes
from speech_samples import REPO


@pytest.fixture(scope="module")
def codec():
    from espnet_snac.objective.codec import SNACCodec

    torch.manual_seed(0)
    return SNACCodec(lambda_stft=1.0, lambda_wave=1.0)


def test_frame_order_is_orpheus():
    assert FRAME_ORDER == ((0, 0), (1, 0), (2, 0), (2, 1), (1, 1), (2, 2), (2, 3))
    c0 = torch.tensor([[10, 20]])
    c1 = torch.tensor([[100, 101, 200, 201]])
    c2 = torch.tensor([[1000, 1001, 1002, 1003, 2000, 2001, 2002, 2003]])
    frames = codes_to_frames([c0, c1, c2])
    assert frames.tolist() == [[[10, 100, 1000, 1001, 101, 1002, 1003], [20, 200, 2000, 2001, 201, 2002, 2003]]]
    back = frames_to_codes(frames)
    assert all(torch.equal(a, b) for a, b in zip(back, [c0, c1, c2]))
    assert len(frame_order((1, 2, 4, 8))) == 15  # the 32/44 kHz layout
    with pytest.raises(ValueError):
        frames_to_codes(torch.zeros(1, 2, 6, dtype=torch.long))


def test_meta_info_and_code_shapes(codec):
    assert codec.meta_info() == {"fs": 24000, "num_streams": 7, "frame_shift": 2048,
                                 "code_size_per_stream": [4096] * 7}
    x = torch.randn(2, 1, 5000) * 0.1
    with torch.no_grad():
        codes = codec.encode(x)
        assert codes.shape == (7, 2, 3)  # ceil(5000 / 2048) frames
        levels = codec.generator.encode(x)
        assert torch.equal(codes.permute(1, 2, 0), codes_to_frames(levels))
        wav = codec.decode(codes, noise_seed=0)
        assert wav.shape == (2, 1, 3 * 2048)
        assert torch.equal(wav, codec.generator.decode(levels, noise_seed=0))
        out = codec.inference(x[0, 0])
    assert out["wav"].shape == (1, 1, 5000) and out["codec"].shape == (7, 1, 3)


def test_discriminator_and_generator_steps(codec):
    codec.train()
    audio = torch.randn(2, 4096) * 0.1
    d_out = codec(audio, forward_generator=False)
    assert d_out["optim_idx"] == 1 and torch.isfinite(d_out["loss"])
    d_out["loss"].backward()
    assert all(p.grad is None for p in codec.generator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in codec.discriminator.parameters())
    codec.zero_grad(set_to_none=True)

    g_out = codec(audio, forward_generator=True)
    assert g_out["optim_idx"] == 0 and torch.isfinite(g_out["loss"])
    stats = g_out["stats"]
    for key in ("adv_loss", "feat_match_loss", "mel_loss", "stft_sc_loss", "stft_mag_loss", "wave_loss",
                "codebook_loss", "commitment_loss", "generator_loss"):
        assert torch.isfinite(torch.as_tensor(stats[key])).all(), key
    with torch.no_grad():  # the same batch's codes, from the encoder directly
        codes = codec.generator.encode(audio[:, None])
    for level in range(3):
        counts = torch.bincount(codes[level].reshape(-1), minlength=4096).double()
        p = counts[counts > 0] / counts.sum()
        assert float(stats[f"codebook_usage_{level}"]) == pytest.approx(float((counts > 0).sum()) / 4096)
        assert float(stats[f"codebook_perplexity_{level}"]) == pytest.approx(float(torch.exp(-(p * p.log()).sum())),
                                                                             rel=1e-5)
    g_out["loss"].backward()
    # The codebooks are trained through the codebook loss (the official package gives them no gradient).
    for q in codec.generator.quantizer.quantizers:
        assert q.codebook.weight.grad is not None and q.codebook.weight.grad.abs().sum() > 0
        assert q.in_proj.parametrizations.weight.original1.grad.abs().sum() > 0
    assert codec.generator.encoder.block[0].parametrizations.weight.original1.grad.abs().sum() > 0
    codec.zero_grad(set_to_none=True)


def test_loss_weights_switch_terms_off():
    from espnet_snac.objective.codec import SNACCodec

    codec = SNACCodec(
        generator_params=dict(encoder_dim=4, decoder_dim=32),
        discriminator_params=dict(periods=[2], fft_sizes=[512],
                                  period_discriminator_params=dict(channels=4, max_downsample_channels=8)),
        lambda_adv=0.0, lambda_feat_match=0.0, lambda_codebook=0.0, lambda_commitment=0.0,
    )
    out = codec(torch.randn(1, 4096) * 0.1, forward_generator=True)
    assert "adv_loss" not in out["stats"] and "feat_match_loss" not in out["stats"]
    assert float(out["loss"]) == pytest.approx(float(out["stats"]["mel_loss"]), rel=1e-5)


def test_quantizer_losses_match_definition():
    from espnet_snac.model.quantizer import VectorQuantize

    torch.manual_seed(0)
    vq = VectorQuantize(16, 32, 4, stride=2)
    z = torch.randn(2, 16, 8)
    out, codes, commit, book = vq(z)
    z_e = vq.in_proj(torch.nn.functional.avg_pool1d(z, 2, 2))
    z_c = vq.lookup(codes)
    assert torch.allclose(commit, ((z_e - z_c) ** 2).mean([1, 2]))
    assert torch.allclose(book, commit)  # same value, different gradient paths
    assert out.shape == z.shape and codes.shape == (2, 4)
    assert torch.allclose(out, vq.decode_codes(codes), atol=1e-6)


def test_registration_is_idempotent_and_reaches_schedulers():
    from espnet2.tasks import abs_task
    from espnet2.tasks.gan_codec import codec_choices

    from espnet_snac.objective.codec import SNACCodec
    from espnet_snac.registry import register

    register()
    register()
    assert codec_choices.get_class("snac") is SNACCodec
    assert "exponentialdecay" in abs_task.scheduler_classes


def test_exponential_decay_steps_per_iteration():
    from espnet2.schedulers.abs_scheduler import AbsBatchStepScheduler, AbsEpochStepScheduler

    from espnet_snac.registry import register
    from espnet_snac.train.schedulers import ExponentialDecayLR

    register()
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=6e-4)
    sched = ExponentialDecayLR(opt, gamma=0.5)
    assert isinstance(sched, AbsBatchStepScheduler) and not isinstance(sched, AbsEpochStepScheduler)
    opt.step()
    sched.step()
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(6e-4 * 0.25)


def test_registration_in_spawned_worker(tmp_path):
    """DDP workers are spawned and re-import only the main module: the entry point must register."""
    script = tmp_path / "launcher.py"
    script.write_text(textwrap.dedent(
        """
        import multiprocessing as mp
        import espnet_snac.bin.gan_codec_train  # what `python -m espnet_snac.bin.gan_codec_train` runs


        def worker(queue):
            from espnet2.tasks.gan_codec import codec_choices
            queue.put(codec_choices.get_class("snac").__name__)


        if __name__ == "__main__":
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            proc = ctx.Process(target=worker, args=(queue,))
            proc.start()
            print("worker sees", queue.get(timeout=300))
            proc.join()
        """
    ))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "worker sees SNACCodec" in out.stdout


def test_lazy_hook_registers_when_task_is_imported_later():
    code = ("import sys, espnet_snac; assert 'espnet2.tasks.gan_codec' not in sys.modules; "
            "from espnet2.tasks.gan_codec import codec_choices; print(codec_choices.get_class('snac').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("SNACCodec")
