"""Downstream task families beside the pretraining code, sharing its strategies, logging and checkpoints.

``glue``: fine-tuning an encoder (roberta-base) on GLUE with transformers' ``Trainer`` (the paper's Table 4).
``vit``: training timm's ViT-tiny on an ImageNet-style image folder with the DeiT recipe (Table 5's ViT row).
``scores``: the standard metric of each (computed here, no metric downloads).
"""
