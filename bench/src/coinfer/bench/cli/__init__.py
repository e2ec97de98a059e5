"""``coinfer data scenes | corpus | speech``, one module per action, registered as entry points."""
