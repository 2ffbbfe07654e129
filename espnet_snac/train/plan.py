"""The training plan: ESPnet chunk-iterator settings that give a chosen number of optimizer steps.

ESPnet's chunk iterator (``espnet2/iterators/chunk_iter_factory.py``, built by
``AbsTask.build_chunk_iter_factory``) works per rank:

* the utterance list (shape-file order) is split ``utts[rank::world_size]``;
* each rank's batch is ``batch_size // world_size`` chunks (we require an exact division);
* ``num_iters_per_epoch`` counts *utterances per rank*: an epoch reads that many utterances
  (a window that wraps around the shuffled list);
* an utterance of ``L`` samples is used only if ``L > W`` (``W = chunk_length``; ``L == W`` is
  discarded too) and gives ``(L - W) // S + 1`` chunks, ``S = int(W * chunk_shift_ratio)``;
* the chunks of an epoch are cut into batches; the remainder (< one batch) is dropped at the epoch end;
* with several ranks the trainer stops the epoch when the first rank runs out.

So one epoch has ``min over ranks floor(K * C_r / (n_r * b))`` optimizer steps (``K`` utterances per
rank, ``C_r`` chunks in the ``n_r`` utterances of rank ``r``, ``b`` the per-rank batch). This is exact
when ``K`` is a multiple of every ``n_r`` (whole passes) or all utterances give the same number of
chunks; otherwise it is the expectation and the plan gives its standard deviation.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

ESPNET_DEFAULTS = {"batch_size": 20, "max_epoch": 40, "chunk_length": 500, "chunk_shift_ratio": 0.5,
                   "chunk_discard_short_samples": True, "num_iters_per_epoch": None}


class PlanError(ValueError):
    """The run cannot be planned: the message says why, with the numbers."""


@dataclass
class ChunkSettings:
    """ESPnet's chunk options that decide how many chunks an utterance gives."""

    chunk_length: int
    chunk_shift_ratio: float = 0.5
    discard_short_samples: bool = True
    max_abs_length: Optional[int] = None

    @property
    def width(self) -> int:
        """Samples per chunk."""
        return self.chunk_length if self.max_abs_length is None else min(self.chunk_length, self.max_abs_length)

    @property
    def shift(self) -> int:
        return int(self.chunk_length * self.chunk_shift_ratio)

    @classmethod
    def from_config(cls, config: Dict[str, Any], source: str = "config") -> "ChunkSettings":
        if config.get("iterator_type", "sequence") != "chunk":
            raise PlanError(f"{source}: iterator_type is {config.get('iterator_type')!r}; the plan is for "
                            "ESPnet's chunk iterator (iterator_type: chunk)")
        if config.get("chunk_default_fs") is not None:
            raise PlanError(f"{source}: chunk_default_fs is set; without utt2fs data ESPnet then rescales "
                            "chunk_length as if the audio were 16 kHz. Remove it (our data has one rate)")
        length = config.get("chunk_length", ESPNET_DEFAULTS["chunk_length"])
        if isinstance(length, str) and length.strip().isdigit():
            length = int(length)
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise PlanError(f"{source}: chunk_length must be one positive integer (samples), got {length!r}; "
                            "lists and ranges of chunk lengths cannot be planned")
        ratio = config.get("chunk_shift_ratio", ESPNET_DEFAULTS["chunk_shift_ratio"])
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or int(length * ratio) <= 0:
            raise PlanError(f"{source}: chunk_shift_ratio must give a shift of at least one sample, got {ratio!r}")
        discard = config.get("chunk_discard_short_samples", ESPNET_DEFAULTS["chunk_discard_short_samples"])
        if not isinstance(discard, bool):
            raise PlanError(f"{source}: chunk_discard_short_samples must be true or false, got {discard!r}")
        max_abs = config.get("chunk_max_abs_length")
        if max_abs is not None and (isinstance(max_abs, bool) or not isinstance(max_abs, int) or max_abs <= 0):
            raise PlanError(f"{source}: chunk_max_abs_length must be a positive integer or null, got {max_abs!r}")
        return cls(length, float(ratio), discard, max_abs)


