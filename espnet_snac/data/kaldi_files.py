"""Atomic writing of Kaldi text files (temp file + fsync + rename, see ``espnet_snac.io.atomic_files``).

Kaldi files are read with ``espnet_snac.io.scp`` (``read_scp``, ``read_segments``)."""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import Iterable, List, Tuple

from espnet_snac.io.atomic_files import atomic_write_text


def atomic_write_lines(path: str, rows: Iterable[Iterable[object]], sep: str = " ") -> None:
    atomic_write_text(path, "".join(sep.join(str(v) for v in row) + "\n" for row in rows))


def write_kaldi_dir(directory: str, entries: List[Tuple[str, str, str, int]]) -> None:
    """Write wav.scp, utt2spk, spk2utt, utt2num_samples from ``(utt, speaker, audio_ref,
    num_samples)`` rows. wav.scp is renamed into place last, so a reader that finds wav.scp
    finds the other files complete beside it."""
    os.makedirs(directory, exist_ok=True)
    entries = sorted(entries)
    spk2utt: "OrderedDict[str, List[str]]" = OrderedDict()
    for utt, spk, _, _ in entries:
        spk2utt.setdefault(spk, []).append(utt)
    atomic_write_lines(os.path.join(directory, "utt2spk"), ((u, s) for u, s, _, _ in entries))
    atomic_write_lines(
        os.path.join(directory, "spk2utt"), ((s, " ".join(us)) for s, us in sorted(spk2utt.items()))
    )
    atomic_write_lines(os.path.join(directory, "utt2num_samples"), ((u, n) for u, _, _, n in entries))
    atomic_write_lines(os.path.join(directory, "wav.scp"), ((u, ref) for u, _, ref, _ in entries))
