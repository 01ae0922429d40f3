"""GPU queries. Importing fastopt never needs a GPU or a driver; these answer at run time."""
from . import _C


def is_available():
    """True when fastopt was built with CUDA and a GPU with a working driver is present."""
    return _C.cuda.device_count() > 0


def device_count():
    return _C.cuda.device_count()


def device_name(device=0):
    return _C.cuda.device_name(device)


def synchronize(stream=0):
    """Wait for the work queued on `stream` (default: the legacy default stream)."""
    _C.cuda.synchronize(stream)


def versions():
    """(runtime, driver) CUDA versions as integers such as 13000; 0 where unknown."""
    return _C.cuda.runtime_version(), _C.cuda.driver_version()
