"""Bad configuration fails at start, naming the key; impossible runs fail at planning, with the numbers."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
PAPER = CONF / "train_snac24k.yaml"
# Codec training configs (the speech-LM configs of recipe stage 8 are ESPnet LM configs).
TRAIN_CONFIGS = [p for p in [PAPER, *sorted((CONF / "tuning").glob("*.yaml"))]
                 if yaml.safe_load(p.read_text()).get("codec") == "snac"]


def _paper() -> dict:
    return yaml.safe_load(PAPER.read_text())


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_pass_the_checks(path):
    from espnet_snac.objective.codec import SNACCodec
    from espnet_snac.objective.config_check import check_codec_conf
    from espnet_snac.train.augment import BatchAugment

    config = yaml.safe_load(path.read_text())
    check_codec_conf(SNACCodec, config["codec_conf"])
    BatchAugment(**config.get("augment_conf", {}))


def test_shipped_presets_pass_the_checks():
    from espnet_snac.data.presets import load_preset

    names = sorted(p.stem for p in (CONF / "datasets").glob("*.yaml"))
    assert {"librispeech", "commonvoice", "vctk", "librittsr"} <= set(names)
    for name in names:
        assert load_preset(str(CONF / "datasets" / f"{name}.yaml"))["name"] == name
        preset = load_preset(name)  # by name, as --preset NAME finds it
        assert preset["name"] == name and preset["source"].startswith("hf:")
        assert preset.get("splits") or preset.get("dev_fraction")


@pytest.mark.parametrize("change, words", [
    ({"lambda_mel": "15"}, ["codec_conf.lambda_mel", "float", "'15'"]),
    ({"cache_generator_outputs": "yes"}, ["codec_conf.cache_generator_outputs", "bool"]),
    ({"generator_params": {"encoder_rate": [2, 4, 8, 8]}}, ["generator_params", "unknown key 'encoder_rate'",
                                                            "encoder_rates"]),
    ({"generator_params": {"codebook_size": 4096.5}}, ["generator_params.codebook_size", "int"]),
    ({"generator_params": {"vq_strides": "4,2,1"}}, ["generator_params.vq_strides", "Sequence[int]"]),
    ({"discriminator_params": {"rates": [24000, 12000]}}, ["rates", "24000", "1 Hz", "downsampling factors"]),
    ({"discriminator_params": {"rates": [0]}}, ["rates must be positive"]),
    ({"discriminator_params": {"band_discriminator_params": {"hop_factor": 0.5}}}, ["hop_factor", "ignored"]),
    ({"discriminator_params": {"band_discriminator_params": {"channel": 64}}}, ["channel", "ignored"]),
    ({"discriminator_params": {"band_discriminator_params": {"bands": [[0.5, 0.2]]}}}, ["bands", "[0.5, 0.2]"]),
    ({"discriminator_params": {"period": [2, 3]}}, ["unknown key 'period'", "periods"]),
    ({"discriminator_params": {"period_discriminator_params": {"channel": 16}}}, ["unknown key 'channel'"]),
    ({"discriminator_params": {"sample_rate": 16000}}, ["sample_rate 16000"]),
    ({"mel_loss_params": {"n_mel": [5]}}, ["mel_loss_params", "unknown key 'n_mel'"]),
    ({"feat_match_loss_params": {"average_by_layers": 1}}, ["feat_match_loss_params.average_by_layers", "bool"]),
])
def test_bad_codec_conf_names_the_key(change, words):
    from espnet_snac.objective.codec import SNACCodec
    from espnet_snac.objective.config_check import ConfigError

    conf = copy.deepcopy(_paper()["codec_conf"])
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(conf.get(key), dict):
            conf[key].update(value)
        else:
            conf[key] = value
    with pytest.raises(ConfigError) as err:
        SNACCodec(**conf)  # the checks run before any module is built
    for w in words:
        assert w in str(err.value)


def test_unknown_codec_conf_key_is_named():
    from espnet_snac.objective.codec import SNACCodec

    with pytest.raises(TypeError, match="lambda_mels"):
        SNACCodec(lambda_mels=15.0)


@pytest.mark.parametrize("change, words", [
    ({"target_lufs": -16}, ["augment_conf", "unknown key 'target_lufs'", "target_loudness_db"]),
    ({"normalize_loudness": "true"}, ["augment_conf.normalize_loudness", "bool"]),
    ({"min_loudness_db": "-40 dB"}, ["augment_conf.min_loudness_db", "float"]),
    ({"quiet": "redraw"}, ["augment_conf.quiet", "drop"]),
    ({"polarity_prob": 2}, ["polarity_prob"]),
])
def test_bad_augment_conf_names_the_key(change, words):
    from espnet_snac.train.augment import BatchAugment

    with pytest.raises(ValueError) as err:
        BatchAugment(**{**_paper()["augment_conf"], **change})
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("change, words", [
    ({"sampling_rate": 16000}, ["'sampling_rate'", "unknown keys"]),
    ({"streaming": "yes"}, ["'streaming' must be true or false", "'yes'"]),
    ({"dev_fraction": "5%"}, ["'dev_fraction' must be a number"]),
    ({"dev_fraction": 1.5}, ["'dev_fraction' must be in [0, 1)"]),
    ({"split_by": "gender"}, ["'split_by'", "gender"]),
    ({"audio_column": ["audio"]}, ["'audio_column' must be a string"]),
    ({"splits": ["train"]}, ["'splits' must map"]),
])
def test_bad_preset_names_the_key_and_file(tmp_path, change, words):
    from espnet_snac.data.presets import load_preset

    preset = {**yaml.safe_load((CONF / "datasets" / "librittsr.yaml").read_text()), **change}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(preset))
    with pytest.raises(ValueError) as err:
        load_preset(str(path))
    assert str(path) in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_espnet_start_fails_on_bad_config(tmp_path):
    """Through our task's parser and ESPnet's model builder: the error comes before any data is read."""
    from espnet_snac.objective.config_check import ConfigError
    from espnet_snac.registry import register

    register()
    from espnet_snac.train.task import SNACGANCodecTask as GANCodecTask

    config = yaml.safe_load((CONF / "tuning" / "train_snac24k_tiny.yaml").read_text())
    config["codec_conf"].setdefault("discriminator_params", {})["rates"] = [24000]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    args = GANCodecTask.get_parser().parse_args(["--config", str(path), "--output_dir", str(tmp_path / "exp")])
    with pytest.raises(ConfigError, match=r"discriminator_params\.rates: 24000"):
        GANCodecTask.build_model(args)


def test_plan_refuses_wrong_types_in_the_config(tmp_path):
    from espnet_snac.train.plan import PlanError, plan_training

    for key, value, words in (("batch_size", "16", "batch_size must be an integer"),
                              ("chunk_length", "20480,40960", "chunk_length must be one positive integer"),
                              ("chunk_shift_ratio", "half", "chunk_shift_ratio"),
                              ("iterator_type", "sequence", "iterator_type: chunk")):
        with pytest.raises(PlanError, match=words):
            plan_training([48000] * 4, {**_paper(), key: value}, ngpu=1)
