"""The training of the face identity transformer: the two update steps and
their loop, the train state, losses and their weighting, the image pools,
checkpoints and run records, passwords, alignment, multi-host and preemption."""
