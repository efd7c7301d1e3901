"""The shipped queue processors, one module per family; ``load_processors`` imports them all."""
