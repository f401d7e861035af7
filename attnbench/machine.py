"""The environment a run measured: versions, GPU identity and state (via pynvml), sampled twice."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone

import torch

#: nvmlClocksEventReasons bits that mean the card was slowed by something other than idleness.
_THROTTLE_BITS = {
    0x2: "applications clocks setting",
    0x4: "software power cap",
    0x8: "hardware slowdown",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake",
}
#: reasons that make timings untrustworthy (a power cap under full load is normal on Hopper).
_BAD_THROTTLE_BITS = 0x8 | 0x20 | 0x40 | 0x80


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def environment(device: str) -> dict:
    """Versions and identity that must match for two runs to be compared; ``device`` is where the run
    measured (a CPU run on a machine with a GPU records no GPU)."""
    env = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "gpu_name": None,
        "driver": None,
    }
    if device == "cuda":
        env["gpu_name"] = torch.cuda.get_device_name()
        env["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        env["sm_count"] = torch.cuda.get_device_properties(0).multi_processor_count
        sample = gpu_sample()
        env["driver"] = sample.get("driver")
    return env


def gpu_identity(device: str) -> tuple[str | None, str | None]:
    """The UUID of the GPU torch uses and this process's CUDA_VISIBLE_DEVICES; (None, None) on CPU."""
    if device != "cuda":
        return None, None
    uuid = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None)
    text = None if uuid is None else str(uuid)
    if text is not None and not text.startswith("GPU-"):
        text = f"GPU-{text}"  # NVML's and nvidia-smi's spelling
    return text, os.environ.get("CUDA_VISIBLE_DEVICES")


def device_memory_bytes(device: str) -> int:
    """All the memory of the device a run measures on: the GPU's, or the machine's RAM."""
    if device == "cuda":
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_host_memory_bytes() -> int | None:
    """RAM a new allocation can get now (Linux MemAvailable, else free pages); None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _nvml_handle(pynvml):
    """NVML's handle for torch's current device. NVML ignores CUDA_VISIBLE_DEVICES, so match by UUID."""
    if torch.cuda.is_available():
        uuid = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None)
        if uuid is not None:
            text = str(uuid)
            try:
                return pynvml.nvmlDeviceGetHandleByUUID(text if text.startswith("GPU-") else f"GPU-{text}")
            except pynvml.NVMLError:
                pass  # fall back to the index, right whenever CUDA_VISIBLE_DEVICES is unset
        return pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    return pynvml.nvmlDeviceGetHandleByIndex(0)


def gpu_sample() -> dict:
    """Clocks, temperature, power, throttle reasons and other processes of GPU 0, now."""
    sample: dict = {"time": datetime.now(timezone.utc).isoformat()}
    try:
        import pynvml
    except ImportError:
        sample["error"] = "pynvml not installed (pip install nvidia-ml-py)"
        return sample
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        sample["error"] = f"NVML unavailable: {exc}"
        return sample
    try:
        handle = _nvml_handle(pynvml)
        name = pynvml.nvmlDeviceGetName(handle)
        sample["name"] = name.decode() if isinstance(name, bytes) else name
        driver = pynvml.nvmlSystemGetDriverVersion()
        sample["driver"] = driver.decode() if isinstance(driver, bytes) else driver
        sample["sm_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
        sample["sm_clock_max_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
        sample["mem_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)
        sample["temperature_c"] = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        sample["power_w"] = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000
        reasons_fn = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons"
        )
        reasons = int(reasons_fn(handle))
        sample["clocks_event_reasons"] = reasons
        sample["throttle"] = [text for bit, text in _THROTTLE_BITS.items() if reasons & bit]
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        sample["memory_used_bytes"] = int(memory.used)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        sample["compute_processes"] = len(procs)
    except pynvml.NVMLError as exc:
        sample["error"] = f"NVML query failed: {exc}"
    finally:
        pynvml.nvmlShutdown()
    return sample


def flags(start: dict, end: dict) -> list[str]:
    """Reasons to distrust a run's timings: throttling, or other processes sharing the GPU."""
    found = []
    for label, sample in (("start", start), ("end", end)):
        reasons = sample.get("clocks_event_reasons")
        if reasons is not None and reasons & _BAD_THROTTLE_BITS:
            found.append(f"GPU throttled at {label}: {', '.join(sample['throttle'])}")
    # this process is one; more means somebody else is on the card
    if start.get("compute_processes", 0) > 1 or end.get("compute_processes", 0) > 1:
        found.append(
            f"GPU shared: {max(start.get('compute_processes', 0), end.get('compute_processes', 0))} compute processes"
        )
    return found
