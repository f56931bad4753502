"""The ``geors`` command line: thin click commands over the library."""
