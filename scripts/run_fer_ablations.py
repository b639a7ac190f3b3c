"""Table 2 ablations with the paper's model (two-branch Swin), plus the local-gate reading, over several seeds.

Arms (Ji et al. 2026, Table 2; each trained as ``scripts/run_fer_experiment.py`` trains a model: same configs,
same budget, same split, best-on-val checkpoint, test split):

==================  ===========================================================================================
``full``            the paper's model (``swin2b``) trained on real + DDPM-generated faces (``--generated-root``)
``no_ddpm``         the same model on the real faces only ("remove DDPM augmentation")
``global_only``     the global Swin alone (``swin_global``) with the generated faces
``fusion_add``      element-wise add instead of tile-and-concatenate ("alternative fusion") with them
``fusion_late``     late fusion (pooled features concatenated) with them
``gate_sigmoid``    the sigmoid reading of the gate + residual refinement (``swin2b_sigmoid``), with them; the
                    paper's model itself runs LAVT's gate ``E = G + tanh(W2 ReLU(W1 F)) * F`` (chosen by this arm)
==================  ===========================================================================================

``--generated-root`` is a folder of generated class folders (``<class>/*.png``), e.g. the ``augmented/ckplus48``
written by ``python cli.py predict --config configs/ldm/generate_ckplus48.yaml`` or by
``scripts/run_augmentation_ablation.py``; it joins the TRAIN split only (``extra_roots``). Without it every arm
trains on real faces only and ``full`` equals ``no_ddpm``, so ``no_ddpm`` is dropped and the note says so.

Writes ``<out>/ablations.csv`` and ``<out>/ablations.md`` (per seed, then mean ± std per arm; the summary also as
``<out>/ablations_summary.csv`` and ``<out>/ablations.png``).

    python scripts/run_fer_ablations.py --out runs/fer_ablations --generated-root augmented/ckplus48 \\
        --epochs 15 --seeds 42 1 2
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from scripts import experiments as ex
from scripts import run_fer_experiment as exp  # the face runs' configs, budget and tables

log = logging.getLogger("run_fer_ablations")

#: arm -> (model key of run_fer_experiment.MODELS, uses the generated faces)
ARMS: dict[str, tuple[str, bool]] = {
    "full": ("swin2b", True),
    "no_ddpm": ("swin2b", False),
    "global_only": ("swin_global", True),
    "fusion_add": ("swin2b_add", True),
    "fusion_late": ("swin2b_late", True),
    "gate_sigmoid": ("swin2b_sigmoid", True),
}


def parser() -> argparse.ArgumentParser:
    p = exp.build_parser(__doc__.splitlines()[0], default_out="runs/fer_ablations")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--generated-root", default=None, help="folder of generated class folders (train split only)")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = parser().parse_args(argv)
    out = exp.prepare_run(args)
    arms = list(args.arms)
    gen = Path(args.generated_root).resolve() if args.generated_root else None
    if gen is not None and not gen.is_dir():
        raise FileNotFoundError(f"run_fer_ablations: --generated-root {gen} is not a folder")
    if gen is None and "no_ddpm" in arms:
        arms.remove("no_ddpm")
    note = exp.budget_note(args) + (
        f" Generated faces: {gen} (train split only)." if gen else
        " NO generated faces given (--generated-root): every arm is trained on real faces only, 'no_ddpm' omitted.")
    runs = []
    for ds in args.datasets:
        for seed in args.seeds:
            for arm in arms:
                model, ddpm = ARMS[arm]
                extra = ["--data.init_args.extra_roots", f"[{gen}]"] if (ddpm and gen) else []
                runs.append(exp.fer_run(model, ds, seed, args, out, extra_args=extra, tag=arm))
    rows = exp.run_all(runs, out, note, stem="ablations", title="Table 2 ablations")
    print((out / "ablations.md").read_text())
    ex.check(rows, "model")
    return rows


if __name__ == "__main__":
    main()
