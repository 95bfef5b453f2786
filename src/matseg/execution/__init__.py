"""Executors: how the jobs of a plan are run (``local``: one after another in this process)."""
