"""Model construction (tiny random Qwen2.5-VL for CPU runs and tests; local checkpoints) and chat inputs."""