def read_shape_file(path: str) -> Tuple[List[str], np.ndarray]:
    """``utt_id num_samples[,channels]`` lines (ESPnet's ``audio_shape``) -> ids, lengths (int64)."""
    ids: List[str] = []
    lengths: List[int] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                parts = line.split()
                try:
                    if len(parts) != 2:
                        raise ValueError
                    n = int(parts[1].split(",")[0])
                    if n < 0:
                        raise ValueError
                except ValueError:
                    raise PlanError(f"{path}:{lineno}: expected 'utt_id num_samples', got {line.strip()!r}") from None
                ids.append(parts[0])
                lengths.append(n)
    except OSError as e:
        raise PlanError(f"cannot read the shape file {path}: {e.strerror or e}") from None
    if not ids:
        raise PlanError(f"{path}: no utterances (run the statistics stage first)")
    return ids, np.asarray(lengths, dtype=np.int64)


def chunk_counts(lengths: np.ndarray, settings: ChunkSettings) -> Tuple[np.ndarray, np.ndarray]:
    """Per utterance: chunks of ``settings.width`` samples, and whether it is kept whole (short).

    ESPnet keeps a short utterance (``L <= chunk_length``) as one unchunked item only with
    ``chunk_discard_short_samples: false``; these go to batches of their own.
    """
    w, s = settings.chunk_length, settings.shift
    long_ = lengths > w
    chunks = np.where(long_, (lengths - w) // s + 1, 0)
    short = (~long_) if not settings.discard_short_samples else np.zeros_like(long_)
    return chunks.astype(np.int64), short


@dataclass
class TrainingPlan:
    """What to pass to ESPnet and what it will do."""

    total_iterations: int                # optimizer steps (one D and one G update each)
    num_iters_per_epoch: int             # ESPnet option: utterances per rank per epoch
    max_epoch: int
    batch_size: int                      # global batch (ESPnet option)
    batch_size_per_gpu: int
    world_size: int
    iterations_per_epoch: int
    iterations_per_epoch_sd: float       # 0 when exact
    exact: bool
    target_iterations: int
    chunks_per_epoch: int                # all ranks
    audio_hours_per_epoch: float         # chunk audio seen per epoch (overlaps counted)
    passes_over_corpus: float            # utterance reads / corpus size over the whole run
    corpus_utterances: int
    corpus_hours: float
    usable_utterances: int               # long enough for one chunk (or kept whole)
    chunk_length: int
    chunk_shift: int
    sampling_rate: int
    lr: Optional[float]
    final_lr: Optional[float]
    lr_discriminator: Optional[float]
    final_lr_discriminator: Optional[float]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def world_size_of(ngpu: int, num_nodes: int = 1) -> int:
    """Processes of the run: one per GPU on each node (one per node on CPU)."""
    if ngpu < 0 or num_nodes < 1:
        raise PlanError(f"--ngpu must be >= 0 and --num_nodes >= 1, got ngpu={ngpu}, num_nodes={num_nodes}")
    return max(ngpu, 1) * num_nodes


def per_gpu_batch(batch_size: int, world_size: int) -> int:
    """The per-rank batch; ESPnet would give uneven batches when the division is not exact: refused."""
    if batch_size < world_size:
        raise PlanError(f"global batch {batch_size} is smaller than the world size {world_size} "
                        f"(GPUs x nodes): every GPU needs at least one chunk; use --batch_size {world_size} "
                        "or more, or fewer GPUs")
    if batch_size % world_size:
        lo = batch_size // world_size * world_size
        raise PlanError(f"global batch {batch_size} is not divisible by the world size {world_size}: ESPnet "
                        f"would give ranks {batch_size // world_size + 1} and {batch_size // world_size} chunks "
                        f"and weight them unequally; use --batch_size {lo} or {lo + world_size}")
    return batch_size // world_size


def _rank_totals(chunks: np.ndarray, short: np.ndarray, world: int):
    """Per rank: utterances, chunk total, short-utterance total, chunk variance (ESPnet's rank split)."""
    out = []
    for r in range(world):
        c, s = chunks[r::world], short[r::world]
        out.append((len(c), int(c.sum()), int(s.sum()), float(c.var()) if len(c) else 0.0))
    return out


def _epoch_steps(k: int, ranks, bpg: int) -> int:
    # Integer arithmetic: exact when k is a multiple of n.
    return min((k * c) // (n * bpg) + (k * s) // (n * bpg) for n, c, s, _ in ranks)


def _epoch_sd(k: int, ranks, bpg: int) -> float:
    """Standard deviation of one epoch's steps: the partial pass is a sample without replacement."""
    sd = 0.0
    for n, _, _, var in ranks:
        part = k % n
        if part and n > 1:
            sd = max(sd, math.sqrt(part * var * (n - part) / (n - 1)) / bpg)
    return sd


def _final_lr(optim_conf: Any, scheduler: Optional[str], scheduler_conf: Any, steps: int, epochs: int):
    lr = (optim_conf or {}).get("lr") if isinstance(optim_conf, dict) else None
    if lr is None:
        return None, None
    lr = float(lr)
    conf = scheduler_conf if isinstance(scheduler_conf, dict) else {}
    if scheduler in (None, "none"):
        return lr, lr
    if scheduler == "exponentialdecay":  # ours: per optimizer step
        return lr, max(lr * float(conf.get("gamma", 0.999994)) ** steps, float(conf.get("min_lr", 0.0)))
    if scheduler == "exponentiallr":  # ESPnet's: per epoch
        return lr, lr * float(conf["gamma"]) ** epochs if "gamma" in conf else None
    return lr, None


def plan_training(
    lengths: Sequence[int],
    config: Dict[str, Any],
    ngpu: int,
    num_nodes: int = 1,
    num_iters: Optional[int] = None,
    batch_size: Optional[int] = None,
    source: str = "config",
) -> TrainingPlan:
    """Plan a run of ``num_iters`` optimizer steps (None: what the config's ``num_iters_per_epoch``
    and ``max_epoch`` give on one device, kept for any GPU count) at a global ``batch_size``.

    With ``num_iters`` given, the config's ``max_epoch`` (checkpoint/validation cadence) is kept and
    ``num_iters_per_epoch`` is the smallest count of utterances per rank whose epoch has at least
    ``ceil(num_iters / max_epoch)`` steps.
    """
    settings = ChunkSettings.from_config(config, source)
    for key in ("batch_size", "max_epoch", "num_iters_per_epoch"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise PlanError(f"{source}: {key} must be an integer, got {type(value).__name__} {value!r}")
    lengths = np.asarray(lengths, dtype=np.int64)
    world = world_size_of(ngpu, num_nodes)
    batch = int(config.get("batch_size", ESPNET_DEFAULTS["batch_size"]) if batch_size is None else batch_size)
    bpg = per_gpu_batch(batch, world)
    max_epoch_cfg = int(config.get("max_epoch", ESPNET_DEFAULTS["max_epoch"]))
    if max_epoch_cfg < 1:
        raise PlanError(f"{source}: max_epoch must be at least 1, got {max_epoch_cfg}")
    if len(lengths) < world:
        raise PlanError(f"{len(lengths)} utterances for {world} processes: each rank needs at least one")

    chunks, short = chunk_counts(lengths, settings)
    if chunks.sum() == 0 and short.sum() == 0:
        raise PlanError(
            f"the corpus is shorter than one chunk: its longest utterance has {int(lengths.max())} samples, "
            f"chunk_length is {settings.chunk_length} (ESPnet uses only utterances longer than a chunk); "
            "use a smaller chunk_length or longer utterances")
    ranks = _rank_totals(chunks, short, world)
    for r, (n, c, s, _) in enumerate(ranks):
        if c + s == 0:
            raise PlanError(f"rank {r} of {world} gets {n} utterances and none is longer than chunk_length "
                            f"{settings.chunk_length}: use fewer GPUs or a corpus with more long utterances")

    if num_iters is None:
        k_cfg = config.get("num_iters_per_epoch", ESPNET_DEFAULTS["num_iters_per_epoch"])
        # The config's epoch on one device, spread over the ranks: same steps per epoch.
        k = math.ceil(int(k_cfg) / world) if k_cfg is not None else max(n for n, *_ in ranks)
        max_epoch = max_epoch_cfg
        target = max_epoch * _epoch_steps(int(k_cfg) if k_cfg is not None else len(lengths),
                                          _rank_totals(chunks, short, 1), batch)
    else:
        if num_iters < 1:
            raise PlanError(f"--num_iters must be at least 1, got {num_iters}")
        target = int(num_iters)
        max_epoch = min(max_epoch_cfg, target)
        per_epoch = math.ceil(target / max_epoch)
        lo, hi = 1, 1
        while _epoch_steps(hi, ranks, bpg) < per_epoch:
            hi *= 2
        while lo < hi:  # smallest k with enough steps (steps grow with k)
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if _epoch_steps(mid, ranks, bpg) < per_epoch else (lo, mid)
        k = lo
    steps = _epoch_steps(k, ranks, bpg)
    if steps == 0:
        raise PlanError(f"an epoch of {k} utterances per rank gives no batch of {bpg} chunks "
                        f"({max(c for _, c, _, _ in ranks)} chunks per pass at most): raise num_iters_per_epoch")
    sd = _epoch_sd(k, ranks, bpg)
    total = steps * max_epoch
    fs = int((config.get("codec_conf") or {}).get("sampling_rate", 24000))
    lr, final_lr = _final_lr(config.get("optim_conf"), config.get("scheduler"), config.get("scheduler_conf"),
                             total, max_epoch)
    lr2, final_lr2 = _final_lr(config.get("optim2_conf"), config.get("scheduler2"), config.get("scheduler2_conf"),
                               total, max_epoch)
    return TrainingPlan(
        total_iterations=total,
        num_iters_per_epoch=k,
        max_epoch=max_epoch,
        batch_size=batch,
        batch_size_per_gpu=bpg,
        world_size=world,
        iterations_per_epoch=steps,
        iterations_per_epoch_sd=round(sd, 2),
        exact=sd == 0.0,
        target_iterations=target,
        chunks_per_epoch=steps * batch,
        audio_hours_per_epoch=steps * batch * settings.width / fs / 3600,
        passes_over_corpus=max_epoch * k * world / len(lengths),
        corpus_utterances=len(lengths),
        corpus_hours=float(lengths.sum()) / fs / 3600,
        usable_utterances=int(((chunks > 0) | short).sum()),
        chunk_length=settings.width,
        chunk_shift=settings.shift,
        sampling_rate=fs,
        lr=lr,
        final_lr=final_lr,
        lr_discriminator=lr2,
        final_lr_discriminator=final_lr2,
    )


def describe(plan: TrainingPlan) -> List[str]:
    """The plan as readable lines."""
    p = plan
    exact = "exact" if p.exact else f"expected, sd {p.iterations_per_epoch_sd:.1f} per epoch"
    lines = [
        f"corpus: {p.corpus_utterances} utterances, {p.corpus_hours:.1f} h; {p.usable_utterances} longer than "
        f"one chunk of {p.chunk_length} samples ({p.chunk_length / p.sampling_rate:.3f} s, shift {p.chunk_shift})",
        f"world size {p.world_size}: global batch {p.batch_size} = {p.batch_size_per_gpu} chunks per GPU",
        f"num_iters_per_epoch {p.num_iters_per_epoch} (utterances per rank) x max_epoch {p.max_epoch}",
        f"optimizer steps: {p.iterations_per_epoch} per epoch, {p.total_iterations} in total ({exact}; "
        f"target {p.target_iterations})",
        f"per epoch: {p.chunks_per_epoch} chunks, {p.audio_hours_per_epoch:.2f} h of audio; "
        f"{p.passes_over_corpus:.2f} passes over the corpus in the run",
    ]
    if p.final_lr is not None:
        lines.append(f"learning rate: {p.lr:.3g} -> {p.final_lr:.3g} (generator)"
                     + (f", {p.lr_discriminator:.3g} -> {p.final_lr_discriminator:.3g} (discriminator)"
                        if p.final_lr_discriminator is not None else ""))
    return lines


def load_config(path: str) -> Dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except OSError as e:
        raise PlanError(f"cannot read the config {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise PlanError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(config, dict):
        raise PlanError(f"{path}: expected a mapping of options, got {type(config).__name__}")
    return config


def plan_from_files(speech_shape: str, config_path: str, ngpu: int, num_nodes: int = 1,
                    num_iters: Optional[int] = None, batch_size: Optional[int] = None) -> TrainingPlan:
    config = load_config(config_path)
    _, lengths = read_shape_file(speech_shape)
    try:
        return plan_training(lengths, config, ngpu, num_nodes, num_iters, batch_size, source=config_path)
    except PlanError as e:
        raise PlanError(f"{e} (shape file {speech_shape})") from None


__all__ = ["ChunkSettings", "PlanError", "TrainingPlan", "chunk_counts", "describe", "plan_from_files",
           "plan_training", "read_shape_file", "world_size_of", "per_gpu_batch"]
