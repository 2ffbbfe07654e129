"""Token id layout, statistics, BPE over units and window planning (no model needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from espnet_snac.model.frames import codes_to_frames, frames_to_codes
from espnet_snac.tokens.batching import plan_pieces
from espnet_snac.tokens.bpe import UnitBPE, chars_to_units, train_bpe, units_to_chars
from espnet_snac.tokens.layout import ORPHEUS_BASE, VOCAB_SIZE, flat_to_frames, frames_to_flat, token_names
from espnet_snac.tokens.stats import CodebookStats


def _random_frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=(n, 7)).astype(np.int32)


def test_flat_ids_have_position_offsets_and_invert_exactly():
    frames = _random_frames(5)
    flat = frames_to_flat(frames)
    assert flat.shape == (35,)
    assert np.array_equal(flat.reshape(5, 7) - np.arange(7) * 4096, frames)
    assert flat.min() >= 0 and flat.max() < VOCAB_SIZE
    assert np.array_equal(flat_to_frames(flat), frames)
    t = torch.from_numpy(frames)[None]
    assert torch.equal(flat_to_frames(frames_to_flat(t)), t.long())


def test_orpheus_ids_are_flat_ids_plus_base():
    frames = _random_frames(3, seed=1)
    orpheus = frames_to_flat(frames, base=ORPHEUS_BASE)
    assert np.array_equal(orpheus, frames_to_flat(frames) + 128266)
    assert np.array_equal(flat_to_frames(orpheus, base=ORPHEUS_BASE), frames)


def test_flat_ids_match_frame_order_of_levels():
    # c0[t], c1[2t], c2[4t], c2[4t+1], c1[2t+1], c2[4t+2], c2[4t+3]
    codes = [torch.tensor([[10]]), torch.tensor([[20, 21]]), torch.tensor([[30, 31, 32, 33]])]
    flat = frames_to_flat(codes_to_frames(codes))[0].tolist()
    assert flat == [10, 4096 + 20, 8192 + 30, 12288 + 31, 16384 + 21, 20480 + 32, 24576 + 33]
    back = frames_to_codes(flat_to_frames(torch.tensor([flat])))
    assert all(torch.equal(a, b) for a, b in zip(back, codes))


def test_bad_token_sequences_are_refused_with_position():
    with pytest.raises(ValueError, match="whole frames"):
        flat_to_frames(np.arange(8))
    flat = frames_to_flat(_random_frames(2))
    flat[9] = 5  # position 2 of frame 1 must be in [8192, 12288)
    with pytest.raises(ValueError, match=r"frame \[1\] position 2"):
        flat_to_frames(flat)


def test_token_names_cover_every_id_once():
    names = token_names()
    assert len(names) == VOCAB_SIZE == len(set(names))
    assert names[4096 * 3 + 17] == "snac_p3_17"


def test_codebook_statistics():
    stats = CodebookStats()
    frames = np.zeros((8, 7), np.int32)
    frames[:, 0] = np.arange(8)  # level 0: 8 distinct equally likely codes
    stats.add(frames)
    lv0, lv1, lv2 = stats.summary()
    assert lv0["codes"] == 8 and lv1["codes"] == 16 and lv2["codes"] == 32
    assert lv0["used"] == 8 and lv0["perplexity"] == pytest.approx(8.0)
    assert lv1["used"] == 1 and lv1["perplexity"] == pytest.approx(1.0)


def test_unit_bpe_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    motifs = [frames_to_flat(_random_frames(2, seed=s)) for s in range(6)]
    lines = [units_to_chars(np.concatenate([motifs[i] for i in rng.integers(0, 6, 8)])) for _ in range(40)]
    (tmp_path / "units.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    distinct = len(set("".join(lines)))
    bpe = UnitBPE(train_bpe(tmp_path / "units.txt", tmp_path / "bpe", distinct + 20))
    ids = chars_to_units(lines[0])
    pieces = bpe.encode(ids.tolist())
    assert len(pieces) < len(ids)  # frequent unit n-grams became single pieces
    assert np.array_equal(bpe.decode(pieces), ids)


@pytest.mark.parametrize("num_samples", [1, 2048, 2049, 20 * 2048, 20 * 2048 + 5])
def test_window_plan_keeps_every_frame_once(num_samples):
    total = -(-num_samples // 2048)
    pieces = plan_pieces(0, num_samples, 2048, window_frames=3, context_frames=2)
    kept = []
    for p in pieces:
        assert p.start % 2048 == 0 and p.end <= num_samples
        first = p.start // 2048 + p.keep_from
        kept.extend(range(first, first + p.keep_frames))
        assert p.keep_from + p.keep_frames <= -(-(p.end - p.start) // 2048)
    assert kept == list(range(total))
