"""feddmmr: fast federated next-item recommendation (FedSASRec, FedDMMR).

The Python API (docs/API.md), imported on first use so that `import feddmmr` stays light:

- `TrainConfig`: a run's settings; `from feddmmr.train import train`, then `train(config)`, is
  what `feddmmr train` runs (`feddmmr.train` is that module, so the function is not exported here);
- `load(run_dir)` (also `load_best_model`): a finished run's best model, to `recommend`,
  `evaluate` or grow by new items (`with_new_items`); `load(checkpoint)`: a FedSASRec model and
  its item vocabulary alone, to `recommend` for histories;
- `evaluate_run(run_dir)`: what `feddmmr evaluate` prints;
- `load_model(checkpoint)`: a FedSASRec model from its checkpoint alone.
"""

__version__ = "0.1.0"

_API = {
    "TrainConfig": "feddmmr.config",
    "load": "feddmmr.best_model",
    "load_best_model": "feddmmr.best_model",
    "evaluate_run": "feddmmr.best_model",
    "load_model": "feddmmr.best_model",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'feddmmr' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)
