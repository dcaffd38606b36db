"""Where the numbers were measured: CPU model, cores, threads, load, memory, GPU, and the software versions."""
from __future__ import annotations

import os
import platform
import subprocess
from typing import Any, Dict, Optional

import numpy as np
import timm
import torch

import srdl_timm


def hardware_info(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """The machine the numbers were measured on: CPU model (``lscpu`` Model name), logical cores, torch threads,
    load average at the call, memory and the CUDA device name when one is used."""
    cpu = None
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    if cpu is None:
        try:
            with open('/proc/cpuinfo', encoding='utf-8') as f:
                for line in f:
                    if line.lower().startswith('model name'):
                        cpu = line.split(':', 1)[1].strip()
                        break
        except OSError:
            cpu = platform.processor() or None
    info: Dict[str, Any] = {
        'cpu_model': cpu, 'logical_cpus': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
        'platform': platform.platform(),
    }
    try:
        info['load_average_1_5_15min'] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    try:
        pages, page_size = os.sysconf('SC_PHYS_PAGES'), os.sysconf('SC_PAGE_SIZE')
        info['memory_gib'] = round(pages * page_size / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if device is not None and device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    info['summary'] = f"{cpu or 'unknown CPU'}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads" + (
        f", GPU {info['gpu']}" if 'gpu' in info else ', no GPU used')
    return info


def software_versions() -> Dict[str, str]:
    """Versions of Python and the packages the results depend on."""
    import PIL
    versions = {'python': platform.python_version(), 'srdl_timm': srdl_timm.__version__, 'timm': timm.__version__,
                'torch': torch.__version__, 'numpy': np.__version__, 'pillow': PIL.__version__}
    for name in ('skimage', 'torchvision', 'matplotlib'):
        try:
            module = __import__(name)
            versions[name if name != 'skimage' else 'scikit-image'] = str(module.__version__)
        except ImportError:
            pass
    return versions
