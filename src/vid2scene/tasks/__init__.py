"""Task generators: training / evaluation data written under ``SCENE/tasks/`` (VSI-Bench QA, VLN, BEV, ...)."""
