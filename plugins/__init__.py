"""The built-in compression methods, each registered through the `slimkit` entry-point group like any third-party plugin."""
