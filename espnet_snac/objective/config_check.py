"""Checks of user configuration: unknown keys and wrong types fail at start, naming the key.

Checks follow the type hints of the function that receives the options, so a key added there is
accepted without a change here. Only plain types are checked (``bool``, ``int``, ``float``, ``str``,
``Optional``, sequences and mappings of them); anything else passes unchecked.
"""
from __future__ import annotations

import collections.abc as cabc
import inspect
import typing
from typing import Any, Callable, Dict, Iterable, Mapping, Optional


class ConfigError(ValueError):
    """A configuration value is unknown or of the wrong type."""


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, cabc.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, args[0]) for v in value) if args else True
    if origin in (dict, cabc.Mapping) or hint is dict:
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is None and hasattr(hint, "__name__"):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "").replace("NoneType", "None")


def check_kwargs(where: str, conf: Optional[Mapping[str, Any]], target: Callable,
                 exclude: Iterable[str] = (), extra: Optional[Mapping[str, Any]] = None) -> None:
    """Raise :class:`ConfigError` for a key of ``conf`` that ``target`` does not take or a value of the
    wrong type. ``where`` names the block (e.g. ``codec_conf.generator_params``); ``exclude`` lists
    parameters that the caller sets itself; ``extra`` adds accepted keys with their type hints."""
    if conf is None:
        return
    if not isinstance(conf, Mapping):
        raise ConfigError(f"{where} must be a mapping of options, got {type(conf).__name__} {conf!r}")
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that cannot be resolved here: check the keys only
        hints = {}
    params = {n: p for n, p in inspect.signature(fn).parameters.items()
              if n not in ("self", "kwargs", "args") and n not in set(exclude)}
    allowed = {n: hints.get(n, Any) for n in params}
    allowed.update(extra or {})
    for key, value in conf.items():
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r} (accepted: {', '.join(sorted(allowed))})")
        if not _matches(value, allowed[key]):
            raise ConfigError(f"{where}.{key} must be {_type_name(allowed[key])}, got {type(value).__name__} "
                              f"{value!r}")


def check_discriminator_params(params: Optional[Dict[str, Any]], sampling_rate: int) -> None:
    """``codec_conf.discriminator_params`` for ESPnet's MultiScaleMultiPeriodMultiBandDiscriminator.

    ``rates`` are integer downsampling factors of the waveform (MSD runs at ``sampling_rate // rate``),
    not rates in Hz. ``band_discriminator_params`` takes only ``bands``: ESPnet's combined discriminator
    ignores ``hop_factor`` and ``channel`` (always 0.25 and 32), so setting them is an error.
    """
    from espnet2.gan_tts.hifigan.hifigan import HiFiGANPeriodDiscriminator

    where = "codec_conf.discriminator_params"
    if params is None:
        return
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(params).__name__}")
    ints = typing.List[int]
    top = {"rates": ints, "fft_sizes": ints, "periods": ints, "period_discriminator_params": dict,
           "band_discriminator_params": dict, "sample_rate": int}
    check_kwargs(where, params, lambda **kw: None, extra=top)
    if "sample_rate" in params and params["sample_rate"] != sampling_rate:
        raise ConfigError(f"{where}.sample_rate {params['sample_rate']} differs from codec_conf.sampling_rate "
                          f"{sampling_rate}; leave it out (the codec sets it)")
    for key in ("rates", "fft_sizes", "periods"):
        bad = [v for v in params.get(key, []) if v < 1]
        if bad:
            raise ConfigError(f"{where}.{key} must be positive integers, got {bad}")
    for rate in params.get("rates", []):
        if sampling_rate // rate < 1000:
            raise ConfigError(
                f"{where}.rates: {rate} would run the waveform discriminator at {sampling_rate // rate} Hz; rates "
                "are downsampling factors (e.g. [1, 2, 4] for 24, 12 and 6 kHz at 24 kHz), not rates in Hz")
    check_kwargs(f"{where}.period_discriminator_params", params.get("period_discriminator_params"),
                 HiFiGANPeriodDiscriminator, exclude=("period",))
    band = params.get("band_discriminator_params") or {}
    for key in band:
        if key in ("hop_factor", "channel"):
            raise ConfigError(f"{where}.band_discriminator_params.{key} is ignored by ESPnet's "
                              "MultiScaleMultiPeriodMultiBandDiscriminator (fixed hop 0.25, 32 channels): remove it")
    check_kwargs(f"{where}.band_discriminator_params", band, lambda **kw: None,
                 extra={"bands": typing.List[typing.Sequence[float]], "sample_rate": int})
    if "sample_rate" in band and band["sample_rate"] != sampling_rate:
        raise ConfigError(f"{where}.band_discriminator_params.sample_rate {band['sample_rate']} differs from "
                          f"codec_conf.sampling_rate {sampling_rate}; leave it out (the codec sets it)")
    for b in band.get("bands", []):
        if len(b) != 2 or not 0.0 <= b[0] < b[1] <= 1.0:
            raise ConfigError(f"{where}.band_discriminator_params.bands: {list(b)} is not a (low, high) pair "
                              "of fractions of the Nyquist band with 0 <= low < high <= 1")


def check_codec_conf(codec_cls: type, args: Mapping[str, Any]) -> None:
    """All of ``codec_conf`` for :class:`espnet_snac.objective.codec.SNACCodec`: ``args`` are its constructor's
    arguments (values left at their defaults are not checked)."""
    from espnet2.gan_tts.hifigan.loss import (
        DiscriminatorAdversarialLoss,
        FeatureMatchLoss,
        GeneratorAdversarialLoss,
    )

    from espnet_snac.objective.losses import MultiResolutionSTFTLoss, MultiScaleMelLoss
    from espnet_snac.model.snac import SNAC

    params = inspect.signature(codec_cls.__init__).parameters
    given = {k: v for k, v in args.items() if k in params and k != "self" and v is not params[k].default}
    check_kwargs("codec_conf", given, codec_cls)
    check_kwargs("codec_conf.generator_params", args.get("generator_params"), SNAC)
    check_discriminator_params(args.get("discriminator_params"), args.get("sampling_rate"))
    for key, cls, exclude in (
        ("generator_adv_loss_params", GeneratorAdversarialLoss, ()),
        ("discriminator_adv_loss_params", DiscriminatorAdversarialLoss, ()),
        ("feat_match_loss_params", FeatureMatchLoss, ()),
        ("mel_loss_params", MultiScaleMelLoss, ("sampling_rate",)),
        ("stft_loss_params", MultiResolutionSTFTLoss, ()),
    ):
        check_kwargs(f"codec_conf.{key}", args.get(key), cls, exclude=exclude)
