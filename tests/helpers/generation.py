"""Stand-ins for the LDM in writer tests, and a generation run that Lightning can launch under DDP.

:class:`FakeGenerator` returns ``LitLDM.predict_step``-shaped outputs; :class:`SeededGenerator` makes one image per
seed (a retry with a new seed gives a new image, and an image does not depend on the batch or the process that
made it); :class:`MeanQuality` is a quality filter accepting about half of the noise images.

Run as ``python -m tests.helpers.generation --out DIR --devices 2`` (from the repository): a generation over a
fixed plan (15 jobs: uneven shards under DDP) with the real :class:`~datamodules.generation.GenerationDataModule` and
:class:`~callbacks.augmented_writer.AugmentedImageWriter` on ``devices`` CPU processes (DDP, gloo, when > 1).
Lightning's launcher re-runs this module in every process, which a pytest process cannot do.
"""

from __future__ import annotations

import argparse

import torch
from lightning.pytorch import LightningModule, Trainer

from callbacks.augmented_writer import AugmentedImageWriter
from common.distributed import shutdown_process_group
from datamodules.generation import GenerationDataModule

CLASSES = ["anger", "contempt", "fear"]
COUNTS = {"anger": 4, "contempt": 1, "fear": 2}


class FakeGenerator(LightningModule):
    """Returns LitLDM-shaped predictions; fails at ``fail_at_batch`` to simulate an interruption."""

    def __init__(self, fail_at_batch: int | None = None, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.class_names = list(class_names or CLASSES)
        self.fail_at_batch = fail_at_batch

    def predict_step(self, batch, batch_idx):
        if batch_idx == self.fail_at_batch:
            raise RuntimeError("simulated crash")
        n = len(batch["label"])
        g = torch.Generator().manual_seed(int(batch["seed"][0]))
        return {"images": torch.rand(n, 3, 8, 8, generator=g), "label": batch["label"], "seed": batch["seed"],
                "job_index": batch["job_index"], "steps": 10, "guidance": 2.0, "sampler": "ddim"}


class SeededGenerator(FakeGenerator):
    """One image per seed (so a retry with a new seed gives a new image), with ``generate`` for top-ups."""

    def generate(self, labels, seeds):
        return torch.stack([torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

    def predict_step(self, batch, batch_idx):
        out = super().predict_step(batch, batch_idx)
        out["images"] = self.generate(batch["label"], batch["seed"].tolist())
        return out


class MeanQuality:
    """Accepts an image when its mean pixel is above ``threshold`` (about half the noise images)."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def __call__(self, images, labels):
        m = images.mean((1, 2, 3))
        accept = m > self.threshold
        return {"confidence": m, "similarity": torch.full_like(m, float("nan")), "accept": accept,
                "reason": ["ok" if a else "low_confidence" for a in accept.tolist()]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="output_root of the generated set")
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--threshold", type=float, default=0.5, help="MeanQuality threshold")
    ap.add_argument("--max-retries", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--use-distributed-sampler", choices=("true", "false"), default="true")
    args = ap.parse_args(argv)
    dm = GenerationDataModule(class_counts=COUNTS, output_root=args.out, total_multiplier=2.0, scarce_multiplier=4.0,
                              scarce_classes=["contempt"], per_class={"fear": 5}, batch_size=args.batch_size)
    writer = AugmentedImageWriter(progress="none", quality=MeanQuality(args.threshold), max_retries=args.max_retries)
    trainer = Trainer(accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
                      logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[writer],
                      use_distributed_sampler=args.use_distributed_sampler == "true")
    trainer.predict(SeededGenerator(), datamodule=dm, return_predictions=False)
    shutdown_process_group()


if __name__ == "__main__":
    main()
