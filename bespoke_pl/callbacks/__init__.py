"""Lightning callbacks, the side effects of a run (on rank zero, in the run's folder): per-epoch LoRA
files, sample images and their metrics, the VAE round-trip check, exact resume and safe stops.
"""
