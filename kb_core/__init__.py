"""The bottom layer: settings, paths, errors, the clock, the serving pointer, the writer lock
and pure helpers. Everything may import it; it imports no other package of this project."""
