"""The report: a study read back from MLflow and Optuna into `results/<suite>/` (see write.py)."""
