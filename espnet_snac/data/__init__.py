"""Data preparation: turn Hugging Face datasets, audio folders and Kaldi directories into clean
24 kHz mono Kaldi-style data directories (see ``python -m espnet_snac.bin.prepare_data --help``).

Modules:
- ``items``: one input utterance (``SourceItem``) and the ``Rejected`` error carrying a reason code.
- ``utt_ids``: Kaldi-safe utterance ids and the deterministic hash split into train/dev/test.
- ``audio_check``: decode, validate and convert one item to mono float32 at the target rate.
- ``source_base``, ``source_spec``, ``hf_source``, ``folder_source``, ``kaldi_source``: the input sources.
- ``transcripts``: transcript columns, sidecar ``.txt``/``.lab`` files and LJSpeech ``metadata.csv``.
- ``audio_writers``: flac files or kaldiio ark shards.
- ``kaldi_files``: reading and atomically writing Kaldi text files.
- ``shard_store``: per-shard results and markers that make runs resumable.
- ``pipeline``: shard processing with ``--nj`` workers and caps; ``finalize``: the output directories and
  the dev/test split that fits the corpus.
- ``presets``: dataset presets (``conf/datasets/*.yaml``).
"""
