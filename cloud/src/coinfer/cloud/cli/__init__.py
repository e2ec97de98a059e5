"""The cloud tier's ``coinfer`` commands, one module per action (``stip_serve`` is ``coinfer
stip serve``), each registered as an entry point of the ``coinfer.commands`` group.
"""
