"""The seeded Winlogbeat 6.x sample generator (``python -m sysmon_assets.sample --help``)."""
