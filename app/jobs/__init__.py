"""Fine-tuning jobs: the lifecycle state machine, launch, live streams, history, compare and their routes."""
