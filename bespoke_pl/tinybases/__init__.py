"""The pretraining recipe of the tiny punk bases (``pretrain-tiny``), a side product of the trainer: the endless
stream of punks, the VAE, the UNet and text encoders on the trainer's own objective, schedule and EMA, and the
figures a base alone is judged by. The shipped weights themselves live in ``offline/weights/``.
"""
