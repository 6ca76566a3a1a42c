"""Reading kohya sd-scripts configs for ``from-kohya``: kohya's options and what becomes of each, the
mapping onto ``fit``'s options, kohya's data folders and dataset configs, and its sample prompts.
"""
