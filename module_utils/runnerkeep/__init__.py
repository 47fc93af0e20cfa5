"""runnerkeep core: pure standard-library Python (3.9+), shared by the Ansible modules and the CLI.

Nothing in this package may import a third-party library: runner hosts have python3 and the
docker CLI, nothing else.
"""

__version__ = "0.1.0"
