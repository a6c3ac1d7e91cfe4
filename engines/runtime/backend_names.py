"""The UNet backends by name: one list for the CLI, settings and the runner factory (imports no torch)."""

BACKENDS = ("torch", "compile", "onnx", "tensorrt", "torch-tensorrt")
