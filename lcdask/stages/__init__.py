"""The orchestration of the run's stages (issue 16 moves the stages here one by one)."""
