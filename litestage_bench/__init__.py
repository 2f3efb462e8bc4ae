"""litestage-bench: training-free layer skipping for multi-stage reasoning, benchmarked."""

__version__ = "0.1.0"
