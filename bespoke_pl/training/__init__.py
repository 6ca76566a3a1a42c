"""Training: the LightningModule, its caches and speed wiring, pre-flight checks, fault handling, and the
pretraining recipe of the tiny punk bases.
"""
