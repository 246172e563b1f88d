"""The config stage, torch-free: typed run configs (`configs`), the catalog of names and defaults (`catalog`),
name lookup (`names`), attack relations (`relations`) and matrix files (`matrix_*`)."""
from bench.config.configs import (BNMode, EvalConfig, EvalPrecision, Precision, ThreatModel, TrainConfig,
                                  checkpoint_epoch_number, format_eps, parse_checkpoint, parse_eps)

__all__ = ["BNMode", "EvalConfig", "EvalPrecision", "Precision", "ThreatModel", "TrainConfig",
           "checkpoint_epoch_number", "format_eps", "parse_checkpoint", "parse_eps"]
