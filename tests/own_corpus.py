"""A small multilingual corpus with transcripts, as a user brings it: a folder with sidecar transcripts
and the same utterances as a Hugging Face dataset saved to disk (``audio``, ``text``, ``speaker``).

Nine speakers (synthetic speech-like voices of different pitch, from ``speech_samples``), three
utterances each, at 16 and 22.05 kHz, mono and stereo, transcripts in Latin with accents, Cyrillic,
CJK, Arabic, Devanagari, Greek and Japanese; plus one corrupt file that preparation must reject.
Generated in a second without any speech synthesiser, so CI needs no system package.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import soundfile as sf

from speech_samples import synthetic_speech

SPEAKERS = 9
UTTS_PER_SPEAKER = 3
#: One sentence per speaker; utterance u of speaker s reads TEXTS[s] followed by its number.
TEXTS = [
    "Café déjà vu: naïve façade, Ærøskøbing.",
    "Привет, как дела? Всё хорошо.",
    "你好，世界。今天天气很好。",
    "مرحبا بالعالم، كيف حالك؟",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "Grüße aus Köln – schön, oder?",
    "Ελληνικά γράμματα και λέξεις.",
    "こんにちは世界、元気ですか。",
    "Hello world, once again.",
]
CORRUPT = b"RIFF\x24\x00\x00\x00WAVEjunk-not-a-sound-file"


def utterances() -> List[Tuple[str, str, str, int, np.ndarray]]:
    """``(speaker, name, transcript, rate, samples (T,) or (T, 2))`` of every good utterance."""
    out = []
    for s in range(SPEAKERS):
        for u in range(UTTS_PER_SPEAKER):
            rate = 16000 if (s + u) % 2 else 22050
            # a voice: the synthetic source generated at another rate and played at this one
            pitch = 0.8 + 0.05 * s
            x = synthetic_speech(int(rate / pitch), 1.3 + 0.1 * u, seed=100 * s + u)
            if s % 3 == 0:  # some speakers recorded in stereo
                x = np.stack([x, 0.7 * x], axis=1)
            out.append((f"spk{s}", f"utt{u}", f"{TEXTS[s]} {u}", rate, x))
    return out


def _wav_bytes(x: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_folder(root: Path) -> Path:
    """``root/<speaker>/<name>.wav`` with a sidecar ``.txt`` (``.lab`` for every third file), and the
    corrupt ``spk0/broken.wav`` with its transcript."""
    for i, (spk, name, text, rate, x) in enumerate(utterances()):
        (root / spk).mkdir(parents=True, exist_ok=True)
        (root / spk / f"{name}.wav").write_bytes(_wav_bytes(x, rate))
        (root / spk / f"{name}{'.lab' if i % 3 == 2 else '.txt'}").write_text(text + "\n", encoding="utf-8")
    (root / "spk0" / "broken.wav").write_bytes(CORRUPT)
    (root / "spk0" / "broken.txt").write_text("never read\n", encoding="utf-8")
    return root


def write_hf_dataset(path: Path) -> Path:
    """``datasets.Dataset.save_to_disk(path)`` with columns audio (embedded bytes), text, speaker; the
    corrupt file is the last row."""
    import datasets

    rows: Dict[str, list] = {"audio": [], "text": [], "speaker": []}
    for spk, name, text, rate, x in utterances():
        rows["audio"].append({"bytes": _wav_bytes(x, rate), "path": f"{spk}_{name}.wav"})
        rows["text"].append(text)
        rows["speaker"].append(spk)
    rows["audio"].append({"bytes": CORRUPT, "path": "spk0_broken.wav"})
    rows["text"].append("never read")
    rows["speaker"].append("spk0")
    # a plain struct cast to Audio at the Arrow level: no audio encoder package (torchcodec) needed
    features = datasets.Features({"audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
                                  "text": datasets.Value("string"), "speaker": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(rows, features=features).cast_column("audio", datasets.Audio(decode=False))
    ds.save_to_disk(str(path))
    return path


def expected_texts() -> Dict[Tuple[str, str], str]:
    """``(speaker, name) -> transcript`` of the good utterances."""
    return {(spk, name): text for spk, name, text, _, _ in utterances()}
