"""Tests of ``trio_supervise.runners``: CharLM, the mock, the remote OpenAI runner."""
