"""The torch backend's public names, for code that imports them from here (the workflow's code
lists, benchmarks, TensorRT-LLM's neighbours). The backend itself lives in one file per concern:
model.py (decoder, dummy weights), checkpoint.py (Hugging Face checkpoints), checks.py (request
checks), static.py (static batches, the study's method), attention.py and serving.py (continuous
batching)."""

from tokencarbon.backends.model import TORCH_DTYPES, Decoder, build_model
from tokencarbon.backends.serving import TorchServingEngine
from tokencarbon.backends.static import CACHE_ALIGN, TorchEngine

__all__ = [
    "CACHE_ALIGN",
    "TORCH_DTYPES",
    "Decoder",
    "TorchEngine",
    "TorchServingEngine",
    "build_model",
]
