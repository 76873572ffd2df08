"""The one tiny CLIP the tests build: open_clip's ``ViT-M-16`` shrunk to 16x16 images, two
vision blocks, one text block: quick to build, to train a few steps and to evaluate."""

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 16, "patch_size": 4, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
IMAGE_SIZE = 16
CONTEXT_LENGTH = 16
