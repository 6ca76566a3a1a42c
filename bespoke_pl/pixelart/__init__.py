"""Pixel art in plain torch: the 24x24 grid on the latent grid, palettes, the snap from a decode to the art,
the quality measures and metrics, KID, the contact sheet and the VAE round trip.

Nothing here knows about Lightning runs or base models: it takes tensors (and a VAE) and returns tensors.
"""
