"""Writing converted audio once: one flac file per utterance, or one kaldiio ark per shard.

Both store 16-bit PCM (FLAC-compressed, also inside the ark), so what ESPnet reads back is the
float signal in [-1, 1]: ``sound`` wav.scp entries via soundfile, ``kaldi_ark`` entries via
``kaldiio.load_scp`` (which decodes the embedded audio with soundfile).
"""
from __future__ import annotations

import os
import shutil
import struct
from typing import BinaryIO, Iterator, Optional

import numpy as np
import soundfile as sf

AUDIO_FORMATS = ("flac", "ark")


def _write_failed(path: str, exc: Exception) -> OSError:
    """libsndfile reports a full disk as a RuntimeError ("System error."): make it an OSError that
    names the file, like every other write failure."""
    return OSError(f"cannot write {path} ({exc}); is the disk full?")


def _write_flac_blocks(path: str, fs: int, blocks: Iterator[np.ndarray]) -> None:
    """A mono 16-bit FLAC file at ``path`` from ``(t,)`` blocks, never holding the whole signal."""
    try:
        with sf.SoundFile(path, "w", fs, 1, format="FLAC", subtype="PCM_16") as fh:
            for block in blocks:
                fh.write(block)
    except sf.SoundFileError as exc:
        raise _write_failed(path, exc) from exc


class AudioShardWriter:
    """Writes the utterances of one shard under ``audio_dir``; ``write`` returns the wav.scp value."""

    def __init__(self, audio_dir: str, shard_name: str, fs: int) -> None:
        self.audio_dir = audio_dir
        self.shard_name = shard_name
        self.fs = fs

    def write(self, utt: str, samples: np.ndarray) -> str:
        raise NotImplementedError

    def write_blocks(self, utt: str, blocks: Iterator[np.ndarray]) -> str:
        """Like ``write`` for a long signal given as ``(t,)`` blocks, without holding all of it."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class FlacShardWriter(AudioShardWriter):
    """``audio_dir/<shard>/<utt>.flac``; a shard restarted after an interruption starts clean."""

    def __init__(self, audio_dir: str, shard_name: str, fs: int) -> None:
        super().__init__(audio_dir, shard_name, fs)
        self.directory = os.path.join(audio_dir, shard_name)
        if os.path.isdir(self.directory):
            shutil.rmtree(self.directory)
        os.makedirs(self.directory)

    def write(self, utt: str, samples: np.ndarray) -> str:
        path = os.path.join(self.directory, f"{utt}.flac")
        try:
            sf.write(path, samples, self.fs, format="FLAC", subtype="PCM_16")
        except sf.SoundFileError as exc:
            raise _write_failed(path, exc) from exc
        return path

    def write_blocks(self, utt: str, blocks: Iterator[np.ndarray]) -> str:
        path = os.path.join(self.directory, f"{utt}.flac")
        _write_flac_blocks(path, self.fs, blocks)
        return path


class ArkShardWriter(AudioShardWriter):
    """``audio_dir/<shard>.ark`` holding FLAC blobs in kaldiio's ``AUDIO`` record format."""

    def __init__(self, audio_dir: str, shard_name: str, fs: int) -> None:
        super().__init__(audio_dir, shard_name, fs)
        os.makedirs(audio_dir, exist_ok=True)
        self.path = os.path.join(audio_dir, f"{shard_name}.ark")
        self._fh: Optional[BinaryIO] = open(self.path, "wb")

    def write(self, utt: str, samples: np.ndarray) -> str:
        import kaldiio

        assert self._fh is not None, "writer closed"
        offset = self._fh.tell() + len(utt.encode("utf-8")) + 1  # data starts after "utt "
        try:
            kaldiio.save_ark(
                self._fh, {utt: (samples, self.fs)}, write_function="soundfile",
                write_kwargs={"format": "flac", "subtype": "PCM_16"},
            )
        except sf.SoundFileError as exc:
            raise _write_failed(self.path, exc) from exc
        return f"{self.path}:{offset}"

    def write_blocks(self, utt: str, blocks: Iterator[np.ndarray]) -> str:
        """The FLAC stream goes to a temporary file first: kaldiio's record header needs its size."""
        assert self._fh is not None, "writer closed"
        tmp = f"{self.path}.{utt}.flac.tmp"
        try:
            _write_flac_blocks(tmp, self.fs, blocks)
            size = os.path.getsize(tmp)
            nbytes = max(1, (size.bit_length() + 7) // 8)
            self._fh.write(f"{utt} ".encode("utf-8"))
            offset = self._fh.tell()
            # kaldiio's AUDIO record: b"AUDIO", length of the size field, size (little endian), FLAC bytes
            self._fh.write(b"AUDIO" + struct.pack("<B", nbytes) + size.to_bytes(nbytes, "little"))
            with open(tmp, "rb") as src:
                shutil.copyfileobj(src, self._fh, 1 << 20)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return f"{self.path}:{offset}"

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None


def make_writer(audio_format: str, audio_dir: str, shard_name: str, fs: int) -> AudioShardWriter:
    if audio_format == "flac":
        return FlacShardWriter(audio_dir, shard_name, fs)
    if audio_format == "ark":
        return ArkShardWriter(audio_dir, shard_name, fs)
    raise ValueError(f"--audio_format {audio_format!r}: choose one of {AUDIO_FORMATS}")
