"""Embedding map: pooled features projected to 2-D, where overlapping classes show
where the model struggles. PCA (scikit-learn) by default; UMAP when umap-learn is installed."""
from __future__ import annotations

import importlib.util

import numpy as np
from sklearn.decomposition import PCA

METHODS = ("PCA", "UMAP")


def available_methods() -> list[str]:
    """PCA always; UMAP when the `umap` package (umap-learn) is importable."""
    return [m for m in METHODS if m == "PCA" or importlib.util.find_spec("umap") is not None]


def project(features: np.ndarray, method: str = "PCA", seed: int = 0) -> np.ndarray:
    """2-D coordinates (N, 2) float64 of features (N, D): PCA's first two components,
    or UMAP (`umap.UMAP(random_state=seed)`). Components PCA cannot give (too few images or dimensions)
    are zeros."""
    features = np.asarray(features, dtype="float64")
    if method == "UMAP":
        import umap  # optional dependency, only when installed

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(features)
    components = min(2, features.shape[1], len(features) - 1)
    coords = np.zeros((len(features), 2))
    if components:
        coords[:, :components] = PCA(n_components=components, random_state=seed).fit_transform(features)
    return coords
