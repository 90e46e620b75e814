# Our own test suite drives the plugin the way users do: through pytester.
pytest_plugins = ["pytester"]
