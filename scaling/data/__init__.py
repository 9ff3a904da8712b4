"""Data: the synthetic world, its TFDS dataset, the tokenizer, and batches for training and evaluation."""
