"""Neural-network building blocks of ReDiFu, each usable and testable alone."""
