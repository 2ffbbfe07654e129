"""CUDA / multi-GPU paths of the trainer checked on CPU: resume on a GPU (the 'meta' device stands in
for it), DDP with the tiny and demo configs on 2 gloo ranks, per-rank random states, DataParallel
refused, metrics on device tensors."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from espnet2.train.distributed_utils import DistributedOption
from espnet2.train.reporter import Reporter

import espnet_snac  # noqa: F401  (registers the codec)
from espnet_snac.train import checkpointing as ckpt
from espnet_snac.train.trainer import SNACGANTrainer
from tiny_training import REPO, TINY, optimizers, speech_like, tiny_model

DEMO = REPO / "conf" / "tuning" / "train_snac24k_demo.yaml"


class _Opts:
    """The trainer options that resume and wrapping read."""

    def __init__(self, output_dir, ngpu: int = 0):
        self.output_dir, self.resume, self.ngpu = str(output_dir), True, ngpu
        self.unused_parameters = False  # ESPnet's default: the DDP crash of the discriminator turn
        self.gradient_as_bucket_view = False


# ------------------------------------------------------------------------------------- resume on a GPU
@pytest.mark.filterwarnings("ignore:.*meta parameter:UserWarning")
def test_resume_for_a_gpu_run_keeps_random_states_and_adam_steps_on_the_cpu(tmp_path, monkeypatch):
    """A checkpoint resumed by a GPU run: the model's parameters live on another device ('meta' here).
    The trainer must map the file to the CPU (random states restorable, AdamW ``step`` CPU tensors)
    and let the optimizers move their moments to the parameters' device. Any other map_location
    (e.g. 'cuda') is redirected to 'meta' so that a GPU-mapped load is caught on this machine."""
    from espnet_snac.train.step import GANStep, StepConfig

    model = tiny_model()
    opts = optimizers(model)
    step = GANStep(model, opts, [None, None], StepConfig())
    step(speech_like())
    reporter = Reporter()
    reporter.set_epoch(1)
    SNACGANTrainer._save(tmp_path, model, opts, [None, None], reporter, step, completed_epoch=0, epoch=1,
                         batches=1)

    real_load = torch.load

    def load(f, map_location=None, **kwargs):
        cpu = map_location is None or torch.device(map_location).type == "cpu"
        return real_load(f, map_location=map_location if cpu else "meta", **kwargs)

    monkeypatch.setattr(torch, "load", load)
    gpu_model = tiny_model(seed=1).to("meta")  # a model on the training device
    gpu_opts = optimizers(gpu_model)
    resume = SNACGANTrainer._resume(_Opts(tmp_path, ngpu=1), gpu_model, gpu_opts, [None, None], Reporter(),
                                    DistributedOption(distributed=False, ngpu=1))
    assert resume["epoch"] == 1 and resume["batches"] == 1
    ckpt.set_rng_state(resume["rng"])  # what train_one_epoch does after skipping the consumed batches
    for opt in gpu_opts:
        states = list(opt.state.values())
        assert states and all(s["step"].device.type == "cpu" for s in states)
        assert all(s["exp_avg"].device.type == "meta" for s in states)  # moved to the parameters
    assert all(p.device.type == "meta" for p in gpu_model.parameters())


def test_set_rng_state_refuses_device_tensors_with_the_fix():
    state = ckpt.rng_state()
    state["torch"] = state["torch"].to("meta")
    with pytest.raises(ValueError, match="map_location='cpu'"):
        ckpt.set_rng_state(state)


def test_rank_rng_state_picks_this_ranks_state():
    a, b = {"id": 0}, {"id": 1}
    assert ckpt.rank_rng_state({"rng": a, "rng_ranks": [a, b]}, 1, 2) is b
    assert ckpt.rank_rng_state({"rng": a, "rng_ranks": [a]}, 0, 1) is a
    assert ckpt.rank_rng_state({"rng": a}, 1, 2) is a  # an older checkpoint: rank 0's, with a warning
    assert ckpt.rank_rng_state({"rng": a, "rng_ranks": [a, b]}, 2, 4) is a


# ----------------------------------------------------------------------------------------- DataParallel
def test_data_parallel_is_refused_naming_the_option():
    # refused before any work: no optimizer, scheduler, data or output directory is touched
    with pytest.raises(ValueError, match="--multiprocessing_distributed true"):
        SNACGANTrainer._run(tiny_model(), None, None, None, None, _Opts("/nonexistent"),
                            DistributedOption(distributed=False, ngpu=2), None, True, "cpu", [1])
    model = tiny_model()
    assert SNACGANTrainer._wrap(model, _Opts("."), DistributedOption(distributed=False, ngpu=1)) is model


# ------------------------------------------------------------------------------------------------- DDP
def _model_of(config):
    import yaml
    from espnet2.gan_codec.espnet_model import ESPnetGANCodecModel

    from espnet_snac.objective.codec import SNACCodec

    torch.manual_seed(0)
    return ESPnetGANCodecModel(SNACCodec(**yaml.safe_load(config.read_text())["codec_conf"]))


def _ddp_rank(rank: int, world: int, port: int, config, queue) -> None:
    """The trainer's own DDP wrapping (ESPnet defaults: unused_parameters false), 2 iterations with
    the discriminator turn first, then the per-rank random states through a checkpoint round trip."""
    import torch.distributed as dist

    from espnet_snac.train.step import GANStep, StepConfig

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = _model_of(config)
        ddp = SNACGANTrainer._wrap(model, _Opts("."), DistributedOption(distributed=True, ngpu=0))
        opts = optimizers(model)
        torch.manual_seed(100 + rank)  # ranks differ in their global random state (decoder noise)
        step = GANStep(ddp, opts, [None, None], StepConfig(), distributed=True)
        for it in range(2):
            step(speech_like(seed=10 * rank + it))
        checksum = float(sum(p.double().sum() for p in model.parameters()))
        buffers = float(sum(b.double().sum() for b in model.buffers() if b.is_floating_point()))

        states = ckpt.gather_rng_states(True)
        expected = torch.rand(3)
        ckpt.set_rng_state(ckpt.rank_rng_state({"rng": states[0], "rng_ranks": states}, rank, world))
        restored = torch.equal(torch.rand(3), expected)

        # Control flags agreed on a separate gloo group when the default backend is not gloo (NCCL):
        # rank 1's flag reaches rank 0 there.
        from espnet_snac.train import trainer

        real_backend = dist.get_backend
        dist.get_backend = lambda *a, **k: "nccl"
        try:
            flags = trainer._any_rank([rank == 1, False], True)
            separate = trainer._control_group() is not None
        finally:
            dist.get_backend = real_backend
        queue.put((rank, checksum, buffers, restored, float(expected[0]), step.applied_steps, flags, separate))
    except Exception as e:  # noqa: BLE001 - reported to the test
        queue.put((rank, f"{type(e).__name__}: {e}"))
    finally:
        dist.destroy_process_group()


def _run_two_ranks(config):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_rank, args=(r, 2, port, config, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in procs:
            item = queue.get(timeout=180)
            results[item[0]] = item[1:]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return results


@pytest.mark.parametrize("config", [TINY, DEMO], ids=["tiny", "demo"])
def test_ddp_two_gloo_ranks_with_the_config(config):
    results = _run_two_ranks(config)
    for rank in (0, 1):
        assert not isinstance(results[rank][0], str), results[rank][0]
    (sum0, buf0, restored0, draw0, applied0, flags0, sep0) = results[0]
    (sum1, buf1, restored1, draw1, applied1, flags1, sep1) = results[1]
    assert flags0 == flags1 == [True, False] and sep0 and sep1
    assert sum0 == sum1 and buf0 == buf1  # lockstep weights; constant buffers agree without broadcasting
    assert applied0 == applied1 == 4  # 2 iterations x 2 networks
    assert restored0 and restored1  # each rank got its own random state back
    assert draw0 != draw1  # and the ranks' states differed


# ---------------------------------------------------------------------------------------------- metrics
class _DeviceTensor(torch.Tensor):
    """Stands in for a CUDA tensor: anything but moving it to the CPU (or reading its metadata) fails,
    as ``.numpy()`` or a CPU filterbank applied to a GPU tensor would."""

    ALLOWED = {"cpu", "to", "detach", "dim", "size", "numel", "__get__", "__len__"}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name not in cls.ALLOWED:
            raise AssertionError(f"{name} on a device tensor: move it to the CPU first")
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        if name in ("cpu", "to"):
            return out.as_subclass(torch.Tensor)
        return out

    def numpy(self, *args, **kwargs):
        raise AssertionError(".numpy() on a device tensor")


@pytest.mark.parametrize("name", ["mel_distance", "stft_distance", "si_snr"])
def test_metrics_accept_device_tensors(name):
    from espnet_snac.scoring import metrics

    rng = np.random.default_rng(0)
    ref = torch.from_numpy(rng.standard_normal(4800).astype(np.float32) * 0.1)
    hyp = ref + 0.01 * torch.from_numpy(rng.standard_normal(4800).astype(np.float32))
    args = (24000,) if name == "mel_distance" else ()
    fn = getattr(metrics, name)
    expected = fn(ref, hyp, *args)
    assert fn(ref.as_subclass(_DeviceTensor), hyp.as_subclass(_DeviceTensor), *args) == expected


# ------------------------------------------------------------------------------ host syncs per iteration
def _fused(model):
    return [torch.optim.AdamW(model.codec.generator.parameters(), 1e-3, betas=(0.8, 0.99), fused=True),
            torch.optim.AdamW(model.codec.discriminator.parameters(), 1e-3, betas=(0.8, 0.99), fused=True)]


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in params])


def test_fused_optimizers_share_one_host_transfer_per_iteration_with_the_same_result(monkeypatch):
    """The discriminator's step is decided on the device (found_inf) and its stats travel with the
    generator's: one device-to-host transfer per iteration, weights identical to deciding on the host."""
    from espnet_snac.train.step import GANStep, StepConfig

    results = []
    for on_device in (True, False):
        model = tiny_model()
        step = GANStep(model, _fused(model), [None, None], StepConfig())
        if not on_device:
            monkeypatch.setattr(step, "_device_skip", lambda idx: False)
        torch.manual_seed(0)
        for it in range(2):
            _, plain = step(speech_like(seed=it))
        results.append((_flat(model.parameters()), step.host_transfers, step.applied_steps,
                        plain["grad_norm_discriminator"]))
    (w1, transfers1, applied1, d1), (w2, transfers2, applied2, d2) = results
    assert torch.equal(w1, w2) and d1 == d2 and applied1 == applied2 == 4
    assert (transfers1, transfers2) == (2, 4)  # 1 vs 2 per iteration

    model = tiny_model()
    opts = optimizers(model)  # not fused: decided on the host after each turn
    step = GANStep(model, opts, [None, None], StepConfig())
    step(speech_like())
    assert step.host_transfers == 2


def test_fused_device_skip_of_a_nonfinite_discriminator_step():
    from espnet_snac.train.step import GANStep, StepConfig

    model = tiny_model()
    opts = _fused(model)
    step = GANStep(model, opts, [None, None], StepConfig(max_consecutive_nonfinite=5))
    step(speech_like())
    d_params = list(model.codec.discriminator.parameters())
    before = _flat(d_params)
    steps_before = [int(s["step"]) for s in opts[1].state.values()]
    _, plain = step(torch.full((1, 2048), float("nan")))
    assert plain["nonfinite_steps"] == 2 and step.applied_steps == 2  # D and G skipped
    assert torch.equal(_flat(d_params), before)  # skipped on the device: no update
    assert [int(s["step"]) for s in opts[1].state.values()] == steps_before  # nor a step count
    assert step.host_transfers == 2
