"""Quality control: embeddings, typicality statistics, OOD detectors and their evaluation."""
