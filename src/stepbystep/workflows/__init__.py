"""Stage workflows: the end-to-end functions that stage scripts call."""
