"""Models that need no download: tiny random SD 1.5 / SDXL-shaped pipelines (``tiny:*``), the pretrained
tiny punk bases shipped in ``weights/`` (``tiny-punks:*``), and the real architectures without weights.
"""
