"""Process-wide fixes that must run before TensorFlow is imported.

kfp 2.17 needs protobuf 6, where `MessageFactory.GetPrototype` is gone; TensorFlow 2.17's
pybind11 bridge still calls it at import and prints an AttributeError per call (functionally
harmless: it falls back to serialization). Restoring the alias keeps the fast path and the
console clean. TensorFlow's C++ INFO lines are silenced unless the user set the level (the
user's value is kept in USER_TF_CPP_MIN_LOG_LEVEL for `console.configure`).

oneDNN's CPU kernels are turned on for x86-64 (TF_ENABLE_ONEDNN_OPTS=1) unless the user set
the variable: TensorFlow enables them by default only on CPUs with AVX-512 VNNI/BF16 or AMX,
yet on an AVX2-only CPU they run the D0 training step and batch-8 inference of these models
about 1.6x faster (docs/performance.md). `TF_ENABLE_ONEDNN_OPTS=0` restores Eigen's kernels.
"""

import os
import platform

USER_TF_CPP_MIN_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

try:
    from google.protobuf import message_factory as _message_factory
except ImportError:  # protobuf not installed: nothing to fix
    _message_factory = None

if _message_factory is not None and not hasattr(_message_factory.MessageFactory, "GetPrototype"):

    def _get_prototype(self, descriptor):
        return _message_factory.GetMessageClass(descriptor)

    _message_factory.MessageFactory.GetPrototype = _get_prototype
