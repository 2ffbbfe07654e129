"""Outputs of the learning curve: ``curve.csv`` (one row per evaluation), ``curve.png`` and the summary line."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence

from espnet_snac.io.atomic_files import atomic_open

# Leading CSV columns, in this order; the training-loss means (train_*) follow, sorted.
FIRST_COLUMNS = ("iteration", "minutes", "wall_minutes", "pesq", "stoi", "mel")
AFTER_CODES = ("eval_utts", "eval_failed", "grad_norm_generator", "grad_norm_discriminator",
               "nonfinite_steps", "sec_per_iter", "lr_generator")


def _code_keys(keys: Iterable[str]) -> List[str]:
    """The ``codes_used_<level>`` keys, by level."""
    return sorted((k for k in keys if k.startswith("codes_used_")), key=lambda k: int(k.rsplit("_", 1)[1]))


def columns(rows: Sequence[Dict[str, Any]]) -> List[str]:
    keys = set().union(*rows)
    codes = _code_keys(keys)
    head = [*FIRST_COLUMNS, *codes, *AFTER_CODES]
    return head + sorted(keys - set(head))


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def write_csv(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    """Rewritten after every evaluation (atomically), so a stopped run keeps its curve so far."""
    cols = columns(rows)
    with atomic_open(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(cols)
        for row in rows:
            writer.writerow([_cell(row.get(c, "")) for c in cols])


def write_plot(path: Path, rows: Sequence[Dict[str, Any]], title: str = "") -> None:
    """PESQ-WB, STOI and mel distance against the iteration (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [r["iteration"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, (key, label) in zip(axes, (("pesq", "PESQ-WB ↑"), ("stoi", "STOI ↑"), ("mel", "mel distance ↓"))):
        ax.plot(its, [r[key] for r in rows], marker="o")
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def final_line(row: Dict[str, Any]) -> str:
    """``iterations=N pesq=X stoi=Y mel=Z codes_used=A/B/C nonfinite_steps=K`` of the last evaluation."""
    codes = "/".join(str(row[k]) for k in _code_keys(row))
    return (f"iterations={row['iteration']} pesq={row['pesq']:.3f} stoi={row['stoi']:.3f} "
            f"mel={row['mel']:.3f} codes_used={codes} nonfinite_steps={row['nonfinite_steps']}")
