"""What a role puts on a host in one module call (library/host_layout.py): accounts,
directories, files, the reclaiming of trees a job could once write, and systemd units.

One call per role instead of one task per file: on a fleet's first run each task is a round
trip and a few tens of milliseconds of the controller's CPU per host (docs/scale.md).
"""
