"""``python -m kexp_trainers.tune``: run the sweep configured at ``$KEXP_CONFIG``."""

import sys

from kexp_trainers.tune.main import main

sys.exit(main())
