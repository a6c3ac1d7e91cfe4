"""Training the embedded default model: deterministic data, two-stage Realiz3D training, the naive
baseline, and the evaluation that compares them (see docs/training.md)."""
