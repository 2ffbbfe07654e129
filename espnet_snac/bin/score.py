"""Score reconstructions against references: per-utterance metrics, averages and a report.

Usage::

    python -m espnet_snac.bin.score --ref_scp data/test/wav.scp --hyp_scp exp/decode/wav.scp \\
        --output_dir exp/decode/scores [--nj 4] [--plot_spectrograms 5] [--plot_histogram] \\
        [--visqol auto|true|false] [--visqol_mode audio|speech]

Every utterance id found in either list is scored or reported as failed (missing on one side,
unreadable audio, empty signal, a metric that cannot be computed): ``num_utts = scored + num_failed``.
Signals are downmixed to mono, the hypothesis is resampled to the reference rate when they differ,
and both are trimmed to the shorter length (the difference is recorded per utterance).

Outputs in ``--output_dir``:
  * ``utt_results.tsv``: one row per utterance (status, metrics, lengths, error message);
  * ``results.json``: averages over scored utterances under ``mel_distance``, ``stft_distance``,
    ``si_snr``, ``pesq_wb``, ``stoi`` and ``visqol`` (MOS-LQO, when visqol-python is installed; audio
    mode at 48 kHz by default, see :mod:`espnet_snac.scoring.visqol_metric`) (null when nothing was scored),
    plus ``num_utts``, ``num_failed``, ``visqol_setting`` and ``visqol_mode``;
  * ``results.md``: a Markdown table (mean, std, min, max per metric) and the failed utterances;
  * ``plots/spec_<utt>.png`` / ``plots/metrics_hist.png`` when asked for (needs matplotlib).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from espnet_snac.io.atomic_files import atomic_open, atomic_write_text
from espnet_snac.io.audio_io import AudioError, resample, to_mono
from espnet_snac.scoring.metrics import HIGHER_IS_BETTER, METRIC_NAMES, MetricError, compute_all, metric_names
from espnet_snac.io.scp import ScpError, load_scp_audio, read_scp

HISTOGRAM_NAME = "metrics_hist.png"


def tsv_columns(names: Sequence[str]) -> Tuple[str, ...]:
    """The ``utt_results.tsv`` header for the metrics ``names``."""
    return ("utt_id", "status", *names, "sample_rate", "num_samples", "length_diff", "error")


TSV_COLUMNS = tsv_columns(METRIC_NAMES)


def load_pair(utt: str, ref_value: str, hyp_value: str) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """Load, downmix, align rates and trim. Returns ``(ref (T,), hyp (T,), rate, hyp_len - ref_len)``."""
    ref, ref_rate = load_scp_audio(ref_value, name=f"{utt} [ref]")
    hyp, hyp_rate = load_scp_audio(hyp_value, name=f"{utt} [hyp]")
    ref, hyp = to_mono(ref), to_mono(hyp)
    if hyp_rate != ref_rate:
        hyp = resample(hyp, hyp_rate, ref_rate)
    diff = int(hyp.size - ref.size)
    n = min(ref.size, hyp.size)
    if n == 0:
        side = "reference" if ref.size == 0 else "hypothesis"
        raise AudioError(f"{utt}: {side} has no samples")
    return ref[:n], hyp[:n], ref_rate, diff


def score_one(job: Tuple[str, Optional[str], Optional[str]], visqol_mode: Optional[str] = None) -> Dict:
    """One TSV row for ``(utt_id, ref_value, hyp_value)``; never raises for bad data.
    ``visqol_mode`` (``"audio"``/``"speech"``) adds ViSQOL's MOS-LQO."""
    utt, ref_value, hyp_value = job
    row: Dict = {"utt_id": utt, "status": "failed", "error": ""}
    if ref_value is None or hyp_value is None:
        row["error"] = f"missing in {'ref_scp' if ref_value is None else 'hyp_scp'}"
        return row
    try:
        ref, hyp, rate, diff = load_pair(utt, ref_value, hyp_value)
        row.update(sample_rate=rate, num_samples=int(ref.size), length_diff=diff)
        row.update(compute_all(ref, hyp, rate, visqol_mode))
        row["status"] = "ok"
    except (AudioError, MetricError) as exc:
        row["error"] = str(exc)
    except Exception as exc:  # a broken file must not stop a long scoring run; keep the reason
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def pool_context() -> multiprocessing.context.BaseContext:
    """The start method of the ``--nj`` workers: never a plain fork of the calling process. A process
    that has already run numba's parallel code under its GNU OpenMP layer (ViSQOL, or whatever the
    program that calls :func:`score_all` did before) aborts every forked child that runs such code
    again ("fork() called from a process already using GNU OpenMP"); a forkserver forks from a clean
    process instead (spawn where forkserver does not exist)."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def score_all(jobs: Sequence[Tuple[str, Optional[str], Optional[str]]], nj: int,
              visqol_mode: Optional[str] = None) -> List[Dict]:
    """One row per job, in the order of ``jobs`` (``nj`` > 1: in worker processes)."""
    one = functools.partial(score_one, visqol_mode=visqol_mode)
    if nj <= 1 or len(jobs) <= 1:
        return [one(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=nj, mp_context=pool_context(), initializer=_init_worker) as pool:
        return list(pool.map(one, jobs, chunksize=max(1, len(jobs) // (4 * nj))))


def build_jobs(ref: Dict[str, str], hyp: Dict[str, str]) -> List[Tuple[str, Optional[str], Optional[str]]]:
    """Reference order first, then hypothesis-only ids."""
    keys = list(ref) + [k for k in hyp if k not in ref]
    return [(k, ref.get(k), hyp.get(k)) for k in keys]


def summarize(rows: Sequence[Dict], names: Sequence[str] = METRIC_NAMES) -> Tuple[Dict, Dict[str, Dict[str, float]]]:
    """``(results.json content, per-metric mean/std/min/max)`` over the scored rows."""
    ok = [r for r in rows if r["status"] == "ok"]
    results: Dict = {}
    stats: Dict[str, Dict[str, float]] = {}
    for name in names:
        values = np.array([r[name] for r in ok], dtype=np.float64)
        if values.size:
            stats[name] = dict(mean=float(values.mean()), std=float(values.std()), min=float(values.min()),
                               max=float(values.max()))
            results[name] = stats[name]["mean"]
        else:
            results[name] = None
    results["num_utts"] = len(rows)
    results["num_failed"] = len(rows) - len(ok)
    return results, stats


def _fmt(value) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_tsv(path: Path, rows: Sequence[Dict], columns: Sequence[str] = TSV_COLUMNS) -> None:
    with atomic_open(path, "w") as f:
        f.write("\t".join(columns) + "\n")
        for r in rows:
            cells = [_fmt(r.get(c, "")) for c in columns]
            f.write("\t".join(" ".join(c.split()) for c in cells) + "\n")  # no tabs/newlines in cells


def write_markdown(path: Path, results: Dict, stats: Dict[str, Dict[str, float]], rows: Sequence[Dict],
                   ref_scp: str, hyp_scp: str, names: Sequence[str] = METRIC_NAMES,
                   visqol_note: str = "") -> None:
    scored = results["num_utts"] - results["num_failed"]
    lines = [
        "# Codec evaluation",
        "",
        f"Reference: `{ref_scp}`  ",
        f"Hypothesis: `{hyp_scp}`  ",
        f"Scored {scored} of {results['num_utts']} utterances ({results['num_failed']} failed).",
        "",
        "| Metric | Better | Mean | Std | Min | Max |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in names:
        better = "higher" if HIGHER_IS_BETTER[name] else "lower"
        s = stats.get(name)
        if s:
            lines.append(f"| {name} | {better} | {s['mean']:.4f} | {s['std']:.4f} | {s['min']:.4f} | {s['max']:.4f} |")
        else:
            lines.append(f"| {name} | {better} | n/a | n/a | n/a | n/a |")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["", "## Failed utterances", "", "| Utterance | Reason |", "|---|---|"]
        lines += [f"| {r['utt_id']} | {r['error'].replace('|', '/')} |" for r in failed]
    lines += ["", visqol_note or "ViSQOL is not reported: pip install 'espnet-snac[visqol]' (visqol-python) to add it."]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit(
            "error: --plot_spectrograms/--plot_histogram need matplotlib; install it (pip install matplotlib) "
            "or drop the plot options"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_spectrogram(x: np.ndarray, n_fft: int = 1024) -> np.ndarray:
    import torch

    spec = torch.stft(torch.from_numpy(x), n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft),
                      return_complex=True).abs()
    return (20 * torch.log10(spec.clamp(min=1e-5))).numpy()


def plot_spectrograms(plot_dir: Path, rows: Sequence[Dict], jobs: Dict[str, Tuple], count: int) -> List[Path]:
    """Reference vs hypothesis log spectrograms for the first ``count`` scored utterances."""
    plt = _pyplot()
    written = []
    for r in [r for r in rows if r["status"] == "ok"][:count]:
        ref, hyp, rate, _ = load_pair(r["utt_id"], *jobs[r["utt_id"]])
        specs = [_log_spectrogram(ref), _log_spectrogram(hyp)]
        vmax = max(s.max() for s in specs)
        fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True, sharey=True)
        extent = (0, ref.size / rate, 0, rate / 2000)
        for ax, spec, title in zip(axes, specs, ("reference", "reconstruction")):
            im = ax.imshow(spec, origin="lower", aspect="auto", extent=extent, vmin=vmax - 90, vmax=vmax,
                           cmap="magma")
            ax.set_title(f"{r['utt_id']}: {title}")
            ax.set_ylabel("kHz")
        axes[-1].set_xlabel(f"time (s); mel {r['mel_distance']:.3f}, PESQ {r['pesq_wb']:.2f}, "
                            f"STOI {r['stoi']:.3f}, SI-SNR {r['si_snr']:.1f} dB")
        fig.colorbar(im, ax=axes, label="dB")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in r["utt_id"])
        path = plot_dir / f"spec_{safe}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def plot_histogram(path: Path, rows: Sequence[Dict], names: Sequence[str] = METRIC_NAMES) -> Path:
    plt = _pyplot()
    ok = [r for r in rows if r["status"] == "ok"]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2))
    for ax, name in zip(axes, names):
        values = [r[name] for r in ok]
        ax.hist(values, bins=min(30, max(5, int(math.sqrt(len(values) or 1)) * 2)), color="tab:blue")
        ax.set_title(f"{name} ({'higher' if HIGHER_IS_BETTER[name] else 'lower'} is better)")
        if values:
            ax.axvline(float(np.mean(values)), color="tab:red", linestyle="--", label="mean")
            ax.legend()
    fig.suptitle(f"{len(ok)} scored utterances")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref_scp", required=True, help="wav.scp of the references (paths, ark entries or pipes)")
    p.add_argument("--hyp_scp", required=True, help="wav.scp of the reconstructions, same utterance ids")
    p.add_argument("--output_dir", required=True, help="where to write utt_results.tsv, results.json, results.md")
    p.add_argument("--nj", type=int, default=1, help="parallel worker processes (default: 1)")
    p.add_argument("--plot_spectrograms", type=int, default=0, metavar="N",
                   help="write spectrogram comparisons for the first N scored utterances (needs matplotlib)")
    p.add_argument("--plot_histogram", action="store_true", help="write plots/metrics_hist.png (needs matplotlib)")
    p.add_argument("--visqol", choices=("auto", "true", "false"), default="auto",
                   help="report ViSQOL MOS-LQO (auto: when visqol-python is installed; true: required)")
    p.add_argument("--visqol_mode", choices=("audio", "speech"), default="audio",
                   help="ViSQOL mode: audio (48 kHz, SVR; audiotools' default, one of the two modes DAC's "
                        "evaluate.py reports; default) or speech "
                        "(16 kHz, needs visqol-python[lattice])")
    return p


def _visqol_mode(args) -> Optional[str]:
    """The ViSQOL mode to score with, or None; exits with a clear message when it is required but missing."""
    from espnet_snac.scoring import visqol_metric

    if args.visqol == "false":
        return None
    if not visqol_metric.available():
        if args.visqol == "true":
            raise SystemExit("error: --visqol true needs visqol-python: pip install 'espnet-snac[visqol]'")
        return None
    if args.visqol_mode == "speech" and not visqol_metric.lattice_available():
        raise SystemExit("error: --visqol_mode speech needs Google's lattice model: "
                         "pip install 'visqol-python[lattice]' (or use --visqol_mode audio)")
    return args.visqol_mode


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.plot_spectrograms > 0 or args.plot_histogram:
        _pyplot()  # fail before the long part when matplotlib is missing
    visqol_mode = _visqol_mode(args)
    names = metric_names(visqol_mode)
    try:
        ref, hyp = read_scp(args.ref_scp), read_scp(args.hyp_scp)
    except ScpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    jobs = build_jobs(ref, hyp)
    if not jobs:
        print(f"error: {args.ref_scp} and {args.hyp_scp} list no utterances", file=sys.stderr)
        return 1
    rows = score_all(jobs, args.nj, visqol_mode)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, stats = summarize(rows, names)
    note = ""
    if visqol_mode:
        from espnet_snac.scoring.visqol_metric import describe

        results["visqol_setting"] = describe(visqol_mode)[1]
        results["visqol_mode"] = visqol_mode  # local/make_results.py scores its extra tables the same way
        note = f"ViSQOL: {results['visqol_setting']} (MOS-LQO, 1-5)."
    write_tsv(out / "utt_results.tsv", rows, tsv_columns(names))
    write_markdown(out / "results.md", results, stats, rows, args.ref_scp, args.hyp_scp, names, note)
    # results.json last: the recipe reads its presence as "scoring finished"
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    if args.plot_spectrograms > 0 or args.plot_histogram:
        plot_dir = out / "plots"
        plot_dir.mkdir(exist_ok=True)
        if args.plot_spectrograms > 0:
            plot_spectrograms(plot_dir, rows, {k: (r, h) for k, r, h in jobs}, args.plot_spectrograms)
        if args.plot_histogram:
            plot_histogram(plot_dir / HISTOGRAM_NAME, rows, names)
    for r in rows:
        if r["status"] != "ok":
            print(f"failed: {r['utt_id']}: {r['error']}", file=sys.stderr)
    summary = ", ".join(f"{n} {results[n]:.4f}" for n in names if results[n] is not None)
    print(f"scored {results['num_utts'] - results['num_failed']}/{results['num_utts']} utterances "
          f"({results['num_failed']} failed){': ' + summary if summary else ''}; results in {out}")
    return 0 if results["num_failed"] < results["num_utts"] else 1


if __name__ == "__main__":
    sys.exit(main())
