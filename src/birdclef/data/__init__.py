"""Dataset metadata: train tables, class lists, label targets, layout checks, folds and datasets."""
