"""`python -m litestage_bench` == `litestage-bench`."""
from .cli import main

raise SystemExit(main())
