"""One-shot GPU check: every benchmark and GPU-only test in one run, one markdown report.

    benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--output FILE]   (this script's wrapper)

Steps (each its own process, with a time limit; sizes for ``--device cuda``, ``--quick`` shrinks
each to seconds):

1. ``codec``: ``bench_codec.py`` over the demo corpus, ours vs the official package (codes identical);
2. ``extract``: ``bench_extract.py`` at extract_tokens' CUDA default batch (16), audio seconds per
   second of the exact batches, codes identical to one by one (target on CUDA: >= 2000x real time);
3. ``train``: ``bench_train.py`` fp32 and bf16 at the paper size (16 x 20480 samples, paper config),
   ms per iteration and peak memory (target on CUDA: bf16 <= 110 ms);
4. ``curve``: 3 minutes of the paper config's learning curve in bf16 (``espnet_snac.bin.learning_curve``);
5. ``stream``: ``bench_stream.py``, the streaming decoder (exact lookahead equals the full decode);
6. ``resume``: ``resume_check.py``, a short training stopped and resumed through the trainer CLI;
7. ``cuda_tests``: ``pytest -m cuda tests/test_cuda_only.py`` (on CPU they are all skipped, which
   counts as ok there; on CUDA a skipped test is a failure of the step); its resume test is left
   out (deselected) since step 6 ran the same script.

A step is ok when it exits 0 and its correctness checks hold; speed targets are reported as met or
missed beside it (CUDA full run only) and do not fail a step. The report gives per step the command,
the status, the key figures and the duration; its last line, also printed, is
``gpu_check: N/N steps ok``. Exit status 0 when every step is ok.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from espnet_snac.io.atomic_files import atomic_write_text  # noqa: E402

BENCH = REPO / "benchmarks"
PAPER_CONFIG = REPO / "conf" / "train_snac24k.yaml"
TINY_CONFIG = REPO / "conf" / "tuning" / "train_snac24k_tiny.yaml"
TARGET_EXTRACT_X = 2000.0  # audio seconds per second on one GPU
TARGET_BF16_MS = 110.0  # ms per paper-size iteration in bf16 on one GPU
TARGET_TOTAL_S = 480.0  # the whole full check on one GPU


@dataclass
class Step:
    name: str
    what: str
    command: List[str]
    timeout: float
    check: Callable[[str, int], Tuple[bool, Dict[str, str], List[str]]]  # -> ok, figures, targets
    status: str = "not run"
    figures: Dict[str, str] = field(default_factory=dict)
    targets: List[str] = field(default_factory=list)
    seconds: float = 0.0
    tail: str = ""


def _last(pattern: str, text: str) -> Optional[re.Match]:
    matches = list(re.finditer(pattern, text, re.MULTILINE))
    return matches[-1] if matches else None


def _kv(line: str) -> Dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S+)", line))


# ------------------------------------------------------------------------------------ checks per step
def check_codec(out: str, rc: int):
    m = _last(r"^encode_speedup=.*$", out)
    if rc or not m:
        return False, {}, []
    kv = _kv(m.group(0))
    figures = {"codes identical": kv["codes_identical"], "encode speed-up vs official": f"{kv['encode_speedup']}x",
               "decode speed-up vs official": f"{kv['decode_speedup']}x"}
    return kv["codes_identical"] == "true", figures, []


def check_extract(cuda_full: bool):
    def check(out: str, rc: int):
        m = _last(r"^audio_s_per_s=.*$", out)
        if rc or not m:
            return False, {}, []
        kv = _kv(m.group(0))
        speed = float(kv["audio_s_per_s"])
        figures = {"audio seconds per second (exact batches)": f"{speed:.1f}", "RTF": kv["rtf"],
                   "codes identical to one by one": kv["codes_identical"]}
        if "tf32_audio_s_per_s" in kv:  # the cost of exactness on CUDA
            figures["same batches with TF32 defaults (not exact)"] = kv["tf32_audio_s_per_s"]
        targets = ([f"extract >= {TARGET_EXTRACT_X:.0f}x real time: {'met' if speed >= TARGET_EXTRACT_X else 'MISSED'}"
                    f" ({speed:.0f}x)"] if cuda_full else [])
        return kv["codes_identical"] == "true", figures, targets
    return check


def check_train(cuda_full: bool):
    def check(out: str, rc: int):
        rows = {m.group(1): _kv(m.group(0)) for m in re.finditer(r"^precision=(\w+) .*$", out, re.MULTILINE)}
        if rc or set(rows) != {"fp32", "bf16"}:
            return False, {}, []
        figures = {}
        for p, kv in rows.items():
            figures[f"{p} ms/iteration"] = kv["ms_per_iter"]
            figures[f"{p} peak memory MB"] = kv["peak_mem_mb"]
        ok = all(kv["nonfinite_steps"] == "0" and math.isfinite(float(kv["mel_loss"])) for kv in rows.values())
        ms = float(rows["bf16"]["ms_per_iter"])
        targets = ([f"bf16 <= {TARGET_BF16_MS:.0f} ms/iteration: {'met' if ms <= TARGET_BF16_MS else 'MISSED'}"
                    f" ({ms:.1f} ms)"] if cuda_full else [])
        return ok, figures, targets
    return check


def check_curve(out: str, rc: int):
    m = _last(r"^iterations=.*$", out)
    if rc or not m:
        return False, {}, []
    kv = _kv(m.group(0))
    figures = {k: kv[k] for k in ("iterations", "mel", "pesq", "stoi", "codes_used", "nonfinite_steps") if k in kv}
    ok = int(kv.get("iterations", 0)) > 0 and math.isfinite(float(kv.get("mel", "nan")))
    return ok, figures, []


def check_stream(out: str, rc: int):
    exact = _last(r"exact lookahead (\d+) frames", out)
    if rc or not exact:
        return False, {}, []
    row = _last(rf"^\| stream, lookahead {exact.group(1)} \|.*$", out)
    if not row:
        return False, {}, []
    cells = [c.strip() for c in row.group(0).strip("|").split("|")]
    snr = cells[-1]
    exact_ok = snr.startswith("exact") or float(snr) >= 60.0  # GPU kernels may round per shape
    figures = {"exact lookahead (frames)": exact.group(1), "compute per frame (ms)": cells[2],
               "latency (ms)": cells[4], "SNR vs full decode (dB)": snr}
    return exact_ok, figures, []


def check_resume(out: str, rc: int):
    m = _last(r"^resume_ok=.*$", out)
    if rc or not m:
        return False, {}, []
    kv = _kv(m.group(0))
    figures = {"resumed": kv["resume_ok"], "iterations after resume": kv["iterations"],
               "first run s": kv["first_run_s"], "resumed run s": kv["resume_run_s"]}
    return kv["resume_ok"] == "true", figures, []


def check_cuda_tests(cuda: bool):
    def check(out: str, rc: int):
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", out)}
        figures = {k: str(v) for k, v in counts.items()}
        if cuda:
            ok = rc == 0 and counts.get("passed", 0) > 0 and not counts.get("skipped") and not counts.get("failed")
        else:  # no CUDA: every test skipped is the expected outcome, not a failure
            ok = rc == 0 and counts.get("skipped", 0) > 0 and not counts.get("failed") and not counts.get("passed")
            figures["note"] = "skipped without CUDA (expected on CPU)"
        return ok, figures, []
    return check


# ------------------------------------------------------------------------------------ the plan
def demo_data(work: Path, quick: bool) -> Tuple[Path, Path]:
    """A Kaldi training dir and an eval wav.scp over the demo corpus (for the learning curve)."""
    corpus = REPO / "local" / "demo_corpus"
    train = sorted((corpus / "train").glob("*.flac"))
    test = sorted((corpus / "test").glob("*.flac"))
    if not train or not test:
        raise SystemExit(f"{corpus}: no demo audio (local/make_demo_corpus.sh makes it)")
    if quick:
        train, test = train[:4], test[:1]
    (work / "train").mkdir(parents=True, exist_ok=True)
    (work / "train" / "wav.scp").write_text("".join(f"{f.stem} {f}\n" for f in train))
    (work / "eval.scp").write_text("".join(f"{f.stem} {f}\n" for f in test))
    return work / "train", work / "eval.scp"


def bf16_config(source: Path, work: Path) -> Path:
    config = yaml.safe_load(source.read_text())
    config["precision"] = "bf16"
    path = work / f"{source.stem}_bf16.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def plan(device: str, quick: bool, work: Path) -> List[Step]:
    py = sys.executable
    cuda, cuda_full = device == "cuda", device == "cuda" and not quick
    train_dir, eval_scp = demo_data(work, quick)
    if quick:  # every step at tiny size: seconds each
        codec = ["--num_files", "1", "--repeats", "1", "--seconds", "1.5"]
        extract = ["--num_files", "2", "--repeats", "1"]
        train = ["--config", str(TINY_CONFIG), "--batch_size", "1", "--samples", "2048", "--iters", "1", "--warmup", "1"]
        curve = ["--config", str(bf16_config(TINY_CONFIG, work)), "--minutes", "0.05", "--num_evals", "1",
                 "--max_eval_utts", "1"]
        stream = ["--num_files", "1", "--seconds", "1"]
        limits = dict(codec=120, extract=120, train=150, curve=150, stream=120, resume=150, cuda_tests=120)
    else:
        codec = ["--batch_size", "16", "--repeats", "3"]
        extract = ["--num_files", "0", "--repeats", "3"]
        train = ["--config", str(PAPER_CONFIG), "--batch_size", "16", "--samples", "20480", "--iters", "20",
                 "--warmup", "5"]
        curve = ["--config", str(bf16_config(PAPER_CONFIG, work)), "--minutes", "3", "--num_evals", "2",
                 "--max_eval_utts", "4"]
        stream = ["--num_files", "3", "--seconds", "4"]
        limits = dict(codec=150, extract=120, train=150, curve=300, stream=120, resume=150, cuda_tests=300)
    dev = ["--device", device]
    return [
        Step("codec", "bench_codec: encode/decode vs the official package, codes identical",
             [py, str(BENCH / "bench_codec.py"), *dev, *codec], limits["codec"], check_codec),
        Step("extract", "bench_extract: exact batches at batch 16 (extract_tokens' CUDA default)",
             [py, str(BENCH / "bench_extract.py"), *dev, "--batch_size", "16", *extract], limits["extract"],
             check_extract(cuda_full)),
        Step("train", "bench_train: one GAN iteration, fp32 and bf16",
             [py, str(BENCH / "bench_train.py"), *dev, "--precisions", "fp32,bf16", *train], limits["train"],
             check_train(cuda_full)),
        Step("curve", "learning curve of the config in bf16",
             [py, "-m", "espnet_snac.bin.learning_curve", *dev, "--train_dir", str(train_dir), "--eval_scp",
              str(eval_scp), "--output_dir", str(work / "curve"), *curve], limits["curve"], check_curve),
        Step("stream", "bench_stream: streaming decoder vs full decode",
             [py, str(BENCH / "bench_stream.py"), *dev, *stream], limits["stream"], check_stream),
        Step("resume", "trainer resume: short training, stop, resume through the CLI",
             [py, str(BENCH / "resume_check.py"), *dev, "--work_dir", str(work / "resume")], limits["resume"],
             check_resume),
        Step("cuda_tests", "CUDA-only tests (pytest -m cuda)",
             [py, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", str(REPO / "tests" / "test_cuda_only.py"),
              # the resume step above ran the same check (resume_check.py) on this device
              "--deselect", "tests/test_cuda_only.py::test_trainer_resumes_on_cuda"],
             limits["cuda_tests"], check_cuda_tests(cuda)),
    ]


def run_step(step: Step, env: Dict[str, str], logs: Path) -> None:
    print(f"[gpu_check] {step.name}: {' '.join(step.command)}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(step.command, cwd=REPO, env=env, capture_output=True, text=True, timeout=step.timeout)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += f"\n(timed out after {step.timeout:.0f} s)"
        rc = 124
    step.seconds = time.perf_counter() - start
    (logs / f"{step.name}.log").write_text(out)
    try:
        ok, step.figures, step.targets = step.check(out, rc)
    except (KeyError, ValueError) as exc:  # output not in the expected form
        ok, step.figures = False, {"parse error": str(exc)}
    step.status = "ok" if ok else ("timeout" if rc == 124 else f"FAILED (exit {rc})" if rc else "FAILED (check)")
    lines = [ln for ln in out.splitlines() if ln.strip() and "nltk" not in ln.lower()]
    step.tail = "\n".join(lines[-15:])
    print(f"[gpu_check] {step.name}: {step.status} in {step.seconds:.1f} s; "
          + ", ".join(f"{k}: {v}" for k, v in step.figures.items()), flush=True)


def environment(device: str) -> str:
    import torch

    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        where = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        where = f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"
    return f"torch {torch.__version__}, {where}, Python {platform.python_version()}"


def report(steps: List[Step], device: str, quick: bool, env_line: str, total: float) -> str:
    ok = sum(s.status == "ok" for s in steps)
    mode = "quick (tiny sizes)" if quick else "full"
    lines = [f"# GPU check: {device}, {mode}", "",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {env_line}; "
             f"total {total:.0f} s", "",
             "| step | status | key figures | duration (s) |", "|---|---|---|---|"]
    for s in steps:
        figures = "; ".join(f"{k}: {v}" for k, v in s.figures.items()) or "-"
        lines.append(f"| {s.name} | {s.status} | {figures} | {s.seconds:.1f} |")
    targets = [t for s in steps for t in s.targets]
    if device == "cuda" and not quick:
        targets.append(f"whole check <= {TARGET_TOTAL_S / 60:.0f} min: "
                       f"{'met' if total <= TARGET_TOTAL_S else 'MISSED'} ({total:.0f} s)")
    lines += ["", "Targets (one GPU, full run): " + ("; ".join(targets) if targets else
                                                     "not assessed (only on a full CUDA run)")]
    for s in steps:
        lines += ["", f"## {s.name}: {s.status}", "", s.what, "", "```", " ".join(s.command), "```", "",
                  f"Duration {s.seconds:.1f} s (limit {s.timeout:.0f} s).", "", "Last lines of output:", "",
                  "```", s.tail, "```"]
    lines += ["", f"gpu_check: {ok}/{len(steps)} steps ok"]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="every step at tiny size (seconds each)")
    p.add_argument("--output", type=Path, default=None, help="markdown report (default: gpu_check_<device>.md)")
    p.add_argument("--work_dir", type=Path, default=None, help="keep step logs and outputs here")
    p.add_argument("--steps", default="", help="comma-separated subset of the step names (default: all)")
    args = p.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA device; use --device cpu --quick for a dry run",
              file=sys.stderr)
        return 2
    output = args.output or Path(f"gpu_check_{args.device}{'_quick' if args.quick else ''}.md")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("PYTEST_CURRENT_TEST", None)  # run from a test: the inner pytest must start clean
    try:
        steps = plan(args.device, args.quick, work)
        if args.steps:
            wanted = [s for s in args.steps.split(",") if s]
            unknown = set(wanted) - {s.name for s in steps}
            if unknown:
                print(f"gpu_check: --steps: unknown {sorted(unknown)}", file=sys.stderr)
                return 2
            steps = [s for s in steps if s.name in wanted]
        env_line = environment(args.device)
        start = time.perf_counter()
        for step in steps:
            run_step(step, env, work)
        text = report(steps, args.device, args.quick, env_line, time.perf_counter() - start)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    atomic_write_text(output, text)
    print(f"[gpu_check] report: {output}")
    print(text.splitlines()[-1], flush=True)
    return 0 if all(s.status == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
