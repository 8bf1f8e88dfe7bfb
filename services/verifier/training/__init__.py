"""`reflex train-verifier`: the data recipe and training of the verifier cross-encoder."""
