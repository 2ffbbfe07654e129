"""What every input source provides: a fixed list of shards, each iterable on its own.

Sources are picklable (worker processes receive them) and open files or datasets lazily.
A shard is the unit of parallel work, of resumption and of multi-machine splitting.
"""
from __future__ import annotations

from typing import Dict, Iterator

from espnet_snac.data.items import SourceItem


class SourceError(RuntimeError):
    """A source that cannot be opened at all (bad spec, missing column, unknown split)."""


class Source:
    """Base class. Subclasses set ``self.num_shards`` in ``prepare()`` (main process only)."""

    num_shards: int = 0
    num_items: int | None = None  # known in advance for map-style sources; None when streaming

    def prepare(self) -> None:
        """List the input and fix the shard layout. Must be deterministic for a given input."""
        raise NotImplementedError

    def iter_shard(self, index: int) -> Iterator[SourceItem]:
        """Yield the items of shard ``index`` in a stable order."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def fingerprint(self) -> Dict[str, object]:
        """What identifies this input, recorded to refuse resuming into a different run."""
        return {"source": self.describe()}

    def notes(self) -> list[str]:
        """Things worth telling the user after the run (e.g. files that were not audio)."""
        return []
