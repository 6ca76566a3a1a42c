"""The training data: strict 24x24 image + caption pairs, the folder checks and their report, the epoch
order, prompt files, and the procedural demo punks with the measures only they allow.
"""
