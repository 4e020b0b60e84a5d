"""`python -m sau_trainer ...` (and `accelerate launch -m sau_trainer run RECIPE.yaml`)."""

import sys

from .cli import main

sys.exit(main())
