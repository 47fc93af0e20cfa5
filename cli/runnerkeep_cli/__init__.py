"""The ``runnerkeep`` command line: a thin front door over the core package ``runnerkeep``."""
