"""Training 3D Gaussian splats from the SfM stage's scene (the ``train`` extra: PyTorch and gsplat).

One model, optimiser, loss and densification path (gsplat's MCMC strategy with a cap on the number of
gaussians) for every device; only the rasteriser differs (:mod:`sharpml.train.raster`): gsplat's CUDA
kernels on a GPU, a footprint-sparse PyTorch compositor on CPU.

Importing this package does not import PyTorch: the operator, API and SfM images have no torch, and
``sharpml.train.options`` (what a job may ask for) stays importable there. The modules that train
import it.

Entry points: ``python -m sharpml.train SCENE_DIR OUT_DIR`` (the training pod),
``sharpml process ... --train`` (the CLI), ``sharpml.train.runpod_worker`` (the RunPod worker).
"""
