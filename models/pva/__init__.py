"""The PVA model stack (Parallel Visual Attention, arXiv 2312.03556) for export to ONNX.

`build_stack(size)` builds every module of the `tiny` or `sd2` size from one code path; the
exporter, the Python reference pipeline and the tests all start from it.
"""

from .attention import AdapterEntry
from .config import PvaConfig, get_config
from .stack import PvaStack, build_stack

__all__ = ["AdapterEntry", "PvaConfig", "PvaStack", "build_stack", "get_config"]
