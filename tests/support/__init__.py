"""Helpers the tests share: runners with faults, a scripted OpenAI backend, servers."""
