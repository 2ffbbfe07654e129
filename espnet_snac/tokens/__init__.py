"""SNAC tokens for TTS and speech LMs: batched exact extraction and the on-disk formats.

Modules:
- ``layout``: the 7-position frame layout flattened to token ids (offset ``k * 4096`` for position
  ``k``), the Orpheus id space and the names written to ``token_list``.
- ``batching``: length-aware batched encoding (each utterance gets exactly the codes that encoding it
  alone gives) and overlapping windows for long recordings.
- ``shards``: per-rank ark/scp shards that make extraction resumable.
- ``merge``: merging shards into one ``codes.scp`` and writing ``text``, ``token_list``, Orpheus ids,
  per-level ``npy`` arrays, ESPnet speech-LM ``codec`` files, BPE text and the codebook statistics,
  under either frame rule (``ceil`` or ESPnet's ``floor``).
- ``hf_dataset``: the ``datasets`` (``save_to_disk``) export for Orpheus-style fine-tuning.
- ``stats``: codebook usage and perplexity per level.
- ``bpe``: sentencepiece over unit sequences (one character per token id, as ESPnet's discrete-unit
  recipes do).
"""
