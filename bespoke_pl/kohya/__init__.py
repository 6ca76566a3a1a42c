"""The kohya config converter behind ``from-kohya``, a side product of the trainer: kohya sd-scripts' options
and what becomes of each, the mapping onto ``fit``'s options, kohya's data folders and dataset configs, and
its sample prompts.
"""
