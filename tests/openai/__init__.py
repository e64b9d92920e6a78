"""Tests of ``trio_supervise.openai``: the sans-I/O codec of the OpenAI wire format."""
