"""Stage 3 of the path: images, the local registry, and releases (nbship build/publish)."""
