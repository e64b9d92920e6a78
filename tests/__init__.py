"""The tests, one folder per layer of ``trio_supervise``; shared helpers in ``support``."""
