"""
Visual tokenizers: RGB images to 2D patch tokens, point clouds to 3D point-group tokens.

``vision_2d`` turns an RGB image into a row-major grid of patch tokens with a transformers
vision tower (SigLIP or ViT). ``points_3d`` turns a point cloud into farthest-point-sampled
groups of nearest neighbours and encodes each group into one token; every group centre can be
projected into the 2D patch grid, which links the two modalities for the pruners.
"""
