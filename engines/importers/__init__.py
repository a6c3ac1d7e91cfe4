"""Importers: other projects' checkpoints become Realiz3D model folders (`realiz3d import sd|mvdream`).

`sd`: a diffusers Stable Diffusion 1.x/2.x folder. `mvdream`: MVDream's released LDM-format checkpoint plus
the SD folder it was fine-tuned from. Both go through `adapt.py`, which turns a text-to-image UNet into the
multi-view, geometry-conditioned UNet Realiz3D runs, without changing what it computes for one view.
"""
