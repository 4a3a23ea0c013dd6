"""A corpus of real ports (made by other projects' tools at their defaults) of models written by others."""
