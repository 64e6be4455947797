"""The bundled toy world, data sets and model recipe (imports only torch/transformers/tokenizers)."""
from pathlib import Path

from routerlens_interp.toy.data import TOY_DATASETS, toy_dataset

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

__all__ = ["TOY_DATASETS", "toy_dataset", "WEIGHTS_DIR"]
