"""Bundled YAML configs (data, not code): ``anymae configs`` lists them."""
