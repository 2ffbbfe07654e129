"""Atomic writing of Kaldi text files (temp file + rename).

Kaldi files are read with ``espnet_snac.scp`` (``read_scp``, ``read_segments``)."""
from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from typing import Iterable, List, Tuple


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the complete new one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
