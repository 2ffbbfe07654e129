"""A speech LM on SNAC tokens with ESPnet's own LM task (``espnet2.bin.lm_train`` / ``lm_inference``).

Modules:
- ``vocab``: the LM token list (ESPnet's special symbols around the SNAC ids and an optional
  character vocabulary for transcripts) and the mapping of ids back to frame slots.
- ``lines``: LM training lines and prompts built from ``extract_tokens`` output and Kaldi ``text``.
- ``slots``: the check of generated ids against the 7-slot frame pattern.
"""
