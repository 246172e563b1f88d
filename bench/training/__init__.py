"""Training: the one training loop (`loop`) and the throughput benchmark behind `bench speed` (`speed`)."""
