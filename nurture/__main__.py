"""``python -m nurture`` is the ``nurture`` command."""

import sys

from nurture.cli import main

sys.exit(main())
