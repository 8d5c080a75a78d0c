"""The diffusers schedulers autoaccel builds: which solver names map to which classes, how a class is built
from a file's settings, and how a scheduler is made to run an exact schedule. Below the sampling loop and the
targets, which both build schedulers; above nothing of autoaccel but its errors."""
