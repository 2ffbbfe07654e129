"""Collapse is loud: one verdict (espnet_snac.tokens.stats.collapse_verdict) behind RESULTS.md, the
extract_tokens summary and the trainer's window statistics."""
from __future__ import annotations

import importlib.util
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch

from espnet_snac.tokens.stats import COLLAPSE_MIN_SHARE, CodebookStats, collapse_verdict

REPO = Path(__file__).resolve().parents[1]


def _stats(frames: np.ndarray) -> list:
    stats = CodebookStats(4096)
    stats.add(frames)
    return stats.summary()


def test_verdict_tells_collapsed_from_healthy():
    rng = np.random.default_rng(0)
    # the case: one or a few codes per level, the same frame everywhere
    same = np.tile(np.array([[7, 9, 1, 2, 9, 3, 4]]), (230, 1))
    verdict = collapse_verdict(_stats(same))
    assert verdict.collapsed and verdict.collapsed_levels == [0, 1, 2] and verdict.frames_collapsed
    assert verdict.usage_line() == "codes in use per level: 1/1/4 of 4096; distinct frames: 1 of 230"
    box = verdict.box("exp/x")
    assert "CODEBOOK COLLAPSE in exp/x" in box and "--num_iters" in box
    assert len({len(line) for line in box.splitlines()}) == 1  # a closed box
    # random codes: healthy at any size, even a 3-frame set
    for n in (3, 40, 5000):
        healthy = collapse_verdict(_stats(rng.integers(0, 4096, (n, 7))))
        assert not healthy.collapsed and healthy.box("x") == "", n
    # the threshold is relative to what a level could use: 30 of 4096 is fine for 30 frames...
    small = rng.integers(0, 4096, (30, 7))
    assert not collapse_verdict(_stats(small)).collapsed
    # ...and a collapse for 5000 frames (level 0 could use min(4096, 5000) codes)
    big = rng.integers(0, 4096, (5000, 7))
    big[:, 0] = rng.integers(0, int(COLLAPSE_MIN_SHARE * 4096) - 1, 5000)
    verdict = collapse_verdict(_stats(big))
    assert verdict.collapsed_levels == [0] and not verdict.frames_collapsed


def test_extract_tokens_summary_prints_the_box():
    from espnet_snac.bin.extract_tokens import print_summary

    levels = _stats(np.zeros((50, 7), np.int64))
    summary = dict(utterances_in=2, written=2, rejected=0, missing=0, hours=0.001, frames=50,
                   tokens_per_audio_second=82.03, levels=levels,
                   this_run=dict(ranks=1, audio_seconds=4.0, wall_seconds=1.0, audio_seconds_per_second=4.0,
                                 rtf_per_worker=0.25))
    out = io.StringIO()
    print_summary(summary, out, name="dump/tokens/train")
    text = out.getvalue()
    assert "codes in use per level: 1/1/1 of 4096; distinct frames: 1 of 50" in text
    assert "CODEBOOK COLLAPSE in the tokens of dump/tokens/train" in text
    out = io.StringIO()
    summary["levels"] = _stats(np.random.default_rng(1).integers(0, 4096, (50, 7)))
    print_summary(summary, out)
    assert "COLLAPSE" not in out.getvalue() and "distinct frames: 50 of 50" in out.getvalue()


def _make_results():
    spec = importlib.util.spec_from_file_location("make_results", REPO / "local" / "make_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_md_carries_the_box(tmp_path):
    make_results = _make_results()
    exp = tmp_path / "exp"
    sets = []
    for name, codes in (("dev", np.zeros((7, 1, 40), np.int64)),
                        ("test", np.random.default_rng(2).integers(0, 4096, (7, 1, 40)))):
        decode = exp / "decode_latest" / name
        (decode / "scoring").mkdir(parents=True)
        (decode / "codec").mkdir()
        (decode / "scoring" / "results.json").write_text(json.dumps({"num_utts": 1, "num_failed": 0}))
        np.save(decode / "codec" / "u1.npy", codes)  # as gan_codec_inference writes: (7, 1, frames)
        (decode / "codec.scp").write_text(f"u1 {decode / 'codec' / 'u1.npy'}\n")
        sets.append((name, decode / "scoring"))
    verdicts = {name: make_results.codebook_use(d.parent, 4096) for name, d in sets}
    assert verdicts["dev"].collapsed and not verdicts["test"].collapsed
    meta = {"fs": 24000, "num_streams": 7, "frame_shift": 2048, "code_size_per_stream": [4096] * 7}
    text = make_results.render(exp, exp / "latest.pth", meta, sets, codebooks=verdicts)
    assert "CODEBOOK COLLAPSE in the codes of the dev set" in text
    assert "- dev: codes in use per level: 1/1/1 of 4096; distinct frames: 1 of 40 — **collapsed**" in text
    assert "- test: codes in use per level" in text and "COLLAPSE in the codes of the test set" not in text


def test_trainer_window_warns_when_a_level_is_low(caplog):
    from espnet_snac.objective.codebook_health import CodebookHealth

    health = CodebookHealth(3, 4096, window=2)
    books = [torch.nn.Embedding(4096, 8)]
    gen = torch.Generator().manual_seed(0)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # level 1 stuck on one code, the others spread
            health.observe([torch.randint(0, 4096, (4, 100), generator=gen), torch.zeros(4, 200, dtype=torch.long),
                            torch.randint(0, 4096, (4, 400), generator=gen)], [], True)
            stats = health.step_end(books)
    assert stats["codes_used_window_1"] == 1
    warnings = [r.getMessage() for r in caplog.records if "codebook collapse" in r.getMessage()]
    assert len(warnings) == 1 and "level(s) 1 below 10%" in warnings[0] and "1/1/" not in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            health.observe([torch.randint(0, 4096, (4, n), generator=gen) for n in (100, 200, 400)], [], True)
            health.step_end(books)
    assert not [r for r in caplog.records if "codebook collapse" in r.getMessage()]
