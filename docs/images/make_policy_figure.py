"""Draw docs/images/mask-policies.png: the three lung-mask policies on one phantom.

Run from the repository root:  .venv/bin/python docs/images/make_policy_figure.py
The phantom (training.phantoms, seed 7, with a Mass, Edema and Fibrosis) uses its ground-truth
lung masks; the masks come from models.policies, the one implementation the node uses.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.policies import LOOSE_MARGIN_MM, TIGHT_EROSION_MM, apply_policy, policy_mask  # noqa: E402
from training.phantoms import generate_phantom  # noqa: E402

OUT = Path(__file__).with_name("mask-policies.png")
SIZE = 512
SEED = 7


def main() -> Path:
    ph = generate_phantom(SIZE, seed=SEED, findings=["Mass", "Edema", "Fibrosis"])
    titles = {
        "original": "original: whole image",
        "loose": f"loose: hull of both lungs + {LOOSE_MARGIN_MM:.0f} mm",
        "tight": f"tight: each lung as segmented ({TIGHT_EROSION_MM:.0f} mm erosion)",
    }
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 5.0))
    for ax, policy in zip(axes, ("original", "loose", "tight")):
        ax.imshow(apply_policy(ph.image, ph.left_lung, ph.right_lung, policy, ph.pixel_spacing_mm), cmap="gray", vmin=0, vmax=1)
        keep = policy_mask(ph.left_lung, ph.right_lung, policy, ph.pixel_spacing_mm)
        if keep is not None:
            ax.contour(keep.astype(float), levels=[0.5], colors=["#ffb000"], linewidths=1.2)
        ax.contour((ph.left_lung | ph.right_lung).astype(float), levels=[0.5], colors=["#00c8ff"], linewidths=0.8)
        ax.set_title(titles[policy], fontsize=11)
        ax.set_axis_off()
    spacing = ph.pixel_spacing_mm[0]
    fig.suptitle(
        f"Lung-mask policies on a phantom ({SIZE} px, {spacing:.3f} mm/pixel; blue: lungs, orange: kept region)",
        fontsize=12,
    )
    # 50 mm scale bar on the first panel
    bar = 50.0 / spacing
    axes[0].plot([20, 20 + bar], [SIZE - 20, SIZE - 20], color="white", linewidth=3)
    axes[0].text(20, SIZE - 28, "50 mm", color="white", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT, dpi=80)
    plt.close(fig)
    return OUT


if __name__ == "__main__":
    print(main())
