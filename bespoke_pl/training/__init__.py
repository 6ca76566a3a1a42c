"""Training: the LightningModule, its caches and speed wiring, pre-flight checks and fault handling
(the tiny punk bases' pretraining recipe is :mod:`bespoke_pl.tinybases`).
"""
