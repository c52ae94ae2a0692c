"""``python -m sysmon_assets.sample``: the generator's command line."""

from sysmon_assets.sample.generator import main

main()
