"""`projector bench` and its contestants."""
