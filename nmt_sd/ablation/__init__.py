"""nmt-sd-ablate: ablation grids (grid.py), their runs (runs.py), statistics (stats.py) and reports (report.py)."""
