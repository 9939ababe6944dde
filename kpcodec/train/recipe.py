"""Training recipes: loss weights and optimiser settings, by name, next to the model configs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Recipe:
    batch: int = 4
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    stride: int = 2  # keep every stride-th training frame in memory
    w_pyramid: float = 10.0
    w_ssim: float = 5.0
    w_equiv_value: float = 10.0
    w_equiv_jacobian: float = 10.0
    w_separation: float = 10.0
    separation_distance: float = 0.15
    w_landmark_flow: float = 10.0  # 0 disables face-mesh supervision of the flow
    # Weight of lip and eyelid landmarks in that loss relative to the rest of the 478: the
    # mouth's 40 points are a twelfth of the mesh, and its shape changes were not followed.
    landmark_lips: float = 1.0
    landmark_eyes: float = 1.0
    # Submodules to train ("detector", "dense_motion", "generator"); empty trains all. The rest
    # stay frozen in eval mode, e.g. to fit a lighter generator to a trained detector's motion.
    train_modules: tuple[str, ...] = ()
    # Adversarial terms (kpcodec.train.adversarial; hybrid training only): LSGAN generator loss and
    # feature matching against a patch discriminator trained at lr_discriminator. 0 disables.
    w_gan: float = 0.0
    w_feature_matching: float = 0.0
    lr_discriminator: float = 2e-4
    # Parameters whose names contain one of `fresh` (the new, zero-started paths of a grown model)
    # train at `fresh_lr` while the rest take `lr`: the grown-from weights keep their fine steps.
    fresh: tuple[str, ...] = ()
    fresh_lr: float = 2e-4

    def to_dict(self) -> dict:
        return asdict(self)


# A new generator behind a trained, frozen detector and dense motion network (`--init` from the
# model whose motion it reuses): image losses only, as the motion terms cannot change.
_GENERATOR_ONLY = Recipe(lr=5e-4, train_modules=("generator",), w_equiv_value=0.0, w_equiv_jacobian=0.0,
                         w_separation=0.0, w_landmark_flow=0.0)
# `base` with the flow's lip landmarks weighted 5x and eyelids 3x (continued from a base run).
_MOUTH = Recipe(landmark_lips=5.0, landmark_eyes=3.0)

RECIPES = {
    "base": Recipe(),
    "tiny": Recipe(batch=2, stride=8),
    "generator-only": _GENERATOR_ONLY,
    # At a fifth of the learning rate, once the generator's loss has flattened (GPU, batch 32).
    "generator-fine": replace(_GENERATOR_ONLY, lr=1e-4),
    # A trained generator grown by kpcodec.train.grow: its new weights start at zero, so a little
    # more than `generator-fine`, but not the from-scratch rate that would unsettle the rest.
    "generator-grow": replace(_GENERATOR_ONLY, lr=2e-4),
    # A hybrid generator (kpcodec.train.hybrid) grown from a trained one: its base-layer paths
    # start at zero, so the rate of `generator-grow`.
    "hybrid": replace(_GENERATOR_ONLY, lr=2e-4),
    # The last steps of a `hybrid` run, at a tenth of its rate (its loss flat after ~1,000 steps at
    # 2e-4: the step size, not the model, sets the noise floor).
    "hybrid-fine": replace(_GENERATOR_ONLY, lr=2e-5),
    # `hybrid` plus FOMM's adversarial and feature-matching terms (its weights: 1 and 10),
    # against the blur; continued from a `hybrid` run.
    "hybrid-gan": replace(_GENERATOR_ONLY, lr=2e-4, w_gan=1.0, w_feature_matching=10.0),
    # A hybrid grown into more base paths (fomm-256-hybrid-flow / -refine): the new paths at the
    # `hybrid` rate, the trained generator at `hybrid-fine`'s (at 2e-4 throughout, its monitor fell
    # 0.8594 -> 0.8567 in 500 steps, the new paths still near zero).
    "hybrid-grow": replace(_GENERATOR_ONLY, lr=2e-5, fresh=("flow_refine", "base_skips"), fresh_lr=2e-4),
    "mouth": _MOUTH,
    # At a quarter of the learning rate: the last steps of a run, or continuing on a CPU at batch
    # 4 from a run that trained at batch 32 on a GPU (fewer samples a step, so smaller steps).
    "mouth-fine": replace(_MOUTH, lr=5e-5),
}
