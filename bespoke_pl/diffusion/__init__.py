"""Diffusion around a base model: loading it (hub id, folder, single file), devices and precision, text
conditioning with clip skip, the noise objective, and sampling with a diffusers pipeline.
"""
