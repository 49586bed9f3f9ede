"""`python -m kaggle_utils.pseudo` (see `kaggle_utils.pseudo.cli`)."""

from kaggle_utils.pseudo.cli import main

raise SystemExit(main())
