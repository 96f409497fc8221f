# Results out: one JSON per cell and metrics.csv under results/export/ (docs/data.md).
