"""_run: see tests/test_architecture.py for what it may import."""
