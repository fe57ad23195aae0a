"""The end-to-end run behind ``tfsafe compress``: see :mod:`tfsafe.pipeline.compress`."""

from tfsafe.pipeline.compress import StageRunner, compress_model, dense_model, load_splits
from tfsafe.pipeline.run_state import RunState

__all__ = ["compress_model", "StageRunner", "RunState", "load_splits", "dense_model"]
