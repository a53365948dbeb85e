"""``python -m anymae_timeseries`` prints the path of the bundled demo config."""

from anymae_timeseries import demo_config

print(demo_config())
