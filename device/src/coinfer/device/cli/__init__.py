"""The device tier's ``coinfer`` commands (``stip_chat`` is ``coinfer stip chat``)."""
