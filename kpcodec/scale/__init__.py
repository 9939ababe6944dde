"""Scale-out: many files on many workers (batch), many GPUs (train under torchrun)."""
