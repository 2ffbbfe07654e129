"""True/false option values: one parser, so that every command accepts the same words."""
from __future__ import annotations

import argparse

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def parse_bool(text: str) -> bool:
    """``true``/``1``/``yes``/``on`` or ``false``/``0``/``no``/``off`` (any case, surrounding blanks
    ignored). An ``argparse`` ``type=``: anything else is refused with the words it takes."""
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false ({'/'.join(TRUE_WORDS)} or "
                                     f"{'/'.join(FALSE_WORDS)}), got {text!r}")
