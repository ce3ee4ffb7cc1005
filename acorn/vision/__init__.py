"""Multi-modal inputs: reading images, a vision encoder (ViT), and CLIP (image and caption in one space)."""
