"""Evolve on the device: serve the current TFLite model and swap in the edge's evolved ones.

:class:`~coinfer.device.evolve.slot.ModelSlot` answers requests with the model it holds and
installs a verified new version atomically; :class:`~coinfer.device.evolve.updater.ModelUpdater`
polls the edge's model store, downloads and verifies a newer version and installs it.
"""
