"""mailops: redundant mail nodes behind a load balancer, as code."""
