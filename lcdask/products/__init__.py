"""What is made from a run's products: `views` (the data of the figures)."""
