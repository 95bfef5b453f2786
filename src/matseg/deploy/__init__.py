"""Deployment: tiled prediction of large images and volumes, and model export."""
