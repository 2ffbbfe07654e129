"""``python -m espnet_snac``: the ``espnet-snac`` command line."""
import sys

from espnet_snac.cli import main

sys.exit(main())
