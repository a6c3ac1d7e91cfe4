"""The UNet backends and precisions by name: one list for the CLI, settings and the runner factory (imports
no torch)."""

BACKENDS = ("torch", "compile", "onnx", "tensorrt", "torch-tensorrt")
PRECISION_NAMES = ("fp32", "fp16", "bf16")
