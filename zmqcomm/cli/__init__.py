"""The ``zmqcomm`` command: argument parsing and presentation."""
