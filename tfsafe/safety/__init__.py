"""What a compressed model must survive: one module per threat."""
