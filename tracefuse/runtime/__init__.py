"""The runtime stage: devices and their backends (memory, streams, kernel launch)."""
