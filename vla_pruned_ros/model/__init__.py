"""The reference multi-visual-modal VLA: configuration, model, runner, FLOPs and checkpoints."""
