"""Training: networks, the LightningModule, one fit, weight reuse and the evaluators (torch and Lightning live here)."""
