"""lrat-bench: a benchmark harness for instance- and locally-reweighted adversarial training."""

__version__ = "0.1.0"
