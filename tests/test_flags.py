"""True/false options (espnet_snac.io.flags.parse_bool): the same words in every command."""
from __future__ import annotations

import argparse

import pytest

from espnet_snac import cli
from espnet_snac.bin import lm_data
from espnet_snac.io.flags import FALSE_WORDS, TRUE_WORDS, parse_bool

WORDS = [(w, True) for w in TRUE_WORDS] + [(w, False) for w in FALSE_WORDS]


@pytest.mark.parametrize("word,value", WORDS + [(" Yes ", True), ("OFF", False)])
def test_parse_bool_words(word, value):
    assert parse_bool(word) is value


@pytest.mark.parametrize("word", ["", "2", "tru", "y", "enabled"])
def test_parse_bool_refuses_other_words(word):
    with pytest.raises(argparse.ArgumentTypeError, match="expected true or false"):
        parse_bool(word)


@pytest.mark.parametrize("word,value", WORDS)
def test_every_command_takes_the_same_words(word, value, tmp_path):
    export = cli.build_parser().parse_args(["export", "m", str(tmp_path), "--noise", word])
    assert export.noise is value
    required = [a for part in ("train", "valid", "prompt") for a in (f"--{part}_tokens", str(tmp_path))]
    lm = lm_data.get_parser().parse_args(required + ["--output_dir", str(tmp_path), "--text_prefix", word])
    assert lm.text_prefix is value


def test_a_wrong_word_names_the_option(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["export", "m", "out", "--noise", "maybe"])
    assert "--noise: expected true or false" in capsys.readouterr().err
