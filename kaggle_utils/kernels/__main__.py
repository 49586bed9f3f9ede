"""`python -m kaggle_utils.kernels build|validate|push ...`"""

import sys

from kaggle_utils.kernels import main

sys.exit(main())
