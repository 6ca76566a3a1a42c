"""Diffusion around a base model: loading it (hub id, folder, single file), devices and precision, text
conditioning with clip skip, the noise objective (timestep sampling, losses and their weights), and
sampling with a diffusers pipeline.
"""
