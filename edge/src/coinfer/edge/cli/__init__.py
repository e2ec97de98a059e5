"""The edge tier's ``coinfer`` commands, one module per action (``gate_run`` is ``coinfer gate
run``), each registered as an entry point of the ``coinfer.commands`` group. Library modules
never import these; these import the library.
"""
