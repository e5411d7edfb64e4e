"""What each stage does, end to end: the functions that stage scripts call."""
