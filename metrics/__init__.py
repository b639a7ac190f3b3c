"""metrics package: torchmetrics Metrics for MSA (msa), FER (fer) and generation quality (generation)."""
