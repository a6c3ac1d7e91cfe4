"""The UNet backends and precisions by name: one list for the CLI, settings and the runner factory (imports
no torch)."""

BACKENDS = ("torch", "compile", "onnx", "tensorrt", "torch-tensorrt")
PRECISION_NAMES = ("fp32", "fp16", "bf16")

#: The precision each backend runs when none is given: the one place this default is stated. The CLI
#: (`generate`, `texture`, `build-engines`), the worker and embedded server (`REALIZ3D_PRECISION` unset),
#: the images and the Helm chart (which set no precision) all take it from here. fp16 for the TensorRT
#: backends (what they are for, on a GPU); fp32 elsewhere (ONNX Runtime's CPU EP has no fast half kernels,
#: and eager/compile fp16 needs a GPU).
DEFAULT_PRECISION = {
    "torch": "fp32",
    "compile": "fp32",
    "onnx": "fp32",
    "tensorrt": "fp16",
    "torch-tensorrt": "fp16",
}


def default_precision(backend: str) -> str:
    """`DEFAULT_PRECISION[backend]` (fp32 for a name not in the table: the factory refuses it anyway)."""
    return DEFAULT_PRECISION.get(backend, "fp32")
