"""GPU energy over a timed region from NVML's cumulative counter (Volta and newer); NaN where unavailable."""

from __future__ import annotations


class EnergyMeter:
    """Context manager; ``joules`` is the energy the GPU used inside it, or NaN on CPU / without NVML."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.joules = float("nan")
        self._handle = None
        self._start_mj = None

    def __enter__(self) -> EnergyMeter:
        if not self.device.startswith("cuda"):
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            index = int(self.device.split(":")[1]) if ":" in self.device else 0
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._start_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except Exception:  # NVMLError and its subclasses, or no pynvml at all: energy is simply unavailable
            self._handle = None
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is None:
            return
        import pynvml

        try:
            self.joules = (pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - self._start_mj) / 1000.0
        except pynvml.NVMLError:
            self.joules = float("nan")
