"""Distillation: students and learned schedules trained against the target's own teacher (no external data, but
the real images a DMD student's GAN term may train against).

``diffusion`` holds the DDPM-family arithmetic the training loops share (timestep grids, x0 from any
parameterization, the deterministic DDIM step), ``data`` the teacher's samples and ODE end points (generated once
per target and kept), ``progressive``, ``consistency``, ``dmd`` (distribution matching) and ``learned_schedule``
the methods, ``students`` the cache that lets a 4-step progressive student continue from the 8-step one,
``recovery`` the distillation that brings a pruned model back towards the model it was cut from. The technique
that searches them is ``autoaccel.techniques.distillation``.
"""
