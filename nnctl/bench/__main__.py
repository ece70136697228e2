"""`python -m nnctl.bench`: the MLP epoch against the GEMM floor (see nnctl/bench/mlp.py)."""
from nnctl import threads

threads.preset(None)  # the default thread count into the environment before NumPy loads, as the CLI does

from nnctl.bench.mlp import main  # noqa: E402  (after the environment is set)

raise SystemExit(main())
