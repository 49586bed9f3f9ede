"""`python -m kaggle_utils.pipeline params/<set>/ensemble.yaml [options]`"""

import sys

from kaggle_utils.pipeline import main

sys.exit(main())
